//! The SDK against four in-process replicas (pbft-node) on loopback.

use pbft_client::{Client, ClientError, ClientOptions, KeyPair, KvClient, KvError};
use pbft_node::testkit::{generate, Spec};
use std::time::Duration;
use tokio::sync::oneshot;

struct Replicas {
    stops: Vec<Option<oneshot::Sender<()>>>,
    tasks: Vec<Option<tokio::task::JoinHandle<anyhow::Result<()>>>>,
}

impl Replicas {
    async fn stop(&mut self, i: usize) {
        if let Some(stop) = self.stops[i].take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.tasks[i].take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
        }
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        for t in self.tasks.iter().flatten() {
            t.abort();
        }
    }
}

async fn start(dir: &std::path::Path, timeout_base_ms: u64) -> (Replicas, pbft_config::Cluster) {
    let spec = Spec {
        timeout_base_ms,
        ..Spec::default()
    };
    let cluster = generate(dir, &spec).expect("generate");
    let mut replicas = Replicas {
        stops: Vec::new(),
        tasks: Vec::new(),
    };
    for i in 0..4 {
        let node = cluster.node(i).expect("node file");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(pbft_node::run(node, async move {
            let _ = rx.await;
        }));
        replicas.stops.push(Some(tx));
        replicas.tasks.push(Some(task));
    }
    (replicas, cluster.cluster().expect("cluster"))
}

fn kv(cluster: &pbft_config::Cluster, key: KeyPair) -> KvClient {
    let options = ClientOptions::with_timeout(Duration::from_secs(30));
    KvClient::new(Client::with_key(cluster, key, options).expect("client"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_operations_status_and_view_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut replicas, cluster) = start(dir.path(), 500).await;
    let key = KeyPair::generate();
    let client = kv(&cluster, key.clone());

    assert_eq!(client.put("a", "1").await.expect("put"), None);
    assert_eq!(
        client.put("a", "2").await.expect("put"),
        Some(b"1".to_vec())
    );
    assert_eq!(client.get("a").await.expect("get"), Some(b"2".to_vec()));
    assert_eq!(client.get("nope").await.expect("get"), None);
    let cas = client
        .cas("a", Some(b"1".to_vec()), "3")
        .await
        .expect("cas");
    assert!(!cas.swapped);
    assert_eq!(cas.current, Some(b"2".to_vec()));
    assert!(client.cas("b", None, "x").await.expect("cas").swapped);
    let scan = client.scan("a", "z", 10).await.expect("scan");
    assert_eq!(
        scan.items,
        vec![
            (b"a".to_vec(), b"2".to_vec()),
            (b"b".to_vec(), b"x".to_vec())
        ]
    );
    assert!(client.delete("b").await.expect("delete"));
    assert!(!client.delete("b").await.expect("delete"));
    match client.put(vec![b'k'; 5000], "v").await {
        Err(ClientError::Application(KvError::KeyTooLarge)) => {}
        other => panic!("expected an application error, got {other:?}"),
    }

    // A second client with the same key (a new process, say) still gets
    // fresh, larger request ids: its writes are not ignored as old.
    drop(client);
    let again = kv(&cluster, key);
    assert_eq!(again.put("a", "4").await.expect("put"), Some(b"2".to_vec()));

    let status = again.client().status().await;
    assert_eq!(status.len(), 4);
    assert!(status.iter().all(|s| s.reachable()), "{status:?}");
    let report = status[0].report.as_ref().expect("report");
    let primary = report.primary;
    // The client learned the view the replicas are in (usually 0; a view
    // change on a loaded machine is allowed, the client must follow it).
    assert_eq!(again.client().view(), report.view);

    // The primary stops: the client broadcasts, the replicas change views,
    // and the client learns the new view from the replies.
    replicas.stop(primary.index()).await;
    assert_eq!(
        again
            .put("a", "5")
            .await
            .expect("put after the primary stopped"),
        Some(b"4".to_vec())
    );
    assert!(
        again.client().view() > report.view,
        "view {}",
        again.client().view()
    );
    let status = again.client().status().await;
    assert!(!status[primary.index()].reachable());
    assert_eq!(status.iter().filter(|s| s.reachable()).count(), 3);
    for i in 0..4 {
        replicas.stop(i).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_cluster_times_out_with_unknown_outcome() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = generate(dir.path(), &Spec::default())
        .expect("generate")
        .cluster()
        .expect("cluster");
    let mut options = ClientOptions::with_timeout(Duration::from_millis(1500));
    options.retransmit = Duration::from_millis(200);
    let client = Client::with_key(&cluster, KeyPair::generate(), options).expect("client");
    let e = client
        .invoke(b"op".to_vec())
        .await
        .expect_err("no replicas");
    assert!(e.is_outcome_unknown());
    assert!(e.to_string().contains("outcome is unknown"), "{e}");
    assert!(e.to_string().contains("connected to 0 of 4"), "{e}");
}
