//! Byzantine replicas: an honest [`pbft_core::Replica`] whose outputs are
//! altered on the way out.
//!
//! The simulator holds every replica's signer, so a Byzantine replica signs
//! its forgeries with its own key, exactly as a real faulty node could. What it
//! cannot do is sign for others: a forged certificate either carries its own
//! signatures under other replicas' names (rejected by the verifier) or
//! breaks a rule the core must check itself (duplicate signers, the wrong
//! primary, a digest that does not match).

use crate::network::{Dest, Outgoing};
use pbft_app::kv::KvResult;
use pbft_app::kv::{KvOp, KvStore};
use pbft_app::StateMachine;
use pbft_core::checkpoint::{group_digest, leaf_digest, tree_root};
use pbft_core::message::Request;
use pbft_core::message::{
    Batch, Checkpoint, CheckpointProof, NewView, PrePrepare, Prepare, PreparedProof, StateBody,
    StateData, StatePart, ViewChange,
};
use pbft_core::view_change::plan_new_view;
use pbft_core::{ClientId, Config, Message, ReplicaId, RequestId, SeqNum, View};
use pbft_crypto::{Digest, KeyPair, Scheme, Signed, Signer};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, VecDeque};
use std::fmt;

/// What a Byzantine replica does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Behavior {
    /// Sends nothing at all.
    Silent,
    /// As primary, sends different batches for one (view, seq) to different backups.
    Equivocate,
    /// Sends prepares/commits with random digests to some replicas, and lying replies.
    Conflict,
    /// Corrupts the signatures of many of its messages.
    BadSig,
    /// Replays old messages (its own and others') to random replicas.
    Replay,
    /// Sends wrong checkpoint digests and corrupted state snapshots.
    Checkpoint,
    /// Forges view-change and new-view proofs; drops its pre-prepares as primary.
    ViewChange,
    /// As primary, delays its pre-prepares past the clients' broadcast and
    /// to just under the deadline that starts at the backups
    /// ([`Byzantine::slow_delay_us`]).
    SlowPrimary,
    /// Helps one honest victim, whose messages reach no other replica,
    /// commit a batch alone: in even views its PREPAREs and COMMITs go to the
    /// victim only; in odd views it plays along with everyone; its
    /// VIEW-CHANGEs never carry a prepared certificate. With f colluders the
    /// victim holds f+1 COMMITs (its own and theirs) for a batch no other
    /// honest replica prepared, which the next view, formed without the
    /// victim, replaces: only a commit quorum of 2f+1 keeps the victim from
    /// executing it.
    Collude,
    /// Follows the protocol, but its VIEW-CHANGEs never carry a prepared
    /// certificate, and as a new primary it proves its NEW-VIEW with the
    /// 2f+1 VIEW-CHANGEs that hide the most history. Beside honest replicas
    /// that crash and restart, it is the other half of a lost decision: a
    /// restarted replica that forgot a certificate, plus this one, can hide
    /// a slot that some honest replica executed.
    Forget,
    /// As primary, never orders one chosen client's requests (it drops them
    /// on arrival) and orders everyone else's as usual: only a per-request
    /// view-change timer replaces it while other clients keep it busy.
    Censor,
    /// Attacks authentication rather than the protocol: sends messages under
    /// an honest replica's id (signed with its own key), splices valid
    /// signatures of messages it received onto altered fields (view, seq,
    /// digest, sender), and as primary puts altered client requests into its
    /// batches with the batch digest recomputed and the pre-prepare signed.
    /// Every one must fail verification; a removed signature check lets an
    /// honest replica act on a forgery.
    Forge,
    /// Floods: valid-looking messages for views far ahead, stale
    /// VIEW-CHANGEs, PROGRESS, FETCH-STATE and FETCH-BATCH requests, and
    /// requests signed by client keys it made up (on keys the workload never
    /// touches), on top of following the protocol.
    Flood,
}

impl Behavior {
    /// The behaviours mixed runs draw from: all but [`Behavior::Collude`],
    /// which needs its victim's links cut.
    pub const MIXED: [Behavior; 12] = [
        Behavior::Silent,
        Behavior::Equivocate,
        Behavior::Conflict,
        Behavior::BadSig,
        Behavior::Replay,
        Behavior::Checkpoint,
        Behavior::ViewChange,
        Behavior::SlowPrimary,
        Behavior::Forget,
        Behavior::Censor,
        Behavior::Forge,
        Behavior::Flood,
    ];
}

