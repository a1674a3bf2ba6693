//! View changes (TOCS 2002, section 4.4).
//!
//! ```text
//! timer expires (a request waited too long)     or   f+1 VIEW-CHANGEs for views above ours
//!   -> view := v+1 (or the (f+1)-th highest), inactive; persist, then
//!      VIEW-CHANGE(v+1, stable checkpoint proof C, prepared certificates P) to all;
//!      re-sent every base/2 until the new view starts; timer base * 2^attempts
//! new primary with 2f+1 valid VIEW-CHANGEs V for v+1:
//!   min-s := highest checkpoint in V; max-s := highest prepared n in V
//!   O := for n in (min-s, max-s]: PRE-PREPARE(v+1, n, d) with d from the
//!        certificate of the highest view for n in V, else the null request
//!   persist, then NEW-VIEW(v+1, V, O) to all, with the batches O names
//!   up to NEW_VIEW_BATCH_BYTES (receivers FETCH-BATCH the others)
//! every replica: checks each VIEW-CHANGE in V, recomputes O from V and rejects
//!   a NEW-VIEW whose O differs; adopts min-s's checkpoint (fetching the state
//!   if behind), persists the NEW-VIEW, sends PREPAREs for O, and runs
//!   prepare/commit again in the new view.
//! ```
//!
//! A VIEW-CHANGE is valid only if its checkpoint proof checks and every
//! prepared certificate in it checks (a pre-prepare from that view's primary,
//! 2f matching prepares from distinct other replicas, a view below the new
//! one, the sequence number inside the sender's window); one bad certificate
//! invalidates the whole message. While inactive a replica accepts only
//! CHECKPOINT, VIEW-CHANGE, NEW-VIEW and state transfer; normal-case messages
//! for the new view are held until it starts.

use crate::ids::{SeqNum, View};
use crate::io::{Output, Record};
use crate::message::{
    Batch, CheckpointProof, Message, NewView, PrePrepare, PreparedProof, ViewChange,
    BATCH_REQUESTS_MAX, NEW_VIEW_BATCHES_MAX,
};
use crate::replica::Replica;
use pbft_crypto::{Digest, Signed};
use std::collections::{BTreeMap, BTreeSet};

/// Most bytes of batches one NEW-VIEW carries (a quarter of the
/// transport's 16 MiB frame limit); receivers fetch the others.
pub const NEW_VIEW_BATCH_BYTES: usize = 4 << 20;

/// The outcome of choosing a NEW-VIEW's contents from a set of view changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewViewPlan {
    /// min-s: the highest stable checkpoint among the view changes, with its proof.
    pub checkpoint: CheckpointProof,
    /// For each n in (min-s, max-s], the digest to re-issue (null when none prepared).
    pub pre_prepares: Vec<(SeqNum, Digest)>,
}

/// Computes min-s, max-s and O from a set of (already validated) view
/// changes. Deterministic in its input, so the primary and every backup reach
/// the same plan from the same V.
pub fn plan_new_view(view_changes: &[Signed<ViewChange>]) -> Option<NewViewPlan> {
    let checkpoint = view_changes
        .iter()
        .map(|vc| &vc.checkpoint)
        .max_by_key(|c| c.seq)?
        .clone();
    let min_s = checkpoint.seq;
    // For each n above min-s, the certificate with the highest view (ties:
    // the highest digest, an arbitrary but deterministic choice; two valid
    // certificates cannot differ in one view with at most f faulty replicas).
    let mut best: BTreeMap<SeqNum, (View, Digest)> = BTreeMap::new();
    for vc in view_changes {
        for p in &vc.prepared {
            let pp = &p.pre_prepare;
            if pp.seq <= min_s {
                continue;
            }
            let candidate = (pp.view, pp.digest);
            best.entry(pp.seq)
                .and_modify(|b| *b = (*b).max(candidate))
                .or_insert(candidate);
        }
    }
    let max_s = best.keys().next_back().copied().unwrap_or(min_s);
    let null = Batch::null_digest();
    let pre_prepares = (min_s.0 + 1..=max_s.0)
        .map(|n| {
            let seq = SeqNum(n);
            (seq, best.get(&seq).map_or(null, |(_, d)| *d))
        })
        .collect();
    Some(NewViewPlan {
        checkpoint,
        pre_prepares,
    })
}

