//! Cryptography for the PBFT replication service.
//!
//! * [`Digest`]: SHA-256 digests of batches, states and snapshots.
//! * [`KeyPair`], [`PublicKey`], [`Signature`]: ed25519 identities of replicas and clients.
//! * [`Signer`] and [`Signed`]: signing the postcard encoding of a value under a
//!   domain-separation prefix (protocol version, cluster id, message kind), so a
//!   signature made for one purpose or one cluster never verifies as another.
//! * [`Verifier`] and [`Verified`]: the only way to obtain a `Verified<T>` is a
//!   successful check of *every* signature `T` carries (nested certificates
//!   included). The protocol core accepts only `Verified` input, so the type
//!   system records which bytes were checked.
//! * [`keyfile`]: secret key files written `0600` and refused when others can read them.
//!
//! # One verdict per signature
//!
//! Every honest replica must judge a signature the same way whatever it is
//! batched with; otherwise a faulty client could split the replicas. ed25519-dalek's
//! batch check uses the cofactored equation and its single check the cofactorless
//! one, so both single and batch checks here use the ZIP-215 rules (both
//! cofactored), which agree by construction; they are written on
//! curve25519-dalek 4 with decompressed keys cached (`sign/zip215.rs`), and
//! the tests check them against the published edge-case vectors and against
//! `ed25519-consensus`. ed25519-dalek is used only to make keys and sign.

mod digest;
pub mod keyfile;
mod keys;
mod sign;
pub mod stats;

pub use digest::Digest;
pub use keys::{KeyError, KeyPair, PublicKey, Signature};
pub use sign::{
    Authenticated, ClusterId, Malformed, Scheme, SigChecks, Signable, Signed, Signer,
    UnknownSigner, Verified, Verifier, VerifyError,
};
