//! A cluster under test, on one of two backends:
//!
//! * **processes**: replica processes, each in its own network namespace
//!   ([`Net`]), started from the `pbft-node` binary as `ip netns exec <ns>
//!   pbft-node --config node-<i>.toml [--byzantine <behaviour>]`; `ip netns
//!   exec` execs the node in place, so the child's pid is the node's and
//!   SIGKILL / SIGSTOP reach it directly;
//! * **docker**: one container per replica ([`Docker`]).
//!
//! Scenarios see one interface: start (honest or Byzantine), kill -9,
//! pause/resume, and network faults inside a replica's namespace
//! ([`super::net`]). [`Cluster`]'s `Drop` kills every replica (stopped ones
//! too), then the namespaces or the docker network go too.

use super::docker::Docker;
use super::net::{self, Net, Shaping};
use crate::testnet::{generate, TestnetArgs};
use anyhow::{bail, Context};
use pbft_client::{Client, ClientOptions, KeyPair, ReplicaStatus};
use pbft_config::{ClientFile, ClientSettings, ClusterFile};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The UDP port every replica listens on, in its own namespace.
const PORT: u16 = 7000;

/// One replica process.
struct Proc {
    child: Child,
    paused: bool,
}

/// A running cluster of replica processes.
pub struct Cluster {
    /// The cluster's directory: configuration, data, logs.
    pub dir: PathBuf,
    /// The client settings (client.toml).
    pub settings: ClientSettings,
    nodes: Vec<PathBuf>,
    procs: Vec<Option<Proc>>,
    /// How each replica that exited by itself ended.
    pub exits: Vec<Option<String>>,
    /// The behaviour each replica was last started with.
    pub byzantine: Vec<Option<String>>,
    node_bin: PathBuf,
    status: Client,
    backend: Backend,
}

/// Where the replicas run.
enum Backend {
    /// Processes; the network is dropped after them.
    Processes(Net),
    /// Containers.
    Docker(Docker),
}

/// `--backend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// Replica processes in network namespaces.
    Processes,
    /// Replica containers from the image pbft-node:local (docker/build.sh).
    Docker,
}

impl Cluster {
    /// Writes a testnet into `dir` with an address per replica on the
    /// backend's network and starts every replica, honest.
    pub fn start(
        dir: &Path,
        n: usize,
        timeout_base_ms: u64,
        node_bin: &Path,
        kind: BackendKind,
    ) -> anyhow::Result<Cluster> {
        let backend = match kind {
            BackendKind::Processes => Backend::Processes(Net::create(n)?),
            BackendKind::Docker => Backend::Docker(Docker::create(n, dir)?),
        };
        let args = TestnetArgs {
            replicas: n,
            out: dir.to_path_buf(),
            base_port: Some(PORT),
            timeout_base_ms,
            only_config_client: false,
            read_mode: crate::testnet::ReadModeArg::Ordered,
            docker: Default::default(),
        };
        let ports = vec![PORT; n];
        let (nodes, client_toml) = generate(&args, &ports).map_err(|f| f.into_error())?;
        // Point the cluster file at the namespaces' addresses.
        let cluster_path = dir.join("cluster.toml");
        let text = std::fs::read_to_string(&cluster_path).context("cannot read cluster.toml")?;
        let mut file: ClusterFile = toml::from_str(&text).context("cannot parse cluster.toml")?;
        for (i, r) in file.replicas.iter_mut().enumerate() {
            let ip = match &backend {
                Backend::Processes(net) => net.addr(i),
                Backend::Docker(d) => d.addr(i),
            };
            r.address = SocketAddr::new(ip, PORT);
        }
        std::fs::write(
            &cluster_path,
            toml::to_string(&file).context("cluster.toml")?,
        )
        .context("cannot write cluster.toml")?;
        if kind == BackendKind::Docker {
            for node in &nodes {
                let text = std::fs::read_to_string(node).context("cannot read a node file")?;
                let mut file: pbft_config::NodeFile =
                    toml::from_str(&text).context("cannot parse a node file")?;
                file.data_dir = "/data".into();
                std::fs::write(node, toml::to_string(&file).context("node file")?)
                    .context("cannot write a node file")?;
            }
        }
        let settings = ClientFile::load(&client_toml).context("cannot load client.toml")?;
        let mut options = ClientOptions::with_timeout(Duration::from_secs(5));
        options.status_timeout = Duration::from_millis(700);
        let status = Client::with_key(&settings.cluster, KeyPair::generate(), options)
            .context("cannot create the status client")?;
        let mut cluster = Cluster {
            dir: dir.to_path_buf(),
            settings,
            nodes,
            procs: (0..n).map(|_| None).collect(),
            exits: vec![None; n],
            byzantine: vec![None; n],
            node_bin: node_bin.to_path_buf(),
            status,
            backend,
        };
        for i in 0..n {
            cluster.start_replica(i, None)?;
        }
        Ok(cluster)
    }