impl Replica {
    /// Checks a prepared certificate for use in a view change to `new_view`.
    pub(crate) fn check_prepared_proof(&self, proof: &PreparedProof, new_view: View) -> bool {
        let pp = &proof.pre_prepare;
        if pp.view >= new_view || pp.replica != self.config.primary(pp.view) {
            return false;
        }
        let needed = 2 * self.config.f();
        if proof.prepares.len() < needed || proof.prepares.len() > self.config.n() {
            return false;
        }
        let mut signers = BTreeSet::new();
        proof.prepares.iter().all(|p| {
            p.view == pp.view
                && p.seq == pp.seq
                && p.digest == pp.digest
                && p.replica != pp.replica
                && self.config.key(p.replica).is_some()
                && signers.insert(p.replica)
        })
    }

    /// Checks a VIEW-CHANGE: its checkpoint proof and every certificate in it.
    pub(crate) fn check_view_change(&self, vc: &ViewChange) -> bool {
        if self.config.key(vc.replica).is_none() || !self.check_checkpoint_proof(&vc.checkpoint) {
            return false;
        }
        let low = vc.checkpoint.seq;
        let high = SeqNum(low.0 + self.config.log_window);
        let mut previous = low;
        for p in &vc.prepared {
            let seq = p.pre_prepare.seq;
            // Strictly increasing, inside the sender's window.
            if seq <= previous || seq > high || !self.check_prepared_proof(p, vc.new_view) {
                return false;
            }
            previous = seq;
        }
        true
    }

    /// The view-change timer expired: no progress on a waiting request (or no
    /// NEW-VIEW in time). Move to the next view.
    pub(crate) fn on_timeout_view_change(&mut self, out: &mut Vec<Output>) {
        let target = self.view.next();
        tracing::info!(
            from = self.view.0,
            to = target.0,
            "view-change timer expired"
        );
        self.start_view_change(target, out);
    }

    /// Re-sends our VIEW-CHANGE while the view change lasts; a lost message
    /// must never strand a replica.
    pub(crate) fn on_timeout_view_change_resend(&mut self, out: &mut Vec<Output>) {
        if self.active {
            return;
        }
        if let Some(vc) = self.view_changes.get(&self.id) {
            out.push(Output::Broadcast(Message::ViewChange(vc.clone())));
        }
        self.resend_own_checkpoints(out);
        self.timer_view_change_resend = Some(self.now + self.retry_interval());
    }

    /// Re-sends this replica's CHECKPOINTs above the stable checkpoint. Each
    /// is sent once when taken; if lost, the checkpoint never becomes stable,
    /// the window fills and no view can make progress. A view change is the
    /// sign that something is stuck, so they go out again with it.
    fn resend_own_checkpoints(&self, out: &mut Vec<Output>) {
        for votes in self.checkpoint_votes.values() {
            if let Some(own) = votes.get(&self.id) {
                out.push(Output::Broadcast(Message::Checkpoint(own.clone())));
            }
        }
    }

    /// Leaves the current view for `target`: persist, then send VIEW-CHANGE.
    pub(crate) fn start_view_change(&mut self, target: View, out: &mut Vec<Output>) {
        assert!(target > self.view || (target == self.view && self.active));
        self.view = target;
        self.active = false;
        self.view_change_attempts += 1;
        self.new_view = None;
        for slot in self.log.values_mut() {
            slot.clear_votes();
        }
        self.timer_batch = None;
        self.timer_order = None;
        let prepared: Vec<PreparedProof> = self
            .log
            .values()
            .filter_map(|slot| slot.prepared.clone())
            .collect();
        let vc = self.signer.sign(ViewChange {
            new_view: target,
            checkpoint: self.stable.clone(),
            prepared,
            replica: self.id,
        });
        tracing::info!(view = target.0, "sending view-change");
        self.view_changes.insert(self.id, vc.clone());
        out.push(Output::Persist(Record::ViewChange(vc.clone())));
        out.push(Output::Broadcast(Message::ViewChange(vc)));
        self.resend_own_checkpoints(out);
        // The timer for the new view starts only with 2f+1 view changes for
        // it (TOCS 4.5.2): a replica alone in a higher view must not keep
        // climbing on its own; until then it re-sends its VIEW-CHANGE.
        self.timer_view_change = None;
        self.timer_view_change_resend = Some(self.now + self.retry_interval());
        self.start_new_view_timer();
        self.try_new_view(out);
    }

    /// Starts the timer that bounds the wait for NEW-VIEW once 2f+1 replicas
    /// (this one included) have left the current view: their latest
    /// VIEW-CHANGE is for this view or a later one. (Only each replica's
    /// latest VIEW-CHANGE is kept, so counting later views too matters: a
    /// replica that already moved on must still count, or the rest could wait
    /// forever without a timer.)
    fn start_new_view_timer(&mut self) {
        if self.active || self.timer_view_change.is_some() {
            return;
        }
        let left = self
            .view_changes
            .values()
            .filter(|vc| vc.new_view >= self.view)
            .count();
        if left >= self.config.quorum() {
            self.timer_view_change = Some(self.now + self.view_change_timeout());
        }
    }

