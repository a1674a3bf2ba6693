//! Seeds that found bugs in the core, kept as regression tests (each bug is
//! described above its seeds; all three are fixed).

use pbft_sim::{run, Scenario};

fn check(scenario: Scenario, f: usize, seed: u64) {
    let report = run(scenario, f, seed);
    assert!(report.passed(), "{}", report.summary());
}

/// A restarted (or lagging) primary proposes below the low water mark after
/// its stable checkpoint jumps past `last_assigned` (state transfer): the
/// "slot at or below the low water mark" invariant panics.
#[test]
fn crash_f1_seed_1132() {
    check(Scenario::Crash, 1, 1132);
}

/// Same bug as `crash_f1_seed_1132`, during a state fetch.
#[test]
fn crash_f2_seed_1054() {
    check(Scenario::Crash, 2, 1054);
}

/// Same bug as `crash_f1_seed_1132`.
#[test]
fn mixed_f3_seed_1111() {
    check(Scenario::Mixed, 3, 1111);
}

/// Replicas in different views forward a pending REQUEST to each other's
/// "primary" forever; a replaying Byzantine replica multiplies the loops.
#[test]
fn byz_replay_f2_seed_1181() {
    check(Scenario::ByzReplay, 2, 1181);
}

/// Same bug as `byz_replay_f2_seed_1181`.
#[test]
fn byz_replay_f3_seed_1257() {
    check(Scenario::ByzReplay, 3, 1257);
}

/// Same bug as `byz_replay_f2_seed_1181`.
#[test]
fn mixed_f3_seed_1248() {
    check(Scenario::Mixed, 3, 1248);
}

/// A minority (f replicas) that got ahead during a partition keeps starting
/// view changes on its own timer and stays ahead of the majority forever:
/// the view-change timer starts before 2f+1 VIEW-CHANGEs for the view are held.
#[test]
fn mixed_f2_seed_1061() {
    check(Scenario::Mixed, 2, 1061);
}

/// Same bug as `mixed_f2_seed_1061`: one honest replica ran ahead (v13) of the
/// other four (v10); with two Byzantine replicas no quorum forms for 35 s.
#[test]
fn mixed_f2_seed_48() {
    check(Scenario::Mixed, 2, 48);
}

/// Same bug as `mixed_f2_seed_1061`: two honest replicas stay ahead (v14) of
/// the v12 majority, which then needs two of the three Byzantine replicas to
/// reach a quorum; 3 of 42 operations complete after the heal.
#[test]
fn mixed_f3_seed_28() {
    check(Scenario::Mixed, 3, 28);
}

/// After a partition, two honest replicas had moved one view further than the
/// other four; each replica keeps only the latest VIEW-CHANGE of each peer, so
/// the four never held 2f+1 for their own view and never started the
/// new-view timer: no timer anywhere, no progress. The timer now starts once
/// 2f+1 replicas sent a VIEW-CHANGE for this view *or a later one*.
#[test]
fn mixed_f2_seed_294() {
    check(Scenario::Mixed, 2, 294);
}

/// A stale read on the read-only fast path: a write returned after f+1 = 2
/// replies; one of those two replicas then crashed and came back from an older
/// checkpoint, and with the two replicas that had not executed the write yet
/// it gave 2f+1 matching answers without it. Fixed twice over: ordered results
/// need 2f+1 matching replies whenever fast reads are in use, and a restarted
/// replica answers read-only requests only once it is back where it was.
#[test]
fn crash_f1_seed_5016() {
    check(Scenario::Crash, 1, 5016);
}

/// CHECKPOINT messages lost in a partition were never sent again: checkpoints
/// never became stable, the window filled, and every new primary was stuck
/// (ten view changes, no progress). A replica now re-sends its checkpoints
/// above the stable one with each VIEW-CHANGE and each VIEW-CHANGE resend.
#[test]
fn mixed_f3_seed_589() {
    check(Scenario::Mixed, 3, 589);
}

/// Bug 1 of issue 11: a lagging replica moved its low water mark to a
/// stable checkpoint whose state it was still fetching, accepted
/// pre-prepares in the new window and voted for them, then crashed;
/// restore rebuilt the window from the last checkpoint it had persisted and
/// dropped those slots. Without its certificate, and with a forgetful
/// Byzantine replica hiding the same slot, the next NEW-VIEW refilled a slot
/// that honest replicas had executed: r0 and r3 executed different batches
/// at n12. Fixed by persisting the stable checkpoint (`Record::Stable`) as
/// soon as the window moves.
#[test]
fn crash_byz_f1_seed_196() {
    check(Scenario::CrashByz, 1, 196);
}

