//! Cluster configuration and quorum arithmetic.
//!
//! [`ReadMode`] is a property of the cluster, not of a client: the read-only
//! fast path is linearizable only if *every* client confirms every write with
//! 2f+1 replies (Castro & Liskov, TOCS 2002, 5.1.3), so replicas and clients
//! take it from the one cluster configuration, and replicas of an `ordered`
//! cluster refuse read-only requests (a client configured otherwise cannot
//! make another client's read stale).

use crate::ids::{ReplicaId, View};
use pbft_crypto::{ClusterId, PublicKey};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A configuration that cannot run PBFT.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// n must be 3f+1 for some f >= 0.
    #[error("a cluster needs n = 3f+1 replicas (1, 4, 7, 10, ...); got {0}")]
    ReplicaCount(usize),
    /// Two replicas share a key.
    #[error("replicas {0} and {1} have the same public key")]
    DuplicateKey(usize, usize),
    /// The log window must be a positive multiple of the checkpoint interval.
    #[error(
        "log_window ({window}) must be a positive multiple of checkpoint_interval ({interval})"
    )]
    Window {
        /// L.
        window: u64,
        /// K.
        interval: u64,
    },
    /// A bound that must be positive is zero.
    #[error("{0} must be positive")]
    Zero(&'static str),
    /// A bound is above the protocol's own limit.
    #[error("{name} ({value}) is above the protocol limit of {max}")]
    AboveLimit {
        /// The setting.
        name: &'static str,
        /// Its value.
        value: usize,
        /// The limit.
        max: usize,
    },
    /// The client table's byte budget cannot hold one entry with a kept result.
    #[error(
        "client_table_bytes_max ({bytes}) must hold one entry with a kept result ({entry} bytes)"
    )]
    ClientTableBytes {
        /// The budget.
        bytes: usize,
        /// One entry with a result of `client_result_max` bytes.
        entry: usize,
    },
}

/// How a cluster serves read-only operations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadMode {
    /// Reads are ordered like writes; an ordered result needs f+1 matching
    /// replies; replicas refuse read-only requests. Live with f faulty replicas.
    #[default]
    Ordered,
    /// The read-only fast path (TOCS 2002, 5.1.3): a read is answered
    /// unordered and accepted on 2f+1 matching answers, so every ordered
    /// result needs 2f+1 matching replies too. Writes then need 2f+1
    /// responsive replicas, and can stall while a faulty replica and an honest
    /// one stranded in a higher view leave only 2f.
    Fast,
}

impl ReadMode {
    /// Every mode, by name.
    pub const ALL: [ReadMode; 2] = [ReadMode::Ordered, ReadMode::Fast];

    /// The name used in `cluster.toml` and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ReadMode::Ordered => "ordered",
            ReadMode::Fast => "fast",
        }
    }
}

impl std::fmt::Display for ReadMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A read mode name that is neither `ordered` nor `fast`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown read mode {0:?} (expected \"ordered\" or \"fast\")")]
pub struct UnknownReadMode(pub String);

impl std::str::FromStr for ReadMode {
    type Err = UnknownReadMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ReadMode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| UnknownReadMode(s.to_string()))
    }
}

/// Everything every replica of one cluster must agree on, plus local tuning.
///
/// Every timeout derives from `timeout_base`: view change
/// (`timeout_base`, doubling), view-change resend (`timeout_base / 2`),
/// state-transfer source switch (`timeout_base / 2`). The client's default
/// timeout must exceed a view change (see the client SDK).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Part of every signature's domain.
    pub cluster: ClusterId,
    /// Replica public keys; the index is the [`ReplicaId`].
    pub replicas: Vec<PublicKey>,
    /// K: a checkpoint every K sequence numbers.
    pub checkpoint_interval: u64,
    /// L: sequence numbers in (h, h+L] are accepted, h the stable checkpoint.
    pub log_window: u64,
    /// Most requests in one batch.
    pub batch_size_max: usize,
    /// Most operation bytes in one batch (a request larger than this goes
    /// alone). A NEW-VIEW carries re-issued batches only up to
    /// `view_change::NEW_VIEW_BATCH_BYTES`; receivers fetch the rest.
    #[serde(default = "default_batch_bytes_max")]
    pub batch_bytes_max: usize,
    /// Most sequence numbers the primary keeps assigned but not yet executed
    /// (here). While that many are in flight, requests wait and join the
    /// next batch, so batches grow with the load instead of instances.
    #[serde(default = "default_in_flight_max")]
    pub in_flight_max: u64,
    /// How long the primary waits to fill a batch before proposing a partial one
    /// (zero: propose as soon as the window has room).
    pub batch_delay: Duration,
    /// The base every protocol timeout derives from.
    pub timeout_base: Duration,
    /// Most distinct clients with a request waiting at one replica.
    pub pending_requests_max: usize,
    /// How the cluster serves reads (every replica and client must agree).
    #[serde(default)]
    pub read_mode: ReadMode,
    /// Most clients the client table keeps across a checkpoint (every
    /// replica must agree; see `client_table`).
    pub client_table_max: usize,
    /// Most bytes the client table keeps across a checkpoint (every replica
    /// must agree).
    pub client_table_bytes_max: usize,
    /// Results up to this many bytes are kept whole in the client table,
    /// larger ones as their digest (every replica must agree).
    pub client_result_max: usize,
}

