//! Test kit for seqshield: synthesises TCP conversations into pcap files (so every replay
//! test writes the capture it reads), the bank-style scenario used by tests, the demo and
//! the benchmark, and a helper that replays a capture in-process.

pub mod bank;
pub mod capture;
pub mod flood;
pub mod realistic;
pub mod redis;

use std::path::Path;

use seqshield::alerts::Alert;
use seqshield::config::Config;
use seqshield::pipeline::Pipeline;
use seqshield::report::Report;

/// Fixed session-hash key for tests: hashes are reproducible.
pub const TEST_KEY: [u8; 32] = [42; 32];

/// Replays capture bytes through a pipeline built from config text; the report is taken
/// at the newest packet's time, as `seqshield replay` does.
pub fn replay(config_toml: &str, pcap: &[u8]) -> (Report, Vec<Alert>) {
    let config = Config::parse(config_toml, Path::new("test.toml")).expect("test config");
    let mut pipeline = Pipeline::new(&config, &TEST_KEY).expect("test pipeline");
    let mut alerts = Vec::new();
    pipeline
        .replay_pcap(pcap, &config.capture.ports, &mut alerts)
        .expect("replay");
    (pipeline.report(pipeline.newest()), alerts)
}

/// `requests` and `occurrences` of the operation with this human form, or panics.
pub fn op_counts(report: &Report, human: &str) -> (u64, u64) {
    let op = report
        .operations
        .iter()
        .find(|o| o.human() == human)
        .unwrap_or_else(|| panic!("no operation {human:?} in {:#?}", report.operations));
    (op.requests, op.occurrences)
}

/// The sequences of a report as (human forms, count, last_op_count).
pub fn sequences(report: &Report) -> Vec<(Vec<String>, u64, u64)> {
    report
        .sequences
        .iter()
        .map(|s| {
            let ops = s
                .operations
                .iter()
                .map(|id| {
                    report
                        .operations
                        .iter()
                        .find(|o| &o.id == id)
                        .expect("id resolves")
                        .human()
                })
                .collect();
            (ops, s.count, s.last_op_count)
        })
        .collect()
}
