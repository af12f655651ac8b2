//! A flood at full scale — a million new sessions on a hundred thousand connections
//! joined without handshakes, thousands of them leaving huge unfinished heads — next to
//! a few legit users: memory stays bounded by the configured tables and buffer budget,
//! the legit users' histories survive (their transfers after a balance check stay
//! allowed), and the attacker among them is still caught.
//!
//! The capture is made and replayed a slice at a time, so the process's memory is the
//! pipeline's, not the capture's.

use seqshield::alerts::Alert;
use seqshield::config::Config;
use seqshield::pipeline::Pipeline;
use seqshield_tests::bank::{self, Ident};
use seqshield_tests::capture::{Capture, Conn, Link};
use seqshield_tests::flood::flood_client;

const MS: u64 = 1_000_000;
const T0: u64 = 1_700_000_000_000_000_000;
/// The session table's size: the flood is 5 times larger.
const MAX_SESSIONS: usize = 200_000;
const MAX_SEQUENCES: usize = 20_000;
/// `[capture] max_buffer_bytes`; the unfinished heads below add up to twice as much.
const MAX_BUFFER_BYTES: usize = 16 << 20;
const FLOOD_CONNECTIONS: u32 = 100_000;
const REQUESTS_PER_FLOOD_CONNECTION: u32 = 10;
/// Every this many flood connections, one also leaves a head it never finishes.
const UNFINISHED_EVERY: u32 = 100;
const UNFINISHED_HEAD_BYTES: usize = 30 * 1024;
const CONNECTIONS_PER_SLICE: u32 = 2_000;
const LEGIT: u32 = 40;

/// Anonymous resident memory of this process (the heap; mapped files aside).
fn rss_anon_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("RssAnon:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

fn legit_ident(i: u32) -> Ident {
    Ident::Cookie(format!("legit-{i}"))
}

struct Replay {
    pipeline: Pipeline,
    alerts: Vec<Alert>,
    peak_rss_anon: f64,
}

impl Replay {
    fn run(&mut self, slice: Capture) {
        let pcap = slice.to_pcap(Link::Ethernet);
        self.pipeline
            .replay_pcap(&pcap, &[80], &mut self.alerts)
            .unwrap();
        drop(pcap);
        let (buffered, limit) = self.pipeline.buffered_bytes();
        assert!(
            buffered <= limit,
            "{buffered} bytes buffered, limit {limit}"
        );
        self.peak_rss_anon = self.peak_rss_anon.max(rss_anon_mib());
    }
}

#[test]
fn a_full_scale_flood_keeps_memory_bounded_and_legit_histories() {
    let text = bank::config(1, "").replace(
        "[sequence]\nmin_support = 1\n",
        &format!(
            "[sequence]\nmin_support = 1\nmax_sessions = {MAX_SESSIONS}\nmax_sequences = {MAX_SEQUENCES}\n"
        ),
    );
    let text = text.replace(
        "[capture]\n",
        &format!("[capture]\nmax_buffer_bytes = {MAX_BUFFER_BYTES}\n"),
    );
    let config = Config::parse(&text, std::path::Path::new("flood.toml")).unwrap();
    let rss_before = rss_anon_mib();
    let mut replay = Replay {
        pipeline: Pipeline::new(&config, &[3; 32]).unwrap(),
        alerts: Vec::new(),
        peak_rss_anon: rss_before,
    };

    // Legit users: log in and check a balance on connections of their own.
    let mut ts = T0;
    let mut slice = Capture::new();
    let mut legit: Vec<Conn> = (0..LEGIT)
        .map(|i| slice.open(ts, &format!("10.9.0.{}:40000", i + 1), "10.0.0.1:80"))
        .collect();
    for (i, conn) in (0..).zip(legit.iter_mut()) {
        ts += MS;
        slice.send(ts, conn, &bank::login(&legit_ident(i), i));
        slice.send(ts + MS / 2, conn, &bank::balance(&legit_ident(i), i));
    }
    replay.run(slice);

    // The flood, a slice at a time: every request a session of its own; the legit
    // users keep checking balances in between.
    let unfinished = format!(
        "GET /api/v1/accounts/1/balance HTTP/1.1\r\nX-Pad: {}\r\n",
        "a".repeat(UNFINISHED_HEAD_BYTES)
    );
    for first in (0..FLOOD_CONNECTIONS).step_by(CONNECTIONS_PER_SLICE as usize) {
        let mut slice = Capture::new();
        for c in first..first + CONNECTIONS_PER_SLICE {
            let mut conn = slice.join(&flood_client(c), "10.0.0.1:80", 77 + c);
            for r in 0..REQUESTS_PER_FLOOD_CONNECTION {
                ts += MS / 100;
                let id = Ident::Cookie(format!("flood-{c}-{r}"));
                slice.send(ts, &mut conn, &bank::login(&id, c));
            }
            if c % UNFINISHED_EVERY == 0 {
                slice.send(ts, &mut conn, unfinished.as_bytes());
            }
        }
        for (i, conn) in (0..).zip(legit.iter_mut()) {
            slice.send(ts, conn, &bank::balance(&legit_ident(i), i));
        }
        replay.run(slice);
    }

    // The legit users transfer (allowed: a balance check precedes); one of them skips
    // the check on a new session (caught).
    let mut slice = Capture::new();
    for (i, conn) in (0..).zip(legit.iter_mut()) {
        ts += MS;
        slice.send(ts, conn, &bank::balance(&legit_ident(i), i));
        slice.send(ts + MS / 2, conn, &bank::transfer(&legit_ident(i), i, 1));
    }
    ts += MS;
    let mallory = Ident::Cookie("mallory".into());
    slice.send(ts, &mut legit[0], &bank::login(&mallory, 7));
    slice.send(ts + MS, &mut legit[0], &bank::transfer(&mallory, 7, 1));
    replay.run(slice);

    let Replay {
        mut pipeline,
        mut alerts,
        peak_rss_anon,
    } = replay;
    let stats = pipeline.stats();
    let flood_requests = u64::from(FLOOD_CONNECTIONS * REQUESTS_PER_FLOOD_CONNECTION);
    assert!(stats.requests >= flood_requests, "{stats:?}");
    let (sessions, sequences) = pipeline.table_sizes();
    assert!(sessions <= MAX_SESSIONS, "{sessions} sessions");
    assert!(sequences <= MAX_SEQUENCES, "{sequences} sequences");
    assert!(stats.sessions.sessions_evicted > 0, "{:?}", stats.sessions);
    assert!(stats.flows.flows_evicted > 0, "{:?}", stats.flows);
    assert!(stats.heads_over_budget > 0, "the budget was hit: {stats:?}");
    // Every legit transfer was allowed (its history survived); only the attacker's
    // transfer raised an alert.
    let sessions_alerted: Vec<&str> = alerts.iter().map(|a| a.session.as_str()).collect();
    assert_eq!(alerts.len(), 1, "{sessions_alerted:?}");
    // The pipeline's memory follows its tables and buffer budget, not the flood.
    let grew = peak_rss_anon - rss_before;
    eprintln!("peak anonymous RSS grew {grew:.0} MiB over {rss_before:.0} MiB");
    assert!(
        grew < 300.0,
        "anonymous RSS grew {grew:.0} MiB during the flood"
    );
    // Once the connections are forgotten, every buffered byte is given back.
    pipeline.tick(ts + 3 * 3600 * 1_000 * MS, &mut alerts);
    assert_eq!(pipeline.buffered_bytes().0, 0);
}
