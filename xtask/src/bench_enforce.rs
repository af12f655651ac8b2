//! `cargo xtask bench-enforce`: how well enforcement bites, with and without holding
//! guarded requests (`[enforce] hold`), side by side in one run. For server answer
//! delays of 0, 1 and 10 ms, attackers (one keep-alive connection each: login, then the
//! transfer that skips the balance check) run against the bank server, which logs every
//! request its application read. Per mode and delay: responses that reached the
//! attacker, violating transfers that reached the application (from the server's log),
//! and the verdict latency (agent log lines: from the kernel timestamp of the violating
//! or held packet to the kernel map update, the release or the discard). Then legit
//! sessions (login, balance, transfer) measure what an allowed guarded request pays:
//! its round trip with no agent, with the agent enforcing, and with holds.

use std::path::Path;

use anyhow::{Context, Result};

use crate::lab::{Lab, bank_agent_config, path, wait_until};

const ADMIN: &str = "127.0.0.1:9466";
const ATTACKERS: usize = 60;
const LEGIT: usize = 100;
const DELAYS_MS: [u32; 3] = [0, 1, 10];

/// How the agent runs in a measurement.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    NoAgent,
    Enforce,
    Hold,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::NoAgent => "no agent",
            Mode::Enforce => "enforce",
            Mode::Hold => "enforce + hold",
        }
    }
}

struct Bench<'a> {
    root: &'a Path,
    dir: std::path::PathBuf,
    lab: &'a Lab,
    bin: &'a str,
}

pub fn run(root: &Path, seqshield: &Path) -> Result<()> {
    let dir = root.join("target/bench-enforce");
    std::fs::create_dir_all(&dir)?;
    let lab = Lab::create("sqenf", 79)?;
    let bench = Bench {
        root,
        dir: dir.clone(),
        lab: &lab,
        bin: path(seqshield)?,
    };
    let mut summary = String::from(
        "| mode | server delay | responses leaked | reached the application | verdict p50 | p99 | verdicts |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: |\n",
    );
    let mut verdicts = [Vec::new(), Vec::new()];
    for (slot, mode) in [Mode::Enforce, Mode::Hold].into_iter().enumerate() {
        for delay in DELAYS_MS {
            let run = bench.attack(mode, delay)?;
            let mut latencies = run.latencies_us.clone();
            latencies.sort_unstable();
            let line = format!(
                "| {} | {delay} ms | {} / {ATTACKERS} | {} / {ATTACKERS} | {} µs | {} µs | {} |\n",
                mode.name(),
                run.leaked,
                run.reached,
                percentile(&latencies, 50),
                percentile(&latencies, 99),
                latencies.len(),
            );
            print!("{line}");
            summary.push_str(&line);
            verdicts[slot].extend(latencies);
        }
    }
    for (slot, mode) in [Mode::Enforce, Mode::Hold].into_iter().enumerate() {
        verdicts[slot].sort_unstable();
        summary.push_str(&format!(
            "\n{}: verdict latency over all delays p50 {} µs, p99 {} µs ({} verdicts)",
            mode.name(),
            percentile(&verdicts[slot], 50),
            percentile(&verdicts[slot], 99),
            verdicts[slot].len()
        ));
    }
    summary.push_str(&format!(
        "\n\n{LEGIT} legit sessions per mode (server delay 0; client-side round trip, µs):\n\n\
         | mode | transfer (held) p50 | p99 | balance (never held) p50 | p99 |\n\
         | --- | ---: | ---: | ---: | ---: |\n"
    ));
    let mut baseline: Option<[u64; 4]> = None;
    let mut releases = Vec::new();
    for mode in [Mode::NoAgent, Mode::Enforce, Mode::Hold] {
        let (mut transfer, mut balance, released) = bench.legit(mode)?;
        releases.extend(released);
        transfer.sort_unstable();
        balance.sort_unstable();
        let row = [
            percentile(&transfer, 50),
            percentile(&transfer, 99),
            percentile(&balance, 50),
            percentile(&balance, 99),
        ];
        let added = |i: usize| match baseline {
            Some(base) => format!(" ({:+})", row[i] as i64 - base[i] as i64),
            None => String::new(),
        };
        let line = format!(
            "| {} | {}{} | {}{} | {}{} | {}{} |\n",
            mode.name(),
            row[0],
            added(0),
            row[1],
            added(1),
            row[2],
            added(2),
            row[3],
            added(3)
        );
        print!("{line}");
        summary.push_str(&line);
        baseline.get_or_insert(row);
    }
    releases.sort_unstable();
    summary.push_str(&format!(
        "\nrelease latency (held packet to its copy back in the stack, agent clock): p50 {} µs, p99 {} µs ({} releases)\n",
        percentile(&releases, 50),
        percentile(&releases, 99),
        releases.len()
    ));
    lab.cleanup();
    println!("\n== bench-enforce ==\n{summary}");
    std::fs::write(dir.join("result.txt"), summary).context("writing the result")?;
    Ok(())
}

struct AttackRun {
    leaked: usize,
    reached: usize,
    latencies_us: Vec<u64>,
}

/// A running server (and agent) for one measurement.
struct Running {
    pids: Vec<u32>,
    server_log: std::path::PathBuf,
    agent_log: std::path::PathBuf,
}

