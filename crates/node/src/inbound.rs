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
use pbft_net::InboundFrame;
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

/// A warning at most once per interval, counting what it held back.
struct RateLimited {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimited {
    fn new(interval: Duration) -> Self {
        RateLimited {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(suppressed since the last one)` if a line may be logged now.
    fn allow(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.interval)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Decodes frames until the endpoint's channel closes (endpoint shut down) or
/// the verification stage stops.
pub(crate) async fn decode_loop(
    mut inbound: mpsc::Receiver<InboundFrame>,
    decoded: mpsc::Sender<(PublicKey, Message)>,
    replicas: HashSet<PublicKey>,
    metrics: Arc<Metrics>,
) {
    let mut foreign_warning = RateLimited::new(FOREIGN_WARN_INTERVAL);
    while let Some(frame) = inbound.recv().await {
        let from_replica = replicas.contains(&frame.from);
        match decode_frame(&frame.bytes, &frame.from, from_replica) {
            Ok(message) => {
                metrics
                    .messages_received
                    .with_label_values(&[message.kind()])
                    .inc();
                metrics
                    .queue_depth
                    .with_label_values(&["decoded"])
                    .set((decoded.max_capacity() - decoded.capacity()) as i64);
                if decoded.send((frame.from, message)).await.is_err() {
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
    debug!("endpoint closed; decode task ends");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_are_rate_limited_and_count_what_they_hold_back() {
        let start = Instant::now();
        let mut limit = RateLimited::new(Duration::from_secs(10));
        assert_eq!(limit.allow(start), Some(0));
        assert_eq!(limit.allow(start + Duration::from_secs(1)), None);
        assert_eq!(limit.allow(start + Duration::from_secs(9)), None);
        assert_eq!(limit.allow(start + Duration::from_secs(10)), Some(2));
        assert_eq!(limit.allow(start + Duration::from_secs(11)), None);
    }
}
