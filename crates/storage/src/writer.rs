//! The log writer thread: pipelined group commit.
//!
//! The caller [`submit`](LogWriter::submit)s a group of records and gets its
//! position (1, 2, 3, ...) at once; it goes on (with the next step of the
//! protocol) while the thread writes. The thread takes every group queued
//! since its last write, writes them with one write and one `fdatasync`
//! ([`Storage`]'s append, so preallocated segments and compaction work as
//! there), and then reports the highest durable position through the
//! [`Notify`] callback. A caller that holds each send until the position of
//! the last group submitted before it is durable keeps the core's rule: a
//! record is durable before any send that follows it.
//!
//! Positions become durable in order. The first failure (a write, a sync,
//! a record too large, a compaction) is reported through the callback and
//! stops the thread: nothing after it is ever reported durable, and a sync
//! that failed is never retried (the kernel may have dropped the dirty pages
//! it could not write, so a later successful sync would prove nothing).
//! Compaction runs after the report, so sends do not wait for it.

use crate::{Options, Stats, Storage, StorageError};
use pbft_core::io::compacts;
use pbft_core::Record;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

/// How far the log is durable, and the log's counters then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Every group up to this position (the first submitted is 1) is durable.
    pub durable: u64,
    /// The log's counters.
    pub stats: Stats,
}

/// Told of every [`Progress`], or of the failure that stopped the writer.
/// Called on the writer thread; it should only hand the news on.
pub type Notify = Box<dyn FnMut(Result<Progress, Arc<StorageError>>) + Send>;

/// A [`Storage`] appended to on a thread of its own. See the module docs.
pub struct LogWriter {
    jobs: Option<mpsc::Sender<Vec<Record>>>,
    submitted: u64,
    options: Options,
    thread: Option<JoinHandle<Option<Storage>>>,
}

impl LogWriter {
    /// Starts the writer thread for `storage`; `notify` hears of its progress.
    pub fn spawn(storage: Storage, notify: Notify) -> Result<LogWriter, StorageError> {
        let (jobs, queue) = mpsc::channel();
        let options = storage.options();
        let dir = storage.dir.clone();
        let thread = std::thread::Builder::new()
            .name("pbft-log-writer".into())
            .spawn(move || run(storage, &queue, notify))
            .map_err(|source| StorageError::Io { path: dir, source })?;
        Ok(LogWriter {
            jobs: Some(jobs),
            submitted: 0,
            options,
            thread: Some(thread),
        })
    }

    /// Queues `records` as one group; returns its position. Fails only if
    /// the writer already stopped (its failure was reported to `notify`).
    pub fn submit(&mut self, records: Vec<Record>) -> Result<u64, StorageError> {
        let jobs = self.jobs.as_ref().ok_or(StorageError::WriterStopped)?;
        jobs.send(records)
            .map_err(|_| StorageError::WriterStopped)?;
        self.submitted += 1;
        Ok(self.submitted)
    }

    /// The position of the last group submitted (0: none yet).
    pub fn submitted(&self) -> u64 {
        self.submitted
    }

    /// How the log is written.
    pub fn options(&self) -> Options {
        self.options
    }

    /// Writes what is queued, stops the thread and gives the log back
    /// (closing it releases the data directory). Fails if the writer had
    /// stopped after a failure.
    pub fn close(mut self) -> Result<Storage, StorageError> {
        self.stop().ok_or(StorageError::WriterStopped)
    }

    fn stop(&mut self) -> Option<Storage> {
        self.jobs = None;
        self.thread.take()?.join().ok().flatten()
    }
}

impl Drop for LogWriter {
    /// Waits for the thread, so that the data directory is released when
    /// the writer is gone.
    fn drop(&mut self) {
        drop(self.stop());
    }
}

fn run(
    mut storage: Storage,
    queue: &mpsc::Receiver<Vec<Record>>,
    mut notify: Notify,
) -> Option<Storage> {
    let mut durable = 0;
    while let Ok(first) = queue.recv() {
        let mut groups = vec![first];
        groups.extend(queue.try_iter());
        let count = groups.len() as u64;
        let compact = groups.iter().any(|g| compacts(g));
        if let Err(e) = storage.write_groups(groups) {
            tracing::error!(error = %e, "the record log writer stops");
            notify(Err(Arc::new(e)));
            return None;
        }
        durable += count;
        notify(Ok(Progress {
            durable,
            stats: storage.stats(),
        }));
        if compact {
            if let Err(e) = storage.compact() {
                tracing::error!(error = %e, "the record log writer stops");
                notify(Err(Arc::new(e)));
                return None;
            }
        }
    }
    Some(storage)
}
