//! Error types.

use pbft_crypto::{KeyError, PublicKey};
use std::net::SocketAddr;

/// Why an endpoint could not be created.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Endpoints spawn tasks: they must be created inside a tokio runtime.
    #[error("no tokio runtime: create the endpoint from within a tokio runtime")]
    NoRuntime,
    /// The UDP socket could not be bound (for example, the port is in use).
    #[error("cannot bind UDP socket on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The key pair could not be encoded.
    #[error("key error: {0}")]
    Key(#[from] KeyError),
    /// The self-signed certificate could not be made.
    #[error("certificate generation failed: {0}")]
    Certificate(String),
    /// The TLS configuration was rejected.
    #[error("TLS configuration error: {0}")]
    Tls(String),
    /// A [`NetConfig`](crate::NetConfig) value is out of range.
    #[error("invalid network configuration: {0}")]
    Config(String),
}

/// Why [`Endpoint::send`](crate::Endpoint::send) dropped a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The peer was never registered with `add_peer` and has no inbound connection.
    #[error("no route to peer {0:?}: not registered and not connected")]
    NotConnected(PublicKey),
    /// The peer's bounded send queue is full (slow or unreachable peer).
    #[error("send queue to peer {0:?} is full")]
    QueueFull(PublicKey),
    /// The frame is larger than `max_frame_len`.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// The frame's length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The endpoint has been shut down.
    #[error("endpoint is shut down")]
    Shutdown,
}
