//! The durable record log of one replica.
//!
//! The core says what must survive a crash ([`pbft_core::Record`]) and when
//! (before the messages that follow it leave the node). This crate makes it
//! so. [`Storage::append`] writes one group of records and makes it durable
//! with one `fdatasync`; a [`LogWriter`] does the same on a thread of its
//! own, for every group queued while the previous write ran (pipelined group
//! commit: the caller goes on and learns by a callback how far the log is
//! durable). [`Storage::open`] reads the records back for
//! [`pbft_core::Replica::restore`].
//!
//! # The data directory
//! ```text
//! <data dir>/                   mode 0700 when this crate creates it
//!   PBFT-INIT                   the init marker (mode 0600): "pbft data directory v2\ncluster <id>\nreplica <id>\n"
//!   log-<20 digit id>.seg       the log's segments, read in id order (mode 0600)
//!   log-<20 digit id>.seg.tmp   a segment being made (removed at open: a crash left it)
//!   LOCK                        held (flock) by the process that has the directory open
//! ```
//! A data directory is made once, explicitly, by [`Storage::init`] (`pbft
//! testnet` and `pbft-node --init` call it): it writes an empty first segment
//! and then the marker. [`Storage::open`] never creates one. A replica that
//! restarted with an empty log could vote against what it voted before
//! (amnesia), so:
//! * no marker and no segment: [`StorageError::NotInitialised`];
//! * a marker but no segment: [`StorageError::Corrupted`] (the log was lost);
//! * a segment but no marker (a crash inside `init`, between the two
//!   writes): the segment's header names the cluster and replica, so it is
//!   opened and the marker written.
//!
//! A `records.log` (the single-file log of older versions, `PBFTLOG1` or
//! `PBFTLOG2`) is refused with [`StorageError::Corrupted`] naming its format,
//! and so is a segment of format 3 (`PBFTLOG3`, whose requests did not name
//! their repliers).
//!
//! # File format (one segment)
//! ```text
//! header:  "PBFTLOG4" | cluster id (u64 LE) | replica id (u32 LE) | segment id (u64 LE)
//!          | covers_from (u64 LE) | crc32 of the 36 bytes before (u32 LE)
//! entry*:  length (u32 LE) | crc32 of payload (u32 LE) | crc32 of the 8 bytes before (u32 LE)
//!          | payload (postcard Record, `length` bytes)
//! zeros:   up to the preallocated size
//! ```
//! The entry header carries its own checksum so that a damaged length is
//! recognised as damaged rather than trusted (a flipped high bit would
//! otherwise make a mid-file entry look like one that runs past the end of the
//! file, and the reader would cut every record after it as "torn").
//!
//! # Segments and preallocation
//! A segment is made at its full size ([`Options::segment_bytes`]) before
//! the first record goes in: written with zeros under a `.tmp` name, synced,
//! renamed into place, directory synced. Appends then overwrite zeros inside
//! a file whose size and blocks are already durable, so the `fdatasync`
//! after each append has no metadata to write (zeros are written rather than
//! `fallocate`d: an allocated-but-unwritten extent turns into a written one
//! on the first write, which is a metadata change). Records that do not
//! fit in what is left go on in the next segment (id + 1): the full segment
//! is synced first, so a crash keeps a prefix of what was being written, as
//! a torn tail would, and a large group (a rejoining replica's snapshot
//! pages) is spread over segments of their normal size rather than made
//! one huge segment that compaction would later copy at once. Only a single
//! record larger than a segment grows its segment past the preallocated
//! size.
//!
//! # Compaction: deleting segments
//! After a group that moves the stable checkpoint ([`pbft_core::io::compacts`])
//! the log drops what a restart no longer needs ([`pbft_core::io::retained`],
//! the records [`pbft_core::io::compact`] keeps), without rewriting the log:
//! * the newest segment (still appended to) is left as it is;
//! * the oldest older segments that hold no retained record are deleted;
//! * of the rest, runs of consecutive segments `x..=y` are replaced by a
//!   *compacted* segment holding their retained records (typically the last
//!   view change and new view, and the pages of the snapshots kept), in
//!   order: its id is `y` and its header says `covers_from` = where `x`'s
//!   did (`x` itself unless `x` was compacted before). It is made under a
//!   `.tmp` name, synced and renamed over segment `y`; then segments `x..y`
//!   are deleted, oldest first;
//! * a run is compacted only if it frees at least as many bytes of records
//!   a restart no longer needs as it copies retained ones. A snapshot's
//!   pages stay retained while the state does not change them, so copying
//!   them whenever anything could go would cost the size of the state at
//!   every checkpoint (a 1 GiB state copied every 16 requests); this way
//!   each byte copied frees at least one byte that appends put there, so
//!   compaction copies at most as much as is appended, and the older
//!   segments hold at most about twice what they retain. A small compacted
//!   segment at the start of a run is copied again with the garbage after
//!   it (within that bound: at most about 2x write amplification; skipping
//!   it would let small compacted segments pile up instead);
//! * one compaction copies at most [`COMPACTION_BYTES_MAX`] (32 MiB; more
//!   only if one segment alone carries more) and leaves the rest to the
//!   next: compaction runs on the log writer, between appends, so this
//!   bounds how long an append waits for it. From the oldest segment on, it
//!   takes the longest run that frees enough within what is left of the
//!   bound, then goes on from the segment after it.
//!
//! The records in the directory are then always the records ever appended
//! minus some that `compact` drops, in order: restoring from them gives the
//! same replica as restoring from all of them (`compact` keeps, of any such
//! subsequence, exactly what it keeps of the whole; so the simulator, which
//! models a node's log with `compact`, restarts replicas as a node would).
//!
//! A crash in compaction leaves one of: the `.tmp` segment (removed at
//! open); the compacted segment beside some of the segments it replaces
//! (open deletes the segments `covers_from..id` of every compacted segment:
//! no record is read twice); or some of the deleted older segments still
//! there, holding only records `compact` drops. Ids are contiguous from the
//! oldest segment on (a compacted segment counts for the ids it covers): a
//! missing id is [`StorageError::Corrupted`], not a shorter log.
//!
//! # Entry size limit
//! One limit, [`ENTRY_LEN_MAX`], binds the writer and the reader: an append
//! refuses (with [`StorageError::EntryTooLarge`], before writing anything) a
//! record the reader would refuse, so the log can always be read back. It is
//! the largest length the u32 field holds, 4 GiB − 1. No record comes near
//! it in practice: a snapshot is persisted as pages of at most 1 MiB
//! (`Record::Page`, each written once) and a list of their digests (32
//! bytes a page, 32 MiB for the largest state of 2^20 pages), so the state
//! can grow past any one entry. Reading the log back at start holds its
//! records in memory: about the kept snapshots' pages plus the window.

