//! The application side of the replication service.
//!
//! [`StateMachine`] is what PBFT replicates: a deterministic state machine with
//! a set of states, an input alphabet (operations, as bytes), an output function
//! (results, as bytes), a transition ([`StateMachine::apply`]) and a start state
//! (whatever `new` builds). [`kv::KvStore`] is the key-value store the product ships.

pub mod kv;
mod page;
pub mod paging;

pub use page::{leaf_digest, Page};
use pbft_crypto::Digest;

/// A snapshot that cannot be restored.
#[derive(Debug, thiserror::Error)]
#[error("invalid snapshot: {0}")]
pub struct SnapshotError(pub String);

/// A deterministic state machine replicated by PBFT.
///
/// # Contract
/// * `apply` is a pure function of the current state and `op`: every replica
///   that applies the same operations in the same order from the same start
///   state reaches the same state and returns the same outputs. No clocks, no
///   randomness, no iteration over hash maps.
/// * `apply` and `query` are total: a malformed operation yields an error
///   *result* (encoded in the returned bytes), never a panic.
/// * `digest` is a function of the state alone; `restore(snapshot())` gives a
///   state with the same digest.
pub trait StateMachine: Send {
    /// Applies `op`, changing the state, and returns the result.
    fn apply(&mut self, op: &[u8]) -> Vec<u8>;
    /// Evaluates a read-only `op` against the current state without changing it.
    fn query(&self, op: &[u8]) -> Vec<u8>;
    /// Whether `op` is read-only, so that `query` may answer it.
    fn is_read_only(&self, op: &[u8]) -> bool;
    /// The whole state as bytes.
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the state with the one `snapshot` encodes.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError>;
    /// A digest of the state.
    fn digest(&self) -> Digest;

    /// The whole state as pages of at most [`PAGE_MAX`] bytes each, for
    /// checkpoints and chunked state transfer: the replica hashes the pages'
    /// digests into the checkpoint's tree, persists each page it has not
    /// persisted before, and a replica that lags fetches only the pages
    /// whose digests differ from its own. Deterministic like `snapshot`.
    /// The default cuts `snapshot` into [`PAGE_TARGET`]-byte pieces, so
    /// every checkpoint costs the whole state; a state machine that keeps
    /// the pages of its last call and cuts again only around what changed
    /// (the key-value store does) makes a checkpoint cost what changed.
    fn snapshot_pages(&mut self) -> Vec<Page> {
        let bytes = self.snapshot();
        if bytes.is_empty() {
            return vec![Page::new(Vec::new())];
        }
        bytes
            .chunks(PAGE_TARGET)
            .map(|c| Page::new(c.to_vec()))
            .collect()
    }

    /// Replaces the state with the one `pages` (from `snapshot_pages`)
    /// encode; on error the state is unchanged.
    fn restore_pages(&mut self, pages: &[Page]) -> Result<(), SnapshotError> {
        let bytes: Vec<u8> = pages
            .iter()
            .flat_map(|p| p.bytes().iter().copied())
            .collect();
        self.restore(&bytes)
    }
}

/// The size state-machine pages aim at.
pub const PAGE_TARGET: usize = 256 * 1024;

/// The largest page a state machine may produce (and a replica accepts in
/// state transfer): well below the network's frame limit.
pub const PAGE_MAX: usize = 1024 * 1024;
