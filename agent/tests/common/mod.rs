//! Helpers for root end-to-end tests: throwaway network namespaces joined by a veth pair,
//! processes started inside them, all cleaned up by `Drop` guards (also when a test
//! panics).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use seqshield::report::Report;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Whether root e2e tests can run here; says loudly why not when they cannot.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let tools = ["ip", "python3", "curl", "tcpdump", "bpftool"]
        .iter()
        .all(|t| {
            Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .output()
                .is_ok_and(|o| o.status.success())
        });
    if !root || !tools {
        eprintln!(
            "\n*** SKIPPED {test}: needs root and ip, python3, curl, tcpdump, bpftool (run `cargo xtask setup` as root) ***\n"
        );
        return false;
    }
    true
}

static NEXT: AtomicU32 = AtomicU32::new(1);

/// Two namespaces (server, client) joined by a veth pair, with addresses
/// 10.N.0.1 (server) and 10.N.0.2 (client).
pub struct NetPair {
    pub server_ns: String,
    pub client_ns: String,
    /// The server side of the veth pair (inside `server_ns`).
    pub server_if: String,
    /// The client side (inside `client_ns`).
    pub client_if: String,
    pub server_ip: String,
    pub client_ip: String,
    children: Vec<Child>,
}

impl NetPair {
    pub fn new() -> Self {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}{}", std::process::id() % 10_000, n);
        let net = 100 + (std::process::id() % 50) * 2 + n;
        let pair = Self {
            server_ns: format!("sqs-s{tag}"),
            client_ns: format!("sqs-c{tag}"),
            server_if: format!("sqs{tag}s"),
            client_if: format!("sqs{tag}c"),
            server_ip: format!("10.{}.0.1", net % 250),
            client_ip: format!("10.{}.0.2", net % 250),
            children: Vec::new(),
        };
        let client_if = pair.client_if.clone();
        for cmd in [
            format!("ip netns add {}", pair.server_ns),
            format!("ip netns add {}", pair.client_ns),
            format!(
                "ip link add {} type veth peer name {client_if}",
                pair.server_if
            ),
            format!("ip link set {} netns {}", pair.server_if, pair.server_ns),
            format!("ip link set {client_if} netns {}", pair.client_ns),
            format!(
                "ip -n {} addr add {}/24 dev {}",
                pair.server_ns, pair.server_ip, pair.server_if
            ),
            format!(
                "ip -n {} addr add {}/24 dev {client_if}",
                pair.client_ns, pair.client_ip
            ),
            format!("ip -n {} link set {} up", pair.server_ns, pair.server_if),
            format!("ip -n {} link set {client_if} up", pair.client_ns),
            format!("ip -n {} link set lo up", pair.server_ns),
            format!("ip -n {} link set lo up", pair.client_ns),
        ] {
            sh(&cmd);
        }
        pair
    }

    /// Starts a process in the server namespace, killed when the pair is dropped.
    pub fn spawn_server_side(&mut self, args: &[&str], stdout: Option<&Path>) -> u32 {
        let child = spawn_in(&self.server_ns, args, stdout);
        let pid = child.id();
        self.children.push(child);
        pid
    }

    /// Starts the bank API server (tests/fixtures/bank_server.py) on port 80 of the
    /// server side, answering after `delay_ms`, and waits until it answers.
    pub fn start_bank_server(&mut self, delay_ms: u32) {
        self.start_bank_server_with(delay_ms, None);
    }

    /// The bank server, also writing every request its application read to `log`.
    pub fn start_bank_server_with(&mut self, delay_ms: u32, log: Option<&Path>) {
        let (server, ip) = (fixture("bank_server.py"), self.server_ip.clone());
        let delay = format!("BANK_DELAY_MS={delay_ms}");
        let log = format!("BANK_LOG={}", log.map_or("", |p| p.to_str().unwrap()));
        self.spawn_server_side(
            &[
                "env",
                &delay,
                &log,
                "python3",
                server.to_str().unwrap(),
                "::",
                "80",
            ],
            None,
        );
        let url = format!("http://{ip}/ready");
        eventually("the bank server", Duration::from_secs(10), || {
            self.in_client(&["curl", "-s", "-o", "/dev/null", &url])
                .status
                .success()
                .then_some(())
        });
    }

    /// Runs a command in the server namespace to completion.
    pub fn in_server(&self, args: &[&str]) -> Output {
        run_in(&self.server_ns, args)
    }

    /// Runs a command in the client namespace to completion.
    pub fn in_client(&self, args: &[&str]) -> Output {
        run_in(&self.client_ns, args)
    }

    /// Waits for a child started with `spawn_server_side` to exit (after a signal).
    pub fn wait_for(&mut self, pid: u32, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.children.iter_mut().find(|c| c.id() == pid)?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Deleting a namespace deletes its end of the veth pair, and with it the other.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.server_ns])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.client_ns])
            .status();
    }
}

