//! Per-connection send queues, bounded in frames and in bytes.
//!
//! A peer that stops reading (a client that never reads its replies, a
//! stalled replica) fills its QUIC window, then its writer waits, then its
//! queue fills. Counted in frames alone, the queue could then hold
//! `send_queue_len` frames of up to `max_frame_len` each (16 GiB with the
//! defaults) per connection. So each queue also has a byte budget, and the
//! queues of client connections share one more, so that many clients that
//! do not read cannot add up to more than it:
//!
//! * a frame is refused ([`Full`]) if its queue already holds bytes and
//!   they plus the frame exceed the queue's budget (so one frame of any
//!   allowed size always fits an empty queue);
//! * a frame to a client is also refused if all client queues together
//!   would then exceed the shared client budget;
//! * the bytes are given back when the writer takes the frame, or when the
//!   queue's receiver is dropped with frames still in it.

use bytes::Bytes;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Why a frame was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// A budget (frames or bytes) is spent.
    Full,
    /// The receiver is gone.
    Closed,
}

/// Bytes queued on every connection of an endpoint, and on its client
/// connections, with the clients' shared budget.
#[derive(Debug)]
pub(crate) struct Totals {
    all: AtomicUsize,
    clients: AtomicUsize,
    clients_cap: usize,
}

impl Totals {
    pub(crate) fn new(clients_cap: usize) -> Self {
        Totals {
            all: AtomicUsize::new(0),
            clients: AtomicUsize::new(0),
            clients_cap,
        }
    }

    /// Bytes queued on all connections.
    pub(crate) fn queued(&self) -> usize {
        self.all.load(Ordering::Relaxed)
    }
}

/// What both ends of one queue count.
#[derive(Debug)]
struct Account {
    queued: AtomicUsize,
    cap: usize,
    client: bool,
    totals: Arc<Totals>,
}

impl Account {
    fn take(&self, len: usize) -> Result<(), Refused> {
        let before = self.queued.fetch_add(len, Ordering::AcqRel);
        if before > 0 && before + len > self.cap {
            self.queued.fetch_sub(len, Ordering::AcqRel);
            return Err(Refused::Full);
        }
        if self.client {
            let before = self.totals.clients.fetch_add(len, Ordering::AcqRel);
            if before + len > self.totals.clients_cap {
                self.totals.clients.fetch_sub(len, Ordering::AcqRel);
                self.queued.fetch_sub(len, Ordering::AcqRel);
                return Err(Refused::Full);
            }
        }
        self.totals.all.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    fn give_back(&self, len: usize) {
        self.queued.fetch_sub(len, Ordering::AcqRel);
        if self.client {
            self.totals.clients.fetch_sub(len, Ordering::AcqRel);
        }
        self.totals.all.fetch_sub(len, Ordering::Relaxed);
    }
}

/// The sending end of a connection's queue.
#[derive(Debug)]
pub(crate) struct SendQueue {
    tx: mpsc::Sender<Bytes>,
    account: Arc<Account>,
}

/// The writer's end of a connection's queue.
#[derive(Debug)]
pub(crate) struct QueueRx {
    rx: mpsc::Receiver<Bytes>,
    account: Arc<Account>,
}

/// A queue of at most `frames` frames and `cap` bytes (see the module docs);
/// `client` queues also count against the shared client budget in `totals`.
pub(crate) fn send_queue(
    frames: usize,
    cap: usize,
    client: bool,
    totals: Arc<Totals>,
) -> (SendQueue, QueueRx) {
    let (tx, rx) = mpsc::channel(frames);
    let account = Arc::new(Account {
        queued: AtomicUsize::new(0),
        cap,
        client,
        totals,
    });
    (
        SendQueue {
            tx,
            account: account.clone(),
        },
        QueueRx { rx, account },
    )
}

impl SendQueue {
    /// Queues `frame` without waiting, or says why not.
    pub(crate) fn try_send(&self, frame: Bytes) -> Result<(), Refused> {
        let len = frame.len();
        self.account.take(len)?;
        self.tx.try_send(frame).map_err(|e| {
            self.account.give_back(len);
            match e {
                mpsc::error::TrySendError::Full(_) => Refused::Full,
                mpsc::error::TrySendError::Closed(_) => Refused::Closed,
            }
        })
    }
}

impl QueueRx {
    /// The next frame, waiting for one; `None` once every sender is gone.
    pub(crate) async fn recv(&mut self) -> Option<Bytes> {
        let frame = self.rx.recv().await?;
        self.account.give_back(frame.len());
        Some(frame)
    }

    /// The next frame if one is queued now.
    pub(crate) fn try_recv(&mut self) -> Option<Bytes> {
        let frame = self.rx.try_recv().ok()?;
        self.account.give_back(frame.len());
        Some(frame)
    }
}

impl Drop for QueueRx {
    fn drop(&mut self) {
        self.rx.close();
        while self.try_recv().is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: usize) -> Bytes {
        Bytes::from(vec![0; len])
    }

    #[test]
    fn a_queue_holds_its_budget_and_always_one_frame() {
        let totals = Arc::new(Totals::new(usize::MAX));
        let (q, mut rx) = send_queue(100, 1000, false, totals.clone());
        // Larger than the budget, but the queue is empty.
        assert_eq!(q.try_send(frame(1500)), Ok(()));
        assert_eq!(q.try_send(frame(1)), Err(Refused::Full));
        assert_eq!(rx.try_recv().map(|f| f.len()), Some(1500));
        for _ in 0..4 {
            assert_eq!(q.try_send(frame(250)), Ok(()));
        }
        assert_eq!(q.try_send(frame(1)), Err(Refused::Full));
        assert_eq!(totals.queued(), 1000);
        rx.try_recv();
        assert_eq!(q.try_send(frame(250)), Ok(()));
        drop(rx);
        assert_eq!(totals.queued(), 0, "a dropped queue gives its bytes back");
        assert_eq!(q.try_send(frame(1)), Err(Refused::Closed));
        assert_eq!(totals.queued(), 0);
    }

    #[test]
    fn client_queues_share_one_budget() {
        let totals = Arc::new(Totals::new(1000));
        let (a, _ra) = send_queue(100, 800, true, totals.clone());
        let (b, mut rb) = send_queue(100, 800, true, totals.clone());
        let (r, _rr) = send_queue(100, 800, false, totals.clone());
        assert_eq!(a.try_send(frame(600)), Ok(()));
        assert_eq!(
            b.try_send(frame(600)),
            Err(Refused::Full),
            "over the shared budget"
        );
        assert_eq!(b.try_send(frame(400)), Ok(()));
        assert_eq!(
            r.try_send(frame(600)),
            Ok(()),
            "replica queues do not share it"
        );
        rb.try_recv();
        assert_eq!(b.try_send(frame(400)), Ok(()));
        assert_eq!(totals.queued(), 1600);
    }

    #[test]
    fn a_queue_is_bounded_in_frames_too() {
        let (q, _rx) = send_queue(2, usize::MAX, false, Arc::new(Totals::new(0)));
        assert_eq!(q.try_send(frame(1)), Ok(()));
        assert_eq!(q.try_send(frame(1)), Ok(()));
        assert_eq!(q.try_send(frame(1)), Err(Refused::Full));
    }
}
