//! An open-loop HTTP/1.1 client for bench-live's fixed-rate mode (what wrk2 does): each
//! keep-alive connection sends on a schedule (the rate spread evenly over them), and a
//! request's latency counts from when it was due, so a stalled server is not hidden by
//! a client that waits for it (coordinated omission). Runs inside the client namespace
//! (`cargo xtask paced-client`, started by bench-live) and prints a JSON summary.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub struct Load {
    pub addr: String,
    pub rate: u32,
    pub seconds: u32,
    pub connections: u32,
}

const PATHS: [&str; 4] = [
    "/api/v1/login",
    "/api/v1/users/7/accounts",
    "/api/v1/accounts/1007/balance",
    "/api/v1/transferFunds",
];

pub fn run(load: &Load) -> Result<()> {
    if load.rate == 0 || load.connections == 0 {
        bail!("rate and connections must be at least 1");
    }
    let start = Instant::now() + Duration::from_millis(50);
    let interval = Duration::from_secs_f64(f64::from(load.connections) / f64::from(load.rate));
    let end = start + Duration::from_secs(u64::from(load.seconds));
    let workers: Vec<_> = (0..load.connections)
        .map(|c| {
            let addr = load.addr.clone();
            let first = start + interval.mul_f64(f64::from(c) / f64::from(load.connections));
            std::thread::spawn(move || connection(&addr, c, first, interval, end))
        })
        .collect();
    let mut latencies_us = Vec::new();
    let mut errors = 0u64;
    for w in workers {
        match w.join() {
            Ok(Ok(mut l)) => latencies_us.append(&mut l),
            _ => errors += 1,
        }
    }
    latencies_us.sort_unstable();
    let pct = |p: f64| {
        latencies_us
            .get(
                ((latencies_us.len() as f64 * p) as usize)
                    .min(latencies_us.len().saturating_sub(1)),
            )
            .copied()
            .unwrap_or(0)
    };
    let summary = serde_json::json!({
        "requests": latencies_us.len(),
        "per_sec": latencies_us.len() as f64 / f64::from(load.seconds),
        "p50_us": pct(0.50),
        "p99_us": pct(0.99),
        "max_us": latencies_us.last().copied().unwrap_or(0),
        "failed_connections": errors,
    });
    println!("{summary}");
    Ok(())
}

/// One keep-alive connection's requests, each sent when due; latencies in µs.
fn connection(
    addr: &str,
    c: u32,
    first: Instant,
    interval: Duration,
    end: Instant,
) -> Result<Vec<u64>> {
    let stream = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut latencies = Vec::new();
    let mut due = first;
    let mut n = 0usize;
    let mut line = String::new();
    while due < end {
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let path = PATHS[n % PATHS.len()];
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: bank.test\r\nCookie: sid=paced-{c}-{}\r\n\r\n",
            n / PATHS.len()
        );
        writer.write_all(request.as_bytes())?;
        // The response: status line and headers, then Content-Length bytes of body.
        let mut body = 0usize;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                bail!("the server closed the connection");
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((name, value)) = l.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                body = value.trim().parse().unwrap_or(0);
            }
        }
        let mut sink = vec![0u8; body];
        reader.read_exact(&mut sink)?;
        latencies.push(due.elapsed().as_micros() as u64);
        n += 1;
        due += interval;
    }
    Ok(latencies)
}
