//! The configuration files of the PBFT replication service.
//!
//! * `cluster.toml` ([`ClusterFile`]): what every replica and client must
//!   agree on: the cluster id, each replica's id, address and public key, the
//!   protocol parameters (checkpoint interval, log window) and the read mode
//!   (`ordered` or `fast`: whether reads may take the read-only fast path,
//!   which makes every client confirm writes with 2f+1 replies; a property of
//!   the cluster so that no one client can choose it for the others).
//! * `node-<i>.toml` ([`NodeFile`]): one replica's local settings: its id,
//!   key file, data directory, listen address, tuning, client admission,
//!   record-log durability, logs.
//! * `client.toml` ([`ClientFile`]): a client's key file, the cluster file and
//!   its timeout.
//!
//! Relative paths inside a file are relative to that file's directory.
//! Unknown fields are errors (a typo must not silently fall back to a
//! default). `configs/` at the repository root has commented examples.

use pbft_core::{Config, ReadMode, ReplicaId};
use pbft_crypto::{ClusterId, PublicKey};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for its kind.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said (with line and column).
        message: String,
    },
    /// The values are inconsistent.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

fn read<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn invalid(path: &Path, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Resolves `p` relative to the directory of the file `base`.
fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.parent().unwrap_or(Path::new(".")).join(p)
    }
}

/// One replica in `cluster.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaEntry {
    /// Its id: replicas are numbered 0..n in file order.
    pub id: u32,
    /// Where it listens.
    pub address: SocketAddr,
    /// Its ed25519 public key (hex).
    pub public_key: String,
}

/// `cluster.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// Part of every signature's domain: messages of one cluster never verify in another.
    pub cluster_id: u64,
    /// K: a checkpoint every K sequence numbers.
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval: u64,
    /// L: the log window, a multiple of K.
    #[serde(default = "default_log_window")]
    pub log_window: u64,
    /// How the cluster serves reads: `ordered` (default) or `fast` (the
    /// read-only fast path; every ordered result then needs 2f+1 replies).
    #[serde(default)]
    pub read_mode: ReadMode,
    /// The replicas, n = 3f+1 of them.
    pub replicas: Vec<ReplicaEntry>,
}

fn default_checkpoint_interval() -> u64 {
    64
}
fn default_log_window() -> u64 {
    128
}

/// A checked `cluster.toml`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    /// The cluster id.
    pub id: ClusterId,
    /// Addresses, indexed by replica id.
    pub addresses: Vec<SocketAddr>,
    /// Public keys, indexed by replica id.
    pub keys: Vec<PublicKey>,
    /// K.
    pub checkpoint_interval: u64,
    /// L.
    pub log_window: u64,
    /// How the cluster serves reads; replicas and clients take it from here.
    pub read_mode: ReadMode,
}

impl ClusterFile {
    /// Reads and checks a cluster file.
    pub fn load(path: &Path) -> Result<Cluster, ConfigError> {
        let file: ClusterFile = read(path)?;
        file.check(path)
    }

    /// Checks the values (`path` names the file in errors).
    pub fn check(&self, path: &Path) -> Result<Cluster, ConfigError> {
        let mut keys = Vec::new();
        let mut addresses = Vec::new();
        for (i, r) in self.replicas.iter().enumerate() {
            if r.id as usize != i {
                return Err(invalid(
                    path,
                    format!(
                        "replica ids must be 0, 1, 2, ... in order; entry {i} has id {}",
                        r.id
                    ),
                ));
            }
            let key = PublicKey::from_hex(&r.public_key)
                .map_err(|e| invalid(path, format!("replica {i}: public_key: {e}")))?;
            keys.push(key);
            addresses.push(r.address);
        }
        let cluster = Cluster {
            id: ClusterId(self.cluster_id),
            addresses,
            keys,
            checkpoint_interval: self.checkpoint_interval,
            log_window: self.log_window,
            read_mode: self.read_mode,
        };
        cluster
            .core_config(&Tuning::default())
            .validate()
            .map_err(|e| invalid(path, e.to_string()))?;
        Ok(cluster)
    }
}

