//! Decompressed public keys, so a key is decoded once, not at every check.
//!
//! Decoding a 32-byte key into a curve point costs a field square root, about
//! a tenth of a signature check. Keys fixed at construction (the replicas')
//! are decoded once and never evicted; every other key (clients') goes into a
//! bounded two-generation cache: lookups fill the current generation, and when
//! it holds [`KeyCache::generation_len`] keys it becomes the previous one (the
//! older previous generation is dropped). A key used within the last
//! generation survives, so at most `2 × generation_len` keys are held.
//!
//! Only keys that decode are cached; a key that does not decode is decoded
//! (and refused) again at each check.

use crate::PublicKey;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};

/// Keys per generation of the bounded cache when not set otherwise.
pub(crate) const DEFAULT_GENERATION_LEN: usize = 4096;

type Points = HashMap<[u8; 32], EdwardsPoint>;

#[derive(Default)]
struct Generations {
    current: Points,
    previous: Points,
}

/// Decompressed keys: pinned ones and a bounded cache of the others.
pub(crate) struct KeyCache {
    pinned: Points,
    others: Mutex<Generations>,
    generation_len: usize,
}

impl Default for KeyCache {
    fn default() -> Self {
        KeyCache::new(std::iter::empty(), DEFAULT_GENERATION_LEN)
    }
}

impl fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyCache")
            .field("pinned", &self.pinned.len())
            .field("generation_len", &self.generation_len)
            .finish_non_exhaustive()
    }
}

fn decompress(key: &PublicKey) -> Option<EdwardsPoint> {
    CompressedEdwardsY(key.0).decompress()
}

impl KeyCache {
    /// A cache that holds `pinned` (those that decode) for good and up to
    /// `2 × generation_len` (at least 2) other keys.
    pub(crate) fn new(pinned: impl IntoIterator<Item = PublicKey>, generation_len: usize) -> Self {
        let pinned = pinned
            .into_iter()
            .filter_map(|key| decompress(&key).map(|point| (key.0, point)))
            .collect();
        KeyCache {
            pinned,
            others: Mutex::new(Generations::default()),
            generation_len: generation_len.max(1),
        }
    }

    /// The point `key` encodes, or `None` if it encodes none.
    pub(crate) fn point(&self, key: &PublicKey) -> Option<EdwardsPoint> {
        if let Some(point) = self.pinned.get(&key.0) {
            return Some(*point);
        }
        {
            let mut others = self.others.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(point) = others.current.get(&key.0) {
                return Some(*point);
            }
            if let Some(point) = others.previous.remove(&key.0) {
                self.insert(&mut others, key, point);
                return Some(point);
            }
        }
        // Decoded outside the lock; a concurrent miss on the same key decodes
        // it twice, which is harmless.
        let point = decompress(key)?;
        let mut others = self.others.lock().unwrap_or_else(PoisonError::into_inner);
        self.insert(&mut others, key, point);
        Some(point)
    }

    fn insert(&self, others: &mut Generations, key: &PublicKey, point: EdwardsPoint) {
        if others.current.len() >= self.generation_len {
            others.previous = std::mem::take(&mut others.current);
        }
        others.current.insert(key.0, point);
    }

    /// Keys held outside the pinned set.
    #[cfg(test)]
    fn others_len(&self) -> usize {
        let others = self.others.lock().unwrap_or_else(PoisonError::into_inner);
        others.current.len() + others.previous.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyPair;

    fn key(i: u32) -> PublicKey {
        let mut seed = [0u8; 32];
        seed[..4].copy_from_slice(&i.to_le_bytes());
        KeyPair::from_seed(seed).public()
    }

    #[test]
    fn gives_the_decoded_point_and_refuses_keys_that_decode_to_none() {
        let cache = KeyCache::new([key(1)], 4);
        for k in [key(1), key(2)] {
            assert_eq!(cache.point(&k), decompress(&k));
            assert!(cache.point(&k).is_some());
        }
        // y = 2 is not the y of any curve point.
        let mut bad = [0u8; 32];
        bad[0] = 2;
        assert!(decompress(&PublicKey(bad)).is_none());
        assert_eq!(cache.point(&PublicKey(bad)), None);
        assert_eq!(cache.others_len(), 1, "only the good unpinned key is held");
    }

    #[test]
    fn holds_at_most_two_generations_of_unpinned_keys_and_keeps_recent_ones() {
        let cache = KeyCache::new([key(0)], 8);
        for i in 1..=100 {
            assert!(cache.point(&key(i)).is_some());
            // Key 1 is used all along: it is never evicted.
            assert!(cache.point(&key(1)).is_some());
            assert!(cache.others_len() <= 16, "{}", cache.others_len());
        }
        let others = cache.others.lock().unwrap_or_else(PoisonError::into_inner);
        let held =
            |k: PublicKey| others.current.contains_key(&k.0) || others.previous.contains_key(&k.0);
        assert!(held(key(1)) && held(key(100)));
        assert!(!held(key(2)), "an old key unused since is evicted");
        assert!(!held(key(0)), "pinned keys live apart");
        assert!(cache.pinned.contains_key(&key(0).0));
    }
}
