//! What goes into the core and what comes out.

use crate::ids::{ClientId, Instant, SeqNum, View};
use crate::message::{
    Batch, CheckpointProof, Message, NewView, PrePrepare, PreparedProof, Reply, StatusReport,
    ViewChange,
};
use pbft_crypto::{Digest, Signed, Verified};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// An input to [`crate::Replica::handle`].
#[derive(Clone, Debug)]
pub enum Input {
    /// A message whose every signature was checked, from its own sender: a
    /// replica's message from that replica, a client's request from that
    /// client.
    Message(Verified<Message>),
    /// A client request that another replica relayed: it arrived on that
    /// replica's link, not on the client's own. It is ordered like any
    /// request, but it does not start a view-change deadline at a backup
    /// (the backup cannot tell that the client is waiting: a faulty replica
    /// could relay requests of clients it made up faster than any primary
    /// orders them, and so force view change after view change), and a
    /// primary orders requests from clients' own links first, then relayed
    /// ones taking turns between the relaying replicas. Any other message
    /// kind is handled as [`Input::Message`].
    Relayed(crate::ReplicaId, Verified<Message>),
    /// Time passed: the driver calls this when [`crate::Replica::poll_timeout`] is reached.
    Tick,
}

/// What the core asks its driver to do, **in order**.
///
/// The driver executes outputs in the order given. A [`Output::Persist`] must
/// be durable before any later `Send`, `Broadcast`, `Status` or `Reply` leaves
/// the node (they may depend on it: a replica must never, after a crash, send
/// something that conflicts with what it sent before). Drivers may
/// group-commit all records of one `handle` call with one fsync before
/// sending. Two exceptions may overtake records:
///
/// * **Replies.** Where
///   [`Config::replies_wait_for_records`](crate::Config::replies_wait_for_records)
///   is false (an ordered cluster), the replies of a batch's execution (those
///   between its [`Record::Executed`] and its [`Output::Executed`]) depend
///   only on this replica's latest [`Record::Prepared`] for that sequence
///   number, and may leave once it is durable, ahead of the records and sends
///   in between.
/// * **Votes ahead of their records.** A broadcast PRE-PREPARE or PREPARE
///   ([`Message::may_precede_its_record`]) may leave before the
///   [`Record::PrePrepare`] it rests on is durable, once every earlier record
///   that [fences votes](Record::fences_votes) (the view, the window) is
///   durable and, in this incarnation, at least one record is. The fsyncs of
///   the pre-prepare phase (the primary's, then each backup's) then leave the
///   critical path, and only the prepared certificate's fsync before COMMIT
///   stays on it. A replica may thus have sent a PRE-PREPARE or PREPARE it
///   has no record of after a crash; [`crate::Replica::restore`] makes up for
///   it: a replica restored from a non-empty log sends no PRE-PREPARE or
///   PREPARE of its own in the view it comes back in, for any sequence
///   number up to its stable checkpoint plus the window L (its *amnesia*; see
///   `Replica::may_vote`). Before the crash, every such vote was in that
///   view or an earlier one (the view's fence was durable) and at most L
///   above a stable checkpoint no higher than the restored one (the window's
///   fence was durable), so nothing it sends afterwards can contradict it.
///   COMMIT still waits for its record: it is what makes the replica report
///   the certificate in a view change.
#[derive(Clone, Debug)]
pub enum Output {
    /// Store durably (see [`Record`]).
    Persist(Record),
    /// Send to one replica.
    Send(crate::ids::ReplicaId, Message),
    /// Send to every other replica.
    Broadcast(Message),
    /// Send a reply to a client.
    Reply(ClientId, Reply),
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
        /// When the batch passed each phase here; `None` when it was
        /// executed from a certificate (a slot this replica did not vote in).
        timing: Option<PhaseTimes>,
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
        /// How many pages the state has.
        pages: usize,
        /// How many of them were fetched (the rest were already held).
        fetched: usize,
    },
    /// This replica entered a view (after a NEW-VIEW).
    EnteredView(View),
}

