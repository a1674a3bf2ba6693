//! Key files.
//!
//! A secret key file holds the 32-byte ed25519 seed as one line of hex and is
//! created with mode `0600`; reading refuses a file that its group or others can
//! read, the way OpenSSH does. A public key file holds the 32-byte public key as
//! one line of hex.

use crate::{KeyPair, PublicKey};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Errors reading or writing key files.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A secret key file that others can read.
    #[error("{path}: secret key file is accessible by group or others (mode {mode:03o}); run `chmod 600 {path}`")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The contents are not a key.
    #[error("{path}: not a valid key file: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Refusing to overwrite an existing key.
    #[error("{path}: already exists; refusing to overwrite a key")]
    Exists {
        /// The file.
        path: PathBuf,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates a new file (never overwriting one), with `mode` on Unix.
fn create_new(path: &Path, mode: u32) -> Result<fs::File, KeyFileError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            KeyFileError::Exists {
                path: path.to_path_buf(),
            }
        } else {
            io_err(path)(e)
        }
    })
}

/// Writes `key`'s secret seed to a new file at `path` with mode 0600.
/// Refuses to overwrite an existing file.
pub fn write_secret(path: &Path, key: &KeyPair) -> Result<(), KeyFileError> {
    let mut file = create_new(path, 0o600)?;
    writeln!(file, "{}", hex::encode(key.secret_seed())).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

/// Reads a secret key file, refusing one that group or others can access.
pub fn read_secret(path: &Path) -> Result<KeyPair, KeyFileError> {
    let meta = fs::metadata(path).map_err(io_err(path))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyFileError::Permissions {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    let bytes = hex::decode(text.trim()).map_err(|e| KeyFileError::Format {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let seed: [u8; 32] = bytes.try_into().map_err(|_| KeyFileError::Format {
        path: path.to_path_buf(),
        reason: "a secret key is 32 bytes (64 hex digits)".into(),
    })?;
    Ok(KeyPair::from_seed(seed))
}

/// Writes a public key file (refuses to overwrite).
pub fn write_public(path: &Path, key: &PublicKey) -> Result<(), KeyFileError> {
    let mut file = create_new(path, 0o644)?;
    writeln!(file, "{}", key.to_hex()).map_err(io_err(path))
}

/// Reads a public key file.
pub fn read_public(path: &Path) -> Result<PublicKey, KeyFileError> {
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    PublicKey::from_hex(&text).map_err(|e| KeyFileError::Format {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_round_trip_with_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.key");
        let key = KeyPair::from_seed([3; 32]);
        write_secret(&path, &key).expect("write");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        assert_eq!(read_secret(&path).expect("read").public(), key.public());
        assert!(matches!(
            write_secret(&path, &key),
            Err(KeyFileError::Exists { .. })
        ));
    }

    #[cfg(unix)]
    #[test]
    fn readable_secret_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.key");
        write_secret(&path, &KeyPair::from_seed([3; 32])).expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = read_secret(&path).expect_err("must refuse");
        assert!(matches!(err, KeyFileError::Permissions { mode: 0o644, .. }));
        assert!(err.to_string().contains("chmod 600"));
    }

    #[test]
    fn garbage_is_a_format_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p.pub");
        fs::write(&path, "not hex\n").expect("write");
        assert!(matches!(
            read_public(&path),
            Err(KeyFileError::Format { .. })
        ));
        let key = KeyPair::from_seed([4; 32]).public();
        let path2 = dir.path().join("q.pub");
        write_public(&path2, &key).expect("write");
        assert_eq!(read_public(&path2).expect("read"), key);
    }
}
