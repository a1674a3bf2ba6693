//! The load: C clients, closed loop (each issues its next operation when the
//! last one completes) or open loop (operations are due at a fixed total
//! rate and any idle client takes the next one due; latency counts from the
//! time it was due, so a slow cluster cannot hide its queueing).
//!
//! Each client owns its keys (`b<c>-<k>`, 16 of them) and checks every read
//! against what it last wrote there (after a failed write the key's value is
//! unknown until the next write succeeds). Only operations that complete
//! inside the measured interval `[start, end)` count; warm-up operations and
//! those after the end do not.

use hdrhistogram::Histogram;
use pbft_client::KvClient;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Mutex};

/// Keys per client.
const KEYS_PER_CLIENT: u64 = 16;
/// A client gives up after this many failures in a row.
const FAILURES_IN_A_ROW_MAX: u32 = 3;

/// What to run.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Operations per second in total (open loop), or `None` (closed loop).
    pub rate: Option<f64>,
    /// Bytes of each written value.
    pub payload: usize,
    /// Share of operations that are reads.
    pub read_share: f64,
    /// The measured interval starts here (the warm-up ends).
    pub start: Instant,
    /// And ends here; nothing is issued after it.
    pub end: Instant,
    /// At most this many operations are issued in all (warm-up included).
    pub ops_max: u64,
}

/// Live counters, for the progress line.
#[derive(Debug, Default)]
pub struct Live {
    /// Operations completed (warm-up included).
    pub ok: AtomicU64,
    /// Operations failed.
    pub failed: AtomicU64,
    /// Operations issued.
    pub issued: AtomicU64,
    /// Open loop: operations that were due while every client was busy and
    /// the backlog was full (not issued).
    pub missed: AtomicU64,
    /// Set to stop issuing.
    pub stop: AtomicBool,
}

/// What one client measured.
struct ClientReport {
    latency: Histogram<u64>,
    ok: u64,
    failed: u64,
    errors: Vec<String>,
}

/// What the load measured inside the interval.
#[derive(Debug)]
pub struct LoadReport {
    /// Latency of operations completed inside the interval, microseconds.
    pub latency: Histogram<u64>,
    /// Operations completed inside the interval.
    pub ok: u64,
    /// Operations failed inside the interval.
    pub failed: u64,
    /// The first few errors.
    pub errors: Vec<String>,
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 2 minutes, 3 significant digits.
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("constant, valid histogram bounds")
}

/// One operation of client `c`.
struct Op {
    key: Vec<u8>,
    /// `Some(value)` to write, `None` to read.
    write: Option<Vec<u8>>,
}

/// The next operation of a client (`seq`: its operation count).
fn next_op(c: usize, seq: u64, rng: &mut StdRng, plan: &Plan) -> Op {
    let key = format!("b{c}-{}", rng.gen_range(0..KEYS_PER_CLIENT)).into_bytes();
    if plan.read_share > 0.0 && rng.gen_bool(plan.read_share) {
        return Op { key, write: None };
    }
    // Distinct values per write (so a stale read shows), of the payload size.
    let mut value = format!("{c}:{seq}:").into_bytes();
    value.resize(plan.payload, b'.');
    Op {
        key,
        write: Some(value),
    }
}

/// Runs the plan with `clients`; returns once every client has stopped
/// (after `plan.end`, `live.stop`, the ops cap, or repeated failures).
pub async fn run(clients: &[Arc<KvClient>], plan: &Plan, live: Arc<Live>) -> LoadReport {
    let due: Option<Arc<Mutex<mpsc::Receiver<Instant>>>> = plan.rate.map(|rate| {
        // Up to a second of backlog (at least one per client) is queued.
        let backlog = (rate.ceil() as usize)
            .max(clients.len())
            .clamp(1, 1_000_000);
        let (tx, rx) = mpsc::channel(backlog);
        let (plan, live) = (plan.clone(), live.clone());
        tokio::spawn(async move { schedule(tx, rate, &plan, &live).await });
        Arc::new(Mutex::new(rx))
    });
    let mut tasks = tokio::task::JoinSet::new();
    for (c, kv) in clients.iter().enumerate() {
        let (kv, plan, live, due) = (kv.clone(), plan.clone(), live.clone(), due.clone());
        tasks.spawn(async move { client_loop(c, &kv, &plan, &live, due).await });
    }
    let mut report = LoadReport {
        latency: histogram(),
        ok: 0,
        failed: 0,
        errors: Vec::new(),
    };
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(r) => {
                // Same bounds: adding cannot fail.
                let _ = report.latency.add(&r.latency);
                report.ok += r.ok;
                report.failed += r.failed;
                for e in r.errors {
                    if report.errors.len() < 5 {
                        report.errors.push(e);
                    }
                }
            }
            Err(e) => report.errors.push(format!("a client task failed: {e}")),
        }
    }
    report
}

