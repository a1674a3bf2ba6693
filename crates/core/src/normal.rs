//! Normal-case operation (TOCS 2002, section 4.2): REQUEST, PRE-PREPARE,
//! PREPARE, COMMIT, execution and REPLY.
//!
//! ```text
//! client --REQUEST--> primary --PRE-PREPARE(v,n,d)+batch--> backups
//!   (backups persist the pre-prepare, then) --PREPARE(v,n,d)--> all
//!   prepared(v,n,d) = pre-prepare + 2f matching prepares from distinct backups
//!   (persist the certificate, then) --COMMIT(v,n,d)--> all
//!   committed-local = prepared + 2f+1 matching commits
//!   execute in sequence order --REPLY--> client (f+1 matching replies decide)
//!     sent by the replicas the request names (`Repliers`: f+1 of them, or
//!     all), by those a retransmitted copy names, and by every replica when
//!     the result is too large for the client table to keep; the others
//!     keep the result and answer retransmissions from the client table
//! ```
//!
//! Filters (each failure drops the message with a counter): the view is the
//! current active view, the sender of a pre-prepare is its view's primary, the
//! sender of a prepare is not, `n` is within the water marks `(h, h+L]`, the
//! batch matches the digest, and a replica never accepts two pre-prepares with
//! different digests for one `(v, n)`.

use crate::client_table::Admission;
use crate::ids::{ClientId, ReplicaId, SeqNum};
use crate::io::{Output, PhaseTimes, Record};
use crate::message::BATCH_REQUESTS_MAX;
use crate::message::{
    Batch, Commit, Message, PrePrepare, Prepare, PreparedProof, Reply, ReplyStatus, Request,
};
use crate::replica::{Pending, Replica};
use pbft_crypto::{Digest, Signed};
use std::collections::{BTreeMap, VecDeque};

/// Most result bytes of read-only answers per retry interval (see
/// `answer_read_only`), and what each answer counts besides its result.
pub const READ_ONLY_BYTES_PER_INTERVAL: usize = 32 << 20;
const READ_ONLY_COST: usize = 256;

/// How far into the arrival order a full pending table looks for a relayed
/// request to drop (the search stays cheap when few are relayed).
const EVICTION_SCAN: usize = 4096;

impl Replica {
    /// REQUEST from a client, or forwarded by a backup.
    pub(crate) fn on_request(
        &mut self,
        request: Signed<Request>,
        relayed_by: Option<ReplicaId>,
        out: &mut Vec<Output>,
    ) {
        let client = request.client;
        if request.read_only {
            return self.answer_read_only(&request, out);
        }
        // Exactly-once: an old request is ignored, the last one re-answered,
        // one the client table forgot refused (see `client_table`).
        match self.clients.admit(&client, request.request_id) {
            Admission::Old => return self.drop_input("request older than the client's last"),
            Admission::Last(entry) => {
                let (status, result) = entry.retransmission();
                let reply = self.reply_status(&request.value, result, status);
                out.push(Output::Reply(client, reply));
                return;
            }
            Admission::Expired => {
                self.drop_input("request below the client table's floor");
                let reply = self.reply_status(&request.value, Vec::new(), ReplyStatus::Expired);
                out.push(Output::Reply(client, reply));
                return;
            }
            Admission::New => {}
        }
        match self.pending.get(&client) {
            Some(p) if p.request.request_id > request.request_id => {
                return self.drop_input("request older than a pending one");
            }
            Some(p) if p.request.request_id == request.request_id => {
                if relayed_by.is_some() {
                    return self.drop_input("relayed request already pending");
                }
                // A retransmission: the client suspects the primary. Forward
                // it again, but at most once per retry interval, so copies
                // relayed between replicas (which may disagree on the view)
                // die out instead of circulating. Known only as relayed so
                // far, it now has the client's word that it waits. Its copy
                // names the replicas the client now wants replies from (all
                // of them, from the SDK).
                let asks = request.repliers.asks(self.id);
                let deadline = self.now + self.view_change_timeout();
                let mut timer_changed = false;
                if let Some(p) = self.pending.get_mut(&client) {
                    p.reply_asked |= asks;
                    if p.deadline.is_none() {
                        p.deadline = Some(deadline);
                        p.relayed_by = None;
                        timer_changed = true;
                    }
                }
                if timer_changed {
                    self.update_view_change_timer();
                    self.watch_ordering();
                }
                self.forward_to_primary(client, out);
                return;
            }
            _ => {}
        }
        // Room for a request from its own client's link is made by dropping
        // a relayed one: a faulty replica relaying requests from made-up
        // clients cannot lock real clients out.
        let full = self.pending.len() >= self.config.pending_requests_max
            && !self.pending.contains_key(&client);
        if full && (relayed_by.is_some() || !self.evict_a_relayed_request()) {
            return self.drop_input("too many pending requests");
        }
        self.pending_order.push_back((client, request.request_id));
        let reply_asked = request.repliers.asks(self.id);
        let deadline = relayed_by
            .is_none()
            .then(|| self.now + self.view_change_timeout());
        self.pending.insert(
            client,
            Pending {
                request,
                proposed: false,
                arrived: self.now,
                deadline,
                relayed_by,
                forwarded: None,
                reply_asked,
            },
        );
        if self.is_primary() {
            self.propose_soon();
        } else if relayed_by.is_none() {
            self.forward_to_primary(client, out);
            self.watch_ordering();
        }
        self.update_view_change_timer();
    }

