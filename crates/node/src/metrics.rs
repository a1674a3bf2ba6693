//! The node's metrics: one Prometheus registry per replica, logged
//! periodically and served over HTTP when the node file sets `metrics`
//! (see `docs/metrics.md` for the list and what each means).
//!
//! Three kinds of value:
//! * **events**, counted where they happen (requests, executions, phases,
//!   fsyncs, view changes, drops before verification): always current;
//! * **mirrors** of counters other parts keep (the core's drops by reason,
//!   the endpoint's frames, the verification stage's items) and gauges of
//!   the core's state and queue depths, copied by the protocol task every
//!   [`MIRROR_PERIOD`]: up to that old;
//! * **process** values (CPU time, pbft-crypto's signature-check counters),
//!   read at each scrape.
//!
//! A registry per replica, not the process-wide default, so that tests that
//! run several replicas in one process keep their metrics apart (the process
//! values are the process's, whatever the registry).

use prometheus::{
    exponential_buckets, Counter, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};
use std::time::Duration;

/// How often the protocol task copies mirrored values into the registry.
pub(crate) const MIRROR_PERIOD: Duration = Duration::from_millis(500);

/// The normal-case phases of a batch at one replica, in order: each is the
/// time from the previous point to the named one. Labels of
/// `pbft_phase_seconds`.
pub const PHASES: [&str; 6] = ["queued", "prepare", "commit", "execute", "reply", "total"];

/// Every metric of one replica.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    /// Messages decoded, by kind (before signature checks).
    pub(crate) messages_received: IntCounterVec,
    /// Inputs dropped, by where (`decode`, `core`, `net`, `verify`, `send`) and why.
    dropped: IntCounterVec,
    /// Frames that did not decode as a message.
    pub(crate) garbage_frames: IntCounter,
    /// Decoded messages a client is not allowed to send (replica traffic).
    pub(crate) refused_frames: IntCounter,
    /// Client messages naming another client than the link's key.
    pub(crate) foreign_client_frames: IntCounter,
    /// Sends the endpoint refused (queue full, no route, too large).
    pub(crate) send_errors: IntCounter,
    /// Client requests that reached the protocol core (verified).
    pub(crate) requests_received: IntCounter,
    /// Requests executed (duplicates skipped).
    pub(crate) requests_executed: IntCounter,
    /// Batches executed.
    pub(crate) batches_executed: IntCounter,
    /// Requests per executed batch.
    pub(crate) batch_size: Histogram,
    /// Per-phase latency of executed batches, by phase ([`PHASES`]).
    pub(crate) phase_seconds: HistogramVec,
    /// Record-log fsyncs (one per write of the log writer, which covers
    /// every group queued while the previous one ran).
    pub(crate) fsyncs: IntCounter,
    /// Time of one write of the log writer with its fsync.
    pub(crate) fsync_seconds: Histogram,
    /// Sends held in the outbox until the records before them are durable.
    pub(crate) outbox_held: IntGauge,
    /// Groups submitted to the log writer, not yet durable.
    pub(crate) log_lag: IntGauge,
    /// Times the protocol task stopped taking inputs for the log writer.
    pub(crate) backpressure: IntCounter,
    /// Views entered (each is a completed view change at this replica).
    pub(crate) view_changes: IntCounter,
    /// Checkpoints taken.
    pub(crate) checkpoints: IntCounter,
    /// States replaced by a certified checkpoint fetched from a peer.
    pub(crate) state_transfers: IntCounter,
    /// Mirrored: the core's view, progress and queues.
    pub(crate) view: IntGauge,
    pub(crate) last_executed: IntGauge,
    pub(crate) stable_checkpoint: IntGauge,
    pub(crate) pending_requests: IntGauge,
    /// Queue depths between the stages, by queue.
    pub(crate) queue_depth: prometheus::IntGaugeVec,
    /// Mirrored from the endpoint: frames by direction; open connections.
    pub(crate) frames: IntCounterVec,
    pub(crate) open_connections: IntGauge,
    /// Mirrored from the verification stage: items by result, batches.
    pub(crate) verify_items: IntCounterVec,
    pub(crate) verify_batches: IntCounter,
    /// Process values, read at each scrape.
    cpu_seconds: Counter,
    resident_bytes: IntGauge,
    signatures_checked: IntCounter,
    signature_check_calls: IntCounter,
    signature_batches: IntCounter,
    signatures_batched: IntCounter,
    signature_check_seconds: Counter,
}