    /// VIEW-CHANGE from a peer.
    pub(crate) fn on_view_change(&mut self, vc: Signed<ViewChange>, out: &mut Vec<Output>) {
        let sender = vc.replica;
        if vc.new_view < self.view || (vc.new_view == self.view && self.active) {
            // The sender is behind: relay the NEW-VIEW that started our view
            // (rate-limited: a stale VIEW-CHANGE is cheap to send).
            if self.active && self.may_help(sender, "stale view-change") {
                self.send_new_view(sender, out);
            }
            return self.drop_input("view-change for an old view");
        }
        if self
            .view_changes
            .get(&sender)
            .is_some_and(|old| old.new_view >= vc.new_view)
        {
            return self.drop_input("view-change not newer than the sender's last");
        }
        if !self.check_view_change(&vc) {
            tracing::warn!(%sender, view = vc.new_view.0, "invalid view-change");
            return self.drop_input("invalid view-change");
        }
        self.view_changes.insert(sender, vc);
        self.try_join_view_change(out);
        self.start_new_view_timer();
        self.try_new_view(out);
    }

    /// f+1 replicas are past our view: at least one honest replica is, so move
    /// to the highest view that f+1 of them have reached, even if our timer
    /// has not expired.
    fn try_join_view_change(&mut self, out: &mut Vec<Output>) {
        let mut views: Vec<View> = self
            .view_changes
            .iter()
            .filter(|(r, vc)| **r != self.id && vc.new_view > self.view)
            .map(|(_, vc)| vc.new_view)
            .collect();
        let weak = self.config.weak_quorum();
        if views.len() < weak {
            return;
        }
        views.sort_unstable_by(|a, b| b.cmp(a));
        let target = views[weak - 1];
        tracing::info!(
            to = target.0,
            "joining a view change started by f+1 replicas"
        );
        self.start_view_change(target, out);
    }

    /// The valid VIEW-CHANGEs for `view`: ours first, then by replica id.
    fn view_changes_for(&self, view: View) -> Vec<Signed<ViewChange>> {
        let own = self
            .view_changes
            .get(&self.id)
            .filter(|vc| vc.new_view == view);
        own.into_iter()
            .chain(
                self.view_changes
                    .iter()
                    .filter(|(r, vc)| **r != self.id && vc.new_view == view)
                    .map(|(_, vc)| vc),
            )
            .cloned()
            .collect()
    }

    /// As the primary of the view being changed to, with 2f+1 view changes:
    /// issue NEW-VIEW.
    fn try_new_view(&mut self, out: &mut Vec<Output>) {
        if self.active || !self.is_primary() {
            return;
        }
        let mut view_changes = self.view_changes_for(self.view);
        if view_changes.len() < self.config.quorum() {
            return;
        }
        view_changes.truncate(self.config.quorum());
        let Some(plan) = plan_new_view(&view_changes) else {
            return;
        };
        let pre_prepares = plan
            .pre_prepares
            .iter()
            .map(|(seq, digest)| {
                self.signer.sign(PrePrepare {
                    view: self.view,
                    seq: *seq,
                    digest: *digest,
                    replica: self.id,
                })
            })
            .collect();
        let nv = self.signer.sign(NewView {
            view: self.view,
            view_changes,
            pre_prepares,
            replica: self.id,
        });
        tracing::info!(
            view = self.view.0,
            reissued = plan.pre_prepares.len(),
            "sending new-view"
        );
        let batches = self.batches_for(&nv);
        out.push(Output::Persist(Record::NewView(nv.clone())));
        out.push(Output::Broadcast(Message::NewView(nv.clone(), batches)));
        // The primary has every batch it re-issues (`enter_view` looks them up).
        self.enter_view(nv, plan.checkpoint, Vec::new(), out);
    }

    /// The batches that ride along with a NEW-VIEW: those this replica has
    /// for its re-issued pre-prepares, lowest sequence number first, until
    /// [`NEW_VIEW_BATCH_BYTES`] (see [`Batch::wire_bytes`]) or [`BATCH_REQUESTS_MAX`]
    /// requests. Receivers fetch the rest (FETCH-BATCH), so a view change
    /// under load never needs a frame larger than the transport allows.
    fn batches_for(&self, nv: &NewView) -> Vec<Batch> {
        let null = Batch::null_digest();
        let mut seen = BTreeSet::new();
        let (mut bytes, mut requests) = (0usize, 0usize);
        let mut batches = Vec::new();
        for pp in &nv.pre_prepares {
            if pp.digest == null || !seen.insert(pp.digest) {
                continue;
            }
            let Some(batch) = self.batches.get(&pp.digest) else {
                continue;
            };
            let size = batch.wire_bytes();
            if bytes + size > NEW_VIEW_BATCH_BYTES
                || requests + batch.requests.len() > BATCH_REQUESTS_MAX
                || batches.len() == NEW_VIEW_BATCHES_MAX
            {
                break;
            }
            bytes += size;
            requests += batch.requests.len();
            batches.push(batch.clone());
        }
        batches
    }