//! # Integrity
//! * Only one write is ever unsynced: the writer syncs a group (or a batch
//!   of groups) before it writes the next, and syncs a segment before it
//!   starts the next. So only the newest segment may end torn.
//! * A torn last entry of the newest segment (a crash during the write; its
//!   records were never acknowledged, so nothing that depended on them was
//!   sent) is cleared (overwritten with zeros) with a warning. Torn means
//!   one of: fewer bytes left than an entry header; an intact entry header
//!   whose payload runs past the end of the file; or a damaged entry (bad
//!   header checksum, or bad payload checksum) with no valid entry anywhere
//!   after it (a torn sector, or zeros).
//! * A damaged entry followed by a valid one, an entry whose checksum holds
//!   but which does not decode, anything but zeros after the last entry of a
//!   segment older than the newest, a wrong or damaged segment header, a
//!   segment written for another cluster or replica, or a missing segment is
//!   corruption: `open` fails with [`StorageError::Corrupted`] and the node
//!   stops rather than join with invented state.
//! * A lock file keeps two nodes from sharing one data directory.
//!
//! # Durability
//! [`Options::sync`] (the default) syncs every append before it counts as
//! durable. Without it appends are only written (to the page cache): a
//! process crash loses nothing, but an OS crash or power loss can lose the
//! last records or leave the log unreadable; if more than f replicas lose
//! theirs at once, agreement can be lost. For benchmarks only. Segment
//! creation and compaction sync either way.

