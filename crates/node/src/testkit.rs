//! Local test clusters and a minimal raw client, for tests (this crate's, and
//! other crates' with the `testkit` feature).
//!
//! * [`generate`] writes a cluster into a directory: one secret key per
//!   replica and one for a client (mode 0600), `cluster.toml` with free
//!   loopback ports, and `node-<i>.toml` per replica (data in `data/<i>`,
//!   initialised; metrics on a free loopback TCP port).
//! * [`TestClient`] talks to the replicas with nothing but a pbft-net client
//!   endpoint and core messages: signs requests, sends them to the primary,
//!   retransmits to everyone, and accepts a result once f+1 replicas sent
//!   matching, validly signed replies.
//! * [`start_all`] runs a [`TestCluster`]'s replicas as real `pbft-node`
//!   processes ([`NodeProcesses`], shared with the `pbft` tool).

pub use crate::process::{NodeCommand, NodeProcesses};
use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use pbft_app::kv::{KvOp, KvResult};
use pbft_config::{Cluster, Node, NodeFile};
use pbft_core::message::{Request, StatusReport, StatusRequest};
use pbft_core::{ClientId, Config, Message, ReplicaId, RequestId, View};
use pbft_crypto::{keyfile, KeyPair, Signer, Verifier};
use pbft_net::{Endpoint, InboundFrame, NetConfig, SendError};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;

/// What [`generate`] builds.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Replicas (3f+1).
    pub n: usize,
    /// The cluster id.
    pub cluster_id: u64,
    /// K.
    pub checkpoint_interval: u64,
    /// L, a multiple of K.
    pub log_window: u64,
    /// The replicas' timeout base, in milliseconds.
    pub timeout_base_ms: u64,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            n: 4,
            cluster_id: 1,
            checkpoint_interval: 64,
            log_window: 128,
            timeout_base_ms: 1000,
        }
    }
}

/// A generated cluster directory.
#[derive(Debug)]
pub struct TestCluster {
    /// The directory holding every file.
    pub dir: PathBuf,
    /// `cluster.toml`.
    pub cluster_file: PathBuf,
    /// `node-<i>.toml`, by replica id.
    pub node_files: Vec<PathBuf>,
    /// The replicas' key pairs, by replica id.
    pub replica_keys: Vec<KeyPair>,
    /// A client key (also written to `client.key`).
    pub client_key: KeyPair,
    /// The replicas' addresses, by replica id.
    pub addresses: Vec<SocketAddr>,
    /// Where each replica serves its Prometheus metrics, by replica id.
    pub metrics: Vec<SocketAddr>,
}

impl TestCluster {
    /// Loads replica `i`'s node file.
    pub fn node(&self, i: usize) -> anyhow::Result<Node> {
        let path = self
            .node_files
            .get(i)
            .with_context(|| format!("no replica {i}"))?;
        Ok(NodeFile::load(path)?)
    }

    /// Loads the cluster file.
    pub fn cluster(&self) -> anyhow::Result<Cluster> {
        Ok(pbft_config::ClusterFile::load(&self.cluster_file)?)
    }
}

/// A loopback UDP port that was free a moment ago (bound to port 0, read, released).
pub fn free_port() -> std::io::Result<u16> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    Ok(socket.local_addr()?.port())
}

/// Writes a cluster per `spec` into `dir` (which must exist): keys, cluster
/// file and node files, on free loopback ports, and initialises each replica's
/// data directory.
pub fn generate(dir: &Path, spec: &Spec) -> anyhow::Result<TestCluster> {
    let mut replica_keys = Vec::new();
    let mut addresses = Vec::new();
    // Hold every probe socket until all ports are chosen so they are distinct.
    let mut probes = Vec::new();
    for _ in 0..spec.n {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        addresses.push(socket.local_addr()?);
        probes.push(socket);
    }
    let mut metrics = Vec::new();
    let mut tcp_probes = Vec::new();
    for _ in 0..spec.n {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        metrics.push(listener.local_addr()?);
        tcp_probes.push(listener);
    }
    drop(probes);
    drop(tcp_probes);

    let mut cluster = format!(
        "cluster_id = {}\ncheckpoint_interval = {}\nlog_window = {}\n",
        spec.cluster_id, spec.checkpoint_interval, spec.log_window
    );
    let mut node_files = Vec::new();
    for (i, address) in addresses.iter().enumerate() {
        let key = KeyPair::generate();
        let key_file = dir.join(format!("node-{i}.key"));
        keyfile::write_secret(&key_file, &key)?;
        write!(
            cluster,
            "\n[[replicas]]\nid = {i}\naddress = \"{address}\"\npublic_key = \"{}\"\n",
            key.public().to_hex()
        )?;
        let node_file = dir.join(format!("node-{i}.toml"));
        std::fs::write(
            &node_file,
            format!(
                "id = {i}\ncluster = \"cluster.toml\"\nkey = \"node-{i}.key\"\ndata_dir = \"data/{i}\"\nmetrics = \"{}\"\n\n[tuning]\ntimeout_base_ms = {}\n",
                metrics[i], spec.timeout_base_ms
            ),
        )
        .with_context(|| format!("writing {}", node_file.display()))?;
        node_files.push(node_file);
        replica_keys.push(key);
        let data_dir = dir.join(format!("data/{i}"));
        pbft_storage::Storage::init(&data_dir, spec.cluster_id, ReplicaId(i as u32))
            .with_context(|| format!("initialising {}", data_dir.display()))?;
    }
    let cluster_file = dir.join("cluster.toml");
    std::fs::write(&cluster_file, cluster)
        .with_context(|| format!("writing {}", cluster_file.display()))?;
    let client_key = KeyPair::generate();
    keyfile::write_secret(&dir.join("client.key"), &client_key)?;
    Ok(TestCluster {
        dir: dir.to_path_buf(),
        cluster_file,
        node_files,
        replica_keys,
        client_key,
        addresses,
        metrics,
    })
}

