//! `cargo xtask demo`: seqshield live, end to end, in two throwaway network namespaces.
//! A real HTTP server (the bank API of tests/fixtures/bank_server.py) runs in one, curl
//! clients in the other, the agent captures in the kernel on the server's interface.
//! Legit users walk login → accounts → balance → transfer; attackers skip to the
//! transfer. Prints the top sequences and the alerts, then removes everything it made,
//! also on Ctrl-C.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const SERVER_NS: &str = "sqdemo-srv";
const CLIENT_NS: &str = "sqdemo-cli";
const SERVER_IF: &str = "sqdemo-s0";
const CLIENT_IF: &str = "sqdemo-c0";
const SERVER_IP: &str = "10.77.0.1";
const CLIENT_IP: &str = "10.77.0.2";
const ADMIN: &str = "127.0.0.1:9464";
const LEGIT_USERS: u32 = 24;
const ATTACKERS: u32 = 4;

/// Everything the demo started, torn down on drop and on Ctrl-C.
#[derive(Default)]
struct Demo {
    children: Vec<Child>,
}

impl Demo {
    fn cleanup(&mut self) {
        for child in &mut self.children {
            // SIGTERM first: the agent detaches and exits 0.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for child in &mut self.children {
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
        remove_namespaces();
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.cleanup();
    }
}

fn remove_namespaces() {
    for ns in [SERVER_NS, CLIENT_NS] {
        let _ = Command::new("ip")
            .args(["netns", "del", ns])
            .stderr(Stdio::null())
            .status();
    }
}

pub fn run(root: &Path, seqshield: &Path) -> Result<()> {
    let dir = root.join("target/demo");
    std::fs::create_dir_all(&dir)?;
    remove_namespaces(); // Leftovers of an interrupted run.
    let demo = Arc::new(Mutex::new(Demo::default()));
    let on_ctrl_c = demo.clone();
    ctrlc::set_handler(move || {
        eprintln!("\ninterrupted: cleaning up");
        if let Ok(mut d) = on_ctrl_c.lock() {
            d.cleanup();
        }
        std::process::exit(130);
    })
    .context("installing the Ctrl-C handler")?;

    println!("== network: {SERVER_NS} ({SERVER_IP}, {SERVER_IF}) <-> {CLIENT_NS} ({CLIENT_IP}) ==");
    for cmd in [
        format!("ip netns add {SERVER_NS}"),
        format!("ip netns add {CLIENT_NS}"),
        format!("ip link add {SERVER_IF} type veth peer name {CLIENT_IF}"),
        format!("ip link set {SERVER_IF} netns {SERVER_NS}"),
        format!("ip link set {CLIENT_IF} netns {CLIENT_NS}"),
        format!("ip -n {SERVER_NS} addr add {SERVER_IP}/24 dev {SERVER_IF}"),
        format!("ip -n {CLIENT_NS} addr add {CLIENT_IP}/24 dev {CLIENT_IF}"),
        format!("ip -n {SERVER_NS} link set {SERVER_IF} up"),
        format!("ip -n {CLIENT_NS} link set {CLIENT_IF} up"),
        format!("ip -n {SERVER_NS} link set lo up"),
    ] {
        sh(&cmd)?;
    }

    let config = dir.join("live-config.toml");
    std::fs::write(&config, config_text(&dir.join("state")))?;
    let server = root.join("tests/fixtures/bank_server.py");
    spawn(
        &demo,
        SERVER_NS,
        &["python3", path(&server)?, SERVER_IP, "80"],
        None,
    )?;
    let alerts = dir.join("live-alerts.jsonl");
    let log = dir.join("live-agent.log");
    spawn(
        &demo,
        SERVER_NS,
        &[path(seqshield)?, "run", "--config", path(&config)?],
        Some((&alerts, &log)),
    )?;
    wait_until("the agent's admin API", || {
        in_ns(
            SERVER_NS,
            &[
                path(seqshield).unwrap_or_default(),
                "report",
                "--admin",
                ADMIN,
                "--json",
            ],
        )
    })?;
    wait_until("the bank server", || {
        in_ns(
            CLIENT_NS,
            &[
                "curl",
                "-s",
                "-o",
                "/dev/null",
                &format!("http://{SERVER_IP}/healthz"),
            ],
        )
    })?;
    println!(
        "== agent attached on {SERVER_IF}; {LEGIT_USERS} users and {ATTACKERS} attackers at work =="
    );

    for user in 0..LEGIT_USERS + ATTACKERS {
        drive_session(user)?;
    }
    std::thread::sleep(Duration::from_millis(800));

    println!("\n== seqshield report (from the running agent) ==");
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            SERVER_NS,
            path(seqshield)?,
            "report",
            "--admin",
            ADMIN,
        ])
        .output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));

    let text = std::fs::read_to_string(&alerts).unwrap_or_default();
    println!(
        "\n== {} alerts (JSON lines; all in {}) ==",
        text.lines().count(),
        alerts.display()
    );
    for line in text.lines().take(4) {
        println!("{line}");
    }
    println!("\n== cleaning up (agent log: {}) ==", log.display());
    demo.lock()
        .map_err(|_| anyhow::anyhow!("demo state poisoned"))?
        .cleanup();
    Ok(())
}