mod segment;
#[cfg(test)]
mod tests;
mod writer;

pub use segment::segment_file_name;
pub use writer::{LogWriter, Notify, Progress};

use pbft_core::io::{compacts, retained};
use pbft_core::{Record, ReplicaId};
use segment::{Header, HEADER_LEN};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Largest payload of one log entry, in bytes, for the writer and the reader
/// alike (see the [crate docs](crate#entry-size-limit) for why this value).
pub const ENTRY_LEN_MAX: usize = u32::MAX as usize;
// A checkpoint snapshot of more than 1 GiB fits.
const _: () = assert!(ENTRY_LEN_MAX > 1 << 30);
const LOCK_FILE: &str = "LOCK";
/// The single-file log of older versions, refused.
const OLD_LOG_FILE: &str = "records.log";
/// The init marker's file name.
pub const INIT_MARKER: &str = "PBFT-INIT";
/// Zeros are written in chunks of this size when a segment is made.
const ZERO_CHUNK: usize = 1 << 20;

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
        "{dir}: not an initialised data directory (no {INIT_MARKER} marker and no log \
         segment); initialise it once with `pbft-node --init --config <node file>` (or `pbft \
         testnet`); if this replica ran before, its log is lost and it must not rejoin with an \
         empty one"
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
    /// The [`LogWriter`] stopped after an earlier failure (reported then).
    #[error("the record log writer stopped after an earlier failure")]
    WriterStopped,
}

/// How a log is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Sync (`fdatasync`) every append before it counts as durable. See the
    /// [crate docs](crate#durability) before turning it off.
    pub sync: bool,
    /// The preallocated size of a segment, in bytes.
    pub segment_bytes: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            sync: true,
            segment_bytes: 8 << 20,
        }
    }
}

/// Counters of one log since it was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Groups of records appended.
    pub groups: u64,
    /// Writes (one per append, or per batch of groups of a [`LogWriter`]).
    pub writes: u64,
    /// `fdatasync`s of appended records (0 without [`Options::sync`]).
    pub syncs: u64,
    /// Bytes of entries appended.
    pub bytes: u64,
    /// Segments made (rollovers and compacted segments).
    pub segments_created: u64,
    /// Segments deleted by compaction.
    pub segments_deleted: u64,
    /// Bytes of retained entries compaction copied into compacted segments.
    pub compacted_bytes: u64,
    /// Time spent writing appended records and syncing them (with
    /// [`Options::sync`]), in nanoseconds; segment creation and compaction
    /// are not counted.
    pub write_nanos: u64,
}

/// What one segment holds.
#[derive(Clone, Copy, Debug, Default)]
struct SegmentUse {
    /// Records.
    records: usize,
    /// Bytes of entries (headers included, the segment's header not).
    bytes: u64,
    /// The lowest id it stands for (its own unless it is compacted).
    covers_from: u64,
}

/// Most bytes one compaction copies (unless a single segment carries more):
/// it runs on the log writer, so this bounds how long appends wait for it.
pub const COMPACTION_BYTES_MAX: u64 = 32 << 20;

/// The segment being appended to.
struct Active {
    id: u64,
    file: File,
    /// Where the next entry goes.
    len: u64,
}

/// The record log of one replica.
pub struct Storage {
    dir: PathBuf,
    cluster: u64,
    replica: ReplicaId,
    options: Options,
    active: Active,
    /// Every segment in the directory, by id: what it holds.
    segments: BTreeMap<u64, SegmentUse>,
    /// The records a restart needs (compacted), with the segment each is in.
    live: Vec<(u64, Record)>,
    stats: Stats,
    /// [`ENTRY_LEN_MAX`], lowered by tests.
    entry_len_max: usize,
    /// [`COMPACTION_BYTES_MAX`], lowered by tests.
    compaction_bytes_max: u64,
    _lock: File,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.to_path_buf(),
        source,
    }
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

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
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

