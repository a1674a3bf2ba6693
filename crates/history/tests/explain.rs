//! `check_detailed` names a small set of operations that is not
//! linearizable on its own, and accepts what `check` accepts.

use pbft_app::kv::{KvOp, KvResult};
use pbft_history::{check, check_detailed, History};

fn put(key: &str, value: &str) -> KvOp {
    KvOp::Put {
        key: key.into(),
        value: value.into(),
    }
}

fn get(key: &str) -> KvOp {
    KvOp::Get { key: key.into() }
}

fn got(value: Option<&str>) -> KvResult {
    KvResult::Get {
        value: value.map(Into::into),
    }
}

fn previous(value: Option<&str>) -> KvResult {
    KvResult::Put {
        previous: value.map(Into::into),
    }
}

/// A long, linearizable history on two keys with a stale read of key `a`
/// in the middle: put a=1, put a=2 (after it), read a -> 1.
fn history_with_stale_read() -> (History, usize, usize, usize) {
    let mut h = History::new();
    let mut t = 0;
    let mut step = |h: &mut History, client, op, result| {
        let i = h.invoke(client, op, t);
        h.respond(i, t + 5, result);
        t += 10;
        i
    };
    for k in 0..10 {
        let v = format!("b{k}");
        let prev = (k > 0).then(|| format!("b{}", k - 1));
        step(&mut h, 1, put("b", &v), previous(prev.as_deref()));
        step(&mut h, 2, get("b"), got(Some(&v)));
    }
    let p1 = step(&mut h, 0, put("a", "1"), previous(None));
    step(&mut h, 2, get("a"), got(Some("1")));
    let p2 = step(&mut h, 0, put("a", "2"), previous(Some("1")));
    step(&mut h, 2, get("a"), got(Some("2")));
    let stale = step(&mut h, 3, get("a"), got(Some("1")));
    step(&mut h, 2, get("a"), got(Some("2")));
    (h, p1, p2, stale)
}

#[test]
fn a_stale_read_is_explained_by_the_writes_it_contradicts() {
    let (h, p1, p2, stale) = history_with_stale_read();
    assert_eq!(check(&h).len(), 1);
    let v = check_detailed(&h);
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0].key.as_deref(), Some(&b"a"[..]));
    assert_eq!(v[0].key_ops, 6);
    let mut ops = v[0].ops.clone();
    ops.sort_unstable();
    // The read of 1 needs put a=1 (its source) and put a=2 (which made it stale).
    assert_eq!(ops, vec![p1, p2, stale], "{}", v[0].message);
    assert!(v[0].message.contains("get(a)"), "{}", v[0].message);
}

#[test]
fn a_linearizable_history_has_no_violation() {
    let (mut h, _, _, stale) = history_with_stale_read();
    h.ops.remove(stale);
    assert!(check(&h).is_empty());
    assert!(check_detailed(&h).is_empty());
}

#[test]
fn a_read_of_a_value_never_written_is_named_alone() {
    let mut h = History::new();
    let a = h.invoke(0, put("k", "x"), 0);
    h.respond(a, 10, previous(None));
    let r = h.invoke(1, get("k"), 20);
    h.respond(r, 30, got(Some("ghost")));
    let v = check_detailed(&h);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].ops, vec![r]);
}

#[test]
fn an_unknown_write_may_explain_a_read() {
    let mut h = History::new();
    h.invoke(0, put("k", "x"), 0); // no answer: outcome unknown
    let r = h.invoke(1, get("k"), 20);
    h.respond(r, 30, got(Some("x")));
    let r2 = h.invoke(1, get("k"), 40);
    h.respond(r2, 50, got(Some("x")));
    assert!(check_detailed(&h).is_empty());
}
