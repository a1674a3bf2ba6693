//! What goes into the core and what comes out.

use crate::ids::{ClientId, SeqNum, View};
use crate::message::{
    Batch, CheckpointProof, Message, NewView, PrePrepare, PreparedProof, Reply, StatusReport,
    ViewChange,
};
use pbft_crypto::{Digest, Signed, Verified};
use serde::{Deserialize, Serialize};

/// An input to [`crate::Replica::handle`].
#[derive(Clone, Debug)]
pub enum Input {
    /// A message whose every signature was checked (from a replica or a client).
    Message(Verified<Message>),
    /// Time passed: the driver calls this when [`crate::Replica::poll_timeout`] is reached.
    Tick,
}

/// What the core asks its driver to do, **in order**.
///
/// The driver executes outputs in the order given. A [`Output::Persist`] must
/// be durable before any later `Send`, `Broadcast` or `Reply` leaves the node
/// (they may depend on it: a replica must never, after a crash, send something
/// that conflicts with what it sent before). Drivers may group-commit all
/// records of one `handle` call with one fsync before sending.
#[derive(Clone, Debug)]
pub enum Output {
    /// Store durably (see [`Record`]).
    Persist(Record),
    /// Send to one replica.
    Send(crate::ids::ReplicaId, Message),
    /// Send to every other replica.
    Broadcast(Message),
    /// Send a reply to a client.
    Reply(ClientId, Signed<Reply>),
    /// Send a status report to a client.
    Status(ClientId, Signed<StatusReport>),
    /// A batch was executed (for checkers, metrics and logs).
    Executed {
        /// Its sequence number.
        seq: SeqNum,
        /// The view in which it committed.
        view: View,
        /// Its digest.
        digest: Digest,
        /// How many requests ran (duplicates skipped).
        requests: usize,
    },
    /// This replica took a checkpoint (for checkers).
    Checkpointed {
        /// Its sequence number.
        seq: SeqNum,
        /// The snapshot digest.
        digest: Digest,
    },
    /// The state was replaced by a certified checkpoint fetched from a peer.
    StateTransferred {
        /// The checkpoint's sequence number.
        seq: SeqNum,
        /// Its digest.
        digest: Digest,
    },
    /// This replica entered a view (after a NEW-VIEW).
    EnteredView(View),
}

/// What a replica persists. Replaying the records of a crashed replica in
/// order through [`crate::Replica::restore`] gives back a replica that never
/// contradicts what it sent before the crash.
///
/// A driver may discard every record whose [`Record::seq`] is at or below the
/// sequence number of the latest `Checkpoint` record, and every `ViewChange`
/// or `NewView` record for a view below the latest one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// A pre-prepare this replica accepted or (as primary) issued, with its
    /// batch when known. Persisted before the PREPARE (or PRE-PREPARE) is sent.
    PrePrepare(Signed<PrePrepare>, Option<Batch>),
    /// A prepared certificate. Persisted before the COMMIT is sent.
    Prepared(PreparedProof),
    /// A view change this replica started. Persisted before it is sent.
    ViewChange(Signed<ViewChange>),
    /// A new view this replica entered (or, as primary, issued).
    NewView(Signed<NewView>),
    /// A stable checkpoint and its snapshot (application state and client table).
    Checkpoint(CheckpointProof, Vec<u8>),
    /// This replica is about to execute (and reply for) this sequence number.
    /// Persisted before the replies, so that after a crash the replica knows
    /// how far it had answered and does not serve read-only requests from an
    /// older state until it has caught up again.
    Executed(SeqNum),
}

impl Record {
    /// The sequence number the record is about, if any.
    pub fn seq(&self) -> Option<SeqNum> {
        match self {
            Record::PrePrepare(pp, _) => Some(pp.seq),
            Record::Prepared(p) => Some(p.pre_prepare.seq),
            Record::Checkpoint(proof, _) => Some(proof.seq),
            Record::ViewChange(_) | Record::NewView(_) | Record::Executed(_) => None,
        }
    }
}

/// Drops the records a restart no longer needs: everything at or below the
/// latest checkpoint record (except that record), and every view-change,
/// new-view or executed record but the latest of each. Order is kept.
pub fn compact(records: &mut Vec<Record>) {
    let Some(stable) = records
        .iter()
        .filter_map(|r| match r {
            Record::Checkpoint(proof, _) => Some(proof.seq),
            _ => None,
        })
        .max()
    else {
        return;
    };
    let last_view_change = records
        .iter()
        .rposition(|r| matches!(r, Record::ViewChange(_)));
    let last_new_view = records
        .iter()
        .rposition(|r| matches!(r, Record::NewView(_)));
    let last_executed = records
        .iter()
        .rposition(|r| matches!(r, Record::Executed(_)));
    let mut kept_checkpoint = false;
    let mut index = 0;
    records.retain(|r| {
        let i = index;
        index += 1;
        match r {
            Record::Checkpoint(proof, _) => {
                // Keep exactly one: the first record for the highest checkpoint.
                let keep = proof.seq == stable && !kept_checkpoint;
                kept_checkpoint |= keep;
                keep
            }
            Record::ViewChange(_) => Some(i) == last_view_change,
            Record::NewView(_) => Some(i) == last_new_view,
            Record::Executed(_) => Some(i) == last_executed,
            Record::PrePrepare(..) | Record::Prepared(_) => r.seq().is_some_and(|s| s > stable),
        }
    });
}
