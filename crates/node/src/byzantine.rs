//! Byzantine replicas for real (cargo feature `byzantine`, never in the
//! default build): `pbft-node --byzantine <behaviour>`.
//!
//! The node stays an honest [`pbft_core::Replica`]; what it sends is altered
//! on the way out, after the step's records are durable, exactly as in the
//! simulator. The message-level behaviours are the simulator's own
//! ([`pbft_sim::byzantine::Byzantine::transform`]): one implementation of
//! each lie, run on virtual time there and on real sockets here.
//!
//! | behaviour | what the replica does | where |
//! |---|---|---|
//! | `silent` | sends nothing | simulator |
//! | `equivocate` | as primary, different batches for one (view, seq) to different backups | simulator |
//! | `conflict` | prepares/commits with wrong digests, lying replies | simulator |
//! | `badsig` | corrupts signatures, nested ones too | simulator |
//! | `replay` | replays old messages to random replicas | simulator |
//! | `slow-primary` | as primary, delays pre-prepares to just under the timeout | simulator |
//! | `checkpoint`, `viewchange`, `forget` | wrong checkpoint digests / forged view-change proofs / view changes that hide prepared certificates | simulator |
//! | `censor` | as primary, never orders one client's requests (`--censor-client`, default: the first client it hears from): its REQUESTs never reach the core | simulator ([`Byzantine::admits`]) |
//! | `flood` | far-view votes, stale view changes, fetches, PROGRESS, requests of made-up clients | simulator ([`Behavior::Flood`]), bounded here to [`FLOOD_PER_SECOND`] extra messages a second |
//! | `wrong-state` | applies writes wrongly (every stored value altered) and reports a wrong state digest | here: [`WrongState`] wraps the store |
//!
//! The names are [`crate::behaviours::BEHAVIOURS`] (compiled without the
//! feature too, for `pbft chaos`); the simulator's behaviours are found by
//! their simulator name ([`Behavior`]'s `Display`).
//!
//! Randomness comes from a ChaCha8 stream seeded from the replica id, so a
//! run's lies are the same every time given the same inputs.

use crate::behaviours;
use anyhow::{bail, Context};
use pbft_app::kv::{KvOp, KvStore};
use pbft_app::{Page, SnapshotError, StateMachine};
use pbft_core::{ClientId, Config, Message, Output, ReplicaId};
use pbft_crypto::{Digest, PublicKey, Signer};
use pbft_sim::byzantine::{Behavior, Byzantine};
use pbft_sim::network::{Dest, Outgoing};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::time::{Duration, Instant};

/// Most messages a flooding replica adds per second, over all its peers
/// (the simulator's flood adds a few on one step in ten, which on a busy
/// real replica can be thousands of steps a second).
pub const FLOOD_PER_SECOND: u32 = 2000;

/// What `--byzantine` asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Spec {
    /// One of the simulator's behaviours (a flood is rate-bounded here).
    Sim(Behavior),
    /// The simulator's censor: never order the given client's requests
    /// (`None`: the first client heard).
    Censor(Option<ClientId>),
    /// A wrong application state.
    WrongState,
}

impl Spec {
    /// Parses a behaviour name (one of [`behaviours::BEHAVIOURS`]) and its
    /// `--censor-client` key (hex).
    pub fn parse(name: &str, censor_client: Option<&str>) -> anyhow::Result<Spec> {
        if censor_client.is_some() && name != "censor" {
            bail!("--censor-client goes with --byzantine censor only");
        }
        if behaviours::find(name).is_none() {
            bail!(
                "unknown Byzantine behaviour {name:?}; known: {}",
                behaviours::names()
            );
        }
        match name {
            "censor" => {
                let client = censor_client
                    .map(|hex| {
                        PublicKey::from_hex(hex)
                            .map(ClientId)
                            .with_context(|| format!("--censor-client {hex:?}: not a public key"))
                    })
                    .transpose()?;
                Ok(Spec::Censor(client))
            }
            "wrong-state" => Ok(Spec::WrongState),
            _ => Behavior::MIXED
                .into_iter()
                .find(|b| b.to_string() == name)
                .map(Spec::Sim)
                .with_context(|| format!("{name:?}: no such simulator behaviour")),
        }
    }

