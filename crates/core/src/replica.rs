//! The replica: its state, the single entry point [`Replica::handle`], timers,
//! restart from persisted records, and the invariants checked after every step.
//!
//! # State, in the paper's terms
//! * `view`/`active`: the current view; `active == false` while changing to it
//!   (then only CHECKPOINT, VIEW-CHANGE, NEW-VIEW and state transfer are
//!   processed; normal-case messages for the new view wait in `deferred`).
//! * `log`: one `Slot` per sequence number in `(h, h+L]`, `h = stable.seq`
//!   the low water mark.
//! * `clients`: per client, the last executed request id and its result
//!   (exactly-once), expired at checkpoints (see [`crate::client_table`]);
//!   part of every checkpoint.
//! * `pending`: requests received but not yet executed, at most one per client;
//!   each has its own view-change deadline, and they feed the primary's batches.
//! * `decided`: sequence numbers learned decided from commit certificates
//!   (see [`crate::retransmit`]), executed in order like committed slots.
//!
//! # Invariants (checked at the end of every `handle`)
//! * Every slot's sequence number is in `(h, h+L]`.
//! * `last_executed >= h`, unless a state transfer towards `h` is under way.
//! * A slot's pre-prepare, prepares and commits are all for the current view.
//! * An inactive replica has sent its VIEW-CHANGE for `view`.

use crate::checkpoint::{Serving, StateFetch, StateImage};
use crate::client_table::ClientTable;
use crate::config::{Config, ConfigError};
use crate::ids::{ClientId, Instant, ReplicaId, RequestId, SeqNum, View};
use crate::io::{Input, LoggedSnapshots, Output, Record};
use crate::message::{
    Batch, CheckpointProof, Commit, Message, NewView, PrePrepare, Prepare, PreparedProof, Request,
    ViewChange,
};
use pbft_app::{Page, StateMachine};
use pbft_crypto::{Digest, Signed, Signer};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// Most normal-case messages held for a view this replica has not entered yet
/// (each sender gets an n-th), and most bytes they may take.
pub(crate) const DEFERRED_MAX: usize = 4096;
pub(crate) const DEFERRED_BYTES_MAX: usize = 128 << 20;

/// About what a held-back message takes: its batch, if any, and a vote's size.
fn deferred_bytes(message: &Message) -> usize {
    const VOTE: usize = 256;
    match message {
        Message::PrePrepare(_, batch) => VOTE + batch.wire_bytes(),
        _ => VOTE,
    }
}
/// The view-change timeout stops doubling after this many consecutive failures.
const VIEW_CHANGE_BACKOFF_MAX: u32 = 6;

/// Votes and certificates for one sequence number.
#[derive(Clone, Debug, Default)]
pub(crate) struct Slot {
    /// The accepted pre-prepare of the current view.
    pub pre_prepare: Option<Signed<PrePrepare>>,
    /// Prepares of the current view, one per replica (first one wins).
    pub prepares: BTreeMap<ReplicaId, Signed<Prepare>>,
    /// Commits of the current view, one per replica (first one wins).
    pub commits: BTreeMap<ReplicaId, Signed<Commit>>,
    /// The prepared certificate of the latest view in which this slot
    /// prepared here; survives view changes (it goes into VIEW-CHANGE).
    pub prepared: Option<PreparedProof>,
    /// Committed-local in the current view.
    pub committed: bool,
    /// When the pre-prepare, the prepared certificate and committed-local
    /// came about in the current view (for [`crate::PhaseTimes`]).
    pub times: SlotTimes,
}

/// When a slot passed each phase in the current view.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SlotTimes {
    pub pre_prepared: Option<Instant>,
    pub prepared: Option<Instant>,
    pub committed: Option<Instant>,
}

impl Slot {
    /// Forgets the votes of the old view; keeps the prepared certificate.
    pub(crate) fn clear_votes(&mut self) {
        self.pre_prepare = None;
        self.prepares.clear();
        self.commits.clear();
        self.committed = false;
        self.times = SlotTimes::default();
    }

    /// Whether the slot prepared in `view`.
    pub fn prepared_in(&self, view: View) -> bool {
        self.prepared
            .as_ref()
            .is_some_and(|p| p.pre_prepare.view == view)
    }
}

