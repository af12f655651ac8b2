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
