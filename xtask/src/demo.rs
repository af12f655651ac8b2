//! `cargo xtask demo`: seqshield live, end to end, in two throwaway network namespaces.
//! A real HTTP server (the bank API of tests/fixtures/bank_server.py) runs in one, curl
//! clients in the other, the agent captures in the kernel on the server's interface.
//! Legit users walk login → accounts → balance → transfer; attackers skip to the
//! transfer. Prints the top sequences and the alerts, then removes everything it made,
//! also on Ctrl-C.

use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use anyhow::{Result, bail};

use crate::lab::{Lab, bank_agent_config, path, wait_until};

/// Where the console is opened from this host: forwarded to the agent's admin socket
/// (the agent's own loopback is inside its namespace).
const CONSOLE: &str = "127.0.0.1:9464";
const LEGIT_USERS: u32 = 24;
const ATTACKERS: u32 = 4;

pub fn run(root: &Path, seqshield: &Path) -> Result<()> {
    let dir = root.join("target/demo");
    std::fs::create_dir_all(&dir)?;
    let lab = Lab::create("sqdemo", 77)?;
    // Every demo starts from nothing learned (the agent would resume from its snapshot).
    let _ = std::fs::remove_file(dir.join("state/snapshot.bin"));
    let config = dir.join("live-config.toml");
    // The admin API on a unix socket: a file, reachable from this host's namespace too.
    let socket = dir.join("admin.sock");
    let _ = std::fs::remove_file(&socket);
    let admin = format!("unix:{}", socket.display());
    let text = bank_agent_config(
        root,
        &lab.server_if,
        &admin,
        &dir.join("state"),
        "[sequence]\nmin_support = 3\n",
    )?;
    std::fs::write(&config, text)?;
    let server = root.join("tests/fixtures/bank_server.py");
    lab.spawn_server_side(&["python3", path(&server)?, &lab.server_ip, "80"], None)?;
    let alerts = dir.join("live-alerts.jsonl");
    let log = dir.join("live-agent.log");
    let bin = path(seqshield)?;
    lab.spawn_server_side(
        &[bin, "run", "--config", path(&config)?],
        Some((&alerts, &log)),
    )?;
    wait_until(
        "the agent's admin API (see target/demo/live-agent.log)",
        || {
            lab.ok_in(
                &lab.server_ns,
                &[bin, "report", "--admin", &admin, "--json"],
            )
        },
    )?;
    wait_until("the bank server", || {
        lab.ok_in(
            &lab.client_ns,
            &[
                "curl",
                "-s",
                "-o",
                "/dev/null",
                &format!("http://{}/healthz", lab.server_ip),
            ],
        )
    })?;
    let console = forward_console(&socket);
    println!(
        "== agent attached on {}; {LEGIT_USERS} users and {ATTACKERS} attackers at work ==",
        lab.server_if
    );
    match &console {
        Ok(()) => println!("== the console: http://{CONSOLE}/ (while the demo runs) =="),
        Err(e) => println!("== the console is not forwarded to this host ({e}) =="),
    }

    for user in 0..LEGIT_USERS + ATTACKERS {
        drive_session(&lab, user)?;
    }
    std::thread::sleep(Duration::from_millis(800));

    println!("\n== seqshield report (from the running agent) ==");
    print!(
        "{}",
        lab.output_in(&lab.server_ns, &[bin, "report", "--admin", &admin])?
    );
    let text = std::fs::read_to_string(&alerts).unwrap_or_default();
    println!(
        "\n== {} alerts (JSON lines; all in {}) ==",
        text.lines().count(),
        alerts.display()
    );
    for line in text.lines().take(4) {
        println!("{line}");
    }
    if console.is_ok() && std::io::stdin().is_terminal() {
        println!("\n== the console stays at http://{CONSOLE}/ — press Enter to end the demo ==");
        let _ = std::io::stdin().read_line(&mut String::new());
    }
    println!("\n== cleaning up (agent log: {}) ==", log.display());
    lab.cleanup();
    Ok(())
}

/// Forwards TCP connections to [`CONSOLE`] on this host to the agent's admin socket,
/// for as long as the demo runs (a browser cannot open a unix socket, nor reach the
/// agent's namespace).
fn forward_console(socket: &Path) -> std::io::Result<()> {
    let listener = std::net::TcpListener::bind(CONSOLE)?;
    let socket = socket.to_path_buf();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(agent) = std::os::unix::net::UnixStream::connect(&socket) else {
                continue;
            };
            let (Ok(mut client_in), Ok(mut agent_in)) = (client.try_clone(), agent.try_clone())
            else {
                continue;
            };
            let (mut client_out, mut agent_out) = (client, agent);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut client_in, &mut agent_out);
                let _ = agent_out.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut agent_in, &mut client_out);
                let _ = client_out.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    Ok(())
}

/// One user's session. Legit users walk the whole journey, attackers skip to the
/// transfer; sessions use cookies, headers or JWTs, keep-alive or one connection per
/// request.
fn drive_session(lab: &Lab, user: u32) -> Result<()> {
    let attacker = user >= LEGIT_USERS;
    let auth: Vec<String> = match user % 3 {
        0 => vec!["-b".into(), format!("sid=s{user:04}")],
        1 => vec!["-H".into(), format!("X-Session-Id: h{user:04}")],
        _ => vec![
            "-H".into(),
            format!("Authorization: Bearer {}", jwt(&format!("user{user}"))),
        ],
    };
    let base = format!("http://{}/api/v1", lab.server_ip);
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
        curl(lab, &args)
    } else {
        steps.iter().try_for_each(|s| curl(lab, &one(s)))
    }
}

fn curl(lab: &Lab, args: &[String]) -> Result<()> {
    let mut full = vec!["curl", "--max-time", "5"];
    full.extend(args.iter().map(String::as_str));
    if !lab.ok_in(&lab.client_ns, &full) {
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
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}
