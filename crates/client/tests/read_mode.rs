//! The SDK takes the read mode from the cluster file: in a `fast` cluster an
//! ordered result needs 2f+1 matching replies (so that the read-only fast path
//! stays linearizable for every client), in an `ordered` one f+1, and reads
//! are then ordered too.
//!
//! The "replicas" here are four pbft-net endpoints on loopback that answer
//! every request with a reply, but only the first `answering` of them, so the
//! number of matching replies the client gets is what the test says.
//! Replies are unsigned: the client takes a reply's sender from its link.

use pbft_client::{Client, ClientError, ReadMode};
use pbft_config::ClientFile;
use pbft_core::message::{Reply, Request};
use pbft_core::{Message, ReplicaId};
use pbft_crypto::{keyfile, KeyPair};
use pbft_net::{AcceptPolicy, Endpoint, NetConfig};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const CLUSTER_ID: u64 = 11;

/// Four fake replicas; the first `answering` reply to every request.
struct FakeReplicas {
    endpoints: Vec<Endpoint>,
    /// Read-only requests received, by any replica.
    read_only_seen: Arc<AtomicUsize>,
}

fn fake_replicas(answering: usize) -> FakeReplicas {
    fake_replicas_impersonating(answering, false)
}

/// As [`fake_replicas`]; with `impersonate`, each answering replica also
/// sends a second reply naming the next replica as its sender.
fn fake_replicas_impersonating(answering: usize, impersonate: bool) -> FakeReplicas {
    let read_only_seen = Arc::new(AtomicUsize::new(0));
    let mut endpoints = Vec::new();
    for i in 0..4u32 {
        let key = KeyPair::from_seed([i as u8 + 1; 32]);
        let (endpoint, mut inbound) = Endpoint::bind(
            "127.0.0.1:0".parse().expect("address"),
            &key,
            AcceptPolicy::default().allow_any_client(),
            NetConfig::default(),
        )
        .expect("bind a fake replica");
        let (answer, seen, replies) = (
            (i as usize) < answering,
            read_only_seen.clone(),
            endpoint.clone(),
        );
        tokio::spawn(async move {
            while let Some(frame) = inbound.recv().await {
                let Ok(Message::Request(request)) = Message::decode(&frame.bytes) else {
                    continue;
                };
                let Request {
                    client,
                    request_id,
                    read_only,
                    ..
                } = request.value;
                if read_only {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
                if !answer {
                    continue;
                }
                let mut reply = Reply {
                    view: pbft_core::View(0),
                    client,
                    request_id,
                    result: b"ok".to_vec(),
                    status: Default::default(),
                    read_only,
                    replica: ReplicaId(i),
                };
                let _ = replies.send(client.0, Message::Reply(reply.clone()).encode().into());
                if impersonate {
                    reply.replica = ReplicaId((i + 1) % 4);
                    let _ = replies.send(client.0, Message::Reply(reply).encode().into());
                }
            }
        });
        endpoints.push(endpoint);
    }
    FakeReplicas {
        endpoints,
        read_only_seen,
    }
}

/// Writes cluster.toml (with `read_mode` if given), client.key and
/// client.toml (a short timeout) for `replicas`, and connects a client
/// through `ClientFile::load`, as an application would.
fn client_from_files(dir: &Path, read_mode: Option<&str>, replicas: &FakeReplicas) -> Client {
    let mut cluster = format!("cluster_id = {CLUSTER_ID}\n");
    if let Some(mode) = read_mode {
        writeln!(cluster, "read_mode = \"{mode}\"").expect("format");
    }
    for (i, e) in replicas.endpoints.iter().enumerate() {
        write!(
            cluster,
            "[[replicas]]\nid = {i}\naddress = \"{}\"\npublic_key = \"{}\"\n",
            e.local_addr(),
            e.public_key().to_hex()
        )
        .expect("format");
    }
    std::fs::write(dir.join("cluster.toml"), cluster).expect("write cluster.toml");
    keyfile::write_secret(&dir.join("client.key"), &KeyPair::generate()).expect("client key");
    let client_toml = dir.join("client.toml");
    std::fs::write(
        &client_toml,
        "cluster = \"cluster.toml\"\nkey = \"client.key\"\ntimeout_ms = 2500\n",
    )
    .expect("write client.toml");
    let settings = ClientFile::load(&client_toml).expect("client.toml loads");
    Client::connect(&settings).expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_cluster_writes_wait_for_two_f_plus_one_replies() {
    let dir = tempfile::tempdir().expect("tempdir");
    // f + 1 = 2 matching replies: not enough in a fast cluster.
    let two = fake_replicas(2);
    let client = client_from_files(dir.path(), Some("fast"), &two);
    assert_eq!(client.read_mode(), ReadMode::Fast);
    assert_eq!(client.ordered_quorum(), 3);
    let outcome = client.invoke(b"write".to_vec()).await;
    assert!(
        matches!(outcome, Err(ClientError::Timeout { .. })),
        "accepted on f+1 replies in a fast cluster: {outcome:?}"
    );

    // 2f + 1 = 3 matching replies decide.
    let dir = tempfile::tempdir().expect("tempdir");
    let three = fake_replicas(3);
    let client = client_from_files(dir.path(), Some("fast"), &three);
    assert_eq!(client.invoke(b"write".to_vec()).await.expect("2f+1"), b"ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_cluster_accepts_f_plus_one_and_orders_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let two = fake_replicas(2);
    // No read_mode in the file: ordered.
    let client = client_from_files(dir.path(), None, &two);
    assert_eq!(client.read_mode(), ReadMode::Ordered);
    assert_eq!(client.ordered_quorum(), 2);
    assert_eq!(client.invoke(b"write".to_vec()).await.expect("f+1"), b"ok");
    assert_eq!(
        client.query(b"read".to_vec()).await.expect("ordered read"),
        b"ok"
    );
    assert_eq!(
        two.read_only_seen.load(Ordering::SeqCst),
        0,
        "an ordered cluster's client never sends a read-only request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_naming_another_replica_than_its_link_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    // One replica answers as itself and as replica 1: f+1 = 2 "matching"
    // replies if the client believed what a reply says of its sender.
    let liar = fake_replicas_impersonating(1, true);
    let client = client_from_files(dir.path(), None, &liar);
    let outcome = client.invoke(b"write".to_vec()).await;
    assert!(
        matches!(outcome, Err(ClientError::Timeout { .. })),
        "one replica made a quorum by naming another: {outcome:?}"
    );
}
