//! The console at scale, for `cargo xtask bench-console`: an agent state holding
//! OPERATIONS discovered operations and about a hundred thousand tracked sequences (a
//! replayed synthetic capture: sessions of ten requests to random operations), its admin
//! API on loopback, and the time of each API call the console makes and of loading the
//! page in headless Chromium (DOM built).
//! Usage: console_load [OPERATIONS] (10 000 by default)

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use seqshield::admin::{Access, AgentState};
use seqshield::config::Config;
use seqshield::pipeline::Pipeline;
use seqshield_tests::bank::{self, Ident, MS, T0};
use seqshield_tests::capture::{Capture, Link};

const SESSIONS: u64 = 20_000;
const REQUESTS_PER_SESSION: u64 = 10;

/// A path discovery keeps as its own operation (letters, no numbers to normalise).
fn path(op: u64) -> String {
    let mut name = String::new();
    let mut n = op;
    loop {
        name.push((b'a' + (n % 26) as u8) as char);
        n /= 26;
        if n == 0 {
            break;
        }
    }
    format!("/api/v1/op{name}")
}

/// GET `path` from `port`; the body's length and the milliseconds it took.
fn get(port: u16, path: &str) -> (usize, f64) {
    let started = Instant::now();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let head_end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(0);
    assert!(response.starts_with(b"HTTP/1.1 200"), "{path}");
    (response.len() - head_end - 4, ms)
}

fn main() {
    let operations: u64 = std::env::args()
        .nth(1)
        .map_or(10_000, |n| n.parse().expect("OPERATIONS"));
    let mut cap = Capture::new();
    let mut rng = 0x5eed_u64;
    let mut next = || {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        rng >> 33
    };
    for s in 0..SESSIONS {
        let ident = Ident::Cookie(format!("s{s}"));
        let client = format!(
            "10.{}.{}.{}:40000",
            1 + s / 65_536,
            (s / 256) % 256,
            s % 256
        );
        let mut conn = cap.open(T0 + s * MS, &client, "10.0.0.2:80");
        for r in 0..REQUESTS_PER_SESSION {
            // Most sessions wander among a few hundred busy operations; the rest reach
            // every operation, so all of them are discovered.
            let op = if r == 0 { s % operations } else { next() % 300 };
            let request = bank::request("GET", &path(op), &ident, None);
            cap.send(T0 + s * MS + r * 10 * MS, &mut conn, &request);
        }
    }
    let pcap = cap.to_pcap(Link::Ethernet);
    let config_text = format!(
        "[capture]\nports = [80]\n[operations]\nmax_operations = {}\n[sequence]\nmin_support = 1\n",
        operations + 10
    );
    let dir = std::env::temp_dir().join(format!("seqshield-console-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config_path = dir.join("config.toml");
    std::fs::write(&config_path, config_text).unwrap();
    let config = Config::load(&config_path).unwrap();
    let mut pipeline = Pipeline::new(&config, &[1; 32]).unwrap();
    pipeline
        .replay_pcap(&pcap, &config.capture.ports, &mut Vec::new())
        .unwrap();
    let now = pipeline.newest();
    let report = pipeline.report(now);
    println!(
        "agent state: {} operations, {} sequences reported, {} tracked",
        report.operations.len(),
        report.sequences.len(),
        pipeline.table_sizes().1
    );
    let state = Arc::new(AgentState::with_clock(
        pipeline,
        config_path,
        Box::new(move || now),
    ));
    let router = seqshield::admin::router(state, Access::new("x".repeat(40), false));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    runtime.spawn(async move { axum::serve(listener, router).await });

    println!(
        "\nthe console's calls: cold (the report scored anew), then warm (median of 5 \
         within the 250 ms a scored report is reused), ms; response bytes:"
    );
    for path in [
        "/",
        "/api/v1/report?limit=200",
        "/api/v1/graph?top=3",
        "/api/v1/operations/hourly",
        "/api/v1/rules",
        "/api/v1/alerts?limit=20",
    ] {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let cold = get(port, path);
        let mut runs: Vec<(usize, f64)> = (0..5).map(|_| get(port, path)).collect();
        runs.sort_by(|a, b| a.1.total_cmp(&b.1));
        println!(
            "  {path:<28} cold {:>8.1} ms  warm {:>8.1} ms  {:>9} bytes",
            cold.1, runs[2].1, runs[2].0
        );
    }
    if Path::new("/usr/bin/chromium").exists() {
        let mut runs: Vec<f64> = (0..3)
            .map(|_| {
                let started = Instant::now();
                let out = std::process::Command::new("chromium")
                    .args([
                        "--headless",
                        "--no-sandbox",
                        "--disable-gpu",
                        "--disable-dev-shm-usage",
                        "--virtual-time-budget=2000",
                        "--dump-dom",
                    ])
                    .arg(format!("http://127.0.0.1:{port}/"))
                    .output()
                    .expect("chromium");
                assert!(String::from_utf8_lossy(&out.stdout).contains("class=\"node"));
                started.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        runs.sort_by(f64::total_cmp);
        println!(
            "  page load in headless Chromium (start to DOM dumped, graph drawn): {:.0} ms (median of 3)",
            runs[1]
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