/// A request waiting for execution.
#[derive(Clone, Debug)]
pub(crate) struct Pending {
    pub request: Signed<Request>,
    /// In a pre-prepare of the current view: one this replica sent (as
    /// primary) or accepted (as a backup).
    pub proposed: bool,
    /// When it arrived (for the batch delay).
    pub arrived: Instant,
    /// When this request's own view-change timer expires: a request that
    /// waits this long starts a view change however busy the primary keeps
    /// the replica with other clients' requests (a censoring primary is
    /// replaced). Set when it starts waiting, and again when a view starts;
    /// `None` while the request is known only as relayed by another replica
    /// (see [`crate::Input::Relayed`]).
    pub deadline: Option<Instant>,
    /// The replica that relayed it, while it has not come from the client's
    /// own link: a primary orders such requests after the others.
    pub relayed_by: Option<ReplicaId>,
    /// When this backup last relayed it to the primary.
    pub forwarded: Option<Instant>,
    /// Whether a copy of it that this replica received asks it to reply
    /// ([`crate::message::Repliers`]): the first copy, or a retransmission.
    pub reply_asked: bool,
}

/// A snapshot of a replica's progress, for status endpoints, metrics and
/// tests: cheap to take (it never hashes the state; see
/// [`Replica::state_digest`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// This replica.
    pub id: ReplicaId,
    /// The current view.
    pub view: View,
    /// False while a view change to `view` is under way.
    pub active: bool,
    /// The primary of `view`.
    pub primary: ReplicaId,
    /// The last executed sequence number.
    pub last_executed: SeqNum,
    /// The stable checkpoint (low water mark).
    pub stable_checkpoint: SeqNum,
    /// Requests waiting for execution.
    pub pending_requests: usize,
}

/// Persisted records that cannot be turned back into a replica.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A checkpoint record whose snapshot does not match its certified digest.
    #[error("checkpoint record at {seq}: snapshot digest {actual} differs from the certified {expected}")]
    CheckpointDigest {
        /// The checkpoint.
        seq: SeqNum,
        /// The certified digest.
        expected: Digest,
        /// The snapshot's digest.
        actual: Digest,
    },
    /// A snapshot that does not decode or restore.
    #[error("checkpoint record at {seq}: {reason}")]
    Snapshot {
        /// The checkpoint.
        seq: SeqNum,
        /// What is wrong.
        reason: String,
    },
    /// The records were written by another replica.
    #[error("records were written by replica {found}, not {expected}")]
    WrongReplica {
        /// This replica.
        expected: ReplicaId,
        /// The writer.
        found: ReplicaId,
    },
}

/// Where a restored replica may have voted before its crash without a
/// record (see [`Replica::may_vote`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Amnesia {
    /// The view it was restored in.
    pub(crate) view: View,
    /// Its restored stable checkpoint plus the window L.
    pub(crate) through: SeqNum,
}

/// The PBFT replica state machine. See the module docs.
pub struct Replica {
    pub(crate) id: ReplicaId,
    pub(crate) config: Config,
    pub(crate) signer: Signer,
    pub(crate) app: Box<dyn StateMachine>,
    pub(crate) now: Instant,

    pub(crate) view: View,
    pub(crate) active: bool,
    pub(crate) log: BTreeMap<SeqNum, Slot>,
    /// Batches named by pre-prepares in the log (and fetched ones).
    pub(crate) batches: BTreeMap<Digest, Batch>,
    /// Batch digests the log needs and this replica lacks.
    pub(crate) missing_batches: BTreeSet<Digest>,
    /// The highest sequence number assigned in the current view.
    pub(crate) last_assigned: SeqNum,
    /// Where this replica may have voted before its last restart without a
    /// record of it (see [`Replica::may_vote`]).
    pub(crate) amnesia: Option<Amnesia>,
    pub(crate) last_executed: SeqNum,
    /// How far this replica had executed (and replied) before its last
    /// restart: it answers read-only requests only once it is back there.
    pub(crate) read_only_floor: SeqNum,
    /// Result bytes of read-only answers in the current retry interval:
    /// (interval start, bytes).
    pub(crate) read_only_served: (Instant, usize),

