//! Errors of the client SDK.

use pbft_app::kv::KvError;
use std::time::Duration;

/// Why an operation did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No decision before the deadline. The operation may or may not have been
    /// executed: retrying it with a new request may apply it twice.
    #[error(
        "no result after {after:?}: the outcome is unknown (the operation may or may not have \
         been executed); connected to {connected} of {replicas} replicas{hint}"
    )]
    Timeout {
        /// How long the client waited.
        after: Duration,
        /// Replicas with a live connection at the deadline.
        connected: usize,
        /// Replicas in the cluster.
        replicas: usize,
        /// What the connection count suggests.
        hint: &'static str,
    },
    /// The client's options do not fit together (see `ClientOptions::check`).
    #[error("client options: {0}")]
    Options(String),
    /// The configuration could not be loaded or is unusable.
    #[error("configuration error: {0}")]
    Config(#[from] pbft_config::ConfigError),
    /// The client's key file could not be read.
    #[error("client key: {0}")]
    Key(#[from] pbft_crypto::keyfile::KeyFileError),
    /// The network endpoint could not be created.
    #[error("network: {0}")]
    Net(#[from] pbft_net::NetError),
    /// The replicated application refused the operation (it changed nothing).
    #[error("the service refused the operation: {0}")]
    Application(KvError),
    /// The replicas agreed on a result this client cannot interpret.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The request ran (exactly once), but its result was too large for the
    /// replicas to keep and the client missed the original replies. A write
    /// must not be re-issued (it would run twice); [`crate::Client::query`]
    /// re-issues reads by itself.
    #[error(
        "request {request_id} was executed, but its result was too large for the replicas to \
         keep and the original replies were missed; do not re-issue a write"
    )]
    ResultNotKept {
        /// The request.
        request_id: pbft_core::RequestId,
    },
    /// The replicas no longer remember this client and refused a request at
    /// or below their client table's floor: it may or may not have been
    /// executed (idle clients are forgotten at checkpoints).
    #[error(
        "request {request_id} expired: the replicas forgot this client, so the outcome is \
         unknown (the operation may or may not have been executed)"
    )]
    Expired {
        /// The request.
        request_id: pbft_core::RequestId,
    },
}

impl ClientError {
    /// Whether the operation's outcome is unknown (it may have been executed).
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(
            self,
            ClientError::Timeout { .. } | ClientError::Expired { .. }
        )
    }

    pub(crate) fn timeout(after: Duration, connected: usize, replicas: usize, f: usize) -> Self {
        let hint = if connected == 0 {
            " - no replica is reachable: the cluster is down, or its replicas refuse this \
             client's key (client admission)"
        } else if connected < replicas - f {
            " - fewer than 2f+1 replicas are reachable: the cluster cannot make progress"
        } else {
            " - the cluster may be changing views or overloaded"
        };
        ClientError::Timeout {
            after,
            connected,
            replicas,
            hint,
        }
    }
}
