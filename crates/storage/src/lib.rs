//! The durable record log of one replica.
//!
//! The core says what must survive a crash ([`pbft_core::Record`]) and when
//! (before the messages that follow it leave the node). This crate makes it
//! so: [`Storage::append`] writes a group of records and fsyncs once (group
//! commit: one fsync per `handle` call, not per message), and
//! [`Storage::open`] reads them back for [`pbft_core::Replica::restore`].
//!
//! # The data directory
//! ```text
//! <data dir>/            mode 0700 when this crate creates it
//!   PBFT-INIT            the init marker (mode 0600): "pbft data directory v2\ncluster <id>\nreplica <id>\n"
//!   records.log          the record log (mode 0600)
//!   records.log.tmp      a compacted log being written (renamed over records.log)
//!   LOCK                 held (flock) by the process that has the directory open
//! ```
//! A data directory is made once, explicitly, by [`Storage::init`] (`pbft
//! testnet` and `pbft-node --init` call it): it writes an empty log and then
//! the marker. [`Storage::open`] never creates one. A replica that restarted
//! with an empty log could vote against what it voted before (amnesia), so:
//! * no marker and no log: [`StorageError::NotInitialised`];
//! * a marker but no log: [`StorageError::Corrupted`] (the log was lost);
//! * a log but no marker (a crash inside `init`, between the two writes): the
//!   log's header names the cluster and replica, so it is opened and the
//!   marker written.
//!
//! # File format (`records.log`)
//! ```text
//! header:  "PBFTLOG2" | cluster id (u64 LE) | replica id (u32 LE)
//! entry*:  length (u32 LE) | crc32 of payload (u32 LE) | crc32 of the 8 bytes before (u32 LE)
//!          | payload (postcard Record, `length` bytes)
//! ```
//! The entry header carries its own checksum so that a damaged length is
//! recognised as damaged rather than trusted (a flipped high bit would
//! otherwise make a mid-file entry look like one that runs past the end of the
//! file, and the reader would cut every record after it as "torn").
//!
//! # Entry size limit
//! One limit, [`ENTRY_LEN_MAX`], binds the writer and the reader: `append`
//! refuses (with [`StorageError::EntryTooLarge`], before writing anything) a
//! record the reader would refuse, so the log can always be read back. It is
//! the largest length the u32 field holds, 4 GiB − 1: a checkpoint record
//! holds the whole snapshot (application state and client table), and the
//! service is meant to hold more than 1 GiB of data. Reading it back costs
//! about twice the log's size in memory at start (the file, then the decoded
//! records); larger states need the paged snapshot of ARCHITECTURE.md §6.
//!
//! # Integrity
//! * A torn last entry (a crash during the write; its records were never
//!   acknowledged, so nothing that depended on them was sent) is cut off with
//!   a warning. Torn means one of: fewer bytes left than an entry header; an
//!   intact entry header whose payload runs past the end of the file; or a
//!   damaged entry (bad header checksum, or bad payload checksum) with no
//!   valid entry anywhere after it (a torn sector, or the zeros a file system
//!   leaves in blocks it allocated but never wrote).
//! * A damaged entry followed by a valid one, an entry whose checksum holds
//!   but which does not decode, a wrong file header, or a log written for
//!   another cluster or replica is corruption: `open` fails with
//!   [`StorageError::Corrupted`] and the node stops rather than join with
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

