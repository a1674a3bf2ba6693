//! Paper-conformance tests of the core on an in-memory cluster
//! (Castro & Liskov, TOCS 2002; section numbers cited per test).

mod harness;

use harness::{get, put, Client, Cluster};
use pbft_app::kv::KvResult;
use pbft_core::message::{Batch, Commit, Message, PrePrepare, Prepare};
use pbft_core::{Record, ReplicaId, SeqNum, View};
use std::time::Duration;

fn submit(cluster: &mut Cluster, client: &mut Client, to: u32, op: pbft_app::kv::KvOp) -> u64 {
    let request = client.request(op);
    let id = request.request_id.0;
    cluster.deliver(ReplicaId(to), Message::Request(request));
    cluster.run();
    id
}

fn broadcast(cluster: &mut Cluster, client: &mut Client, op: pbft_app::kv::KvOp) -> u64 {
    let request = client.request(op);
    let id = request.request_id.0;
    for r in 0..cluster.config.n() as u32 {
        cluster.deliver(ReplicaId(r), Message::Request(request.clone()));
    }
    cluster.run();
    id
}

/// 4.2: a request sent to the primary executes at every replica, in order, and
/// f+1 (here all) replicas reply with the same result.
#[test]
fn normal_case_executes_everywhere() {
    for n in [4, 7, 10] {
        let mut cluster = Cluster::new(n);
        let mut client = Client::new(1, &cluster);
        let a = submit(&mut cluster, &mut client, 0, put("k", "v1"));
        let b = submit(&mut cluster, &mut client, 0, get("k"));
        assert_eq!(
            client.result(&cluster, a),
            Some(KvResult::Put { previous: None })
        );
        assert_eq!(
            client.result(&cluster, b),
            Some(KvResult::Get {
                value: Some(b"v1".to_vec())
            })
        );
        for r in 0..n as u32 {
            assert_eq!(
                cluster.replica(r).status().last_executed,
                SeqNum(2),
                "n={n} replica {r}"
            );
        }
        let digests: Vec<_> = (0..n as u32)
            .map(|r| cluster.replica(r).state_digest())
            .collect();
        assert!(digests.windows(2).all(|w| w[0] == w[1]));
        for r in 0..n as u32 {
            let timed = cluster
                .timed
                .get(&ReplicaId(r))
                .cloned()
                .unwrap_or_default();
            assert_eq!(
                timed.into_iter().collect::<Vec<_>>(),
                vec![SeqNum(1), SeqNum(2)],
                "n={n} replica {r}: every executed batch reports its phase times"
            );
        }
    }
}

/// The requests of one primary step share one batch: the primary proposes
/// when the driver ticks it at the end of the step, not per request.
#[test]
fn requests_of_one_step_share_a_batch() {
    let mut cluster = Cluster::new(4);
    let mut clients: Vec<Client> = (0..4).map(|i| Client::new(i, &cluster)).collect();
    for c in &mut clients {
        let request = c.request(put("k", "v"));
        cluster.deliver(ReplicaId(0), Message::Request(request));
    }
    assert!(cluster.queue.is_empty(), "nothing proposed before the tick");
    cluster.run();
    for r in 0..4 {
        assert_eq!(cluster.replica(r).status().last_executed, SeqNum(1));
    }
    assert_eq!(batch_sizes(&cluster, 0), vec![(SeqNum(1), 4)]);
}

/// With `in_flight_max` instances un-executed, requests wait and the next
/// batch takes all that queued meanwhile (batches grow with the load).
#[test]
fn batches_grow_while_instances_are_in_flight() {
    let (mut config, signers) = harness::config(4);
    config.in_flight_max = 1;
    let mut cluster = Cluster::with_config(config, signers);
    let mut clients: Vec<Client> = (0..4).map(|i| Client::new(i, &cluster)).collect();
    let first = clients[0].request(put("a", "1"));
    cluster.deliver(ReplicaId(0), Message::Request(first));
    cluster.tick(0);
    assert!(!cluster.queue.is_empty(), "the first request is proposed");
    for c in &mut clients[1..] {
        let request = c.request(put("b", "2"));
        cluster.deliver(ReplicaId(0), Message::Request(request));
    }
    cluster.tick(0);
    assert_eq!(
        batch_sizes(&cluster, 0),
        vec![(SeqNum(1), 1)],
        "one in flight"
    );
    cluster.run();
    assert_eq!(
        batch_sizes(&cluster, 0),
        vec![(SeqNum(1), 1), (SeqNum(2), 3)]
    );
    for r in 0..4 {
        assert_eq!(cluster.replica(r).status().last_executed, SeqNum(2));
    }
}

/// A batch stops at `batch_bytes_max` operation bytes (a larger request
/// still goes alone).
#[test]
fn batches_are_capped_in_bytes() {
    let (mut config, signers) = harness::config(4);
    config.batch_bytes_max = 100;
    let mut cluster = Cluster::with_config(config, signers);
    let mut clients: Vec<Client> = (0..3).map(|i| Client::new(i, &cluster)).collect();
    let big = "x".repeat(60);
    for c in &mut clients {
        let request = c.request(put("k", &big));
        cluster.deliver(ReplicaId(0), Message::Request(request));
    }
    cluster.run();
    let sizes: Vec<usize> = batch_sizes(&cluster, 0)
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    assert_eq!(sizes, vec![1, 1, 1]);
}

/// (seq, requests) of the batches replica `r` persisted pre-prepares for.
fn batch_sizes(cluster: &Cluster, r: usize) -> Vec<(SeqNum, usize)> {
    cluster.storage[r]
        .iter()
        .filter_map(|rec| match rec {
            Record::PrePrepare(pp, Some(batch)) => Some((pp.seq, batch.requests.len())),
            _ => None,
        })
        .collect()
}

/// 4.1: a retransmitted request is answered from the reply cache and not
/// executed again; an older request is ignored.
#[test]
fn exactly_once() {
    let mut cluster = Cluster::new(4);
    let mut client = Client::new(1, &cluster);
    let request = client.request(put("k", "v"));
    cluster.deliver(ReplicaId(0), Message::Request(request.clone()));
    cluster.run();
    let replies_before = cluster.replies[&client.id()].len();
    cluster.deliver(ReplicaId(0), Message::Request(request.clone()));
    cluster.deliver(ReplicaId(1), Message::Request(request));
    cluster.run();
    assert_eq!(
        cluster.replica(0).status().last_executed,
        SeqNum(1),
        "not executed twice"
    );
    assert_eq!(
        cluster.replies[&client.id()].len(),
        replies_before + 2,
        "cached replies re-sent"
    );
}