/// One user's session. Legit users walk the whole journey, attackers skip to the
/// transfer; sessions use cookies, headers or JWTs, keep-alive or one connection per
/// request.
fn drive_session(user: u32) -> Result<()> {
    let attacker = user >= LEGIT_USERS;
    let auth: Vec<String> = match user % 3 {
        0 => vec!["-b".into(), format!("sid=s{user:04}")],
        1 => vec!["-H".into(), format!("X-Session-Id: h{user:04}")],
        _ => vec![
            "-H".into(),
            format!("Authorization: Bearer {}", jwt(&format!("user{user}"))),
        ],
    };
    let base = format!("http://{SERVER_IP}/api/v1");
    let mut steps: Vec<(&str, String)> = vec![("POST", format!("{base}/login"))];
    if !attacker {
        steps.push(("GET", format!("{base}/users/{user}/accounts")));
        steps.push(("GET", format!("{base}/accounts/{}/balance", 1000 + user)));
    }
    steps.push(("POST", format!("{base}/transferFunds")));
    if !attacker && user.is_multiple_of(4) {
        // Some users check the balance again and transfer once more.
        steps.push(("GET", format!("{base}/accounts/{}/balance", 1000 + user)));
        steps.push(("POST", format!("{base}/transferFunds")));
    }
    let one = |(method, url): &(&str, String)| -> Vec<String> {
        let mut a = vec![
            "-s".into(),
            "-o".into(),
            "/dev/null".into(),
            "-H".into(),
            "Host: bank.test".into(),
        ];
        a.extend(auth.iter().cloned());
        if *method == "POST" {
            a.extend(["-d".into(), r#"{"amount":10}"#.into()]);
        }
        a.push(url.clone());
        a
    };
    if user.is_multiple_of(2) {
        let mut args: Vec<String> = Vec::new();
        for (i, step) in steps.iter().enumerate() {
            if i > 0 {
                args.push("--next".into());
            }
            args.extend(one(step));
        }
        curl(&args)
    } else {
        steps.iter().try_for_each(|s| curl(&one(s)))
    }
}

fn curl(args: &[String]) -> Result<()> {
    let status = Command::new("ip")
        .args(["netns", "exec", CLIENT_NS, "curl", "--max-time", "5"])
        .args(args)
        .status()?;
    if !status.success() {
        bail!("curl {args:?} failed");
    }
    Ok(())
}

/// An unsigned JWT whose `sub` is `sub` (the agent reads claims, it does not verify).
fn jwt(sub: &str) -> String {
    let b64 = |s: &str| base64url(s.as_bytes());
    format!(
        "{}.{}.c2ln",
        b64(r#"{"alg":"HS256"}"#),
        b64(&format!(r#"{{"sub":"{sub}"}}"#))
    )
}

fn base64url(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn config_text(state: &Path) -> String {
    format!(
        r#"# Written by `cargo xtask demo`.
[capture]
interface = "{SERVER_IF}"
ports = [80]

[[endpoint]]
host = "bank.test"
method = "POST"
path = "/api/v1/login"
[[endpoint]]
host = "bank.test"
method = "GET"
path = "/api/v1/users/{{user_id}}/accounts"
[[endpoint]]
host = "bank.test"
method = "GET"
path = "/api/v1/accounts/{{account_id}}/balance"
[[endpoint]]
host = "bank.test"
method = "POST"
path = "/api/v1/transferFunds"

[sequence]
min_support = 3

[[rule]]
title = "transfer needs a balance check"
kind = "allow"
action = "block"
sequence = ["GET bank.test/api/v1/accounts/{{account_id}}/balance", "POST bank.test/api/v1/transferFunds"]

[admin]
listen = "{ADMIN}"

[state]
dir = {state:?}
"#
    )
}

fn spawn(
    demo: &Arc<Mutex<Demo>>,
    ns: &str,
    args: &[&str],
    output: Option<(&Path, &Path)>,
) -> Result<()> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).args(args);
    match output {
        Some((stdout, stderr)) => {
            cmd.stdout(std::fs::File::create(stdout)?)
                .stderr(std::fs::File::create(stderr)?);
        }
        None => {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
    }
    let child = cmd.spawn().with_context(|| format!("starting {args:?}"))?;
    demo.lock()
        .map_err(|_| anyhow::anyhow!("demo state poisoned"))?
        .children
        .push(child);
    Ok(())
}

fn in_ns(ns: &str, args: &[&str]) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn wait_until(what: &str, mut ready: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ready() {
        if Instant::now() > deadline {
            bail!("{what} did not come up in 15 s (see target/demo/live-agent.log)");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn sh(cmd: &str) -> Result<()> {
    let out = Command::new("sh").args(["-c", cmd]).output()?;
    if !out.status.success() {
        bail!("{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn path(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}