    pub(crate) genesis_digest: Digest,
    /// The stable checkpoint; `stable.seq` is the low water mark h.
    pub(crate) stable: CheckpointProof,
    /// The state of the stable checkpoint (none while it is being fetched).
    pub(crate) stable_snapshot: Option<Arc<StateImage>>,
    /// The state this replica held before a transfer started: its pages
    /// are reused where the fetched state has the same ones.
    pub(crate) local_pages: Option<Arc<StateImage>>,
    /// Own checkpoints above the stable one.
    pub(crate) own_checkpoints: BTreeMap<SeqNum, Arc<StateImage>>,
    /// The snapshot records the log keeps: a page they list is in the log,
    /// so a new snapshot does not write it again.
    pub(crate) logged_snapshots: LoggedSnapshots,
    /// State served to each peer lately (a byte budget).
    pub(crate) serving: Serving,
    /// CHECKPOINT messages above the stable checkpoint, by sequence number.
    pub(crate) checkpoint_votes:
        BTreeMap<SeqNum, BTreeMap<ReplicaId, Signed<crate::message::Checkpoint>>>,
    pub(crate) state_fetch: Option<StateFetch>,

    pub(crate) clients: ClientTable,
    pub(crate) pending: BTreeMap<ClientId, Pending>,
    /// Arrival order of pending requests, for fair batching (may hold stale entries).
    pub(crate) pending_order: VecDeque<(ClientId, RequestId)>,

    /// Each replica's latest valid VIEW-CHANGE (its highest view).
    pub(crate) view_changes: BTreeMap<ReplicaId, Signed<ViewChange>>,
    /// The NEW-VIEW that started the current view (relayed to stragglers).
    pub(crate) new_view: Option<Signed<NewView>>,
    /// Normal-case messages for views not yet entered.
    pub(crate) deferred: Vec<Message>,
    /// The state digest last reported to a status request: (last executed,
    /// when computed, digest). Hashing the state costs O(state), so a new
    /// one is computed at most once per retry interval.
    status_digest: Option<(SeqNum, Instant, Digest)>,
    /// Consecutive view changes without progress; the timeout is base * 2^this.
    pub(crate) view_change_attempts: u32,

    pub(crate) timer_view_change: Option<Instant>,
    pub(crate) timer_view_change_resend: Option<Instant>,
    pub(crate) timer_batch: Option<Instant>,
    /// When the ordering watch expires (see [`crate::ordering`]).
    pub(crate) timer_order: Option<Instant>,
    /// The moving average of one round of agreement, pre-prepare to
    /// committed-local (see [`crate::ordering`]).
    pub(crate) round_estimate: Duration,
    pub(crate) timer_fetch_batches: Option<Instant>,
    /// When to check whether anything executed, and if not send PROGRESS.
    pub(crate) timer_progress: Option<Instant>,
    /// `last_executed` when the progress timer last fired.
    pub(crate) progress_mark: SeqNum,
    /// When this replica last sent PROGRESS because a pre-prepare was missing.
    pub(crate) gap_progress_at: Option<Instant>,
    /// Sequence numbers learned decided from commit certificates, not yet
    /// executed (see `retransmit`).
    pub(crate) decided: BTreeMap<SeqNum, Digest>,
    /// When each peer was last answered, per kind of request (rate limits).
    pub(crate) helped: BTreeMap<(ReplicaId, &'static str), Instant>,

    /// Dropped inputs by reason (messages a peer or client controls).
    pub(crate) dropped: BTreeMap<&'static str, u64>,
    /// Whether every `handle` ends by checking the invariants (a walk over
    /// the whole log): on in debug builds and in the simulator.
    pub(crate) invariant_checks: bool,
}

impl Replica {
    /// A replica in view 0 with `app` in its start state.
    pub fn new(
        config: Config,
        id: ReplicaId,
        signer: Signer,
        mut app: Box<dyn StateMachine>,
    ) -> Result<Replica, ConfigError> {
        config.validate()?;
        if id.index() >= config.n() {
            return Err(ConfigError::ReplicaCount(config.n()));
        }
        let mut clients = ClientTable::new();
        let genesis = StateImage::build(app.as_mut(), &mut clients);
        let genesis_digest = genesis.digest();
        Ok(Replica {
            id,
            signer,
            app,
            now: Instant(0),
            view: View(0),
            active: true,
            log: BTreeMap::new(),
            batches: BTreeMap::new(),
            missing_batches: BTreeSet::new(),
            last_assigned: SeqNum(0),
            amnesia: None,
            last_executed: SeqNum(0),
            read_only_floor: SeqNum(0),
            read_only_served: (Instant(0), 0),
            genesis_digest,
            stable: CheckpointProof {
                seq: SeqNum(0),
                digest: genesis_digest,
                checkpoints: Vec::new(),
            },
            stable_snapshot: Some(Arc::new(genesis)),
            local_pages: None,
            own_checkpoints: BTreeMap::new(),
            logged_snapshots: LoggedSnapshots::default(),
            serving: Serving::default(),
            checkpoint_votes: BTreeMap::new(),
            state_fetch: None,
            clients,
            pending: BTreeMap::new(),
            pending_order: VecDeque::new(),
            view_changes: BTreeMap::new(),
            new_view: None,
            deferred: Vec::new(),
            status_digest: None,
            view_change_attempts: 0,
            timer_view_change: None,
            timer_view_change_resend: None,
            timer_batch: None,
            timer_order: None,
            round_estimate: config.timeout_base / 16,
            invariant_checks: cfg!(debug_assertions),
            timer_fetch_batches: None,
            timer_progress: Some(Instant(0) + config.timeout_base / 2),
            progress_mark: SeqNum(0),
            gap_progress_at: None,
            decided: BTreeMap::new(),
            helped: BTreeMap::new(),
            dropped: BTreeMap::new(),
            config,
        })
    }

