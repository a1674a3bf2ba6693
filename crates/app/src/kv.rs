//! The replicated key-value store.
//!
//! [`KvStore`] maps byte-string keys to byte-string values. Clients send a
//! [`KvOp`] encoded with [`KvOp::encode`] (postcard) and get back a [`KvResult`]
//! encoded with [`KvResult::encode`].
//!
//! # Operations
//!
//! | Operation | Effect | Result |
//! |-----------|--------|--------|
//! | [`KvOp::Put`] | stores `value` under `key` | [`KvResult::Put`] with the value it replaced, if any |
//! | [`KvOp::Get`] | none (read-only) | [`KvResult::Get`] with the value, if any |
//! | [`KvOp::Delete`] | removes `key` | [`KvResult::Delete`]: whether the key was present |
//! | [`KvOp::Cas`] | stores `new` under `key` if the key's value equals `expected` (`None` = the key is absent) | [`KvResult::Cas`]: whether it swapped, and the value the key held when the operation was evaluated |
//! | [`KvOp::Scan`] | none (read-only) | [`KvResult::Scan`]: the entries with `from <= key < to`, in key order, at most `min(limit, SCAN_LIMIT_MAX)` of them, and whether more entries of the range were left out |
//!
//! A scan whose `from` is not below its `to` matches nothing. To continue a
//! scan that reported `more`, scan again from the last returned key followed
//! by a `0x00` byte. A bound of [`MAX_KEY_LEN`]` + 1` bytes of `0xFF` lies above
//! every key the store can hold.
//!
//! # Limits
//!
//! Keys are at most [`MAX_KEY_LEN`] (1 KiB) bytes and values at most
//! [`MAX_VALUE_LEN`] (64 KiB) bytes. An operation naming a longer key (for
//! `Put`, `Get`, `Delete` and `Cas`) or carrying a longer value (`Put`'s
//! `value`, `Cas`'s `expected` and `new`) changes nothing and yields
//! [`KvResult::Error`] with [`KvError::KeyTooLarge`] or
//! [`KvError::ValueTooLarge`]; the key is checked first. Scan bounds are not
//! keys and are not limited. A scan returns at most [`SCAN_LIMIT_MAX`] entries.
//!
//! Bytes that do not decode as exactly one [`KvOp`] (trailing bytes included)
//! yield [`KvError::Malformed`]. Answering a write operation through
//! [`StateMachine::query`] (or [`KvStore::read`]) yields
//! [`KvError::NotReadOnly`].
//!
//! # Determinism
//!
//! The store fulfils the [`StateMachine`] contract:
//! * The state is a [`BTreeMap`], so every iteration (scans, snapshots,
//!   digests) is in key order; nothing depends on clocks, randomness, hashing
//!   seeds or the history that led to a state.
//! * [`KvStore::execute`] is a pure function of the state and the operation,
//!   and every input, including malformed bytes and oversized keys, yields a
//!   result rather than a panic. The simulator uses it as the sequential model
//!   for linearizability checking.
//! * [`StateMachine::digest`] is a SHA-256 over a canonical, length-prefixed
//!   encoding of the entries in key order, so equal states have equal digests
//!   however they were reached.
//! * A snapshot is a version header followed by the postcard encoding of the
//!   entries in key order; [`StateMachine::restore`] accepts only canonical
//!   snapshots (strictly increasing keys, sizes within the limits, no trailing
//!   bytes) and either replaces the whole state or leaves it untouched.
//! * The pages of [`StateMachine::snapshot_pages`] are a function of the
//!   entries (and the page target) alone: the store keeps the pages of its
//!   last call and cuts again only around the keys written since, but the
//!   result is exactly the from-scratch cut (see the `pages` module), so
//!   replicas agree on them whatever their history of calls, restores and
//!   clones.

mod pages;

use std::collections::BTreeMap;
use std::ops::Bound;

use pbft_crypto::Digest;
use serde::{Deserialize, Serialize};

use crate::{Page, SnapshotError, StateMachine};
use pages::KvPages;

/// The longest key the store accepts, in bytes (1 KiB).
pub const MAX_KEY_LEN: usize = 1024;

/// The longest value the store accepts, in bytes (64 KiB).
pub const MAX_VALUE_LEN: usize = 64 * 1024;

/// The most entries a single scan returns.
pub const SCAN_LIMIT_MAX: u32 = 1000;

/// The first bytes of every snapshot.
const SNAPSHOT_MAGIC: &[u8; 4] = b"PBKV";

/// The snapshot format version this code writes and reads.
const SNAPSHOT_VERSION: u8 = 1;

/// Domain separation for the state digest (includes the format version).
const DIGEST_DOMAIN: &[u8] = b"pbft-app/kv/state/v1";

/// An operation on the key-value store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvOp {
    /// Stores `value` under `key`.
    Put {
        /// The key to write.
        key: Vec<u8>,
        /// The value to store.
        value: Vec<u8>,
    },
    /// Reads the value under `key`.
    Get {
        /// The key to read.
        key: Vec<u8>,
    },
    /// Removes `key`.
    Delete {
        /// The key to remove.
        key: Vec<u8>,
    },
    /// Stores `new` under `key` if the key's current value equals `expected`.
    Cas {
        /// The key to compare and write.
        key: Vec<u8>,
        /// The value the key must hold for the swap; `None` means it must be absent.
        expected: Option<Vec<u8>>,
        /// The value to store on a match.
        new: Vec<u8>,
    },
    /// Lists the entries with `from <= key < to`, in key order.
    Scan {
        /// The inclusive lower bound.
        from: Vec<u8>,
        /// The exclusive upper bound.
        to: Vec<u8>,
        /// The most entries to return (capped at [`SCAN_LIMIT_MAX`]).
        limit: u32,
    },
}

