//! Fleet mode (SPEC §10) against a real `redis-server`: the shared history applies the
//! SPEC §3 rules exactly as the embedded one does, and two agents that each see half of
//! a fleet's traffic raise together exactly the alerts one agent seeing all of it
//! raises — where two agents without a fleet raise false ones.

use std::collections::BTreeMap;
use std::path::Path;

use proptest::prelude::*;
use seqshield::alerts::Alert;
use seqshield::config::Config;
use seqshield::fleet::{self, Fleet};
use seqshield::packet::Captured;
use seqshield::pipeline::Pipeline;
use seqshield::report::Report;
use seqshield::session::{SessionId, Sessions};
use seqshield::source::pcap::for_each_packet;
use seqshield_tests::bank::{self, Ident, MS, SEC, T0};
use seqshield_tests::capture::{Capture, Link};
use seqshield_tests::redis::{RedisCluster, RedisServer};

const IDLE: u64 = 600 * SEC;
const DAY: u64 = 24 * 3600 * SEC;

fn fleet_config(redis: &RedisServer, state: &Path) -> Config {
    config_for(&format!("{:?}", redis.url()), state)
}

/// A fleet link straight from a config (10 min idle timeout, 24 h window).
fn fleet_of(config: &Config) -> Fleet {
    let nodes = config.fleet.redis.as_ref().expect("[fleet] redis");
    Fleet::new(&config.fleet, nodes, IDLE, DAY).expect("fleet")
}

/// A bank config whose `[fleet] redis` is `redis` (TOML: a string or a list).
fn config_for(redis: &str, state: &Path) -> Config {
    let text = bank::config(
        1,
        &format!("[fleet]\nredis = {redis}\ntimeout = \"200ms\"\n[state]\ndir = {state:?}\n"),
    );
    Config::parse(&text, Path::new("fleet.toml")).expect("fleet config")
}

/// A pipeline of one agent: with the fleet link, or (`shared = false`) alone, hashing
/// sessions with `key`.
fn agent(config: &Config, key: [u8; 32], shared: bool) -> Pipeline {
    let (fleet_key, fleet) = fleet::start(config, key).expect("fleet start");
    let mut pipeline = Pipeline::new(config, &fleet_key).expect("pipeline");
    if shared {
        pipeline.set_fleet(fleet.expect("a fleet"));
    }
    pipeline
}

/// `sessions` bank sessions behind a load balancer that sends every request to the
/// next host (10.0.0.1 or 10.0.0.2) on a new connection; every tenth session an
/// attacker that skips the balance check. Sessions overlap in time.
fn fleet_capture(sessions: u32) -> Capture {
    let mut calls = Vec::new();
    for i in 0..sessions {
        let ident = Ident::Cookie(format!("user-{i}"));
        let journey = if i % 10 == 3 {
            bank::attacker_journey(&ident, i)
        } else {
            bank::legit_journey(&ident, i)
        };
        let start = T0 + u64::from(i) * 300 * MS;
        for (j, request) in journey.into_iter().enumerate() {
            let host = (i as usize + j) % 2 + 1;
            calls.push((start + j as u64 * SEC, i, j, host, request));
        }
    }
    calls.sort_by_key(|c| c.0);
    let mut cap = Capture::new();
    for (t, i, j, host, request) in calls {
        let client = format!("10.1.{}.{}:{}", i / 200, i % 200 + 1, 40_000 + j);
        let mut conn = cap.open(t, &client, &format!("10.0.0.{host}:80"));
        cap.send(t + MS, &mut conn, &request);
        cap.respond(
            t + 2 * MS,
            &mut conn,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
        );
        cap.close(t + 3 * MS, &mut conn);
    }
    cap
}

/// Replays `pcap` into one pipeline per host (by server address), in capture order as
/// a fleet would see it live; alerts of all of them, and their reports.
fn replay_fleet(pcap: &[u8], ports: &[u16], hosts: &mut [Pipeline]) -> (Vec<String>, Vec<Report>) {
    let mut alerts: Vec<Vec<Alert>> = hosts.iter().map(|_| Vec::new()).collect();
    for_each_packet(pcap, ports, |packet| {
        let Captured::Segment(seg) = &packet else {
            panic!("no fragments in this capture")
        };
        let host = match hosts.len() {
            1 => 0,
            _ => match seg.flow.server.ip().to_string().as_str() {
                "10.0.0.1" => 0,
                _ => 1,
            },
        };
        hosts[host].process_captured(&packet, &mut alerts[host]);
        // As live, where each agent settles its ring batch within a millisecond: long
        // before the session's next request reaches the other host.
        hosts[host].settle_fleet(&mut alerts[host]);
    })
    .expect("replay");
    let mut lines: Vec<String> = alerts
        .into_iter()
        .flatten()
        .map(|a| {
            // The server differs by host; what the rule saw must not.
            format!(
                "{} {} {} {:?} {}",
                a.timestamp, a.session, a.operation, a.previous_operations, a.rule_id
            )
        })
        .collect();
    lines.sort();
    // Every agent's last counts go to the fleet's before any report is made.
    for p in hosts.iter_mut() {
        p.flush_fleet();
    }
    let reports = hosts.iter().map(|p| p.report(p.newest())).collect();
    (lines, reports)
}

