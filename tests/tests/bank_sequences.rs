//! The SPEC's bank-transfer example end to end: legit journeys and attackers that skip
//! steps, replayed from a pcap the test writes; N(x), N(s), scores, bounds and alerts are
//! checked against values worked out by hand below.

use seqshield::alerts::AlertAction;
use seqshield_tests::bank::{self, ACCOUNTS, BALANCE, Ident, LOGIN, MS, SEC, T0, TRANSFER};
use seqshield_tests::capture::Capture;
use seqshield_tests::{op_counts, replay, sequences};

/// Five legit sessions (A B C D each), two attackers (A D, and A D D), three requests
/// without a session. A = login, B = accounts, C = balance, D = transfer.
fn bank_capture() -> Capture {
    let mut cap = Capture::new();
    let mut t = T0;
    let legit = [
        Ident::Cookie("alice-1".into()),
        Ident::Cookie("bob-2".into()),
        Ident::Cookie("carol-3".into()),
        Ident::Jwt("dave".into()),
        Ident::Header("erin-5".into()),
    ];
    for (i, ident) in legit.iter().enumerate() {
        let requests = bank::legit_journey(ident, i as u32);
        if i == 1 {
            // Bob opens a new connection for every request: sessions span connections.
            for (j, r) in requests.iter().enumerate() {
                t = bank::session_on_one_connection(
                    &mut cap,
                    t,
                    &format!("10.0.1.2:{}", 41_000 + j),
                    std::slice::from_ref(r),
                );
            }
        } else {
            t = bank::session_on_one_connection(
                &mut cap,
                t,
                &format!("10.0.1.{}:40000", 10 + i),
                &requests,
            );
        }
    }
    let mallory = Ident::Cookie("mallory".into());
    t = bank::session_on_one_connection(
        &mut cap,
        t,
        "10.0.6.6:50000",
        &bank::attacker_journey(&mallory, 66),
    );
    let trudy = Ident::Jwt("trudy".into());
    let mut script = bank::attacker_journey(&trudy, 77);
    script.push(bank::transfer(&trudy, 1077, 666));
    t = bank::session_on_one_connection(&mut cap, t, "10.0.7.7:50001", &script);
    let health = bank::request("GET", "/api/v1/health", &Ident::None, None);
    bank::session_on_one_connection(
        &mut cap,
        t + SEC,
        "10.0.9.9:50002",
        &[health.clone(), health.clone(), health],
    );
    cap
}

#[test]
fn counts_scores_and_alerts_match_the_hand_computation() {
    let (report, alerts) = replay(
        &bank::config(2, ""),
        &bank_capture().to_pcap(seqshield_tests::capture::Link::Ethernet),
    );

    // Requests: 5 × 4 legit + 2 (mallory) + 3 (trudy) + 3 health = 28; 3 without a session.
    assert_eq!(report.stats.requests, 28);
    assert_eq!(report.stats.unidentified_requests, 3);
    assert_eq!(report.stats.parse_errors, 0);

    // N(x): A = 5 + 2 = 7, B = 5, C = 5, D = 5 + 2 = 7 (trudy's second transfer repeats
    // the last operation: a request, not an occurrence).
    assert_eq!(op_counts(&report, LOGIN), (7, 7));
    assert_eq!(op_counts(&report, ACCOUNTS), (5, 5));
    assert_eq!(op_counts(&report, BALANCE), (5, 5));
    assert_eq!(op_counts(&report, TRANSFER), (8, 7));
    assert_eq!(op_counts(&report, "GET bank.test/api/v1/health"), (3, 0));

    // N(s) with min_support 2: the legit journey's suffixes 5 each, A D twice.
    let s = |ops: &[&str], count, last| {
        (
            ops.iter().map(|o| o.to_string()).collect::<Vec<_>>(),
            count,
            last,
        )
    };
    let mut got = sequences(&report);
    // Ties beyond score and count have no specified order: compare score groups as sets.
    got[..3].sort();
    got[3..6].sort();
    let mut want = vec![
        s(&[LOGIN, ACCOUNTS], 5, 5),
        s(&[ACCOUNTS, BALANCE], 5, 5),
        s(&[LOGIN, ACCOUNTS, BALANCE], 5, 5),
        s(&[BALANCE, TRANSFER], 5, 7),
        s(&[ACCOUNTS, BALANCE, TRANSFER], 5, 7),
        s(&[LOGIN, ACCOUNTS, BALANCE, TRANSFER], 5, 7),
        s(&[LOGIN, TRANSFER], 2, 7),
    ];
    want[..3].sort();
    want[3..6].sort();
    assert_eq!(got, want);

    // Scores and Wilson 95% lower bounds, worked out by hand:
    //   5/5 → 1, lower 0.5655;  5/7 → 0.7143, lower 0.3589;  2/7 → 0.2857, lower 0.0822.
    let close = |a: f64, b: f64| (a - b).abs() < 1e-4;
    for (seq, (score, lower)) in report.sequences.iter().zip([
        (1.0, 0.5655),
        (1.0, 0.5655),
        (1.0, 0.5655),
        (0.7143, 0.3589),
        (0.7143, 0.3589),
        (0.7143, 0.3589),
        (0.2857, 0.0822),
    ]) {
        assert!(
            close(seq.score, score) && close(seq.score_lower, lower),
            "{seq:?}"
        );
    }

    // Alerts: mallory's transfer, and both of trudy's (a repeat still gets a verdict).
    // The rule's action is block, the default mode is monitor: would_block.
    assert_eq!(alerts.len(), 3, "{alerts:#?}");
    for a in &alerts {
        assert_eq!(a.event, "sequence_violation");
        assert_eq!(a.action, AlertAction::WouldBlock);
        assert_eq!(a.rule_title, bank::RULE_TITLE);
        assert_eq!(a.rule_id, "6f1c1f9e-3f43-4a53-9d2c-2a4c1d3e5b7a");
        assert_eq!(a.operation, TRANSFER);
        assert_eq!(
            (a.host.as_str(), a.method.as_str(), a.path.as_str()),
            ("bank.test", "POST", "/api/v1/transferFunds")
        );
        assert_eq!(a.previous_operations, [LOGIN]);
        assert_eq!(a.server, "10.0.0.2:80");
        assert_eq!(a.session.len(), 16, "a keyed hash, never the raw value");
        assert!(!a.session.contains("mallory") && !a.session.contains("trudy"));
    }
    assert_eq!(alerts[0].client, "10.0.6.6:50000");
    assert_eq!(alerts[1].client, "10.0.7.7:50001");
    assert_eq!(alerts[1].session, alerts[2].session);
    assert_ne!(alerts[0].session, alerts[1].session);
    assert!(
        alerts[0].timestamp.starts_with("2026-11-26T00:00:"),
        "{}",
        alerts[0].timestamp
    );
}

