//! The bench's report: the load's figures, the differences between the two
//! metric scrapes of every replica, CPU times and the crypto ceiling.

use super::ceiling::{CryptoCost, BATCH};
use super::load::LoadReport;
use super::scrape::{quantile, Samples};
use super::BenchArgs;
use crate::{CmdResult, Failure};
use pbft_node::METRIC_PHASES;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::time::Instant;

/// One replica at one instant.
#[derive(Debug)]
pub struct ReplicaSnapshot {
    /// Its metrics (or why not).
    pub samples: Result<Samples, String>,
    /// Its CPU seconds, if this bench started it.
    pub cpu: Option<f64>,
    /// Its resident memory in bytes (from `/proc` if this bench started it,
    /// else from its metrics), if known.
    pub rss: Option<u64>,
}

/// Every replica's metrics and CPU time at one instant, and this process's.
#[derive(Debug)]
pub struct Snapshot {
    /// When it was taken (after the scrapes).
    pub at: Instant,
    /// Per replica.
    pub replicas: Vec<ReplicaSnapshot>,
    /// This process's CPU seconds.
    pub client_cpu: f64,
}

/// What a report is made from.
pub struct Inputs<'a> {
    /// The bench's arguments.
    pub args: &'a BenchArgs,
    /// Replicas.
    pub n: usize,
    /// What the clients measured.
    pub load: LoadReport,
    /// Open loop: operations due but not issued.
    pub missed: u64,
    /// At the start of the measured interval.
    pub before: Snapshot,
    /// At its end.
    pub after: Snapshot,
    /// Signature-check costs on this machine.
    pub cost: CryptoCost,
    /// `openssl speed` verifications per second, if asked for and available.
    pub openssl: Option<f64>,
    /// Cores of this machine.
    pub cores: usize,
}

/// One replica's differences over the measured interval.
#[derive(Debug, Default)]
struct ReplicaDelta {
    executed: f64,
    batches: f64,
    fsyncs: f64,
    signatures: f64,
    view_changes: f64,
    checkpoints: f64,
    state_transfers: f64,
    dropped: f64,
    cpu: Option<f64>,
}

/// One phase's figures, in seconds.
#[derive(Debug)]
struct Phase {
    name: &'static str,
    count: f64,
    mean: Option<f64>,
    p50: Option<f64>,
    p99: Option<f64>,
}

/// The report.
pub struct Report {
    json: Value,
    human: String,
    ok: u64,
    failed: u64,
    /// The first few errors of the load and of the scrapes.
    pub errors: Vec<String>,
}

/// Each replica's resident memory in MiB, if known.
fn rss_mib(s: &Snapshot) -> Vec<Option<f64>> {
    s.replicas
        .iter()
        .map(|r| r.rss.map(|b| b as f64 / (1u64 << 20) as f64))
        .collect()
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite()).then(|| a / b)
}

fn opt(v: Option<f64>, unit: f64, decimals: usize) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{:.*}", decimals, x * unit))
}

