//! The QUIC endpoint: accepting, dialling with backoff, per-peer send queues
//! and the framed stream reader and writer of every connection.

use crate::frame::{self, FrameError};
use crate::log_limit::LogLimit;
use crate::send_queue::{send_queue, QueueRx, Refused, SendQueue, Totals};
use crate::tls::{self, Identity};
use crate::{close_code, AcceptPolicy, Lanes, NetConfig, NetError, PeerKind, SendError, Short};
use bytes::Bytes;
use pbft_crypto::{KeyPair, PublicKey};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::VarInt;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::{AbortHandle, JoinSet};
use tracing::{debug, info, info_span, warn, Instrument};

/// Most unidirectional streams a peer may have open towards us at once on one
/// connection: one frame stream (a new one once the previous has ended).
const MAX_UNI_STREAMS: u32 = 1;
/// Ack-eliciting packets a peer may receive before it must acknowledge.
const ACK_ELICITING_THRESHOLD: u32 = 8;
/// QUIC flow-control window of one stream, in bytes.
const STREAM_WINDOW: u32 = 1024 * 1024;
/// QUIC flow-control window of one connection (all streams), in bytes.
const CONNECTION_WINDOW: u32 = 2 * 1024 * 1024;
/// How long [`Endpoint::shutdown`] waits for its tasks to stop.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// How long [`Endpoint::shutdown`] waits for closed connections to drain. QUIC
/// keeps a closed connection for three probe timeouts (up to about 3 s for one
/// still handshaking) and the UDP socket until all are drained.
const DRAIN_WAIT: Duration = Duration::from_secs(4);
/// How long [`Endpoint::shutdown`] then waits for the UDP socket to be closed.
const SOCKET_RELEASE_WAIT: Duration = Duration::from_secs(1);
/// Upper bound on the reconnect backoff settings.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// At most one warning per this interval about refused connection attempts
/// (with the number held back meanwhile); each is still counted.
const REFUSED_WARN_INTERVAL: Duration = Duration::from_secs(10);

/// One frame received from an authenticated peer.
#[derive(Debug)]
pub struct InboundFrame {
    /// The peer's TLS-authenticated key. This authenticates the *link*, not the
    /// frame's content: protocol messages must still be verified by their own
    /// signatures (see [`spawn_verifier`](crate::spawn_verifier)).
    pub from: PublicKey,
    /// The frame's payload.
    pub bytes: Bytes,
    /// The frame's share of its lane's byte budget
    /// ([`NetConfig::replica_lane_bytes`], [`NetConfig::client_lane_bytes`]):
    /// keep it with whatever the frame becomes (a decoded message, a verified
    /// one) until that is consumed, so the budget bounds the whole inbound
    /// path and not only this queue.
    pub held: Held,
}

/// Frames received from replicas (the first lane) ahead of frames from
/// clients (the second); see [`Lanes`].
pub type Inbound = Lanes<InboundFrame>;

/// Bytes of an inbound lane's budget, held by one frame (or what it was
/// turned into) and given back when dropped.
#[derive(Debug, Default)]
pub struct Held(Option<OwnedSemaphorePermit>);

impl Held {
    /// Holds nothing (for items that did not come through a budgeted lane).
    pub fn nothing() -> Held {
        Held(None)
    }

    /// The bytes held.
    pub fn bytes(&self) -> usize {
        self.0.as_ref().map_or(0, OwnedSemaphorePermit::num_permits)
    }
}

/// The sending half of one inbound lane: frames, and the byte budget they
/// take from until their [`Held`] is dropped.
#[derive(Clone)]
struct LaneTx {
    frames: mpsc::Sender<InboundFrame>,
    budget: Arc<Semaphore>,
    /// The whole budget: a larger frame takes all of it.
    cap: usize,
}

impl LaneTx {
    fn new(frames: mpsc::Sender<InboundFrame>, cap: usize) -> Self {
        LaneTx {
            frames,
            budget: Arc::new(Semaphore::new(cap)),
            cap,
        }
    }

    /// Waits for the frame's bytes in the budget and a place in the queue;
    /// false if the receiver is gone.
    async fn send(&self, from: PublicKey, bytes: Bytes) -> bool {
        let want = u32::try_from(bytes.len().clamp(1, self.cap)).unwrap_or(u32::MAX);
        let Ok(permit) = self.budget.clone().acquire_many_owned(want).await else {
            return false;
        };
        let frame = InboundFrame {
            from,
            bytes,
            held: Held(Some(permit)),
        };
        self.frames.send(frame).await.is_ok()
    }
}

/// The inbound lanes, by the kind of peer that sent the frames.
#[derive(Clone)]
struct InboundTx {
    replicas: LaneTx,
    clients: LaneTx,
}

impl InboundTx {
    fn lane(&self, kind: PeerKind) -> &LaneTx {
        match kind {
            PeerKind::Replica => &self.replicas,
            PeerKind::Client => &self.clients,
        }
    }
}

