//! SPEC §7 "The agent sees what the server sees", in replay: one test per insertion or
//! evasion attack, each a capture with both directions written by the test. Every test
//! checks the requests the agent counted and the alerts it raised against what the
//! server's Linux stack would have delivered to the application.
//!
//! The journey: `GET /check` must come before `GET /act` (an allow rule, action log).
//! An attack that hides `/check` from the agent, or shows it a `/act` the server never
//! read, shows up as a wrong count or a false alert.

use seqshield_tests::bank::{MS, T0};
use seqshield_tests::capture::{Capture, Conn, Craft, Link};
use seqshield_tests::replay;

const SEC: u64 = 1_000 * MS;
const CHECK: &str = "GET api.test/check";
const ACT: &str = "GET api.test/act";

/// Discovery, sessions by cookie, the journey's allow rule; `capture_keys` go into
/// `[capture]`, `extra` after everything.
fn config(capture_keys: &str, extra: &str) -> String {
    format!(
        "[capture]\nports = [80]\n{capture_keys}\n[session]\nidentifiers = [{{ cookie = \"sid\" }}]\n\
         [sequence]\nmin_support = 1\n\
         [[rule]]\ntitle = \"act needs a check\"\nkind = \"allow\"\naction = \"log\"\n\
         sequence = [\"{CHECK}\", \"{ACT}\"]\n{extra}"
    )
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: api.test\r\nCookie: sid=s1\r\n\r\n")
}

/// The check, then the act, on one connection: what the server reads in every test.
fn journey() -> String {
    get("/check") + &get("/act")
}

struct Seen {
    requests: Vec<(String, u64)>,
    alerts: usize,
    report: seqshield::report::Report,
}

fn replay_with(cap: &Capture, capture_keys: &str) -> Seen {
    let (report, alerts) = replay(&config(capture_keys, ""), &cap.to_pcap(Link::Ethernet));
    let mut requests: Vec<(String, u64)> = report
        .operations
        .iter()
        .filter(|o| o.requests > 0)
        .map(|o| (o.human(), o.requests))
        .collect();
    requests.sort();
    Seen {
        requests,
        alerts: alerts.len(),
        report,
    }
}

/// The server read one check and one act, in that order: no alert.
fn assert_read_the_journey(seen: &Seen) {
    assert_eq!(
        seen.requests,
        [(ACT.to_string(), 1), (CHECK.to_string(), 1)],
        "{:?}",
        seen.report.stats
    );
    assert_eq!(seen.alerts, 0, "a false alert: {:?}", seen.report.stats);
}

fn open(cap: &mut Capture) -> Conn {
    cap.open(T0, "10.0.0.1:40000", "10.0.0.2:80")
}

/// Sends `bytes[a..b]` at its own place in the stream (without moving `conn` on).
fn part(cap: &mut Capture, ts: u64, conn: &Conn, bytes: &[u8], a: usize, b: usize) {
    cap.segment(ts, conn, a as u32, &bytes[a..b]);
}

#[test]
fn resets_the_server_ignores_do_not_end_the_stream() {
    let mut cap = Capture::new();
    let mut conn = open(&mut cap);
    let j = journey();
    part(&mut cap, T0 + MS, &conn, j.as_bytes(), 0, 20);
    for offset in [200_000, 25] {
        // Beyond the window, and in it but not at the next byte (RFC 5961 §3.2).
        cap.crafted(
            T0 + 2 * MS,
            &conn,
            Craft {
                offset,
                flags: Craft::RST,
                ..Craft::default()
            },
        );
    }
    part(&mut cap, T0 + 3 * MS, &conn, j.as_bytes(), 20, j.len());
    cap.advance(&mut conn, j.len());
    cap.server_ack(T0 + 4 * MS, &conn, 0);
    let seen = replay_with(&cap, "");
    assert_read_the_journey(&seen);
    assert_eq!(seen.report.stats.flows.ignored_resets, 1);
    assert_eq!(seen.report.stats.flows.out_of_window_segments, 1);
}