impl Report {
    /// Computes the report.
    pub fn new(i: Inputs<'_>) -> Report {
        let seconds = i
            .after
            .at
            .duration_since(i.before.at)
            .as_secs_f64()
            .max(1e-9);
        let mut errors = i.load.errors.clone();
        let mut replicas: Vec<Option<ReplicaDelta>> = Vec::new();
        let mut total = Samples::default();
        for (id, (b, a)) in i.before.replicas.iter().zip(&i.after.replicas).enumerate() {
            let cpu_pid = match (b.cpu, a.cpu) {
                (Some(x), Some(y)) => Some(y - x),
                _ => None,
            };
            match (&b.samples, &a.samples) {
                (Ok(before), Ok(after)) => {
                    let d = after.minus(before);
                    let sum = |name: &str| {
                        d.0.iter()
                            .filter(|(s, _)| s.name == name)
                            .map(|(_, v)| *v)
                            .sum::<f64>()
                    };
                    let cpu = cpu_pid.or_else(|| {
                        after
                            .has("process_cpu_seconds_total")
                            .then(|| d.get("process_cpu_seconds_total", &[]))
                    });
                    replicas.push(Some(ReplicaDelta {
                        executed: d.get("pbft_requests_executed_total", &[]),
                        batches: d.get("pbft_batches_executed_total", &[]),
                        fsyncs: d.get("pbft_fsyncs_total", &[]),
                        signatures: d.get("pbft_signatures_checked_total", &[]),
                        view_changes: d.get("pbft_view_changes_total", &[]),
                        checkpoints: d.get("pbft_checkpoints_total", &[]),
                        state_transfers: d.get("pbft_state_transfers_total", &[]),
                        dropped: sum("pbft_dropped_total"),
                        cpu,
                    }));
                    total.add(&d);
                }
                (Err(e), _) | (_, Err(e)) => {
                    if errors.len() < 8 {
                        errors.push(format!("replica {id}: no metrics: {e}"));
                    }
                    replicas.push(cpu_pid.map(|cpu| ReplicaDelta {
                        cpu: Some(cpu),
                        ..ReplicaDelta::default()
                    }));
                }
            }
        }
        let scraped: Vec<&ReplicaDelta> = replicas
            .iter()
            .flatten()
            .filter(|r| r.executed > 0.0 || r.batches > 0.0)
            .collect();
        let executed: f64 = scraped.iter().map(|r| r.executed).sum();
        let batches: f64 = scraped.iter().map(|r| r.batches).sum();
        let fsyncs: f64 = scraped.iter().map(|r| r.fsyncs).sum();
        let signatures: f64 = scraped.iter().map(|r| r.signatures).sum();
        let view_changes = replicas
            .iter()
            .flatten()
            .map(|r| r.view_changes)
            .fold(0.0, f64::max);
        let phases: Vec<Phase> = METRIC_PHASES
            .iter()
            .map(|&name| {
                let labels = [("phase", name)];
                let count = total.get("pbft_phase_seconds_count", &labels);
                let sum = total.get("pbft_phase_seconds_sum", &labels);
                let buckets = total.buckets("pbft_phase_seconds", &labels);
                Phase {
                    name,
                    count,
                    mean: ratio(sum, count),
                    p50: quantile(&buckets, 0.5),
                    p99: quantile(&buckets, 0.99),
                }
            })
            .collect();

        let h = &i.load.latency;
        let lat = |q: f64| (!h.is_empty()).then(|| h.value_at_quantile(q));
        let throughput = i.load.ok as f64 / seconds;
        let n = i.n as f64;
        let cores = i.cores as f64;
        let ceiling = cores / (n * i.cost.batched);
        let single_ceiling = cores / i.cost.single / n;
        let openssl_ceiling = i.openssl.map(|v| cores * v / n);
        let client_cpu = i.after.client_cpu - i.before.client_cpu;
        let batch_size = ratio(executed, batches);
        let sigs_per_request = ratio(signatures, executed);
        let fsyncs_per_request = ratio(fsyncs, executed);
        let mode = match i.args.rate {
            Some(_) => "open",
            None => "closed",
        };

        let durability = match i.args.durability {
            super::DurabilityArg::Fsync => "fsync",
            super::DurabilityArg::None => "none",
        };
        let json = json!({
            "replicas": i.n,
            "clients": i.args.clients,
            "mode": mode,
            "rate": i.args.rate,
            "payload_bytes": i.args.payload,
            "durability": durability,
            "read_share": i.args.read_share,
            "warmup_s": i.args.warmup,
            "seconds": seconds,
            "ops": i.load.ok,
            "failed": i.load.failed,
            "missed": i.missed,
            "throughput": throughput,
            "latency_us": {
                "p50": lat(0.5), "p90": lat(0.9), "p99": lat(0.99), "p99_9": lat(0.999),
                "max": (!h.is_empty()).then(|| h.max()),
                "mean": (!h.is_empty()).then(|| h.mean()),
            },
            "cpu_s": {
                "client": client_cpu,
                "replicas": replicas.iter().map(|r| r.as_ref().and_then(|r| r.cpu)).collect::<Vec<_>>(),
            },
            "rss_mib": {
                "start": rss_mib(&i.before),
                "end": rss_mib(&i.after),
            },
            "batch_size_mean": batch_size,
            "signatures_per_request": sigs_per_request,
            "fsyncs_per_request": fsyncs_per_request,
            "view_changes": view_changes,
            "phases_ms": phases.iter().map(|p| (p.name.to_string(), json!({
                "count": p.count,
                "mean": p.mean.map(|s| s * 1e3),
                "p50": p.p50.map(|s| s * 1e3),
                "p99": p.p99.map(|s| s * 1e3),
            }))).collect::<serde_json::Map<_, _>>(),
            "crypto": {
                "cores": i.cores,
                "batch": BATCH,
                "batched_verify_us": i.cost.batched * 1e6,
                "single_verify_us": i.cost.single * 1e6,
                "ceiling_ops": ceiling,
                "ceiling_share": throughput / ceiling,
                "single_ceiling_ops": single_ceiling,
                "single_ceiling_share": throughput / single_ceiling,
                "openssl_verify_per_s": i.openssl,
                "openssl_ceiling_ops": openssl_ceiling,
                "openssl_ceiling_share": openssl_ceiling.map(|c| throughput / c),
            },
            "per_replica": replicas.iter().enumerate().map(|(id, r)| match r {
                Some(r) => json!({
                    "id": id, "executed": r.executed, "batches": r.batches, "fsyncs": r.fsyncs,
                    "signatures": r.signatures, "view_changes": r.view_changes,
                    "checkpoints": r.checkpoints, "state_transfers": r.state_transfers,
                    "dropped": r.dropped, "cpu_s": r.cpu,
                }),
                None => json!({"id": id, "metrics": false}),
            }).collect::<Vec<_>>(),
        });

        let mut s = String::new();
        let ms = |us: Option<u64>| {
            us.map_or_else(|| "-".into(), |u| format!("{:.2} ms", u as f64 / 1e3))
        };
        let _ = writeln!(
            s,
            "pbft bench: {} replicas, {} clients, {} loop{}, payload {} B, reads {:.0}%, warm-up {:.1} s{}",
            i.n,
            i.args.clients,
            mode,
            i.args.rate.map_or_else(String::new, |r| format!(" at {r} ops/s")),
            i.args.payload,
            i.args.read_share * 100.0,
            i.args.warmup,
            if durability == "none" {
                ", durability none (no fsync: not crash safe)"
            } else {
                ""
            }
        );
        let _ = writeln!(
            s,
            "operations     {} ok, {} failed, {} missed in {:.2} s",
            i.load.ok, i.load.failed, i.missed, seconds
        );
        let _ = writeln!(s, "throughput     {throughput:.1} ops/s");
        let _ = writeln!(
            s,
            "latency        p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            ms(lat(0.5)),
            ms(lat(0.9)),
            ms(lat(0.99)),
            ms(lat(0.999)),
            ms((!h.is_empty()).then(|| h.max()))
        );
        let cpus: Vec<String> = replicas
            .iter()
            .map(|r| opt(r.as_ref().and_then(|r| r.cpu), 1.0, 2))
            .collect();
        let _ = writeln!(
            s,
            "cpu seconds    replicas [{}], client process {client_cpu:.2}",
            cpus.join(", ")
        );
        let mib = |s: &Snapshot| -> String {
            rss_mib(s)
                .into_iter()
                .map(|m| opt(m, 1.0, 0))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            s,
            "memory (MiB)   replicas' resident memory at the start [{}], at the end [{}]",
            mib(&i.before),
            mib(&i.after)
        );
        let _ = writeln!(
            s,
            "per request    batch size {}  signatures checked {}  fsyncs {} (per replica)",
            opt(batch_size, 1.0, 1),
            opt(sigs_per_request, 1.0, 2),
            opt(fsyncs_per_request, 1.0, 3)
        );
        let _ = writeln!(s, "view changes   {view_changes}");
        let _ = writeln!(
            s,
            "phases (ms)    {:<8} {:>9} {:>9} {:>9} {:>9}",
            "phase", "count", "mean", "p50", "p99"
        );
        for p in &phases {
            let _ = writeln!(
                s,
                "               {:<8} {:>9.0} {:>9} {:>9} {:>9}",
                p.name,
                p.count,
                opt(p.mean, 1e3, 3),
                opt(p.p50, 1e3, 3),
                opt(p.p99, 1e3, 3)
            );
        }
        let _ = writeln!(
            s,
            "crypto         {:.1} us per client signature in batches of {BATCH}, {:.1} us alone; {} cores",
            i.cost.batched * 1e6,
            i.cost.single * 1e6,
            i.cores
        );
        let _ = writeln!(
            s,
            "ceiling        {ceiling:.0} ops/s batched (cores / (N x cost)): throughput is {:.1}% of it; {single_ceiling:.0} ops/s single ({:.1}%)",
            100.0 * throughput / ceiling,
            100.0 * throughput / single_ceiling
        );
        if let (Some(v), Some(c)) = (i.openssl, openssl_ceiling) {
            let _ = writeln!(
                s,
                "openssl        {v:.0} ed25519 verify/s per core (openssl speed): single ceiling {c:.0} ops/s ({:.1}%)",
                100.0 * throughput / c
            );
        }
        Report {
            json,
            human: s,
            ok: i.load.ok,
            failed: i.load.failed,
            errors,
        }
    }

    /// The JSON object.
    pub fn json(&self) -> &Value {
        &self.json
    }

    /// The human-readable lines.
    pub fn human(&self) -> &str {
        &self.human
    }

    /// Exit status: no operation succeeding is an unknown outcome, any
    /// failed operation a failure.
    pub fn verdict(&self) -> CmdResult {
        if self.ok == 0 {
            return Err(Failure::unknown(anyhow::anyhow!(
                "no operation succeeded in the measured interval: the cluster is unavailable or refuses these clients"
            )));
        }
        if self.failed > 0 {
            return Err(Failure::failed(anyhow::anyhow!(
                "{} operations failed",
                self.failed
            )));
        }
        Ok(())
    }
}
