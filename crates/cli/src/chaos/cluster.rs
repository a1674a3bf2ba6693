//! A cluster under test: replica processes, each in its own network
//! namespace ([`Net`]), started from the `pbft-node` binary.
//!
//! Every replica runs as `ip netns exec <ns> pbft-node --config node-<i>.toml
//! [--byzantine <behaviour>]`; `ip netns exec` execs the node in place, so
//! the child's pid is the node's and SIGKILL / SIGSTOP reach it directly.
//! [`Cluster`]'s `Drop` kills every replica (stopped ones too), then the
//! namespaces go with the [`Net`].

use super::net::Net;
use crate::testnet::{generate, TestnetArgs};
use anyhow::{bail, Context};
use pbft_client::{Client, ClientOptions, KeyPair, ReplicaStatus};
use pbft_config::{ClientFile, ClientSettings, ClusterFile};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
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
    /// The last exit status of each replica that exited by itself.
    pub exits: Vec<Option<ExitStatus>>,
    /// The behaviour each replica was last started with.
    pub byzantine: Vec<Option<String>>,
    node_bin: PathBuf,
    status: Client,
    /// The network (dropped after the processes).
    pub net: Net,
}

impl Cluster {
    /// Writes a testnet into `dir` with one namespace per replica and
    /// starts every replica, honest.
    pub fn start(dir: &Path, n: usize, timeout_base_ms: u64, node_bin: &Path) -> anyhow::Result<Cluster> {
        let net = Net::create(n)?;
        let args = TestnetArgs {
            replicas: n,
            out: dir.to_path_buf(),
            base_port: Some(PORT),
            timeout_base_ms,
            only_config_client: false,
        };
        let ports = vec![PORT; n];
        let (nodes, client_toml) = generate(&args, &ports).map_err(|f| f.into_error())?;
        // Point the cluster file at the namespaces' addresses.
        let cluster_path = dir.join("cluster.toml");
        let text = std::fs::read_to_string(&cluster_path).context("cannot read cluster.toml")?;
        let mut file: ClusterFile = toml::from_str(&text).context("cannot parse cluster.toml")?;
        for (i, r) in file.replicas.iter_mut().enumerate() {
            r.address = SocketAddr::new(net.addr(i), PORT);
        }
        std::fs::write(&cluster_path, toml::to_string(&file).context("cluster.toml")?)
            .context("cannot write cluster.toml")?;
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
            net,
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

    /// Replica `i`'s log file.
    pub fn log(&self, i: usize) -> PathBuf {
        self.dir.join(format!("node-{i}.log"))
    }

    /// Replica `i`'s data directory.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.join("data").join(format!("node-{i}"))
    }

    /// Starts replica `i` (if it is not running), honest or with a
    /// Byzantine behaviour (`extra` are more node arguments).
    pub fn start_replica_with(&mut self, i: usize, byzantine: Option<&str>, extra: &[String]) -> anyhow::Result<()> {
        if self.procs[i].is_some() {
            return Ok(());
        }
        let log_path = self.log(i);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        let log2 = log.try_clone().context("cannot duplicate a log file")?;
        let prefix = self.net.exec_prefix(i);
        let mut cmd = Command::new(&prefix[0]);
        cmd.args(&prefix[1..])
            .arg(&self.node_bin)
            .arg("--config")
            .arg(&self.nodes[i]);
        if let Some(b) = byzantine {
            cmd.arg("--byzantine").arg(b).args(extra);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .with_context(|| format!("cannot start replica {i}"))?;
        self.procs[i] = Some(Proc {
            child,
            paused: false,
        });
        self.byzantine[i] = byzantine.map(str::to_string);
        self.exits[i] = None;
        Ok(())
    }

    /// Starts replica `i`, honest.
    pub fn start_replica(&mut self, i: usize, byzantine: Option<&str>) -> anyhow::Result<()> {
        self.start_replica_with(i, byzantine, &[])
    }

    /// SIGKILL to replica `i` (paused or not), reaped.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.procs[i].take() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    fn signal(&mut self, i: usize, sig: &str, paused: bool) -> anyhow::Result<()> {
        let Some(p) = self.procs[i].as_mut() else {
            bail!("replica {i} is not running");
        };
        super::net::sh(&["kill", sig, &p.child.id().to_string()])?;
        p.paused = paused;
        Ok(())
    }

    /// SIGSTOP to replica `i`.
    pub fn pause(&mut self, i: usize) -> anyhow::Result<()> {
        self.signal(i, "-STOP", true)
    }

    /// SIGCONT to replica `i`.
    pub fn resume(&mut self, i: usize) -> anyhow::Result<()> {
        self.signal(i, "-CONT", false)
    }

    /// Whether replica `i`'s process runs (it may be paused).
    pub fn running(&mut self, i: usize) -> bool {
        self.poll_exits();
        self.procs[i].is_some()
    }

    /// Notes replicas that exited by themselves.
    pub fn poll_exits(&mut self) {
        for i in 0..self.procs.len() {
            let exited = match self.procs[i].as_mut() {
                Some(p) => p.child.try_wait().ok().flatten(),
                None => None,
            };
            if let Some(status) = exited {
                self.procs[i] = None;
                self.exits[i] = Some(status);
            }
        }
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
        let text = std::fs::read_to_string(self.log(i)).unwrap_or_default();
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
