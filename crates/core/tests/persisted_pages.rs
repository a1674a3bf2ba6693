//! Snapshots are persisted as pages (`Record::Page`) listed by leaf digest
//! (`Record::Snapshot`, `Record::Checkpoint`): a checkpoint writes only the
//! pages the log does not already hold, compaction keeps the pages its kept
//! snapshots list, and a restart reassembles every snapshot from them.

mod harness;

use harness::{config, put, Client, Cluster};
use pbft_core::message::Message;
use pbft_core::{Record, Replica, ReplicaId, RestoreError, SeqNum};

/// A cluster whose stores cut pages of about 16 bytes (about one key each),
/// after `keys` puts on distinct keys (a checkpoint every 4).
fn cluster_with_keys(keys: usize) -> (Cluster, Client) {
    let (config, signers) = config(4);
    let mut cluster = Cluster::with_pages(config, signers, 16);
    let mut client = Client::new(1, &cluster);
    for i in 0..keys {
        put_key(&mut cluster, &mut client, &format!("key{i:03}"));
    }
    (cluster, client)
}

fn put_key(cluster: &mut Cluster, client: &mut Client, key: &str) {
    let request = client.request(put(key, "value"));
    cluster.deliver(ReplicaId(0), Message::Request(request));
    cluster.run();
}

fn pages_written(records: &[Record]) -> usize {
    records
        .iter()
        .filter(|r| matches!(r, Record::Page(_)))
        .count()
}

/// The leaves of the last snapshot record.
fn last_snapshot(records: &[Record]) -> (SeqNum, Vec<pbft_crypto::Digest>) {
    records
        .iter()
        .rev()
        .find_map(|r| match r {
            Record::Snapshot(seq, leaves) => Some((*seq, leaves.clone())),
            _ => None,
        })
        .expect("a snapshot record")
}

fn restore(cluster: &Cluster, id: usize, records: &[Record]) -> Result<Replica, RestoreError> {
    Replica::restore(
        cluster.config.clone(),
        ReplicaId(id as u32),
        cluster.signers[id].clone(),
        Box::new(pbft_app::kv::KvStore::with_page_target(cluster.page_target)),
        records,
        cluster.now,
    )
}

#[test]
fn a_checkpoint_writes_only_the_pages_that_changed() {
    let (mut cluster, mut client) = cluster_with_keys(40);
    let before = pages_written(&cluster.storage[1]);
    let (seq, leaves) = last_snapshot(&cluster.storage[1]);
    assert_eq!(seq, SeqNum(40));
    assert!(leaves.len() > 30, "{} pages", leaves.len());
    // Four more puts (one checkpoint) change a few pages: the new key's,
    // its neighbours', the client table's and the header.
    for i in 0..4 {
        put_key(&mut cluster, &mut client, &format!("key{:03}", 100 + i));
    }
    let (seq, after_leaves) = last_snapshot(&cluster.storage[1]);
    assert_eq!(seq, SeqNum(44));
    let written = pages_written(&cluster.storage[1]) - before;
    assert!(
        written > 0 && written <= 12,
        "{written} pages written for a snapshot of {} pages",
        after_leaves.len()
    );
    // Every page a snapshot lists was written before it.
    let mut held = std::collections::BTreeSet::new();
    for r in &cluster.storage[1] {
        match r {
            Record::Page(p) => {
                held.insert(p.digest());
            }
            Record::Snapshot(seq, leaves) => {
                assert!(leaves.iter().all(|l| held.contains(l)), "snapshot {seq:?}");
            }
            _ => {}
        }
    }
}

#[test]
fn compaction_keeps_the_pages_restarts_need_through_repeated_restarts() {
    let (mut cluster, mut client) = cluster_with_keys(24);
    for round in 0..3 {
        pbft_core::io::compact(&mut cluster.storage[1]);
        // Compaction drops the pages only older snapshots listed.
        let listed: std::collections::BTreeSet<_> = cluster.storage[1]
            .iter()
            .filter_map(|r| match r {
                Record::Snapshot(_, l) | Record::Checkpoint(_, l) => Some(l.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(pages_written(&cluster.storage[1]), listed.len());
        cluster.crash(1);
        cluster.restart(1);
        // More keys, overwrites of old ones and checkpoints after the restart:
        // the restarted replica's snapshots must find their pages too.
        for i in 0..8 {
            put_key(
                &mut cluster,
                &mut client,
                &format!("key{:03}", round * 5 + i),
            );
        }
        let (r0, r1) = (cluster.replica(0), cluster.replica(1));
        assert_eq!(
            (r1.status().last_executed, r1.state_digest()),
            (r0.status().last_executed, r0.state_digest())
        );
    }
    pbft_core::io::compact(&mut cluster.storage[1]);
    let restored = restore(&cluster, 1, &cluster.storage[1]).expect("restore");
    assert_eq!(restored.state_digest(), cluster.replica(0).state_digest());
}

#[test]
fn a_log_that_lost_a_page_is_refused_not_half_restored() {
    let (cluster, _) = cluster_with_keys(12);
    let mut records = cluster.storage[1].clone();
    pbft_core::io::compact(&mut records);
    let (_, leaves) = last_snapshot(&records);
    let lost = leaves[leaves.len() / 2];
    records.retain(|r| !matches!(r, Record::Page(p) if p.digest() == lost));
    match restore(&cluster, 1, &records) {
        Err(RestoreError::Snapshot { reason, .. }) => {
            assert!(reason.contains("never persisted"), "{reason}")
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("restored a snapshot with a missing page"),
    }
}
