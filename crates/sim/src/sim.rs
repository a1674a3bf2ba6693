//! The simulation: virtual time, an event queue, replicas (honest, crashed or
//! Byzantine), clients and the network, all driven by one seeded RNG.

use crate::byzantine::{Behavior, Byzantine};
use crate::checker::agreement::Agreement;
use crate::checker::certificates::Certificates;
use crate::checker::linearizability::{self, History};
use crate::checker::liveness::{self, LivenessInput};
use crate::client::{Client, ClientAction, ClientParams};
use crate::network::{Dest, Endpoint, Network, Outgoing};
use crate::scenario::{Plan, Scenario, MS, TIMEOUT_BASE};
use crate::trace::{describe, TraceHash};
use crate::{RunOptions, RunReport};
use pbft_app::kv::KvStore;
use pbft_core::{
    ClientId, Config, Input, Instant, Message, Output, Record, Replica, ReplicaId, SeqNum,
};
use pbft_crypto::{ClusterId, Digest, KeyPair, Scheme, Signer, Verifier};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cell::OnceCell;
use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::time::Duration;

/// After every client finished, the run goes on this long (so replicas catch up).
const GRACE: u64 = 500 * MS;
/// How soon after the heal a laggard must reach the others (a few timeouts).
const REJOIN_BOUND: u64 = 10 * TIMEOUT_BASE;
/// The longest a slow primary may keep its view in `byz-slow-primary` runs:
/// the clients' first timeout (after which the backups hold the request and
/// watch the primary), one ordering timeout and a view change, with room.
const SLOW_VIEW_BOUND: u64 = 10 * TIMEOUT_BASE;
/// Most events one run may process (a livelock guard).
const EVENT_BUDGET: u64 = 5_000_000;

enum Event {
    Deliver {
        from: Endpoint,
        to: Endpoint,
        frame: Rc<Frame>,
    },
    ReplicaTimer {
        replica: usize,
        generation: u64,
    },
    ClientTimer {
        client: usize,
        generation: u64,
    },
    ClientIssue {
        client: usize,
    },
    PartitionTick,
    CrashTick,
    /// A crash that was waiting for the replica's next step happens now.
    CrashNow {
        replica: usize,
    },
    Restart {
        replica: usize,
    },
    Heal,
}

/// One encoded message on the network. A broadcast (and every duplicate the
/// network makes) shares one frame, so its decoding and signature check run
/// once, at its first delivery, and every other delivery takes a copy of
/// the result. Both are pure functions of the bytes (one verifier and one
/// configuration serve the whole run), so this changes no verdict and no
/// run: it only saves the simulator n-2 decodings and checks per broadcast.
struct Frame {
    bytes: Vec<u8>,
    checked: OnceCell<Checked>,
}

/// A frame's bytes, decoded and verified.
enum Checked {
    Undecodable(String),
    /// The decoded message, and why it did not verify.
    Rejected(Message, pbft_crypto::VerifyError),
    Verified(pbft_crypto::Verified<Message>),
}

impl Frame {
    fn new(msg: &Message) -> Rc<Frame> {
        Rc::new(Frame {
            bytes: msg.encode(),
            checked: OnceCell::new(),
        })
    }

    fn check(&self, verifier: &Verifier, config: &Config) -> &Checked {
        self.checked
            .get_or_init(|| match Message::decode(&self.bytes) {
                Err(e) => Checked::Undecodable(e.to_string()),
                Ok(m) => match verifier.verify(m, config) {
                    Ok(v) => Checked::Verified(v),
                    // Rare: decode again rather than copy every message.
                    Err(e) => match Message::decode(&self.bytes) {
                        Ok(m) => Checked::Rejected(m, e),
                        Err(d) => Checked::Undecodable(d.to_string()),
                    },
                },
            })
    }
}

struct Queued {
    at: u64,
    order: u64,
    event: Event,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.order).cmp(&(other.at, other.order))
    }
}

struct Node {
    replica: Option<Replica>,
    storage: Vec<Record>,
    signer: Signer,
    byzantine: Option<Byzantine>,
    timer_generation: u64,
    timer_at: Option<u64>,
    crashes: u64,
    /// The replica's clock: offset (microseconds) and drift (ppm).
    clock: (u64, i64),
    /// A crash is due inside the replica's next step.
    crash_pending: bool,
    /// A crash is due inside the replica's step after this many more.
    crash_countdown: Option<u32>,
    /// The highest `Executed` record it ever persisted, or the highest batch
    /// it answered ahead of its records: it may have replied for everything
    /// up to there, so it must never answer a read-only request from an
    /// older state (checked in the run, whatever the core's own floor says).
    replied_floor: u64,
}

impl Node {
    fn honest(&self) -> bool {
        self.byzantine.is_none()
    }

    /// The replica's clock reading at simulated time `t`.
    fn local(&self, t: u64) -> u64 {
        let (offset, ppm) = self.clock;
        let drift = (t as i128 * ppm as i128) / 1_000_000;
        offset + (t as i128 + drift).max(0) as u64
    }

    /// The earliest simulated time at which the replica's clock reads `local`.
    fn global(&self, local: u64) -> u64 {
        let (offset, ppm) = self.clock;
        let since = local.saturating_sub(offset) as i128;
        let rate = 1_000_000 + ppm as i128;
        ((since * 1_000_000 + rate - 1) / rate) as u64
    }

    /// Appends one step's records, as the node's storage does: all of them,
    /// then compaction if one is a checkpoint, unless `crash_in_compaction`
    /// (the rewritten log never replaced the old one).
    fn append(&mut self, records: &[Record], crash_in_compaction: bool) -> bool {
        for r in records {
            if let Record::Executed(seq) = r {
                self.replied_floor = self.replied_floor.max(seq.0);
            }
        }
        self.storage.extend_from_slice(records);
        let compacts = pbft_core::io::compacts(records);
        if !crash_in_compaction && compacts {
            pbft_core::io::compact(&mut self.storage);
        }
        compacts
    }
}

struct ClientSlot {
    client: Client,
    timer_generation: u64,
}

