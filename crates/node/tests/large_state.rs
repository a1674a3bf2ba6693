//! A replica whose state exceeds the old 16 MiB frame limit rejoins by
//! chunked state transfer (issue 10): replica 3 is killed at the start, the
//! others take about 19 MiB of 64 KiB values (so several checkpoints pass it
//! by), then it restarts from its (initialised, empty) data directory and
//! must reach the others' last executed sequence number and state digest by
//! fetching the state in pages of at most 1 MiB.
//!
//! `a_replica_rejoins_a_gigabyte_state` (ignored: minutes, and about 2.5 GiB
//! of memory per replica) does the same with 1 GiB and reports the time the
//! rejoin took and each replica's peak memory:
//! `cargo test --release -p pbft-node --test large_state -- --ignored --nocapture`.
//!
//! Every wait is bounded; the replica processes are killed when the test ends.

use pbft_app::kv::{KvOp, KvResult};
use pbft_core::message::StatusReport;
use pbft_core::ReplicaId;
use pbft_crypto::KeyPair;
use pbft_node::testkit::{generate, rss_mib, start_all, Spec, TestClient, TestCluster};
use std::time::Duration;
use tokio::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_pbft-node");
const N: usize = 4;
const VICTIM: usize = 3;
const K: u64 = 16;
const WRITERS: u64 = 4;
const VALUE_LEN: usize = 64 * 1024;
const OP_TIMEOUT: Duration = Duration::from_secs(20);
const STATUS_TIMEOUT: Duration = Duration::from_millis(800);

/// How much state, and how long the test may take.
struct Size {
    /// Values of 64 KiB written while the victim is down.
    puts: u64,
    /// Bound on the rejoin, from the restart.
    rejoin_max: Duration,
    /// Bound on the whole test.
    test_max: Duration,
}

fn client(cluster: &TestCluster) -> TestClient {
    let mut c = TestClient::connect(
        &cluster.cluster().expect("cluster file"),
        KeyPair::generate(),
    )
    .expect("test client");
    c.retransmit = Duration::from_millis(1500);
    c
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_rejoins_a_state_larger_than_a_frame() {
    // 304 values of 64 KiB: 19 MiB, more than one 16 MiB frame could carry.
    run(Size {
        puts: 304,
        rejoin_max: Duration::from_secs(60),
        test_max: Duration::from_secs(240),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "1 GiB of state: minutes, and about 2.5 GiB of memory per replica"]
async fn a_replica_rejoins_a_gigabyte_state() {
    run(Size {
        puts: 16_384,
        rejoin_max: Duration::from_secs(600),
        test_max: Duration::from_secs(1800),
    })
    .await;
}

async fn run(size: Size) {
    let test_max = size.test_max;
    tokio::time::timeout(test_max, scenario(size))
        .await
        .unwrap_or_else(|_| panic!("the test did not finish within {test_max:?}"));
}

async fn scenario(size: Size) {
    let Size {
        puts, rejoin_max, ..
    } = size;
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = Spec {
        n: N,
        checkpoint_interval: K,
        log_window: 2 * K,
        timeout_base_ms: 1000,
        ..Spec::default()
    };
    let cluster = generate(dir.path(), &spec).expect("generate cluster");
    let mut nodes = start_all(BIN.as_ref(), &cluster).expect("start replicas");
    let status = client(&cluster);
    assert!(
        status.wait_connected(Duration::from_secs(20)).await,
        "no connection to every replica"
    );
    assert!(nodes.kill(VICTIM), "replica {VICTIM} was not running");
    let killed_at = Instant::now();

    let mut writers = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let mut c = client(&cluster);
        writers.spawn(async move {
            for i in (w..puts).step_by(WRITERS as usize) {
                let value: Vec<u8> = (0..VALUE_LEN)
                    .map(|j| ((i * 31 + j as u64) % 251) as u8)
                    .collect();
                let op = KvOp::Put {
                    key: format!("big-{i:05}").into_bytes(),
                    value,
                };
                let result = c.invoke(&op, OP_TIMEOUT).await.expect("put");
                assert_eq!(result, KvResult::Put { previous: None });
            }
            c.shutdown().await;
        });
    }
    while let Some(joined) = writers.join_next().await {
        if let Err(e) = joined {
            panic!("a writer failed: {e}\n{}", nodes.log_tail(0, 10));
        }
    }
    let written = Instant::now();
    println!(
        "{puts} puts of {} KiB in {:.1} s",
        VALUE_LEN / 1024,
        (written - killed_at).as_secs_f64()
    );
    // Restart at once: the peers drop their connections to the killed
    // process when the new one dials them (see pbft-net).
    status.shutdown().await;
    nodes.start(VICTIM).expect("restart the victim");
    let restarted = Instant::now();
    let mut status = client(&cluster);
    loop {
        nodes.check_running().unwrap_or_else(|e| panic!("{e:#}"));
        let reports = poll(&mut status).await;
        let others: Option<Vec<&StatusReport>> = reports
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != VICTIM)
            .map(|(_, r)| r.as_ref())
            .collect();
        if let (Some(victim), Some(others)) = (&reports[VICTIM], others) {
            let first = others[0];
            if others.iter().all(|r| r.state_digest == first.state_digest)
                && victim.state_digest == first.state_digest
                && victim.last_executed == first.last_executed
            {
                assert!(first.stable_checkpoint.0 >= K, "no checkpoint was taken");
                println!(
                    "replica {VICTIM} reached executed {} and the others' digest {:.1} s after its restart",
                    first.last_executed.0,
                    restarted.elapsed().as_secs_f64()
                );
                for i in 0..N {
                    if let Some((rss, peak)) = nodes.pid(i).and_then(rss_mib) {
                        println!("replica {i}: RSS {rss} MiB, peak {peak} MiB");
                    }
                }
                break;
            }
        }
        assert!(
            restarted.elapsed() < rejoin_max,
            "replica {VICTIM} did not rejoin within {rejoin_max:?}: {reports:?}\n{}",
            nodes.log_tail(VICTIM, 20)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = nodes.log_tail(VICTIM, 400);
    assert!(
        log.contains("state transferred"),
        "replica {VICTIM} caught up without a state transfer:\n{}",
        nodes.log_tail(VICTIM, 20)
    );
    status.shutdown().await;
    drop(nodes);
}
