//! The decode task: frames from the endpoint to messages for the
//! verification stage.
//!
//! Everything here is controlled by a peer, so nothing is asserted: bytes that
//! do not decode, messages a client has no business sending, and client
//! messages signed for another client are dropped with a log line and a
//! counter.
//!
//! # Whose requests a client link may carry
//! The endpoint authenticates each link's peer key (TLS) and admits clients by
//! `[clients]` in the node file, but that says who may *connect*, not whose
//! requests are executed. So a `Request` or `StatusRequest` that arrives on a
//! client link must name that very client (`client` equal to the link's key,
//! and so, once verified, be signed by it); otherwise a client admitted by
//! `allow_any = false` could submit (or replay) requests of clients that are
//! not admitted. Replica links may carry any client's request (a backup
//! forwards requests to the primary); their signatures are checked as always.

use crate::metrics::Metrics;
use pbft_core::{ClientId, Message};
use pbft_crypto::PublicKey;
use pbft_net::{InboundFrame, LogLimit, Unchecked};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, warn};

/// At most one warning per this interval about requests signed for another
/// client (with the number suppressed meanwhile).
const FOREIGN_WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Why a frame was dropped before verification.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Rejected {
    /// The bytes are not a [`Message`].
    Garbage(String),
    /// A client link sent a message only replicas send.
    NotFromClient(&'static str),
    /// A client link sent a client message naming another client.
    ForeignClient {
        /// The message kind.
        kind: &'static str,
        /// The client it names.
        claimed: ClientId,
    },
}

/// Decodes `bytes` received on a link from `peer`, a replica (`from_replica`)
/// or a client. Clients may only send `Request` and `StatusRequest`, and only
/// their own (see the [module docs](self)): everything else is refused before
/// it costs a signature check.
pub(crate) fn decode_frame(
    bytes: &[u8],
    peer: &PublicKey,
    from_replica: bool,
) -> Result<Message, Rejected> {
    let message = Message::decode(bytes).map_err(|e| Rejected::Garbage(e.to_string()))?;
    if from_replica {
        return Ok(message);
    }
    let claimed = match &message {
        Message::Request(r) => r.client,
        Message::StatusRequest(r) => r.client,
        other => return Err(Rejected::NotFromClient(other.kind())),
    };
    if claimed.0 != *peer {
        return Err(Rejected::ForeignClient {
            kind: message.kind(),
            claimed,
        });
    }
    Ok(message)
}

/// Which of the endpoint's lanes a decode task serves (see [`pbft_net::Lanes`]):
/// each lane has its own task and its own queue to the verification stage,
/// so a client backlog never holds up replica traffic here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lane {
    Replicas,
    Clients,
}

impl Lane {
    /// The `queue` label of its decoded queue's depth gauge.
    fn queue_label(self) -> &'static str {
        match self {
            Lane::Replicas => "decoded_replicas",
            Lane::Clients => "decoded_clients",
        }
    }
}

/// Decodes the frames of one lane until the endpoint's channel closes
/// (endpoint shut down) or the verification stage stops. Each message keeps
/// its frame's share of the lane's byte budget ([`pbft_net::Held`]) until the
/// protocol task takes it.
pub(crate) async fn decode_loop(
    lane: Lane,
    mut inbound: mpsc::Receiver<InboundFrame>,
    decoded: mpsc::Sender<Unchecked<Message>>,
    replicas: HashSet<PublicKey>,
    metrics: Arc<Metrics>,
) {
    let mut foreign_warning = LogLimit::new(FOREIGN_WARN_INTERVAL);
    let depth = metrics.queue_depth.with_label_values(&[lane.queue_label()]);
    while let Some(frame) = inbound.recv().await {
        // The replicas' lane carries only replica links; checking the key
        // again costs a lookup and keeps this task right on its own.
        let from_replica = replicas.contains(&frame.from);
        match decode_frame(&frame.bytes, &frame.from, from_replica) {
            Ok(message) => {
                metrics
                    .messages_received
                    .with_label_values(&[message.kind()])
                    .inc();
                depth.set((decoded.max_capacity() - decoded.capacity()) as i64);
                let item = Unchecked {
                    from: frame.from,
                    value: message,
                    held: frame.held,
                };
                if decoded.send(item).await.is_err() {
                    debug!("verification stage stopped; decode task ends");
                    return;
                }
            }
            Err(Rejected::Garbage(reason)) => {
                metrics.garbage_frames.inc();
                debug!(peer = ?frame.from, len = frame.bytes.len(), %reason, "dropping a frame that does not decode");
            }
            Err(Rejected::NotFromClient(kind)) => {
                metrics.refused_frames.inc();
                debug!(peer = ?frame.from, kind, "dropping replica traffic sent by a client");
            }
            Err(Rejected::ForeignClient { kind, claimed }) => {
                metrics.foreign_client_frames.inc();
                if let Some(suppressed) = foreign_warning.allow(Instant::now()) {
                    warn!(
                        peer = %frame.from.to_hex(),
                        claimed = %claimed.0.to_hex(),
                        kind,
                        suppressed,
                        "dropping a client message naming another client than the connection's"
                    );
                }
            }
        }
    }
    debug!(?lane, "endpoint closed; decode task ends");
}