pub(crate) struct Sim {
    plan: Plan,
    config: Config,
    seed: u64,
    rng: ChaCha8Rng,
    now: u64,
    order: u64,
    queue: BinaryHeap<Reverse<Queued>>,
    nodes: Vec<Node>,
    clients: Vec<ClientSlot>,
    client_index: BTreeMap<ClientId, usize>,
    network: Network,
    verifier: Verifier,
    history: History,
    agreement: Agreement,
    certificates: Certificates,
    violations: Vec<String>,
    verbose: bool,
    trace: TraceHash,
    events: u64,
    messages: u64,
    rejected: u64,
    /// Of those, refused for their shape (or undecodable, from a Byzantine replica).
    malformed: u64,
    max_view: u64,
    /// When the honest replicas' highest view rose, and to which view.
    view_rises: Vec<(u64, u64)>,
    entered_views: u64,
    crashes: u64,
    torn_writes: u64,
    replies_ahead: u64,
    votes_ahead: u64,
    state_transfers: u64,
    /// State transfers of more than one page.
    chunked_transfers: u64,
    /// The page size the replicas' stores aim at: tiny in two runs of
    /// three, so that even the simulator's small states span several pages
    /// and state transfer goes in chunks.
    page_target: usize,
    /// Pages fetched by state transfers.
    pages_fetched: u64,
    censored_requests: u64,
    aborted: bool,
    all_done_at: Option<u64>,
    /// When the laggard first reached the others after the heal.
    rejoined_at: Option<u64>,
    /// The highest view a replica other than the laggard was in at the heal.
    view_at_heal: Option<u64>,
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

impl Sim {
    pub fn new(options: &RunOptions) -> Sim {
        let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
        let mut plan = Plan::draw(options.scenario, options.f, &mut rng);
        if options.honest_twin {
            plan.byzantine.clear();
            plan.censored = false;
        }
        let n = plan.n();
        let cluster = ClusterId(rng.gen());
        let replica_keys: Vec<KeyPair> = (0..n).map(|_| KeyPair::from_seed(rng.gen())).collect();
        let mut config = Config::new(cluster, replica_keys.iter().map(KeyPair::public).collect());
        config.checkpoint_interval = plan.checkpoint_interval;
        config.log_window = 2 * plan.checkpoint_interval;
        config.batch_size_max = plan.batch_size_max;
        config.batch_delay = Duration::from_micros(plan.batch_delay);
        config.in_flight_max = plan.in_flight_max;
        config.batch_bytes_max = plan.batch_bytes_max;
        config.timeout_base = Duration::from_micros(TIMEOUT_BASE);
        config.pending_requests_max = 1000;
        // Half the seeds keep fewer clients than the workload has, so the
        // client table expires entries at checkpoints (and answers some
        // retransmissions as expired); a quarter keep only tiny results
        // whole, so retransmissions meet withheld results. Chosen from the
        // seed without drawing from the run's generator. Not beside replicas
        // that flood requests from made-up clients with far-future ids: once
        // those are evicted they lift the floor above every honest id (the
        // known limit of `client_table`; key admission prevents it).
        let flood = plan.byzantine.iter().any(|(_, b)| *b == Behavior::Flood);
        if options.seed.is_multiple_of(2) && !flood {
            config.client_table_max = plan.clients.saturating_sub(1).max(1);
        }
        if options.seed.is_multiple_of(4) {
            config.client_result_max = 8;
        }
        // Runs that use the read-only fast path are clusters in fast mode.
        config.read_mode = if plan.read_only > 0.0 {
            pbft_core::ReadMode::Fast
        } else {
            pbft_core::ReadMode::Ordered
        };

        // The Byzantine replicas are known once the nodes are made.
        let certificates = Certificates::new(&config, Vec::new());
        let mut sim = Sim {
            network: Network::new(plan.network.clone(), n),
            verifier: Verifier::with_scheme(cluster, Scheme::InsecureSim),
            config,
            seed: options.seed,
            rng,
            now: 0,
            order: 0,
            queue: BinaryHeap::new(),
            nodes: Vec::new(),
            clients: Vec::new(),
            client_index: BTreeMap::new(),
            history: History::new(),
            agreement: Agreement::new(),
            certificates,
            violations: Vec::new(),
            verbose: options.verbose,
            trace: TraceHash::new(),
            events: 0,
            messages: 0,
            rejected: 0,
            malformed: 0,
            max_view: 0,
            view_rises: Vec::new(),
            entered_views: 0,
            crashes: 0,
            torn_writes: 0,
            replies_ahead: 0,
            votes_ahead: 0,
            state_transfers: 0,
            chunked_transfers: 0,
            page_target: if options.seed.is_multiple_of(3) {
                pbft_app::PAGE_TARGET
            } else {
                32
            },
            pages_fetched: 0,
            censored_requests: 0,
            aborted: false,
            all_done_at: None,
            rejoined_at: None,
            view_at_heal: None,
            plan,
        };
        for (i, key) in replica_keys.into_iter().enumerate() {
            let signer = Signer::with_scheme(key, cluster, Scheme::InsecureSim);
            let byzantine =
                sim.plan
                    .byzantine
                    .iter()
                    .find(|(b, _)| *b == i)
                    .map(|(_, behavior)| {
                        let mut b = Byzantine::new(
                            *behavior,
                            ReplicaId(i as u32),
                            signer.clone(),
                            sim.config.clone(),
                            sim.plan.network.muted.map(|v| ReplicaId(v as u32)),
                        );
                        b.forge_checkpoint_proofs = sim.plan.scenario == Scenario::ByzCheckpoint;
                        // Past the clients' broadcast, halfway to the
                        // deadline it starts at the backups (with room for
                        // network delays and clock drift on both sides; see
                        // `Byzantine::slow_delay_us`).
                        b.slow_delay_us =
                            crate::client::INITIAL_TIMEOUT_BASES * TIMEOUT_BASE + TIMEOUT_BASE / 2;
                        b
                    });
            let replica = Replica::new(
                sim.config.clone(),
                ReplicaId(i as u32),
                signer.clone(),
                Box::new(KvStore::with_page_target(sim.page_target)),
            );
            let replica = match replica {
                Ok(mut r) => {
                    r.set_invariant_checks(true);
                    Some(r)
                }
                Err(e) => {
                    sim.violations.push(format!("setup: replica r{i}: {e}"));
                    sim.aborted = true;
                    None
                }
            };
            sim.nodes.push(Node {
                replica,
                storage: Vec::new(),
                signer,
                byzantine,
                timer_generation: 0,
                timer_at: None,
                crashes: 0,
                clock: sim.plan.clocks.get(i).copied().unwrap_or((0, 0)),
                crash_pending: false,
                crash_countdown: None,
                replied_floor: 0,
            });
        }
        let params = ClientParams {
            n,
            f: sim.plan.f,
            timeout_base: TIMEOUT_BASE,
            read_mode: sim.config.read_mode,
            read_only: sim.plan.read_only,
        };
        for c in 0..sim.plan.clients {
            let key = KeyPair::from_seed(sim.rng.gen());
            let signer = Signer::with_scheme(key, cluster, Scheme::InsecureSim);
            let client = Client::new(c, signer, params, sim.plan.ops_per_client);
            sim.client_index.insert(client.id, c);
            sim.clients.push(ClientSlot {
                client,
                timer_generation: 0,
            });
            let start = sim.rng.gen_range(0..=50 * MS);
            sim.schedule(start, Event::ClientIssue { client: c });
        }
        sim.certificates = Certificates::new(
            &sim.config,
            sim.nodes.iter().map(|node| !node.honest()).collect(),
        );
        if sim.plan.censored {
            let censored = sim.clients.first().map(|c| c.client.id);
            for node in &mut sim.nodes {
                if let Some(b) = node.byzantine.as_mut() {
                    b.censored = censored;
                }
            }
        }
        if sim.plan.heal_at > 0 {
            sim.schedule(sim.plan.heal_at, Event::Heal);
        }
        if sim.plan.network.partitions {
            let at = sim.rng.gen_range(50 * MS..=400 * MS);
            sim.schedule(at, Event::PartitionTick);
        }
        if sim.plan.crashes {
            let at = sim.rng.gen_range(50 * MS..=400 * MS);
            sim.schedule(at, Event::CrashTick);
        }
        if sim.verbose {
            println!(
                "plan: scenario={} f={} n={} seed={} heal={}ms byzantine={:?} crashes={} network={:?} clients={}x{} K={} batch={} bytes={} in_flight={} delay={}us read_only={}",
                sim.plan.scenario,
                sim.plan.f,
                n,
                sim.seed,
                sim.plan.heal_at / MS,
                sim.plan.byzantine,
                sim.plan.crashes,
                sim.plan.network,
                sim.plan.clients,
                sim.plan.ops_per_client,
                sim.plan.checkpoint_interval,
                sim.plan.batch_size_max,
                sim.plan.batch_bytes_max,
                sim.plan.in_flight_max,
                sim.plan.batch_delay,
                sim.plan.read_only,
            );
        }
        sim
    }