/// A raw client: a pbft-net client endpoint and core messages, nothing else.
#[derive(Debug)]
pub struct TestClient {
    endpoint: Endpoint,
    inbound: pbft_net::Inbound,
    signer: Signer,
    verifier: Verifier,
    config: Config,
    next_request: u64,
    next_nonce: u64,
    view: View,
    /// How long to wait for the primary before sending to every replica.
    pub retransmit: Duration,
}

impl TestClient {
    /// A client of `cluster` with `key`, dialling every replica from
    /// 127.0.0.1. Must be called within a tokio runtime.
    pub fn connect(cluster: &Cluster, key: KeyPair) -> anyhow::Result<TestClient> {
        let (endpoint, inbound) = Endpoint::client_on(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            &key,
            NetConfig::default(),
        )?;
        for (peer, address) in cluster.keys.iter().zip(&cluster.addresses) {
            endpoint.add_peer(*peer, *address);
        }
        Ok(TestClient {
            endpoint,
            inbound,
            signer: Signer::new(key, cluster.id),
            verifier: Verifier::new(cluster.id),
            config: cluster.core_config(&Default::default()),
            next_request: 1,
            next_nonce: 1,
            view: View(0),
            retransmit: Duration::from_millis(1500),
        })
    }

    /// This client's id.
    pub fn id(&self) -> ClientId {
        ClientId(self.signer.public_key())
    }