/// 4.3: checkpoints become stable with 2f+1 matching messages, every K
/// sequence numbers, at every replica.
#[test]
fn checkpoints_become_stable() {
    let mut cluster = Cluster::new(4);
    let mut client = Client::new(1, &cluster);
    for i in 0..10 {
        let id = submit(&mut cluster, &mut client, 0, put("k", &format!("v{i}")));
        assert!(
            client.result(&cluster, id).is_some(),
            "request {i} completed"
        );
    }
    for r in 0..4 {
        let s = cluster.replica(r).status();
        assert_eq!(s.last_executed, SeqNum(10));
        assert_eq!(s.stable_checkpoint, SeqNum(8), "K=4: stable at 8");
    }
}

/// 4.4: a silent primary is replaced after the view-change timeout, and the
/// waiting request executes in the new view.
#[test]
fn silent_primary_is_replaced() {
    for n in [4, 7] {
        let mut cluster = Cluster::new(n);
        let mut client = Client::new(1, &cluster);
        let warmup = submit(&mut cluster, &mut client, 0, put("a", "1"));
        assert!(client.result(&cluster, warmup).is_some());
        cluster.silent.insert(ReplicaId(0));
        let id = broadcast(&mut cluster, &mut client, put("b", "2"));
        assert!(
            client.result(&cluster, id).is_none(),
            "cannot complete without the primary"
        );
        cluster.advance(Duration::from_millis(500));
        assert_eq!(
            client.result(&cluster, id),
            Some(KvResult::Put { previous: None }),
            "n={n}"
        );
        for r in 1..n as u32 {
            let s = cluster.replica(r).status();
            assert_eq!(s.view, View(1), "n={n}");
            assert!(s.active);
        }
    }
}

/// 4.4: a request prepared (but not executed everywhere) before a view change
/// keeps its sequence number in the new view.
#[test]
fn prepared_requests_survive_view_change() {
    let mut cluster = Cluster::new(4);
    let mut client = Client::new(1, &cluster);
    // Replica 3 misses everything: it will need the new view to learn seq 1.
    cluster.isolated.insert(ReplicaId(3));
    let id = submit(&mut cluster, &mut client, 0, put("k", "v"));
    assert!(client.result(&cluster, id).is_some());
    cluster.isolated.clear();
    cluster.silent.insert(ReplicaId(0));
    let id2 = broadcast(&mut cluster, &mut client, put("k", "w"));
    cluster.advance(Duration::from_millis(500));
    assert_eq!(
        client.result(&cluster, id2),
        Some(KvResult::Put {
            previous: Some(b"v".to_vec())
        })
    );
    // Replica 3 executed seq 1 with the same batch as the others.
    let ex = &cluster.executed;
    assert_eq!(ex[&ReplicaId(3)][&SeqNum(1)], ex[&ReplicaId(1)][&SeqNum(1)]);
}

/// A cluster of four whose batches may hold 64 requests and 4 MiB, and a
/// value of nearly the largest size a put takes (about 64 KiB).
fn cluster_for_large_batches() -> (Cluster, String) {
    let (mut config, signers) = harness::config(4);
    config.batch_size_max = 64;
    config.batch_bytes_max = 4 << 20;
    let cluster = Cluster::with_config(config, signers);
    (cluster, "v".repeat(pbft_app::kv::MAX_VALUE_LEN - 64))
}

/// A NEW-VIEW carries re-issued batches only up to `NEW_VIEW_BATCH_BYTES`, so
/// that under load it still fits in a frame; a replica that lacks the others
/// fetches them and executes the same batches as everyone else.
#[test]
fn a_new_view_carries_part_of_its_batches_and_the_rest_are_fetched() {
    let (mut cluster, value) = cluster_for_large_batches();
    cluster.isolated.insert(ReplicaId(3));
    let mut number = 0u16;
    for _ in 0..3 {
        // One batch of 30 requests of about 64 KiB each: about 1.9 MiB.
        for _ in 0..30 {
            number += 1;
            let mut client = Client::numbered(number, &cluster);
            let request = client.request(put(&format!("k{number}"), &value));
            cluster.deliver(ReplicaId(0), Message::Request(request));
        }
        cluster.run();
    }
    assert_eq!(cluster.executed[&ReplicaId(1)].len(), 3, "three batches");
    cluster.isolated.clear();
    cluster.silent.insert(ReplicaId(0));
    let mut trigger = Client::numbered(1000, &cluster);
    broadcast(&mut cluster, &mut trigger, put("k", "w"));
    cluster.advance(Duration::from_millis(500));

    let &(_, reissued, carried, bytes) = cluster
        .new_views
        .iter()
        .find(|nv| nv.0 == ReplicaId(1))
        .expect("replica 1 sent the NEW-VIEW of view 1");
    assert!(reissued >= 3, "{reissued} re-issued pre-prepares");
    assert!(
        carried < 3 && bytes <= pbft_core::view_change::NEW_VIEW_BATCH_BYTES,
        "the NEW-VIEW carried {carried} batches, {bytes} bytes"
    );
    // Replica 3 had none of them: it fetched what the NEW-VIEW did not carry.
    let ex = &cluster.executed;
    for seq in 1..=3 {
        assert_eq!(
            ex[&ReplicaId(3)].get(&SeqNum(seq)),
            ex[&ReplicaId(1)].get(&SeqNum(seq)),
            "seq {seq}"
        );
    }
}