impl fmt::Display for Behavior {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Behavior::Silent => "silent",
            Behavior::Equivocate => "equivocate",
            Behavior::Conflict => "conflict",
            Behavior::BadSig => "badsig",
            Behavior::Replay => "replay",
            Behavior::Checkpoint => "checkpoint",
            Behavior::ViewChange => "viewchange",
            Behavior::SlowPrimary => "slow-primary",
            Behavior::Collude => "collude",
            Behavior::Forget => "forget",
            Behavior::Censor => "censor",
            Behavior::Forge => "forge",
            Behavior::Flood => "flood",
        };
        f.write_str(s)
    }
}

/// Most messages a replaying replica remembers.
const REPLAY_BUFFER: usize = 128;

/// The tampering state of one Byzantine replica (also used by `pbft-node`
/// built with its `byzantine` feature).
pub struct Byzantine {
    /// What it does.
    pub behavior: Behavior,
    id: ReplicaId,
    signer: Signer,
    config: Config,
    /// The replica a colluder helps: the one the network mutes.
    victim: Option<ReplicaId>,
    seen: VecDeque<Message>,
    /// The latest VIEW-CHANGE seen from each replica (a forging new primary
    /// picks the set it proves its NEW-VIEW with).
    view_changes: BTreeMap<ReplicaId, Signed<ViewChange>>,
    /// The client a censor never serves.
    pub censored: Option<ClientId>,
    /// A checkpoint liar also claims, in half its VIEW-CHANGEs, a stable
    /// checkpoint above the real one that only it signed (set in the
    /// `byz-checkpoint` scenario only, so that other scenarios' runs stay
    /// as they were).
    pub forge_checkpoint_proofs: bool,
    /// How long a slow primary holds each PRE-PREPARE, microseconds: by
    /// default 0.9 of a view-change timeout base. On real processes the SDK
    /// broadcasts a request after half a base, and its deadline at the
    /// backups runs one base after that: 0.9 is past the broadcast and well
    /// under the deadline. The simulator's clients broadcast after four
    /// bases, so it sets this to 4.5: between the two as well.
    pub slow_delay_us: u64,
}

fn random_digest(rng: &mut ChaCha8Rng) -> Digest {
    Digest(rng.gen())
}

impl Byzantine {
    /// A Byzantine replica `id` that signs with `signer`; `victim` is the
    /// replica a colluder helps.
    pub fn new(
        behavior: Behavior,
        id: ReplicaId,
        signer: Signer,
        config: Config,
        victim: Option<ReplicaId>,
    ) -> Byzantine {
        Byzantine {
            behavior,
            id,
            signer,
            victim,
            seen: VecDeque::new(),
            view_changes: BTreeMap::new(),
            censored: None,
            forge_checkpoint_proofs: false,
            slow_delay_us: config.timeout_base.as_micros() as u64 * 9 / 10,
            config,
        }
    }

    /// Whether the wrapped replica gets to see `message` at all (a censor
    /// drops the censored client's requests).
    pub fn admits(&self, message: &Message) -> bool {
        match (self.behavior, message) {
            (Behavior::Censor, Message::Request(r)) => Some(r.client) != self.censored,
            _ => true,
        }
    }

    /// Notes a message this replica received (for replays).
    pub fn observe(&mut self, message: &Message) {
        if matches!(self.behavior, Behavior::Replay | Behavior::Forge) {
            self.remember(message.clone());
        }
        if let (Behavior::ViewChange | Behavior::Forget, Message::ViewChange(vc)) =
            (self.behavior, message)
        {
            if self
                .view_changes
                .get(&vc.replica)
                .is_none_or(|old| old.new_view < vc.new_view)
            {
                self.view_changes.insert(vc.replica, vc.clone());
            }
        }
    }

