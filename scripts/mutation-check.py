#!/usr/bin/env python3
"""Removes one protocol check at a time from pbft-core and runs the simulator.

Each mutation must make the simulator report a violation: a check whose
removal no simulated run notices is a check the simulator does not test.

    scripts/mutation-check.py [--seeds N] [--first-seed S] [--only M1,M4] [--scenarios a,b]
                              [--skip-tests] [--keep-worktree]

It works on a throw-away git worktree of HEAD (your working tree is never
touched), builds `pbft-sim` in release mode there and, per mutation:

* runs `--seeds N` seeds from `--first-seed` (default 1000, outside the
  range the sweep test runs) over the mutation's scenarios (or
  `--scenarios`) and every f, and lists the failing runs: candidates for
  the catcher's pinned seeds (`--seeds 0` skips this);
* runs the mutation's named catcher test in `crates/sim/tests/catchers.rs`
  (or, written `package/binary::name`, a test elsewhere, for the few
  mutations no simulated run reaches yet; binary `lib` names a package's
  unit tests).
  A mutation counts as caught only if that test fails (`--skip-tests`
  skips this, and then nothing is counted).

It exits non-zero if any mutation survives its catcher.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile

MUTATIONS = [
    ("M1", "pre-prepare uniqueness per (view, seq) removed: a conflicting pre-prepare overwrites",
     "crates/core/src/normal.rs",
     "        if let Some(existing) = &self.slot(pp.seq).pre_prepare {",
     "        if let Some(existing) = &self.slot(pp.seq).pre_prepare.clone().filter(|e| e.digest == pp.digest) {",
     "byz-equivocate", "pre_prepare_uniqueness"),
    ("M2", "prepared quorum 2f -> f",
     "crates/core/src/normal.rs",
     "        let needed = 2 * self.config.f();\n        let Some(slot) = self.log.get(&seq)",
     "        let needed = self.config.f();\n        let Some(slot) = self.log.get(&seq)",
     "lossy", "prepared_quorum"),
    ("M3", "commit quorum 2f+1 -> f+1",
     "crates/core/src/normal.rs",
     "        let quorum = self.config.quorum();\n        let Some(slot) = self.log.get_mut(&seq)",
     "        let quorum = self.config.f() + 1;\n        let Some(slot) = self.log.get_mut(&seq)",
     "byz-collude", "commit_quorum"),
    ("M4", "size check of prepared certificates in VIEW-CHANGE removed",
     "crates/core/src/view_change.rs",
     "        if proof.prepares.len() < needed ||",
     "        if proof.prepares.len() < needed.min(0) ||",
     "byz-viewchange", "prepared_certificate_size"),
    ("M5", "backups no longer recompute NEW-VIEW's pre-prepares",
     "crates/core/src/view_change.rs",
     "        if !matches {",
     "        if !matches && nv.view.0 == u64::MAX {",
     "byz-viewchange", "new_view_recomputed"),
    ("M6", "pre-prepare batch-digest check removed",
     "crates/core/src/normal.rs",
     "        if batch.digest() != pp.digest {",
     "        if batch.digest() != pp.digest && pp.seq.0 == u64::MAX {",
     "byz-equivocate", "batch_digest"),
    ("M7", "exactly-once check at execution removed",
     "crates/core/src/normal.rs",
     "                Admission::Old | Admission::Last(_) => continue,",
     "                Admission::Old | Admission::Last(_) => {}",
     "crash,long,crash-byz", "exactly_once"),
    ("M8", "checkpoint-proof quorum 2f+1 -> 1",
     "crates/core/src/checkpoint.rs",
     "        signers.len() >= self.config.quorum()",
     "        !signers.is_empty()",
     "byz-checkpoint", "checkpoint_proof_quorum"),
    ("M9", "NEW-VIEW takes the lowest-view certificate instead of the highest",
     "crates/core/src/view_change.rs",
     ".and_modify(|b| *b = (*b).max(candidate))",
     ".and_modify(|b| *b = (*b).min(candidate))",
     "lossy,byz-viewchange", "pbft-core/protocol::new_view_plan_picks_highest_view_and_fills_gaps"),
    ("M10", "high water mark no longer bounds accepted pre-prepares",
     "crates/core/src/replica.rs",
     "        seq > self.stable.seq && seq <= self.high_water_mark()",
     "        seq > self.stable.seq",
     "lossy,partition", "high_water_mark"),
    ("M11", "the stable checkpoint is persisted only with its state (the window moves in memory alone)",
     "crates/core/src/checkpoint.rs",
     "        out.push(Output::Persist(Record::Stable(proof.clone())));\n        self.logged_snapshots.stable(seq);\n",
     "        if self.own_checkpoints.get(&seq).is_some_and(|image| image.digest() == proof.digest) {\n"
     "            out.push(Output::Persist(Record::Stable(proof.clone())));\n            self.logged_snapshots.stable(seq);\n        }\n",
     "crash-byz", "persisted_window"),
    ("M12", "compaction keeps the latest Executed record instead of the highest",
     "crates/core/src/io.rs",
     ".max_by_key(|(seq, i)| (*seq, std::cmp::Reverse(*i)))",
     ".max_by_key(|(_, i)| *i)",
     "crash,crash-byz", "pbft-core/protocol::compacted_records_restore_the_same_replica"),
    ("M13", "every execution restarts the view-change deadlines of all waiting requests",
     "crates/core/src/normal.rs",
     "            self.view_change_attempts = 0;\n            self.update_view_change_timer();",
     "            self.view_change_attempts = 0;\n"
     "            let deadline = self.now + self.view_change_timeout();\n"
     "            self.pending.values_mut().for_each(|p| p.deadline = Some(deadline));\n"
     "            self.update_view_change_timer();",
     "byz-censor", "per_request_timers"),
    ("M14", "PROGRESS is never sent (no status, no retransmission)",
     "crates/core/src/retransmit.rs",
     "        if self.last_executed == self.progress_mark {",
     "        if self.last_executed == self.progress_mark && self.id.0 == u32::MAX {",
     "laggard", "retransmission"),
    ("M15", "client requests nested in a batch are not signature-checked",
     "crates/core/src/message.rs",
     "    for request in &batch.requests {\n        checks.add(request.client.0, request);",
     "    for request in batch.requests.iter().filter(|_| false) {\n        checks.add(request.client.0, request);",
     "byz-forge", "nested_request_signatures"),
    ("M16", "a message's shape is no longer checked before its signatures",
     "crates/core/src/message.rs",
     "        self.check_shape(config)?;\n",
     "",
     "byz-flood", "pbft-core/tamper::oversized_lists_are_refused_before_their_signatures_are_checked"),
    ("M17", "a NEW-VIEW carries every re-issued batch, however large",
     "crates/core/src/view_change.rs",
     "            if bytes + size > NEW_VIEW_BATCH_BYTES",
     "            if bytes + size > usize::MAX / 2",
     "normal", "pbft-core/protocol::a_new_view_carries_part_of_its_batches_and_the_rest_are_fetched"),
    ("M18", "a withheld digest vouches for any result, not only the one it is the digest of",
     "crates/core/src/client_quorum.rs",
     "                ReplyStatus::Withheld => r.as_slice() == digest.0,",
     "                ReplyStatus::Withheld => !r.is_empty(),",
     "byz-conflict", "pbft-core/client_table::a_withheld_digest_vouches_only_for_the_result_it_matches"),
    ("M19", "the ordering watch never leaves the view (a slow primary keeps it)",
     "crates/core/src/ordering.rs",
     "        if !self.awaits_ordering() {\n            return;\n        }\n        if self.state_fetch",
     "        if !self.awaits_ordering() || self.id.0 != u32::MAX {\n            return;\n        }\n        if self.state_fetch",
     "byz-slow-primary", "ordering_watch"),
    ("M20", "replies skip the log in fast read mode too",
     "crates/core/src/config.rs",
     "        self.read_mode == ReadMode::Fast\n",
     "        false\n",
     "crash-read", "replies_wait_in_fast_mode"),
    ("M21", "an early reply does not wait for its batch's prepared certificate",
     "crates/node/src/protocol.rs",
     "            .is_none_or(|&p| p <= self.outbox.durable_position())",
     "            .is_none_or(|&p| p <= u64::MAX)",
     "normal", "pbft-node/lib::tests::a_reply_waits_for_its_own_prepared_certificate"),
    ("M22", "a restored replica forgets that it may have voted ahead of its records",
     "crates/core/src/replica.rs",
     "            r.amnesia = Some(amnesia);",
     "            let _ = amnesia;",
     "crash,crash-byz", "restored_primary_keeps_its_amnesia"),
    ("M23", "a restored backup prepares where it may have prepared ahead of its records",
     "crates/core/src/normal.rs",
     "            if !self.may_vote(self.view, seq) {",
     "            if false && !self.may_vote(self.view, seq) {",
     "crash-byz,byz-equivocate",
     "pbft-core/protocol::restored_backup_sends_no_prepare_where_it_may_have_sent_one"),
]


def run(cmd, cwd, env=None):
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)


def catcher_fails(work, env, catcher):
    """Whether the catcher test fails (a build failure is not a catch): a
    name alone is `catchers::<name>` of pbft-sim; `package/binary::name` is
    a test elsewhere (binary `lib`: the package's unit tests), for a
    mutation no simulated run reaches yet."""
    package, binary = "pbft-sim", "catchers"
    if "::" in catcher:
        target, catcher = catcher.split("::", 1)
        package, binary = target.split("/")
    target = ["--lib"] if binary == "lib" else ["--test", binary]
    r = subprocess.run(["cargo", "test", "-p", package, "--release", *target, "--",
                        "--exact", catcher],
                       cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if f"test {catcher} ... FAILED" in r.stdout:
        return True
    if f"test {catcher} ... ok" not in r.stdout:
        print(f"    catcher {catcher} did not run:\n{r.stdout[-1500:]}")
    return False


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=40, help="seeds per (scenario, f); 0: none")
    ap.add_argument("--first-seed", type=int, default=1000, help="first seed of the range")
    ap.add_argument("--only", default="", help="comma-separated mutation ids")
    ap.add_argument("--scenarios", default="", help="comma-separated scenario names (default: the mutation's)")
    ap.add_argument("--skip-tests", action="store_true", help="only the seed range, not the catcher test")
    ap.add_argument("--keep-worktree", action="store_true")
    args = ap.parse_args()
    only = set(filter(None, args.only.split(",")))

    top = run(["git", "rev-parse", "--show-toplevel"], os.getcwd()).stdout.strip()
    work = tempfile.mkdtemp(prefix="pbft-mutation-")
    run(["git", "worktree", "add", "--detach", work, "HEAD"], top)
    env = dict(os.environ, CARGO_TARGET_DIR=os.path.join(top, "target", "mutation"))
    survivors = []
    try:
        for mid, name, path, old, new, scenarios, catcher in MUTATIONS:
            if only and mid not in only:
                continue
            file = os.path.join(work, path)
            src = open(file).read()
            if old not in src:
                print(f"{mid} {name}: pattern not found (the code moved; update this script)")
                survivors.append(mid)
                continue
            open(file, "w").write(src.replace(old, new, 1))
            try:
                b = run(["cargo", "build", "--release", "-p", "pbft-sim"], work, env)
                if b.returncode != 0:
                    print(f"{mid} {name}: does not compile\n{b.stderr[-2000:]}")
                    survivors.append(mid)
                    continue
                sim = os.path.join(env["CARGO_TARGET_DIR"], "release", "pbft-sim")
                print(f"{mid} {name}")
                if args.seeds > 0:
                    out = ""
                    for scenario in (args.scenarios or scenarios).split(","):
                        r = run([sim, "--seeds", str(args.seeds), "--first-seed", str(args.first_seed),
                                 "--scenario", scenario, "--f", "all"], work, env)
                        out += r.stdout
                    failing = list(dict.fromkeys(re.findall(r"--scenario (\S+) --f (\d) --seed (\d+)", out)))
                    shown = ", ".join(f"{s} f={f} seed={n}" for s, f, n in failing[:8])
                    print(f"    failing runs in seeds {args.first_seed}..{args.first_seed + args.seeds}: "
                          f"{len(failing)} {shown}")
                if not args.skip_tests:
                    caught = catcher_fails(work, env, catcher)
                    print(f"    catcher {catcher}: {'FAILS (caught)' if caught else 'passes (NOT caught)'}")
                    if not caught:
                        survivors.append(mid)
            finally:
                open(file, "w").write(src)
            sys.stdout.flush()
    finally:
        if not args.keep_worktree:
            run(["git", "worktree", "remove", "--force", work], top)
    sys.exit(1 if survivors else 0)


if __name__ == "__main__":
    main()
