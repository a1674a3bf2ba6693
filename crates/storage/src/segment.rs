//! One segment file: its name, its header, its entries, and the checks that
//! tell a torn tail from corruption (see the [crate docs](crate#file-format)).

use crate::StorageError;
use pbft_core::{Record, ReplicaId};
use std::path::{Path, PathBuf};

/// Version 4: requests name the replicas asked to reply.
pub(crate) const MAGIC: &[u8; 8] = b"PBFTLOG4";
/// Segments whose records encode requests without `repliers`.
pub(crate) const MAGIC_V3: &[u8; 8] = b"PBFTLOG3";
pub(crate) const MAGIC_V2: &[u8; 8] = b"PBFTLOG2";
pub(crate) const MAGIC_V1: &[u8; 8] = b"PBFTLOG1";
/// magic | cluster | replica | id | covers_from | crc32 of the bytes before.
pub(crate) const HEADER_LEN: usize = 8 + 8 + 4 + 8 + 8 + 4;
pub(crate) const ENTRY_HEADER_LEN: usize = 12;
const PREFIX: &str = "log-";
const SUFFIX: &str = ".seg";
const ID_DIGITS: usize = 20;

/// The file name of segment `id`: `log-<id, 20 decimal digits>.seg`, so that
/// names sort like ids.
pub fn segment_file_name(id: u64) -> String {
    format!("{PREFIX}{id:0ID_DIGITS$}{SUFFIX}")
}

/// The segment id a file name stands for, if it is a segment's name.
pub(crate) fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    if digits.len() != ID_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Whether `name` is a segment being written (`log-….seg.tmp`), left behind
/// by a crash.
pub(crate) fn is_temporary(name: &str) -> bool {
    name.strip_suffix(".tmp")
        .and_then(parse_file_name)
        .is_some()
}

/// What a segment's header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) cluster: u64,
    pub(crate) replica: ReplicaId,
    /// This segment's id (also in its file name).
    pub(crate) id: u64,
    /// The lowest segment id whose live records this one holds: `id` for a
    /// segment the writer appended to; lower for a compacted segment, which
    /// replaces segments `covers_from..=id`.
    pub(crate) covers_from: u64,
}

impl Header {
    pub(crate) fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..8].copy_from_slice(MAGIC);
        h[8..16].copy_from_slice(&self.cluster.to_le_bytes());
        h[16..20].copy_from_slice(&self.replica.0.to_le_bytes());
        h[20..28].copy_from_slice(&self.id.to_le_bytes());
        h[28..36].copy_from_slice(&self.covers_from.to_le_bytes());
        let crc = crc32fast::hash(&h[..36]);
        h[36..].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Parses and checks the header of segment `id` of `replica` of
    /// `cluster` at the start of `bytes`.
    pub(crate) fn check(
        path: &Path,
        bytes: &[u8],
        cluster: u64,
        replica: ReplicaId,
        id: u64,
    ) -> Result<Header, StorageError> {
        let corrupted = |offset: u64, reason: String| StorageError::Corrupted {
            path: path.to_path_buf(),
            offset,
            reason,
        };
        let magic = bytes.get(..8);
        if magic == Some(MAGIC_V1) || magic == Some(MAGIC_V2) || magic == Some(MAGIC_V3) {
            return Err(corrupted(0, old_format(bytes[7])));
        }
        if bytes.len() < HEADER_LEN || magic != Some(MAGIC) {
            return Err(corrupted(0, "not a PBFT log segment (bad header)".into()));
        }
        let word64 = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[i..i + 8]);
            u64::from_le_bytes(w)
        };
        let word32 = |i: usize| {
            let mut w = [0u8; 4];
            w.copy_from_slice(&bytes[i..i + 4]);
            u32::from_le_bytes(w)
        };
        if crc32fast::hash(&bytes[..36]) != word32(36) {
            return Err(corrupted(
                8,
                "damaged segment header (checksum mismatch)".into(),
            ));
        }
        let header = Header {
            cluster: word64(8),
            replica: ReplicaId(word32(16)),
            id: word64(20),
            covers_from: word64(28),
        };
        if header.cluster != cluster || header.replica != replica {
            return Err(corrupted(
                8,
                format!(
                    "written for another cluster or replica (expected cluster {cluster}, \
                     replica {replica}; found cluster {}, replica {})",
                    header.cluster, header.replica
                ),
            ));
        }
        if header.id != id || header.covers_from > header.id {
            return Err(corrupted(
                20,
                format!(
                    "the header names segment {} (covering from {}), the file name segment {id}",
                    header.id, header.covers_from
                ),
            ));
        }
        Ok(header)
    }
}

/// Why a log of an older format is refused (`version`: the magic's last byte).
pub(crate) fn old_format(version: u8) -> String {
    let version = char::from(version);
    format!(
        "record log format v{version} (PBFTLOG{version}), written by an older version; this \
         version reads PBFTLOG4 logs only"
    )
}