/// FETCH-BATCH answers come out of the asking peer's serving budget (shared
/// with state transfer), so a faulty replica that asks for one large batch
/// over and over gets at most that budget per retry interval.
#[test]
fn batch_requests_are_answered_within_the_peers_budget() {
    let (mut cluster, value) = cluster_for_large_batches();
    for number in 0..30 {
        let mut client = Client::numbered(number, &cluster);
        let request = client.request(put(&format!("k{number}"), &value));
        cluster.deliver(ReplicaId(0), Message::Request(request));
    }
    cluster.run();
    let digest = cluster.executed[&ReplicaId(1)][&SeqNum(1)];
    let fetch = cluster.signers[3].sign(pbft_core::message::FetchBatch {
        digest,
        replica: ReplicaId(3),
    });
    let ask = |cluster: &mut Cluster, times: usize| {
        cluster.queue.clear();
        for _ in 0..times {
            cluster.deliver(ReplicaId(1), Message::FetchBatch(fetch.clone()));
        }
        let answers: Vec<usize> = cluster
            .queue
            .iter()
            .filter_map(|(_, _, m)| match m {
                Message::BatchData(d) => Some(d.batch.wire_bytes()),
                _ => None,
            })
            .collect();
        cluster.queue.clear();
        answers
    };
    let answers = ask(&mut cluster, 100);
    let (count, bytes) = (answers.len(), answers.iter().sum::<usize>());
    assert!(
        count > 1 && count < 100 && bytes <= pbft_core::checkpoint::SERVE_BYTES_PER_INTERVAL,
        "{count} answers, {bytes} bytes"
    );
    assert_eq!(
        cluster
            .replica(1)
            .dropped()
            .get("batch request over the peer's budget"),
        Some(&(100 - count as u64))
    );
    // The budget renews with the next retry interval.
    cluster.now = cluster.now + cluster.config.timeout_base;
    assert_eq!(ask(&mut cluster, 1).len(), 1);
}

/// Messages for a view not yet entered are held back, within a per-sender
/// budget in bytes as well as count: a faulty primary of a future view
/// cannot make a backup hold gigabytes of batches for it, and a pre-prepare
/// that its view's primary did not sign is not held at all.
#[test]
fn messages_for_future_views_are_held_within_a_per_sender_budget() {
    let mut cluster = Cluster::new(4);
    let value = "v".repeat(pbft_app::kv::MAX_VALUE_LEN - 64);
    let batch = Batch {
        requests: (0..30)
            .map(|n| Client::numbered(n, &cluster).request(put(&format!("k{n}"), &value)))
            .collect(),
    };
    let pre_prepare = |cluster: &Cluster, by: u32, seq: u64| {
        let pp = cluster.signers[by as usize].sign(PrePrepare {
            view: View(5),
            seq: SeqNum(seq),
            digest: batch.digest(),
            replica: ReplicaId(by),
        });
        Message::PrePrepare(pp, batch.clone())
    };
    let dropped = |cluster: &Cluster, reason: &str| {
        cluster
            .replica(2)
            .dropped()
            .get(reason)
            .copied()
            .unwrap_or(0)
    };
    // Replica 3 is not the primary of view 5 (replica 1 is).
    cluster.deliver(ReplicaId(2), pre_prepare(&cluster, 3, 1));
    assert_eq!(
        dropped(&cluster, "pre-prepare not from the view's primary"),
        1
    );
    // About 1.9 MiB each: replica 1's share of the budget holds a few only.
    for seq in 1..=100 {
        cluster.deliver(ReplicaId(2), pre_prepare(&cluster, 1, seq));
    }
    let full = dropped(&cluster, "deferred buffer full");
    assert!((50..100).contains(&full), "{full} of 100 refused");
    // Other senders keep their own share.
    let prepare = cluster.signers[3].sign(Prepare {
        view: View(5),
        seq: SeqNum(1),
        digest: batch.digest(),
        replica: ReplicaId(3),
    });
    cluster.deliver(ReplicaId(2), Message::Prepare(prepare));
    assert_eq!(dropped(&cluster, "deferred buffer full"), full);
}

/// A status report's digest is the state's root (what a checkpoint there
/// would certify), taken at most once per retry interval: in between it
/// repeats the last (last executed, digest) pair, which stays consistent.
#[test]
fn status_reports_hash_the_state_at_most_once_per_retry_interval() {
    let mut cluster = Cluster::new(4);
    let mut client = Client::new(1, &cluster);
    let asker = Client::new(2, &cluster);
    let status = |cluster: &mut Cluster, nonce: u64| {
        let request = asker.signer.sign(pbft_core::message::StatusRequest {
            client: asker.id(),
            nonce,
        });
        cluster.deliver(ReplicaId(1), Message::StatusRequest(request));
        let (_, report) = cluster.statuses.pop().expect("a report");
        (report.last_executed, report.state_digest)
    };
    submit(&mut cluster, &mut client, 0, put("a", "1"));
    let first = status(&mut cluster, 1);
    assert_eq!(first, (SeqNum(1), cluster.replica_mut(1).state_root()));
    submit(&mut cluster, &mut client, 0, put("b", "2"));
    assert_eq!(
        status(&mut cluster, 2),
        first,
        "within the interval: the last pair"
    );
    cluster.now = cluster.now + cluster.config.timeout_base / 2;
    assert_eq!(
        status(&mut cluster, 3),
        (SeqNum(2), cluster.replica_mut(1).state_root()),
        "a retry interval later: current"
    );
    assert_ne!(first.1, cluster.replica_mut(1).state_root());
    // At a checkpoint the root is the digest the checkpoint certified.
    for key in ["c", "d"] {
        submit(&mut cluster, &mut client, 0, put(key, "3"));
    }
    let (seq, digest) = cluster.storage[1]
        .iter()
        .rev()
        .find_map(|r| match r {
            Record::Stable(p) => Some((p.seq, p.digest)),
            _ => None,
        })
        .expect("a stable checkpoint");
    assert_eq!(seq, SeqNum(4));
    assert_eq!(cluster.replica_mut(1).state_root(), digest);
}

/// 4.2: a backup never accepts two pre-prepares with different digests for
/// one (view, seq).
#[test]
fn equivocating_pre_prepare_is_rejected() {
    let mut cluster = Cluster::new(4);
    let mut client = Client::new(1, &cluster);
    let r1 = client.request(put("k", "one"));
    let r2 = client.request(put("k", "two"));
    let primary = cluster.signers[0].clone();
    let b1 = Batch { requests: vec![r1] };
    let b2 = Batch { requests: vec![r2] };
    let pp = |b: &Batch| {
        primary.sign(PrePrepare {
            view: View(0),
            seq: SeqNum(1),
            digest: b.digest(),
            replica: ReplicaId(0),
        })
    };
    cluster.deliver(ReplicaId(1), Message::PrePrepare(pp(&b1), b1.clone()));
    cluster.queue.clear();
    cluster.deliver(ReplicaId(1), Message::PrePrepare(pp(&b2), b2.clone()));
    assert!(
        cluster.queue.is_empty(),
        "no prepare for the second pre-prepare"
    );
    assert_eq!(
        cluster.replica(1).dropped().get("conflicting pre-prepare"),
        Some(&1)
    );
}

