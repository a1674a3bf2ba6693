//! How many threads one replica process runs: the tokio runtime's workers
//! and the signature-verification threads.
//!
//! Replicas often share a host (a local testnet runs four on one machine),
//! so the defaults follow the host's cores instead of taking a thread per
//! core for each: half the cores each (at least 1, at most 4 runtime workers
//! and 8 verification threads). One runtime thread means a current-thread
//! runtime: no work stealing and no cross-thread wake-ups between tasks.
//!
//! Zero verification threads means signatures are checked **inline**, by a
//! task on the runtime (see [`pbft_net::spawn_verifier`]): no thread
//! hand-off per message, at the price of checking on the runtime's threads.
//! That is the default on hosts of fewer than [`INLINE_BELOW_CORES`] cores,
//! where a verification thread per replica buys no parallelism the replicas
//! do not already compete for: on 2 cores with 4 replicas, inline checking
//! cut the CPU per operation by about a tenth (docs/benchmarks.md).
//!
//! Record-log writes and fsyncs run on one log writer thread of their own
//! whatever the size.

use std::num::NonZeroUsize;

/// Most runtime workers the default picks.
const DEFAULT_RUNTIME_MAX: usize = 4;
/// Most verification threads the default picks.
const DEFAULT_VERIFY_MAX: usize = 8;
/// Hosts with fewer cores than this check signatures inline by default.
pub const INLINE_BELOW_CORES: usize = 4;

/// Thread counts of one replica process; `None` picks the default for the
/// host's cores (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Threads {
    /// Tokio runtime threads; 1 is a current-thread runtime.
    pub runtime: Option<NonZeroUsize>,
    /// Signature-verification threads; 0 checks inline on the runtime.
    pub verify: Option<usize>,
}

fn half_of(cores: usize, max: usize) -> usize {
    (cores / 2).clamp(1, max)
}

fn default_verify(cores: usize) -> usize {
    if cores < INLINE_BELOW_CORES {
        0
    } else {
        half_of(cores, DEFAULT_VERIFY_MAX)
    }
}

impl Threads {
    fn cores() -> usize {
        std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
    }

    /// The runtime threads to start.
    pub fn runtime_threads(&self) -> usize {
        self.runtime.map_or_else(
            || half_of(Self::cores(), DEFAULT_RUNTIME_MAX),
            NonZeroUsize::get,
        )
    }

    /// The verification threads to start (0: check inline).
    pub fn verify_threads(&self) -> usize {
        self.verify.unwrap_or_else(|| default_verify(Self::cores()))
    }

    /// Builds the runtime: current-thread for one thread, else multi-thread
    /// with [`Threads::runtime_threads`] workers; I/O and timers enabled.
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut builder = match self.runtime_threads() {
            1 => tokio::runtime::Builder::new_current_thread(),
            n => {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(n);
                b
            }
        };
        builder.enable_all().build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_take_half_the_cores_within_bounds() {
        assert_eq!(half_of(1, 4), 1);
        assert_eq!(half_of(2, 4), 1);
        assert_eq!(half_of(3, 4), 1);
        assert_eq!(half_of(8, 4), 4);
        assert_eq!(half_of(64, 8), 8);
        assert_eq!(default_verify(1), 0);
        assert_eq!(default_verify(2), 0);
        assert_eq!(default_verify(3), 0);
        assert_eq!(default_verify(4), 2);
        assert_eq!(default_verify(64), 8);
    }

    #[test]
    fn explicit_counts_win_and_build_a_runtime() {
        let one = NonZeroUsize::MIN;
        let two = one.saturating_add(1);
        let threads = Threads {
            runtime: Some(two),
            verify: Some(1),
        };
        assert_eq!(
            (threads.runtime_threads(), threads.verify_threads()),
            (2, 1)
        );
        let rt = threads.runtime().expect("multi-thread runtime");
        assert_eq!(rt.metrics().num_workers(), 2);
        let single = Threads {
            runtime: Some(one),
            verify: Some(0),
        };
        assert_eq!(single.verify_threads(), 0);
        let rt = single.runtime().expect("current-thread runtime");
        assert_eq!(rt.metrics().num_workers(), 1);
        assert_eq!(rt.block_on(async { 6 * 7 }), 42);
    }
}
