//! Simulated clients: PBFT's client model.
//!
//! One outstanding request at a time, request ids strictly increasing. An
//! ordered request goes to the primary the client believes in (learnt from
//! replies: primary = view mod n); on timeout it is re-broadcast to every
//! replica with a doubled timeout (the first timeout exceeds a view change).
//! A result is accepted once f+1 distinct replicas sent matching replies
//! (2f+1 in runs whose cluster read mode is `fast`). In such runs a `Get` may
//! first try the read-only fast path: broadcast with `read_only: true`,
//! accepted on 2f+1 matching read-only replies, otherwise retried as an
//! ordered request.
//!
//! An ordered request names the replicas asked to reply (as many as decide,
//! backups first, passing over those that failed to agree before: the SDK's
//! [`ReplierChoice`]); retransmissions ask every replica: a quarter of the
//! timeout base after the first named replica replied without a decision
//! following, at once when every named one answered without agreeing.
//!
//! Counting replies and learning the view are the SDK's own logic,
//! [`pbft_core::client_quorum`] (one implementation; it lives in the core so
//! the simulator needs no network stack): [`ReplyTally`] per request,
//! [`replies_needed`] from the cluster's read mode, [`learned_view`] from the
//! latest view each replica reported for the request.

use crate::checker::linearizability::{op_key, History};
use pbft_app::kv::{KvOp, KvResult};
use pbft_core::client_quorum::{
    learned_view, next_request_id, replies_needed, Outcome, ReplierChoice, ReplyTally,
};
use pbft_core::message::{Repliers, Reply, ReplyStatus, Request};
use pbft_core::{ClientId, Message, ReadMode, ReplicaId, RequestId, View};
use pbft_crypto::{Signed, Signer};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

/// Keys the workload touches: few, so operations contend.
pub(crate) const KEYS: usize = 5;

/// What a client asks the simulator to do.
#[derive(Debug)]
pub(crate) enum ClientAction {
    /// Send to a replica.
    Send(usize, Message),
    /// Fire the client's timer at this time (replacing any earlier one).
    SetTimer(u64),
    /// The operation completed (the next one is scheduled by the simulator).
    Completed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    ReadOnly,
    Ordered,
}

/// The request in flight.
#[derive(Debug)]
struct Outstanding {
    request_id: RequestId,
    op: KvOp,
    mode: Mode,
    /// The replies of the current mode, one vote per replica.
    tally: ReplyTally,
    /// The view of each replica's latest reply of the current mode.
    views: BTreeMap<ReplicaId, View>,
    /// The current retransmission timeout.
    timeout: u64,
    /// The replicas the first copy of an ordered request asked to reply.
    named: Repliers,
    /// Whether it was retransmitted (to every replica).
    retransmitted: bool,
    /// Index in the history.
    history: usize,
}

/// Timing the clients derive from the cluster configuration.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ClientParams {
    pub n: usize,
    pub f: usize,
    /// The replicas' timeout base, microseconds.
    pub timeout_base: u64,
    /// The cluster's read mode (the replicas' `Config::read_mode`).
    pub read_mode: ReadMode,
    /// Probability of trying a `Get` on the read-only fast path (only in a
    /// cluster whose read mode is `fast`).
    pub read_only: f64,
}

/// A client's first ordered-request timeout, in replica timeout bases:
/// until it passes, only the primary holds the request.
pub(crate) const INITIAL_TIMEOUT_BASES: u64 = 4;

impl ClientParams {
    /// The first ordered-request timeout: well above one view change.
    fn initial_timeout(&self) -> u64 {
        INITIAL_TIMEOUT_BASES * self.timeout_base
    }

    /// Retransmission timeouts stop doubling here.
    fn max_timeout(&self) -> u64 {
        32 * self.timeout_base
    }

    /// How long the other named replicas may take once one has replied.
    fn reply_grace(&self) -> u64 {
        self.timeout_base / 4
    }

    /// How long a named replica that did not agree is not named again.
    fn suspicion(&self) -> u64 {
        40 * self.timeout_base
    }
}

/// One simulated client.
pub(crate) struct Client {
    pub index: usize,
    pub id: ClientId,
    signer: Signer,
    params: ClientParams,
    repliers: ReplierChoice<u64>,
    last_request_id: u64,
    view: u64,
    pub ops_left: usize,
    current: Option<Outstanding>,
    /// What this client last saw under each key (for plausible CAS expectations).
    seen: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Requests the replicas answered as run with the result withheld.
    pub withheld: usize,
    /// Replies carrying a withheld result's digest.
    pub withheld_replies: u64,
    /// Requests the replicas answered as expired.
    pub expired: usize,
    /// Writes that ended with their outcome unknown (history index, when):
    /// open in the history (they may have taken effect), but finished.
    pub abandoned: Vec<(usize, u64)>,
}