    /// Rebuilds a replica after a crash from the records it persisted (in the
    /// order they were written). The replica comes back with the window of
    /// its last stable checkpoint, the state of its highest snapshot (its own
    /// or a fetched one; a state transfer starts if that is below the stable
    /// checkpoint), in the view it was in, holding every pre-prepare and
    /// prepared certificate it had vouched for, and catches up through the
    /// protocol: PROGRESS at once, then retransmitted certificates, state
    /// transfer or a view change.
    pub fn restore(
        config: Config,
        id: ReplicaId,
        signer: Signer,
        app: Box<dyn StateMachine>,
        records: &[Record],
        now: Instant,
    ) -> Result<Replica, RestoreError> {
        let mut r = Replica::new(config, id, signer, app)?;
        r.now = now;
        r.restore_checkpoints(records)?;
        for record in records {
            match record {
                Record::Checkpoint(..)
                | Record::Snapshot(..)
                | Record::Stable(_)
                | Record::Page(_) => {}
                Record::PrePrepare(pp, batch) => {
                    if pp.view > r.view {
                        r.view = pp.view;
                        r.active = true;
                    }
                    if let Some(batch) = batch {
                        r.batches.insert(pp.digest, batch.clone());
                    }
                    if pp.seq > r.stable.seq && pp.view == r.view {
                        r.log.entry(pp.seq).or_default().pre_prepare = Some(pp.clone());
                    }
                }
                Record::Prepared(proof) => {
                    let seq = proof.pre_prepare.seq;
                    if seq > r.stable.seq {
                        let slot = r.log.entry(seq).or_default();
                        if slot
                            .prepared
                            .as_ref()
                            .is_none_or(|p| p.pre_prepare.view <= proof.pre_prepare.view)
                        {
                            slot.prepared = Some(proof.clone());
                        }
                    }
                }
                Record::ViewChange(vc) => {
                    if vc.replica != id {
                        return Err(RestoreError::WrongReplica {
                            expected: id,
                            found: vc.replica,
                        });
                    }
                    if vc.new_view >= r.view {
                        r.view = vc.new_view;
                        r.active = false;
                        r.view_changes.insert(id, vc.clone());
                    }
                }
                Record::Executed(seq) => {
                    r.read_only_floor = r.read_only_floor.max(*seq);
                }
                Record::NewView(nv) => {
                    if nv.view >= r.view {
                        r.view = nv.view;
                        r.active = true;
                        r.new_view = Some(nv.clone());
                        for pp in &nv.pre_prepares {
                            if pp.seq > r.stable.seq {
                                r.log.entry(pp.seq).or_default().pre_prepare = Some(pp.clone());
                            }
                        }
                    }
                }
            }
        }
        // Keep only what belongs to the current view; re-derive own votes.
        let (view, me, primary) = (r.view, r.id, r.primary());
        let stable_seq = r.stable.seq;
        let high = r.high_water_mark();
        r.log.retain(|seq, _| *seq > stable_seq && *seq <= high);
        let mut own_votes = Vec::new();
        for (seq, slot) in r.log.iter_mut() {
            if slot.pre_prepare.as_ref().is_some_and(|pp| pp.view != view) {
                slot.pre_prepare = None;
            }
            if let Some(pp) = &slot.pre_prepare {
                r.last_assigned = r.last_assigned.max(*seq);
                own_votes.push((pp.value.clone(), slot.prepared_in(view)));
            }
        }
        if let Some(nv) = &r.new_view {
            if nv.view == view {
                let max_s = nv.pre_prepares.iter().map(|pp| pp.seq).max();
                r.last_assigned = r.last_assigned.max(max_s.unwrap_or(SeqNum(0)));
            }
        }
        r.last_assigned = r.last_assigned.max(r.stable.seq);
        if !records.is_empty() {
            // Votes may have left ahead of their records (see `Output`): in
            // this view, at most L above the restored stable checkpoint.
            let amnesia = Amnesia {
                view,
                through: SeqNum(r.stable.seq.0.saturating_add(r.config.log_window)),
            };
            tracing::info!(
                view = view.0,
                through = amnesia.through.0,
                "restored: no PRE-PREPARE or PREPARE of its own in this view up to this sequence number"
            );
            r.amnesia = Some(amnesia);
        }
        for (pp, prepared) in own_votes {
            let (seq, digest) = (pp.seq, pp.digest);
            if me != primary {
                let prepare = r.signer.sign(Prepare {
                    view,
                    seq,
                    digest,
                    replica: me,
                });
                r.slot(seq).prepares.insert(me, prepare);
            }
            if prepared {
                let commit = r.signer.sign(Commit {
                    view,
                    seq,
                    digest,
                    replica: me,
                });
                r.slot(seq).commits.insert(me, commit);
            }
        }
        r.refresh_missing_batches();
        if !r.missing_batches.is_empty() {
            r.timer_fetch_batches = Some(now);
        }
        // Tell the others where it stands at once: they send what it missed.
        r.progress_mark = r.last_executed;
        r.timer_progress = Some(now);
        if !r.active {
            // Resume the view change: re-send the VIEW-CHANGE at once (its
            // timer starts again once 2f+1 view changes are held).
            r.timer_view_change_resend = Some(now);
        }
        r.check_invariants();
        Ok(r)
    }