/// Why an operation failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum KvError {
    /// The operation bytes did not decode as a [`KvOp`].
    #[error("malformed operation: {0}")]
    Malformed(String),
    /// A key is longer than [`MAX_KEY_LEN`].
    #[error("key longer than {MAX_KEY_LEN} bytes")]
    KeyTooLarge,
    /// A value is longer than [`MAX_VALUE_LEN`].
    #[error("value longer than {MAX_VALUE_LEN} bytes")]
    ValueTooLarge,
    /// A write operation was submitted as a read-only query.
    #[error("operation is not read-only")]
    NotReadOnly,
}

/// The result of a [`KvOp`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvResult {
    /// The result of [`KvOp::Put`].
    Put {
        /// The value the key held before, if any.
        previous: Option<Vec<u8>>,
    },
    /// The result of [`KvOp::Get`].
    Get {
        /// The value under the key, if any.
        value: Option<Vec<u8>>,
    },
    /// The result of [`KvOp::Delete`].
    Delete {
        /// Whether the key was present.
        existed: bool,
    },
    /// The result of [`KvOp::Cas`].
    Cas {
        /// Whether `new` was stored.
        swapped: bool,
        /// The value the key held when the operation was evaluated (equal to
        /// `expected` when `swapped`).
        current: Option<Vec<u8>>,
    },
    /// The result of [`KvOp::Scan`].
    Scan {
        /// The entries found, in key order.
        items: Vec<(Vec<u8>, Vec<u8>)>,
        /// Whether the range holds further entries after the last one returned.
        more: bool,
    },
    /// The operation failed and changed nothing.
    Error(KvError),
}

/// Bytes that are not the encoding of a [`KvOp`] or [`KvResult`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot decode: {0}")]
pub struct KvDecodeError(pub String);

/// Encodes `value` with postcard.
fn encode_value<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising these plain enums into a Vec cannot fail; should it ever, the
    // empty output fails to decode rather than decoding as something else.
    postcard::to_stdvec(value).unwrap_or_default()
}

/// Decodes exactly one `T` from `bytes`, rejecting trailing bytes.
fn decode_exact<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, KvDecodeError> {
    let (value, rest) =
        postcard::take_from_bytes::<T>(bytes).map_err(|e| KvDecodeError(e.to_string()))?;
    if rest.is_empty() {
        Ok(value)
    } else {
        Err(KvDecodeError(format!("{} trailing bytes", rest.len())))
    }
}

impl KvOp {
    /// The postcard encoding of the operation.
    pub fn encode(&self) -> Vec<u8> {
        encode_value(self)
    }

    /// Decodes an operation; `bytes` must hold exactly one.
    pub fn decode(bytes: &[u8]) -> Result<KvOp, KvDecodeError> {
        decode_exact(bytes)
    }

    /// Whether the operation leaves the state unchanged (`Get` and `Scan`).
    pub fn is_read_only(&self) -> bool {
        matches!(self, KvOp::Get { .. } | KvOp::Scan { .. })
    }
}

impl KvResult {
    /// The postcard encoding of the result.
    pub fn encode(&self) -> Vec<u8> {
        encode_value(self)
    }

    /// Decodes a result; `bytes` must hold exactly one.
    pub fn decode(bytes: &[u8]) -> Result<KvResult, KvDecodeError> {
        decode_exact(bytes)
    }
}

/// Checks a key against [`MAX_KEY_LEN`].
fn check_key(key: &[u8]) -> Result<(), KvError> {
    if key.len() > MAX_KEY_LEN {
        Err(KvError::KeyTooLarge)
    } else {
        Ok(())
    }
}

/// Checks a value against [`MAX_VALUE_LEN`].
fn check_value(value: &[u8]) -> Result<(), KvError> {
    if value.len() > MAX_VALUE_LEN {
        Err(KvError::ValueTooLarge)
    } else {
        Ok(())
    }
}

/// The key-value store: a [`StateMachine`] over a [`BTreeMap`].
///
/// Equality compares the entries and the page target, not the cached pages.
#[derive(Clone)]
pub struct KvStore {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    /// The page size [`StateMachine::snapshot_pages`] aims at.
    page_target: usize,
    /// The pages of the last [`StateMachine::snapshot_pages`] call, with the
    /// pages written since marked: every write to `map` must
    /// [`crate::paging::PageCache::touch`] its key.
    pages: KvPages,
}

impl Default for KvStore {
    fn default() -> Self {
        KvStore::with_page_target(crate::PAGE_TARGET)
    }
}

impl PartialEq for KvStore {
    fn eq(&self, other: &KvStore) -> bool {
        self.map == other.map && self.page_target == other.page_target
    }
}

impl Eq for KvStore {}

impl std::fmt::Debug for KvStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvStore")
            .field("map", &self.map)
            .field("page_target", &self.page_target)
            .finish_non_exhaustive()
    }
}

