//! `pbft bench`: throughput, latency and where the time goes.
//!
//! 1. Starts a local cluster of N replica processes (`pbft node`, metrics on
//!    loopback) or attaches to one (`--config client.toml`).
//! 2. Measures this machine's signature-check costs with pbft-crypto's
//!    verifier (the crypto ceiling), while the cluster is idle.
//! 3. Connects every client to every replica, then runs the load: warm-up
//!    (not counted), then the measured interval. At its start and end it
//!    scrapes every replica's metrics and reads CPU times; the report is
//!    made of the differences.
//!
//! See `docs/benchmarks.md`.

mod ceiling;
mod cpu;
mod load;
mod report;
mod scrape;

use crate::testnet::{free_udp_ports, generate, ReadModeArg, TestnetArgs};
use crate::workload::clients;
use crate::{CmdResult, Failure};
use anyhow::{anyhow, Context};
use clap::Args;
use pbft_client::{Client, ClientOptions, KeyPair, ReplicaStatus};
use pbft_config::{ClientFile, ClientSettings, Durability, NodeFile};
use pbft_node::process::{NodeCommand, NodeProcesses};
use report::{ReplicaSnapshot, Report, Snapshot};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest measured interval, in seconds.
const DURATION_MAX: f64 = 600.0;
/// Longest warm-up, in seconds.
const WARMUP_MAX: f64 = 300.0;
/// Largest written value (the client frame limit is 1 MiB).
const PAYLOAD_MAX: usize = 256 * 1024;
/// Most replicas of a cluster the bench starts.
const REPLICAS_MAX: usize = 31;
/// How long to wait for replicas to answer and clients to connect.
const READY_MAX: Duration = Duration::from_secs(30);
/// How long clients may take to finish their last operation after the end.
const DRAIN_MAX: Duration = Duration::from_secs(10);

/// Arguments of `pbft bench`.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Attach to the cluster of this client file (client.toml) instead of
    /// starting one. Replica metrics are read from --metrics, else from
    /// node-<i>.toml files beside the cluster file, if any.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Replicas of the cluster to start (3f+1 with f >= 1: 4, 7, 10, ...).
    #[arg(long, default_value_t = 4)]
    pub replicas: usize,
    /// Concurrent clients, each with its own key and one operation at a time.
    #[arg(long, default_value_t = 10)]
    pub clients: usize,
    /// Open loop: operations due per second in total (default: closed loop,
    /// each client issues its next operation when the last completes).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Bytes of each written value.
    #[arg(long, default_value_t = 128)]
    pub payload: usize,
    /// Share of operations that are reads (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    pub read_share: f64,
    /// Seconds of load before the measured interval (not counted).
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Seconds of the measured interval.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Stop after this many operations in all (warm-up included).
    #[arg(long, default_value_t = 10_000_000)]
    pub ops_max: u64,
    /// With --config: the replicas' metrics addresses, in replica order
    /// (comma-separated).
    #[arg(long, value_delimiter = ',', requires = "config")]
    pub metrics: Vec<SocketAddr>,
    /// A started cluster's read mode.
    #[arg(long, value_enum, default_value_t = ReadModeArg::Ordered)]
    pub read_mode: ReadModeArg,
    /// A started cluster's replicas' largest batch (default: the node's).
    #[arg(long)]
    pub batch_size_max: Option<usize>,
    /// A started cluster's replicas' most sequence numbers in flight
    /// (default: the node's).
    #[arg(long)]
    pub in_flight_max: Option<u64>,
    /// A started cluster's record-log durability. `none` never syncs the
    /// log: it gives up crash safety, to measure what the fsyncs cost.
    #[arg(long, value_enum, default_value_t = DurabilityArg::Fsync)]
    pub durability: DurabilityArg,
    /// Also run `openssl speed -seconds 1 ed25519` (if on PATH) for reference.
    #[arg(long)]
    pub openssl: bool,
    /// Keep a started cluster's directory (configuration, data, logs).
    #[arg(long)]
    pub keep: bool,
    /// Print one JSON object on standard output.
    #[arg(long)]
    pub json: bool,
    /// No progress line (it is shown only when standard error is a terminal).
    #[arg(long)]
    pub quiet: bool,
}

