//! The protocol task: drives the [`Replica`] with verified messages and timer
//! ticks, hands its records to the log writer, and sends what they allow.
//!
//! # Invariant
//! A step is: one or more inputs through [`Replica::handle`] into one output
//! vector; then every [`Output::Persist`] record of the step, as one group,
//! to the [`LogWriter`] ([`LogWriter::submit`], which returns at once with the
//! group's position); then every send of the step (send, broadcast, reply,
//! status report) into the [`Outbox`], tagged with the position of the last
//! group submitted so far, whether or not this step persisted anything. The
//! next step starts at once, while the writer thread writes and syncs.
//!
//! **A send leaves the node only once the writer reported its position
//! durable, and sends leave in the order the core produced them** (see
//! [`crate::outbox`]). So a record is durable before any send the core
//! produced after it, in its step or a later one. The exception is a
//! client's fresh reply in a cluster whose read mode is ordered: it depends
//! only on this replica's prepared certificate for the batch it answers
//! ([`pbft_core::Config::replies_wait_for_records`]), so when that is
//! already durable the reply (up to [`EARLY_REPLY_BYTES_MAX`]) is sent as
//! the core produces it, ahead of the held sends, and the client does not wait for the fsync of the step's
//! other records (the `Executed` marker, records about later batches).
//! The other exception: a broadcast PRE-PREPARE or PREPARE
//! ([`Message::may_precede_its_record`]) is sent at once, ahead of the held
//! sends and of its own `PrePrepare` record, when the last group holding a
//! record that [fences votes](Record::fences_votes) (a view or window
//! change) is durable and so is at least one group of this run; otherwise it
//! is held like every send. The core's restore rule makes this safe (see
//! [`pbft_core::Output`], votes ahead of their records): the pre-prepare
//! phase then waits for no fsync, and only the prepared certificate's fsync
//! before COMMIT stays on a batch's critical path.
//! Outputs that are not sends (executions, checkpoints, view entries:
//! metrics and logs) are performed at once; the `reply` phase of an
//! executed batch is timed when its replies are released.
//!
//! The writer's callback runs on the writer thread: it counts fsyncs and
//! their time from its [`Progress`] stats and hands the durable position (or
//! the failure) to this task through a `watch` channel, which `run` selects
//! on. A writer failure stops the node with an error; nothing held, and
//! nothing produced later, is sent. While the writer is too far behind
//! ([`Outbox::must_pause`]) the task takes no inputs (messages, ticks) until
//! it catches up.
//!
//! On stop, the writer writes what was submitted and is closed (releasing
//! the data directory), then the held sends go out.

use crate::metrics::{mirror, Metrics, MIRROR_PERIOD};
use crate::outbox::Outbox;
use crate::Clock;
use anyhow::{anyhow, Context};
use bytes::Bytes;
use pbft_core::{Input, Message, Output, Record, Replica, SeqNum, View};
use pbft_crypto::{PublicKey, Verified};
use pbft_net::{Checked, Endpoint, VerifierHandle};
use pbft_storage::{LogWriter, Notify, Progress, Stats, Storage, StorageError};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, Instrument};

/// Most inputs handled in one step (one group of records, one round of sends).
pub const GROUP_INPUTS_MAX: usize = 256;

/// The largest reply frame sent ahead of the outbox. Larger ones (scans of
/// much data) are held like every send: the outbox's byte bound is what
/// pauses the protocol task while big outputs pile up, so a flood of large
/// requests from clients that read nothing cannot outrun it; and a reply
/// that large spends longer on the wire than in the fsync it would skip.
const EARLY_REPLY_BYTES_MAX: usize = 64 << 10;

/// How often the counters are logged.
const STATS_PERIOD: Duration = Duration::from_secs(10);

/// The context of every error that stops the node because its records may
/// not be durable.
const PERSIST_FAILED: &str =
    "cannot persist protocol state; stopping without sending anything that depends on it";

