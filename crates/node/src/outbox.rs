//! The outbox: sends held until the records before them are durable.
//!
//! # Invariant
//! The protocol task hands each step's records to the log writer
//! ([`pbft_storage::LogWriter::submit`], which returns the group's position
//! 1, 2, 3, ...) and goes on with the next step at once. Every send of the
//! step (send, broadcast, reply, status report, and a Byzantine replica's
//! tampered sends; not a small fresh reply in an ordered cluster whose
//! batch's certificate is already durable, which depends on nothing else:
//! see `pbft_core::Config::replies_wait_for_records`; nor a PRE-PREPARE or
//! PREPARE whose vote fence is durable: see `pbft_core::Output`) is
//! [`push`](Outbox::push)ed here, tagged with the position
//! of the **last group submitted at or before it** (0 if none yet), whether or
//! not its own step persisted anything. An item is released only when the
//! writer reports that position durable, and items are released strictly in
//! the order they were pushed. Hence:
//! * every record is durable before any send that the core produced after it
//!   (in its step or in a later one): the core's persist-before-send rule;
//! * sends leave in the order the core produced them, across steps: a step
//!   that persisted nothing never overtakes an earlier step's held sends.
//!
//! After a writer failure ([`fail`](Outbox::fail)) nothing held is ever
//! released, nor anything pushed later: the node stops without sending what
//! it may not have persisted.
//!
//! # Bound (backpressure)
//! The outbox counts what it holds (items and bytes). The protocol task
//! stops taking inputs (messages and timer ticks) while the writer is behind
//! by [`LAG_GROUPS_MAX`] groups or more, or while the outbox holds
//! [`HELD_BYTES_MAX`] bytes or more and something is still to become
//! durable; it goes on when the writer's progress brings both under their
//! bound. Each step adds at most one group and the sends of at most
//! [`GROUP_INPUTS_MAX`](crate::GROUP_INPUTS_MAX) inputs, so memory stays
//! bounded; and the pause always ends unless the writer fails (a pause needs
//! a group not yet durable, which the writer is working on).

use std::collections::VecDeque;

/// The protocol task pauses while this many groups or more are submitted
/// but not yet durable.
pub(crate) const LAG_GROUPS_MAX: u64 = 64;

/// The protocol task pauses while the outbox holds this many bytes or more
/// (and something is still to become durable).
pub(crate) const HELD_BYTES_MAX: usize = 64 << 20;

/// Items waiting for the log's durability, in FIFO order. See the module docs.
#[derive(Debug)]
pub(crate) struct Outbox<T> {
    /// `(position, bytes, item)`, positions non-decreasing.
    held: VecDeque<(u64, usize, T)>,
    /// Highest position pushed so far (positions only grow).
    last: u64,
    /// Every group up to here is durable.
    durable: u64,
    /// Bytes of the held items.
    bytes: usize,
    /// A writer failure was reported: nothing is released any more.
    failed: bool,
}

impl<T> Default for Outbox<T> {
    fn default() -> Self {
        Outbox {
            held: VecDeque::new(),
            last: 0,
            durable: 0,
            bytes: 0,
            failed: false,
        }
    }
}

impl<T> Outbox<T> {
    /// Holds `item` (of `bytes` bytes) until group `position` is durable and
    /// every item pushed before it is released. A position lower than one
    /// pushed before is raised to it (positions of later items never fall).
    /// Dropped at once after a failure.
    pub(crate) fn push(&mut self, position: u64, bytes: usize, item: T) {
        if self.failed {
            return;
        }
        self.last = self.last.max(position);
        self.bytes += bytes;
        self.held.push_back((self.last, bytes, item));
    }

    /// Records that every group up to `position` is durable (a lower value
    /// than before changes nothing).
    pub(crate) fn durable(&mut self, position: u64) {
        self.durable = self.durable.max(position);
    }

    /// The next item that may go out now, in push order; `None` if the
    /// oldest held item still waits (or the writer failed).
    pub(crate) fn pop_ready(&mut self) -> Option<T> {
        if self.failed {
            return None;
        }
        let (position, _, _) = self.held.front()?;
        if *position > self.durable {
            return None;
        }
        let (_, bytes, item) = self.held.pop_front()?;
        self.bytes -= bytes;
        Some(item)
    }

