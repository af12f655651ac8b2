//! What a fleet round trip adds to each request of an identified session: `Fleet::record`
//! (the history script) called `N` times on 10 000 sessions against a running Redis,
//! each call timed; prints p50, p99 and the mean in µs, then the same for the embedded
//! session table. `cargo xtask bench-fleet` runs it.
//! Usage: fleet_latency REDIS_URL [N]

use std::time::Instant;

use seqshield::config::{FleetConfig, RedisNodes};
use seqshield::fleet::Fleet;
use seqshield::session::{SessionId, Sessions};

const SESSIONS: u64 = 10_000;
const SEC: u64 = 1_000_000_000;

fn percentiles(mut ns: Vec<u64>) -> (f64, f64, f64) {
    ns.sort_unstable();
    let at = |q: f64| ns[((ns.len() - 1) as f64 * q) as usize] as f64 / 1e3;
    let mean = ns.iter().sum::<u64>() as f64 / ns.len() as f64 / 1e3;
    (at(0.5), at(0.99), mean)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (url, n) = match args.as_slice() {
        [_, url] => (url.clone(), 100_000),
        [_, url, n] => (url.clone(), n.parse().expect("N")),
        _ => {
            eprintln!("usage: fleet_latency REDIS_URL [N]");
            std::process::exit(2);
        }
    };
    let config = FleetConfig {
        redis: Some(RedisNodes::One(url)),
        timeout: std::time::Duration::from_millis(100),
        ..FleetConfig::default()
    };
    let idle = 600 * SEC;
    let mut fleet = Fleet::new(
        &config,
        config.redis.as_ref().expect("redis"),
        idle,
        24 * 3600 * SEC,
    )
    .expect("fleet");
    let ops = [
        "00000000000a",
        "00000000000b",
        "00000000000c",
        "00000000000d",
    ];
    let t0 = 1_795_651_200 * SEC;
    let mut times = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let session = SessionId(i % SESSIONS);
        let op = ops[(i / SESSIONS % 4) as usize];
        let started = Instant::now();
        fleet
            .record(session, op, t0 + i * 1_000_000)
            .expect("Redis answers");
        times.push(started.elapsed().as_nanos() as u64);
    }
    let (p50, p99, mean) = percentiles(times);
    println!("fleet    p50 {p50:.1} µs  p99 {p99:.1} µs  mean {mean:.1} µs  ({n} requests)");
    let mut sessions = Sessions::new(1_000_000, idle);
    let mut times = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let started = Instant::now();
        let s = sessions.touch(SessionId(i % SESSIONS), t0 + i * 1_000_000);
        std::hint::black_box(
            s.history
                .record((i / SESSIONS % 4) as u16, t0 + i * 1_000_000),
        );
        times.push(started.elapsed().as_nanos() as u64);
    }
    let (p50, p99, mean) = percentiles(times);
    println!("embedded p50 {p50:.1} µs  p99 {p99:.1} µs  mean {mean:.1} µs");
}