/// Replicas sent CHECKPOINTs for states they kept only in memory; once
/// 2f+1 had sent one and all had crashed, the stable checkpoint's state
/// existed nowhere and every replica waited for it for ever (seed 66, a
/// liveness failure), or fetched and executed from diverging points (seed
/// 277). Fixed by persisting each checkpoint's snapshot
/// (`Record::Snapshot`) before its CHECKPOINT is sent.
#[test]
fn crash_byz_f1_seeds_66_277() {
    check(Scenario::CrashByz, 1, 66);
    check(Scenario::CrashByz, 1, 277);
}

/// Bug 4 of issue 11: a censoring primary never orders client c0's
/// requests while the other clients keep it busy. The backups' single
/// view-change timer restarted on every execution and never fired, so c0
/// waited until everyone else was done (4.1 s against a bound of 4 s).
/// Fixed by per-request deadlines.
#[test]
fn byz_censor_seeds() {
    check(Scenario::ByzCensor, 1, 20);
    check(Scenario::ByzCensor, 2, 2);
    check(Scenario::ByzCensor, 3, 250);
}

/// A laggard's peers answered PROGRESS at most once per retry interval, the
/// period at which PROGRESS is sent. The primary lost one backup's PREPARE
/// (1% loss after the heal) while the laggard still followed passively; its
/// next PROGRESS came 48 ms after the previous one, inside the 50 ms limit,
/// and was refused, so the request's timers fired and the whole group
/// changed view to let the laggard in. Fixed by answering up to twice per
/// interval (`protocol.rs::progress_is_answered_at_most_twice_per_retry_interval`).
#[test]
fn laggard_f1_seed_20023() {
    check(Scenario::Laggard, 1, 20023);
}

/// Three Byzantine replicas relayed requests of clients they made up, faster
/// than a primary with batches of one and one instance in flight orders
/// them. Every backup started a view-change deadline for each, so views
/// changed 96 times and an honest client's request never completed. Fixed
/// by `Input::Relayed`: a relayed request starts no deadline at a backup,
/// and a primary orders requests from clients' own links first.
#[test]
fn byz_flood_f3_seed_20018() {
    check(Scenario::ByzFlood, 3, 20018);
}

/// A request a backup knew only as relayed got its deadline when it showed
/// up in a batch; at the next view change only requests from clients' own
/// links had their deadlines renewed, so this one kept its old, expired
/// deadline and the backup left the new view the moment it entered it. With
/// one replica silent that left two active replicas, and the cluster stopped
/// for good. Fixed: every request that has a deadline gets a fresh one in a
/// new view.
#[test]
fn mixed_f1_seed_30191() {
    check(Scenario::Mixed, 1, 30191);
}

/// With the laggard stranded in a view of its own (it does not vote), the
/// other three had no margin, and 1% loss after the heal dropped the
/// pre-prepare of n33 on its way to r2. r2 saw n34's and n35's but sent
/// PROGRESS only at its next tick, after the others' request deadlines had
/// fired: the group changed view. Fixed: a backup that gets a pre-prepare
/// whose predecessor it never got sends PROGRESS at once.
#[test]
fn laggard_f1_seed_3226() {
    check(Scenario::Laggard, 1, 3226);
}

/// The same margin, two losses in one instance (n43's pre-prepare to r1,
/// then r0's COMMIT to r2): each recovery waited for a PROGRESS tick of half
/// a timeout, together longer than the request deadline. Fixed: while a
/// pre-prepared sequence number waits, PROGRESS ticks every quarter of a
/// timeout. Seeds 3783, 4089 (laggard) and 4840 (crash-byz, f=1) failed
/// the same way.
#[test]
fn laggard_f1_seed_3575() {
    check(Scenario::Laggard, 1, 3575);
    check(Scenario::Laggard, 1, 3783);
    check(Scenario::Laggard, 1, 4089);
    check(Scenario::CrashByz, 1, 4840);
}

/// The view-0 primary lost the COMMITs of its own n35 (1% loss after the
/// heal); by the time a certificate came, n35 was below the new stable
/// checkpoint, so it fetched that state. The request it had proposed at
/// n35 reached its deadline 8 ms into the fetch, and the primary left its
/// own view just before the state (which held the request's result)
/// arrived. Fixed: while a replica fetches state, its view-change timer
/// fires no sooner than one timeout after the fetch began.
#[test]
fn laggard_f2_seed_9844() {
    check(Scenario::Laggard, 2, 9844);
}
