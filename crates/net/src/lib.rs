//! QUIC transport between the replicas and clients of the PBFT replication
//! service, and a batched signature-verification stage.
//!
//! The transport moves opaque frames (`bytes::Bytes`) between endpoints named
//! by their ed25519 [`PublicKey`]; it knows nothing of protocol messages.
//!
//! # Threat model
//!
//! * **Identity.** Every endpoint, replica or client, has an ed25519
//!   [`KeyPair`](pbft_crypto::KeyPair). Its TLS certificate is self-signed with
//!   that key; only the certificate's subject key counts (names, dates and
//!   issuer are ignored). TLS 1.3 only, ALPN `pbft/1`, no 0-RTT and no session
//!   resumption, so every connection runs a full handshake with certificates.
//! * **Proof of possession.** Both sides check the peer's TLS 1.3
//!   `CertificateVerify` signature with *ring*; ed25519 is the only signature
//!   scheme offered or accepted.
//! * **Dialling side** pins the key it expects ([`Endpoint::add_peer`]): a
//!   certificate with any other key fails the handshake, so a misdirected or
//!   intercepted connection carries no frames.
//! * **Accepting side** demands a client certificate, extracts the peer's key
//!   and asks the [`AcceptPolicy`]: replica keys are always accepted, other keys
//!   only as clients (any client, or an allow-list). Refused peers are closed
//!   with [`close_code::REFUSED`] and logged with their key.
//! * **What it does not give.** [`InboundFrame::from`] authenticates the
//!   *link*. It tells who sent the bytes (useful for replies and for blaming a
//!   flood), not that their content is genuine: an authenticated replica may be
//!   Byzantine, and messages are relayed. Protocol messages carry their own
//!   signatures, checked by [`spawn_verifier`] before the protocol sees them.
//! * **Malformed input.** Every peer, authenticated or not, may send garbage:
//!   it never panics the endpoint; it closes that peer's connection.
//!
//! # Framing
//!
//! Each connection carries, in each direction, one long-lived unidirectional
//! QUIC stream of frames: a 4-byte big-endian payload length, then the payload.
//! The writer takes every frame queued when it wakes (up to 256 frames or
//! 256 KiB) and writes them with one call.
//! One stream per direction keeps a peer's frames in order (PBFT processes a
//! peer's messages roughly in order anyway) and costs one stream set-up per
//! connection instead of one per message; head-of-line blocking is confined to
//! one peer pair. A peer has credit for one stream at a time (it may open a
//! new one once the previous has ended). Bidirectional streams and datagrams
//! are disabled.
//!
//! A frame longer than the limit closes the connection with
//! [`close_code::FRAME_TOO_LARGE`]: the limit is [`NetConfig::max_frame_len`]
//! (default 16 MiB) on connections we dial and inbound ones from replicas, and
//! [`NetConfig::max_client_frame_len`] (default 1 MiB) on inbound connections
//! from clients; a stream that ends inside a
//! frame closes it with [`close_code::PROTOCOL_VIOLATION`]. Both are logged and
//! counted in [`NetStats`]; the endpoint keeps serving other peers. Sending an
//! oversized frame fails locally with [`SendError::TooLarge`].
//!
//! # Bounds
//!
//! Nothing grows without bound with a slow, dead or hostile peer:
//!
//! * per peer connection, a send queue of [`NetConfig::send_queue_len`] frames
//!   and [`NetConfig::send_queue_bytes`] bytes ([`NetConfig::client_send_queue_bytes`]
//!   to a client; one frame always fits an empty queue), and all client
//!   queues together at most [`NetConfig::client_send_bytes_total`] bytes, so
//!   clients that never read their replies cannot make the replica hold
//!   more; [`Endpoint::send`] never blocks and drops (with
//!   [`SendError::QueueFull`]) when a bound is reached;
//! * two inbound lanes ([`Inbound`]), one for frames from replicas and one
//!   for frames from clients, read replicas first (with a share kept for
//!   clients, see [`lanes`]), so replica traffic never queues behind a
//!   client flood. Each lane holds at most [`NetConfig::recv_queue_len`]
//!   frames and at most its byte budget ([`NetConfig::replica_lane_bytes`],
//!   [`NetConfig::client_lane_bytes`]); a frame keeps its bytes of the
//!   budget ([`Held`]) until the consumer drops it, so the budget can bound
//!   the consumer's later stages too (the node keeps it through decoding
//!   and verification). When a lane is full, its readers wait their turn
//!   (fairly, first come first served) and QUIC flow control throttles the
//!   senders;
//! * per connection, QUIC windows of 1 MiB per stream and 2 MiB in all, one
//!   inbound stream at a time, and one frame being reassembled (its buffer
//!   grows with the bytes received, not with the announced length);
//! * at most [`NetConfig::max_connections`] inbound connections, counted from
//!   before the handshake, and at most
//!   [`NetConfig::max_connections_per_address`] from one IP address; one
//!   inbound connection per key (a newer one closes the older with
//!   [`close_code::SUPERSEDED`]); refused attempts are counted, and logged at
//!   most once per 10 s;
//! * one dial task per registered peer, redialling with exponential backoff
//!   between [`NetConfig::reconnect_backoff_min`] and
//!   [`NetConfig::reconnect_backoff_max`] plus jitter;
//! * dead peers are detected by the idle timeout, with keep-alives on quiet links;
//! * a restarted peer is recognised at once: every process presents a fresh
//!   certificate (a serial number of its own), and a peer that dials in with
//!   another certificate than the one our connection to it saw makes us close
//!   that connection (it reaches the dead process) and redial.
//!
//! Worst case, buffered inbound data is about
//! `max_connections × (max_client_frame_len + 2 MiB)` for clients plus
//! `2 × replicas × (max_frame_len + 2 MiB)` for replicas (a dialled and an
//! accepted connection each), plus the two lanes' byte budgets.
//!
//! # Verification stage
//!
//! [`spawn_verifier`] checks the signatures of decoded messages in batches on
//! a fixed pool of dedicated threads and forwards only
//! [`Verified`](pbft_crypto::Verified) values, in input order; see the
//! [`verify`] module.