    fn schedule(&mut self, at: u64, event: Event) {
        self.order += 1;
        self.queue.push(Reverse(Queued {
            at: at.max(self.now),
            order: self.order,
            event,
        }));
    }

    fn log(&self, line: impl FnOnce() -> String) {
        if self.verbose {
            use std::io::Write;
            // A closed pipe (`| head`) must not abort the run.
            let _ = writeln!(
                std::io::stdout().lock(),
                "[{:>10.3}ms] {}",
                self.now as f64 / 1000.0,
                line()
            );
        }
    }

    fn n(&self) -> usize {
        self.nodes.len()
    }

    fn crashed_count(&self) -> usize {
        self.nodes.iter().filter(|n| n.replica.is_none()).count()
    }

    /// The primary of the highest view an honest running replica is in.
    fn current_primary(&self) -> usize {
        let view = self
            .nodes
            .iter()
            .filter(|n| n.honest())
            .filter_map(|n| n.replica.as_ref())
            .map(|r| r.status().view.0)
            .max()
            .unwrap_or(0);
        (view % self.n() as u64) as usize
    }

    pub fn run(mut self) -> RunReport {
        let hard_end = self.plan.stable_at()
            + self.plan.liveness_bound
            + self.plan.ops_per_client as u64 * (self.plan.think_max + 2 * TIMEOUT_BASE);
        while !self.aborted {
            let Some(Reverse(queued)) = self.queue.pop() else {
                break;
            };
            if queued.at > hard_end {
                break;
            }
            if let Some(done) = self.all_done_at {
                let laggard_end = match self.plan.network.deaf {
                    Some(_) => self.plan.stable_at() + REJOIN_BOUND + GRACE,
                    None => 0,
                };
                if queued.at > (done + GRACE).max(laggard_end) {
                    break;
                }
            }
            self.now = queued.at;
            self.events += 1;
            if self.events > EVENT_BUDGET {
                self.violations.push(format!(
                    "livelock: more than {EVENT_BUDGET} events by {}ms",
                    self.now / MS
                ));
                break;
            }
            self.dispatch(queued.event);
            if self.all_done_at.is_none() && self.clients.iter().all(|c| c.client.done()) {
                self.all_done_at = Some(self.now);
                self.log(|| "all clients done".to_string());
            }
        }
        self.finish(hard_end)
    }

    fn dispatch(&mut self, event: Event) {
        match event {
            Event::Deliver { from, to, frame } => self.deliver(from, to, &frame),
            Event::ReplicaTimer {
                replica,
                generation,
            } => {
                let node = &mut self.nodes[replica];
                if node.timer_generation != generation || node.replica.is_none() {
                    return;
                }
                node.timer_at = None;
                self.trace.add(&[1, replica as u64, self.now]);
                self.step(replica, Input::Tick, true);
            }
            Event::ClientTimer { client, generation } => {
                if self.clients[client].timer_generation != generation {
                    return;
                }
                self.log(|| format!("c{client} timeout"));
                let actions = self.clients[client].client.on_timer(self.now);
                self.client_actions(client, actions);
            }
            Event::ClientIssue { client } => {
                let actions =
                    self.clients[client]
                        .client
                        .start(self.now, &mut self.rng, &mut self.history);
                if let Some(op) = self.history.ops.last() {
                    if !actions.is_empty() {
                        self.log(|| {
                            format!("c{client} invoke {}", linearizability::format_op(&op.op))
                        });
                    }
                }
                self.client_actions(client, actions);
            }
            Event::PartitionTick => self.partition_tick(),
            Event::CrashTick => self.crash_tick(),
            Event::CrashNow { replica } => {
                if self.nodes[replica].crash_pending && self.nodes[replica].replica.is_some() {
                    self.crash(replica);
                }
            }
            Event::Restart { replica } => self.restart(replica),
            Event::Heal => {
                self.network.heal();
                if let Some(laggard) = self.plan.network.deaf {
                    self.view_at_heal = Some(self.group_view(laggard));
                }
                for node in &mut self.nodes {
                    node.crash_pending = false;
                    node.crash_countdown = None;
                }
                self.log(|| "heal: the network is now synchronous and reliable".to_string());
                for i in 0..self.n() {
                    if self.nodes[i].replica.is_none() && self.nodes[i].honest() {
                        self.restart(i);
                    }
                }
            }
        }
    }

    fn client_actions(&mut self, client: usize, actions: Vec<ClientAction>) {
        for action in actions {
            match action {
                ClientAction::Send(r, msg) => {
                    let frame = Frame::new(&msg);
                    self.transmit(Endpoint::Client(client), Endpoint::Replica(r), frame, 0);
                }
                ClientAction::SetTimer(at) => {
                    let slot = &mut self.clients[client];
                    slot.timer_generation += 1;
                    let generation = slot.timer_generation;
                    self.schedule(at, Event::ClientTimer { client, generation });
                }
                ClientAction::Completed => {
                    if let Some(op) = self.history.ops.iter().rev().find(|o| o.client == client) {
                        self.log(|| {
                            let result = match &op.response {
                                Some(r) => match &r.result {
                                    Ok(r) => linearizability::format_result(r),
                                    Err(e) => format!("undecodable: {e}"),
                                },
                                None => "-".to_string(),
                            };
                            format!(
                                "c{client} complete {} -> {result}",
                                linearizability::format_op(&op.op)
                            )
                        });
                        self.trace.add(&[2, client as u64, self.now]);
                    }
                    self.clients[client].timer_generation += 1;
                    if self.clients[client].client.ops_left > 0 {
                        let think = self.rng.gen_range(0..=self.plan.think_max);
                        self.schedule(self.now + think, Event::ClientIssue { client });
                    }
                }
            }
        }
    }

