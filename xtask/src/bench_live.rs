//! `cargo xtask bench-live`: what the live agent costs a real server. nginx (one worker)
//! in the server namespace, wrk (one thread) in the client namespace sending bank-API
//! sessions; runs of the same length and connections: without the agent, with an empty
//! program attached, with the agent capturing another port, with it, and without again
//! (the two baselines bracket machine drift). Reports throughput with
//! and without, events lost, and the agent's CPU per 10k requests/s.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::lab::{Lab, bank_agent_config, path, wait_until};

const ADMIN: &str = "127.0.0.1:9465";
const DURATION_SECS: u32 = 10;
const CONNECTIONS: u32 = 16;
/// The fixed-rate mode's load: well under what this machine serves at most.
const PACED_RATE: u32 = 20_000;

/// wrk script: each connection's requests walk login → accounts → balance → transfer,
/// a new session (cookie) every four requests.
const WRK_SCRIPT: &str = r#"
local paths = {"/api/v1/login", "/api/v1/users/7/accounts", "/api/v1/accounts/1007/balance", "/api/v1/transferFunds"}
local methods = {"POST", "GET", "GET", "POST"}
local n = 0
local id = tostring(math.random(1, 1000000000))
request = function()
  n = n + 1
  local i = (n - 1) % 4 + 1
  local headers = { ["Host"] = "bank.test", ["Cookie"] = "sid=" .. id .. "-" .. math.floor((n - 1) / 4) }
  local body = nil
  if methods[i] == "POST" then
    body = '{"amount":1}'
    headers["Content-Type"] = "application/json"
  end
  return wrk.format(methods[i], paths[i], headers, body)
end
"#;

struct PacedRun {
    requests: u64,
    p50_us: u64,
    p99_us: u64,
    /// nginx worker CPU seconds during the run.
    nginx_cpu: f64,
}

/// nginx's one worker process (the master forks it).
fn nginx_worker(master: u32) -> Result<u32> {
    for _ in 0..50 {
        let children = std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))?;
        if let Some(pid) = children.split_whitespace().next() {
            return Ok(pid.parse()?);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("nginx ({master}) started no worker")
}

struct WrkRun {
    requests: u64,
    per_sec: f64,
}

