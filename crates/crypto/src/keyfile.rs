//! Key files.
//!
//! A secret key file holds the 32-byte ed25519 seed as one line of hex and is
//! created with mode `0600`; reading refuses a file that its group or others can
//! read, or that another user owns, the way OpenSSH does. A public key file
//! holds the 32-byte public key as one line of hex.
//!
//! Reading opens the file once and checks the metadata of the open file
//! (`fstat`), not of the path, so the file checked is the file read: no
//! time-of-check/time-of-use gap in which the path could be swapped. The open
//! does not block (a FIFO at the path is refused, not waited on), and only
//! regular files of at most [`KEY_FILE_LEN_MAX`] bytes are read.

use crate::{KeyPair, PublicKey};
use std::fs;
use std::io::{Read, Write};
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
    /// A secret key file owned by another user than the one running.
    #[error("{path}: secret key file is owned by uid {owner}, not by the current user (uid {user}); run `chown {user} {path}`")]
    Owner {
        /// The file.
        path: PathBuf,
        /// The file's owner.
        owner: u32,
        /// The current (effective) user.
        user: u32,
    },
    /// Not a regular file (a directory, FIFO, device, ...), or too large to be a key file.
    #[error("{path}: not a key file: {reason}")]
    NotAKeyFile {
        /// The file.
        path: PathBuf,
        /// What it is.
        reason: String,
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

/// Most bytes read from a key file (a key file is one line of 64 hex digits).
pub const KEY_FILE_LEN_MAX: u64 = 4096;

/// Opens `path` once for reading, without blocking (a FIFO is not waited
/// on), and returns the file with the metadata of the open file itself.
fn open_checked(path: &Path) -> Result<(fs::File, fs::Metadata), KeyFileError> {
    let mut options = fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32);
    }
    let file = options.open(path).map_err(io_err(path))?;
    let meta = file.metadata().map_err(io_err(path))?;
    if !meta.is_file() {
        return Err(KeyFileError::NotAKeyFile {
            path: path.to_path_buf(),
            reason: format!("not a regular file ({:?})", meta.file_type()),
        });
    }
    if meta.len() > KEY_FILE_LEN_MAX {
        return Err(KeyFileError::NotAKeyFile {
            path: path.to_path_buf(),
            reason: format!(
                "{} bytes; a key file has at most {KEY_FILE_LEN_MAX}",
                meta.len()
            ),
        });
    }
    Ok((file, meta))
}

/// Reads what [`open_checked`] opened, at most [`KEY_FILE_LEN_MAX`] bytes
/// (the file may grow after the check).
fn read_text(path: &Path, file: fs::File) -> Result<String, KeyFileError> {
    let mut bytes = Vec::new();
    file.take(KEY_FILE_LEN_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err(path))?;
    if bytes.len() as u64 > KEY_FILE_LEN_MAX {
        return Err(KeyFileError::NotAKeyFile {
            path: path.to_path_buf(),
            reason: format!("more than {KEY_FILE_LEN_MAX} bytes"),
        });
    }
    String::from_utf8(bytes).map_err(|_| KeyFileError::Format {
        path: path.to_path_buf(),
        reason: "not UTF-8 text".into(),
    })
}

/// Refuses a secret key file that group or others can access, or that is
/// not owned by `user`.
#[cfg(unix)]
fn check_secret_metadata(path: &Path, meta: &fs::Metadata, user: u32) -> Result<(), KeyFileError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    if meta.uid() != user {
        return Err(KeyFileError::Owner {
            path: path.to_path_buf(),
            owner: meta.uid(),
            user,
        });
    }
    Ok(())
}

/// Reads a secret key file, refusing one that group or others can access or
/// that another user owns (checked on the open file, see the module docs).
pub fn read_secret(path: &Path) -> Result<KeyPair, KeyFileError> {
    let (file, meta) = open_checked(path)?;
    #[cfg(unix)]
    check_secret_metadata(path, &meta, rustix::process::geteuid().as_raw())?;
    #[cfg(not(unix))]
    let _ = meta;
    let text = read_text(path, file)?;
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
    let (file, _) = open_checked(path)?;
    let text = read_text(path, file)?;
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

    #[cfg(unix)]
    #[test]
    fn secret_of_another_owner_is_refused() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.key");
        write_secret(&path, &KeyPair::from_seed([3; 32])).expect("write");
        let meta = fs::metadata(&path).expect("meta");
        // The check itself, for any user (works without root).
        let err = check_secret_metadata(&path, &meta, meta.uid() + 1).expect_err("other user");
        assert!(
            matches!(err, KeyFileError::Owner { owner, .. } if owner == meta.uid()),
            "{err}"
        );
        assert!(err.to_string().contains("chown"), "{err}");
        check_secret_metadata(&path, &meta, meta.uid()).expect("own file");
        // End to end, where this test may give the file away (as root, as in CI).
        if rustix::process::geteuid().is_root() {
            std::os::unix::fs::chown(&path, Some(4242), None).expect("chown");
            let err = read_secret(&path).expect_err("owned by uid 4242");
            assert!(
                matches!(err, KeyFileError::Owner { owner: 4242, .. }),
                "{err}"
            );
        }
    }

    #[cfg(unix)]
    #[test]
    fn fifo_or_directory_is_refused_without_blocking() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("fifo.key");
        let made = std::process::Command::new("mkfifo")
            .arg("-m")
            .arg("600")
            .arg(&fifo)
            .status()
            .expect("run mkfifo");
        assert!(made.success());
        let (tx, rx) = std::sync::mpsc::channel();
        let path = fifo.clone();
        std::thread::spawn(move || {
            let _ = tx.send(read_secret(&path).map(|k| k.public()));
        });
        let result = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("read_secret blocked on a FIFO");
        let err = result.expect_err("a FIFO is not a key file");
        assert!(matches!(err, KeyFileError::NotAKeyFile { .. }), "{err}");
        let err = read_public(dir.path()).expect_err("a directory");
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn oversized_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("big.pub");
        fs::write(&path, vec![b'a'; KEY_FILE_LEN_MAX as usize + 1]).expect("write");
        let err = read_public(&path).expect_err("too large");
        assert!(matches!(err, KeyFileError::NotAKeyFile { .. }), "{err}");
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
