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
    /// `sequence_violation` (sequence and expression rules), `rate_exceeded`, or
    /// `enumeration_suspected` (no rule: `rule_id` is empty, the title gives the count).
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
/// A rate rule's limit was passed.
pub const RATE_EXCEEDED: &str = "rate_exceeded";
/// A session sent far more distinct path-variable values than usual (`[enumeration]`).
pub const ENUMERATION_SUSPECTED: &str = "enumeration_suspected";

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

/// Counts of the alert writer, shared with `/metrics`.
#[derive(Debug, Default)]
pub struct AlertCounters {
    /// Alerts the queue had no room for (the output did not keep up).
    pub dropped: std::sync::atomic::AtomicU64,
    /// Alerts folded into an `alerts_suppressed` summary line.
    pub suppressed: std::sync::atomic::AtomicU64,
    /// Writes that failed (a closed pipe, a full disk).
    pub failed: std::sync::atomic::AtomicU64,
}

/// Alerts queued for a writer thread of their own: the capture thread never waits on
/// stdout or a disk. The queue is bounded; an alert it cannot take is counted
/// (`dropped`). Identical alerts (rule, session, operation) are written up to
/// [`WRITTEN_PER_WINDOW`] times per [`SUPPRESS_WINDOW`] (a few repeats stay visible one by
/// one, as SPEC §4 counts them); the rest become one counted `alerts_suppressed` line.
pub struct QueuedAlerts {
    queue: std::sync::mpsc::SyncSender<Alert>,
    counters: std::sync::Arc<AlertCounters>,
}

/// Alerts waiting to be written at most.
pub const ALERT_QUEUE: usize = 16_384;
/// Identical alerts written one by one per window; the others are counted.
pub const WRITTEN_PER_WINDOW: u64 = 10;
pub const SUPPRESS_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);
/// Keys of the suppression window remembered at once.
const MAX_SUPPRESS_KEYS: usize = 65_536;

impl QueuedAlerts {
    /// Starts the writer thread on `out`; it ends when this is dropped (after writing
    /// what is queued).
    pub fn start<W: Write + Send + 'static>(
        out: W,
    ) -> std::io::Result<(
        Self,
        std::sync::Arc<AlertCounters>,
        std::thread::JoinHandle<()>,
    )> {
        let (queue, rx) = std::sync::mpsc::sync_channel(ALERT_QUEUE);
        let counters = std::sync::Arc::new(AlertCounters::default());
        let writer = Writer {
            out: JsonLines::new(out),
            counters: counters.clone(),
            windows: std::collections::HashMap::new(),
        };
        let handle = std::thread::Builder::new()
            .name("alerts".into())
            .spawn(move || writer.run(rx))?;
        Ok((
            Self {
                queue,
                counters: counters.clone(),
            },
            counters,
            handle,
        ))
    }
}

