//! ed25519 verification under the ZIP-215 rules, single and batched, on
//! curve25519-dalek 4 (whose AVX2 backend is chosen at run time on x86_64),
//! with decompressed keys taken from a [`KeyCache`].
//!
//! The rules (<https://zips.z.cash/zip-0215>), the same for both checks:
//!
//! * `A` (the key) and `R` (the first half of the signature) must decode to
//!   curve points; non-canonical encodings of `y` are accepted, and so are
//!   points of small or mixed order;
//! * `s` (the second half) must be canonical: `s < ℓ`;
//! * `k = SHA-512(R bytes ‖ A bytes ‖ message) mod ℓ`, over the bytes as
//!   received, not re-encoded;
//! * single check: `[8]([s]B − [k]A − R) = 0`; batch check, with a fresh
//!   random 128-bit `z_i` per signature:
//!   `[8]([−Σ z_i s_i]B + Σ [z_i]R_i + Σ [z_i k_i]A_i) = 0`.
//!
//! Both equations are cofactored, so a signature that passes alone passes in
//! any batch of good signatures and one that fails alone fails every batch
//! (but with probability about 2⁻¹²⁸). The equations and the decoding follow
//! ed25519-zebra's and ed25519-consensus's; the tests check every verdict
//! against ed25519-consensus, the verifier this module replaced.

use super::key_cache::KeyCache;
use crate::{PublicKey, Signature};
use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use rand::Rng;
use sha2::{Digest as _, Sha512};
use std::collections::hash_map::{Entry, HashMap};

/// One signature check: the signer's key, the signed bytes, the signature.
pub(crate) type Item = (PublicKey, Vec<u8>, Signature);

/// `R` and `s` of a signature, if `R` decodes and `s` is canonical.
fn decode_signature(sig: &Signature) -> Option<(EdwardsPoint, Scalar)> {
    let (r_bytes, s_bytes) = sig.0.split_at(32);
    let s_bytes: [u8; 32] = s_bytes.try_into().ok()?;
    let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes))?;
    let r = CompressedEdwardsY::from_slice(r_bytes).ok()?.decompress()?;
    Some((r, s))
}

/// The challenge `k = SHA-512(R ‖ A ‖ message) mod ℓ`.
fn challenge(sig: &Signature, key: &PublicKey, message: &[u8]) -> Scalar {
    Scalar::from_hash(
        Sha512::new()
            .chain_update(&sig.0[..32])
            .chain_update(key.0)
            .chain_update(message),
    )
}

/// Checks one signature.
pub(crate) fn verify_one(
    keys: &KeyCache,
    key: &PublicKey,
    message: &[u8],
    sig: &Signature,
) -> bool {
    let Some((r, s)) = decode_signature(sig) else {
        return false;
    };
    let Some(a) = keys.point(key) else {
        return false;
    };
    let k = challenge(sig, key, message);
    // [k](−A) + [s]B, the R the signer should have committed to.
    let expected_r = EdwardsPoint::vartime_double_scalar_mul_basepoint(&k, &-a, &s);
    (r - expected_r).mul_by_cofactor().is_identity()
}