    /// Restart, first part: the stable checkpoint (the window), the state to
    /// start from, and the checkpoints this replica took above the stable
    /// one. The state is the highest snapshot held: its own (it executed
    /// to there) or a certified one it fetched. If that is below the stable
    /// checkpoint, a state transfer towards the stable checkpoint starts.
    fn restore_checkpoints(&mut self, records: &[Record]) -> Result<(), RestoreError> {
        let mut stable: Option<&CheckpointProof> = None;
        let mut snapshots: BTreeMap<SeqNum, &Vec<Digest>> = BTreeMap::new();
        let mut pages: BTreeMap<Digest, Page> = BTreeMap::new();
        let assemble = |seq: SeqNum, leaves: &[Digest], pages: &BTreeMap<Digest, Page>| {
            StateImage::assemble(leaves, pages).map_err(|e| RestoreError::Snapshot {
                seq,
                reason: e.to_string(),
            })
        };
        for record in records {
            let proof = match record {
                Record::Page(page) => {
                    pages.entry(page.digest()).or_insert_with(|| page.clone());
                    continue;
                }
                Record::Checkpoint(proof, leaves) => {
                    let actual = assemble(proof.seq, leaves, &pages)?.digest();
                    if actual != proof.digest {
                        return Err(RestoreError::CheckpointDigest {
                            seq: proof.seq,
                            expected: proof.digest,
                            actual,
                        });
                    }
                    snapshots.insert(proof.seq, leaves);
                    proof
                }
                Record::Snapshot(seq, leaves) => {
                    snapshots.insert(*seq, leaves);
                    continue;
                }
                Record::Stable(proof) => proof,
                _ => continue,
            };
            if stable.is_none_or(|s| s.seq < proof.seq) {
                stable = Some(proof);
            }
        }
        let h = stable.map_or(SeqNum(0), |p| p.seq);
        self.logged_snapshots.stable(h);
        // Decode what a restart uses: the highest snapshot and those at or
        // above the stable checkpoint.
        let mut images: BTreeMap<SeqNum, Arc<StateImage>> = BTreeMap::new();
        let highest = snapshots.keys().next_back().copied();
        for (&seq, leaves) in &snapshots {
            if seq >= h || Some(seq) == highest {
                images.insert(seq, Arc::new(assemble(seq, leaves, &pages)?));
                self.logged_snapshots.snapshot(seq, leaves.to_vec());
            }
        }
        if let Some((&seq, image)) = images.last_key_value() {
            self.load_state(seq, image)
                .map_err(|reason| RestoreError::Snapshot { seq, reason })?;
        }
        if let Some(proof) = stable {
            self.stable = proof.clone();
            self.stable_snapshot = images
                .get(&proof.seq)
                .filter(|i| i.digest() == proof.digest)
                .cloned();
            if self.stable_snapshot.is_none() {
                self.local_pages = images.values().next_back().cloned();
            }
        }
        for (&seq, image) in images.range(h.next()..) {
            let digest = image.digest();
            self.own_checkpoints.insert(seq, image.clone());
            let vote = self.signer.sign(crate::message::Checkpoint {
                seq,
                digest,
                replica: self.id,
            });
            self.checkpoint_votes
                .entry(seq)
                .or_default()
                .insert(self.id, vote);
        }
        self.last_assigned = self.last_assigned.max(h);
        if self.last_executed < h {
            self.state_fetch = Some(StateFetch::new(self.stable.clone(), self.now));
        }
        Ok(())
    }

