//! The checkers must be able to fail: deliberately broken histories and logs.

use pbft_app::kv::{KvOp, KvResult};
use pbft_crypto::Digest;
use pbft_sim::checker::agreement::Agreement;
use pbft_sim::checker::linearizability::{check, History};
use pbft_sim::checker::liveness::{self, LivenessInput};

fn put(key: &str, value: &str) -> KvOp {
    KvOp::Put {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
    }
}

fn get(key: &str) -> KvOp {
    KvOp::Get {
        key: key.as_bytes().to_vec(),
    }
}

fn got(value: Option<&str>) -> KvResult {
    KvResult::Get {
        value: value.map(|v| v.as_bytes().to_vec()),
    }
}

fn put_result(previous: Option<&str>) -> KvResult {
    KvResult::Put {
        previous: previous.map(|v| v.as_bytes().to_vec()),
    }
}

#[test]
fn sequential_history_is_linearizable() {
    let mut h = History::new();
    let a = h.invoke(0, put("k", "a"), 0);
    h.respond(a, 10, put_result(None));
    let b = h.invoke(1, get("k"), 20);
    h.respond(b, 30, got(Some("a")));
    assert!(check(&h).is_empty());
}

#[test]
fn stale_read_is_caught() {
    // put a; put b (after a completed); then a read that returns a.
    let mut h = History::new();
    let a = h.invoke(0, put("k", "a"), 0);
    h.respond(a, 10, put_result(None));
    let b = h.invoke(0, put("k", "b"), 20);
    h.respond(b, 30, put_result(Some("a")));
    let r = h.invoke(1, get("k"), 40);
    h.respond(r, 50, got(Some("a")));
    let v = check(&h);
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].contains("not linearizable"));
}

#[test]
fn concurrent_operations_may_take_effect_in_either_order() {
    let mut h = History::new();
    let a = h.invoke(0, put("k", "a"), 0);
    let r = h.invoke(1, get("k"), 5);
    h.respond(r, 20, got(Some("a")));
    h.respond(a, 30, put_result(None));
    assert!(check(&h).is_empty());
    // Reading a value that was never written is not.
    let mut h2 = History::new();
    let r = h2.invoke(1, get("k"), 5);
    h2.respond(r, 20, got(Some("zzz")));
    assert_eq!(check(&h2).len(), 1);
}

#[test]
fn pending_operations_may_or_may_not_take_effect() {
    // A put that never completed explains a later read of its value...
    let mut h = History::new();
    h.invoke(0, put("k", "a"), 0);
    let r = h.invoke(1, get("k"), 50);
    h.respond(r, 60, got(Some("a")));
    let r2 = h.invoke(1, get("k"), 70);
    h.respond(r2, 80, got(Some("a")));
    assert!(check(&h).is_empty());
    // ...or may never take effect.
    let mut h = History::new();
    h.invoke(0, put("k", "a"), 0);
    let r = h.invoke(1, get("k"), 50);
    h.respond(r, 60, got(None));
    assert!(check(&h).is_empty());
    // But it cannot take effect and then be undone.
    let r2 = h.invoke(1, get("k"), 70);
    h.respond(r2, 80, got(Some("a")));
    let r3 = h.invoke(1, get("k"), 90);
    h.respond(r3, 100, got(None));
    assert_eq!(check(&h).len(), 1);
}

#[test]
fn keys_are_checked_independently() {
    let mut h = History::new();
    let a = h.invoke(0, put("x", "1"), 0);
    h.respond(a, 10, put_result(None));
    let b = h.invoke(0, put("y", "1"), 20);
    h.respond(b, 30, put_result(Some("1"))); // wrong: y was empty
    let v = check(&h);
    assert_eq!(v.len(), 1);
    assert!(v[0].contains("\"y\""), "{v:?}");
}

#[test]
fn lost_update_with_cas_is_caught() {
    // Two CAS from None both claim success, sequentially.
    let cas = |new: &str| KvOp::Cas {
        key: b"k".to_vec(),
        expected: None,
        new: new.as_bytes().to_vec(),
    };
    let mut h = History::new();
    let a = h.invoke(0, cas("a"), 0);
    h.respond(
        a,
        10,
        KvResult::Cas {
            swapped: true,
            current: None,
        },
    );
    let b = h.invoke(1, cas("b"), 20);
    h.respond(
        b,
        30,
        KvResult::Cas {
            swapped: true,
            current: None,
        },
    );
    assert_eq!(check(&h).len(), 1);
}

#[test]
fn undecodable_result_is_a_violation() {
    let mut h = History::new();
    let a = h.invoke(0, get("k"), 0);
    h.respond_garbage(a, 10, "bad bytes".into());
    assert_eq!(check(&h).len(), 1);
}

#[test]
fn different_digests_at_one_sequence_number_are_caught() {
    let mut a = Agreement::new();
    a.executed(0, 1, Digest([1; 32]));
    a.executed(1, 1, Digest([1; 32]));
    assert!(a.violations().is_empty());
    a.executed(2, 1, Digest([2; 32]));
    assert_eq!(a.violations().len(), 1);
    assert!(a.violations()[0].contains("n1"));
}

#[test]
fn different_checkpoint_digests_are_caught() {
    let mut a = Agreement::new();
    a.checkpointed(0, 4, Digest([1; 32]));
    a.state_transferred(1, 4, Digest([1; 32]));
    assert!(a.violations().is_empty());
    a.checkpointed(2, 4, Digest([3; 32]));
    assert_eq!(a.violations().len(), 1);
}

#[test]
fn execution_gaps_are_caught_but_not_after_a_restart() {
    let mut a = Agreement::new();
    a.executed(0, 1, Digest([1; 32]));
    a.executed(0, 3, Digest([3; 32]));
    assert_eq!(a.violations().len(), 1);
    let mut b = Agreement::new();
    b.executed(0, 1, Digest([1; 32]));
    b.restarted(0);
    b.executed(0, 1, Digest([1; 32]));
    b.state_transferred(0, 8, Digest([8; 32]));
    b.executed(0, 9, Digest([9; 32]));
    assert!(b.violations().is_empty(), "{:?}", b.violations());
}

#[test]
fn unfinished_operations_violate_liveness() {
    let mut h = History::new();
    let a = h.invoke(0, get("k"), 0);
    h.respond(a, 10, got(None));
    h.invoke(1, get("k"), 20);
    let input = LivenessInput {
        history: &h,
        not_issued: vec![0, 3],
        heal_at: 0,
        end: 1_000_000,
        bound: 500_000,
    };
    let v = liveness::check(&input);
    assert_eq!(v.len(), 2, "{v:?}");
    // A slow answer (after heal + bound) is a violation too.
    let mut h = History::new();
    let a = h.invoke(0, get("k"), 0);
    h.respond(a, 2_000_000, got(None));
    let input = LivenessInput {
        history: &h,
        not_issued: vec![0],
        heal_at: 1_000_000,
        end: 3_000_000,
        bound: 500_000,
    };
    assert_eq!(liveness::check(&input).len(), 1);
}