    /// A NEW-VIEW that every replica must accept, proved by the 2f+1
    /// VIEW-CHANGEs that carry the fewest and oldest prepared certificates:
    /// a faulty new primary hiding as much history as the rules let it.
    fn hiding_new_view(&self, nv: &NewView) -> Option<Signed<NewView>> {
        let mut candidates: Vec<Signed<ViewChange>> = self
            .view_changes
            .values()
            .filter(|vc| vc.new_view == nv.view)
            .cloned()
            .collect();
        for vc in &nv.view_changes {
            if !candidates.iter().any(|c| c.replica == vc.replica) {
                candidates.push(vc.clone());
            }
        }
        let quorum = self.config.quorum();
        if candidates.len() <= quorum {
            return None; // no choice to make
        }
        candidates.sort_by_key(|vc| {
            let newest = vc.prepared.iter().map(|p| p.pre_prepare.view).max();
            (vc.prepared.len(), newest, vc.replica)
        });
        candidates.truncate(quorum);
        let plan = plan_new_view(&candidates)?;
        let pre_prepares = plan
            .pre_prepares
            .iter()
            .map(|(seq, digest)| {
                self.signer.sign(PrePrepare {
                    view: nv.view,
                    seq: *seq,
                    digest: *digest,
                    replica: self.id,
                })
            })
            .collect();
        Some(self.signer.sign(NewView {
            view: nv.view,
            view_changes: candidates,
            pre_prepares,
            replica: self.id,
        }))
    }

    fn remember(&mut self, message: Message) {
        if matches!(message, Message::Reply(_)) {
            return;
        }
        if self.seen.len() >= REPLAY_BUFFER {
            self.seen.pop_front();
        }
        self.seen.push_back(message);
    }

    /// Re-signs a replica-signed message with this replica's key after its
    /// contents were altered.
    fn resign(&self, message: Message) -> Message {
        let s = &self.signer;
        match message {
            Message::PrePrepare(m, b) => Message::PrePrepare(s.sign(m.value), b),
            Message::Prepare(m) => Message::Prepare(s.sign(m.value)),
            Message::Commit(m) => Message::Commit(s.sign(m.value)),
            Message::Checkpoint(m) => Message::Checkpoint(s.sign(m.value)),
            Message::ViewChange(m) => Message::ViewChange(s.sign(m.value)),
            Message::NewView(m, b) => Message::NewView(s.sign(m.value), b),
            Message::FetchBatch(m) => Message::FetchBatch(s.sign(m.value)),
            Message::BatchData(m) => Message::BatchData(s.sign(m.value)),
            Message::FetchState(m) => Message::FetchState(s.sign(m.value)),
            Message::StateData(m) => Message::StateData(s.sign(m.value)),
            Message::Progress(m) => Message::Progress(s.sign(m.value)),
            other => other,
        }
    }

    /// Alters the outputs of the wrapped honest replica.
    pub fn transform(&mut self, rng: &mut ChaCha8Rng, out: Vec<Outgoing>) -> Vec<Outgoing> {
        match self.behavior {
            Behavior::Silent => Vec::new(),
            Behavior::Equivocate => out
                .into_iter()
                .flat_map(|o| self.equivocate(rng, o))
                .collect(),
            Behavior::Conflict => out.into_iter().map(|o| self.conflict(rng, o)).collect(),
            Behavior::BadSig => out.into_iter().map(|o| bad_signature(rng, o)).collect(),
            Behavior::Replay => self.replay(rng, out),
            Behavior::Checkpoint => out.into_iter().map(|o| self.checkpoint(rng, o)).collect(),
            Behavior::ViewChange => out
                .into_iter()
                .filter(|o| !matches!(o.msg, Message::PrePrepare(..)))
                .map(|o| self.view_change(rng, o))
                .collect(),
            Behavior::SlowPrimary => {
                let delay = self.slow_delay_us;
                out.into_iter()
                    .map(|mut o| {
                        if matches!(o.msg, Message::PrePrepare(..)) {
                            o.extra_delay = delay;
                        }
                        o
                    })
                    .collect()
            }
            Behavior::Collude => out.into_iter().filter_map(|o| self.collude(o)).collect(),
            Behavior::Forget => out.into_iter().map(|o| self.forget(o)).collect(),
            Behavior::Censor => out,
            Behavior::Forge => self.forge(rng, out),
            Behavior::Flood => self.flood(rng, out),
        }
    }