    /// The primary proposes at the end of the current step, not now: the
    /// batch timer is set to the current instant, and the driver delivers
    /// [`crate::Input::Tick`] once it has handed over every input it
    /// drained, so all requests of one step can share a batch.
    pub(crate) fn propose_soon(&mut self) {
        let now = self.now;
        self.timer_batch = Some(self.timer_batch.map_or(now, |t| t.min(now)));
    }

    /// A backup relays a waiting request to the primary: only in an active
    /// view, and at most once per retry interval per request.
    fn forward_to_primary(&mut self, client: ClientId, out: &mut Vec<Output>) {
        if !self.active || self.is_primary() {
            return;
        }
        let (now, retry, primary) = (self.now, self.retry_interval(), self.primary());
        let Some(p) = self.pending.get_mut(&client) else {
            return;
        };
        if p.forwarded.is_some_and(|t| now < t + retry) {
            return;
        }
        p.forwarded = Some(now);
        out.push(Output::Send(primary, Message::Request(p.request.clone())));
    }

    /// A view began: a backup relays the requests its clients wait on and
    /// no re-issued pre-prepare holds to the new primary, which may lack
    /// them (their clients sent them to the old one first), before the
    /// ordering watch holds it to account for them.
    pub(crate) fn forward_awaited_requests(&mut self, out: &mut Vec<Output>) {
        if !self.active || self.is_primary() {
            return;
        }
        let awaited: Vec<ClientId> = self
            .pending
            .iter_mut()
            .filter(|(_, p)| p.deadline.is_some() && !p.proposed)
            .map(|(client, p)| {
                p.forwarded = None;
                *client
            })
            .collect();
        for client in awaited {
            self.forward_to_primary(client, out);
        }
    }