/// 4.2: prepared(m, v, n, i) needs the pre-prepare and 2f matching prepares
/// from distinct backups; committed-local needs 2f+1 matching commits (with
/// f+1, a replica could execute a batch only it and the faulty ones
/// prepared, which the next view would then replace).
#[test]
fn quorums_for_prepared_and_committed_local() {
    for n in [4, 7, 10] {
        let mut cluster = Cluster::new(n);
        let f = cluster.config.f();
        let mut client = Client::new(1, &cluster);
        let batch = Batch {
            requests: vec![client.request(put("k", "v"))],
        };
        let (view, seq, digest) = (View(0), SeqNum(1), batch.digest());
        let me = ReplicaId(1);
        let pp = cluster.signers[0].sign(PrePrepare {
            view,
            seq,
            digest,
            replica: ReplicaId(0),
        });
        cluster.deliver(me, Message::PrePrepare(pp, batch));
        let sends_commit = |cluster: &Cluster| {
            cluster
                .queue
                .iter()
                .any(|(from, _, m)| *from == me && matches!(m, Message::Commit(_)))
        };
        // Its own prepare and 2f-1 others: not prepared yet; the 2f-th prepares it.
        let others: Vec<u32> = (2..n as u32).collect();
        for (k, &r) in others[..2 * f - 1].iter().enumerate() {
            assert!(
                !sends_commit(&cluster),
                "n={n}: prepared with {} prepares",
                k + 1
            );
            let prepare = cluster.signers[r as usize].sign(Prepare {
                view,
                seq,
                digest,
                replica: ReplicaId(r),
            });
            cluster.deliver(me, Message::Prepare(prepare));
        }
        assert!(
            sends_commit(&cluster),
            "n={n}: not prepared with 2f prepares"
        );
        // Its own commit and 2f others: executed only at the last one.
        for (k, &r) in others[..2 * f].iter().enumerate() {
            assert_eq!(
                cluster.replica(me.0).status().last_executed,
                SeqNum(0),
                "n={n}: executed with {} commits",
                k + 1
            );
            let commit = cluster.signers[r as usize].sign(Commit {
                view,
                seq,
                digest,
                replica: ReplicaId(r),
            });
            cluster.deliver(me, Message::Commit(commit));
        }
        assert_eq!(
            cluster.replica(me.0).status().last_executed,
            seq,
            "n={n}: not executed with 2f+1 commits"
        );
    }
}

/// 4.2: a pre-prepare whose batch does not match its digest, or from a
/// replica that is not the primary, or beyond the high water mark, is dropped.
#[test]
fn pre_prepare_filters() {
    let mut cluster = Cluster::new(4);
    let mut client = Client::new(1, &cluster);
    let b = Batch {
        requests: vec![client.request(put("k", "v"))],
    };
    let other = Batch::default();
    let sign = |signer: usize, seq: u64, digest| {
        cluster.signers[signer].sign(PrePrepare {
            view: View(0),
            seq: SeqNum(seq),
            digest,
            replica: ReplicaId(signer as u32),
        })
    };
    let cases = vec![
        (
            Message::PrePrepare(sign(0, 1, other.digest()), b.clone()),
            "pre-prepare batch does not match its digest",
        ),
        (
            Message::PrePrepare(sign(2, 1, b.digest()), b.clone()),
            "pre-prepare not from the primary",
        ),
        (
            Message::PrePrepare(sign(0, 9, b.digest()), b.clone()),
            "pre-prepare outside the water marks",
        ),
    ];
    for (message, reason) in cases {
        cluster.deliver(ReplicaId(1), message);
        assert!(cluster.queue.is_empty(), "{reason}");
        assert_eq!(
            cluster.replica(1).dropped().get(reason),
            Some(&1),
            "{reason}"
        );
    }
}

/// 5.3.2: a replica cut off while the others move past a stable checkpoint
/// catches up by state transfer.
#[test]
fn lagging_replica_catches_up_by_state_transfer() {
    let mut cluster = Cluster::new(4);
    let mut client = Client::new(1, &cluster);
    cluster.isolated.insert(ReplicaId(3));
    for i in 0..9 {
        let id = submit(&mut cluster, &mut client, 0, put(&format!("k{i}"), "v"));
        assert!(client.result(&cluster, id).is_some());
    }
    assert_eq!(cluster.replica(3).status().last_executed, SeqNum(0));
    cluster.isolated.clear();
    // Four more requests: the checkpoint at 12 becomes stable everywhere.
    for i in 9..13 {
        submit(&mut cluster, &mut client, 0, put(&format!("k{i}"), "v"));
    }
    cluster.advance(Duration::from_millis(200));
    let s3 = cluster.replica(3).status();
    let s0 = cluster.replica(0).status();
    assert!(s3.last_executed >= SeqNum(12), "caught up: {s3:?}");
    assert_eq!(s3.last_executed, s0.last_executed);
    assert_eq!(
        cluster.replica(3).state_digest(),
        cluster.replica(0).state_digest()
    );
}

/// Section 3 of ARCHITECTURE.md: a crashed replica restarts from what it
/// persisted and rejoins.
#[test]
fn restart_from_persisted_records() {
    let mut cluster = Cluster::new(4);
    let mut client = Client::new(1, &cluster);
    for i in 0..5 {
        submit(&mut cluster, &mut client, 0, put(&format!("k{i}"), "v"));
    }
    cluster.crash(2);
    cluster.restart(2);
    let s = cluster.replica(2).status();
    assert_eq!(s.stable_checkpoint, SeqNum(4));
    assert_eq!(s.last_executed, SeqNum(4));
    for i in 5..14 {
        let id = submit(&mut cluster, &mut client, 0, put(&format!("k{i}"), "v"));
        assert!(client.result(&cluster, id).is_some());
    }
    cluster.advance(Duration::from_millis(200));
    assert_eq!(
        cluster.replica(2).state_digest(),
        cluster.replica(0).state_digest()
    );
}

