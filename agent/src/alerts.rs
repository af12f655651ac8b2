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

/// A log file that rotates by size: `file` → `file.1` → … → `file.<keep>` (dropped).
/// Rotation happens between `write` calls: writers that write a line per call (as
/// [`JsonLines`] does) never see a line split across files.
pub struct RotatingFile {
    path: std::path::PathBuf,
    file: std::fs::File,
    written: u64,
    max_bytes: u64,
    keep: usize,
}

/// Opens an alert file for appending, created 0600: alerts name sessions and clients.
fn open_private(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

impl RotatingFile {
    pub fn open(path: &std::path::Path, max_bytes: u64, keep: usize) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = open_private(path)?;
        let written = file.metadata()?.len();
        Ok(Self {
            path: path.to_path_buf(),
            file,
            written,
            max_bytes: max_bytes.max(1),
            keep,
        })
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let numbered = |n: usize| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{n}"));
            std::path::PathBuf::from(p)
        };
        for n in (1..self.keep).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            std::fs::rename(&self.path, numbered(1))?;
        }
        self.file = open_private(&self.path)?;
        self.written = 0;
        Ok(())
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.written > 0 && self.written + buf.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        let n = self.file.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_files_rotate_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alerts.jsonl");
        let mut f = RotatingFile::open(&path, 100, 2).unwrap();
        for i in 0..10 {
            // One write per line, as JsonLines does: rotation never splits a line.
            let line = format!("{{\"n\":{i},\"pad\":\"{}\"}}\n", "x".repeat(40));
            f.write_all(line.as_bytes()).unwrap();
        }
        let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
        assert!(read(&path).len() <= 100);
        assert!(read(&dir.path().join("alerts.jsonl.1")).contains("\"n\":8"));
        assert!(read(&dir.path().join("alerts.jsonl.2")).contains("\"n\":7"));
        assert!(
            !dir.path().join("alerts.jsonl.3").exists(),
            "only `keep` old files"
        );
        assert!(read(&path).contains("\"n\":9"));
        use std::os::unix::fs::PermissionsExt;
        for p in [path.clone(), dir.path().join("alerts.jsonl.1")] {
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(
            rfc3339(1_700_000_000_123_456_000),
            "2023-11-14T22:13:20.123456Z"
        );
    }
}
