//! Client SDK of the PBFT replication service.
//!
//! * [`Client`]: signs requests, sends them to the primary, broadcasts them to
//!   every replica when no answer comes, and accepts a result once f+1
//!   replicas sent matching, correctly signed replies. In a cluster whose
//!   read mode is `fast` (`read_mode` in `cluster.toml`; `ordered` by
//!   default) [`Client::query`] takes the read-only fast path (2f+1 matching
//!   unordered answers) and ordered results then need 2f+1 replies: the mode
//!   belongs to the cluster, so every client counts alike. It learns the
//!   current view from replies, never reuses a request id, and asks replicas
//!   for their status.
//! * [`quorum`]: the reply counting, pure (it is `pbft_core::client_quorum`,
//!   which the simulator's clients use too).
//! * [`KvClient`]: typed operations on the key-value store the service ships.
//!
//! A [`Client`] runs one operation at a time: PBFT's exactly-once guarantee
//! is per (client, request id) and replicas remember only a client's *last*
//! request, so concurrency needs several clients, each with its own key.
//!
//! ```no_run
//! # async fn demo() -> Result<(), pbft_client::ClientError> {
//! use pbft_client::{Client, KvClient};
//! let settings = pbft_config::ClientFile::load("testnet/client.toml".as_ref())?;
//! let kv = KvClient::new(Client::connect(&settings)?);
//! kv.put("greeting", "hello").await?;
//! assert_eq!(kv.get("greeting").await?, Some(b"hello".to_vec()));
//! # Ok(())
//! # }
//! ```
//!
//! An operation that times out ([`ClientError::Timeout`]) has an unknown
//! outcome: it may have been executed.

mod client;
mod error;
mod kv;
pub use pbft_core::client_quorum as quorum;

pub use client::{Client, ClientOptions, ReplicaStatus, LATE_FACTOR};
pub use error::ClientError;
pub use kv::{CasOutcome, KvClient, ScanOutcome};
pub use pbft_app::kv::KvError;
pub use pbft_core::ReadMode;
pub use pbft_crypto::KeyPair;
