//! Prometheus metrics (text format at `/metrics`), built from the pipeline's counters at
//! scrape time: the pipeline keeps plain integers on its hot path, no metric handles.
//! Names follow the conventions: `seqshield_` prefix, `_total` counters, base units.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::enforce::hold::HoldStats;
use crate::report::Stats;
use crate::source::live::KernelCounters;

/// What the capture loop reads from the kernel and its enforcement each tick.
#[derive(Debug, Default, Clone, Copy)]
pub struct KernelView {
    pub counters: KernelCounters,
    /// Entries in the kernel's block and flag maps (expired ones are swept each tick).
    pub block_entries: u64,
    /// Block or flag entries the kernel refused (a full map).
    pub map_refusals: u64,
    pub hold: HoldStats,
}

type Labels = Vec<(String, String)>;

/// Per-request pipeline time: 1 µs to ~1 s.
pub fn request_seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1e-6, 4.0, 11))
}

/// Everything a scrape shows.
pub struct Snapshot<'a> {
    pub stats: &'a Stats,
    pub live_sessions: usize,
    pub tracked_sequences: usize,
    /// Bytes buffered now for reassembly and unfinished heads, and the limit.
    pub buffered_bytes: (usize, usize),
    /// (rule id, rule title, action, count)
    pub violations: &'a [(String, String, &'static str, u64)],
    pub kernel: KernelView,
    pub request_seconds: &'a Histogram,
    /// The alert writer's counts (live agent).
    pub alerts: Option<&'a crate::alerts::AlertCounters>,
    /// Per operation (human form): requests per session per 10-minute window.
    pub session_rates: &'a [(String, crate::signals::Distribution)],
    /// Requests the per-session counters could not track (a full table).
    pub signals_untracked: u64,
}

