//! Real-network tests of whole nodes on 127.0.0.1, each bounded by a timeout.

use crate::inbound::{decode_frame, Rejected};
use crate::testkit::{generate, Spec, TestClient, TestCluster};
use pbft_app::kv::{KvOp, KvResult};
use pbft_config::Node;
use pbft_core::message::{Prepare, Request, StatusRequest};
use pbft_core::{ClientId, Message, ReplicaId, RequestId, SeqNum, View};
use pbft_crypto::{keyfile, ClusterId, Digest, KeyPair, Signer};
use pbft_storage::{Notify, Progress, StorageError};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const OP_TIMEOUT: Duration = Duration::from_secs(20);
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// A node running in its own task.
struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    fn start(node: Node) -> Running {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(crate::run(node, async {
            let _ = stopped.await;
        }));
        Running { stop, task }
    }

    /// Starts `node` with its log writer's reports passing through `gate`.
    fn start_gated(node: Node, gate: &Gate) -> Running {
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async {
            let _ = stopped.await;
        };
        let task = tokio::spawn(crate::run_inner(
            node,
            crate::Threads::default(),
            shutdown,
            None,
            Some(gate.wrap()),
        ));
        Running { stop, task }
    }

    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await?
    }
}

/// Stands between a node's log writer and its protocol task: holds the
/// writer's reports back until opened, or reports a failure instead.
#[derive(Clone, Default)]
struct Gate(Arc<Mutex<GateState>>);

#[derive(Default)]
struct GateState {
    open: bool,
    failed: bool,
    /// Reports the writer made so far.
    reports: usize,
    held: Vec<Report>,
    inner: Option<Notify>,
}

type Report = Result<Progress, Arc<StorageError>>;

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wrap(&self) -> crate::protocol::WrapNotify {
        let gate = self.clone();
        Box::new(move |inner: Notify| -> Notify {
            gate.lock().inner = Some(inner);
            Box::new(move |report: Report| {
                let mut s = gate.lock();
                s.reports += 1;
                if s.failed {
                    return;
                }
                if s.open {
                    if let Some(inner) = &mut s.inner {
                        inner(report);
                    }
                } else {
                    s.held.push(report);
                }
            })
        })
    }

    /// Passes every held report on, and every later one.
    fn open(&self) {
        let mut s = self.lock();
        s.open = true;
        let held = std::mem::take(&mut s.held);
        if let Some(inner) = &mut s.inner {
            for report in held {
                inner(report);
            }
        }
    }

    /// Reports a writer failure instead of what it held (and drops later reports).
    fn fail(&self) {
        let mut s = self.lock();
        s.failed = true;
        s.held.clear();
        if let Some(inner) = &mut s.inner {
            inner(Err(Arc::new(StorageError::WriterStopped)));
        }
    }

    fn reports(&self) -> usize {
        self.lock().reports
    }

    /// Waits (up to 10 s) until the writer made more than `before` reports.
    async fn wait_reports(&self, before: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.reports() <= before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the writer reported nothing new"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Sends a put to replica 0 (the primary of view 0) without waiting.
fn send_put(c: &TestClient, request_id: RequestId) {
    let request = c.signer().sign(Request {
        client: c.id(),
        request_id,
        op: put("k", "v").encode(),
        read_only: false,
        repliers: pbft_core::message::Repliers::ALL,
    });
    c.send(ReplicaId(0), &Message::Request(request))
        .expect("send the request");
}

fn setup(spec: &Spec) -> (tempfile::TempDir, TestCluster) {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = generate(dir.path(), spec).expect("generate cluster");
    (dir, cluster)
}

fn start_all(cluster: &TestCluster) -> Vec<Running> {
    (0..cluster.node_files.len())
        .map(|i| Running::start(cluster.node(i).expect("node file")))
        .collect()
}

async fn stop_all(nodes: Vec<Running>) {
    let results = futures_join_all(nodes.into_iter().map(Running::stop)).await;
    for (i, r) in results.into_iter().enumerate() {
        r.unwrap_or_else(|e| panic!("node {i} stopped with an error: {e:#}"));
    }
}

async fn futures_join_all<F: Future + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("join"));
    }
    out
}

