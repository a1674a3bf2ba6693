//! Domain-separated signing and the `Verified<T>` gate.
//!
//! The signed bytes of a value `v: T` are
//!
//! ```text
//! "pbft/v1" 0x00 || cluster id (8 bytes LE) || len(T::KIND) (1 byte) || T::KIND || postcard(v)
//! ```
//!
//! so a signature binds the protocol version, the cluster and the message kind;
//! views, sequence numbers and the sender are fields of `v` itself.

#[cfg(feature = "insecure-sim")]
use crate::Digest;
use crate::{KeyPair, PublicKey, Signature};
use key_cache::{KeyCache, DEFAULT_GENERATION_LEN};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use zip215::Item;

const DOMAIN: &[u8] = b"pbft/v1\0";

/// Identifies one cluster; part of every signature's domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClusterId(pub u64);

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A value that can be signed: its kind tag is part of the signature domain.
pub trait Signable: Serialize {
    /// Distinct for every signed message kind.
    const KIND: &'static str;
}

/// A value and the signature of its signer over it. Who the signer is, is a
/// field of the value (a replica id or a client key), resolved by
/// [`Authenticated::collect_signatures`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed<T> {
    /// The signed value.
    pub value: T,
    /// The signature over the domain-separated encoding of `value`.
    pub signature: Signature,
}

impl<T> Deref for Signed<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

fn signing_bytes<T: Signable>(cluster: ClusterId, value: &T) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(64);
    bytes.extend_from_slice(DOMAIN);
    bytes.extend_from_slice(&cluster.0.to_le_bytes());
    debug_assert!(T::KIND.len() < 256);
    bytes.push(T::KIND.len() as u8);
    bytes.extend_from_slice(T::KIND.as_bytes());
    // Serialising plain data into a Vec does not fail.
    postcard::to_extend(value, bytes).unwrap_or_default()
}

/// The signature scheme in use. A node always uses [`Scheme::Ed25519`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// ed25519 signatures, checked under the ZIP-215 rules.
    Ed25519,
    /// A keyless SHA-256 tag in place of a signature: anyone can compute it, so
    /// it authenticates nothing. Only the simulator uses it, where Byzantine
    /// replicas model forgery by corrupting signatures, to check millions of
    /// messages in seconds. Chosen at run time; never accepted by an
    /// `Ed25519` verifier.
    #[cfg(feature = "insecure-sim")]
    InsecureSim,
}

/// Signs values for one identity in one cluster.
#[derive(Clone, Debug)]
pub struct Signer {
    key: KeyPair,
    cluster: ClusterId,
    scheme: Scheme,
}

impl Signer {
    /// An ed25519 signer.
    pub fn new(key: KeyPair, cluster: ClusterId) -> Self {
        Signer {
            key,
            cluster,
            scheme: Scheme::Ed25519,
        }
    }

    /// A signer with an explicit scheme.
    pub fn with_scheme(key: KeyPair, cluster: ClusterId, scheme: Scheme) -> Self {
        Signer {
            key,
            cluster,
            scheme,
        }
    }

    /// The signer's public key.
    pub fn public_key(&self) -> PublicKey {
        self.key.public()
    }

    /// The cluster this signer signs for.
    pub fn cluster(&self) -> ClusterId {
        self.cluster
    }

    /// Signs `value`.
    pub fn sign<T: Signable>(&self, value: T) -> Signed<T> {
        let bytes = signing_bytes(self.cluster, &value);
        let signature = match self.scheme {
            Scheme::Ed25519 => self.key.sign_ed25519(&bytes),
            #[cfg(feature = "insecure-sim")]
            Scheme::InsecureSim => sim_tag(&self.key.public(), &bytes),
        };
        Signed { value, signature }
    }
}

#[cfg(feature = "insecure-sim")]
fn sim_tag(key: &PublicKey, bytes: &[u8]) -> Signature {
    let digest = Digest::of_parts(&[b"insecure-sim", &key.0, bytes]);
    let mut sig = [0u8; 64];
    sig[..32].copy_from_slice(&digest.0);
    Signature(sig)
}

