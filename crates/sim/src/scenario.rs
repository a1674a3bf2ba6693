//! Named scenarios: which faults a run injects.
//!
//! A [`Scenario`] names a family of fault plans; the run's seed picks the
//! concrete plan (network parameters, which replicas are Byzantine, when
//! partitions and crashes happen). Every plan keeps the number of faulty
//! replicas (Byzantine plus currently crashed) at or below f, and every
//! network fault stops at the plan's heal time.

use crate::byzantine::Behavior;
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::fmt;
use std::str::FromStr;

/// A family of fault plans.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scenario {
    /// No faults: a reliable network with small delays.
    Normal,
    /// Message loss, duplication and reordering until the heal time.
    Lossy,
    /// Partitions that come and go (an isolated replica, a split cluster).
    Partition,
    /// Crashes and restarts of honest replicas, the primary included.
    Crash,
    /// Crashes of honest replicas in the step that answers a write, tearing
    /// its group write, in a cluster with the read-only fast path: a
    /// restarted replica must never answer a read from a state older than
    /// one it had answered from.
    CrashRead,
    /// f replicas that send nothing.
    ByzSilent,
    /// Byzantine primaries that send different batches for one (view, seq).
    ByzEquivocate,
    /// Byzantine replicas that send conflicting prepares/commits and lying replies.
    ByzConflict,
    /// Byzantine replicas whose signatures are corrupted.
    ByzBadSig,
    /// Byzantine replicas that replay old messages.
    ByzReplay,
    /// Byzantine replicas that send wrong checkpoint digests and corrupt snapshots.
    ByzCheckpoint,
    /// Byzantine replicas that forge view-change and new-view proofs.
    ByzViewChange,
    /// A Byzantine primary that delays its pre-prepares to just under the timeout.
    ByzSlowPrimary,
    /// Byzantine replicas that help one honest victim, whose messages reach
    /// no other replica, commit a batch alone, then hide it in the view change.
    ByzCollude,
    /// f Byzantine replicas that hide prepared certificates in view changes,
    /// beside honest replicas that crash (any number of them at once, in
    /// the middle of a step: torn group writes, crashes between the write
    /// and the sends, crashes during compaction) and restart from what they
    /// persisted. Safety must hold throughout; liveness once all are back.
    CrashByz,
    /// Byzantine primaries that never order one client's requests while
    /// the other clients keep them busy.
    ByzCensor,
    /// Byzantine replicas that impersonate honest ones, splice signatures
    /// onto altered messages and alter client requests inside batches.
    ByzForge,
    /// Byzantine replicas that flood far-future messages, stale view
    /// changes, status and fetch requests, and requests from made-up clients.
    ByzFlood,
    /// One honest backup hears no other replica until the heal: it lags,
    /// and its timer fires alone. After the heal the cluster is idle; the
    /// laggard must catch up through status and retransmission alone,
    /// without a view change of the group, within a few timeouts.
    Laggard,
    /// A random mix of the above within the fault budget (collusion aside:
    /// it needs its victim's links cut, which mixed plans do not draw).
    Mixed,
    /// Mixed faults over long runs with the node's defaults: checkpoint
    /// interval 64 and window 128, more clients and operations, so that
    /// windows fill and turn over, and checkpoints, garbage collection and
    /// state transfers happen many times per run.
    Long,
}

impl Scenario {
    /// Every scenario, in table order.
    pub const ALL: [Scenario; 21] = [
        Scenario::Normal,
        Scenario::Lossy,
        Scenario::Partition,
        Scenario::Crash,
        Scenario::CrashRead,
        Scenario::ByzSilent,
        Scenario::ByzEquivocate,
        Scenario::ByzConflict,
        Scenario::ByzBadSig,
        Scenario::ByzReplay,
        Scenario::ByzCheckpoint,
        Scenario::ByzViewChange,
        Scenario::ByzSlowPrimary,
        Scenario::ByzCollude,
        Scenario::CrashByz,
        Scenario::ByzCensor,
        Scenario::ByzForge,
        Scenario::ByzFlood,
        Scenario::Laggard,
        Scenario::Mixed,
        Scenario::Long,
    ];

