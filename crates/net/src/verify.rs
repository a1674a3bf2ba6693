//! A batched signature-verification stage between the network and the
//! protocol task, on a fixed pool of dedicated threads or inline on the
//! runtime.
//!
//! ```text
//!             ┌─► thread 1: take ≤ max_batch ─► Verifier::verify_batch ─► emit in turn ─┐
//! input lanes ┤                                                                          ├──► output
//!             └─► thread w: take ≤ max_batch ─► Verifier::verify_batch ─► emit in turn ─┘
//! ```
//!
//! The input is two [`Lanes`]: items of the first (a replica's: messages
//! from replicas) are taken ahead of the second's (messages from clients),
//! with a share kept for the second, so a client flood does not delay
//! replica traffic here either.
//!
//! Each of the `workers` threads (named `pbft-verify-<i>`) takes one item,
//! then whatever else is already queued (up to `max_batch`) without waiting,
//! checks the batch and forwards the results. A thread takes a ticket with
//! its batch and forwards only when every earlier ticket has been forwarded,
//! so output follows input order (per-sender order survives) while batches
//! are checked in parallel. No task is spawned and no thread is handed work
//! per batch: an item costs one wake-up of a verification thread, and of the
//! consumer.
//!
//! With no threads (`workers == 0`) the stage is one task on the caller's
//! runtime that takes batches the same way and checks each on the runtime
//! thread polling it, yielding between batches. That costs no thread
//! hand-off per item (two futex wake-ups and context switches fewer), which
//! is worth more than a parallel check when replicas share a small host; the
//! price is that a batch (at most `max_batch` checks, about a millisecond at
//! 64) holds that runtime thread.
//!
//! Besides the channels the caller passes in, the stage holds at
//! most `max(workers, 1) × max_batch` items. Failures are counted and logged, never
//! forwarded.
//!
//! The stage checks that every signature a value carries is valid for the
//! signer the value names. It does not check that the signer is the link peer
//! ([`Unchecked::from`]): values may be relayed, so that is the protocol's call.
//! Each item's [`Held`] share of an inbound budget goes along to the output
//! (and is dropped with a rejected item).

use crate::{Held, Lanes, Short};
use pbft_crypto::{Authenticated, PublicKey, Verified, Verifier};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch};
use tracing::{debug, Instrument};

/// Items checked in one batch when not set otherwise.
pub const DEFAULT_MAX_BATCH: usize = 64;

/// A value whose signatures are to be checked, with the link peer it came
/// from and the inbound budget it holds.
#[derive(Debug)]
pub struct Unchecked<T> {
    /// The link peer (not necessarily the signer: values may be relayed).
    pub from: PublicKey,
    /// The value.
    pub value: T,
    /// Its share of an inbound lane's byte budget.
    pub held: Held,
}

impl<T> Unchecked<T> {
    /// A value from `from` that holds no budget.
    pub fn new(from: PublicKey, value: T) -> Self {
        Unchecked {
            from,
            value,
            held: Held::nothing(),
        }
    }
}

/// A value whose signatures all verified, as the stage forwards it.
#[derive(Debug)]
pub struct Checked<T> {
    /// The link peer it came from.
    pub from: PublicKey,
    /// The verified value.
    pub value: Verified<T>,
    /// Its share of an inbound lane's byte budget: drop it once the value is
    /// consumed.
    pub held: Held,
}

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
/// channel closes (after forwarding what it holds), when its output receiver
/// is dropped, or on [`VerifierHandle::abort`]; dropping the handle does not
/// stop it.
#[derive(Debug)]
pub struct VerifierHandle {
    counters: Arc<Counters>,
    stop: watch::Sender<bool>,
    /// Yields `None` once every verification thread has ended.
    done: mpsc::Receiver<()>,
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

    /// Stops the stage now: the threads end once the batch each is checking
    /// (if any) is done, dropping what they hold.
    pub fn abort(&self) {
        self.stop.send_replace(true);
    }

    /// Waits until every verification thread has ended.
    pub async fn join(mut self) {
        while self.done.recv().await.is_some() {}
    }
}