    /// The state machine the replica runs.
    pub fn state_machine(&self) -> Box<dyn StateMachine> {
        match self {
            Spec::WrongState => Box::new(WrongState::default()),
            _ => Box::new(KvStore::new()),
        }
    }
}

/// The tampering stage of the protocol task.
pub struct Tamper {
    spec: Spec,
    sim: Option<Byzantine>,
    rng: ChaCha8Rng,
    id: ReplicaId,
    n: usize,
    flood_window: Instant,
    flood_sent: u32,
}

impl Tamper {
    /// The stage for replica `id` of `config`, signing with `signer`.
    pub fn new(spec: Spec, id: ReplicaId, signer: Signer, config: Config) -> Tamper {
        let sim = match &spec {
            Spec::Sim(b) => Some(Byzantine::new(*b, id, signer.clone(), config.clone(), None)),
            Spec::Censor(client) => {
                let mut b =
                    Byzantine::new(Behavior::Censor, id, signer.clone(), config.clone(), None);
                b.censored = *client;
                Some(b)
            }
            _ => None,
        };
        Tamper {
            spec,
            sim,
            rng: ChaCha8Rng::seed_from_u64(0xb12a_0000 + u64::from(id.0)),
            id,
            n: config.n(),
            flood_window: Instant::now(),
            flood_sent: 0,
        }
    }

    /// Whether an incoming verified message reaches the core (a censoring
    /// replica drops the victim's requests); notes it for replays.
    pub fn admit(&mut self, message: &Message) -> bool {
        let Some(sim) = &mut self.sim else {
            return true;
        };
        if let (Spec::Censor(None), None, Message::Request(r)) = (&self.spec, sim.censored, message)
        {
            sim.censored = Some(r.value.client);
        }
        sim.observe(message);
        sim.admits(message)
    }

    /// Alters the step's sends. `actions` are the non-persist outputs in
    /// order; sends come back as routed messages, the rest untouched.
    pub fn transform(&mut self, actions: Vec<Output>) -> (Vec<Output>, Vec<Outgoing>) {
        let mut others = Vec::new();
        let mut sends = Vec::new();
        for action in actions {
            match action {
                Output::Send(to, msg) => sends.push(Outgoing {
                    to: Dest::Replica(to.index()),
                    msg,
                    extra_delay: 0,
                }),
                Output::Broadcast(msg) => {
                    for j in (0..self.n).filter(|&j| j != self.id.index()) {
                        sends.push(Outgoing {
                            to: Dest::Replica(j),
                            msg: msg.clone(),
                            extra_delay: 0,
                        });
                    }
                }
                Output::Reply(client, reply) => sends.push(Outgoing {
                    to: Dest::Client(client),
                    msg: Message::Reply(reply),
                    extra_delay: 0,
                }),
                other => others.push(other),
            }
        }
        let honest = sends.len();
        let mut sends = match &mut self.sim {
            Some(sim) => sim.transform(&mut self.rng, sends),
            None => sends,
        };
        if self.spec == Spec::Sim(Behavior::Flood) {
            // The simulator's flood only appends to the honest sends.
            let extra = sends.len().saturating_sub(honest);
            let allowed = self.flood_budget(extra);
            sends.truncate(honest + allowed);
        }
        (others, sends)
    }

    /// How many of `extra` flood messages may go out now: at most
    /// [`FLOOD_PER_SECOND`] in each one-second window.
    fn flood_budget(&mut self, extra: usize) -> usize {
        if self.flood_window.elapsed() >= Duration::from_secs(1) {
            self.flood_window = Instant::now();
            self.flood_sent = 0;
        }
        let left = FLOOD_PER_SECOND.saturating_sub(self.flood_sent) as usize;
        let allowed = extra.min(left);
        self.flood_sent += allowed as u32;
        allowed
    }
}

