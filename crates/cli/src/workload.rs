//! The demo's workload: concurrent clients alternating put and get.

use crate::Failure;
use hdrhistogram::Histogram;
use pbft_client::{Client, ClientOptions, KeyPair, KvClient};
use pbft_config::ClientSettings;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Counters of a running workload, shared with whoever watches it.
#[derive(Default, Debug)]
pub struct Progress {
    /// Operations that completed successfully.
    pub ok: AtomicU64,
    /// Operations that failed (or read a value they did not expect).
    pub failed: AtomicU64,
}

/// The outcome of a workload.
pub struct WorkloadReport {
    /// Successful operations.
    pub ok: u64,
    /// Failed operations.
    pub failed: u64,
    /// Wall-clock time of the whole workload.
    pub elapsed: Duration,
    /// Latency of successful operations, in microseconds.
    pub latency: Histogram<u64>,
    /// The first few errors, for the report.
    pub errors: Vec<String>,
}

impl WorkloadReport {
    /// Successful operations per second.
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The latency at quantile `q`, as a duration.
    pub fn quantile(&self, q: f64) -> Duration {
        Duration::from_micros(self.latency.value_at_quantile(q))
    }
}

/// `clients` key-value clients, each with a fresh key.
pub fn clients(settings: &ClientSettings, n: usize) -> Result<Vec<Arc<KvClient>>, Failure> {
    (0..n)
        .map(|_| {
            Client::with_key(
                &settings.cluster,
                KeyPair::generate(),
                ClientOptions::from_settings(settings),
            )
            .map(|c| Arc::new(KvClient::new(c)))
            .map_err(Failure::client)
        })
        .collect()
}

/// Pauses a workload once `at` operations are done, until `open` turns true
/// (the demo kills the primary meanwhile).
#[derive(Clone, Debug)]
pub struct Gate {
    /// Operations (done, ok or failed) after which clients pause.
    pub at: u64,
    /// Clients continue once this is true.
    pub open: tokio::sync::watch::Receiver<bool>,
}

/// Runs `ops` operations on each client concurrently (put, then get of the
/// same key, which must return what was put), stopping early at `stop_at`.
pub async fn workload(
    clients: &[Arc<KvClient>],
    ops: u64,
    stop_at: Instant,
    progress: Arc<Progress>,
    gate: Option<Gate>,
) -> Result<WorkloadReport, Failure> {
    let histogram = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)
        .map_err(|e| Failure::failed(anyhow::anyhow!("histogram: {e}")))?;
    let latency = Arc::new(Mutex::new(histogram));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (c, kv) in clients.iter().enumerate() {
        let (kv, progress, latency, errors, mut gate) = (
            kv.clone(),
            progress.clone(),
            latency.clone(),
            errors.clone(),
            gate.clone(),
        );
        tasks.spawn(async move {
            // A client gives up after this many failures in a row (each may
            // take the whole client timeout when the cluster is unavailable).
            let mut failures_in_a_row = 0;
            for i in 0..ops {
                if failures_in_a_row >= 3 {
                    break;
                }
                if let Some(g) = &mut gate {
                    let done = progress.ok.load(Ordering::Relaxed)
                        + progress.failed.load(Ordering::Relaxed);
                    if done >= g.at {
                        let until = tokio::time::Instant::from_std(stop_at);
                        let _ = tokio::time::timeout_at(until, g.open.wait_for(|o| *o)).await;
                        gate = None;
                    }
                }
                if Instant::now() >= stop_at {
                    break;
                }
                let key = format!("c{c}-k{}", (i / 2) % 16);
                let value = format!("v{}", i / 2);
                let t = Instant::now();
                let outcome = if i % 2 == 0 {
                    kv.put(key.as_bytes(), value.as_bytes())
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                } else {
                    match kv.get(key.as_bytes()).await {
                        Ok(Some(v)) if v == value.as_bytes() => Ok(()),
                        Ok(other) => Err(format!(
                            "get {key}: expected {value}, read {:?}",
                            other.map(|v| String::from_utf8_lossy(&v).into_owned())
                        )),
                        Err(e) => Err(e.to_string()),
                    }
                };
                match outcome {
                    Ok(()) => {
                        failures_in_a_row = 0;
                        let micros = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
                        if let Ok(mut h) = latency.lock() {
                            h.saturating_record(micros.max(1));
                        }
                        progress.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        failures_in_a_row += 1;
                        progress.failed.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut errs) = errors.lock() {
                            if errs.len() < 5 {
                                errs.push(format!("client {c}: {e}"));
                            }
                        }
                    }
                }
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined {
            return Err(Failure::failed(anyhow::anyhow!(
                "a workload task failed: {e}"
            )));
        }
    }
    let elapsed = started.elapsed();
    let latency = latency
        .lock()
        .map(|h| h.clone())
        .map_err(|_| Failure::failed(anyhow::anyhow!("latency histogram poisoned")))?;
    let errors = errors.lock().map(|e| e.clone()).unwrap_or_default();
    Ok(WorkloadReport {
        ok: progress.ok.load(Ordering::Relaxed),
        failed: progress.failed.load(Ordering::Relaxed),
        elapsed,
        latency,
        errors,
    })
}

/// Milliseconds with one decimal.
pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}