/// Counters of an endpoint since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames written into a QUIC stream.
    pub frames_sent: u64,
    /// Frames received complete from peers (and handed to the inbound channel).
    pub frames_received: u64,
    /// Frames [`Endpoint::send`] refused (queue full, no route, too large, shut down).
    pub frames_dropped: u64,
    /// Connections closed because the peer announced an oversized frame.
    pub oversize_closes: u64,
    /// Connections closed because the peer broke the framing (stream ended inside a frame).
    pub bad_frames: u64,
    /// Inbound connections refused (key not allowed, or too many connections).
    pub refused_peers: u64,
    /// Outbound connection attempts that failed (unreachable, handshake or key mismatch).
    pub dial_failures: u64,
    /// Inbound handshakes that failed.
    pub handshake_failures: u64,
    /// Connections currently carrying frames (inbound and outbound).
    pub open_connections: u64,
    /// Bytes waiting in the send queues of every connection now.
    pub queued_send_bytes: u64,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    received: AtomicU64,
    dropped: AtomicU64,
    oversize: AtomicU64,
    bad_frames: AtomicU64,
    refused: AtomicU64,
    dial_failures: AtomicU64,
    handshake_failures: AtomicU64,
    open: AtomicU64,
}

fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A registered peer that we dial.
struct DialSlot {
    addr: SocketAddr,
    /// The dialler's queue; it outlives individual connections.
    tx: SendQueue,
    link: Arc<DialLink>,
    task: Option<AbortHandle>,
}

/// The dialler's current connection, shared with the accept side.
#[derive(Default)]
struct DialLink {
    connected: AtomicBool,
    conn: Mutex<Option<quinn::Connection>>,
}

impl DialLink {
    fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    fn set(&self, conn: Option<&quinn::Connection>) {
        *lock(&self.conn) = conn.cloned();
        self.connected.store(conn.is_some(), Ordering::Release);
    }
}

/// The live inbound connection from a key.
struct InboundSlot {
    id: u64,
    tx: SendQueue,
    conn: quinn::Connection,
}

#[derive(Default)]
struct Peer {
    dial: Option<DialSlot>,
    inbound: Option<InboundSlot>,
}

struct Inner {
    me: PublicKey,
    identity: Identity,
    cfg: NetConfig,
    transport: Arc<quinn::TransportConfig>,
    /// Taken on shutdown so the UDP socket is released.
    quic: Mutex<Option<quinn::Endpoint>>,
    local_addr: SocketAddr,
    policy: Mutex<Arc<AcceptPolicy>>,
    peers: Mutex<HashMap<PublicKey, Peer>>,
    /// Taken on shutdown, so the receivers end once every task has stopped.
    inbound_tx: Mutex<Option<InboundTx>>,
    closing: AtomicBool,
    shutdown_tx: watch::Sender<bool>,
    /// Every background task; `None` once shutdown has collected them.
    tasks: Mutex<Option<JoinSet<()>>>,
    rt: tokio::runtime::Handle,
    span: tracing::Span,
    counters: Counters,
    inbound_conns: AtomicUsize,
    /// Inbound connections counted like `inbound_conns`, per source address.
    per_address: Mutex<HashMap<IpAddr, usize>>,
    refused_log: Mutex<LogLimit>,
    /// Bytes in the send queues (see `send_queue`).
    send_totals: Arc<Totals>,
    next_conn_id: AtomicU64,
}

/// A QUIC endpoint of a replica or a client. Cheap to clone; when the last
/// clone is dropped the endpoint shuts down (abruptly: prefer
/// [`Endpoint::shutdown`]).
#[derive(Clone)]
pub struct Endpoint {
    inner: Arc<Inner>,
    _guard: Arc<DropGuard>,
}

struct DropGuard(Arc<Inner>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.begin_shutdown();
        // Dropping the set aborts whatever still runs.
        drop(lock(&self.0.tasks).take());
        drop(lock(&self.0.quic).take());
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("key", &self.inner.me)
            .field("local_addr", &self.inner.local_addr)
            .finish_non_exhaustive()
    }
}

fn transport_config(cfg: &NetConfig) -> Result<Arc<quinn::TransportConfig>, NetError> {
    let idle = quinn::IdleTimeout::try_from(cfg.idle_timeout)
        .map_err(|_| NetError::Config("idle_timeout is too large".into()))?;
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(cfg.keep_alive))
        .max_concurrent_bidi_streams(VarInt::from_u32(0))
        .max_concurrent_uni_streams(VarInt::from_u32(MAX_UNI_STREAMS))
        .stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_WINDOW))
        .datagram_receive_buffer_size(None);
    // Ask peers to acknowledge every 9th ack-eliciting packet (or after
    // their max_ack_delay) rather than every 2nd: traffic here is many
    // small frames on many connections (a client's replies, the votes),
    // and on loopback an ACK-only datagram costs as much CPU as a reply.
    // Measured: 9.1 -> 8.1 datagrams and +10% operations per second
    // (docs/benchmarks.md). Both ends are quinn, which negotiates the
    // extension; a peer without it keeps acknowledging every 2nd packet.
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.ack_eliciting_threshold(VarInt::from_u32(ACK_ELICITING_THRESHOLD));
    t.ack_frequency_config(Some(ack));
    Ok(Arc::new(t))
}

