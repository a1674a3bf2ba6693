//! Status and retransmission (TOCS 2002, section 5.2): how a replica that
//! lost messages, lagged, restarted, or is stranded in a view of its own
//! catches up without a view change of the whole group.
//!
//! ```text
//! no execution for base/2       -> PROGRESS(v, active, h, last executed) to all
//!                                  (again every base/2 while nothing executes,
//!                                  every base/4 while a pre-prepared n waits)
//! PRE-PREPARE for n while n-1 (not executed) has none
//!                               -> PROGRESS at once (at most once per base/2)
//! PROGRESS from p, at most one answer per p per base/4:
//!   p in an older view, or not yet in ours   -> our NEW-VIEW (no batches; p fetches)
//!   p's checkpoint below our stable one      -> the 2f+1 CHECKPOINTs of our proof
//!   for n in (p's last executed, ...]  (at most RETRANSMIT_MAX of them):
//!     committed here                         -> CERTIFICATE(2f+1 COMMITs, batch)
//!     otherwise, p in our active view        -> our own PRE-PREPARE / PREPARE / COMMIT
//! CERTIFICATE(2f+1 matching COMMITs for (v', n, d)) for n in our window:
//!   n is decided d (committed in v' implies d in every later view),
//!   whatever our view, active or not -> execute d in order (fetch its batch
//!   if missing)
//! ```
//!
//! A replica stranded in a higher view (its timer fired alone) cannot vote
//! in the view the others are in: its VIEW-CHANGE already went out without
//! what it would prepare there, and a NEW-VIEW built from it could then
//! drop a decided request. So it follows passively: it executes decided
//! batches from certificates, takes checkpoints and replies to clients,
//! and joins the group at its next view change, where its VIEW-CHANGE is
//! already waiting. A lagging or restarted replica in the group's view
//! gets both the certificates and the votes it lost.
//!
//! Answers are rate-limited per peer, and certificates are checked like
//! any quorum: distinct known signers, all for one (view, seq, digest).

use crate::ids::{ReplicaId, SeqNum};
use crate::io::Output;
use crate::message::BATCH_REQUESTS_MAX;
use crate::message::{Batch, CommitCertificate, Message, Progress};
use crate::replica::Replica;
use std::collections::BTreeSet;

/// Most sequence numbers one answer to a PROGRESS covers.
const RETRANSMIT_MAX: usize = 64;

impl Replica {
    /// The progress timer fired: if nothing executed since the last time,
    /// tell the others where this replica stands.
    pub(crate) fn on_timeout_progress(&mut self, out: &mut Vec<Output>) {
        if self.last_executed == self.progress_mark {
            self.send_progress(out);
        }
        self.progress_mark = self.last_executed;
        // Twice as often while a pre-prepared sequence number waits: each
        // lost message then costs a quarter of a timeout, so two losses in
        // one instance still recover before the request deadlines fire.
        let waiting = self
            .log
            .range(self.last_executed.next()..)
            .next()
            .is_some_and(|(_, slot)| slot.pre_prepare.is_some());
        let every = if waiting {
            self.retry_interval() / 2
        } else {
            self.retry_interval()
        };
        self.timer_progress = Some(self.now + every);
    }

    /// Tells every peer where this replica stands.
    pub(crate) fn send_progress(&self, out: &mut Vec<Output>) {
        let progress = self.signer.sign(Progress {
            view: self.view,
            active: self.active,
            stable: self.stable.seq,
            last_executed: self.last_executed,
            replica: self.id,
        });
        out.push(Output::Broadcast(Message::Progress(progress)));
    }