    /// The scenario's command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Normal => "normal",
            Scenario::Lossy => "lossy",
            Scenario::Partition => "partition",
            Scenario::Crash => "crash",
            Scenario::CrashRead => "crash-read",
            Scenario::ByzSilent => "byz-silent",
            Scenario::ByzEquivocate => "byz-equivocate",
            Scenario::ByzConflict => "byz-conflict",
            Scenario::ByzBadSig => "byz-badsig",
            Scenario::ByzReplay => "byz-replay",
            Scenario::ByzCheckpoint => "byz-checkpoint",
            Scenario::ByzViewChange => "byz-viewchange",
            Scenario::ByzSlowPrimary => "byz-slow-primary",
            Scenario::ByzCollude => "byz-collude",
            Scenario::CrashByz => "crash-byz",
            Scenario::ByzCensor => "byz-censor",
            Scenario::ByzForge => "byz-forge",
            Scenario::ByzFlood => "byz-flood",
            Scenario::Laggard => "laggard",
            Scenario::Mixed => "mixed",
            Scenario::Long => "long",
        }
    }

    /// The Byzantine behaviour this scenario gives its faulty replicas, if any.
    fn byzantine(self) -> Option<Behavior> {
        Some(match self {
            Scenario::ByzSilent => Behavior::Silent,
            Scenario::ByzEquivocate => Behavior::Equivocate,
            Scenario::ByzConflict => Behavior::Conflict,
            Scenario::ByzBadSig => Behavior::BadSig,
            Scenario::ByzReplay => Behavior::Replay,
            Scenario::ByzCheckpoint => Behavior::Checkpoint,
            Scenario::ByzViewChange => Behavior::ViewChange,
            Scenario::ByzSlowPrimary => Behavior::SlowPrimary,
            Scenario::ByzCollude => Behavior::Collude,
            Scenario::CrashByz => Behavior::Forget,
            Scenario::ByzCensor => Behavior::Censor,
            Scenario::ByzForge => Behavior::Forge,
            Scenario::ByzFlood => Behavior::Flood,
            _ => return None,
        })
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A scenario name that does not exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownScenario(pub String);

impl fmt::Display for UnknownScenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
        write!(
            f,
            "unknown scenario {:?} (known: {})",
            self.0,
            names.join(", ")
        )
    }
}

impl std::error::Error for UnknownScenario {}

impl FromStr for Scenario {
    type Err = UnknownScenario;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scenario::ALL
            .iter()
            .copied()
            .find(|sc| sc.name() == s)
            .ok_or_else(|| UnknownScenario(s.to_string()))
    }
}

/// Network parameters while faults are active (before the heal time).
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkPlan {
    /// Smallest one-way delay, microseconds.
    pub delay_min: u64,
    /// Largest one-way delay, microseconds (random delays reorder messages).
    pub delay_max: u64,
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Whether partitions come and go.
    pub partitions: bool,
    /// A replica whose messages to the other replicas are all lost (a
    /// one-way link failure: it still hears them, and its replies still
    /// reach the clients). Colluding Byzantine replicas help it ahead of
    /// the rest.
    pub muted: Option<usize>,
    /// A replica that hears no other replica (it still hears the clients):
    /// it falls behind and its timer fires alone, stranding it in a view
    /// of its own.
    pub deaf: Option<usize>,
    /// The probability that a client's message is lost (so clients time
    /// out and broadcast their requests to every replica).
    pub client_loss: f64,
    /// After the heal: the probability that a message is still lost.
    pub residual_loss: f64,
    /// After the heal and until this time (microseconds), delays are drawn
    /// from `[slow_delay / 2, slow_delay]`: longer than the view-change
    /// timeout base, so only its doubling lets a view settle.
    pub slow_until: u64,
    /// See `slow_until`, microseconds.
    pub slow_delay: u64,
}