    /// A replica id other than this one.
    fn other_replica(&self, rng: &mut ChaCha8Rng) -> ReplicaId {
        let n = self.config.n() as u32;
        let k = rng.gen_range(1..n);
        ReplicaId((self.id.0 + k) % n)
    }

    fn forge(&mut self, rng: &mut ChaCha8Rng, out: Vec<Outgoing>) -> Vec<Outgoing> {
        let mut result = Vec::with_capacity(out.len() + 1);
        for mut o in out {
            match &mut o.msg {
                // Altered client requests, the batch digest recomputed.
                Message::PrePrepare(pp, batch)
                    if !batch.requests.is_empty() && rng.gen_bool(0.5) =>
                {
                    let k = rng.gen_range(0..batch.requests.len());
                    batch.requests[k].value.op = KvOp::Put {
                        key: b"k0".to_vec(),
                        value: b"forged".to_vec(),
                    }
                    .encode();
                    let mut value = pp.value.clone();
                    value.digest = batch.digest();
                    *pp = self.signer.sign(value);
                }
                // Its own message under an honest replica's name.
                Message::Prepare(p) if rng.gen_bool(0.3) => {
                    p.value.replica = self.other_replica(rng);
                    o.msg = self.resign(o.msg);
                }
                Message::Commit(c) if rng.gen_bool(0.3) => {
                    c.value.replica = self.other_replica(rng);
                    o.msg = self.resign(o.msg);
                }
                Message::Checkpoint(c) if rng.gen_bool(0.3) => {
                    c.value.replica = self.other_replica(rng);
                    o.msg = self.resign(o.msg);
                }
                Message::ViewChange(vc) if rng.gen_bool(0.3) => {
                    vc.value.replica = self.other_replica(rng);
                    o.msg = self.resign(o.msg);
                }
                _ => {}
            }
            result.push(o);
        }
        // A received message with altered fields under its original signature.
        if !self.seen.is_empty() && rng.gen_bool(0.3) {
            let k = rng.gen_range(0..self.seen.len());
            let mut msg = self.seen[k].clone();
            let altered = match &mut msg {
                Message::Prepare(p) => {
                    p.value.digest = random_digest(rng);
                    true
                }
                Message::Commit(c) => {
                    c.value.seq = c.value.seq.next();
                    true
                }
                Message::Checkpoint(c) => {
                    c.value.digest = random_digest(rng);
                    true
                }
                Message::PrePrepare(pp, _) => {
                    pp.value.view = pp.value.view.next();
                    true
                }
                Message::ViewChange(vc) => {
                    vc.value.prepared.clear();
                    true
                }
                Message::Request(r) => {
                    r.value.request_id = RequestId(r.value.request_id.0 + 1);
                    true
                }
                _ => false,
            };
            if altered {
                let to = self.other_replica(rng);
                result.push(Outgoing {
                    to: Dest::Replica(to.index()),
                    msg,
                    extra_delay: 0,
                });
            }
        }
        result
    }

