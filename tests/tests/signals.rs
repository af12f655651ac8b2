//! Per-session volume and enumeration signals on replays of the bank API: sessions of
//! known rates and known enumeration walks, with exact percentiles and alerts.

use seqshield::alerts::{Alert, AlertAction};
use seqshield::report::Report;
use seqshield::signals::Distribution;
use seqshield_tests::bank::{self, BALANCE, Ident, LOGIN, MS, SEC, T0};
use seqshield_tests::capture::{Capture, Link};
use seqshield_tests::replay;

const MIN: u64 = 60 * SEC;

fn config(extra: &str) -> String {
    let api = bank::API_TOML;
    let endpoints = &api[..api.find("[[rule]]").expect("the fixture has a rule")];
    format!(
        "[capture]\nports = [80]\n[session]\nidentifiers = [ {{ cookie = \"sid\" }} ]\n{endpoints}\n{extra}"
    )
}

/// A session on one connection sending `requests`, 10 ms apart, from `t`.
fn session(cap: &mut Capture, t: u64, n: usize, requests: &[Vec<u8>]) -> u64 {
    let client = format!("10.1.{}.{}:40000", n / 250, n % 250 + 1);
    let mut conn = cap.open(t, &client, "10.0.0.2:80");
    let mut t = t;
    for r in requests {
        t += 10 * MS;
        cap.send(t, &mut conn, r);
        cap.respond(
            t + MS,
            &mut conn,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
        );
    }
    cap.close(t + 2 * MS, &mut conn);
    t + 10 * MS
}

fn balances(sid: &str, accounts: impl IntoIterator<Item = u32>) -> Vec<Vec<u8>> {
    let ident = Ident::Cookie(sid.into());
    accounts
        .into_iter()
        .map(|a| bank::balance(&ident, a))
        .collect()
}

fn operation<'r>(report: &'r Report, human: &str) -> &'r seqshield::report::OperationReport {
    report
        .operations
        .iter()
        .find(|o| o.human() == human)
        .expect("operation listed")
}

fn dist(windows: u64, p50: u64, p90: u64, p99: u64, max: u64) -> Option<Distribution> {
    Some(Distribution {
        windows,
        p50,
        p90,
        p99,
        max,
    })
}

#[test]
fn request_rates_per_session_and_window_have_exact_percentiles() {
    let mut cap = Capture::new();
    // Window 1: session i checks a balance i times (i = 1..=10); all log in once.
    for i in 1..=10u32 {
        let sid = format!("s{i}");
        let mut requests = vec![bank::login(&Ident::Cookie(sid.clone()), i)];
        requests.extend(balances(&sid, std::iter::repeat_n(1000 + i, i as usize)));
        session(&mut cap, T0 + u64::from(i) * SEC, i as usize, &requests);
    }
    // Window 2 (15 minutes later): s1 again, 100 times: a window of its own.
    session(
        &mut cap,
        T0 + 15 * MIN,
        1,
        &balances("s1", std::iter::repeat_n(1001, 100)),
    );
    let (report, alerts) = replay(&config(""), &cap.to_pcap(Link::Ethernet));
    assert!(alerts.is_empty());
    // 11 (session, window) pairs: 1..=10 and 100. Nearest rank: p50 is the 6th (6),
    // p90 the 10th (10), p99 the 11th (100).
    assert_eq!(
        operation(&report, BALANCE).session_rate,
        dist(11, 6, 10, 100, 100)
    );
    assert_eq!(operation(&report, LOGIN).session_rate, dist(10, 1, 1, 1, 1));
    assert_eq!(
        operation(&report, BALANCE).distinct_values,
        None,
        "enumeration off"
    );

    // `rules suggest --rate` drafts limit = ceil(p99 × headroom); its TOML loads back.
    let drafted = seqshield::rules::suggest_rate_rules(&report, 1.5, 10);
    assert!(
        drafted.contains(&format!(
            "operation = {BALANCE:?}\nlimit = 150\nperiod = \"10m\""
        )),
        "{drafted}"
    );
    assert!(
        drafted.contains(&format!("operation = {LOGIN:?}\nlimit = 2\n")),
        "{drafted}"
    );
    assert!(drafted.contains("p50 6, p90 10, p99 100, max 100, over 11 session windows"));
    let (_, alerts) = replay(
        &config(&drafted.replace("limit = 150", "limit = 9")),
        &cap.to_pcap(Link::Ethernet),
    );
    // Session s10's tenth check passes 9 (one alert); s1's second window passes it 91 times.
    let rate_alerts: Vec<&Alert> = alerts
        .iter()
        .filter(|a| a.event == "rate_exceeded")
        .collect();
    assert_eq!(rate_alerts.len(), 1 + 91);
    assert!(
        rate_alerts
            .iter()
            .all(|a| a.operation == BALANCE && a.action == AlertAction::Log)
    );
}