/// A restarted primary never reuses a sequence number: it may have sent
/// PRE-PREPAREs ahead of records the crash lost (io.rs, votes ahead of their
/// records), so it proposes nothing more in the view it comes back in; the
/// backups replace it, and in the next view it votes again.
#[test]
fn restarted_primary_does_not_reuse_sequence_numbers() {
    let mut cluster = Cluster::new(4);
    let mut client = Client::new(1, &cluster);
    for i in 0..3 {
        submit(&mut cluster, &mut client, 0, put(&format!("k{i}"), "v"));
    }
    cluster.crash(0);
    cluster.restart(0);
    let id = broadcast(&mut cluster, &mut client, put("x", "y"));
    assert!(
        client.result(&cluster, id).is_none(),
        "the restarted primary pre-prepares nothing in its view"
    );
    cluster.advance(Duration::from_millis(2000));
    assert_eq!(
        client.result(&cluster, id),
        Some(KvResult::Put { previous: None })
    );
    for r in 0..4 {
        let s = cluster.replica(r).status();
        assert_eq!((s.view, s.last_executed), (View(1), SeqNum(4)), "r{r}");
    }
    // In view 1 the restarted replica prepares again: with replica 2 silent,
    // the new primary needs its PREPARE.
    cluster.silent.insert(ReplicaId(2));
    let id = submit(&mut cluster, &mut client, 1, put("z", "w"));
    assert!(client.result(&cluster, id).is_some());
}

/// A backup restored from a non-empty log sends no PREPARE in the view it
/// comes back in, up to its stable checkpoint plus L (it may have sent one
/// there ahead of a record the crash lost); it still accepts and logs the
/// pre-prepare. On a fresh start it prepares as usual.
#[test]
fn restored_backup_sends_no_prepare_where_it_may_have_sent_one() {
    let mut cluster = Cluster::new(4);
    let mut client = Client::new(1, &cluster);
    submit(&mut cluster, &mut client, 0, put("a", "1"));
    let primary = cluster.signers[0].clone();
    let pre_prepare = |client: &mut Client, seq: u64| {
        let batch = Batch {
            requests: vec![client.request(put("k", &seq.to_string()))],
        };
        let pp = primary.sign(PrePrepare {
            view: View(0),
            seq: SeqNum(seq),
            digest: batch.digest(),
            replica: ReplicaId(0),
        });
        Message::PrePrepare(pp, batch)
    };
    let prepares_from_1 = |cluster: &Cluster| {
        cluster
            .queue
            .iter()
            .filter(|(from, _, m)| *from == ReplicaId(1) && matches!(m, Message::Prepare(_)))
            .count()
    };
    // Before the crash, replica 1 prepares.
    cluster.deliver(ReplicaId(1), pre_prepare(&mut client, 2));
    assert_eq!(prepares_from_1(&cluster), 3);
    cluster.queue.clear();
    cluster.crash(1);
    cluster.restart(1);
    cluster.queue.clear();
    cluster.deliver(ReplicaId(1), pre_prepare(&mut client, 3));
    assert_eq!(prepares_from_1(&cluster), 0, "no PREPARE in its window");
    assert!(
        cluster.storage[1]
            .iter()
            .any(|r| matches!(r, Record::PrePrepare(pp, Some(_)) if pp.seq == SeqNum(3))),
        "the pre-prepare and its batch are still logged"
    );
    // A fresh replica (no records) prepares at once.
    cluster.storage[1].clear();
    cluster.restart(1);
    cluster.queue.clear();
    cluster.deliver(ReplicaId(1), pre_prepare(&mut client, 3));
    assert_eq!(prepares_from_1(&cluster), 3);
}

/// Compacted records restore the same replica as the full ones: same view,
/// window, state and state digest; and compaction never lowers the
/// `Executed` floor, even when a lower `Executed` was written last (after
/// a restart, a replica re-executes from its checkpoint).
#[test]
fn compacted_records_restore_the_same_replica() {
    let mut cluster = Cluster::new(4);
    let mut client = Client::new(1, &cluster);
    for i in 0..11 {
        submit(&mut cluster, &mut client, 0, put(&format!("k{i}"), "v"));
    }
    let mut full = cluster.storage[1].clone();
    let highest = full
        .iter()
        .filter_map(|r| match r {
            Record::Executed(s) => Some(*s),
            _ => None,
        })
        .max();
    assert_eq!(highest, Some(SeqNum(11)));
    full.push(Record::Executed(SeqNum(9)));
    let mut compacted = full.clone();
    pbft_core::io::compact(&mut compacted);
    assert!(compacted.len() < full.len());
    assert!(compacted
        .iter()
        .all(|r| r.seq().is_none_or(|s| s >= SeqNum(8))));
    let executed: Vec<SeqNum> = compacted
        .iter()
        .filter_map(|r| match r {
            Record::Executed(s) => Some(*s),
            _ => None,
        })
        .collect();
    assert_eq!(
        executed,
        vec![SeqNum(11)],
        "the highest Executed survives compaction"
    );
    let restored = |records: Vec<Record>, cluster: &mut Cluster| {
        cluster.crash(1);
        cluster.storage[1] = records;
        cluster.restart(1);
        cluster.replica(1).status()
    };
    let from_full = restored(full, &mut cluster);
    let from_compacted = restored(compacted, &mut cluster);
    assert_eq!(from_full, from_compacted);
    assert_eq!(
        (from_full.stable_checkpoint, from_full.last_executed),
        (SeqNum(8), SeqNum(8))
    );
}