impl OutcomeSink for QueuedAlerts {
    fn alert(&mut self, alert: Alert) {
        if self.queue.try_send(alert).is_err() {
            self.counters
                .dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// The writer thread's state: the output, and the open suppression windows.
struct Writer<W: Write> {
    out: JsonLines<W>,
    counters: std::sync::Arc<AlertCounters>,
    /// (rule id, session, operation) → (window start, alerts in it, written or not).
    windows: std::collections::HashMap<(String, String, String), (std::time::Instant, u64)>,
}

impl<W: Write> Writer<W> {
    fn run(mut self, rx: std::sync::mpsc::Receiver<Alert>) {
        let mut last_sweep = std::time::Instant::now();
        loop {
            match rx.recv_timeout(SUPPRESS_WINDOW) {
                Ok(alert) => self.take(alert, std::time::Instant::now()),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    self.close_windows(None);
                    return;
                }
            }
            // Ended windows are looked for a few times per window, not per alert.
            let now = std::time::Instant::now();
            if now.duration_since(last_sweep) >= SUPPRESS_WINDOW / 4 {
                last_sweep = now;
                self.close_windows(Some(now));
            }
        }
    }

    fn take(&mut self, alert: Alert, now: std::time::Instant) {
        let key = (
            alert.rule_id.clone(),
            alert.session.clone(),
            alert.operation.clone(),
        );
        match self.windows.get_mut(&key) {
            Some((start, seen)) if now.duration_since(*start) < SUPPRESS_WINDOW => {
                *seen += 1;
                if *seen > WRITTEN_PER_WINDOW {
                    self.counters
                        .suppressed
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return;
                }
            }
            _ => {
                if self.windows.len() >= MAX_SUPPRESS_KEYS {
                    self.close_windows(None);
                }
                self.windows.insert(key, (now, 1));
            }
        }
        self.write(alert);
    }

    /// Ends the windows older than [`SUPPRESS_WINDOW`] (all with `None`), writing a
    /// summary line for each that suppressed something.
    fn close_windows(&mut self, now: Option<std::time::Instant>) {
        let ended: Vec<_> = self
            .windows
            .iter()
            .filter(|(_, (start, _))| {
                now.is_none_or(|now| now.duration_since(*start) >= SUPPRESS_WINDOW)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in ended {
            let Some((_, seen)) = self.windows.remove(&key) else {
                continue;
            };
            let suppressed = seen.saturating_sub(WRITTEN_PER_WINDOW);
            if suppressed > 0 {
                let line = serde_json::json!({
                    "timestamp": rfc3339(crate::source::ring::wall_clock_now()),
                    "event": "alerts_suppressed",
                    "rule_id": key.0,
                    "session": key.1,
                    "operation": key.2,
                    "count": suppressed,
                });
                self.write_line(line.to_string());
            }
        }
    }

    fn write(&mut self, alert: Alert) {
        let before = self.out.failures;
        self.out.alert(alert);
        if self.out.failures > before {
            self.counters
                .failed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn write_line(&mut self, mut line: String) {
        line.push('\n');
        if self
            .out
            .out
            .write_all(line.as_bytes())
            .and_then(|_| self.out.out.flush())
            .is_err()
        {
            self.counters
                .failed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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

    fn alert(session: &str) -> Alert {
        Alert {
            timestamp: rfc3339(0),
            event: SEQUENCE_VIOLATION.into(),
            rule_id: "r".into(),
            rule_title: "t".into(),
            action: AlertAction::Block,
            session: session.into(),
            client: "10.0.0.1:1".into(),
            server: "10.0.0.2:80".into(),
            host: "bank.test".into(),
            method: "POST".into(),
            path: "/x".into(),
            operation: "POST bank.test/x".into(),
            previous_operations: Vec::new(),
        }
    }

    /// A writer whose bytes the test can read, and which can be made to stall.
    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn identical_alerts_become_one_counted_line() {
        let out = Shared::default();
        let (mut alerts, counters, handle) = QueuedAlerts::start(out.clone()).unwrap();
        for _ in 0..50 {
            alerts.alert(alert("s1"));
        }
        alerts.alert(alert("s2"));
        drop(alerts);
        handle.join().unwrap();
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let n = WRITTEN_PER_WINDOW as usize;
        assert_eq!(lines.len(), n + 2, "{text}");
        assert!(lines[..n].iter().all(|l| l["session"] == "s1"));
        assert_eq!(lines[n]["session"], "s2");
        assert_eq!(lines[n + 1]["event"], "alerts_suppressed");
        assert_eq!(lines[n + 1]["count"], 50 - n);
        assert_eq!(
            counters
                .suppressed
                .load(std::sync::atomic::Ordering::Relaxed),
            50 - WRITTEN_PER_WINDOW
        );
    }

    #[test]
    fn a_stalled_output_drops_and_counts_instead_of_blocking() {
        let out = Shared::default();
        let stall = out.0.lock().unwrap(); // The writer thread blocks on its first line.
        let (mut alerts, counters, handle) = QueuedAlerts::start(out.clone()).unwrap();
        let started = std::time::Instant::now();
        for i in 0..ALERT_QUEUE + 100 {
            alerts.alert(alert(&format!("s{i}")));
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        let dropped = counters.dropped.load(std::sync::atomic::Ordering::Relaxed);
        assert!((99..=101).contains(&dropped), "{dropped}");
        drop(stall);
        drop(alerts);
        handle.join().unwrap();
    }

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
