//! `cargo xtask bench-replay`: `seqshield replay` as a user runs it — a process, pinned
//! to one core, on a realistic capture (`seqshield_tests::realistic`) — side by side in
//! one run with the read floor (`tcpdump -r F -w /dev/null`: reading the file and
//! nothing else), with the parse floor (the `parse_floor` example: each frame decoded
//! and httparse run on each client payload, nothing kept) and with tshark pulling the
//! same HTTP requests out of the capture (what people use for the job today).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The core every measured process is pinned to (core 0 keeps the sampler and the rest
/// of the machine).
const CORE: &str = "1";
/// How long tshark may take before it is stopped (it takes about a minute here).
const TSHARK_LIMIT: Duration = Duration::from_secs(900);

pub struct Options {
    pub runs: usize,
    pub requests: usize,
    pub tshark: bool,
}

/// One measured process: wall time and the peak of its resident memory, sampled.
#[derive(Debug, Clone, Copy)]
struct Run {
    seconds: f64,
    peak_anon_mib: f64,
    peak_rss_mib: f64,
}

pub fn run(root: &Path, options: &Options) -> Result<()> {
    for tool in ["tcpdump", "taskset"]
        .into_iter()
        .chain(options.tshark.then_some("tshark"))
    {
        if !Command::new("which")
            .arg(tool)
            .output()
            .is_ok_and(|o| o.status.success())
        {
            bail!("{tool} is missing: run `cargo xtask setup` (as root) first");
        }
    }
    build(root, &["realistic_capture", "parse_floor"])?;
    let work = Workload::write(
        root,
        "bench-replay",
        "realistic_capture",
        "realistic",
        options.requests,
    )?;
    let pcap = &work.pcap;
    let size_mb = std::fs::metadata(pcap)?.len() as f64 / 1e6;
    let floor_cmd = || {
        let mut c = Command::new("tcpdump");
        c.arg("-r").arg(pcap).args(["-w", "/dev/null"]);
        c
    };
    // Decoding each frame and httparse on each client payload, nothing else.
    let parse_floor_cmd = || {
        let mut c = Command::new(root.join("target/release/examples/parse_floor"));
        c.arg(pcap).args(["80", "8080"]);
        c
    };

    // The same replay with the rules of issue 15 on top (`bank::EXPRESSION_RULES`, written
    // by the example): expression rules (one of them applying to every request), a rate
    // rule and the enumeration signal.
    let rules_config = work.config.with_file_name("config-rules.toml");
    let rules_report = work.report.with_file_name("report-rules.json");

    let mut floor = Vec::new();
    let mut parse_floor = Vec::new();
    let mut replay = Vec::new();
    let mut replay_rules = Vec::new();
    for round in 0..options.runs {
        floor.push(measure(floor_cmd())?);
        parse_floor.push(measure(parse_floor_cmd())?);
        replay.push(measure(work.replay(root))?);
        replay_rules.push(measure(work.replay_with(
            root,
            &rules_config,
            &rules_report,
        ))?);
        println!(
            "round {}: read floor {:.3} s, parse floor {:.3} s, seqshield replay {:.3} s, \
             with expression rules {:.3} s",
            round + 1,
            floor[round].seconds,
            parse_floor[round].seconds,
            replay[round].seconds,
            replay_rules[round].seconds
        );
    }
    let summary = work.report()?;
    let requests = summary["stats"]["requests"]
        .as_f64()
        .context("stats.requests")?;
    let alerts = summary["stats"]["alerts"].as_u64().unwrap_or(0);
    let sequences = summary["sequences"].as_array().map_or(0, Vec::len);

    let tshark = if options.tshark {
        let mut c = Command::new("tshark");
        c.arg("-r").arg(pcap).args([
            "-n",
            "-Y",
            "http.request",
            "-T",
            "fields",
            "-e",
            "frame.time_epoch",
            "-e",
            "ip.src",
            "-e",
            "tcp.srcport",
            "-e",
            "http.request.method",
            "-e",
            "http.host",
            "-e",
            "http.request.uri",
            "-e",
            "http.cookie",
            "-e",
            "http.authorization",
        ]);
        let t = measure_limited(c, TSHARK_LIMIT)?;
        println!("tshark: {:.1} s", t.seconds);
        Some(t)
    } else {
        None
    };

    let floor = median(&floor);
    let parse_floor = median(&parse_floor);
    let replay = median(&replay);
    let replay_rules = median(&replay_rules);
    println!(
        "\n== {size_mb:.0} MB capture, {requests:.0} requests, {sequences} sequences reported, \
         {alerts} alerts; one core ({CORE}), median of {} runs ==",
        options.runs
    );
    println!(
        "read floor (tcpdump -r F -w /dev/null): {:.3} s",
        floor.seconds
    );
    println!(
        "parse floor (decode + httparse only):   {:.3} s  {:.2} M requests/s",
        parse_floor.seconds,
        requests / parse_floor.seconds / 1e6,
    );
    println!(
        "seqshield replay:                       {:.3} s  {:.2} M requests/s  \
         peak RSS {:.0} MiB ({:.0} MiB anonymous, the rest the mapped capture)",
        replay.seconds,
        requests / replay.seconds / 1e6,
        replay.peak_rss_mib,
        replay.peak_anon_mib
    );
    let rules_summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&rules_report)?)?;
    println!(
        "  + expression rules, rate, enumeration: {:.3} s  ({:+.1}% time; {} alerts)",
        replay_rules.seconds,
        (replay_rules.seconds / replay.seconds - 1.0) * 100.0,
        rules_summary["stats"]["alerts"].as_u64().unwrap_or(0)
    );
    println!(
        "seqshield / read floor:                 {:.2}x (parse floor / read floor {:.2}x)",
        replay.seconds / floor.seconds,
        parse_floor.seconds / floor.seconds
    );
    if let Some(t) = tshark {
        println!(
            "tshark (-Y http.request -T fields):     {:.1} s  ({:.0}x seqshield's time)",
            t.seconds,
            t.seconds / replay.seconds
        );
    }
    Ok(())
}