pub fn run(root: &Path, seqshield: &Path) -> Result<()> {
    let dir = root.join("target/bench-live");
    std::fs::create_dir_all(dir.join("nginx-tmp"))?;
    let lab = Lab::create("sqbench", 78)?;
    let nginx_conf = dir.join("nginx.conf");
    std::fs::write(&nginx_conf, nginx_config(&dir, &lab.server_ip))?;
    let script = dir.join("bank.lua");
    std::fs::write(&script, WRK_SCRIPT)?;
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        bank_agent_config(root, &lab.server_if, ADMIN, &dir.join("state"), "")?,
    )?;
    let other_port_config = dir.join("agent-other-port.toml");
    std::fs::write(
        &other_port_config,
        bank_agent_config(
            root,
            &lab.server_if,
            ADMIN,
            &dir.join("state-other-port"),
            "",
        )?
        .replace("ports = [80]", "ports = [81]"),
    )?;
    crate::example(root, "build", "seqshield", "attach_baseline")?;
    let baseline = root.join("target/release/examples/attach_baseline");

    let wrk = |label: &str| -> Result<WrkRun> {
        println!("== wrk, {label}: {DURATION_SECS} s, {CONNECTIONS} connections ==");
        let out = lab.output_in(
            &lab.client_ns,
            &[
                "wrk",
                "-t1",
                &format!("-c{CONNECTIONS}"),
                &format!("-d{DURATION_SECS}s"),
                "-s",
                path(&script)?,
                &format!("http://{}/", lab.server_ip),
            ],
        )?;
        parse_wrk(&out)
    };

    let nginx_master = lab.spawn_server_side(
        &["nginx", "-c", path(&nginx_conf)?, "-p", path(&dir)?],
        None,
    )?;
    let url = format!("http://{}/api/v1/login", lab.server_ip);
    wait_until("nginx", || {
        lab.ok_in(&lab.client_ns, &["curl", "-s", "-o", "/dev/null", &url])
    })?;
    let nginx = nginx_worker(nginx_master)?;
    let paced = |label: &str| -> Result<PacedRun> {
        println!("== fixed rate, {label}: {PACED_RATE} requests/s for {DURATION_SECS} s ==");
        let cpu_before = cpu_seconds(nginx)?;
        let out = lab.output_in(
            &lab.client_ns,
            &[
                path(&std::env::current_exe()?)?,
                "paced-client",
                "--addr",
                &format!("{}:80", lab.server_ip),
                "--rate",
                &PACED_RATE.to_string(),
                "--seconds",
                &DURATION_SECS.to_string(),
                "--connections",
                &CONNECTIONS.to_string(),
            ],
        )?;
        let v: serde_json::Value = serde_json::from_str(out.trim()).context("paced client")?;
        Ok(PacedRun {
            requests: v["requests"].as_u64().unwrap_or(0),
            p50_us: v["p50_us"].as_u64().unwrap_or(0),
            p99_us: v["p99_us"].as_u64().unwrap_or(0),
            nginx_cpu: cpu_seconds(nginx)? - cpu_before,
        })
    };

    let before = wrk("without the agent")?;
    let paced_before = paced("without the agent")?;
    let bin = path(seqshield)?;
    // Where the cost of a program that captures nothing comes from: the hook with an
    // empty program, then the agent with no port of this traffic (its programs still
    // parse every packet's headers).
    let empty = {
        let out = dir.join("baseline.out");
        let attached = lab.spawn_server_side(
            &[path(&baseline)?, &lab.server_if],
            Some((&out, &dir.join("baseline.err"))),
        )?;
        wait_until("the empty program", || {
            std::fs::read_to_string(&out).is_ok_and(|s| s.contains("attached"))
        })?;
        let run = wrk("an empty program attached");
        lab.stop(attached);
        run?
    };
    let no_port = {
        let attached = lab.spawn_server_side(
            &[bin, "run", "--config", path(&other_port_config)?],
            Some((
                &dir.join("alerts-other-port.jsonl"),
                &dir.join("agent-other-port.log"),
            )),
        )?;
        wait_until("the agent", || {
            lab.ok_in(&lab.server_ns, &[bin, "report", "--admin", ADMIN, "--json"])
        })?;
        let run = wrk("the agent, no port of this traffic");
        lab.stop(attached);
        run?
    };
    let agent = lab.spawn_server_side(
        &[bin, "run", "--config", path(&config)?],
        Some((&dir.join("alerts.jsonl"), &dir.join("agent.log"))),
    )?;
    wait_until("the agent", || {
        lab.ok_in(&lab.server_ns, &[bin, "report", "--admin", ADMIN, "--json"])
    })?;
    let report_before = agent_report(&lab, bin)?;
    let cpu_before = cpu_seconds(agent)?;
    let stats_were = BpfStats::enable()?;
    let kernel_before = kernel_program_stats()?;
    let with = wrk("with the agent")?;
    let kernel = kernel_program_stats()?;
    let cpu = cpu_seconds(agent)? - cpu_before;
    std::thread::sleep(Duration::from_millis(1500)); // let the agent drain its ring
    let report_after = agent_report(&lab, bin)?;
    // Fixed rate with the agent: latency, and what the agent and the kernel program
    // spend per request next to what nginx spends.
    let paced_cpu_before = cpu_seconds(agent)?;
    let paced_kernel_before = kernel_program_stats()?;
    let paced_with = paced("with the agent")?;
    let paced_kernel = kernel_program_stats()?;
    let paced_agent_cpu = cpu_seconds(agent)? - paced_cpu_before;
    drop(stats_were);
    lab.stop(agent);
    let after = wrk("without the agent, again")?;
    let paced_after = paced("without the agent, again")?;
    lab.cleanup();

    let seen = report_after["stats"]["requests"].as_u64().unwrap_or(0)
        - report_before["stats"]["requests"].as_u64().unwrap_or(0);
    let lost = report_after["stats"]["lost_events"].as_u64().unwrap_or(0);
    let baseline = (before.per_sec + after.per_sec) / 2.0;
    let ratio = with.per_sec / baseline;
    let cpu_share = cpu / f64::from(DURATION_SECS);
    let summary = format!(
        "without agent: {:.0} req/s, {:.0} req/s (mean {baseline:.0})\n\
         an empty program attached: {:.0} req/s = {:.1}% of without\n\
         the agent, no port of this traffic: {:.0} req/s = {:.1}% of without\n\
         with agent:    {:.0} req/s = {:.1}% of without\n\
         agent saw {seen} of {} requests sent while attached; lost events: {lost}\n\
         agent CPU: {:.1}% of one core at {:.0} req/s = {:.1}% of a core per 10k req/s\n",
        before.per_sec,
        after.per_sec,
        empty.per_sec,
        empty.per_sec / baseline * 100.0,
        no_port.per_sec,
        no_port.per_sec / baseline * 100.0,
        with.per_sec,
        ratio * 100.0,
        with.requests,
        cpu_share * 100.0,
        with.per_sec,
        cpu_share * 100.0 / (with.per_sec / 10_000.0),
    );
    let mut summary = summary;
    for (name, (ns, runs)) in &kernel {
        let (ns0, runs0) = kernel_before.get(name).copied().unwrap_or_default();
        let (ns, runs) = (ns - ns0, runs - runs0);
        if runs > 0 {
            summary.push_str(&format!(
                "kernel program {name}: {} packets, {:.0} ns per packet (bpf_stats)\n",
                runs,
                ns as f64 / runs as f64
            ));
        }
    }
    let kernel_ns: u64 = paced_kernel
        .iter()
        .map(|(name, (ns, _))| ns - paced_kernel_before.get(name).map_or(0, |v| v.0))
        .sum();
    let per_request_us = |seconds: f64, requests: u64| seconds * 1e6 / requests.max(1) as f64;
    let nginx_us = (per_request_us(paced_before.nginx_cpu, paced_before.requests)
        + per_request_us(paced_after.nginx_cpu, paced_after.requests))
        / 2.0;
    let agent_us = per_request_us(paced_agent_cpu, paced_with.requests);
    let kernel_us = kernel_ns as f64 / 1e3 / paced_with.requests.max(1) as f64;
    let p50_base = (paced_before.p50_us + paced_after.p50_us) as f64 / 2.0;
    let p99_base = (paced_before.p99_us + paced_after.p99_us) as f64 / 2.0;
    summary.push_str(&format!(
        "\nfixed rate, {PACED_RATE} requests/s ({} / {} / {} requests done):\n\
         latency without the agent p50 {} / {} µs, p99 {} / {} µs; with it p50 {} µs \
         ({:+.1}%), p99 {} µs ({:+.1}%)\n\
         CPU per request: nginx {nginx_us:.2} µs; agent {agent_us:.2} µs + kernel programs \
         {kernel_us:.2} µs = {:.1}% of nginx's\n",
        paced_before.requests,
        paced_with.requests,
        paced_after.requests,
        paced_before.p50_us,
        paced_after.p50_us,
        paced_before.p99_us,
        paced_after.p99_us,
        paced_with.p50_us,
        (paced_with.p50_us as f64 / p50_base - 1.0) * 100.0,
        paced_with.p99_us,
        (paced_with.p99_us as f64 / p99_base - 1.0) * 100.0,
        (agent_us + kernel_us) / nginx_us * 100.0,
    ));
    println!("\n== bench-live ==\n{summary}");
    std::fs::write(dir.join("result.txt"), &summary)?;
    Ok(())
}