fn check_config(cfg: &NetConfig) -> Result<tokio::runtime::Handle, NetError> {
    cfg.validate()?;
    if cfg.reconnect_backoff_max > MAX_BACKOFF {
        return Err(NetError::Config(
            "reconnect_backoff_max must be at most one hour".into(),
        ));
    }
    tokio::runtime::Handle::try_current().map_err(|_| NetError::NoRuntime)
}

impl Endpoint {
    /// A listening endpoint (a replica) on `listen`, identified by `key`. Inbound
    /// connections are admitted by `policy`. Returns the endpoint and the
    /// bounded lanes of frames from its peers, replicas' ahead of clients'.
    /// Fails with [`NetError::Bind`] if the address is in use.
    pub fn bind(
        listen: SocketAddr,
        key: &KeyPair,
        policy: AcceptPolicy,
        cfg: NetConfig,
    ) -> Result<(Endpoint, Inbound), NetError> {
        let rt = check_config(&cfg)?;
        let identity = Identity::new(key)?;
        let transport = transport_config(&cfg)?;
        let tls = QuicServerConfig::try_from(identity.server_config()?)
            .map_err(|e| NetError::Tls(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(tls));
        server
            .transport_config(transport.clone())
            .max_incoming(cfg.max_connections);
        let quic = quinn::Endpoint::server(server, listen).map_err(|source| NetError::Bind {
            addr: listen,
            source,
        })?;
        Inner::start(
            quic,
            key.public(),
            identity,
            transport,
            policy,
            cfg,
            rt,
            true,
        )
    }

    /// A non-listening endpoint (a client) on an ephemeral port of the
    /// unspecified address (dual-stack IPv6 when available, else IPv4). It only
    /// dials; replicas answer over the connections it made.
    pub fn client(key: &KeyPair, cfg: NetConfig) -> Result<(Endpoint, Inbound), NetError> {
        let v6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0));
        match Endpoint::client_on(v6, key, cfg.clone()) {
            Err(NetError::Bind { .. }) => {
                Endpoint::client_on(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)), key, cfg)
            }
            other => other,
        }
    }

    /// A non-listening endpoint bound to `bind` (use port 0 for an ephemeral port).
    pub fn client_on(
        bind: SocketAddr,
        key: &KeyPair,
        cfg: NetConfig,
    ) -> Result<(Endpoint, Inbound), NetError> {
        let rt = check_config(&cfg)?;
        let identity = Identity::new(key)?;
        let transport = transport_config(&cfg)?;
        let quic = quinn::Endpoint::client(bind)
            .map_err(|source| NetError::Bind { addr: bind, source })?;
        Inner::start(
            quic,
            key.public(),
            identity,
            transport,
            AcceptPolicy::default(),
            cfg,
            rt,
            false,
        )
    }

    /// Registers a peer to dial. A background task connects to `addr`, pinning
    /// `key`, with exponential backoff, and reconnects after a loss. Frames sent
    /// to the peer meanwhile wait in its bounded queue. Registering a known peer
    /// again only updates the address used by the next (re)connection. Our own
    /// key is ignored: deliver to yourself without the network.
    pub fn add_peer(&self, key: PublicKey, addr: SocketAddr) {
        let inner = &self.inner;
        if key == inner.me {
            debug!(parent: &inner.span, "not dialling our own key");
            return;
        }
        if inner.closing.load(Ordering::Acquire) {
            return;
        }
        let mut peers = lock(&inner.peers);
        let peer = peers.entry(key).or_default();
        if let Some(dial) = &mut peer.dial {
            if dial.addr != addr {
                info!(parent: &inner.span, peer = %Short(&key), old = %dial.addr, new = %addr, "peer address changed");
                dial.addr = addr;
            }
            return;
        }
        // We dial replicas only.
        let (tx, rx) = inner.send_queue(PeerKind::Replica);
        let link = Arc::new(DialLink::default());
        let task = inner.spawn(dial_loop(inner.clone(), key, rx, link.clone()));
        peer.dial = Some(DialSlot {
            addr,
            tx,
            link,
            task,
        });
    }

    /// Stops dialling `key` and drops its queue and outbound connection. An
    /// inbound connection from the key (if any) is kept.
    pub fn remove_peer(&self, key: &PublicKey) {
        let dial = {
            let mut peers = lock(&self.inner.peers);
            let Some(peer) = peers.get_mut(key) else {
                return;
            };
            let dial = peer.dial.take();
            if peer.inbound.is_none() {
                peers.remove(key);
            }
            dial
        };
        if let Some(task) = dial.and_then(|d| d.task) {
            task.abort();
        }
    }

    /// Queues `frame` for `to`, without blocking. The frame goes on our
    /// connection to `to` if it is up, else on `to`'s inbound connection to us
    /// (so a replica answers a client that connected to it), else into the
    /// queue of a registered but not yet (re)connected peer. A full queue, an
    /// unknown peer, an oversized frame or a shut-down endpoint drop the frame
    /// with an error and count it in [`NetStats::frames_dropped`].
    pub fn send(&self, to: PublicKey, frame: Bytes) -> Result<(), SendError> {
        let result = self.inner.try_queue(to, frame);
        if let Err(e) = &result {
            inc(&self.inner.counters.dropped);
            debug!(parent: &self.inner.span, peer = %Short(&to), error = %e, "frame dropped");
        }
        result
    }

    /// Whether frames to `key` currently have a live connection to travel on.
    pub fn is_connected(&self, key: &PublicKey) -> bool {
        lock(&self.inner.peers).get(key).is_some_and(|p| {
            p.inbound.is_some() || p.dial.as_ref().is_some_and(|d| d.link.is_connected())
        })
    }

    /// Replaces the accept policy. Inbound connections from keys the new policy
    /// refuses are closed.
    pub fn set_policy(&self, policy: AcceptPolicy) {
        let inner = &self.inner;
        let policy = Arc::new(policy);
        *lock(&inner.policy) = policy.clone();
        let refused: Vec<(PublicKey, quinn::Connection)> = lock(&inner.peers)
            .iter()
            .filter(|(key, _)| policy.decide(key).is_none())
            .filter_map(|(key, p)| p.inbound.as_ref().map(|i| (*key, i.conn.clone())))
            .collect();
        for (key, conn) in refused {
            inc(&inner.counters.refused);
            warn!(parent: &inner.span, peer = %key, "closing connection: key no longer allowed by the accept policy");
            conn.close(VarInt::from_u32(close_code::REFUSED), b"key not allowed");
        }
    }

    /// The local UDP address (with the actual port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// This endpoint's public key.
    pub fn public_key(&self) -> PublicKey {
        self.inner.me
    }

    /// Closes every connection (code [`close_code::SHUTDOWN`]), stops all tasks
    /// and releases the UDP socket, waiting (a few seconds at most) for closed
    /// connections to drain and the address to be free again. The inbound receiver then yields `None`
    /// after any frames still buffered. Later sends fail with
    /// [`SendError::Shutdown`].
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        inner.begin_shutdown();
        let tasks = lock(&inner.tasks).take();
        if let Some(mut tasks) = tasks {
            let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
                while tasks.join_next().await.is_some() {}
            })
            .await;
            if drained.is_err() {
                warn!(parent: &inner.span, "tasks did not stop in time; aborting them");
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
            }
        }
        let quic = lock(&inner.quic).take();
        if let Some(quic) = quic {
            // Lets the peers see our CONNECTION_CLOSE; bounded.
            let _ = tokio::time::timeout(DRAIN_WAIT, quic.wait_idle()).await;
            drop(quic);
            wait_socket_released(inner.local_addr).await;
        }
        info!(parent: &inner.span, "endpoint shut down");
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> NetStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        NetStats {
            frames_sent: get(&c.sent),
            frames_received: get(&c.received),
            frames_dropped: get(&c.dropped),
            oversize_closes: get(&c.oversize),
            bad_frames: get(&c.bad_frames),
            refused_peers: get(&c.refused),
            dial_failures: get(&c.dial_failures),
            handshake_failures: get(&c.handshake_failures),
            open_connections: get(&c.open),
            queued_send_bytes: self.inner.send_totals.queued() as u64,
        }
    }
}

