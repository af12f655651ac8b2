//! Live end to end (root): a real HTTP server in a network namespace, real clients (curl
//! and a raw socket client) in another, joined by a veth pair, and `seqshield run`
//! capturing in the kernel on the server's interface. Checks what the agent reported
//! against what the clients sent, against `seqshield replay` of a tcpdump capture of the
//! same traffic, and that the kernel program is gone when the agent is.
//!
//! Not root (or tools missing): each test says loudly that it is skipped.

mod common;

use std::time::Duration;

use common::{
    BALANCE, NetPair, TRANSFER, eventually, fixture, live_report, root_or_skip, seqshield_bin,
    signal, start_agent,
};
use seqshield::report::Report;

const LOGIN: &str = "POST bank.test/api/v1/login";
const ACCOUNTS: &str = "GET bank.test/api/v1/users/{user_id}/accounts";

/// The tcx link of the agent's capture program, from the agent's own descriptors.
fn capture_link_id(pid: u32) -> Option<String> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fdinfo")).ok()?;
    dir.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .find(|info| info.contains("link_type:\ttcx"))
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("link_id:\t").map(str::to_string))
        })
}

fn link_exists(link_id: &str) -> bool {
    std::process::Command::new("bpftool")
        .args(["link", "show", "id", link_id])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn curl(pair: &NetPair, args: &[&str]) {
    let mut full = vec![
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "--max-time",
        "5",
        "-H",
        "Host: bank.test",
    ];
    full.extend_from_slice(args);
    let out = pair.in_client(&full);
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// curl arguments for a keep-alive connection that sends `steps` (method, path) in order.
fn journey(base: &str, auth: &[&str], steps: &[(&str, &str)]) -> Vec<String> {
    let mut args = Vec::new();
    for (i, (method, path)) in steps.iter().enumerate() {
        if i > 0 {
            args.extend(
                ["--next", "-s", "-o", "/dev/null", "-H", "Host: bank.test"].map(String::from),
            );
        }
        args.extend(auth.iter().map(|a| a.to_string()));
        if *method == "POST" {
            args.extend(["-d".to_string(), r#"{"amount":1}"#.to_string()]);
        }
        args.push(format!("{base}{path}"));
    }
    args
}

fn human(report: &Report, id: &str) -> String {
    report
        .operations
        .iter()
        .find(|o| o.id == id)
        .expect("id resolves")
        .human()
}

fn sequences(report: &Report) -> Vec<(Vec<String>, u64, u64)> {
    let mut v: Vec<_> = report
        .sequences
        .iter()
        .map(|s| {
            (
                s.operations.iter().map(|id| human(report, id)).collect(),
                s.count,
                s.last_op_count,
            )
        })
        .collect();
    v.sort();
    v
}

fn op_counts(report: &Report) -> Vec<(String, u64, u64)> {
    let mut v: Vec<_> = report
        .operations
        .iter()
        .map(|o| (o.human(), o.requests, o.occurrences))
        .collect();
    v.sort();
    v
}

#[test]
fn live_report_matches_what_clients_sent_and_the_replay_of_a_tcpdump_capture() {
    if !root_or_skip("live_report_matches_what_clients_sent_and_the_replay_of_a_tcpdump_capture") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut pair = NetPair::new();
    let admin_port = 19_464;
    let config = common::bank_config(dir.path(), admin_port, "");
    let server_ip = pair.server_ip.clone();
    pair.start_bank_server(0);
    let pcap = dir.path().join("live.pcap");
    let server_if = pair.server_if.clone();
    let tcpdump = pair.spawn_server_side(
        &[
            "tcpdump",
            // Keep root: the capture file is in a root-only temp dir.
            "-Z",
            "root",
            // Hand packets over at once: without it a SIGINT can end tcpdump with a
            // block of packets still unread.
            "--immediate-mode",
            "-i",
            &server_if,
            "-U",
            "-s",
            "0",
            "-w",
            pcap.to_str().unwrap(),
            "tcp port 80",
        ],
        None,
    );
    let alerts_path = dir.path().join("alerts.jsonl");
    let agent = start_agent(&mut pair, &config, admin_port, &alerts_path);
    let before = live_report(&pair, &agent).unwrap().stats.requests;

    let base = format!("http://{server_ip}/api/v1");
    let legit = [
        ("POST", "/login"),
        ("GET", "/users/7/accounts"),
        ("GET", "/accounts/1007/balance"),
        ("POST", "/transferFunds"),
    ];
    let attack = [("POST", "/login"), ("POST", "/transferFunds")];
    let carol_jwt = "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJjYXJvbCJ9.c2ln"; // sub=carol
    let trudy_jwt = "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ0cnVkeSJ9.c2ln"; // sub=trudy
    // alice: cookie, one keep-alive connection.
    let args = journey(&base, &["-b", "sid=alice"], &legit);
    curl(&pair, &args.iter().map(String::as_str).collect::<Vec<_>>());
    // bob: header, a new connection per request.
    for step in legit {
        let args = journey(&base, &["-H", "X-Session-Id: bob"], &[step]);
        curl(&pair, &args.iter().map(String::as_str).collect::<Vec<_>>());
    }
    // carol: JWT, keep-alive.
    let args = journey(&base, &["-H", carol_jwt], &legit);
    curl(&pair, &args.iter().map(String::as_str).collect::<Vec<_>>());
    // mallory (cookie) and trudy (JWT) skip the balance check.
    let args = journey(&base, &["-b", "sid=mallory"], &attack);
    curl(&pair, &args.iter().map(String::as_str).collect::<Vec<_>>());
    let args = journey(&base, &["-H", trudy_jwt], &attack);
    curl(&pair, &args.iter().map(String::as_str).collect::<Vec<_>>());
    // No session.
    curl(&pair, &[&format!("{base}/health")]);

    // 3 × 4 + 2 × 2 + 1 requests, on top of the readiness probes.
    let live = eventually(
        "the live report to show every request",
        Duration::from_secs(5),
        || live_report(&pair, &agent).filter(|r| r.stats.requests >= before + 17),
    );
    assert_eq!(live.stats.requests, before + 17);
    assert_eq!(live.stats.parse_errors, 0);
    assert_eq!(live.stats.lost_events, 0);
    // The server's side was seen (its headers drive reassembly), and nothing fell back
    // to the one-sided timers or was refused as outside what the server accepts.
    let flows = live.stats.flows;
    assert!(flows.server_segments > 0, "{flows:?}");
    assert_eq!(flows.gaps_timed_out + flows.gaps, 0, "{flows:?}");
    assert_eq!(
        flows.out_of_window_segments + flows.discarded_segments,
        0,
        "{flows:?}"
    );
    assert_eq!(flows.bad_checksum_segments, 0, "{flows:?}");

    // Ground truth from the scripts above (A login, B accounts, C balance, D transfer):
    // N(A) = 5, N(B) = 3, N(C) = 3, N(D) = 5; the three legit journeys give every
    // suffix of A B C D three times; the attackers give A D twice.
    let want_ops: Vec<(String, u64, u64)> = {
        let mut v = vec![
            (LOGIN.to_string(), 5, 5),
            (ACCOUNTS.to_string(), 3, 3),
            (BALANCE.to_string(), 3, 3),
            (TRANSFER.to_string(), 5, 5),
        ];
        v.sort();
        v
    };
    let bank_ops = [LOGIN, ACCOUNTS, BALANCE, TRANSFER];
    let ops: Vec<_> = op_counts(&live)
        .into_iter()
        .filter(|o| bank_ops.contains(&o.0.as_str()))
        .collect();
    assert_eq!(ops, want_ops);
    let s = |ops: &[&str], count, last| {
        (
            ops.iter().map(|o| o.to_string()).collect::<Vec<_>>(),
            count,
            last,
        )
    };
    let mut want_seqs = vec![
        s(&[LOGIN, ACCOUNTS], 3, 3),
        s(&[ACCOUNTS, BALANCE], 3, 3),
        s(&[LOGIN, ACCOUNTS, BALANCE], 3, 3),
        s(&[BALANCE, TRANSFER], 3, 5),
        s(&[ACCOUNTS, BALANCE, TRANSFER], 3, 5),
        s(&[LOGIN, ACCOUNTS, BALANCE, TRANSFER], 3, 5),
        s(&[LOGIN, TRANSFER], 2, 5),
    ];
    want_seqs.sort();
    assert_eq!(sequences(&live), want_seqs);
    let top = &live.sequences[0];
    assert_eq!((top.count, top.score), (3, 1.0));

    // Stop tcpdump, then the agent (SIGTERM: clean exit, program detached).
    let link = capture_link_id(agent.pid).expect("the agent holds a tcx link");
    assert!(link_exists(&link));
    signal(tcpdump, libc::SIGINT);
    pair.wait_for(tcpdump, Duration::from_secs(5))
        .expect("tcpdump exits");
    signal(agent.pid, libc::SIGTERM);
    let status = pair
        .wait_for(agent.pid, Duration::from_secs(5))
        .expect("the agent exits on SIGTERM");
    assert!(status.success(), "exit status {status}");
    assert!(
        !link_exists(&link),
        "the capture program is detached after exit"
    );

    // Alerts: mallory's and trudy's transfers, one JSON line each.
    let alerts_text = std::fs::read_to_string(&alerts_path).unwrap();
    let live_alerts: Vec<serde_json::Value> = alerts_text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(live_alerts.len(), 2, "{alerts_text}");
    for a in &live_alerts {
        assert_eq!(a["rule_id"], common::RULE_ID);
        assert_eq!(a["action"], "would_block");
        assert_eq!(a["operation"], TRANSFER);
        assert_eq!(a["previous_operations"], serde_json::json!([LOGIN]));
        assert_eq!(a["server"], format!("{server_ip}:80"));
    }

    // The same traffic, captured by tcpdump and replayed, gives the same report.
    let replay_report = dir.path().join("replay.json");
    let out = std::process::Command::new(seqshield_bin())
        .args([
            "replay",
            "--config",
            config.to_str().unwrap(),
            "--pcap",
            pcap.to_str().unwrap(),
        ])
        .args(["--report-out", replay_report.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replayed: Report =
        serde_json::from_str(&std::fs::read_to_string(&replay_report).unwrap()).unwrap();
    // Readiness probes may predate tcpdump's start: compare everything but them.
    let probe = format!("GET {server_ip}/ready");
    let without_probes = |r: &Report| {
        op_counts(r)
            .into_iter()
            .filter(|o| o.0 != probe)
            .collect::<Vec<_>>()
    };
    assert_eq!(without_probes(&replayed), without_probes(&live));
    assert_eq!(sequences(&replayed), sequences(&live));
    let replay_alerts: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let key = |a: &serde_json::Value| {
        (
            a["session"].to_string(),
            a["client"].to_string(),
            a["operation"].to_string(),
        )
    };
    assert_eq!(
        replay_alerts.iter().map(key).collect::<Vec<_>>(),
        live_alerts.iter().map(key).collect::<Vec<_>>()
    );
}

#[test]
fn pipelined_requests_bodies_and_large_headers_live() {
    if !root_or_skip("pipelined_requests_bodies_and_large_headers_live") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut pair = NetPair::new();
    let admin_port = 19_465;
    let config = common::bank_config(dir.path(), admin_port, "");
    let server_ip = pair.server_ip.clone();
    pair.start_bank_server(0);
    let agent = start_agent(
        &mut pair,
        &config,
        admin_port,
        &dir.path().join("alerts.jsonl"),
    );
    let before = live_report(&pair, &agent).unwrap();

    let smuggled = "GET /evil HTTP/1.1\r\nHost: bank.test\r\nCookie: sid=p\r\n\r\n";
    let big_cookie = "x".repeat(3_000); // the head spans more than one MSS
    let mut burst = String::new();
    burst.push_str("GET /p/a HTTP/1.1\r\nHost: bank.test\r\nCookie: sid=p\r\n\r\n");
    burst.push_str(&format!(
        "POST /p/b HTTP/1.1\r\nHost: bank.test\r\nCookie: sid=p\r\nContent-Length: {}\r\n\r\n{smuggled}",
        smuggled.len()
    ));
    burst.push_str(&format!(
        "POST /p/c HTTP/1.1\r\nHost: bank.test\r\nCookie: sid=p\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
        smuggled.len()
    ));
    burst.push_str(&format!(
        "GET /p/d HTTP/1.1\r\nHost: bank.test\r\nCookie: big={big_cookie}; sid=p\r\n\r\n"
    ));
    let file = dir.path().join("burst.bin");
    std::fs::write(&file, &burst).unwrap();
    let out = pair.in_client(&[
        "python3",
        fixture("raw_client.py").to_str().unwrap(),
        &server_ip,
        "80",
        file.to_str().unwrap(),
        "4",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "4",
        "the server answered all four"
    );

    let live = eventually(
        "the four pipelined requests",
        Duration::from_secs(5),
        || live_report(&pair, &agent).filter(|r| r.stats.requests >= before.stats.requests + 4),
    );
    assert_eq!(live.stats.requests, before.stats.requests + 4);
    assert_eq!(live.stats.parse_errors, 0);
    assert_eq!(live.stats.truncated_requests, 0);
    assert!(
        live.operations.iter().all(|o| !o.path.contains("evil")),
        "body bytes are never requests"
    );
    // Kernel counters and the per-request time histogram reach /metrics (read every second).
    let metrics = eventually(
        "kernel counters in /metrics",
        Duration::from_secs(3),
        || {
            let out = pair.in_server(&["curl", "-s", &format!("http://{}/metrics", agent.admin)]);
            let text = String::from_utf8(out.stdout).ok()?;
            let value = |name: &str| -> Option<u64> {
                text.lines()
                    .find_map(|l| l.strip_prefix(name))?
                    .trim()
                    .parse()
                    .ok()
            };
            (value("seqshield_packets_captured_total ")? > 0).then_some(text.clone())
        },
    );
    let parsed = format!(
        "seqshield_requests_total{{result=\"parsed\"}} {}",
        live.stats.requests
    );
    assert!(metrics.contains(&parsed), "{metrics}");
    let observed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("seqshield_request_pipeline_seconds_count "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        observed >= 4,
        "per-request pipeline time observed {observed} times\n{metrics}"
    );
    let want = [
        "GET bank.test/p/a",
        "POST bank.test/p/b",
        "POST bank.test/p/c",
        "GET bank.test/p/d",
    ]
    .map(String::from)
    .to_vec();
    assert!(
        sequences(&live).contains(&(want, 1, 1)),
        "{:?}",
        sequences(&live)
    );
}

#[test]
fn the_capture_program_goes_away_with_the_agent_even_after_sigkill() {
    if !root_or_skip("the_capture_program_goes_away_with_the_agent_even_after_sigkill") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut pair = NetPair::new();
    let admin_port = 19_466;
    let config = common::bank_config(dir.path(), admin_port, "");
    for sig in [libc::SIGINT, libc::SIGKILL] {
        let agent = start_agent(
            &mut pair,
            &config,
            admin_port,
            &dir.path().join("alerts.jsonl"),
        );
        let link = capture_link_id(agent.pid).expect("the agent holds a tcx link");
        assert!(link_exists(&link));
        signal(agent.pid, sig);
        let status = pair
            .wait_for(agent.pid, Duration::from_secs(5))
            .expect("the agent exits");
        if sig == libc::SIGINT {
            assert!(status.success(), "clean exit on SIGINT: {status}");
        }
        eventually("the link to go away", Duration::from_secs(1), || {
            (!link_exists(&link)).then_some(())
        });
    }
}

#[test]
fn clear_errors_for_a_missing_interface() {
    if !root_or_skip("clear_errors_for_a_missing_interface") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = common::bank_config(dir.path(), 19_467, "");
    let out = std::process::Command::new(seqshield_bin())
        .args([
            "run",
            "--config",
            config.to_str().unwrap(),
            "--iface",
            "nosuchif0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no network interface \"nosuchif0\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn refuses_to_run_without_privileges() {
    if !root_or_skip("refuses_to_run_without_privileges") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = common::bank_config(dir.path(), 19_468, "");
    // As nobody, with no capabilities.
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .args([
            seqshield_bin(),
            "run",
            "--config",
            config.to_str().unwrap(),
            "--iface",
            "lo",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("needs root (or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON)"),
        "{stderr}"
    );
}

#[test]
fn learned_state_survives_a_restart_and_a_corrupt_snapshot_is_set_aside() {
    if !root_or_skip("learned_state_survives_a_restart_and_a_corrupt_snapshot_is_set_aside") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut pair = NetPair::new();
    let admin_port = 19_469;
    let config = common::bank_config(dir.path(), admin_port, "");
    let server_ip = pair.server_ip.clone();
    pair.start_bank_server(0);
    // A damaged snapshot from "before": the agent starts anyway and moves it aside.
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("snapshot.bin"), b"not a snapshot").unwrap();
    let alerts = dir.path().join("alerts.jsonl");
    let agent = start_agent(&mut pair, &config, admin_port, &alerts);
    assert!(std::fs::read_dir(&state).unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("snapshot.bin.bad-")
    }));
    let base = format!("http://{server_ip}/api/v1");
    let before = live_report(&pair, &agent).unwrap().stats.requests;
    // Burst 1: alice logs in and lists her accounts. Then the agent stops (and saves).
    curl(
        &pair,
        &["-b", "sid=alice", "-d", "{}", &format!("{base}/login")],
    );
    curl(
        &pair,
        &["-b", "sid=alice", &format!("{base}/users/7/accounts")],
    );
    eventually("burst 1", Duration::from_secs(3), || {
        live_report(&pair, &agent).filter(|r| r.stats.requests >= before + 2)
    });
    signal(agent.pid, libc::SIGTERM);
    assert!(
        pair.wait_for(agent.pid, Duration::from_secs(5))
            .expect("exits")
            .success()
    );
    assert!(state.join("snapshot.bin").exists());
    // Burst 2 after a restart: the journey continues where it stopped.
    let agent = start_agent(&mut pair, &config, admin_port, &alerts);
    curl(
        &pair,
        &["-b", "sid=alice", &format!("{base}/accounts/1007/balance")],
    );
    curl(
        &pair,
        &[
            "-b",
            "sid=alice",
            "-d",
            "{}",
            &format!("{base}/transferFunds"),
        ],
    );
    let live = eventually("burst 2", Duration::from_secs(3), || {
        live_report(&pair, &agent).filter(|r| r.stats.requests >= before + 4)
    });
    let journey = [LOGIN, ACCOUNTS, BALANCE, TRANSFER]
        .map(String::from)
        .to_vec();
    assert!(
        sequences(&live).contains(&(journey, 1, 1)),
        "{:?}",
        sequences(&live)
    );
    let alerts_text = std::fs::read_to_string(&alerts).unwrap();
    assert!(
        alerts_text.is_empty(),
        "the balance check before the transfer was remembered: {alerts_text}"
    );
}

#[test]
fn the_netlink_fallback_cleans_up_after_itself_and_after_a_killed_run() {
    if !root_or_skip("the_netlink_fallback_cleans_up_after_itself_and_after_a_killed_run") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut pair = NetPair::new();
    let admin_port = 19_477;
    let config = common::bank_config(dir.path(), admin_port, "");
    let iface = pair.server_if.clone();
    let filters = |pair: &NetPair| {
        let out = pair.in_server(&["tc", "filter", "show", "dev", &iface, "ingress"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // As on a kernel without TCX: a netlink filter on a clsact qdisc.
    let start = |pair: &mut NetPair| {
        let args = [
            "env",
            "SEQSHIELD_TC_NETLINK=1",
            seqshield_bin(),
            "run",
            "--config",
            config.to_str().unwrap(),
            "--iface",
            &iface,
        ];
        let pid = pair.spawn_server_side(&args, Some(&dir.path().join("alerts.jsonl")));
        let agent = common::Agent {
            pid,
            admin: format!("127.0.0.1:{admin_port}"),
        };
        eventually("the agent", Duration::from_secs(15), || {
            live_report(pair, &agent)
        });
        agent
    };
    let agent = start(&mut pair);
    assert!(
        filters(&pair).contains("seqshield_ingress"),
        "{}",
        filters(&pair)
    );
    // SIGKILL leaves the filter behind (no link dies with the process on this path)…
    signal(agent.pid, libc::SIGKILL);
    pair.wait_for(agent.pid, Duration::from_secs(5))
        .expect("killed");
    assert!(
        filters(&pair).contains("seqshield_ingress"),
        "a netlink filter outlives SIGKILL"
    );
    // …the next start removes it before attaching its own, and a clean exit leaves none.
    let agent = start(&mut pair);
    assert_eq!(
        filters(&pair).matches("seqshield_ingress").count(),
        1,
        "{}",
        filters(&pair)
    );
    signal(agent.pid, libc::SIGTERM);
    assert!(
        pair.wait_for(agent.pid, Duration::from_secs(5))
            .expect("exits")
            .success()
    );
    assert!(
        !filters(&pair).contains("seqshield_ingress"),
        "{}",
        filters(&pair)
    );
    // A clsact qdisc the agent created itself goes with it.
    let qdiscs = |pair: &NetPair| {
        let out = pair.in_server(&["tc", "qdisc", "show", "dev", &iface]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    pair.in_server(&["tc", "qdisc", "del", "dev", &iface, "clsact"]);
    let agent = start(&mut pair);
    assert!(qdiscs(&pair).contains("clsact"), "{}", qdiscs(&pair));
    signal(agent.pid, libc::SIGINT);
    assert!(
        pair.wait_for(agent.pid, Duration::from_secs(5))
            .expect("exits")
            .success()
    );
    assert!(!qdiscs(&pair).contains("clsact"), "{}", qdiscs(&pair));
}

/// Under systemd (`Type=notify`, `WatchdogSec`): the agent says READY once the capture
/// is attached and the API answers, then feeds the watchdog from its capture loop.
#[test]
fn tells_systemd_when_ready_and_feeds_the_watchdog() {
    if !root_or_skip("tells_systemd_when_ready_and_feeds_the_watchdog") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut pair = NetPair::new();
    let config = common::bank_config(dir.path(), 19_495, "");
    let env = format!("NOTIFY_SOCKET={}", socket_path.display());
    pair.spawn_server_side(
        &[
            "env",
            &env,
            common::seqshield_bin(),
            "run",
            "--config",
            config.to_str().unwrap(),
            "--iface",
            &pair.server_if.clone(),
        ],
        None,
    );
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !(seen.iter().any(|m: &String| m.contains("READY=1"))
        && seen.iter().any(|m| m.contains("WATCHDOG=1")))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no READY=1 and WATCHDOG=1 within 15 s: {seen:?}"
        );
        match socket.recv(&mut buf) {
            Ok(n) => seen.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            // Another test's child exiting can interrupt the wait: wait again.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("no READY=1 and WATCHDOG=1 within 15 s: {e} {seen:?}"),
        }
    }
    // READY comes after the API answers: the report is there.
    assert!(seen[0].contains("READY=1"), "{seen:?}");
    let agent = common::Agent {
        pid: 0,
        admin: "127.0.0.1:19495".into(),
    };
    assert!(common::live_report(&pair, &agent).is_some());
}