/// 4.4: NEW-VIEW contents. min-s is the highest checkpoint in V; for each n
/// in (min-s, max-s] the digest of the certificate with the highest view is
/// re-issued, and gaps get the null request.
#[test]
fn new_view_plan_picks_highest_view_and_fills_gaps() {
    use pbft_core::message::{CheckpointProof, Prepare, PreparedProof, ViewChange};
    use pbft_core::view_change::plan_new_view;
    use pbft_crypto::Digest;
    let cluster = Cluster::new(4);
    let s = &cluster.signers;
    let cert = |view: u64, seq: u64, digest: Digest| {
        let primary = (view % 4) as usize;
        let pre_prepare = s[primary].sign(PrePrepare {
            view: View(view),
            seq: SeqNum(seq),
            digest,
            replica: ReplicaId(primary as u32),
        });
        let prepares = (0..4)
            .filter(|r| *r != primary)
            .take(2)
            .map(|r| {
                s[r].sign(Prepare {
                    view: View(view),
                    seq: SeqNum(seq),
                    digest,
                    replica: ReplicaId(r as u32),
                })
            })
            .collect();
        PreparedProof {
            pre_prepare,
            prepares,
        }
    };
    let checkpoint = |seq: u64| CheckpointProof {
        seq: SeqNum(seq),
        digest: Digest::of(&[seq as u8]),
        checkpoints: vec![],
    };
    let (a, b, c) = (Digest::of(b"a"), Digest::of(b"b"), Digest::of(b"c"));
    let vc = |replica: usize, ckpt: u64, prepared: Vec<PreparedProof>| {
        s[replica].sign(ViewChange {
            new_view: View(5),
            checkpoint: checkpoint(ckpt),
            prepared,
            replica: ReplicaId(replica as u32),
        })
    };
    let v = vec![
        vc(0, 0, vec![cert(1, 1, a), cert(1, 2, a), cert(2, 5, c)]),
        vc(1, 4, vec![cert(3, 5, b)]),
        vc(2, 0, vec![cert(2, 3, c)]),
    ];
    let plan = plan_new_view(&v).expect("non-empty");
    assert_eq!(
        plan.checkpoint.seq,
        SeqNum(4),
        "min-s is the highest checkpoint"
    );
    assert_eq!(
        plan.pre_prepares,
        vec![(SeqNum(5), b)],
        "n <= min-s dropped; for n = 5 the view-3 certificate wins over view 2"
    );
    let v = vec![
        vc(0, 0, vec![cert(1, 1, a), cert(1, 3, a)]),
        vc(1, 0, vec![]),
        vc(2, 0, vec![]),
    ];
    let plan = plan_new_view(&v).expect("non-empty");
    let null = Batch::null_digest();
    assert_eq!(
        plan.pre_prepares,
        vec![(SeqNum(1), a), (SeqNum(2), null), (SeqNum(3), a)],
        "the gap at 2 gets the null request"
    );
}

fn genesis_proof() -> pbft_core::message::CheckpointProof {
    let image = pbft_core::checkpoint::StateImage::build(
        &mut pbft_app::kv::KvStore::new(),
        &mut Default::default(),
    );
    pbft_core::message::CheckpointProof {
        seq: SeqNum(0),
        digest: image.digest(),
        checkpoints: vec![],
    }
}

/// 4.4: every backup recomputes O from V and rejects a NEW-VIEW whose
/// pre-prepares differ; a VIEW-CHANGE with an incomplete prepared certificate
/// invalidates the NEW-VIEW that carries it.
#[test]
fn new_view_is_checked_by_every_backup() {
    use pbft_core::message::{NewView, Prepare, PreparedProof, ViewChange};
    let mut cluster = Cluster::new(4);
    let s = cluster.signers.clone();
    let vc = |r: usize, prepared: Vec<PreparedProof>| {
        s[r].sign(ViewChange {
            new_view: View(1),
            checkpoint: genesis_proof(),
            prepared,
            replica: ReplicaId(r as u32),
        })
    };
    let pp = |seq: u64, digest| {
        s[1].sign(PrePrepare {
            view: View(1),
            seq: SeqNum(seq),
            digest,
            replica: ReplicaId(1),
        })
    };
    let new_view = |vcs, pre_prepares| {
        Message::NewView(
            s[1].sign(NewView {
                view: View(1),
                view_changes: vcs,
                pre_prepares,
                replica: ReplicaId(1),
            }),
            vec![],
        )
    };
    // O claims a request at seq 1 that no view change prepared.
    let bogus = pp(1, pbft_crypto::Digest::of(b"bogus"));
    cluster.deliver(
        ReplicaId(2),
        new_view(
            vec![vc(0, vec![]), vc(1, vec![]), vc(3, vec![])],
            vec![bogus],
        ),
    );
    assert_eq!(
        cluster
            .replica(2)
            .dropped()
            .get("new-view with wrong pre-prepares"),
        Some(&1)
    );
    assert_eq!(cluster.replica(2).status().view, View(0));

    // A certificate with one prepare instead of 2f.
    let d = pbft_crypto::Digest::of(b"d");
    let forged = PreparedProof {
        pre_prepare: s[0].sign(PrePrepare {
            view: View(0),
            seq: SeqNum(1),
            digest: d,
            replica: ReplicaId(0),
        }),
        prepares: vec![s[3].sign(Prepare {
            view: View(0),
            seq: SeqNum(1),
            digest: d,
            replica: ReplicaId(3),
        })],
    };
    cluster.deliver(
        ReplicaId(2),
        new_view(
            vec![vc(0, vec![]), vc(1, vec![]), vc(3, vec![forged])],
            vec![pp(1, d)],
        ),
    );
    assert_eq!(
        cluster
            .replica(2)
            .dropped()
            .get("new-view with an invalid view-change"),
        Some(&1)
    );

    // Only two view changes: not a quorum.
    cluster.deliver(
        ReplicaId(2),
        new_view(vec![vc(0, vec![]), vc(3, vec![])], vec![]),
    );
    assert_eq!(
        cluster
            .replica(2)
            .dropped()
            .get("new-view without 2f+1 view-changes"),
        Some(&1)
    );

    // The correct one is accepted.
    cluster.deliver(
        ReplicaId(2),
        new_view(vec![vc(0, vec![]), vc(1, vec![]), vc(3, vec![])], vec![]),
    );
    let status = cluster.replica(2).status();
    assert_eq!((status.view, status.active), (View(1), true));
}

/// 4.5.2: a replica that holds f+1 VIEW-CHANGEs for higher views joins the
/// view change even though its own timer has not expired; f of them are not enough.
#[test]
fn f_plus_one_view_changes_pull_a_replica_along() {
    use pbft_core::message::ViewChange;
    let mut cluster = Cluster::new(4);
    let s = cluster.signers.clone();
    let vc = |r: usize, view: u64| {
        Message::ViewChange(s[r].sign(ViewChange {
            new_view: View(view),
            checkpoint: genesis_proof(),
            prepared: vec![],
            replica: ReplicaId(r as u32),
        }))
    };
    cluster.deliver(ReplicaId(2), vc(0, 3));
    assert_eq!(
        cluster.replica(2).status().view,
        View(0),
        "f = 1 message is not enough"
    );
    cluster.deliver(ReplicaId(2), vc(3, 2));
    let status = cluster.replica(2).status();
    assert_eq!(
        (status.view, status.active),
        (View(2), false),
        "joins the lower of the two"
    );
}

