//! The durable record log of one replica.
//!
//! The core says what must survive a crash ([`pbft_core::Record`]) and when
//! (before the messages that follow it leave the node). This crate makes it
//! so: [`Storage::append`] writes a group of records and fsyncs once (group
//! commit: one fsync per `handle` call, not per message), and
//! [`Storage::open`] reads them back for [`pbft_core::Replica::restore`].
//!
//! # File format (`<data dir>/records.log`)
//! ```text
//! header:  "PBFTLOG1" | cluster id (u64 LE) | replica id (u32 LE)
//! entry*:  length (u32 LE) | crc32 of payload (u32 LE) | payload (postcard Record)
//! ```
//!
//! # Integrity
//! * A truncated last entry is a write torn by a crash. Its records were
//!   never acknowledged (nothing that depended on them was sent), so it is cut
//!   off with a warning.
//! * A complete entry whose checksum or encoding is wrong, a wrong header, or a
//!   log written for another cluster or replica is corruption: `open` fails
//!   with [`StorageError::Corrupted`] and the node stops rather than join with
//!   invented state.
//! * Compaction (after each stable checkpoint, see [`pbft_core::io::compact`])
//!   writes a new file beside the old one, fsyncs it and renames it over the
//!   old one, so a crash leaves either the old or the new log, never a mix.
//! * A lock file keeps two nodes from sharing one data directory.

use pbft_core::io::compact;
use pbft_core::{Record, ReplicaId};
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"PBFTLOG1";
const HEADER_LEN: usize = 8 + 8 + 4;
const ENTRY_HEADER_LEN: usize = 8;
/// Largest entry accepted when reading (a checkpoint snapshot may be large).
const ENTRY_LEN_MAX: u32 = 1 << 30;
const LOG_FILE: &str = "records.log";
const LOCK_FILE: &str = "LOCK";

/// Storage failures.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The file system refused.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The data is damaged or not ours.
    #[error("{path}: corrupted record log at byte {offset}: {reason}")]
    Corrupted {
        /// The file.
        path: PathBuf,
        /// Where.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// Another process holds the data directory.
    #[error("{path}: data directory is in use by another process")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
}

/// The record log of one replica.
pub struct Storage {
    dir: PathBuf,
    file: File,
    cluster: u64,
    replica: ReplicaId,
    /// The records a restart needs (compacted).
    live: Vec<Record>,
    _lock: File,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn header(cluster: u64, replica: ReplicaId) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&cluster.to_le_bytes());
    h.extend_from_slice(&replica.0.to_le_bytes());
    h
}

fn encode_entry(record: &Record, out: &mut Vec<u8>) {
    // Plain data into a Vec cannot fail.
    let payload = postcard::to_stdvec(record).unwrap_or_default();
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
}

impl Storage {
    /// Opens (or creates) the log in `dir` for `replica` of `cluster`, and
    /// returns the records to restore from.
    pub fn open(
        dir: &Path,
        cluster: u64,
        replica: ReplicaId,
    ) -> Result<(Storage, Vec<Record>), StorageError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        if lock.try_lock().is_err() {
            return Err(StorageError::Locked { path: lock_path });
        }
        let path = dir.join(LOG_FILE);
        let records = if path.exists() {
            read_log(&path, cluster, replica)?
        } else {
            write_file(dir, &path, &header(cluster, replica), &[])?;
            Vec::new()
        };
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let mut live = records.clone();
        compact(&mut live);
        Ok((
            Storage {
                dir: dir.to_path_buf(),
                file,
                cluster,
                replica,
                live,
                _lock: lock,
            },
            records,
        ))
    }

    /// Appends `records` and makes them durable with one fsync. After a
    /// stable checkpoint, rewrites the log without what it no longer needs.
    pub fn append(&mut self, records: &[Record]) -> Result<(), StorageError> {
        if records.is_empty() {
            return Ok(());
        }
        let path = self.dir.join(LOG_FILE);
        let mut bytes = Vec::new();
        for r in records {
            encode_entry(r, &mut bytes);
        }
        self.file.write_all(&bytes).map_err(io_err(&path))?;
        self.file.sync_data().map_err(io_err(&path))?;
        self.live.extend_from_slice(records);
        if pbft_core::io::compacts(records) {
            self.compact()?;
        }
        Ok(())
    }

    /// How many records a restart would replay now.
    pub fn live_records(&self) -> usize {
        self.live.len()
    }

    fn compact(&mut self) -> Result<(), StorageError> {
        compact(&mut self.live);
        let path = self.dir.join(LOG_FILE);
        write_file(
            &self.dir,
            &path,
            &header(self.cluster, self.replica),
            &self.live,
        )?;
        self.file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        Ok(())
    }
}