/// The concrete fault plan of one run, drawn from the seed.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The scenario.
    pub scenario: Scenario,
    /// Faults tolerated; n = 3f+1.
    pub f: usize,
    /// The network before the heal time.
    pub network: NetworkPlan,
    /// When every network fault stops (and crashed replicas restart), microseconds.
    pub heal_at: u64,
    /// Byzantine replicas and their behaviour.
    pub byzantine: Vec<(usize, Behavior)>,
    /// Whether honest replicas crash and restart before the heal time.
    pub crashes: bool,
    /// Most honest replicas down at once. Within the fault budget
    /// (Byzantine + down <= f) in most scenarios; any number in `crash-byz`,
    /// where only safety is promised until the heal restarts them all.
    pub crash_budget: usize,
    /// Each replica's clock: offset (microseconds) and drift (parts per
    /// million, positive runs fast), so timers do not fire in lockstep.
    pub clocks: Vec<(u64, i64)>,
    /// The longest an operation may take once the network is stable
    /// (after the heal and any slow period), microseconds.
    pub liveness_bound: u64,
    /// Whether client c0 is the one a censoring primary never serves.
    pub censored: bool,
    /// Partitions isolate the current primary more often (to force view changes).
    pub target_primary: bool,
    /// Simulated clients.
    pub clients: usize,
    /// Operations per client.
    pub ops_per_client: usize,
    /// Longest pause of a client between two operations, microseconds.
    pub think_max: u64,
    /// Probability that a client tries a `Get` through the read-only fast path.
    pub read_only: f64,
    /// A crash due at a replica waits for its first step that answers a
    /// write, and tears that step's group write.
    pub crash_after_reply: bool,
    /// Checkpoint interval K (log window is 2K).
    pub checkpoint_interval: u64,
    /// Largest batch.
    pub batch_size_max: usize,
    /// Batch delay, microseconds.
    pub batch_delay: u64,
    /// Most un-executed instances the primary keeps in flight.
    pub in_flight_max: u64,
    /// Most operation bytes per batch.
    pub batch_bytes_max: usize,
}

/// Milliseconds to microseconds.
pub(crate) const MS: u64 = 1_000;
/// The replicas' view-change timeout base, microseconds.
pub(crate) const TIMEOUT_BASE: u64 = 100 * MS;
/// How long an operation may take once the network is stable, by default:
/// a small multiple of the view-change timeout. A client's retransmission
/// timeout grows to 32 base timeouts while faults last, so one more of
/// those, a view change or two with doubled timeouts, and the operation
/// itself fit well inside.
pub(crate) const LIVENESS_BOUND: u64 = 60 * TIMEOUT_BASE;