    /// The read-only fast path: answered at once from the current state; the
    /// client accepts 2f+1 matching answers or falls back to an ordered request.
    /// Only in a cluster whose read mode is `fast`: elsewhere writes are
    /// confirmed by f+1 replies, and an unordered answer could be stale.
    fn answer_read_only(&mut self, request: &Signed<Request>, out: &mut Vec<Output>) {
        if self.config.read_mode != crate::config::ReadMode::Fast {
            return self.drop_input("read-only request in a cluster whose read mode is ordered");
        }
        if !self.app.is_read_only(&request.op) {
            return self.drop_input("read-only request with a write operation");
        }
        if self.last_executed < self.read_only_floor {
            // Restarted from an older checkpoint: answering now could undo a
            // write this replica had already confirmed (a stale read).
            return self.drop_input("read-only request before catching up after a restart");
        }
        // Reads run on the protocol task: at most READ_ONLY_BYTES_PER_INTERVAL
        // of results (plus one) per retry interval, so a client flooding large
        // scans cannot stall ordering. A refused read falls back to an ordered
        // one at the client.
        let (now, retry) = (self.now, self.retry_interval());
        let (start, served) = &mut self.read_only_served;
        if now >= *start + retry {
            (*start, *served) = (now, 0);
        }
        if *served >= READ_ONLY_BYTES_PER_INTERVAL {
            return self.drop_input("read-only request over the read budget");
        }
        let result = self.app.query(&request.op);
        self.read_only_served.1 += result.len() + READ_ONLY_COST;
        let reply = self.reply(&request.value, result, true);
        out.push(Output::Reply(request.client, reply));
    }

    /// A reply to `request` (unsigned: see [`Reply`]).
    fn reply(&self, request: &Request, result: Vec<u8>, read_only: bool) -> Reply {
        Reply {
            view: self.view,
            client: request.client,
            request_id: request.request_id,
            result,
            status: ReplyStatus::Result,
            read_only,
            replica: self.id,
        }
    }

    /// The ordered reply to a retransmission, from the client table.
    fn reply_status(&self, request: &Request, result: Vec<u8>, status: ReplyStatus) -> Reply {
        Reply {
            status,
            ..self.reply(request, result, false)
        }
    }

    /// The primary assigns sequence numbers to waiting requests while the
    /// window has room and fewer than `in_flight_max` of its sequence
    /// numbers wait for execution here: a full batch at once, a partial one
    /// after `batch_delay`. Requests that arrive meanwhile wait, so under
    /// load each batch takes everything that queued while the last ones ran.
    pub(crate) fn try_propose(&mut self, out: &mut Vec<Output>) {
        if !self.active || !self.is_primary() || self.state_fetch.is_some() {
            return;
        }
        // Never below the low water mark (it may have moved by a checkpoint
        // or a state transfer while this primary was behind).
        self.last_assigned = self.last_assigned.max(self.stable.seq);
        loop {
            if self.last_assigned >= self.high_water_mark() {
                return; // the window is full; a stable checkpoint will open it
            }
            if self.last_assigned.0.saturating_sub(self.last_executed.0)
                >= self.config.in_flight_max
            {
                return; // enough in flight; an execution proposes again
            }
            if !self.may_vote(self.view, self.last_assigned.next()) {
                return; // it may have pre-prepared there before a crash
            }
            let waiting: Vec<ClientId> = self.unproposed();
            if waiting.is_empty() {
                self.timer_batch = None;
                return;
            }
            if waiting.len() < self.config.batch_size_max && !self.config.batch_delay.is_zero() {
                let oldest = waiting
                    .iter()
                    .filter_map(|c| self.pending.get(c))
                    .map(|p| p.arrived)
                    .min()
                    .unwrap_or(self.now);
                let due = oldest + self.config.batch_delay;
                if due > self.now {
                    self.timer_batch = Some(due);
                    return;
                }
            }
            let mut requests = Vec::with_capacity(waiting.len());
            for client in waiting {
                if let Some(p) = self.pending.get_mut(&client) {
                    p.proposed = true;
                    requests.push(p.request.clone());
                }
            }
            let batch = Batch { requests };
            let seq = self.last_assigned.next();
            self.last_assigned = seq;
            let pp = self.signer.sign(PrePrepare {
                view: self.view,
                seq,
                digest: batch.digest(),
                replica: self.id,
            });
            tracing::debug!(seq = seq.0, requests = batch.requests.len(), "pre-prepare");
            self.batches.insert(pp.digest, batch.clone());
            let now = self.now;
            let slot = self.slot(seq);
            slot.pre_prepare = Some(pp.clone());
            slot.times.pre_prepared = Some(now);
            out.push(Output::Persist(Record::PrePrepare(
                pp.clone(),
                Some(batch.clone()),
            )));
            out.push(Output::Broadcast(Message::PrePrepare(pp, batch)));
            self.try_prepared(seq, out);
        }
    }