/// `cargo xtask bench-flood`: the memory a session flood costs — `seqshield replay` of
/// `sessions` one-request sessions next to 300 slow legit users (whose transfers are
/// allowed: every alert is a history the flood destroyed), peak anonymous memory sampled.
pub fn flood(root: &Path, sessions: usize) -> Result<()> {
    build(root, &["flood_capture"])?;
    // Half the flood, then all of it: the difference is what a live session costs,
    // without the tables that do not grow with sessions (connections, buffers).
    let half = flood_run(root, sessions / 2)?;
    let full = flood_run(root, sessions)?;
    let per_session = (full.peak_anon_mib - half.peak_anon_mib) * 1024.0 * 1024.0
        / (sessions - sessions / 2) as f64;
    println!(
        "\n== session flood: one-request sessions + 300 legit users, one core ({CORE}) ==\n\
         {} sessions: replay {:.2} s, peak anonymous memory {:.0} MiB\n\
         {sessions} sessions: replay {:.2} s, peak anonymous memory {:.0} MiB \
         ({:.0} bytes per session over the whole process)\n\
         each added live session: {per_session:.0} bytes\n\
         alerts 0 in both: every legit user's history survived",
        sessions / 2,
        half.seconds,
        half.peak_anon_mib,
        full.seconds,
        full.peak_anon_mib,
        full.peak_anon_mib * 1024.0 * 1024.0 / sessions as f64,
    );
    Ok(())
}

fn flood_run(root: &Path, sessions: usize) -> Result<Run> {
    let work = Workload::write(root, "bench-flood", "flood_capture", "flood", sessions)?;
    let run = measure(work.replay(root))?;
    let alerts = work.report()?["stats"]["alerts"]
        .as_u64()
        .unwrap_or(u64::MAX);
    if alerts != 0 {
        bail!(
            "the flood of {sessions} sessions cost legit users their histories: {alerts} false alerts"
        );
    }
    Ok(run)
}

/// A capture written by one of the seqshield-tests examples (`EXAMPLE OUT.pcap
/// CONFIG.toml STATE_DIR SIZE`) and the config to replay it with.
struct Workload {
    pcap: PathBuf,
    config: PathBuf,
    report: PathBuf,
}