    /// The single entry point: process `input` at time `now`, appending what
    /// must be done to `out` (to be executed in order, see [`Output`]).
    pub fn handle(&mut self, now: Instant, input: Input, out: &mut Vec<Output>) {
        debug_assert!(now >= self.now, "time went backwards");
        self.now = self.now.max(now);
        let _span = tracing::debug_span!("replica", id = self.id.0, view = self.view.0).entered();
        match input {
            Input::Message(message) => self.on_message(message.into_inner(), out),
            Input::Relayed(by, message) => match message.into_inner() {
                Message::Request(request) if !request.read_only => {
                    self.on_request(request, Some(by), out)
                }
                other => self.on_message(other, out),
            },
            Input::Tick => self.on_tick(out),
        }
        if self.invariant_checks {
            self.check_invariants();
        }
    }

    /// Turns the invariant checks after every input on or off (on by
    /// default in debug builds only; the simulator turns them on).
    pub fn set_invariant_checks(&mut self, on: bool) {
        self.invariant_checks = on;
    }

    /// When the driver should next deliver [`Input::Tick`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.timer_view_change,
            self.timer_view_change_resend,
            self.timer_batch,
            self.timer_order,
            self.timer_fetch_batches,
            self.timer_progress,
            self.state_fetch.as_ref().map(|f| f.deadline),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Progress figures for status endpoints, metrics and tests; O(1).
    pub fn status(&self) -> Status {
        Status {
            id: self.id,
            view: self.view,
            active: self.active,
            primary: self.primary(),
            last_executed: self.last_executed,
            stable_checkpoint: self.stable.seq,
            pending_requests: self.pending.len(),
        }
    }

    /// The application's digest of its current state. It hashes the whole
    /// state (O(state)): for tests and start-up, never on a periodic path
    /// (a STATUS request is answered with [`Replica::state_root`]).
    pub fn state_digest(&self) -> Digest {
        self.app.digest()
    }

    /// The digest a checkpoint taken now would certify: the root of the
    /// tree over the pages of the application and the client table (see
    /// [`crate::checkpoint`]). Both cut again only the pages changed since
    /// their last cut (with the key-value store; a state machine without
    /// incremental pages costs its whole snapshot), so a status report
    /// costs what changed, not the size of the state; the pages are the
    /// canonical cut, so the next checkpoint is the same as without it.
    pub fn state_root(&mut self) -> Digest {
        StateImage::build(self.app.as_mut(), &mut self.clients).digest()
    }

    /// Whether a state transfer is under way.
    pub fn is_fetching_state(&self) -> bool {
        self.state_fetch.is_some()
    }

    /// This replica's id.
    pub fn id(&self) -> ReplicaId {
        self.id
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Counts of dropped inputs by reason.
    pub fn dropped(&self) -> &BTreeMap<&'static str, u64> {
        &self.dropped
    }

    /// The application state (read-only).
    pub fn app(&self) -> &dyn StateMachine {
        self.app.as_ref()
    }

    pub(crate) fn primary(&self) -> ReplicaId {
        self.config.primary(self.view)
    }

    pub(crate) fn is_primary(&self) -> bool {
        self.primary() == self.id
    }

    /// Whether this replica may send a PRE-PREPARE or PREPARE of its own for
    /// (`view`, `seq`) that it has not sent before in this incarnation. Not
    /// after a restart, in the view it came back in, up to its restored
    /// stable checkpoint plus L: it may have sent one there before the crash
    /// without a record of it (votes ahead of their records, see
    /// [`crate::Output`]), so only the votes it re-derived from its records
    /// are its own there. It still accepts pre-prepares, collects the others'
    /// prepares and commits; a later view or window frees it.
    pub(crate) fn may_vote(&self, view: View, seq: SeqNum) -> bool {
        self.amnesia
            .is_none_or(|a| view > a.view || seq > a.through)
    }