    /// A new view: every waiting request is to be proposed again (by the new
    /// primary), oldest first, and waits one full timeout in this view.
    pub(crate) fn requeue_pending(&mut self) {
        let deadline = self.now + self.view_change_timeout();
        let mut order: Vec<(crate::Instant, ClientId, crate::ids::RequestId)> = self
            .pending
            .iter_mut()
            .map(|(c, p)| {
                p.proposed = false;
                // Whatever waits (not a request known only as relayed)
                // waits one full timeout in the new view.
                if p.deadline.is_some() {
                    p.deadline = Some(deadline);
                }
                (p.arrived, *c, p.request.request_id)
            })
            .collect();
        order.sort();
        self.pending_order = order.into_iter().map(|(_, c, id)| (c, id)).collect();
    }

    /// The waiting clients not yet proposed in this view: those whose
    /// request came on their own link first, oldest first, then relayed ones,
    /// the relaying replicas taking turns (so a replica relaying a flood
    /// takes only spare room, and no more of it than an honest relay): at
    /// most `batch_size_max` of them and `batch_bytes_max` operation bytes
    /// (but always at least one).
    fn unproposed(&mut self) -> Vec<ClientId> {
        let pending = &self.pending;
        let live = |(client, id): &(ClientId, crate::ids::RequestId)| {
            pending
                .get(client)
                .is_some_and(|p| p.request.request_id == *id && !p.proposed)
        };
        // Stale entries (proposed, executed or replaced requests) go lazily.
        while self.pending_order.front().is_some_and(|e| !live(e)) {
            self.pending_order.pop_front();
        }
        if self.pending_order.len() > 2 * self.config.pending_requests_max {
            self.pending_order.retain(|e| live(e));
        }
        let (max, bytes_max) = (self.config.batch_size_max, self.config.batch_bytes_max);
        let mut direct = Vec::new();
        let mut relayed: BTreeMap<ReplicaId, VecDeque<ClientId>> = BTreeMap::new();
        // No batch takes more than `max`: scanning stops once that many
        // direct requests are found, and no relay queue grows beyond it.
        for (client, _) in self.pending_order.iter().filter(|e| live(e)) {
            match pending.get(client).and_then(|p| p.relayed_by) {
                None => {
                    direct.push(*client);
                    if direct.len() == max {
                        break;
                    }
                }
                Some(by) => {
                    let queue = relayed.entry(by).or_default();
                    if queue.len() < max {
                        queue.push_back(*client);
                    }
                }
            }
        }
        while !relayed.is_empty() {
            relayed.retain(|_, queue| match queue.pop_front() {
                Some(client) => {
                    direct.push(client);
                    true
                }
                None => false,
            });
        }
        let mut bytes = 0;
        let mut chosen = Vec::new();
        for client in &direct {
            let size = pending.get(client).map_or(0, |p| p.request.op.len());
            if chosen.len() == max || (!chosen.is_empty() && bytes + size > bytes_max) {
                break;
            }
            bytes += size;
            chosen.push(*client);
        }
        chosen
    }

