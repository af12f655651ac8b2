use std::path::Path;

use super::*;
use crate::config::Config;

const MS: Nanos = 1_000_000;

fn catalog(discovery: bool) -> Catalog {
    let text = format!("[operations]\ndiscovery = {discovery}\n");
    Catalog::from_config(&Config::parse(&text, Path::new("r.toml")).unwrap()).unwrap()
}

/// A session that called login 1.5 s ago, then balance 0.5 s ago, now at transfer.
struct Bank {
    catalog: Catalog,
    login: OpId,
    balance: OpId,
    transfer: OpId,
    history: Vec<Entry>,
}

fn bank() -> Bank {
    let mut catalog = catalog(true);
    let mut op = |name: &str| catalog.lookup_for_rule(name).unwrap();
    let (login, balance, transfer) = (
        op("POST h/login"),
        op("GET h/balance"),
        op("POST h/transfer"),
    );
    let history = vec![
        Entry {
            op: login,
            at: 8_500 * MS,
        },
        Entry {
            op: balance,
            at: 9_500 * MS,
        },
    ];
    Bank {
        catalog,
        login,
        balance,
        transfer,
        history,
    }
}

impl Bank {
    fn facts(&self) -> Facts<'_> {
        Facts {
            op: self.transfer,
            previous: &self.history,
            now: 10_000 * MS,
            method: "POST",
            host: "h",
            path: "/transfer",
            session_requests: 3,
            session_age: 1_500 * MS,
            op_requests: 1,
            distinct_values: 0,
            enumeration_suspected: false,
        }
    }

    fn eval(&mut self, source: &str) -> bool {
        let e = Expression::compile(source, &mut self.catalog)
            .unwrap_or_else(|err| panic!("{source}: {err}"));
        e.matches(&self.facts())
    }

    fn error(&mut self, source: &str) -> String {
        Expression::compile(source, &mut self.catalog).expect_err(source)
    }
}

#[test]
fn precedence_and_logic() {
    let mut b = bank();
    assert!(b.eval("true || false && false"), "&& binds tighter than ||");
    assert!(!b.eval("(true || false) && false"));
    assert!(!b.eval("!true && true"), "! binds tightest");
    assert!(b.eval("!(true && false)"));
    assert!(b.eval("1 + 2 * 3 == 7"));
    assert!(b.eval("-1 < 0 && 2 - 3 == -1"));
    assert!(b.eval("true ? 1 < 2 : false"));
    assert!(b.eval("(1 < 2) == true"));
}