/// What the writer thread reported last, as the protocol task sees it.
#[derive(Debug, Default)]
pub(crate) struct WriterState {
    /// Every group up to this position is durable.
    durable: u64,
    /// The failure that stopped the writer, if it stopped.
    failure: Option<Arc<StorageError>>,
}

/// Wraps the writer's callback (tests: to hold its reports back).
pub(crate) type WrapNotify = Box<dyn FnOnce(Notify) -> Notify + Send>;

/// The writer's callback: counts fsyncs (and their time) from the deltas of
/// [`Progress::stats`], starting from `stats`, and hands the durable
/// position or the failure on through `state`. Runs on the writer thread.
fn notify(state: watch::Sender<WriterState>, metrics: Arc<Metrics>, stats: Stats) -> Notify {
    let mut last = stats;
    Box::new(
        move |report: Result<Progress, Arc<StorageError>>| match report {
            Ok(progress) => {
                let syncs = progress.stats.syncs.saturating_sub(last.syncs);
                if syncs > 0 {
                    let nanos = progress.stats.write_nanos.saturating_sub(last.write_nanos);
                    metrics.fsyncs.inc_by(syncs);
                    metrics
                        .fsync_seconds
                        .observe(nanos as f64 / 1e9 / syncs as f64);
                }
                last = progress.stats;
                state.send_modify(|s| s.durable = s.durable.max(progress.durable));
            }
            Err(e) => state.send_modify(|s| s.failure = Some(e)),
        },
    )
}

/// The error to stop with once the writer is gone: its failure, if it
/// reported one.
fn writer_error(progress: &watch::Receiver<WriterState>) -> anyhow::Error {
    match &progress.borrow().failure {
        Some(e) => anyhow::Error::new(e.clone()).context(PERSIST_FAILED),
        None => anyhow!("the record log writer stopped unexpectedly").context(PERSIST_FAILED),
    }
}

/// A send waiting in the outbox (or an observation timed at its release).
#[derive(Debug)]
enum Held {
    /// A frame for a replica or a client.
    Send {
        to: PublicKey,
        frame: Bytes,
        kind: &'static str,
    },
    /// A tampered frame a Byzantine replica sends after an extra delay.
    #[cfg(feature = "byzantine")]
    Delayed {
        to: PublicKey,
        frame: Bytes,
        delay: Duration,
    },
    /// An executed batch's replies go out with the items before this: its
    /// `reply` and `total` phases end here.
    Replied {
        received: Option<pbft_core::Instant>,
        executed: pbft_core::Instant,
    },
}

/// The protocol task's state. See the module docs.
pub(crate) struct Protocol {
    replica: Replica,
    /// `None` once closed.
    writer: Option<LogWriter>,
    /// Sends waiting for durability.
    outbox: Outbox<Held>,
    endpoint: Endpoint,
    /// Replica keys, indexed by [`ReplicaId`].
    keys: Vec<PublicKey>,
    clock: Clock,
    metrics: Arc<Metrics>,
    verifier: VerifierHandle,
    /// The view, as last reported by the core (for spans and logs).
    view: View,
    /// The last executed sequence number, as last reported by the core.
    last_executed: SeqNum,
    /// When the current step's inputs were handled (its executions ran then).
    handled_at: pbft_core::Instant,
    /// Whether replies wait in the outbox like every other send
    /// ([`pbft_core::Config::replies_wait_for_records`]); if not, a fresh
    /// reply waits only for its batch's prepared certificate.
    replies_wait: bool,
    /// The group position of the latest `Prepared` record of each sequence
    /// number whose record may not be durable yet (entries at or below the
    /// durable position are pruned; a missing entry is durable).
    prepared_at: BTreeMap<SeqNum, u64>,
    /// Whether the replies the core is producing now (those of one batch's
    /// execution) may be sent at once (each up to [`EARLY_REPLY_BYTES_MAX`]).
    reply_now: bool,
    /// Whether one of them was held all the same (too large).
    reply_held: bool,
    /// The group position of the latest record that fences votes
    /// ([`Record::fences_votes`]); 0 if none in this run.
    fence_at: u64,
    /// Alters what a Byzantine replica receives and sends.
    #[cfg(feature = "byzantine")]
    tamper: Option<crate::byzantine::Tamper>,
}