/// The tags an [`Scheme::InsecureSim`] verifier found good, with the bytes
/// they were good for. The simulator checks the same signed message many
/// times (by every receiver, and again nested in VIEW-CHANGEs, NEW-VIEWs and
/// certificates); a tag seen before is good again only for the very same
/// bytes, which a comparison decides faster than the hash. A verdict never
/// depends on what the memo holds, so forgetting it all when it is full
/// changes nothing but time.
#[cfg(feature = "insecure-sim")]
#[derive(Debug, Default)]
struct SimTagMemo {
    good: std::sync::Mutex<std::collections::HashMap<Signature, (PublicKey, Vec<u8>)>>,
}

#[cfg(feature = "insecure-sim")]
impl SimTagMemo {
    /// Most bytes remembered before the memo starts again.
    const ENTRIES_MAX: usize = 1 << 16;

    fn check(&self, key: &PublicKey, msg: &[u8], sig: &Signature) -> bool {
        let Ok(mut good) = self.good.lock() else {
            return sim_tag(key, msg) == *sig;
        };
        if let Some((k, m)) = good.get(sig) {
            if k == key && m.as_slice() == msg {
                return true;
            }
        }
        let ok = sim_tag(key, msg) == *sig;
        if ok {
            if good.len() >= Self::ENTRIES_MAX {
                good.clear();
            }
            good.insert(*sig, (*key, msg.to_vec()));
        }
        ok
    }
}

/// A signer id that the configuration does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown signer: {0}")]
pub struct UnknownSigner(pub String);

/// A value whose shape is refused before any of its signatures is checked
/// (more nested signatures than any valid value of its kind carries, say), so
/// that a faulty sender cannot make the receiver check signatures for nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed: {0}")]
pub struct Malformed(pub String);

/// The signatures a value carries, collected for checking.
pub struct SigChecks {
    cluster: ClusterId,
    items: Vec<Item>,
}

impl SigChecks {
    /// Adds the check that `key` signed `signed`.
    pub fn add<T: Signable>(&mut self, key: PublicKey, signed: &Signed<T>) {
        self.items.push((
            key,
            signing_bytes(self.cluster, &signed.value),
            signed.signature,
        ));
    }

