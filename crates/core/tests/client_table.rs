//! The client table at the replica (`client_table`): idle clients are
//! forgotten at checkpoints, a forgotten client's old request is refused as
//! expired (never run twice), its new requests run, and a large result is
//! re-sent as withheld. Only the replicas a request names reply as it
//! executes; the others answer its retransmission from the table.

mod harness;

use harness::{config, get, put, Client, Cluster};
use pbft_core::client_quorum::{Outcome, ReplyTally};
use pbft_core::message::{Message, Repliers, Reply, ReplyStatus, Request};
use pbft_core::{ClientId, View};
use pbft_core::{ReplicaId, RequestId, SeqNum};
use pbft_crypto::Signed;
use pbft_crypto::{Digest, PublicKey};

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

fn repliers_of(cluster: &Cluster, client: &Client, id: RequestId) -> Vec<u32> {
    let mut who: Vec<u32> = cluster
        .replies
        .get(&client.id())
        .into_iter()
        .flatten()
        .filter(|r| r.request_id == id)
        .map(|r| r.replica.0)
        .collect();
    who.sort_unstable();
    who
}

#[test]
fn only_the_named_replicas_reply_and_the_others_answer_a_retransmission() {
    let mut cluster = Cluster::new(4);
    let mut client = Client::new(1, &cluster);
    let named = Repliers::of([ReplicaId(1), ReplicaId(3)]);
    let first = client.request_naming(put("k", "v"), named);
    send(&mut cluster, &first);
    assert_eq!(repliers_of(&cluster, &client, first.request_id), [1, 3]);
    assert!(client.result(&cluster, first.request_id.0).is_some());
    // Executed everywhere: a copy asking everyone is answered by all four
    // from the client table, and the put does not run again.
    let executed = cluster.replica(2).status().last_executed;
    cluster.replies.clear();
    let again = client.asking_everyone(&first);
    for r in 0..4 {
        cluster.deliver(ReplicaId(r), Message::Request(again.clone()));
    }
    cluster.run();
    assert_eq!(
        repliers_of(&cluster, &client, first.request_id),
        [0, 1, 2, 3]
    );
    assert_eq!(
        statuses(&cluster, &client, first.request_id),
        vec![ReplyStatus::Result; 4]
    );
    assert_eq!(cluster.replica(2).status().last_executed, executed);
}

#[test]
fn a_later_copy_asking_a_replica_before_execution_makes_it_reply() {
    let mut cluster = Cluster::new(4);
    let mut client = Client::new(1, &cluster);
    let named = Repliers::of([ReplicaId(1), ReplicaId(2)]);
    let first = client.request_naming(put("k", "v"), named);
    // Before the primary proposes the first copy, replica 3 gets it (it
    // does not name replica 3) and then a copy naming everyone.
    let all = client.asking_everyone(&first);
    cluster.deliver(ReplicaId(3), Message::Request(first.clone()));
    cluster.deliver(ReplicaId(3), Message::Request(all));
    send(&mut cluster, &first);
    assert_eq!(repliers_of(&cluster, &client, first.request_id), [1, 2, 3]);
}

#[test]
fn every_replica_sends_a_result_too_large_to_keep() {
    let (mut config, signers) = config(4);
    config.client_result_max = 4;
    let mut cluster = Cluster::with_config(config, signers);
    let mut client = Client::new(1, &cluster);
    let named = Repliers::of([ReplicaId(1), ReplicaId(2)]);
    send(
        &mut cluster,
        &client.request_naming(put("k", "a value longer than four"), named),
    );
    // The result (the value) is larger than the table keeps.
    let read = client.request_naming(get("k"), named);
    send(&mut cluster, &read);
    assert_eq!(
        repliers_of(&cluster, &client, read.request_id),
        [0, 1, 2, 3]
    );
    // A small one: only the named.
    let small = client.request_naming(put("j", "x"), named);
    send(&mut cluster, &small);
    assert_eq!(repliers_of(&cluster, &client, small.request_id), [1, 2]);
}

fn reply(replica: u32, status: ReplyStatus, result: &[u8]) -> Reply {
    Reply {
        view: View(0),
        client: ClientId(PublicKey([9; 32])),
        request_id: RequestId(5),
        result: result.to_vec(),
        status,
        read_only: false,
        replica: ReplicaId(replica),
    }
}

/// A client that meets digests (the table kept only those) counts each for
/// the full result whose digest it is, and for nothing else.
#[test]
fn a_withheld_digest_vouches_only_for_the_result_it_matches() {
    let digest = Digest::of(b"ok").0;
    let mut t = ReplyTally::new(RequestId(5), false);
    t.add(&reply(1, ReplyStatus::Result, b"ok"));
    t.add(&reply(2, ReplyStatus::Withheld, &digest));
    assert_eq!(t.outcome(2), Some(Outcome::Result(b"ok")));
    assert_eq!(t.agreeing(2), [ReplicaId(1), ReplicaId(2)]);
    // Not for another result: a liar's bytes and honest digests decide
    // nothing.
    let mut t = ReplyTally::new(RequestId(5), false);
    t.add(&reply(1, ReplyStatus::Result, b"forged"));
    t.add(&reply(2, ReplyStatus::Withheld, &digest));
    assert_eq!(t.outcome(2), None);
    // And not alone: it takes `needed` supporters in all.
    t.add(&reply(3, ReplyStatus::Withheld, &digest));
    assert_eq!(t.outcome(3), None);
    t.add(&reply(0, ReplyStatus::Result, b"ok"));
    assert_eq!(t.outcome(3), Some(Outcome::Result(b"ok")));
    assert_eq!(t.outcome(4), None);
}