/// When one batch passed each normal-case phase at this replica (core
/// time; it executed at the step's `now`). For metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhaseTimes {
    /// The earliest arrival here of a request in the batch that was still
    /// waiting (a backup that learnt a request from the pre-prepare itself
    /// counts it as arriving then).
    pub received: Option<Instant>,
    /// The pre-prepare was issued (primary) or accepted (backup).
    pub pre_prepared: Instant,
    /// The slot prepared.
    pub prepared: Instant,
    /// The slot committed locally.
    pub committed: Instant,
}

/// What a replica persists. Replaying the records of a crashed replica in
/// order through [`crate::Replica::restore`] gives back a replica that never
/// contradicts what it sent before the crash: it holds every pre-prepare and
/// prepared certificate it vouched for inside its window, the view it was
/// in, the state behind every CHECKPOINT it sent, and how far it replied.
///
/// What a restart needs of them, and so what [`compact`] keeps:
/// * the stable checkpoint: the highest proof in a `Stable` or `Checkpoint`
///   record. It sets the window, so it is persisted as soon as the replica
///   moves its low water mark, before it accepts anything in the new window,
///   even while the state for it is still being fetched;
/// * the state to start from: the highest snapshot (a `Snapshot` this
///   replica took, or a certified `Checkpoint` it fetched), plus every
///   snapshot at or above the stable checkpoint (what its CHECKPOINTs
///   vouched for, served to others);
/// * the pages those snapshots list: of each, the first `Page` record;
/// * `PrePrepare` and `Prepared` records above the stable checkpoint;
/// * the latest `ViewChange` and `NewView`, and the highest `Executed`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// A pre-prepare this replica accepted or (as primary) issued, with its
    /// batch when known. Its PREPARE (or PRE-PREPARE) may leave before it is
    /// durable (see [`Output`]: votes ahead of their records); the COMMIT
    /// that follows waits for it.
    PrePrepare(Signed<PrePrepare>, Option<Batch>),
    /// A prepared certificate. Persisted before the COMMIT is sent.
    Prepared(PreparedProof),
    /// A view change this replica started. Persisted before it is sent.
    ViewChange(Signed<ViewChange>),
    /// A new view this replica entered (or, as primary, issued).
    NewView(Signed<NewView>),
    /// One page of a snapshot (see `checkpoint::StateImage`). A snapshot
    /// record lists its pages by leaf digest, and each page is persisted
    /// once, before the first snapshot record that lists it, in the same
    /// group: a checkpoint writes only the pages that changed since the
    /// snapshots still in the log, so its cost does not grow with the state.
    Page(pbft_app::Page),
    /// A stable checkpoint and its snapshot (application state and client
    /// table), fetched from a peer by state transfer: the proof and the
    /// snapshot's leaf digests, in order (its pages are `Page` records).
    Checkpoint(CheckpointProof, Vec<Digest>),
    /// A checkpoint this replica took: the snapshot after executing `seq`,
    /// as its leaf digests (its pages are `Page` records). Persisted before
    /// its CHECKPOINT is sent, so that the state it vouches for survives a
    /// crash: 2f+1 CHECKPOINTs then always mean f+1 honest replicas can
    /// serve the state, even after all of them restarted.
    Snapshot(SeqNum, Vec<Digest>),
    /// The stable checkpoint moved here (the low water mark). Persisted
    /// before anything in the new window is accepted or sent.
    Stable(CheckpointProof),
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
            Record::Checkpoint(proof, _) | Record::Stable(proof) => Some(proof.seq),
            Record::Snapshot(seq, _) => Some(*seq),
            Record::ViewChange(_) | Record::NewView(_) | Record::Executed(_) | Record::Page(_) => {
                None
            }
        }
    }

    /// Whether a vote sent ahead of its record must wait for this record (and
    /// every record before it) to be durable: the records that move the
    /// replica to another view or window, which bound where a replica restored
    /// after a crash may have voted without a record (see [`Output`]).
    pub fn fences_votes(&self) -> bool {
        match self {
            Record::ViewChange(_)
            | Record::NewView(_)
            | Record::Stable(_)
            | Record::Checkpoint(..) => true,
            Record::PrePrepare(..)
            | Record::Prepared(_)
            | Record::Page(_)
            | Record::Snapshot(..)
            | Record::Executed(_) => false,
        }
    }
}