impl Client {
    pub fn new(index: usize, signer: Signer, params: ClientParams, ops: usize) -> Client {
        let id = ClientId(signer.public_key());
        let needed = replies_needed(params.f, params.read_mode, false);
        Client {
            index,
            id,
            signer,
            params,
            repliers: ReplierChoice::new(params.n, needed, usize::from(id.0 .0[0])),
            last_request_id: 0,
            view: 0,
            ops_left: ops,
            current: None,
            seen: BTreeMap::new(),
            withheld: 0,
            withheld_replies: 0,
            expired: 0,
            abandoned: Vec::new(),
        }
    }

    /// Whether the client finished all its operations.
    pub fn done(&self) -> bool {
        self.ops_left == 0 && self.current.is_none()
    }

    fn random_op(&self, rng: &mut ChaCha8Rng, request_id: u64) -> KvOp {
        let key = format!("k{}", rng.gen_range(0..KEYS)).into_bytes();
        let value = format!("c{}-{}", self.index, request_id).into_bytes();
        match rng.gen_range(0..100) {
            0..=34 => KvOp::Put { key, value },
            35..=64 => KvOp::Get { key },
            65..=74 => KvOp::Delete { key },
            _ => {
                let expected = match rng.gen_range(0..4) {
                    0 | 1 => self.seen.get(&key).cloned().flatten(),
                    2 => None,
                    _ => Some(b"never-written".to_vec()),
                };
                KvOp::Cas {
                    key,
                    expected,
                    new: value,
                }
            }
        }
    }

    fn sign(
        &self,
        request_id: RequestId,
        op: &KvOp,
        read_only: bool,
        repliers: Repliers,
    ) -> Signed<Request> {
        self.signer.sign(Request {
            client: self.id,
            request_id,
            op: op.encode(),
            read_only,
            repliers,
        })
    }

    /// Whom a new ordered request asks to reply.
    fn pick_repliers(&self, now: u64) -> Repliers {
        self.repliers.pick(ReplicaId(self.primary() as u32), now)
    }

    fn primary(&self) -> usize {
        (self.view % self.params.n as u64) as usize
    }

    /// Starts the next operation.
    pub fn start(
        &mut self,
        now: u64,
        rng: &mut ChaCha8Rng,
        history: &mut History,
    ) -> Vec<ClientAction> {
        if self.ops_left == 0 || self.current.is_some() {
            return Vec::new();
        }
        self.ops_left -= 1;
        // Time-based like the SDK's (the client table's floor relies on it):
        // the virtual time in microseconds.
        let request_id = next_request_id(RequestId(self.last_request_id), now);
        self.last_request_id = request_id.0;
        let op = self.random_op(rng, request_id.0);
        let read_only = op.is_read_only()
            && self.params.read_mode == ReadMode::Fast
            && self.params.read_only > 0.0
            && rng.gen_bool(self.params.read_only);
        let h = history.invoke(self.index, op.clone(), now);
        let named = if read_only {
            Repliers::ALL
        } else {
            self.pick_repliers(now)
        };
        let request = self.sign(request_id, &op, read_only, named);
        let mut actions = Vec::new();
        let (mode, timeout) = if read_only {
            for r in 0..self.params.n {
                actions.push(ClientAction::Send(r, Message::Request(request.clone())));
            }
            (Mode::ReadOnly, 2 * self.params.timeout_base)
        } else {
            actions.push(ClientAction::Send(
                self.primary(),
                Message::Request(request),
            ));
            (Mode::Ordered, self.params.initial_timeout())
        };
        actions.push(ClientAction::SetTimer(now + timeout));
        self.current = Some(Outstanding {
            request_id,
            op,
            mode,
            tally: ReplyTally::new(request_id, read_only),
            views: BTreeMap::new(),
            timeout,
            named,
            retransmitted: false,
            history: h,
        });
        actions
    }

    /// Falls back from the read-only path to an ordered request.
    fn fall_back(&mut self, now: u64) -> Vec<ClientAction> {
        let initial = self.params.initial_timeout();
        let primary = self.primary();
        let named = self.pick_repliers(now);
        let Some(cur) = self.current.as_mut() else {
            return Vec::new();
        };
        cur.mode = Mode::Ordered;
        cur.tally = ReplyTally::new(cur.request_id, false);
        cur.views.clear();
        cur.timeout = initial;
        cur.named = named;
        cur.retransmitted = false;
        let (id, op) = (cur.request_id, cur.op.clone());
        let request = self.sign(id, &op, false, named);
        vec![
            ClientAction::Send(primary, Message::Request(request)),
            ClientAction::SetTimer(now + initial),
        ]
    }