    /// NEW-VIEW from a peer: check it all, recompute O, then enter the view.
    pub(crate) fn on_new_view(
        &mut self,
        nv: Signed<NewView>,
        batches: Vec<Batch>,
        out: &mut Vec<Output>,
    ) {
        if nv.view < self.view || (nv.view == self.view && self.active) {
            return self.drop_input("new-view for an old view");
        }
        if nv.replica != self.config.primary(nv.view) {
            return self.drop_input("new-view not from the view's primary");
        }
        let mut senders = BTreeSet::new();
        for vc in &nv.view_changes {
            if vc.new_view != nv.view || !senders.insert(vc.replica) || !self.check_view_change(vc)
            {
                tracing::warn!(view = nv.view.0, "new-view with an invalid view-change");
                return self.drop_input("new-view with an invalid view-change");
            }
        }
        if senders.len() < self.config.quorum() {
            return self.drop_input("new-view without 2f+1 view-changes");
        }
        let Some(plan) = plan_new_view(&nv.view_changes) else {
            return self.drop_input("new-view without view-changes");
        };
        let matches = plan.pre_prepares.len() == nv.pre_prepares.len()
            && plan
                .pre_prepares
                .iter()
                .zip(&nv.pre_prepares)
                .all(|((seq, digest), pp)| {
                    pp.view == nv.view
                        && pp.replica == nv.replica
                        && pp.seq == *seq
                        && pp.digest == *digest
                });
        if !matches {
            tracing::warn!(
                view = nv.view.0,
                "new-view pre-prepares differ from those its view-changes imply"
            );
            return self.drop_input("new-view with wrong pre-prepares");
        }
        if nv.view > self.view {
            // Skip ahead: a valid NEW-VIEW proves 2f+1 replicas left our view.
            self.view = nv.view;
            for slot in self.log.values_mut() {
                slot.clear_votes();
            }
        }
        out.push(Output::Persist(Record::NewView(nv.clone())));
        self.enter_view(nv, plan.checkpoint, batches, out);
    }

    /// Starts the view that `nv` opens (already persisted and checked).
    fn enter_view(
        &mut self,
        nv: Signed<NewView>,
        checkpoint: CheckpointProof,
        batches: Vec<Batch>,
        out: &mut Vec<Output>,
    ) {
        debug_assert_eq!(nv.view, self.view);
        tracing::info!(
            view = self.view.0,
            primary = self.primary().0,
            "entered view"
        );
        self.active = true;
        self.timer_view_change = None;
        self.timer_view_change_resend = None;
        self.view_changes.retain(|_, vc| vc.new_view > nv.view);
        self.requeue_pending();
        // New proposals start above max-s (set before anything can propose).
        let max_s = nv.pre_prepares.iter().map(|pp| pp.seq).max();
        self.last_assigned = max_s.unwrap_or(checkpoint.seq).max(checkpoint.seq);
        // min-s: a stable checkpoint newer than ours (fetch its state if behind).
        self.advance_stable(checkpoint, out);
        let mut batches: BTreeMap<Digest, Batch> =
            batches.into_iter().map(|b| (b.digest(), b)).collect();
        batches.insert(Batch::null_digest(), Batch::default());
        for pp in nv.pre_prepares.iter() {
            if !self.in_window(pp.seq) {
                continue;
            }
            let batch = batches
                .remove(&pp.digest)
                .or_else(|| self.batches.get(&pp.digest).cloned());
            self.accept_pre_prepare(pp.clone(), batch, out);
        }
        self.last_assigned = self.last_assigned.max(self.stable.seq);
        self.new_view = Some(nv);
        out.push(Output::EnteredView(self.view));
        self.request_missing_batches(out);
        self.update_view_change_timer();
        self.forward_awaited_requests(out);
        self.ordering_progressed();
        self.replay_deferred(out);
        let seqs: Vec<SeqNum> = self.log.keys().copied().collect();
        for seq in seqs {
            self.try_prepared(seq, out);
        }
        self.try_execute(out);
        self.try_propose(out);
    }
}
