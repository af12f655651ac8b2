//! `cargo xtask demo-fleet`: fleet mode live. Two API hosts (two namespace labs with
//! the bank server of tests/fixtures/bank_server.py in each), a client that sends each
//! request of a session to the next host (round robin, a new connection each, as a load
//! balancer without stickiness does), one `redis-server`, and an agent capturing on
//! each host: first each on its own (per-host mode), then sharing sessions through
//! Redis. Prints both modes' alerts and the fleet's merged report, and fails unless the
//! fleet alerts on exactly the attackers where per-host mode also cut legit users.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, bail};

use crate::lab::{Lab, bank_agent_config, path, wait_until};

/// Each host's agent answers here, on its own namespace's loopback.
const ADMIN: &str = "127.0.0.1:9464";
const USERS: u32 = 12;
const ATTACKERS: u32 = 3;

/// What one mode's run left: every host's alerts, and host A's report.
struct ModeRun {
    alerts: Vec<serde_json::Value>,
    report: String,
}

pub fn run(root: &Path, seqshield: &Path) -> Result<()> {
    let dir = root.join("target/demo-fleet");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let hosts = [Lab::create("sqfa", 81)?, Lab::create("sqfb", 82)?];
    let server = root.join("tests/fixtures/bank_server.py");
    for lab in &hosts {
        lab.spawn_server_side(&["python3", path(&server)?, &lab.server_ip, "80"], None)?;
        let health = format!("http://{}/healthz", lab.server_ip);
        wait_until("the bank server", || {
            lab.ok_in(&lab.client_ns, &["curl", "-s", "-o", "/dev/null", &health])
        })?;
    }
    // Redis on a unix socket: reachable from both hosts' namespaces, no port to pick.
    let socket = dir.join("redis.sock");
    hosts[0].spawn_server_side(
        &[
            "redis-server",
            "--port",
            "0",
            "--unixsocket",
            path(&socket)?,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            path(&dir)?,
        ],
        None,
    )?;
    // The socket file appears at bind(), before listen(): ask until it answers.
    wait_until("redis-server", || {
        Command::new("redis-cli")
            .arg("-s")
            .arg(&socket)
            .arg("ping")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"))
    })?;
    let redis = format!("redis+unix://{}", socket.display());

    let alone = run_mode(root, seqshield, &hosts, &dir, "per-host", None)?;
    let fleet = run_mode(root, seqshield, &hosts, &dir, "fleet", Some(&redis))?;
    for lab in &hosts {
        lab.cleanup();
    }

    println!("\n== the fleet's report (host A's agent; host B's shows the same counts) ==");
    print!("{}", fleet.report);
    println!(
        "\n== alerts: {USERS} users and {ATTACKERS} attackers, every request to the next host =="
    );
    println!(
        "per-host mode: {} alerts — each host saw only its share of every session, so every \
         legit transfer looked like one without a balance check",
        alone.alerts.len()
    );
    println!(
        "fleet mode:    {} alerts — the attackers'",
        fleet.alerts.len()
    );
    for alert in fleet.alerts.iter().take(ATTACKERS as usize) {
        println!("{alert}");
    }
    println!("\nagent logs and alerts: {}", dir.display());
    if fleet.alerts.len() != ATTACKERS as usize || alone.alerts.len() <= ATTACKERS as usize {
        bail!(
            "expected {ATTACKERS} alerts in fleet mode and more per host; got {} and {}",
            fleet.alerts.len(),
            alone.alerts.len()
        );
    }
    Ok(())
}

/// Starts an agent on each host (sharing `redis` if given), drives every session, and
/// stops the agents.
fn run_mode(
    root: &Path,
    seqshield: &Path,
    hosts: &[std::sync::Arc<Lab>],
    dir: &Path,
    mode: &str,
    redis: Option<&str>,
) -> Result<ModeRun> {
    println!("\n== {mode} mode: an agent on each host ==");
    let bin = path(seqshield)?;
    let mut agents = Vec::new();
    let mut alert_files: Vec<PathBuf> = Vec::new();
    for (i, lab) in hosts.iter().enumerate() {
        let fleet = redis.map_or_else(String::new, |url| {
            format!("[fleet]\nredis = {url:?}\ntimeout = \"50ms\"\n")
        });
        let config = dir.join(format!("{mode}-{i}.toml"));
        std::fs::write(
            &config,
            bank_agent_config(
                root,
                &lab.server_if,
                ADMIN,
                &dir.join(format!("state-{mode}-{i}")),
                &format!("[sequence]\nmin_support = 2\n{fleet}"),
            )?,
        )?;
        let alerts = dir.join(format!("alerts-{mode}-{i}.jsonl"));
        let log = dir.join(format!("agent-{mode}-{i}.log"));
        agents.push(lab.spawn_server_side(
            &[bin, "run", "--config", path(&config)?],
            Some((&alerts, &log)),
        )?);
        alert_files.push(alerts);
        wait_until("the agent's admin API", || {
            lab.ok_in(&lab.server_ns, &[bin, "report", "--admin", ADMIN, "--json"])
        })?;
    }
    for user in 0..USERS + ATTACKERS {
        drive_session(hosts, mode, user)?;
    }
    // Counts reach the fleet's once a second; requests show in reports within one.
    std::thread::sleep(Duration::from_millis(2500));
    let report = hosts[0].output_in(&hosts[0].server_ns, &[bin, "report", "--admin", ADMIN])?;
    for (lab, pid) in hosts.iter().zip(agents) {
        lab.stop(pid);
    }
    let mut alerts = Vec::new();
    for file in alert_files {
        for line in std::fs::read_to_string(file)?.lines() {
            alerts.push(serde_json::from_str(line)?);
        }
    }
    Ok(ModeRun { alerts, report })
}

/// A user's session, each request to the next host on a connection of its own: legit
/// users log in, list accounts, check the balance and transfer; attackers log in and
/// transfer.
fn drive_session(hosts: &[std::sync::Arc<Lab>], mode: &str, user: u32) -> Result<()> {
    let attacker = user >= USERS;
    let mut steps: Vec<(&str, String)> = vec![("POST", "/api/v1/login".into())];
    if !attacker {
        steps.push(("GET", format!("/api/v1/users/{user}/accounts")));
        steps.push(("GET", format!("/api/v1/accounts/{}/balance", 1000 + user)));
    }
    steps.push(("POST", "/api/v1/transferFunds".into()));
    for (j, (method, target)) in steps.iter().enumerate() {
        let lab = &hosts[(user as usize + j) % hosts.len()];
        let url = format!("http://{}{target}", lab.server_ip);
        let cookie = format!("sid={mode}-{user}");
        let mut args = vec![
            "curl",
            "--max-time",
            "5",
            "-s",
            "-o",
            "/dev/null",
            "-H",
            "Host: bank.test",
            "-b",
            &cookie,
        ];
        if *method == "POST" {
            args.extend(["-d", r#"{"amount":10}"#]);
        }
        args.push(&url);
        if !lab.ok_in(&lab.client_ns, &args) {
            bail!("curl {args:?} failed");
        }
    }
    Ok(())
}