impl Workload {
    /// Writes it under `target/<dir>/`, then reads it once: every measured command reads
    /// the file from the page cache.
    fn write(root: &Path, dir: &str, example: &str, name: &str, size: usize) -> Result<Self> {
        let dir = root.join("target").join(dir);
        std::fs::create_dir_all(&dir)?;
        let work = Self {
            pcap: dir.join(format!("{name}.pcap")),
            config: dir.join("config.toml"),
            report: dir.join("report.json"),
        };
        crate::run(
            Command::new(root.join("target/release/examples").join(example))
                .arg(&work.pcap)
                .arg(&work.config)
                .arg(dir.join("state"))
                .arg(size.to_string()),
        )?;
        std::fs::read(&work.pcap)?;
        Ok(work)
    }

    /// `seqshield replay` of it, as a user runs it.
    fn replay(&self, root: &Path) -> Command {
        self.replay_with(root, &self.config, &self.report)
    }

    /// The same with another config, writing its report elsewhere.
    fn replay_with(&self, root: &Path, config: &Path, report: &Path) -> Command {
        let mut c = Command::new(root.join("target/release/seqshield"));
        c.arg("replay")
            .arg("--config")
            .arg(config)
            .arg("--pcap")
            .arg(&self.pcap)
            .arg("--report-out")
            .arg(report);
        c
    }

    /// The report the last replay wrote.
    fn report(&self) -> Result<serde_json::Value> {
        Ok(serde_json::from_str(&std::fs::read_to_string(
            &self.report,
        )?)?)
    }
}

/// The release agent and the example that writes the capture (two builds: with
/// `--example`, cargo would build only examples of every package named).
fn build(root: &Path, examples: &[&str]) -> Result<()> {
    let release = ["build", "--release", "--locked", "-p"];
    crate::cargo(
        root,
        &[&release[..], &["seqshield", "--bin", "seqshield"]].concat(),
    )?;
    let mut args = [&release[..], &["seqshield-tests"]].concat();
    for example in examples {
        args.extend(["--example", example]);
    }
    crate::cargo(root, &args)
}

fn median(runs: &[Run]) -> Run {
    let mut sorted = runs.to_vec();
    sorted.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
    sorted[sorted.len() / 2]
}

fn measure(cmd: Command) -> Result<Run> {
    measure_limited(cmd, Duration::from_secs(300))
}

/// Runs `cmd` pinned to [`CORE`], output discarded, sampling its memory every 2 ms.
fn measure_limited(cmd: Command, limit: Duration) -> Result<Run> {
    let mut pinned = Command::new("taskset");
    pinned
        .args(["-c", CORE])
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let start = Instant::now();
    let mut child = pinned.spawn().context("starting the measured command")?;
    let status_file = format!("/proc/{}/status", child.id());
    let (mut anon, mut rss) = (0f64, 0f64);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if start.elapsed() > limit {
            child.kill().ok();
            child.wait().ok();
            bail!("{:?} took longer than {limit:?}", cmd.get_program());
        }
        if let Ok(text) = std::fs::read_to_string(&status_file) {
            anon = anon.max(status_kib(&text, "RssAnon:") / 1024.0);
            rss = rss.max(status_kib(&text, "VmRSS:") / 1024.0);
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let seconds = start.elapsed().as_secs_f64();
    if !status.success() {
        bail!("{:?} failed: {status}", cmd.get_program());
    }
    Ok(Run {
        seconds,
        peak_anon_mib: anon,
        peak_rss_mib: rss,
    })
}

fn status_kib(status: &str, key: &str) -> f64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0)
}