/// Checks all of `items` with one multiscalar multiplication: true if every
/// signature is good (but with probability about 2⁻¹²⁸). Terms of one key are
/// coalesced, so `n` signatures by `m` keys cost a multiplication of size
/// `n + m + 1`.
pub(crate) fn verify_batch(keys: &KeyCache, items: &[Item]) -> bool {
    let mut key_index: HashMap<[u8; 32], usize> = HashMap::with_capacity(items.len());
    let mut a_points = Vec::with_capacity(items.len());
    let mut a_coeffs = Vec::with_capacity(items.len());
    let mut r_points = Vec::with_capacity(items.len());
    let mut r_coeffs = Vec::with_capacity(items.len());
    let mut b_coeff = Scalar::ZERO;
    let mut rng = rand::thread_rng();
    for (key, message, sig) in items {
        let Some((r, s)) = decode_signature(sig) else {
            return false;
        };
        let index = match key_index.entry(key.0) {
            Entry::Occupied(e) => *e.get(),
            Entry::Vacant(e) => {
                let Some(a) = keys.point(key) else {
                    return false;
                };
                a_points.push(a);
                a_coeffs.push(Scalar::ZERO);
                *e.insert(a_points.len() - 1)
            }
        };
        let k = challenge(sig, key, message);
        let z = Scalar::from(rng.gen::<u128>());
        b_coeff -= z * s;
        r_points.push(r);
        r_coeffs.push(z);
        a_coeffs[index] += z * k;
    }
    let check = EdwardsPoint::vartime_multiscalar_mul(
        std::iter::once(&b_coeff).chain(&a_coeffs).chain(&r_coeffs),
        std::iter::once(&ED25519_BASEPOINT_POINT)
            .chain(&a_points)
            .chain(&r_points),
    );
    check.mul_by_cofactor().is_identity()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use ed25519_dalek::Signer as _;
    use rand::{RngCore, SeedableRng};

    /// The previous verifier (ed25519-consensus, ZIP-215 on curve25519-dalek-ng).
    pub(in crate::sign) fn consensus_one((key, message, sig): &Item) -> bool {
        ed25519_consensus::VerificationKey::try_from(key.0)
            .and_then(|vk| vk.verify(&ed25519_consensus::Signature::from(sig.0), message))
            .is_ok()
    }

    /// The previous verifier's batch check.
    pub(in crate::sign) fn consensus_batch(items: &[Item]) -> bool {
        let mut batch = ed25519_consensus::batch::Verifier::new();
        for (key, message, sig) in items {
            batch.queue((
                ed25519_consensus::VerificationKeyBytes::from(key.0),
                ed25519_consensus::Signature::from(sig.0),
                message,
            ));
        }
        batch.verify(rand::rngs::OsRng).is_ok()
    }

    fn signed(seed: u8, message: Vec<u8>) -> Item {
        let key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
        let sig = Signature(key.sign(&message).to_bytes());
        (PublicKey(key.verifying_key().to_bytes()), message, sig)
    }

    /// Good signatures, then each with one bit flipped in the key, the
    /// message, R or s: the verdicts (single and batched) match the previous
    /// verifier's on every one.
    #[test]
    fn verdicts_match_the_previous_verifier_on_good_and_mutated_signatures() {
        let cache = KeyCache::default();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(215);
        let mut accepted = 0;
        let mut rejected = 0;
        for i in 0..40u8 {
            let mut message = vec![0u8; usize::from(i) * 3];
            rng.fill_bytes(&mut message);
            let good = signed(i % 7 + 1, message);
            assert!(verify_one(&cache, &good.0, &good.1, &good.2), "good {i}");
            let mut variants = vec![good.clone()];
            for bit in [0usize, 7, 100, 255, 256, 300, 500, 511] {
                let mut v = good.clone();
                v.2 .0[bit / 8] ^= 1 << (bit % 8);
                variants.push(v);
            }
            let mut v = good.clone();
            v.0 .0[usize::from(i) % 32] ^= 1 << (i % 8);
            variants.push(v);
            if !good.1.is_empty() {
                let mut v = good.clone();
                v.1[0] ^= 1;
                variants.push(v);
            }
            for (j, item) in variants.iter().enumerate() {
                let expected = consensus_one(item);
                let alone = verify_one(&cache, &item.0, &item.1, &item.2);
                assert_eq!(alone, expected, "signature {i} variant {j} alone");
                let mut batch: Vec<Item> = (1..5u8).map(|s| signed(s, vec![s; 9])).collect();
                batch.insert(usize::from(i) % 5, item.clone());
                assert_eq!(verify_batch(&cache, &batch), expected, "{i}/{j} batched");
                assert_eq!(consensus_batch(&batch), expected, "{i}/{j} old batch");
                if expected {
                    accepted += 1;
                } else {
                    rejected += 1;
                }
            }
        }
        assert!(accepted >= 40 && rejected >= 300, "{accepted} {rejected}");
    }

    #[test]
    fn batches_coalesce_keys_and_any_bad_signature_fails_them() {
        let cache = KeyCache::default();
        // Many signatures by few keys: the coalesced terms still check.
        let mut batch: Vec<Item> = (0..30u8).map(|i| signed(i % 3 + 1, vec![i; 50])).collect();
        assert!(verify_batch(&cache, &batch));
        assert!(verify_batch(&cache, &[]), "the empty batch holds");
        // A good signature of one key presented under another key of the batch.
        batch[4].0 = batch[5].0;
        assert!(!verify_batch(&cache, &batch));
        assert!(!consensus_batch(&batch));
    }
}