/// Whether a driver compacts its log after appending `group` (one step's
/// records): whenever the stable checkpoint moved. The node's storage and the
/// simulator both ask this, then call [`compact`], so restarts in the
/// simulator replay exactly what a node would.
pub fn compacts(group: &[Record]) -> bool {
    group
        .iter()
        .any(|r| matches!(r, Record::Checkpoint(..) | Record::Stable(_)))
}

/// Drops the records a restart no longer needs (see [`Record`] for what it
/// keeps). Order is kept, and restoring from the compacted records gives the
/// same replica as restoring from all of them.
pub fn compact(records: &mut Vec<Record>) {
    let keep = retained(records);
    let mut index = 0;
    records.retain(|_| {
        index += 1;
        keep[index - 1]
    });
}

/// Which of `records` [`compact`] keeps: one flag per record, in order. A
/// driver whose log is split into files uses it to tell which files still
/// hold a record a restart needs.
pub fn retained(records: &[Record]) -> Vec<bool> {
    let Some(stable) = records
        .iter()
        .filter_map(|r| match r {
            Record::Checkpoint(proof, _) | Record::Stable(proof) => Some(proof.seq),
            _ => None,
        })
        .max()
    else {
        return vec![true; records.len()];
    };
    // Per sequence number, the last snapshot record (the one restore uses).
    let mut snapshot_at: BTreeMap<SeqNum, usize> = BTreeMap::new();
    for (i, r) in records.iter().enumerate() {
        if let Record::Checkpoint(proof, _) = r {
            snapshot_at.insert(proof.seq, i);
        } else if let Record::Snapshot(seq, _) = r {
            snapshot_at.insert(*seq, i);
        }
    }
    let base = snapshot_at.last_key_value().map(|(_, i)| *i);
    let proof = records.iter().position(|r| match r {
        Record::Checkpoint(p, _) | Record::Stable(p) => p.seq == stable,
        _ => false,
    });
    let snapshot_kept = |seq: SeqNum, i: usize| {
        snapshot_at.get(&seq) == Some(&i) && (seq >= stable || Some(i) == base)
    };
    // The pages the kept snapshots list, each at its first record (a
    // `Checkpoint` kept as the stable proof is checked against its pages at
    // restart, so its pages are kept too).
    let mut listed: BTreeSet<Digest> = BTreeSet::new();
    for (i, r) in records.iter().enumerate() {
        match r {
            Record::Checkpoint(p, leaves) if Some(i) == proof || snapshot_kept(p.seq, i) => {
                listed.extend(leaves)
            }
            Record::Snapshot(seq, leaves) if snapshot_kept(*seq, i) => listed.extend(leaves),
            _ => {}
        }
    }
    let last_of = |pred: fn(&Record) -> bool| records.iter().rposition(pred);
    let last_view_change = last_of(|r| matches!(r, Record::ViewChange(_)));
    let last_new_view = last_of(|r| matches!(r, Record::NewView(_)));
    let executed = records
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match r {
            Record::Executed(seq) => Some((*seq, i)),
            _ => None,
        })
        .max_by_key(|(seq, i)| (*seq, std::cmp::Reverse(*i)))
        .map(|(_, i)| i);
    records
        .iter()
        .enumerate()
        .map(|(i, r)| match r {
            Record::Checkpoint(p, _) => Some(i) == proof || snapshot_kept(p.seq, i),
            Record::Snapshot(seq, _) => snapshot_kept(*seq, i),
            Record::Page(page) => listed.remove(&page.digest()),
            Record::Stable(_) => Some(i) == proof,
            Record::ViewChange(_) => Some(i) == last_view_change,
            Record::NewView(_) => Some(i) == last_new_view,
            Record::Executed(_) => Some(i) == executed,
            Record::PrePrepare(..) | Record::Prepared(_) => r.seq().is_some_and(|s| s > stable),
        })
        .collect()
}

