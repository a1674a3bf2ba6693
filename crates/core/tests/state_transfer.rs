//! Chunked state transfer (`checkpoint`): every part is checked against the
//! certified digest before anything is installed, a source that sends a
//! wrong part or stalls is replaced by another, pages already held are not
//! fetched again, and a restarted replica comes back from the fetched state.

mod harness;

use harness::{config, put, Client, Cluster, To};
use pbft_core::message::{Message, StateBody, StatePart};
use pbft_core::{ReplicaId, SeqNum};
use std::time::Duration;

const LAGGARD: ReplicaId = ReplicaId(3);

/// A cluster with tiny pages (every key a page or two) in which replica 3
/// missed `missed` puts on new keys after taking part in `shared` puts.
fn lagging_cluster(shared: usize, missed: usize) -> (Cluster, Client) {
    let (config, signers) = config(4);
    let mut cluster = Cluster::with_pages(config, signers, 16);
    let mut client = Client::new(1, &cluster);
    for i in 0..shared {
        put_at_primary(&mut cluster, &mut client, &format!("shared{i:02}"));
    }
    cluster.isolated.insert(LAGGARD);
    for i in 0..missed {
        put_at_primary(&mut cluster, &mut client, &format!("missed{i:02}"));
    }
    cluster.isolated.clear();
    (cluster, client)
}

fn put_at_primary(cluster: &mut Cluster, client: &mut Client, key: &str) {
    let request = client.request(put(key, "value"));
    cluster.deliver(ReplicaId(0), Message::Request(request));
    cluster.run();
}

/// Runs the cluster, passing every message through `tamper` first, and
/// advancing time whenever it is quiet, until replica 3 transferred state.
fn run_until_transferred(
    cluster: &mut Cluster,
    client: &mut Client,
    mut tamper: impl FnMut(&mut Cluster, ReplicaId, &To, &mut Message),
) {
    // Enough traffic for a checkpoint the laggard cannot reach by the log
    // (delivered through `tamper` like everything else).
    for i in 0..8 {
        let request = client.request(put(&format!("after{i:02}"), "value"));
        cluster.deliver(ReplicaId(0), Message::Request(request));
    }
    for _ in 0..200_000 {
        if !cluster.transfers.is_empty() {
            break;
        }
        match cluster.queue.pop_front() {
            Some((from, to, mut message)) => {
                tamper(cluster, from, &to, &mut message);
                cluster.queue.push_front((from, to, message));
                cluster.step();
            }
            None => cluster.fire_next_timer(Duration::from_millis(10)),
        }
    }
    cluster.advance(Duration::from_millis(300));
}

fn assert_caught_up(cluster: &Cluster) {
    let s3 = cluster.replica(LAGGARD.0).status();
    let s0 = cluster.replica(0).status();
    assert_eq!(s3.last_executed, s0.last_executed, "{s3:?} vs {s0:?}");
    assert_eq!(
        cluster.replica(LAGGARD.0).state_digest(),
        cluster.replica(0).state_digest()
    );
}

fn fetch_target(to: &To, message: &Message) -> Option<(ReplicaId, StatePart)> {
    match (to, message) {
        (To::Replica(r), Message::FetchState(f)) if f.replica == LAGGARD => {
            Some((*r, f.part.clone()))
        }
        _ => None,
    }
}

#[test]
fn a_state_of_many_pages_is_transferred_in_chunks() {
    let (mut cluster, mut client) = lagging_cluster(0, 12);
    run_until_transferred(&mut cluster, &mut client, |_, _, _, _| {});
    let (who, seq, pages, fetched) = cluster.transfers[0];
    assert_eq!(who, LAGGARD);
    assert!(seq >= SeqNum(12));
    assert!(pages > 10, "{pages} pages");
    assert!(
        fetched > 1 && fetched <= pages,
        "{fetched} of {pages} fetched"
    );
    assert_caught_up(&cluster);
}