    /// PROGRESS from a peer: send it what it lacks and this replica has.
    pub(crate) fn on_progress(&mut self, p: Progress, out: &mut Vec<Output>) {
        let peer = p.replica;
        if !self.may_help(peer, "progress") {
            return self.drop_input("progress answered too recently");
        }
        if self.active && (p.view < self.view || (p.view == self.view && !p.active)) {
            self.send_new_view(peer, out);
        }
        if p.stable < self.stable.seq {
            for c in &self.stable.checkpoints {
                out.push(Output::Send(peer, Message::Checkpoint(c.clone())));
            }
        }
        let same_view = self.active && p.active && p.view == self.view;
        let me = self.id;
        let is_primary = self.is_primary();
        let from = p.last_executed.next().max(self.stable.seq.next());
        for (seq, slot) in self.log.range(from..).take(RETRANSMIT_MAX) {
            let Some(pp) = &slot.pre_prepare else {
                continue;
            };
            if slot.committed {
                let commits = slot
                    .commits
                    .values()
                    .filter(|c| c.digest == pp.digest)
                    .take(self.config.quorum())
                    .cloned()
                    .collect();
                let batch = self.batches.get(&pp.digest).cloned();
                let cert = CommitCertificate { commits };
                out.push(Output::Send(peer, Message::Certificate(cert, batch)));
            } else if same_view {
                if is_primary {
                    if let Some(batch) = self.batches.get(&pp.digest) {
                        out.push(Output::Send(
                            peer,
                            Message::PrePrepare(pp.clone(), batch.clone()),
                        ));
                    }
                }
                if let Some(own) = slot.prepares.get(&me) {
                    out.push(Output::Send(peer, Message::Prepare(own.clone())));
                }
                if let Some(own) = slot.commits.get(&me) {
                    out.push(Output::Send(peer, Message::Commit(own.clone())));
                }
            }
            tracing::trace!(seq = seq.0, %peer, "retransmitted");
        }
    }

    /// Whether this replica may answer `peer`'s request of this `kind` now:
    /// at most twice per retry interval per peer and kind, so what a faulty
    /// peer can make it send (NEW-VIEWs, certificates, snapshots) is bounded.
    /// Not once: an honest peer asks once per retry interval of its own
    /// clock, and with drift and network jitter its next PROGRESS can come
    /// a little early; refusing it would leave the peer without an answer
    /// for two intervals, long enough for its request timers to fire.
    pub(crate) fn may_help(&mut self, peer: ReplicaId, kind: &'static str) -> bool {
        let (now, window) = (self.now, self.retry_interval() / 2);
        if self
            .helped
            .get(&(peer, kind))
            .is_some_and(|last| now < *last + window)
        {
            return false;
        }
        self.helped.insert((peer, kind), now);
        true
    }

    /// Sends the NEW-VIEW that started the current view to a peer behind it,
    /// without batches (it fetches those it lacks).
    pub(crate) fn send_new_view(&self, peer: ReplicaId, out: &mut Vec<Output>) {
        if let Some(nv) = &self.new_view {
            out.push(Output::Send(peer, Message::NewView(nv.clone(), Vec::new())));
        }
    }

    /// CERTIFICATE: 2f+1 matching COMMITs decide a sequence number.
    pub(crate) fn on_certificate(
        &mut self,
        cert: CommitCertificate,
        batch: Option<Batch>,
        out: &mut Vec<Output>,
    ) {
        let Some(first) = cert.commits.first() else {
            return self.drop_input("empty commit certificate");
        };
        let (view, seq, digest) = (first.view, first.seq, first.digest);
        if seq <= self.last_executed || !self.in_window(seq) || self.decided.contains_key(&seq) {
            return self.drop_input("commit certificate not needed");
        }
        if cert.commits.len() > self.config.n() {
            return self.drop_input("commit certificate too large");
        }
        let mut signers = BTreeSet::new();
        let valid = cert.commits.iter().all(|c| {
            c.view == view
                && c.seq == seq
                && c.digest == digest
                && self.config.key(c.replica).is_some()
                && signers.insert(c.replica)
        });
        if !valid || signers.len() < self.config.quorum() {
            return self.drop_input("invalid commit certificate");
        }
        if let Some(batch) = batch {
            if batch.requests.len() > BATCH_REQUESTS_MAX || batch.digest() != digest {
                return self.drop_input("commit certificate with a wrong batch");
            }
            self.batches.insert(digest, batch);
        }
        tracing::debug!(seq = seq.0, view = view.0, "learned a decided batch");
        self.decided.insert(seq, digest);
        if !self.batches.contains_key(&digest) && self.missing_batches.insert(digest) {
            self.request_missing_batches(out);
        }
        self.try_execute(out);
    }

    /// The digest decided at `seq`, if this replica knows it: committed here
    /// in the current view, or learned from a certificate.
    pub(crate) fn decided_digest(&self, seq: SeqNum) -> Option<pbft_crypto::Digest> {
        let slot = self.log.get(&seq);
        if let Some(pp) = slot
            .filter(|s| s.committed)
            .and_then(|s| s.pre_prepare.as_ref())
        {
            return Some(pp.digest);
        }
        self.decided.get(&seq).copied()
    }
}
