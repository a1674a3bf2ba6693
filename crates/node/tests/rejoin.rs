//! A replica killed (SIGKILL of its `pbft-node` process) while a few MiB are
//! written, then restarted under a light workload, must reach the others' last
//! executed sequence number and state digest within a few view-change
//! timeouts, without waiting for a checkpoint that a quiet cluster may not
//! take (issue 11, bug 5: status and retransmission).
//!
//! The test arranges the quiet case on purpose: before the restart it pads the
//! log to one sequence number past a checkpoint and then sends fewer light
//! operations than the distance to the next one, so no new checkpoint can help
//! the restarted replica; it asserts that none was taken. It restarts the
//! replica only once the peers' QUIC connections to the killed process have
//! timed out (until then nothing they send can reach a new process), so the
//! time it measures is the protocol's.
//!
//! Every wait is bounded; the replica processes are killed when the test ends,
//! however it ends. The whole test takes well under a minute.

use pbft_app::kv::{KvOp, KvResult};
use pbft_core::message::StatusReport;
use pbft_core::ReplicaId;
use pbft_crypto::{Digest, KeyPair};
use pbft_node::testkit::{generate, start_all, Spec, TestClient, TestCluster};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_pbft-node");

/// Replicas 0..4; the primary of view 0 is replica 0.
const N: usize = 4;
/// The replica that is killed and restarted (a backup in view 0).
const VICTIM: usize = 2;
/// Checkpoint interval K (and window L = 2K).
const K: u64 = 64;
/// The replicas' timeout base: one view-change timeout.
const TIMEOUT_BASE: Duration = Duration::from_millis(1000);
/// The bound on rejoining, in view-change timeouts, counted from the moment
/// the restarted replica first answers a status request.
const REJOIN_TIMEOUTS: u32 = 5;
/// How long the restarted process may take to answer at all.
const STARTUP_MAX: Duration = Duration::from_secs(15);

/// The heavy phase: this many puts of 8-16 KiB values (about 3.6 MiB) ...
const PUTS: u64 = 300;
/// ... by this many concurrent clients ...
const WRITERS: u64 = 4;
/// ... and the victim is killed once this many have completed.
const KILL_AFTER: u64 = 100;
/// The light phase: at most this many small puts, one every `LIGHT_EVERY`
/// (2 s of them), so that the last 3 s of the bound are quiet. While puts
/// flow, no poll can see all four replicas agree: a replica reports the
/// (last executed, digest) pair it last hashed, at most one retry interval
/// (half a timeout) old, so reports lag the puts by different amounts. A
/// quiet cluster is also the case the test is about: no new checkpoint, no
/// new traffic, only status and retransmission to catch up by.
const LIGHT_OPS_MAX: u64 = 8;
const LIGHT_EVERY: Duration = Duration::from_millis(250);

const OP_TIMEOUT: Duration = Duration::from_secs(10);
const STATUS_TIMEOUT: Duration = Duration::from_millis(800);
/// A bound on the whole test, so that nothing can hang it.
const TEST_MAX: Duration = Duration::from_secs(100);

fn put(key: String, value: Vec<u8>) -> KvOp {
    KvOp::Put {
        key: key.into_bytes(),
        value,
    }
}

/// Value `i` of the heavy phase: 8-16 KiB, contents that differ per put.
fn big_value(i: u64) -> Vec<u8> {
    let len = 8 * 1024 + (i * 7919) % (8 * 1024 + 1);
    (0..len).map(|j| ((i * 31 + j * 17) % 251) as u8).collect()
}

/// One poll of every replica: `None` for one that did not answer.
async fn poll(status: &mut TestClient) -> Vec<Option<StatusReport>> {
    let mut out = Vec::with_capacity(N);
    for i in 0..N {
        out.push(
            status
                .status(ReplicaId(i as u32), STATUS_TIMEOUT)
                .await
                .ok(),
        );
    }
    out
}

/// The (last executed, digest, stable checkpoint) every replica but
/// `except` reports, if they all answered and agree on the first two.
fn others_agree(reports: &[Option<StatusReport>], except: usize) -> Option<(u64, Digest, u64)> {
    let others: Vec<&StatusReport> = reports
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != except)
        .map(|(_, r)| r.as_ref())
        .collect::<Option<_>>()?;
    let first = others.first()?;
    others
        .iter()
        .all(|r| r.last_executed == first.last_executed && r.state_digest == first.state_digest)
        .then_some((
            first.last_executed.0,
            first.state_digest,
            first.stable_checkpoint.0,
        ))
}