#[test]
fn operations_by_id_or_human_form() {
    let mut b = bank();
    let id = b.catalog.get(b.transfer).id.clone();
    assert!(b.eval(r#"sequence.current_op == "POST h/transfer""#));
    assert!(b.eval(&format!("sequence.current_op == {id:?}")));
    assert!(b.eval(r#""POST h/transfer" == sequence.current_op"#));
    assert!(b.eval(r#"sequence.current_op != "POST h/login""#));
    assert!(b.eval(r#"sequence.current_op in ["POST h/login", "POST h/transfer"]"#));
    assert!(!b.eval(r#"sequence.current_op in ["POST h/login"]"#));
}

#[test]
fn previous_ops_most_recent_first_with_any_and_all() {
    let mut b = bank();
    assert!(b.eval(r#""POST h/login" in sequence.previous_ops"#));
    assert!(b.eval(r#"sequence.previous_ops.exists(op, op == "GET h/balance")"#));
    assert!(!b.eval(r#"sequence.previous_ops.exists(op, op == "POST h/transfer")"#));
    assert!(b.eval(r#"sequence.previous_ops.all(op, op != "POST h/transfer")"#));
    assert!(b.eval(r#"sequence.previous_ops.exists_one(op, op == "POST h/login")"#));
    assert!(b.eval(r#"sequence.previous_ops[0] == "GET h/balance""#));
    assert!(b.eval(r#"sequence.previous_ops[1] == "POST h/login""#));
    assert!(
        !b.eval(r#"sequence.previous_ops[2] == "POST h/login""#),
        "past the end"
    );
    assert!(b.eval("size(sequence.previous_ops) == 2"));
    assert!(b.eval("sequence.previous_ops.size() == 2"));
    assert!(b.eval(r#"size(sequence.previous_ops.filter(x, x == "POST h/login")) == 1"#));
    // Nested: every earlier operation is followed by… (two scopes at once)
    assert!(b.eval(
        r#"sequence.previous_ops.exists(a, sequence.previous_ops.exists(b, a != b && b == "POST h/login"))"#
    ));
}

#[test]
fn msec_since_op_map_and_missing_keys() {
    let mut b = bank();
    assert!(b.eval(r#"sequence.msec_since_op["POST h/login"] == 1500"#));
    assert!(b.eval(r#"sequence.msec_since_op["GET h/balance"] < 2000"#));
    assert!(b.eval(r#""GET h/balance" in sequence.msec_since_op"#));
    // Never called: no value, so every comparison on it is false.
    assert!(!b.eval(r#"sequence.msec_since_op["POST h/transfer"] < 2000"#));
    assert!(!b.eval(r#"sequence.msec_since_op["POST h/transfer"] >= 2000"#));
    assert!(!b.eval(r#""POST h/transfer" in sequence.msec_since_op"#));
    let _ = (b.login, b.balance);
}

#[test]
fn http_and_session_fields() {
    let mut b = bank();
    assert!(b.eval(r#"http.request.method == "POST" && http.host == "h""#));
    assert!(b.eval(r#"http.request.uri.path.startsWith("/trans")"#));
    assert!(b.eval(r#"http.request.uri.path.matches("^/t[a-z]+$")"#));
    assert!(b.eval(r#"http.request.method in ["POST", "PUT"]"#));
    assert!(b.eval("session.request_count == 3 && session.age_msec == 1500"));
    assert!(b.eval("session.op_requests_10m == 1 && !session.enumeration_suspected"));
}

#[test]
fn errors_point_at_the_column() {
    let mut b = bank();
    let e = b.error("sequence.current_op == && true");
    assert!(e.starts_with("column 24: "), "{e}");
    let e = b.error("true && sequence.nope");
    assert!(
        e.starts_with("column 17: unknown field sequence.nope"),
        "{e}"
    );
    let e = b.error(r#"session.age_msec < "soon""#);
    assert!(
        e.starts_with("column 18: cannot compare int with string"),
        "{e}"
    );
    let e = b.error("session.age_msec");
    assert!(e.contains("must be a bool condition, is int"), "{e}");
    let e = b.error("true &&\n  sequence.previous_ops.exists(x, x)");
    assert!(
        e.starts_with("line 2, column 35: expected a bool, got operation"),
        "{e}"
    );
    let e = b.error(r#"http.request.uri.path.matches("(")"#);
    assert!(e.contains("column 31: bad regex"), "{e}");
    let e = b.error("frobnicate(1)");
    assert!(e.contains("unsupported function frobnicate"), "{e}");
    let mut off = Bank {
        catalog: catalog(false),
        ..bank()
    };
    let e = off.error(r#"sequence.current_op == "GET h/nowhere""#);
    assert!(e.starts_with("column 24: unknown operation"), "{e}");
}

#[test]
fn the_current_operation_guard_is_found() {
    let mut b = bank();
    let guard = |b: &mut Bank, s: &str| Expression::compile(s, &mut b.catalog).unwrap().current_ops;
    let (login, transfer) = (b.login, b.transfer);
    assert_eq!(
        guard(
            &mut b,
            r#"sequence.current_op == "POST h/transfer" && session.age_msec < 10"#
        ),
        Some(vec![transfer])
    );
    let mut both = guard(
        &mut b,
        r#"sequence.current_op == "POST h/transfer" || sequence.current_op in ["POST h/login"]"#,
    )
    .unwrap();
    both.sort();
    let mut expected = vec![login, transfer];
    expected.sort();
    assert_eq!(both, expected);
    assert_eq!(guard(&mut b, "session.age_msec < 10"), None);
    assert_eq!(
        guard(
            &mut b,
            r#"sequence.current_op == "POST h/transfer" || true"#
        ),
        None
    );
}

/// Differential test: random expressions over the sequence fields give the same verdict
/// here as in the `cel` crate's own interpreter (the reference semantics of CEL).
mod against_the_cel_interpreter {
    use std::sync::Arc;

    use cel::common::types::{CelInt, CelList, CelMap, CelMapKey, CelString};
    use cel::common::value::{CowVal, Val};
    use cel::context::VariableResolver;
    use proptest::prelude::*;

    use super::*;

    const OPS: [&str; 4] = [
        "POST h/login",
        "GET h/balance",
        "POST h/transfer",
        "GET h/other",
    ];

    /// An expression with `@N` standing for operation N.
    fn boolean() -> impl Strategy<Value = String> {
        let op = (0..OPS.len()).prop_map(|i| format!("@{i}"));
        let leaf = prop_oneof![
            Just("true".to_string()),
            Just("false".to_string()),
            op.clone()
                .prop_map(|o| format!("sequence.current_op == {o}")),
            op.clone()
                .prop_map(|o| format!("sequence.current_op != {o}")),
            op.clone()
                .prop_map(|o| format!("{o} in sequence.previous_ops")),
            op.clone()
                .prop_map(|o| format!("{o} in sequence.msec_since_op")),
            op.clone()
                .prop_map(|o| format!("sequence.previous_ops.exists(x, x == {o})")),
            op.clone()
                .prop_map(|o| format!("sequence.previous_ops.all(x, x != {o})")),
            op.clone()
                .prop_map(|o| format!("sequence.previous_ops.exists_one(x, x == {o})")),
            (op.clone(), 0i64..30_000).prop_map(|(o, n)| format!(
                "({o} in sequence.msec_since_op && sequence.msec_since_op[{o}] < {n})"
            )),
            (integer(), comparison(), integer()).prop_map(|(a, c, b)| format!("{a} {c} {b}")),
            proptest::collection::vec(op, 1..3)
                .prop_map(|os| format!("sequence.current_op in [{}]", os.join(", "))),
        ];
        leaf.prop_recursive(3, 16, 2, |inner| {
            prop_oneof![
                inner.clone().prop_map(|b| format!("!({b})")),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} && {b})")),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} || {b})")),
                (inner.clone(), inner.clone(), inner)
                    .prop_map(|(c, a, b)| format!("({c} ? {a} : {b})")),
            ]
        })
    }

    fn integer() -> impl Strategy<Value = String> {
        let op = (0..OPS.len()).prop_map(|i| format!("@{i}"));
        prop_oneof![
            (0i64..20).prop_map(|n| n.to_string()),
            Just("session.request_count".to_string()),
            Just("size(sequence.previous_ops)".to_string()),
            op.prop_map(|o| format!("size(sequence.previous_ops.filter(x, x == {o}))")),
            (0i64..5, 0i64..5).prop_map(|(a, b)| format!("({a} * session.request_count - {b})")),
        ]
    }

    fn comparison() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["==", "!=", "<", "<=", ">", ">="])
    }

    struct Reference<'a> {
        current: &'a str,
        /// Most recent first, with milliseconds since.
        previous: Vec<(&'a str, i64)>,
        requests: i64,
    }

    impl VariableResolver for Reference<'_> {
        fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
            Some(match variable {
                "sequence.current_op" => CowVal::owned(CelString::from(self.current)),
                "sequence.previous_ops" => CowVal::owned(CelList::from(
                    self.previous
                        .iter()
                        .map(|(id, _)| Box::new(CelString::from(*id)) as Box<dyn Val>)
                        .collect::<Vec<_>>(),
                )),
                "sequence.msec_since_op" => {
                    // The latest request to each operation: the first seen, most recent first.
                    let mut map = std::collections::HashMap::new();
                    for (id, ms) in self.previous.iter().rev() {
                        map.insert(
                            CelMapKey::from(*id),
                            Box::new(CelInt::from(*ms)) as Box<dyn Val>,
                        );
                    }
                    CowVal::owned(CelMap::from(map))
                }
                "session.request_count" => CowVal::owned(CelInt::from(self.requests)),
                _ => return None,
            })
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn same_verdict(
            source in boolean(),
            current in 0..OPS.len(),
            earlier in proptest::collection::vec((0..OPS.len(), 0u64..3000), 0..9),
            requests in 0i64..12,
        ) {
            let mut catalog = catalog(true);
            let ids: Vec<OpId> = OPS.iter().map(|o| catalog.lookup_for_rule(o).unwrap()).collect();
            let names: Vec<String> = ids.iter().map(|&op| catalog.get(op).id.clone()).collect();
            let with = |text: &dyn Fn(usize) -> String| {
                (0..OPS.len()).fold(source.clone(), |s, i| s.replace(&format!("@{i}"), &text(i)))
            };
            let ours = Expression::compile(&with(&|i| format!("{:?}", OPS[i])), &mut catalog)
                .unwrap_or_else(|e| panic!("{source}: {e}"));
            let now = 100_000 * MS;
            // Oldest first, times increasing toward now.
            let mut at = now - 9 * 3000 * MS;
            let previous: Vec<Entry> = earlier
                .iter()
                .map(|&(op, gap)| {
                    at += gap * MS;
                    Entry { op: ids[op], at }
                })
                .collect();
            let facts = Facts {
                session_requests: requests as u64,
                ..Facts::sequence(ids[current], &previous, now)
            };
            let reference = Reference {
                current: &names[current],
                previous: previous
                    .iter()
                    .rev()
                    .map(|e| {
                        let i = ids.iter().position(|&op| op == e.op).unwrap();
                        (names[i].as_str(), ((now - e.at) / MS) as i64)
                    })
                    .collect(),
                requests,
            };
            let env = Arc::new(cel::Env::stdlib());
            let program = env.compile(&with(&|i| format!("{:?}", names[i]))).unwrap();
            let mut context = cel::Context::with_env(env);
            context.set_variable_resolver(&reference);
            let expected = program.execute(&context);
            prop_assert_eq!(expected, Ok(cel::Value::Bool(ours.matches(&facts))), "{}", source);
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
    /// A config is operator input, but a typo must be an error, never a crash.
    #[test]
    fn any_text_compiles_or_is_refused_without_panicking(
        source in "[a-z_.()\\[\\]!&|<>=+*?:, \"0-9-]{0,60}|(sequence|session|http)\\.[a-z_.]{0,30}( [=<>!]=? [0-9\"a-z]{0,8})?"
    ) {
        let mut b = bank();
        if let Err(e) = Expression::compile(&source, &mut b.catalog) {
            proptest::prop_assert!(e.starts_with("column ") || e.starts_with("line "), "{}", e);
        }
    }
}