/// `--durability` values, one per [`Durability`].
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DurabilityArg {
    /// A record counts once written and fdatasynced (the node's default).
    Fsync,
    /// Written, never synced: no crash safety (benchmarks only).
    None,
}

impl From<DurabilityArg> for Durability {
    fn from(arg: DurabilityArg) -> Durability {
        match arg {
            DurabilityArg::Fsync => Durability::Fsync,
            DurabilityArg::None => Durability::None,
        }
    }
}

fn usage(message: String) -> Failure {
    Failure::usage(anyhow!(message))
}

impl BenchArgs {
    /// Rejects arguments out of range, with a usage error naming the option.
    pub fn validate(&self) -> Result<(), Failure> {
        if self.config.is_none()
            && (self.replicas < 4 || self.replicas % 3 != 1 || self.replicas > REPLICAS_MAX)
        {
            return Err(usage(format!(
                "--replicas must be 3f+1 with f >= 1, at most {REPLICAS_MAX} (4, 7, 10, ...); got {}",
                self.replicas
            )));
        }
        if self.config.is_some()
            && (self.batch_size_max.is_some()
                || self.in_flight_max.is_some()
                || self.keep
                || self.durability != DurabilityArg::Fsync)
        {
            return Err(usage(
                "--batch-size-max, --in-flight-max, --durability and --keep are for a cluster the bench starts, \
                 not with --config"
                    .into(),
            ));
        }
        if self.config.is_some() && self.read_mode != ReadModeArg::Ordered {
            return Err(usage(
                "--read-mode is for a cluster the bench starts; an attached cluster's is in its cluster file".into(),
            ));
        }
        if self.clients == 0 || self.clients > 1000 {
            return Err(usage(format!(
                "--clients must be 1..=1000; got {}",
                self.clients
            )));
        }
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0 && rate <= 1_000_000.0) {
                return Err(usage(format!(
                    "--rate must be more than 0 and at most 1000000 operations per second; got {rate}"
                )));
            }
        }
        if self.payload > PAYLOAD_MAX {
            return Err(usage(format!(
                "--payload must be at most {PAYLOAD_MAX} bytes; got {}",
                self.payload
            )));
        }
        if !(0.0..=1.0).contains(&self.read_share) {
            return Err(usage(format!(
                "--read-share must be between 0 and 1; got {}",
                self.read_share
            )));
        }
        if !(self.warmup.is_finite() && (0.0..=WARMUP_MAX).contains(&self.warmup)) {
            return Err(usage(format!(
                "--warmup must be 0..={WARMUP_MAX} seconds; got {}",
                self.warmup
            )));
        }
        if !(self.duration.is_finite() && self.duration > 0.0 && self.duration <= DURATION_MAX) {
            return Err(usage(format!(
                "--duration must be more than 0 and at most {DURATION_MAX} seconds; got {}",
                self.duration
            )));
        }
        if self.ops_max == 0 {
            return Err(usage("--ops-max must be positive".into()));
        }
        if self.batch_size_max == Some(0) {
            return Err(usage("--batch-size-max must be positive".into()));
        }
        if self.in_flight_max == Some(0) {
            return Err(usage("--in-flight-max must be positive".into()));
        }
        Ok(())
    }
}

/// The cluster under test.
struct Cluster {
    settings: ClientSettings,
    /// Metrics address per replica, where known.
    metrics: Vec<Option<SocketAddr>>,
    /// The replica processes, if this bench started them.
    processes: Option<NodeProcesses>,
}

impl Cluster {
    fn pid(&self, i: usize) -> Option<u32> {
        self.processes.as_ref().and_then(|p| p.pid(i))
    }
}

/// Metrics addresses of an attached cluster: `--metrics`, else the
/// `metrics` of `node-<i>.toml` beside the client file, where present.
fn attached_metrics(
    args: &BenchArgs,
    client_file: &Path,
    n: usize,
) -> Result<Vec<Option<SocketAddr>>, Failure> {
    if !args.metrics.is_empty() {
        if args.metrics.len() != n {
            return Err(usage(format!(
                "--metrics lists {} addresses; the cluster has {n} replicas",
                args.metrics.len()
            )));
        }
        return Ok(args.metrics.iter().copied().map(Some).collect());
    }
    let dir = client_file.parent().unwrap_or(Path::new("."));
    Ok((0..n)
        .map(|i| {
            NodeFile::load(&dir.join(format!("node-{i}.toml")))
                .ok()
                .and_then(|node| node.metrics)
        })
        .collect())
}