    fn flood(&mut self, rng: &mut ChaCha8Rng, mut out: Vec<Outgoing>) -> Vec<Outgoing> {
        // Often enough to matter, rarely enough that the requests it makes
        // up stay below what the cluster can order: beyond that, every
        // request waits past its deadline and views change (a limit on
        // requests relayed by replicas is issue 10's).
        if !rng.gen_bool(0.1) {
            return out;
        }
        let to = Dest::Replica(self.other_replica(rng).index());
        let far = View(rng.gen_range(1_000..1_000_000));
        let seq = SeqNum(rng.gen_range(1..=2 * self.config.log_window));
        let digest = random_digest(rng);
        let s = &self.signer;
        let me = self.id;
        let msg = match rng.gen_range(0..8) {
            0 => Message::PrePrepare(
                s.sign(PrePrepare {
                    view: far,
                    seq,
                    digest,
                    replica: me,
                }),
                Batch::default(),
            ),
            1 => Message::Prepare(s.sign(Prepare {
                view: far,
                seq,
                digest,
                replica: me,
            })),
            2 => Message::FetchState(s.sign(pbft_core::message::FetchState {
                seq: SeqNum(0),
                part: match rng.gen_range(0..3) {
                    0 => StatePart::Summary,
                    1 => StatePart::Leaves(rng.gen()),
                    _ => StatePart::Pages((0..rng.gen_range(1..=9)).map(|i| i * 7).collect()),
                },
                replica: me,
            })),
            3 => Message::FetchBatch(s.sign(pbft_core::message::FetchBatch {
                digest: Batch::null_digest(),
                replica: me,
            })),
            4 => Message::Progress(s.sign(pbft_core::message::Progress {
                view: View(0),
                active: false,
                stable: SeqNum(0),
                last_executed: SeqNum(0),
                replica: me,
            })),
            5 => Message::ViewChange(s.sign(ViewChange {
                new_view: View(0),
                checkpoint: CheckpointProof {
                    seq: SeqNum(0),
                    // Never looked at: a VIEW-CHANGE for an old view is
                    // answered (rate-limited) before it is checked.
                    digest: Digest([0; 32]),
                    checkpoints: Vec::new(),
                },
                prepared: Vec::new(),
                replica: me,
            })),
            6 => {
                // More prepared certificates than a window has sequence
                // numbers: refused for its shape, before any of its
                // signatures is checked.
                let pre_prepare = s.sign(PrePrepare {
                    view: View(0),
                    seq,
                    digest,
                    replica: me,
                });
                let proof = pbft_core::message::PreparedProof {
                    pre_prepare,
                    prepares: Vec::new(),
                };
                Message::ViewChange(s.sign(ViewChange {
                    new_view: far,
                    checkpoint: CheckpointProof {
                        seq: SeqNum(0),
                        digest: Digest([0; 32]),
                        checkpoints: Vec::new(),
                    },
                    prepared: vec![proof; self.config.log_window as usize + 1],
                    replica: me,
                }))
            }
            _ => {
                // A request from a client nobody knows, on a key no checked
                // client touches.
                let client = Signer::with_scheme(
                    KeyPair::from_seed(rng.gen()),
                    s.cluster(),
                    Scheme::InsecureSim,
                );
                Message::Request(
                    client.sign(Request {
                        client: ClientId(client.public_key()),
                        request_id: RequestId(rng.gen_range(1..u64::MAX / 2)),
                        op: KvOp::Put {
                            key: b"injected".to_vec(),
                            value: vec![0; 64],
                        }
                        .encode(),
                        read_only: false,
                        repliers: pbft_core::message::Repliers::of([ReplicaId(
                            rng.gen_range(0..self.config.n() as u32),
                        )]),
                    }),
                )
            }
        };
        for _ in 0..rng.gen_range(1..=4) {
            out.push(Outgoing {
                to,
                msg: msg.clone(),
                extra_delay: 0,
            });
        }
        out
    }

    fn forget(&self, mut o: Outgoing) -> Outgoing {
        match &mut o.msg {
            Message::ViewChange(vc) if !vc.value.prepared.is_empty() => {
                vc.value.prepared.clear();
                o.msg = self.resign(o.msg);
            }
            Message::NewView(signed, _) => {
                if let Some(hiding) = self.hiding_new_view(&signed.value) {
                    *signed = hiding;
                }
            }
            _ => {}
        }
        o
    }

    fn collude(&self, mut o: Outgoing) -> Option<Outgoing> {
        let to_victim = self
            .victim
            .is_some_and(|v| o.to == Dest::Replica(v.index()));
        match &mut o.msg {
            Message::Prepare(p) if p.view.0 % 2 == 0 && !to_victim => return None,
            Message::Commit(c) if c.view.0 % 2 == 0 && !to_victim => return None,
            Message::ViewChange(vc) if !vc.value.prepared.is_empty() => {
                vc.value.prepared.clear();
                o.msg = self.resign(o.msg);
            }
            _ => {}
        }
        Some(o)
    }