const MAGIC: &[u8; 8] = b"PBFTLOG2";
const MAGIC_V1: &[u8; 8] = b"PBFTLOG1";
const HEADER_LEN: usize = 8 + 8 + 4;
const ENTRY_HEADER_LEN: usize = 12;
/// Largest payload of one log entry, in bytes, for the writer and the reader
/// alike (see the [crate docs](crate#entry-size-limit) for why this value).
pub const ENTRY_LEN_MAX: usize = u32::MAX as usize;
// A checkpoint snapshot of more than 1 GiB fits.
const _: () = assert!(ENTRY_LEN_MAX > 1 << 30);
const LOG_FILE: &str = "records.log";
const LOCK_FILE: &str = "LOCK";
/// The init marker's file name.
pub const INIT_MARKER: &str = "PBFT-INIT";

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
    /// The directory was never initialised (no marker, no log).
    #[error(
        "{dir}: not an initialised data directory (no {INIT_MARKER} marker and no {LOG_FILE}); \
         initialise it once with `pbft-node --init --config <node file>` (or `pbft testnet`); \
         if this replica ran before, its log is lost and it must not rejoin with an empty one"
    )]
    NotInitialised {
        /// The data directory.
        dir: PathBuf,
    },
    /// [`Storage::init`] on a directory that already holds a marker or a log.
    #[error("{path}: already exists; refusing to initialise the data directory again")]
    AlreadyInitialised {
        /// The marker or log that exists.
        path: PathBuf,
    },
    /// A record too large for the log format.
    #[error(
        "a record of {len} bytes exceeds the record log's entry limit of {max} bytes; \
         nothing was written"
    )]
    EntryTooLarge {
        /// The record's encoded size.
        len: usize,
        /// The limit.
        max: usize,
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
    /// [`ENTRY_LEN_MAX`], lowered by tests.
    entry_len_max: usize,
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

fn marker_text(cluster: u64, replica: ReplicaId) -> String {
    format!(
        "pbft data directory v2\ncluster {cluster}\nreplica {}\n",
        replica.0
    )
}

/// Options for a data file: created with mode 0600 (owner only) on Unix.
fn private_file() -> OpenOptions {
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
}

/// Creates `dir` (mode 0700 on Unix for what it creates) and its parents.
fn create_dir(dir: &Path) -> Result<(), StorageError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(io_err(dir))
}

/// Appends one entry for `record` to `out`, or refuses a payload above `max`.
fn encode_entry(record: &Record, out: &mut Vec<u8>, max: usize) -> Result<(), StorageError> {
    // Plain data into a Vec cannot fail.
    let payload = postcard::to_stdvec(record).unwrap_or_default();
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|_| payload.len() <= max)
        .ok_or(StorageError::EntryTooLarge {
            len: payload.len(),
            max,
        })?;
    let mut head = [0u8; ENTRY_HEADER_LEN];
    head[..4].copy_from_slice(&len.to_le_bytes());
    head[4..8].copy_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    let head_crc = crc32fast::hash(&head[..8]);
    head[8..].copy_from_slice(&head_crc.to_le_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(&payload);
    Ok(())
}

/// Takes the lock of `dir`'s data directory.
fn lock(dir: &Path) -> Result<File, StorageError> {
    let lock_path = dir.join(LOCK_FILE);
    let lock = private_file()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_err(&lock_path))?;
    if lock.try_lock().is_err() {
        return Err(StorageError::Locked { path: lock_path });
    }
    Ok(lock)
}

impl Storage {
    /// Makes `dir` the data directory of `replica` of `cluster`: creates it
    /// if needed, writes an empty log and then the init marker, each durably.
    /// Refuses a directory that already holds a marker or a log.
    pub fn init(dir: &Path, cluster: u64, replica: ReplicaId) -> Result<(), StorageError> {
        create_dir(dir)?;
        let _lock = lock(dir)?;
        for name in [INIT_MARKER, LOG_FILE] {
            let path = dir.join(name);
            if path.exists() {
                return Err(StorageError::AlreadyInitialised { path });
            }
        }
        write_file(dir, LOG_FILE, &header(cluster, replica), &[], ENTRY_LEN_MAX)?;
        write_marker(dir, cluster, replica)
    }

    /// Opens the log in the initialised data directory `dir` (see
    /// [`Storage::init`]) for `replica` of `cluster`, and returns the records
    /// to restore from.
    pub fn open(
        dir: &Path,
        cluster: u64,
        replica: ReplicaId,
    ) -> Result<(Storage, Vec<Record>), StorageError> {
        Storage::open_with_limit(dir, cluster, replica, ENTRY_LEN_MAX)
    }