    /// Puts a message on the network.
    fn transmit(&mut self, from: Endpoint, to: Endpoint, frame: Rc<Frame>, extra_delay: u64) {
        self.messages += 1;
        let delays = self.network.fate(&mut self.rng, self.now, from, to);
        if delays.is_empty() && self.verbose {
            self.log(|| format!("{from} -> {to} lost/cut"));
        }
        for d in delays {
            self.schedule(
                self.now + d + extra_delay,
                Event::Deliver {
                    from,
                    to,
                    frame: Rc::clone(&frame),
                },
            );
        }
    }

    fn deliver(&mut self, from: Endpoint, to: Endpoint, frame: &Frame) {
        let (message, verdict) = match frame.check(&self.verifier, &self.config) {
            Checked::Undecodable(e) => {
                // A Byzantine replica may send what no decoder accepts (a
                // list past its bound); anything else must round-trip.
                let byzantine = matches!(from, Endpoint::Replica(i) if !self.nodes[i].honest());
                if byzantine {
                    self.rejected += 1;
                    self.malformed += 1;
                    self.log(|| format!("{to} cannot decode a message from {from}: {e}"));
                } else {
                    self.violations.push(format!(
                        "codec: a message from {from} to {to} does not decode: {e}"
                    ));
                }
                return;
            }
            Checked::Rejected(message, e) => {
                if matches!(e, pbft_crypto::VerifyError::Malformed(_)) {
                    self.malformed += 1;
                }
                (message, Err(e))
            }
            Checked::Verified(v) => (&**v, Ok(v)),
        };
        self.trace.add(&[
            3,
            endpoint_code(from),
            endpoint_code(to),
            self.now,
            frame.bytes.len() as u64,
        ]);
        match to {
            Endpoint::Replica(r) => {
                if self.nodes[r].replica.is_none() {
                    return;
                }
                self.log(|| format!("{from} -> r{r} {}", describe(message)));
                let verified = match verdict {
                    Ok(v) => v.clone(),
                    Err(e) => {
                        self.rejected += 1;
                        self.log(|| format!("r{r} rejects a message from {from}: {e}"));
                        return;
                    }
                };
                if let Some(b) = self.nodes[r].byzantine.as_mut() {
                    if !b.admits(&verified) {
                        self.censored_requests += 1;
                        return;
                    }
                    b.observe(&verified);
                }
                let input = match (from, &*verified) {
                    (Endpoint::Replica(j), Message::Request(_)) => {
                        Input::Relayed(ReplicaId(j as u32), verified)
                    }
                    _ => Input::Message(verified),
                };
                self.step(r, input, false);
            }
            Endpoint::Client(c) => {
                let verified = match verdict {
                    Ok(v) => v.clone(),
                    Err(_) => {
                        self.rejected += 1;
                        return;
                    }
                };
                if let Message::Reply(reply) = verified.into_inner() {
                    // Replies are unsigned: the link names the sender.
                    if from != Endpoint::Replica(reply.replica.index()) {
                        self.rejected += 1;
                        self.log(|| {
                            format!("{from} -> c{c} reply naming {} refused", reply.replica)
                        });
                        return;
                    }
                    self.log(|| {
                        format!(
                            "{from} -> c{c} reply t{} view {} ro={} {}",
                            reply.request_id.0,
                            reply.view.0,
                            reply.read_only,
                            pbft_app::kv::KvResult::decode(&reply.result)
                                .map(|r| linearizability::format_result(&r))
                                .unwrap_or_else(|e| format!("undecodable: {e}"))
                        )
                    });
                    let actions =
                        self.clients[c]
                            .client
                            .on_reply(self.now, reply, &mut self.history);
                    self.client_actions(c, actions);
                }
            }
        }
    }

    /// Runs one input through replica `i`, then acts on its outputs.
    fn step(&mut self, i: usize, input: Input, tick: bool) {
        let now = Instant(self.nodes[i].local(self.now));
        let node = &mut self.nodes[i];
        match node.crash_countdown {
            Some(0) => {
                node.crash_countdown = None;
                node.crash_pending = !self.network.healed();
            }
            Some(k) => node.crash_countdown = Some(k - 1),
            None => {}
        }
        let Some(replica) = node.replica.as_mut() else {
            return;
        };
        let mut out = Vec::new();
        let result = catch_unwind(AssertUnwindSafe(|| replica.handle(now, input, &mut out)));
        if let Err(payload) = result {
            let message = panic_message(payload.as_ref());
            self.violations.push(format!(
                "panic: replica r{i} panicked at {}ms: {message}",
                self.now / MS
            ));
            self.nodes[i].replica = None;
            self.aborted = true;
            return;
        }
        if self.nodes[i].crash_pending && (!self.plan.crash_after_reply || answers_a_write(&out)) {
            return self.crash_in_step(i, out);
        }
        self.outputs(i, out, None);
        self.reschedule_timer(i, tick);
        self.check_rejoin();
    }

    /// In `laggard` runs, after the heal: notes when the laggard first has
    /// executed as far as every other running replica.
    fn check_rejoin(&mut self) {
        let Some(laggard) = self.plan.network.deaf else {
            return;
        };
        if self.rejoined_at.is_some() || !self.network.healed() {
            return;
        }
        let executed = |n: &Node| n.replica.as_ref().map(|r| r.status().last_executed);
        let Some(own) = executed(&self.nodes[laggard]) else {
            return;
        };
        let others = (0..self.n())
            .filter(|&j| j != laggard)
            .filter_map(|j| executed(&self.nodes[j]))
            .max();
        if others.is_some_and(|o| own >= o) {
            self.rejoined_at = Some(self.now);
            self.log(|| format!("r{laggard} caught up at {own}"));
        }
    }

    /// The highest view of the replicas other than the laggard.
    fn group_view(&self, laggard: usize) -> u64 {
        (0..self.n())
            .filter(|&j| j != laggard)
            .filter_map(|j| self.nodes[j].replica.as_ref())
            .map(|r| r.status().view.0)
            .max()
            .unwrap_or(0)
    }