    fn equivocate(&self, rng: &mut ChaCha8Rng, o: Outgoing) -> Vec<Outgoing> {
        let Message::PrePrepare(pp, batch) = &o.msg else {
            return vec![o];
        };
        let Dest::Replica(j) = o.to else {
            return vec![o];
        };
        let mut alt = batch.clone();
        if alt.requests.len() > 1 {
            alt.requests.reverse();
        } else if alt.requests.is_empty() {
            // Nothing to reorder: keep the null request.
            return vec![o];
        } else {
            alt.requests.clear();
        }
        let mut value = pp.value.clone();
        value.digest = alt.digest();
        let alt = Outgoing {
            to: o.to,
            msg: Message::PrePrepare(self.signer.sign(value), alt),
            extra_delay: o.extra_delay,
        };
        // Some backups get the original pre-prepare with the other batch: an
        // honest backup must check the batch against the digest.
        if rng.gen_bool(0.15) {
            let Message::PrePrepare(pp, _) = o.msg else {
                return Vec::new();
            };
            let Message::PrePrepare(_, other) = alt.msg else {
                return Vec::new();
            };
            return vec![Outgoing {
                to: o.to,
                msg: Message::PrePrepare(pp, other),
                extra_delay: o.extra_delay,
            }];
        }
        // Some backups get both batches for the same (view, seq), in a random
        // order: an honest backup must keep the first and refuse the second.
        if rng.gen_bool(0.6) {
            let mut both = vec![o, alt];
            if rng.gen_bool(0.5) {
                both.reverse();
            }
            both[1].extra_delay += rng.gen_range(0..2_000);
            return both;
        }
        // Otherwise half of the backups (a different half per sequence
        // number) get the other batch, most of the time.
        if (j as u64 + pp.seq.0) & 1 == 0 || rng.gen_bool(0.2) {
            return vec![o];
        }
        vec![alt]
    }

    fn conflict(&self, rng: &mut ChaCha8Rng, mut o: Outgoing) -> Outgoing {
        match &mut o.msg {
            Message::Prepare(p) if rng.gen_bool(0.4) => {
                p.value.digest = random_digest(rng);
                o.msg = self.resign(o.msg);
            }
            Message::Commit(c) if rng.gen_bool(0.4) => {
                c.value.digest = random_digest(rng);
                o.msg = self.resign(o.msg);
            }
            Message::Reply(r) if rng.gen_bool(0.6) => {
                // Every liar tells the same lie, so f of them agree.
                r.result = KvResult::Get {
                    value: Some(b"forged".to_vec()),
                }
                .encode();
                o.msg = self.resign(o.msg);
            }
            _ => {}
        }
        o
    }

    fn replay(&mut self, rng: &mut ChaCha8Rng, out: Vec<Outgoing>) -> Vec<Outgoing> {
        let mut result = Vec::with_capacity(out.len() + 2);
        for o in out {
            if rng.gen_bool(0.1) {
                self.remember(o.msg.clone());
            }
            result.push(o);
        }
        let n = self.config.n();
        if !self.seen.is_empty() && rng.gen_bool(0.3) {
            for _ in 0..rng.gen_range(1..=3) {
                let k = rng.gen_range(0..self.seen.len());
                let to = rng.gen_range(0..n);
                if to == self.id.index() {
                    continue;
                }
                result.push(Outgoing {
                    to: Dest::Replica(to),
                    msg: self.seen[k].clone(),
                    extra_delay: 0,
                });
            }
        }
        result
    }

