//! The state directory: the per-install session-hash key and the admin API token
//! (created on first use, 0600).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// File in the state dir holding the session-hash key (64 hex characters).
pub const KEY_FILE: &str = "session.key";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state dir {dir}: {source}; set [state] dir to a directory this user can write")]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{file}: {reason}; remove the file to create a new key (past session hashes will change)"
    )]
    BadKey { file: PathBuf, reason: String },
    #[error("no randomness for a new key: {0}")]
    Random(getrandom::Error),
}

/// Reads the session-hash key from `dir`, creating the directory (0700) and the key (0600)
/// when missing.
pub fn load_or_create_key(dir: &Path) -> Result<[u8; 32], StateError> {
    let file = dir.join(KEY_FILE);
    let hex = load_or_create_secret(&file)?;
    parse_key(&hex).ok_or_else(|| StateError::BadKey {
        file,
        reason: "not 64 hex characters".into(),
    })
}

/// File in the state dir holding the admin API's bearer token, unless `[admin]
/// token_file` names another.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Reads the admin API token from `file`, creating it (0600, 64 hex characters; its
/// directory 0700) when missing.
pub fn load_or_create_token(file: &Path) -> Result<String, StateError> {
    let token = load_or_create_secret(file)?;
    if token.len() < 32 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(StateError::BadKey {
            file: file.to_path_buf(),
            reason: "not a token (at least 32 printable characters)".into(),
        });
    }
    Ok(token)
}

/// The trimmed text of `file`, or 32 random bytes as hex written there first.
fn load_or_create_secret(file: &Path) -> Result<String, StateError> {
    match fs::read_to_string(file) {
        Ok(text) => Ok(text.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let hex = random_secret()?;
            write_secret(file, &hex)?;
            Ok(hex)
        }
        Err(e) => Err(StateError::Dir {
            dir: file.parent().unwrap_or(Path::new(".")).to_path_buf(),
            source: e,
        }),
    }
}

/// 32 random bytes as 64 hex characters.
pub fn random_secret() -> Result<String, StateError> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(StateError::Random)?;
    Ok(key_hex(&secret))
}

pub fn key_hex(key: &[u8; 32]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a secret to `file` (0600; its directory created 0700) through a temp file
/// and a rename: a crash never leaves half a secret.
pub fn write_secret(file: &Path, text: &str) -> Result<(), StateError> {
    let dir = file.parent().unwrap_or(Path::new("."));
    let dir_err = |source| StateError::Dir {
        dir: dir.to_path_buf(),
        source,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(dir_err)?;
    let mut tmp = file.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(dir_err)?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(dir_err)?;
    fs::rename(&tmp, file).map_err(dir_err)
}

/// A key from its 64 hex characters.
pub fn parse_key(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn key_is_created_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let k1 = load_or_create_key(&state).unwrap();
        let k2 = load_or_create_key(&state).unwrap();
        assert_eq!(k1, k2);
        let mode = fs::metadata(state.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            fs::metadata(&state).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }

    #[test]
    fn the_admin_token_is_created_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("run/admin.token");
        let t1 = load_or_create_token(&file).unwrap();
        assert_eq!(t1, load_or_create_token(&file).unwrap());
        assert_eq!(t1.len(), 64);
        let mode = fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        fs::write(&file, "short").unwrap();
        assert!(load_or_create_token(&file).is_err());
    }

    #[test]
    fn corrupt_key_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(KEY_FILE), "nope").unwrap();
        assert!(matches!(
            load_or_create_key(dir.path()),
            Err(StateError::BadKey { .. })
        ));
    }
}
