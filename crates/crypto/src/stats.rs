//! Process-wide counters of signature checks, for metrics.
//!
//! Every check that [`Verifier`](crate::Verifier) runs is counted here: how
//! many signatures, in how many calls, how many of those calls were batch
//! verifications, and the time spent. The counters are per process (a
//! replica process has one verifier stage; tests that run several replicas
//! in one process see their sum). Relaxed atomics: a few nanoseconds against
//! tens of microseconds per signature.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

static SIGNATURES: AtomicU64 = AtomicU64::new(0);
static CALLS: AtomicU64 = AtomicU64::new(0);
static BATCH_CALLS: AtomicU64 = AtomicU64::new(0);
static BATCHED_SIGNATURES: AtomicU64 = AtomicU64::new(0);
static NANOS: AtomicU64 = AtomicU64::new(0);

/// A snapshot of this process's signature-check counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckStats {
    /// Signatures checked (each signature of a failed batch that is checked
    /// again alone counts again: that is work done).
    pub signatures: u64,
    /// Check calls (one signature alone, or one batch).
    pub calls: u64,
    /// Calls that were batch verifications (two or more signatures).
    pub batch_calls: u64,
    /// Signatures checked in batch verifications.
    pub batched_signatures: u64,
    /// Time spent checking, in nanoseconds (wall clock of the calling thread).
    pub nanos: u64,
}

/// This process's counters so far.
pub fn check_stats() -> CheckStats {
    CheckStats {
        signatures: SIGNATURES.load(Ordering::Relaxed),
        calls: CALLS.load(Ordering::Relaxed),
        batch_calls: BATCH_CALLS.load(Ordering::Relaxed),
        batched_signatures: BATCHED_SIGNATURES.load(Ordering::Relaxed),
        nanos: NANOS.load(Ordering::Relaxed),
    }
}

/// Counts one check of `signatures` signatures; records its time when dropped.
pub(crate) struct CheckTimer {
    started: Instant,
}

impl CheckTimer {
    pub(crate) fn start(signatures: usize) -> CheckTimer {
        let n = signatures as u64;
        SIGNATURES.fetch_add(n, Ordering::Relaxed);
        CALLS.fetch_add(1, Ordering::Relaxed);
        if n > 1 {
            BATCH_CALLS.fetch_add(1, Ordering::Relaxed);
            BATCHED_SIGNATURES.fetch_add(n, Ordering::Relaxed);
        }
        CheckTimer {
            started: Instant::now(),
        }
    }
}

impl Drop for CheckTimer {
    fn drop(&mut self) {
        let nanos = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        NANOS.fetch_add(nanos, Ordering::Relaxed);
    }
}