    /// The client's timer fired.
    pub fn on_timer(&mut self, now: u64) -> Vec<ClientAction> {
        let n = self.params.n;
        let max = self.params.max_timeout();
        let Some(cur) = self.current.as_mut() else {
            return Vec::new();
        };
        match cur.mode {
            Mode::ReadOnly => self.fall_back(now),
            Mode::Ordered => {
                cur.timeout = (cur.timeout * 2).min(max);
                cur.retransmitted = true;
                let timeout = cur.timeout;
                let (id, op) = (cur.request_id, cur.op.clone());
                let request = self.sign(id, &op, false, Repliers::ALL);
                let mut actions: Vec<ClientAction> = (0..n)
                    .map(|r| ClientAction::Send(r, Message::Request(request.clone())))
                    .collect();
                actions.push(ClientAction::SetTimer(now + timeout));
                actions
            }
        }
    }

    /// The replicas agreed the request ran without keeping its result, or
    /// that it expired: a read is re-issued as a new request (the SDK does
    /// the same), a write ends with its outcome unknown (its history entry
    /// stays open: it may have taken effect).
    fn not_answered(&mut self, now: u64, withheld: bool) -> Vec<ClientAction> {
        let initial = self.params.initial_timeout();
        let primary = self.primary();
        let named = self.pick_repliers(now);
        let Some(cur) = self.current.as_mut() else {
            return Vec::new();
        };
        if withheld {
            self.withheld += 1;
        } else {
            self.expired += 1;
        }
        if !cur.op.is_read_only() {
            self.abandoned.push((cur.history, now));
            self.current = None;
            return vec![ClientAction::Completed];
        }
        let request_id = next_request_id(RequestId(self.last_request_id), now);
        self.last_request_id = request_id.0;
        cur.request_id = request_id;
        cur.mode = Mode::Ordered;
        cur.tally = ReplyTally::new(request_id, false);
        cur.views.clear();
        cur.timeout = initial;
        cur.named = named;
        cur.retransmitted = false;
        let op = cur.op.clone();
        let request = self.sign(request_id, &op, false, named);
        vec![
            ClientAction::Send(primary, Message::Request(request)),
            ClientAction::SetTimer(now + initial),
        ]
    }

    /// A verified reply arrived (from replica `from`, per its signature).
    pub fn on_reply(&mut self, now: u64, reply: Reply, history: &mut History) -> Vec<ClientAction> {
        let (n, f, read_mode) = (self.params.n, self.params.f, self.params.read_mode);
        let Some(cur) = self.current.as_mut() else {
            return Vec::new();
        };
        if reply.client != self.id || reply.replica.index() >= n {
            return Vec::new();
        }
        // Counted only if it answers this request with the current mode's kind.
        if !cur.tally.add(&reply) {
            return Vec::new();
        }
        if reply.status == ReplyStatus::Withheld {
            self.withheld_replies += 1;
        }
        cur.views.insert(reply.replica, reply.view);
        let read_only = cur.mode == Mode::ReadOnly;
        let needed = replies_needed(f, read_mode, read_only);
        if !read_only && cur.tally.outcome(needed).is_some() {
            let agreeing = cur.tally.agreeing(needed);
            let until = now + self.params.suspicion();
            self.repliers.settle(cur.named, &agreeing, until);
        }
        let result = match cur.tally.outcome(needed) {
            Some(Outcome::Result(result)) => result.to_vec(),
            Some(Outcome::Withheld) => return self.not_answered(now, true),
            Some(Outcome::Expired) => return self.not_answered(now, false),
            None => {
                if read_only && cur.tally.hopeless(needed, n) {
                    return self.fall_back(now);
                }
                if !read_only && !cur.retransmitted {
                    // Every named replica answered, and they disagree: ask
                    // everyone now.
                    if cur.tally.all_voted(cur.named, n) {
                        return self.on_timer(now);
                    }
                    // It executed: the other named replicas have a grace
                    // period, then everyone is asked.
                    if cur.tally.voters() == 1 {
                        return vec![ClientAction::SetTimer(now + self.params.reply_grace())];
                    }
                }
                return Vec::new();
            }
        };
        if let Some(v) = learned_view(&cur.views, f) {
            self.view = self.view.max(v.0);
        }
        let decoded = KvResult::decode(&result);
        let key = op_key(&cur.op).to_vec();
        let h = cur.history;
        self.current = None;
        match decoded {
            Ok(result) => {
                match &result {
                    KvResult::Get { value } => {
                        self.seen.insert(key, value.clone());
                    }
                    KvResult::Cas { current, .. } => {
                        self.seen.insert(key, current.clone());
                    }
                    _ => {}
                }
                history.respond(h, now, result);
            }
            Err(e) => history.respond_garbage(h, now, e.0),
        }
        vec![ClientAction::Completed]
    }
}