/// A counter of the metrics.
fn counter(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    let c = IntCounter::new(name, help)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    let g = IntGauge::new(name, help)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn float_counter(registry: &Registry, name: &str, help: &str) -> prometheus::Result<Counter> {
    let c = Counter::new(name, help)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

/// Latency buckets: 50 µs to about 6.5 s, doubling.
fn seconds_buckets() -> prometheus::Result<Vec<f64>> {
    exponential_buckets(0.000_05, 2.0, 18)
}

impl Metrics {
    /// A fresh registry with every metric at zero.
    pub(crate) fn new() -> prometheus::Result<Metrics> {
        let r = Registry::new();
        let dropped = counter_vec(
            &r,
            "pbft_dropped_total",
            "Inputs dropped, by where (decode, core, net, verify, send) and why",
            &["source", "reason"],
        )?;
        let batch_size = Histogram::with_opts(
            HistogramOpts::new("pbft_batch_size", "Requests per executed batch")
                .buckets(exponential_buckets(1.0, 2.0, 11)?),
        )?;
        r.register(Box::new(batch_size.clone()))?;
        let phase_seconds = HistogramVec::new(
            HistogramOpts::new(
                "pbft_phase_seconds",
                "Per-phase latency of executed batches at this replica: queued (request arrival \
                 to pre-prepare), prepare, commit, execute, reply (execution to reply sent, \
                 fsync included), total (request arrival to reply)",
            )
            .buckets(seconds_buckets()?),
            &["phase"],
        )?;
        r.register(Box::new(phase_seconds.clone()))?;
        let fsync_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "pbft_fsync_seconds",
                "Time of one record-log write with its fsync (a write covers every group queued \
                 while the previous one ran)",
            )
            .buckets(seconds_buckets()?),
        )?;
        r.register(Box::new(fsync_seconds.clone()))?;
        let queue_depth = prometheus::IntGaugeVec::new(
            Opts::new(
                "pbft_queue_depth",
                "Items waiting between stages: decoded_replicas and decoded_clients (to the \
                 verifier, one queue per lane), verified (to the protocol task), outbox (sends \
                 held until durable), log (groups submitted to the log writer, not yet durable); \
                 send_bytes is in bytes: frames in the endpoint's send queues",
            ),
            &["queue"],
        )?;
        r.register(Box::new(queue_depth.clone()))?;
        let m = Metrics {
            messages_received: counter_vec(
                &r,
                "pbft_messages_received_total",
                "Messages decoded, by kind, before their signatures are checked",
                &["kind"],
            )?,
            garbage_frames: dropped.with_label_values(&["decode", "garbage"]),
            refused_frames: dropped.with_label_values(&["decode", "not_from_client"]),
            foreign_client_frames: dropped.with_label_values(&["decode", "foreign_client"]),
            send_errors: dropped.with_label_values(&["send", "refused"]),
            dropped,
            requests_received: counter(
                &r,
                "pbft_requests_received_total",
                "Client requests that reached the protocol core (signature checked)",
            )?,
            requests_executed: counter(
                &r,
                "pbft_requests_executed_total",
                "Requests executed (duplicates skipped)",
            )?,
            batches_executed: counter(&r, "pbft_batches_executed_total", "Batches executed")?,
            batch_size,
            phase_seconds,
            fsyncs: counter(
                &r,
                "pbft_fsyncs_total",
                "Record-log fsyncs, one per write of the log writer",
            )?,
            fsync_seconds,
            outbox_held: queue_depth.with_label_values(&["outbox"]),
            log_lag: queue_depth.with_label_values(&["log"]),
            backpressure: counter(
                &r,
                "pbft_backpressure_total",
                "Times the protocol task stopped taking inputs until the log writer caught up",
            )?,
            view_changes: counter(
                &r,
                "pbft_view_changes_total",
                "Views entered after a NEW-VIEW",
            )?,
            checkpoints: counter(&r, "pbft_checkpoints_total", "Checkpoints taken")?,
            state_transfers: counter(
                &r,
                "pbft_state_transfers_total",
                "States replaced by a certified checkpoint fetched from a peer",
            )?,
            view: gauge(&r, "pbft_view", "The current view")?,
            last_executed: gauge(
                &r,
                "pbft_last_executed",
                "The last executed sequence number",
            )?,
            stable_checkpoint: gauge(
                &r,
                "pbft_stable_checkpoint",
                "The stable checkpoint's sequence number",
            )?,
            pending_requests: gauge(
                &r,
                "pbft_pending_requests",
                "Requests waiting in the core to be ordered",
            )?,
            queue_depth,
            frames: counter_vec(
                &r,
                "pbft_frames_total",
                "Frames through the endpoint, by direction (sent, received)",
                &["direction"],
            )?,
            open_connections: gauge(&r, "pbft_open_connections", "Open QUIC connections")?,
            verify_items: counter_vec(
                &r,
                "pbft_verify_items_total",
                "Messages through the verification stage, by result (verified, rejected)",
                &["result"],
            )?,
            verify_batches: counter(
                &r,
                "pbft_verify_batches_total",
                "Batches the verification stage checked",
            )?,
            cpu_seconds: float_counter(
                &r,
                "process_cpu_seconds_total",
                "User and system CPU time of this process, in seconds",
            )?,
            resident_bytes: gauge(
                &r,
                "process_resident_memory_bytes",
                "Resident memory of this process, in bytes",
            )?,
            signatures_checked: counter(
                &r,
                "pbft_signatures_checked_total",
                "Signatures checked in this process (a failed batch checked again alone counts twice)",
            )?,
            signature_check_calls: counter(
                &r,
                "pbft_signature_checks_total",
                "Signature-check calls in this process: one signature alone or one batch",
            )?,
            signature_batches: counter(
                &r,
                "pbft_signature_batches_total",
                "Batch verifications (two or more signatures) in this process",
            )?,
            signatures_batched: counter(
                &r,
                "pbft_signatures_batched_total",
                "Signatures checked in batch verifications in this process",
            )?,
            signature_check_seconds: float_counter(
                &r,
                "pbft_signature_check_seconds_total",
                "Time spent checking signatures in this process (summed over threads)",
            )?,
            registry: r,
        };
        for phase in PHASES {
            m.phase_seconds.with_label_values(&[phase]);
        }
        for queue in [
            "decoded_replicas",
            "decoded_clients",
            "verified",
            "send_bytes",
        ] {
            m.queue_depth.with_label_values(&[queue]);
        }
        for direction in ["sent", "received"] {
            m.frames.with_label_values(&[direction]);
        }
        for result in ["verified", "rejected"] {
            m.verify_items.with_label_values(&[result]);
        }
        Ok(m)
    }

    /// Raises the drop counter of (`source`, `reason`) to `total` (a mirror).
    pub(crate) fn mirror_dropped(&self, source: &str, reason: &str, total: u64) {
        mirror(&self.dropped.with_label_values(&[source, reason]), total);
    }

    /// Records one executed batch's phases (seconds; `None`: unknown).
    pub(crate) fn observe_phase(&self, phase: &str, seconds: f64) {
        self.phase_seconds
            .with_label_values(&[phase])
            .observe(seconds.max(0.0));
    }

    /// The text exposition of every metric, process values read now.
    pub(crate) fn render(&self) -> Vec<u8> {
        self.refresh_process();
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        out
    }

    fn refresh_process(&self) {
        if let Some(cpu) = process_cpu_seconds() {
            let delta = cpu - self.cpu_seconds.get();
            if delta > 0.0 {
                self.cpu_seconds.inc_by(delta);
            }
        }
        if let Some(bytes) = process_resident_bytes() {
            self.resident_bytes
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        let s = pbft_crypto::stats::check_stats();
        mirror(&self.signatures_checked, s.signatures);
        mirror(&self.signature_check_calls, s.calls);
        mirror(&self.signature_batches, s.batch_calls);
        mirror(&self.signatures_batched, s.batched_signatures);
        let secs = s.nanos as f64 / 1e9;
        let delta = secs - self.signature_check_seconds.get();
        if delta > 0.0 {
            self.signature_check_seconds.inc_by(delta);
        }
    }
}

/// Raises `counter` to `total` (counters only go up; a lower total is ignored).
pub(crate) fn mirror(counter: &IntCounter, total: u64) {
    let current = counter.get();
    if total > current {
        counter.inc_by(total - current);
    }
}

/// This process's user + system CPU time.
#[cfg(unix)]
pub(crate) fn process_cpu_seconds() -> Option<f64> {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Some(t.tv_sec as f64 + t.tv_nsec as f64 / 1e9)
}

/// This process's resident memory; `None` where `/proc` has no answer.
fn process_resident_bytes() -> Option<u64> {
    crate::process::resident_bytes(std::process::id())
}

/// This process's CPU time: unknown off unix.
#[cfg(not(unix))]
pub(crate) fn process_cpu_seconds() -> Option<f64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exposed_from_the_start() {
        let m = Metrics::new().expect("metrics");
        m.requests_executed.inc_by(3);
        m.batch_size.observe(3.0);
        m.observe_phase("commit", 0.002);
        m.mirror_dropped("core", "stale-view", 5);
        m.mirror_dropped("core", "stale-view", 4);
        let text = String::from_utf8(m.render()).expect("utf-8");
        for line in [
            "pbft_requests_executed_total 3",
            "pbft_batch_size_count 1",
            "pbft_phase_seconds_count{phase=\"commit\"} 1",
            "pbft_phase_seconds_count{phase=\"queued\"} 0",
            "pbft_dropped_total{reason=\"stale-view\",source=\"core\"} 5",
            "pbft_fsyncs_total 0",
            "pbft_view_changes_total 0",
            "pbft_queue_depth{queue=\"verified\"} 0",
            "pbft_queue_depth{queue=\"outbox\"} 0",
            "pbft_queue_depth{queue=\"log\"} 0",
            "pbft_backpressure_total 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing from:\n{text}"
            );
        }
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "pbft_signatures_checked_total",
            "pbft_signature_check_seconds_total",
        ] {
            assert!(text.contains(&format!("\n{name} ")), "{name} missing");
        }
    }
}