    /// Crashes replica `i` part-way through acting on one step's outputs,
    /// at a point the node's driver can really stop at: the driver writes
    /// all of a step's records with one fsync, then sends. So either a
    /// prefix of the records survives (a torn group write) and nothing was
    /// sent but, where replies wait for no record
    /// ([`pbft_core::Config::replies_wait_for_records`]), some of the step's
    /// replies; or all of them are durable (the compaction that follows a
    /// checkpoint may not have happened) and a prefix of the sends left.
    fn crash_in_step(&mut self, i: usize, out: Vec<Output>) {
        let records = out
            .iter()
            .filter(|o| matches!(o, Output::Persist(_)))
            .count();
        if records > 0 && (self.plan.crash_after_reply || self.rng.gen_bool(0.4)) {
            let kept = self.rng.gen_range(0..records);
            self.votes_ahead_of_records(i, &out);
            if !self.config.replies_wait_for_records() {
                self.replies_ahead_of_records(i, &out);
            }
            let prefix: Vec<Record> = out
                .into_iter()
                .filter_map(|o| match o {
                    Output::Persist(r) => Some(r),
                    _ => None,
                })
                .take(kept)
                .collect();
            self.log(|| {
                format!("r{i} crashes in a group write: {kept} of {records} records durable")
            });
            self.torn_writes += 1;
            // A torn write never finished, so it never compacted either.
            let _ = self.nodes[i].append(&prefix, true);
            return self.crash(i);
        }
        let sends = out.iter().filter(|o| is_send(o)).count();
        let kept = self.rng.gen_range(0..=sends);
        let in_compaction = self.rng.gen_bool(0.3);
        self.log(|| {
            format!("r{i} crashes after its records are durable, {kept} of {sends} sends out (in compaction: {in_compaction})")
        });
        self.outputs(i, out, Some((kept, in_compaction)));
        self.crash(i);
    }

    /// Sends a random prefix of the PRE-PREPAREs and PREPAREs in `out`,
    /// replica `i`'s step whose records a crash is about to tear, that the
    /// node sends ahead of their records (votes ahead of their records, see
    /// [`pbft_core::Output`]): all of the step's, unless the step persists
    /// a record that fences votes, or the replica has no durable record yet
    /// (the simulator's earlier steps are durable). The certificate ledger
    /// learns the votes that left, so a restored replica that contradicts
    /// one is caught.
    fn votes_ahead_of_records(&mut self, i: usize, out: &[Output]) {
        let fenced = out
            .iter()
            .any(|o| matches!(o, Output::Persist(r) if r.fences_votes()));
        if fenced || self.nodes[i].storage.is_empty() {
            return;
        }
        let votes: Vec<Output> = out
            .iter()
            .filter(|o| matches!(o, Output::Broadcast(m) if m.may_precede_its_record()))
            .cloned()
            .collect();
        let sent = self.rng.gen_range(0..=votes.len());
        if sent == 0 {
            return;
        }
        self.log(|| format!("r{i} sent {sent} votes ahead of its records"));
        self.votes_ahead += sent as u64;
        self.outputs(i, votes.into_iter().take(sent).collect(), None);
    }

    /// Sends a random prefix of the replies in `out`, replica `i`'s step
    /// whose records a crash is about to tear, that the node sends at once
    /// ([`pbft_core::Config::replies_wait_for_records`]): those of a batch
    /// whose prepared certificate an earlier step persisted (the simulator's
    /// earlier steps are durable). The stale-read oracle's floor rises to
    /// the batch each reply answered, durable or not.
    fn replies_ahead_of_records(&mut self, i: usize, out: &[Output]) {
        let prepared_now = |seq: SeqNum| {
            out.iter().any(
                |o| matches!(o, Output::Persist(Record::Prepared(p)) if p.pre_prepare.seq == seq),
            )
        };
        let ready: Vec<(&Output, SeqNum, Digest)> = out
            .iter()
            .filter(|o| matches!(o, Output::Reply(..)))
            .zip(reply_batches(out))
            .filter_map(|(o, answered)| {
                let (seq, digest) = answered?;
                (!prepared_now(seq)).then_some((o, seq, digest))
            })
            .collect();
        if ready.is_empty() {
            return;
        }
        let sent = self.rng.gen_range(0..=ready.len());
        if sent == 0 {
            return;
        }
        let mut replies = Vec::with_capacity(sent);
        for (o, seq, digest) in ready.into_iter().take(sent) {
            let node = &mut self.nodes[i];
            node.replied_floor = node.replied_floor.max(seq.0);
            if matches!(o, Output::Reply(_, reply) if !reply.read_only) {
                self.check_reply_backed(i, seq, digest);
            }
            replies.push(o.clone());
        }
        self.log(|| format!("r{i} sent {sent} replies ahead of its records"));
        self.replies_ahead += sent as u64;
        self.outputs(i, replies, None);
    }

    fn reschedule_timer(&mut self, i: usize, after_tick: bool) {
        let now = self.now;
        let node = &mut self.nodes[i];
        let Some(replica) = node.replica.as_ref() else {
            return;
        };
        let mut next = replica.poll_timeout().map(|t| node.global(t.0));
        if after_tick {
            // A timer that is still due right after a tick would spin forever.
            next = next.map(|t| t.max(now + 1));
        }
        if next == node.timer_at {
            return;
        }
        node.timer_generation += 1;
        node.timer_at = next;
        let generation = node.timer_generation;
        if let Some(at) = next {
            self.schedule(
                at,
                Event::ReplicaTimer {
                    replica: i,
                    generation,
                },
            );
        }
    }