#[test]
fn a_reset_at_the_next_byte_ends_the_connection() {
    let mut cap = Capture::new();
    let conn = open(&mut cap);
    let j = journey();
    let check = get("/check").len();
    part(&mut cap, T0 + MS, &conn, j.as_bytes(), 0, check);
    cap.crafted(
        T0 + 2 * MS,
        &conn,
        Craft {
            offset: check as i64,
            flags: Craft::RST,
            ..Craft::default()
        },
    );
    // Linux accepted the reset: what follows is not read.
    part(&mut cap, T0 + 3 * MS, &conn, j.as_bytes(), check, j.len());
    let seen = replay_with(&cap, "");
    assert_eq!(seen.requests, [(CHECK.to_string(), 1)]);
    assert_eq!(seen.report.stats.flows.after_close_segments, 1);
}

#[test]
fn a_syn_on_an_open_connection_does_not_restart_it() {
    let mut cap = Capture::new();
    let mut conn = open(&mut cap);
    let j = journey();
    part(&mut cap, T0 + MS, &conn, j.as_bytes(), 0, 15);
    cap.crafted(
        T0 + 2 * MS,
        &conn,
        Craft {
            offset: 1_000_000,
            flags: Craft::SYN,
            ..Craft::default()
        },
    );
    part(&mut cap, T0 + 3 * MS, &conn, j.as_bytes(), 15, j.len());
    cap.advance(&mut conn, j.len());
    cap.server_ack(T0 + 4 * MS, &conn, 0);
    let seen = replay_with(&cap, "");
    assert_read_the_journey(&seen);
    assert_eq!(seen.report.stats.flows.ignored_syns, 1);
}

#[test]
fn a_far_ahead_segment_is_outside_the_window() {
    let mut cap = Capture::new();
    let mut conn = open(&mut cap);
    let decoy = get("/act");
    cap.crafted(
        T0 + MS,
        &conn,
        Craft {
            offset: 300_000,
            bytes: decoy.as_bytes(),
            ..Craft::default()
        },
    );
    // Well past the old 2 s hole timer.
    cap.send(T0 + 3 * SEC, &mut conn, journey().as_bytes());
    let seen = replay_with(&cap, "");
    assert_read_the_journey(&seen);
    assert_eq!(seen.report.stats.flows.out_of_window_segments, 1);
}

#[test]
fn many_tiny_segments_in_reverse_order() {
    let mut cap = Capture::new();
    let mut conn = open(&mut cap);
    let j = journey();
    assert!(j.len() > 70);
    for (k, i) in (0..j.len()).rev().enumerate() {
        // Spread over more than the old 2 s hole timer too.
        part(
            &mut cap,
            T0 + 30 * MS * k as u64,
            &conn,
            j.as_bytes(),
            i,
            i + 1,
        );
    }
    cap.advance(&mut conn, j.len());
    cap.server_ack(T0 + 10 * SEC, &conn, 0);
    let seen = replay_with(&cap, "");
    assert_read_the_journey(&seen);
    assert_eq!(seen.report.stats.flows.gaps, 0);
}

#[test]
fn a_first_segment_held_back_for_seconds() {
    let mut cap = Capture::new();
    let mut conn = open(&mut cap);
    let j = journey();
    part(&mut cap, T0 + MS, &conn, j.as_bytes(), 10, j.len());
    cap.server_ack(T0 + 2 * MS, &conn, 0); // a duplicate ACK: the hole is still open
    part(&mut cap, T0 + 5 * SEC, &conn, j.as_bytes(), 0, 10);
    cap.advance(&mut conn, j.len());
    cap.server_ack(T0 + 5 * SEC + MS, &conn, 0);
    let seen = replay_with(&cap, "");
    assert_read_the_journey(&seen);
}

#[test]
fn decoys_the_server_drops_lose_to_the_real_bytes() {
    let mut cap = Capture::new();
    let mut conn = open(&mut cap);
    // Sent first at the same place, naming the other operation.
    let real = journey();
    let decoy_first = get("/act") + &get("/act");
    for craft in [
        Craft {
            bad_checksum: true,
            ..Craft::default()
        },
        Craft {
            flags: 8,
            ..Craft::default()
        }, // PSH without ACK
        Craft {
            ack_add: 1_000_000,
            ..Craft::default()
        }, // ACK of unsent data
    ] {
        cap.crafted(
            T0 + MS,
            &conn,
            Craft {
                bytes: decoy_first.as_bytes(),
                ..craft
            },
        );
    }
    cap.send(T0 + 2 * MS, &mut conn, real.as_bytes());
    let seen = replay_with(&cap, "");
    assert_read_the_journey(&seen);
    let flows = seen.report.stats.flows;
    assert_eq!(
        (flows.bad_checksum_segments, flows.discarded_segments),
        (1, 2)
    );
}