    /// The high water mark H = h + L.
    pub(crate) fn high_water_mark(&self) -> SeqNum {
        SeqNum(self.stable.seq.0 + self.config.log_window)
    }

    /// Whether `seq` is in the window (h, H].
    pub(crate) fn in_window(&self, seq: SeqNum) -> bool {
        seq > self.stable.seq && seq <= self.high_water_mark()
    }

    pub(crate) fn slot(&mut self, seq: SeqNum) -> &mut Slot {
        self.log.entry(seq).or_default()
    }

    /// Records that an input from a peer or client was dropped.
    pub(crate) fn drop_input(&mut self, reason: &'static str) {
        tracing::debug!(reason, "dropped input");
        *self.dropped.entry(reason).or_default() += 1;
    }

    /// The view-change timeout: the base, doubled per consecutive failed view change.
    pub(crate) fn view_change_timeout(&self) -> Duration {
        self.config.timeout_base * (1u32 << self.view_change_attempts.min(VIEW_CHANGE_BACKOFF_MAX))
    }

    /// Half the base: resend and state-transfer source-switch period.
    pub(crate) fn retry_interval(&self) -> Duration {
        self.config.timeout_base / 2
    }

    fn on_message(&mut self, message: Message, out: &mut Vec<Output>) {
        if message.replica() == Some(self.id) {
            return self.drop_input("own message echoed back");
        }
        match message {
            Message::Request(request) => self.on_request(request, None, out),
            Message::PrePrepare(..) | Message::Prepare(_) | Message::Commit(_) => {
                self.on_normal_case(message, out)
            }
            Message::Checkpoint(c) => self.on_checkpoint(c, out),
            Message::ViewChange(vc) => self.on_view_change(vc, out),
            Message::NewView(nv, batches) => self.on_new_view(nv, batches, out),
            Message::FetchBatch(m) => self.on_fetch_batch(m.value, out),
            Message::BatchData(m) => self.on_batch_data(m.value.batch, out),
            Message::FetchState(m) => self.on_fetch_state(m.value, out),
            Message::StateData(m) => self.on_state_data(m.value, out),
            Message::StatusRequest(m) => {
                let (last_executed, state_digest) = self.status_digest();
                let report = self.signer.sign(crate::message::StatusReport {
                    view: self.view,
                    active: self.active,
                    primary: self.primary(),
                    last_executed,
                    stable_checkpoint: self.stable.seq,
                    state_digest,
                    nonce: m.nonce,
                    replica: self.id,
                });
                out.push(Output::Status(m.client, report));
            }
            Message::Progress(m) => self.on_progress(m.value, out),
            Message::Certificate(cert, batch) => self.on_certificate(cert, batch, out),
            Message::Reply(_) | Message::StatusReport(_) => {
                self.drop_input("client-bound message sent to a replica")
            }
        }
    }

    /// The last executed sequence number and the state root after it, for
    /// a status report: current if the state was hashed since the last
    /// execution or a retry interval ago; otherwise the last pair hashed, so
    /// that status requests cannot make the replica hash its whole state
    /// more than twice a timeout.
    fn status_digest(&mut self) -> (SeqNum, Digest) {
        let (now, retry) = (self.now, self.retry_interval());
        match self.status_digest {
            Some((seq, at, digest)) if seq == self.last_executed || now < at + retry => {
                (seq, digest)
            }
            _ => {
                let digest = self.state_root();
                self.status_digest = Some((self.last_executed, now, digest));
                (self.last_executed, digest)
            }
        }
    }

