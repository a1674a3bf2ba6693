//! An in-memory cluster for core tests: FIFO delivery, time advanced by hand,
//! fault helpers named after what they do (`isolate`, `heal`, `crash`).

#![allow(dead_code)]

use pbft_app::kv::{KvOp, KvResult, KvStore};
use pbft_core::message::{Message, Repliers, Reply, Request};
use pbft_core::{
    ClientId, Config, Input, Instant, Output, Record, Replica, ReplicaId, RequestId, SeqNum,
};
use pbft_crypto::{ClusterId, Digest, KeyPair, Scheme, Signed, Signer, Verifier};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

/// Where a message is going.
#[derive(Clone, Debug)]
pub enum To {
    Replica(ReplicaId),
    Client(ClientId),
}

pub struct Cluster {
    pub config: Config,
    pub replicas: Vec<Option<Replica>>,
    pub signers: Vec<Signer>,
    pub storage: Vec<Vec<Record>>,
    pub queue: VecDeque<(ReplicaId, To, Message)>,
    pub now: Instant,
    /// Replicas whose traffic (both ways) is dropped.
    pub isolated: BTreeSet<ReplicaId>,
    /// Replicas whose outputs are all dropped (silent Byzantine).
    pub silent: BTreeSet<ReplicaId>,
    pub replies: BTreeMap<ClientId, Vec<Reply>>,
    pub executed: BTreeMap<ReplicaId, BTreeMap<SeqNum, Digest>>,
    pub verifier: Verifier,
    pub entered_views: Vec<(ReplicaId, pbft_core::View)>,
    /// Sequence numbers each replica executed with phase times.
    pub timed: BTreeMap<ReplicaId, BTreeSet<SeqNum>>,
    /// State transfers: (replica, seq, pages, pages fetched).
    pub transfers: Vec<(ReplicaId, SeqNum, usize, usize)>,
    /// The page size the replicas' stores aim at.
    pub page_target: usize,
    /// NEW-VIEWs broadcast: (sender, re-issued pre-prepares, batches carried,
    /// their wire bytes).
    pub new_views: Vec<(ReplicaId, usize, usize, usize)>,
    /// Status reports, by the replica that made them.
    pub statuses: Vec<(ReplicaId, pbft_core::message::StatusReport)>,
}

pub fn config(n: usize) -> (Config, Vec<Signer>) {
    let cluster = ClusterId(42);
    let keys: Vec<KeyPair> = (0..n)
        .map(|i| KeyPair::from_seed([i as u8 + 1; 32]))
        .collect();
    let signers = keys
        .iter()
        .map(|k| Signer::with_scheme(k.clone(), cluster, Scheme::InsecureSim))
        .collect();
    let mut config = Config::new(cluster, keys.iter().map(|k| k.public()).collect());
    config.checkpoint_interval = 4;
    config.log_window = 8;
    config.batch_size_max = 4;
    config.timeout_base = Duration::from_millis(100);
    (config, signers)
}

impl Cluster {
    pub fn new(n: usize) -> Self {
        let (config, signers) = config(n);
        Self::with_config(config, signers)
    }

    pub fn with_config(config: Config, signers: Vec<Signer>) -> Self {
        Self::with_pages(config, signers, pbft_app::PAGE_TARGET)
    }

    /// A cluster whose stores cut their state into pages of about `page_target` bytes.
    pub fn with_pages(config: Config, signers: Vec<Signer>, page_target: usize) -> Self {
        let n = config.n();
        let replicas = (0..n)
            .map(|i| {
                Some(
                    Replica::new(
                        config.clone(),
                        ReplicaId(i as u32),
                        signers[i].clone(),
                        Box::new(KvStore::with_page_target(page_target)),
                    )
                    .expect("valid config"),
                )
            })
            .collect();
        Cluster {
            verifier: Verifier::with_scheme(config.cluster, Scheme::InsecureSim),
            config,
            replicas,
            signers,
            storage: vec![Vec::new(); n],
            queue: VecDeque::new(),
            now: Instant(1),
            isolated: BTreeSet::new(),
            silent: BTreeSet::new(),
            replies: BTreeMap::new(),
            executed: BTreeMap::new(),
            entered_views: Vec::new(),
            timed: BTreeMap::new(),
            transfers: Vec::new(),
            page_target,
            new_views: Vec::new(),
            statuses: Vec::new(),
        }
    }

    pub fn replica(&self, i: u32) -> &Replica {
        self.replicas[i as usize].as_ref().expect("replica is up")
    }

