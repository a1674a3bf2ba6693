//! `pbft chaos`: named fault-injection scenarios against a real cluster of
//! replica processes while a recorded client workload runs, each checked
//! afterwards. `scripts/fault-inject` is a thin wrapper that builds the
//! binaries and calls this.
//!
//! # One scenario
//!
//! 1. A fresh 3f+1 cluster ([`cluster::Cluster`]): one `pbft-node` process
//!    per replica, each in its own network namespace ([`net::Net`]).
//! 2. The recorded workload starts ([`workload`]); after a warm-up the fault
//!    is injected, lasts a stated time and ends (a Byzantine replica stays
//!    Byzantine to the end).
//! 3. The workload runs on until an operation invoked after the fault ended
//!    has completed (it must within the scenario's bound), then stops; a
//!    fresh client reads every key (recorded too).
//! 4. Checks: the history is linearizable ([`pbft_history`], the simulator's
//!    checker); every acknowledged write is there at the end (each client's
//!    own key holds its last acknowledged counter or a later one); every
//!    honest replica reports the same executed sequence number and state
//!    digest; progress resumed within the bound; plus what the scenario
//!    itself expects (no progress while more than f replicas are down, a
//!    full disk stops its replica with a message that says so).
//! 5. Clean-up: processes, namespaces (with their qdiscs and nftables
//!    tables) and mounts are removed whatever happened.
//!
//! Each run is bounded: the workload has a hard deadline and a bounded
//! number of operations per client, every wait has a limit. All traffic
//! stays inside the run's own namespaces.

mod cluster;
mod docker;
mod net;
mod workload;

use crate::{CmdResult, Failure};
use anyhow::{bail, Context};
use clap::Args;
use cluster::Cluster;
use pbft_app::kv::{KvOp, KvResult};
use pbft_client::{Client, ClientOptions, KeyPair};
use pbft_history::{Entry, Outcome};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use workload::{own_key, shared_key, Plan, Recorder};

/// The Byzantine behaviours of `pbft-node --byzantine` (built with the
/// `byzantine` feature): the node's own list, one scenario each.
pub use pbft_node::behaviours::BEHAVIOURS;

/// The scenarios `.ci/run` runs (`--ci`).
pub const CI_SUBSET: [&str; 5] = [
    "kill-primary",
    "partition-primary",
    "byz-equivocate",
    "byz-badsig",
    "kill-all",
];

/// Arguments of `pbft chaos`.
#[derive(Args, Debug)]
pub struct ChaosArgs {
    /// A scenario to run (repeatable); see --list.
    #[arg(long = "scenario", value_name = "NAME")]
    pub scenarios: Vec<String>,
    /// Run every scenario.
    #[arg(long)]
    pub all: bool,
    /// Run the CI subset: kill-primary, partition-primary, byz-equivocate,
    /// byz-badsig, kill-all.
    #[arg(long)]
    pub ci: bool,
    /// List the scenarios and exit.
    #[arg(long)]
    pub list: bool,
    /// Remove network namespaces left behind by a killed run, and exit.
    #[arg(long)]
    pub cleanup: bool,
    /// Replicas (3f+1, f >= 1).
    #[arg(long, default_value_t = 4)]
    pub replicas: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Shared keys the clients' operations conflict on.
    #[arg(long, default_value_t = 3)]
    pub keys: usize,
    /// The replicas' protocol timeout base in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub timeout_base_ms: u64,
    /// The replica binary (default: pbft-node next to this executable). The
    /// Byzantine scenarios need one built with `--features byzantine`.
    #[arg(long)]
    pub node_bin: Option<PathBuf>,
    /// Keep every scenario's directory (configuration, logs, history.jsonl)
    /// here. Default: a temporary directory, kept only if a scenario fails.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the report as one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Where the replicas run: processes in network namespaces, or
    /// containers of the image pbft-node:local (docker/build.sh byzantine).
    #[arg(long, value_enum, default_value = "processes")]
    pub backend: cluster::BackendKind,
}

/// A named scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Its name.
    pub name: String,
    /// What it does.
    pub what: String,
    /// The longest the cluster may take to complete an operation invoked
    /// after the fault ended.
    pub bound: Duration,
    kind: Kind,
}