/// The key-value store applied wrongly: every value a write stores is
/// altered (a `!` appended), and the digest it reports is not its state's.
#[derive(Default)]
pub struct WrongState {
    inner: KvStore,
}

impl StateMachine for WrongState {
    fn apply(&mut self, op: &[u8]) -> Vec<u8> {
        let wrong = match KvOp::decode(op) {
            Ok(KvOp::Put { key, mut value }) => {
                value.push(b'!');
                KvOp::Put { key, value }.encode()
            }
            Ok(KvOp::Cas {
                key,
                expected,
                mut new,
            }) => {
                new.push(b'!');
                KvOp::Cas { key, expected, new }.encode()
            }
            _ => op.to_vec(),
        };
        self.inner.apply(&wrong)
    }

    fn query(&self, op: &[u8]) -> Vec<u8> {
        self.inner.query(op)
    }

    fn is_read_only(&self, op: &[u8]) -> bool {
        self.inner.is_read_only(op)
    }

    fn snapshot(&self) -> Vec<u8> {
        self.inner.snapshot()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError> {
        self.inner.restore(snapshot)
    }

    fn snapshot_pages(&mut self) -> Vec<Page> {
        self.inner.snapshot_pages()
    }

    fn restore_pages(&mut self, pages: &[Page]) -> Result<(), SnapshotError> {
        self.inner.restore_pages(pages)
    }

    fn digest(&self) -> Digest {
        Digest::of_parts(&[b"wrong-state", &self.inner.digest().0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_unknown_ones_are_refused() {
        for b in &behaviours::BEHAVIOURS {
            assert!(Spec::parse(b.name, None).is_ok(), "{}", b.name);
        }
        assert_eq!(
            Spec::parse("flood", None).expect("flood"),
            Spec::Sim(Behavior::Flood)
        );
        assert_eq!(
            Spec::parse("slow-primary", None).expect("slow"),
            Spec::Sim(Behavior::SlowPrimary)
        );
        // The simulator's, but not one a real replica takes.
        assert!(Spec::parse("forge", None).is_err());
        let e = Spec::parse("nice", None).expect_err("unknown");
        assert!(e.to_string().contains("known: silent"), "{e}");
        assert!(Spec::parse("silent", Some("00")).is_err());
        assert!(Spec::parse("censor", Some("zz")).is_err());
    }

    #[test]
    fn the_flood_is_bounded_per_second() {
        let keys = pbft_crypto::KeyPair::generate();
        let cluster = pbft_crypto::ClusterId(7);
        let config = Config::new(cluster, vec![keys.public(); 4]);
        let signer = Signer::new(keys, cluster);
        let mut t = Tamper::new(Spec::Sim(Behavior::Flood), ReplicaId(1), signer, config);
        assert_eq!(t.flood_budget(1500), 1500);
        assert_eq!(t.flood_budget(1500), (FLOOD_PER_SECOND - 1500) as usize);
        assert_eq!(t.flood_budget(10), 0);
        t.flood_window = Instant::now() - Duration::from_secs(2);
        assert_eq!(t.flood_budget(10), 10);
    }

    #[test]
    fn wrong_state_diverges_from_the_honest_store() {
        let mut honest = KvStore::new();
        let mut wrong = WrongState::default();
        let put = KvOp::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        }
        .encode();
        honest.apply(&put);
        wrong.apply(&put);
        assert_ne!(honest.digest(), wrong.digest());
        let get = KvOp::Get { key: b"k".to_vec() }.encode();
        assert_ne!(honest.query(&get), wrong.query(&get));
        // Even with equal contents, the reported digest is wrong.
        let empty = WrongState::default();
        assert_ne!(empty.digest(), KvStore::new().digest());
    }
}
