//! Seeds across every scenario and f: each run must pass every checker, and
//! each scenario's fault must really have happened (a broken injector would
//! otherwise pass in silence).
//!
//! `PBFT_SIM_SEEDS` (default 16) sets the seeds per (scenario, f): the default
//! gives 19 scenarios x 3 values of f x 16 seeds = 912 runs, plus the long
//! scenario, whose runs are each some hundred times longer, at a quarter of
//! the seeds.

use pbft_sim::{run, RunReport, Scenario};

fn seeds() -> u64 {
    std::env::var("PBFT_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(16)
}

/// A fault's name and how many of it a run saw.
type FaultCount = (&'static str, fn(&RunReport) -> u64);

/// What must add up to more than zero over a scenario's runs.
fn fault_happened(scenario: Scenario) -> Option<FaultCount> {
    Some(match scenario {
        Scenario::Crash => ("votes sent ahead of their records", |r| r.votes_ahead),
        Scenario::CrashByz => ("crashes inside a group write", |r| r.torn_writes),
        Scenario::CrashRead => ("replies sent ahead of their records", |r| r.replies_ahead),
        Scenario::ByzBadSig | Scenario::ByzForge => ("rejected signatures", |r| r.rejected),
        Scenario::ByzCensor => ("censored requests", |r| r.censored_requests),
        Scenario::ByzFlood => ("messages refused for their shape", |r| r.malformed),
        Scenario::ByzCheckpoint | Scenario::Partition => ("state transfers", |r| r.state_transfers),
        Scenario::ByzEquivocate
        | Scenario::ByzViewChange
        | Scenario::ByzSlowPrimary
        | Scenario::Lossy
        | Scenario::Mixed => ("view changes", |r| r.entered_views),
        Scenario::Laggard => ("laggards caught up", |r| u64::from(r.rejoin_us.is_some())),
        // Two full windows of the node's default (128) executed.
        Scenario::Long => ("windows turned over", |r| u64::from(r.max_executed >= 256)),
        _ => return None,
    })
}

fn sweep(scenario: Scenario) {
    let mut failures = Vec::new();
    let mut completed = 0;
    let mut faults = 0;
    let mut runs = 0;
    let fault = fault_happened(scenario);
    let seeds = match scenario {
        Scenario::Long => seeds().div_ceil(4),
        _ => seeds(),
    };
    for f in 1..=3 {
        for seed in 0..seeds {
            let report = run(scenario, f, seed);
            completed += report.completed;
            runs += 1;
            if let Some((_, count)) = fault {
                faults += count(&report);
            }
            if !report.passed() {
                failures.push(report.summary());
            }
        }
    }
    assert!(completed > 0, "{scenario}: no operation completed");
    if let Some((what, _)) = fault {
        assert!(faults > 0, "{scenario}: no {what} in {runs} runs");
        if scenario == Scenario::Laggard {
            assert_eq!(faults, runs, "{scenario}: a laggard never caught up");
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

macro_rules! sweeps {
    ($($name:ident => $scenario:expr),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                sweep($scenario);
            }
        )*
    };
}

sweeps! {
    normal => Scenario::Normal,
    lossy => Scenario::Lossy,
    partition => Scenario::Partition,
    crash => Scenario::Crash,
    byz_silent => Scenario::ByzSilent,
    byz_equivocate => Scenario::ByzEquivocate,
    byz_conflict => Scenario::ByzConflict,
    byz_badsig => Scenario::ByzBadSig,
    byz_replay => Scenario::ByzReplay,
    byz_checkpoint => Scenario::ByzCheckpoint,
    byz_viewchange => Scenario::ByzViewChange,
    byz_slow_primary => Scenario::ByzSlowPrimary,
    byz_collude => Scenario::ByzCollude,
    crash_byz => Scenario::CrashByz,
    crash_read => Scenario::CrashRead,
    byz_censor => Scenario::ByzCensor,
    byz_forge => Scenario::ByzForge,
    byz_flood => Scenario::ByzFlood,
    laggard => Scenario::Laggard,
    mixed => Scenario::Mixed,
    long => Scenario::Long,
}

/// Completions per simulated second over the run's completions after `from`
/// (microseconds): (count, span).
fn rate_after(report: &RunReport, from: u64) -> Option<(u64, u64)> {
    let after: Vec<u64> = report
        .completions_us
        .iter()
        .copied()
        .filter(|&t| t >= from)
        .collect();
    let (first, last) = (*after.first()?, *after.last()?);
    (after.len() >= 10 && last > first).then(|| (after.len() as u64, last - first))
}

/// Once a slow or censoring primary has been replaced for good, the
/// cluster completes operations at no less than half the rate of the same
/// plan with every replica honest (its fault-free twin). Printed with
/// `--nocapture`.
fn throughput_after_replacement(scenario: Scenario) {
    let (mut ops, mut span, mut twin_ops, mut twin_span) = (0u64, 0u64, 0u64, 0u64);
    for f in 1..=3 {
        for seed in 0..seeds() {
            let report = run(scenario, f, seed);
            let Some(from) = report.honest_primary_from_us.filter(|&t| t > 0) else {
                continue;
            };
            let (Some((n, s)), Some((tn, ts))) = (
                rate_after(&report, from),
                rate_after(&pbft_sim::run_honest_twin(scenario, f, seed), 0),
            ) else {
                continue;
            };
            (ops, span, twin_ops, twin_span) = (ops + n, span + s, twin_ops + tn, twin_span + ts);
        }
    }
    assert!(
        ops > 0 && twin_ops > 0,
        "{scenario}: no run replaced its primary"
    );
    let rate = ops as f64 / (span as f64 / 1e6);
    let twin = twin_ops as f64 / (twin_span as f64 / 1e6);
    println!(
        "{scenario}: {rate:.0} ops/s once the faulty primary was replaced, {twin:.0} ops/s fault-free: {:.0}%",
        100.0 * rate / twin
    );
    assert!(
        rate >= 0.5 * twin,
        "{scenario}: {rate:.0} ops/s after the replacement, below half of {twin:.0} fault-free"
    );
}

#[test]
fn throughput_after_a_slow_primary_is_replaced() {
    throughput_after_replacement(Scenario::ByzSlowPrimary);
}

#[test]
fn throughput_after_a_censoring_primary_is_replaced() {
    throughput_after_replacement(Scenario::ByzCensor);
}