/// quinn closes the UDP socket in its driver task soon after the last handle
/// is dropped. Waits (bounded) until the address can be bound again, so that a
/// listener restarted in the same process finds its port free.
async fn wait_socket_released(addr: SocketAddr) {
    let deadline = Instant::now() + SOCKET_RELEASE_WAIT;
    while Instant::now() < deadline {
        if std::net::UdpSocket::bind(addr).is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    debug!(%addr, "UDP socket still held after shutdown");
}

impl Inner {
    #[allow(clippy::too_many_arguments)]
    fn start(
        quic: quinn::Endpoint,
        me: PublicKey,
        identity: Identity,
        transport: Arc<quinn::TransportConfig>,
        policy: AcceptPolicy,
        cfg: NetConfig,
        rt: tokio::runtime::Handle,
        listening: bool,
    ) -> Result<(Endpoint, Inbound), NetError> {
        let local_addr = quic.local_addr().map_err(|source| NetError::Bind {
            addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            source,
        })?;
        let send_totals = Arc::new(Totals::new(cfg.client_send_bytes_total));
        let (replicas_tx, replicas_rx) = mpsc::channel(cfg.recv_queue_len);
        let (clients_tx, clients_rx) = mpsc::channel(cfg.recv_queue_len);
        let inbound_tx = InboundTx {
            replicas: LaneTx::new(replicas_tx, cfg.replica_lane_bytes),
            clients: LaneTx::new(clients_tx, cfg.client_lane_bytes),
        };
        let (shutdown_tx, _) = watch::channel(false);
        let span = info_span!("pbft_net", me = %Short(&me), local = %local_addr);
        let inner = Arc::new(Inner {
            me,
            identity,
            cfg,
            transport,
            quic: Mutex::new(Some(quic)),
            local_addr,
            policy: Mutex::new(Arc::new(policy)),
            peers: Mutex::new(HashMap::new()),
            inbound_tx: Mutex::new(Some(inbound_tx)),
            closing: AtomicBool::new(false),
            shutdown_tx,
            tasks: Mutex::new(Some(JoinSet::new())),
            rt,
            span,
            counters: Counters::default(),
            inbound_conns: AtomicUsize::new(0),
            per_address: Mutex::new(HashMap::new()),
            refused_log: Mutex::new(LogLimit::new(REFUSED_WARN_INTERVAL)),
            send_totals,
            next_conn_id: AtomicU64::new(0),
        });
        if listening {
            inner.spawn(accept_loop(inner.clone()));
            info!(parent: &inner.span, "listening");
        }
        let endpoint = Endpoint {
            inner: inner.clone(),
            _guard: Arc::new(DropGuard(inner)),
        };
        Ok((endpoint, Lanes::new(replicas_rx, clients_rx)))
    }

    /// Spawns a background task under the endpoint's span; nothing once shut down.
    fn spawn<F>(&self, fut: F) -> Option<AbortHandle>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut tasks = lock(&self.tasks);
        let set = tasks.as_mut()?;
        // Reap finished tasks so the set does not grow with connection churn.
        while set.try_join_next().is_some() {}
        Some(set.spawn_on(fut.instrument(self.span.clone()), &self.rt))
    }

    fn quic(&self) -> Option<quinn::Endpoint> {
        lock(&self.quic).clone()
    }

    fn policy(&self) -> Arc<AcceptPolicy> {
        lock(&self.policy).clone()
    }

    /// A send queue for a connection to a peer of `kind`.
    fn send_queue(&self, kind: PeerKind) -> (SendQueue, QueueRx) {
        let cfg = &self.cfg;
        let (cap, client) = match kind {
            PeerKind::Replica => (cfg.send_queue_bytes, false),
            PeerKind::Client => (cfg.client_send_queue_bytes, true),
        };
        send_queue(cfg.send_queue_len, cap, client, self.send_totals.clone())
    }

    /// Counts a refused connection attempt from `who` and logs it, at most
    /// once per [`REFUSED_WARN_INTERVAL`] (a flood of attempts must not
    /// become a flood of log lines).
    fn refused(&self, who: &dyn fmt::Display, why: &str) {
        inc(&self.counters.refused);
        let allowed = lock(&self.refused_log).allow(tokio::time::Instant::now());
        match allowed {
            Some(held_back) => {
                warn!(%who, held_back, "refusing a connection: {why}")
            }
            None => debug!(%who, "refusing a connection: {why}"),
        }
    }

    fn begin_shutdown(&self) {
        if self.closing.swap(true, Ordering::AcqRel) {
            return;
        }
        self.shutdown_tx.send_replace(true);
        if let Some(quic) = lock(&self.quic).as_ref() {
            quic.close(
                VarInt::from_u32(close_code::SHUTDOWN),
                b"endpoint shut down",
            );
        }
        let peers = std::mem::take(&mut *lock(&self.peers));
        drop(peers);
        drop(lock(&self.inbound_tx).take());
    }

    fn try_queue(&self, to: PublicKey, frame: Bytes) -> Result<(), SendError> {
        if frame.len() > self.cfg.max_frame_len {
            return Err(SendError::TooLarge {
                len: frame.len(),
                max: self.cfg.max_frame_len,
            });
        }
        if self.closing.load(Ordering::Acquire) {
            return Err(SendError::Shutdown);
        }
        let peers = lock(&self.peers);
        let peer = peers.get(&to).ok_or(SendError::NotConnected(to))?;
        let tx = match (&peer.dial, &peer.inbound) {
            (Some(dial), _) if dial.link.is_connected() => &dial.tx,
            (_, Some(inbound)) => &inbound.tx,
            (Some(dial), None) => &dial.tx,
            (None, None) => return Err(SendError::NotConnected(to)),
        };
        tx.try_send(frame).map_err(|e| match e {
            Refused::Full => SendError::QueueFull(to),
            Refused::Closed => SendError::NotConnected(to),
        })
    }

    fn dial_addr(&self, key: &PublicKey) -> Option<SocketAddr> {
        lock(&self.peers)
            .get(key)
            .and_then(|p| p.dial.as_ref())
            .map(|d| d.addr)
    }

    /// Connects to `addr`, which must prove it holds `key`.
    async fn connect(&self, key: PublicKey, addr: SocketAddr) -> Result<quinn::Connection, String> {
        let quic = self.quic().ok_or("endpoint shut down")?;
        let tls = self
            .identity
            .client_config(key)
            .map_err(|e| e.to_string())?;
        let tls = QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
        let mut client = quinn::ClientConfig::new(Arc::new(tls));
        client.transport_config(self.transport.clone());
        let conn = quic
            .connect_with(client, addr, tls::SERVER_NAME)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        // The verifier pinned the key; check the finished connection too.
        if tls::peer_key(&conn) != Some(key) {
            conn.close(VarInt::from_u32(close_code::WRONG_PEER), b"unexpected key");
            return Err("peer presented an unexpected key".into());
        }
        Ok(conn)
    }
}