/// Appends one entry for `record` to `out`, or refuses a payload above `max`.
pub(crate) fn encode_entry(
    record: &Record,
    out: &mut Vec<u8>,
    max: usize,
) -> Result<(), StorageError> {
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
/// offset of `rest`. An entry header of zeros does not check (the crc32 of
/// eight zero bytes is not zero), so a valid entry starts at or before the
/// last non-zero byte: the preallocated zeros of a segment cost nothing.
fn valid_entry_follows(rest: &[u8], entry_len_max: usize) -> bool {
    let Some(last) = rest.iter().rposition(|&b| b != 0) else {
        return false;
    };
    (0..=last).any(|i| {
        let Some(h) = entry_header(&rest[i..]) else {
            return false;
        };
        h.len <= entry_len_max
            && rest.len() - i - ENTRY_HEADER_LEN >= h.len
            && crc32fast::hash(&rest[i + ENTRY_HEADER_LEN..i + ENTRY_HEADER_LEN + h.len]) == h.crc
    })
}

/// What [`decode`] found in one segment.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub(crate) records: Vec<Record>,
    /// Where the valid entries end (the next write goes here).
    pub(crate) valid: usize,
    /// Where the last non-zero byte after `valid` ends (`valid` if none):
    /// `valid..dirty` is a torn tail to clear.
    pub(crate) dirty: usize,
}

/// Decodes segment `id` from its bytes. After the last valid entry a segment
/// holds zeros (preallocated, never written). Only the newest segment
/// (`newest`) may end in a torn entry instead; in an older one, which was
/// made durable before the next was started, that is corruption.
pub(crate) fn decode(
    path: &Path,
    bytes: &[u8],
    cluster: u64,
    replica: ReplicaId,
    id: u64,
    newest: bool,
    entry_len_max: usize,
) -> Result<Decoded, StorageError> {
    let corrupted = |offset: usize, reason: String| StorageError::Corrupted {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    Header::check(path, bytes, cluster, replica, id)?;
    let mut records = Vec::new();
    let mut at = HEADER_LEN;
    let end_of = |at: usize, what: &str, records: Vec<Record>| {
        let dirty = bytes[at..]
            .iter()
            .rposition(|&b| b != 0)
            .map_or(at, |i| at + i + 1);
        if dirty > at {
            if !newest {
                return Err(corrupted(
                    at,
                    format!(
                        "{what} in a segment older than the newest (only the newest may end \
                         torn)"
                    ),
                ));
            }
            tracing::warn!(path = %path.display(), offset = at, what, "discarding a torn last record (crash during write)");
        }
        Ok(Decoded {
            records,
            valid: at,
            dirty,
        })
    };
    while at < bytes.len() {
        let rest = &bytes[at..];
        if rest.len() < ENTRY_HEADER_LEN {
            return end_of(at, "a partial entry header", records);
        }
        let Some(h) = entry_header(rest) else {
            if valid_entry_follows(&rest[1..], entry_len_max) {
                return Err(corrupted(
                    at,
                    "damaged entry header followed by valid entries".into(),
                ));
            }
            return end_of(at, "a damaged last entry header", records);
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
            return end_of(at, "a partial last entry", records);
        }
        let payload = &rest[ENTRY_HEADER_LEN..end];
        if crc32fast::hash(payload) != h.crc {
            if valid_entry_follows(&rest[end..], entry_len_max) {
                return Err(corrupted(
                    at,
                    "checksum mismatch, and valid entries follow".into(),
                ));
            }
            return end_of(at, "a last entry with a bad checksum", records);
        }
        let record: Record = postcard::from_bytes(payload)
            .map_err(|e| corrupted(at, format!("undecodable record: {e}")))?;
        records.push(record);
        at += end;
    }
    end_of(at, "", records)
}

/// The path of segment `id` in `dir`.
pub(crate) fn path(dir: &Path, id: u64) -> PathBuf {
    dir.join(segment_file_name(id))
}

/// The path a segment is written under before it is renamed into place.
pub(crate) fn temporary_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{}.tmp", segment_file_name(id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_like_ids() {
        assert_eq!(segment_file_name(7), "log-00000000000000000007.seg");
        assert_eq!(
            parse_file_name(&segment_file_name(u64::MAX)),
            Some(u64::MAX)
        );
        assert!(segment_file_name(9) < segment_file_name(10));
        for bad in [
            "log-7.seg",
            "log-0000000000000000000x.seg",
            "records.log",
            "LOCK",
        ] {
            assert_eq!(parse_file_name(bad), None, "{bad}");
        }
        assert!(is_temporary("log-00000000000000000007.seg.tmp"));
        assert!(!is_temporary("PBFT-INIT.tmp"));
    }

    #[test]
    fn zero_header_never_checks() {
        assert!(entry_header(&[0; ENTRY_HEADER_LEN]).is_none());
        assert!(!valid_entry_follows(&[0; 4096], usize::MAX));
    }

    #[test]
    fn header_round_trips_and_checks_its_checksum() {
        let h = Header {
            cluster: 5,
            replica: ReplicaId(2),
            id: 9,
            covers_from: 3,
        };
        let mut bytes = h.encode().to_vec();
        let p = Path::new("x");
        assert_eq!(Header::check(p, &bytes, 5, ReplicaId(2), 9).expect("ok"), h);
        assert!(Header::check(p, &bytes, 5, ReplicaId(2), 8).is_err());
        assert!(Header::check(p, &bytes, 5, ReplicaId(1), 9).is_err());
        bytes[30] ^= 1;
        let err = Header::check(p, &bytes, 5, ReplicaId(2), 9).expect_err("damaged");
        assert!(err.to_string().contains("checksum"), "{err}");
    }
}
