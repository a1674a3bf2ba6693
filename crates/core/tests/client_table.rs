//! The client table at the replica (`client_table`): idle clients are
//! forgotten at checkpoints, a forgotten client's old request is refused as
//! expired (never run twice), its new requests run, and a large result is
//! re-sent as withheld.

mod harness;

use harness::{config, get, put, Client, Cluster};
use pbft_core::message::{Message, ReplyStatus, Request};
use pbft_core::{ReplicaId, RequestId, SeqNum};
use pbft_crypto::Signed;

fn send(cluster: &mut Cluster, request: &Signed<Request>) {
    cluster.deliver(ReplicaId(0), Message::Request(request.clone()));
    cluster.run();
}

fn statuses(cluster: &Cluster, client: &Client, id: RequestId) -> Vec<ReplyStatus> {
    cluster
        .replies
        .get(&client.id())
        .into_iter()
        .flatten()
        .filter(|r| r.request_id == id)
        .map(|r| r.status)
        .collect()
}

#[test]
fn a_forgotten_clients_old_request_expires_and_never_runs_twice() {
    let (mut config, signers) = config(4);
    config.client_table_max = 1;
    let mut cluster = Cluster::with_config(config, signers);
    let mut old = Client::new(1, &cluster);
    let mut busy = Client::new(2, &cluster);
    busy.next_id = 100;
    let first = old.request(put("k", "once"));
    send(&mut cluster, &first);
    // Enough of the other client's requests for a checkpoint (K = 4).
    for _ in 0..4 {
        let r = busy.request(get("k"));
        send(&mut cluster, &r);
    }
    let status = cluster.replica(0).status();
    assert!(status.stable_checkpoint >= SeqNum(4), "{status:?}");
    let executed = status.last_executed;
    // The retransmission is refused as expired by every replica.
    cluster.replies.clear();
    for r in 0..4 {
        cluster.deliver(ReplicaId(r), Message::Request(first.clone()));
    }
    cluster.run();
    assert_eq!(
        statuses(&cluster, &old, first.request_id),
        vec![ReplyStatus::Expired; 4]
    );
    assert_eq!(cluster.replica(0).status().last_executed, executed);
    // Its next request (a higher id) runs, and the put ran once: the value
    // is still the one it wrote.
    let next = old.request(put("k", "twice"));
    send(&mut cluster, &next);
    assert_eq!(
        old.result(&cluster, next.request_id.0),
        Some(pbft_app::kv::KvResult::Put {
            previous: Some(b"once".to_vec())
        })
    );
}

#[test]
fn a_large_result_is_re_sent_as_withheld() {
    let (mut config, signers) = config(4);
    config.client_result_max = 4;
    let mut cluster = Cluster::with_config(config, signers);
    let mut client = Client::new(1, &cluster);
    send(
        &mut cluster,
        &client.request(put("k", "a value longer than four")),
    );
    let read = client.request(get("k"));
    send(&mut cluster, &read);
    assert!(client.result(&cluster, read.request_id.0).is_some());
    cluster.replies.clear();
    send(&mut cluster, &read);
    let got = statuses(&cluster, &client, read.request_id);
    assert_eq!(got, vec![ReplyStatus::Withheld]);
    let reply = &cluster.replies[&client.id()][0];
    assert_eq!(reply.result.len(), 32, "the result's digest");
}
