//! One PBFT replica on tokio: configuration, secret key, record log, QUIC
//! transport, signature verification, the protocol core and the key-value
//! store, wired together.
//!
//! # Pipeline
//!
//! ```text
//! QUIC endpoint ══InboundFrame══► decode tasks ══(peer, Message)══► verification stage
//!   (pbft-net)     two lanes:       (one per lane) Message::decode;   (pbft-net, batched, on
//!                  replicas ahead   garbage and client-sent replica    verify threads or inline;
//!                  of clients       traffic dropped and counted        replicas' lane first;
//!                                                                      drops bad signatures)
//!                                                                          │ Verified<Message>
//!                                                                          ▼
//!   endpoint.send ◄── outbox: sends held ◄──── protocol task: Replica::handle for a group of
//!                     until durable, FIFO        inputs; records ──submit──► log writer thread
//!                            ▲                                               (write + fsync of every
//!                            └──────── durable position (watch) ◄─────────── group queued meanwhile)
//! ```
//!
//! * **Two lanes.** Frames from replicas and frames from clients travel in
//!   separate queues from the endpoint through decoding to the verifier's
//!   intake, which takes the replicas' first (keeping clients a share, see
//!   [`pbft_net::lanes`]): replica traffic never waits behind a client
//!   flood. Each lane has a byte budget in the endpoint
//!   ([`NetConfig::replica_lane_bytes`], [`NetConfig::client_lane_bytes`]);
//!   a frame's share ([`pbft_net::Held`]) stays with its message until the
//!   protocol task takes it, so the budget bounds every queue before the
//!   core, in bytes.
//! * The **decode tasks** turn frames into [`Message`]s.
//!   Bytes that do not decode are dropped with a debug log line and a counter,
//!   never a panic. Peers that are not replicas (clients) may only send
//!   `Request` and `StatusRequest`, and only their own (naming the link's
//!   authenticated key as the client); anything else from them is dropped
//!   the same way before it costs a signature check.
//! * The **verification stage** ([`pbft_net::spawn_verifier`]) checks every
//!   signature a message carries against the core [`Config`](pbft_core::Config)
//!   in batches, on [`Threads::verify`] dedicated threads or (with none, the
//!   default below 4 cores) inline in a task on the runtime, with the
//!   replicas' keys decoded once, and forwards only [`Verified`](pbft_crypto::Verified)
//!   messages, in arrival order.
//! * The **protocol task** owns the [`Replica`], the log writer
//!   ([`pbft_storage::LogWriter`], on a thread of its own, over the
//!   [`Storage`]) and the outbox. It waits for a verified message, the
//!   core's [`poll_timeout`](pbft_core::Replica::poll_timeout) deadline (then
//!   it delivers [`Input::Tick`](pbft_core::Input::Tick)), the writer's
//!   progress or shutdown. After the first input it also takes whatever else
//!   is ready (up to [`GROUP_INPUTS_MAX`] inputs) into one step, whose records
//!   are one group for the writer; the writer writes and syncs every group
//!   queued while its previous write ran with one fsync (pipelined group
//!   commit), and the task goes on with the next step meanwhile.
//!
//! Protocol time ([`pbft_core::Instant`]) is microseconds since the node started,
//! read from tokio's monotonic clock.
//!
//! # Output ordering guarantee
//!
//! **Every [`Output::Persist`](pbft_core::Output::Persist) record is durable
//! (written and, with `durability = "fsync"`, the default, fsynced by the log
//! writer) before any `Send`, `Broadcast`, `Reply` or `Status` the core
//! produced after it (in its step or a later one) leaves the node**, and
//! sends leave in the order the core produced them: each send waits in the
//! outbox until every group submitted before it is durable (a step that
//! persisted nothing does not overtake earlier held sends). If the writer
//! fails, the node stops with an error and sends nothing it held or produced
//! later: it never sends what it could not persist. The writes run on their
//! own thread, so the runtime is not stalled. While the writer is too far
//! behind, the protocol task takes no new inputs (see the outbox's bound).
//!
//! One exception: in a cluster whose read mode is ordered (the default) a
//! client's fresh `Reply` depends only on the replica's prepared
//! certificate for its batch
//! ([`Config::replies_wait_for_records`](pbft_core::Config::replies_wait_for_records)):
//! once that is durable, a reply of up to 64 KiB is sent as the core
//! produces it, without waiting for the fsync of records about later
//! batches.
//!
//! Send failures (a full per-peer queue, a client that is not connected) are
//! counted and logged at debug level; they are never fatal, the protocol
//! retransmits what matters.
//!
//! # Shutdown
//!
//! When the `shutdown` future given to [`run`] resolves, the protocol task
//! finishes the step it is in and stops; the log writer writes what was
//! submitted and the record log is closed (releasing its lock), the held
//! sends go out, the endpoint is shut down
//! ([`Endpoint::shutdown`](pbft_net::Endpoint::shutdown): connections closed,
//! UDP port released) and [`run`] returns `Ok(())`.