impl Cluster {
    /// The protocol configuration with local `tuning`.
    pub fn core_config(&self, tuning: &Tuning) -> Config {
        let mut c = Config::new(self.id, self.keys.clone());
        c.checkpoint_interval = self.checkpoint_interval;
        c.log_window = self.log_window;
        c.read_mode = self.read_mode;
        c.batch_size_max = tuning.batch_size_max;
        c.batch_bytes_max = tuning.batch_bytes_max;
        c.in_flight_max = tuning.in_flight_max;
        c.batch_delay = Duration::from_millis(tuning.batch_delay_ms);
        c.timeout_base = Duration::from_millis(tuning.timeout_base_ms);
        c
    }

    /// n.
    pub fn n(&self) -> usize {
        self.keys.len()
    }

    /// f.
    pub fn f(&self) -> usize {
        (self.n() - 1) / 3
    }
}

/// Local tuning of a replica (`[tuning]` in `node-<i>.toml`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tuning {
    /// Most requests per batch.
    pub batch_size_max: usize,
    /// Most operation bytes per batch (a larger request goes alone).
    pub batch_bytes_max: usize,
    /// Most batches the primary keeps proposed but not yet executed; while
    /// that many are in flight new requests wait and join the next batch.
    pub in_flight_max: u64,
    /// How long the primary waits to fill a batch (0: propose at once).
    pub batch_delay_ms: u64,
    /// The base of every protocol timeout (view change, retransmissions).
    pub timeout_base_ms: u64,
}

impl Default for Tuning {
    fn default() -> Self {
        let core = Config::new(ClusterId(0), Vec::new());
        Tuning {
            batch_size_max: core.batch_size_max,
            batch_bytes_max: core.batch_bytes_max,
            in_flight_max: core.in_flight_max,
            batch_delay_ms: 0,
            timeout_base_ms: 1000,
        }
    }
}

/// Who may submit requests (`[clients]` in `node-<i>.toml`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientAdmission {
    /// Accept any client key (its signatures still authenticate it).
    pub allow_any: bool,
    /// With `allow_any = false`, the client public keys (hex) accepted.
    pub allow: Vec<String>,
    /// Most client connections at once (handshaking or established).
    /// Replicas never count against it.
    pub max_connections: usize,
    /// Most client connections from one IP address (clients behind one NAT
    /// share it).
    pub max_connections_per_address: usize,
}

/// The default of `[clients] max_connections`.
pub const MAX_CLIENT_CONNECTIONS: usize = 512;
/// The default of `[clients] max_connections_per_address`.
pub const MAX_CLIENT_CONNECTIONS_PER_ADDRESS: usize = 256;

impl Default for ClientAdmission {
    fn default() -> Self {
        ClientAdmission {
            allow_any: true,
            allow: Vec::new(),
            max_connections: MAX_CLIENT_CONNECTIONS,
            max_connections_per_address: MAX_CLIENT_CONNECTIONS_PER_ADDRESS,
        }
    }
}

/// When an appended record counts as durable (`durability` in the node
/// file's `[storage]`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// After it is written and `fdatasync`ed: survives an OS crash or power
    /// loss. The default.
    #[default]
    Fsync,
    /// After it is written to the page cache, without a sync: survives a
    /// process crash, but an OS crash or power loss can lose the last
    /// records or leave the log unreadable, and with more than f replicas
    /// losing theirs at once agreement can be lost. **Gives up crash
    /// safety**: for benchmarks only.
    None,
}

/// How a replica keeps its record log (`[storage]` in `node-<i>.toml`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSettings {
    /// `fsync` (default) or `none` (benchmarks only; see [`Durability`]).
    pub durability: Durability,
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// `node-<i>.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    /// This replica's id in the cluster file.
    pub id: u32,
    /// The cluster file.
    pub cluster: PathBuf,
    /// This replica's secret key file (mode 0600).
    pub key: PathBuf,
    /// Where the replica keeps its record log.
    pub data_dir: PathBuf,
    /// Where to listen (default: this replica's address in the cluster file).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Local tuning.
    #[serde(default)]
    pub tuning: Tuning,
    /// Client admission.
    #[serde(default)]
    pub clients: ClientAdmission,
    /// How the record log is kept.
    #[serde(default)]
    pub storage: StorageSettings,
    /// Log format.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Where to serve Prometheus metrics over HTTP (`GET /metrics`); none
    /// if absent. Bind it to loopback or a monitoring network: the page is
    /// not authenticated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<SocketAddr>,
    /// The record log's segment size in bytes, preallocated before the
    /// first record goes in (default: the storage default, 8 MiB). Smaller
    /// segments roll over, and so allocate disk space, more often.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_bytes: Option<u64>,
}