    /// PRE-PREPARE (already known to be for the current active view).
    pub(crate) fn on_pre_prepare(
        &mut self,
        pp: Signed<PrePrepare>,
        batch: Batch,
        out: &mut Vec<Output>,
    ) {
        if pp.replica != self.primary() {
            return self.drop_input("pre-prepare not from the primary");
        }
        if !self.in_window(pp.seq) {
            return self.drop_input("pre-prepare outside the water marks");
        }
        if batch.requests.len() > BATCH_REQUESTS_MAX {
            return self.drop_input("batch too large");
        }
        if batch.digest() != pp.digest {
            return self.drop_input("pre-prepare batch does not match its digest");
        }
        if let Some(existing) = &self.slot(pp.seq).pre_prepare {
            if existing.digest != pp.digest {
                tracing::warn!(
                    seq = pp.seq.0,
                    "primary equivocated: two pre-prepares for one (view, seq)"
                );
                return self.drop_input("conflicting pre-prepare");
            }
            return self.drop_input("duplicate pre-prepare");
        }
        let seq = pp.seq;
        self.accept_pre_prepare(pp, Some(batch), out);
        self.ordering_progressed();
        self.try_prepared(seq, out);
        self.ask_for_a_missed_pre_prepare(seq, out);
    }

    /// A pre-prepare for `seq` arrived while the one before it, not yet
    /// executed, never did: it was lost. Say where this replica stands at
    /// once (PROGRESS; the primary answers with what it lacks) instead of at
    /// the next progress tick, which can come after the request deadlines
    /// of the others, who cannot prepare without this replica while another
    /// is faulty or stranded. At most once per retry interval.
    fn ask_for_a_missed_pre_prepare(&mut self, seq: SeqNum, out: &mut Vec<Output>) {
        let before = SeqNum(seq.0.saturating_sub(1));
        let missed = before > self.last_executed
            && self.in_window(before)
            && self
                .log
                .get(&before)
                .is_none_or(|s| s.pre_prepare.is_none());
        let (now, retry) = (self.now, self.retry_interval());
        if !missed || self.gap_progress_at.is_some_and(|at| now < at + retry) {
            return;
        }
        self.gap_progress_at = Some(now);
        self.send_progress(out);
    }

    /// Logs a pre-prepare of the current view, persists it and (as a backup)
    /// sends PREPARE. Used for normal pre-prepares and those of a NEW-VIEW.
    pub(crate) fn accept_pre_prepare(
        &mut self,
        pp: Signed<PrePrepare>,
        batch: Option<Batch>,
        out: &mut Vec<Output>,
    ) {
        debug_assert_eq!(pp.view, self.view);
        let seq = pp.seq;
        let digest = pp.digest;
        self.last_assigned = self.last_assigned.max(seq);
        if let Some(batch) = &batch {
            self.batches.insert(digest, batch.clone());
            // Requests in the batch now wait for execution here too.
            for request in &batch.requests {
                self.note_pending(request);
            }
            self.update_view_change_timer();
        } else if !self.batches.contains_key(&digest) {
            self.missing_batches.insert(digest);
        }
        let now = self.now;
        let slot = self.slot(seq);
        slot.pre_prepare = Some(pp.clone());
        slot.times.pre_prepared = Some(now);
        if self.id != pp.replica {
            if batch.is_some() {
                out.push(Output::Persist(Record::PrePrepare(pp, batch)));
            }
            if !self.may_vote(self.view, seq) {
                tracing::debug!(
                    seq = seq.0,
                    "no PREPARE: it may have sent one before its restart"
                );
                return;
            }
            let prepare = self.signer.sign(Prepare {
                view: self.view,
                seq,
                digest,
                replica: self.id,
            });
            let me = self.id;
            self.slot(seq).prepares.insert(me, prepare.clone());
            out.push(Output::Broadcast(Message::Prepare(prepare)));
        }
    }