    /// Waits until a connection to every replica is up, or `timeout`.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self
                .config
                .replicas
                .iter()
                .all(|k| self.endpoint.is_connected(k))
            {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends raw bytes as one frame to `replica`.
    pub fn send_raw(&self, replica: ReplicaId, frame: Vec<u8>) -> Result<(), SendError> {
        let key = self.key_of(replica)?;
        self.endpoint.send(key, Bytes::from(frame))
    }

    /// Sends `message` to `replica`.
    pub fn send(&self, replica: ReplicaId, message: &Message) -> Result<(), SendError> {
        self.send_raw(replica, message.encode())
    }

    /// The signer (to build custom messages).
    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    fn key_of(&self, replica: ReplicaId) -> Result<pbft_crypto::PublicKey, SendError> {
        self.config
            .key(replica)
            .copied()
            .ok_or(SendError::NotConnected(pbft_crypto::PublicKey([0; 32])))
    }

    /// Executes `op` through the ordered protocol: sends it to the primary,
    /// to every replica after [`TestClient::retransmit`] without an answer,
    /// and returns the result once f+1 replicas sent matching replies.
    pub async fn invoke(&mut self, op: &KvOp, timeout: Duration) -> anyhow::Result<KvResult> {
        let request_id = RequestId(self.next_request);
        self.next_request += 1;
        let request = self.signer.sign(Request {
            client: self.id(),
            request_id,
            op: op.encode(),
            read_only: false,
            repliers: pbft_core::message::Repliers::ALL,
        });
        let message = Message::Request(request);
        let deadline = Instant::now() + timeout;
        let primary = self.config.primary(self.view);
        let _ = self.send(primary, &message);
        let mut next_retransmit = Instant::now() + self.retransmit;
        let mut replies: BTreeMap<ReplicaId, Vec<u8>> = BTreeMap::new();
        loop {
            let frame = tokio::select! {
                frame = self.inbound.recv() => frame.ok_or_else(|| anyhow!("client endpoint closed"))?,
                _ = tokio::time::sleep_until(next_retransmit) => {
                    for i in 0..self.config.n() {
                        let _ = self.send(ReplicaId(i as u32), &message);
                    }
                    next_retransmit = Instant::now() + self.retransmit;
                    continue;
                }
                _ = tokio::time::sleep_until(deadline) => {
                    bail!("no f+1 matching replies to request {} within {timeout:?} (got {replies:?})", request_id.0);
                }
            };
            let Some(Message::Reply(reply)) = self.check(&frame) else {
                continue;
            };
            if reply.request_id != request_id || reply.read_only || reply.client != self.id() {
                continue;
            }
            self.view = self.view.max(reply.view);
            replies.insert(reply.replica, reply.result.clone());
            let matching = replies.values().filter(|r| **r == reply.result).count();
            if matching >= self.config.weak_quorum() {
                return KvResult::decode(&reply.result).map_err(|e| anyhow!("bad result: {e}"));
            }
        }
    }

    /// Collects this client's verified replies to `request_id` (ordered, not
    /// read-only) until f+1 of them match or `wait` has passed; by replica.
    pub async fn collect_replies(
        &mut self,
        request_id: RequestId,
        wait: Duration,
    ) -> BTreeMap<ReplicaId, Vec<u8>> {
        let deadline = Instant::now() + wait;
        let mut replies = BTreeMap::new();
        loop {
            let frame = tokio::select! {
                frame = self.inbound.recv() => match frame {
                    Some(frame) => frame,
                    None => return replies,
                },
                _ = tokio::time::sleep_until(deadline) => return replies,
            };
            let Some(Message::Reply(reply)) = self.check(&frame) else {
                continue;
            };
            if reply.request_id != request_id || reply.read_only || reply.client != self.id() {
                continue;
            }
            replies.insert(reply.replica, reply.result.clone());
            let matching = replies.values().filter(|r| **r == reply.result).count();
            if matching >= self.config.weak_quorum() {
                return replies;
            }
        }
    }

    /// Asks `replica` for its signed status report.
    pub async fn status(
        &mut self,
        replica: ReplicaId,
        timeout: Duration,
    ) -> anyhow::Result<StatusReport> {
        let nonce = self.next_nonce;
        self.next_nonce += 1;
        let message = Message::StatusRequest(self.signer.sign(StatusRequest {
            client: self.id(),
            nonce,
        }));
        let deadline = Instant::now() + timeout;
        let _ = self.send(replica, &message);
        let mut next_retransmit = Instant::now() + Duration::from_millis(500);
        loop {
            let frame = tokio::select! {
                frame = self.inbound.recv() => frame.ok_or_else(|| anyhow!("client endpoint closed"))?,
                _ = tokio::time::sleep_until(next_retransmit) => {
                    let _ = self.send(replica, &message);
                    next_retransmit = Instant::now() + Duration::from_millis(500);
                    continue;
                }
                _ = tokio::time::sleep_until(deadline) => bail!("no status from replica {} within {timeout:?}", replica.0),
            };
            if let Some(Message::StatusReport(report)) = self.check(&frame) {
                if report.nonce == nonce && report.replica == replica {
                    return Ok(report.value);
                }
            }
        }
    }

    /// Decodes and verifies a frame from a replica; `None` for anything else.
    fn check(&self, frame: &InboundFrame) -> Option<Message> {
        let message = Message::decode(&frame.bytes).ok()?;
        let sender = message.replica()?;
        if self.config.key(sender) != Some(&frame.from) {
            return None;
        }
        self.verifier
            .verify(message, &self.config)
            .ok()
            .map(|m| m.into_inner())
    }

    /// Closes the endpoint.
    pub async fn shutdown(self) {
        self.endpoint.shutdown().await;
    }
}

/// Starts one `exe` (the `pbft-node` binary, e.g.
/// `env!("CARGO_BIN_EXE_pbft-node")`) per replica of `cluster`, logging to
/// `node-<i>.log` in the cluster directory.
pub fn start_all(exe: &Path, cluster: &TestCluster) -> anyhow::Result<NodeProcesses> {
    NodeProcesses::start_all(&NodeCommand::new(exe), &cluster.node_files, &cluster.dir)
}

/// `GET /metrics` from a replica's metrics address over a plain TCP
/// connection (bounded by timeouts); `None` while nothing listens.
pub fn scrape_metrics(addr: SocketAddr) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// The value of the sample line of exactly `series` in a metrics page.
pub fn metric_sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A process's resident and peak resident memory in MiB, from
/// `/proc/<pid>/status` (`VmRSS`, `VmHWM`); `None` if it is gone (or the
/// system has no `/proc`).
pub fn rss_mib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name| crate::process::status_kib(&status, name).map(|kib| kib / 1024);
    Some((field("VmRSS:")?, field("VmHWM:")?))
}