    pub fn replica_mut(&mut self, i: u32) -> &mut Replica {
        self.replicas[i as usize].as_mut().expect("replica is up")
    }

    fn input(&mut self, id: ReplicaId, input: Input) {
        let Some(replica) = self.replicas[id.index()].as_mut() else {
            return;
        };
        let mut out = Vec::new();
        replica.handle(self.now, input, &mut out);
        self.outputs(id, out);
    }

    pub fn outputs(&mut self, id: ReplicaId, out: Vec<Output>) {
        let n = self.config.n() as u32;
        for o in out {
            if let Output::Broadcast(Message::NewView(nv, batches)) = &o {
                let bytes = batches.iter().map(|b| b.wire_bytes()).sum();
                self.new_views
                    .push((id, nv.pre_prepares.len(), batches.len(), bytes));
            }
            match o {
                Output::Persist(r) => self.storage[id.index()].push(r),
                _ if self.silent.contains(&id) => {}
                Output::Send(to, m) => self.queue.push_back((id, To::Replica(to), m)),
                Output::Broadcast(m) => {
                    for r in 0..n {
                        if r != id.0 {
                            self.queue
                                .push_back((id, To::Replica(ReplicaId(r)), m.clone()));
                        }
                    }
                }
                Output::Reply(c, r) => self.queue.push_back((id, To::Client(c), Message::Reply(r))),
                Output::Executed {
                    seq,
                    digest,
                    timing,
                    ..
                } => {
                    if let Some(t) = timing {
                        assert!(
                            t.received.is_none_or(|r| r <= t.pre_prepared)
                                && t.pre_prepared <= t.prepared
                                && t.prepared <= t.committed
                                && t.committed <= self.now,
                            "{id} phase times out of order at {seq}: {t:?}"
                        );
                        self.timed.entry(id).or_default().insert(seq);
                    }
                    let prev = self.executed.entry(id).or_default().insert(seq, digest);
                    if let Some(prev) = prev {
                        assert_eq!(prev, digest, "{id} re-executed {seq} with another batch");
                    }
                }
                Output::EnteredView(v) => self.entered_views.push((id, v)),
                Output::StateTransferred {
                    seq,
                    pages,
                    fetched,
                    ..
                } => self.transfers.push((id, seq, pages, fetched)),
                Output::Status(_, report) => self.statuses.push((id, report.value)),
                Output::Checkpointed { .. } => {}
            }
        }
    }

    /// Delivers one message from the queue; false when it is empty.
    pub fn step(&mut self) -> bool {
        let Some((from, to, message)) = self.queue.pop_front() else {
            return false;
        };
        match to {
            To::Replica(r) => {
                if self.isolated.contains(&r) || self.isolated.contains(&from) {
                    return true;
                }
                let verified = self
                    .verifier
                    .verify(message, &self.config)
                    .expect("honest signatures");
                // Requests in the queue were relayed by the replica `from`.
                let input = match &*verified {
                    Message::Request(_) => Input::Relayed(from, verified),
                    _ => Input::Message(verified),
                };
                self.input(r, input);
            }
            To::Client(c) => {
                if let Message::Reply(r) = message {
                    self.replies.entry(c).or_default().push(r);
                }
            }
        }
        true
    }

    /// Delivers until quiet (bounded). Like a node's driver at the end of a
    /// step, it fires the timers that are due now (the primary proposes
    /// from such a timer).
    pub fn run(&mut self) {
        for _ in 0..1_000_000 {
            if self.step() {
                continue;
            }
            match self.next_timer() {
                Some((t, i)) if t <= self.now => self.input(ReplicaId(i as u32), Input::Tick),
                _ => return,
            }
        }
        panic!("message storm: the queue never drained");
    }

