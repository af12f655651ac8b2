//! Alerts (SPEC §5): one flat JSON object per line, written and flushed as each request
//! is processed.

use std::io::Write;

use serde::{Deserialize, Serialize};

use crate::Nanos;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertAction {
    Log,
    Block,
    /// A block rule in monitor mode: what enforcement would have done.
    WouldBlock,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// RFC 3339, UTC.
    pub timestamp: String,
    /// Always `sequence_violation`.
    pub event: String,
    pub rule_id: String,
    pub rule_title: String,
    pub action: AlertAction,
    /// Keyed hash of the session value (`seqshield session-hash` finds it).
    pub session: String,
    pub client: String,
    pub server: String,
    pub host: String,
    pub method: String,
    pub path: String,
    /// Human form of the operation.
    pub operation: String,
    /// The lookback the rule saw, most recent first, human form.
    pub previous_operations: Vec<String>,
}

pub const SEQUENCE_VIOLATION: &str = "sequence_violation";

/// RFC 3339 with microseconds, UTC.
pub fn rfc3339(ts: Nanos) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ts);
    humantime::format_rfc3339_micros(t).to_string()
}

/// Where the pipeline's outcomes go: alerts, and (live, in enforce mode) verdicts for the
/// kernel.
pub trait OutcomeSink {
    fn alert(&mut self, alert: Alert);

    /// A connection to cut or flag; replay has no kernel to tell.
    fn enforce(&mut self, _verdict: &crate::enforce::Verdict) {}
}

/// Collects alerts in memory (tests, reports).
impl OutcomeSink for Vec<Alert> {
    fn alert(&mut self, alert: Alert) {
        self.push(alert);
    }
}

/// JSON lines to a writer, flushed line by line so a reader never sees half an alert.
pub struct JsonLines<W: Write> {
    out: W,
    /// Write failures (a closed pipe): counted, never fatal to the pipeline.
    pub failures: u64,
}

impl<W: Write> JsonLines<W> {
    pub fn new(out: W) -> Self {
        Self { out, failures: 0 }
    }
}

impl<W: Write> OutcomeSink for JsonLines<W> {
    fn alert(&mut self, alert: Alert) {
        let mut line = serde_json::to_vec(&alert).expect("alerts serialise");
        line.push(b'\n');
        if self
            .out
            .write_all(&line)
            .and_then(|_| self.out.flush())
            .is_err()
        {
            self.failures += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(
            rfc3339(1_700_000_000_123_456_000),
            "2023-11-14T22:13:20.123456Z"
        );
    }
}
