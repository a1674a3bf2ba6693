//! Linearizability of the client history against the sequential KV model
//! ([`KvStore::execute`]).
//!
//! Every operation the workload issues touches one key, so the history is
//! linearizable iff each key's sub-history is (P-compositionality, Herlihy &
//! Wing). Each key is checked with a Wing & Gong style search with memoised
//! configurations (Lowe): repeatedly pick an operation that could take effect
//! next (invoked before every not-yet-linearized completed operation
//! responded), apply it to the model, and require its result to match.
//! Pending operations (never answered) may take effect at any point after
//! their invocation, or never.
//!
//! A failing key is explained by [`check_detailed`]: the key's operations are
//! shrunk greedily to a subset that is still not linearizable (an operation is
//! dropped only if the rest stays non-linearizable and every value a remaining
//! operation observed is still written by a remaining one, so the subset never
//! "fails" merely because a write it depends on was removed). What is left
//! names the operations that form the violation.

use pbft_app::kv::{KvOp, KvResult, KvStore};
use std::collections::{BTreeMap, BTreeSet};

/// Most search states one shrinking trial may visit; a trial over budget
/// keeps its operation (the explanation is then less minimal, never wrong).
const SHRINK_STATES_MAX: usize = 200_000;
/// Keys with more operations than this are explained without shrinking.
const SHRINK_OPS_MAX: usize = 400;

/// The key a single-key operation touches (empty for scans, which the
/// workloads checked here never issue).
pub fn op_key(op: &KvOp) -> &[u8] {
    match op {
        KvOp::Put { key, .. }
        | KvOp::Get { key }
        | KvOp::Delete { key }
        | KvOp::Cas { key, .. } => key,
        KvOp::Scan { .. } => &[],
    }
}

/// A client's answer to an operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// When the client accepted it, microseconds.
    pub at: u64,
    /// The result; `Err` holds the decoding error of an accepted result that
    /// does not decode (itself a violation).
    pub result: Result<KvResult, String>,
}

/// One operation of the history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// The client index.
    pub client: usize,
    /// The operation.
    pub op: KvOp,
    /// When the client issued it, microseconds.
    pub invoke: u64,
    /// The accepted answer, if any.
    pub response: Option<Response>,
}

/// The clients' history: operations in invocation order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    /// The operations.
    pub ops: Vec<Operation>,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an invocation; returns its index.
    pub fn invoke(&mut self, client: usize, op: KvOp, at: u64) -> usize {
        self.ops.push(Operation {
            client,
            op,
            invoke: at,
            response: None,
        });
        self.ops.len() - 1
    }

    /// Records the accepted result of operation `index`.
    pub fn respond(&mut self, index: usize, at: u64, result: KvResult) {
        if let Some(op) = self.ops.get_mut(index) {
            op.response = Some(Response {
                at,
                result: Ok(result),
            });
        }
    }

    /// Records an accepted result that does not decode.
    pub fn respond_garbage(&mut self, index: usize, at: u64, error: String) {
        if let Some(op) = self.ops.get_mut(index) {
            op.response = Some(Response {
                at,
                result: Err(error),
            });
        }
    }

    /// Completed operations.
    pub fn completed(&self) -> usize {
        self.ops.iter().filter(|o| o.response.is_some()).count()
    }
}

/// One violation found by [`check_detailed`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The key whose history is not linearizable (`None`: an accepted result
    /// that does not decode).
    pub key: Option<Vec<u8>>,
    /// Indices into [`History::ops`] of the operations that form the
    /// violation: a subset of the key's operations that is itself not
    /// linearizable, shrunk as the [module docs](self) say.
    pub ops: Vec<usize>,
    /// How many operations the key has in all.
    pub key_ops: usize,
    /// A readable description (the shrunk operations, one per line).
    pub message: String,
}

/// Checks the whole history; returns one violation per non-linearizable key
/// (and per accepted result that does not decode).
pub fn check(history: &History) -> Vec<String> {
    let mut violations = Vec::new();
    let mut by_key: BTreeMap<&[u8], Vec<&Operation>> = BTreeMap::new();
    for op in &history.ops {
        if let Some(Response { result: Err(e), .. }) = &op.response {
            violations.push(format!(
                "linearizability: client c{} accepted an undecodable result for {}: {e}",
                op.client,
                format_op(&op.op)
            ));
            continue;
        }
        by_key.entry(op_key(&op.op)).or_default().push(op);
    }
    for (key, ops) in by_key {
        if !check_key(key, &ops) {
            violations.push(format!(
                "linearizability: the history of key {:?} is not linearizable:\n{}",
                String::from_utf8_lossy(key),
                describe(&ops)
            ));
        }
    }
    violations
}