/// Writes a whole log atomically: temporary file, fsync, rename, fsync the directory.
fn write_file(
    dir: &Path,
    path: &Path,
    header: &[u8],
    records: &[Record],
) -> Result<(), StorageError> {
    let tmp = dir.join(format!("{LOG_FILE}.tmp"));
    {
        let file = File::create(&tmp).map_err(io_err(&tmp))?;
        let mut w = BufWriter::new(file);
        w.write_all(header).map_err(io_err(&tmp))?;
        let mut bytes = Vec::new();
        for r in records {
            bytes.clear();
            encode_entry(r, &mut bytes);
            w.write_all(&bytes).map_err(io_err(&tmp))?;
        }
        let file = w.into_inner().map_err(|e| io_err(&tmp)(e.into_error()))?;
        file.sync_all().map_err(io_err(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(io_err(path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    Ok(())
}

fn read_log(path: &Path, cluster: u64, replica: ReplicaId) -> Result<Vec<Record>, StorageError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io_err(path))?;
    let corrupted = |offset: usize, reason: String| StorageError::Corrupted {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
        return Err(corrupted(0, "not a PBFT record log (bad header)".into()));
    }
    if bytes[..HEADER_LEN] != header(cluster, replica)[..] {
        return Err(corrupted(
            8,
            format!("written for another cluster or replica (expected cluster {cluster}, replica {replica})"),
        ));
    }
    let mut records = Vec::new();
    let mut at = HEADER_LEN;
    while at < bytes.len() {
        let rest = &bytes[at..];
        if rest.len() < ENTRY_HEADER_LEN {
            return truncate_torn(path, at, records);
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        if len > ENTRY_LEN_MAX {
            return Err(corrupted(at, format!("entry length {len} is implausible")));
        }
        let end = ENTRY_HEADER_LEN + len as usize;
        if rest.len() < end {
            return truncate_torn(path, at, records);
        }
        let payload = &rest[ENTRY_HEADER_LEN..end];
        if crc32fast::hash(payload) != crc {
            return Err(corrupted(at, "checksum mismatch".into()));
        }
        let record: Record = postcard::from_bytes(payload)
            .map_err(|e| corrupted(at, format!("undecodable record: {e}")))?;
        records.push(record);
        at += end;
    }
    Ok(records)
}

/// Cuts off a last entry torn by a crash.
fn truncate_torn(
    path: &Path,
    at: usize,
    records: Vec<Record>,
) -> Result<Vec<Record>, StorageError> {
    tracing::warn!(path = %path.display(), offset = at, "discarding a torn last record (crash during write)");
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    file.set_len(at as u64).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))?;
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbft_core::message::{CheckpointProof, PrePrepare};
    use pbft_core::{SeqNum, View};
    use pbft_crypto::{ClusterId, Digest, KeyPair, Signer};

    fn pre_prepare(seq: u64) -> Record {
        let signer = Signer::new(KeyPair::from_seed([1; 32]), ClusterId(1));
        Record::PrePrepare(
            signer.sign(PrePrepare {
                view: View(0),
                seq: SeqNum(seq),
                digest: Digest::of(&seq.to_le_bytes()),
                replica: ReplicaId(0),
            }),
            None,
        )
    }

    fn checkpoint(seq: u64) -> Record {
        let snapshot = vec![seq as u8; 10];
        Record::Checkpoint(
            CheckpointProof {
                seq: SeqNum(seq),
                digest: Digest::of(&snapshot),
                checkpoints: vec![],
            },
            snapshot,
        )
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut s, records) = Storage::open(dir.path(), 1, ReplicaId(0)).expect("open");
        assert!(records.is_empty());
        s.append(&[pre_prepare(1), pre_prepare(2)]).expect("append");
        s.append(&[pre_prepare(3)]).expect("append");
        drop(s);
        let (_, records) = Storage::open(dir.path(), 1, ReplicaId(0)).expect("reopen");
        assert_eq!(
            records,
            vec![pre_prepare(1), pre_prepare(2), pre_prepare(3)]
        );
    }

    #[test]
    fn compaction_keeps_what_restart_needs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut s, _) = Storage::open(dir.path(), 1, ReplicaId(0)).expect("open");
        for seq in 1..=5 {
            s.append(&[pre_prepare(seq)]).expect("append");
        }
        s.append(&[checkpoint(4)]).expect("append");
        assert_eq!(s.live_records(), 2);
        drop(s);
        let (_, records) = Storage::open(dir.path(), 1, ReplicaId(0)).expect("reopen");
        assert_eq!(records, vec![pre_prepare(5), checkpoint(4)]);
    }

    #[test]
    fn torn_tail_is_cut_off() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut s, _) = Storage::open(dir.path(), 1, ReplicaId(0)).expect("open");
        s.append(&[pre_prepare(1), pre_prepare(2)]).expect("append");
        drop(s);
        let path = dir.path().join(LOG_FILE);
        let len = fs::metadata(&path).expect("meta").len();
        let f = OpenOptions::new().write(true).open(&path).expect("open");
        f.set_len(len - 3).expect("truncate");
        let (_, records) = Storage::open(dir.path(), 1, ReplicaId(0)).expect("reopen");
        assert_eq!(records, vec![pre_prepare(1)]);
    }

    #[test]
    fn flipped_bit_is_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut s, _) = Storage::open(dir.path(), 1, ReplicaId(0)).expect("open");
        s.append(&[pre_prepare(1), pre_prepare(2)]).expect("append");
        drop(s);
        let path = dir.path().join(LOG_FILE);
        let mut bytes = fs::read(&path).expect("read");
        bytes[HEADER_LEN + ENTRY_HEADER_LEN + 5] ^= 0x10;
        fs::write(&path, bytes).expect("write");
        let err = Storage::open(dir.path(), 1, ReplicaId(0))
            .err()
            .expect("must fail");
        assert!(matches!(err, StorageError::Corrupted { .. }), "{err}");
        assert!(err.to_string().contains("checksum"));
    }

    #[test]
    fn other_replica_or_garbage_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(Storage::open(dir.path(), 1, ReplicaId(0)).expect("open"));
        assert!(matches!(
            Storage::open(dir.path(), 1, ReplicaId(2)),
            Err(StorageError::Corrupted { .. })
        ));
        fs::write(dir.path().join(LOG_FILE), b"hello").expect("write");
        assert!(matches!(
            Storage::open(dir.path(), 1, ReplicaId(0)),
            Err(StorageError::Corrupted { .. })
        ));
    }

    #[test]
    fn second_opener_is_locked_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _first = Storage::open(dir.path(), 1, ReplicaId(0)).expect("open");
        assert!(matches!(
            Storage::open(dir.path(), 1, ReplicaId(0)),
            Err(StorageError::Locked { .. })
        ));
    }
}