/// The first bytes of a paged snapshot's first page.
const PAGES_MAGIC: &[u8; 4] = b"PBKP";

impl KvStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store whose snapshot pages aim at `bytes` (at least 1, at
    /// most [`crate::PAGE_TARGET`]): small pages make small states span many
    /// pages (the simulator uses this to exercise chunked state transfer).
    /// Every replica of a cluster must use the same size.
    pub fn with_page_target(bytes: usize) -> Self {
        KvStore {
            map: BTreeMap::new(),
            page_target: bytes.clamp(1, crate::PAGE_TARGET),
            pages: KvPages::default(),
        }
    }

    /// Whether a page may end after `key`, once it holds a quarter of the
    /// target: about one key in four, by the key's own hash, so page
    /// boundaries do not move when unrelated keys change.
    fn boundary(key: &[u8]) -> bool {
        Digest::of(key).0[0] < 64
    }

    /// The number of keys stored.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no key is stored.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The value under `key`, if any.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.map.get(key).map(Vec::as_slice)
    }

    /// The entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.map.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))
    }

    /// Applies `op` and returns its result: the sequential specification of
    /// the store. Total: an invalid operation yields [`KvResult::Error`] and
    /// changes nothing.
    pub fn execute(&mut self, op: &KvOp) -> KvResult {
        match self.try_execute(op) {
            Ok(result) => result,
            Err(e) => KvResult::Error(e),
        }
    }

    /// Evaluates a read-only `op` without changing the state; a write
    /// operation yields [`KvError::NotReadOnly`]. For read-only operations the
    /// result equals that of [`KvStore::execute`].
    pub fn read(&self, op: &KvOp) -> KvResult {
        match self.try_read(op) {
            Ok(result) => result,
            Err(e) => KvResult::Error(e),
        }
    }

    fn try_execute(&mut self, op: &KvOp) -> Result<KvResult, KvError> {
        match op {
            KvOp::Get { .. } | KvOp::Scan { .. } => self.try_read(op),
            KvOp::Put { key, value } => {
                check_key(key)?;
                check_value(value)?;
                let previous = self.map.insert(key.clone(), value.clone());
                self.pages.touch(key);
                Ok(KvResult::Put { previous })
            }
            KvOp::Delete { key } => {
                check_key(key)?;
                let existed = self.map.remove(key.as_slice()).is_some();
                if existed {
                    self.pages.touch(key);
                }
                Ok(KvResult::Delete { existed })
            }
            KvOp::Cas { key, expected, new } => {
                check_key(key)?;
                if let Some(expected) = expected {
                    check_value(expected)?;
                }
                check_value(new)?;
                let current = self.map.get(key.as_slice()).cloned();
                let swapped = current == *expected;
                if swapped {
                    self.map.insert(key.clone(), new.clone());
                    self.pages.touch(key);
                }
                Ok(KvResult::Cas { swapped, current })
            }
        }
    }

    fn try_read(&self, op: &KvOp) -> Result<KvResult, KvError> {
        match op {
            KvOp::Get { key } => {
                check_key(key)?;
                let value = self.map.get(key.as_slice()).cloned();
                Ok(KvResult::Get { value })
            }
            KvOp::Scan { from, to, limit } => Ok(self.scan(from, to, *limit)),
            KvOp::Put { .. } | KvOp::Delete { .. } | KvOp::Cas { .. } => Err(KvError::NotReadOnly),
        }
    }

    fn scan(&self, from: &[u8], to: &[u8], limit: u32) -> KvResult {
        // `BTreeMap::range` panics on an inverted range; such a range is empty.
        if from >= to {
            return KvResult::Scan {
                items: Vec::new(),
                more: false,
            };
        }
        // u32 always fits in usize on the platforms this code supports.
        let cap = usize::try_from(limit.min(SCAN_LIMIT_MAX)).unwrap_or(0);
        let mut range = self
            .map
            .range::<[u8], _>((Bound::Included(from), Bound::Excluded(to)));
        let items: Vec<(Vec<u8>, Vec<u8>)> = range
            .by_ref()
            .take(cap)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let more = range.next().is_some();
        KvResult::Scan { items, more }
    }
}

impl StateMachine for KvStore {
    fn apply(&mut self, op: &[u8]) -> Vec<u8> {
        let result = match KvOp::decode(op) {
            Ok(op) => self.execute(&op),
            Err(e) => KvResult::Error(KvError::Malformed(e.0)),
        };
        result.encode()
    }

    fn query(&self, op: &[u8]) -> Vec<u8> {
        let result = match KvOp::decode(op) {
            Ok(op) => self.read(&op),
            Err(e) => KvResult::Error(KvError::Malformed(e.0)),
        };
        result.encode()
    }

    fn is_read_only(&self, op: &[u8]) -> bool {
        KvOp::decode(op).is_ok_and(|op| op.is_read_only())
    }

