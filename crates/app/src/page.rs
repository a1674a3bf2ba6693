//! Pages: the unit in which a state is checkpointed, persisted and
//! transferred.
//!
//! A [`Page`] is immutable and shared: the state machine that cut it, every
//! checkpoint image that holds it and the record that persists it point at
//! the same bytes, and its digest is computed once, when it is made. A state
//! machine that keeps the pages of its last snapshot and cuts again only
//! around what changed ([`crate::kv::KvStore`] does) makes a checkpoint cost
//! what changed, not the size of the state.

use pbft_crypto::Digest;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::sync::Arc;

/// The digest of one page's bytes: a leaf of a checkpoint's tree.
pub fn leaf_digest(page: &[u8]) -> Digest {
    Digest::of_parts(&[b"pbft-state/leaf", page])
}

/// One page of a state: its bytes and their [`leaf_digest`].
#[derive(Clone)]
pub struct Page {
    bytes: Arc<[u8]>,
    digest: Digest,
}

impl Page {
    /// A page holding `bytes` (hashes them).
    pub fn new(bytes: Vec<u8>) -> Page {
        let digest = leaf_digest(&bytes);
        Page {
            bytes: bytes.into(),
            digest,
        }
    }

    /// The page's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Its leaf digest.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Whether `self` and `other` are the same page in memory (not merely
    /// equal): a page reused from an earlier snapshot.
    pub fn shares(&self, other: &Page) -> bool {
        Arc::ptr_eq(&self.bytes, &other.bytes)
    }
}

impl PartialEq for Page {
    fn eq(&self, other: &Page) -> bool {
        self.digest == other.digest && self.bytes == other.bytes
    }
}

impl Eq for Page {}

impl fmt::Debug for Page {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Page({} bytes, {})", self.bytes.len(), self.digest)
    }
}

impl From<Vec<u8>> for Page {
    fn from(bytes: Vec<u8>) -> Page {
        Page::new(bytes)
    }
}

/// Serialised as its bytes (the digest is computed again when read).
impl Serialize for Page {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.bytes)
    }
}

impl<'de> Deserialize<'de> for Page {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Page, D::Error> {
        struct Bytes;
        impl<'de> Visitor<'de> for Bytes {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a page's bytes")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        deserializer.deserialize_byte_buf(Bytes).map(Page::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_round_trips_through_postcard_with_its_digest() {
        let page = Page::new(b"some state".to_vec());
        let bytes = postcard::to_stdvec(&page).expect("encode");
        let back: Page = postcard::from_bytes(&bytes).expect("decode");
        assert_eq!(back, page);
        assert_eq!(back.digest(), leaf_digest(b"some state"));
        assert!(!back.shares(&page));
        assert!(page.clone().shares(&page));
        // The same encoding as a Vec<u8>, so records written before pages
        // were shared read the same.
        assert_eq!(
            bytes,
            postcard::to_stdvec(&b"some state".to_vec()).expect("encode")
        );
    }

    #[test]
    fn pages_with_different_bytes_differ() {
        assert_ne!(Page::new(vec![1]), Page::new(vec![2]));
        assert_ne!(Page::new(vec![]).digest(), Page::new(vec![0]).digest());
    }
}