/// Open loop: one due time every `1/rate` seconds until the end.
async fn schedule(tx: mpsc::Sender<Instant>, rate: f64, plan: &Plan, live: &Live) {
    let period = Duration::from_secs_f64(1.0 / rate);
    let origin = Instant::now();
    let mut n: u64 = 0;
    loop {
        let at = origin + period.mul_f64(n as f64);
        if at >= plan.end || live.stop.load(Ordering::Relaxed) {
            return;
        }
        tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
        if live.issued.load(Ordering::Relaxed) + tx.max_capacity() as u64 - tx.capacity() as u64
            >= plan.ops_max
        {
            return;
        }
        if tx.try_send(at).is_err() {
            live.missed.fetch_add(1, Ordering::Relaxed);
        }
        n += 1;
    }
}

async fn client_loop(
    c: usize,
    kv: &KvClient,
    plan: &Plan,
    live: &Live,
    due: Option<Arc<Mutex<mpsc::Receiver<Instant>>>>,
) -> ClientReport {
    let mut rng = StdRng::seed_from_u64(c as u64);
    let mut written: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
    let mut report = ClientReport {
        latency: histogram(),
        ok: 0,
        failed: 0,
        errors: Vec::new(),
    };
    let mut failures_in_a_row = 0;
    let mut seq = 0u64;
    while failures_in_a_row < FAILURES_IN_A_ROW_MAX && !live.stop.load(Ordering::Relaxed) {
        let start = match &due {
            None => Instant::now(),
            Some(due) => {
                let next = {
                    let mut rx = due.lock().await;
                    let until = tokio::time::Instant::from_std(plan.end);
                    tokio::time::timeout_at(until, rx.recv()).await
                };
                match next {
                    Ok(Some(at)) => at,
                    _ => break,
                }
            }
        };
        if Instant::now() >= plan.end {
            break;
        }
        if live.issued.fetch_add(1, Ordering::Relaxed) >= plan.ops_max {
            break;
        }
        seq += 1;
        let op = next_op(c, seq, &mut rng, plan);
        let outcome = match &op.write {
            Some(value) => match kv.put(op.key.clone(), value.clone()).await {
                Ok(_) => {
                    written.insert(op.key.clone(), Some(value.clone()));
                    Ok(())
                }
                Err(e) => {
                    // Written or not: unknown until the next write.
                    written.insert(op.key.clone(), None);
                    Err(e.to_string())
                }
            },
            None => match kv.get(op.key.clone()).await {
                Ok(read) => match written.get(&op.key) {
                    Some(Some(expected)) if read.as_ref() != Some(expected) => Err(format!(
                        "get {}: read a value other than the last one written",
                        String::from_utf8_lossy(&op.key)
                    )),
                    None if read.is_some() => Err(format!(
                        "get {}: read a value that was never written",
                        String::from_utf8_lossy(&op.key)
                    )),
                    _ => Ok(()),
                },
                Err(e) => Err(e.to_string()),
            },
        };
        let done = Instant::now();
        let counted = done >= plan.start && done < plan.end;
        match outcome {
            Ok(()) => {
                failures_in_a_row = 0;
                live.ok.fetch_add(1, Ordering::Relaxed);
                if counted {
                    report.ok += 1;
                    let micros =
                        u64::try_from(done.duration_since(start).as_micros()).unwrap_or(u64::MAX);
                    report.latency.saturating_record(micros.max(1));
                }
            }
            Err(e) => {
                failures_in_a_row += 1;
                live.failed.fetch_add(1, Ordering::Relaxed);
                if counted {
                    report.failed += 1;
                }
                if report.errors.len() < 5 {
                    report.errors.push(format!("client {c}: {e}"));
                }
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(read_share: f64, payload: usize) -> Plan {
        let now = Instant::now();
        Plan {
            rate: None,
            payload,
            read_share,
            start: now,
            end: now,
            ops_max: 1,
        }
    }

    #[test]
    fn operations_follow_the_read_share_and_payload() {
        let mut rng = StdRng::seed_from_u64(1);
        let p = plan(0.25, 128);
        let ops: Vec<Op> = (0..4000).map(|i| next_op(3, i, &mut rng, &p)).collect();
        let reads = ops.iter().filter(|o| o.write.is_none()).count();
        assert!((800..1200).contains(&reads), "{reads} reads of 4000");
        for o in &ops {
            assert!(o.key.starts_with(b"b3-"));
            if let Some(v) = &o.write {
                assert_eq!(v.len(), 128);
            }
        }
        let p = plan(0.0, 0);
        let o = next_op(0, 1, &mut rng, &p);
        assert_eq!(o.write, Some(Vec::new()));
    }
}