/// A checked `node-<i>.toml` with its cluster file.
#[derive(Clone, Debug)]
pub struct Node {
    /// This replica.
    pub id: ReplicaId,
    /// The cluster.
    pub cluster: Cluster,
    /// The secret key file (absolute or relative to the working directory).
    pub key: PathBuf,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The listen address.
    pub listen: SocketAddr,
    /// Local tuning.
    pub tuning: Tuning,
    /// Client admission: `None` for any client, else the allowed keys.
    pub allowed_clients: Option<Vec<PublicKey>>,
    /// Most client connections at once, and from one IP address.
    pub client_connections: (usize, usize),
    /// When an appended record counts as durable.
    pub durability: Durability,
    /// Log format.
    pub log_format: LogFormat,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// The record log's segment size, if not the storage default.
    pub segment_bytes: Option<u64>,
}

impl NodeFile {
    /// Reads and checks a node file and the cluster file it names.
    pub fn load(path: &Path) -> Result<Node, ConfigError> {
        let file: NodeFile = read(path)?;
        let cluster = ClusterFile::load(&resolve(path, &file.cluster))?;
        if file.id as usize >= cluster.n() {
            return Err(invalid(
                path,
                format!(
                    "id {} is not in the cluster file ({} replicas)",
                    file.id,
                    cluster.n()
                ),
            ));
        }
        cluster
            .core_config(&file.tuning)
            .validate()
            .map_err(|e| invalid(path, format!("tuning: {e}")))?;
        let limits = (
            file.clients.max_connections,
            file.clients.max_connections_per_address,
        );
        if limits.0 == 0 || limits.1 == 0 {
            return Err(invalid(
                path,
                "clients.max_connections and clients.max_connections_per_address must be positive",
            ));
        }
        let allowed_clients = if file.clients.allow_any {
            None
        } else {
            let keys = file
                .clients
                .allow
                .iter()
                .map(|k| {
                    PublicKey::from_hex(k).map_err(|e| invalid(path, format!("clients.allow: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Some(keys)
        };
        Ok(Node {
            id: ReplicaId(file.id),
            listen: file.listen.unwrap_or(cluster.addresses[file.id as usize]),
            key: resolve(path, &file.key),
            data_dir: resolve(path, &file.data_dir),
            tuning: file.tuning,
            allowed_clients,
            client_connections: limits,
            durability: file.storage.durability,
            log_format: file.log_format,
            metrics: file.metrics,
            segment_bytes: file.segment_bytes,
            cluster,
        })
    }
}

/// `client.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientFile {
    /// The cluster file.
    pub cluster: PathBuf,
    /// The client's secret key file (mode 0600).
    pub key: PathBuf,
    /// How long to wait for an outcome before giving up, in milliseconds.
    /// Must exceed a view change (several times the replicas' timeout base).
    #[serde(default = "default_client_timeout_ms")]
    pub timeout_ms: u64,
    /// The longest wait for the believed primary before a request is
    /// broadcast, in milliseconds (the SDK's default if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retransmit_ms: Option<u64>,
    /// The shortest first wait before a broadcast, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retransmit_min_ms: Option<u64>,
    /// The longest retransmission interval, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retransmit_max_ms: Option<u64>,
    /// How long to wait for the other named repliers once one replied, in
    /// milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_grace_ms: Option<u64>,
}

fn default_client_timeout_ms() -> u64 {
    30_000
}

/// The retransmission timing a `client.toml` sets; `None` keeps the SDK's
/// default (`pbft_client::ClientOptions`, which checks how they relate).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientTiming {
    /// `retransmit_ms`.
    pub retransmit: Option<Duration>,
    /// `retransmit_min_ms`.
    pub retransmit_min: Option<Duration>,
    /// `retransmit_max_ms`.
    pub retransmit_max: Option<Duration>,
    /// `reply_grace_ms`.
    pub reply_grace: Option<Duration>,
}

/// A checked `client.toml` with its cluster file.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    /// The cluster.
    pub cluster: Cluster,
    /// The secret key file.
    pub key: PathBuf,
    /// The overall timeout of one operation.
    pub timeout: Duration,
    /// Retransmission timing, where the file sets it.
    pub timing: ClientTiming,
}

impl ClientFile {
    /// Reads and checks a client file and the cluster file it names.
    pub fn load(path: &Path) -> Result<ClientSettings, ConfigError> {
        let file: ClientFile = read(path)?;
        let cluster = ClusterFile::load(&resolve(path, &file.cluster))?;
        if file.timeout_ms == 0 {
            return Err(invalid(path, "timeout_ms must be positive"));
        }
        let millis = |name: &str, value: Option<u64>| match value {
            Some(0) => Err(invalid(path, format!("{name} must be positive"))),
            Some(ms) => Ok(Some(Duration::from_millis(ms))),
            None => Ok(None),
        };
        let timing = ClientTiming {
            retransmit: millis("retransmit_ms", file.retransmit_ms)?,
            retransmit_min: millis("retransmit_min_ms", file.retransmit_min_ms)?,
            retransmit_max: millis("retransmit_max_ms", file.retransmit_max_ms)?,
            reply_grace: millis("reply_grace_ms", file.reply_grace_ms)?,
        };
        Ok(ClientSettings {
            cluster,
            key: resolve(path, &file.key),
            timeout: Duration::from_millis(file.timeout_ms),
            timing,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbft_crypto::KeyPair;

    fn cluster_toml(n: usize) -> String {
        let mut s = String::from("cluster_id = 7\ncheckpoint_interval = 8\nlog_window = 16\n");
        for i in 0..n {
            let key = KeyPair::from_seed([i as u8 + 1; 32]).public();
            s += &format!(
                "[[replicas]]\nid = {i}\naddress = \"127.0.0.1:{}\"\npublic_key = \"{}\"\n",
                7000 + i,
                key.to_hex()
            );
        }
        s
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p
    }

    #[test]
    fn loads_node_and_client_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "cluster.toml", &cluster_toml(4));
        let node = write(
            dir.path(),
            "node-1.toml",
            "id = 1\ncluster = \"cluster.toml\"\nkey = \"node-1.key\"\ndata_dir = \"data/1\"\n[tuning]\ntimeout_base_ms = 500\n",
        );
        let node = NodeFile::load(&node).expect("node file");
        assert_eq!(node.id, ReplicaId(1));
        assert_eq!(node.listen, "127.0.0.1:7001".parse().expect("addr"));
        assert_eq!(node.key, dir.path().join("node-1.key"));
        assert_eq!(node.tuning.timeout_base_ms, 500);
        assert_eq!(node.tuning.batch_size_max, 1024);
        assert_eq!(node.tuning.in_flight_max, 2);
        assert_eq!(node.durability, Durability::Fsync);
        assert_eq!(node.segment_bytes, None);
        assert_eq!(
            node.client_connections,
            (MAX_CLIENT_CONNECTIONS, MAX_CLIENT_CONNECTIONS_PER_ADDRESS)
        );
        let limited = write(
            dir.path(),
            "node-3.toml",
            "id = 3\ncluster = \"cluster.toml\"\nkey = \"k\"\ndata_dir = \"d\"\n[clients]\nmax_connections = 64\nmax_connections_per_address = 8\n",
        );
        assert_eq!(
            NodeFile::load(&limited)
                .expect("node file")
                .client_connections,
            (64, 8)
        );
        let zero = write(
            dir.path(),
            "node-0.toml",
            "id = 0\ncluster = \"cluster.toml\"\nkey = \"k\"\ndata_dir = \"d\"\n[clients]\nmax_connections_per_address = 0\n",
        );
        let e = NodeFile::load(&zero).expect_err("no connections allowed");
        assert!(
            e.to_string().contains("node-0.toml")
                && e.to_string().contains("max_connections_per_address"),
            "{e}"
        );
        let small = write(
            dir.path(),
            "node-2.toml",
            "id = 2\ncluster = \"cluster.toml\"\nkey = \"node-2.key\"\ndata_dir = \"data/2\"\nsegment_bytes = 262144\n",
        );
        assert_eq!(
            NodeFile::load(&small).expect("node file").segment_bytes,
            Some(256 << 10)
        );
        let config = node.cluster.core_config(&node.tuning);
        assert_eq!(
            (config.n(), config.checkpoint_interval, config.cluster),
            (4, 8, ClusterId(7))
        );
        let client = write(
            dir.path(),
            "client.toml",
            "cluster = \"cluster.toml\"\nkey = \"c.key\"\n",
        );
        let client = ClientFile::load(&client).expect("client file");
        assert_eq!(client.timeout, Duration::from_secs(30));
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bad_n = write(dir.path(), "c5.toml", &cluster_toml(5));
        let e = ClusterFile::load(&bad_n).expect_err("5 replicas");
        assert!(
            e.to_string().contains("c5.toml") && e.to_string().contains("3f+1"),
            "{e}"
        );

        let typo = write(
            dir.path(),
            "typo.toml",
            &(cluster_toml(4) + "checkpoint_intervall = 3\n"),
        );
        let e = ClusterFile::load(&typo).expect_err("unknown field");
        assert!(e.to_string().contains("checkpoint_intervall"), "{e}");

        let bad_key = write(
            dir.path(),
            "k.toml",
            &cluster_toml(4).replace(&KeyPair::from_seed([2; 32]).public().to_hex(), "zz"),
        );
        let e = ClusterFile::load(&bad_key).expect_err("bad key");
        assert!(e.to_string().contains("replica 1"), "{e}");

        write(dir.path(), "cluster.toml", &cluster_toml(4));
        let wrong_id = write(
            dir.path(),
            "n.toml",
            "id = 9\ncluster = \"cluster.toml\"\nkey = \"k\"\ndata_dir = \"d\"\n",
        );
        let e = NodeFile::load(&wrong_id).expect_err("id out of range");
        assert!(e.to_string().contains("id 9"), "{e}");

        let zero_flight = write(
            dir.path(),
            "z.toml",
            "id = 0\ncluster = \"cluster.toml\"\nkey = \"k\"\ndata_dir = \"d\"\n[tuning]\nin_flight_max = 0\n",
        );
        let e = NodeFile::load(&zero_flight).expect_err("zero in flight");
        assert!(
            e.to_string().contains("z.toml") && e.to_string().contains("in_flight_max"),
            "{e}"
        );

        let metrics = write(
            dir.path(),
            "m.toml",
            "id = 0\ncluster = \"cluster.toml\"\nkey = \"k\"\ndata_dir = \"d\"\nmetrics = \"127.0.0.1:9464\"\n",
        );
        let node = NodeFile::load(&metrics).expect("metrics address");
        assert_eq!(node.metrics, Some("127.0.0.1:9464".parse().expect("addr")));
        let bad = write(
            dir.path(),
            "bad-m.toml",
            "id = 0\ncluster = \"cluster.toml\"\nkey = \"k\"\ndata_dir = \"d\"\nmetrics = \"localhost\"\n",
        );
        let e = NodeFile::load(&bad).expect_err("not a socket address");
        assert!(e.to_string().contains("metrics"), "{e}");

        let bad_durability = write(
            dir.path(),
            "dur.toml",
            "id = 0\ncluster = \"cluster.toml\"\nkey = \"k\"\ndata_dir = \"d\"\n[storage]\ndurability = \"fsnyc\"\n",
        );
        let e = NodeFile::load(&bad_durability).expect_err("unknown durability");
        assert!(matches!(e, ConfigError::Parse { .. }), "{e:?}");
        for part in ["dur.toml", "durability", "fsnyc", "fsync", "none"] {
            assert!(e.to_string().contains(part), "{part:?} missing from: {e}");
        }

        let missing = NodeFile::load(&dir.path().join("nope.toml")).expect_err("missing");
        assert!(matches!(missing, ConfigError::Io { .. }));
    }

    #[test]
    fn durability_is_read_from_the_storage_section() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "cluster.toml", &cluster_toml(4));
        for (text, expected) in [
            ("", Durability::Fsync),
            ("[storage]\n", Durability::Fsync),
            ("[storage]\ndurability = \"fsync\"\n", Durability::Fsync),
            ("[storage]\ndurability = \"none\"\n", Durability::None),
        ] {
            let path = write(
                dir.path(),
                "node.toml",
                &format!(
                    "id = 0\ncluster = \"cluster.toml\"\nkey = \"k\"\ndata_dir = \"d\"\n{text}"
                ),
            );
            let node = NodeFile::load(&path).expect("node file");
            assert_eq!(node.durability, expected, "{text:?}");
        }
        let typo = write(
            dir.path(),
            "st.toml",
            "id = 0\ncluster = \"cluster.toml\"\nkey = \"k\"\ndata_dir = \"d\"\n[storage]\nsync = false\n",
        );
        let e = NodeFile::load(&typo).expect_err("unknown storage field");
        assert!(
            e.to_string().contains("st.toml") && e.to_string().contains("sync"),
            "{e}"
        );
    }

    #[test]
    fn read_mode_defaults_to_ordered_and_reaches_the_core_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        let default = write(dir.path(), "d.toml", &cluster_toml(4));
        let cluster = ClusterFile::load(&default).expect("no read_mode");
        assert_eq!(cluster.read_mode, ReadMode::Ordered);
        assert_eq!(
            cluster.core_config(&Tuning::default()).read_mode,
            ReadMode::Ordered
        );
        for (name, mode) in [("ordered", ReadMode::Ordered), ("fast", ReadMode::Fast)] {
            let text = format!("read_mode = \"{name}\"\n{}", cluster_toml(4));
            let path = write(dir.path(), &format!("{name}.toml"), &text);
            let cluster = ClusterFile::load(&path).expect("known read mode");
            assert_eq!(cluster.read_mode, mode);
            assert_eq!(cluster.core_config(&Tuning::default()).read_mode, mode);
        }
    }