    /// Advances time by `d`, firing due timers, and runs to quiet.
    pub fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            self.run();
            let next = self.next_timer();
            match next {
                Some((t, i)) if t <= end => {
                    self.now = self.now.max(t);
                    self.input(ReplicaId(i as u32), Input::Tick);
                }
                _ => break,
            }
        }
        self.now = end;
        self.run();
    }

    /// The earliest timer of any running replica, and whose it is.
    fn next_timer(&self) -> Option<(Instant, usize)> {
        (0..self.replicas.len())
            .filter_map(|i| {
                self.replicas[i]
                    .as_ref()
                    .and_then(|r| r.poll_timeout())
                    .map(|t| (t, i))
            })
            .min()
    }

    /// Delivers a timer tick to replica `id` now (whether or not one is due).
    pub fn tick(&mut self, id: u32) {
        self.input(ReplicaId(id), Input::Tick);
    }

    /// Fires the earliest timer due within `d` (moving time to it) without
    /// delivering what it sends; otherwise moves time on by `d`.
    pub fn fire_next_timer(&mut self, d: Duration) {
        let end = self.now + d;
        let next = self.next_timer();
        match next {
            Some((t, i)) if t <= end => {
                self.now = self.now.max(t);
                self.input(ReplicaId(i as u32), Input::Tick);
            }
            _ => self.now = end,
        }
    }

    /// Injects a message as if `from` had sent it to `to`.
    pub fn deliver(&mut self, to: ReplicaId, message: Message) {
        let verified = self
            .verifier
            .verify(message, &self.config)
            .expect("valid signatures");
        self.input(to, Input::Message(verified));
    }

    /// Injects a client request as if replica `by` had relayed it to `to`.
    pub fn relay(&mut self, to: ReplicaId, by: ReplicaId, message: Message) {
        let verified = self
            .verifier
            .verify(message, &self.config)
            .expect("valid signatures");
        self.input(to, Input::Relayed(by, verified));
    }

    pub fn crash(&mut self, id: u32) {
        self.replicas[id as usize] = None;
    }

    pub fn restart(&mut self, id: u32) {
        let i = id as usize;
        let replica = Replica::restore(
            self.config.clone(),
            ReplicaId(id),
            self.signers[i].clone(),
            Box::new(KvStore::with_page_target(self.page_target)),
            &self.storage[i],
            self.now,
        )
        .expect("restore");
        self.replicas[i] = Some(replica);
    }
}

/// A test client.
pub struct Client {
    pub key: KeyPair,
    pub signer: Signer,
    pub next_id: u64,
}

impl Client {
    pub fn new(seed: u8, cluster: &Cluster) -> Self {
        Self::with_key(KeyPair::from_seed([200 + seed; 32]), cluster)
    }

    /// Client number `n`, for tests that need more clients than `new` has seeds.
    pub fn numbered(n: u16, cluster: &Cluster) -> Self {
        let mut seed = [0xC1; 32];
        seed[..2].copy_from_slice(&n.to_le_bytes());
        Self::with_key(KeyPair::from_seed(seed), cluster)
    }

    fn with_key(key: KeyPair, cluster: &Cluster) -> Self {
        Client {
            signer: Signer::with_scheme(key.clone(), cluster.config.cluster, Scheme::InsecureSim),
            key,
            next_id: 1,
        }
    }

    pub fn id(&self) -> ClientId {
        ClientId(self.key.public())
    }

    /// The next request, asking every replica to reply.
    pub fn request(&mut self, op: KvOp) -> Signed<Request> {
        self.request_naming(op, Repliers::ALL)
    }

    /// Another copy of `request` (same id), asking every replica to reply:
    /// a retransmission as the SDK sends it.
    pub fn asking_everyone(&self, request: &Signed<Request>) -> Signed<Request> {
        self.signer.sign(Request {
            repliers: Repliers::ALL,
            ..request.value.clone()
        })
    }

    /// The next request, asking `repliers` to reply.
    pub fn request_naming(&mut self, op: KvOp, repliers: Repliers) -> Signed<Request> {
        let id = self.next_id;
        self.next_id += 1;
        self.signer.sign(Request {
            client: self.id(),
            request_id: RequestId(id),
            op: op.encode(),
            read_only: false,
            repliers,
        })
    }

    /// The result that f+1 replicas agree on for `request_id`, if any.
    pub fn result(&self, cluster: &Cluster, request_id: u64) -> Option<KvResult> {
        let replies = cluster.replies.get(&self.id())?;
        let mut votes: BTreeMap<Vec<u8>, BTreeSet<ReplicaId>> = BTreeMap::new();
        for r in replies
            .iter()
            .filter(|r| r.request_id == RequestId(request_id) && !r.read_only)
        {
            votes.entry(r.result.clone()).or_default().insert(r.replica);
        }
        votes
            .into_iter()
            .find(|(_, who)| who.len() > cluster.config.f())
            .map(|(result, _)| KvResult::decode(&result).expect("result decodes"))
    }
}

pub fn put(key: &str, value: &str) -> KvOp {
    KvOp::Put {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
    }
}

pub fn get(key: &str) -> KvOp {
    KvOp::Get {
        key: key.as_bytes().to_vec(),
    }
}
