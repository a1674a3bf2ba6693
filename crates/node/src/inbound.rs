//! The decode task: frames from the endpoint to messages for the
//! verification stage.
//!
//! Everything here is controlled by a peer, so nothing is asserted: bytes that
//! do not decode, and messages a client has no business sending, are dropped
//! with a debug log line and a counter.

use crate::metrics::{add, Metrics};
use pbft_core::Message;
use pbft_crypto::PublicKey;
use pbft_net::InboundFrame;
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::mpsc;
use tracing::debug;

/// Why a frame was dropped before verification.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Rejected {
    /// The bytes are not a [`Message`].
    Garbage(String),
    /// A client link sent a message only replicas send.
    NotFromClient(&'static str),
}

/// Decodes `bytes` received on a link from a replica (`from_replica`) or a
/// client. Clients may only send `Request` and `StatusRequest`: everything
/// else is replica traffic, which a client has no reason to relay, so it is
/// refused before it costs a signature check.
pub(crate) fn decode_frame(bytes: &[u8], from_replica: bool) -> Result<Message, Rejected> {
    let message = Message::decode(bytes).map_err(|e| Rejected::Garbage(e.to_string()))?;
    if !from_replica && !matches!(message, Message::Request(_) | Message::StatusRequest(_)) {
        return Err(Rejected::NotFromClient(message.kind()));
    }
    Ok(message)
}

/// Decodes frames until the endpoint's channel closes (endpoint shut down) or
/// the verification stage stops.
pub(crate) async fn decode_loop(
    mut inbound: mpsc::Receiver<InboundFrame>,
    decoded: mpsc::Sender<(PublicKey, Message)>,
    replicas: HashSet<PublicKey>,
    metrics: Arc<Metrics>,
) {
    while let Some(frame) = inbound.recv().await {
        let from_replica = replicas.contains(&frame.from);
        match decode_frame(&frame.bytes, from_replica) {
            Ok(message) => {
                if decoded.send((frame.from, message)).await.is_err() {
                    debug!("verification stage stopped; decode task ends");
                    return;
                }
            }
            Err(Rejected::Garbage(reason)) => {
                add(&metrics.garbage_frames, 1);
                debug!(peer = ?frame.from, len = frame.bytes.len(), %reason, "dropping a frame that does not decode");
            }
            Err(Rejected::NotFromClient(kind)) => {
                add(&metrics.refused_frames, 1);
                debug!(peer = ?frame.from, kind, "dropping replica traffic sent by a client");
            }
        }
    }
    debug!("endpoint closed; decode task ends");
}