#[test]
fn the_urgent_byte_is_not_part_of_the_stream() {
    let mut cap = Capture::new();
    let mut conn = open(&mut cap);
    let wire = get("/cXheck") + &get("/act");
    let x = wire.find('X').unwrap();
    cap.crafted(
        T0 + MS,
        &conn,
        Craft {
            bytes: wire.as_bytes(),
            urgent: Some(x as u16 + 1),
            ..Craft::default()
        },
    );
    cap.advance(&mut conn, wire.len());
    cap.server_ack(T0 + 2 * MS, &conn, 0);
    let seen = replay_with(&cap, "");
    assert_read_the_journey(&seen);
    assert_eq!(seen.report.stats.flows.urgent_bytes_removed, 1);
}

#[test]
fn overlapping_bytes_resolve_as_linux_queues_them() {
    let mut cap = Capture::new();
    let mut conn = open(&mut cap);
    let j = journey();
    let at = j.find("check").unwrap();
    // The tail is queued first; other bytes wholly inside it lose; then the head.
    part(&mut cap, T0 + MS, &conn, j.as_bytes(), at - 1, j.len());
    cap.crafted(
        T0 + 2 * MS,
        &conn,
        Craft {
            offset: at as i64,
            bytes: b"act/x",
            ..Craft::default()
        },
    );
    part(&mut cap, T0 + 3 * MS, &conn, j.as_bytes(), 0, at - 1);
    // Retransmitted head with other bytes: already delivered, the first copy stays.
    cap.crafted(
        T0 + 4 * MS,
        &conn,
        Craft {
            offset: 4,
            bytes: b"/act/",
            ..Craft::default()
        },
    );
    cap.advance(&mut conn, j.len());
    cap.server_ack(T0 + 5 * MS, &conn, 0);
    let seen = replay_with(&cap, "");
    assert_read_the_journey(&seen);
}

#[test]
fn a_request_retransmitted_after_fin_counts_once() {
    let mut cap = Capture::new();
    let mut conn = open(&mut cap);
    let j = journey();
    cap.send(T0 + MS, &mut conn, j.as_bytes());
    cap.close(T0 + 2 * MS, &mut conn);
    for i in 0..3 {
        let back = -(j.len() as i64) - 1;
        cap.crafted(
            T0 + (3 + i) * MS,
            &conn,
            Craft {
                offset: back,
                bytes: j.as_bytes(),
                ..Craft::default()
            },
        );
    }
    let seen = replay_with(&cap, "");
    assert_read_the_journey(&seen);
    assert_eq!(seen.report.stats.flows.after_close_segments, 3);
}

#[test]
fn a_hole_the_server_acknowledged_is_capture_loss_not_a_guess() {
    let mut cap = Capture::new();
    let mut conn = open(&mut cap);
    let lost = get("/lost");
    let j = journey();
    // The capture missed the first request; the server read it and acknowledged it.
    cap.advance(&mut conn, lost.len());
    cap.server_ack(T0 + MS, &conn, 0);
    cap.send(T0 + 2 * MS, &mut conn, j.as_bytes());
    let seen = replay_with(&cap, "");
    assert_read_the_journey(&seen);
    let flows = seen.report.stats.flows;
    assert_eq!(
        (flows.gaps, flows.capture_loss_bytes),
        (1, lost.len() as u64)
    );
}

#[test]
fn a_one_sided_capture_falls_back_to_timers_and_says_so() {
    let mut two = Capture::new();
    let mut conn = open(&mut two);
    let j = journey();
    part(&mut two, T0 + MS, &conn, j.as_bytes(), 10, j.len());
    cap_advance_and_close(&mut two, &mut conn, j.len(), T0 + 5 * SEC);
    // Only the client's packets: the hole before byte 10 is given up on the timer.
    let one = two.client_side_only();
    let seen = replay_with(&one, "");
    let flows = seen.report.stats.flows;
    assert_eq!(flows.gaps_timed_out, 1, "{flows:?}");
    assert_eq!(flows.one_sided_flows, 1, "{flows:?}");
}