/// Handshake slots beyond `max_connections` (and beyond
/// `max_connections_per_address` for each address), kept for replicas:
/// clients that hold every client slot still leave replicas room to connect.
pub const REPLICA_RESERVE: usize = 16;

/// Counts an inbound connection while it handshakes, and a client's while it
/// lives, in all and for its source address. At most `max_connections +
/// REPLICA_RESERVE` handshake at once (and `max_connections_per_address +
/// REPLICA_RESERVE` from one address); an authenticated replica gives its
/// permit back (replicas are few and each supersedes its own older
/// connection), a client keeps it and is refused if that makes more than
/// `max_connections` in all or `max_connections_per_address` from its
/// address.
struct InboundPermit {
    /// `None` once given back.
    inner: Option<Arc<Inner>>,
    ip: IpAddr,
}

impl InboundPermit {
    /// A permit, or why there is none.
    fn acquire(inner: &Arc<Inner>, ip: IpAddr) -> Result<Self, &'static str> {
        let cfg = &inner.cfg;
        let before = inner.inbound_conns.fetch_add(1, Ordering::AcqRel);
        if before >= cfg.max_connections + REPLICA_RESERVE {
            inner.inbound_conns.fetch_sub(1, Ordering::AcqRel);
            return Err("too many inbound connections");
        }
        {
            let mut per_address = lock(&inner.per_address);
            let count = per_address.entry(ip).or_default();
            if *count >= cfg.max_connections_per_address + REPLICA_RESERVE {
                drop(per_address);
                inner.inbound_conns.fetch_sub(1, Ordering::AcqRel);
                return Err("too many inbound connections from this address");
            }
            *count += 1;
        }
        Ok(InboundPermit {
            inner: Some(inner.clone()),
            ip,
        })
    }

    /// Whether this connection may stay, now that its peer is known; if not,
    /// why.
    fn admit(&mut self, kind: PeerKind) -> Result<(), &'static str> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        match kind {
            PeerKind::Replica => {
                self.release();
                Ok(())
            }
            PeerKind::Client => {
                let cfg = &inner.cfg;
                if inner.inbound_conns.load(Ordering::Acquire) > cfg.max_connections {
                    return Err("all client slots are taken");
                }
                let from_here = lock(&inner.per_address).get(&self.ip).copied();
                if from_here.unwrap_or(0) > cfg.max_connections_per_address {
                    return Err("all client slots for this address are taken");
                }
                Ok(())
            }
        }
    }

    fn release(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        inner.inbound_conns.fetch_sub(1, Ordering::AcqRel);
        let mut per_address = lock(&inner.per_address);
        if let Some(count) = per_address.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                per_address.remove(&self.ip);
            }
        }
    }
}

