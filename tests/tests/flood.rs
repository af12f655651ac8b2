//! A flood of new sessions and connections (no handshakes) next to a few legit users:
//! memory stays bounded by the configured tables, the legit users' histories survive
//! (their transfers after a balance check stay allowed), and the attackers among them
//! are still caught.

use seqshield::alerts::Alert;
use seqshield::config::Config;
use seqshield::pipeline::Pipeline;
use seqshield_tests::bank::{self, Ident};
use seqshield_tests::capture::{Capture, Link};

const MS: u64 = 1_000_000;
const T0: u64 = 1_700_000_000_000_000_000;
/// The session table's size: the flood is 12 times larger.
const MAX_SESSIONS: usize = 5_000;
const FLOOD_CONNECTIONS: u32 = 20_000;
const REQUESTS_PER_FLOOD_CONNECTION: u32 = 3;
const LEGIT: u32 = 40;

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

#[test]
fn a_session_and_connection_flood_keeps_memory_bounded_and_legit_histories() {
    let mut cap = Capture::new();
    let mut ts = T0;
    // Legit users: log in and check a balance on connections of their own.
    let mut legit: Vec<_> = (0..LEGIT)
        .map(|i| {
            let client = format!("10.9.{}.{}:40000", i / 200, i % 200 + 1);
            cap.open(ts, &client, "10.0.0.1:80")
        })
        .collect();
    let ident = |i: u32| Ident::Cookie(format!("legit-{i}"));
    for (i, conn) in legit.iter_mut().enumerate() {
        ts += MS;
        cap.send(ts, conn, &bank::login(&ident(i as u32), i as u32));
        cap.send(
            ts + MS / 2,
            conn,
            &bank::balance(&ident(i as u32), i as u32),
        );
    }
    // The flood: connections joined mid-stream (no handshake), every request with a
    // session of its own; the legit users keep checking balances in between.
    for c in 0..FLOOD_CONNECTIONS {
        let client = format!(
            "10.{}.{}.{}:{}",
            100 + c / 60_000,
            (c / 250) % 240,
            c % 250 + 1,
            1024 + c % 60_000
        );
        let mut conn = cap.join(&client, "10.0.0.1:80", 77 + c);
        for r in 0..REQUESTS_PER_FLOOD_CONNECTION {
            ts += MS / 20;
            let id = Ident::Cookie(format!("flood-{c}-{r}"));
            cap.send(ts, &mut conn, &bank::login(&id, c));
        }
        if c % 500 == 0 {
            for (i, conn) in legit.iter_mut().enumerate() {
                cap.send(ts, conn, &bank::balance(&ident(i as u32), i as u32));
            }
        }
    }
    // The legit users transfer (allowed: a balance check precedes); one of them skips
    // the check on a new session (caught).
    for (i, conn) in legit.iter_mut().enumerate() {
        ts += MS;
        cap.send(ts, conn, &bank::balance(&ident(i as u32), i as u32));
        cap.send(
            ts + MS / 2,
            conn,
            &bank::transfer(&ident(i as u32), i as u32, 1),
        );
    }
    ts += MS;
    cap.send(
        ts,
        &mut legit[0],
        &bank::login(&Ident::Cookie("mallory".into()), 7),
    );
    cap.send(
        ts + MS,
        &mut legit[0],
        &bank::transfer(&Ident::Cookie("mallory".into()), 7, 1),
    );
    let pcap = cap.to_pcap(Link::Ethernet);

    let text = bank::config(1, "").replace(
        "[sequence]\nmin_support = 1\n",
        &format!(
            "[sequence]\nmin_support = 1\nmax_sessions = {MAX_SESSIONS}\nmax_sequences = 20000\n"
        ),
    );
    let config = Config::parse(&text, std::path::Path::new("flood.toml")).unwrap();
    let rss_before = rss_mib();
    let mut pipeline = Pipeline::new(&config, &[3; 32]).unwrap();
    let mut alerts: Vec<Alert> = Vec::new();
    pipeline.replay_pcap(&pcap, &[80], &mut alerts).unwrap();
    let rss_after = rss_mib();

    let stats = pipeline.stats();
    let expected = u64::from(FLOOD_CONNECTIONS * REQUESTS_PER_FLOOD_CONNECTION);
    assert!(stats.requests >= expected, "{stats:?}");
    let (sessions, sequences) = pipeline.table_sizes();
    assert!(sessions <= MAX_SESSIONS, "{sessions} sessions");
    assert!(sequences <= 20_000, "{sequences} sequences");
    assert!(
        stats.sessions.sessions_evicted > 0,
        "the flood evicted: {:?}",
        stats.sessions
    );
    // Every legit transfer was allowed (its history survived); only the attacker's
    // transfer raised an alert.
    let sessions_alerted: Vec<&str> = alerts.iter().map(|a| a.session.as_str()).collect();
    assert_eq!(alerts.len(), 1, "{sessions_alerted:?}");
    // The pipeline's memory follows its tables, not the flood (the capture itself, held
    // by this test, is counted in neither number).
    assert!(
        rss_after - rss_before < 200.0,
        "RSS grew {:.0} MiB while replaying the flood",
        rss_after - rss_before
    );
}
