//! Seeds across every scenario and f: each run must pass every checker.
//!
//! `PBFT_SIM_SEEDS` (default 16) sets the seeds per (scenario, f): the default
//! gives 14 scenarios x 3 values of f x 16 seeds = 672 runs.

use pbft_sim::{run, Scenario};

fn seeds() -> u64 {
    std::env::var("PBFT_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(16)
}

fn sweep(scenario: Scenario) {
    let mut failures = Vec::new();
    let mut completed = 0;
    for f in 1..=3 {
        for seed in 0..seeds() {
            let report = run(scenario, f, seed);
            completed += report.completed;
            if !report.passed() {
                failures.push(report.summary());
            }
        }
    }
    assert!(completed > 0, "{scenario}: no operation completed");
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
    mixed => Scenario::Mixed,
}