/// Large enough that batches of small requests fill up on request count.
fn default_batch_bytes_max() -> usize {
    64 * 1024
}

fn default_in_flight_max() -> u64 {
    2
}

impl Config {
    /// A configuration with the default tuning for these replicas.
    pub fn new(cluster: ClusterId, replicas: Vec<PublicKey>) -> Self {
        Config {
            cluster,
            replicas,
            checkpoint_interval: 64,
            log_window: 128,
            batch_size_max: 1024,
            batch_bytes_max: default_batch_bytes_max(),
            in_flight_max: default_in_flight_max(),
            batch_delay: Duration::from_millis(0),
            timeout_base: Duration::from_millis(1000),
            pending_requests_max: 100_000,
            read_mode: ReadMode::Ordered,
            client_table_max: 65_536,
            client_table_bytes_max: 256 << 20,
            client_result_max: 66 << 10,
        }
    }

    /// Checks the invariants the protocol relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let n = self.replicas.len();
        if n == 0 || n % 3 != 1 {
            return Err(ConfigError::ReplicaCount(n));
        }
        for i in 0..n {
            for j in i + 1..n {
                if self.replicas[i] == self.replicas[j] {
                    return Err(ConfigError::DuplicateKey(i, j));
                }
            }
        }
        if self.checkpoint_interval == 0 {
            return Err(ConfigError::Zero("checkpoint_interval"));
        }
        if self.log_window == 0 || !self.log_window.is_multiple_of(self.checkpoint_interval) {
            return Err(ConfigError::Window {
                window: self.log_window,
                interval: self.checkpoint_interval,
            });
        }
        if self.batch_size_max == 0 {
            return Err(ConfigError::Zero("batch_size_max"));
        }
        if self.batch_size_max > crate::message::BATCH_REQUESTS_MAX {
            return Err(ConfigError::AboveLimit {
                name: "batch_size_max",
                value: self.batch_size_max,
                max: crate::message::BATCH_REQUESTS_MAX,
            });
        }
        if self.batch_bytes_max == 0 {
            return Err(ConfigError::Zero("batch_bytes_max"));
        }
        if self.in_flight_max == 0 {
            return Err(ConfigError::Zero("in_flight_max"));
        }
        if self.timeout_base.is_zero() {
            return Err(ConfigError::Zero("timeout_base"));
        }
        if self.pending_requests_max == 0 {
            return Err(ConfigError::Zero("pending_requests_max"));
        }
        if self.client_table_max == 0 {
            return Err(ConfigError::Zero("client_table_max"));
        }
        let entry = crate::client_table::ENTRY_OVERHEAD.saturating_add(self.client_result_max);
        if self.client_table_bytes_max < entry {
            return Err(ConfigError::ClientTableBytes {
                bytes: self.client_table_bytes_max,
                entry,
            });
        }
        Ok(())
    }

    /// n.
    pub fn n(&self) -> usize {
        self.replicas.len()
    }

    /// f = (n-1)/3, the number of faulty replicas tolerated.
    pub fn f(&self) -> usize {
        (self.n() - 1) / 3
    }

    /// 2f+1: any two quorums share at least f+1 replicas, so at least one honest.
    pub fn quorum(&self) -> usize {
        2 * self.f() + 1
    }

    /// Whether an [`Output::Reply`](crate::Output::Reply) must wait, like
    /// every other send, until all the records before it are durable. Only
    /// in a cluster whose read mode is fast: there a restarted replica must
    /// know how far it had answered ([`Record::Executed`](crate::Record::Executed))
    /// before it serves a read from its own state.
    ///
    /// In an ordered cluster a fresh reply (one of a batch's execution)
    /// depends on one record only: this replica's latest
    /// [`Record::Prepared`](crate::Record::Prepared) for the batch's
    /// sequence number. The replica counted its own COMMIT among the 2f+1
    /// that let it execute; the other 2f came from replicas that persisted
    /// their certificates before sending them, of which f may be Byzantine.
    /// So its own certificate is what makes f+1 honest replicas hold the
    /// batch durably, which a view change needs to keep it: a reply sent
    /// before it, counted by the client among f+1 beside f Byzantine
    /// replies, could be dropped with the batch by a crash that tears the
    /// certificate. The records after it (the `Executed` marker, and
    /// whatever the same step persisted about later batches) vouch for
    /// nothing the reply says. A driver may therefore send such a reply as
    /// soon as that certificate is durable (often long before the current
    /// group); a reply repeated from the client table waits like any send.
    pub fn replies_wait_for_records(&self) -> bool {
        self.read_mode == ReadMode::Fast
    }

    /// f+1: at least one of any f+1 replicas is honest.
    pub fn weak_quorum(&self) -> usize {
        self.f() + 1
    }

    /// The primary of view `v`.
    pub fn primary(&self, v: View) -> ReplicaId {
        ReplicaId((v.0 % self.n() as u64) as u32)
    }

    /// The key of replica `id`, if it exists.
    pub fn key(&self, id: ReplicaId) -> Option<&PublicKey> {
        self.replicas.get(id.index())
    }

    /// All replica ids.
    pub fn ids(&self) -> impl Iterator<Item = ReplicaId> {
        (0..self.n() as u32).map(ReplicaId)
    }

    /// The id of the replica with `key`.
    pub fn id_of(&self, key: &PublicKey) -> Option<ReplicaId> {
        self.replicas
            .iter()
            .position(|k| k == key)
            .map(|i| ReplicaId(i as u32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbft_crypto::KeyPair;

    fn config(n: usize) -> Config {
        let keys = (0..n)
            .map(|i| KeyPair::from_seed([i as u8 + 1; 32]).public())
            .collect();
        Config::new(ClusterId(1), keys)
    }

    #[test]
    fn quorum_arithmetic() {
        for (n, f, q) in [(1, 0, 1), (4, 1, 3), (7, 2, 5), (10, 3, 7)] {
            let c = config(n);
            assert_eq!(c.validate(), Ok(()));
            assert_eq!((c.f(), c.quorum(), c.weak_quorum()), (f, q, f + 1));
            // Two quorums intersect in at least f+1 replicas.
            assert!(2 * c.quorum() - n > f);
        }
    }

    #[test]
    fn bad_sizes_are_rejected() {
        for n in [0, 2, 3, 5, 6] {
            assert_eq!(config(n).validate(), Err(ConfigError::ReplicaCount(n)));
        }
    }

    #[test]
    fn window_must_be_multiple_of_interval() {
        let mut c = config(4);
        c.log_window = 100;
        assert!(matches!(c.validate(), Err(ConfigError::Window { .. })));
    }

    #[test]
    fn batches_cannot_exceed_the_protocol_limit() {
        let mut c = config(4);
        c.batch_size_max = crate::message::BATCH_REQUESTS_MAX;
        assert_eq!(c.validate(), Ok(()));
        c.batch_size_max += 1;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::AboveLimit {
                name: "batch_size_max",
                ..
            })
        ));
    }

    #[test]
    fn duplicate_keys_are_rejected() {
        let mut c = config(4);
        c.replicas[3] = c.replicas[1];
        assert_eq!(c.validate(), Err(ConfigError::DuplicateKey(1, 3)));
    }

    #[test]
    fn read_mode_defaults_to_ordered_and_parses_its_names() {
        assert_eq!(config(4).read_mode, ReadMode::Ordered);
        assert_eq!(ReadMode::default(), ReadMode::Ordered);
        for m in ReadMode::ALL {
            assert_eq!(m.name().parse::<ReadMode>(), Ok(m));
            assert_eq!(m.to_string(), m.name());
        }
        let e = "Fast".parse::<ReadMode>().expect_err("names are lowercase");
        assert_eq!(e, UnknownReadMode("Fast".into()));
        assert!(e.to_string().contains("\"ordered\" or \"fast\""), "{e}");
    }

    #[test]
    fn primary_rotates() {
        let c = config(4);
        let p: Vec<u32> = (0..6).map(|v| c.primary(View(v)).0).collect();
        assert_eq!(p, vec![0, 1, 2, 3, 0, 1]);
    }
}