#[derive(Clone, Debug)]
enum Kind {
    KillPrimary,
    KillBackup,
    KillPrimaryThenNext,
    Pause,
    PartitionBackup,
    PartitionPrimary,
    Asymmetric,
    IsolateMinute,
    LatencyLoss,
    Byzantine(&'static pbft_node::behaviours::Behaviour),
    FDown,
    BeyondF,
    Churn,
    KillAll,
    DiskFull,
}

/// Every scenario, in the order `--all` runs them.
pub fn scenarios() -> Vec<Scenario> {
    let s = |name: &str, what: &str, bound: u64, kind| Scenario {
        name: name.to_string(),
        what: what.to_string(),
        bound: Duration::from_secs(bound),
        kind,
    };
    let mut all = vec![
        s("kill-primary", "kill -9 the primary; restart it 8 s later", 20, Kind::KillPrimary),
        s("kill-backup", "kill -9 a backup; restart it 8 s later", 20, Kind::KillBackup),
        s(
            "kill-primary-then-next",
            "kill -9 the primary, then, during the view change, restart it and kill the next primary",
            30,
            Kind::KillPrimaryThenNext,
        ),
        s(
            "pause",
            "SIGSTOP the primary for 6 s (beyond the view-change timeout), then a backup",
            20,
            Kind::Pause,
        ),
        s(
            "partition-backup",
            "cut a backup off from everyone for 8 s, heal",
            20,
            Kind::PartitionBackup,
        ),
        s(
            "partition-primary",
            "cut the primary off from everyone for 8 s, heal",
            20,
            Kind::PartitionPrimary,
        ),
        s(
            "partition-asymmetric",
            "drop everything the primary sends (it still hears everyone) for 8 s, heal",
            20,
            Kind::Asymmetric,
        ),
        s(
            "isolate-minute",
            "cut a backup off for 60 s, heal (it must catch up)",
            20,
            Kind::IsolateMinute,
        ),
        s(
            "latency-loss",
            "every replica, 10 s: netem delay 40 ms +- 20 ms and 5% loss; a kernel without sch_netem gets NO delay, only a tbf rate limit and 5% nftables loss (the report says which)",
            20,
            Kind::LatencyLoss,
        ),
    ];
    for b in BEHAVIOURS.iter() {
        let who = if b.as_primary {
            "the primary"
        } else {
            "a backup"
        };
        all.push(s(
            &format!("byz-{}", b.name),
            &format!(
                "restart {who} as `pbft-node --byzantine {}` ({}) for the rest of the run",
                b.name, b.what
            ),
            20,
            Kind::Byzantine(b),
        ));
    }
    all.extend([
        s("f-down", "kill -9 f replicas (the primary among them) for 10 s", 20, Kind::FDown),
        s(
            "beyond-f",
            "kill -9 f+1 replicas for 10 s: no progress, no divergence, resume after",
            30,
            Kind::BeyondF,
        ),
        s(
            "churn",
            "restart f replicas over and over (kill -9, 2 s down, 2 s up, 5 rounds)",
            20,
            Kind::Churn,
        ),
        s("kill-all", "kill -9 every replica, restart them all 2 s later", 30, Kind::KillAll),
        s(
            "disk-full",
            "a backup's data dir on a 16 MiB tmpfs that fills up: it stops and says why; freed and restarted, it recovers",
            20,
            Kind::DiskFull,
        ),
    ]);
    all
}

/// What happened during the fault, as the scenario saw it.
#[derive(Default)]
struct Timeline {
    /// When the injection began (before the fault is in place: a `docker
    /// kill` or a restart takes a while): the throughput baseline is the
    /// few seconds before this.
    baseline_end: Option<Instant>,
    fault_start: Option<Instant>,
    fault_end: Option<Instant>,
    /// Replicas that are Byzantine at the end (left out of the digest check).
    byzantine: BTreeSet<usize>,
    /// Checks the scenario itself made that failed.
    failures: Vec<String>,
    notes: Vec<String>,
    /// Whether no operation may complete during the fault.
    expect_stall: bool,
    mounts: Vec<PathBuf>,
}

impl Timeline {
    fn mark(&mut self) {
        self.baseline_end = Some(Instant::now());
    }
    fn start(&mut self) {
        self.fault_start = Some(Instant::now());
    }
    fn end(&mut self) {
        self.fault_end = Some(Instant::now());
    }
}

/// Unmounts what a scenario mounted.
struct Mounts(Vec<PathBuf>);

impl Drop for Mounts {
    fn drop(&mut self) {
        for m in &self.0 {
            let _ = net::sh(&["umount", "-l", &m.to_string_lossy()]);
        }
    }
}

async fn sleep(secs: f64) {
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
}

/// Injects the fault of `kind` and ends it. The fault's start is taken
/// once it is in place (a `docker kill` takes a while), its end once it is
/// lifted.
async fn inject(
    kind: &Kind,
    c: &mut Cluster,
    t: &mut Timeline,
    censored: &str,
) -> anyhow::Result<()> {
    let n = c.n();
    let f = c.f();
    let limit = Duration::from_secs(15);
    t.mark();
    match kind {
        Kind::KillPrimary => {
            let (_, p) = c.primary(limit).await?;
            c.kill(p);
            t.start();
            t.notes.push(format!("killed primary r{p}"));
            sleep(8.0).await;
            c.start_replica(p, None)?;
            t.end();
        }
        Kind::KillBackup => {
            let (_, p) = c.primary(limit).await?;
            let b = (p + 1) % n;
            c.kill(b);
            t.start();
            sleep(8.0).await;
            c.start_replica(b, None)?;
            t.end();
        }
        Kind::KillPrimaryThenNext => {
            let (_, p) = c.primary(limit).await?;
            let next = (p + 1) % n;
            c.kill(p);
            t.start();
            // The backups' timers fire about one timeout base after a request
            // waits; kill the next primary while they are changing views.
            sleep(1.0).await;
            c.start_replica(p, None)?;
            c.kill(next);
            t.notes
                .push(format!("killed r{p}, then r{next} during the view change"));
            sleep(8.0).await;
            c.start_replica(next, None)?;
            t.end();
        }
        Kind::Pause => {
            let (_, p) = c.primary(limit).await?;
            c.pause(p)?;
            t.start();
            sleep(6.0).await;
            c.resume(p)?;
            sleep(3.0).await;
            let (_, p2) = c.primary(limit).await?;
            let b = (p2 + 1) % n;
            c.pause(b)?;
            sleep(6.0).await;
            c.resume(b)?;
            t.notes
                .push(format!("paused primary r{p}, then backup r{b}"));
            t.end();
        }
        Kind::PartitionBackup | Kind::PartitionPrimary | Kind::Asymmetric | Kind::IsolateMinute => {
            let (_, p) = c.primary(limit).await?;
            let target = match kind {
                Kind::PartitionBackup | Kind::IsolateMinute => (p + 1) % n,
                _ => p,
            };
            if matches!(kind, Kind::Asymmetric) {
                c.mute(target)?;
            } else {
                c.isolate(target)?;
            }
            // The fault starts once it is in place.
            t.start();
            sleep(if matches!(kind, Kind::IsolateMinute) {
                60.0
            } else {
                8.0
            })
            .await;
            c.heal(target)?;
            t.notes.push(format!("r{target} cut off"));
            t.end();
        }
        Kind::LatencyLoss => {
            let mut shapings = BTreeSet::new();
            for i in 0..n {
                shapings.insert(c.shape(i, 40, 20, 5)?.describe());
            }
            t.start();
            for what in shapings {
                t.notes.push(format!("injected: {what}"));
            }
            sleep(10.0).await;
            for i in 0..n {
                c.heal(i)?;
            }
            t.end();
        }
        Kind::Byzantine(behaviour) => {
            let b = behaviour.name;
            let (_, p) = c.primary(limit).await?;
            let target = if behaviour.as_primary { p } else { (p + 1) % n };
            t.mark();
            c.kill(target);
            let extra: Vec<String> = if b == "censor" {
                vec!["--censor-client".into(), censored.to_string()]
            } else {
                Vec::new()
            };
            c.start_replica_with(target, Some(b), &extra)?;
            t.start();
            t.byzantine.insert(target);
            t.notes.push(format!("r{target} byzantine ({b})"));
            sleep(12.0).await;
            c.poll_exits();
            if let Some(status) = c.exits[target].clone() {
                t.failures.push(format!(
                    "the byzantine replica r{target} exited ({status}): {}",
                    c.log_tail(target, 3)
                ));
            }
            t.end();
        }
        Kind::FDown | Kind::BeyondF => {
            let (_, p) = c.primary(limit).await?;
            let down = if matches!(kind, Kind::FDown) {
                f
            } else {
                f + 1
            };
            let victims: Vec<usize> = (0..down).map(|k| (p + k) % n).collect();
            for &v in &victims {
                c.kill(v);
            }
            t.start();
            t.expect_stall = matches!(kind, Kind::BeyondF);
            t.notes.push(format!("down: {victims:?}"));
            sleep(10.0).await;
            t.end();
            for &v in &victims {
                c.start_replica(v, None)?;
            }
        }
        Kind::Churn => {
            t.start();
            for round in 0..5 {
                let victims: Vec<usize> = (0..f).map(|k| (round * f + k) % n).collect();
                for &v in &victims {
                    c.kill(v);
                }
                sleep(2.0).await;
                for &v in &victims {
                    c.start_replica(v, None)?;
                }
                sleep(2.0).await;
            }
            t.end();
        }
        Kind::KillAll => {
            for i in 0..n {
                c.kill(i);
            }
            t.start();
            t.expect_stall = true;
            sleep(2.0).await;
            t.end();
            for i in 0..n {
                c.start_replica(i, None)?;
            }
        }
        Kind::DiskFull => disk_full(c, t).await?,
    }
    Ok(())
}

/// The log segment size of the replica on a full disk.
const DISK_FULL_SEGMENT_BYTES: u64 = 256 << 10;

async fn disk_full(c: &mut Cluster, t: &mut Timeline) -> anyhow::Result<()> {
    let (_, p) = c.primary(Duration::from_secs(15)).await?;
    let b = (p + 1) % c.n();
    c.kill(b);
    let dir = c.data_dir(b);
    let saved = dir.with_extension("saved");
    std::fs::rename(&dir, &saved).context("cannot move the data dir aside")?;
    std::fs::create_dir_all(&dir)?;
    let d = dir.to_string_lossy().to_string();
    net::sh(&["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", &d])
        .context("cannot mount a tmpfs for the data dir")?;
    t.mounts.push(dir.clone());
    net::sh(&["cp", "-a", &format!("{}/.", saved.to_string_lossy()), &d])?;
    // Segments are preallocated (8 MiB by default, more than a whole run
    // writes): with small ones the replica allocates disk space every few
    // hundred records, so it meets the full disk within seconds.
    c.set_segment_bytes(b, DISK_FULL_SEGMENT_BYTES)?;
    c.start_replica(b, None)?;
    sleep(2.0).await;
    t.start();
    t.notes.push(format!(
        "r{b}: data dir on a 16 MiB tmpfs, log segments of {} KiB, the rest of the tmpfs filled (and refilled as segments are deleted)",
        DISK_FULL_SEGMENT_BYTES >> 10
    ));
    // Fill what is left of the tmpfs, and keep it full: the replica
    // deletes old segments after a checkpoint, and the filler takes what
    // that frees before the replica's next segment can.
    let filler = dir.join("filler");
    let mut file = std::fs::File::create(&filler).context("cannot create the filler")?;
    let fill = |file: &mut std::fs::File| {
        use std::io::Write;
        let chunk = vec![0u8; 1 << 12];
        for _ in 0..(16 << 8) {
            if file.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = file.flush();
    };
    fill(&mut file);
    let until = Instant::now() + Duration::from_secs(30);
    while c.running(b) && Instant::now() < until {
        sleep(0.2).await;
        fill(&mut file);
    }
    drop(file);
    if c.running(b) {
        t.failures
            .push(format!("r{b} kept running for 30 s on a full disk"));
        c.kill(b);
    } else {
        let tail = c.log_tail(b, 5);
        let says = tail
            .lines()
            .find(|l| l.contains("No space left") || l.contains("space"));
        match says {
            Some(line) => t.notes.push(format!(
                "r{b} stopped: ...{}",
                &line[line.len().saturating_sub(90)..]
            )),
            None => t.failures.push(format!(
                "r{b} stopped without saying the disk is full:\n{tail}"
            )),
        }
    }
    std::fs::remove_file(&filler).context("cannot remove the filler")?;
    c.start_replica(b, None)?;
    t.end();
    Ok(())
}

/// One row of the report.
struct Row {
    scenario: String,
    ok: usize,
    failed: usize,
    unknown: usize,
    view_changes: u64,
    /// From the fault to the first completed operation invoked after it.
    recovery: Option<Duration>,
    /// From the end of the fault to the first operation completed after it.
    resumed: Option<Duration>,
    throughput_share: Option<f64>,
    linearizable: bool,
    acked_present: bool,
    digests_equal: bool,
    problems: Vec<String>,
    notes: Vec<String>,
    history: PathBuf,
}

impl Row {
    fn passed(&self) -> bool {
        self.problems.is_empty()
    }

    fn json(&self, kept: bool) -> Value {
        json!({
            "scenario": self.scenario,
            "ok": self.ok,
            "failed": self.failed,
            "unknown": self.unknown,
            "view_changes": self.view_changes,
            "fault_to_first_commit_ms": self.recovery.map(|d| d.as_millis() as u64),
            "heal_to_first_commit_ms": self.resumed.map(|d| d.as_millis() as u64),
            "throughput_during_fault": self.throughput_share,
            "linearizable": self.linearizable,
            "acknowledged_writes_present": self.acked_present,
            "digests_equal": self.digests_equal,
            "passed": self.passed(),
            "problems": self.problems,
            "notes": self.notes,
            "history": kept.then_some(&self.history),
        })
    }
}

fn response_at(e: &Entry) -> Option<u64> {
    match &e.outcome {
        Outcome::Ok { at, .. } => Some(*at),
        _ => None,
    }
}

/// The first completed operation invoked at or after `from` (µs): how long
/// after `from` it completed.
fn first_commit_after(entries: &[Entry], from: u64) -> Option<Duration> {
    entries
        .iter()
        .filter(|e| e.invoke_us >= from)
        .filter_map(response_at)
        .min()
        .map(|at| Duration::from_micros(at - from))
}

/// The first response at or after `from` (µs), of any operation: how long
/// after `from` it came.
fn first_response_after(entries: &[Entry], from: u64) -> Option<Duration> {
    entries
        .iter()
        .filter_map(response_at)
        .filter(|&at| at >= from)
        .min()
        .map(|at| Duration::from_micros(at - from))
}

/// Completed operations per second with a response in `[from, to)` µs.
fn rate(entries: &[Entry], from: u64, to: u64) -> Option<f64> {
    if to <= from {
        return None;
    }
    let count = entries
        .iter()
        .filter_map(response_at)
        .filter(|&at| at >= from && at < to)
        .count();
    Some(count as f64 / ((to - from) as f64 / 1e6))
}

/// Every client's own key must hold its last acknowledged counter or one
/// written after it (whose outcome is unknown). `finals` are the final reads.
fn acked_writes_present(
    entries: &[Entry],
    finals: &[(String, Option<Vec<u8>>)],
    clients: usize,
) -> Vec<String> {
    let mut problems = Vec::new();
    for c in 0..clients {
        let key = own_key(c);
        let writes: Vec<&Entry> = entries
            .iter()
            .filter(|e| e.client == c as u64)
            .filter(|e| matches!(&e.op, KvOp::Put { key: k, .. } if k == key.as_bytes()))
            .collect();
        let value_of = |e: &Entry| match &e.op {
            KvOp::Put { value, .. } => value.clone(),
            _ => Vec::new(),
        };
        let last_acked = writes
            .iter()
            .rposition(|e| matches!(e.outcome, Outcome::Ok { .. }));
        let Some(last) = last_acked else { continue };
        let Some((_, found)) = finals.iter().find(|(k, _)| *k == key) else {
            problems.push(format!("{key}: no final read"));
            continue;
        };
        let allowed: Vec<Vec<u8>> = writes[last..]
            .iter()
            .filter(|e| !matches!(e.outcome, Outcome::Failed { .. }))
            .map(|e| value_of(e))
            .collect();
        if !found.as_ref().is_some_and(|v| allowed.contains(v)) {
            problems.push(format!(
                "{key}: acknowledged write {} lost (final value {:?})",
                String::from_utf8_lossy(&value_of(writes[last])),
                found
                    .as_ref()
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            ));
        }
    }
    problems
}

/// Waits until every honest replica reports the same last executed
/// sequence number, then compares their state digests there; returns
/// whether they agree and what each replica said.
///
/// No writes are needed to get there: once the workload stops, a replica
/// that lags (restarted, cut off, left alone in a higher view) has
/// executed nothing for half a timeout base and sends PROGRESS, and its
/// peers answer with the commit certificates (or the checkpoint proof) it
/// lacks (`crates/core/src/retransmit.rs`), so every honest replica
/// reaches the same last executed sequence number on its own.
async fn converge(c: &mut Cluster, byzantine: &BTreeSet<usize>, limit: Duration) -> (bool, String) {
    let until = Instant::now() + limit;
    loop {
        c.poll_exits();
        let statuses = c.statuses().await;
        let honest: Vec<_> = statuses
            .iter()
            .filter(|s| !byzantine.contains(&s.id.index()))
            .map(|s| {
                s.report
                    .as_ref()
                    .map(|r| (r.last_executed.0, r.state_digest))
            })
            .collect();
        let same_seq = honest
            .iter()
            .all(|s| s.is_some() && s.map(|x| x.0) == honest[0].map(|x| x.0));
        if same_seq || Instant::now() >= until {
            let equal = same_seq && honest.iter().all(|s| *s == honest[0]);
            let what = statuses
                .iter()
                .map(|s| match &s.report {
                    Some(r) => format!(
                        "r{}: view {} seq {} {}",
                        s.id.0,
                        r.view.0,
                        r.last_executed.0,
                        &r.state_digest.to_hex()[..12]
                    ),
                    None => format!("r{}: no answer", s.id.0),
                })
                .collect::<Vec<_>>()
                .join(", ");
            return (equal, what);
        }
        sleep(0.5).await;
    }
}

async fn run_scenario(
    s: &Scenario,
    args: &ChaosArgs,
    node_bin: &Path,
    dir: &Path,
) -> anyhow::Result<Row> {
    let n = args.replicas;
    let mut t = Timeline::default();
    let mut c = Cluster::start(dir, n, args.timeout_base_ms, node_bin, args.backend)?;
    let result = scenario_body(s, args, &mut c, &mut t, dir).await;
    drop(c);
    drop(Mounts(std::mem::take(&mut t.mounts)));
    result
}

async fn scenario_body(
    s: &Scenario,
    args: &ChaosArgs,
    c: &mut Cluster,
    t: &mut Timeline,
    dir: &Path,
) -> anyhow::Result<Row> {
    c.wait_ready(Duration::from_secs(30)).await?;
    let (v0, _) = c.primary(Duration::from_secs(15)).await?;
    let keys: Vec<KeyPair> = (0..args.clients).map(|_| KeyPair::generate()).collect();
    let censored = keys[0].public().to_hex();
    let plan = Plan {
        keys: args.keys,
        ops_max: 20_000,
        op_timeout: Duration::from_secs(12),
    };
    let recorder = Recorder::new();
    let hard_stop = Instant::now() + Duration::from_secs(150);
    let load = workload::start(&c.settings, &plan, &keys, &recorder, hard_stop)?;
    sleep(5.0).await;
    let injected = inject(&s.kind, c, t, &censored).await;
    let baseline_end = t.baseline_end.map(|a| recorder.micros(a));
    let fault_start = t.fault_start.map(|a| recorder.micros(a));
    let fault_end = t.fault_end.map(|a| recorder.micros(a));
    // Run on until an operation invoked after the fault ended completes
    // (and at least 4 s), within the bound.
    let ended = Instant::now();
    if let Some(end) = fault_end {
        loop {
            let done = first_commit_after(&recorder.entries(), end).is_some();
            let waited = ended.elapsed();
            if (done && waited >= Duration::from_secs(4)) || waited >= s.bound {
                break;
            }
            sleep(0.2).await;
        }
    }
    load.stop().await;
    injected?;

    // The final reads, recorded with the rest.
    let reader = Client::with_key(
        &c.settings.cluster,
        KeyPair::generate(),
        ClientOptions::with_timeout(Duration::from_secs(20)),
    )?;
    let mut finals = Vec::new();
    let names: Vec<String> = (0..args.keys)
        .map(shared_key)
        .chain((0..args.clients).map(own_key))
        .collect();
    for key in names {
        let op = KvOp::Get {
            key: key.clone().into_bytes(),
        };
        if let Some(KvResult::Get { value }) = recorder.run(1_000_000, &reader, op).await {
            finals.push((key, value));
        }
    }
    reader.close().await;

    let (digests_equal, states) = converge(c, &t.byzantine, Duration::from_secs(40)).await;
    let entries = recorder.entries();
    let history = dir.join("history.jsonl");
    let lines: Vec<String> = entries
        .iter()
        .map(Entry::to_line)
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("cannot record the history: {e}"))?;
    std::fs::write(&history, lines.join("\n") + "\n").context("cannot write the history")?;

    let mut problems = std::mem::take(&mut t.failures);
    let counts = crate::check_history::counts(&entries);
    let violations = crate::check_history::check(&entries);
    for (v, idx) in &violations {
        let ops: Vec<String> = idx
            .iter()
            .map(|&i| crate::check_history::describe(&entries[i]))
            .collect();
        problems.push(format!(
            "not linearizable: key {:?}: {}",
            v.key.as_deref().map(String::from_utf8_lossy),
            ops.join("; ")
        ));
    }
    let lost = acked_writes_present(&entries, &finals, args.clients);
    let acked_present = lost.is_empty() && finals.len() == args.keys + args.clients;
    if finals.len() != args.keys + args.clients {
        problems.push(format!(
            "only {} of {} final reads completed",
            finals.len(),
            args.keys + args.clients
        ));
    }
    problems.extend(lost);
    if !digests_equal {
        problems.push(format!("honest replicas disagree: {states}"));
    }
    let view_changes = c.view().await.map_or(0, |(v, _)| v.saturating_sub(v0));

    let recovery = fault_start.and_then(|a| first_commit_after(&entries, a));
    let resumed = fault_end.and_then(|a| first_response_after(&entries, a));
    match resumed {
        Some(d) if d <= s.bound => {}
        Some(d) => problems.push(format!(
            "progress resumed {:.1} s after the fault ended (bound {} s)",
            d.as_secs_f64(),
            s.bound.as_secs()
        )),
        None => problems.push(format!(
            "no operation completed after the fault ended (bound {} s)",
            s.bound.as_secs()
        )),
    }
    let throughput_share = match (baseline_end, fault_start, fault_end) {
        (Some(m), Some(a), Some(b)) => {
            // The last 3 s before the injection began (the first 2 s of
            // the 5 s warm-up are connection set-up), against the time the
            // fault was in place.
            let before = rate(&entries, m.saturating_sub(3_000_000), m);
            let during = rate(&entries, a, b);
            match (before, during) {
                (Some(x), Some(y)) if x > 0.0 => Some(y / x),
                _ => None,
            }
        }
        _ => None,
    };
    if t.expect_stall {
        if let (Some(a), Some(b)) = (fault_start, fault_end) {
            // Operations already agreed before the fault may still complete
            // just after it started.
            let late = entries
                .iter()
                .filter(|e| e.invoke_us >= a + 500_000)
                .filter_map(response_at)
                .filter(|&at| at < b)
                .count();
            if late > 0 {
                problems.push(format!(
                    "{late} operations invoked during the fault completed with more than f replicas down"
                ));
            }
        }
    }
    Ok(Row {
        scenario: s.name.clone(),
        ok: counts.ok,
        failed: counts.failed,
        unknown: counts.unknown,
        view_changes,
        recovery,
        resumed,
        throughput_share,
        linearizable: violations.is_empty(),
        acked_present,
        digests_equal,
        problems,
        notes: std::mem::take(&mut t.notes),
        history,
    })
}

fn fmt_secs(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), |d| format!("{:.2}s", d.as_secs_f64()))
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "NO"
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<24} {:>6} {:>6} {:>7} {:>5} {:>11} {:>10} {:>8} {:>6} {:>6} {:>8}  result",
        "scenario",
        "ok",
        "failed",
        "unknown",
        "views",
        "fault->ok",
        "heal->ok",
        "tput",
        "linear",
        "acked",
        "digests"
    );
    for r in rows {
        println!(
            "{:<24} {:>6} {:>6} {:>7} {:>5} {:>11} {:>10} {:>8} {:>6} {:>6} {:>8}  {}",
            r.scenario,
            r.ok,
            r.failed,
            r.unknown,
            r.view_changes,
            fmt_secs(r.recovery),
            fmt_secs(r.resumed),
            r.throughput_share
                .map_or_else(|| "-".into(), |x| format!("{:.0}%", x * 100.0)),
            yes(r.linearizable),
            yes(r.acked_present),
            yes(r.digests_equal),
            if r.passed() { "pass" } else { "FAIL" }
        );
    }
    for r in rows {
        for n in &r.notes {
            println!("  {}: {n}", r.scenario);
        }
        for p in &r.problems {
            println!("  {}: PROBLEM: {p}", r.scenario);
        }
    }
}