impl Drop for InboundPermit {
    fn drop(&mut self) {
        self.release();
    }
}

async fn accept_loop(inner: Arc<Inner>) {
    let Some(quic) = inner.quic() else {
        return;
    };
    let mut shutdown = inner.shutdown_tx.subscribe();
    loop {
        let incoming = tokio::select! {
            incoming = quic.accept() => incoming,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let Some(incoming) = incoming else {
            break;
        };
        // Address validation first (a retry round trip): a flood of packets
        // with forged source addresses never reaches a handshake slot.
        if !incoming.remote_address_validated() {
            if let Err(e) = incoming.retry() {
                debug!(error = %e, "address validation retry failed");
            }
            continue;
        }
        let remote = incoming.remote_address();
        let permit = match InboundPermit::acquire(&inner, remote.ip()) {
            Ok(permit) => permit,
            Err(why) => {
                inner.refused(&format_args!("{remote}"), why);
                incoming.refuse();
                continue;
            }
        };
        inner.spawn(handle_inbound(inner.clone(), incoming, permit));
    }
    debug!("accept loop stopped");
}

async fn handle_inbound(inner: Arc<Inner>, incoming: quinn::Incoming, permit: InboundPermit) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            inc(&inner.counters.handshake_failures);
            debug!(%remote, error = %e, "inbound handshake failed");
            return;
        }
    };
    let Some(key) = tls::peer_key(&conn) else {
        // Not reachable: the client verifier demands an ed25519 certificate.
        conn.close(
            VarInt::from_u32(close_code::PROTOCOL_VIOLATION),
            b"no ed25519 certificate",
        );
        return;
    };
    let span = info_span!("conn", peer = %Short(&key), dir = "in", %remote);
    serve_inbound(&inner, conn, key, permit)
        .instrument(span)
        .await;
}