/// Occurrences per operation and counts per sequence, summed over reports; scores
/// (and bounds) of the sequences too.
fn counts(reports: &[Report]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for r in reports {
        for s in &r.sequences {
            let key = format!("score {:?}", s.operations);
            *out.entry(key).or_default() += (s.score * 1e9) as u64 + s.last_op_count;
        }
        for op in &r.operations {
            *out.entry(format!("N({})", op.human())).or_default() += op.occurrences;
            *out.entry(format!("requests({})", op.human())).or_default() += op.requests;
        }
        for (ops, count, _) in seqshield_tests::sequences(r) {
            *out.entry(format!("N({})", ops.join(" → "))).or_default() += count;
        }
    }
    out
}

#[test]
fn two_agents_sharing_redis_see_what_one_agent_sees() {
    let redis = RedisServer::start();
    two_agents_see_what_one_agent_sees(&format!("{:?}", redis.url()));
}

#[test]
fn two_agents_sharing_a_redis_cluster_see_what_one_agent_sees() {
    let cluster = RedisCluster::start();
    let urls: Vec<String> = cluster.urls().iter().map(|u| format!("{u:?}")).collect();
    two_agents_see_what_one_agent_sees(&format!("[{}]", urls.join(", ")));
    // Sessions spread over the nodes, each under its hash tag (one slot per session).
    let mut nodes_with_histories = 0;
    for &port in cluster.ports() {
        let keys = cluster.keys_on(port);
        let histories: Vec<&String> = keys.iter().filter(|k| k.ends_with(":history")).collect();
        assert!(
            histories.iter().all(|k| k.starts_with("seqshield:{")),
            "{keys:?}"
        );
        nodes_with_histories += usize::from(!histories.is_empty());
    }
    assert_eq!(nodes_with_histories, 3);
}

fn two_agents_see_what_one_agent_sees(redis: &str) {
    let dir = tempfile::tempdir().unwrap();
    let pcap = fleet_capture(200).to_pcap(Link::Ethernet);
    let configs: Vec<Config> = ["a", "b", "one"]
        .iter()
        .map(|name| config_for(redis, &dir.path().join(name)))
        .collect();
    let ports = configs[0].capture.ports.clone();

    // Each agent starts with its own host key; the fleet's secret replaces it.
    let mut fleet = [
        agent(&configs[0], [1; 32], true),
        agent(&configs[1], [2; 32], true),
    ];
    let (fleet_alerts, fleet_reports) = replay_fleet(&pcap, &ports, &mut fleet);
    // One agent seeing every request, hashing sessions with the same secret.
    let mut one = [agent(&configs[2], [3; 32], false)];
    let (one_alerts, one_reports) = replay_fleet(&pcap, &ports, &mut one);
    // Per-host mode: two agents, nothing shared.
    let mut alone = [
        agent(&configs[0], [1; 32], false),
        agent(&configs[1], [2; 32], false),
    ];
    let (alone_alerts, _) = replay_fleet(&pcap, &ports, &mut alone);

    assert_eq!(
        one_alerts.len(),
        20,
        "one alert per attacker: {one_alerts:#?}"
    );
    assert_eq!(fleet_alerts, one_alerts);
    // Every agent's report shows the fleet's merged counts, and says so: the counts and
    // scores of one agent that saw everything.
    for report in &fleet_reports {
        assert_eq!(report.counts.as_deref(), Some("fleet"));
        assert_eq!(counts(std::slice::from_ref(report)), counts(&one_reports));
    }
    assert_eq!(one_reports[0].counts, None);
    // Without the fleet, host B never saw the balance check of any session.
    assert!(
        alone_alerts.len() > 150,
        "per-host mode raises false alerts: {}",
        alone_alerts.len()
    );
    for r in &fleet_reports {
        let stats = r.stats.fleet.expect("fleet stats");
        assert_eq!(stats.fallbacks, 0);
        assert!(stats.flushes > 0);
        assert!(stats.shared > 0);
    }
}