    /// How many signatures were collected.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether none were collected.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// A value whose authenticity rests on the signatures it carries.
pub trait Authenticated {
    /// What resolves signer ids to public keys (for example the cluster configuration).
    type Keys: ?Sized;
    /// Adds a check for every signature in `self`, nested ones included;
    /// refuses a value whose shape no valid one has before adding any.
    fn collect_signatures(
        &self,
        keys: &Self::Keys,
        checks: &mut SigChecks,
    ) -> Result<(), VerifyError>;
}

/// Why a value failed verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A signer is not in the configuration.
    #[error(transparent)]
    UnknownSigner(#[from] UnknownSigner),
    /// The value's shape was refused before its signatures were checked.
    #[error(transparent)]
    Malformed(#[from] Malformed),
    /// A signature did not verify.
    #[error("bad signature")]
    BadSignature,
}

/// A value all of whose signatures were checked. Only this crate can make one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified<T>(T);

impl<T> Verified<T> {
    /// The checked value.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> Deref for Verified<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Checks signatures for one cluster under one scheme. Clones share one
/// cache of decompressed keys: the keys given to [`Verifier::with_known_keys`]
/// (the replicas') for good, and a bounded number of others (clients').
#[derive(Clone, Debug)]
pub struct Verifier {
    cluster: ClusterId,
    scheme: Scheme,
    keys: Arc<KeyCache>,
    #[cfg(feature = "insecure-sim")]
    tags: Arc<SimTagMemo>,
}

impl Verifier {
    /// An ed25519 verifier.
    pub fn new(cluster: ClusterId) -> Self {
        Verifier::with_scheme(cluster, Scheme::Ed25519)
    }

    /// A verifier with an explicit scheme.
    pub fn with_scheme(cluster: ClusterId, scheme: Scheme) -> Self {
        Verifier {
            cluster,
            scheme,
            keys: Arc::new(KeyCache::default()),
            #[cfg(feature = "insecure-sim")]
            tags: Arc::default(),
        }
    }

    /// This verifier with `keys` (the replicas', say) decoded once and kept
    /// for good, and a fresh cache for other keys. Verdicts do not change:
    /// only the cost of decoding a key at each check.
    pub fn with_known_keys(self, keys: impl IntoIterator<Item = PublicKey>) -> Self {
        Verifier {
            keys: Arc::new(KeyCache::new(keys, DEFAULT_GENERATION_LEN)),
            ..self
        }
    }

    /// The cluster whose signatures this verifier accepts.
    pub fn cluster(&self) -> ClusterId {
        self.cluster
    }

    fn collect<T: Authenticated>(
        &self,
        value: &T,
        keys: &T::Keys,
    ) -> Result<SigChecks, VerifyError> {
        let mut checks = SigChecks {
            cluster: self.cluster,
            items: Vec::new(),
        };
        value.collect_signatures(keys, &mut checks)?;
        Ok(checks)
    }

    /// Checks every signature of `value`.
    pub fn verify<T: Authenticated>(
        &self,
        value: T,
        keys: &T::Keys,
    ) -> Result<Verified<T>, VerifyError> {
        let checks = self.collect(&value, keys)?;
        if self.check_all(&checks.items) {
            Ok(Verified(value))
        } else {
            Err(VerifyError::BadSignature)
        }
    }

    /// Checks many values with one batch verification; when the batch fails,
    /// falls back to checking each value alone to find the bad ones. The
    /// verdict for each value is the same as [`Verifier::verify`] would give.
    pub fn verify_batch<T: Authenticated>(
        &self,
        values: Vec<T>,
        keys: &T::Keys,
    ) -> Vec<Result<Verified<T>, VerifyError>> {
        let collected: Vec<Result<SigChecks, VerifyError>> =
            values.iter().map(|v| self.collect(v, keys)).collect();
        let all: Vec<Item> = collected
            .iter()
            .filter_map(|c| c.as_ref().ok())
            .flat_map(|c| c.items.iter().cloned())
            .collect();
        let batch_ok = self.check_all(&all);
        values
            .into_iter()
            .zip(collected)
            .map(|(value, checks)| {
                let checks = checks?;
                if batch_ok || self.check_all(&checks.items) {
                    Ok(Verified(value))
                } else {
                    Err(VerifyError::BadSignature)
                }
            })
            .collect()
    }

    fn check_all(&self, items: &[Item]) -> bool {
        if items.is_empty() {
            return true;
        }
        let _counted = crate::stats::CheckTimer::start(items.len());
        match self.scheme {
            Scheme::Ed25519 => match items {
                [] => true,
                [(key, msg, sig)] => zip215::verify_one(&self.keys, key, msg, sig),
                _ => zip215::verify_batch(&self.keys, items),
            },
            #[cfg(feature = "insecure-sim")]
            Scheme::InsecureSim => items
                .iter()
                .all(|(key, msg, sig)| self.tags.check(key, msg, sig)),
        }
    }
}

mod key_cache;
#[cfg(test)]
mod speccheck;
#[cfg(test)]
mod speed;
mod zip215;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
    struct Note {
        author: u8,
        text: String,
    }
    impl Signable for Note {
        const KIND: &'static str = "note";
    }
    #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
    struct Other {
        author: u8,
        text: String,
    }
    impl Signable for Other {
        const KIND: &'static str = "other";
    }

    /// Keys indexed by author.
    struct Keys(Vec<PublicKey>);

    impl Authenticated for Signed<Note> {
        type Keys = Keys;
        fn collect_signatures(
            &self,
            keys: &Keys,
            checks: &mut SigChecks,
        ) -> Result<(), VerifyError> {
            let key = keys
                .0
                .get(self.value.author as usize)
                .ok_or_else(|| UnknownSigner(format!("author {}", self.value.author)))?;
            checks.add(*key, self);
            Ok(())
        }
    }

    fn setup() -> (Vec<Signer>, Keys) {
        let signers: Vec<Signer> = (0..3u8)
            .map(|i| Signer::new(KeyPair::from_seed([i + 1; 32]), ClusterId(7)))
            .collect();
        let keys = Keys(signers.iter().map(|s| s.public_key()).collect());
        (signers, keys)
    }

    fn note(author: u8, text: &str) -> Note {
        Note {
            author,
            text: text.into(),
        }
    }

    #[test]
    fn checks_are_counted_by_signature_and_by_batch() {
        let (signers, keys) = setup();
        let verifier = Verifier::new(ClusterId(7));
        let before = crate::stats::check_stats();
        let one = signers[0].sign(note(0, "alone"));
        assert!(verifier.verify(one, &keys).is_ok());
        let batch: Vec<Signed<Note>> = (0..3u8)
            .map(|i| signers[i as usize].sign(note(i, "b")))
            .collect();
        assert!(verifier
            .verify_batch(batch, &keys)
            .iter()
            .all(Result::is_ok));
        let after = crate::stats::check_stats();
        // Other tests check signatures concurrently: at least ours are there.
        assert!(
            after.signatures >= before.signatures + 4,
            "{before:?} -> {after:?}"
        );
        assert!(after.calls >= before.calls + 2);
        assert!(after.batch_calls > before.batch_calls);
        assert!(after.batched_signatures >= before.batched_signatures + 3);
        assert!(after.nanos > before.nanos);
    }

    #[test]
    fn sign_then_verify() {
        let (signers, keys) = setup();
        let signed = signers[1].sign(note(1, "hi"));
        let v = Verifier::new(ClusterId(7)).verify(signed.clone(), &keys);
        assert_eq!(v.map(|v| v.into_inner()), Ok(signed));
    }

    #[test]
    fn tampered_value_is_rejected() {
        let (signers, keys) = setup();
        let mut signed = signers[1].sign(note(1, "hi"));
        signed.value.text = "ho".into();
        assert_eq!(
            Verifier::new(ClusterId(7)).verify(signed, &keys),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn wrong_signer_is_rejected() {
        let (signers, keys) = setup();
        // Replica 2 signs a note that claims to be by replica 1.
        let signed = signers[2].sign(note(1, "hi"));
        assert!(Verifier::new(ClusterId(7)).verify(signed, &keys).is_err());
    }

    #[test]
    fn unknown_signer_is_rejected() {
        let (signers, keys) = setup();
        let signed = signers[1].sign(note(9, "hi"));
        assert!(matches!(
            Verifier::new(ClusterId(7)).verify(signed, &keys),
            Err(VerifyError::UnknownSigner(_))
        ));
    }

    #[test]
    fn other_cluster_is_rejected() {
        let (signers, keys) = setup();
        let signed = signers[1].sign(note(1, "hi"));
        assert_eq!(
            Verifier::new(ClusterId(8)).verify(signed, &keys),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn other_kind_is_rejected() {
        let (signers, keys) = setup();
        // Same bytes under another kind tag: the domain differs, so it fails.
        let other = signers[1].sign(Other {
            author: 1,
            text: "hi".into(),
        });
        let as_note = Signed {
            value: note(1, "hi"),
            signature: other.signature,
        };
        assert_eq!(
            Verifier::new(ClusterId(7)).verify(as_note, &keys),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn batch_finds_the_bad_ones() {
        let (signers, keys) = setup();
        let mut values: Vec<Signed<Note>> = (0..8)
            .map(|i| signers[i % 3].sign(note((i % 3) as u8, &format!("n{i}"))))
            .collect();
        values[3].signature.0[5] ^= 1;
        values[6].value.text.push('!');
        let results = Verifier::new(ClusterId(7)).verify_batch(values, &keys);
        let ok: Vec<bool> = results.iter().map(|r| r.is_ok()).collect();
        assert_eq!(ok, vec![true, true, true, false, true, true, false, true]);
    }

    #[test]
    fn signature_serde_round_trip() {
        let (signers, _) = setup();
        let signed = signers[0].sign(note(0, "x"));
        let bytes = postcard::to_stdvec(&signed).expect("encode");
        let back: Signed<Note> = postcard::from_bytes(&bytes).expect("decode");
        assert_eq!(back, signed);
        assert!(postcard::from_bytes::<Signed<Note>>(&bytes[..bytes.len() - 1]).is_err());
    }

    /// One verdict per signature: an edge case on which cofactored and
    /// cofactorless equations disagree (small-order key and R, S = 0: case 1 of
    /// the "Taming the many EdDSAs" condition table) gets the same verdict
    /// alone and inside a batch of good signatures. Under ZIP-215 it verifies.
    #[test]
    fn small_order_edge_case_has_one_verdict() {
        let (signers, mut keys) = setup();
        let mut identity = [0u8; 32];
        identity[0] = 1; // the encoding of the identity point (order 1)
        keys.0.push(PublicKey(identity));
        let mut sig = [0u8; 64];
        sig[0] = 1; // R = identity, S = 0
        let edge = Signed {
            value: note(3, "edge"),
            signature: Signature(sig),
        };
        let verifier = Verifier::new(ClusterId(7));
        let alone = verifier.verify(edge.clone(), &keys).is_ok();
        let mut batch: Vec<Signed<Note>> = (0..5)
            .map(|i| signers[i % 3].sign(note((i % 3) as u8, "ok")))
            .collect();
        batch.insert(2, edge);
        let results = verifier.verify_batch(batch, &keys);
        assert!(alone, "ZIP-215 accepts the small-order case");
        assert_eq!(results[2].is_ok(), alone, "same verdict in a batch");
        assert!(results.iter().all(|r| r.is_ok()));
    }

    #[cfg(feature = "insecure-sim")]
    #[test]
    fn sim_scheme_is_never_accepted_as_ed25519() {
        let (_, keys) = setup();
        let sim = Signer::with_scheme(
            KeyPair::from_seed([1; 32]),
            ClusterId(7),
            Scheme::InsecureSim,
        );
        let signed = sim.sign(note(0, "x"));
        assert!(Verifier::with_scheme(ClusterId(7), Scheme::InsecureSim)
            .verify(signed.clone(), &keys)
            .is_ok());
        assert!(Verifier::new(ClusterId(7)).verify(signed, &keys).is_err());
    }

    /// The simulator's memo of good tags: a tag seen good before is good
    /// again only for the same signer and the same bytes (a signature
    /// spliced onto altered fields, or claimed by another signer, fails
    /// however often the original was checked).
    #[cfg(feature = "insecure-sim")]
    #[test]
    fn sim_tag_memo_does_not_lend_a_good_tag_to_other_bytes() {
        let (_, keys) = setup();
        let sim = |i: u8| {
            Signer::with_scheme(
                KeyPair::from_seed([i + 1; 32]),
                ClusterId(7),
                Scheme::InsecureSim,
            )
        };
        let verifier = Verifier::with_scheme(ClusterId(7), Scheme::InsecureSim);
        let good = sim(0).sign(note(0, "x"));
        for _ in 0..3 {
            assert!(verifier.verify(good.clone(), &keys).is_ok());
        }
        let spliced = Signed {
            value: note(0, "y"),
            signature: good.signature,
        };
        assert!(verifier.verify(spliced, &keys).is_err());
        let other_signer = Signed {
            value: note(1, "x"),
            signature: good.signature,
        };
        assert!(verifier.verify(other_signer, &keys).is_err());
        assert!(verifier.clone().verify(good, &keys).is_ok());
    }
}