    fn checkpoint(&self, rng: &mut ChaCha8Rng, mut o: Outgoing) -> Outgoing {
        match &mut o.msg {
            Message::Checkpoint(c) => {
                c.value.digest = random_digest(rng);
                o.msg = self.resign(o.msg);
            }
            Message::StateData(s) if rng.gen_bool(0.3) => {
                // An invented state, "certified" by this replica alone.
                *s = self.signer.sign(self.forge_state(&s.value));
            }
            Message::StateData(s) => {
                // A corrupted part: a wrong group digest, a wrong leaf
                // digest (a wrong chunk proof) or a corrupted page.
                match &mut s.value.body {
                    StateBody::Summary { groups, .. } => match groups.first_mut() {
                        Some(g) => g.0[rng.gen_range(0..32)] ^= 0x40,
                        None => groups.push(random_digest(rng)),
                    },
                    StateBody::Leaves { leaves, .. } => {
                        if leaves.is_empty() {
                            leaves.push(random_digest(rng));
                        } else {
                            let k = rng.gen_range(0..leaves.len());
                            leaves[k] = random_digest(rng);
                        }
                    }
                    StateBody::Page { bytes, index } => {
                        if bytes.is_empty() || rng.gen_bool(0.2) {
                            bytes.push(0);
                        } else if rng.gen_bool(0.2) {
                            *index = index.wrapping_add(1);
                        } else {
                            let k = rng.gen_range(0..bytes.len());
                            bytes[k] ^= 0x40;
                        }
                    }
                }
                o.msg = self.resign(o.msg);
            }
            Message::ViewChange(vc) if self.forge_checkpoint_proofs && rng.gen_bool(0.5) => {
                // A stable checkpoint one interval above the real one, for
                // a state nobody has, "certified" by this replica alone.
                let vc = &mut vc.value;
                let seq = SeqNum(vc.checkpoint.seq.0 + self.config.checkpoint_interval);
                let digest = random_digest(rng);
                let own = self.signer.sign(Checkpoint {
                    seq,
                    digest,
                    replica: self.id,
                });
                vc.checkpoint = CheckpointProof {
                    seq,
                    digest,
                    checkpoints: vec![own],
                };
                vc.prepared.retain(|p| p.pre_prepare.seq > seq);
                o.msg = self.resign(o.msg);
            }
            _ => {}
        }
        o
    }

    /// A summary of an invented one-page state, with a checkpoint proof for
    /// it that only this replica signed.
    fn forge_state(&self, data: &StateData) -> StateData {
        let mut kv = KvStore::new();
        kv.execute(&KvOp::Put {
            key: b"forged".to_vec(),
            value: b"state".to_vec(),
        });
        let page = kv.snapshot();
        let groups = vec![group_digest(&[leaf_digest(&page)])];
        let digest = tree_root(1, &groups);
        let seq = data.seq;
        let own = self.signer.sign(Checkpoint {
            seq,
            digest,
            replica: self.id,
        });
        StateData {
            seq,
            digest,
            body: StateBody::Summary {
                proof: Box::new(CheckpointProof {
                    seq,
                    digest,
                    checkpoints: vec![own],
                }),
                count: 1,
                groups,
            },
            replica: self.id,
        }
    }

    fn view_change(&self, rng: &mut ChaCha8Rng, mut o: Outgoing) -> Outgoing {
        let f = self.config.f();
        let n = self.config.n() as u64;
        match &mut o.msg {
            Message::ViewChange(vc) => {
                let vc = &mut vc.value;
                match rng.gen_range(0..4) {
                    0 if vc.prepared.iter().any(|p| !p.prepares.is_empty()) => {
                        // An incomplete certificate: one prepare short.
                        let with: Vec<usize> = (0..vc.prepared.len())
                            .filter(|&k| !vc.prepared[k].prepares.is_empty())
                            .collect();
                        let k = with[rng.gen_range(0..with.len())];
                        vc.prepared[k].prepares.pop();
                    }
                    0 | 1 => {
                        // An invented certificate: signed only by this replica,
                        // under its own name, for a view it led if any.
                        let view = (0..vc.new_view.0)
                            .rev()
                            .find(|v| v % n == self.id.0 as u64)
                            .unwrap_or(0);
                        let seq = SeqNum(
                            vc.checkpoint.seq.0
                                + rng.gen_range(1..=self.config.checkpoint_interval),
                        );
                        // Its digest: the null request (which every replica
                        // could execute, so accepting it would split them)
                        // or a batch nobody has.
                        let digest = if rng.gen_bool(0.5) {
                            Batch::null_digest()
                        } else {
                            random_digest(rng)
                        };
                        let pre_prepare = self.signer.sign(PrePrepare {
                            view: View(view),
                            seq,
                            digest,
                            replica: self.id,
                        });
                        let prepare = self.signer.sign(Prepare {
                            view: View(view),
                            seq,
                            digest,
                            replica: self.id,
                        });
                        // Its prepares: 2f copies of its own, or none at all.
                        let prepares = if rng.gen_bool(0.5) {
                            vec![prepare; 2 * f]
                        } else {
                            Vec::new()
                        };
                        vc.prepared.retain(|p| p.pre_prepare.seq != seq);
                        vc.prepared.push(PreparedProof {
                            pre_prepare,
                            prepares,
                        });
                        vc.prepared.sort_by_key(|p| p.pre_prepare.seq);
                    }
                    2 => vc.prepared.clear(),
                    _ => {
                        if vc.checkpoint.checkpoints.pop().is_none() {
                            vc.prepared.clear();
                        }
                    }
                }
                o.msg = self.resign(o.msg);
            }
            Message::NewView(signed, _) if rng.gen_bool(0.5) => {
                if let Some(hiding) = self.hiding_new_view(&signed.value) {
                    *signed = hiding;
                }
            }
            Message::NewView(nv, _) => {
                let nv = &mut nv.value;
                match rng.gen_range(0..4) {
                    0 if !nv.pre_prepares.is_empty() => {
                        let k = rng.gen_range(0..nv.pre_prepares.len());
                        let mut pp = nv.pre_prepares[k].value.clone();
                        pp.digest = if pp.digest == Batch::null_digest() {
                            random_digest(rng)
                        } else {
                            Batch::null_digest()
                        };
                        nv.pre_prepares[k] = self.signer.sign(pp);
                    }
                    1 if !nv.pre_prepares.is_empty() => {
                        let k = rng.gen_range(0..nv.pre_prepares.len());
                        nv.pre_prepares.remove(k);
                    }
                    3 => {
                        let seq = nv
                            .pre_prepares
                            .iter()
                            .map(|pp| pp.seq)
                            .max()
                            .unwrap_or(SeqNum(0))
                            .next();
                        let pp = self.signer.sign(PrePrepare {
                            view: nv.view,
                            seq,
                            digest: Batch::null_digest(),
                            replica: self.id,
                        });
                        nv.pre_prepares.push(pp);
                    }
                    _ => {
                        nv.view_changes.pop();
                    }
                }
                o.msg = self.resign(o.msg);
            }
            _ => {}
        }
        o
    }
}