async fn serve_inbound(
    inner: &Arc<Inner>,
    conn: quinn::Connection,
    key: PublicKey,
    mut permit: InboundPermit,
) {
    let id = inner.next_conn_id.fetch_add(1, Ordering::Relaxed);
    // The policy is read under the peers lock, so a concurrent `set_policy`
    // either is seen here or sees this connection when it scans the table.
    let admitted = {
        let mut peers = lock(&inner.peers);
        if inner.closing.load(Ordering::Acquire) {
            return;
        }
        match inner.policy().decide(&key) {
            None => Err((
                "key not allowed by the accept policy",
                &b"key not allowed"[..],
            )),
            Some(kind) => match permit.admit(kind) {
                Err(why) => Err((why, &b"too many connections"[..])),
                Ok(()) => {
                    let (tx, rx) = inner.send_queue(kind);
                    let previous = peers.entry(key).or_default().inbound.replace(InboundSlot {
                        id,
                        tx,
                        conn: conn.clone(),
                    });
                    Ok((kind, previous, rx))
                }
            },
        }
    };
    let (kind, previous, mut rx) = match admitted {
        Ok(admitted) => admitted,
        Err((why, reason)) => {
            inner.refused(&format_args!("{key}"), why);
            conn.close(VarInt::from_u32(close_code::REFUSED), reason);
            return;
        }
    };
    if let Some(previous) = previous {
        debug!("a newer connection from the same key supersedes the previous one");
        previous.conn.close(
            VarInt::from_u32(close_code::SUPERSEDED),
            b"superseded by a newer connection",
        );
    }
    close_dial_to_previous_incarnation(inner, &key, &conn);
    let max_frame = match kind {
        PeerKind::Replica => inner.cfg.max_frame_len,
        PeerKind::Client => inner.cfg.max_client_frame_len,
    };
    info!(?kind, "accepted connection");
    let end = run_connection(inner, &conn, key, kind, max_frame, &mut rx).await;
    {
        let mut peers = lock(&inner.peers);
        if let Some(peer) = peers.get_mut(&key) {
            if peer.inbound.as_ref().is_some_and(|i| i.id == id) {
                peer.inbound = None;
            }
            if peer.inbound.is_none() && peer.dial.is_none() {
                peers.remove(&key);
            }
        }
    }
    info!(reason = %end.reason, "inbound connection closed");
}

/// A peer that dials in with another certificate than the one our own
/// connection to it presented is a new incarnation (every process makes a
/// fresh certificate, see `tls::Identity`): the peer restarted, and our
/// connection reaches the dead process, which cannot reset it, so it would
/// swallow frames until the idle timeout. Close it; the dialler redials the
/// new process at once. The same incarnation dialling in again (its link
/// broke, ours did not) changes nothing, so two peers cannot make each
/// other redial in turn.
fn close_dial_to_previous_incarnation(
    inner: &Arc<Inner>,
    key: &PublicKey,
    inbound: &quinn::Connection,
) {
    let dial = lock(&inner.peers)
        .get(key)
        .and_then(|p| p.dial.as_ref())
        .and_then(|d| lock(&d.link.conn).clone());
    let Some(dial) = dial else {
        return;
    };
    let (theirs, ours) = (tls::peer_cert(inbound), tls::peer_cert(&dial));
    if theirs.is_some() && ours.is_some() && theirs != ours {
        info!("peer restarted: closing our connection to its previous process");
        dial.close(VarInt::from_u32(close_code::SUPERSEDED), b"peer restarted");
    }
}