impl Plan {
    /// Draws the plan of `scenario` for `f` from `rng`.
    pub fn draw(scenario: Scenario, f: usize, rng: &mut ChaCha8Rng) -> Plan {
        let n = 3 * f + 1;
        let mut plan = Plan {
            scenario,
            f,
            network: NetworkPlan {
                delay_min: MS,
                delay_max: rng.gen_range(2..=8) * MS,
                loss: 0.0,
                duplicate: 0.0,
                partitions: false,
                muted: None,
                deaf: None,
                client_loss: 0.0,
                residual_loss: 0.0,
                slow_until: 0,
                slow_delay: 0,
            },
            heal_at: rng.gen_range(1_500..=3_000) * MS,
            byzantine: Vec::new(),
            crashes: false,
            crash_budget: 0,
            clocks: Vec::new(),
            liveness_bound: LIVENESS_BOUND,
            censored: false,
            target_primary: false,
            clients: rng.gen_range(2..=4),
            ops_per_client: rng.gen_range(8..=14),
            think_max: rng.gen_range(100..=300) * MS,
            read_only: if rng.gen_bool(0.5) { 0.5 } else { 0.0 },
            crash_after_reply: false,
            checkpoint_interval: rng.gen_range(4..=8),
            batch_size_max: rng.gen_range(1..=4),
            batch_delay: if rng.gen_bool(0.5) {
                0
            } else {
                rng.gen_range(1..=5) * MS
            },
            in_flight_max: 2,
            batch_bytes_max: 64 * 1024,
        };
        // Batching knobs come from a side stream of the same seed, so that
        // adding them left every other draw (and so every pinned seed's
        // plan) as it was.
        let mut side = ChaCha8Rng::from_seed(rng.get_seed());
        side.set_stream(0xba7c);
        plan.in_flight_max = side.gen_range(1..=4);
        if side.gen_bool(0.3) {
            // Small enough that operations split batches.
            plan.batch_bytes_max = side.gen_range(16..=64);
        }
        let lossy = |plan: &mut Plan, rng: &mut ChaCha8Rng| {
            plan.network.delay_max = rng.gen_range(10..=40) * MS;
            plan.network.loss = rng.gen_range(0.02..0.2);
            plan.network.duplicate = rng.gen_range(0.02..0.2);
        };
        // Clocks: offsets up to 10 s, drift up to 5% either way.
        plan.clocks = (0..n)
            .map(|_| {
                (
                    rng.gen_range(0..=10_000) * MS,
                    rng.gen_range(-50_000..=50_000),
                )
            })
            .collect();
        // After the heal: sometimes a little loss, sometimes a slow spell.
        let after_heal = |plan: &mut Plan, rng: &mut ChaCha8Rng| {
            if rng.gen_bool(0.3) {
                plan.network.residual_loss = 0.01;
            }
            if rng.gen_bool(0.25) {
                plan.network.slow_delay = rng.gen_range(2..=3) * TIMEOUT_BASE;
                plan.network.slow_until = plan.heal_at + rng.gen_range(500..=2_000) * MS;
            }
        };
        // Up to f Byzantine replicas, each with a behaviour drawn from the
        // mixed set; crashes take the rest of the fault budget.
        let mixed_byzantine = |plan: &mut Plan, rng: &mut ChaCha8Rng| {
            let b = rng.gen_range(0..=f);
            let mut ids: Vec<usize> = (0..n).collect();
            for _ in 0..b {
                let i = ids.remove(rng.gen_range(0..ids.len()));
                let behavior = Behavior::MIXED[rng.gen_range(0..Behavior::MIXED.len())];
                plan.censored |= behavior == Behavior::Censor;
                plan.byzantine.push((i, behavior));
            }
            plan.byzantine.sort_by_key(|(i, _)| *i);
            plan.crash_budget = f - b;
        };
        match scenario {
            Scenario::Normal => {
                plan.heal_at = 0;
                plan.think_max = rng.gen_range(0..=50) * MS;
            }
            Scenario::Lossy => {
                lossy(&mut plan, rng);
                after_heal(&mut plan, rng);
            }
            Scenario::Partition => {
                plan.network.partitions = true;
                plan.target_primary = rng.gen_bool(0.5);
                after_heal(&mut plan, rng);
            }
            Scenario::Crash => {
                plan.crashes = true;
                plan.crash_budget = f;
                if rng.gen_bool(0.3) {
                    lossy(&mut plan, rng);
                }
                after_heal(&mut plan, rng);
            }
            Scenario::CrashRead => {
                plan.crashes = true;
                plan.crash_after_reply = true;
                if rng.gen_bool(0.5) {
                    // The read-only fast path: replies wait for every
                    // record before them.
                    plan.read_only = 0.5;
                    plan.crash_budget = f;
                } else {
                    // Ordered: a reply waits only for its own batch's
                    // prepared certificate, beside f replicas that hide
                    // theirs in view changes and answer clients as usual.
                    plan.read_only = 0.0;
                    plan.byzantine = (1..=f).map(|i| (i, Behavior::Forget)).collect();
                    plan.crash_budget = n - f;
                    plan.network.partitions = true;
                    plan.target_primary = rng.gen_bool(0.5);
                }
                after_heal(&mut plan, rng);
            }
            Scenario::CrashByz => {
                let b = if rng.gen_bool(0.75) {
                    f
                } else {
                    rng.gen_range(1..=f)
                };
                // New primaries of the first view changes, so that a forgetful
                // replica often picks the NEW-VIEW's proofs.
                plan.byzantine = (1..=b).map(|i| (i, Behavior::Forget)).collect();
                plan.crashes = true;
                plan.crash_budget = n - b;
                // Laggards (cut off, then fetching state) are what restarts
                // can make forget.
                plan.network.partitions = true;
                plan.target_primary = rng.gen_bool(0.5);
                if rng.gen_bool(0.3) {
                    lossy(&mut plan, rng);
                }
                // Windows that fill and checkpoints that come often.
                plan.checkpoint_interval = rng.gen_range(2..=4);
                plan.clients = rng.gen_range(3..=5);
                plan.think_max = rng.gen_range(0..=50) * MS;
                after_heal(&mut plan, rng);
            }
            Scenario::ByzCensor => {
                // Censors lead the first views; the other clients keep them
                // busy for far longer than a view-change timeout, so a timer
                // that restarts on any execution never fires.
                let b = if rng.gen_bool(0.75) {
                    f
                } else {
                    rng.gen_range(1..=f)
                };
                plan.byzantine = (0..b).map(|i| (i, Behavior::Censor)).collect();
                plan.censored = true;
                plan.heal_at = 0;
                plan.clients = rng.gen_range(3..=5);
                plan.ops_per_client = rng.gen_range(100..=150);
                plan.think_max = rng.gen_range(0..=20) * MS;
                plan.liveness_bound = 40 * TIMEOUT_BASE;
            }
            Scenario::Laggard => {
                plan.network.deaf = Some(rng.gen_range(1..n));
                // Clients that time out broadcast their requests: the
                // laggard then holds requests it cannot execute, and its
                // timer fires alone.
                plan.network.client_loss = rng.gen_range(0.1..0.4);
                plan.think_max = rng.gen_range(0..=100) * MS;
                // Sometimes a little loss after the heal (never a slow
                // spell: the group must not need a view change).
                if rng.gen_bool(0.3) {
                    plan.network.residual_loss = 0.01;
                }
                plan.heal_at = rng.gen_range(2_500..=4_000) * MS;
            }
            Scenario::Long => {
                plan.read_only = 0.0;
                plan.checkpoint_interval = 64;
                plan.clients = rng.gen_range(5..=8);
                plan.ops_per_client = rng.gen_range(80..=120);
                plan.think_max = rng.gen_range(0..=10) * MS;
                if rng.gen_bool(0.5) {
                    lossy(&mut plan, rng);
                }
                plan.network.partitions = rng.gen_bool(0.7);
                plan.target_primary = rng.gen_bool(0.5);
                plan.crashes = rng.gen_bool(0.5);
                plan.heal_at = rng.gen_range(3_000..=6_000) * MS;
                after_heal(&mut plan, rng);
                mixed_byzantine(&mut plan, rng);
            }
            Scenario::Mixed => {
                // Mixed runs use the SDK's default client: f+1 confirmations
                // and ordered reads. Fast reads need every ordered result
                // confirmed by 2f+1, and a Byzantine replica together with an
                // honest one stranded in a higher view (which partitions and
                // crashes here can cause) leaves only 2f responsive replicas
                // while the cluster is idle: such clients wait forever.
                plan.read_only = 0.0;
                if rng.gen_bool(0.5) {
                    lossy(&mut plan, rng);
                }
                plan.network.partitions = rng.gen_bool(0.5);
                plan.target_primary = rng.gen_bool(0.5);
                plan.crashes = rng.gen_bool(0.5);
                after_heal(&mut plan, rng);
                mixed_byzantine(&mut plan, rng);
            }
            _ => {
                let behavior = scenario.byzantine().unwrap_or(Behavior::Silent);
                let b = if rng.gen_bool(0.75) {
                    f
                } else {
                    rng.gen_range(1..=f)
                };
                let ids: Vec<usize> = match behavior {
                    // Primaries of the first views, so faulty primaries follow each other.
                    Behavior::Equivocate | Behavior::SlowPrimary => (0..b).collect(),
                    // New primaries of the first view changes.
                    Behavior::ViewChange => (1..=b).collect(),
                    // Backups of the first view, beside a victim that is
                    // one too (as the first primary, nobody would hear its
                    // pre-prepares). Whoever is left is honest.
                    Behavior::Collude => {
                        let mut backups: Vec<usize> = (1..n).collect();
                        let victim = backups.remove(rng.gen_range(0..backups.len()));
                        plan.network.muted = Some(victim);
                        let mut chosen = Vec::new();
                        while chosen.len() < b {
                            chosen.push(backups.remove(rng.gen_range(0..backups.len())));
                        }
                        chosen.sort_unstable();
                        chosen
                    }
                    _ => {
                        let mut all: Vec<usize> = (0..n).collect();
                        let mut chosen = Vec::new();
                        // Often include the first primary.
                        if rng.gen_bool(0.5) {
                            chosen.push(all.remove(0));
                        }
                        while chosen.len() < b {
                            chosen.push(all.remove(rng.gen_range(0..all.len())));
                        }
                        chosen.sort_unstable();
                        chosen
                    }
                };
                plan.byzantine = ids.into_iter().map(|i| (i, behavior)).collect();
                if behavior == Behavior::ViewChange {
                    // View changes must happen for forged proofs to matter.
                    plan.network.partitions = true;
                    plan.target_primary = true;
                    // Lost commits leave some replicas behind the others when
                    // a view changes: a forged NEW-VIEW that replaces what
                    // some already executed splits them.
                    if rng.gen_bool(0.5) {
                        lossy(&mut plan, rng);
                    }
                }
                if behavior == Behavior::Replay && rng.gen_bool(0.5) {
                    plan.network.partitions = true;
                }
                if behavior == Behavior::Checkpoint && rng.gen_bool(0.7) {
                    // Replicas cut off fall behind and fetch state, which a
                    // faulty replica may answer with an invented one.
                    plan.network.partitions = true;
                }
            }
        }
        plan
    }

    /// When the network is stable for good: the heal, or the end of the
    /// slow spell after it.
    pub fn stable_at(&self) -> u64 {
        self.heal_at.max(self.network.slow_until)
    }

    /// n = 3f+1.
    pub fn n(&self) -> usize {
        3 * self.f + 1
    }
}