    /// Acts on one step's outputs as the node's driver does: first every
    /// record, appended together (group commit), then the sends in order.
    /// With `crash`, only the first `kept` sends leave, and the compaction
    /// after a checkpoint is skipped if `in_compaction`.
    fn outputs(&mut self, i: usize, out: Vec<Output>, crash: Option<(usize, bool)>) {
        let n = self.n();
        let honest = self.nodes[i].honest();
        let records: Vec<Record> = out
            .iter()
            .filter_map(|o| match o {
                Output::Persist(r) => Some(r.clone()),
                _ => None,
            })
            .collect();
        let compacted = self.nodes[i].append(&records, crash.is_some_and(|(_, c)| c));
        let fetches = out
            .iter()
            .any(|o| matches!(o, Output::Send(_, Message::FetchState(_))));
        if crash.is_none() && (compacted || fetches) {
            self.maybe_crash_soon(i);
        }
        if honest {
            self.check_certificates(i, &out);
        }
        let mut sends_left = crash.map_or(usize::MAX, |(kept, _)| kept);
        let mut outgoing = Vec::new();
        let mut answers = reply_batches(&out).into_iter();
        for output in out {
            if is_send(&output) {
                if sends_left == 0 {
                    continue;
                }
                sends_left -= 1;
            }
            match output {
                Output::Persist(_) => {}
                Output::Send(to, msg) => {
                    if to.index() < n && to.index() != i {
                        outgoing.push(Outgoing {
                            to: Dest::Replica(to.index()),
                            msg,
                            extra_delay: 0,
                        });
                    }
                }
                Output::Broadcast(msg) => {
                    if honest {
                        // Encode once for every destination.
                        let frame = Frame::new(&msg);
                        self.log(|| format!("r{i} broadcasts {}", describe(&msg)));
                        for j in (0..n).filter(|&j| j != i) {
                            self.transmit(
                                Endpoint::Replica(i),
                                Endpoint::Replica(j),
                                Rc::clone(&frame),
                                0,
                            );
                        }
                    } else {
                        for j in (0..n).filter(|&j| j != i) {
                            outgoing.push(Outgoing {
                                to: Dest::Replica(j),
                                msg: msg.clone(),
                                extra_delay: 0,
                            });
                        }
                    }
                }
                Output::Reply(client, reply) => {
                    if honest && reply.read_only {
                        self.check_read_only_answer(i);
                    }
                    if let (true, false, Some(Some((seq, digest)))) =
                        (honest, reply.read_only, answers.next())
                    {
                        self.check_reply_backed(i, seq, digest);
                    }
                    outgoing.push(Outgoing {
                        to: Dest::Client(client),
                        msg: Message::Reply(reply),
                        extra_delay: 0,
                    })
                }
                Output::Executed {
                    seq,
                    view,
                    digest,
                    requests,
                    ..
                } => {
                    self.log(|| {
                        format!("r{i} executed {seq} {view} {digest} ({requests} requests)")
                    });
                    self.trace.add(&[4, i as u64, seq.0]);
                    self.trace.add_bytes(&digest.0);
                    if honest {
                        self.agreement.executed(i, seq.0, digest);
                    }
                }
                Output::Checkpointed { seq, digest } => {
                    self.log(|| format!("r{i} checkpoint {seq} {digest}"));
                    if honest {
                        self.agreement.checkpointed(i, seq.0, digest);
                    }
                }
                Output::StateTransferred {
                    seq,
                    digest,
                    pages,
                    fetched,
                } => {
                    self.log(|| {
                        format!("r{i} state transfer to {seq} {digest} ({fetched} of {pages} pages fetched)")
                    });
                    self.state_transfers += 1;
                    if pages > 1 {
                        self.chunked_transfers += 1;
                    }
                    self.pages_fetched += fetched as u64;
                    if honest {
                        self.agreement.state_transferred(i, seq.0, digest);
                    }
                }
                Output::Status(..) => {} // no simulated client asks for status
                Output::EnteredView(view) => {
                    self.log(|| format!("r{i} entered {view}"));
                    self.trace.add(&[5, i as u64, view.0]);
                    if honest {
                        self.entered_views += 1;
                        if view.0 > self.max_view {
                            self.view_rises.push((self.now, view.0));
                        }
                        self.max_view = self.max_view.max(view.0);
                    }
                }
            }
        }
        if let Some(b) = self.nodes[i].byzantine.as_mut() {
            outgoing = b.transform(&mut self.rng, outgoing);
            for o in &outgoing {
                self.certificates.signed(i, &o.msg);
            }
        }
        for o in outgoing {
            let to = match o.to {
                Dest::Replica(j) => Endpoint::Replica(j),
                Dest::Client(c) => match self.client_index.get(&c) {
                    Some(&c) => Endpoint::Client(c),
                    None => continue,
                },
            };
            if !matches!(o.msg, Message::Reply(_)) {
                self.log(|| format!("r{i} -> {to} {}", describe(&o.msg)));
            }
            let frame = Frame::new(&o.msg);
            self.transmit(Endpoint::Replica(i), to, frame, o.extra_delay);
        }
    }

    /// Honest replica `i`'s step produced `out`: first what it signed goes
    /// into the ledger, then every certificate it acted on is checked
    /// against it (see [`Certificates`]).
    fn check_certificates(&mut self, i: usize, out: &[Output]) {
        for o in out {
            if let Output::Send(_, m) | Output::Broadcast(m) = o {
                self.certificates.signed(i, m);
            }
        }
        for o in out {
            match o {
                Output::Send(_, m) | Output::Broadcast(m) => {
                    self.certificates.emitted_by_honest(i, m);
                }
                Output::Executed { seq, digest, .. } => {
                    self.certificates.executed(i, *seq, *digest);
                }
                Output::Persist(Record::Stable(proof)) => self.certificates.stable(i, proof),
                Output::Persist(Record::NewView(nv)) => self.certificates.new_view(i, nv),
                Output::EnteredView(view) => self.certificates.entered_view(i, *view),
                _ => {}
            }
        }
    }

    /// In plans with crashes, a replica that just compacted its log or
    /// started a state transfer often crashes a few steps later: the moments
    /// where what it persisted and what it sent are most likely to part.
    fn maybe_crash_soon(&mut self, i: usize) {
        if !self.plan.crashes || self.network.healed() || !self.nodes[i].honest() {
            return;
        }
        let due = self
            .nodes
            .iter()
            .filter(|n| n.crash_pending || n.crash_countdown.is_some())
            .count();
        if self.crashed_count() + due >= self.plan.crash_budget || !self.rng.gen_bool(0.3) {
            return;
        }
        let steps = self.rng.gen_range(0..=30);
        self.log(|| format!("r{i} will crash in {steps} steps"));
        self.nodes[i].crash_countdown = Some(steps);
        let back = (self.now + self.rng.gen_range(50 * MS..=800 * MS)).min(self.plan.heal_at);
        self.schedule(back, Event::Restart { replica: i });
    }

    /// The in-run oracle for ordered replies: when honest replica `i`'s
    /// reply for the batch it just executed at `seq` leaves, at least f+1
    /// honest replicas (it included) hold that batch durably: a persisted
    /// prepared certificate for (`seq`, `digest`), or a checkpoint at or
    /// above `seq`. Then no view change can drop the batch, whatever the
    /// Byzantine replicas hide and whichever honest replicas crash; a reply
    /// that leaves earlier (ahead of its own certificate) is one the client
    /// may count towards f+1 for a batch the next view replaces.
    fn check_reply_backed(&mut self, i: usize, seq: SeqNum, digest: Digest) {
        let holds = |storage: &[Record]| {
            storage.iter().rev().any(|r| match r {
                Record::Prepared(p) => p.pre_prepare.seq == seq && p.pre_prepare.digest == digest,
                Record::Stable(proof) | Record::Checkpoint(proof, _) => proof.seq >= seq,
                Record::Snapshot(at, _) => *at >= seq,
                _ => false,
            })
        };
        let backing = self
            .nodes
            .iter()
            .filter(|n| n.honest() && holds(&n.storage))
            .count();
        if backing < self.config.weak_quorum() {
            self.violations.push(format!(
                "unbacked reply: r{i} answered the batch at {seq} ({digest}) at {}ms, when only {backing} of the honest replicas held it durably (f+1 must, or a view change may drop it)",
                self.now / MS,
            ));
        }
    }