fn describe(reports: &[Option<StatusReport>]) -> String {
    reports
        .iter()
        .enumerate()
        .map(|(i, r)| match r {
            Some(r) => format!(
                "  replica {i}: view {} active {} executed {} checkpoint {} digest {}",
                r.view.0,
                r.active,
                r.last_executed.0,
                r.stable_checkpoint.0,
                &r.state_digest.to_hex()[..16]
            ),
            None => format!("  replica {i}: no answer"),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Polls until the replicas other than `except` agree, within `limit`.
async fn wait_others_agree(
    status: &mut TestClient,
    except: usize,
    limit: Duration,
) -> Result<(u64, Digest, u64), String> {
    let until = Instant::now() + limit;
    loop {
        let reports = poll(status).await;
        if let Some(agreed) = others_agree(&reports, except) {
            return Ok(agreed);
        }
        if Instant::now() >= until {
            return Err(format!(
                "the replicas other than {except} did not agree within {limit:?}:\n{}",
                describe(&reports)
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn client(cluster: &TestCluster, key: KeyPair) -> TestClient {
    let mut c =
        TestClient::connect(&cluster.cluster().expect("cluster file"), key).expect("test client");
    c.retransmit = Duration::from_millis(1500);
    c
}

/// Puts a key that was never written: the result must say so.
async fn put_new(c: &mut TestClient, op: &KvOp) {
    let result = c
        .invoke(op, OP_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("operation failed: {e:#}"));
    assert_eq!(result, KvResult::Put { previous: None }, "put of a new key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_replica_rejoins_under_light_load_without_a_new_checkpoint() {
    tokio::time::timeout(TEST_MAX, scenario())
        .await
        .unwrap_or_else(|_| panic!("the test did not finish within {TEST_MAX:?}"));
}

async fn scenario() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = Spec {
        n: N,
        checkpoint_interval: K,
        log_window: 2 * K,
        timeout_base_ms: TIMEOUT_BASE.as_millis() as u64,
        ..Spec::default()
    };
    let cluster = generate(dir.path(), &spec).expect("generate cluster");
    let mut nodes = start_all(BIN.as_ref(), &cluster).expect("start replicas");
    let mut status = client(&cluster, KeyPair::generate());
    assert!(
        status.wait_connected(Duration::from_secs(20)).await,
        "no connection to every replica"
    );
    wait_others_agree(&mut status, usize::MAX, Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // Heavy phase: WRITERS clients put PUTS values of 8-16 KiB; the victim is
    // killed part-way.
    let done = Arc::new(AtomicU64::new(0));
    let mut writers = tokio::task::JoinSet::new();
    let mut written_bytes = 0u64;
    for w in 0..WRITERS {
        let mut c = client(&cluster, KeyPair::generate());
        let done = done.clone();
        let ops: Vec<KvOp> = (w..PUTS)
            .step_by(WRITERS as usize)
            .map(|i| {
                let value = big_value(i);
                written_bytes += value.len() as u64;
                put(format!("big-{i:04}"), value)
            })
            .collect();
        writers.spawn(async move {
            for op in &ops {
                put_new(&mut c, op).await;
                done.fetch_add(1, Ordering::Relaxed);
            }
            c.shutdown().await;
        });
    }
    let heavy_started = Instant::now();
    let mut killed_at = None;
    while !writers.is_empty() {
        tokio::select! {
            joined = writers.join_next() => {
                if let Some(Err(e)) = joined {
                    panic!("a writer failed: {e}\n{}", nodes.log_tail(0, 10));
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        if killed_at.is_none() && done.load(Ordering::Relaxed) >= KILL_AFTER {
            assert!(nodes.kill(VICTIM), "replica {VICTIM} was not running");
            killed_at = Some((done.load(Ordering::Relaxed), Instant::now()));
        }
        nodes.check_running().unwrap_or_else(|e| panic!("{e:#}"));
    }
    let (killed_after, killed_at) = killed_at.expect("the victim was killed");
    println!(
        "heavy phase: {PUTS} puts, {:.1} MiB, in {:.1} s; replica {VICTIM} killed (SIGKILL) after {killed_after}",
        written_bytes as f64 / (1024.0 * 1024.0),
        heavy_started.elapsed().as_secs_f64()
    );

    // Pad the log to one past a checkpoint, so that the light phase below
    // stays short of the next one.
    let mut pad_client = client(&cluster, KeyPair::generate());
    let (executed, _, _) = wait_others_agree(&mut status, VICTIM, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let pad = (K - executed % K) % K + 1;
    for i in 0..pad {
        put_new(&mut pad_client, &put(format!("pad-{i}"), b"p".to_vec())).await;
    }
    pad_client.shutdown().await;
    let (executed, digest, checkpoint) =
        wait_others_agree(&mut status, VICTIM, Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    println!(
        "before the restart: the others executed {executed} (stable checkpoint {checkpoint}, digest {})",
        &digest.to_hex()[..16]
    );
    // Sequence numbers left before the next checkpoint is taken.
    let room = (K - executed % K) % K;
    let light_ops = LIGHT_OPS_MAX.min(room.saturating_sub(2));

    // Restart at once. The peers' connections to the killed process would
    // swallow what they send until QUIC's idle timeout (10 s, more than the
    // rejoin bound); the restarted process dials them with a new
    // certificate, and that makes them close those connections and redial.
    // Restart the victim under a light workload. Fresh clients: the old ones
    // would redial the restarted replica only after their reconnect backoff.
    status.shutdown().await;
    nodes.start(VICTIM).expect("restart the victim");
    let restarted = Instant::now();
    println!(
        "replica {VICTIM} restarted {} ms after the kill",
        (restarted - killed_at).as_millis()
    );
    // Dial it only once it listens: a QUIC handshake sent to a closed port
    // is retried only after about a second, which would blur the time measured.
    let victim_address = cluster.addresses[VICTIM];
    while std::net::UdpSocket::bind(victim_address).is_ok() {
        nodes.check_running().unwrap_or_else(|e| panic!("{e:#}"));
        assert!(
            restarted.elapsed() < STARTUP_MAX,
            "replica {VICTIM} did not bind {victim_address} within {STARTUP_MAX:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut status = client(&cluster, KeyPair::generate());
    let mut light = client(&cluster, KeyPair::generate());
    let mut answered: Option<Instant> = None;
    let mut sent = 0u64;
    let mut next_op = restarted;
    let rejoin_bound = TIMEOUT_BASE * REJOIN_TIMEOUTS;
    let rejoined = loop {
        nodes.check_running().unwrap_or_else(|e| panic!("{e:#}"));
        let now = Instant::now();
        if sent < light_ops && now >= next_op {
            put_new(&mut light, &put(format!("light-{sent}"), vec![b'l'; 64])).await;
            sent += 1;
            next_op = now + LIGHT_EVERY;
        }
        let reports = poll(&mut status).await;
        if answered.is_none() && reports[VICTIM].is_some() {
            answered = Some(Instant::now());
            println!(
                "replica {VICTIM} answers {} ms after the restart:\n{}",
                restarted.elapsed().as_millis(),
                describe(&reports)
            );
        }
        if let (Some(victim), Some((executed, digest, checkpoint))) =
            (&reports[VICTIM], others_agree(&reports, VICTIM))
        {
            if victim.last_executed.0 == executed && victim.state_digest == digest {
                break Ok((Instant::now(), executed, checkpoint, reports));
            }
        }
        let expired = match answered {
            Some(at) => at.elapsed() >= rejoin_bound,
            None => restarted.elapsed() >= STARTUP_MAX,
        };
        if expired {
            break Err(reports);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (at, executed, checkpoint_now, reports) = match rejoined {
        Ok(r) => r,
        Err(reports) => panic!(
            "replica {VICTIM} did not reach the others' last executed sequence number and digest \
             within {REJOIN_TIMEOUTS} view-change timeouts ({rejoin_bound:?}) of answering \
             ({} light operations sent, {} ms since the restart, answered: {}):\n{}\n\
             end of replica {VICTIM}'s log:\n{}",
            sent,
            restarted.elapsed().as_millis(),
            answered.map_or("never".to_string(), |a| format!(
                "{} ms after the restart",
                (a - restarted).as_millis()
            )),
            describe(&reports),
            nodes.log_tail(VICTIM, 15)
        ),
    };
    println!(
        "rejoin: replica {VICTIM} reached executed {executed} and the others' digest {} ms after \
         its restart ({} ms after it first answered; {sent} light operations sent)\n{}",
        (at - restarted).as_millis(),
        answered.map_or(0, |a| (at - a).as_millis()),
        describe(&reports)
    );
    assert_eq!(
        checkpoint_now, checkpoint,
        "the scenario took a new checkpoint ({checkpoint} -> {checkpoint_now}): it no longer tests a quiet cluster"
    );

    // Rejoined for good: it executes the next operation along with the others.
    put_new(&mut light, &put("after".to_string(), b"a".to_vec())).await;
    let until = Instant::now() + rejoin_bound;
    loop {
        let reports = poll(&mut status).await;
        if let (Some(victim), Some((executed, digest, _))) =
            (&reports[VICTIM], others_agree(&reports, VICTIM))
        {
            if victim.last_executed.0 == executed && victim.state_digest == digest {
                break;
            }
        }
        assert!(
            Instant::now() < until,
            "replica {VICTIM} fell behind again after rejoining:\n{}",
            describe(&reports)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    light.shutdown().await;
    status.shutdown().await;
    drop(nodes);
}