/// A replica restarted from an older checkpoint does not answer read-only
/// requests until it is back where it had been (it had confirmed writes that
/// its restored state lacks). In a cluster whose read mode is `fast`: others
/// refuse read-only requests altogether (`tests/read_mode.rs`).
#[test]
fn restarted_replica_answers_reads_only_after_catching_up() {
    let (mut config, signers) = harness::config(4);
    config.read_mode = pbft_core::ReadMode::Fast;
    let mut cluster = Cluster::with_config(config, signers);
    let mut client = Client::new(1, &cluster);
    for i in 0..5 {
        submit(&mut cluster, &mut client, 0, put(&format!("k{i}"), "v"));
    }
    cluster.crash(2);
    cluster.restart(2);
    assert_eq!(cluster.replica(2).status().last_executed, SeqNum(4));
    let mut read = client.request(get("k4"));
    read.value.read_only = true;
    let read = client.signer.sign(read.value);
    cluster.deliver(ReplicaId(2), Message::Request(read.clone()));
    assert_eq!(
        cluster
            .replica(2)
            .dropped()
            .get("read-only request before catching up after a restart"),
        Some(&1)
    );
    assert!(cluster.queue.is_empty(), "no answer from the stale state");
    for i in 5..9 {
        submit(&mut cluster, &mut client, 0, put(&format!("k{i}"), "v"));
    }
    cluster.advance(Duration::from_millis(200));
    assert!(cluster.replica(2).status().last_executed >= SeqNum(5));
    cluster.deliver(ReplicaId(2), Message::Request(read));
    assert_eq!(cluster.queue.len(), 1, "answered once caught up");
}

/// 5.2 (status and retransmission): answers to a peer's PROGRESS are
/// rate-limited, so a faulty peer cannot make a replica send without bound,
/// but not so tightly that an honest peer's next PROGRESS (one retry
/// interval later on its own, drifting clock, plus network jitter) can be
/// refused: that left a peer without an answer for two intervals, long
/// enough for its request timers to force a group view change
/// (`laggard` f=1 seed 20023).
#[test]
fn progress_is_answered_at_most_twice_per_retry_interval() {
    use harness::To;
    use pbft_core::message::Progress;
    let mut cluster = Cluster::new(4);
    let mut client = Client::new(1, &cluster);
    for i in 0..3 {
        submit(&mut cluster, &mut client, 0, put(&format!("k{i}"), "v"));
    }
    cluster.queue.clear();
    let retry = cluster.config.timeout_base / 2;
    let progress = cluster.signers[3].sign(Progress {
        view: View(0),
        active: true,
        stable: SeqNum(0),
        last_executed: SeqNum(0),
        replica: ReplicaId(3),
    });
    let answers = |cluster: &mut Cluster| {
        let sent = cluster
            .queue
            .iter()
            .filter(|(from, to, _)| {
                *from == ReplicaId(0) && matches!(to, To::Replica(r) if *r == ReplicaId(3))
            })
            .count();
        cluster.queue.clear();
        sent
    };
    let refused = |cluster: &Cluster| {
        cluster
            .replica(0)
            .dropped()
            .get("progress answered too recently")
            .copied()
            .unwrap_or(0)
    };
    cluster.deliver(ReplicaId(0), Message::Progress(progress.clone()));
    assert!(answers(&mut cluster) > 0, "the first PROGRESS is answered");
    cluster.now = cluster.now + retry / 4;
    cluster.deliver(ReplicaId(0), Message::Progress(progress.clone()));
    assert_eq!(
        answers(&mut cluster),
        0,
        "a quarter interval later: refused"
    );
    assert_eq!(refused(&cluster), 1);
    cluster.now = cluster.now + (retry * 3 / 4 - retry / 10);
    cluster.deliver(ReplicaId(0), Message::Progress(progress));
    assert!(
        answers(&mut cluster) > 0,
        "a PROGRESS a little less than one interval after the first is answered"
    );
    assert_eq!(refused(&cluster), 1);
}

/// A request a backup saw only relayed by another replica starts no
/// view-change deadline there (a faulty replica relaying requests of clients
/// it made up, faster than any primary orders them, forced view change after
/// view change: `byz-flood` f=3 seed 20018); the client's own copy does.
#[test]
fn a_relayed_request_starts_no_view_change_deadline() {
    let mut cluster = Cluster::new(4);
    let mut client = Client::new(1, &cluster);
    cluster.silent.insert(ReplicaId(0));
    let request = client.request(put("a", "1"));
    cluster.relay(
        ReplicaId(1),
        ReplicaId(2),
        Message::Request(request.clone()),
    );
    cluster.advance(Duration::from_millis(1000));
    assert_eq!(cluster.replica(1).status().view, View(0), "no deadline ran");
    assert_eq!(cluster.replica(1).status().pending_requests, 1);
    cluster.deliver(ReplicaId(1), Message::Request(request));
    cluster.advance(Duration::from_millis(1000));
    assert!(
        cluster.replica(1).status().view > View(0) || !cluster.replica(1).status().active,
        "the client's own copy starts the deadline: the backup moves to replace the primary"
    );
}

/// A full pending table makes room for a request from its client's own link
/// by dropping one that another replica relayed; relayed requests find no
/// room. So a faulty replica relaying requests from made-up clients cannot
/// lock real clients out.
#[test]
fn a_direct_request_evicts_a_relayed_one_from_a_full_pending_table() {
    let (mut config, signers) = harness::config(4);
    config.pending_requests_max = 3;
    let mut cluster = Cluster::with_config(config, signers);
    cluster.silent.insert(ReplicaId(0));
    let dropped = |cluster: &Cluster, reason: &str| {
        cluster
            .replica(1)
            .dropped()
            .get(reason)
            .copied()
            .unwrap_or(0)
    };
    for n in 0..4 {
        let request = Client::numbered(n, &cluster).request(put("k", "v"));
        cluster.relay(ReplicaId(1), ReplicaId(3), Message::Request(request));
    }
    assert_eq!(cluster.replica(1).status().pending_requests, 3);
    assert_eq!(dropped(&cluster, "too many pending requests"), 1);
    let mut real = Client::numbered(100, &cluster);
    cluster.deliver(ReplicaId(1), Message::Request(real.request(put("k", "w"))));
    assert_eq!(cluster.replica(1).status().pending_requests, 3);
    assert_eq!(
        dropped(&cluster, "relayed request evicted for a direct one"),
        1
    );
    assert_eq!(dropped(&cluster, "too many pending requests"), 1);
    // The direct request waits with a deadline: the silent primary is replaced.
    cluster.advance(Duration::from_millis(1000));
    let status = cluster.replica(1).status();
    assert!(status.view > View(0) || !status.active, "{status:?}");
}

