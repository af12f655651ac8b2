//! Snapshots of learned state in `[state] dir` (SPEC §8): counts in hourly buckets, the
//! operation catalog, session histories and run totals, so a restarted agent (or a
//! `replay --persist`) carries on where it stopped. The session-hash key lives next to
//! it (`state.rs`).
//!
//! File: magic, format version, BLAKE3 of the payload, then the postcard-encoded
//! [`Snapshot`]. Written to a temp file, synced, and renamed over the old one: a crash
//! leaves the old snapshot or the new one, never half of one. A snapshot that cannot be
//! read is moved aside and the agent starts fresh: it never refuses to start over it.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

// The snapshot types belong to the pipeline (it exports and imports its state);
// persistence only encodes them and handles the files.
pub use crate::pipeline::{Pipeline, Snapshot, Totals};

pub const SNAPSHOT_FILE: &str = "snapshot.bin";
const MAGIC: &[u8; 8] = b"SQSSNAP\0";
/// Bumped on any change of [`Snapshot`]'s layout. The one before is read and converted
/// ([`v3`]); older ones are set aside.
pub const FORMAT_VERSION: u32 = 4;
const HEADER_LEN: usize = 8 + 4 + 32;

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("writing snapshot {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("snapshot {path} unreadable ({reason}); moved to {moved_to}, starting fresh")]
    SetAside {
        path: PathBuf,
        reason: String,
        moved_to: PathBuf,
    },
    #[error("snapshot {path} unreadable ({reason}) and could not be moved aside: {source}")]
    Stuck {
        path: PathBuf,
        reason: String,
        source: std::io::Error,
    },
}

/// Writes `snapshot` atomically into `dir`; returns its size in bytes.
pub fn save(dir: &Path, snapshot: &Snapshot) -> Result<u64, PersistError> {
    let path = dir.join(SNAPSHOT_FILE);
    let err = |source| PersistError::Write {
        path: path.clone(),
        source,
    };
    let payload = postcard::to_stdvec(snapshot).map_err(|e| err(std::io::Error::other(e)))?;
    let tmp = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
    // 0600: learned sessions and counts are the operator's, not every local user's.
    let mut file = {
        use std::os::unix::fs::OpenOptionsExt;
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?
    };
    file.write_all(MAGIC).map_err(err)?;
    file.write_all(&FORMAT_VERSION.to_le_bytes()).map_err(err)?;
    file.write_all(blake3::hash(&payload).as_bytes())
        .map_err(err)?;
    file.write_all(&payload).map_err(err)?;
    file.sync_all().map_err(err)?;
    drop(file);
    fs::rename(&tmp, &path).map_err(err)?;
    Ok((HEADER_LEN + payload.len()) as u64)
}

/// Reads the snapshot in `dir`: `Ok(None)` when there is none. One that cannot be used
/// is moved aside (`snapshot.bin.bad-<unix time>`) and reported as [`PersistError::SetAside`].
pub fn load(dir: &Path) -> Result<Option<Snapshot>, PersistError> {
    let path = dir.join(SNAPSHOT_FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(set_aside(&path, format!("cannot read: {e}"))),
    };
    decode(&bytes)
        .map(Some)
        .map_err(|reason| set_aside(&path, reason))
}

/// Restores `pipeline` from the snapshot in `dir`, if there is a usable one, and says
/// what happened in the log. Never fails: a bad snapshot is set aside and learning
/// starts fresh.
pub fn resume(pipeline: &mut Pipeline, dir: &Path) {
    match load(dir) {
        Ok(None) => tracing::info!(dir = %dir.display(), "no snapshot: starting fresh"),
        Ok(Some(snapshot)) => {
            let sessions = snapshot.sessions.len();
            let sequences = snapshot.analytics.sequences.len();
            match pipeline.restore(snapshot) {
                Ok(()) => tracing::info!(
                    event = "snapshot_restored",
                    sessions,
                    sequences,
                    "learned state restored"
                ),
                Err(reason) => {
                    let e = set_aside(&dir.join(SNAPSHOT_FILE), reason);
                    tracing::warn!(event = "snapshot_set_aside", error = %e, "starting fresh");
                }
            }
        }
        Err(e) => tracing::warn!(event = "snapshot_set_aside", error = %e, "starting fresh"),
    }
}

/// Decodes snapshot file bytes: magic, format version, checksum, then the payload.
pub fn decode(bytes: &[u8]) -> Result<Snapshot, String> {
    if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
        return Err("not a seqshield snapshot".into());
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION && version != 3 {
        return Err(format!(
            "format version {version}, this agent reads {FORMAT_VERSION} and 3"
        ));
    }
    let payload = &bytes[HEADER_LEN..];
    if blake3::hash(payload).as_bytes()[..] != bytes[12..HEADER_LEN] {
        return Err("checksum mismatch (truncated or damaged)".into());
    }
    if version == 3 {
        return v3::decode_payload(payload);
    }
    decode_payload(payload)
}

/// Format 3 (before sessions kept their start and count, and before signals): read and
/// converted, so an upgrade keeps what was learned.
mod v3 {
    use serde::Deserialize;