    fn open_with_limit(
        dir: &Path,
        cluster: u64,
        replica: ReplicaId,
        entry_len_max: usize,
    ) -> Result<(Storage, Vec<Record>), StorageError> {
        if !dir.is_dir() {
            return Err(StorageError::NotInitialised {
                dir: dir.to_path_buf(),
            });
        }
        let lock = lock(dir)?;
        let path = dir.join(LOG_FILE);
        let marker = dir.join(INIT_MARKER);
        let has_marker = marker.exists();
        if !path.exists() {
            if has_marker {
                return Err(StorageError::Corrupted {
                    path,
                    offset: 0,
                    reason: format!(
                        "the log is missing although {} says the directory was initialised; \
                         starting empty could make this replica contradict what it sent before",
                        marker.display()
                    ),
                });
            }
            return Err(StorageError::NotInitialised {
                dir: dir.to_path_buf(),
            });
        }
        if has_marker {
            check_marker(&marker, cluster, replica)?;
        }
        let records = read_log(&path, cluster, replica, entry_len_max)?;
        if !has_marker {
            tracing::warn!(dir = %dir.display(), "the data directory has a log but no init marker (interrupted init?); writing the marker");
            write_marker(dir, cluster, replica)?;
        }
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
                entry_len_max,
                _lock: lock,
            },
            records,
        ))
    }

    /// Appends `records` and makes them durable with one fsync. After a
    /// stable checkpoint, rewrites the log without what it no longer needs.
    ///
    /// A record above [`ENTRY_LEN_MAX`] fails with
    /// [`StorageError::EntryTooLarge`] before anything of `records` is written.
    pub fn append(&mut self, records: &[Record]) -> Result<(), StorageError> {
        if records.is_empty() {
            return Ok(());
        }
        let path = self.dir.join(LOG_FILE);
        let mut bytes = Vec::new();
        for r in records {
            encode_entry(r, &mut bytes, self.entry_len_max)?;
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
            LOG_FILE,
            &header(self.cluster, self.replica),
            &self.live,
            self.entry_len_max,
        )?;
        self.file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        Ok(())
    }
}

/// Reads records from the bytes of a log file, for tools and fuzzing: the
/// same checks as [`Storage::open`] (header for `cluster` and `replica`,
/// checksums, torn tail), without touching any file. Returns the records and
/// the length of the valid prefix (shorter than `bytes` if the tail was torn).
pub fn decode_log(
    bytes: &[u8],
    cluster: u64,
    replica: ReplicaId,
) -> Result<(Vec<Record>, usize), StorageError> {
    decode(Path::new(LOG_FILE), bytes, cluster, replica, ENTRY_LEN_MAX)
}

fn write_marker(dir: &Path, cluster: u64, replica: ReplicaId) -> Result<(), StorageError> {
    let tmp = dir.join(format!("{INIT_MARKER}.tmp"));
    let path = dir.join(INIT_MARKER);
    {
        let mut file = private_file()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        file.write_all(marker_text(cluster, replica).as_bytes())
            .map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
    }
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

fn check_marker(path: &Path, cluster: u64, replica: ReplicaId) -> Result<(), StorageError> {
    let mut text = Vec::new();
    File::open(path)
        .and_then(|f| f.take(4096).read_to_end(&mut text))
        .map_err(io_err(path))?;
    if text != marker_text(cluster, replica).as_bytes() {
        return Err(StorageError::Corrupted {
            path: path.to_path_buf(),
            offset: 0,
            reason: format!(
                "the init marker is not for cluster {cluster}, replica {} (or is damaged)",
                replica.0
            ),
        });
    }
    Ok(())
}

/// Writes a whole log atomically: temporary file, fsync, rename, fsync the
/// directory. Nothing is renamed if a record is refused.
fn write_file(
    dir: &Path,
    name: &str,
    header: &[u8],
    records: &[Record],
    entry_len_max: usize,
) -> Result<(), StorageError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    {
        let file = private_file()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        let mut w = BufWriter::new(file);
        w.write_all(header).map_err(io_err(&tmp))?;
        let mut bytes = Vec::new();
        for r in records {
            bytes.clear();
            encode_entry(r, &mut bytes, entry_len_max)?;
            w.write_all(&bytes).map_err(io_err(&tmp))?;
        }
        let file = w.into_inner().map_err(|e| io_err(&tmp)(e.into_error()))?;
        file.sync_all().map_err(io_err(&tmp))?;
    }
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    Ok(())
}

fn read_log(
    path: &Path,
    cluster: u64,
    replica: ReplicaId,
    entry_len_max: usize,
) -> Result<Vec<Record>, StorageError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io_err(path))?;
    let (records, valid) = decode(path, &bytes, cluster, replica, entry_len_max)?;
    if valid < bytes.len() {
        truncate_torn(path, valid)?;
    }
    Ok(records)
}

/// One entry's header, checked.
struct EntryHeader {
    len: usize,
    crc: u32,
}

