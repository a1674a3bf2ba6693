//! The generic client: ordered requests, the read-only fast path, status.
//!
//! Whether reads take the fast path, and so how many replies an ordered
//! result needs, is the cluster's read mode (`read_mode` in `cluster.toml`,
//! [`pbft_core::ReadMode`]), not an option of one client: unordered reads are
//! linearizable only if *every* client confirms its writes with 2f+1 replies.
//! The counting itself is [`crate::quorum`] (shared with the simulator).

use crate::error::ClientError;
use crate::quorum::{
    learned_view, next_request_id, replies_needed, Outcome, ReplierChoice, ReplyTally,
};
use bytes::Bytes;
use pbft_config::{ClientSettings, Cluster, Tuning};
use pbft_core::message::{Repliers, Reply, Request, StatusReport, StatusRequest};
use pbft_core::{ClientId, Message, ReadMode, ReplicaId, RequestId, View};
use pbft_crypto::{KeyPair, Signer, Verifier};
use pbft_net::{Endpoint, InboundFrame, NetConfig};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::debug;

/// Timing of a [`Client`]. Every interval derives from the defaults below;
/// `timeout` must exceed a view change of the cluster (several times the
/// replicas' `timeout_base_ms`), or clients give up exactly when the cluster
/// recovers.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Overall deadline of one operation (default 30 s). When it passes the
    /// operation fails with [`ClientError::Timeout`]: outcome unknown.
    pub timeout: Duration,
    /// The longest wait for the believed primary before the request is
    /// broadcast to every replica (default 500 ms). The first wait is
    /// [`LATE_FACTOR`] times this client's smoothed latency, within
    /// `[retransmit_min, retransmit]`; each later one doubles, up to
    /// `retransmit_max`.
    pub retransmit: Duration,
    /// The shortest first wait for the believed primary (default 100 ms).
    /// A broadcast request is what lets the backups hold a primary to
    /// account: they watch it pre-prepare only while they hold a request
    /// its client waits on, so a primary that delays every request by less
    /// than the first wait is never suspected.
    pub retransmit_min: Duration,
    /// The longest retransmission interval (default 8 s).
    pub retransmit_max: Duration,
    /// Once one of the replicas an ordered request named has replied, how
    /// long to wait for the others before asking every replica (default
    /// 50 ms): a faulty or lagging named replica, or a lost reply, costs
    /// this much, not a whole `retransmit` interval.
    pub reply_grace: Duration,
    /// How long the read-only fast path (in a cluster whose read mode is
    /// `fast`) waits for 2f+1 matching answers before falling back to an
    /// ordered request (default 1 s).
    pub read_only_wait: Duration,
    /// Once 2f+1 replicas answered a read-only request without agreeing (one
    /// may lag behind by a few requests), how much longer to wait for the
    /// others before ordering the request instead (default 50 ms).
    pub read_only_grace: Duration,
    /// How long [`Client::status`] waits for reports (default 2 s).
    pub status_timeout: Duration,
    /// Transport tunables.
    pub net: NetConfig,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions::with_timeout(Duration::from_secs(30))
    }
}

impl ClientOptions {
    /// The options a `client.toml` asks for: its deadline, and the default
    /// timing except where the file sets it.
    pub fn from_settings(settings: &pbft_config::ClientSettings) -> Self {
        let mut options = ClientOptions::with_timeout(settings.timeout);
        let t = &settings.timing;
        options.retransmit = t.retransmit.unwrap_or(options.retransmit);
        options.retransmit_min = t.retransmit_min.unwrap_or(options.retransmit_min);
        options.retransmit_max = t.retransmit_max.unwrap_or(options.retransmit_max);
        options.reply_grace = t.reply_grace.unwrap_or(options.reply_grace);
        options
    }