pub mod behaviours;
#[cfg(feature = "byzantine")]
pub mod byzantine;
mod inbound;
mod metrics;
mod metrics_http;
mod outbox;
pub mod process;
mod protocol;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
#[cfg(test)]
mod tests;
mod threads;

use anyhow::{anyhow, bail, Context};
use pbft_app::kv::KvStore;
use pbft_config::{Durability, LogFormat, Node};
use pbft_core::{Message, Replica};
use pbft_crypto::{keyfile, PublicKey, Signer, Verifier};
use pbft_net::{AcceptPolicy, Checked, Endpoint, Lanes, NetConfig, Unchecked};
use pbft_storage::Storage;
use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn, Instrument};

pub use metrics::PHASES as METRIC_PHASES;
pub use protocol::GROUP_INPUTS_MAX;
pub use threads::Threads;

/// Capacity of the channel from the decode task to the verification stage.
const DECODED_QUEUE_LEN: usize = 4096;
/// Capacity of the channel from the verification stage to the protocol task.
const VERIFIED_QUEUE_LEN: usize = 4096;

/// Installs the global tracing subscriber: human-readable lines by default,
/// one JSON object per line with [`LogFormat::Json`], on standard error.
/// The `RUST_LOG` environment variable filters (default `info`). Human lines
/// are coloured only when standard error is a terminal and `NO_COLOR` is
/// unset, so log files hold no escape sequences. Does nothing if a
/// subscriber is already installed.
pub fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    let _already_set = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Resolves when the process receives SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            warn!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => info!("SIGINT received"),
                    _ = terminate.recv() => info!("SIGTERM received"),
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the node");
                interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    interrupt.await;
}

/// The protocol clock: [`pbft_core::Instant`] is microseconds since `origin`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    origin: tokio::time::Instant,
}

impl Clock {
    fn start() -> Clock {
        Clock {
            origin: tokio::time::Instant::now(),
        }
    }

    /// Now, in protocol time.
    pub(crate) fn now(&self) -> pbft_core::Instant {
        let micros = self.origin.elapsed().as_micros();
        pbft_core::Instant(u64::try_from(micros).unwrap_or(u64::MAX))
    }

    /// The tokio instant of a protocol-time deadline.
    pub(crate) fn deadline(&self, at: pbft_core::Instant) -> tokio::time::Instant {
        self.origin + std::time::Duration::from_micros(at.as_micros())
    }
}

/// How the record log is written, for a node file's `durability`.
fn storage_options(durability: Durability) -> pbft_storage::Options {
    pbft_storage::Options {
        sync: durability == Durability::Fsync,
        ..pbft_storage::Options::default()
    }
}

/// Initialises `node`'s data directory once, before its first start: an
/// empty record log and the init marker ([`Storage::init`]). [`run`] refuses
/// a data directory that was never initialised, so that a replica whose log
/// was lost cannot silently start empty and contradict what it sent before.
/// Fails if the directory already holds a marker or a log.
pub fn init_data_dir(node: &Node) -> anyhow::Result<()> {
    Storage::init(&node.data_dir, node.cluster.id.0, node.id).with_context(|| {
        format!(
            "replica {}: cannot initialise the data directory {}",
            node.id.0,
            node.data_dir.display()
        )
    })
}

/// Runs one replica until `shutdown` resolves, then shuts it down cleanly and
/// returns `Ok(())`.
///
/// Startup: reads the secret key and checks that its public half is the
/// cluster file's key for this replica; opens the record log in the data
/// directory and restores the replica from it; listens on `node.listen`
/// (replicas always admitted, clients by `node.allowed_clients`) and dials
/// every other replica. Fails, with the cause in the error's context chain,
/// if the key is missing, unreadable, readable by group or others, or does not
/// match; if the data directory was never initialised ([`init_data_dir`]), is
/// corrupted, unreadable or locked by another process; or if the listen address is in use.
///
/// `shutdown` is polled once before startup (so a signal handler it installs
/// is armed at once); if it is already resolved, `run` returns `Ok(())`
/// without starting.
///
/// Once running, it fails only if the record log cannot be written (the
/// replica must not send what it could not persist) or an internal task dies.
/// See the [crate docs](crate) for the pipeline and the ordering guarantee.
pub async fn run(node: Node, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
    run_with(node, Threads::default(), shutdown).await
}