/// Checks the whole history like [`check`], and names for each violation a
/// small subset of operations that is not linearizable on its own.
pub fn check_detailed(history: &History) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut by_key: BTreeMap<&[u8], Vec<usize>> = BTreeMap::new();
    for (i, op) in history.ops.iter().enumerate() {
        if let Some(Response { result: Err(e), .. }) = &op.response {
            violations.push(Violation {
                key: None,
                ops: vec![i],
                key_ops: 1,
                message: format!(
                    "client c{} accepted an undecodable result for {}: {e}",
                    op.client,
                    format_op(&op.op)
                ),
            });
            continue;
        }
        by_key.entry(op_key(&op.op)).or_default().push(i);
    }
    for (key, indices) in by_key {
        let ops: Vec<&Operation> = indices.iter().map(|&i| &history.ops[i]).collect();
        if check_key(key, &ops) {
            continue;
        }
        let kept = if indices.len() <= SHRINK_OPS_MAX {
            shrink(key, &ops)
        } else {
            (0..ops.len()).collect()
        };
        let shrunk: Vec<&Operation> = kept.iter().map(|&k| ops[k]).collect();
        violations.push(Violation {
            key: Some(key.to_vec()),
            ops: kept.iter().map(|&k| indices[k]).collect(),
            key_ops: indices.len(),
            message: format!(
                "the history of key {:?} ({} operations) is not linearizable; these {} operations alone are not:\n{}",
                String::from_utf8_lossy(key),
                indices.len(),
                shrunk.len(),
                describe(&shrunk)
            ),
        });
    }
    violations
}

/// The values `op`'s known result says the key held (for reads, failed
/// swaps, previous values).
fn observed(op: &Operation) -> Option<&[u8]> {
    match op.response.as_ref().map(|r| &r.result) {
        Some(Ok(KvResult::Get { value: Some(v) }))
        | Some(Ok(KvResult::Put { previous: Some(v) }))
        | Some(Ok(KvResult::Cas {
            current: Some(v), ..
        })) => Some(v),
        _ => None,
    }
}

/// The value `op` may write.
fn written(op: &Operation) -> Option<&[u8]> {
    match &op.op {
        KvOp::Put { value, .. } => Some(value),
        KvOp::Cas { new, .. } => Some(new),
        _ => None,
    }
}

