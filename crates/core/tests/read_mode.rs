//! The cluster's read mode (TOCS 2002, 5.1.3): replicas answer the read-only
//! fast path only in a cluster whose read mode is `fast`; in an `ordered`
//! cluster (the default) writes are confirmed by f+1 replies, so an unordered
//! answer could be stale, and a read-only request is dropped with a counter.

mod harness;

use harness::{config, get, put, Client, Cluster, To};
use pbft_app::kv::KvResult;
use pbft_core::message::Message;
use pbft_core::{ReadMode, ReplicaId};

const REFUSED: &str = "read-only request in a cluster whose read mode is ordered";

/// A cluster of four in `mode` where `k` = `v` was written through the
/// protocol, and a client.
fn cluster_with_a_write(mode: ReadMode) -> (Cluster, Client) {
    let (mut config, signers) = config(4);
    config.read_mode = mode;
    let mut cluster = Cluster::with_config(config, signers);
    let mut client = Client::new(1, &cluster);
    let write = client.request(put("k", "v"));
    cluster.deliver(ReplicaId(0), Message::Request(write));
    cluster.run();
    assert_eq!(
        client.result(&cluster, 1),
        Some(KvResult::Put { previous: None })
    );
    (cluster, client)
}

/// Sends `get("k")` on the read-only path to replica 2 and returns the
/// read-only answers it queued.
fn read_only_answers(cluster: &mut Cluster, client: &mut Client) -> Vec<Vec<u8>> {
    let mut read = client.request(get("k")).value;
    read.read_only = true;
    let read = client.signer.sign(read);
    cluster.deliver(ReplicaId(2), Message::Request(read));
    let answers = cluster
        .queue
        .iter()
        .filter_map(|(from, to, m)| match (to, m) {
            (To::Client(c), Message::Reply(r))
                if *c == client.id() && *from == ReplicaId(2) && r.read_only =>
            {
                Some(r.result.clone())
            }
            _ => None,
        })
        .collect();
    cluster.run();
    answers
}

#[test]
fn ordered_cluster_refuses_read_only_requests() {
    let (mut cluster, mut client) = cluster_with_a_write(ReadMode::Ordered);
    assert_eq!(cluster.config.read_mode, ReadMode::Ordered, "the default");
    let answers = read_only_answers(&mut cluster, &mut client);
    assert!(answers.is_empty(), "no unordered answer: {answers:?}");
    assert_eq!(cluster.replica(2).dropped().get(REFUSED), Some(&1));
}

#[test]
fn fast_cluster_answers_read_only_requests_with_the_current_value() {
    let (mut cluster, mut client) = cluster_with_a_write(ReadMode::Fast);
    let answers = read_only_answers(&mut cluster, &mut client);
    let expected = KvResult::Get {
        value: Some(b"v".to_vec()),
    }
    .encode();
    assert_eq!(answers, vec![expected]);
    assert_eq!(cluster.replica(2).dropped().get(REFUSED), None);
}

/// Read-only answers run on the protocol task, so they are capped per retry
/// interval (`READ_ONLY_BYTES_PER_INTERVAL` of results): a client flooding
/// large reads gets refused until the next interval, and its reads then fall
/// back to the ordered path at the client.
#[test]
fn read_only_answers_are_capped_per_retry_interval() {
    let (mut config, signers) = config(4);
    config.read_mode = ReadMode::Fast;
    let mut cluster = Cluster::with_config(config, signers);
    let mut client = Client::new(1, &cluster);
    // One 60 KiB value: each read of it returns about that much.
    let value = "v".repeat(60 << 10);
    cluster.deliver(
        ReplicaId(0),
        Message::Request(client.request(put("k", &value))),
    );
    cluster.run();
    // Each answer counts its result (the value and a little framing) and a
    // fixed cost: between the value's size and half a KiB more.
    let budget = pbft_core::normal::READ_ONLY_BYTES_PER_INTERVAL;
    let (least, most) = (budget / (value.len() + 512), budget / value.len() + 1);
    let mut answered = 0;
    for _ in 0..most + 10 {
        answered += read_only_answers(&mut cluster, &mut client).len();
    }
    assert!(
        (least..=most).contains(&answered),
        "{answered} answered, {least}..={most} fit"
    );
    let refused = "read-only request over the read budget";
    assert!(
        cluster
            .replica(2)
            .dropped()
            .get(refused)
            .copied()
            .unwrap_or(0)
            >= 9
    );
    cluster.now = cluster.now + cluster.config.timeout_base / 2;
    assert_eq!(read_only_answers(&mut cluster, &mut client).len(), 1);
}