    /// Tracks a request seen inside a batch as pending (for the timer), unless
    /// it already executed or a newer one waits.
    fn note_pending(&mut self, request: &Signed<Request>) {
        let client = request.client;
        if self.clients.settled(&client, request.request_id) {
            return;
        }
        let deadline = self.now + self.view_change_timeout();
        if let Some(p) = self.pending.get_mut(&client) {
            if p.request.request_id >= request.request_id {
                // Proposed: it is to commit within a timeout, whoever
                // relayed it.
                p.deadline.get_or_insert(deadline);
                p.proposed |= p.request.request_id == request.request_id;
                return;
            }
        } else if self.pending.len() >= self.config.pending_requests_max {
            return;
        }
        self.pending.insert(
            client,
            Pending {
                request: request.clone(),
                proposed: true,
                arrived: self.now,
                deadline: Some(deadline),
                relayed_by: None,
                forwarded: None,
                reply_asked: request.repliers.asks(self.id),
            },
        );
    }

    /// PREPARE (current active view).
    pub(crate) fn on_prepare(&mut self, prepare: Signed<Prepare>, out: &mut Vec<Output>) {
        if prepare.replica == self.primary() {
            return self.drop_input("prepare from the primary");
        }
        if !self.in_window(prepare.seq) {
            return self.drop_input("prepare outside the water marks");
        }
        let seq = prepare.seq;
        let slot = self.slot(seq);
        if slot.prepares.contains_key(&prepare.replica) {
            return self.drop_input("duplicate prepare");
        }
        slot.prepares.insert(prepare.replica, prepare);
        self.try_prepared(seq, out);
    }

    /// COMMIT (current active view).
    pub(crate) fn on_commit(&mut self, commit: Signed<Commit>, out: &mut Vec<Output>) {
        if !self.in_window(commit.seq) {
            return self.drop_input("commit outside the water marks");
        }
        let seq = commit.seq;
        let slot = self.slot(seq);
        if slot.commits.contains_key(&commit.replica) {
            return self.drop_input("duplicate commit");
        }
        slot.commits.insert(commit.replica, commit);
        self.try_committed(seq, out);
    }

    /// prepared(m, v, n, i): the pre-prepare and 2f matching prepares from
    /// distinct backups. On becoming prepared: persist the certificate, then COMMIT.
    pub(crate) fn try_prepared(&mut self, seq: SeqNum, out: &mut Vec<Output>) {
        let view = self.view;
        let needed = 2 * self.config.f();
        let Some(slot) = self.log.get(&seq) else {
            return;
        };
        let Some(pp) = slot.pre_prepare.clone() else {
            return;
        };
        if slot.prepared_in(view) {
            return;
        }
        let matching: Vec<Signed<Prepare>> = slot
            .prepares
            .values()
            .filter(|p| p.digest == pp.digest && p.replica != pp.replica)
            .take(needed)
            .cloned()
            .collect();
        if matching.len() < needed {
            return;
        }
        let proof = PreparedProof {
            pre_prepare: pp.clone(),
            prepares: matching,
        };
        let commit = self.signer.sign(Commit {
            view,
            seq,
            digest: pp.digest,
            replica: self.id,
        });
        let now = self.now;
        let slot = self.slot(seq);
        slot.prepared = Some(proof.clone());
        slot.times.prepared = Some(now);
        slot.commits.insert(commit.replica, commit.clone());
        tracing::trace!(seq = seq.0, "prepared");
        out.push(Output::Persist(Record::Prepared(proof)));
        out.push(Output::Broadcast(Message::Commit(commit)));
        self.try_committed(seq, out);
    }

    /// committed-local(m, v, n, i): prepared and 2f+1 matching commits.
    pub(crate) fn try_committed(&mut self, seq: SeqNum, out: &mut Vec<Output>) {
        let view = self.view;
        let quorum = self.config.quorum();
        let Some(slot) = self.log.get_mut(&seq) else {
            return;
        };
        if slot.committed || !slot.prepared_in(view) {
            return;
        }
        let Some(digest) = slot.pre_prepare.as_ref().map(|pp| pp.digest) else {
            return;
        };
        let matching = slot.commits.values().filter(|c| c.digest == digest).count();
        if matching >= quorum {
            slot.committed = true;
            slot.times.committed = Some(self.now);
            if let Some(pre_prepared) = slot.times.pre_prepared {
                self.note_round(pre_prepared);
            }
            tracing::trace!(seq = seq.0, "committed");
            self.try_execute(out);
        }
    }