fn cap_advance_and_close(cap: &mut Capture, conn: &mut Conn, n: usize, ts: u64) {
    cap.advance(conn, n);
    cap.close(ts, conn);
}

#[test]
fn a_long_keep_alive_silence_then_a_split_head() {
    for capture_keys in ["", "flow_idle_timeout = \"5m\""] {
        let mut cap = Capture::new();
        let mut conn = open(&mut cap);
        cap.send(T0 + MS, &mut conn, get("/check").as_bytes());
        // Ten minutes of silence (Go keeps idle keep-alive connections forever), then
        // a request whose request line is split across two segments.
        let act = get("/act");
        cap.send_split(T0 + 600 * SEC, &mut conn, act.as_bytes(), &[6]);
        let seen = replay_with(&cap, capture_keys);
        assert_read_the_journey(&seen);
    }
}

#[test]
fn spellings_of_one_operation_are_one_operation_and_the_rule_still_fires() {
    let variants = [
        ("/act", "api.test"),
        ("/%61ct", "api.test"),
        ("/act/", "api.test"),
        ("//./act", "api.test"),
        ("/x/../act?q=1", "api.test"),
        ("/act", "API.TEST."),
        ("/act", "10.0.0.2"),
        ("/act", "other.test:80"),
    ];
    let mut cap = Capture::new();
    let mut conn = open(&mut cap);
    for (i, (path, host)) in variants.iter().enumerate() {
        let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nCookie: sid=s1\r\n\r\n");
        cap.send(T0 + (i as u64 + 1) * MS, &mut conn, req.as_bytes());
    }
    let (report, alerts) = replay(
        &(config("", "")
            + "\n[operations]\ndefault_host = \"api.test\"\n[[endpoint]]\nhost = \"api.test\"\nmethod = \"GET\"\npath = \"/check\"\n"),
        &cap.to_pcap(Link::Ethernet),
    );
    let acts: Vec<_> = report
        .operations
        .iter()
        .filter(|o| o.requests > 0)
        .collect();
    assert_eq!(acts.len(), 1, "{acts:?}");
    assert_eq!((acts[0].human(), acts[0].requests), (ACT.to_string(), 8));
    // Every one breaks the rule (no check before), and the alert shows the path as sent.
    assert_eq!(alerts.len(), 8);
    assert_eq!(alerts[1].path, "/%61ct");
    assert!(alerts.iter().all(|a| a.operation == ACT));
}

#[test]
fn heads_servers_accept_yield_the_operation_and_the_session() {
    let heads = [
        "GET /check HTTP/1.1\r\nHost: api.test\r\nX-Folded: a\r\n b\r\nCookie: sid=s1\r\n\r\n"
            .to_string(),
        format!(
            "GET /act HTTP/1.2\r\nHost: api.test\r\n{}Cookie: sid=s1\r\n\r\n",
            (0..120)
                .map(|i| format!("X-{i}: v\r\n"))
                .collect::<String>()
        ),
    ];
    let mut cap = Capture::new();
    let mut conn = open(&mut cap);
    for (i, h) in heads.iter().enumerate() {
        cap.send(T0 + (i as u64 + 1) * MS, &mut conn, h.as_bytes());
    }
    let body = "POST /p HTTP/1.1\r\nHost: api.test\r\nContent-Length: 5, 5\r\n\r\nGET /";
    cap.send(T0 + 5 * MS, &mut conn, body.as_bytes());
    let seen = replay_with(&cap, "");
    assert_eq!(seen.alerts, 0);
    let st = &seen.report.stats;
    assert_eq!(
        (st.lenient_requests, st.parse_errors, st.ambiguous_framing),
        (2, 0, 1)
    );
    assert_eq!(st.requests, 3);
}

#[test]
fn a_request_in_ip_fragments_is_put_back_together() {
    let mut cap = Capture::new();
    let mut conn = open(&mut cap);
    cap.send_fragmented(T0 + MS, &mut conn, journey().as_bytes(), 4);
    let seen = replay_with(&cap, "");
    assert_read_the_journey(&seen);
    let f = seen.report.stats.fragments;
    assert_eq!((f.fragments, f.reassembled, f.overlaps), (4, 1, 0), "{f:?}");
}