/// Makes a segment durably: `header`, then `body`, then zeros up to
/// `size` bytes, under a `.tmp` name, synced, renamed into place (over a
/// segment of the same id, if there is one), directory synced. Returns the
/// file, open for writing.
fn make_segment(dir: &Path, header: &Header, body: &[u8], size: u64) -> Result<File, StorageError> {
    let tmp = segment::temporary_path(dir, header.id);
    let path = segment::path(dir, header.id);
    let mut file = private_file()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    file.write_all(&header.encode()).map_err(io_err(&tmp))?;
    file.write_all(body).map_err(io_err(&tmp))?;
    let mut written = (HEADER_LEN + body.len()) as u64;
    let zeros = vec![0u8; ZERO_CHUNK];
    while written < size {
        let n = (size - written).min(ZERO_CHUNK as u64) as usize;
        file.write_all(&zeros[..n]).map_err(io_err(&tmp))?;
        written += n as u64;
    }
    file.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    sync_dir(dir)?;
    Ok(file)
}

/// Encodes `records` as entries, or refuses (writing nothing) one above `max`.
fn encode(records: &[Record], out: &mut Vec<u8>, max: usize) -> Result<(), StorageError> {
    for r in records {
        segment::encode_entry(r, out, max)?;
    }
    Ok(())
}

/// What the directory holds, by name.
#[derive(Default)]
struct Listing {
    segments: Vec<u64>,
    temporaries: Vec<PathBuf>,
    old_log: bool,
}

fn list(dir: &Path) -> Result<Listing, StorageError> {
    let mut listing = Listing::default();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(id) = segment::parse_file_name(name) {
            listing.segments.push(id);
        } else if segment::is_temporary(name) {
            listing.temporaries.push(entry.path());
        } else if name == OLD_LOG_FILE {
            listing.old_log = true;
        }
    }
    listing.segments.sort_unstable();
    Ok(listing)
}

/// Refuses the single-file log of an older version.
fn refuse_old_log(dir: &Path) -> StorageError {
    let path = dir.join(OLD_LOG_FILE);
    let mut magic = Vec::new();
    let read = File::open(&path).and_then(|f| f.take(8).read_to_end(&mut magic));
    let reason = match magic.get(..7) {
        Some(b"PBFTLOG") if read.is_ok() => segment::old_format(magic[7]),
        _ => format!(
            "{OLD_LOG_FILE} (the file name of older versions' log) is here but is not a PBFT \
             record log"
        ),
    };
    StorageError::Corrupted {
        path,
        offset: 0,
        reason,
    }
}

impl Storage {
    /// Makes `dir` the data directory of `replica` of `cluster` with the
    /// default [`Options`]: creates it if needed, writes an empty first
    /// segment and then the init marker, each durably. Refuses a directory
    /// that already holds a marker or a log.
    pub fn init(dir: &Path, cluster: u64, replica: ReplicaId) -> Result<(), StorageError> {
        Storage::init_with(dir, cluster, replica, &Options::default())
    }

    /// [`Storage::init`] with `options` (the first segment's size).
    pub fn init_with(
        dir: &Path,
        cluster: u64,
        replica: ReplicaId,
        options: &Options,
    ) -> Result<(), StorageError> {
        create_dir(dir)?;
        let _lock = lock(dir)?;
        let marker = dir.join(INIT_MARKER);
        if marker.exists() {
            return Err(StorageError::AlreadyInitialised { path: marker });
        }
        let listing = list(dir)?;
        if let Some(id) = listing.segments.first() {
            return Err(StorageError::AlreadyInitialised {
                path: segment::path(dir, *id),
            });
        }
        if listing.old_log {
            return Err(StorageError::AlreadyInitialised {
                path: dir.join(OLD_LOG_FILE),
            });
        }
        let header = Header {
            cluster,
            replica,
            id: 1,
            covers_from: 1,
        };
        make_segment(dir, &header, &[], options.segment_bytes)?;
        write_marker(dir, cluster, replica)
    }

    /// Opens the log in the initialised data directory `dir` (see
    /// [`Storage::init`]) for `replica` of `cluster` with the default
    /// [`Options`], and returns the records to restore from.
    pub fn open(
        dir: &Path,
        cluster: u64,
        replica: ReplicaId,
    ) -> Result<(Storage, Vec<Record>), StorageError> {
        Storage::open_with(dir, cluster, replica, Options::default())
    }

