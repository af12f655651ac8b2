//! The agent sees what the server sees (SPEC §7), tried as an attacker would: a client
//! that crafts its own TCP segments (tests/fixtures/tcp_crafter.py, AF_PACKET, from an
//! address its namespace does not own) against a real server whose application logs
//! every request it read. For each attack, the requests the agent counted must equal
//! the server's log — decoys the server's stack discarded must not show, and requests
//! it delivered must not be lost.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const SID: &str = "evasion";

fn request(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: bank.test\r\nCookie: sid={SID}\r\n\r\n")
}

/// One attack: the real byte stream and the steps that send it (tcp_crafter.py).
struct Attack {
    name: &'static str,
    stream: String,
    steps: Vec<Value>,
}

fn attacks() -> Vec<Attack> {
    let mut all = Vec::new();
    let two = |name: &str| request(&format!("/ev/{name}/a")) + &request(&format!("/ev/{name}/b"));

    // A RST outside the window, and one inside it but not at the next byte: Linux
    // ignores both (RFC 5961 §3.2) and reads the rest of the request.
    let stream = two("rst");
    let first = request("/ev/rst/a").len();
    all.push(Attack {
        name: "rst",
        steps: vec![
            json!({"handshake": true}),
            json!({"data": [0, 20]}),
            json!({"rst": 20 + 200_000}),
            json!({"rst": 25}),
            json!({"data": [20, first]}),
            json!({"await": first}),
            json!({"data": [first, stream.len()]}),
            json!({"await": stream.len()}),
            json!({"close": true}),
        ],
        stream,
    });

    // A SYN with a new initial sequence number mid-request: a challenge ACK, nothing
    // more (RFC 5961 §4).
    let stream = two("syn");
    all.push(Attack {
        name: "syn",
        steps: vec![
            json!({"handshake": true}),
            json!({"data": [0, 15]}),
            json!({"syn": 123_456_789}),
            json!({"data": [15, stream.len()]}),
            json!({"await": stream.len()}),
            json!({"close": true}),
        ],
        stream,
    });

    // A segment far beyond the window, then the real request after the old 2 s hole
    // timer: Linux drops the far one.
    let stream = request("/ev/far/a");
    all.push(Attack {
        name: "far",
        steps: vec![
            json!({"handshake": true}),
            json!({"bytes": request("/ev/far/decoy"), "at": 300_000}),
            json!({"sleep": 2.5}),
            json!({"data": [0, stream.len()]}),
            json!({"await": stream.len()}),
            json!({"close": true}),
        ],
        stream,
    });

    // 70+ one-byte segments in reverse order: Linux queues and delivers them.
    let stream = request("/ev/tiny/abcdefghij");
    let mut steps = vec![json!({"handshake": true})];
    for i in (0..stream.len()).rev() {
        steps.push(json!({"data": [i, i + 1]}));
    }
    steps.extend([json!({"await": stream.len()}), json!({"close": true})]);
    all.push(Attack {
        name: "tiny",
        stream,
        steps,
    });

    // The first segment held back for 2.5 s.
    let stream = request("/ev/late/a");
    all.push(Attack {
        name: "late",
        steps: vec![
            json!({"handshake": true}),
            json!({"data": [10, stream.len()]}),
            json!({"sleep": 2.5}),
            json!({"data": [0, 10]}),
            json!({"await": stream.len()}),
            json!({"close": true}),
        ],
        stream,
    });

    // Decoys the server's stack drops, each sent first with other bytes at the same
    // place: bad checksum, no ACK flag, an ACK of data the server never sent.
    let stream = request("/ev/drop/good");
    let decoy = request("/ev/drop/EVIL");
    all.push(Attack {
        name: "drop",
        steps: vec![
            json!({"handshake": true}),
            json!({"bytes": decoy, "at": 0, "bad_csum": true}),
            json!({"bytes": decoy, "at": 0, "no_ack": true}),
            json!({"bytes": decoy, "at": 0, "ack_add": 1_000_000}),
            json!({"data": [0, stream.len()]}),
            json!({"await": stream.len()}),
            json!({"close": true}),
        ],
        stream,
    });

    // An urgent byte inside the path: Linux takes it out of the stream (no
    // SO_OOBINLINE), the application reads /ev/urg/a.
    let stream = "GET /ev/urgX/a HTTP/1.1\r\nHost: bank.test\r\nCookie: sid=evasion\r\n\r\n";
    let x = stream.find('X').unwrap();
    all.push(Attack {
        name: "urg",
        steps: vec![
            json!({"handshake": true}),
            json!({"data": [0, stream.len()], "urg": x + 1}),
            json!({"await": stream.len()}),
            json!({"close": true}),
        ],
        stream: stream.to_string(),
    });

    // Overlaps: the tail queued first, then other bytes wholly inside it (Linux keeps
    // the queued ones), then the head.
    let stream = request("/ev/overlap/good");
    let at = stream.find("good").unwrap();
    all.push(Attack {
        name: "overlap",
        steps: vec![
            json!({"handshake": true}),
            json!({"data": [at - 2, stream.len()]}),
            json!({"bytes": "EVIL", "at": at}),
            json!({"data": [0, at - 2]}),
            json!({"await": stream.len()}),
            json!({"close": true}),
        ],
        stream,
    });

    // The request as one segment in three IP fragments: the server's stack puts the
    // datagram back together; so does the agent.
    let stream = request("/ev/frag/a");
    all.push(Attack {
        name: "frag",
        steps: vec![
            json!({"handshake": true}),
            json!({"frag": [0, stream.len()], "pieces": 3}),
            json!({"await": stream.len()}),
            json!({"close": true}),
        ],
        stream,
    });

    // The request retransmitted after the connection's FIN: read once.
    let stream = request("/ev/afterfin/a");
    all.push(Attack {
        name: "afterfin",
        steps: vec![
            json!({"handshake": true}),
            json!({"data": [0, stream.len()]}),
            json!({"await": stream.len()}),
            json!({"close": true}),
            json!({"data": [0, stream.len()]}),
            json!({"data": [0, stream.len()]}),
        ],
        stream,
    });
    all
}