    /// Executes committed batches in sequence order, as far as possible.
    pub(crate) fn try_execute(&mut self, out: &mut Vec<Output>) {
        if self.state_fetch.is_some() {
            return; // the state is about to be replaced
        }
        let mut progressed = false;
        let mut executed = false;
        loop {
            let seq = self.last_executed.next();
            let Some(digest) = self.decided_digest(seq) else {
                break;
            };
            let Some(batch) = self.batches.get(&digest).cloned() else {
                if self.missing_batches.insert(digest) {
                    self.request_missing_batches(out);
                }
                break;
            };
            out.push(Output::Persist(Record::Executed(seq)));
            let received = self.earliest_arrival(&batch);
            let timing = self.log.get(&seq).and_then(|slot| {
                let t = slot.times;
                Some(PhaseTimes {
                    received,
                    pre_prepared: t.pre_prepared?,
                    prepared: t.prepared?,
                    committed: t.committed?,
                })
            });
            let requests = self.execute_batch(&batch, out);
            self.last_executed = seq;
            progressed |= requests > 0;
            executed = true;
            self.decided.remove(&seq);
            out.push(Output::Executed {
                seq,
                view: self.view,
                digest,
                requests,
                timing,
            });
            if seq.0.is_multiple_of(self.config.checkpoint_interval) {
                self.take_checkpoint(out);
            }
        }
        if progressed {
            // Progress in this view: the next view change starts from the base timeout.
            self.view_change_attempts = 0;
            self.update_view_change_timer();
        }
        if executed && self.is_primary() {
            // Room in flight again: what queued meanwhile (and what the rest
            // of this step brings) forms the next batch.
            self.propose_soon();
        }
    }

    /// When the first of the batch's requests that still wait here arrived.
    fn earliest_arrival(&self, batch: &Batch) -> Option<crate::Instant> {
        batch
            .requests
            .iter()
            .filter_map(|r| self.pending.get(&r.client))
            .map(|p| p.arrived)
            .min()
    }

    /// Whether to reply to `request` as it executes: if the copy in the batch
    /// or one this replica received from the client asks it to
    /// ([`crate::message::Repliers`]). The result is kept in the client table
    /// either way, for retransmissions (where it is too large to keep, every
    /// replica replies: see `execute_batch`).
    fn reply_asked(&self, request: &Request) -> bool {
        request.repliers.asks(self.id)
            || self
                .pending
                .get(&request.client)
                .is_some_and(|p| p.request.request_id == request.request_id && p.reply_asked)
    }

    /// Applies each request that has not executed before, in batch order, and
    /// replies where asked. Returns how many ran.
    fn execute_batch(&mut self, batch: &Batch, out: &mut Vec<Output>) -> usize {
        let mut ran = 0;
        for request in &batch.requests {
            let client = request.client;
            let reply_asked = self.reply_asked(request);
            match self.clients.admit(&client, request.request_id) {
                Admission::New => {}
                // Executed at most once per (client, id).
                Admission::Old | Admission::Last(_) => continue,
                // One the table forgot may have run: refused, and said so.
                Admission::Expired => {
                    if self
                        .pending
                        .get(&client)
                        .is_some_and(|p| p.request.request_id <= request.request_id)
                    {
                        self.pending.remove(&client);
                    }
                    if reply_asked {
                        let reply =
                            self.reply_status(&request.value, Vec::new(), ReplyStatus::Expired);
                        out.push(Output::Reply(client, reply));
                    }
                    continue;
                }
            }
            let result = self.app.apply(&request.op);
            self.clients.record(
                client,
                request.request_id,
                &result,
                self.config.client_result_max,
            );
            if self
                .pending
                .get(&client)
                .is_some_and(|p| p.request.request_id <= request.request_id)
            {
                self.pending.remove(&client);
            }
            // A result too large to keep cannot be sent again on a
            // retransmission: every replica sends it now.
            if reply_asked || result.len() > self.config.client_result_max {
                out.push(Output::Reply(
                    client,
                    self.reply(&request.value, result, false),
                ));
            }
            ran += 1;
        }
        ran
    }