/// `kernel.bpf_stats_enabled` on for the measured runs, put back as it was when this
/// is dropped (also when a run fails).
struct BpfStats(String);

impl BpfStats {
    const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

    fn enable() -> Result<Self> {
        let was = std::fs::read_to_string(Self::SYSCTL)?.trim().to_string();
        std::fs::write(Self::SYSCTL, "1")?;
        Ok(Self(was))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        std::fs::write(Self::SYSCTL, &self.0).ok();
    }
}

/// Run time (ns) and run count of each loaded seqshield kernel program, by name.
fn kernel_program_stats() -> Result<std::collections::BTreeMap<String, (u64, u64)>> {
    let out = std::process::Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .context("bpftool prog show")?;
    let progs: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let mut stats = std::collections::BTreeMap::new();
    for p in progs.as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or_default();
        if name.starts_with("seqshield") {
            let entry = stats.entry(name.to_string()).or_insert((0, 0));
            entry.0 += p["run_time_ns"].as_u64().unwrap_or(0);
            entry.1 += p["run_cnt"].as_u64().unwrap_or(0);
        }
    }
    Ok(stats)
}

fn agent_report(lab: &Lab, bin: &str) -> Result<serde_json::Value> {
    let out = lab.output_in(&lab.server_ns, &[bin, "report", "--admin", ADMIN, "--json"])?;
    serde_json::from_str(&out).context("agent report")
}

/// User + system CPU time of a process, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start after ") ".
    let rest = stat.rsplit_once(") ").context("/proc/pid/stat format")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // USER_HZ: 100 on Linux, a fixed part of the ABI.
    Ok(ticks / 100.0)
}

fn parse_wrk(out: &str) -> Result<WrkRun> {
    let per_sec = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk output:\n{out}"))?;
    let requests = out
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no request count in wrk output:\n{out}"))?;
    if out.contains("Non-2xx") {
        bail!("the server answered errors during the benchmark:\n{out}");
    }
    Ok(WrkRun { requests, per_sec })
}

fn nginx_config(dir: &Path, ip: &str) -> String {
    let tmp = dir.join("nginx-tmp");
    format!(
        r#"# Written by `cargo xtask bench-live`.
worker_processes 1;
daemon off;
pid {pid};
error_log {err} warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp};
    keepalive_requests 1000000;
    server {{
        listen {ip}:80;
        location / {{ return 200 "{{\"ok\":true}}\n"; }}
    }}
}}
"#,
        pid = dir.join("nginx.pid").display(),
        err = dir.join("nginx-error.log").display(),
        tmp = tmp.display(),
    )
}