/// The header of the entry at the start of `rest`, if its checksum holds.
fn entry_header(rest: &[u8]) -> Option<EntryHeader> {
    let head = rest.get(..ENTRY_HEADER_LEN)?;
    let word = |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
    if crc32fast::hash(&head[..8]) != word(8) {
        return None;
    }
    Some(EntryHeader {
        len: word(0) as usize,
        crc: word(4),
    })
}

/// Whether a whole valid entry (header and payload checksums) starts at any
/// offset of `rest`.
fn valid_entry_follows(rest: &[u8], entry_len_max: usize) -> bool {
    (0..rest.len()).any(|i| {
        let Some(h) = entry_header(&rest[i..]) else {
            return false;
        };
        h.len <= entry_len_max
            && rest.len() - i - ENTRY_HEADER_LEN >= h.len
            && crc32fast::hash(&rest[i + ENTRY_HEADER_LEN..i + ENTRY_HEADER_LEN + h.len]) == h.crc
    })
}

fn decode(
    path: &Path,
    bytes: &[u8],
    cluster: u64,
    replica: ReplicaId,
    entry_len_max: usize,
) -> Result<(Vec<Record>, usize), StorageError> {
    let corrupted = |offset: usize, reason: String| StorageError::Corrupted {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    if bytes.len() >= 8 && &bytes[..8] == MAGIC_V1 {
        return Err(corrupted(
            0,
            "record log format v1 (PBFTLOG1), written by an older version; this version \
             reads PBFTLOG2 only"
                .into(),
        ));
    }
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
            return Ok(torn(path, at, records, "a partial entry header"));
        }
        let Some(h) = entry_header(rest) else {
            if valid_entry_follows(&rest[1..], entry_len_max) {
                return Err(corrupted(
                    at,
                    "damaged entry header followed by valid entries".into(),
                ));
            }
            return Ok(torn(path, at, records, "a damaged last entry header"));
        };
        if h.len > entry_len_max {
            return Err(corrupted(
                at,
                format!(
                    "entry of {} bytes exceeds the limit of {entry_len_max} bytes",
                    h.len
                ),
            ));
        }
        let end = ENTRY_HEADER_LEN + h.len;
        if rest.len() < end {
            return Ok(torn(path, at, records, "a partial last entry"));
        }
        let payload = &rest[ENTRY_HEADER_LEN..end];
        if crc32fast::hash(payload) != h.crc {
            if valid_entry_follows(&rest[end..], entry_len_max) {
                return Err(corrupted(
                    at,
                    "checksum mismatch, and valid entries follow".into(),
                ));
            }
            return Ok(torn(path, at, records, "a last entry with a bad checksum"));
        }
        let record: Record = postcard::from_bytes(payload)
            .map_err(|e| corrupted(at, format!("undecodable record: {e}")))?;
        records.push(record);
        at += end;
    }
    Ok((records, at))
}

fn torn(path: &Path, at: usize, records: Vec<Record>, what: &str) -> (Vec<Record>, usize) {
    tracing::warn!(path = %path.display(), offset = at, what, "discarding a torn last record (crash during write)");
    (records, at)
}