/// Flips a bit in a signature the message carries: most often its own, sometimes a nested one.
fn bad_signature(rng: &mut ChaCha8Rng, mut o: Outgoing) -> Outgoing {
    if !rng.gen_bool(0.5) {
        return o;
    }
    let bit = rng.gen_range(0..256usize);
    let flip = |sig: &mut pbft_crypto::Signature| sig.0[bit / 8] ^= 1 << (bit % 8);
    match &mut o.msg {
        Message::PrePrepare(_, b) if !b.requests.is_empty() && rng.gen_bool(0.3) => {
            let k = rng.gen_range(0..b.requests.len());
            flip(&mut b.requests[k].signature);
        }
        Message::ViewChange(vc) if !vc.value.prepared.is_empty() && rng.gen_bool(0.3) => {
            let k = rng.gen_range(0..vc.value.prepared.len());
            flip(&mut vc.value.prepared[k].pre_prepare.signature);
        }
        Message::Request(m) => flip(&mut m.signature),
        Message::PrePrepare(m, _) => flip(&mut m.signature),
        Message::Prepare(m) => flip(&mut m.signature),
        Message::Commit(m) => flip(&mut m.signature),
        Message::Checkpoint(m) => flip(&mut m.signature),
        Message::ViewChange(m) => flip(&mut m.signature),
        Message::NewView(m, _) => flip(&mut m.signature),
        Message::FetchBatch(m) => flip(&mut m.signature),
        Message::BatchData(m) => flip(&mut m.signature),
        Message::FetchState(m) => flip(&mut m.signature),
        Message::StateData(m) => flip(&mut m.signature),
        // Unsigned: the forgery a reply allows is naming another replica,
        // which the client's link check must refuse.
        Message::Reply(m) => m.replica = ReplicaId(m.replica.0 ^ 1),
        Message::StatusRequest(m) => flip(&mut m.signature),
        Message::StatusReport(m) => flip(&mut m.signature),
        Message::Progress(m) => flip(&mut m.signature),
        Message::Certificate(cert, _) => {
            if !cert.commits.is_empty() {
                let k = rng.gen_range(0..cert.commits.len());
                flip(&mut cert.commits[k].signature);
            }
        }
    }
    o
}
