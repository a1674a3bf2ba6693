//! Seeds that catch a removed protocol check (`scripts/mutation-check.py`):
//! each passes with the real core, and fails when the check named above it is
//! taken out. Pinned here so the link survives changes to the sweep's seed
//! range. A change to the simulator's random choices can move these; re-run
//! the script and update the seeds when that happens.

use pbft_sim::{run, Scenario};

fn check(scenario: Scenario, f: usize, seed: u64) {
    let report = run(scenario, f, seed);
    assert!(report.passed(), "{}", report.summary());
}

/// M1: a backup accepts only one pre-prepare per (view, seq).
#[test]
fn pre_prepare_uniqueness() {
    check(Scenario::ByzEquivocate, 1, 11);
    check(Scenario::ByzEquivocate, 1, 15);
}

/// M2: prepared needs 2f matching prepares.
#[test]
fn prepared_quorum() {
    check(Scenario::Lossy, 1, 0);
}

/// M3: committed-local needs 2f+1 commits. Colluders send their PREPAREs
/// and COMMITs to a victim nobody hears, which then holds f+1 COMMITs for a
/// batch no other honest replica prepared; the next view replaces it.
#[test]
fn commit_quorum() {
    check(Scenario::ByzCollude, 1, 0);
    check(Scenario::ByzCollude, 2, 1);
    check(Scenario::ByzCollude, 3, 0);
}

/// M4: a prepared certificate in a VIEW-CHANGE needs 2f prepares.
#[test]
fn prepared_certificate_size() {
    check(Scenario::ByzViewChange, 1, 26);
    check(Scenario::ByzViewChange, 2, 20);
    check(Scenario::ByzViewChange, 3, 0);
}

/// M5: every backup recomputes NEW-VIEW's pre-prepares from its
/// VIEW-CHANGEs (a forging new primary alters them).
#[test]
fn new_view_recomputed() {
    check(Scenario::ByzViewChange, 1, 20);
    check(Scenario::ByzViewChange, 2, 8);
    check(Scenario::ByzViewChange, 3, 78);
}

/// M6: a pre-prepare's batch must match its digest.
#[test]
fn batch_digest() {
    check(Scenario::ByzEquivocate, 1, 1);
}

/// M7: a request executes at most once per (client, request id).
#[test]
fn exactly_once() {
    check(Scenario::Lossy, 1, 0);
}

/// M8: a checkpoint proof needs 2f+1 signatures (state transfer).
#[test]
fn checkpoint_proof_quorum() {
    check(Scenario::ByzCheckpoint, 1, 5);
}

/// M9: NEW-VIEW re-issues the certificate of the highest view.
#[test]
fn new_view_highest_certificate() {
    check(Scenario::Lossy, 1, 1);
}

/// M10: messages above the high water mark are refused (a lagging replica
/// would otherwise log slots beyond its window: the invariant check panics).
#[test]
fn high_water_mark() {
    check(Scenario::Lossy, 1, 12);
    check(Scenario::Partition, 2, 2);
}