    use super::Snapshot;
    use crate::Nanos;
    use crate::analytics::AnalyticsState;
    use crate::ops::{OpId, Operation};
    use crate::pipeline::Totals;
    use crate::session::{SessionState, millis_u32};

    #[derive(Deserialize)]
    struct SnapshotV3 {
        newest: Nanos,
        operations: Vec<Operation>,
        analytics: AnalyticsState,
        sessions: Vec<SessionV3>,
        totals: Totals,
    }

    #[derive(Deserialize)]
    struct SessionV3 {
        id: u64,
        last_seen: Nanos,
        history: Vec<(OpId, Nanos)>,
    }

    pub fn decode_payload(payload: &[u8]) -> Result<Snapshot, String> {
        let old: SnapshotV3 =
            postcard::from_bytes(payload).map_err(|e| format!("undecodable (format 3): {e}"))?;
        Ok(Snapshot {
            newest: old.newest,
            operations: old.operations,
            analytics: old.analytics,
            sessions: old
                .sessions
                .into_iter()
                .map(|s| SessionState {
                    // The oldest remembered request stands in for the start.
                    started_ms: millis_u32(s.history.first().map_or(s.last_seen, |e| e.1)),
                    requests: s.history.len() as u16,
                    id: s.id,
                    last_seen: s.last_seen,
                    history: s.history,
                })
                .collect(),
            totals: old.totals,
            signals: Default::default(),
        })
    }
}

/// Decodes a snapshot's payload (what follows the checksum), as the fuzzer does: the
/// checksum keeps damage out, not a crafted file.
pub fn decode_payload(payload: &[u8]) -> Result<Snapshot, String> {
    postcard::from_bytes(payload).map_err(|e| format!("undecodable: {e}"))
}

fn set_aside(path: &Path, reason: String) -> PersistError {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let moved_to = path.with_file_name(format!("{SNAPSHOT_FILE}.bad-{stamp}"));
    match fs::rename(path, &moved_to) {
        Ok(()) => PersistError::SetAside {
            path: path.to_path_buf(),
            reason,
            moved_to,
        },
        Err(source) => PersistError::Stuck {
            path: path.to_path_buf(),
            reason,
            source,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::AnalyticsState;

    fn snapshot() -> Snapshot {
        Snapshot {
            newest: 42,
            operations: vec![],
            analytics: AnalyticsState {
                slots: 25,
                ops: vec![],
                sequences: vec![],
                evicted: 0,
            },
            sessions: vec![],
            totals: Totals {
                packets: 7,
                ..Totals::default()
            },
            signals: Default::default(),
        }
    }

    #[test]
    fn a_format_3_snapshot_is_read_and_converted() {
        // Format 3's layout: sessions without start and count, no signals.
        type SessionV3 = (u64, u64, Vec<(u16, u64)>);
        #[derive(serde::Serialize)]
        struct V3 {
            newest: u64,
            operations: Vec<crate::ops::Operation>,
            analytics: AnalyticsState,
            sessions: Vec<SessionV3>,
            totals: Totals,
        }
        let s = snapshot();
        let ms = 1_000_000;
        let old = V3 {
            newest: s.newest,
            operations: s.operations,
            analytics: s.analytics,
            sessions: vec![(9, 5_000 * ms, vec![(0, 2_000 * ms), (1, 5_000 * ms)])],
            totals: s.totals,
        };
        let payload = postcard::to_allocvec(&old).unwrap();
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(blake3::hash(&payload).as_bytes());
        bytes.extend_from_slice(&payload);
        let new = decode(&bytes).unwrap();
        assert_eq!(new.totals.packets, 7);
        let session = &new.sessions[0];
        assert_eq!((session.id, session.history.len()), (9, 2));
        assert_eq!((session.started_ms, session.requests), (2_000, 2));
        assert_eq!(new.signals, Default::default());
    }

    #[test]
    fn round_trip_and_atomic_replace() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        save(dir.path(), &snapshot()).unwrap();
        let mut s = snapshot();
        s.totals.packets = 8;
        save(dir.path(), &s).unwrap();
        assert_eq!(load(dir.path()).unwrap().unwrap().totals.packets, 8);
        assert!(!dir.path().join(format!("{SNAPSHOT_FILE}.tmp")).exists());
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join(SNAPSHOT_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn damaged_snapshots_are_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &snapshot()).unwrap();
        let path = dir.path().join(SNAPSHOT_FILE);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let err = load(dir.path()).unwrap_err();
        assert!(matches!(err, PersistError::SetAside { .. }), "{err}");
        assert!(err.to_string().contains("checksum"), "{err}");
        assert!(!path.exists());
        assert!(
            load(dir.path()).unwrap().is_none(),
            "fresh start after setting aside"
        );
        // Another format version.
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&99u32.to_le_bytes());
        bytes.extend_from_slice(&[0; 40]);
        fs::write(&path, &bytes).unwrap();
        assert!(
            load(dir.path())
                .unwrap_err()
                .to_string()
                .contains("format version 99")
        );
    }
}