fn selected(args: &ChaosArgs) -> Result<Vec<Scenario>, Failure> {
    let all = scenarios();
    let mut names: Vec<String> = args.scenarios.clone();
    if args.ci {
        names.extend(CI_SUBSET.iter().map(|s| s.to_string()));
    }
    if args.all {
        return Ok(all);
    }
    if names.is_empty() {
        return Err(Failure::usage(anyhow::anyhow!(
            "name a --scenario (see --list), or give --ci or --all"
        )));
    }
    names
        .iter()
        .map(|name| {
            all.iter()
                .find(|s| s.name == *name)
                .cloned()
                .ok_or_else(|| {
                    Failure::usage(anyhow::anyhow!(
                        "unknown scenario {name:?}; known: {}",
                        all.iter()
                            .map(|s| s.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })
        })
        .collect()
}

fn check_environment(node_bin: &Path, backend: cluster::BackendKind) -> anyhow::Result<()> {
    if backend == cluster::BackendKind::Processes && !node_bin.is_file() {
        bail!(
            "{}: no replica binary there (build it with `cargo build -p pbft-node --features byzantine`, or give --node-bin)",
            node_bin.display()
        );
    }
    for tool in [["ip", "-V"], ["nft", "--version"], ["tc", "-V"]] {
        net::sh(&tool).with_context(|| format!("`{}` is needed (iproute2, nftables)", tool[0]))?;
    }
    net::sh(&["ip", "netns", "list"]).context("network namespaces need root")?;
    if backend == cluster::BackendKind::Docker {
        net::sh(&["docker", "version"])
            .context("the docker backend needs a running docker engine")?;
    }
    Ok(())
}

/// `pbft chaos`.
pub async fn run(args: &ChaosArgs) -> CmdResult {
    if args.list {
        for s in scenarios() {
            let ci = if CI_SUBSET.contains(&s.name.as_str()) {
                " [ci]"
            } else {
                ""
            };
            println!("{:<24} {}{ci}", s.name, s.what);
        }
        return Ok(());
    }
    if args.cleanup {
        let removed = net::cleanup_leftovers().map_err(Failure::failed)?;
        println!("removed {removed} network namespaces");
        return Ok(());
    }
    if args.replicas < 4 || args.replicas % 3 != 1 {
        return Err(Failure::usage(anyhow::anyhow!(
            "--replicas must be 3f+1 with f >= 1 (4, 7, 10); got {}",
            args.replicas
        )));
    }
    if args.clients == 0 || args.clients > 64 || args.keys == 0 || args.keys > 64 {
        return Err(Failure::usage(anyhow::anyhow!(
            "--clients and --keys must be 1..=64"
        )));
    }
    let list = selected(args)?;
    let node_bin = match &args.node_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("cannot find this executable")?
            .with_file_name("pbft-node"),
    };
    check_environment(&node_bin, args.backend).map_err(Failure::usage)?;
    let mut temp = None;
    let root = match &args.out {
        Some(p) => p.clone(),
        None => {
            let t = tempfile::Builder::new()
                .prefix("pbft-chaos-")
                .tempdir()
                .context("cannot create a temporary directory")?;
            let path = t.path().to_path_buf();
            temp = Some(t);
            path
        }
    };
    let mut rows = Vec::new();
    for s in &list {
        eprintln!("== {}: {}", s.name, s.what);
        let dir = root.join(&s.name);
        if dir.exists() {
            return Err(Failure::usage(anyhow::anyhow!(
                "{}: already exists; give another --out",
                dir.display()
            )));
        }
        std::fs::create_dir_all(&dir).context("cannot create a scenario directory")?;
        let started = Instant::now();
        let run = tokio::select! {
            r = run_scenario(s, args, &node_bin, &dir) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        };
        let row = match run {
            Ok(row) => row,
            Err(e) => Row {
                scenario: s.name.clone(),
                ok: 0,
                failed: 0,
                unknown: 0,
                view_changes: 0,
                recovery: None,
                resumed: None,
                throughput_share: None,
                linearizable: false,
                acked_present: false,
                digests_equal: false,
                problems: vec![format!("{e:#}")],
                notes: Vec::new(),
                history: dir.join("history.jsonl"),
            },
        };
        eprintln!(
            "   {} in {:.0} s{}",
            if row.passed() { "passed" } else { "FAILED" },
            started.elapsed().as_secs_f64(),
            row.problems
                .first()
                .map(|p| format!(": {p}"))
                .unwrap_or_default()
        );
        let interrupted = row.problems.iter().any(|p| p == "interrupted");
        rows.push(row);
        if interrupted {
            break;
        }
    }
    let failed = rows.iter().filter(|r| !r.passed()).count();
    if args.json {
        // A temporary directory is removed unless a scenario failed.
        let kept = args.out.is_some() || failed > 0;
        let list: Vec<Value> = rows.iter().map(|r| r.json(kept)).collect();
        println!("{}", json!({"scenarios": list, "failed": failed}));
    } else {
        print_table(&rows);
        println!("chaos: {} passed, {failed} failed", rows.len() - failed);
    }
    if failed > 0 {
        if let Some(t) = temp {
            // Keep the directory of a failed run for its logs and histories.
            eprintln!("logs and histories kept in {}", t.keep().display());
        }
        return Err(Failure::failed(anyhow::anyhow!(
            "{failed} of {} scenarios failed",
            rows.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(client: u64, key: &str, value: &str, invoke: u64, outcome: Outcome) -> Entry {
        Entry {
            client,
            invoke_us: invoke,
            op: KvOp::Put {
                key: key.into(),
                value: value.into(),
            },
            outcome,
            line: 0,
        }
    }

    fn ok(at: u64) -> Outcome {
        Outcome::Ok {
            at,
            result: KvResult::Put { previous: None },
        }
    }

    #[test]
    fn scenario_names_are_unique_and_the_ci_subset_exists() {
        let all = scenarios();
        let names: BTreeSet<&str> = all.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names.len(), all.len());
        for name in CI_SUBSET {
            assert!(names.contains(name), "{name}");
        }
        for b in BEHAVIOURS.iter() {
            assert!(
                names.contains(format!("byz-{}", b.name).as_str()),
                "{}",
                b.name
            );
        }
        assert_eq!(all.len(), 14 + BEHAVIOURS.len());
    }

    #[test]
    fn a_lost_acknowledged_write_is_reported() {
        let entries = vec![
            put(0, "w0", "1", 0, ok(10)),
            put(0, "w0", "2", 20, ok(30)),
            put(0, "w0", "3", 40, Outcome::Unknown { error: None }),
        ];
        let final_is = |v: &str| vec![("w0".to_string(), Some(v.as_bytes().to_vec()))];
        assert!(acked_writes_present(&entries, &final_is("2"), 1).is_empty());
        assert!(acked_writes_present(&entries, &final_is("3"), 1).is_empty());
        let lost = acked_writes_present(&entries, &final_is("1"), 1);
        assert_eq!(lost.len(), 1, "{lost:?}");
        assert!(lost[0].contains("acknowledged write 2 lost"), "{lost:?}");
        assert_eq!(
            acked_writes_present(&entries, &[("w0".into(), None)], 1).len(),
            1
        );
    }

    #[test]
    fn recovery_and_throughput_are_measured_from_the_history() {
        let entries = vec![
            put(0, "k", "a", 0, ok(1_000_000)),
            put(0, "k", "b", 1_500_000, ok(1_900_000)),
            put(1, "k", "c", 2_100_000, Outcome::Unknown { error: None }),
            put(2, "k", "d", 2_200_000, ok(3_500_000)),
        ];
        assert_eq!(
            first_commit_after(&entries, 2_000_000),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(first_commit_after(&entries, 3_000_000), None);
        assert_eq!(
            first_response_after(&entries, 3_000_000),
            Some(Duration::from_millis(500))
        );
        assert_eq!(rate(&entries, 0, 2_000_000), Some(1.0));
        assert_eq!(rate(&entries, 2, 1), None);
    }

    #[test]
    fn the_report_says_whether_latency_was_added() {
        let netem = net::Shaping::Netem {
            delay_ms: 40,
            jitter_ms: 20,
            loss: 5,
        }
        .describe();
        assert!(
            netem.contains("delay 40 ms +- 20 ms") && netem.contains("loss 5%"),
            "{netem}"
        );
        let fallback = net::Shaping::TbfAndLoss { loss: 5 }.describe();
        assert!(
            fallback.contains("NO delay or jitter")
                && fallback.contains("tbf")
                && fallback.contains("5%"),
            "{fallback}"
        );
    }

    #[test]
    fn unknown_scenarios_are_usage_errors() {
        let args = ChaosArgs {
            scenarios: vec!["nope".into()],
            all: false,
            ci: false,
            list: false,
            cleanup: false,
            replicas: 4,
            clients: 4,
            keys: 3,
            timeout_base_ms: 500,
            node_bin: None,
            out: None,
            json: false,
            backend: cluster::BackendKind::Processes,
        };
        let e = selected(&args)
            .expect_err("unknown")
            .into_error()
            .to_string();
        assert!(
            e.contains("unknown scenario \"nope\"") && e.contains("kill-primary"),
            "{e}"
        );
    }
}