#[test]
fn batches_of_shared_histories_decide_as_the_embedded_table_does() {
    // One agent replaying the whole capture: requests go to Redis 256 at a time, and
    // every alert, count and score is what the embedded table gives.
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = config_for(&format!("{:?}", redis.url()), &dir.path().join("batch"));
    let pcap = fleet_capture(400).to_pcap(Link::Ethernet);
    let run = |shared: bool| {
        let mut pipeline = agent(&config, [9; 32], shared);
        let mut alerts = Vec::new();
        pipeline
            .replay_pcap(&pcap, &config.capture.ports, &mut alerts)
            .expect("replay");
        pipeline.flush_fleet();
        let report = pipeline.report(pipeline.newest());
        let alerts: Vec<String> = alerts
            .iter()
            .map(|a| format!("{} {} {:?}", a.timestamp, a.session, a.previous_operations))
            .collect();
        (alerts, report)
    };
    let (fleet_alerts, fleet_report) = run(true);
    let (local_alerts, local_report) = run(false);
    assert_eq!(local_alerts.len(), 40);
    assert_eq!(fleet_alerts, local_alerts);
    assert_eq!(
        counts(std::slice::from_ref(&fleet_report)),
        counts(&[local_report])
    );
    let stats = fleet_report.stats.fleet.unwrap();
    assert_eq!(stats.fallbacks, 0);
    // 1 400 identified requests in a handful of round trips.
    assert!(stats.round_trips < 40, "{stats:?}");
    // A Redis that lost everything (a restart: a new fleet secret, so other session
    // hashes) gets the script again, with no fallback.
    redis.cli(&["flushall"]);
    redis.cli(&["script", "flush"]);
    let (again, report) = run(true);
    let unhashed = |alerts: &[String]| -> Vec<String> {
        alerts
            .iter()
            .map(|a| {
                a.split(' ')
                    .enumerate()
                    .filter(|(i, _)| *i != 1)
                    .map(|(_, w)| w)
                    .collect()
            })
            .collect()
    };
    assert_eq!(unhashed(&again), unhashed(&local_alerts));
    assert_eq!(report.stats.fleet.unwrap().fallbacks, 0);
}

#[test]
fn a_password_from_a_file_opens_a_redis_that_requires_one() {
    let redis = RedisServer::start_with(&["--requirepass", "s3cret pass"]);
    let dir = tempfile::tempdir().unwrap();
    let mut config = fleet_config(&redis, dir.path());
    let password = dir.path().join("redis.password");
    std::fs::write(&password, "s3cret pass\n").unwrap();
    config.fleet.password_file = Some(password.clone());
    let nodes = config.fleet.redis.clone().unwrap();
    let mut fleet = fleet_of(&config);
    assert!(fleet.record(SessionId(1), "00000000000a", T0).is_some());
    // A wrong one: refused by Redis, so the local view (counted), never a crash.
    std::fs::write(&password, "wrong").unwrap();
    let mut fleet = fleet_of(&config);
    assert!(fleet.record(SessionId(1), "00000000000a", T0).is_none());
    assert_eq!(fleet.stats().fallbacks, 1);
    // A missing file is refused at start, naming it.
    config.fleet.password_file = Some(dir.path().join("missing"));
    let e = Fleet::new(&config.fleet, &nodes, IDLE, DAY)
        .err()
        .expect("refused");
    assert!(e.to_string().contains("missing"), "{e}");
}