/// "METHOD path" → count, of the requests under /ev/ in a server log.
fn server_read(log: &Path) -> BTreeMap<String, u64> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut counts = BTreeMap::new();
    for line in text.lines().filter(|l| l.contains(" /ev/")) {
        *counts.entry(line.to_string()).or_default() += 1;
    }
    counts
}

/// The same, as the agent's report counts them.
fn agent_saw(pair: &NetPair, agent: &Agent) -> BTreeMap<String, u64> {
    live_report(pair, agent)
        .map(|r| {
            r.operations
                .iter()
                .filter(|o| o.path.starts_with("/ev/") && o.requests > 0)
                .map(|o| (format!("{} {}", o.method, o.path), o.requests))
                .collect()
        })
        .unwrap_or_default()
}

fn mac(ns: &str, dev: &str) -> String {
    let out = std::process::Command::new("ip")
        .args(["-n", ns, "-j", "link", "show", dev])
        .output()
        .expect("ip link");
    let v: Value = serde_json::from_slice(&out.stdout).expect("ip -j");
    v[0]["address"].as_str().expect("a MAC address").to_string()
}

/// Runs one attack from `src_ip` (an address the client namespace does not own).
fn run_attack(pair: &NetPair, dir: &Path, attack: &Attack, src_ip: &str, dst_ip: &str, sport: u16) {
    let scenario = json!({
        "iface": pair.client_if,
        "src_mac": mac(&pair.client_ns, &pair.client_if),
        "dst_mac": mac(&pair.server_ns, &pair.server_if),
        "src_ip": src_ip,
        "dst_ip": dst_ip,
        "sport": sport,
        "dport": 80,
        "stream": attack.stream,
        "steps": attack.steps,
    });
    let file = dir.join(format!("{}.json", attack.name));
    std::fs::write(&file, scenario.to_string()).unwrap();
    let crafter = fixture("tcp_crafter.py");
    let out = pair.in_client(&["python3", crafter.to_str().unwrap(), file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}: the crafting client failed: {}{}",
        attack.name,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until the agent's counts equal the server's log, or fails naming the attack.
fn assert_agent_matches_server(pair: &NetPair, agent: &Agent, log: &Path, what: &str) {
    let mut last = (BTreeMap::new(), BTreeMap::new());
    let matched = (0..60).any(|_| {
        let truth = server_read(log);
        let seen = agent_saw(pair, agent);
        let same = !truth.is_empty() && truth == seen;
        last = (truth, seen);
        if !same {
            std::thread::sleep(Duration::from_millis(50));
        }
        same
    });
    assert!(
        matched,
        "{what}: the server read {:#?}\nbut the agent counted {:#?}",
        last.0, last.1
    );
}

type Setup = (NetPair, tempfile::TempDir, Agent, std::path::PathBuf);

fn setup(test: &str) -> Option<Setup> {
    setup_with(test, "")
}

/// A logging bank server and an agent whose config gets `extra`.
fn setup_with(test: &str, extra: &str) -> Option<Setup> {
    if !root_or_skip(test) {
        return None;
    }
    let mut pair = NetPair::new();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    pair.start_bank_server_with(0, Some(&log));
    let admin_port = 19_600 + (std::process::id() % 300) as u16;
    let config = bank_config(dir.path(), admin_port, extra);
    let agent = start_agent(
        &mut pair,
        &config,
        admin_port,
        &dir.path().join("alerts.jsonl"),
    );
    Some((pair, dir, agent, log))
}

/// The spoofed source: the client subnet's .3, reached through a static neighbour entry.
fn spoofed_v4(pair: &NetPair) -> String {
    let ip = pair.client_ip.rsplit_once('.').unwrap().0.to_string() + ".3";
    sh(&format!(
        "ip -n {} neigh replace {ip} lladdr {} dev {} nud permanent",
        pair.server_ns,
        mac(&pair.client_ns, &pair.client_if),
        pair.server_if
    ));
    ip
}

#[test]
fn crafted_segments_cannot_bend_what_the_agent_sees() {
    let Some((pair, dir, agent, log)) = setup("crafted_segments_cannot_bend_what_the_agent_sees")
    else {
        return;
    };
    let src = spoofed_v4(&pair);
    for (i, attack) in attacks().iter().enumerate() {
        run_attack(
            &pair,
            dir.path(),
            attack,
            &src,
            &pair.server_ip,
            41_000 + i as u16,
        );
        assert_agent_matches_server(&pair, &agent, &log, attack.name);
    }
    // Every attack's real requests were read by the server, its decoys never.
    let truth = server_read(&log);
    assert!(
        !truth
            .keys()
            .any(|k| k.contains("EVIL") || k.contains("decoy"))
    );
    assert_eq!(truth.values().sum::<u64>(), 12, "{truth:#?}");
    let flows = live_report(&pair, &agent).unwrap().stats.flows;
    // The agent refused what Linux refused, and said so.
    assert!(flows.ignored_resets >= 1, "{flows:?}");
    assert!(flows.ignored_syns >= 1, "{flows:?}");
    assert!(flows.out_of_window_segments >= 2, "{flows:?}");
    assert!(flows.bad_checksum_segments >= 1, "{flows:?}");
    assert!(flows.discarded_segments >= 2, "{flows:?}");
    assert!(flows.urgent_bytes_removed >= 1, "{flows:?}");
    assert!(flows.after_close_segments >= 2, "{flows:?}");
    assert_eq!(flows.gaps, 0, "{flows:?}");
    let fragments = live_report(&pair, &agent).unwrap().stats.fragments;
    assert_eq!(
        (fragments.fragments, fragments.reassembled),
        (3, 1),
        "{fragments:?}"
    );
}

#[test]
fn crafted_segments_over_ipv6() {
    let Some((pair, dir, agent, log)) = setup("crafted_segments_over_ipv6") else {
        return;
    };
    let net = pair.server_ip.split('.').nth(1).unwrap().to_string();
    let (server6, spoofed6) = (format!("fd00:{net}::1"), format!("fd00:{net}::3"));
    sh(&format!(
        "ip -n {} addr add {server6}/64 dev {} nodad",
        pair.server_ns, pair.server_if
    ));
    sh(&format!(
        "ip -n {} neigh replace {spoofed6} lladdr {} dev {} nud permanent",
        pair.server_ns,
        mac(&pair.client_ns, &pair.client_if),
        pair.server_if
    ));
    let mut v6 = attacks();
    v6.retain(|a| ["rst", "drop", "tiny", "frag"].contains(&a.name));
    // More extension headers than the kernel program walks: Linux reads the request.
    let stream = request("/ev/longext/a");
    v6.push(Attack {
        name: "longext",
        steps: vec![
            json!({"handshake": true}),
            json!({"data": [0, stream.len()], "ext": 6}),
            json!({"await": stream.len()}),
            json!({"close": true}),
        ],
        stream,
    });
    for (i, attack) in v6.iter().enumerate() {
        run_attack(
            &pair,
            dir.path(),
            attack,
            &spoofed6,
            &server6,
            42_000 + i as u16,
        );
        assert_agent_matches_server(&pair, &agent, &log, attack.name);
    }
}

#[test]
fn blocks_hold_against_fragmented_traffic() {
    let enforce =
        "[enforce]\nmode = \"enforce\"\nblock_scope = \"client_ip\"\nblock_ttl = \"10m\"\n";
    let Some((pair, dir, agent, log)) =
        setup_with("blocks_hold_against_fragmented_traffic", enforce)
    else {
        return;
    };
    let src = spoofed_v4(&pair);
    // A transfer with no balance check: the client's address is blocked.
    let transfer = "POST /api/v1/transferFunds HTTP/1.1\r\nHost: bank.test\r\nCookie: sid=frag\r\n\
                    Content-Length: 0\r\n\r\n";
    let violate = Attack {
        name: "violate",
        stream: transfer.to_string(),
        steps: vec![
            json!({"handshake": true}),
            json!({"data": [0, transfer.len()]}),
            json!({"sleep": 0.3}),
        ],
    };
    run_attack(&pair, dir.path(), &violate, &src, &pair.server_ip, 43_000);
    eventually("the block", Duration::from_secs(5), || {
        live_report(&pair, &agent).filter(|r| r.stats.alerts >= 1)
    });
    // A new connection from that address sends its request in IP fragments: they do
    // not carry the ports, and still the kernel drops them.
    let request = request("/ev/fragblock/a");
    let fragmented = Attack {
        name: "fragblock",
        steps: vec![
            json!({"handshake": true}),
            json!({"frag": [0, request.len()], "pieces": 3}),
            json!({"sleep": 1.0}),
        ],
        stream: request,
    };
    run_attack(
        &pair,
        dir.path(),
        &fragmented,
        &src,
        &pair.server_ip,
        43_001,
    );
    let report = live_report(&pair, &agent).unwrap();
    assert!(
        report.stats.fragments.fragments >= 3,
        "{:?}",
        report.stats.fragments
    );
    let read = server_read(&log);
    assert!(
        !read.keys().any(|k| k.contains("fragblock")),
        "the server read a blocked client's fragmented request: {read:?}"
    );
}

#[test]
fn a_connection_block_holds_against_fragments() {
    let enforce = "[enforce]\nmode = \"enforce\"\nblock_scope = \"connection\"\n";
    let Some((pair, dir, agent, log)) =
        setup_with("a_connection_block_holds_against_fragments", enforce)
    else {
        return;
    };
    let src = spoofed_v4(&pair);
    // The violating transfer, then another request on the same connection: both in IP
    // fragments. The first reaches the server (it is what gets the connection cut); the
    // second must not.
    let transfer = "POST /api/v1/transferFunds HTTP/1.1\r\nHost: bank.test\r\nCookie: sid=fragconn\r\n\
                    Content-Length: 0\r\n\r\n";
    let stream = transfer.to_string() + &request("/ev/fragconn/after");
    let cut = transfer.len();
    let attack = Attack {
        name: "fragconn",
        steps: vec![
            json!({"handshake": true}),
            json!({"frag": [0, cut], "pieces": 2}),
            json!({"sleep": 0.5}),
            json!({"frag": [cut, stream.len()], "pieces": 2}),
            json!({"sleep": 0.5}),
        ],
        stream,
    };
    run_attack(&pair, dir.path(), &attack, &src, &pair.server_ip, 44_000);
    let report = live_report(&pair, &agent).unwrap();
    assert!(report.stats.alerts >= 1, "{:?}", report.stats);
    let read = server_read(&log);
    assert!(
        !read.keys().any(|k| k.contains("fragconn")),
        "the server read fragments of a blocked connection: {read:?}"
    );
}

#[test]
fn a_spoofed_violation_cannot_block_a_bystander() {
    let enforce =
        "[enforce]\nmode = \"enforce\"\nblock_scope = \"client_ip\"\nblock_ttl = \"10m\"\n";
    let Some((pair, dir, agent, _log)) =
        setup_with("a_spoofed_violation_cannot_block_a_bystander", enforce)
    else {
        return;
    };
    // One packet with the bystander's address as its source, no handshake: a transfer
    // with no balance check. Linux has no socket for it; the agent sees a connection it
    // never saw open, whose client never acknowledged anything the server sent.
    let transfer = "POST /api/v1/transferFunds HTTP/1.1\r\nHost: bank.test\r\nCookie: sid=victim\r\n\
                    Content-Length: 0\r\n\r\n";
    let spoof = Attack {
        name: "spoof",
        stream: transfer.to_string(),
        steps: vec![json!({"data": [0, transfer.len()]}), json!({"sleep": 0.3})],
    };
    let bystander = pair.client_ip.clone();
    run_attack(
        &pair,
        dir.path(),
        &spoof,
        &bystander,
        &pair.server_ip,
        45_000,
    );
    let report = eventually("the spoofed violation", Duration::from_secs(5), || {
        live_report(&pair, &agent).filter(|r| r.stats.alerts >= 1)
    });
    assert_eq!(report.stats.unconfirmed_violations, 1, "{:?}", report.stats);
    // The bystander's own requests still get through.
    let url = format!("http://{}/api/v1/login", pair.server_ip);
    let out = pair.in_client(&[
        "curl",
        "-sS",
        "-m",
        "3",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "POST",
        "-H",
        "Host: bank.test",
        "-H",
        "Cookie: sid=victim",
        &url,
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
