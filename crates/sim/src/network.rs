//! The network model: delays, loss, duplication, partitions, and the heal.
//!
//! Before the heal time a message may be lost, duplicated, or delayed by a
//! random amount in `[delay_min, delay_max]` (independent delays reorder
//! messages), partitions cut replicas off from each other and from the
//! clients, and a muted replica is heard by no other replica. After the heal
//! the network is synchronous: every message arrives once, within a few
//! milliseconds, except that some plans keep a little loss for good and some
//! have a slow spell first, with delays above the view-change timeout base.

use crate::scenario::{NetworkPlan, MS};
use pbft_core::{ClientId, Message};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// One end of a network link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Endpoint {
    /// A replica, by index.
    Replica(usize),
    /// A simulated client, by index.
    Client(usize),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Replica(i) => write!(f, "r{i}"),
            Endpoint::Client(i) => write!(f, "c{i}"),
        }
    }
}

/// Where a replica's output goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    /// A replica, by index.
    Replica(usize),
    /// A client.
    Client(ClientId),
}

/// A message a replica sends, after routing (and, for a Byzantine replica,
/// after its tampering).
#[derive(Clone, Debug)]
pub struct Outgoing {
    /// The receiver.
    pub to: Dest,
    /// The message.
    pub msg: Message,
    /// Extra delay on top of the network's (a slow primary), microseconds.
    pub extra_delay: u64,
}

/// The network's state during a run.
#[derive(Clone, Debug)]
pub(crate) struct Network {
    plan: NetworkPlan,
    healed: bool,
    /// Partition group of each replica; a message crosses only within a group.
    groups: Vec<u8>,
    /// The group clients belong to.
    client_group: u8,
}

impl Network {
    pub fn new(plan: NetworkPlan, n: usize) -> Network {
        Network {
            plan,
            healed: false,
            groups: vec![0; n],
            client_group: 0,
        }
    }

    /// Ends every network fault.
    pub fn heal(&mut self) {
        self.healed = true;
        self.groups.iter_mut().for_each(|g| *g = 0);
        self.client_group = 0;
    }

    pub fn healed(&self) -> bool {
        self.healed
    }

    /// Sets the partition (ignored after the heal).
    pub fn partition(&mut self, groups: Vec<u8>, client_group: u8) {
        if !self.healed {
            self.groups = groups;
            self.client_group = client_group;
        }
    }

    fn group(&self, e: Endpoint) -> u8 {
        match e {
            Endpoint::Replica(i) => self.groups.get(i).copied().unwrap_or(0),
            Endpoint::Client(_) => self.client_group,
        }
    }

    /// The delays after which copies of a message from `from` to `to` arrive:
    /// none (lost or cut), one, or two (duplicated).
    pub fn fate(&self, rng: &mut ChaCha8Rng, now: u64, from: Endpoint, to: Endpoint) -> Vec<u64> {
        if self.healed {
            if self.plan.residual_loss > 0.0 && rng.gen_bool(self.plan.residual_loss) {
                return Vec::new();
            }
            if now < self.plan.slow_until {
                let d = self.plan.slow_delay;
                return vec![rng.gen_range(d / 2..=d)];
            }
            return vec![rng.gen_range(MS..=3 * MS)];
        }
        if self.group(from) != self.group(to) {
            return Vec::new();
        }
        if let (Endpoint::Replica(i), Endpoint::Replica(_)) = (from, to) {
            if self.plan.muted == Some(i) {
                return Vec::new();
            }
        }
        if let (Endpoint::Replica(_), Endpoint::Replica(j)) = (from, to) {
            if self.plan.deaf == Some(j) {
                return Vec::new();
            }
        }
        if matches!(from, Endpoint::Client(_))
            && self.plan.client_loss > 0.0
            && rng.gen_bool(self.plan.client_loss)
        {
            return Vec::new();
        }
        if self.plan.loss > 0.0 && rng.gen_bool(self.plan.loss) {
            return Vec::new();
        }
        let delay = |rng: &mut ChaCha8Rng| rng.gen_range(self.plan.delay_min..=self.plan.delay_max);
        let mut delays = vec![delay(rng)];
        if self.plan.duplicate > 0.0 && rng.gen_bool(self.plan.duplicate) {
            delays.push(delay(rng));
        }
        delays
    }
}
