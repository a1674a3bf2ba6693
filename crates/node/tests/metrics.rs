//! A replica process serves its Prometheus metrics on the node file's
//! `metrics` address, and they move with the work it does. Every wait is
//! bounded; the process is killed when the test ends.

use pbft_app::kv::KvOp;
use pbft_node::testkit::{
    generate, metric_sample as sample, scrape_metrics as scrape, start_all, Spec, TestClient,
};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_pbft-node");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_serves_the_documented_names_and_counts_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = Spec {
        n: 4,
        ..Spec::default()
    };
    let cluster = generate(dir.path(), &spec).expect("cluster");
    let _nodes = start_all(BIN.as_ref(), &cluster).expect("start replicas");
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        if let Some(text) = scrape(cluster.metrics[0]) {
            break text;
        }
        assert!(Instant::now() < deadline, "no metrics endpoint within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(first.starts_with("HTTP/1.1 200 OK\r\n"), "{first}");
    assert!(first.contains("Content-Type: text/plain; version=0.0.4"));
    for name in [
        "pbft_requests_received_total",
        "pbft_requests_executed_total",
        "pbft_batches_executed_total",
        "pbft_batch_size_bucket",
        "pbft_phase_seconds_bucket",
        "pbft_fsyncs_total",
        "pbft_fsync_seconds_bucket",
        "pbft_signatures_checked_total",
        "pbft_signature_check_seconds_total",
        "pbft_view_changes_total",
        "pbft_checkpoints_total",
        "pbft_state_transfers_total",
        "pbft_dropped_total",
        "pbft_queue_depth",
        "pbft_pending_requests",
        "pbft_view",
        "process_cpu_seconds_total",
    ] {
        assert!(
            first.contains(&format!("\n{name}")),
            "{name} missing from:\n{first}"
        );
    }

    let mut client = TestClient::connect(
        &cluster.cluster().expect("cluster"),
        cluster.client_key.clone(),
    )
    .expect("client");
    assert!(client.wait_connected(Duration::from_secs(20)).await);
    for i in 0..3u8 {
        let op = KvOp::Put {
            key: vec![b'k', i],
            value: vec![i; 16],
        };
        client
            .invoke(&op, Duration::from_secs(20))
            .await
            .expect("put");
    }
    // Every replica executed the three requests; the primary received them.
    let deadline = Instant::now() + Duration::from_secs(20);
    for (i, addr) in cluster.metrics.iter().enumerate() {
        loop {
            let text = scrape(*addr).unwrap_or_default();
            let executed = sample(&text, "pbft_requests_executed_total").unwrap_or(0.0);
            if executed >= 3.0 {
                let fsyncs = sample(&text, "pbft_fsyncs_total").unwrap_or(0.0);
                assert!(fsyncs >= 1.0, "replica {i}: {fsyncs} fsyncs");
                let commits = sample(&text, "pbft_phase_seconds_count{phase=\"commit\"}");
                assert!(commits >= Some(1.0), "replica {i}: {commits:?}");
                let sigs = sample(&text, "pbft_signatures_checked_total").unwrap_or(0.0);
                assert!(sigs >= 3.0, "replica {i}: {sigs} signatures checked");
                let cpu = sample(&text, "process_cpu_seconds_total").unwrap_or(0.0);
                assert!(cpu > 0.0, "replica {i}: no CPU time");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "replica {i} reports {executed} executed requests"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let primary = scrape(cluster.metrics[0]).unwrap_or_default();
    assert!(sample(&primary, "pbft_requests_received_total") >= Some(3.0));
    client.shutdown().await;

    // The log file is plain text: no colour escapes when stderr is no terminal.
    let log = std::fs::read_to_string(dir.path().join("node-0.log")).expect("log");
    assert!(log.contains("serving Prometheus metrics"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "escape sequences in the log:\n{log}"
    );
}