/// Starts a verification stage with batches of at most [`DEFAULT_MAX_BATCH`]
/// items on `workers` dedicated threads, or inline in a task on the current
/// runtime if `workers` is 0. Must be called within a tokio runtime (the
/// threads wait on the channels through its handle).
pub fn spawn_verifier<T>(
    verifier: Verifier,
    keys: Arc<T::Keys>,
    input: impl Into<Lanes<Unchecked<T>>>,
    output: mpsc::Sender<Checked<T>>,
    workers: usize,
) -> VerifierHandle
where
    T: Authenticated + Send + 'static,
    T::Keys: Send + Sync + 'static,
{
    spawn_verifier_with(verifier, keys, input, output, workers, DEFAULT_MAX_BATCH)
}

/// [`spawn_verifier`] with an explicit largest batch (at least 1).
///
/// # Panics
/// If called outside a tokio runtime, or if the operating system refuses to
/// start a thread.
pub fn spawn_verifier_with<T>(
    verifier: Verifier,
    keys: Arc<T::Keys>,
    input: impl Into<Lanes<Unchecked<T>>>,
    output: mpsc::Sender<Checked<T>>,
    workers: usize,
    max_batch: usize,
) -> VerifierHandle
where
    T: Authenticated + Send + 'static,
    T::Keys: Send + Sync + 'static,
{
    let counters = Arc::new(Counters::default());
    let (stop, stop_rx) = watch::channel(false);
    let (done_tx, done) = mpsc::channel(1);
    let shared = Arc::new(Shared {
        input: tokio::sync::Mutex::new(Intake {
            input: input.into(),
            next_ticket: 0,
        }),
        turn: Mutex::new(0),
        turn_changed: Condvar::new(),
    });
    let worker = Worker {
        verifier,
        keys,
        shared,
        output,
        counters: counters.clone(),
        stop: stop_rx,
        max_batch: max_batch.max(1),
        _done: done_tx,
    };
    if workers == 0 {
        tokio::spawn(worker.run_inline().in_current_span());
    } else {
        let handle = Handle::current();
        for i in 0..workers {
            let worker = worker.clone_for_thread();
            let handle = handle.clone();
            let span = tracing::info_span!("verify", thread = i);
            std::thread::Builder::new()
                .name(format!("pbft-verify-{i}"))
                .spawn(move || span.in_scope(|| worker.run(&handle)))
                .unwrap_or_else(|e| panic!("cannot start a verification thread: {e}"));
        }
    }
    VerifierHandle {
        counters,
        stop,
        done,
    }
}

/// The input and the ticket of the next batch taken from it.
struct Intake<T> {
    input: Lanes<Unchecked<T>>,
    next_ticket: u64,
}

struct Shared<T> {
    /// Held while a thread takes a batch (waiting for its first item).
    input: tokio::sync::Mutex<Intake<T>>,
    /// The ticket whose batch may be forwarded now.
    turn: Mutex<u64>,
    turn_changed: Condvar,
}

impl<T> Shared<T> {
    /// Waits until `ticket`'s batch may be forwarded; the guard passes the
    /// turn on.
    fn wait_turn(&self, ticket: u64) -> TurnGuard<'_> {
        let shared = self;
        let mut turn = shared.turn.lock().unwrap_or_else(PoisonError::into_inner);
        while *turn != ticket {
            turn = shared
                .turn_changed
                .wait(turn)
                .unwrap_or_else(PoisonError::into_inner);
        }
        TurnGuard {
            turn: &shared.turn,
            changed: &shared.turn_changed,
        }
    }
}

struct Worker<T: Authenticated> {
    verifier: Verifier,
    keys: Arc<T::Keys>,
    shared: Arc<Shared<T>>,
    output: mpsc::Sender<Checked<T>>,
    counters: Arc<Counters>,
    stop: watch::Receiver<bool>,
    max_batch: usize,
    /// Dropped when the thread ends.
    _done: mpsc::Sender<()>,
}

/// Passes the turn to the next ticket when dropped, even if forwarding was
/// cut short, so no later batch waits for ever.
struct TurnGuard<'a> {
    turn: &'a Mutex<u64>,
    changed: &'a Condvar,
}

impl Drop for TurnGuard<'_> {
    fn drop(&mut self) {
        *self.turn.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        self.changed.notify_all();
    }
}