    /// The in-run oracle for read-only answers: an honest replica never
    /// answers from a state older than one it may already have replied from.
    fn check_read_only_answer(&mut self, i: usize) {
        let node = &self.nodes[i];
        let Some(replica) = node.replica.as_ref() else {
            return;
        };
        let executed = replica.status().last_executed.0;
        if executed < node.replied_floor {
            self.violations.push(format!(
                "stale read: r{i} answered a read-only request at {}ms from the state after seq {executed}, but it may have replied from the state after seq {} before (a persisted Executed record, or a reply sent ahead of its records)",
                self.now / MS,
                node.replied_floor
            ));
        }
    }

    fn partition_tick(&mut self) {
        if self.network.healed() {
            return;
        }
        let n = self.n();
        let roll = self.rng.gen_range(0..100);
        let mut groups = vec![0u8; n];
        let description;
        if roll < 35 {
            description = "partition: none".to_string();
        } else if roll < 75 {
            let victim = if self.plan.target_primary && self.rng.gen_bool(0.7) {
                self.current_primary()
            } else {
                self.rng.gen_range(0..n)
            };
            groups[victim] = 1;
            description = format!("partition: r{victim} isolated");
        } else {
            for g in groups.iter_mut() {
                *g = self.rng.gen_range(0..2);
            }
            description = format!("partition: split {groups:?} (clients with group 0)");
        }
        self.log(|| description);
        self.trace.add(&[6, self.now]);
        self.network.partition(groups, 0);
        let next = self.now + self.rng.gen_range(100 * MS..=600 * MS);
        if next < self.plan.heal_at {
            self.schedule(next, Event::PartitionTick);
        }
    }

    fn crash_tick(&mut self) {
        if self.network.healed() {
            return;
        }
        let pending = self
            .nodes
            .iter()
            .filter(|n| n.crash_pending || n.crash_countdown.is_some())
            .count();
        if self.crashed_count() + pending < self.plan.crash_budget {
            let candidates: Vec<usize> = (0..self.n())
                .filter(|&i| {
                    let node = &self.nodes[i];
                    node.honest()
                        && node.replica.is_some()
                        && !node.crash_pending
                        && node.crash_countdown.is_none()
                })
                .collect();
            // Replicas fetching state are the interesting ones: what they
            // accepted above their persisted window must survive.
            let fetching: Vec<usize> = candidates
                .iter()
                .copied()
                .filter(|&i| {
                    self.nodes[i]
                        .replica
                        .as_ref()
                        .is_some_and(|r| r.is_fetching_state())
                })
                .collect();
            let primary = self.current_primary();
            let victim = if !fetching.is_empty() && self.rng.gen_bool(0.7) {
                Some(fetching[self.rng.gen_range(0..fetching.len())])
            } else if candidates.contains(&primary) && self.rng.gen_bool(0.5) {
                Some(primary)
            } else if candidates.is_empty() {
                None
            } else {
                Some(candidates[self.rng.gen_range(0..candidates.len())])
            };
            if let Some(v) = victim {
                // The crash comes inside the victim's next step, or a little
                // later between steps if it takes none.
                self.nodes[v].crash_pending = true;
                let fallback = self.now
                    + if self.plan.crash_after_reply {
                        // Leaves time for a step that answers a write.
                        1_000 * MS
                    } else {
                        self.rng.gen_range(1..=30 * MS)
                    };
                self.schedule(fallback, Event::CrashNow { replica: v });
                let back =
                    (self.now + self.rng.gen_range(50 * MS..=800 * MS)).min(self.plan.heal_at);
                self.schedule(back, Event::Restart { replica: v });
            }
        }
        let next = self.now + self.rng.gen_range(100 * MS..=500 * MS);
        if next < self.plan.heal_at {
            self.schedule(next, Event::CrashTick);
        }
    }

    fn crash(&mut self, i: usize) {
        self.log(|| {
            format!(
                "crash r{i} ({} records persisted)",
                self.nodes[i].storage.len()
            )
        });
        self.trace.add(&[7, i as u64, self.now]);
        let node = &mut self.nodes[i];
        node.replica = None;
        node.timer_generation += 1;
        node.timer_at = None;
        node.crash_pending = false;
        node.crashes += 1;
        self.crashes += 1;
    }

    fn restart(&mut self, i: usize) {
        if self.nodes[i].replica.is_some() || self.aborted {
            return;
        }
        self.log(|| format!("restart r{i} from {} records", self.nodes[i].storage.len()));
        self.trace.add(&[8, i as u64, self.now]);
        let node = &self.nodes[i];
        let (config, signer, now) = (
            self.config.clone(),
            node.signer.clone(),
            Instant(node.local(self.now)),
        );
        let storage = &node.storage;
        let page_target = self.page_target;
        let result = catch_unwind(AssertUnwindSafe(|| {
            Replica::restore(
                config,
                ReplicaId(i as u32),
                signer,
                Box::new(KvStore::with_page_target(page_target)),
                storage,
                now,
            )
        }));
        match result {
            Ok(Ok(mut replica)) => {
                replica.set_invariant_checks(true);
                self.nodes[i].replica = Some(replica);
                self.agreement.restarted(i);
                self.reschedule_timer(i, false);
            }
            Ok(Err(e)) => {
                self.violations
                    .push(format!("restore: replica r{i} cannot restart: {e}"));
                self.aborted = true;
            }
            Err(payload) => {
                self.violations.push(format!(
                    "panic: replica r{i} panicked in restore at {}ms: {}",
                    self.now / MS,
                    panic_message(payload.as_ref())
                ));
                self.aborted = true;
            }
        }
    }