impl Protocol {
    /// The protocol task's state, with a log writer thread started for
    /// `storage` (its callback wrapped by `wrap`, if given). Returns the
    /// receiver of the writer's reports, for [`Protocol::run`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        replica: Replica,
        storage: Storage,
        endpoint: Endpoint,
        keys: Vec<PublicKey>,
        clock: Clock,
        metrics: Arc<Metrics>,
        verifier: VerifierHandle,
        wrap: Option<WrapNotify>,
    ) -> anyhow::Result<(Protocol, watch::Receiver<WriterState>)> {
        let (state, progress) = watch::channel(WriterState::default());
        let mut callback = notify(state, metrics.clone(), storage.stats());
        if let Some(wrap) = wrap {
            callback = wrap(callback);
        }
        let writer =
            LogWriter::spawn(storage, callback).context("cannot start the record log writer")?;
        let status = replica.status();
        let replies_wait = replica.config().replies_wait_for_records();
        let protocol = Protocol {
            replies_wait,
            prepared_at: BTreeMap::new(),
            reply_now: false,
            reply_held: false,
            fence_at: 0,
            replica,
            writer: Some(writer),
            outbox: Outbox::default(),
            endpoint,
            keys,
            clock,
            metrics,
            verifier,
            view: status.view,
            last_executed: status.last_executed,
            handled_at: pbft_core::Instant(0),
            #[cfg(feature = "byzantine")]
            tamper: None,
        };
        Ok((protocol, progress))
    }

    /// Makes this replica Byzantine (`None`: honest).
    #[cfg(feature = "byzantine")]
    pub(crate) fn set_tamper(&mut self, tamper: Option<crate::byzantine::Tamper>) {
        self.tamper = tamper;
    }

    /// Whether a verified message reaches the core (always, unless a
    /// Byzantine replica drops it).
    fn admit(&mut self, _message: &Message) -> bool {
        if let Message::Request(_) = _message {
            self.metrics.requests_received.inc();
        }
        #[cfg(feature = "byzantine")]
        if let Some(t) = &mut self.tamper {
            return t.admit(_message);
        }
        true
    }

    /// The core input for `message` from the peer with key `from`: a client
    /// request that came on a replica's link is relayed (the transport lets
    /// a client link carry only its own client's requests).
    fn input(&self, from: PublicKey, message: Verified<Message>) -> Input {
        match &*message {
            Message::Request(r) if r.client.0 != from => {
                match self.keys.iter().position(|k| *k == from) {
                    Some(i) => Input::Relayed(pbft_core::ReplicaId(i as u32), message),
                    None => Input::Message(message),
                }
            }
            _ => Input::Message(message),
        }
    }

    /// Groups submitted to the writer so far.
    fn submitted(&self) -> u64 {
        self.writer.as_ref().map_or(0, LogWriter::submitted)
    }

    /// Runs steps until `stop` fires (or its sender is dropped), then lets
    /// the writer finish, closes it and sends what it held. Returns an error
    /// if the record log cannot be written or the verification stage ends
    /// unexpectedly; then nothing held is sent.
    pub(crate) async fn run(
        mut self,
        mut progress: watch::Receiver<WriterState>,
        mut verified: mpsc::Receiver<Checked<Message>>,
        mut stop: oneshot::Receiver<()>,
    ) -> anyhow::Result<()> {
        let result = self.steps(&mut progress, &mut verified, &mut stop).await;
        let writer = self.writer.take();
        let submitted = writer.as_ref().map_or(0, LogWriter::submitted);
        let closed = tokio::task::spawn_blocking(move || writer.map(LogWriter::close))
            .await
            .context("the record log writer failed")?;
        if let Err(e) = result {
            self.outbox.fail();
            return Err(e);
        }
        if let Some(Err(_)) = closed {
            self.outbox.fail();
            return Err(writer_error(&progress));
        }
        // Everything submitted is durable now.
        self.outbox.durable(submitted);
        self.release();
        self.log_stats();
        Ok(())
    }

    async fn steps(
        &mut self,
        progress: &mut watch::Receiver<WriterState>,
        verified: &mut mpsc::Receiver<Checked<Message>>,
        stop: &mut oneshot::Receiver<()>,
    ) -> anyhow::Result<()> {
        let mut stats =
            tokio::time::interval_at(tokio::time::Instant::now() + STATS_PERIOD, STATS_PERIOD);
        stats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut mirror = tokio::time::interval(MIRROR_PERIOD);
        mirror.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut out = Vec::new();
        let mut was_paused = false;
        loop {
            let paused = self.outbox.must_pause(self.submitted());
            if paused && !was_paused {
                self.metrics.backpressure.inc();
                debug!(
                    submitted = self.submitted(),
                    durable = self.outbox.durable_position(),
                    held = self.outbox.len(),
                    "the log writer is behind; inputs wait"
                );
            }
            was_paused = paused;
            let deadline = self.replica.poll_timeout().map(|t| self.clock.deadline(t));
            let timer = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            // Biased: stop first, then the writer's progress (releasing
            // sends), timers and the stats line (so a busy network cannot
            // starve them), then messages. No inputs while paused.
            let first = tokio::select! {
                biased;
                _ = &mut *stop => return Ok(()),
                changed = progress.changed() => {
                    if changed.is_err() {
                        self.outbox.fail();
                        return Err(writer_error(progress));
                    }
                    self.take_progress(progress)?;
                    continue;
                }
                () = timer, if !paused => Input::Tick,
                _ = stats.tick() => {
                    self.log_stats();
                    continue;
                }
                _ = mirror.tick() => {
                    self.mirror_metrics(verified.len());
                    continue;
                }
                message = verified.recv(), if !paused => match message {
                    // The message's share of the inbound budget is given
                    // back here, as the core takes it.
                    Some(Checked { from, value, .. }) if self.admit(&value) => self.input(from, value),
                    Some(_) => continue,
                    None => return Err(anyhow!("the verification stage stopped unexpectedly")),
                },
            };
            let span = tracing::debug_span!("step", view = self.view.0, seq = self.last_executed.0);
            self.step(first, verified, progress, &mut out)
                .instrument(span)
                .await?;
            self.take_progress(progress)?;
        }
    }

    /// Reads the writer's last report: releases what became durable, or
    /// fails (holding everything) if the writer failed.
    fn take_progress(&mut self, progress: &mut watch::Receiver<WriterState>) -> anyhow::Result<()> {
        let durable = {
            let state = progress.borrow_and_update();
            if state.failure.is_some() {
                None
            } else {
                Some(state.durable)
            }
        };
        let Some(durable) = durable else {
            self.outbox.fail();
            return Err(writer_error(progress));
        };
        self.outbox.durable(durable);
        self.release();
        Ok(())
    }

    /// Sends what the outbox releases, in order.
    fn release(&mut self) {
        while let Some(held) = self.outbox.pop_ready() {
            match held {
                Held::Send { to, frame, kind } => self.send(to, frame, kind),
                #[cfg(feature = "byzantine")]
                Held::Delayed { to, frame, delay } => {
                    let endpoint = self.endpoint.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = endpoint.send(to, frame);
                    });
                }
                Held::Replied { received, executed } => self.observe_replied(received, executed),
            }
        }
        self.metrics.outbox_held.set(self.outbox.len() as i64);
        self.metrics.log_lag.set(
            self.submitted()
                .saturating_sub(self.outbox.durable_position()) as i64,
        );
    }

    /// Whether this replica's latest prepared certificate for `seq` is durable.
    fn prepared_durable(&self, seq: SeqNum) -> bool {
        self.prepared_at
            .get(&seq)
            .is_none_or(|&p| p <= self.outbox.durable_position())
    }

    /// Whether a PRE-PREPARE or PREPARE may be sent ahead of its record now:
    /// the latest vote fence, and some group of this run, are durable.
    fn votes_may_go(&self) -> bool {
        self.outbox.durable_position() >= self.fence_at.max(1)
    }

    /// Holds a frame until everything submitted so far is durable.
    fn hold(&mut self, to: PublicKey, frame: Bytes, kind: &'static str) {
        let position = self.submitted();
        let bytes = frame.len();
        self.outbox
            .push(position, bytes, Held::Send { to, frame, kind });
    }

    /// One step: `first` and whatever else is ready through the core, then
    /// its records to the writer and its sends to the outbox.
    async fn step(
        &mut self,
        first: Input,
        verified: &mut mpsc::Receiver<Checked<Message>>,
        progress: &watch::Receiver<WriterState>,
        out: &mut Vec<Output>,
    ) -> anyhow::Result<()> {
        out.clear();
        self.replica.handle(self.clock.now(), first, out);
        let mut inputs = 1;
        while inputs < GROUP_INPUTS_MAX {
            let Ok(Checked {
                from,
                value: message,
                ..
            }) = verified.try_recv()
            else {
                break;
            };
            inputs += 1;
            if !self.admit(&message) {
                continue;
            }
            let input = self.input(from, message);
            self.replica.handle(self.clock.now(), input, out);
        }
        let now = self.clock.now();
        if self.replica.poll_timeout().is_some_and(|t| t <= now) {
            self.replica.handle(now, Input::Tick, out);
        }
        self.handled_at = now;

        let mut records = Vec::new();
        let mut prepared = Vec::new();
        let mut fenced = false;
        let mut actions = Vec::with_capacity(out.len());
        for output in out.drain(..) {
            match output {
                Output::Persist(record) => {
                    match &record {
                        Record::Prepared(p) => prepared.push(p.pre_prepare.seq),
                        // Marks where a batch's replies start.
                        Record::Executed(seq) => {
                            actions.push(Output::Persist(Record::Executed(*seq)))
                        }
                        _ => {}
                    }
                    fenced |= record.fences_votes();
                    records.push(record);
                }
                other => actions.push(other),
            }
        }
        if !records.is_empty() {
            let count = records.len();
            let submitted = match self.writer.as_mut() {
                Some(writer) => writer.submit(records).is_ok(),
                None => false,
            };
            if !submitted {
                self.outbox.fail();
                return Err(writer_error(progress));
            }
            let position = self.submitted();
            debug!(records = count, position, "submitted");
            for seq in prepared {
                self.prepared_at.insert(seq, position);
            }
            if fenced {
                self.fence_at = position;
            }
        }
        #[cfg(feature = "byzantine")]
        if let Some(t) = &mut self.tamper {
            let (others, sends) = t.transform(actions);
            // Its replies are among the held sends: no reply marker.
            for action in others {
                if !matches!(action, Output::Persist(_)) {
                    self.perform(action);
                }
            }
            for o in sends {
                self.hold_tampered(o);
            }
            return Ok(());
        }
        for action in actions {
            self.perform(action);
        }
        Ok(())
    }

    /// Holds one message a Byzantine replica's tampering produced (sent,
    /// once released, after its extra delay in microseconds if it has one).
    #[cfg(feature = "byzantine")]
    fn hold_tampered(&mut self, o: pbft_sim::network::Outgoing) {
        use pbft_sim::network::Dest;
        let to = match o.to {
            Dest::Replica(j) => match self.keys.get(j) {
                Some(k) => *k,
                None => return,
            },
            Dest::Client(c) => c.0,
        };
        let kind = o.msg.kind();
        let frame = Bytes::from(o.msg.encode());
        if o.extra_delay == 0 {
            self.hold(to, frame, kind);
            return;
        }
        let position = self.submitted();
        let bytes = frame.len();
        let delay = Duration::from_micros(o.extra_delay);
        self.outbox
            .push(position, bytes, Held::Delayed { to, frame, delay });
    }

    /// Performs one non-persist output: a send goes to the outbox, the rest
    /// (metrics, logs) is done at once.
    fn perform(&mut self, output: Output) {
        match output {
            Output::Persist(Record::Executed(seq)) => {
                // Submitted by `step`; here it marks where the replies of
                // the batch at `seq` start.
                self.reply_now = !self.replies_wait && self.prepared_durable(seq);
                self.reply_held = false;
            }
            Output::Persist(_) => {
                // Split off by `step` and submitted to the writer.
            }
            Output::Send(to, message) => match self.keys.get(to.index()) {
                Some(key) => {
                    let key = *key;
                    self.hold(key, Bytes::from(message.encode()), message.kind());
                }
                None => debug!(%to, "send to an unknown replica dropped"),
            },
            Output::Broadcast(message) => {
                let frame = Bytes::from(message.encode());
                let me = self.replica.id();
                let at_once = message.may_precede_its_record() && self.votes_may_go();
                for i in 0..self.keys.len() {
                    if i == me.index() {
                        continue;
                    }
                    if at_once {
                        self.send(self.keys[i], frame.clone(), message.kind());
                    } else {
                        self.hold(self.keys[i], frame.clone(), message.kind());
                    }
                }
            }
            Output::Reply(client, reply) => {
                let frame = Bytes::from(Message::Reply(reply).encode());
                if self.reply_now && frame.len() <= EARLY_REPLY_BYTES_MAX {
                    self.send(client.0, frame, "reply");
                } else {
                    self.reply_held |= self.reply_now;
                    self.hold(client.0, frame, "reply");
                }
            }
            Output::Status(client, report) => {
                let frame = Bytes::from(Message::StatusReport(report).encode());
                self.hold(client.0, frame, "status-report");
            }
            Output::Executed {
                seq,
                view,
                digest,
                requests,
                timing,
            } => {
                self.metrics.batches_executed.inc();
                self.metrics.requests_executed.inc_by(requests as u64);
                self.metrics.batch_size.observe(requests as f64);
                if let Some(t) = timing {
                    self.observe_phases(&t);
                }
                self.reply_now = false;
                let durable = self.outbox.durable_position();
                self.prepared_at.retain(|_, p| *p > durable);
                self.last_executed = seq;
                debug!(seq = seq.0, view = view.0, %digest, requests, "executed");
            }
            Output::Checkpointed { seq, digest } => {
                self.metrics.checkpoints.inc();
                debug!(seq = seq.0, %digest, "checkpoint taken");
            }
            Output::StateTransferred {
                seq,
                digest,
                pages,
                fetched,
            } => {
                self.metrics.state_transfers.inc();
                self.last_executed = self.last_executed.max(seq);
                info!(
                    seq = seq.0,
                    %digest,
                    pages,
                    fetched,
                    "state transferred from a certified checkpoint"
                );
            }
            Output::EnteredView(view) => {
                self.metrics.view_changes.inc();
                self.view = view;
                let primary = self.replica.config().primary(view);
                info!(view = view.0, primary = primary.0, "entered view");
            }
        }
    }

    fn send(&self, to: PublicKey, frame: Bytes, kind: &'static str) {
        if let Err(e) = self.endpoint.send(to, frame) {
            self.metrics.send_errors.inc();
            debug!(peer = ?to, kind, error = %e, "send failed");
        }
    }

    /// Records an executed batch's phases: from its first request's arrival
    /// (when known) through pre-prepare, prepared and committed to execution
    /// (this step's handling) now; the reply (its records are durable and its
    /// sends go out) when the outbox releases it ([`Protocol::observe_replied`]).
    fn observe_phases(&mut self, t: &pbft_core::PhaseTimes) {
        let m = &self.metrics;
        if let Some(received) = t.received {
            m.observe_phase("queued", seconds(received, t.pre_prepared));
        }
        m.observe_phase("prepare", seconds(t.pre_prepared, t.prepared));
        m.observe_phase("commit", seconds(t.prepared, t.committed));
        m.observe_phase("execute", seconds(t.committed, self.handled_at));
        if self.reply_now && !self.reply_held {
            // The replies already left, in this step.
            return self.observe_replied(t.received, self.handled_at);
        }
        let position = self.submitted();
        self.outbox.push(
            position,
            0,
            Held::Replied {
                received: t.received,
                executed: self.handled_at,
            },
        );
    }

    /// The `reply` and `total` phases of a batch executed at `executed`,
    /// whose replies were just released.
    fn observe_replied(&self, received: Option<pbft_core::Instant>, executed: pbft_core::Instant) {
        let replied = self.clock.now();
        let m = &self.metrics;
        m.observe_phase("reply", seconds(executed, replied));
        if let Some(received) = received {
            m.observe_phase("total", seconds(received, replied));
        }
    }

    /// Copies the core's, the endpoint's and the verifier's counters and
    /// gauges into the metrics (`verified_queue`: messages waiting for this task).
    fn mirror_metrics(&self, verified_queue: usize) {
        let m = &self.metrics;
        let status = self.replica.status();
        m.view.set(status.view.0 as i64);
        m.last_executed.set(status.last_executed.0 as i64);
        m.stable_checkpoint.set(status.stable_checkpoint.0 as i64);
        m.pending_requests.set(status.pending_requests as i64);
        m.queue_depth
            .with_label_values(&["verified"])
            .set(verified_queue as i64);
        for (reason, count) in self.replica.dropped() {
            m.mirror_dropped("core", reason, *count);
        }
        let net = self.endpoint.stats();
        mirror(&m.frames.with_label_values(&["sent"]), net.frames_sent);
        mirror(
            &m.frames.with_label_values(&["received"]),
            net.frames_received,
        );
        m.open_connections.set(net.open_connections as i64);
        m.queue_depth
            .with_label_values(&["send_bytes"])
            .set(net.queued_send_bytes as i64);
        m.mirror_dropped("net", "frame_dropped", net.frames_dropped);
        m.mirror_dropped("net", "bad_frame", net.bad_frames);
        m.mirror_dropped("net", "oversize_close", net.oversize_closes);
        m.mirror_dropped("net", "refused_peer", net.refused_peers);
        let verify = self.verifier.stats();
        mirror(
            &m.verify_items.with_label_values(&["verified"]),
            verify.verified,
        );
        mirror(
            &m.verify_items.with_label_values(&["rejected"]),
            verify.rejected,
        );
        m.mirror_dropped("verify", "bad_signature", verify.rejected);
        mirror(&m.verify_batches, verify.batches);
    }

    /// The periodic counters line.
    fn log_stats(&self) {
        let status = self.replica.status();
        let net = self.endpoint.stats();
        let verify = self.verifier.stats();
        let core_dropped: u64 = self.replica.dropped().values().sum();
        let m = &self.metrics;
        info!(
            view = status.view.0,
            active = status.active,
            primary = status.primary.0,
            last_executed = status.last_executed.0,
            stable_checkpoint = status.stable_checkpoint.0,
            pending_requests = status.pending_requests,
            executed_batches = m.batches_executed.get(),
            executed_requests = m.requests_executed.get(),
            fsyncs = m.fsyncs.get(),
            outbox_held = self.outbox.len(),
            outbox_bytes = self.outbox.bytes(),
            log_lag = self
                .submitted()
                .saturating_sub(self.outbox.durable_position()),
            backpressure = m.backpressure.get(),
            garbage_frames = m.garbage_frames.get(),
            refused_frames = m.refused_frames.get(),
            foreign_client_frames = m.foreign_client_frames.get(),
            verified = verify.verified,
            verify_failures = verify.rejected,
            core_dropped,
            send_errors = m.send_errors.get(),
            frames_sent = net.frames_sent,
            frames_received = net.frames_received,
            frames_dropped = net.frames_dropped,
            bad_frames = net.bad_frames,
            refused_peers = net.refused_peers,
            open_connections = net.open_connections,
            "stats"
        );
    }
}

/// Seconds from `from` to `to` (0 if `to` is earlier).
fn seconds(from: pbft_core::Instant, to: pbft_core::Instant) -> f64 {
    to.as_micros().saturating_sub(from.as_micros()) as f64 / 1e6
}