    /// [`Storage::open`] with `options`.
    pub fn open_with(
        dir: &Path,
        cluster: u64,
        replica: ReplicaId,
        options: Options,
    ) -> Result<(Storage, Vec<Record>), StorageError> {
        Storage::open_with_limit(dir, cluster, replica, options, ENTRY_LEN_MAX)
    }

    fn open_with_limit(
        dir: &Path,
        cluster: u64,
        replica: ReplicaId,
        options: Options,
        entry_len_max: usize,
    ) -> Result<(Storage, Vec<Record>), StorageError> {
        if !dir.is_dir() {
            return Err(StorageError::NotInitialised {
                dir: dir.to_path_buf(),
            });
        }
        let lock = lock(dir)?;
        let listing = list(dir)?;
        if listing.old_log {
            return Err(refuse_old_log(dir));
        }
        let marker = dir.join(INIT_MARKER);
        let has_marker = marker.exists();
        if listing.segments.is_empty() {
            if has_marker {
                return Err(StorageError::Corrupted {
                    path: dir.to_path_buf(),
                    offset: 0,
                    reason: format!(
                        "the log is missing (no log segment) although {} says the directory \
                         was initialised; starting empty could make this replica contradict \
                         what it sent before",
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
        for tmp in &listing.temporaries {
            tracing::warn!(path = %tmp.display(), "removing a segment a crash left half made");
            fs::remove_file(tmp).map_err(io_err(tmp))?;
        }
        let files = read_segments(dir, &listing.segments, cluster, replica)?;
        let files = drop_superseded(dir, files)?;
        let newest = files.last().map_or(0, |(id, _, _)| *id);
        let mut records = Vec::new();
        let mut ids = Vec::new();
        let mut segments = BTreeMap::new();
        let mut active_len = 0;
        for (id, bytes, header) in &files {
            let path = segment::path(dir, *id);
            let decoded = segment::decode(
                &path,
                bytes,
                cluster,
                replica,
                *id,
                *id == newest,
                entry_len_max,
            )?;
            if decoded.dirty > decoded.valid {
                clear_torn(&path, decoded.valid, decoded.dirty)?;
            }
            segments.insert(
                *id,
                SegmentUse {
                    records: decoded.records.len(),
                    bytes: (decoded.valid as u64).saturating_sub(HEADER_LEN as u64),
                    covers_from: header.covers_from,
                },
            );
            ids.extend(std::iter::repeat_n(*id, decoded.records.len()));
            records.extend(decoded.records);
            active_len = decoded.valid as u64;
        }
        if !has_marker {
            tracing::warn!(dir = %dir.display(), "the data directory has a log but no init marker (interrupted init?); writing the marker");
            write_marker(dir, cluster, replica)?;
        }
        let active_path = segment::path(dir, newest);
        let file = OpenOptions::new()
            .write(true)
            .open(&active_path)
            .map_err(io_err(&active_path))?;
        let keep = retained(&records);
        let live = ids
            .into_iter()
            .zip(records.iter().cloned())
            .zip(keep)
            .filter_map(|(entry, keep)| keep.then_some(entry))
            .collect();
        Ok((
            Storage {
                dir: dir.to_path_buf(),
                cluster,
                replica,
                options,
                active: Active {
                    id: newest,
                    file,
                    len: active_len,
                },
                segments,
                live,
                stats: Stats::default(),
                entry_len_max,
                compaction_bytes_max: COMPACTION_BYTES_MAX,
                _lock: lock,
            },
            records,
        ))
    }

    /// Appends `records` and makes them durable with one `fdatasync` (unless
    /// [`Options::sync`] is off). After a group that moves the stable
    /// checkpoint, deletes the segments a restart no longer needs (see the
    /// [crate docs](crate#compaction-deleting-segments)).
    ///
    /// A record above [`ENTRY_LEN_MAX`] fails with
    /// [`StorageError::EntryTooLarge`] before anything of `records` is written.
    pub fn append(&mut self, records: &[Record]) -> Result<(), StorageError> {
        if records.is_empty() {
            return Ok(());
        }
        self.write_groups(vec![records.to_vec()])?;
        if compacts(records) {
            self.compact()?;
        }
        Ok(())
    }

    /// How many records a restart would replay now, at least (the segments
    /// may still hold records compaction dropped; restoring from them gives
    /// the same replica).
    pub fn live_records(&self) -> usize {
        self.live.len()
    }

    /// How many segment files the log has.
    pub fn segments(&self) -> usize {
        self.segments.len()
    }

    /// The counters since the log was opened.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// How the log is written.
    pub fn options(&self) -> Options {
        self.options
    }

    /// Writes `groups` with one write and (with [`Options::sync`]) one
    /// `fdatasync`, or, when they do not fit in what is left of the active
    /// segment, with one write per segment they fill (each full segment is
    /// synced before the next is started, so a crash keeps a prefix of the
    /// records, as a torn tail would). Refuses them all, writing nothing, if
    /// one record is too large.
    fn write_groups(&mut self, groups: Vec<Vec<Record>>) -> Result<(), StorageError> {
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        for record in groups.iter().flatten() {
            segment::encode_entry(record, &mut bytes, self.entry_len_max)?;
            ends.push(bytes.len());
        }
        if bytes.is_empty() {
            return Ok(());
        }
        self.stats.groups += groups.len() as u64;
        let mut records = groups.into_iter().flatten();
        let (mut first, mut from) = (0, 0);
        while first < ends.len() {
            let room = self.options.segment_bytes.saturating_sub(self.active.len);
            // The entries that fit; at least one in an empty segment (an
            // entry larger than a segment grows it past its size).
            let fit = ends[first..].partition_point(|end| (end - from) as u64 <= room);
            let empty = self.active.len <= HEADER_LEN as u64;
            if fit == 0 && !empty {
                self.roll_over()?;
                continue;
            }
            let last = first + fit.max(1);
            let to = ends[last - 1];
            self.write_active(&bytes[from..to], last == ends.len())?;
            let id = self.active.id;
            let segment = self.segments.entry(id).or_default();
            segment.records += last - first;
            segment.bytes += (to - from) as u64;
            self.live
                .extend(records.by_ref().take(last - first).map(|r| (id, r)));
            (first, from) = (last, to);
        }
        Ok(())
    }

    /// Writes `bytes` (whole entries) at the end of the active segment, and
    /// syncs it if `sync` (and [`Options::sync`]).
    fn write_active(&mut self, bytes: &[u8], sync: bool) -> Result<(), StorageError> {
        let path = segment::path(&self.dir, self.active.id);
        let file = &mut self.active.file;
        let started = std::time::Instant::now();
        file.seek(SeekFrom::Start(self.active.len))
            .and_then(|_| file.write_all(bytes))
            .map_err(io_err(&path))?;
        if sync && self.options.sync {
            file.sync_data().map_err(io_err(&path))?;
            self.stats.syncs += 1;
        }
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.stats.write_nanos = self.stats.write_nanos.saturating_add(nanos);
        self.active.len += bytes.len() as u64;
        self.stats.writes += 1;
        self.stats.bytes += bytes.len() as u64;
        Ok(())
    }

    /// Starts the next segment (the current one is synced first, so that
    /// only the newest segment can ever end torn).
    fn roll_over(&mut self) -> Result<(), StorageError> {
        let old = segment::path(&self.dir, self.active.id);
        self.active.file.sync_data().map_err(io_err(&old))?;
        let id = self.active.id + 1;
        let header = Header {
            cluster: self.cluster,
            replica: self.replica,
            id,
            covers_from: id,
        };
        let file = make_segment(&self.dir, &header, &[], self.options.segment_bytes)?;
        self.stats.segments_created += 1;
        self.segments.insert(
            id,
            SegmentUse {
                covers_from: id,
                ..SegmentUse::default()
            },
        );
        self.active = Active {
            id,
            file,
            len: HEADER_LEN as u64,
        };
        tracing::debug!(segment = id, "started a log segment");
        Ok(())
    }

    /// Drops from `live` what a restart no longer needs, then deletes the
    /// older segments (see the [crate docs](crate#compaction-deleting-segments)).
    fn compact(&mut self) -> Result<(), StorageError> {
        let records: Vec<Record> = self.live.iter().map(|(_, r)| r.clone()).collect();
        let keep = retained(&records);
        drop(records);
        let mut i = 0;
        self.live.retain(|_| {
            i += 1;
            keep[i - 1]
        });
        // What each older segment still has to carry.
        let mut carried = BTreeMap::<u64, SegmentUse>::new();
        for (id, record) in self.live.iter().filter(|(id, _)| *id < self.active.id) {
            let c = carried.entry(*id).or_default();
            c.records += 1;
            c.bytes += entry_len(record);
        }
        let older: Vec<(u64, SegmentUse, SegmentUse)> = self
            .segments
            .range(..self.active.id)
            .map(|(id, held)| (*id, *held, carried.get(id).copied().unwrap_or_default()))
            .collect();
        // The oldest segments that carry nothing go as they are.
        let dead = older.iter().take_while(|(_, _, c)| c.records == 0).count();
        let mut deleted = 0;
        for (id, _, _) in &older[..dead] {
            self.delete_segment(*id)?;
            deleted += 1;
        }
        // Then runs of the others, each copied only if it frees at least as
        // many bytes as it copies; at most `compaction_bytes_max` in all (one
        // segment may carry more: it goes alone, first), the rest next time.
        let mut copied = 0;
        let mut start = dead;
        while start < older.len() {
            let mut best = None;
            let (mut held, mut carry) = (0u64, 0u64);
            for (end, (_, h, c)) in older.iter().enumerate().skip(start) {
                let alone = end == start && copied == 0;
                if copied + carry + c.bytes > self.compaction_bytes_max && !alone {
                    break;
                }
                held += h.bytes;
                carry += c.bytes;
                let frees = held.saturating_sub(carry);
                if frees > 0 && frees >= carry {
                    best = Some(end);
                }
            }
            let Some(end) = best else {
                start += 1;
                continue;
            };
            let run: Vec<u64> = older[start..=end].iter().map(|(id, _, _)| *id).collect();
            copied += self.compact_run(&run)?;
            deleted += run.len() - 1;
            start = end + 1;
        }
        if deleted > 0 {
            sync_dir(&self.dir)?;
        }
        if deleted > 0 || copied > 0 {
            tracing::debug!(deleted, copied, "compacted the record log");
        }
        Ok(())
    }

    /// Replaces the segments `run` (consecutive ids, all older than the
    /// active one) with one compacted segment holding their live records:
    /// it takes the highest id and covers from where the first one did.
    /// Returns the bytes copied.
    fn compact_run(&mut self, run: &[u64]) -> Result<u64, StorageError> {
        let (Some(&first), Some(&last)) = (run.first(), run.last()) else {
            return Ok(0);
        };
        let carried: Vec<Record> = self
            .live
            .iter()
            .filter(|(id, _)| (first..=last).contains(id))
            .map(|(_, r)| r.clone())
            .collect();
        let mut body = Vec::new();
        encode(&carried, &mut body, ENTRY_LEN_MAX)?;
        let header = Header {
            cluster: self.cluster,
            replica: self.replica,
            id: last,
            covers_from: self.segments[&first].covers_from,
        };
        // Exactly its size: nothing is ever appended to it.
        make_segment(&self.dir, &header, &body, 0)?;
        self.stats.segments_created += 1;
        self.stats.compacted_bytes += body.len() as u64;
        for (id, _) in self
            .live
            .iter_mut()
            .filter(|(id, _)| (first..last).contains(id))
        {
            *id = last;
        }
        self.segments.insert(
            last,
            SegmentUse {
                records: carried.len(),
                bytes: body.len() as u64,
                covers_from: header.covers_from,
            },
        );
        for id in &run[..run.len() - 1] {
            self.delete_segment(*id)?;
        }
        Ok(body.len() as u64)
    }

    /// Deletes segment `id` (the caller syncs the directory).
    fn delete_segment(&mut self, id: u64) -> Result<(), StorageError> {
        let path = segment::path(&self.dir, id);
        fs::remove_file(&path).map_err(io_err(&path))?;
        self.segments.remove(&id);
        self.stats.segments_deleted += 1;
        Ok(())
    }
}

/// The bytes `record`'s entry takes in a segment (header and payload).
fn entry_len(record: &Record) -> u64 {
    let payload = postcard::experimental::serialized_size(record).unwrap_or(0);
    (segment::ENTRY_HEADER_LEN + payload) as u64
}

/// Reads every segment's bytes and header, in id order.
fn read_segments(
    dir: &Path,
    ids: &[u64],
    cluster: u64,
    replica: ReplicaId,
) -> Result<Vec<(u64, Vec<u8>, Header)>, StorageError> {
    ids.iter()
        .map(|&id| {
            let path = segment::path(dir, id);
            let bytes = fs::read(&path).map_err(io_err(&path))?;
            let header = Header::check(&path, &bytes, cluster, replica, id)?;
            Ok((id, bytes, header))
        })
        .collect()
}

/// Deletes the segments a compacted segment replaced (a crash cut its
/// compaction short), then checks that no id is missing.
fn drop_superseded(
    dir: &Path,
    files: Vec<(u64, Vec<u8>, Header)>,
) -> Result<Vec<(u64, Vec<u8>, Header)>, StorageError> {
    let superseded = |id: u64| {
        files
            .iter()
            .any(|(_, _, h)| h.covers_from <= id && id < h.id)
    };
    let (gone, kept): (Vec<_>, Vec<_>) = files.iter().partition(|(id, _, _)| superseded(*id));
    for (id, _, _) in &gone {
        let path = segment::path(dir, *id);
        tracing::warn!(path = %path.display(), "removing a segment a compacted one replaced (interrupted compaction)");
        fs::remove_file(&path).map_err(io_err(&path))?;
    }
    if !gone.is_empty() {
        sync_dir(dir)?;
    }
    for pair in kept.windows(2) {
        let (before, after) = (pair[0].0, &pair[1].2);
        if after.covers_from != before + 1 {
            return Err(StorageError::Corrupted {
                path: segment::path(dir, before + 1),
                offset: 0,
                reason: format!(
                    "log segment {} is missing (segment {before} and segment {} are here)",
                    before + 1,
                    after.id
                ),
            });
        }
    }
    let kept: Vec<u64> = kept.iter().map(|(id, _, _)| *id).collect();
    Ok(files
        .into_iter()
        .filter(|(id, _, _)| kept.contains(id))
        .collect())
}

/// Overwrites the torn tail `from..to` of the newest segment with zeros.
fn clear_torn(path: &Path, from: usize, to: usize) -> Result<(), StorageError> {
    let mut file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    file.seek(SeekFrom::Start(from as u64))
        .and_then(|_| file.write_all(&vec![0; to - from]))
        .and_then(|_| file.sync_data())
        .map_err(io_err(path))
}

/// Reads the records of one segment from its bytes, as the newest segment
/// of a log (a torn tail allowed), for tools and fuzzing: the same checks as
/// [`Storage::open`] (header for `cluster`, `replica` and segment `id`,
/// checksums, torn tail), without touching any file. Returns the records
/// and the length of the valid prefix (shorter than `bytes` if the tail was
/// torn or preallocated).
pub fn decode_segment(
    bytes: &[u8],
    cluster: u64,
    replica: ReplicaId,
    id: u64,
) -> Result<(Vec<Record>, usize), StorageError> {
    let path = PathBuf::from(segment_file_name(id));
    segment::decode(&path, bytes, cluster, replica, id, true, ENTRY_LEN_MAX)
        .map(|d| (d.records, d.valid))
}

/// The header of segment `id` of a log (for tools and fuzzing: put in front
/// of entries, it makes a segment [`decode_segment`] reads).
pub fn segment_header(cluster: u64, replica: ReplicaId, id: u64) -> Vec<u8> {
    Header {
        cluster,
        replica,
        id,
        covers_from: id,
    }
    .encode()
    .to_vec()
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
    sync_dir(dir)
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