/// Writes and starts a local cluster in `dir`.
fn start_cluster(args: &BenchArgs, dir: &Path) -> Result<Cluster, Failure> {
    let ports = free_udp_ports(args.replicas)?;
    let testnet = TestnetArgs {
        replicas: args.replicas,
        out: dir.to_path_buf(),
        base_port: None,
        timeout_base_ms: 1000,
        only_config_client: false,
        read_mode: args.read_mode,
        docker: Default::default(),
    };
    let (nodes, client_toml) = generate(&testnet, &ports)?;
    let mut metrics = Vec::new();
    for path in &nodes {
        let node = NodeFile::load(path).map_err(Failure::failed)?;
        metrics.push(node.metrics);
        if args.batch_size_max.is_some()
            || args.in_flight_max.is_some()
            || args.durability != DurabilityArg::Fsync
        {
            edit_node_file(path, args)?;
        }
    }
    let settings = ClientFile::load(&client_toml).map_err(Failure::failed)?;
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let processes = NodeProcesses::start_all(&NodeCommand::with_arg(&exe, "node"), &nodes, dir)?;
    Ok(Cluster {
        settings,
        metrics,
        processes: Some(processes),
    })
}

/// Sets `--batch-size-max`, `--in-flight-max` and `--durability` in a
/// generated node file.
fn edit_node_file(path: &Path, args: &BenchArgs) -> Result<(), Failure> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut node: NodeFile = toml::from_str(&text).context("cannot parse a node file")?;
    if let Some(batch) = args.batch_size_max {
        node.tuning.batch_size_max = batch;
    }
    if let Some(in_flight) = args.in_flight_max {
        node.tuning.in_flight_max = in_flight;
    }
    node.storage.durability = args.durability.into();
    let text = toml::to_string(&node).context("cannot encode a node file")?;
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Waits until every replica answers a status request and, for a started
/// cluster, every metrics server answers.
async fn wait_ready(cluster: &mut Cluster) -> CmdResult {
    let mut options = ClientOptions::with_timeout(cluster.settings.timeout);
    options.status_timeout = Duration::from_millis(600);
    let status = Client::with_key(&cluster.settings.cluster, KeyPair::generate(), options)
        .map_err(Failure::client)?;
    let until = Instant::now() + READY_MAX;
    loop {
        if let Some(p) = &mut cluster.processes {
            p.check_running()?;
        }
        let answers = status.status().await;
        let replicas_ready = answers.iter().all(ReplicaStatus::reachable);
        let mut metrics_ready = true;
        if cluster.processes.is_some() {
            for addr in cluster.metrics.iter().flatten() {
                metrics_ready &= scrape::scrape(*addr).await.is_ok();
            }
        }
        if replicas_ready && metrics_ready {
            status.close().await;
            return Ok(());
        }
        if Instant::now() >= until {
            let missing: Vec<String> = answers
                .iter()
                .filter(|s| !s.reachable())
                .map(|s| s.id.0.to_string())
                .collect();
            return Err(Failure::unknown(anyhow!(
                "the cluster was not ready within {READY_MAX:?} (replicas not answering: [{}]; metrics ready: {metrics_ready})",
                missing.join(", ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Scrapes every replica and reads CPU times and resident memory.
async fn snapshot(cluster: &Cluster) -> Snapshot {
    let mut replicas = Vec::new();
    for (i, addr) in cluster.metrics.iter().enumerate() {
        let samples = match addr {
            Some(a) => scrape::scrape(*a).await.map_err(|e| format!("{e:#}")),
            None => Err("no metrics address".to_string()),
        };
        let pid = cluster.pid(i);
        let cpu = pid.and_then(cpu::pid_seconds);
        let rss = pid
            .and_then(pbft_node::process::resident_bytes)
            .or_else(|| {
                let s = samples.as_ref().ok()?;
                let name = "process_resident_memory_bytes";
                s.has(name).then(|| s.get(name, &[]) as u64)
            });
        replicas.push(ReplicaSnapshot { samples, cpu, rss });
    }
    Snapshot {
        at: Instant::now(),
        replicas,
        client_cpu: cpu::self_seconds(),
    }
}

/// The live progress line, once a second on a terminal.
fn progress_line(
    live: &load::Live,
    plan: &load::Plan,
    started: Instant,
    last: &mut (Instant, u64),
) -> String {
    let now = Instant::now();
    let ok = live.ok.load(Ordering::Relaxed);
    let rate = (ok - last.1) as f64 / now.duration_since(last.0).as_secs_f64().max(1e-3);
    *last = (now, ok);
    let phase = if now < plan.start {
        format!(
            "warm-up {:.0}/{:.0} s",
            now.duration_since(started).as_secs_f64(),
            plan.start.duration_since(started).as_secs_f64()
        )
    } else {
        format!(
            "measuring {:.0}/{:.0} s",
            now.duration_since(plan.start).as_secs_f64(),
            plan.end.duration_since(plan.start).as_secs_f64()
        )
    };
    format!(
        "\r[{phase}] {rate:>9.0} ops/s  {ok} ok  {} failed  {} missed ",
        live.failed.load(Ordering::Relaxed),
        live.missed.load(Ordering::Relaxed)
    )
}

async fn bench(args: &BenchArgs, cluster: &mut Cluster) -> Result<Report, Failure> {
    wait_ready(cluster).await?;
    let n = cluster.settings.cluster.n();
    let payload = args.payload;
    let cost =
        tokio::task::spawn_blocking(move || ceiling::measure(payload, Duration::from_millis(400)))
            .await
            .map_err(|e| Failure::failed(anyhow!("the crypto calibration failed: {e}")))?;
    let openssl = if args.openssl {
        ceiling::openssl_verify_per_second().await
    } else {
        None
    };

    let kvs = clients(&cluster.settings, args.clients)?;
    let until = Instant::now() + READY_MAX;
    while kvs.iter().any(|kv| kv.client().connected_replicas() < n) {
        if Instant::now() >= until {
            return Err(Failure::unknown(anyhow!(
                "not every client connected to all {n} replicas within {READY_MAX:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let started = Instant::now();
    let plan = load::Plan {
        rate: args.rate,
        payload: args.payload,
        read_share: args.read_share,
        start: started + Duration::from_secs_f64(args.warmup),
        end: started + Duration::from_secs_f64(args.warmup + args.duration),
        ops_max: args.ops_max,
    };
    let live = Arc::new(load::Live::default());
    let mut work = {
        let (kvs, plan, live) = (kvs.clone(), plan.clone(), live.clone());
        tokio::spawn(async move { load::run(&kvs, &plan, live).await })
    };
    let show = !args.quiet && std::io::stderr().is_terminal();
    let mut last = (started, 0u64);
    let mut before = None;
    let mut after = None;
    let mut finished = None;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut next_line = started + Duration::from_secs(1);
    while after.is_none() {
        tokio::select! {
            joined = &mut work, if finished.is_none() => {
                finished = Some(joined.map_err(|e| Failure::failed(anyhow!("the load task failed: {e}")))?);
            }
            _ = tick.tick() => {}
        }
        if let Some(p) = &mut cluster.processes {
            p.check_running()?;
        }
        let now = Instant::now();
        if before.is_none() && (now >= plan.start || finished.is_some()) {
            before = Some(snapshot(cluster).await);
        }
        if before.is_some() && (now >= plan.end || finished.is_some()) {
            after = Some(snapshot(cluster).await);
            live.stop.store(true, Ordering::Relaxed);
        }
        if show && now >= next_line {
            eprint!("{}", progress_line(&live, &plan, started, &mut last));
            next_line = now + Duration::from_secs(1);
        }
    }
    if show {
        eprintln!();
    }
    let load = match finished {
        Some(l) => l,
        None => match tokio::time::timeout(DRAIN_MAX, &mut work).await {
            Ok(joined) => {
                joined.map_err(|e| Failure::failed(anyhow!("the load task failed: {e}")))?
            }
            Err(_) => {
                work.abort();
                return Err(Failure::unknown(anyhow!(
                    "clients did not finish their last operation within {DRAIN_MAX:?} after the end"
                )));
            }
        },
    };
    for kv in &kvs {
        kv.client().close().await;
    }
    let (Some(before), Some(after)) = (before, after) else {
        return Err(Failure::failed(anyhow!(
            "the measured interval was never taken"
        )));
    };
    Ok(Report::new(report::Inputs {
        args,
        n,
        load,
        missed: live.missed.load(Ordering::Relaxed),
        before,
        after,
        cost,
        openssl,
        cores: std::thread::available_parallelism().map_or(1, |c| c.get()),
    }))
}

/// `pbft bench`.
pub async fn run(args: &BenchArgs) -> CmdResult {
    args.validate()?;
    let dir = match &args.config {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("pbft-bench-")
                .tempdir()
                .context("cannot create a temporary directory")?,
        ),
    };
    let mut cluster = match (&args.config, &dir) {
        (Some(config), _) => {
            let settings = ClientFile::load(config).map_err(Failure::usage)?;
            let metrics = attached_metrics(args, config, settings.cluster.n())?;
            Cluster {
                settings,
                metrics,
                processes: None,
            }
        }
        (None, Some(dir)) => start_cluster(args, dir.path())?,
        (None, None) => return Err(Failure::failed(anyhow!("no cluster directory"))),
    };
    let result = tokio::select! {
        r = bench(args, &mut cluster) => r,
        _ = tokio::signal::ctrl_c() => Err(Failure::failed(anyhow!("interrupted"))),
    };
    // Stops the replicas before the directory goes.
    drop(cluster);
    if let (true, Some(dir)) = (args.keep, dir) {
        eprintln!("kept {}", dir.keep().display());
    }
    let report = result?;
    if args.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.human());
    }
    for e in &report.errors {
        eprintln!("error: {e}");
    }
    report.verdict()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn parse(args: &[&str]) -> Result<BenchArgs, String> {
        let mut argv = vec!["bench"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv)
            .map(|c| c.bench)
            .map_err(|e| e.to_string())
    }

    fn rejected(args: &[&str], mentions: &str) {
        let parsed = parse(args).expect("parses");
        let e = parsed.validate().expect_err("rejected");
        let text = e.into_error().to_string();
        assert!(text.contains(mentions), "{args:?}: {text}");
    }

    #[test]
    fn defaults_are_valid() {
        let a = parse(&[]).expect("parses");
        a.validate().map_err(|f| f.into_error()).expect("valid");
        assert_eq!((a.replicas, a.clients, a.payload), (4, 10, 128));
        assert!(a.rate.is_none());
        assert_eq!(a.durability, DurabilityArg::Fsync);
        assert!(parse(&["--durability", "fsnyc"]).is_err());
    }

    #[test]
    fn out_of_range_arguments_are_usage_errors() {
        rejected(&["--replicas", "5"], "--replicas");
        rejected(&["--replicas", "1"], "--replicas");
        rejected(&["--replicas", "34"], "--replicas");
        rejected(&["--clients", "0"], "--clients");
        rejected(&["--rate", "0"], "--rate");
        rejected(&["--rate", "NaN"], "--rate");
        rejected(&["--payload", "300000"], "--payload");
        rejected(&["--read-share", "1.5"], "--read-share");
        rejected(&["--warmup=-1"], "--warmup");
        rejected(&["--warmup", "301"], "--warmup");
        rejected(&["--duration", "0"], "--duration");
        rejected(&["--duration", "601"], "--duration");
        rejected(&["--ops-max", "0"], "--ops-max");
        rejected(&["--config", "c.toml", "--keep"], "--keep");
        rejected(
            &["--config", "c.toml", "--durability", "none"],
            "--durability",
        );
        rejected(
            &["--config", "c.toml", "--read-mode", "fast"],
            "--read-mode",
        );
        for (args, code) in [
            (
                vec!["--config", "c.toml", "--metrics", "127.0.0.1:1,127.0.0.1:2"],
                0,
            ),
            (
                vec!["--rate", "500", "--read-share", "0.5", "--payload", "0"],
                0,
            ),
        ] {
            let a = parse(&args).expect("parses");
            assert_eq!(a.validate().is_ok(), code == 0, "{args:?}");
        }
    }

    #[test]
    fn metrics_need_an_attached_cluster_and_parse_as_addresses() {
        assert!(parse(&["--metrics", "127.0.0.1:1"]).is_err());
        assert!(parse(&["--config", "c.toml", "--metrics", "localhost"]).is_err());
    }
}
