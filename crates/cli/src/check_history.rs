//! `pbft check-history`: is a recorded key-value history linearizable?
//!
//! The file format is [`pbft_history::file`]'s (one JSON object per line);
//! the check is the simulator's ([`pbft_history::check_detailed`]). A
//! violation is reported with the operations that form it, each with its
//! line in the file.
//!
//! Exit codes: 0 linearizable; 1 not linearizable; 2 the file cannot be read
//! or parsed.

use crate::{CmdResult, Failure};
use clap::Args;
use pbft_history::file::{self, Entry, Outcome};
use pbft_history::{format_op, format_result, History, Violation};
use serde_json::{json, Value};
use std::path::PathBuf;

/// Arguments of `pbft check-history`.
#[derive(Args, Debug)]
pub struct CheckHistoryArgs {
    /// The history file (JSON lines, as `pbft chaos` records them).
    pub file: PathBuf,
    /// Print one JSON object: {"linearizable":bool,"operations":N,...,"violations":[...]}.
    #[arg(long)]
    pub json: bool,
}

/// What a check found, in numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Operations with an accepted result.
    pub ok: usize,
    /// Operations that certainly did not take effect.
    pub failed: usize,
    /// Operations whose outcome is unknown.
    pub unknown: usize,
}

/// Counts the outcomes of `entries`.
pub fn counts(entries: &[Entry]) -> Counts {
    let mut c = Counts::default();
    for e in entries {
        match e.outcome {
            Outcome::Ok { .. } => c.ok += 1,
            Outcome::Failed { .. } => c.failed += 1,
            Outcome::Unknown { .. } => c.unknown += 1,
        }
    }
    c
}

/// Checks `entries`; returns the violations with, for each, the entries
/// (indices into `entries`) that form it.
pub fn check(entries: &[Entry]) -> Vec<(Violation, Vec<usize>)> {
    let (history, origin): (History, Vec<usize>) = file::to_history(entries);
    pbft_history::check_detailed(&history)
        .into_iter()
        .map(|v| {
            let lines = v.ops.iter().map(|&i| origin[i]).collect();
            (v, lines)
        })
        .collect()
}

/// One entry, readable, with its line.
pub fn describe(entry: &Entry) -> String {
    let outcome = match &entry.outcome {
        Outcome::Ok { at, result } => format!("-> {at}us {}", format_result(result)),
        Outcome::Failed { at, error } => format!("-> {at}us failed: {error}"),
        Outcome::Unknown { .. } => "-> unknown outcome".to_string(),
    };
    format!(
        "line {}: client {} at {}us {} {}",
        entry.line,
        entry.client,
        entry.invoke_us,
        format_op(&entry.op),
        outcome
    )
}

/// `pbft check-history`.
pub fn run(args: &CheckHistoryArgs) -> CmdResult {
    let entries = file::load(&args.file).map_err(|e| {
        Failure::usage(anyhow::anyhow!(
            "{}: not a usable history: {e}",
            args.file.display()
        ))
    })?;
    let c = counts(&entries);
    let keys: std::collections::BTreeSet<&[u8]> = entries
        .iter()
        .map(|e| pbft_history::op_key(&e.op))
        .collect();
    let violations = check(&entries);
    if args.json {
        let list: Vec<Value> = violations
            .iter()
            .map(|(v, idx)| {
                json!({
                    "key": v.key.as_deref().map(String::from_utf8_lossy),
                    "key_operations": v.key_ops,
                    "lines": idx.iter().map(|&i| entries[i].line).collect::<Vec<_>>(),
                    "operations": idx.iter().map(|&i| describe(&entries[i])).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!(
            "{}",
            json!({
                "linearizable": violations.is_empty(),
                "operations": entries.len(),
                "ok": c.ok,
                "failed": c.failed,
                "unknown": c.unknown,
                "keys": keys.len(),
                "violations": list,
            })
        );
    } else {
        println!(
            "{}: {} operations on {} keys ({} ok, {} failed, {} unknown outcome)",
            args.file.display(),
            entries.len(),
            keys.len(),
            c.ok,
            c.failed,
            c.unknown
        );
        if violations.is_empty() {
            println!("linearizable: yes");
        } else {
            println!("linearizable: NO");
        }
        for (v, idx) in &violations {
            match &v.key {
                Some(key) => println!(
                    "violation on key {:?} ({} operations); these {} are not linearizable together:",
                    String::from_utf8_lossy(key),
                    v.key_ops,
                    idx.len()
                ),
                None => println!("violation: {}", v.message),
            }
            for &i in idx {
                println!("  {}", describe(&entries[i]));
            }
        }
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(Failure::failed(anyhow::anyhow!(
            "the history is not linearizable ({} violation(s))",
            violations.len()
        )))
    }
}