    /// Whether the intervals fit together: all positive, and
    /// `retransmit_min <= retransmit <= retransmit_max`.
    pub fn check(&self) -> Result<(), ClientError> {
        let bad = |why: String| Err(ClientError::Options(why));
        let named = [
            ("timeout", self.timeout),
            ("retransmit", self.retransmit),
            ("retransmit_min", self.retransmit_min),
            ("retransmit_max", self.retransmit_max),
            ("reply_grace", self.reply_grace),
        ];
        if let Some((name, _)) = named.iter().find(|(_, d)| d.is_zero()) {
            return bad(format!("{name} must be positive"));
        }
        if self.retransmit_min > self.retransmit || self.retransmit > self.retransmit_max {
            return bad(format!(
                "need retransmit_min <= retransmit <= retransmit_max, got {:?}, {:?}, {:?}",
                self.retransmit_min, self.retransmit, self.retransmit_max
            ));
        }
        Ok(())
    }

    /// The default options with an overall deadline of `timeout`.
    pub fn with_timeout(timeout: Duration) -> Self {
        ClientOptions {
            timeout,
            retransmit: Duration::from_millis(500),
            retransmit_min: Duration::from_millis(100),
            retransmit_max: Duration::from_secs(8),
            reply_grace: Duration::from_millis(50),
            read_only_wait: Duration::from_secs(1),
            read_only_grace: Duration::from_millis(50),
            status_timeout: Duration::from_secs(2),
            net: NetConfig::default(),
        }
    }
}

/// One replica's answer to [`Client::status`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// The replica.
    pub id: ReplicaId,
    /// Its address in the cluster file.
    pub address: SocketAddr,
    /// Its signed report, or `None` if it did not answer in time.
    pub report: Option<StatusReport>,
}

impl ReplicaStatus {
    /// Whether the replica answered.
    pub fn reachable(&self) -> bool {
        self.report.is_some()
    }
}

/// What the receive loop hands on.
enum Incoming {
    Reply(Reply),
    Status(StatusReport),
}

/// State used by one operation at a time.
struct State {
    inbound: pbft_net::Inbound,
    last_request_id: RequestId,
    /// The latest view each replica reported.
    views: BTreeMap<ReplicaId, View>,
    /// Which replicas ordered requests ask to reply.
    repliers: ReplierChoice<Instant>,
    /// The moving average of this client's ordered operations' latency
    /// (`None` before the first).
    latency: Option<Duration>,
}

/// An ordered request that has waited this many times the client's
/// smoothed latency (within the retransmission bounds) is late: it goes to
/// every replica.
pub const LATE_FACTOR: u32 = 4;

/// The first wait of an ordered request for the primary, given the
/// smoothed latency so far: see [`ClientOptions::retransmit`].
fn first_wait(latency: Option<Duration>, min: Duration, max: Duration) -> Duration {
    latency.map_or(max, |l| (l * LATE_FACTOR).clamp(min.min(max), max))
}

/// The moving average after one more sample (each weighs an eighth).
fn smoothed(average: Option<Duration>, sample: Duration) -> Duration {
    average.map_or(sample, |a| (a * 7 + sample) / 8)
}

impl State {
    /// One more latency sample.
    fn note_latency(&mut self, sample: Duration) {
        self.latency = Some(smoothed(self.latency, sample));
    }
}

/// How long a replica that was asked to reply and did not agree in time is
/// not asked again (unless it answers a broadcast correctly meanwhile).
const SUSPICION: Duration = Duration::from_secs(30);

/// A client of one PBFT cluster.
///
/// A `Client` runs **one operation at a time** (further calls wait on an
/// internal lock): replicas remember only the last request id of each client
/// for exactly-once execution, so concurrent requests need several clients,
/// each with its own key. Request ids are strictly increasing and never
/// reused, even across processes sharing a key: each id is at least the
/// current UNIX time in microseconds.
///
/// Must be created inside a tokio runtime.
pub struct Client {
    endpoint: Endpoint,
    signer: Signer,
    verifier: Verifier,
    config: pbft_core::Config,
    cluster: Cluster,
    options: ClientOptions,
    id: ClientId,
    view: AtomicU64,
    state: Mutex<State>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.id)
            .field("cluster", &self.cluster.id)
            .finish_non_exhaustive()
    }
}