#[test]
fn an_enumeration_walk_is_flagged_once_and_rules_can_block_it() {
    let extra = r#"
[enumeration]
enabled = true
factor = 3.0
min_distinct = 5

[[rule]]
title = "block enumerators"
action = "block"
expression = "session.enumeration_suspected"
"#;
    let mut cap = Capture::new();
    let mut t = T0;
    // Window 1: 50 sessions, each checking one or two of its own accounts.
    for i in 0..50u32 {
        let sid = format!("user{i}");
        let accounts: Vec<u32> = if i % 10 == 0 {
            vec![i, i + 500]
        } else {
            vec![i, i]
        };
        t = session(&mut cap, t, i as usize, &balances(&sid, accounts));
    }
    // Window 2: a user as before, and a walker over 30 account ids.
    t = T0 + 12 * MIN;
    t = session(&mut cap, t, 60, &balances("user1", [1, 1, 1]));
    session(&mut cap, t, 61, &balances("walker", 7000..7030));
    let (report, alerts) = replay(&config(extra), &cap.to_pcap(Link::Ethernet));
    // Window 1's p99 of distinct values is 2 (5 of 50 sessions had 2): threshold
    // max(ceil(2 × 3), 5) = 6, crossed by the walker's 7th account.
    let flagged: Vec<&Alert> = alerts
        .iter()
        .filter(|a| a.event == "enumeration_suspected")
        .collect();
    assert_eq!(flagged.len(), 1, "once per session and window");
    assert_eq!(
        flagged[0].rule_title,
        "7 distinct values in 10 min (threshold 6)"
    );
    assert_eq!(flagged[0].action, AlertAction::Log);
    assert_eq!(flagged[0].path, "/api/v1/accounts/7006/balance");
    // The rule blocks (monitor mode: would_block) every request from the 7th on.
    let blocked: Vec<&Alert> = alerts
        .iter()
        .filter(|a| a.rule_title == "block enumerators")
        .collect();
    assert_eq!(blocked.len(), 24);
    assert!(blocked.iter().all(|a| a.action == AlertAction::WouldBlock));
    // 52 (session, window) pairs: 45 with 1 distinct value, 5 with 2, user1 with 1,
    // the walker with 30.
    assert_eq!(
        operation(&report, BALANCE).distinct_values,
        dist(52, 1, 2, 30, 30)
    );
}

#[test]
fn without_history_only_min_distinct_counts() {
    let extra = "[enumeration]\nenabled = true\nmin_distinct = 10\n";
    let mut cap = Capture::new();
    session(&mut cap, T0, 1, &balances("walker", 0..10));
    session(&mut cap, T0 + SEC, 2, &balances("runner", 0..11));
    let (_, alerts) = replay(&config(extra), &cap.to_pcap(Link::Ethernet));
    let clients: Vec<&str> = alerts.iter().map(|a| a.client.as_str()).collect();
    assert_eq!(
        clients,
        ["10.1.0.3:40000"],
        "10 distinct values is not more than 10"
    );
}
