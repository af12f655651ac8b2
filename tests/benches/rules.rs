//! Expression rules: one evaluation of a compiled rule against a full lookback (nine
//! earlier operations), side by side with the `cel` crate's own interpreter on the same
//! rules and data — the engine this compiler replaces on the request path. Target:
//! ≤ 300 ns per applicable rule. `cargo xtask bench` prints the ratios.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use cel::common::types::{CelInt, CelList, CelMap, CelMapKey, CelString};
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use criterion::{Criterion, criterion_group, criterion_main};
use seqshield::config::Config;
use seqshield::ops::{Catalog, OpId};
use seqshield::rules::{Expression, Facts};
use seqshield::session::Entry;
use seqshield_tests::bank::{self, ACCOUNTS, BALANCE, LOGIN, MS, TRANSFER};

/// The rules, with `{NAME}` standing for an operation.
const RULES: &[(&str, &str)] = &[
    (
        "msec_since",
        r#"sequence.current_op == "{TRANSFER}" && "{LOGIN}" in sequence.msec_since_op && sequence.msec_since_op["{LOGIN}"] < 2000"#,
    ),
    (
        "never_called",
        r#"sequence.current_op == "{TRANSFER}" && !sequence.previous_ops.exists(op, op == "{ACCOUNTS}")"#,
    ),
    (
        "count_reads",
        r#"sequence.current_op == "{TRANSFER}" && size(sequence.previous_ops.filter(op, op == "{BALANCE}")) > 3"#,
    ),
    (
        "http_fields",
        r#"http.request.method == "POST" && http.request.uri.path.startsWith("/api/v1/transfer") && session.request_count > 5"#,
    ),
];

fn with_ops(rule: &str, name: impl Fn(&str) -> String) -> String {
    [
        ("{TRANSFER}", TRANSFER),
        ("{LOGIN}", LOGIN),
        ("{ACCOUNTS}", ACCOUNTS),
        ("{BALANCE}", BALANCE),
    ]
    .iter()
    .fold(rule.to_string(), |r, (k, op)| r.replace(k, &name(op)))
}

/// The same request as the `cel` interpreter sees it: operations by id.
struct CelFacts<'a> {
    current: &'a str,
    /// Most recent first, with milliseconds since.
    previous: Vec<(&'a str, i64)>,
}

impl VariableResolver for CelFacts<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        Some(match variable {
            "sequence.current_op" => CowVal::owned(CelString::from(self.current)),
            "sequence.previous_ops" => {
                let ops: Vec<Box<dyn Val + 'b>> = self
                    .previous
                    .iter()
                    .map(|(id, _)| Box::new(CelString::from(*id)) as Box<dyn Val>)
                    .collect();
                CowVal::owned(CelList::from(ops))
            }
            "sequence.msec_since_op" => {
                let mut map = std::collections::HashMap::new();
                for (id, ms) in self.previous.iter().rev() {
                    map.insert(
                        CelMapKey::from(*id),
                        Box::new(CelInt::from(*ms)) as Box<dyn Val>,
                    );
                }
                CowVal::owned(CelMap::from(map))
            }
            "http.request.method" => CowVal::owned(CelString::from("POST")),
            "http.request.uri.path" => CowVal::owned(CelString::from("/api/v1/transferFunds")),
            "session.request_count" => CowVal::owned(CelInt::from(12)),
            _ => return None,
        })
    }
}

fn benches(c: &mut Criterion) {
    let config = Config::parse(&bank::config(5, ""), Path::new("bench.toml")).unwrap();
    let mut catalog = Catalog::from_config(&config).unwrap();
    let op = |catalog: &mut Catalog, name: &str| catalog.lookup_for_rule(name).unwrap();
    let (login, accounts, balance, transfer) = (
        op(&mut catalog, LOGIN),
        op(&mut catalog, ACCOUNTS),
        op(&mut catalog, BALANCE),
        op(&mut catalog, TRANSFER),
    );
    let other = op(&mut catalog, "GET bank.test/api/v1/profile");
    // Nine earlier operations, login first; accounts never (the scan runs to the end).
    let earlier: [OpId; 9] = [
        login, balance, other, balance, other, balance, other, balance, other,
    ];
    let now = 10_000 * MS;
    let lookback: Vec<Entry> = earlier
        .iter()
        .enumerate()
        .map(|(i, &op)| Entry {
            op,
            at: now - (9 - i as u64) * 150 * MS,
        })
        .collect();
    let facts = Facts {
        method: "POST",
        host: bank::HOST,
        path: "/api/v1/transferFunds",
        session_requests: 12,
        session_age: 1_500 * MS,
        ..Facts::sequence(transfer, &lookback, now)
    };
    let id = |op: OpId| catalog.get(op).id.clone();
    let ids: Vec<String> = lookback.iter().map(|e| id(e.op)).collect();
    let transfer_id = id(transfer);
    let cel_facts = CelFacts {
        current: &transfer_id,
        previous: lookback
            .iter()
            .zip(&ids)
            .rev()
            .map(|(e, id)| (id.as_str(), ((now - e.at) / MS) as i64))
            .collect(),
    };
    let id_of: std::collections::HashMap<&str, String> = [
        (LOGIN, login),
        (ACCOUNTS, accounts),
        (BALANCE, balance),
        (TRANSFER, transfer),
    ]
    .into_iter()
    .map(|(human, op)| (human, id(op)))
    .collect();
    let env = Arc::new(cel::Env::stdlib());

    let mut group = c.benchmark_group("expression_rule");
    for (name, rule) in RULES {
        let compiled =
            Expression::compile(&with_ops(rule, |h| h.to_string()), &mut catalog).unwrap();
        let program = env.compile(&with_ops(rule, |h| id_of[h].clone())).unwrap();
        // Both engines agree on the verdict.
        let mut context = cel::Context::with_env(env.clone());
        context.set_variable_resolver(&cel_facts);
        assert_eq!(
            program.execute(&context).unwrap(),
            cel::Value::Bool(compiled.matches(&facts)),
            "{name}"
        );
        group.bench_function(format!("compiled/{name}"), |b| {
            b.iter(|| compiled.matches(black_box(&facts)))
        });
        group.bench_function(format!("cel_interpreter/{name}"), |b| {
            b.iter(|| {
                let mut context = cel::Context::with_env(env.clone());
                context.set_variable_resolver(black_box(&cel_facts));
                program.execute(&context)
            })
        });
    }
    group.finish();
}

criterion_group!(rules, benches);
criterion_main!(rules);