impl Bench<'_> {
    fn start(&self, mode: Mode, delay: u32, tag: &str) -> Result<Running> {
        let lab = self.lab;
        let server_log = self.dir.join(format!("server-{tag}.log"));
        let _ = std::fs::remove_file(&server_log);
        let server = self.root.join("tests/fixtures/bank_server.py");
        let delay_env = format!("BANK_DELAY_MS={delay}");
        let log_env = format!("BANK_LOG={}", path(&server_log)?);
        let mut pids = vec![lab.spawn_server_side(
            &[
                "env",
                &delay_env,
                &log_env,
                "python3",
                path(&server)?,
                &lab.server_ip,
                "80",
            ],
            None,
        )?];
        let agent_log = self.dir.join(format!("agent-{tag}.log"));
        if mode != Mode::NoAgent {
            let hold = if mode == Mode::Hold {
                "hold = true\n"
            } else {
                ""
            };
            let config = self.dir.join(format!("agent-{tag}.toml"));
            let text = bank_agent_config(
                self.root,
                &lab.server_if,
                ADMIN,
                &self.dir.join("state"),
                &format!("[enforce]\nmode = \"enforce\"\n{hold}"),
            )?;
            std::fs::write(&config, text)?;
            pids.push(lab.spawn_server_side(
                &[
                    "env",
                    "RUST_LOG=info,seqshield::daemon=debug",
                    self.bin,
                    "run",
                    "--config",
                    path(&config)?,
                ],
                Some((&self.dir.join(format!("alerts-{tag}.jsonl")), &agent_log)),
            )?);
            wait_until("the agent", || {
                lab.ok_in(
                    &lab.server_ns,
                    &[self.bin, "report", "--admin", ADMIN, "--json"],
                )
            })?;
        }
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
        Ok(Running {
            pids,
            server_log,
            agent_log,
        })
    }

    fn stop(&self, running: &Running) {
        std::thread::sleep(std::time::Duration::from_millis(300));
        for &pid in running.pids.iter().rev() {
            self.lab.stop(pid);
        }
    }

    /// One session from the client namespace; (outcome, µs) per request.
    fn session(&self, who: &str, steps: &[&str]) -> Result<Vec<(String, u64)>> {
        let client = self.root.join("tests/fixtures/session_client.py");
        let cookie = format!("Cookie: sid={who}");
        let mut args = vec![
            "env",
            "TIMING=1",
            "python3",
            path(&client)?,
            &self.lab.server_ip,
            "80",
            &cookie,
        ];
        args.extend_from_slice(steps);
        let out = self.lab.output_in(&self.lab.client_ns, &args)?;
        Ok(out
            .lines()
            .map(|l| {
                let (outcome, ms) = l.split_once(' ').unwrap_or((l, "0"));
                let us = (ms.parse::<f64>().unwrap_or(0.0) * 1000.0) as u64;
                (outcome.to_string(), us)
            })
            .collect())
    }

    fn attack(&self, mode: Mode, delay: u32) -> Result<AttackRun> {
        let tag = format!(
            "{}-{delay}ms",
            if mode == Mode::Hold { "hold" } else { "cut" }
        );
        let running = self.start(mode, delay, &tag)?;
        let mut leaked = 0;
        for i in 0..ATTACKERS {
            let who = format!("attacker-{tag}-{i}");
            let transfer = format!("POST:/api/v1/transferFunds?by={who}");
            let out = self.session(&who, &["POST:/api/v1/login", &transfer])?;
            if out.get(1).is_some_and(|(o, _)| o == "200") {
                leaked += 1;
            }
        }
        self.stop(&running);
        let server_log = std::fs::read_to_string(&running.server_log).unwrap_or_default();
        let reached = server_log
            .lines()
            .filter(|l| l.contains(&format!("by=attacker-{tag}-")))
            .count();
        let events: &[&str] = if mode == Mode::Hold {
            &["hold_discarded", "hold_released"]
        } else {
            &["\"enforced\"", "event=enforced"]
        };
        let agent_log = std::fs::read_to_string(&running.agent_log)?;
        Ok(AttackRun {
            leaked,
            reached,
            latencies_us: latencies_us(&agent_log, events),
        })
    }

    /// Round trips of legit sessions' transfers (guarded: held in hold mode) and
    /// balance checks (never held), and the agent's release latencies, in µs.
    fn legit(&self, mode: Mode) -> Result<(Vec<u64>, Vec<u64>, Vec<u64>)> {
        let tag = format!("legit-{}", mode.name().replace([' ', '+'], ""));
        let running = self.start(mode, 0, &tag)?;
        let (mut transfer, mut balance) = (Vec::new(), Vec::new());
        for i in 0..LEGIT {
            let who = format!("legit-{tag}-{i}");
            let out = self.session(
                &who,
                &[
                    "POST:/api/v1/login",
                    "GET:/api/v1/accounts/1/balance",
                    "POST:/api/v1/transferFunds",
                ],
            )?;
            if let [_, (b, b_us), (t, t_us)] = out.as_slice()
                && b == "200"
                && t == "200"
            {
                balance.push(*b_us);
                transfer.push(*t_us);
            }
        }
        self.stop(&running);
        let agent_log = std::fs::read_to_string(&running.agent_log).unwrap_or_default();
        Ok((
            transfer,
            balance,
            latencies_us(&agent_log, &["hold_released"]),
        ))
    }
}

/// `latency_us` of the agent's log lines for `events` (JSON: `"latency_us":N`; pretty:
/// `latency_us=N`).
fn latencies_us(log: &str, events: &[&str]) -> Vec<u64> {
    log.lines()
        .filter(|l| events.iter().any(|e| l.contains(e)))
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