/// What a replica knows of the snapshot records its log keeps, so that a
/// new snapshot writes only the pages the log lacks. It follows the rule of
/// [`retained`] (the snapshots at or above the highest persisted stable
/// checkpoint, and the highest snapshot) after every record that changes
/// either, so it never lists a snapshot that compaction may have dropped:
/// every page it lists has a `Page` record in the log (compaction keeps the
/// first record of every page a kept snapshot lists).
#[derive(Clone, Debug, Default)]
pub(crate) struct LoggedSnapshots {
    /// The highest stable checkpoint in a persisted record.
    stable: SeqNum,
    /// The kept snapshot records, by sequence number: their leaf digests.
    snapshots: BTreeMap<SeqNum, Vec<Digest>>,
}

impl LoggedSnapshots {
    /// A `Snapshot` or `Checkpoint` record for `seq` listing `leaves` went
    /// out (after the pages the log lacked).
    pub(crate) fn snapshot(&mut self, seq: SeqNum, leaves: Vec<Digest>) {
        self.snapshots.insert(seq, leaves);
        self.forget_compacted();
    }

    /// A `Stable` or `Checkpoint` record for `seq` went out.
    pub(crate) fn stable(&mut self, seq: SeqNum) {
        self.stable = self.stable.max(seq);
        self.forget_compacted();
    }

    /// The pages the log holds for the snapshots it keeps.
    pub(crate) fn pages(&self) -> BTreeSet<Digest> {
        self.snapshots.values().flatten().copied().collect()
    }

    fn forget_compacted(&mut self) {
        let (stable, highest) = (self.stable, self.snapshots.keys().next_back().copied());
        self.snapshots
            .retain(|s, _| *s >= stable || Some(*s) == highest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::CheckpointProof;
    use pbft_app::Page;

    /// A replica's record stream of snapshots and stable checkpoints in a
    /// random order, its pages written by the rule of `LoggedSnapshots`, its
    /// log compacted after some of the groups that move the stable
    /// checkpoint (lazily, as the node's storage may): after every group,
    /// every snapshot record in the log has its pages before it, and every
    /// page `LoggedSnapshots` counts as logged is in the log.
    #[test]
    fn logged_snapshots_never_counts_a_page_compaction_dropped() {
        let pages: Vec<Page> = (0..24u8).map(|k| Page::new(vec![k; 3])).collect();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |bound: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % bound
        };
        for _run in 0..300 {
            let mut log: Vec<Record> = Vec::new();
            let mut shadow = LoggedSnapshots::default();
            let mut stable = 0u64;
            for _group in 0..40 {
                let mut group = Vec::new();
                let proof = |seq: u64| CheckpointProof {
                    seq: SeqNum(seq),
                    digest: Digest([seq as u8; 32]),
                    checkpoints: Vec::new(),
                };
                for _ in 0..1 + next(3) {
                    let seq = (stable + next(24)).saturating_sub(8);
                    match next(4) {
                        0 => {
                            stable = stable.max(seq);
                            group.push(Record::Stable(proof(seq)));
                            shadow.stable(SeqNum(seq));
                        }
                        kind => {
                            let leaves: Vec<&Page> = (0..1 + next(6))
                                .map(|_| &pages[next(pages.len() as u64) as usize])
                                .collect();
                            let mut logged = shadow.pages();
                            for page in &leaves {
                                if logged.insert(page.digest()) {
                                    group.push(Record::Page((*page).clone()));
                                }
                            }
                            let digests = leaves.iter().map(|p| p.digest()).collect();
                            shadow.snapshot(SeqNum(seq), Vec::clone(&digests));
                            if kind == 1 {
                                stable = stable.max(seq);
                                group.push(Record::Checkpoint(proof(seq), digests));
                                shadow.stable(SeqNum(seq));
                            } else {
                                group.push(Record::Snapshot(SeqNum(seq), digests));
                            }
                        }
                    }
                }
                let compact_now = compacts(&group) && next(3) > 0;
                log.extend(group);
                if compact_now {
                    compact(&mut log);
                }
                let mut held = BTreeSet::new();
                for r in &log {
                    match r {
                        Record::Page(p) => {
                            held.insert(p.digest());
                        }
                        Record::Snapshot(_, leaves) | Record::Checkpoint(_, leaves) => {
                            assert!(leaves.iter().all(|l| held.contains(l)));
                        }
                        _ => {}
                    }
                }
                assert!(shadow.pages().is_subset(&held));
            }
        }
    }
}
