//! Which authenticated keys a listening endpoint accepts.

use pbft_crypto::PublicKey;
use std::collections::HashSet;

/// The role an accepted peer was admitted under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PeerKind {
    /// One of the cluster's replicas.
    Replica,
    /// A client.
    Client,
}

/// Decides, by the peer's authenticated ed25519 key, whether an inbound
/// connection is kept. Replica keys are always accepted; any other key is
/// accepted as a client if `allow_any_client` is set or the key is in
/// `clients`. Refused connections are closed with
/// [`close_code::REFUSED`](crate::close_code::REFUSED).
#[derive(Clone, Debug, Default)]
pub struct AcceptPolicy {
    /// Keys of the cluster's replicas.
    pub replicas: HashSet<PublicKey>,
    /// Accept every other key as a client.
    pub allow_any_client: bool,
    /// Client keys accepted when `allow_any_client` is off.
    pub clients: HashSet<PublicKey>,
}

impl AcceptPolicy {
    /// Accepts the given replicas and nobody else.
    pub fn replicas(replicas: impl IntoIterator<Item = PublicKey>) -> Self {
        AcceptPolicy {
            replicas: replicas.into_iter().collect(),
            ..AcceptPolicy::default()
        }
    }

    /// Also accepts every other key, as a client.
    pub fn allow_any_client(mut self) -> Self {
        self.allow_any_client = true;
        self
    }

    /// Also accepts these keys as clients.
    pub fn with_clients(mut self, clients: impl IntoIterator<Item = PublicKey>) -> Self {
        self.clients.extend(clients);
        self
    }

    /// The role `key` is admitted under, or `None` if it is refused.
    pub fn decide(&self, key: &PublicKey) -> Option<PeerKind> {
        if self.replicas.contains(key) {
            Some(PeerKind::Replica)
        } else if self.allow_any_client || self.clients.contains(key) {
            Some(PeerKind::Client)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions() {
        let r = PublicKey([1; 32]);
        let c = PublicKey([2; 32]);
        let x = PublicKey([3; 32]);
        let p = AcceptPolicy::replicas([r]);
        assert_eq!(p.decide(&r), Some(PeerKind::Replica));
        assert_eq!(p.decide(&c), None);
        let p = p.with_clients([c]);
        assert_eq!(p.decide(&c), Some(PeerKind::Client));
        assert_eq!(p.decide(&x), None);
        let p = p.allow_any_client();
        assert_eq!(p.decide(&x), Some(PeerKind::Client));
        assert_eq!(p.decide(&r), Some(PeerKind::Replica));
    }
}