#[test]
fn enforce_mode_reports_block_and_log_rules_report_log() {
    let pcap = bank_capture().to_pcap(seqshield_tests::capture::Link::Ethernet);
    let (_, alerts) = replay(&bank::config(5, "[enforce]\nmode = \"enforce\"\n"), &pcap);
    assert_eq!(alerts.len(), 3);
    assert!(alerts.iter().all(|a| a.action == AlertAction::Block));
    let log_rule = bank::config(5, "").replace("action = \"block\"", "action = \"log\"");
    let (_, alerts) = replay(&log_rule, &pcap);
    assert!(alerts.iter().all(|a| a.action == AlertAction::Log));
}

#[test]
fn min_support_filters_and_idle_sessions_start_over() {
    let (report, _) = replay(
        &bank::config(5, ""),
        &bank_capture().to_pcap(seqshield_tests::capture::Link::Ethernet),
    );
    assert_eq!(
        report.sequences.len(),
        6,
        "A D (count 2) is below min_support 5"
    );

    // A session that comes back after more than idle_timeout starts a fresh history:
    // login, (11 min), transfer → no A D sequence, and the transfer violates the rule
    // with an empty lookback.
    let mut cap = Capture::new();
    let ident = Ident::Cookie("sleepy".into());
    let t =
        bank::session_on_one_connection(&mut cap, T0, "10.0.3.3:40000", &[bank::login(&ident, 1)]);
    bank::session_on_one_connection(
        &mut cap,
        t + 11 * 60 * SEC,
        "10.0.3.3:40001",
        &[bank::transfer(&ident, 1, 2)],
    );
    let (report, alerts) = replay(
        &bank::config(1, ""),
        &cap.to_pcap(seqshield_tests::capture::Link::Ethernet),
    );
    assert!(report.sequences.is_empty(), "{:?}", report.sequences);
    assert_eq!(alerts.len(), 1);
    assert!(alerts[0].previous_operations.is_empty());

    // Within the timeout the history carries over, across connections.
    let mut cap = Capture::new();
    let t =
        bank::session_on_one_connection(&mut cap, T0, "10.0.3.3:40000", &[bank::login(&ident, 1)]);
    bank::session_on_one_connection(
        &mut cap,
        t + 9 * 60 * SEC + 500 * MS,
        "10.0.3.3:40001",
        &[bank::transfer(&ident, 1, 2)],
    );
    let (report, _) = replay(
        &bank::config(1, ""),
        &cap.to_pcap(seqshield_tests::capture::Link::Ethernet),
    );
    assert_eq!(
        sequences(&report),
        [(vec![LOGIN.to_string(), TRANSFER.to_string()], 1, 1)]
    );
}

#[test]
fn counts_leave_the_24h_window() {
    // Day 1: a full legit journey. Day 2 (25 h later): one attacker. The report at the
    // end of day 2 no longer counts day 1.
    let mut cap = Capture::new();
    let alice = Ident::Cookie("alice".into());
    let t = bank::session_on_one_connection(
        &mut cap,
        T0,
        "10.0.1.1:40000",
        &bank::legit_journey(&alice, 1),
    );
    let eve = Ident::Cookie("eve".into());
    bank::session_on_one_connection(
        &mut cap,
        t + 25 * 3600 * SEC,
        "10.0.6.6:40000",
        &bank::attacker_journey(&eve, 2),
    );
    let (report, alerts) = replay(
        &bank::config(1, ""),
        &cap.to_pcap(seqshield_tests::capture::Link::Ethernet),
    );
    assert_eq!(op_counts(&report, LOGIN), (1, 1));
    assert_eq!(
        op_counts(&report, BALANCE),
        (0, 0),
        "configured, listed with zeros"
    );
    assert_eq!(
        sequences(&report),
        [(vec![LOGIN.to_string(), TRANSFER.to_string()], 1, 1)]
    );
    assert_eq!(
        report.stats.requests, 6,
        "stats are run totals, not windowed"
    );
    assert_eq!(alerts.len(), 1);
}