fn spawn_in(ns: &str, args: &[&str], stdout: Option<&Path>) -> Child {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).args(args);
    match stdout {
        Some(path) => cmd.stdout(std::fs::File::create(path).expect("stdout file")),
        None => cmd.stdout(Stdio::null()),
    };
    cmd.stderr(Stdio::piped());
    cmd.spawn()
        .unwrap_or_else(|e| panic!("spawn {args:?} in {ns}: {e}"))
}

fn run_in(ns: &str, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {args:?} in {ns}: {e}"))
}

pub fn sh(cmd: &str) {
    let out = Command::new("sh").args(["-c", cmd]).output().expect("sh");
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sends a signal to a process.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a pid we started.
    unsafe { libc::kill(pid as i32, sig) };
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after `timeout`.
pub fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn seqshield_bin() -> &'static str {
    env!("CARGO_BIN_EXE_seqshield")
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

pub const RULE_ID: &str = "6f1c1f9e-3f43-4a53-9d2c-2a4c1d3e5b7a";
pub const BALANCE: &str = "GET bank.test/api/v1/accounts/{account_id}/balance";
pub const TRANSFER: &str = "POST bank.test/api/v1/transferFunds";

/// The bank API (tests/fixtures/bank-api.toml: endpoints and the "transfer needs a
/// balance check" allow rule, action block), sequences reported from one occurrence,
/// the admin API on `admin_port`, state in `dir`; `extra` is appended (e.g. `[enforce]`).
pub fn bank_config(dir: &Path, admin_port: u16, extra: &str) -> PathBuf {
    let api = std::fs::read_to_string(fixture("bank-api.toml")).expect("bank-api.toml");
    let config = format!(
        "[capture]\nports = [80]\n[sequence]\nmin_support = 1\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\
         [state]\ndir = {:?}\n{api}\n{extra}\n",
        dir.join("state")
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// A running agent inside the pair's server namespace.
pub struct Agent {
    pub pid: u32,
    pub admin: String,
}

pub fn start_agent(pair: &mut NetPair, config: &Path, admin_port: u16, alerts: &Path) -> Agent {
    let pid = pair.spawn_server_side(
        &[
            seqshield_bin(),
            "run",
            "--config",
            config.to_str().unwrap(),
            "--iface",
            &pair.server_if.clone(),
        ],
        Some(alerts),
    );
    let agent = Agent {
        pid,
        admin: format!("127.0.0.1:{admin_port}"),
    };
    // Ready once the report answers (SPEC §9).
    eventually("the agent's admin API", Duration::from_secs(15), || {
        live_report(pair, &agent)
    });
    agent
}

pub fn live_report(pair: &NetPair, agent: &Agent) -> Option<Report> {
    let out = pair.in_server(&[seqshield_bin(), "report", "--admin", &agent.admin, "--json"]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).expect("report JSON"))
}

/// One keep-alive connection from the client namespace to `host`:80 with one extra
/// header line (tests/fixtures/session_client.py, `env` settings before it); the
/// outcome of each request (status, reset, closed or timeout) and the milliseconds it
/// took.
pub fn session_client(
    pair: &NetPair,
    env: &[&str],
    host: &str,
    header: &str,
    steps: &[&str],
) -> Vec<(String, f64)> {
    let client = fixture("session_client.py");
    let mut args = vec!["env", "TIMING=1"];
    args.extend_from_slice(env);
    args.extend(["python3", client.to_str().unwrap(), host, "80", header]);
    args.extend_from_slice(steps);
    let out = pair.in_client(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (outcome, ms) = l.split_once(' ').unwrap_or((l, "0"));
            (outcome.to_string(), ms.parse().unwrap_or(0.0))
        })
        .collect()
}
