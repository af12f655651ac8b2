//! The `seqshield` binary end to end: replaying a real tcpdump capture of curl clients
//! (tests/fixtures/curl-loopback.pcap, recorded by record-curl-fixture.sh), the report
//! command, session-hash, and refusing bad configs with file, key and reason.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use seqshield::report::Report;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

fn seqshield(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_seqshield"))
        .args(args)
        .output()
        .expect("run seqshield")
}

/// `seqshield replay` of `pcap` with `config`, the report written to `report_out`.
fn replay(config: &Path, pcap: &Path, report_out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "replay",
        "--config",
        config.to_str().unwrap(),
        "--pcap",
        pcap.to_str().unwrap(),
        "--report-out",
        report_out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    seqshield(&args)
}

/// A report file written by `replay`.
fn read_report(path: &Path) -> Report {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The bank API's endpoints and allow rule (tests/fixtures/bank-api.toml).
const BANK_ENDPOINTS: &str = include_str!("../../tests/fixtures/bank-api.toml");
const RULE_ID: &str = "6f1c1f9e-3f43-4a53-9d2c-2a4c1d3e5b7a";

fn write_config(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("config.toml");
    let text = format!("[state]\ndir = {:?}\n{body}", dir.join("state"));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn replays_a_real_tcpdump_capture_of_curl_clients() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!("[capture]\nports = [18080]\n[sequence]\nmin_support = 1\n{BANK_ENDPOINTS}"),
    );
    let report_path = dir.path().join("report.json");
    let out = replay(&config, &fixture("curl-loopback.pcap"), &report_path, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // What the clients sent (see record-curl-fixture.sh): alice (cookie, keep-alive) and
    // bob (header, a connection per request) log in → accounts → balance → transfer;
    // mallory (JWT) logs in and transfers twice; one request has no session.
    let report = read_report(&report_path);
    assert_eq!(report.stats.requests, 12);
    assert_eq!(report.stats.unidentified_requests, 1);
    assert_eq!(report.stats.parse_errors, 0);
    let counts: Vec<(String, u64, u64)> = report
        .operations
        .iter()
        .map(|o| (o.human(), o.requests, o.occurrences))
        .collect();
    assert_eq!(
        counts,
        [
            ("POST bank.test/api/v1/login".to_string(), 3, 3),
            (
                "GET bank.test/api/v1/users/{user_id}/accounts".to_string(),
                2,
                2
            ),
            (
                "GET bank.test/api/v1/accounts/{account_id}/balance".to_string(),
                2,
                2
            ),
            ("POST bank.test/api/v1/transferFunds".to_string(), 4, 3),
            ("GET bank.test/api/v1/health".to_string(), 1, 0),
        ]
    );
    assert_eq!(report.sequences.len(), 7);
    let top = &report.sequences[0];
    assert_eq!((top.count, top.last_op_count, top.score), (2, 2, 1.0));

    // Two alerts, both mallory's transfers, one JSON object per line.
    let stdout = String::from_utf8(out.stdout).unwrap();
    let alerts: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(alerts.len(), 2);
    for a in &alerts {
        assert_eq!(a["action"], "would_block");
        assert_eq!(a["rule_id"], RULE_ID);
        assert_eq!(a["server"], "127.0.0.1:18080");
        assert_eq!(
            a["previous_operations"],
            serde_json::json!(["POST bank.test/api/v1/login"])
        );
    }
    assert_eq!(alerts[0]["session"], alerts[1]["session"]);

    // The alert's session is the hash `session-hash` prints for mallory's JWT subject.
    let hashes = seqshield(&[
        "session-hash",
        "--config",
        config.to_str().unwrap(),
        "mallory",
    ]);
    let hashes = String::from_utf8(hashes.stdout).unwrap();
    let jwt_line = hashes
        .lines()
        .find(|l| l.ends_with("jwt_claim:sub"))
        .unwrap();
    assert!(
        jwt_line.starts_with(alerts[0]["session"].as_str().unwrap()),
        "{hashes}"
    );

    // The report command renders the table a person reads.
    let table = seqshield(&["report", report_path.to_str().unwrap()]);
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(table.contains(
        "1.000   0.342        2  POST bank.test/api/v1/login → GET bank.test/api/v1/users/{user_id}/accounts"
    ), "{table}");
}

#[test]
fn bad_configs_are_refused_with_file_key_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let pcap = fixture("curl-loopback.pcap");
    let cases = [
        (
            "[sequence]\nmin_suport = 3\n",
            "sequence.min_suport",
            "unknown field",
        ),
        (
            "[sequence]\nmin_support = \"5\"\n",
            "sequence.min_support",
            "invalid type",
        ),
        (
            "[sequence]\nwindow = \"a day\"\n",
            "sequence.window",
            "invalid duration",
        ),
        (
            "[operations]\ndiscovery = false\n[[rule]]\ntitle = \"t\"\nkind = \"allow\"\naction = \"log\"\nsequence = [\"GET h/a\", \"GET h/b\"]\n",
            "rule[0].sequence[0]",
            "unknown operation",
        ),
        (
            &format!(
                "[[rule]]\ntitle = \"{}\"\nkind = \"allow\"\naction = \"log\"\nsequence = [\"GET h/a\", \"GET h/b\"]\n",
                "t".repeat(51)
            ),
            "rule[0].title",
            "1-50 characters",
        ),
        (
            "[[rule]]\ntitle = \"t\"\nkind = \"allow\"\naction = \"log\"\nsequence = [\"GET h/a\"]\n",
            "rule[0].sequence",
            "2 or more",
        ),
    ];
    for (body, key, reason) in cases {
        let config = write_config(dir.path(), body);
        for args in [
            vec![
                "replay",
                "--config",
                config.to_str().unwrap(),
                "--pcap",
                pcap.to_str().unwrap(),
            ],
            vec!["check-config", config.to_str().unwrap()],
        ] {
            let out = seqshield(&args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{body}");
            assert!(
                stderr.contains(&format!("{}: {key}: ", config.display())),
                "{key}: {stderr}"
            );
            assert!(stderr.contains(reason), "{reason}: {stderr}");
        }
    }
}

#[test]
fn missing_capture_and_garbage_capture_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let out = seqshield(&[
        "replay",
        "--config",
        config.to_str().unwrap(),
        "--pcap",
        "/nonexistent.pcap",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot open capture /nonexistent.pcap"));
    let junk = dir.path().join("junk.pcap");
    std::fs::write(&junk, b"this is not a capture at all").unwrap();
    let out = seqshield(&[
        "replay",
        "--config",
        config.to_str().unwrap(),
        "--pcap",
        junk.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a pcap or pcapng file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_capture_cut_off_mid_record_replays_what_is_whole() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[capture]\nports = [18080]\n");
    let whole = std::fs::read(fixture("curl-loopback.pcap")).unwrap();
    let cut = dir.path().join("cut.pcap");
    std::fs::write(&cut, &whole[..whole.len() - 30]).unwrap();
    let report = dir.path().join("r.json");
    let out = replay(&config, &cut, &report, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("cut off"));
    let report = read_report(&report);
    assert_eq!(
        report.stats.requests, 12,
        "the cut record carried no request"
    );
}

#[test]
fn rules_check_and_suggest() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!("[capture]\nports = [18080]\n[sequence]\nmin_support = 1\n{BANK_ENDPOINTS}"),
    );
    let out = seqshield(&["rules", "check", config.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok, 1 rules"));

    // Learn from the curl capture, then draft allow rules from the report.
    let report = dir.path().join("report.json");
    let out = replay(&config, &fixture("curl-loopback.pcap"), &report, &[]);
    assert!(out.status.success());
    let out = seqshield(&[
        "rules",
        "suggest",
        report.to_str().unwrap(),
        "--min-lower",
        "0.2",
        "--min-count",
        "2",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let suggested = String::from_utf8(out.stdout).unwrap();
    // balance → transfer (2 of 3 transfers, lower bound 0.208) and login → accounts
    // (2 of 2, lower bound 0.342), best bound first, each with its evidence.
    let first = suggested.find("after POST login").expect(&suggested);
    let second = suggested
        .find("POST transferFunds after GET balance")
        .expect(&suggested);
    assert!(first < second, "{suggested}");
    assert!(
        suggested.contains("# evidence: score 1.000 (lower bound 0.342), seen 2 times"),
        "{suggested}"
    );
    // The draft is a valid rules file for this config.
    let combined = dir.path().join("with-suggestions.toml");
    let base = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&combined, base + &suggested).unwrap();
    let out = seqshield(&["rules", "check", combined.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Rate limits from the same replay: every operation with a session window.
    let out = seqshield(&[
        "rules",
        "suggest",
        report.to_str().unwrap(),
        "--rate",
        "--min-windows",
        "1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let drafted = String::from_utf8(out.stdout).unwrap();
    let report: Report = read_report(&report);
    let with_rates = report
        .operations
        .iter()
        .filter(|o| o.session_rate.is_some())
        .count();
    assert!(with_rates >= 4, "{report:?}");
    assert_eq!(
        drafted.matches("kind = \"rate\"").count(),
        with_rates,
        "{drafted}"
    );
    assert!(drafted.contains("period = \"10m\""), "{drafted}");
    std::fs::write(
        &combined,
        std::fs::read_to_string(&config).unwrap() + &drafted,
    )
    .unwrap();
    let out = seqshield(&["rules", "check", combined.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("ok, {} rules", with_rates + 1))
    );
}

/// Splits a pcap before its `nth` client SYN (a connection boundary in this fixture).
fn split_pcap(bytes: &[u8], nth_syn: usize) -> (Vec<u8>, Vec<u8>) {
    use pcap_file::pcap::{PcapReader, PcapWriter};
    let mut reader = PcapReader::new(bytes).unwrap();
    let header = reader.header();
    let mut first = PcapWriter::with_header(Vec::new(), header).unwrap();
    let mut second = PcapWriter::with_header(Vec::new(), header).unwrap();
    let mut syns = 0;
    while let Some(packet) = reader.next_packet() {
        let packet = packet.unwrap();
        // Loopback Ethernet, IPv4 without options: TCP flags at 14 + 20 + 13.
        let flags = packet.data.get(47).copied().unwrap_or(0);
        if flags & 0x12 == 0x02 {
            syns += 1;
        }
        if syns < nth_syn {
            first.write_packet(&packet).unwrap();
        } else {
            second.write_packet(&packet).unwrap();
        }
    }
    (first.into_writer(), second.into_writer())
}

#[test]
fn replay_persist_in_two_halves_equals_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let body = format!("[capture]\nports = [18080]\n[sequence]\nmin_support = 1\n{BANK_ENDPOINTS}");
    let whole = std::fs::read(fixture("curl-loopback.pcap")).unwrap();
    // Before bob's third connection: alice done, bob half way, mallory still to come.
    let (first, second) = split_pcap(&whole, 4);
    let paths: Vec<PathBuf> = ["first.pcap", "second.pcap"]
        .iter()
        .map(|n| dir.path().join(n))
        .collect();
    std::fs::write(&paths[0], first).unwrap();
    std::fs::write(&paths[1], second).unwrap();

    let report_of = |state: &Path, pcap: &Path, persist: bool| -> Report {
        std::fs::create_dir_all(state).unwrap();
        let config = write_config(state, &body);
        let out_path = state.join("r.json");
        let out = replay(
            &config,
            pcap,
            &out_path,
            if persist { &["--persist"] } else { &[] },
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        read_report(&out_path)
    };
    let one_run = report_of(
        &dir.path().join("one"),
        &fixture("curl-loopback.pcap"),
        false,
    );
    let halves = dir.path().join("halves");
    let half = report_of(&halves, &paths[0], true);
    assert!(half.stats.requests < one_run.stats.requests);
    let resumed = report_of(&halves, &paths[1], true);
    assert_eq!(resumed, one_run);
}

#[test]
fn a_corrupt_snapshot_is_set_aside_and_learning_starts_fresh() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!("[capture]\nports = [18080]\n{BANK_ENDPOINTS}"),
    );
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("snapshot.bin"),
        b"SQSSNAP\0garbage that is not a snapshot at all, not even close",
    )
    .unwrap();
    let out = seqshield(&[
        "replay",
        "--config",
        config.to_str().unwrap(),
        "--pcap",
        fixture("curl-loopback.pcap").to_str().unwrap(),
        "--persist",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("snapshot_set_aside") && stderr.contains("moved to"),
        "{stderr}"
    );
    let aside: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("snapshot.bin.bad-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert!(
        state.join("snapshot.bin").exists(),
        "a fresh snapshot was written"
    );
}

#[test]
fn check_config_reports_every_mistake_at_once() {
    let file = fixture("many-mistakes.toml");
    let out = seqshield(&["check-config", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for (key, reason) in [
        ("capture.ports", "invalid type"),
        ("capture.snaplen", "at least 1"),
        ("capture.max_buffer_bytes", "at least 1048576"),
        ("nonsense", "unknown section"),
        ("sequence.min_suport", "unknown field"),
        ("sequence.window", "invalid duration"),
        ("endpoint[0].path", "must start with '/'"),
        ("rule[0].sequence", "2 or more"),
        ("rule[1].kind", "unknown variant `sometimes`"),
        ("rule[2].sequence[0]", "unknown operation"),
        ("rule[2].sequence[1]", "unknown operation"),
        ("rule[3].expression", "column 24: Syntax error"),
        (
            "rule[4].expression",
            "column 37: unknown field session.nope",
        ),
        ("rule[5].limit", "missing"),
    ] {
        let line = format!("{}: {key}: ", file.display());
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&line) && l.contains(reason)),
            "{key}: {reason}\n{stderr}"
        );
    }
    assert!(stderr.contains("14 error(s)"), "{stderr}");
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    if std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!(
            "\n*** SKIPPED the_systemd_unit_passes_systemd_analyze_verify: no systemd-analyze ***\n"
        );
        return;
    }
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/seqshield.service"),
    )
    .unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/seqshield "));
    assert!(unit.contains("CapabilityBoundingSet=CAP_BPF CAP_PERFMON CAP_NET_ADMIN CAP_SYS_NICE"));
    assert!(unit.contains("ProtectSystem=strict") && unit.contains("StateDirectory=seqshield"));
    // Verify the unit as installed, with the binary this test built in its place.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seqshield.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/seqshield", env!("CARGO_BIN_EXE_seqshield")),
    )
    .unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).trim().is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The default config it points at is valid and documents every section.
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/config.toml");
    let out = seqshield(&["check-config", config.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn user_errors_carry_no_backtrace_even_with_rust_backtrace_set() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[sequence]\nmin_suport = 3\n");
    let out = Command::new(env!("CARGO_BIN_EXE_seqshield"))
        .args(["check-config", config.to_str().unwrap()])
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("sequence.min_suport"), "{stderr}");
    assert!(!stderr.to_lowercase().contains("backtrace"), "{stderr}");
}

/// `seqshield graph` of the curl fixture's report, in each format, against the
/// snapshots in tests/fixtures/graph/ (`UPDATE_SNAPSHOTS=1` rewrites them).
#[test]
fn the_journey_graph_of_the_curl_fixture_matches_its_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!("[capture]\nports = [18080]\n[sequence]\nmin_support = 1\n{BANK_ENDPOINTS}"),
    );
    let report = dir.path().join("report.json");
    let out = replay(&config, &fixture("curl-loopback.pcap"), &report, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (format, file) in [("dot", "curl.dot"), ("mermaid", "curl.mmd")] {
        let out = seqshield(&["graph", report.to_str().unwrap(), "--format", format]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = String::from_utf8(out.stdout).unwrap();
        let snapshot = fixture("graph").join(file);
        if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
            std::fs::create_dir_all(snapshot.parent().unwrap()).unwrap();
            std::fs::write(&snapshot, &got).unwrap();
        }
        let want = std::fs::read_to_string(&snapshot).expect("snapshot (UPDATE_SNAPSHOTS=1)");
        assert_eq!(got, want, "{format} differs from {}", snapshot.display());
    }
    // JSON: alice and bob walked login → accounts → balance → transfer, mallory logged
    // in and transferred (twice: a collapsed repeat), so 2 of 3 transfers came after a
    // balance check.
    let out = seqshield(&["graph", report.to_str().unwrap(), "--format", "json"]);
    let graph: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let edges: Vec<(u64, f64)> = graph["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["count"].as_u64().unwrap(), e["score"].as_f64().unwrap()))
        .collect();
    assert_eq!(graph["nodes"].as_array().unwrap().len(), 4);
    assert_eq!(edges.len(), 4, "{graph:#}");
    assert!(edges.contains(&(2, 2.0 / 3.0)), "{edges:?}");
    assert!(edges.contains(&(1, 1.0 / 3.0)), "{edges:?}");
}
