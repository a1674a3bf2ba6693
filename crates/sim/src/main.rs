//! `pbft-sim`: runs seeded simulations of PBFT clusters and prints a table.
//!
//! ```text
//! pbft-sim --seeds 50 --scenario all --f all
//! pbft-sim --scenario byz-equivocate --f 2 --seed 17 --verbose
//! ```

use anyhow::{bail, Result};
use clap::Parser;
use pbft_sim::{run_with, RunOptions, RunReport, Scenario};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Deterministic simulation of PBFT clusters under faults.
#[derive(Parser, Debug)]
#[command(name = "pbft-sim", version)]
struct Args {
    /// A scenario name, or `all`.
    #[arg(long, default_value = "all")]
    scenario: String,
    /// f (the cluster has 3f+1 replicas): 1, 2, 3 or `all`.
    #[arg(long, default_value = "1")]
    f: String,
    /// How many seeds to run per (scenario, f).
    #[arg(long, default_value_t = 20)]
    seeds: u64,
    /// The first seed of the range.
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Run exactly this seed (overrides --seeds).
    #[arg(long)]
    seed: Option<u64>,
    /// Print a trace of every event (best with a single --seed).
    #[arg(long)]
    verbose: bool,
    /// Print every violation in full (otherwise the first lines of each failing run).
    #[arg(long)]
    full: bool,
    /// Worker threads (runs are independent; each stays single-threaded and
    /// deterministic). Default: the number of CPUs.
    #[arg(long)]
    jobs: Option<usize>,
}

/// Runs every seed of one (scenario, f) on `jobs` threads; reports in seed order.
fn run_seeds(
    scenario: Scenario,
    f: usize,
    seeds: &[u64],
    verbose: bool,
    jobs: usize,
) -> Vec<RunReport> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<RunReport>>> = Mutex::new(vec![None; seeds.len()]);
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&seed) = seeds.get(i) else { break };
                let report = run_with(&RunOptions {
                    scenario,
                    f,
                    seed,
                    verbose,
                    honest_twin: false,
                });
                if let Ok(mut r) = results.lock() {
                    r[i] = Some(report);
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_default()
        .into_iter()
        .flatten()
        .collect()
}

#[derive(Default)]
struct Row {
    runs: u64,
    failed: u64,
    violations: u64,
    completed: u64,
    requests: u64,
    max_view: u64,
    view_sum: u64,
    millis: u128,
    /// Laggard runs: time from the heal until the laggard caught up, ms.
    rejoin_ms: Vec<u64>,
}

fn main() -> Result<ExitCode> {
    let args = Args::parse();
    let scenarios: Vec<Scenario> = if args.scenario == "all" {
        Scenario::ALL.to_vec()
    } else {
        vec![args.scenario.parse()?]
    };
    let fs: Vec<usize> = match args.f.as_str() {
        "all" => vec![1, 2, 3],
        s => match s.parse::<usize>() {
            Ok(f) if (1..=3).contains(&f) => vec![f],
            _ => bail!("--f must be 1, 2, 3 or all"),
        },
    };
    let seeds: Vec<u64> = match args.seed {
        Some(s) => vec![s],
        None => (args.first_seed..args.first_seed + args.seeds).collect(),
    };
    if !args.verbose {
        // Core panics are caught and reported as violations; keep stderr clean.
        std::panic::set_hook(Box::new(|_| {}));
    }
    let jobs = match (args.verbose, args.jobs) {
        (true, _) => 1, // one trace at a time
        (false, Some(j)) => j,
        (false, None) => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for &scenario in &scenarios {
        for &f in &fs {
            let mut row = Row::default();
            // Wall-clock time of the sweep, for the table only: never an input of a run.
            #[allow(clippy::disallowed_methods)]
            let started = std::time::Instant::now();
            for report in run_seeds(scenario, f, &seeds, args.verbose, jobs) {
                row.runs += 1;
                row.completed += report.completed as u64;
                row.requests += report.requests as u64;
                row.max_view = row.max_view.max(report.view_changes);
                row.view_sum += report.view_changes;
                row.rejoin_ms.extend(report.rejoin_us.map(|us| us / 1000));
                if !report.passed() {
                    row.failed += 1;
                    row.violations += report.violations.len() as u64;
                    println!("FAIL {}", abbreviate(&report.summary(), args.full));
                    failures.push(report);
                }
            }
            row.millis = started.elapsed().as_millis();
            rows.push((scenario, f, row));
        }
    }
    println!();
    println!(
        "{:<18} {:>2} {:>5} {:>7} {:>10} {:>10} {:>9} {:>9} {:>8}",
        "scenario",
        "f",
        "runs",
        "failed",
        "violations",
        "completed",
        "avg-view",
        "max-view",
        "time-ms"
    );
    for (scenario, f, row) in &rows {
        println!(
            "{:<18} {:>2} {:>5} {:>7} {:>10} {:>10} {:>9.2} {:>9} {:>8}",
            scenario.name(),
            f,
            row.runs,
            row.failed,
            row.violations,
            format!("{}/{}", row.completed, row.requests),
            row.view_sum as f64 / row.runs.max(1) as f64,
            row.max_view,
            row.millis
        );
    }
    for (scenario, f, row) in rows.iter_mut().filter(|(_, _, r)| !r.rejoin_ms.is_empty()) {
        row.rejoin_ms.sort_unstable();
        let at = |q: usize| row.rejoin_ms[(row.rejoin_ms.len() - 1) * q / 100];
        println!(
            "{} f={f}: laggard caught up after the heal in p50 {} ms, p99 {} ms, max {} ms ({} runs)",
            scenario.name(),
            at(50),
            at(99),
            at(100),
            row.rejoin_ms.len()
        );
    }
    if failures.is_empty() {
        println!("\nall runs passed");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("\n{} failing run(s); replay with:", failures.len());
        for r in &failures {
            println!("  {}", r.replay_command());
        }
        Ok(ExitCode::FAILURE)
    }
}

/// The first lines of each violation, unless `full`.
fn abbreviate(summary: &str, full: bool) -> String {
    if full {
        return summary.to_string();
    }
    let mut out = Vec::new();
    let mut in_listing = 0;
    for line in summary.lines() {
        if line.starts_with("    ") {
            in_listing += 1;
            if in_listing > 12 {
                continue;
            }
        } else {
            in_listing = 0;
        }
        out.push(line);
    }
    out.join("\n")
}