impl<T> Worker<T>
where
    T: Authenticated,
{
    /// Another worker on the same intake, output and counters.
    fn clone_for_thread(&self) -> Self {
        Worker {
            verifier: self.verifier.clone(),
            keys: self.keys.clone(),
            shared: self.shared.clone(),
            output: self.output.clone(),
            counters: self.counters.clone(),
            stop: self.stop.clone(),
            max_batch: self.max_batch,
            _done: self._done.clone(),
        }
    }

    /// Checks one batch: the verified items ready to forward, in order
    /// (failures are counted and logged here).
    fn check(&self, batch: Vec<Unchecked<T>>) -> Vec<Checked<T>> {
        let mut origins = Vec::with_capacity(batch.len());
        let mut values = Vec::with_capacity(batch.len());
        for item in batch {
            origins.push((item.from, item.held));
            values.push(item.value);
        }
        let results = self.verifier.verify_batch(values, &*self.keys);
        inc(&self.counters.batches);
        origins
            .into_iter()
            .zip(results)
            .filter_map(|((from, held), result)| match result {
                Ok(value) => Some(Checked { from, value, held }),
                Err(e) => {
                    inc(&self.counters.rejected);
                    debug!(peer = %Short(&from), error = %e, "dropping message that failed signature verification");
                    None
                }
            })
            .collect()
    }

    /// A dedicated thread's loop: batches are checked in parallel with the
    /// other threads' and forwarded in ticket order.
    fn run(mut self, handle: &Handle) {
        while let Some((ticket, batch)) = handle.block_on(self.take()) {
            let checked = self.check(batch);
            let shared = self.shared.clone();
            let _turn = shared.wait_turn(ticket);
            if !handle.block_on(self.forward_all(checked)) {
                return;
            }
        }
        debug!("verification thread stopped");
    }

    /// The inline stage's loop, a task on the caller's runtime: each batch
    /// is checked on the runtime thread that polls it (blocking it for the
    /// batch), so an item costs no thread hand-off at all.
    async fn run_inline(mut self) {
        while let Some((_, batch)) = self.take().await {
            let checked = self.check(batch);
            if !self.forward_all(checked).await {
                return;
            }
            // Let the tasks that feed and drain the stage run between
            // batches, so a long queue does not hold the thread.
            tokio::task::yield_now().await;
        }
        debug!("inline verification stopped");
    }

    /// Forwards a checked batch in order; false if the receiver is gone or
    /// the stage aborted.
    async fn forward_all(&mut self, checked: Vec<Checked<T>>) -> bool {
        for item in checked {
            if !self.forward(item).await {
                // Any other threads see the same and stop too.
                debug!("verified-message receiver dropped or stage aborted; stopping");
                return false;
            }
            inc(&self.counters.verified);
        }
        true
    }

    /// The next batch and its ticket; `None` once the input is closed and
    /// empty, the output receiver is dropped, or the stage is aborted.
    async fn take(&mut self) -> Option<(u64, Vec<Unchecked<T>>)> {
        let stopped = self.stop.clone();
        let output = self.output.clone();
        let shared = self.shared.clone();
        let cut = async move {
            let mut stopped = stopped;
            tokio::select! {
                _ = stopped.wait_for(|s| *s) => {}
                _ = output.closed() => {}
            }
        };
        let take = async {
            let mut intake = shared.input.lock().await;
            let first = intake.input.recv().await?;
            let mut batch = Vec::with_capacity(self.max_batch.min(intake.input.len() + 1));
            batch.push(first);
            while batch.len() < self.max_batch {
                match intake.input.try_recv() {
                    Some(item) => batch.push(item),
                    None => break,
                }
            }
            let ticket = intake.next_ticket;
            intake.next_ticket += 1;
            Some((ticket, batch))
        };
        tokio::select! {
            taken = take => taken,
            _ = cut => None,
        }
    }

    /// Sends one result; false if the receiver is gone or the stage aborted.
    async fn forward(&mut self, checked: Checked<T>) -> bool {
        tokio::select! {
            sent = self.output.send(checked) => sent.is_ok(),
            _ = self.stop.wait_for(|s| *s) => false,
        }
    }
}

fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}
