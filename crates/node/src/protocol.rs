//! The protocol task: drives the [`Replica`] with verified messages and timer
//! ticks, makes its records durable, then performs its sends.
//!
//! # Invariant
//! A step is: one or more inputs through [`Replica::handle`] into one output
//! vector; then every [`Output::Persist`] record of the step in one
//! [`Storage::append`] (one fsync); only then the step's sends, in order. The
//! next step starts after the sends. So a record is durable before any send
//! that follows it, and a failed append stops the node before anything of its
//! step is sent.

use crate::metrics::{mirror, Metrics, MIRROR_PERIOD};
use crate::Clock;
use anyhow::{anyhow, Context};
use bytes::Bytes;
use pbft_core::{Input, Message, Output, Record, Replica, SeqNum, View};
use pbft_crypto::{PublicKey, Verified};
use pbft_net::{Endpoint, VerifierHandle};
use pbft_storage::Storage;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, Instrument};

/// Most inputs handled in one step (one fsync, one round of sends).
pub const GROUP_INPUTS_MAX: usize = 256;

/// How often the counters are logged.
const STATS_PERIOD: Duration = Duration::from_secs(10);

/// The protocol task's state. See the module docs.
pub(crate) struct Protocol {
    replica: Replica,
    /// `None` only while an append runs on the blocking pool.
    storage: Option<Storage>,
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
    /// Alters what a Byzantine replica receives and sends.
    #[cfg(feature = "byzantine")]
    tamper: Option<crate::byzantine::Tamper>,
}