pub fn render(s: &Snapshot<'_>) -> String {
    let mut registry = Registry::with_prefix("seqshield");
    let counter = |registry: &mut Registry, name: &str, help: &str, v: u64| {
        let c: Counter = Counter::default();
        c.inc_by(v);
        registry.register(name, help, c);
    };
    let gauge = |registry: &mut Registry, name: &str, help: &str, v: u64| {
        let g: Gauge = Gauge::default();
        g.set(i64::try_from(v).unwrap_or(i64::MAX));
        registry.register(name, help, g);
    };
    let k = &s.kernel.counters;
    counter(
        &mut registry,
        "packets_seen",
        "Packets the kernel program ran on",
        k.seen,
    );
    counter(
        &mut registry,
        "packets_captured",
        "Packets handed to the agent through the ring buffer",
        k.captured,
    );
    counter(
        &mut registry,
        "events_lost",
        "Packets the kernel could not hand over (ring buffer full)",
        k.lost.max(s.stats.lost_events),
    );
    counter(
        &mut registry,
        "packets_unsupported",
        "Packets to analysed ports in a shape not captured (fragments, long IPv6 extension chains)",
        k.unsupported,
    );
    counter(
        &mut registry,
        "packets_dropped_ingress",
        "Client packets dropped by enforcement",
        k.dropped_ingress,
    );
    counter(
        &mut registry,
        "packets_dropped_egress",
        "Server packets of blocked connections dropped",
        k.dropped_egress,
    );
    counter(
        &mut registry,
        "packets_marked",
        "Packets of flagged connections marked",
        k.marked,
    );
    counter(
        &mut registry,
        "server_headers_captured",
        "Server packets whose TCP header was handed to the agent (what the server accepted)",
        k.server_facts,
    );
    counter(
        &mut registry,
        "segments_held",
        "Client segments the kernel held until their verdict ([enforce] hold)",
        k.held,
    );
    counter(
        &mut registry,
        "segments_reinjected",
        "Released copies of held segments the kernel let through",
        k.reinjected,
    );
    let h = &s.kernel.hold;
    labelled(
        &mut registry,
        "holds",
        "Held requests by outcome: released (allowed), discarded (blocked), timeout (no verdict in time, released), kernel_timeout (the kernel let a retransmission through)",
        "outcome",
        &[
            ("held", h.holds),
            ("released", h.released),
            ("discarded", h.discarded),
            ("timeout", h.timeouts),
            ("kernel_timeout", k.hold_timeouts),
        ],
    );
    counter(
        &mut registry,
        "held_frames_not_reinjected",
        "Held frames not put back (bad checksum, or not kept whole): left to the client's retransmission",
        h.not_reinjected,
    );
    counter(
        &mut registry,
        "reinject_errors",
        "Re-injections of released frames the kernel refused",
        h.reinject_errors,
    );

    let st = s.stats;
    let unmatched = st.unmatched_requests + st.other_requests;
    labelled(
        &mut registry,
        "requests",
        "HTTP requests by result (parsed counts them all)",
        "result",
        &[
            ("parsed", st.requests),
            ("unidentified", st.unidentified_requests),
            ("unmatched", unmatched),
            ("truncated", st.truncated_requests),
            ("lenient", st.lenient_requests),
            ("ambiguous_framing", st.ambiguous_framing),
        ],
    );
    counter(
        &mut registry,
        "parse_errors",
        "Bytes that were not HTTP/1.x where a request was expected",
        st.parse_errors,
    );

    // What the server's stack refused, so the agent did too (SPEC §7).
    let f = st.flows;
    labelled(
        &mut registry,
        "tcp_segments_refused",
        "Client segments the server's TCP stack discards, by reason",
        "reason",
        &[
            ("bad_checksum", f.bad_checksum_segments),
            ("out_of_window", f.out_of_window_segments),
            ("discarded", f.discarded_segments),
            ("paws", f.paws_rejected_segments),
            ("ignored_reset", f.ignored_resets),
            ("ignored_syn", f.ignored_syns),
            ("after_close", f.after_close_segments),
        ],
    );
    labelled(
        &mut registry,
        "reassembly_gaps",
        "Holes given up: acknowledged by the server (capture loss), or on the fallback timer or buffer bound (no server facts)",
        "cause",
        &[
            ("acknowledged", f.gaps - f.gaps_timed_out - f.gaps_forced),
            ("timed_out", f.gaps_timed_out),
            ("buffer_full", f.gaps_forced),
        ],
    );
    counter(
        &mut registry,
        "capture_loss_bytes",
        "Client bytes the server acknowledged that the capture never had",
        f.capture_loss_bytes,
    );

    gauge(
        &mut registry,
        "live_sessions",
        "Sessions in the session table",
        s.live_sessions as u64,
    );
    gauge(
        &mut registry,
        "tracked_sequences",
        "Distinct sequences in the sequence table",
        s.tracked_sequences as u64,
    );
    gauge(
        &mut registry,
        "buffered_bytes",
        "Bytes waiting for more: segments behind reassembly holes and unfinished heads",
        s.buffered_bytes.0 as u64,
    );
    gauge(
        &mut registry,
        "buffer_limit_bytes",
        "[capture] max_buffer_bytes",
        s.buffered_bytes.1 as u64,
    );
    counter(
        &mut registry,
        "heads_over_budget",
        "Unfinished request heads dropped because max_buffer_bytes was reached",
        s.stats.heads_over_budget,
    );
    if let Some(fleet) = s.stats.fleet {
        counter(
            &mut registry,
            "fleet_fallbacks",
            "Requests analysed with this host's view because the fleet's Redis was down or slow",
            fleet.fallbacks,
        );
        counter(
            &mut registry,
            "fleet_round_trips",
            "Round trips to the fleet's Redis",
            fleet.round_trips,
        );
    }
    labelled(
        &mut registry,
        "evictions",
        "Entries evicted from full tables",
        "table",
        &[
            ("sessions", st.sessions.sessions_evicted),
            ("sequences", st.sequences_evicted),
            ("flows", st.flows.flows_evicted),
        ],
    );

    let violations = Family::<Labels, Counter>::default();
    for (id, title, action, v) in s.violations {
        violations
            .get_or_create(&vec![
                ("rule_id".into(), id.clone()),
                ("rule".into(), title.clone()),
                ("action".into(), (*action).into()),
            ])
            .inc_by(*v);
    }
    registry.register(
        "violations",
        "Sequence rule violations by rule and action",
        violations,
    );
    let rates = Family::<Labels, Gauge>::default();
    for (operation, d) in s.session_rates {
        for (quantile, v) in [("0.5", d.p50), ("0.9", d.p90), ("0.99", d.p99)] {
            rates
                .get_or_create(&vec![
                    ("operation".into(), operation.clone()),
                    ("quantile".into(), quantile.into()),
                ])
                .set(i64::try_from(v).unwrap_or(i64::MAX));
        }
    }
    counter(
        &mut registry,
        "signals_untracked",
        "Requests of (session, operation) pairs the rate and enumeration counters could not track: their window's table was full",
        s.signals_untracked,
    );
    registry.register(
        "session_requests_per_10m",
        "Requests a session makes to an operation in a 10-minute window, nearest-rank quantiles over the analytics window",
        rates,
    );
    gauge(
        &mut registry,
        "kernel_block_entries",
        "Entries in the kernel block and flag maps",
        s.kernel.block_entries,
    );
    counter(
        &mut registry,
        "kernel_map_refusals",
        "Block or flag entries the kernel refused (a full map): the connection was reset but later packets were not dropped",
        s.kernel.map_refusals,
    );
    if let Some(a) = s.alerts {
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        labelled(
            &mut registry,
            "alerts_not_written",
            "Alerts not written one by one: dropped (the output did not keep up; the queue was full), suppressed (identical to one written in the last second: counted in an alerts_suppressed line), failed (a write error)",
            "reason",
            &[
                ("dropped", load(&a.dropped)),
                ("suppressed", load(&a.suppressed)),
                ("failed", load(&a.failed)),
            ],
        );
    }
    registry.register(
        "request_pipeline_seconds",
        "Time the pipeline spends on one request (averaged over each batch read from the kernel)",
        s.request_seconds.clone(),
    );

    let mut out = String::new();
    encode(&mut out, &registry).expect("writing to a String");
    out
}

/// A counter family with one label, one series per value.
fn labelled(registry: &mut Registry, name: &str, help: &str, label: &str, values: &[(&str, u64)]) {
    let family = Family::<Labels, Counter>::default();
    for &(value, n) in values {
        family
            .get_or_create(&vec![(label.into(), value.into())])
            .inc_by(n);
    }
    registry.register(name, help, family);
}
