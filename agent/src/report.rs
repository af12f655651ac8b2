//! The report (SPEC §6): operations, scored sequences and run totals, as JSON for machines
//! and as a table for the person deciding which allow rules to write.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::defrag::FragStats;
use crate::flow::FlowStats;
use crate::session::SessionStats;
use crate::signals::Distribution;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub generated_at: String,
    pub window_secs: u64,
    /// Whose counts these are: `"fleet"` (every agent of the fleet, merged), or why a
    /// fleet agent shows only its own. Absent outside fleet mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<String>,
    pub operations: Vec<OperationReport>,
    pub sequences: Vec<SequenceReport>,
    pub stats: Stats,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationReport {
    pub id: String,
    pub host: String,
    pub method: String,
    pub path: String,
    /// Every request to the operation in the window, repeats and unidentified included.
    pub requests: u64,
    /// N(x): new occurrences in identified sessions.
    pub occurrences: u64,
    /// Requests per identified session per 10-minute window, over the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_rate: Option<Distribution>,
    /// Distinct path-variable values per session per 10-minute window (`[enumeration]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distinct_values: Option<Distribution>,
}

impl OperationReport {
    pub fn human(&self) -> String {
        format!("{} {}{}", self.method, self.host, self.path)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SequenceReport {
    /// Operation ids, first to final.
    pub operations: Vec<String>,
    /// N(s)
    pub count: u64,
    /// N(final operation)
    pub last_op_count: u64,
    pub score: f64,
    /// Wilson 95% lower bound of the score.
    pub score_lower: f64,
}

/// Totals for the whole run (not windowed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stats {
    /// Client → server packets on the analysed ports that carry bytes or SYN/FIN/RST
    /// (bare ACKs are skipped, live in the kernel and in replay alike).
    pub packets: u64,
    /// HTTP requests parsed on the analysed ports, matched or not.
    pub requests: u64,
    pub unidentified_requests: u64,
    pub parse_errors: u64,
    /// Packets the kernel could not hand over (ring buffer full); 0 in replay.
    pub lost_events: u64,
    pub truncated_requests: u64,
    /// Request heads a strict parser refuses but servers serve (obs-fold, `HTTP/1.2`,
    /// many headers...), read leniently.
    pub lenient_requests: u64,
    /// Requests framed by both Content-Length and Transfer-Encoding, or by a repeated
    /// Content-Length (RFC 9112 §6.3).
    pub ambiguous_framing: u64,
    /// Unfinished request heads dropped because `[capture] max_buffer_bytes` was
    /// reached (their requests are missed).
    pub heads_over_budget: u64,
    /// Requests matching no endpoint with discovery off.
    pub unmatched_requests: u64,
    /// Requests beyond `max_operations` discovered operations.
    pub other_requests: u64,
    pub alerts: u64,
    /// Block verdicts on connections whose client had not shown it is the real end
    /// (possibly spoofed): only that connection was cut, no session or client block.
    pub unconfirmed_violations: u64,
    pub sequences_evicted: u64,
    #[serde(flatten)]
    pub flows: FlowStats,
    /// IP fragments and the datagrams put back together from them.
    pub fragments: FragStats,
    #[serde(flatten)]
    pub sessions: SessionStats,
    /// `[fleet]`: requests analysed with the shared history, fallbacks to the local
    /// view, round trips to Redis. Absent without a fleet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<crate::fleet::FleetStats>,
}

/// Narrowing of a report's sequences (admin API query parameters).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReportFilter {
    /// Keep sequences that contain this operation (id or human form).
    pub operation: Option<String>,
    pub min_score: Option<f64>,
    /// Fewest occurrences of the sequence.
    pub min_support: Option<u64>,
    /// At most this many sequences (the best first).
    pub limit: Option<usize>,
}

impl Report {
    /// Keeps the sequences that pass `filter`, in order.
    pub fn filtered(self, filter: &ReportFilter) -> Self {
        self.filtered_copy(filter)
    }

    /// [`Report::filtered`] of a shared report: only the sequences kept are copied.
    pub fn filtered_copy(&self, filter: &ReportFilter) -> Self {
        let op_id = filter.operation.as_ref().map(|name| {
            self.operations
                .iter()
                .find(|o| &o.id == name || &o.human() == name)
                .map_or_else(|| name.clone(), |o| o.id.clone())
        });
        let sequences = self
            .sequences
            .iter()
            .filter(|s| {
                op_id.as_ref().is_none_or(|id| s.operations.contains(id))
                    && filter.min_score.is_none_or(|m| s.score >= m)
                    && filter.min_support.is_none_or(|m| s.count >= m)
            })
            .take(filter.limit.unwrap_or(usize::MAX))
            .cloned()
            .collect();
        Self {
            generated_at: self.generated_at.clone(),
            window_secs: self.window_secs,
            counts: self.counts.clone(),
            operations: self.operations.clone(),
            sequences,
            stats: self.stats.clone(),
        }
    }

    /// The readable view: operations with their ids, then sequences by score.
    pub fn to_table(&self) -> String {
        let name = |id: &str| {
            self.operations
                .iter()
                .find(|o| o.id == id)
                .map_or_else(|| id.to_string(), OperationReport::human)
        };
        let mut out = String::new();
        let _ = writeln!(
            out,
            "report at {} (window {} h)",
            self.generated_at,
            self.window_secs / 3600
        );
        match self.counts.as_deref() {
            Some("fleet") => {
                let _ = writeln!(out, "counts: the fleet's, every agent's merged (Redis)");
            }
            Some(other) => {
                let _ = writeln!(out, "counts: {other}");
            }
            None => {}
        }
        let _ = writeln!(
            out,
            "\nOPERATIONS (per session: requests in 10 min, p50/p90/p99)\n{:<12}  {:>9}  {:>11}  {:>12}  operation",
            "id", "requests", "occurrences", "per session"
        );
        for o in &self.operations {
            let rate = o
                .session_rate
                .map_or_else(|| "-".into(), |r| format!("{}/{}/{}", r.p50, r.p90, r.p99));
            let _ = writeln!(
                out,
                "{:<12}  {:>9}  {:>11}  {:>12}  {}",
                o.id,
                o.requests,
                o.occurrences,
                rate,
                o.human()
            );
        }
        let _ = writeln!(
            out,
            "\nSEQUENCES\n{:>6}  {:>6}  {:>7}  sequence",
            "score", "lower", "count"
        );
        if self.sequences.is_empty() {
            let _ = writeln!(out, "(none with enough support yet)");
        }
        for s in &self.sequences {
            let ops: Vec<String> = s.operations.iter().map(|id| name(id)).collect();
            let _ = writeln!(
                out,
                "{:>6.3}  {:>6.3}  {:>7}  {}",
                s.score,
                s.score_lower,
                s.count,
                ops.join(" → ")
            );
        }
        let st = &self.stats;
        let _ = writeln!(
            out,
            "\npackets {}  requests {}  unidentified {}  parse errors {}  truncated {}  lost events {}  alerts {}",
            st.packets,
            st.requests,
            st.unidentified_requests,
            st.parse_errors,
            st.truncated_requests,
            st.lost_events,
            st.alerts
        );
        out
    }
}
