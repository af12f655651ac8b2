//! Expression rules on replays of the bank API: Cloudflare's documented sequence-rule
//! examples translated to CEL and to the bank's operations, each checked against
//! sessions whose timing is set by hand; rate rules; a reload with a bad expression.

use std::path::Path;

use seqshield::alerts::{Alert, AlertAction};
use seqshield::config::Config;
use seqshield::pipeline::Pipeline;
use seqshield_tests::bank::{self, ACCOUNTS, BALANCE, Ident, LOGIN, MS, SEC, T0, TRANSFER};
use seqshield_tests::capture::{Capture, Link};
use seqshield_tests::{TEST_KEY, replay};

/// The bank's endpoints without its allow rule (an allow rule that passes would end
/// the evaluation before the rules under test).
fn endpoints() -> &'static str {
    let api = bank::API_TOML;
    &api[..api.find("[[rule]]").expect("the fixture has a rule")]
}

fn config(rules: &str) -> String {
    format!(
        "[capture]\nports = [80]\n[session]\nidentifiers = [ {{ cookie = \"sid\" }} ]\n{}\n{rules}",
        endpoints()
    )
}

/// One session on one connection; each request `gap` after the previous one.
fn session(cap: &mut Capture, t: u64, client: &str, sid: &str, script: &[(&str, u64)]) -> u64 {
    let ident = Ident::Cookie(sid.into());
    let mut conn = cap.open(t, client, "10.0.0.2:80");
    let mut t = t;
    for (what, gap) in script {
        t += gap;
        let request = match *what {
            "login" => bank::login(&ident, 1),
            "accounts" => bank::accounts(&ident, 1),
            "balance" => bank::balance(&ident, 1001),
            "transfer" => bank::transfer(&ident, 1001, 2002),
            other => panic!("no request {other}"),
        };
        cap.send(t, &mut conn, &request);
        cap.respond(
            t + MS,
            &mut conn,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
        );
    }
    cap.close(t + 2 * MS, &mut conn);
    t + SEC
}

/// (rule title, client) of every alert, in order.
fn fired(alerts: &[Alert]) -> Vec<(String, String)> {
    alerts
        .iter()
        .map(|a| (a.rule_title.clone(), a.client.clone()))
        .collect()
}

#[test]
fn cloudflare_example_rules_translated_to_the_bank_api() {
    // Cloudflare's examples, in its language:
    //   "transfer without a prior account listing":
    //     cf.sequence.current_op eq "<transfer>" and
    //       not any(cf.sequence.previous_ops[*] eq "<accounts>")
    //   "transfer less than 2 s after login":
    //     cf.sequence.current_op eq "<transfer>" and cf.sequence.msec_since_op["<login>"] lt 2000
    //   "transfer not straight after a balance check":
    //     cf.sequence.current_op eq "<transfer>" and cf.sequence.previous_ops[0] ne "<balance>"
    let rules = format!(
        r#"
[[rule]]
title = "transfer without listing accounts"
action = "block"
expression = '''sequence.current_op == "{TRANSFER}" && !sequence.previous_ops.exists(op, op == "{ACCOUNTS}")'''

[[rule]]
title = "transfer too soon after login"
action = "log"
priority = 5
expression = '''sequence.current_op == "{TRANSFER}" && sequence.msec_since_op["{LOGIN}"] < 2000'''

[[rule]]
title = "transfer not right after balance"
action = "log"
priority = -1
expression = '''sequence.current_op == "{TRANSFER}" && !(sequence.previous_ops[0] == "{BALANCE}")'''
"#
    );
    let mut cap = Capture::new();
    let mut t = T0;
    // Alice: the legit journey, a second apart: no rule.
    t = session(
        &mut cap,
        t,
        "10.0.1.1:40000",
        "alice",
        &[
            ("login", 0),
            ("accounts", SEC),
            ("balance", SEC),
            ("transfer", SEC),
        ],
    );
    // Mallory: straight to the transfer, 500 ms after login: all three, by priority.
    t = session(
        &mut cap,
        t,
        "10.0.6.6:40000",
        "mallory",
        &[("login", 0), ("transfer", 500 * MS)],
    );
    // Trudy: lists accounts, then transfers 2 s after login (not "less than 2000").
    t = session(
        &mut cap,
        t,
        "10.0.7.7:40000",
        "trudy",
        &[("login", 0), ("accounts", SEC), ("transfer", SEC)],
    );
    // Oscar: the journey at machine speed: only "too soon".
    session(
        &mut cap,
        t,
        "10.0.8.8:40000",
        "oscar",
        &[
            ("login", 0),
            ("accounts", 100 * MS),
            ("balance", 100 * MS),
            ("transfer", 100 * MS),
        ],
    );
    let (_, alerts) = replay(&config(&rules), &cap.to_pcap(Link::Ethernet));
    let expect = |title: &str, client: &str| (title.to_string(), client.to_string());
    // One verdict per request: the first violated rule in priority order decides.
    assert_eq!(
        fired(&alerts),
        [
            expect("transfer too soon after login", "10.0.6.6:40000"),
            expect("transfer not right after balance", "10.0.7.7:40000"),
            expect("transfer too soon after login", "10.0.8.8:40000"),
        ]
    );
    assert_eq!(alerts[0].action, AlertAction::Log);
    assert_eq!(alerts[0].previous_operations, [LOGIN]);
    assert_eq!(alerts[1].previous_operations, [ACCOUNTS, LOGIN]);

    // Without the higher-priority rule, Mallory meets the block rule (monitor mode).
    let without_soon: String = rules.replace("< 2000", "< 0");
    let (_, alerts) = replay(&config(&without_soon), &cap.to_pcap(Link::Ethernet));
    assert_eq!(
        fired(&alerts),
        [
            expect("transfer without listing accounts", "10.0.6.6:40000"),
            expect("transfer not right after balance", "10.0.7.7:40000"),
        ]
    );
    assert_eq!(alerts[0].action, AlertAction::WouldBlock);
}

