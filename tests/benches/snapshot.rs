//! Snapshot cost at scale: 1 M sessions and 1 M tracked sequences. Times writing a
//! snapshot and restoring it into a fresh pipeline, and prints the file size and the
//! process's resident memory while a pipeline holds that much state, and what a report
//! copies under the pipeline's lock (the signals' open window full).

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use seqshield::analytics::{AnalyticsState, HourlyState};
use seqshield::config::Config;
use seqshield::ops::Operation;
use seqshield::persist::{self, Snapshot, Totals};
use seqshield::pipeline::Pipeline;
use seqshield::session::SessionState;
use seqshield::signals::{MAX_TRACKED, SignalsState, WINDOW};

const SESSIONS: u64 = 1_000_000;
/// 1000 operations: every ordered pair is one of 1 M sequences.
const OPS: u64 = 1_000;
const HOUR: u32 = 499_000;

fn counts(n: u32) -> HourlyState {
    HourlyState {
        last_hour: HOUR,
        last_count: n,
        earlier: None,
    }
}

/// A snapshot as a busy agent would write it: session i walked op a → op b.
fn big_snapshot() -> Snapshot {
    let operations: Vec<Operation> = (0..OPS)
        .map(|i| Operation {
            id: seqshield::ops::stable_id("api.test", "GET", &format!("/op{i}")),
            host: "api.test".into(),
            method: "GET".into(),
            path: format!("/op{i}"),
            configured: false,
        })
        .collect();
    let pair = |i: u64| ((i % OPS) as u16, ((i / OPS) % OPS) as u16);
    let now = u64::from(HOUR) * 3_600_000_000_000;
    Snapshot {
        newest: now,
        operations,
        analytics: AnalyticsState {
            slots: 25,
            ops: (0..OPS).map(|_| (counts(2_000), counts(2_000))).collect(),
            sequences: (0..SESSIONS)
                .map(|i| {
                    let (a, b) = pair(i);
                    (vec![a, b], counts(1))
                })
                .collect(),
            evicted: 0,
        },
        sessions: (0..SESSIONS)
            .map(|i| {
                let (a, b) = pair(i);
                SessionState {
                    id: i.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                    last_seen: now,
                    history: vec![(a, now - 1_000_000), (b, now)],
                    started_ms: seqshield::session::millis_u32(now - 1_000_000),
                    requests: 2,
                }
            })
            .collect(),
        totals: Totals::default(),
        // The signals' open window full (every tracked pair walked through at report
        // time), a day of closed windows per operation.
        signals: SignalsState {
            window_start: now - now % WINDOW,
            open: (0..MAX_TRACKED as u64)
                .map(|i| {
                    (
                        i.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                        pair(i).1,
                        2,
                        false,
                        0,
                    )
                })
                .collect(),
            values: Vec::new(),
            requests: (0..OPS)
                .map(|_| {
                    (HOUR - 23..=HOUR)
                        .map(|h| (h, vec![(1, 100), (2, 50)]))
                        .collect()
                })
                .collect(),
            distinct: Vec::new(),
        },
    }
}

fn config() -> Config {
    Config::parse("[capture]\nports = [80]\n", Path::new("bench.toml")).unwrap()
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmRSS:")).map(|v| {
                v.trim()
                    .trim_end_matches(" kB")
                    .parse::<f64>()
                    .unwrap_or(0.0)
            })
        })
        .unwrap_or(0.0)
        / 1024.0
}

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let snapshot = big_snapshot();
    let rss_before = rss_mib();
    let mut held = Pipeline::new(&config(), &[1; 32]).unwrap();
    held.restore(snapshot.clone()).unwrap();
    let (sessions, sequences) = held.table_sizes();
    assert_eq!((sessions as u64, sequences as u64), (SESSIONS, SESSIONS));
    let bytes = persist::save(dir.path(), &held.snapshot()).unwrap();
    eprintln!(
        "snapshot of {sessions} sessions and {sequences} sequences: {:.1} MiB on disk; process RSS {:.0} MiB with one pipeline holding it (was {:.0} MiB before)",
        bytes as f64 / 1048576.0,
        rss_mib(),
        rss_before
    );

    let mut group = c.benchmark_group("snapshot_1m");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.bench_function("write", |b| {
        b.iter(|| black_box(persist::save(dir.path(), &held.snapshot()).unwrap()))
    });
    // The report of the same pipeline: what the live agent holds its lock for (the
    // copy) against the whole report (copy and scoring), side by side.
    let now = held.newest();
    group.bench_function("report_under_lock", |b| {
        b.iter(|| black_box(held.report_inputs(now)))
    });
    group.bench_function("report_whole", |b| b.iter(|| black_box(held.report(now))));
    group.bench_function("restore", |b| {
        b.iter_batched(
            || Pipeline::new(&config(), &[1; 32]).unwrap(),
            |mut pipeline| {
                let snapshot = persist::load(dir.path()).unwrap().unwrap();
                pipeline.restore(snapshot).unwrap();
                pipeline
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(snapshot, benches);
criterion_main!(snapshot);
