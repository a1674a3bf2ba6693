//! A typed client of the key-value store ([`pbft_app::kv`]).

use crate::client::Client;
use crate::error::ClientError;
use pbft_app::kv::{KvOp, KvResult};

/// The outcome of [`KvClient::cas`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CasOutcome {
    /// Whether the new value was stored.
    pub swapped: bool,
    /// The value the key held when the operation was evaluated.
    pub current: Option<Vec<u8>>,
}

/// The outcome of [`KvClient::scan`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanOutcome {
    /// The entries, in key order.
    pub items: Vec<(Vec<u8>, Vec<u8>)>,
    /// Whether the range holds more entries after the last one returned.
    pub more: bool,
}

/// A key-value client: typed operations over a [`Client`].
///
/// Writes are ordered ([`Client::invoke`]); `get` and `scan` go through
/// [`Client::query`]: ordered too, unless the cluster's read mode is `fast`,
/// where they take the read-only fast path and fall back to ordering.
/// Application errors ([`KvResult::Error`]) become
/// [`ClientError::Application`].
#[derive(Debug)]
pub struct KvClient {
    client: Client,
}

fn unexpected(op: &str, result: &KvResult) -> ClientError {
    ClientError::Protocol(format!(
        "the replicas answered a {op} with an unexpected result: {result:?}"
    ))
}

impl KvClient {
    /// Wraps `client`.
    pub fn new(client: Client) -> Self {
        KvClient { client }
    }

    /// The underlying client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    async fn run(&self, op: KvOp) -> Result<KvResult, ClientError> {
        let bytes = op.encode();
        let result = if op.is_read_only() {
            self.client.query(bytes).await?
        } else {
            self.client.invoke(bytes).await?
        };
        match KvResult::decode(&result) {
            Ok(KvResult::Error(e)) => Err(ClientError::Application(e)),
            Ok(r) => Ok(r),
            Err(e) => Err(ClientError::Protocol(format!(
                "the replicas agreed on a result that is not a key-value result: {e}"
            ))),
        }
    }

    /// Stores `value` under `key`; returns the previous value.
    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<Option<Vec<u8>>, ClientError> {
        let op = KvOp::Put {
            key: key.into(),
            value: value.into(),
        };
        match self.run(op).await? {
            KvResult::Put { previous } => Ok(previous),
            other => Err(unexpected("put", &other)),
        }
    }

    /// The value under `key`, if any.
    pub async fn get(&self, key: impl Into<Vec<u8>>) -> Result<Option<Vec<u8>>, ClientError> {
        match self.run(KvOp::Get { key: key.into() }).await? {
            KvResult::Get { value } => Ok(value),
            other => Err(unexpected("get", &other)),
        }
    }

    /// Removes `key`; returns whether it was present.
    pub async fn delete(&self, key: impl Into<Vec<u8>>) -> Result<bool, ClientError> {
        match self.run(KvOp::Delete { key: key.into() }).await? {
            KvResult::Delete { existed } => Ok(existed),
            other => Err(unexpected("delete", &other)),
        }
    }

    /// Stores `new` under `key` if the key currently holds `expected`
    /// (`None`: if the key is absent).
    pub async fn cas(
        &self,
        key: impl Into<Vec<u8>>,
        expected: Option<Vec<u8>>,
        new: impl Into<Vec<u8>>,
    ) -> Result<CasOutcome, ClientError> {
        let op = KvOp::Cas {
            key: key.into(),
            expected,
            new: new.into(),
        };
        match self.run(op).await? {
            KvResult::Cas { swapped, current } => Ok(CasOutcome { swapped, current }),
            other => Err(unexpected("cas", &other)),
        }
    }

    /// The entries with `from <= key < to`, at most `limit` of them (capped
    /// by the store at [`pbft_app::kv::SCAN_LIMIT_MAX`]).
    pub async fn scan(
        &self,
        from: impl Into<Vec<u8>>,
        to: impl Into<Vec<u8>>,
        limit: u32,
    ) -> Result<ScanOutcome, ClientError> {
        let op = KvOp::Scan {
            from: from.into(),
            to: to.into(),
            limit,
        };
        match self.run(op).await? {
            KvResult::Scan { items, more } => Ok(ScanOutcome { items, more }),
            other => Err(unexpected("scan", &other)),
        }
    }
}
