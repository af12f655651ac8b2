//! The whole pipeline (pcap bytes → report) against httparse alone on the same request
//! bytes, side by side in one run. `cargo xtask bench` prints the ratio.

use std::hint::black_box;
use std::mem::MaybeUninit;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use seqshield::alerts::{Alert, OutcomeSink};
use seqshield::config::Config;
use seqshield::pipeline::Pipeline;
use seqshield_tests::bank;
use seqshield_tests::capture::Link;

/// Sessions in the synthetic capture (eleven requests each, attackers four).
const SESSIONS: usize = 10_000;

/// Counts alerts without keeping them: the benchmark measures the pipeline, not a log.
#[derive(Default)]
struct CountingSink(u64);

impl OutcomeSink for CountingSink {
    fn alert(&mut self, alert: Alert) {
        self.0 += 1;
        black_box(alert);
    }
}

fn benches(c: &mut Criterion) {
    let (capture, requests) = bank::synthetic(SESSIONS, 100, 50);
    let pcap = capture.to_pcap(Link::Ethernet);
    let config = Config::parse(&bank::config(5, ""), std::path::Path::new("bench.toml")).unwrap();
    let ports = config.capture.ports.clone();
    eprintln!(
        "synthetic capture: {} requests, {} sessions, {} packets, {} bytes",
        requests.len(),
        SESSIONS,
        capture.len(),
        pcap.len()
    );
    assert!(requests.len() >= 100_000);

    // Sanity: the pipeline finds every request.
    let mut p = Pipeline::new(&config, &[7; 32]).unwrap();
    let mut alerts = CountingSink::default();
    p.replay_pcap(pcap.as_slice(), &ports, &mut alerts).unwrap();
    assert_eq!(p.stats().requests, requests.len() as u64);

    let mut group = c.benchmark_group("requests");
    group.throughput(Throughput::Elements(requests.len() as u64));
    group.sample_size(20);
    group.measurement_time(std::time::Duration::from_secs(15));
    replay_bench(&mut group, "pipeline", &config, &pcap);
    // The same with issue 15's rules and the enumeration signal.
    let with_rules = Config::parse(
        &bank::config(5, bank::EXPRESSION_RULES),
        std::path::Path::new("bench-rules.toml"),
    )
    .unwrap();
    let mut with_rules_alerts = CountingSink::default();
    Pipeline::new(&with_rules, &[7; 32])
        .unwrap()
        .replay_pcap(pcap.as_slice(), &ports, &mut with_rules_alerts)
        .unwrap();
    eprintln!(
        "alerts: {} plain, {} with the expression rules",
        alerts.0, with_rules_alerts.0
    );
    replay_bench(
        &mut group,
        "pipeline_with_expression_rules",
        &with_rules,
        &pcap,
    );
    group.bench_function("httparse", |b| {
        b.iter(|| {
            let mut parsed = 0usize;
            for r in &requests {
                let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; 100];
                let mut req = httparse::Request::new(&mut []);
                if let Ok(httparse::Status::Complete(n)) =
                    req.parse_with_uninit_headers(black_box(r), &mut slots)
                {
                    parsed += n;
                }
            }
            parsed
        })
    });
    group.finish();
    slow_head(c, &config);
}

/// Bytes of the head an attacker trickles in one byte per segment (under the 32 KiB a
/// connection may buffer).
const SLOW_HEAD_BYTES: usize = 30 * 1024;

/// One large request head arriving one byte per TCP segment, against the same head in
/// one segment: the cost per segment must stay flat (no re-parse of what was carried).
/// A fresh pipeline replaying the capture (pcap bytes → report state).
fn replay_bench(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    config: &Config,
    pcap: &[u8],
) {
    group.bench_function(name, |b| {
        b.iter_batched(
            || Pipeline::new(config, &[7; 32]).unwrap(),
            |mut pipeline| {
                let mut sink = CountingSink::default();
                pipeline
                    .replay_pcap(pcap, &config.capture.ports, &mut sink)
                    .unwrap();
                pipeline
            },
            BatchSize::LargeInput,
        )
    });
}

fn slow_head(c: &mut Criterion, config: &Config) {
    let head = format!(
        "GET /api/v1/accounts/1/balance HTTP/1.1\r\nHost: bank.test\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(SLOW_HEAD_BYTES - 80)
    );
    let capture = |cuts: &[usize]| {
        let mut cap = seqshield_tests::capture::Capture::new();
        let mut conn = cap.open(1_700_000_000_000_000_000, "10.1.0.1:40000", "10.0.0.1:80");
        cap.send_split(1_700_000_000_001_000_000, &mut conn, head.as_bytes(), cuts);
        cap.to_pcap(Link::Ethernet)
    };
    let every_byte: Vec<usize> = (1..head.len()).collect();
    let trickled = capture(&every_byte);
    let whole = capture(&[]);
    let mut group = c.benchmark_group("slow_head");
    group.throughput(Throughput::Bytes(head.len() as u64));
    group.sample_size(20);
    for (name, pcap) in [("one_byte_segments", &trickled), ("one_segment", &whole)] {
        let mut p = Pipeline::new(config, &[7; 32]).unwrap();
        p.replay_pcap(pcap, &[80], &mut CountingSink::default())
            .unwrap();
        assert_eq!(p.stats().requests, 1, "{name}");
        group.bench_function(name, |b| {
            b.iter_batched(
                || Pipeline::new(config, &[7; 32]).unwrap(),
                |mut pipeline| {
                    pipeline
                        .replay_pcap(pcap, &[80], &mut CountingSink::default())
                        .unwrap();
                    pipeline
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group!(pipeline, benches);
criterion_main!(pipeline);