/// How often a read is issued at most when its result is withheld or it expires.
const READ_REISSUES_MAX: usize = 3;

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Client {
    /// Connects with the settings of a `client.toml` (its key file and timeout).
    pub fn connect(settings: &ClientSettings) -> Result<Client, ClientError> {
        let key = pbft_crypto::keyfile::read_secret(&settings.key)?;
        Client::with_key(
            &settings.cluster,
            key,
            ClientOptions::with_timeout(settings.timeout),
        )
    }

    /// Connects to `cluster` as the client with `key`; reads follow the
    /// cluster's read mode ([`Cluster::read_mode`]).
    pub fn with_key(
        cluster: &Cluster,
        key: KeyPair,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        options.check()?;
        let (endpoint, inbound) = Endpoint::client(&key, options.net.clone())?;
        for (k, addr) in cluster.keys.iter().zip(&cluster.addresses) {
            endpoint.add_peer(*k, *addr);
        }
        let id = ClientId(key.public());
        let config = cluster.core_config(&Tuning::default());
        let repliers = ReplierChoice::new(
            config.n(),
            replies_needed(config.f(), config.read_mode, false),
            usize::from(id.0 .0[0]),
        );
        Ok(Client {
            endpoint,
            signer: Signer::new(key, cluster.id),
            verifier: Verifier::new(cluster.id),
            config,
            cluster: cluster.clone(),
            options,
            id,
            view: AtomicU64::new(0),
            state: Mutex::new(State {
                inbound,
                last_request_id: RequestId(0),
                views: BTreeMap::new(),
                repliers,
                latency: None,
            }),
        })
    }

    /// This client's identity (its public key).
    pub fn id(&self) -> ClientId {
        self.id
    }

    /// The cluster this client talks to.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The options in use.
    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// The cluster's read mode, from its cluster file: with
    /// [`ReadMode::Fast`] [`Client::query`] takes the read-only fast path and
    /// every ordered result needs 2f+1 matching replies.
    pub fn read_mode(&self) -> ReadMode {
        self.config.read_mode
    }

    /// How many matching replies from distinct replicas accept an ordered
    /// result: f+1, or 2f+1 in a cluster whose read mode is `fast`.
    pub fn ordered_quorum(&self) -> usize {
        replies_needed(self.config.f(), self.config.read_mode, false)
    }

    /// The view the client currently believes the cluster is in (learned from
    /// replies: the highest view reported by at least f+1 replicas).
    pub fn view(&self) -> View {
        View(self.view.load(Ordering::Relaxed))
    }

    /// How many replicas this client has a live connection to.
    pub fn connected_replicas(&self) -> usize {
        self.cluster
            .keys
            .iter()
            .filter(|k| self.endpoint.is_connected(k))
            .count()
    }

    /// Executes `op` through the protocol (ordered, exactly once) and returns
    /// the result that f+1 replicas agree on (2f+1 in a cluster whose read
    /// mode is `fast`: [`Client::ordered_quorum`]).
    ///
    /// The request goes to the believed primary; if no decision arrives
    /// within a few times this client's usual latency (see
    /// [`ClientOptions::retransmit`]) it is broadcast to every replica, again
    /// at doubling intervals, until [`ClientOptions::timeout`] passes.
    ///
    /// A retransmission can meet a result the replicas did not keep (it was
    /// larger than the cluster's `client_result_max`): then the request ran
    /// exactly once and this returns [`ClientError::ResultNotKept`]; one the
    /// replicas refuse because they forgot this client returns
    /// [`ClientError::Expired`] (outcome unknown). Neither is re-issued here:
    /// a write must not run twice. [`Client::query`] re-issues reads.
    pub async fn invoke(&self, op: Vec<u8>) -> Result<Vec<u8>, ClientError> {
        let mut state = self.state.lock().await;
        let deadline = Instant::now() + self.options.timeout;
        self.ordered(&mut state, op, deadline).await
    }

    /// Evaluates a read-only `op`. In a cluster whose read mode is `ordered`
    /// (the default) it is ordered like [`Client::invoke`]. In a `fast` one it
    /// takes the read-only fast path: the request is broadcast unordered and
    /// accepted on 2f+1 matching answers within
    /// [`ClientOptions::read_only_wait`]; otherwise (replicas disagree, or too
    /// few answer) it is retried as an ordered request with a fresh id.
    ///
    /// Replicas do not answer a write operation on this path; use
    /// [`Client::invoke`] for those.
    pub async fn query(&self, op: Vec<u8>) -> Result<Vec<u8>, ClientError> {
        let mut state = self.state.lock().await;
        let start = Instant::now();
        if self.config.read_mode != ReadMode::Fast {
            return self
                .ordered_read(&mut state, op, start + self.options.timeout)
                .await;
        }
        let deadline = start + self.options.timeout;
        let request_id = self.next_id(&mut state);
        let frame = self.request_frame(request_id, op.clone(), true, Repliers::ALL);
        self.broadcast(&frame);
        let mut wait_until = (start + self.options.read_only_wait).min(deadline);
        let needed = replies_needed(self.config.f(), self.config.read_mode, true);
        let mut tally = ReplyTally::new(request_id, true);
        while let Some(incoming) = self.next_incoming(&mut state, wait_until).await? {
            if let Incoming::Reply(reply) = incoming {
                if tally.add(&reply) {
                    if let Some(result) = tally.decided(needed) {
                        return Ok(result.to_vec());
                    }
                    if tally.hopeless(needed, self.config.n()) {
                        break;
                    }
                    if tally.voters() >= needed {
                        wait_until = wait_until.min(Instant::now() + self.options.read_only_grace);
                    }
                }
            }
        }
        debug!(
            voters = tally.voters(),
            "read-only fast path did not decide; ordering the request"
        );
        self.ordered_read(&mut state, op, deadline).await
    }

    /// An ordered read: a read whose result the replicas did not keep for
    /// the retransmission, or that they refused as expired, is re-issued as
    /// a new request (a read may run twice), a few times at most.
    async fn ordered_read(
        &self,
        state: &mut State,
        op: Vec<u8>,
        deadline: Instant,
    ) -> Result<Vec<u8>, ClientError> {
        let mut attempts = 1;
        loop {
            match self.ordered(state, op.clone(), deadline).await {
                Err(e @ (ClientError::ResultNotKept { .. } | ClientError::Expired { .. }))
                    if attempts < READ_REISSUES_MAX =>
                {
                    debug!(error = %e, "re-issuing the read as a new request");
                    attempts += 1;
                }
                other => return other,
            }
        }
    }

    /// Asks every replica for its signed status report; replicas that do not
    /// answer within [`ClientOptions::status_timeout`] are reported unreachable.
    pub async fn status(&self) -> Vec<ReplicaStatus> {
        let mut state = self.state.lock().await;
        let nonce: u64 = rand::random();
        let request = self.signer.sign(StatusRequest {
            client: self.id,
            nonce,
        });
        self.broadcast(&Bytes::from(Message::StatusRequest(request).encode()));
        let deadline = Instant::now() + self.options.status_timeout;
        let mut reports: BTreeMap<ReplicaId, StatusReport> = BTreeMap::new();
        while reports.len() < self.config.n() {
            match self.next_incoming(&mut state, deadline).await {
                Ok(Some(Incoming::Status(report))) if report.nonce == nonce => {
                    reports.insert(report.replica, report);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        self.cluster
            .addresses
            .iter()
            .enumerate()
            .map(|(i, address)| {
                let id = ReplicaId(i as u32);
                ReplicaStatus {
                    id,
                    address: *address,
                    report: reports.remove(&id),
                }
            })
            .collect()
    }

    /// Closes the connections, waiting (a few seconds at most) for the
    /// replicas to be told. Dropping the client closes them abruptly.
    pub async fn close(&self) {
        self.endpoint.shutdown().await;
    }

    /// How long the first copy of an ordered request waits for the believed
    /// primary: [`LATE_FACTOR`] times the smoothed latency, within
    /// `[retransmit_min, retransmit]` (the longest before any sample).
    fn first_retransmit(&self, state: &State) -> Duration {
        first_wait(
            state.latency,
            self.options.retransmit_min,
            self.options.retransmit,
        )
    }

    async fn ordered(
        &self,
        state: &mut State,
        op: Vec<u8>,
        deadline: Instant,
    ) -> Result<Vec<u8>, ClientError> {
        let started = Instant::now();
        let request_id = self.next_id(state);
        let primary = self.config.primary(self.view());
        // Only the named replicas reply to this copy; retransmissions are
        // another copy that asks every replica.
        let named = state.repliers.pick(primary, started);
        let frame = self.request_frame(request_id, op.clone(), false, named);
        self.send(primary, &frame);
        let mut to_all = None;
        let mut interval = self.first_retransmit(state);
        let mut retransmit_at = started + interval;
        let needed = self.ordered_quorum();
        let mut tally = ReplyTally::new(request_id, false);
        loop {
            let until = retransmit_at.min(deadline);
            match self.next_incoming(state, until).await? {
                Some(Incoming::Reply(reply)) => {
                    if !tally.add(&reply) {
                        continue;
                    }
                    if let Some(outcome) = tally.outcome(needed) {
                        let agreeing = tally.agreeing(needed);
                        state
                            .repliers
                            .settle(named, &agreeing, Instant::now() + SUSPICION);
                        state.note_latency(started.elapsed());
                        return match outcome {
                            Outcome::Result(result) => Ok(result.to_vec()),
                            Outcome::Withheld => Err(ClientError::ResultNotKept { request_id }),
                            Outcome::Expired => Err(ClientError::Expired { request_id }),
                        };
                    }
                    if to_all.is_none() {
                        if tally.all_voted(named, self.config.n()) {
                            // Every named replica answered and they
                            // disagree: ask everyone now.
                            retransmit_at = Instant::now();
                        } else if tally.voters() == 1 {
                            // It executed; the other named replicas answer
                            // within moments unless one is faulty, slow, or
                            // lost its reply. Ask everyone then, not only
                            // when the primary is suspected.
                            retransmit_at =
                                retransmit_at.min(Instant::now() + self.options.reply_grace);
                        }
                    }
                }
                Some(Incoming::Status(_)) => {}
                None if Instant::now() >= deadline => {
                    return Err(ClientError::timeout(
                        started.elapsed(),
                        self.connected_replicas(),
                        self.config.n(),
                        self.config.f(),
                    ));
                }
                None => {
                    debug!(%request_id, ?interval, "no decision yet; broadcasting the request");
                    let frame = to_all.get_or_insert_with(|| {
                        self.request_frame(request_id, op.clone(), false, Repliers::ALL)
                    });
                    self.broadcast(frame);
                    interval = (interval * 2).min(self.options.retransmit_max);
                    retransmit_at = Instant::now() + interval;
                }
            }
        }
    }

    /// The next verified reply or status report for this client, or `None`
    /// at `until`. Frames that do not decode, are not for us or do not verify
    /// are dropped.
    async fn next_incoming(
        &self,
        state: &mut State,
        until: Instant,
    ) -> Result<Option<Incoming>, ClientError> {
        loop {
            let frame = match tokio::time::timeout_at(until, state.inbound.recv()).await {
                Err(_) => return Ok(None),
                Ok(None) => return Err(ClientError::Protocol("the client endpoint closed".into())),
                Ok(Some(frame)) => frame,
            };
            let Some(incoming) = self.check(&frame) else {
                continue;
            };
            let (replica, view) = match &incoming {
                Incoming::Reply(r) => (r.replica, r.view),
                Incoming::Status(s) => (s.replica, s.view),
            };
            let known = state.views.entry(replica).or_default();
            *known = (*known).max(view);
            if let Some(v) = learned_view(&state.views, self.config.f()) {
                self.view.fetch_max(v.0, Ordering::Relaxed);
            }
            return Ok(Some(incoming));
        }
    }

    fn check(&self, frame: &InboundFrame) -> Option<Incoming> {
        let message = match Message::decode(&frame.bytes) {
            Ok(m @ (Message::Reply(_) | Message::StatusReport(_))) => m,
            Ok(other) => {
                debug!(kind = other.kind(), "ignoring unexpected message");
                return None;
            }
            Err(e) => {
                debug!(error = %e, "ignoring undecodable frame");
                return None;
            }
        };
        let message = match self.verifier.verify(message, &self.config) {
            Ok(m) => m.into_inner(),
            Err(e) => {
                debug!(error = %e, "ignoring unverifiable message");
                return None;
            }
        };
        match message {
            Message::Reply(r) if r.client == self.id && r.came_from(&self.config, &frame.from) => {
                Some(Incoming::Reply(r))
            }
            Message::Reply(r) => {
                debug!(replica = %r.replica, "ignoring a reply not for us or not from its link");
                None
            }
            Message::StatusReport(s) => Some(Incoming::Status(s.value)),
            _ => None,
        }
    }

    fn next_id(&self, state: &mut State) -> RequestId {
        let id = next_request_id(state.last_request_id, now_micros());
        state.last_request_id = id;
        id
    }

    fn request_frame(
        &self,
        request_id: RequestId,
        op: Vec<u8>,
        read_only: bool,
        repliers: Repliers,
    ) -> Bytes {
        let request = self.signer.sign(Request {
            client: self.id,
            request_id,
            op,
            read_only,
            repliers,
        });
        Bytes::from(Message::Request(request).encode())
    }

    fn send(&self, to: ReplicaId, frame: &Bytes) {
        if let Some(key) = self.config.key(to) {
            if let Err(e) = self.endpoint.send(*key, frame.clone()) {
                debug!(replica = %to, error = %e, "send failed");
            }
        }
    }

    fn broadcast(&self, frame: &Bytes) {
        for id in self.config.ids() {
            self.send(id, frame);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_check_that_the_intervals_fit_together() {
        let ms = Duration::from_millis;
        let d = ClientOptions::default();
        assert!(d.check().is_ok());
        // configs/client.toml shows these as the defaults.
        assert_eq!(
            (
                d.retransmit,
                d.retransmit_min,
                d.retransmit_max,
                d.reply_grace
            ),
            (ms(500), ms(100), ms(8000), ms(50))
        );
        let inverted = ClientOptions {
            retransmit_min: ms(600),
            ..ClientOptions::default()
        };
        let e = inverted.check().expect_err("min above retransmit");
        assert!(
            e.to_string().contains("retransmit_min <= retransmit"),
            "{e}"
        );
        let capped = ClientOptions {
            retransmit_max: ms(400),
            ..ClientOptions::default()
        };
        assert!(capped.check().is_err(), "retransmit above its cap");
        let zero = ClientOptions {
            reply_grace: Duration::ZERO,
            ..ClientOptions::default()
        };
        let e = zero.check().expect_err("zero grace");
        assert!(
            e.to_string().contains("reply_grace must be positive"),
            "{e}"
        );
    }

    #[test]
    fn the_first_wait_follows_the_latency_within_its_bounds() {
        let ms = Duration::from_millis;
        let (min, max) = (ms(100), ms(500));
        assert_eq!(
            first_wait(None, min, max),
            max,
            "no sample yet: the longest"
        );
        assert_eq!(first_wait(Some(ms(10)), min, max), min, "fast: the floor");
        assert_eq!(first_wait(Some(ms(50)), min, max), ms(200));
        assert_eq!(first_wait(Some(ms(900)), min, max), max, "slow: the cap");
        assert_eq!(
            first_wait(Some(ms(10)), ms(800), max),
            max,
            "a floor above the cap"
        );
    }

    #[test]
    fn the_latency_average_weighs_each_sample_an_eighth() {
        let ms = Duration::from_millis;
        assert_eq!(
            smoothed(None, ms(80)),
            ms(80),
            "the first sample is the average"
        );
        assert_eq!(smoothed(Some(ms(80)), ms(160)), ms(90));
        assert_eq!(smoothed(Some(ms(90)), ms(90)), ms(90));
    }
}
