//! seqshield: sequence analytics and sequence mitigation for API hosts.
//!
//! One pipeline, fed by a capture source (pcap replay today, the kernel ring buffer
//! live): `source` → `flow` → `http` → `ops` → `session` → `analytics` / `rules` →
//! `alerts`, with `report` as the read side. Every stage below `pipeline` is pure: data in,
//! data out, time carried by the segments.

pub mod admin;
pub mod alerts;
pub mod analytics;
pub mod budget;
pub mod config;
pub mod daemon;
pub mod defrag;
pub mod enforce;
pub mod evict;
pub mod fleet;
pub mod flow;
pub mod graph;
pub mod http;
pub mod metrics;
pub mod ops;
pub mod packet;
pub mod persist;
pub mod pipeline;
pub mod report;
pub mod rules;
pub mod session;
pub mod signals;
pub mod source;
pub mod state;

/// Nanoseconds since the UNIX epoch: the one clock every stage uses.
pub type Nanos = u64;

pub const NANOS_PER_SEC: u64 = 1_000_000_000;

/// Converts a configured duration to the pipeline's clock unit.
pub fn duration_nanos(d: std::time::Duration) -> Nanos {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