    fn snapshot(&self) -> Vec<u8> {
        let entries: Vec<(&[u8], &[u8])> = self.iter().collect();
        match postcard::to_stdvec(&entries) {
            Ok(body) => {
                let mut out = Vec::with_capacity(SNAPSHOT_MAGIC.len() + 1 + body.len());
                out.extend_from_slice(SNAPSHOT_MAGIC);
                out.push(SNAPSHOT_VERSION);
                out.extend_from_slice(&body);
                out
            }
            // Cannot happen for byte strings; an empty snapshot fails to restore
            // rather than restoring a wrong state.
            Err(_) => Vec::new(),
        }
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError> {
        let body = snapshot
            .strip_prefix(SNAPSHOT_MAGIC.as_slice())
            .ok_or_else(|| SnapshotError("missing key-value snapshot header".into()))?;
        let (&version, body) = body
            .split_first()
            .ok_or_else(|| SnapshotError("truncated header".into()))?;
        if version != SNAPSHOT_VERSION {
            return Err(SnapshotError(format!(
                "unsupported snapshot version {version}"
            )));
        }
        let entries: Vec<(Vec<u8>, Vec<u8>)> =
            decode_exact(body).map_err(|e| SnapshotError(e.to_string()))?;
        for (i, (key, value)) in entries.iter().enumerate() {
            if key.len() > MAX_KEY_LEN {
                return Err(SnapshotError(format!("entry {i}: key too large")));
            }
            if value.len() > MAX_VALUE_LEN {
                return Err(SnapshotError(format!("entry {i}: value too large")));
            }
        }
        if entries.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(SnapshotError(
                "keys not in strictly increasing order".into(),
            ));
        }
        // Only now, with the whole snapshot validated, replace the state.
        self.map = entries.into_iter().collect();
        self.pages.clear();
        Ok(())
    }

    /// Pages of whole entries in key order. A page ends once it holds the
    /// target size, or a quarter of it at a key whose hash allows a
    /// boundary; an entry is at most 65 KiB, so pages stay below
    /// [`crate::PAGE_MAX`]. The first page starts with a header.
    ///
    /// Incremental: pages whose key range saw no write since the last call
    /// are returned as they were (shared, not re-encoded or re-hashed), and
    /// only the pages around the written keys are cut again; the result is
    /// the same as cutting the whole state from scratch.
    fn snapshot_pages(&mut self) -> Vec<Page> {
        self.cut_pages()
    }

