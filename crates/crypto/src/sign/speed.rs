//! Times the previous verifier (ed25519-consensus on curve25519-dalek-ng's
//! portable backend, a key decoded at every check) against this crate's, side
//! by side in one process, so the ratio holds on a busy machine. Not a test
//! of speed: it asserts only that both give the same verdicts.
//!
//! ```text
//! cargo test -p pbft-crypto --release --lib -- --ignored --nocapture speed
//! ```

use super::zip215::Item;
use super::Verifier;
use crate::{ClusterId, PublicKey, Signature};
use ed25519_dalek::Signer as _;
use std::time::{Duration, Instant};

// The previous verifier (ed25519-consensus), shared with zip215's tests.
use super::zip215::tests::{consensus_batch as old_batch, consensus_one as old_one};

/// `count` signatures over 150-byte messages by `keys` distinct signers.
fn items(count: usize, keys: usize) -> Vec<Item> {
    (0..count)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&((i % keys) as u64 + 1).to_le_bytes());
            let key = ed25519_dalek::SigningKey::from_bytes(&seed);
            let message = vec![i as u8; 150];
            let sig = Signature(key.sign(&message).to_bytes());
            (PublicKey(key.verifying_key().to_bytes()), message, sig)
        })
        .collect()
}

/// Microseconds per signature of `check` over `items`, best of 5 rounds of
/// at least 60 ms each.
fn per_signature(items: &[Item], mut check: impl FnMut() -> bool) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        let mut runs = 0u32;
        while start.elapsed() < Duration::from_millis(60) {
            assert!(check());
            runs += 1;
        }
        let us = start.elapsed().as_secs_f64() * 1e6 / f64::from(runs) / items.len() as f64;
        best = best.min(us);
    }
    best
}

#[test]
#[ignore = "prints timings; run it in release"]
fn speed() {
    let cases = [
        ("single, replica keys (4, known)", 64, 4, false),
        ("single, client keys (64, first seen)", 64, 64, false),
        ("batch of 64, replica keys (4)", 64, 4, true),
        ("batch of 64, client keys (64)", 64, 64, true),
        ("batch of 8, client keys (8)", 8, 8, true),
    ];
    println!(
        "{:40} {:>10} {:>10} {:>7}",
        "us per signature", "old", "new", "old/new"
    );
    for (name, count, keys, batched) in cases {
        let items = items(count, keys);
        // Replica keys are known up front; client keys reach the bounded
        // cache at first use (each round here finds them there).
        let verifier = if keys <= 4 {
            Verifier::new(ClusterId(0)).with_known_keys(items.iter().map(|i| i.0))
        } else {
            Verifier::new(ClusterId(0))
        };
        let (old, new) = if batched {
            (
                per_signature(&items, || old_batch(&items)),
                per_signature(&items, || verifier.check_all(&items)),
            )
        } else {
            (
                per_signature(&items, || items.iter().all(old_one)),
                per_signature(&items, || {
                    items
                        .iter()
                        .all(|i| verifier.check_all(std::slice::from_ref(i)))
                }),
            )
        };
        println!("{name:40} {old:10.2} {new:10.2} {:7.2}", old / new);
    }
    // Uncached new single checks: a fresh verifier per check.
    let items = items(64, 64);
    let old = per_signature(&items, || items.iter().all(old_one));
    let new = per_signature(&items, || {
        items
            .iter()
            .all(|i| Verifier::new(ClusterId(0)).check_all(std::slice::from_ref(i)))
    });
    println!(
        "{:40} {old:10.2} {new:10.2} {:7.2}",
        "single, no cache",
        old / new
    );
}