/// Cuts off a last entry torn by a crash.
fn truncate_torn(path: &Path, at: usize) -> Result<(), StorageError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    file.set_len(at as u64).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))?;
    Ok(())
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

    fn checkpoint_of(seq: u64, len: usize) -> Record {
        let snapshot = vec![seq as u8; len];
        Record::Checkpoint(
            CheckpointProof {
                seq: SeqNum(seq),
                digest: Digest::of(&snapshot),
                checkpoints: vec![],
            },
            snapshot,
        )
    }

    fn checkpoint(seq: u64) -> Record {
        checkpoint_of(seq, 10)
    }

    /// An initialised, opened data directory.
    fn fresh() -> (tempfile::TempDir, Storage) {
        let dir = tempfile::tempdir().expect("tempdir");
        Storage::init(dir.path(), 1, ReplicaId(0)).expect("init");
        let (s, records) = Storage::open(dir.path(), 1, ReplicaId(0)).expect("open");
        assert!(records.is_empty());
        (dir, s)
    }

    fn log_path(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join(LOG_FILE)
    }

    fn reopen(dir: &tempfile::TempDir) -> Result<Vec<Record>, StorageError> {
        Storage::open(dir.path(), 1, ReplicaId(0)).map(|(_, r)| r)
    }

    /// The byte offsets at which each entry of the log starts.
    fn entry_offsets(bytes: &[u8]) -> Vec<usize> {
        let mut at = HEADER_LEN;
        let mut out = Vec::new();
        while at < bytes.len() {
            out.push(at);
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
            at += ENTRY_HEADER_LEN + len as usize;
        }
        out
    }

    #[test]
    fn round_trip() {
        let (dir, mut s) = fresh();
        s.append(&[pre_prepare(1), pre_prepare(2)]).expect("append");
        s.append(&[pre_prepare(3)]).expect("append");
        drop(s);
        assert_eq!(
            reopen(&dir).expect("reopen"),
            vec![pre_prepare(1), pre_prepare(2), pre_prepare(3)]
        );
    }

    #[test]
    fn compaction_keeps_what_restart_needs() {
        let (dir, mut s) = fresh();
        for seq in 1..=5 {
            s.append(&[pre_prepare(seq)]).expect("append");
        }
        s.append(&[checkpoint(4)]).expect("append");
        assert_eq!(s.live_records(), 2);
        drop(s);
        assert_eq!(
            reopen(&dir).expect("reopen"),
            vec![pre_prepare(5), checkpoint(4)]
        );
    }

    #[test]
    fn torn_tail_is_cut_off() {
        let (dir, mut s) = fresh();
        s.append(&[pre_prepare(1), pre_prepare(2)]).expect("append");
        drop(s);
        let path = log_path(&dir);
        let len = fs::metadata(&path).expect("meta").len();
        let f = OpenOptions::new().write(true).open(&path).expect("open");
        f.set_len(len - 3).expect("truncate");
        assert_eq!(reopen(&dir).expect("reopen"), vec![pre_prepare(1)]);
        // The torn bytes are gone for good: the next append follows the valid prefix.
        let (mut s, _) = Storage::open(dir.path(), 1, ReplicaId(0)).expect("open");
        s.append(&[pre_prepare(3)]).expect("append");
        drop(s);
        assert_eq!(
            reopen(&dir).expect("reopen"),
            vec![pre_prepare(1), pre_prepare(3)]
        );
    }

    #[test]
    fn full_length_last_entry_with_bad_checksum_is_torn() {
        let (dir, mut s) = fresh();
        s.append(&[pre_prepare(1), pre_prepare(2)]).expect("append");
        drop(s);
        let path = log_path(&dir);
        let mut bytes = fs::read(&path).expect("read");
        let last = *entry_offsets(&bytes).last().expect("entries");
        // A torn sector inside the last entry's payload: full length, bad checksum.
        let n = bytes.len();
        bytes[last + ENTRY_HEADER_LEN + 3..n].fill(0);
        fs::write(&path, &bytes).expect("write");
        assert_eq!(
            reopen(&dir).expect("torn, not corrupted"),
            vec![pre_prepare(1)]
        );
        assert_eq!(fs::metadata(&path).expect("meta").len(), last as u64);
    }

    #[test]
    fn zero_filled_tail_is_torn() {
        let (dir, mut s) = fresh();
        s.append(&[pre_prepare(1)]).expect("append");
        drop(s);
        let path = log_path(&dir);
        let mut bytes = fs::read(&path).expect("read");
        let valid = bytes.len();
        // Blocks the file system allocated for an append but never wrote.
        bytes.extend_from_slice(&[0; 4096]);
        fs::write(&path, &bytes).expect("write");
        assert_eq!(reopen(&dir).expect("torn"), vec![pre_prepare(1)]);
        assert_eq!(fs::metadata(&path).expect("meta").len(), valid as u64);
    }

    #[test]
    fn bad_checksum_followed_by_valid_entries_is_corruption() {
        let (dir, mut s) = fresh();
        s.append(&[pre_prepare(1), pre_prepare(2), pre_prepare(3)])
            .expect("append");
        drop(s);
        let path = log_path(&dir);
        let mut bytes = fs::read(&path).expect("read");
        let second = entry_offsets(&bytes)[1];
        bytes[second + ENTRY_HEADER_LEN + 5] ^= 0x10;
        fs::write(&path, &bytes).expect("write");
        let err = reopen(&dir).expect_err("must fail");
        assert!(matches!(err, StorageError::Corrupted { .. }), "{err}");
        assert!(err.to_string().contains("checksum"), "{err}");
        // Nothing was cut.
        assert_eq!(fs::read(&path).expect("read"), bytes);
    }

    #[test]
    fn flipped_bit_in_a_length_is_corruption_not_a_torn_tail() {
        let (dir, mut s) = fresh();
        s.append(&[pre_prepare(1), pre_prepare(2), pre_prepare(3)])
            .expect("append");
        drop(s);
        let path = log_path(&dir);
        let mut bytes = fs::read(&path).expect("read");
        let second = entry_offsets(&bytes)[1];
        // The length now points far past the end of the file.
        bytes[second + 2] ^= 0x01;
        fs::write(&path, &bytes).expect("write");
        let err = reopen(&dir).expect_err("must fail");
        assert!(
            matches!(err, StorageError::Corrupted { offset, .. } if offset == second as u64),
            "{err}"
        );
    }

    #[test]
    fn checksummed_but_undecodable_entry_is_corruption() {
        let (dir, s) = fresh();
        drop(s);
        let path = log_path(&dir);
        let mut bytes = fs::read(&path).expect("read");
        let payload = [0xffu8; 7];
        let mut head = [0u8; ENTRY_HEADER_LEN];
        head[..4].copy_from_slice(&7u32.to_le_bytes());
        head[4..8].copy_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        let head_crc = crc32fast::hash(&head[..8]);
        head[8..].copy_from_slice(&head_crc.to_le_bytes());
        bytes.extend_from_slice(&head);
        bytes.extend_from_slice(&payload);
        fs::write(&path, &bytes).expect("write");
        let err = reopen(&dir).expect_err("must fail");
        assert!(err.to_string().contains("undecodable"), "{err}");
    }

    #[test]
    fn writer_refuses_what_the_reader_would_refuse() {
        let dir = tempfile::tempdir().expect("tempdir");
        Storage::init(dir.path(), 1, ReplicaId(0)).expect("init");
        let limit = 200;
        let (mut s, _) =
            Storage::open_with_limit(dir.path(), 1, ReplicaId(0), limit).expect("open");
        s.append(&[pre_prepare(1)]).expect("small record");
        let big = checkpoint_of(2, limit + 1);
        let err = s
            .append(&[pre_prepare(2), big.clone()])
            .expect_err("above the limit");
        assert!(
            matches!(err, StorageError::EntryTooLarge { max, .. } if max == limit),
            "{err}"
        );
        drop(s);
        // Nothing of the refused group was written; the log still opens.
        let (_, records) =
            Storage::open_with_limit(dir.path(), 1, ReplicaId(0), limit).expect("reopen");
        assert_eq!(records, vec![pre_prepare(1)]);

        // The reader, with the same limit, refuses such an entry.
        let (mut s, _) = Storage::open(dir.path(), 1, ReplicaId(0)).expect("open");
        s.append(&[pre_prepare(3)]).expect("small");
        let mut bytes = Vec::new();
        encode_entry(&big, &mut bytes, ENTRY_LEN_MAX).expect("encodes under the real limit");
        s.file.write_all(&bytes).expect("raw write");
        s.append(&[pre_prepare(4)]).expect("small");
        drop(s);
        let err = Storage::open_with_limit(dir.path(), 1, ReplicaId(0), limit)
            .err()
            .expect("must fail");
        assert!(err.to_string().contains("exceeds the limit"), "{err}");
    }

    #[test]
    fn writer_refusal_holds_for_compaction_too() {
        let dir = tempfile::tempdir().expect("tempdir");
        Storage::init(dir.path(), 1, ReplicaId(0)).expect("init");
        let (mut s, _) = Storage::open_with_limit(dir.path(), 1, ReplicaId(0), 100).expect("open");
        let err = s.append(&[checkpoint_of(4, 500)]).expect_err("too large");
        assert!(matches!(err, StorageError::EntryTooLarge { .. }), "{err}");
        assert!(!dir.path().join(format!("{LOG_FILE}.tmp")).exists());
    }

    #[test]
    fn flipped_bit_is_corruption() {
        let (dir, mut s) = fresh();
        s.append(&[pre_prepare(1), pre_prepare(2)]).expect("append");
        drop(s);
        let path = log_path(&dir);
        let mut bytes = fs::read(&path).expect("read");
        bytes[HEADER_LEN + ENTRY_HEADER_LEN + 5] ^= 0x10;
        fs::write(&path, bytes).expect("write");
        let err = reopen(&dir).expect_err("must fail");
        assert!(matches!(err, StorageError::Corrupted { .. }), "{err}");
        assert!(err.to_string().contains("checksum"));
    }

    #[test]
    fn other_replica_or_garbage_is_refused() {
        let (dir, s) = fresh();
        drop(s);
        let err = Storage::open(dir.path(), 1, ReplicaId(2))
            .err()
            .expect("other replica");
        assert!(matches!(err, StorageError::Corrupted { .. }), "{err}");
        fs::write(log_path(&dir), b"hello").expect("write");
        assert!(matches!(reopen(&dir), Err(StorageError::Corrupted { .. })));
        let mut v1 = b"PBFTLOG1".to_vec();
        v1.extend_from_slice(&[0; 12]);
        fs::write(log_path(&dir), v1).expect("write");
        let err = reopen(&dir).expect_err("v1");
        assert!(err.to_string().contains("older version"), "{err}");
    }

    #[test]
    fn second_opener_is_locked_out() {
        let (dir, _first) = fresh();
        assert!(matches!(
            Storage::open(dir.path(), 1, ReplicaId(0)),
            Err(StorageError::Locked { .. })
        ));
    }

    #[test]
    fn uninitialised_directory_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = Storage::open(dir.path(), 1, ReplicaId(0))
            .err()
            .expect("empty dir");
        assert!(matches!(err, StorageError::NotInitialised { .. }), "{err}");
        assert!(err.to_string().contains("--init"), "{err}");
        assert!(!log_path(&dir).exists(), "open must not create a log");
        let missing = dir.path().join("nope");
        let err = Storage::open(&missing, 1, ReplicaId(0))
            .err()
            .expect("no dir");
        assert!(matches!(err, StorageError::NotInitialised { .. }), "{err}");
        assert!(!missing.exists(), "open must not create the directory");
    }

    #[test]
    fn marker_without_log_is_corruption() {
        let (dir, mut s) = fresh();
        s.append(&[pre_prepare(1)]).expect("append");
        drop(s);
        fs::remove_file(log_path(&dir)).expect("lose the log");
        let err = reopen(&dir).expect_err("must fail");
        assert!(matches!(err, StorageError::Corrupted { .. }), "{err}");
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn log_without_marker_is_accepted_and_the_marker_written() {
        let (dir, mut s) = fresh();
        s.append(&[pre_prepare(1)]).expect("append");
        drop(s);
        fs::remove_file(dir.path().join(INIT_MARKER)).expect("as if init was cut short");
        assert_eq!(reopen(&dir).expect("open"), vec![pre_prepare(1)]);
        assert!(dir.path().join(INIT_MARKER).exists());
    }

    #[test]
    fn marker_of_another_replica_is_refused() {
        let (dir, s) = fresh();
        drop(s);
        fs::write(dir.path().join(INIT_MARKER), marker_text(1, ReplicaId(3))).expect("write");
        let err = reopen(&dir).expect_err("must fail");
        assert!(err.to_string().contains("init marker"), "{err}");
    }

    #[test]
    fn init_twice_is_refused() {
        let (dir, s) = fresh();
        drop(s);
        let err = Storage::init(dir.path(), 1, ReplicaId(0)).expect_err("twice");
        assert!(
            matches!(err, StorageError::AlreadyInitialised { .. }),
            "{err}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn data_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, mut s) = fresh();
        s.append(&[pre_prepare(1), checkpoint(1)])
            .expect("append and compact");
        for name in [LOG_FILE, INIT_MARKER, LOCK_FILE] {
            let mode = fs::metadata(dir.path().join(name))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}: {mode:o}");
        }
        let nested = dir.path().join("a/b");
        Storage::init(&nested, 1, ReplicaId(0)).expect("init");
        let mode = fs::metadata(&nested).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{mode:o}");
    }

    #[test]
    fn decode_log_matches_open() {
        let (dir, mut s) = fresh();
        s.append(&[pre_prepare(1), pre_prepare(2)]).expect("append");
        drop(s);
        let bytes = fs::read(log_path(&dir)).expect("read");
        let (records, valid) = decode_log(&bytes, 1, ReplicaId(0)).expect("decode");
        assert_eq!(records, vec![pre_prepare(1), pre_prepare(2)]);
        assert_eq!(valid, bytes.len());
        let (records, valid) =
            decode_log(&bytes[..bytes.len() - 1], 1, ReplicaId(0)).expect("torn");
        assert_eq!(records, vec![pre_prepare(1)]);
        assert!(valid < bytes.len() - 1);
    }
}
