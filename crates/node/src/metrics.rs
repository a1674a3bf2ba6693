//! Counters of one node, shared by its tasks and logged periodically.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters not kept by the endpoint, the verification stage or the core.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    /// Frames that did not decode as a message.
    pub(crate) garbage_frames: AtomicU64,
    /// Decoded messages a client is not allowed to send (replica traffic).
    pub(crate) refused_frames: AtomicU64,
    /// Client messages (requests, status requests) naming another client
    /// than the link's authenticated key.
    pub(crate) foreign_client_frames: AtomicU64,
    /// Sends the endpoint refused (queue full, no route, too large).
    pub(crate) send_errors: AtomicU64,
    /// Batches executed.
    pub(crate) executed_batches: AtomicU64,
    /// Requests executed (duplicates skipped).
    pub(crate) executed_requests: AtomicU64,
    /// Steps whose records were appended (one fsync each).
    pub(crate) fsyncs: AtomicU64,
}

/// Adds `n` to `counter`.
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Reads `counter`.
pub(crate) fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}