    /// The writer failed: drops everything held, and everything pushed later.
    pub(crate) fn fail(&mut self) {
        self.failed = true;
        self.held.clear();
        self.bytes = 0;
    }

    /// Items held.
    pub(crate) fn len(&self) -> usize {
        self.held.len()
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// The highest durable position reported.
    pub(crate) fn durable_position(&self) -> u64 {
        self.durable
    }

    /// Whether the protocol task must stop taking inputs, with `submitted`
    /// groups submitted so far (see [the bound](self#bound-backpressure)).
    pub(crate) fn must_pause(&self, submitted: u64) -> bool {
        let lag = submitted.saturating_sub(self.durable);
        lag > 0 && (lag >= LAG_GROUPS_MAX || self.bytes >= HELD_BYTES_MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(outbox: &mut Outbox<&'static str>) -> Vec<&'static str> {
        std::iter::from_fn(|| outbox.pop_ready()).collect()
    }

    #[test]
    fn items_wait_for_their_position_and_leave_in_push_order() {
        let mut o = Outbox::default();
        o.push(0, 1, "before any record");
        o.push(1, 1, "a");
        o.push(1, 1, "b");
        o.push(2, 1, "c");
        // A step that persisted nothing: tagged with the last group, 2.
        o.push(2, 1, "status");
        o.push(3, 1, "d");
        assert_eq!(drain(&mut o), ["before any record"]);
        assert_eq!(o.len(), 5);
        o.durable(1);
        assert_eq!(drain(&mut o), ["a", "b"]);
        o.durable(2);
        assert_eq!(drain(&mut o), ["c", "status"]);
        assert_eq!(drain(&mut o), Vec::<&str>::new());
        o.durable(3);
        assert_eq!(drain(&mut o), ["d"]);
        assert_eq!((o.len(), o.bytes()), (0, 0));
    }

    #[test]
    fn a_later_item_never_overtakes_an_earlier_one() {
        let mut o = Outbox::default();
        o.push(5, 1, "held at 5");
        // A lower position pushed later is raised: it must not leave first.
        o.push(3, 1, "pushed later at 3");
        o.durable(4);
        assert_eq!(drain(&mut o), Vec::<&str>::new());
        o.durable(5);
        assert_eq!(drain(&mut o), ["held at 5", "pushed later at 3"]);
    }

    #[test]
    fn durability_only_grows() {
        let mut o = Outbox::default();
        o.durable(4);
        o.durable(2);
        assert_eq!(o.durable_position(), 4);
        o.push(4, 1, "x");
        assert_eq!(drain(&mut o), ["x"]);
    }

    #[test]
    fn after_a_failure_nothing_is_released() {
        let mut o = Outbox::default();
        o.push(1, 10, "a");
        o.push(2, 10, "b");
        o.durable(1);
        o.fail();
        assert_eq!(drain(&mut o), Vec::<&str>::new());
        assert_eq!((o.len(), o.bytes()), (0, 0));
        o.push(0, 1, "after");
        o.durable(10);
        assert_eq!(drain(&mut o), Vec::<&str>::new());
        assert_eq!(o.len(), 0);
    }

    #[test]
    fn pauses_when_the_writer_lags_too_far_or_too_much_is_held() {
        let mut o = Outbox::default();
        assert!(!o.must_pause(0));
        assert!(!o.must_pause(LAG_GROUPS_MAX - 1));
        assert!(o.must_pause(LAG_GROUPS_MAX));
        o.durable(1);
        assert!(!o.must_pause(LAG_GROUPS_MAX));
        o.push(LAG_GROUPS_MAX, HELD_BYTES_MAX, "big");
        assert!(o.must_pause(2));
        o.durable(LAG_GROUPS_MAX);
        // Nothing left to wait for: never paused, whatever is held.
        assert!(!o.must_pause(LAG_GROUPS_MAX));
        assert_eq!(drain(&mut o), ["big"]);
        assert_eq!(o.bytes(), 0);
    }
}