    /// Routes PRE-PREPARE, PREPARE and COMMIT: processed in the current
    /// active view, held back for a later view, dropped otherwise.
    fn on_normal_case(&mut self, message: Message, out: &mut Vec<Output>) {
        let view = match &message {
            Message::PrePrepare(pp, _) => pp.view,
            Message::Prepare(p) => p.view,
            Message::Commit(c) => c.view,
            _ => return,
        };
        if view < self.view {
            return self.drop_input("normal-case message for an old view");
        }
        if view > self.view || !self.active {
            if let Message::PrePrepare(pp, _) = &message {
                if pp.replica != self.config.primary(pp.view) {
                    return self.drop_input("pre-prepare not from the view's primary");
                }
            }
            // Bounded per sender in count and bytes, so faulty replicas
            // cannot crowd out the rest (what they fill stays theirs).
            let sender = message.replica();
            let (count, bytes) = self
                .deferred
                .iter()
                .filter(|m| m.replica() == sender)
                .fold((0, 0), |(c, b), m| (c + 1, b + deferred_bytes(m)));
            let n = self.config.n();
            if count >= DEFERRED_MAX / n
                || bytes + deferred_bytes(&message) > DEFERRED_BYTES_MAX / n
            {
                return self.drop_input("deferred buffer full");
            }
            self.deferred.push(message);
            return;
        }
        match message {
            Message::PrePrepare(pp, batch) => self.on_pre_prepare(pp, batch, out),
            Message::Prepare(p) => self.on_prepare(p, out),
            Message::Commit(c) => self.on_commit(c, out),
            _ => {}
        }
    }

    /// Re-processes held-back messages after entering a view.
    pub(crate) fn replay_deferred(&mut self, out: &mut Vec<Output>) {
        let deferred = std::mem::take(&mut self.deferred);
        for message in deferred {
            self.on_normal_case(message, out);
        }
    }

    fn on_tick(&mut self, out: &mut Vec<Output>) {
        let now = self.now;
        if self.timer_view_change.is_some_and(|t| t <= now) {
            self.timer_view_change = None;
            self.on_timeout_view_change(out);
        }
        if self.timer_view_change_resend.is_some_and(|t| t <= now) {
            self.timer_view_change_resend = None;
            self.on_timeout_view_change_resend(out);
        }
        if self.timer_batch.is_some_and(|t| t <= now) {
            self.timer_batch = None;
            self.try_propose(out);
        }
        if self.timer_order.is_some_and(|t| t <= now) {
            self.on_timeout_order(out);
        }
        if self.timer_fetch_batches.is_some_and(|t| t <= now) {
            self.timer_fetch_batches = None;
            self.request_missing_batches(out);
        }
        if self.state_fetch.as_ref().is_some_and(|f| f.deadline <= now) {
            self.on_timeout_state_fetch(out);
        }
        if self.timer_progress.is_some_and(|t| t <= now) {
            self.on_timeout_progress(out);
        }
    }

    /// Sets the view-change timer from the pending requests (in an active
    /// view): it expires at the earliest of their deadlines, so it runs
    /// while any request waits and is stopped when none does. Executing
    /// other requests does not move a waiting request's deadline (TOCS 4.5.2
    /// restarts one timer after every execution, which lets a primary that
    /// orders everyone but one client keep its view for ever).
    ///
    /// While the replica fetches a certified state, the timer fires no
    /// sooner than one timeout after the fetch began: the requests it waits
    /// for may have executed inside that state, and leaving the view just
    /// before it arrives (as a primary that lost its own COMMITs would) takes
    /// an honest replica out of the quorum for nothing. The start is kept
    /// across retargets, so the wait is bounded by one timeout per transfer.
    pub(crate) fn update_view_change_timer(&mut self) {
        if !self.active {
            return;
        }
        let earliest = self.pending.values().filter_map(|p| p.deadline).min();
        let patience = self
            .state_fetch
            .as_ref()
            .map(|f| f.started + self.view_change_timeout());
        self.timer_view_change = earliest.map(|d| patience.map_or(d, |p| d.max(p)));
    }

    /// The invariants of the module docs; a violation is a bug in this crate.
    fn check_invariants(&self) {
        if let (Some((first, _)), Some((last, _))) =
            (self.log.first_key_value(), self.log.last_key_value())
        {
            assert!(
                *first > self.stable.seq,
                "slot at or below the low water mark"
            );
            assert!(
                *last <= self.high_water_mark(),
                "slot above the high water mark"
            );
        }
        assert!(
            self.last_executed >= self.stable.seq || self.state_fetch.is_some(),
            "behind the stable checkpoint without fetching state"
        );
        for slot in self.log.values() {
            assert!(slot
                .pre_prepare
                .as_ref()
                .is_none_or(|pp| pp.view == self.view));
            assert!(slot.prepares.values().all(|p| p.view == self.view));
            assert!(slot.commits.values().all(|c| c.view == self.view));
        }
        assert!(
            self.active
                || self
                    .view_changes
                    .get(&self.id)
                    .is_some_and(|vc| vc.new_view == self.view),
            "changing view without an own VIEW-CHANGE"
        );
        assert!(self.pending.len() <= self.config.pending_requests_max);
    }
}