    #[test]
    fn client_settings_carry_the_cluster_read_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            "cluster.toml",
            &format!("read_mode = \"fast\"\n{}", cluster_toml(4)),
        );
        let client = write(
            dir.path(),
            "client.toml",
            "cluster = \"cluster.toml\"\nkey = \"c.key\"\n",
        );
        let settings = ClientFile::load(&client).expect("client file");
        assert_eq!(settings.cluster.read_mode, ReadMode::Fast);
        // A client file has no say: the field is unknown there.
        let own = write(
            dir.path(),
            "own.toml",
            "cluster = \"cluster.toml\"\nkey = \"c.key\"\nread_mode = \"ordered\"\n",
        );
        let e = ClientFile::load(&own).expect_err("read_mode in a client file");
        assert!(e.to_string().contains("read_mode"), "{e}");
    }

    #[test]
    fn client_files_may_set_the_retransmission_timing() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "cluster.toml", &cluster_toml(4));
        let client = write(
            dir.path(),
            "client.toml",
            "cluster = \"cluster.toml\"\nkey = \"c.key\"\nretransmit_min_ms = 20\nreply_grace_ms = 5\n",
        );
        let settings = ClientFile::load(&client).expect("client file");
        assert_eq!(
            settings.timing,
            ClientTiming {
                retransmit_min: Some(Duration::from_millis(20)),
                reply_grace: Some(Duration::from_millis(5)),
                ..ClientTiming::default()
            }
        );
        let zero = write(
            dir.path(),
            "zero.toml",
            "cluster = \"cluster.toml\"\nkey = \"c.key\"\nretransmit_max_ms = 0\n",
        );
        let e = ClientFile::load(&zero).expect_err("a zero interval");
        let text = e.to_string();
        assert!(
            text.contains("zero.toml") && text.contains("retransmit_max_ms must be positive"),
            "{text}"
        );
    }

    #[test]
    fn unknown_read_mode_names_the_file_the_field_and_the_choices() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(
            dir.path(),
            "rm.toml",
            &format!("read_mode = \"fsat\"\n{}", cluster_toml(4)),
        );
        let e = ClusterFile::load(&path).expect_err("unknown read mode");
        let text = e.to_string();
        assert!(matches!(e, ConfigError::Parse { .. }), "{e:?}");
        for part in ["rm.toml", "read_mode", "fsat", "ordered", "fast"] {
            assert!(text.contains(part), "{part:?} missing from: {text}");
        }
        let not_a_string = write(
            dir.path(),
            "rm2.toml",
            &format!("read_mode = 1\n{}", cluster_toml(4)),
        );
        let e = ClusterFile::load(&not_a_string).expect_err("not a string");
        assert!(e.to_string().contains("read_mode"), "{e}");
    }
}
