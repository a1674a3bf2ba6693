//! The same seed gives the same run; different seeds differ.

use pbft_sim::{run, Scenario};

#[test]
fn same_seed_same_trace() {
    for scenario in [
        Scenario::Mixed,
        Scenario::Lossy,
        Scenario::ByzViewChange,
        Scenario::Crash,
    ] {
        for seed in [1, 7] {
            let a = run(scenario, 1, seed);
            let b = run(scenario, 1, seed);
            assert_eq!(a.trace_hash, b.trace_hash, "{scenario} seed {seed}");
            assert_eq!(a.violations, b.violations);
            assert_eq!(a.completed, b.completed);
            assert_eq!(a.events, b.events);
            assert_eq!(a.end_time_us, b.end_time_us);
        }
    }
}

#[test]
fn different_seeds_differ() {
    let a = run(Scenario::Lossy, 1, 1);
    let b = run(Scenario::Lossy, 1, 2);
    assert_ne!(a.trace_hash, b.trace_hash);
}

#[test]
fn scenario_names_round_trip() {
    for s in Scenario::ALL {
        assert_eq!(s.name().parse::<Scenario>(), Ok(s));
    }
    assert!("nope".parse::<Scenario>().is_err());
}