/// A primary orders requests that came on their clients' own links before
/// relayed ones, and relayed ones taking turns between the relaying
/// replicas: one relaying a flood gets no more room than an honest one.
#[test]
fn a_primary_orders_direct_requests_first_then_relays_in_turn() {
    let (mut config, signers) = harness::config(4);
    config.batch_size_max = 1;
    config.in_flight_max = 1;
    let mut cluster = Cluster::with_config(config, signers);
    let mut clients: Vec<Client> = (1..=5).map(|i| Client::new(i, &cluster)).collect();
    let requests: Vec<_> = clients
        .iter_mut()
        .enumerate()
        .map(|(i, c)| c.request(put(&format!("k{i}"), "v")))
        .collect();
    // Replica 3 relays three (a flood), replica 2 one, and one comes from
    // its client, last of all.
    for r in &requests[0..3] {
        cluster.relay(ReplicaId(0), ReplicaId(3), Message::Request(r.clone()));
    }
    cluster.relay(
        ReplicaId(0),
        ReplicaId(2),
        Message::Request(requests[3].clone()),
    );
    cluster.deliver(ReplicaId(0), Message::Request(requests[4].clone()));
    cluster.run();
    cluster.advance(Duration::from_millis(50));
    let order: Vec<usize> = (1..=5u64)
        .map(|seq| {
            let digest = cluster.executed[&ReplicaId(0)][&SeqNum(seq)];
            (0..5)
                .find(|&i| {
                    Batch {
                        requests: vec![requests[i].clone()],
                    }
                    .digest()
                        == digest
                })
                .expect("one request per batch")
        })
        .collect();
    assert_eq!(order, vec![4, 3, 0, 1, 2], "direct, then r2 and r3 in turn");
}

/// A key-value store that counts how often its whole state is hashed.
struct CountingDigests {
    store: pbft_app::kv::KvStore,
    digests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl pbft_app::StateMachine for CountingDigests {
    fn apply(&mut self, op: &[u8]) -> Vec<u8> {
        self.store.apply(op)
    }
    fn query(&self, op: &[u8]) -> Vec<u8> {
        self.store.query(op)
    }
    fn is_read_only(&self, op: &[u8]) -> bool {
        self.store.is_read_only(op)
    }
    fn snapshot(&self) -> Vec<u8> {
        self.store.snapshot()
    }
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), pbft_app::SnapshotError> {
        self.store.restore(snapshot)
    }
    fn snapshot_pages(&mut self) -> Vec<pbft_app::Page> {
        self.store.snapshot_pages()
    }
    fn restore_pages(&mut self, pages: &[pbft_app::Page]) -> Result<(), pbft_app::SnapshotError> {
        self.store.restore_pages(pages)
    }
    fn digest(&self) -> pbft_crypto::Digest {
        self.digests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.store.digest()
    }
}

/// The node reads `status()` for its metrics twice a second, and anyone
/// may send STATUS requests: neither may cost the state's size. (`status()`
/// hashed the whole state, so a replica holding 1 GiB spent more than the
/// period hashing and fell into view changes; a status report still did,
/// once per retry interval.)
#[test]
fn progress_figures_and_status_reports_never_hash_the_whole_state() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let mut cluster = Cluster::new(4);
    let digests = std::sync::Arc::new(AtomicUsize::new(0));
    let app = CountingDigests {
        store: pbft_app::kv::KvStore::with_page_target(cluster.page_target),
        digests: digests.clone(),
    };
    let replica = pbft_core::Replica::new(
        cluster.config.clone(),
        ReplicaId(1),
        cluster.signers[1].clone(),
        Box::new(app),
    )
    .expect("replica");
    cluster.replicas[1] = Some(replica);
    let mut client = Client::new(1, &cluster);
    let asker = Client::new(2, &cluster);
    for i in 0..6u64 {
        submit(&mut cluster, &mut client, 0, put(&format!("k{i}"), "v"));
        assert_eq!(cluster.replica(1).status().last_executed, SeqNum(i + 1));
        let request = asker.signer.sign(pbft_core::message::StatusRequest {
            client: asker.id(),
            nonce: i,
        });
        cluster.deliver(ReplicaId(1), Message::StatusRequest(request));
        // A retry interval on: the next report takes the root again.
        cluster.now = cluster.now + cluster.config.timeout_base / 2;
    }
    assert_eq!(cluster.statuses.len(), 6);
    assert_eq!(digests.load(Ordering::Relaxed), 0);
    cluster.replica(1).state_digest();
    assert_eq!(digests.load(Ordering::Relaxed), 1);
}

/// A backup holding a request its client waits on leaves the view when the
/// primary sends no new pre-prepare within one ordering timeout (at most
/// half the view-change timeout), before the request's own deadline. When
/// the primary orders the request in time, nobody leaves.
#[test]
fn a_backup_leaves_a_primary_that_stops_pre_preparing_while_a_client_waits() {
    let mut cluster = Cluster::new(4);
    let mut client = Client::new(1, &cluster);
    let timeout = cluster.config.timeout_base;
    // An honest primary orders a request the backups also hold.
    let request = client.request(put("a", "1"));
    cluster.deliver(ReplicaId(1), Message::Request(request.clone()));
    cluster.deliver(ReplicaId(0), Message::Request(request));
    cluster.advance(timeout * 5);
    assert!(
        client.result(&cluster, 1).is_some(),
        "executed and answered"
    );
    cluster.advance(timeout * 5);
    assert!((0..4).all(|i| {
        let status = cluster.replica(i).status();
        status.view == View(0) && status.active
    }));
    // Then it goes quiet while a client waits at backup 1.
    cluster.silent.insert(ReplicaId(0));
    cluster.deliver(
        ReplicaId(1),
        Message::Request(client.request(put("a", "2"))),
    );
    cluster.advance(timeout * 6 / 10);
    let status = cluster.replica(1).status();
    assert!(
        status.view > View(0) || !status.active,
        "one ordering timeout (not one view-change timeout) after the request arrived: {status:?}"
    );
    assert!(
        cluster.replica(2).status().active,
        "the others held nothing"
    );
}
