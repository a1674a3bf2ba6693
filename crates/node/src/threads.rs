//! How many threads one replica process runs: the tokio runtime's workers
//! and the signature-verification threads.
//!
//! Replicas often share a host (a local testnet runs four on one machine),
//! so the defaults follow the host's cores instead of taking a thread per
//! core for each: half the cores each (at least 1, at most 4 runtime workers
//! and 8 verification threads). One runtime thread means a current-thread
//! runtime: no work stealing and no cross-thread wake-ups between tasks.
//! Record-log writes and fsyncs run on one log writer thread of their own
//! whatever the size.

use std::num::NonZeroUsize;

/// Most runtime workers the default picks.
const DEFAULT_RUNTIME_MAX: usize = 4;
/// Most verification threads the default picks.
const DEFAULT_VERIFY_MAX: usize = 8;

/// Thread counts of one replica process; `None` picks the default for the
/// host's cores (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Threads {
    /// Tokio runtime threads; 1 is a current-thread runtime.
    pub runtime: Option<NonZeroUsize>,
    /// Signature-verification threads.
    pub verify: Option<NonZeroUsize>,
}

fn half_of(cores: usize, max: usize) -> usize {
    (cores / 2).clamp(1, max)
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

    /// The verification threads to start.
    pub fn verify_threads(&self) -> usize {
        self.verify.map_or_else(
            || half_of(Self::cores(), DEFAULT_VERIFY_MAX),
            NonZeroUsize::get,
        )
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
    }

    #[test]
    fn explicit_counts_win_and_build_a_runtime() {
        let one = NonZeroUsize::MIN;
        let two = one.saturating_add(1);
        let threads = Threads {
            runtime: Some(two),
            verify: Some(one),
        };
        assert_eq!(
            (threads.runtime_threads(), threads.verify_threads()),
            (2, 1)
        );
        let rt = threads.runtime().expect("multi-thread runtime");
        assert_eq!(rt.metrics().num_workers(), 2);
        let single = Threads {
            runtime: Some(one),
            verify: None,
        };
        let rt = single.runtime().expect("current-thread runtime");
        assert_eq!(rt.metrics().num_workers(), 1);
        assert_eq!(rt.block_on(async { 6 * 7 }), 42);
    }
}