fn client(cluster: &TestCluster) -> TestClient {
    TestClient::connect(
        &cluster.cluster().expect("cluster file"),
        cluster.client_key.clone(),
    )
    .expect("client")
}

fn put(key: &str, value: &str) -> KvOp {
    KvOp::Put {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
    }
}

fn get(key: &str) -> KvOp {
    KvOp::Get {
        key: key.as_bytes().to_vec(),
    }
}

fn value(v: &str) -> KvResult {
    KvResult::Get {
        value: Some(v.as_bytes().to_vec()),
    }
}

async fn bounded<T>(limit: Duration, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, f)
        .await
        .expect("test exceeded its time limit")
}

/// Runs one node that must fail at startup; returns its error text.
async fn startup_error(node: Node) -> String {
    let result = bounded(
        Duration::from_secs(20),
        crate::run(node, std::future::pending()),
    )
    .await;
    format!("{:#}", result.expect_err("startup must fail"))
}

#[test]
fn decoder_drops_garbage_and_client_sent_replica_traffic() {
    let signer = Signer::new(KeyPair::generate(), ClusterId(1));
    let me = signer.public_key();
    assert!(matches!(
        decode_frame(&[], &me, true),
        Err(Rejected::Garbage(_))
    ));
    assert!(matches!(
        decode_frame(&[0xff; 7], &me, false),
        Err(Rejected::Garbage(_))
    ));
    let prepare = Message::Prepare(signer.sign(Prepare {
        view: View(0),
        seq: SeqNum(1),
        digest: Digest::of(b"x"),
        replica: ReplicaId(1),
    }));
    let bytes = prepare.encode();
    assert_eq!(decode_frame(&bytes, &me, true), Ok(prepare));
    assert_eq!(
        decode_frame(&bytes, &me, false),
        Err(Rejected::NotFromClient("prepare"))
    );
    let request = Message::Request(signer.sign(Request {
        client: ClientId(me),
        request_id: RequestId(1),
        op: vec![1, 2, 3],
        read_only: false,
        repliers: pbft_core::message::Repliers::ALL,
    }));
    let bytes = request.encode();
    assert_eq!(decode_frame(&bytes, &me, false), Ok(request.clone()));
    // Truncations of a valid message never panic.
    for cut in 0..bytes.len() {
        let _ = decode_frame(&bytes[..cut], &me, false);
    }
    // On another client's link the request is refused; a replica may relay it.
    let other = KeyPair::generate().public();
    assert_eq!(
        decode_frame(&bytes, &other, false),
        Err(Rejected::ForeignClient {
            kind: "request",
            claimed: ClientId(me)
        })
    );
    assert_eq!(decode_frame(&bytes, &other, true), Ok(request));
    let status = Message::StatusRequest(signer.sign(StatusRequest {
        client: ClientId(me),
        nonce: 1,
    }));
    assert_eq!(
        decode_frame(&status.encode(), &other, false),
        Err(Rejected::ForeignClient {
            kind: "status-request",
            claimed: ClientId(me)
        })
    );
}