#[test]
fn http_and_session_fields_on_a_replay() {
    let rules = r#"
[[rule]]
title = "third request of a young session"
action = "log"
expression = '''session.request_count == 3 && session.age_msec < 1000 && http.request.method == "GET" && http.request.uri.path.endsWith("/balance")'''
"#;
    let mut cap = Capture::new();
    let t = session(
        &mut cap,
        T0,
        "10.0.1.1:40000",
        "quick",
        &[
            ("login", 0),
            ("accounts", 300 * MS),
            ("balance", 300 * MS),
            ("transfer", 300 * MS),
        ],
    );
    session(
        &mut cap,
        t,
        "10.0.2.2:40000",
        "slow",
        &[("login", 0), ("accounts", 600 * MS), ("balance", 600 * MS)],
    );
    let (_, alerts) = replay(&config(rules), &cap.to_pcap(Link::Ethernet));
    assert_eq!(
        fired(&alerts),
        [(
            "third request of a young session".to_string(),
            "10.0.1.1:40000".to_string()
        )]
    );
    assert_eq!(alerts[0].operation, BALANCE);
}

#[test]
fn rate_rules_limit_a_session_per_period() {
    let rules = format!(
        r#"
[[rule]]
title = "at most 3 balance checks a minute"
kind = "rate"
action = "block"
operation = "{BALANCE}"
limit = 3
period = "1m"
"#
    );
    let mut cap = Capture::new();
    // T0 is on a minute boundary: four checks in the first minute, two in the next.
    let script: Vec<(&str, u64)> = [("balance", SEC); 4]
        .into_iter()
        .chain([("balance", 60 * SEC), ("balance", SEC)])
        .collect();
    let t = session(&mut cap, T0, "10.0.1.1:40000", "greedy", &script);
    session(
        &mut cap,
        t,
        "10.0.2.2:40000",
        "modest",
        &[("balance", 0); 3],
    );
    let (_, alerts) = replay(&config(&rules), &cap.to_pcap(Link::Ethernet));
    assert_eq!(
        fired(&alerts),
        [(
            "at most 3 balance checks a minute".to_string(),
            "10.0.1.1:40000".to_string()
        )],
        "only the fourth request of the first minute"
    );
    assert_eq!(alerts[0].event, "rate_exceeded");
}

#[test]
fn a_reload_with_a_bad_expression_keeps_the_old_rules() {
    let good = format!(
        "[[rule]]\ntitle = \"t\"\naction = \"log\"\nexpression = 'sequence.current_op == \"{TRANSFER}\"'\n"
    );
    let path = Path::new("rules.toml");
    let first = Config::parse(&config(&good), path).unwrap();
    let mut pipeline = Pipeline::new(&first, &TEST_KEY).unwrap();
    let bad = Config::parse(
        &config(
            "[[rule]]\ntitle = \"t\"\naction = \"log\"\nexpression = 'sequence.current_op === 1'\n",
        ),
        path,
    )
    .unwrap();
    let e = pipeline.reload_rules(&bad).unwrap_err();
    assert_eq!(e.key, "rule[0].expression");
    assert!(e.reason.starts_with("column 23: "), "{e}");
    let views = pipeline.rules().views(pipeline.catalog());
    assert_eq!(views.len(), 1);
    assert_eq!(
        views[0].expression.as_deref(),
        Some(format!("sequence.current_op == \"{TRANSFER}\"").as_str()),
        "the old rule stays"
    );
    // …and still decides.
    let mut cap = Capture::new();
    session(&mut cap, T0, "10.0.1.1:40000", "s", &[("transfer", 0)]);
    let mut alerts = Vec::new();
    pipeline
        .replay_pcap(&cap.to_pcap(Link::Ethernet), &[80], &mut alerts)
        .unwrap();
    assert_eq!(alerts.len(), 1);
}
