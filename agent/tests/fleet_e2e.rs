//! Fleet mode live (SPEC §10, root): two API hosts, each a network namespace pair with
//! the bank server logging what its application read, an agent capturing on each, one
//! `redis-server` they share (on a unix socket, reachable from every namespace). A
//! client sends each request of a session to the next host. What the two agents report
//! together must be what one agent reports when all the traffic goes to one host.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use seqshield::report::Report;

const USERS: u32 = 8;
const ATTACKERS: u32 = 2;

/// A throwaway redis-server on a unix socket, killed on drop.
struct Redis {
    child: Child,
    socket: PathBuf,
}

impl Redis {
    fn start(dir: &Path) -> Self {
        let socket = dir.join("redis.sock");
        let _ = std::fs::remove_file(&socket);
        let child = Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--appendonly", "no"])
            .arg("--unixsocket")
            .arg(&socket)
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (cargo xtask setup installs it)");
        // The socket file appears at bind(), before listen(): ask until it answers.
        eventually("redis-server", Duration::from_secs(10), || {
            Command::new("redis-cli")
                .arg("-s")
                .arg(&socket)
                .arg("ping")
                .output()
                .ok()
                .filter(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"))
                .map(|_| ())
        });
        Self { child, socket }
    }

    fn url(&self) -> String {
        format!("redis+unix://{}", self.socket.display())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("seqshield-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A host: its namespaces, the bank server's log, and an agent when one runs.
struct Host {
    pair: NetPair,
    log: PathBuf,
}

fn host(dir: &Path, name: &str) -> Host {
    let mut pair = NetPair::new();
    let log = dir.join(format!("{name}-server.log"));
    pair.start_bank_server_with(0, Some(&log));
    Host { pair, log }
}

/// Starts an agent on `host` (its config, state and alerts in `dir/name`), in fleet
/// mode when `fleet` is given.
fn agent(
    host: &mut Host,
    dir: &Path,
    name: &str,
    port: u16,
    fleet: Option<&str>,
) -> (Agent, PathBuf) {
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let extra = fleet.map_or_else(String::new, |url| {
        format!("[fleet]\nredis = {url:?}\ntimeout = \"20ms\"\n")
    });
    let config = bank_config(&dir, port, &extra);
    let alerts = dir.join("alerts.jsonl");
    (start_agent(&mut host.pair, &config, port, &alerts), alerts)
}

/// Every session, each request to the next host (a new connection each): legit users
/// walk login → accounts → balance → transfer, attackers log in and transfer.
fn drive(hosts: &[&Host], prefix: &str, users: std::ops::Range<u32>) -> usize {
    let mut sent = 0;
    for user in users {
        let mut steps = vec![("POST", "/api/v1/login".to_string())];
        if user < USERS {
            steps.push(("GET", format!("/api/v1/users/{user}/accounts")));
            steps.push(("GET", format!("/api/v1/accounts/{}/balance", 1000 + user)));
        }
        steps.push(("POST", "/api/v1/transferFunds".to_string()));
        for (j, (method, target)) in steps.iter().enumerate() {
            let host = hosts[(user as usize + j) % hosts.len()];
            let url = format!("http://{}{target}", host.pair.server_ip);
            let cookie = format!("sid={prefix}-{user}");
            let mut args = vec!["curl", "--max-time", "5", "-s", "-o", "/dev/null"];
            args.extend(["-H", "Host: bank.test", "-b", &cookie]);
            if *method == "POST" {
                args.extend(["-d", "{}"]);
            }
            args.push(&url);
            assert!(host.pair.in_client(&args).status.success(), "{args:?}");
            sent += 1;
        }
    }
    sent
}

/// Alerts as what the rule saw (operation and the lookback), sorted.
fn alerts(files: &[&PathBuf]) -> Vec<String> {
    let mut out: Vec<String> = files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .lines()
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .filter(|l| l.contains("sequence_violation"))
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(&l).unwrap();
            format!("{} after {}", v["operation"], v["previous_operations"])
        })
        .collect();
    out.sort();
    out
}

/// Requests and N(x) per operation, N(s) per sequence, by human form.
fn counts(report: &Report) -> BTreeMap<String, u64> {
    let human = |id: &String| {
        report
            .operations
            .iter()
            .find(|o| &o.id == id)
            .map_or_else(|| id.clone(), |o| o.human())
    };
    let mut out = BTreeMap::new();
    for op in &report.operations {
        out.insert(format!("requests {}", op.human()), op.requests);
        out.insert(format!("N({})", op.human()), op.occurrences);
    }
    for s in &report.sequences {
        let ops: Vec<String> = s.operations.iter().map(human).collect();
        out.insert(format!("N({})", ops.join(" → ")), s.count);
    }
    out
}

/// SIGTERM, and the agent's exit (it detaches everything first).
fn stop(host: &mut Host, agent: &Agent) {
    signal(agent.pid, libc::SIGTERM);
    assert!(
        host.pair
            .wait_for(agent.pid, Duration::from_secs(10))
            .is_some(),
        "the agent did not stop"
    );
}

fn lines(log: &Path) -> usize {
    std::fs::read_to_string(log).map_or(0, |t| t.lines().count())
}

#[test]
fn two_hosts_sharing_redis_see_what_one_host_sees() {
    if !root_or_skip("two_hosts_sharing_redis_see_what_one_host_sees") {
        return;
    }
    let dir = scratch("fleet-e2e");
    let redis = Redis::start(&dir);
    let (mut a, mut b) = (host(&dir, "a"), host(&dir, "b"));

    // One host, every request: the reference.
    let (one, one_alerts) = agent(&mut a, &dir, "one", 9471, None);
    let logged = lines(&a.log);
    let sent = drive(&[&a], "one", 0..USERS + ATTACKERS);
    let one_report = eventually("the single agent's report", Duration::from_secs(5), || {
        live_report(&a.pair, &one).filter(|r| r.stats.requests == sent as u64)
    });
    stop(&mut a, &one);
    assert_eq!(lines(&a.log) - logged, sent, "the server's log");

    // Two hosts sharing sessions through Redis.
    let (fa, fa_alerts) = agent(&mut a, &dir, "fleet-a", 9472, Some(&redis.url()));
    let (fb, fb_alerts) = agent(&mut b, &dir, "fleet-b", 9473, Some(&redis.url()));
    let before = (lines(&a.log), lines(&b.log));
    let sent = drive(&[&a, &b], "fleet", 0..USERS + ATTACKERS);
    assert_eq!(lines(&a.log) + lines(&b.log) - before.0 - before.1, sent);
    // Counts reach the fleet's within a second; both reports show the merged ones.
    for (host, agent) in [(&a, &fa), (&b, &fb)] {
        let merged = eventually("the fleet's merged report", Duration::from_secs(10), || {
            live_report(&host.pair, agent).filter(|r| counts(r) == counts(&one_report))
        });
        assert_eq!(merged.counts.as_deref(), Some("fleet"));
        assert_eq!(merged.stats.fleet.unwrap().fallbacks, 0);
    }
    let fleet_alerts = alerts(&[&fa_alerts, &fb_alerts]);
    assert_eq!(fleet_alerts.len(), ATTACKERS as usize, "{fleet_alerts:#?}");
    assert_eq!(fleet_alerts, alerts(&[&one_alerts]));
    stop(&mut a, &fa);
    stop(&mut b, &fb);

    // The same two hosts without the fleet: every legit transfer looks unchecked.
    let (pa, pa_alerts) = agent(&mut a, &dir, "alone-a", 9474, None);
    let (pb, pb_alerts) = agent(&mut b, &dir, "alone-b", 9475, None);
    drive(&[&a, &b], "alone", 0..USERS + ATTACKERS);
    let alone = eventually("per-host alerts", Duration::from_secs(5), || {
        let all = alerts(&[&pa_alerts, &pb_alerts]);
        (all.len() == (USERS + ATTACKERS) as usize).then_some(all)
    });
    assert!(alone.len() > fleet_alerts.len());
    stop(&mut a, &pa);
    stop(&mut b, &pb);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_redis_that_dies_hangs_or_returns_never_stalls_or_loses_counts() {
    if !root_or_skip("a_redis_that_dies_hangs_or_returns_never_stalls_or_loses_counts") {
        return;
    }
    let dir = scratch("fleet-faults");
    let mut redis = Redis::start(&dir);
    let (mut a, mut b) = (host(&dir, "a"), host(&dir, "b"));
    let (fa, _) = agent(&mut a, &dir, "a", 9476, Some(&redis.url()));
    let (fb, _) = agent(&mut b, &dir, "b", 9477, Some(&redis.url()));
    // From /metrics: it never waits for Redis (a report reads the fleet's counts).
    let requests = |host: &Host, agent: &Agent| {
        let url = format!("http://{}/metrics", agent.admin);
        let out = host.pair.in_server(&["curl", "-s", &url]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("seqshield_requests_total{result=\"parsed\"} "))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };

    drive(&[&a, &b], "before", 0..4);
    std::thread::sleep(Duration::from_millis(2500)); // flushed

    // Killed: requests go on being analysed, with the local view, counted.
    redis.child.kill().unwrap();
    redis.child.wait().unwrap();
    let seen = requests(&a, &fa) + requests(&b, &fb);
    let during = drive(&[&a, &b], "down", 4..8) as u64;
    eventually(
        "requests analysed while Redis is down",
        Duration::from_secs(5),
        || (requests(&a, &fa) + requests(&b, &fb) == seen + during).then_some(()),
    );
    for (host, agent) in [(&a, &fa), (&b, &fb)] {
        let report = live_report(&host.pair, agent).expect("the agent lives");
        assert!(report.stats.fleet.unwrap().fallbacks > 0);
        assert!(
            report.counts.unwrap().starts_with("host"),
            "says the counts are its own"
        );
    }

    // Back (empty: no persistence): what was counted while it was away is added, once.
    redis = Redis::start(&dir);
    let after = drive(&[&a, &b], "after", 8..USERS + ATTACKERS) as u64;
    let report = eventually(
        "counts flushed after Redis is back",
        Duration::from_secs(20),
        || {
            live_report(&a.pair, &fa).filter(|r| {
                r.counts.as_deref() == Some("fleet")
                    && r.operations.iter().map(|o| o.requests).sum::<u64>() == during + after
            })
        },
    );
    assert!(report.stats.fleet.unwrap().flushes > 0);

    // Hung (SIGSTOP): requests are not held up past the timeout.
    signal(redis.child.id(), libc::SIGSTOP);
    let seen = requests(&a, &fa) + requests(&b, &fb);
    let hung = drive(&[&a, &b], "hung", 0..2) as u64;
    let sent = Instant::now();
    eventually(
        "requests analysed while Redis hangs",
        Duration::from_secs(3),
        || (requests(&a, &fa) + requests(&b, &fb) == seen + hung).then_some(()),
    );
    // One timeout (20 ms) for the first request, none for the rest.
    let lag = sent.elapsed();
    signal(redis.child.id(), libc::SIGCONT);
    eprintln!("analysed {hung} requests made while Redis hung; the last within {lag:?}");
    assert!(lag < Duration::from_millis(500), "{lag:?}");
    stop(&mut a, &fa);
    stop(&mut b, &fb);
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}