/// Redials `key` until it is removed or the endpoint shuts down.
async fn dial_loop(inner: Arc<Inner>, key: PublicKey, mut rx: QueueRx, link: Arc<DialLink>) {
    let cfg = &inner.cfg;
    let mut backoff = cfg.reconnect_backoff_min;
    let mut failures: u64 = 0;
    let mut shutdown = inner.shutdown_tx.subscribe();
    // Ends when the peer is removed (no address) or on shutdown.
    while let Some(addr) = inner.dial_addr(&key) {
        let attempt = tokio::select! {
            attempt = inner.connect(key, addr) => attempt,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        match attempt {
            Ok(conn) => {
                failures = 0;
                let started = Instant::now();
                let span = info_span!("conn", peer = %Short(&key), dir = "out", remote = %addr);
                let end = async {
                    info!("connected");
                    link.set(Some(&conn));
                    // We dial replicas only: they get the full frame limit
                    // and the replicas' lane.
                    let end = run_connection(
                        &inner,
                        &conn,
                        key,
                        PeerKind::Replica,
                        cfg.max_frame_len,
                        &mut rx,
                    )
                    .await;
                    link.set(None);
                    log_close(&conn, &end.reason);
                    end
                }
                .instrument(span)
                .await;
                if end.queue_closed {
                    break;
                }
                if started.elapsed() >= cfg.reconnect_backoff_max {
                    backoff = cfg.reconnect_backoff_min;
                }
            }
            Err(error) => {
                failures += 1;
                inc(&inner.counters.dial_failures);
                if failures.is_power_of_two() {
                    warn!(peer = %Short(&key), %addr, %error, failures, "dial failed");
                } else {
                    debug!(peer = %Short(&key), %addr, %error, failures, "dial failed");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(jitter(backoff)) => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
        backoff = (backoff * 2).min(cfg.reconnect_backoff_max);
    }
    debug!(peer = %Short(&key), "dialler stopped");
}

fn log_close(conn: &quinn::Connection, reason: &str) {
    match conn.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(close))
            if close.error_code == VarInt::from_u32(close_code::REFUSED) =>
        {
            warn!("peer refused the connection: our key is not allowed by its accept policy");
        }
        _ => info!(%reason, "connection closed"),
    }
}

/// `d` plus up to 25 % random jitter.
fn jitter(d: Duration) -> Duration {
    use std::hash::BuildHasher;
    let r = std::collections::hash_map::RandomState::new().hash_one(Instant::now());
    d + d / 4 * (r % 1000) as u32 / 1000
}

struct ConnEnd {
    reason: String,
    /// The send queue was closed: the peer was removed or the endpoint shut down.
    queue_closed: bool,
}

enum WriterEnd {
    QueueClosed,
    Failed(String),
}

/// Counts a connection in [`NetStats::open_connections`] while it lives.
struct OpenConn<'a>(&'a AtomicU64);

impl Drop for OpenConn<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Carries frames on an established connection until it ends: frames from
/// `rx` go out on one stream; every stream the peer opens is read into the
/// lane of its `kind`.
async fn run_connection(
    inner: &Arc<Inner>,
    conn: &quinn::Connection,
    key: PublicKey,
    kind: PeerKind,
    max_frame: usize,
    rx: &mut QueueRx,
) -> ConnEnd {
    let Some(lane) = lock(&inner.inbound_tx)
        .as_ref()
        .map(|tx| tx.lane(kind).clone())
    else {
        conn.close(
            VarInt::from_u32(close_code::SHUTDOWN),
            b"endpoint shut down",
        );
        return ConnEnd {
            reason: "endpoint shut down".into(),
            queue_closed: true,
        };
    };
    inner.counters.open.fetch_add(1, Ordering::Relaxed);
    let _open = OpenConn(&inner.counters.open);
    let mut shutdown = inner.shutdown_tx.subscribe();
    let mut readers = JoinSet::new();
    let writer = write_loop(inner, conn, rx);
    tokio::pin!(writer);
    loop {
        tokio::select! {
            stream = conn.accept_uni() => match stream {
                Ok(stream) => {
                    let reader = read_loop(inner.clone(), conn.clone(), key, max_frame, stream, lane.clone());
                    readers.spawn(reader.in_current_span());
                }
                Err(e) => return ConnEnd { reason: e.to_string(), queue_closed: false },
            },
            end = &mut writer => {
                return match end {
                    WriterEnd::QueueClosed => {
                        conn.close(VarInt::from_u32(close_code::PEER_REMOVED), b"peer removed");
                        ConnEnd { reason: "send queue closed".into(), queue_closed: true }
                    }
                    WriterEnd::Failed(reason) => {
                        conn.close(VarInt::from_u32(close_code::PROTOCOL_VIOLATION), b"send stream failed");
                        ConnEnd { reason, queue_closed: false }
                    }
                };
            }
            Some(_) = readers.join_next(), if !readers.is_empty() => {}
            _ = shutdown.wait_for(|s| *s) => {
                conn.close(VarInt::from_u32(close_code::SHUTDOWN), b"endpoint shut down");
                return ConnEnd { reason: "endpoint shut down".into(), queue_closed: true };
            }
        }
    }
}

async fn write_loop(inner: &Inner, conn: &quinn::Connection, rx: &mut QueueRx) -> WriterEnd {
    let mut stream = match conn.open_uni().await {
        Ok(stream) => stream,
        Err(e) => return WriterEnd::Failed(e.to_string()),
    };
    // Each wake-up takes what is queued (bounded by the gather's limits) and
    // writes it with one call, in queue order.
    let mut gather = frame::Gather::default();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(frame) = next {
            if let Err(e) = gather.push(frame) {
                return WriterEnd::Failed(e);
            }
            next = if gather.is_full() {
                None
            } else {
                rx.try_recv()
            };
        }
        match gather.write(&mut stream).await {
            Ok(frames) => {
                inner.counters.sent.fetch_add(frames, Ordering::Relaxed);
            }
            Err(e) => return WriterEnd::Failed(e),
        }
    }
    let _ = stream.finish();
    WriterEnd::QueueClosed
}

async fn read_loop(
    inner: Arc<Inner>,
    conn: quinn::Connection,
    key: PublicKey,
    max_frame: usize,
    mut stream: quinn::RecvStream,
    lane: LaneTx,
) {
    loop {
        match frame::read_frame(&mut stream, max_frame).await {
            Ok(Some(bytes)) => {
                inc(&inner.counters.received);
                // Waits when the consumer is behind (the lane's queue or its
                // byte budget is full): QUIC flow control then slows this
                // peer down. Waiting readers are served in turn.
                if !lane.send(key, bytes).await {
                    debug!("inbound receiver dropped; no longer reading");
                    return;
                }
            }
            Ok(None) => {
                debug!("peer finished its stream");
                return;
            }
            Err(FrameError::TooLarge { len, max }) => {
                inc(&inner.counters.oversize);
                warn!(
                    len,
                    max, "peer announced an oversized frame; closing the connection"
                );
                conn.close(
                    VarInt::from_u32(close_code::FRAME_TOO_LARGE),
                    b"frame too large",
                );
                return;
            }
            Err(FrameError::Truncated) => {
                inc(&inner.counters.bad_frames);
                warn!("peer ended a stream inside a frame; closing the connection");
                conn.close(
                    VarInt::from_u32(close_code::PROTOCOL_VIOLATION),
                    b"truncated frame",
                );
                return;
            }
            Err(FrameError::Stream(error)) => {
                debug!(%error, "receive stream ended");
                return;
            }
        }
    }
}