mod config;
mod endpoint;
mod error;
mod frame;
pub mod lanes;
mod log_limit;
mod policy;
mod send_queue;
mod tls;
pub mod verify;

#[cfg(test)]
mod tests;

pub use config::NetConfig;
pub use endpoint::{Endpoint, Held, Inbound, InboundFrame, NetStats, REPLICA_RESERVE};
pub use error::{NetError, SendError};
pub use lanes::Lanes;
pub use log_limit::LogLimit;
pub use policy::{AcceptPolicy, PeerKind};
pub use tls::ALPN;
pub use verify::{
    spawn_verifier, spawn_verifier_with, Checked, Unchecked, VerifierHandle, VerifyStats,
};

use pbft_crypto::PublicKey;
use std::fmt;

/// QUIC application error codes this crate closes connections with.
pub mod close_code {
    /// The endpoint is shutting down.
    pub const SHUTDOWN: u32 = 0;
    /// The peer's key is not allowed by the accept policy.
    pub const REFUSED: u32 = 1;
    /// The peer announced a frame longer than the maximum.
    pub const FRAME_TOO_LARGE: u32 = 2;
    /// The peer broke the framing or a stream failed.
    pub const PROTOCOL_VIOLATION: u32 = 3;
    /// A newer connection from the same key replaced this one.
    pub const SUPERSEDED: u32 = 4;
    /// The peer was removed from the dial list.
    pub const PEER_REMOVED: u32 = 5;
    /// The peer did not present the pinned key.
    pub const WRONG_PEER: u32 = 6;
}

/// The first 6 bytes of a key in hex, for logs.
pub(crate) struct Short<'a>(pub(crate) &'a PublicKey);

impl fmt::Display for Short<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 .0[..6] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Entry points for fuzzing the decoders of untrusted bytes in this crate
/// (the frame reader), on in-memory input. Enabled by the `fuzzing` feature.
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing {
    use crate::frame::{block_on_ready, read_frame, MemorySource};

    /// Reads frames of at most `max` bytes from `bytes`, delivered in chunks
    /// sized by `chunk_sizes` (each byte times 64; 0: whatever the reader
    /// asks for), with the node's frame reader, until the end or an error.
    /// Returns the frames read and whether the input ended at a frame
    /// boundary (`Ok`) or not (`Err` with the reason).
    pub fn read_frames(
        bytes: &[u8],
        chunk_sizes: &[u8],
        max: usize,
    ) -> (Vec<bytes::Bytes>, Result<(), String>) {
        let mut source = MemorySource::new(bytes, chunk_sizes);
        let mut frames = Vec::new();
        loop {
            match block_on_ready(read_frame(&mut source, max)) {
                Some(Ok(Some(frame))) => frames.push(frame),
                Some(Ok(None)) => return (frames, Ok(())),
                Some(Err(e)) => return (frames, Err(format!("{e:?}"))),
                None => return (frames, Err("the in-memory source waited".into())),
            }
        }
    }
}