    fn finish(mut self, hard_end: u64) -> RunReport {
        let end = self.now;
        let mut violations = std::mem::take(&mut self.violations);
        violations.extend(self.agreement.violations().iter().cloned());
        violations.extend(self.certificates.violations().iter().cloned());
        violations.extend(linearizability::check(&self.history));
        if !self.aborted {
            // A write the replicas answered as expired ended with its outcome
            // unknown: open for linearizability, finished for liveness.
            let mut finished = self.history.clone();
            for (index, at) in self.clients.iter().flat_map(|c| &c.client.abandoned) {
                if let Some(op) = finished.ops.get_mut(*index) {
                    op.response = Some(pbft_history::linearizability::Response {
                        at: *at,
                        result: Err("outcome unknown (expired)".into()),
                    });
                }
            }
            let live = liveness::check(&LivenessInput {
                history: &finished,
                not_issued: self.clients.iter().map(|c| c.client.ops_left).collect(),
                heal_at: self.plan.stable_at(),
                end,
                bound: self.plan.liveness_bound,
            });
            if !live.is_empty() {
                violations.extend(live);
                violations.push(format!(
                    "liveness: replica states at the end ({}ms, hard end {}ms): {}",
                    end / MS,
                    hard_end / MS,
                    self.replica_summary()
                ));
            }
        }
        if self.plan.scenario == Scenario::ByzSlowPrimary && !self.aborted {
            violations.extend(self.slow_views(end));
        }
        if let (Some(laggard), false) = (self.plan.network.deaf, self.aborted) {
            let heal = self.plan.stable_at();
            match self.rejoined_at {
                Some(at) if at <= heal + REJOIN_BOUND => {}
                Some(at) => violations.push(format!(
                    "rejoin: the laggard r{laggard} caught up {}ms after the heal (bound {}ms)",
                    (at - heal) / MS,
                    REJOIN_BOUND / MS
                )),
                None => violations.push(format!(
                    "rejoin: the laggard r{laggard} never caught up after the heal: {}",
                    self.replica_summary()
                )),
            }
            let view = self.group_view(laggard);
            if self.view_at_heal.is_some_and(|v| view > v) {
                violations.push(format!(
                    "rejoin: the group changed view after the heal (to v{view}) to let the laggard r{laggard} in"
                ));
            }
        }
        self.trace.add(&[9, end, self.history.completed() as u64]);
        RunReport {
            scenario: self.plan.scenario,
            f: self.plan.f,
            seed: self.seed,
            violations,
            completed: self.history.completed(),
            requests: self.history.ops.len(),
            view_changes: self.max_view,
            entered_views: self.entered_views,
            max_executed: self.agreement.max_executed(),
            crashes: self.crashes,
            torn_writes: self.torn_writes,
            replies_ahead: self.replies_ahead,
            votes_ahead: self.votes_ahead,
            state_transfers: self.state_transfers,
            chunked_transfers: self.chunked_transfers,
            pages_fetched: self.pages_fetched,
            withheld_results: self.clients.iter().map(|c| c.client.withheld as u64).sum(),
            withheld_replies: self.clients.iter().map(|c| c.client.withheld_replies).sum(),
            expired_requests: self.clients.iter().map(|c| c.client.expired as u64).sum(),
            censored_requests: self.censored_requests,
            rejoin_us: self
                .rejoined_at
                .map(|at| at.saturating_sub(self.plan.stable_at())),
            events: self.events,
            messages: self.messages,
            rejected: self.rejected,
            malformed: self.malformed,
            end_time_us: end,
            trace_hash: self.trace.finish(),
            completions_us: {
                let mut at: Vec<u64> = self
                    .history
                    .ops
                    .iter()
                    .filter_map(|o| o.response.as_ref().map(|r| r.at))
                    .collect();
                at.sort_unstable();
                at
            },
            honest_primary_from_us: self.honest_primary_from(),
            plan: self.plan,
        }
    }

    /// A view led by a slow primary that lasted longer than
    /// [`SLOW_VIEW_BOUND`]: one per such view. It ends when an honest
    /// replica enters a later one (or the run ends).
    fn slow_views(&self, end: u64) -> Vec<String> {
        let slow = |view: u64| {
            let primary = self.config.primary(pbft_core::View(view)).index();
            self.nodes[primary]
                .byzantine
                .as_ref()
                .is_some_and(|b| b.behavior == Behavior::SlowPrimary)
        };
        let mut starts = vec![(0, 0)];
        starts.extend(self.view_rises.iter().copied());
        let mut violations = Vec::new();
        for (k, &(from, view)) in starts.iter().enumerate() {
            let until = starts.get(k + 1).map_or(end, |&(at, _)| at);
            if slow(view) && until - from > SLOW_VIEW_BOUND {
                violations.push(format!(
                    "replacement: the slow primary of view {view} kept it {}ms (from {}ms, bound {}ms)",
                    (until - from) / MS,
                    from / MS,
                    SLOW_VIEW_BOUND / MS
                ));
            }
        }
        violations
    }

    /// When the group entered the first view after which every primary
    /// was honest (see [`RunReport::honest_primary_from_us`]).
    fn honest_primary_from(&self) -> Option<u64> {
        let faulty = |view: u64| {
            let primary = self.config.primary(pbft_core::View(view)).index();
            !self.nodes[primary].honest()
        };
        let mut from = (!faulty(0)).then_some(0);
        for &(at, view) in &self.view_rises {
            from = match (faulty(view), from) {
                (true, _) => None,
                (false, None) => Some(at),
                (false, kept) => kept,
            };
        }
        from
    }

    fn replica_summary(&self) -> String {
        let mut parts = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let tag = match &node.byzantine {
                Some(b) => format!("byz:{}", b.behavior),
                None => "honest".to_string(),
            };
            match &node.replica {
                Some(r) => {
                    let s = r.status();
                    parts.push(format!(
                        "r{i}[{tag} {} active={} exec={} stable={} pending={} timer={:?} dropped={:?}]",
                        s.view,
                        s.active,
                        s.last_executed,
                        s.stable_checkpoint,
                        s.pending_requests,
                        r.poll_timeout().map(|t| t.0 / MS),
                        r.dropped()
                    ));
                }
                None => parts.push(format!("r{i}[{tag} down]")),
            }
        }
        parts.join("; ")
    }
}

/// Whether a step's outputs answer a write (an ordered request's reply).
fn answers_a_write(out: &[Output]) -> bool {
    out.iter()
        .any(|o| matches!(o, Output::Reply(_, r) if !r.read_only))
}

/// For each reply in `out`, in order, the batch it answers if it is a fresh
/// answer: the replies of an execution come after its `Executed` record and
/// before its `Output::Executed` (which names the digest). A reply repeated
/// from the client table answers no batch of this step.
fn reply_batches(out: &[Output]) -> Vec<Option<(SeqNum, Digest)>> {
    let digest_of = |seq: SeqNum| {
        out.iter().find_map(|o| match o {
            Output::Executed { seq: s, digest, .. } if *s == seq => Some(*digest),
            _ => None,
        })
    };
    let mut executing = None;
    let mut answers = Vec::new();
    for o in out {
        match o {
            Output::Persist(Record::Executed(seq)) => executing = Some(*seq),
            Output::Executed { .. } => executing = None,
            Output::Reply(..) => {
                answers.push(executing.and_then(|seq| Some((seq, digest_of(seq)?))));
            }
            _ => {}
        }
    }
    answers
}

/// Whether an output leaves the node (and so may be cut by a crash).
fn is_send(output: &Output) -> bool {
    matches!(
        output,
        Output::Send(..) | Output::Broadcast(_) | Output::Reply(..) | Output::Status(..)
    )
}

fn endpoint_code(e: Endpoint) -> u64 {
    match e {
        Endpoint::Replica(i) => i as u64,
        Endpoint::Client(c) => 1000 + c as u64,
    }
}

/// Runs one scenario; see [`crate::run_with`].
pub(crate) fn run(options: &RunOptions) -> RunReport {
    Sim::new(options).run()
}