/// Greedy one-at-a-time shrinking of a non-linearizable key history (see
/// the module docs); returns the positions in `ops` that are kept.
fn shrink(key: &[u8], ops: &[&Operation]) -> Vec<usize> {
    let sourced_in = |set: &[usize], o: &Operation| {
        observed(o).is_none_or(|v| set.iter().any(|&w| written(ops[w]) == Some(v)))
    };
    let all: Vec<usize> = (0..ops.len()).collect();
    // Observations nothing in the whole key history explains stay
    // unexplained; the others must keep a write that explains them.
    let explained: Vec<bool> = ops.iter().map(|o| sourced_in(&all, o)).collect();
    let mut kept = all;
    let mut k = 0;
    while k < kept.len() {
        let mut trial = kept.clone();
        trial.remove(k);
        let trial_ops: Vec<&Operation> = trial.iter().map(|&i| ops[i]).collect();
        let sourced = trial
            .iter()
            .all(|&i| !explained[i] || sourced_in(&trial, ops[i]));
        if sourced && check_key_bounded(key, &trial_ops, SHRINK_STATES_MAX) == Some(false) {
            kept = trial;
        } else {
            k += 1;
        }
    }
    kept
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn text_opt(bytes: &Option<Vec<u8>>) -> String {
    bytes.as_deref().map_or_else(|| "-".to_string(), text)
}

/// A compact, readable form of an operation (`put(k1, c0-3)`).
pub fn format_op(op: &KvOp) -> String {
    match op {
        KvOp::Put { key, value } => format!("put({}, {})", text(key), text(value)),
        KvOp::Get { key } => format!("get({})", text(key)),
        KvOp::Delete { key } => format!("delete({})", text(key)),
        KvOp::Cas { key, expected, new } => {
            format!(
                "cas({}, {} -> {})",
                text(key),
                text_opt(expected),
                text(new)
            )
        }
        KvOp::Scan { from, to, limit } => format!("scan({}..{}, {limit})", text(from), text(to)),
    }
}

/// A compact, readable form of a result.
pub fn format_result(result: &KvResult) -> String {
    match result {
        KvResult::Put { previous } => format!("previous={}", text_opt(previous)),
        KvResult::Get { value } => format!("value={}", text_opt(value)),
        KvResult::Delete { existed } => format!("existed={existed}"),
        KvResult::Cas { swapped, current } => {
            format!("swapped={swapped} current={}", text_opt(current))
        }
        KvResult::Scan { items, more } => format!("{} items more={more}", items.len()),
        KvResult::Error(e) => format!("error: {e}"),
    }
}

fn describe(ops: &[&Operation]) -> String {
    let mut lines = Vec::new();
    for op in ops.iter().take(60) {
        let response = match &op.response {
            Some(Response { at, result: Ok(r) }) => format!("-> {at:>9}us {}", format_result(r)),
            Some(Response { at, result: Err(e) }) => format!("-> {at:>9}us undecodable: {e}"),
            None => "-> pending".to_string(),
        };
        lines.push(format!(
            "    c{} {:>9}us {} {}",
            op.client,
            op.invoke,
            format_op(&op.op),
            response
        ));
    }
    if ops.len() > 60 {
        lines.push(format!("    ... {} more", ops.len() - 60));
    }
    lines.join("\n")
}

/// The value under `key` after `op`, and its result, from the sequential model.
fn apply(key: &[u8], state: &Option<Vec<u8>>, op: &KvOp) -> (Option<Vec<u8>>, KvResult) {
    let mut kv = KvStore::new();
    if let Some(value) = state {
        kv.execute(&KvOp::Put {
            key: key.to_vec(),
            value: value.clone(),
        });
    }
    let result = kv.execute(op);
    (kv.get(key).map(<[u8]>::to_vec), result)
}

/// Whether the operations on one key (all touching `key`) are linearizable.
pub fn check_key(key: &[u8], ops: &[&Operation]) -> bool {
    check_key_bounded(key, ops, usize::MAX).unwrap_or(false)
}

/// [`check_key`] visiting at most `states_max` search states (`None`: over
/// budget, undecided).
fn check_key_bounded(key: &[u8], ops: &[&Operation], states_max: usize) -> Option<bool> {
    let m = ops.len();
    let words = m.div_ceil(64).max(1);
    let mut done = vec![0u64; words];
    let completed: Vec<usize> = (0..m).filter(|&i| ops[i].response.is_some()).collect();
    let mut memo = Memo {
        seen: BTreeSet::new(),
        states_max,
    };
    let found = search(key, ops, &completed, &mut done, None, &mut memo);
    if !found && memo.seen.len() > states_max {
        return None;
    }
    Some(found)
}

/// The configurations already explored (which operations are linearized,
/// and the key's value then), and the budget.
struct Memo {
    seen: BTreeSet<(Vec<u64>, Option<Vec<u8>>)>,
    states_max: usize,
}

fn is_set(bits: &[u64], i: usize) -> bool {
    bits[i / 64] & (1 << (i % 64)) != 0
}

fn search(
    key: &[u8],
    ops: &[&Operation],
    completed: &[usize],
    done: &mut Vec<u64>,
    state: Option<Vec<u8>>,
    memo: &mut Memo,
) -> bool {
    if completed.iter().all(|&i| is_set(done, i)) {
        return true;
    }
    if memo.seen.len() > memo.states_max || !memo.seen.insert((done.clone(), state.clone())) {
        return false;
    }
    // The earliest response among completed operations not yet linearized:
    // whatever goes next must have been invoked by then.
    let horizon = completed
        .iter()
        .filter(|&&i| !is_set(done, i))
        .filter_map(|&i| ops[i].response.as_ref().map(|r| r.at))
        .min()
        .unwrap_or(u64::MAX);
    for i in 0..ops.len() {
        if is_set(done, i) || ops[i].invoke > horizon {
            continue;
        }
        let (next, result) = apply(key, &state, &ops[i].op);
        if let Some(response) = &ops[i].response {
            if response.result.as_ref() != Ok(&result) {
                continue;
            }
        }
        done[i / 64] |= 1 << (i % 64);
        if search(key, ops, completed, done, next, memo) {
            return true;
        }
        done[i / 64] &= !(1 << (i % 64));
    }
    false
}