/// [`run`] with `threads.verify` signature-checking threads (the runtime
/// is the caller's: see [`Threads::runtime`]).
pub async fn run_with(
    node: Node,
    threads: Threads,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let span = tracing::info_span!("replica", id = node.id.0);
    run_inner(node, threads, shutdown, None, None)
        .instrument(span)
        .await
}

/// Like [`run`], but the replica is Byzantine as `spec` says (see
/// [`byzantine`]). Only with the `byzantine` feature.
#[cfg(feature = "byzantine")]
pub async fn run_byzantine(
    node: Node,
    threads: Threads,
    spec: byzantine::Spec,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let span = tracing::info_span!("replica", id = node.id.0, byzantine = ?spec);
    run_inner(node, threads, shutdown, Some(spec), None)
        .instrument(span)
        .await
}

/// What makes a replica Byzantine: nothing can, without the feature.
#[cfg(feature = "byzantine")]
type Spec = byzantine::Spec;
#[cfg(not(feature = "byzantine"))]
type Spec = std::convert::Infallible;

/// Runs one replica (see [`run_with`]); `wrap` wraps the log writer's
/// callback (tests hold its reports back with it).
async fn run_inner(
    node: Node,
    threads: Threads,
    shutdown: impl Future<Output = ()> + Send,
    spec: Option<Spec>,
    wrap: Option<protocol::WrapNotify>,
) -> anyhow::Result<()> {
    // Poll `shutdown` once before anything else, so that whatever it waits
    // for is armed from the start (signal handlers of `shutdown_signal` are
    // installed on first poll: a SIGTERM during startup must not kill the
    // process with the default action).
    tokio::pin!(shutdown);
    tokio::select! {
        biased;
        _ = &mut shutdown => {
            info!("shutdown requested before startup");
            return Ok(());
        }
        _ = std::future::ready(()) => {}
    }
    let clock = Clock::start();
    let id = node.id;
    let cluster = &node.cluster;

    let key = keyfile::read_secret(&node.key)
        .with_context(|| format!("replica {}: cannot load its secret key", id.0))?;
    let Some(expected) = cluster.keys.get(id.index()) else {
        bail!(
            "replica {} is not in the cluster file ({} replicas)",
            id.0,
            cluster.n()
        );
    };
    if key.public() != *expected {
        bail!(
            "key mismatch: {} holds public key {}, but the cluster file lists {} for replica {}",
            node.key.display(),
            key.public().to_hex(),
            expected.to_hex(),
            id.0
        );
    }
    let config = cluster.core_config(&node.tuning);
    config.validate().context("invalid cluster configuration")?;

    let data_dir = node.data_dir.clone();
    let cluster_id = cluster.id.0;
    let mut options = storage_options(node.durability);
    if let Some(bytes) = node.segment_bytes {
        options.segment_bytes = bytes;
    }
    if !options.sync {
        warn!(
            "durability = \"none\": the record log is never synced; an OS crash or power loss \
             can lose this replica's last records (benchmarks only)"
        );
    }
    let (storage, records) =
        tokio::task::spawn_blocking(move || Storage::open_with(&data_dir, cluster_id, id, options))
            .await
            .context("the record log reader failed")?
            .with_context(|| format!("replica {}: cannot open its data directory", id.0))?;
    let record_count = records.len();
    #[cfg(feature = "byzantine")]
    let app = match &spec {
        Some(spec) => spec.state_machine(),
        None => Box::new(KvStore::new()),
    };
    #[cfg(not(feature = "byzantine"))]
    let app: Box<dyn pbft_app::StateMachine> = match spec {
        None => Box::new(KvStore::new()),
        Some(never) => match never {},
    };
    #[cfg(feature = "byzantine")]
    let tamper = spec.map(|spec| {
        tracing::warn!(?spec, "this replica is BYZANTINE (fault injection)");
        byzantine::Tamper::new(
            spec,
            id,
            Signer::new(key.clone(), cluster.id),
            config.clone(),
        )
    });
    let replica = Replica::restore(
        config.clone(),
        id,
        Signer::new(key.clone(), cluster.id),
        app,
        &records,
        clock.now(),
    )
    .with_context(|| {
        format!(
            "replica {}: cannot restore from the record log in {}",
            id.0,
            node.data_dir.display()
        )
    })?;
    drop(records);
    let status = replica.status();

    let policy = AcceptPolicy::replicas(cluster.keys.iter().copied());
    let policy = match &node.allowed_clients {
        None => policy.allow_any_client(),
        Some(clients) => policy.with_clients(clients.iter().copied()),
    };
    let (max_connections, max_connections_per_address) = node.client_connections;
    let net = NetConfig {
        max_connections,
        max_connections_per_address,
        ..NetConfig::default()
    };
    let (endpoint, inbound) = Endpoint::bind(node.listen, &key, policy, net)
        .with_context(|| format!("replica {}: cannot listen on {}", id.0, node.listen))?;
    for (i, (peer, address)) in cluster.keys.iter().zip(&cluster.addresses).enumerate() {
        if i != id.index() {
            endpoint.add_peer(*peer, *address);
        }
    }
    info!(
        listen = %endpoint.local_addr(),
        n = cluster.n(),
        f = cluster.f(),
        cluster = cluster_id,
        data_dir = %node.data_dir.display(),
        records = record_count,
        stable_checkpoint = status.stable_checkpoint.0,
        last_executed = status.last_executed.0,
        view = status.view.0,
        active = status.active,
        "replica started"
    );

    let metrics = Arc::new(metrics::Metrics::new().context("cannot set up the metrics registry")?);
    let metrics_server = match node.metrics {
        Some(address) => {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("replica {}: cannot serve metrics on {address}", id.0))?;
            let bound = listener.local_addr().unwrap_or(address);
            info!(metrics = %bound, "serving Prometheus metrics at /metrics");
            Some(tokio::spawn(
                metrics_http::serve(listener, metrics.clone()).in_current_span(),
            ))
        }
        None => None,
    };
    // Two lanes from the endpoint to the verifier's intake, replicas'
    // ahead of clients' (see `pbft_net::lanes`), each with its own decode
    // task, so that a client flood never delays replica traffic.
    let (from_replicas, from_clients) = inbound.into_parts();
    let (replicas_tx, replicas_rx) = mpsc::channel::<Unchecked<Message>>(DECODED_QUEUE_LEN);
    let (clients_tx, clients_rx) = mpsc::channel::<Unchecked<Message>>(DECODED_QUEUE_LEN);
    let (verified_tx, verified_rx) = mpsc::channel::<Checked<Message>>(VERIFIED_QUEUE_LEN);
    let verifier = pbft_net::spawn_verifier(
        Verifier::new(cluster.id).with_known_keys(cluster.keys.iter().copied()),
        Arc::new(config),
        Lanes::new(replicas_rx, clients_rx),
        verified_tx,
        threads.verify_threads(),
    );
    let replica_keys: HashSet<PublicKey> = cluster.keys.iter().copied().collect();
    let decoders = [
        (inbound::Lane::Replicas, from_replicas, replicas_tx),
        (inbound::Lane::Clients, from_clients, clients_tx),
    ]
    .map(|(lane, frames, decoded)| {
        tokio::spawn(
            inbound::decode_loop(lane, frames, decoded, replica_keys.clone(), metrics.clone())
                .in_current_span(),
        )
    });
    let (stop_tx, stop_rx) = oneshot::channel();
    #[cfg_attr(not(feature = "byzantine"), allow(unused_mut))]
    let (mut task, progress) = protocol::Protocol::new(
        replica,
        storage,
        endpoint.clone(),
        cluster.keys.clone(),
        clock,
        metrics,
        verifier,
        wrap,
    )
    .with_context(|| format!("replica {}: cannot start its record log writer", id.0))?;
    #[cfg(feature = "byzantine")]
    task.set_tamper(tamper);
    let mut protocol = tokio::spawn(task.run(progress, verified_rx, stop_rx).in_current_span());

    let joined = tokio::select! {
        _ = &mut shutdown => {
            info!("shutting down");
            // The protocol task finishes its current step, lets the writer
            // write what it was given, closes the log and sends what it held.
            let _ = stop_tx.send(());
            (&mut protocol).await
        }
        joined = &mut protocol => joined,
    };
    let result = match joined {
        Ok(result) => result,
        Err(e) if e.is_panic() => Err(anyhow!("the protocol task panicked: {e}")),
        Err(e) => Err(anyhow!("the protocol task failed: {e}")),
    };
    if let Some(server) = metrics_server {
        server.abort();
    }
    endpoint.shutdown().await;
    // The endpoint's inbound lanes are closed now, so the decoders end; the
    // verification stage ends with its output receiver (the protocol task's).
    for decoder in decoders {
        if tokio::time::timeout(std::time::Duration::from_secs(1), decoder)
            .await
            .is_err()
        {
            warn!("a decode task did not stop in time");
        }
    }
    match &result {
        Ok(()) => info!("replica stopped"),
        Err(e) => tracing::error!(error = format!("{e:#}"), "replica stopped on an error"),
    }
    result
}