    /// n.
    pub fn n(&self) -> usize {
        self.procs.len()
    }

    /// f.
    pub fn f(&self) -> usize {
        (self.n() - 1) / 3
    }

    /// Replica `i`'s data directory.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.join("data").join(format!("node-{i}"))
    }

    /// Sets replica `i`'s record log segment size (`segment_bytes` in its
    /// node file), from its next start on.
    pub fn set_segment_bytes(&self, i: usize, bytes: u64) -> anyhow::Result<()> {
        let path = &self.nodes[i];
        let text = std::fs::read_to_string(path).context("cannot read a node file")?;
        let mut file: pbft_config::NodeFile =
            toml::from_str(&text).context("cannot parse a node file")?;
        file.segment_bytes = Some(bytes);
        std::fs::write(path, toml::to_string(&file).context("node file")?)
            .context("cannot write a node file")
    }

    /// Starts replica `i` (if it is not running), honest or with a
    /// Byzantine behaviour (`extra` are more node arguments).
    pub fn start_replica_with(
        &mut self,
        i: usize,
        byzantine: Option<&str>,
        extra: &[String],
    ) -> anyhow::Result<()> {
        if self.is_up(i) {
            return Ok(());
        }
        let mut args: Vec<String> = Vec::new();
        if let Some(b) = byzantine {
            args.push("--byzantine".into());
            args.push(b.into());
            args.extend(extra.iter().cloned());
        }
        match &mut self.backend {
            Backend::Docker(d) => d.start(i, &args)?,
            Backend::Processes(net) => {
                let log_path = self.dir.join(format!("node-{i}.log"));
                let log = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log_path)
                    .with_context(|| format!("cannot open {}", log_path.display()))?;
                let log2 = log.try_clone().context("cannot duplicate a log file")?;
                let prefix = net.exec_prefix(i);
                let child = Command::new(&prefix[0])
                    .args(&prefix[1..])
                    .arg(&self.node_bin)
                    .arg("--config")
                    .arg(&self.nodes[i])
                    .args(&args)
                    .stdin(Stdio::null())
                    .stdout(log)
                    .stderr(log2)
                    .spawn()
                    .with_context(|| format!("cannot start replica {i}"))?;
                self.procs[i] = Some(Proc {
                    child,
                    paused: false,
                });
            }
        }
        self.byzantine[i] = byzantine.map(str::to_string);
        self.exits[i] = None;
        Ok(())
    }

    fn is_up(&self, i: usize) -> bool {
        match &self.backend {
            Backend::Processes(_) => self.procs[i].is_some(),
            Backend::Docker(d) => d.is_running(i),
        }
    }

    /// Starts replica `i`, honest.
    pub fn start_replica(&mut self, i: usize, byzantine: Option<&str>) -> anyhow::Result<()> {
        self.start_replica_with(i, byzantine, &[])
    }

    /// SIGKILL to replica `i` (paused or not), reaped.
    pub fn kill(&mut self, i: usize) {
        if let Backend::Docker(d) = &mut self.backend {
            d.kill(i);
        }
        if let Some(mut p) = self.procs[i].take() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    fn signal(&mut self, i: usize, sig: &str, paused: bool) -> anyhow::Result<()> {
        if let Backend::Docker(d) = &self.backend {
            return if paused { d.pause(i) } else { d.resume(i) };
        }
        let Some(p) = self.procs[i].as_mut() else {
            bail!("replica {i} is not running");
        };
        net::sh(&["kill", sig, &p.child.id().to_string()])?;
        p.paused = paused;
        Ok(())
    }

    /// SIGSTOP to replica `i` (`docker pause` for a container).
    pub fn pause(&mut self, i: usize) -> anyhow::Result<()> {
        self.signal(i, "-STOP", true)
    }

    /// SIGCONT to replica `i` (`docker unpause`).
    pub fn resume(&mut self, i: usize) -> anyhow::Result<()> {
        self.signal(i, "-CONT", false)
    }

    /// Whether replica `i` runs (it may be paused).
    pub fn running(&mut self, i: usize) -> bool {
        self.poll_exits();
        self.is_up(i)
    }

    /// Notes replicas that exited by themselves.
    pub fn poll_exits(&mut self) {
        for i in 0..self.procs.len() {
            let exited = match (&mut self.backend, self.procs[i].as_mut()) {
                (Backend::Docker(d), _) => d.exited(i).map(|code| format!("exit code {code}")),
                (_, Some(p)) => p.child.try_wait().ok().flatten().map(|s| s.to_string()),
                _ => None,
            };
            if let Some(status) = exited {
                self.procs[i] = None;
                self.exits[i] = Some(status);
            }
        }
    }

    /// The command prefix that runs a program in replica `i`'s network namespace.
    fn ns_prefix(&self, i: usize) -> anyhow::Result<Vec<String>> {
        match &self.backend {
            Backend::Processes(net) => Ok(net.exec_prefix(i)),
            Backend::Docker(d) => d.exec_prefix(i),
        }
    }

    /// Cuts replica `i` off from everyone, both ways.
    pub fn isolate(&self, i: usize) -> anyhow::Result<()> {
        net::isolate(&self.ns_prefix(i)?)
    }

    /// Drops everything replica `i` sends.
    pub fn mute(&self, i: usize) -> anyhow::Result<()> {
        net::mute(&self.ns_prefix(i)?)
    }

    /// Delay, jitter and loss on what replica `i` sends ([`net::shape`]).
    pub fn shape(
        &self,
        i: usize,
        delay_ms: u32,
        jitter_ms: u32,
        loss: u8,
    ) -> anyhow::Result<Shaping> {
        net::shape(&self.ns_prefix(i)?, delay_ms, jitter_ms, loss)
    }

    /// Removes the network faults of replica `i`.
    pub fn heal(&self, i: usize) -> anyhow::Result<()> {
        net::heal(&self.ns_prefix(i)?)
    }

    /// Every replica's status (`None` where it did not answer).
    pub async fn statuses(&self) -> Vec<ReplicaStatus> {
        self.status.status().await
    }

    /// The (view, primary) most active replicas report.
    pub async fn view(&self) -> Option<(u64, usize)> {
        consensus_view(&self.statuses().await)
    }

    /// The current primary, waiting up to `limit` for a quorum to agree on a view.
    pub async fn primary(&self, limit: Duration) -> anyhow::Result<(u64, usize)> {
        let until = Instant::now() + limit;
        loop {
            if let Some(v) = self.view().await {
                return Ok(v);
            }
            if Instant::now() >= until {
                bail!("no quorum of replicas agrees on a view within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until every replica answers.
    pub async fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let until = Instant::now() + limit;
        loop {
            self.poll_exits();
            if let Some(i) = (0..self.n()).find(|&i| self.exits[i].is_some()) {
                bail!(
                    "replica {i} exited at startup; last lines of its log:\n{}",
                    self.log_tail(i, 10)
                );
            }
            if self.statuses().await.iter().all(ReplicaStatus::reachable) {
                return Ok(());
            }
            if Instant::now() >= until {
                bail!("the replicas did not all answer within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The last `lines` lines of replica `i`'s log.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        if let Backend::Docker(d) = &self.backend {
            if let Some(text) = d.log_tail(i, lines) {
                return text;
            }
        }
        let text =
            std::fs::read_to_string(self.dir.join(format!("node-{i}.log"))).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(lines).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.procs.len() {
            self.kill(i);
        }
    }
}

/// The (view, primary) that most active replicas report, if at least f+1
/// of them (so one honest replica) do.
pub fn consensus_view(statuses: &[ReplicaStatus]) -> Option<(u64, usize)> {
    let n = statuses.len();
    let enough = (n.saturating_sub(1)) / 3 + 1;
    let mut counts: BTreeMap<(u64, u32), usize> = BTreeMap::new();
    for r in statuses.iter().filter_map(|s| s.report.as_ref()) {
        if r.active {
            *counts.entry((r.view.0, r.primary.0)).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .filter(|(_, c)| *c >= enough)
        .max_by_key(|(k, c)| (*c, k.0))
        .map(|((v, p), _)| (v, p as usize))
}