/// A CA, and a certificate it signed for 127.0.0.1, made with openssl in `dir`.
fn test_certificates(dir: &Path) {
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    for args in [
        "req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=seqshield-test-ca",
        "req -newkey rsa:2048 -nodes -keyout redis.key -out redis.csr -subj /CN=127.0.0.1",
        "x509 -req -in redis.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out redis.crt -days 2 -extfile san.ext",
    ] {
        let out = std::process::Command::new("openssl")
            .args(args.split(' '))
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn rediss_reaches_a_redis_whose_certificate_the_ca_file_vouches_for() {
    let dir = tempfile::tempdir().unwrap();
    test_certificates(dir.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let file = |name: &str| dir.path().join(name).display().to_string();
    let _redis = RedisServer::start_with(&[
        "--tls-port",
        &port,
        "--tls-cert-file",
        &file("redis.crt"),
        "--tls-key-file",
        &file("redis.key"),
        "--tls-ca-cert-file",
        &file("ca.crt"),
        "--tls-auth-clients",
        "no",
    ]);
    let mut config = config_for(&format!("\"rediss://127.0.0.1:{port}/0\""), dir.path());
    config.fleet.ca_file = Some(dir.path().join("ca.crt"));
    let mut fleet = fleet_of(&config);
    let shared = fleet
        .record(SessionId(1), "00000000000a", T0)
        .expect("over TLS");
    assert_eq!(shared.entries.len(), 1);
    // Without the CA the certificate is not trusted: the local view, counted.
    config.fleet.ca_file = None;
    let mut fleet = fleet_of(&config);
    assert!(fleet.record(SessionId(1), "00000000000a", T0).is_none());
    assert_eq!(fleet.stats().fallbacks, 1);
}

#[test]
fn agents_agree_on_the_session_hash_without_a_manual_step() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let a = fleet_config(&redis, &dir.path().join("a"));
    let b = fleet_config(&redis, &dir.path().join("b"));
    let (key_a, _) = fleet::start(&a, [1; 32]).unwrap();
    let (key_b, _) = fleet::start(&b, [2; 32]).unwrap();
    assert_eq!(key_a, key_b);
    assert_ne!(key_a, [1; 32]);
    // Cached: an agent restarted while Redis is down keeps hashing as the fleet does.
    drop(redis);
    let (again, _) = fleet::start(&a, [1; 32]).unwrap();
    assert_eq!(again, key_a);
}

/// A fleet link straight to the script, and the embedded session table, fed the same
/// requests.
fn check_script_matches_embedded(requests: &[(u8, u8, u64)]) {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = fleet_config(&redis, dir.path());
    let mut fleet = fleet_of(&config);
    let mut sessions = Sessions::new(1000, IDLE);
    let mut t = T0;
    for &(session, op, step) in requests {
        // Steps forward (sometimes past the idle timeout), now and then back a little.
        t = match step % 10 {
            0 => t.saturating_sub(5 * MS),
            9 => t + IDLE + SEC,
            _ => t + step * SEC,
        };
        let id = SessionId(u64::from(session));
        let local = sessions.touch(id, t);
        let new = local.history.record(u16::from(op), t);
        let expected: Vec<(String, u64)> = local
            .history
            .entries()
            .iter()
            .map(|e| (format!("{:012x}", { e.op }), { e.at }))
            .collect();
        let shared = fleet
            .record(id, &format!("{op:012x}"), t)
            .expect("redis answers");
        assert_eq!((shared.new, shared.entries), (new, expected), "at {t}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn the_shared_history_follows_the_embedded_rules(
        requests in proptest::collection::vec((0u8..4, 0u8..5, 0u64..40), 1..120)
    ) {
        check_script_matches_embedded(&requests);
    }
}

#[test]
fn a_hung_redis_costs_one_timeout_then_the_local_view_until_it_answers_again() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut config = fleet_config(&redis, dir.path());
    config.fleet.timeout = std::time::Duration::from_millis(5);
    let mut fleet = fleet_of(&config);
    let session = SessionId(7);
    assert!(fleet.record(session, "00000000000a", T0).is_some());

    redis.pause();
    // Counts made while it hangs are kept, and added once it answers again.
    fleet.count_request(0, 7);
    fleet.flush(|_| "00000000000a");
    let started = std::time::Instant::now();
    assert_eq!(fleet.record(session, "00000000000b", T0 + SEC), None);
    let first = started.elapsed();
    // While it stays down, requests do not wait for it at all.
    let started = std::time::Instant::now();
    for i in 0..1000 {
        assert_eq!(
            fleet.record(session, "00000000000b", T0 + 2 * SEC + i),
            None
        );
    }
    let rest = started.elapsed();
    assert!(
        first < std::time::Duration::from_millis(100),
        "first fallback took {first:?}"
    );
    assert!(
        rest < std::time::Duration::from_millis(50),
        "1000 fallbacks took {rest:?}"
    );
    assert_eq!(fleet.stats().fallbacks, 1001);
    assert_eq!(fleet.stats().flushes, 0);

    redis.resume();
    std::thread::sleep(std::time::Duration::from_millis(250));
    let back = fleet
        .record(session, "00000000000c", T0 + 3 * SEC)
        .expect("reconnected");
    // The requests made while it hung are this host's alone.
    let ops: Vec<&str> = back.entries.iter().map(|(op, _)| op.as_str()).collect();
    assert_eq!(ops, ["00000000000a", "00000000000c"]);
    // The batch whose answer timed out reached the paused server and was added when it
    // woke; sent again now, it is recognised and not added twice.
    fleet.flush(|_| "00000000000a");
    assert_eq!(fleet.stats().flushes, 1);
    let counts = fleet.reader().read(7..=7).expect("counts");
    assert_eq!(counts.requests.get("00000000000a"), Some(&1));
}
