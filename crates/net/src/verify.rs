//! A parallel, batched signature-verification stage between the network and
//! the protocol task.
//!
//! ```text
//! input ──► dispatcher ──(batch ≤ max_batch)──► blocking worker (≤ workers at once)
//!                                                 │ Verifier::verify_batch
//! output ◄── forwarder (batches in input order) ◄─┘
//! ```
//!
//! The dispatcher takes one item, then drains whatever else is already queued
//! (up to `max_batch`) without waiting, and checks the batch on tokio's
//! blocking pool. At most `workers` batches are checked at once and at most
//! `workers` more wait for the forwarder, so besides the channels the caller
//! passes in the stage holds about `(2 × workers + 2) × max_batch` items. The
//! forwarder emits results in input order, so per-sender order survives.
//! Failures are counted and logged, never forwarded.
//!
//! The stage checks that every signature a value carries is valid for the
//! signer the value names. It does not check that the signer is the link peer
//! in `(PublicKey, T)`: values may be relayed, so that is the protocol's call.

use crate::Short;
use pbft_crypto::{Authenticated, PublicKey, Verified, Verifier, VerifyError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, error, Instrument};

/// Items checked in one batch when not set otherwise.
pub const DEFAULT_MAX_BATCH: usize = 64;

/// Counters of a verification stage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerifyStats {
    /// Items whose signatures all verified and that were forwarded.
    pub verified: u64,
    /// Items dropped because a signature was bad or a signer unknown.
    pub rejected: u64,
    /// Batches checked.
    pub batches: u64,
}

#[derive(Default)]
struct Counters {
    verified: AtomicU64,
    rejected: AtomicU64,
    batches: AtomicU64,
}

/// Handle on a running verification stage. The stage ends when its input
/// channel closes (after forwarding what it holds) or its output receiver is
/// dropped; dropping the handle does not stop it.
#[derive(Debug)]
pub struct VerifierHandle {
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Counters")
    }
}

impl VerifierHandle {
    /// A snapshot of the counters.
    pub fn stats(&self) -> VerifyStats {
        VerifyStats {
            verified: self.counters.verified.load(Ordering::Relaxed),
            rejected: self.counters.rejected.load(Ordering::Relaxed),
            batches: self.counters.batches.load(Ordering::Relaxed),
        }
    }

    /// Stops the stage now, dropping what it holds.
    pub fn abort(&self) {
        self.task.abort();
    }

    /// Waits until the stage has ended.
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

/// Starts a verification stage with batches of at most [`DEFAULT_MAX_BATCH`]
/// items and at most `workers` (at least 1) batches checked in parallel.
/// Must be called within a tokio runtime.
pub fn spawn_verifier<T>(
    verifier: Verifier,
    keys: Arc<T::Keys>,
    input: mpsc::Receiver<(PublicKey, T)>,
    output: mpsc::Sender<(PublicKey, Verified<T>)>,
    workers: usize,
) -> VerifierHandle
where
    T: Authenticated + Send + 'static,
    T::Keys: Send + Sync + 'static,
{
    spawn_verifier_with(verifier, keys, input, output, workers, DEFAULT_MAX_BATCH)
}

type BatchResult<T> = Vec<(PublicKey, Result<Verified<T>, VerifyError>)>;

/// [`spawn_verifier`] with an explicit largest batch (at least 1).
pub fn spawn_verifier_with<T>(
    verifier: Verifier,
    keys: Arc<T::Keys>,
    mut input: mpsc::Receiver<(PublicKey, T)>,
    output: mpsc::Sender<(PublicKey, Verified<T>)>,
    workers: usize,
    max_batch: usize,
) -> VerifierHandle
where
    T: Authenticated + Send + 'static,
    T::Keys: Send + Sync + 'static,
{
    let workers = workers.max(1);
    let max_batch = max_batch.max(1);
    let counters = Arc::new(Counters::default());
    let permits = Arc::new(Semaphore::new(workers));
    let (pending_tx, mut pending_rx) = mpsc::channel::<JoinHandle<BatchResult<T>>>(workers);

    let output_watch = output.clone();
    let dispatcher = async move {
        loop {
            let first = tokio::select! {
                item = input.recv() => item,
                _ = output_watch.closed() => None,
            };
            let Some(first) = first else {
                break;
            };
            let mut batch = Vec::with_capacity(max_batch.min(input.len() + 1));
            batch.push(first);
            while batch.len() < max_batch {
                match input.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let verifier = verifier.clone();
            let keys = keys.clone();
            let job = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                let (senders, values): (Vec<PublicKey>, Vec<T>) = batch.into_iter().unzip();
                let results = verifier.verify_batch(values, &*keys);
                senders.into_iter().zip(results).collect::<BatchResult<T>>()
            });
            if pending_tx.send(job).await.is_err() {
                break;
            }
        }
        debug!("verification dispatcher stopped");
    };

    let forward_counters = counters.clone();
    let forwarder = async move {
        while let Some(job) = pending_rx.recv().await {
            let results = match job.await {
                Ok(results) => results,
                Err(e) => {
                    error!(error = %e, "verification worker failed; batch dropped");
                    continue;
                }
            };
            inc(&forward_counters.batches);
            for (from, result) in results {
                match result {
                    Ok(verified) => {
                        if output.send((from, verified)).await.is_err() {
                            debug!("verified-message receiver dropped; stopping");
                            return;
                        }
                        inc(&forward_counters.verified);
                    }
                    Err(e) => {
                        inc(&forward_counters.rejected);
                        debug!(peer = %Short(&from), error = %e, "dropping message that failed signature verification");
                    }
                }
            }
        }
    };

    let task = tokio::spawn(
        async move {
            tokio::join!(dispatcher, forwarder);
        }
        .instrument(tracing::info_span!("verify")),
    );
    VerifierHandle { counters, task }
}

fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}