    /// Recomputes which batches the log names but this replica lacks.
    pub(crate) fn refresh_missing_batches(&mut self) {
        let needed: Vec<Digest> = self
            .log
            .iter()
            .filter(|(seq, _)| **seq > self.last_executed)
            .filter_map(|(_, slot)| slot.pre_prepare.as_ref().map(|pp| pp.digest))
            .chain(self.decided.values().copied())
            .filter(|d| !self.batches.contains_key(d))
            .collect();
        self.missing_batches = needed.into_iter().collect();
    }

    /// Asks every replica for the batches still missing, and retries later.
    pub(crate) fn request_missing_batches(&mut self, out: &mut Vec<Output>) {
        self.refresh_missing_batches();
        if self.missing_batches.is_empty() {
            self.timer_fetch_batches = None;
            return;
        }
        for digest in self.missing_batches.clone() {
            let fetch = self.signer.sign(crate::message::FetchBatch {
                digest,
                replica: self.id,
            });
            out.push(Output::Broadcast(Message::FetchBatch(fetch)));
        }
        self.timer_fetch_batches = Some(self.now + self.retry_interval());
    }

    /// Drops the oldest pending request that is known only as relayed and not
    /// yet proposed, looking at most [`EVICTION_SCAN`] entries of the arrival
    /// order; false if there is none. Its client, if real, retransmits to
    /// every replica, and the copy from its own link is kept.
    fn evict_a_relayed_request(&mut self) -> bool {
        let pending = &self.pending;
        let victim = self
            .pending_order
            .iter()
            .take(EVICTION_SCAN)
            .find(|(client, id)| {
                pending.get(client).is_some_and(|p| {
                    p.request.request_id == *id && p.relayed_by.is_some() && !p.proposed
                })
            })
            .map(|(client, _)| *client);
        let Some(client) = victim else {
            return false;
        };
        self.pending.remove(&client);
        self.drop_input("relayed request evicted for a direct one");
        true
    }

    /// FETCH-BATCH: answer if the batch is known and the peer's serving
    /// budget (shared with state transfer) has room.
    pub(crate) fn on_fetch_batch(
        &mut self,
        fetch: crate::message::FetchBatch,
        out: &mut Vec<Output>,
    ) {
        if self.config.key(fetch.replica).is_none() {
            return self.drop_input("batch request from an unknown replica");
        }
        let Some(batch) = self.batches.get(&fetch.digest) else {
            return self.drop_input("fetch of an unknown batch");
        };
        let bytes = batch.wire_bytes();
        let batch = batch.clone();
        if !self.may_serve(fetch.replica, bytes) {
            return self.drop_input("batch request over the peer's budget");
        }
        let data = self.signer.sign(crate::message::BatchData {
            batch,
            replica: self.id,
        });
        out.push(Output::Send(fetch.replica, Message::BatchData(data)));
    }

    /// BATCH-DATA: kept only if some pre-prepare in the log needs it.
    pub(crate) fn on_batch_data(&mut self, batch: Batch, out: &mut Vec<Output>) {
        let digest = batch.digest();
        if !self.missing_batches.remove(&digest) {
            return self.drop_input("unrequested batch");
        }
        self.batches.insert(digest, batch);
        if self.missing_batches.is_empty() {
            self.timer_fetch_batches = None;
        }
        self.try_execute(out);
    }
}