#[test]
fn a_corrupted_page_is_refused_and_the_source_replaced() {
    let (mut cluster, mut client) = lagging_cluster(0, 12);
    let mut corrupted_by = None;
    let mut asked_after = Vec::new();
    run_until_transferred(&mut cluster, &mut client, |cluster, from, to, message| {
        if let Some((source, part)) = fetch_target(to, message) {
            if corrupted_by.is_some() {
                asked_after.push((source, part));
            }
        }
        let Message::StateData(data) = message else {
            return;
        };
        if corrupted_by.is_some() || !matches!(to, To::Replica(LAGGARD)) {
            return;
        }
        let mut value = data.value.clone();
        if let StateBody::Page { bytes, .. } = &mut value.body {
            bytes.push(0xff);
            *data = cluster.signers[from.index()].sign(value);
            corrupted_by = Some(from);
        }
    });
    let bad = corrupted_by.expect("a page was sent");
    let dropped = cluster.replica(LAGGARD.0).dropped().clone();
    assert_eq!(
        dropped.get("state page does not match its leaf digest"),
        Some(&1),
        "{dropped:?}"
    );
    let (next, _) = asked_after.first().cloned().expect("asked again");
    assert_ne!(next, bad, "the bad source was asked again");
    assert_caught_up(&cluster);
}

#[test]
fn wrong_leaves_and_summaries_are_refused() {
    let (mut cluster, mut client) = lagging_cluster(0, 12);
    let (mut summary, mut leaves) = (false, false);
    run_until_transferred(&mut cluster, &mut client, |cluster, from, to, message| {
        let Message::StateData(data) = message else {
            return;
        };
        if !matches!(to, To::Replica(LAGGARD)) {
            return;
        }
        // The first summary and the first leaves that arrive are wrong.
        let mut value = data.value.clone();
        match &mut value.body {
            StateBody::Summary { groups, .. } if !summary => {
                groups[0].0[0] ^= 1;
                summary = true;
            }
            StateBody::Leaves { leaves: l, .. } if !leaves => {
                l[0].0[0] ^= 1;
                leaves = true;
            }
            _ => return,
        }
        *data = cluster.signers[from.index()].sign(value);
    });
    assert!(summary && leaves);
    let dropped = cluster.replica(LAGGARD.0).dropped().clone();
    let refused = dropped
        .get("state does not match its certified digest")
        .copied()
        .unwrap_or(0)
        + dropped
            .get("state leaves do not match their group digest")
            .copied()
            .unwrap_or(0);
    assert_eq!(refused, 2, "{dropped:?}");
    assert_caught_up(&cluster);
}

#[test]
fn a_stalled_source_is_replaced_and_the_transfer_resumes() {
    let (mut cluster, mut client) = lagging_cluster(0, 12);
    let mut stalled = None;
    let mut pages_from_stalled = 0;
    let mut sources = Vec::new();
    run_until_transferred(&mut cluster, &mut client, |cluster, from, to, message| {
        if let Some((source, _)) = fetch_target(to, message) {
            sources.push(source);
        }
        // The first source answers a few pages, then goes silent.
        if let (Message::StateData(data), To::Replica(LAGGARD)) = (&*message, to) {
            if matches!(data.body, StateBody::Page { .. }) && stalled.is_none_or(|s| s == from) {
                stalled = Some(from);
                pages_from_stalled += 1;
                if pages_from_stalled == 3 {
                    cluster.silent.insert(from);
                }
            }
        }
    });
    let stalled = stalled.expect("pages were sent");
    assert!(
        sources.iter().any(|s| *s != stalled),
        "never asked another source: {sources:?}"
    );
    let (_, _, pages, fetched) = cluster.transfers[0];
    assert!(fetched <= pages);
    assert!(
        pages_from_stalled < pages,
        "every page came from the stalled source"
    );
    cluster.silent.clear();
    assert_caught_up(&cluster);
}

#[test]
fn pages_already_held_are_not_fetched_again() {
    let (mut cluster, mut client) = lagging_cluster(32, 6);
    run_until_transferred(&mut cluster, &mut client, |_, _, _, _| {});
    let (_, _, pages, fetched) = cluster.transfers[0];
    assert!(
        fetched * 2 < pages,
        "fetched {fetched} of {pages} pages though most were held"
    );
    assert_caught_up(&cluster);
}

#[test]
fn a_replica_restarts_from_a_fetched_state() {
    let (mut cluster, mut client) = lagging_cluster(0, 12);
    run_until_transferred(&mut cluster, &mut client, |_, _, _, _| {});
    cluster.crash(LAGGARD.0);
    cluster.restart(LAGGARD.0);
    cluster.advance(Duration::from_millis(300));
    assert_caught_up(&cluster);
}
