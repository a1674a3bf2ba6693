//! Liveness: once the faults heal, every client operation completes within a
//! bound of simulated time.

use crate::checker::linearizability::{format_op, History};

/// What the liveness check needs to know about the end of a run.
#[derive(Clone, Debug)]
pub struct LivenessInput<'a> {
    /// The client history.
    pub history: &'a History,
    /// Per client: operations it never got to issue.
    pub not_issued: Vec<usize>,
    /// When the network healed, microseconds.
    pub heal_at: u64,
    /// When the run stopped, microseconds.
    pub end: u64,
    /// The longest an operation may take after `max(invoke, heal_at)`, microseconds.
    pub bound: u64,
}

/// Returns one violation per operation that did not complete in time, and
/// per client that could not issue all its operations.
pub fn check(input: &LivenessInput<'_>) -> Vec<String> {
    let mut violations = Vec::new();
    for (i, op) in input.history.ops.iter().enumerate() {
        let start = op.invoke.max(input.heal_at);
        match &op.response {
            None => violations.push(format!(
                "liveness: op #{i} of client c{} ({}) invoked at {}ms never completed (heal at {}ms, run ended at {}ms)",
                op.client,
                format_op(&op.op),
                op.invoke / 1000,
                input.heal_at / 1000,
                input.end / 1000
            )),
            Some(r) if r.at > start + input.bound => violations.push(format!(
                "liveness: op #{i} of client c{} took until {}ms (invoked {}ms, heal {}ms, bound {}ms)",
                op.client,
                r.at / 1000,
                op.invoke / 1000,
                input.heal_at / 1000,
                input.bound / 1000
            )),
            Some(_) => {}
        }
    }
    for (client, left) in input.not_issued.iter().enumerate() {
        if *left > 0 {
            violations.push(format!(
                "liveness: client c{client} never issued {left} operations"
            ));
        }
    }
    violations
}
