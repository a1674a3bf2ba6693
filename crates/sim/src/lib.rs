//! A deterministic, single-threaded simulator of whole PBFT clusters.
//!
//! One `u64` seed drives every random choice of a run ([`rand_chacha::ChaCha8Rng`]):
//! the fault plan drawn for the [`Scenario`], network delays, loss,
//! duplication and partitions, crashes and restarts of honest replicas,
//! Byzantine tampering, and the clients' workload. Time is virtual
//! (microseconds, [`pbft_core::Instant`]); events wait in a priority queue
//! ordered by (time, insertion counter). Nothing reads a clock or iterates a
//! hash map, so a failing seed replays exactly.
//!
//! Every message goes through [`pbft_core::Message::encode`] and `decode`, and
//! through the signature [`pbft_crypto::Verifier`] (with the fast
//! `InsecureSim` scheme) before a replica or client sees it, as in a real node.
//! A crashed replica keeps only its persisted [`pbft_core::Record`]s and comes
//! back through [`pbft_core::Replica::restore`].
//!
//! Each run is checked for [agreement](checker::agreement),
//! [linearizability](checker::linearizability) of the clients' history
//! against the key-value store's sequential model, and
//! [liveness](checker::liveness) once the faults heal; a replica that panics
//! is a violation too.
//!
//! # Running
//!
//! ```text
//! cargo run -p pbft-sim --release -- --seeds 50 --scenario all --f all
//! cargo run -p pbft-sim --release -- --scenario crash --f 1 --seed 1132 --verbose
//! PBFT_SIM_SEEDS=50 cargo test -p pbft-sim --release --test sweep
//! ```
//!
//! A failing run prints its scenario, f, seed, violations and the command
//! that replays it with a trace ([`RunReport::replay_command`]).
//!
//! ```no_run
//! use pbft_sim::{run, Scenario};
//! let report = run(Scenario::ByzEquivocate, 1, 42);
//! assert!(report.violations.is_empty(), "{}", report.summary());
//! ```

pub mod byzantine;
pub mod checker;
mod client;
pub mod network;
pub mod scenario;
mod sim;
mod trace;

pub use byzantine::Behavior;
pub use scenario::{Plan, Scenario, UnknownScenario};

/// What to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The scenario.
    pub scenario: Scenario,
    /// Faults tolerated; the cluster has 3f+1 replicas.
    pub f: usize,
    /// The seed of every random choice.
    pub seed: u64,
    /// Print a trace of events to stdout.
    pub verbose: bool,
    /// Run the seed's plan with every Byzantine replica honest instead: the
    /// fault-free twin that throughput under a faulty primary is compared
    /// with.
    pub honest_twin: bool,
}

/// The outcome of one run.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// The scenario.
    pub scenario: Scenario,
    /// f.
    pub f: usize,
    /// The seed.
    pub seed: u64,
    /// The fault plan drawn from the seed.
    pub plan: Plan,
    /// Every property violation found (empty: the run passed).
    pub violations: Vec<String>,
    /// Client operations that completed.
    pub completed: usize,
    /// Client operations issued.
    pub requests: usize,
    /// The highest view an honest replica entered.
    pub view_changes: u64,
    /// How many times honest replicas entered a new view (summed over replicas).
    pub entered_views: u64,
    /// The highest sequence number an honest replica executed.
    pub max_executed: u64,
    /// Crashes of honest replicas.
    pub crashes: u64,
    /// Crashes inside a group write (a prefix of a step's records survived).
    pub torn_writes: u64,
    /// Replies sent ahead of records that a crash then tore (ordered read
    /// mode only: there replies wait for no record).
    pub replies_ahead: u64,
    /// PRE-PREPAREs and PREPAREs sent ahead of records that a crash then
    /// tore.
    pub votes_ahead: u64,
    /// State transfers honest replicas completed.
    pub state_transfers: u64,
    /// Those of a state of more than one page.
    pub chunked_transfers: u64,
    /// Pages those transfers fetched (pages already held are not fetched).
    pub pages_fetched: u64,
    /// Retransmitted requests the replicas answered as run with the result
    /// not kept (the client table keeps only a digest of large results), and
    /// no replica had sent the result itself.
    pub withheld_results: u64,
    /// Replies that carried a withheld result's digest (counted towards the
    /// result it matches, if a replica sent that).
    pub withheld_replies: u64,
    /// Requests the replicas answered as expired (below the client table's
    /// floor after the client was forgotten).
    pub expired_requests: u64,
    /// Requests a censoring replica dropped on arrival.
    pub censored_requests: u64,
    /// In `laggard` runs: how long after the heal the laggard reached the
    /// others' last executed sequence number, microseconds.
    pub rejoin_us: Option<u64>,
    /// Events processed.
    pub events: u64,
    /// Messages put on the network.
    pub messages: u64,
    /// Messages rejected by the signature check.
    pub rejected: u64,
    /// Of those, refused for their shape before any signature was checked,
    /// or undecodable (a list past its decoding bound).
    pub malformed: u64,
    /// Simulated time at the end, microseconds.
    pub end_time_us: u64,
    /// A hash of the run's events: equal seeds give equal hashes.
    pub trace_hash: u64,
    /// When each completed operation completed, microseconds, in order.
    pub completions_us: Vec<u64>,
    /// When the group entered the first view after which every primary was
    /// honest (0: the first primary was honest and no faulty one followed;
    /// `None`: the last view's primary was faulty).
    pub honest_primary_from_us: Option<u64>,
}

impl RunReport {
    /// Whether no property was violated.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The command that replays this run with a trace.
    pub fn replay_command(&self) -> String {
        format!(
            "cargo run -p pbft-sim --release -- --scenario {} --f {} --seed {} --verbose",
            self.scenario, self.f, self.seed
        )
    }

    /// A human-readable summary: the run, its violations and how to replay it.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "scenario={} f={} seed={}: {} violation(s), {}/{} ops completed, max view {}, max seq {}, {}ms simulated",
            self.scenario,
            self.f,
            self.seed,
            self.violations.len(),
            self.completed,
            self.requests,
            self.view_changes,
            self.max_executed,
            self.end_time_us / 1000
        );
        for v in &self.violations {
            s.push_str("\n  - ");
            s.push_str(v);
        }
        if !self.passed() {
            s.push_str("\n  replay: ");
            s.push_str(&self.replay_command());
        }
        s
    }
}

/// Runs `scenario` with `f` (n = 3f+1) from `seed`, without a trace.
pub fn run(scenario: Scenario, f: usize, seed: u64) -> RunReport {
    run_with(&RunOptions {
        scenario,
        f,
        seed,
        verbose: false,
        honest_twin: false,
    })
}

/// Runs the fault-free twin of `scenario`'s plan for `seed`: the same
/// network, workload and crashes, with every Byzantine replica honest.
pub fn run_honest_twin(scenario: Scenario, f: usize, seed: u64) -> RunReport {
    run_with(&RunOptions {
        scenario,
        f,
        seed,
        verbose: false,
        honest_twin: true,
    })
}

/// Runs with explicit options.
pub fn run_with(options: &RunOptions) -> RunReport {
    sim::run(options)
}
