//! `pbft demo`: a local cluster, a workload, a crashed primary, a view change,
//! the crashed replica restarted and rejoining, and a final agreement check,
//! in one command.

use crate::testnet::{free_udp_ports, generate, ReadModeArg, TestnetArgs};
use crate::workload::{clients, ms, workload, Gate, Progress, WorkloadReport};
use crate::{CmdResult, Failure};
use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use pbft_client::{Client, ReplicaStatus};
use pbft_config::{ClientFile, ClientSettings};
use pbft_core::message::StatusReport;
use pbft_crypto::Digest;
use pbft_node::process::{NodeCommand, NodeProcesses};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Arguments of `pbft demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Replicas (3f+1).
    #[arg(long, default_value_t = 4)]
    pub replicas: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Operations per client (alternating put and get).
    #[arg(long, default_value_t = 500)]
    pub ops: u64,
    /// Keep the temporary directory (configuration, data, replica logs).
    #[arg(long)]
    pub keep: bool,
    /// Do not kill (and restart) the primary part-way.
    #[arg(long)]
    pub no_kill: bool,
    /// Stop the workload after this many seconds.
    #[arg(long, default_value_t = 40)]
    pub duration_max: u64,
    /// After restarting the killed replica, fail unless it reaches the
    /// others' last executed sequence number and digest within this many
    /// seconds.
    #[arg(long, default_value_t = 30)]
    pub rejoin_max: u64,
}

/// The view and primary most live replicas report.
fn consensus_view(statuses: &[ReplicaStatus]) -> Option<(u64, u32, usize)> {
    let mut counts: BTreeMap<(u64, u32), usize> = BTreeMap::new();
    for r in statuses.iter().filter_map(|s| s.report.as_ref()) {
        if r.active {
            *counts.entry((r.view.0, r.primary.0)).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .max_by_key(|(k, c)| (*c, k.0))
        .map(|((v, p), c)| (v, p, c))
}

async fn wait_ready(status: &Client, replicas: &mut NodeProcesses, limit: Duration) -> CmdResult {
    let until = Instant::now() + limit;
    loop {
        replicas.check_running()?;
        let s = status.status().await;
        if s.iter().all(ReplicaStatus::reachable) {
            return Ok(());
        }
        if Instant::now() >= until {
            return Err(Failure::unknown(anyhow::anyhow!(
                "replicas did not all answer within {limit:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Final state of the live replicas: equal (last_executed, digest)?
async fn converge(
    status: &Client,
    replicas: &NodeProcesses,
    limit: Duration,
) -> (bool, Vec<ReplicaStatus>) {
    let until = Instant::now() + limit;
    loop {
        let all = status.status().await;
        let live: Vec<&ReplicaStatus> = all
            .iter()
            .filter(|s| replicas.is_running(s.id.index()))
            .collect();
        let states: Vec<_> = live
            .iter()
            .map(|s| s.report.as_ref().map(|r| (r.last_executed, r.state_digest)))
            .collect();
        let equal = !states.is_empty() && states.iter().all(|s| s.is_some() && *s == states[0]);
        if equal || Instant::now() >= until {
            return (equal, all);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Whether `restarted` has reached the others: every other replica answered,
/// one of them reports the same last executed sequence number and state
/// digest, and none is behind it (under load the others are not all at one
/// sequence number at the same instant). Returns that (sequence, digest).
fn caught_up(statuses: &[ReplicaStatus], restarted: usize) -> Option<(u64, Digest)> {
    let me = statuses.get(restarted)?.report.as_ref()?;
    let others: Vec<&StatusReport> = statuses
        .iter()
        .filter(|s| s.id.index() != restarted)
        .map(|s| s.report.as_ref())
        .collect::<Option<_>>()?;
    let lowest = others.iter().map(|r| r.last_executed).min()?;
    let same = others
        .iter()
        .any(|r| r.last_executed == me.last_executed && r.state_digest == me.state_digest);
    (same && me.last_executed >= lowest).then_some((me.last_executed.0, me.state_digest))
}

/// A client for status polls only; polls must not wait long for a dead replica.
fn status_client(settings: &ClientSettings) -> Result<Client, Failure> {
    let mut options = pbft_client::ClientOptions::with_timeout(settings.timeout);
    options.status_timeout = Duration::from_millis(600);
    Client::with_key(&settings.cluster, pbft_client::KeyPair::generate(), options)
        .map_err(Failure::client)
}

/// Seconds with two decimals.
fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// The restarted replica reached the others.
#[derive(Clone, Copy)]
struct Rejoin {
    /// Time from the restart.
    took: Duration,
    executed: u64,
    digest: Digest,
}

struct Events {
    initial_view: u64,
    killed: Option<(u32, u64, Instant)>,
    view_change: Option<(u64, u32, Duration)>,
    restarted: Option<Instant>,
    rejoined: Option<Rejoin>,
}

impl Events {
    fn killed_replica(&self) -> Option<usize> {
        self.killed.map(|(p, _, _)| p as usize)
    }
}

/// Restarts the killed replica with its configuration and data directory,
/// and replaces the status client (the old one would redial the restarted
/// replica only after its reconnect backoff).
fn restart(
    replicas: &mut NodeProcesses,
    events: &mut Events,
    status: &mut Client,
    settings: &ClientSettings,
) -> Result<String, Failure> {
    let Some((p, _, killed_at)) = events.killed else {
        return Ok(String::new());
    };
    replicas.start(p as usize)?;
    events.restarted = Some(Instant::now());
    *status = status_client(settings)?;
    Ok(format!(
        "restarted replica {p} (same configuration and data directory), {} after the kill",
        secs(killed_at.elapsed())
    ))
}

async fn demo(args: &DemoArgs, dir: &Path) -> CmdResult {
    let n = args.replicas;
    let total = args.ops.saturating_mul(args.clients as u64);
    println!(
        "pbft demo: {n} replicas, {} clients x {} operations",
        args.clients, args.ops
    );
    println!("working directory: {}", dir.display());
    let ports = free_udp_ports(n)?;
    let testnet = TestnetArgs {
        replicas: n,
        out: dir.to_path_buf(),
        base_port: None,
        timeout_base_ms: 500,
        only_config_client: false,
        read_mode: ReadModeArg::Ordered,
        docker: Default::default(),
    };
    let (nodes, client_toml) = generate(&testnet, &ports)?;
    let settings = ClientFile::load(&client_toml).map_err(Failure::failed)?;
    let f = settings.cluster.f();
    let quorum = 2 * f + 1;
    let rejoin_max = Duration::from_secs(args.rejoin_max);
    let mut replicas = NodeProcesses::start_all(
        &NodeCommand::with_arg(
            &std::env::current_exe().context("cannot find this executable")?,
            "node",
        ),
        &nodes,
        dir,
    )?;
    println!(
        "started {n} replica processes (logs: {}/node-*.log)",
        dir.display()
    );

    let mut status = status_client(&settings)?;
    wait_ready(&status, &mut replicas, Duration::from_secs(20)).await?;
    let initial = status.status().await;
    let initial_view = consensus_view(&initial).map(|v| v.0).unwrap_or(0);
    println!("all {n} replicas answer; view {initial_view}");

    let kvs = clients(&settings, args.clients)?;
    let progress = Arc::new(Progress::default());
    let stop_at = Instant::now() + Duration::from_secs(args.duration_max);
    // The clients pause a third of the way through while the primary is
    // killed, so that the crash always hits a running workload.
    let kill_at = total / 3;
    let (open_gate, gate) = tokio::sync::watch::channel(args.no_kill);
    let mut work = {
        let (kvs, progress) = (kvs.clone(), progress.clone());
        let ops = args.ops;
        let gate = Gate {
            at: kill_at,
            open: gate,
        };
        tokio::spawn(async move { workload(&kvs, ops, stop_at, progress, Some(gate)).await })
    };

    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} ops ({per_sec}) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut events = Events {
        initial_view,
        killed: None,
        view_change: None,
        restarted: None,
        rejoined: None,
    };
    let report: WorkloadReport = loop {
        tokio::select! {
            joined = &mut work => {
                break joined
                    .map_err(|e| Failure::failed(anyhow::anyhow!("workload task: {e}")))??;
            }
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        let done = progress.ok.load(Ordering::Relaxed) + progress.failed.load(Ordering::Relaxed);
        bar.set_position(done);
        replicas.check_running()?;
        if events.killed.is_none() && !args.no_kill && done >= kill_at {
            let s = status.status().await;
            let target = consensus_view(&s);
            // Let the clients go on whatever happens.
            let _ = open_gate.send(true);
            if let Some((view, primary, _)) = target {
                replicas.kill(primary as usize);
                events.killed = Some((primary, view, Instant::now()));
                bar.set_message(format!("killed primary r{primary}; view change..."));
                bar.suspend(|| {
                    println!(
                        "after {done} operations: SIGKILL to replica {primary}, the primary of view {view}"
                    )
                });
            }
        } else if let (Some((_, old_view, at)), None) = (events.killed, events.view_change) {
            let s = status.status().await;
            if let Some((view, primary, count)) = consensus_view(&s) {
                if view > old_view && count >= quorum {
                    let took = at.elapsed();
                    events.view_change = Some((view, primary, took));
                    bar.suspend(|| {
                        println!(
                            "view change: view {old_view} -> {view} (primary now replica {primary}), {} after the kill; service continues",
                            ms(took)
                        )
                    });
                    let line = restart(&mut replicas, &mut events, &mut status, &settings)?;
                    bar.set_message(format!("view {view}; restarted replica rejoining..."));
                    bar.suspend(|| println!("{line}"));
                }
            }
        } else if let (Some(p), Some(at), None) =
            (events.killed_replica(), events.restarted, events.rejoined)
        {
            if let Some((executed, digest)) = caught_up(&status.status().await, p) {
                let took = at.elapsed();
                events.rejoined = Some(Rejoin {
                    took,
                    executed,
                    digest,
                });
                bar.set_message("all replicas in step".to_string());
                bar.suspend(|| {
                    println!(
                        "rejoin: replica {p} reached the others at executed {executed} (digest {}), {} after its restart",
                        &digest.to_hex()[..16],
                        secs(took)
                    )
                });
            }
        }
    };
    bar.finish_and_clear();
    if let (Some((_, old_view, at)), None) = (events.killed, events.view_change) {
        // The workload may finish before a poll saw the new view.
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if let Some((view, primary, count)) = consensus_view(&status.status().await) {
                if view > old_view && count >= quorum {
                    let took = at.elapsed();
                    events.view_change = Some((view, primary, took));
                    println!(
                        "view change: view {old_view} -> {view} (primary now replica {primary}), observed {} after the kill",
                        ms(took)
                    );
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    println!(
        "workload finished: {} ok, {} failed in {:.1} s",
        report.ok,
        report.failed,
        report.elapsed.as_secs_f64()
    );
    if events.killed.is_some() && events.restarted.is_none() {
        let line = restart(&mut replicas, &mut events, &mut status, &settings)?;
        println!("{line}");
    }
    if let (Some(p), Some(at), None) = (events.killed_replica(), events.restarted, events.rejoined)
    {
        // The cluster is quiet now: the restarted replica must catch up
        // without new requests to carry it along.
        let until = at + rejoin_max;
        loop {
            replicas.check_running()?;
            if let Some((executed, digest)) = caught_up(&status.status().await, p) {
                let took = at.elapsed();
                events.rejoined = Some(Rejoin {
                    took,
                    executed,
                    digest,
                });
                println!(
                    "rejoin: replica {p} reached the others at executed {executed} (digest {}), {} after its restart",
                    &digest.to_hex()[..16],
                    secs(took)
                );
                break;
            }
            if Instant::now() >= until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let rejoin_failed = events.restarted.is_some() && events.rejoined.is_none();

    // After a failed rejoin, one poll for the table: waiting longer would not help.
    let converge_limit = if rejoin_failed {
        Duration::ZERO
    } else {
        Duration::from_secs(15)
    };
    let (equal, finals) = converge(&status, &replicas, converge_limit).await;
    let final_view = consensus_view(&finals)
        .map(|v| v.0)
        .unwrap_or(events.initial_view);
    println!();
    println!("== pbft demo summary ==");
    println!("replicas          {n} (f = {f}), {} clients", args.clients);
    println!(
        "operations        {} ok, {} failed (of {total})",
        report.ok, report.failed
    );
    println!(
        "throughput        {:.1} ops/s over {:.1} s",
        report.throughput(),
        report.elapsed.as_secs_f64()
    );
    println!(
        "latency           p50 {}  p99 {}  max {}",
        ms(report.quantile(0.5)),
        ms(report.quantile(0.99)),
        ms(Duration::from_micros(report.latency.max()))
    );
    match (events.killed, events.view_change) {
        (Some((p, v, _)), Some((nv, np, took))) => println!(
            "view changes      {} (killed primary r{p} in view {v}; view {nv} with primary r{np} after {})",
            final_view.saturating_sub(events.initial_view),
            ms(took)
        ),
        (Some((p, v, _)), None) => println!(
            "view changes      {} (killed primary r{p} in view {v}; view change not observed)",
            final_view.saturating_sub(events.initial_view)
        ),
        _ => println!(
            "view changes      {}",
            final_view.saturating_sub(events.initial_view)
        ),
    }
    if let (Some((p, _, killed_at)), Some(restarted_at)) = (events.killed, events.restarted) {
        let down = restarted_at.saturating_duration_since(killed_at);
        match events.rejoined {
            Some(r) => println!(
                "rejoin            replica {p} restarted {} after the kill; reached the others' last executed {} and digest {} in {}",
                secs(down),
                r.executed,
                &r.digest.to_hex()[..16],
                secs(r.took)
            ),
            None => println!(
                "rejoin            FAILED: replica {p} (restarted {} after the kill) did not reach the others' last executed sequence number and digest within {}",
                secs(down),
                secs(rejoin_max)
            ),
        }
    }
    for s in &finals {
        match &s.report {
            Some(r) => println!(
                "  replica {}      view {} executed {} checkpoint {} digest {}",
                s.id.0,
                r.view.0,
                r.last_executed.0,
                r.stable_checkpoint.0,
                &r.state_digest.to_hex()[..16]
            ),
            None => println!("  replica {}      unreachable", s.id.0),
        }
    }
    let live = (0..n).filter(|i| replicas.is_running(*i)).count();
    println!(
        "digests equal     {} ({live} of {n} replicas running)",
        if equal { "yes" } else { "no" }
    );
    for e in &report.errors {
        eprintln!("workload error: {e}");
    }
    if rejoin_failed {
        return Err(Failure::failed(anyhow::anyhow!(
            "the restarted replica did not rejoin within {}",
            secs(rejoin_max)
        )));
    }
    if !equal {
        return Err(Failure::failed(anyhow::anyhow!(
            "live replicas do not report the same state digest at the same sequence number"
        )));
    }
    if report.failed > 0 || report.ok == 0 {
        return Err(Failure::failed(anyhow::anyhow!(
            "the workload failed: {} operations failed",
            report.failed
        )));
    }
    Ok(())
}

/// `pbft demo`.
pub async fn run(args: &DemoArgs) -> CmdResult {
    if args.replicas < 4 || args.replicas % 3 != 1 {
        return Err(Failure::usage(anyhow::anyhow!(
            "--replicas must be 3f+1 with f >= 1 (4, 7, 10, ...); got {}",
            args.replicas
        )));
    }
    if args.rejoin_max == 0 || args.rejoin_max > 600 {
        return Err(Failure::usage(anyhow::anyhow!(
            "--rejoin-max must be 1..=600 seconds"
        )));
    }
    if args.clients == 0 || args.clients > 256 {
        return Err(Failure::usage(anyhow::anyhow!("--clients must be 1..=256")));
    }
    let dir = tempfile::Builder::new()
        .prefix("pbft-demo-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let result = tokio::select! {
        r = demo(args, dir.path()) => r,
        _ = tokio::signal::ctrl_c() => Err(Failure::failed(anyhow::anyhow!("interrupted"))),
    };
    // The replicas were killed when `demo`'s future was dropped.
    if args.keep {
        let path = dir.keep();
        println!("kept {}", path.display());
    }
    result
}