    /// Replaces the state with the entries of `pages`, whichever way they
    /// were cut; the store's own pages stay its canonical cut (pages that
    /// are part of it are kept, the others are cut again here).
    fn restore_pages(&mut self, pages: &[Page]) -> Result<(), SnapshotError> {
        let mut entries: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for (i, page) in pages.iter().enumerate() {
            let body = if i == 0 {
                let body = page
                    .bytes()
                    .strip_prefix(PAGES_MAGIC.as_slice())
                    .ok_or_else(|| SnapshotError("missing key-value pages header".into()))?;
                let (&version, body) = body
                    .split_first()
                    .ok_or_else(|| SnapshotError("truncated header".into()))?;
                if version != SNAPSHOT_VERSION {
                    return Err(SnapshotError(format!(
                        "unsupported snapshot version {version}"
                    )));
                }
                body
            } else {
                page.bytes()
            };
            let part: Vec<(Vec<u8>, Vec<u8>)> =
                decode_exact(body).map_err(|e| SnapshotError(format!("page {i}: {e}")))?;
            if part.is_empty() && pages.len() > 1 {
                return Err(SnapshotError(format!("page {i} is empty")));
            }
            entries.extend(part);
        }
        if pages.is_empty() {
            return Err(SnapshotError("no pages".into()));
        }
        for (i, (key, value)) in entries.iter().enumerate() {
            if key.len() > MAX_KEY_LEN {
                return Err(SnapshotError(format!("entry {i}: key too large")));
            }
            if value.len() > MAX_VALUE_LEN {
                return Err(SnapshotError(format!("entry {i}: value too large")));
            }
        }
        if entries.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(SnapshotError(
                "keys not in strictly increasing order".into(),
            ));
        }
        self.map = entries.into_iter().collect();
        self.seed_pages(pages);
        Ok(())
    }

    fn digest(&self) -> Digest {
        let count = (self.map.len() as u64).to_le_bytes();
        let mut parts: Vec<&[u8]> = Vec::with_capacity(2 + 2 * self.map.len());
        parts.push(DIGEST_DOMAIN);
        parts.push(&count);
        for (key, value) in &self.map {
            parts.push(key);
            parts.push(value);
        }
        Digest::of_parts(&parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    fn put(key: &str, value: &str) -> KvOp {
        KvOp::Put {
            key: k(key),
            value: k(value),
        }
    }

    fn get(key: &str) -> KvOp {
        KvOp::Get { key: k(key) }
    }

    fn scan(from: &str, to: &str, limit: u32) -> KvOp {
        KvOp::Scan {
            from: k(from),
            to: k(to),
            limit,
        }
    }

    fn items(pairs: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        pairs.iter().map(|(a, b)| (k(a), k(b))).collect()
    }

    /// Applies `op` through the byte interface and decodes the result.
    fn apply(store: &mut KvStore, op: &KvOp) -> KvResult {
        KvResult::decode(&store.apply(&op.encode())).expect("result decodes")
    }

    fn query(store: &KvStore, op: &KvOp) -> KvResult {
        KvResult::decode(&store.query(&op.encode())).expect("result decodes")
    }

    fn store_with(pairs: &[(&str, &str)]) -> KvStore {
        let mut s = KvStore::new();
        for (key, value) in pairs {
            s.execute(&put(key, value));
        }
        s
    }

    #[test]
    fn put_returns_previous_value() {
        let mut s = KvStore::new();
        assert_eq!(
            apply(&mut s, &put("a", "1")),
            KvResult::Put { previous: None }
        );
        assert_eq!(
            apply(&mut s, &put("a", "2")),
            KvResult::Put {
                previous: Some(k("1"))
            }
        );
        assert_eq!(s.get(b"a"), Some(&b"2"[..]));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn get_reads_without_changing_state() {
        let mut s = store_with(&[("a", "1")]);
        let before = s.clone();
        assert_eq!(
            apply(&mut s, &get("a")),
            KvResult::Get {
                value: Some(k("1"))
            }
        );
        assert_eq!(apply(&mut s, &get("b")), KvResult::Get { value: None });
        assert_eq!(s, before);
    }

    #[test]
    fn empty_key_and_value_are_allowed() {
        let mut s = KvStore::new();
        assert_eq!(
            apply(&mut s, &put("", "")),
            KvResult::Put { previous: None }
        );
        assert_eq!(
            apply(&mut s, &get("")),
            KvResult::Get {
                value: Some(Vec::new())
            }
        );
    }

    #[test]
    fn delete_reports_whether_key_existed() {
        let mut s = store_with(&[("a", "1")]);
        assert_eq!(
            apply(&mut s, &KvOp::Delete { key: k("a") }),
            KvResult::Delete { existed: true }
        );
        assert_eq!(
            apply(&mut s, &KvOp::Delete { key: k("a") }),
            KvResult::Delete { existed: false }
        );
        assert!(s.is_empty());
    }

    #[test]
    fn cas_swaps_only_on_match() {
        let mut s = store_with(&[("a", "1")]);
        let miss = KvOp::Cas {
            key: k("a"),
            expected: Some(k("0")),
            new: k("2"),
        };
        assert_eq!(
            apply(&mut s, &miss),
            KvResult::Cas {
                swapped: false,
                current: Some(k("1"))
            }
        );
        assert_eq!(s.get(b"a"), Some(&b"1"[..]));
        let hit = KvOp::Cas {
            key: k("a"),
            expected: Some(k("1")),
            new: k("2"),
        };
        assert_eq!(
            apply(&mut s, &hit),
            KvResult::Cas {
                swapped: true,
                current: Some(k("1"))
            }
        );
        assert_eq!(s.get(b"a"), Some(&b"2"[..]));
    }

    #[test]
    fn cas_with_none_expected_means_absent() {
        let mut s = KvStore::new();
        let create = KvOp::Cas {
            key: k("a"),
            expected: None,
            new: k("1"),
        };
        assert_eq!(
            apply(&mut s, &create),
            KvResult::Cas {
                swapped: true,
                current: None
            }
        );
        assert_eq!(s.get(b"a"), Some(&b"1"[..]));
        // Now present: a second create-if-absent fails and reports the value.
        assert_eq!(
            apply(&mut s, &create),
            KvResult::Cas {
                swapped: false,
                current: Some(k("1"))
            }
        );
        // Expecting a value on an absent key fails.
        let mut empty = KvStore::new();
        let expect_some = KvOp::Cas {
            key: k("b"),
            expected: Some(k("1")),
            new: k("2"),
        };
        assert_eq!(
            apply(&mut empty, &expect_some),
            KvResult::Cas {
                swapped: false,
                current: None
            }
        );
        assert!(empty.is_empty());
    }

    #[test]
    fn scan_respects_bounds_and_order() {
        let mut s = store_with(&[("d", "4"), ("b", "2"), ("a", "1"), ("c", "3"), ("e", "5")]);
        assert_eq!(
            apply(&mut s, &scan("b", "e", 10)),
            KvResult::Scan {
                items: items(&[("b", "2"), ("c", "3"), ("d", "4")]),
                more: false
            }
        );
        // Prefix-style bounds: "b" <= "ba" < "c".
        s.execute(&put("ba", "x"));
        assert_eq!(
            apply(&mut s, &scan("b", "c", 10)),
            KvResult::Scan {
                items: items(&[("b", "2"), ("ba", "x")]),
                more: false
            }
        );
        // Everything, with an upper bound above every storable key.
        let all = KvOp::Scan {
            from: Vec::new(),
            to: vec![0xFF; MAX_KEY_LEN + 1],
            limit: 100,
        };
        match apply(&mut s, &all) {
            KvResult::Scan { items, more } => {
                assert_eq!(items.len(), 6);
                assert!(!more);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn scan_empty_and_inverted_ranges() {
        let mut s = store_with(&[("a", "1"), ("b", "2")]);
        let empty = KvResult::Scan {
            items: Vec::new(),
            more: false,
        };
        assert_eq!(apply(&mut s, &scan("b", "b", 10)), empty);
        assert_eq!(apply(&mut s, &scan("c", "a", 10)), empty);
        assert_eq!(apply(&mut s, &scan("x", "z", 10)), empty);
    }

    #[test]
    fn scan_limit_and_more() {
        let mut s = store_with(&[("a", "1"), ("b", "2"), ("c", "3")]);
        assert_eq!(
            apply(&mut s, &scan("a", "z", 2)),
            KvResult::Scan {
                items: items(&[("a", "1"), ("b", "2")]),
                more: true
            }
        );
        // Continue after the last key returned.
        assert_eq!(
            apply(&mut s, &scan("b\0", "z", 2)),
            KvResult::Scan {
                items: items(&[("c", "3")]),
                more: false
            }
        );
        // Exactly `limit` entries: nothing more.
        assert_eq!(
            apply(&mut s, &scan("a", "z", 3)),
            KvResult::Scan {
                items: items(&[("a", "1"), ("b", "2"), ("c", "3")]),
                more: false
            }
        );
        // Limit zero: no items, but reports whether any exist.
        assert_eq!(
            apply(&mut s, &scan("a", "z", 0)),
            KvResult::Scan {
                items: Vec::new(),
                more: true
            }
        );
        // `more` only concerns the requested range.
        assert_eq!(
            apply(&mut s, &scan("a", "c", 2)),
            KvResult::Scan {
                items: items(&[("a", "1"), ("b", "2")]),
                more: false
            }
        );
    }

    #[test]
    fn scan_limit_is_capped() {
        let mut s = KvStore::new();
        let n = SCAN_LIMIT_MAX + 5;
        for i in 0..n {
            s.execute(&KvOp::Put {
                key: i.to_be_bytes().to_vec(),
                value: Vec::new(),
            });
        }
        let op = KvOp::Scan {
            from: Vec::new(),
            to: vec![0xFF; 5],
            limit: u32::MAX,
        };
        match apply(&mut s, &op) {
            KvResult::Scan { items, more } => {
                assert_eq!(items.len(), SCAN_LIMIT_MAX as usize);
                assert!(more);
                assert_eq!(items[0].0, 0u32.to_be_bytes().to_vec());
                assert!(items.windows(2).all(|w| w[0].0 < w[1].0));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn oversized_keys_and_values_are_rejected() {
        let mut s = store_with(&[("a", "1")]);
        let before = s.clone();
        let big_key = vec![7u8; MAX_KEY_LEN + 1];
        let big_value = vec![7u8; MAX_VALUE_LEN + 1];
        let key_err = KvResult::Error(KvError::KeyTooLarge);
        let value_err = KvResult::Error(KvError::ValueTooLarge);
        let cases = [
            (
                KvOp::Put {
                    key: big_key.clone(),
                    value: k("v"),
                },
                key_err.clone(),
            ),
            (
                KvOp::Put {
                    key: big_key.clone(),
                    value: big_value.clone(),
                },
                key_err.clone(),
            ),
            (
                KvOp::Put {
                    key: k("a"),
                    value: big_value.clone(),
                },
                value_err.clone(),
            ),
            (
                KvOp::Get {
                    key: big_key.clone(),
                },
                key_err.clone(),
            ),
            (
                KvOp::Delete {
                    key: big_key.clone(),
                },
                key_err.clone(),
            ),
            (
                KvOp::Cas {
                    key: big_key.clone(),
                    expected: None,
                    new: k("v"),
                },
                key_err.clone(),
            ),
            (
                KvOp::Cas {
                    key: k("a"),
                    expected: Some(k("1")),
                    new: big_value.clone(),
                },
                value_err.clone(),
            ),
            (
                KvOp::Cas {
                    key: k("a"),
                    expected: Some(big_value.clone()),
                    new: k("2"),
                },
                value_err.clone(),
            ),
        ];
        for (op, expected) in cases {
            assert_eq!(apply(&mut s, &op), expected, "{op:?}");
        }
        assert_eq!(s, before);
    }

    #[test]
    fn limits_are_inclusive() {
        let mut s = KvStore::new();
        let op = KvOp::Put {
            key: vec![1u8; MAX_KEY_LEN],
            value: vec![2u8; MAX_VALUE_LEN],
        };
        assert_eq!(apply(&mut s, &op), KvResult::Put { previous: None });
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn malformed_operations_yield_error_results() {
        let mut s = store_with(&[("a", "1")]);
        let before = s.clone();
        let mut trailing = put("b", "2").encode();
        trailing.push(0);
        let mut truncated = put("b", "2").encode();
        truncated.pop();
        let inputs: Vec<Vec<u8>> = vec![
            Vec::new(),
            vec![0xFF],
            vec![200, 1, 2, 3],
            vec![0, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F],
            trailing,
            truncated,
        ];
        for bytes in &inputs {
            let applied = KvResult::decode(&s.apply(bytes)).expect("result decodes");
            assert!(
                matches!(applied, KvResult::Error(KvError::Malformed(_))),
                "{bytes:?} -> {applied:?}"
            );
            let queried = KvResult::decode(&s.query(bytes)).expect("result decodes");
            assert!(matches!(queried, KvResult::Error(KvError::Malformed(_))));
            assert!(!s.is_read_only(bytes));
        }
        assert_eq!(s, before);
    }

    #[test]
    fn query_answers_reads_and_refuses_writes() {
        let s = store_with(&[("a", "1"), ("b", "2")]);
        let before = s.clone();
        assert_eq!(
            query(&s, &get("a")),
            KvResult::Get {
                value: Some(k("1"))
            }
        );
        assert_eq!(
            query(&s, &scan("a", "z", 10)),
            KvResult::Scan {
                items: items(&[("a", "1"), ("b", "2")]),
                more: false
            }
        );
        let writes = [
            put("c", "3"),
            KvOp::Delete { key: k("a") },
            KvOp::Cas {
                key: k("a"),
                expected: Some(k("1")),
                new: k("9"),
            },
        ];
        for op in &writes {
            assert_eq!(query(&s, op), KvResult::Error(KvError::NotReadOnly));
        }
        assert_eq!(s, before);
    }

    #[test]
    fn read_only_classification() {
        let s = KvStore::new();
        assert!(get("a").is_read_only());
        assert!(scan("a", "b", 1).is_read_only());
        assert!(!put("a", "b").is_read_only());
        assert!(!KvOp::Delete { key: k("a") }.is_read_only());
        assert!(!KvOp::Cas {
            key: k("a"),
            expected: None,
            new: k("b")
        }
        .is_read_only());
        assert!(s.is_read_only(&get("a").encode()));
        assert!(s.is_read_only(&scan("a", "b", 1).encode()));
        assert!(!s.is_read_only(&put("a", "b").encode()));
    }

    #[test]
    fn ops_and_results_round_trip() {
        let ops = [
            put("k", "v"),
            get("k"),
            KvOp::Delete { key: k("k") },
            KvOp::Cas {
                key: k("k"),
                expected: None,
                new: k("n"),
            },
            KvOp::Cas {
                key: k("k"),
                expected: Some(k("e")),
                new: k("n"),
            },
            scan("a", "b", 7),
        ];
        for op in &ops {
            assert_eq!(KvOp::decode(&op.encode()).as_ref(), Ok(op));
        }
        let results = [
            KvResult::Put { previous: None },
            KvResult::Get {
                value: Some(k("v")),
            },
            KvResult::Delete { existed: true },
            KvResult::Cas {
                swapped: false,
                current: Some(k("c")),
            },
            KvResult::Scan {
                items: items(&[("a", "1")]),
                more: true,
            },
            KvResult::Error(KvError::Malformed("x".into())),
            KvResult::Error(KvError::KeyTooLarge),
            KvResult::Error(KvError::ValueTooLarge),
            KvResult::Error(KvError::NotReadOnly),
        ];
        for r in &results {
            assert_eq!(KvResult::decode(&r.encode()).as_ref(), Ok(r));
        }
        assert!(KvResult::decode(&[0xFF]).is_err());
    }

    #[test]
    fn snapshot_round_trip_preserves_contents_and_digest() {
        let s = store_with(&[("a", "1"), ("b", ""), ("", "empty key"), ("zz", "26")]);
        let snap = s.snapshot();
        // Restore into a store with different contents: replaced, not merged.
        let mut t = store_with(&[("other", "x"), ("a", "old")]);
        t.restore(&snap).expect("restores");
        assert_eq!(t, s);
        assert_eq!(t.digest(), s.digest());
        assert_eq!(t.snapshot(), snap);

        let mut empty = store_with(&[("x", "y")]);
        empty
            .restore(&KvStore::new().snapshot())
            .expect("restores empty");
        assert!(empty.is_empty());
        assert_eq!(empty.digest(), KvStore::new().digest());
    }

    #[test]
    fn pages_round_trip_and_stay_put_when_other_keys_change() {
        let mut a = KvStore::with_page_target(64);
        for i in 0..200 {
            apply(&mut a, &put(&format!("key{i:03}"), &format!("value-{i}")));
        }
        let pages = a.snapshot_pages();
        assert!(pages.len() > 10, "{} pages", pages.len());
        assert!(pages.iter().all(|p| p.len() < crate::PAGE_MAX));
        let mut b = KvStore::with_page_target(64);
        b.restore_pages(&pages).expect("own pages restore");
        assert_eq!(b.digest(), a.digest());
        assert_eq!(b.snapshot_pages(), pages);
        // One more key changes only the pages around it.
        apply(&mut a, &put("key100x", "new"));
        let after = a.snapshot_pages();
        let same = after.iter().filter(|p| pages.contains(p)).count();
        assert!(
            same + 3 >= pages.len(),
            "{same} of {} pages kept",
            pages.len()
        );
        // Garbage, a missing header and out-of-order pages are refused.
        let mut c = KvStore::new();
        assert!(c.restore_pages(&[]).is_err());
        assert!(c.restore_pages(&[Page::new(b"junk".to_vec())]).is_err());
        let mut swapped = pages.clone();
        swapped.swap(1, 2);
        assert!(c.restore_pages(&swapped).is_err());
        assert!(c.is_empty());
        // The empty store is one page.
        let empty = KvStore::new().snapshot_pages();
        assert_eq!(empty.len(), 1);
        c.restore_pages(&empty).expect("empty pages restore");
    }

    #[test]
    fn restore_rejects_garbage_and_leaves_state_unchanged() {
        let good = store_with(&[("a", "1"), ("b", "2"), ("c", "3")]).snapshot();
        let mut bad: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"PBK".to_vec(),
            b"PBKV".to_vec(),
            b"XXXX\x01\x00".to_vec(),
            b"PBKV\x02\x00".to_vec(),
            b"PBKV\x01\xFF\xFF\xFF\xFF\x0F".to_vec(),
        ];
        // Every proper prefix of a good snapshot.
        for len in 0..good.len() {
            bad.push(good[..len].to_vec());
        }
        // Trailing bytes.
        let mut long = good.clone();
        long.push(0);
        bad.push(long);
        // Unsorted and duplicate keys.
        let unsorted: Vec<(&[u8], &[u8])> = vec![(b"b", b"1"), (b"a", b"2")];
        let dup: Vec<(&[u8], &[u8])> = vec![(b"a", b"1"), (b"a", b"2")];
        let big_key = vec![0u8; MAX_KEY_LEN + 1];
        let oversized: Vec<(&[u8], &[u8])> = vec![(&big_key, b"1")];
        let big_value = vec![0u8; MAX_VALUE_LEN + 1];
        let oversized_value: Vec<(&[u8], &[u8])> = vec![(b"a", &big_value)];
        for entries in [unsorted, dup, oversized, oversized_value] {
            let mut snap = b"PBKV\x01".to_vec();
            snap.extend(postcard::to_stdvec(&entries).expect("encodes"));
            bad.push(snap);
        }

        let mut s = store_with(&[("keep", "me")]);
        let before = s.clone();
        let digest = s.digest();
        for bytes in &bad {
            assert!(s.restore(bytes).is_err(), "{bytes:?} accepted");
            assert_eq!(s, before);
            assert_eq!(s.digest(), digest);
        }
        // Flipping single bytes never panics; whatever is accepted is canonical.
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut corrupt = good.clone();
                corrupt[i] ^= 1 << bit;
                let mut t = s.clone();
                if t.restore(&corrupt).is_ok() {
                    assert_eq!(t.snapshot(), corrupt);
                } else {
                    assert_eq!(t, before);
                }
            }
        }
    }

    #[test]
    fn digest_is_independent_of_history() {
        let a = store_with(&[("a", "1"), ("b", "2"), ("c", "3")]);
        let mut b = KvStore::new();
        b.execute(&put("c", "3"));
        b.execute(&put("x", "gone"));
        b.execute(&put("a", "0"));
        b.execute(&put("b", "2"));
        b.execute(&KvOp::Delete { key: k("x") });
        b.execute(&KvOp::Cas {
            key: k("a"),
            expected: Some(k("0")),
            new: k("1"),
        });
        assert_eq!(a, b);
        assert_eq!(a.digest(), b.digest());
        assert_eq!(a.snapshot(), b.snapshot());

        // Different states give different digests, including splits of the
        // same bytes between key and value.
        let c = store_with(&[("ab", "c")]);
        let d = store_with(&[("a", "bc")]);
        assert_ne!(c.digest(), d.digest());
        assert_ne!(KvStore::new().digest(), store_with(&[("", "")]).digest());
    }

    /// A small deterministic generator (SplitMix64) for the randomised test.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn bytes(&mut self, max_len: u64) -> Vec<u8> {
            let len = self.below(max_len + 1);
            (0..len).map(|_| b"abc"[self.below(3) as usize]).collect()
        }
    }

    /// Random operation bytes over a small key space, with some invalid inputs.
    fn random_op(rng: &mut Rng) -> Vec<u8> {
        let key = rng.bytes(2);
        let op = match rng.below(20) {
            0..=5 => KvOp::Put {
                key,
                value: rng.bytes(3),
            },
            6..=8 => KvOp::Get { key },
            9..=11 => KvOp::Delete { key },
            12..=15 => KvOp::Cas {
                key,
                expected: if rng.below(2) == 0 {
                    None
                } else {
                    Some(rng.bytes(3))
                },
                new: rng.bytes(3),
            },
            16..=17 => KvOp::Scan {
                from: rng.bytes(2),
                to: rng.bytes(3),
                limit: rng.below(6) as u32,
            },
            18 => KvOp::Put {
                key: vec![0; MAX_KEY_LEN + 1],
                value: Vec::new(),
            },
            _ => {
                let mut bytes = KvOp::Get { key }.encode();
                bytes.push(rng.below(256) as u8);
                return bytes;
            }
        };
        op.encode()
    }

    #[test]
    fn random_ops_agree_across_snapshot_restore() {
        for seed in 0..40u64 {
            let mut rng = Rng(seed);
            let mut a = KvStore::new();
            let mut b = KvStore::new();
            let steps = 300;
            let restore_at = rng.below(steps);
            for step in 0..steps {
                if step == restore_at {
                    // `b` starts over from a snapshot of `a`, via a store that
                    // holds unrelated data.
                    let mut fresh = store_with(&[("zzz", "unrelated")]);
                    fresh.restore(&a.snapshot()).expect("restores");
                    assert_eq!(fresh.digest(), a.digest());
                    b = fresh;
                }
                let op = random_op(&mut rng);
                if a.is_read_only(&op) {
                    let before = a.clone();
                    assert_eq!(a.query(&op), a.apply(&op), "seed {seed} step {step}");
                    assert_eq!(a, before);
                }
                let ra = a.apply(&op);
                let rb = b.apply(&op);
                assert_eq!(ra, rb, "seed {seed} step {step}");
                assert!(KvResult::decode(&ra).is_ok());
                assert_eq!(a.digest(), b.digest(), "seed {seed} step {step}");
                assert_eq!(a, b);
            }
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = Rng(7);
        let mut s = store_with(&[("a", "1")]);
        for _ in 0..2000 {
            let len = rng.below(24) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let _ = s.is_read_only(&bytes);
            assert!(KvResult::decode(&s.query(&bytes)).is_ok());
            assert!(KvResult::decode(&s.apply(&bytes)).is_ok());
            let mut t = s.clone();
            if t.restore(&bytes).is_err() {
                assert_eq!(t, s);
            }
        }
    }
}
