#!/usr/bin/env python3
"""Removes one protocol check at a time from pbft-core and runs the simulator.

Each mutation must make the simulator report a violation: a check whose
removal no simulated run notices is a check the simulator does not test.

    scripts/mutation-check.py [--seeds N] [--only M1,M4] [--scenarios a,b] [--skip-tests] [--keep-worktree]

It works on a throw-away git worktree of HEAD (your working tree is never
touched), builds `pbft-sim` in release mode there, runs `--seeds N` over every
scenario and f, then the simulator's tests (`cargo test -p pbft-sim`: the
sweep, the pinned catchers and regressions), and prints, per mutation, the
failing runs and the failing tests.
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
     "        if let Some(existing) = &self.slot(pp.seq).pre_prepare.clone().filter(|e| e.digest == pp.digest) {"),
    ("M2", "prepared quorum 2f -> f",
     "crates/core/src/normal.rs",
     "        let needed = 2 * self.config.f();\n        let Some(slot) = self.log.get(&seq)",
     "        let needed = self.config.f();\n        let Some(slot) = self.log.get(&seq)"),
    ("M3", "commit quorum 2f+1 -> f+1",
     "crates/core/src/normal.rs",
     "        let quorum = self.config.quorum();\n        let Some(slot) = self.log.get_mut(&seq)",
     "        let quorum = self.config.f() + 1;\n        let Some(slot) = self.log.get_mut(&seq)"),
    ("M4", "size check of prepared certificates in VIEW-CHANGE removed",
     "crates/core/src/view_change.rs",
     "        if proof.prepares.len() < needed ||",
     "        if proof.prepares.len() < needed.min(0) ||"),
    ("M5", "backups no longer recompute NEW-VIEW's pre-prepares",
     "crates/core/src/view_change.rs",
     "        if !matches {",
     "        if !matches && nv.view.0 == u64::MAX {"),
    ("M6", "pre-prepare batch-digest check removed",
     "crates/core/src/normal.rs",
     "        if batch.digest() != pp.digest {",
     "        if batch.digest() != pp.digest && pp.seq.0 == u64::MAX {"),
    ("M7", "exactly-once check at execution removed",
     "crates/core/src/normal.rs",
     "                continue; // duplicate: executed at most once per (client, id)",
     "                // mutated: duplicates execute again"),
    ("M8", "checkpoint-proof quorum 2f+1 -> 1",
     "crates/core/src/checkpoint.rs",
     "        signers.len() >= self.config.quorum()",
     "        !signers.is_empty()"),
    ("M9", "NEW-VIEW takes the lowest-view certificate instead of the highest",
     "crates/core/src/view_change.rs",
     ".and_modify(|b| *b = (*b).max(candidate))",
     ".and_modify(|b| *b = (*b).min(candidate))"),
    ("M10", "high water mark no longer bounds accepted pre-prepares",
     "crates/core/src/replica.rs",
     "        seq > self.stable.seq && seq <= self.high_water_mark()",
     "        seq > self.stable.seq"),
]


def run(cmd, cwd, env=None):
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)


def failing_tests(work, env):
    """The simulator's tests that fail, as `binary::test`."""
    # One stream, so each result follows the "Running" line of its binary.
    r = subprocess.run(["cargo", "test", "-p", "pbft-sim", "--release", "--no-fail-fast", "--tests"],
                       cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    failed, binary = [], "?"
    for line in r.stdout.splitlines():
        m = re.match(r"\s*Running (?:unittests )?(?:tests/)?(\S+?)(?:\.rs)? \(", line)
        if m:
            binary = m.group(1)
        m = re.match(r"test (\S+) \.\.\. FAILED", line)
        if m:
            failed.append(f"{binary}::{m.group(1)}")
    return failed


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=100, help="seeds per (scenario, f)")
    ap.add_argument("--only", default="", help="comma-separated mutation ids")
    ap.add_argument("--scenarios", default="all", help="comma-separated scenario names (default: all)")
    ap.add_argument("--skip-tests", action="store_true", help="only the seed sweep, not `cargo test`")
    ap.add_argument("--keep-worktree", action="store_true")
    args = ap.parse_args()
    only = set(filter(None, args.only.split(",")))

    top = run(["git", "rev-parse", "--show-toplevel"], os.getcwd()).stdout.strip()
    work = tempfile.mkdtemp(prefix="pbft-mutation-")
    run(["git", "worktree", "add", "--detach", work, "HEAD"], top)
    env = dict(os.environ, CARGO_TARGET_DIR=os.path.join(top, "target", "mutation"))
    survivors = []
    try:
        for mid, name, path, old, new in MUTATIONS:
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
                out = ""
                for scenario in args.scenarios.split(","):
                    r = run([sim, "--seeds", str(args.seeds), "--scenario", scenario, "--f", "all"], work, env)
                    out += r.stdout
                failing = list(dict.fromkeys(re.findall(r"--scenario (\S+) --f (\d) --seed (\d+)", out)))
                if failing:
                    shown = ", ".join(f"{s} f={f} seed={n}" for s, f, n in failing[:6])
                    print(f"{mid} {name}: CAUGHT by {len(failing)} run(s): {shown}")
                else:
                    print(f"{mid} {name}: NOT caught in {args.seeds} seeds per scenario and f ({args.scenarios})")
                tests = [] if args.skip_tests else failing_tests(work, env)
                if tests:
                    print(f"    failing tests: {', '.join(tests)}")
                elif not args.skip_tests:
                    print("    failing tests: none")
                if not failing and not tests:
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