impl Protocol {
    pub(crate) fn new(
        replica: Replica,
        storage: Storage,
        endpoint: Endpoint,
        keys: Vec<PublicKey>,
        clock: Clock,
        metrics: Arc<Metrics>,
        verifier: VerifierHandle,
    ) -> Protocol {
        let status = replica.status();
        Protocol {
            replica,
            storage: Some(storage),
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
        }
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

    /// Runs steps until `stop` fires (or its sender is dropped). Returns an
    /// error if the record log cannot be written or the verification stage
    /// ends unexpectedly.
    pub(crate) async fn run(
        mut self,
        mut verified: mpsc::Receiver<(PublicKey, Verified<Message>)>,
        mut stop: oneshot::Receiver<()>,
    ) -> anyhow::Result<()> {
        let mut stats =
            tokio::time::interval_at(tokio::time::Instant::now() + STATS_PERIOD, STATS_PERIOD);
        stats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut mirror = tokio::time::interval(MIRROR_PERIOD);
        mirror.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut out = Vec::new();
        loop {
            let deadline = self.replica.poll_timeout().map(|t| self.clock.deadline(t));
            let timer = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            // Biased: stop first, then timers and the stats line (so a busy
            // network cannot starve them), then messages.
            let first = tokio::select! {
                biased;
                _ = &mut stop => break,
                () = timer => Input::Tick,
                _ = stats.tick() => {
                    self.log_stats();
                    continue;
                }
                _ = mirror.tick() => {
                    self.mirror_metrics(verified.len());
                    continue;
                }
                message = verified.recv() => match message {
                    Some((from, message)) if self.admit(&message) => self.input(from, message),
                    Some(_) => continue,
                    None => return Err(anyhow!("the verification stage stopped unexpectedly")),
                },
            };
            let span = tracing::debug_span!("step", view = self.view.0, seq = self.last_executed.0);
            self.step(first, &mut verified, &mut out)
                .instrument(span)
                .await?;
        }
        self.log_stats();
        Ok(())
    }

    /// One step: `first` and whatever else is ready through the core, then
    /// persist, then send.
    async fn step(
        &mut self,
        first: Input,
        verified: &mut mpsc::Receiver<(PublicKey, Verified<Message>)>,
        out: &mut Vec<Output>,
    ) -> anyhow::Result<()> {
        out.clear();
        self.replica.handle(self.clock.now(), first, out);
        let mut inputs = 1;
        while inputs < GROUP_INPUTS_MAX {
            let Ok((from, message)) = verified.try_recv() else {
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
        let mut actions = Vec::with_capacity(out.len());
        for output in out.drain(..) {
            match output {
                Output::Persist(record) => records.push(record),
                other => actions.push(other),
            }
        }
        if !records.is_empty() {
            self.persist(records).await?;
        }
        #[cfg(feature = "byzantine")]
        if let Some(t) = &mut self.tamper {
            let (others, sends) = t.transform(actions);
            for action in others {
                self.perform(action);
            }
            for o in sends {
                self.send_tampered(o);
            }
            return Ok(());
        }
        for action in actions {
            self.perform(action);
        }
        Ok(())
    }

    /// Sends one message a Byzantine replica's tampering produced, after
    /// its extra delay (microseconds) if it has one.
    #[cfg(feature = "byzantine")]
    fn send_tampered(&self, o: pbft_sim::network::Outgoing) {
        use pbft_sim::network::Dest;
        let key = match o.to {
            Dest::Replica(j) => match self.keys.get(j) {
                Some(k) => *k,
                None => return,
            },
            Dest::Client(c) => c.0,
        };
        let kind = o.msg.kind();
        let frame = Bytes::from(o.msg.encode());
        if o.extra_delay == 0 {
            self.send(key, frame, kind);
            return;
        }
        let endpoint = self.endpoint.clone();
        let delay = Duration::from_micros(o.extra_delay);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = endpoint.send(key, frame);
        });
    }

    /// Appends `records` with one fsync, on the blocking pool.
    async fn persist(&mut self, records: Vec<Record>) -> anyhow::Result<()> {
        let mut storage = self
            .storage
            .take()
            .context("the record log is unavailable after an earlier failure")?;
        let count = records.len();
        let started = std::time::Instant::now();
        let (storage, result) = tokio::task::spawn_blocking(move || {
            let result = storage.append(&records);
            (storage, result)
        })
        .await
        .context("the record log writer failed")?;
        self.storage = Some(storage);
        result.context(
            "cannot persist protocol state; stopping without sending anything that depends on it",
        )?;
        self.metrics.fsyncs.inc();
        self.metrics
            .fsync_seconds
            .observe(started.elapsed().as_secs_f64());
        debug!(records = count, "persisted");
        Ok(())
    }

    /// Performs one non-persist output.
    fn perform(&mut self, output: Output) {
        match output {
            Output::Persist(_) => {
                // Split off by `step` and already durable.
            }
            Output::Send(to, message) => match self.keys.get(to.index()) {
                Some(key) => {
                    let key = *key;
                    self.send(key, Bytes::from(message.encode()), message.kind());
                }
                None => debug!(%to, "send to an unknown replica dropped"),
            },
            Output::Broadcast(message) => {
                let frame = Bytes::from(message.encode());
                let me = self.replica.id();
                for i in 0..self.keys.len() {
                    if i != me.index() {
                        self.send(self.keys[i], frame.clone(), message.kind());
                    }
                }
            }
            Output::Reply(client, reply) => {
                let frame = Bytes::from(Message::Reply(reply).encode());
                self.send(client.0, frame, "reply");
            }
            Output::Status(client, report) => {
                let frame = Bytes::from(Message::StatusReport(report).encode());
                self.send(client.0, frame, "status-report");
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
    /// (this step's handling) and the reply (now: the step's records are
    /// durable and its sends go out).
    fn observe_phases(&self, t: &pbft_core::PhaseTimes) {
        let replied = self.clock.now();
        let secs = |from: pbft_core::Instant, to: pbft_core::Instant| {
            to.as_micros().saturating_sub(from.as_micros()) as f64 / 1e6
        };
        let m = &self.metrics;
        if let Some(received) = t.received {
            m.observe_phase("queued", secs(received, t.pre_prepared));
            m.observe_phase("total", secs(received, replied));
        }
        m.observe_phase("prepare", secs(t.pre_prepared, t.prepared));
        m.observe_phase("commit", secs(t.prepared, t.committed));
        m.observe_phase("execute", secs(t.committed, self.handled_at));
        m.observe_phase("reply", secs(self.handled_at, replied));
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