/// A client may not submit requests of another client over its own link
/// (real connections): the replicas neither execute nor answer them, while
/// the same request on its own client's link is executed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_signed_for_another_client_are_dropped() {
    bounded(Duration::from_secs(90), async {
        let (_dir, cluster) = setup(&Spec::default());
        let nodes = start_all(&cluster);
        let cluster_file = cluster.cluster().expect("cluster file");
        let mut victim = TestClient::connect(&cluster_file, KeyPair::generate()).expect("client");
        let mut attacker = client(&cluster);
        assert!(victim.wait_connected(Duration::from_secs(10)).await);
        assert!(attacker.wait_connected(Duration::from_secs(10)).await);
        // Some ordinary traffic first, so the cluster is known to be live.
        let r = attacker
            .invoke(&put("a", "1"), OP_TIMEOUT)
            .await
            .expect("put");
        assert_eq!(r, KvResult::Put { previous: None });

        let forged = Message::Request(victim.signer().sign(Request {
            client: victim.id(),
            request_id: RequestId(77),
            op: put("stolen", "x").encode(),
            read_only: false,
            repliers: pbft_core::message::Repliers::ALL,
        }));
        for i in 0..4 {
            let _ = attacker.send(ReplicaId(i), &forged);
        }
        let replies = victim
            .collect_replies(RequestId(77), Duration::from_secs(4))
            .await;
        assert!(
            replies.is_empty(),
            "replicas answered a request sent on another client's link: {replies:?}"
        );
        let r = attacker
            .invoke(&get("stolen"), OP_TIMEOUT)
            .await
            .expect("get");
        assert_eq!(
            r,
            KvResult::Get { value: None },
            "the forged put was executed"
        );

        // The very same signed request on the victim's own link is executed.
        for i in 0..4 {
            let _ = victim.send(ReplicaId(i), &forged);
        }
        let replies = victim
            .collect_replies(RequestId(77), Duration::from_secs(20))
            .await;
        assert!(replies.len() >= 2, "{replies:?}");
        let r = attacker
            .invoke(&get("stolen"), OP_TIMEOUT)
            .await
            .expect("get");
        assert_eq!(r, value("x"));
        victim.shutdown().await;
        attacker.shutdown().await;
        stop_all(nodes).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_nodes_serve_put_then_get() {
    bounded(Duration::from_secs(60), async {
        let (_dir, cluster) = setup(&Spec::default());
        let nodes = start_all(&cluster);
        let mut c = client(&cluster);
        assert!(c.wait_connected(Duration::from_secs(10)).await);
        let r = c.invoke(&put("k", "v1"), OP_TIMEOUT).await.expect("put");
        assert_eq!(r, KvResult::Put { previous: None });
        let r = c.invoke(&get("k"), OP_TIMEOUT).await.expect("get");
        assert_eq!(r, value("v1"));
        let status = c
            .status(ReplicaId(2), STATUS_TIMEOUT)
            .await
            .expect("status");
        assert_eq!(status.view, View(0));
        assert!(status.last_executed >= SeqNum(2), "{status:?}");
        c.shutdown().await;
        stop_all(nodes).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_wait_until_the_records_before_them_are_durable() {
    bounded(Duration::from_secs(60), async {
        let (_dir, cluster) = setup(&Spec::default());
        let gate = Gate::default();
        let mut nodes = vec![Running::start_gated(cluster.node(0).expect("node"), &gate)];
        nodes.extend((1..4).map(|i| Running::start(cluster.node(i).expect("node"))));
        let mut c = client(&cluster);
        assert!(c.wait_connected(Duration::from_secs(10)).await);
        let before = gate.reports();
        let id = RequestId(1);
        send_put(&c, id);
        // The primary's records for the request are written, but the gate
        // keeps the news from its protocol task: nothing it sent after
        // them may leave. The pre-prepare waits, so no replica can reply;
        // a status report (its step persists nothing) must not overtake it.
        gate.wait_reports(before).await;
        let status = c.status(ReplicaId(0), Duration::from_millis(600)).await;
        assert!(status.is_err(), "status sent before durability: {status:?}");
        let early = c.collect_replies(id, Duration::from_millis(300)).await;
        assert!(early.is_empty(), "replies before durability: {early:?}");

        gate.open();
        let replies = c.collect_replies(id, OP_TIMEOUT).await;
        assert!(replies.len() >= 2, "{replies:?}");
        let status = c
            .status(ReplicaId(0), STATUS_TIMEOUT)
            .await
            .expect("status");
        assert!(status.last_executed >= SeqNum(1), "{status:?}");
        c.shutdown().await;
        stop_all(nodes).await;
    })
    .await;
}

/// Collects replies to `id` from every replica that answers within `wait`.
async fn replies_within(
    c: &mut TestClient,
    id: RequestId,
    wait: Duration,
) -> BTreeMap<ReplicaId, Vec<u8>> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut all = BTreeMap::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return all;
        }
        all.extend(c.collect_replies(id, left).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_waits_for_its_own_prepared_certificate() {
    bounded(Duration::from_secs(60), async {
        // An ordered cluster (the default): replies may overtake the
        // records after their batch's certificate, never the certificate.
        let (_dir, cluster) = setup(&Spec::default());
        let gate = Gate::default();
        let mut nodes = vec![Running::start(cluster.node(0).expect("node"))];
        nodes.push(Running::start_gated(cluster.node(1).expect("node"), &gate));
        nodes.extend((2..4).map(|i| Running::start(cluster.node(i).expect("node"))));
        let mut c = client(&cluster);
        assert!(c.wait_connected(Duration::from_secs(10)).await);
        let id = RequestId(1);
        send_put(&c, id);
        // Replicas 0, 2 and 3 commit and answer without replica 1, which
        // executes the batch too (its own COMMIT and theirs), but its
        // writer's reports are held: its certificate is not known durable.
        let early = replies_within(&mut c, id, Duration::from_millis(1500)).await;
        assert!(early.len() >= 2, "the others answer: {early:?}");
        assert!(
            !early.contains_key(&ReplicaId(1)),
            "replica 1 answered before its prepared certificate was durable: {early:?}"
        );
        gate.open();
        let late = replies_within(&mut c, id, Duration::from_millis(1500)).await;
        assert!(late.contains_key(&ReplicaId(1)), "{late:?}");
        c.shutdown().await;
        stop_all(nodes).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_failure_stops_the_node_and_sends_nothing_it_held() {
    bounded(Duration::from_secs(60), async {
        let (_dir, cluster) = setup(&Spec::default());
        let gate = Gate::default();
        let Running { stop, task } = Running::start_gated(cluster.node(0).expect("node"), &gate);
        let backups: Vec<_> = (1..4)
            .map(|i| Running::start(cluster.node(i).expect("node")))
            .collect();
        let mut c = client(&cluster);
        assert!(c.wait_connected(Duration::from_secs(10)).await);
        let before = gate.reports();
        let id = RequestId(1);
        send_put(&c, id);
        gate.wait_reports(before).await;
        gate.fail();
        let result = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the node stops")
            .expect("join");
        let e = result.expect_err("a writer failure stops the node");
        assert!(
            format!("{e:#}").contains("cannot persist protocol state"),
            "{e:#}"
        );
        // Nothing it held went out, at the failure or at its exit.
        let replies = c.collect_replies(id, Duration::from_millis(500)).await;
        assert!(replies.is_empty(), "{replies:?}");
        drop(stop);
        c.shutdown().await;
        stop_all(backups).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_recovers_its_state_and_cluster_keeps_serving() {
    bounded(Duration::from_secs(120), async {
        let spec = Spec {
            checkpoint_interval: 2,
            log_window: 4,
            ..Spec::default()
        };
        let (_dir, cluster) = setup(&spec);
        let mut nodes = start_all(&cluster);
        let mut c = client(&cluster);
        assert!(c.wait_connected(Duration::from_secs(10)).await);
        for i in 0..5 {
            c.invoke(&put(&format!("k{i}"), &format!("v{i}")), OP_TIMEOUT)
                .await
                .expect("put");
        }
        let r3 = ReplicaId(3);
        // Replica 3 may lag the f+1 that answered: wait until it executed all.
        let before = loop {
            let s = c.status(r3, STATUS_TIMEOUT).await.expect("status");
            if s.last_executed >= SeqNum(5) {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(before.stable_checkpoint >= SeqNum(2), "{before:?}");

        let node3 = nodes.pop().expect("node 3");
        node3.stop().await.expect("clean stop");
        // The cluster serves with one replica down.
        c.invoke(&put("during", "down"), OP_TIMEOUT)
            .await
            .expect("put while replica 3 is down");

        nodes.push(Running::start(cluster.node(3).expect("node file")));
        let after = c.status(r3, Duration::from_secs(15)).await.expect("status");
        assert_eq!(after.view, before.view);
        assert!(
            after.stable_checkpoint >= before.stable_checkpoint,
            "{after:?} vs {before:?}"
        );
        assert!(after.last_executed >= before.stable_checkpoint);

        // Enough requests to cross checkpoints, so replica 3 catches up.
        for i in 5..12 {
            c.invoke(&put(&format!("k{i}"), &format!("v{i}")), OP_TIMEOUT)
                .await
                .expect("put after restart");
        }
        let reference = c
            .status(ReplicaId(0), STATUS_TIMEOUT)
            .await
            .expect("status");
        loop {
            let s = c.status(r3, STATUS_TIMEOUT).await.expect("status");
            if s.last_executed == reference.last_executed {
                assert_eq!(s.state_digest, reference.state_digest);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let r = c.invoke(&get("k0"), OP_TIMEOUT).await.expect("get");
        assert_eq!(r, value("v0"));
        c.shutdown().await;
        stop_all(nodes).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_not_matching_the_cluster_file_is_refused() {
    let (_dir, cluster) = setup(&Spec::default());
    let mut node = cluster.node(0).expect("node file");
    let wrong = cluster.dir.join("wrong.key");
    keyfile::write_secret(&wrong, &KeyPair::generate()).expect("write key");
    node.key = wrong;
    let e = startup_error(node).await;
    assert!(e.contains("key mismatch") && e.contains("replica 0"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_readable_key_is_refused() {
    let (_dir, cluster) = setup(&Spec::default());
    let mut node = cluster.node(1).expect("node file");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&node.key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = startup_error(node.clone()).await;
        assert!(e.contains("group or others"), "{e}");
    }
    node.key = cluster.dir.join("absent.key");
    let e = startup_error(node).await;
    assert!(e.contains("absent.key") && e.contains("secret key"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_in_use_is_an_error() {
    let (_dir, cluster) = setup(&Spec::default());
    let node = cluster.node(0).expect("node file");
    let _taken = std::net::UdpSocket::bind(node.listen).expect("take the port");
    let e = startup_error(node.clone()).await;
    assert!(
        e.contains("cannot listen") && e.contains(&node.listen.to_string()),
        "{e}"
    );
    // The failed start released the data directory's lock.
    drop(_taken);
    let running = Running::start(node);
    tokio::time::sleep(Duration::from_millis(300)).await;
    bounded(Duration::from_secs(20), running.stop())
        .await
        .expect("starts once the port is free");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_or_locked_data_dir_is_an_error() {
    let (_dir, cluster) = setup(&Spec::default());
    let node = cluster.node(2).expect("node file");
    std::fs::create_dir_all(&node.data_dir).expect("mkdir");
    std::fs::write(
        node.data_dir.join("records.log"),
        b"this is not a record log",
    )
    .expect("write");
    let e = startup_error(node).await;
    assert!(e.contains("corrupted"), "{e}");

    let node = cluster.node(3).expect("node file");
    let (_held, _) =
        pbft_storage::Storage::open(&node.data_dir, 1, ReplicaId(3)).expect("open storage");
    let e = startup_error(node).await;
    assert!(e.contains("in use by another process"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_frames_do_not_crash_a_node() {
    bounded(Duration::from_secs(60), async {
        let (_dir, cluster) = setup(&Spec::default());
        let nodes = start_all(&cluster);
        let mut c = client(&cluster);
        assert!(c.wait_connected(Duration::from_secs(10)).await);
        let r0 = ReplicaId(0);
        // Garbage, empty, truncated, and well-formed messages with bad
        // signatures or of a kind clients may not send.
        let _ = c.send_raw(r0, vec![]);
        let _ = c.send_raw(r0, vec![0xff; 100]);
        let _ = c.send_raw(r0, (0..=255).collect());
        let valid = Message::Request(c.signer().sign(Request {
            client: c.id(),
            request_id: RequestId(1_000),
            op: put("x", "y").encode(),
            read_only: false,
            repliers: pbft_core::message::Repliers::ALL,
        }));
        let bytes = valid.encode();
        let _ = c.send_raw(r0, bytes[..bytes.len() / 2].to_vec());
        let mut forged = bytes.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1; // flips a signature bit
        let _ = c.send_raw(r0, forged);
        let forger = Signer::new(KeyPair::generate(), ClusterId(1));
        let _ = c.send(
            r0,
            &Message::Prepare(forger.sign(Prepare {
                view: View(0),
                seq: SeqNum(1),
                digest: Digest::of(b"x"),
                replica: ReplicaId(1),
            })),
        );
        let r = c.invoke(&put("k", "v"), OP_TIMEOUT).await.expect("put");
        assert_eq!(r, KvResult::Put { previous: None });
        let r = c.invoke(&get("k"), OP_TIMEOUT).await.expect("get");
        assert_eq!(r, value("v"));
        for n in &nodes {
            assert!(!n.task.is_finished(), "a node stopped");
        }
        c.shutdown().await;
        stop_all(nodes).await;
    })
    .await;
}