/// `cargo xtask bench-fleet`: what fleet mode costs. `seqshield replay` of the realistic
/// capture (`requests` requests) pinned to one core, embedded and then sharing sessions
/// with a local `redis-server` (pinned to the other core) over TCP loopback and over a
/// unix socket, in one run; round trips per identified request and Redis memory per
/// live session from the runs; the round trip's own p50/p99 from the `fleet_latency`
/// example.
pub fn fleet(root: &Path, requests: usize) -> Result<()> {
    build(root, &["realistic_capture"])?;
    crate::example(root, "build", "seqshield", "fleet_latency")?;
    let work = Workload::write(
        root,
        "bench-fleet",
        "realistic_capture",
        "realistic",
        requests,
    )?;
    let dir = root.join("target/bench-fleet");
    let socket = dir.join("redis.sock");
    let _ = std::fs::remove_file(&socket);
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut redis = Command::new("taskset")
        .args(["-c", "0", "redis-server", "--bind", "127.0.0.1"])
        .args([
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--unixsocket")
        .arg(&socket)
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("redis-server (run `cargo xtask setup` as root first)")?;
    let result = fleet_runs(root, &work, &dir, &socket, port);
    redis.kill().ok();
    redis.wait().ok();
    result
}

fn fleet_runs(root: &Path, work: &Workload, dir: &Path, socket: &Path, port: u16) -> Result<()> {
    let cli = |args: &[&str]| -> Result<String> {
        let out = Command::new("redis-cli")
            .arg("-s")
            .arg(socket)
            .args(args)
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while cli(&["ping"]).unwrap_or_default() != "PONG" {
        if Instant::now() > deadline {
            bail!("redis-server did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let base = std::fs::read_to_string(&work.config)?;
    let embedded = measure(work.replay(root))?;
    let requests = work.report()?["stats"]["requests"]
        .as_f64()
        .context("requests")?;
    println!("embedded: {:.3} s", embedded.seconds);
    let mut rows = Vec::new();
    for (name, url) in [
        ("TCP loopback", format!("redis://127.0.0.1:{port}/0")),
        ("unix socket", format!("redis+unix://{}", socket.display())),
    ] {
        cli(&["flushall"])?;
        let empty: f64 = info_memory(&cli(&["info", "memory"])?);
        let config = dir.join("fleet.toml");
        std::fs::write(
            &config,
            format!("{base}\n[fleet]\nredis = {url:?}\ntimeout = \"100ms\"\n"),
        )?;
        let mut cmd = work.replay(root);
        let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
        cmd = Command::new(cmd.get_program());
        for (i, a) in args.iter().enumerate() {
            // The same command with the fleet's config in place of the plain one.
            if i > 0 && args[i - 1] == "--config" {
                cmd.arg(&config);
            } else {
                cmd.arg(a);
            }
        }
        let run = measure(cmd)?;
        let report = work.report()?;
        let stats = &report["stats"];
        let identified = stats["requests"].as_f64().unwrap_or(0.0)
            - stats["unidentified_requests"].as_f64().unwrap_or(0.0);
        let round_trips = stats["fleet"]["round_trips"].as_f64().unwrap_or(0.0);
        let fallbacks = stats["fleet"]["fallbacks"].as_u64().unwrap_or(u64::MAX);
        let keys = cli(&["--scan", "--pattern", "seqshield:{*}:history"])?;
        let histories = keys.lines().count();
        // What one history key costs Redis (MEMORY USAGE, a sample of 100).
        let sample: Vec<f64> = keys
            .lines()
            .take(100)
            .filter_map(|k| cli(&["memory", "usage", k]).ok()?.parse().ok())
            .collect();
        let per_key = sample.iter().sum::<f64>() / sample.len().max(1) as f64;
        let used = info_memory(&cli(&["info", "memory"])?);
        println!(
            "{name}: {:.3} s, {histories} sessions in Redis",
            run.seconds
        );
        rows.push(format!(
            "{name:<13} {:>7.3} s  {:>6.0} k requests/s  {:+.1} µs per request  \
             {:.3} round trips per identified request  Redis per session: {per_key:.0} bytes \
             of history key, {:.0} bytes of used_memory  fallbacks {fallbacks}  counts {}",
            run.seconds,
            requests / run.seconds / 1e3,
            (run.seconds - embedded.seconds) * 1e6 / requests,
            round_trips / identified.max(1.0),
            (used - empty) / histories.max(1) as f64,
            report["counts"].as_str().unwrap_or("-"),
        ));
    }
    let latency = Command::new(root.join("target/release/examples/fleet_latency"))
        .arg(format!("redis://127.0.0.1:{port}/0"))
        .arg("50000")
        .output()?;
    println!(
        "\n== fleet mode: {requests:.0} requests of the realistic capture, replay on core {CORE}, redis-server on core 0 ==\n\
         embedded      {:>7.3} s  {:>6.0} k requests/s\n{}\n\n\
         one round trip (history script, TCP loopback, 50 000 calls):\n{}",
        embedded.seconds,
        requests / embedded.seconds / 1e3,
        rows.join("\n"),
        String::from_utf8_lossy(&latency.stdout).trim_end()
    );
    Ok(())
}

/// `used_memory` from `INFO memory`.
fn info_memory(info: &str) -> f64 {
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}
