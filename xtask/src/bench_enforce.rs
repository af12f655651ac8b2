//! `cargo xtask bench-enforce`: how well enforcement bites. For server answer delays of 0,
//! 1 and 10 ms, attackers (one keep-alive connection each: login, then the transfer that
//! skips the balance check) run against the bank server with the agent in enforce mode.
//! Block efficacy is the share of violating requests whose response still reached the
//! client; verdict latency is the time from the violating packet (kernel timestamp) to
//! the kernel map update (agent timestamp), from the agent's `enforced` log lines.

use std::path::Path;

use anyhow::{Context, Result};

use crate::lab::{Lab, bank_agent_config, path, wait_until};

const ADMIN: &str = "127.0.0.1:9466";
const ATTACKERS: usize = 60;
const DELAYS_MS: [u32; 3] = [0, 1, 10];

pub fn run(root: &Path, seqshield: &Path) -> Result<()> {
    let dir = root.join("target/bench-enforce");
    std::fs::create_dir_all(&dir)?;
    let lab = Lab::create("sqenf", 79)?;
    let bin = path(seqshield)?;
    let server = root.join("tests/fixtures/bank_server.py");
    let client = root.join("tests/fixtures/session_client.py");
    let mut summary = String::new();
    let mut all_latencies = Vec::new();
    // One agent config for every delay: only the server changes between runs.
    let config = dir.join("agent.toml");
    let text = bank_agent_config(
        root,
        &lab.server_if,
        ADMIN,
        &dir.join("state"),
        "[enforce]\nmode = \"enforce\"\n",
    )?;
    std::fs::write(&config, text)?;
    for delay in DELAYS_MS {
        let delay_env = format!("BANK_DELAY_MS={delay}");
        let srv = lab.spawn_server_side(
            &[
                "env",
                &delay_env,
                "python3",
                path(&server)?,
                &lab.server_ip,
                "80",
            ],
            None,
        )?;
        let log = dir.join(format!("agent-{delay}ms.log"));
        let agent = lab.spawn_server_side(
            &[bin, "run", "--config", path(&config)?],
            Some((&dir.join(format!("alerts-{delay}ms.jsonl")), &log)),
        )?;
        wait_until("the agent", || {
            lab.ok_in(&lab.server_ns, &[bin, "report", "--admin", ADMIN, "--json"])
        })?;
        wait_until("the server", || {
            lab.ok_in(
                &lab.client_ns,
                &[
                    "curl",
                    "-s",
                    "-o",
                    "/dev/null",
                    &format!("http://{}/ready", lab.server_ip),
                ],
            )
        })?;
        let mut leaked = 0;
        for i in 0..ATTACKERS {
            let cookie = format!("Cookie: sid=attacker-{delay}-{i}");
            let out = lab.output_in(
                &lab.client_ns,
                &[
                    "python3",
                    path(&client)?,
                    &lab.server_ip,
                    "80",
                    &cookie,
                    "POST:/api/v1/login",
                    "POST:/api/v1/transferFunds",
                ],
            )?;
            let outcomes: Vec<&str> = out.lines().collect();
            if outcomes.get(1) == Some(&"200") {
                leaked += 1;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        lab.stop(agent);
        lab.stop(srv);
        let mut latencies = latencies_us(&std::fs::read_to_string(&log)?);
        all_latencies.extend(latencies.iter().copied());
        latencies.sort_unstable();
        let line = format!(
            "server delay {delay:>2} ms: {leaked}/{ATTACKERS} responses leaked ({:.1}%); verdict latency p50 {} µs, p99 {} µs ({} verdicts)\n",
            leaked as f64 * 100.0 / ATTACKERS as f64,
            percentile(&latencies, 50),
            percentile(&latencies, 99),
            latencies.len(),
        );
        print!("{line}");
        summary.push_str(&line);
    }
    lab.cleanup();
    all_latencies.sort_unstable();
    let line = format!(
        "all runs: verdict latency p50 {} µs, p99 {} µs\n",
        percentile(&all_latencies, 50),
        percentile(&all_latencies, 99)
    );
    summary.push_str(&line);
    println!("\n== bench-enforce ==\n{summary}");
    std::fs::write(dir.join("result.txt"), summary).context("writing the result")?;
    Ok(())
}

/// `latency_us` of the agent's `enforced` log lines (JSON: `"latency_us":N`; pretty:
/// `latency_us=N`).
fn latencies_us(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("enforced"))
        .filter_map(|l| {
            let rest = l.split("latency_us").nth(1)?;
            let digits = rest.trim_start_matches(['"', ':', '=']);
            digits
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

fn percentile(sorted: &[u64], p: usize) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() * p).div_ceil(100)).clamp(1, sorted.len()) - 1]
}
