//! The edge-case vectors of "Taming the many EdDSAs" (Chalkias, Garillot and
//! Nikolaenko, SSR 2020: the 15 vectors of the ed25519-speccheck set):
//! small- and mixed-order keys and R, S = 0, S >= L, a pre-reduced scalar,
//! and non-canonical encodings of R and A. `zip215` is the verdict under the
//! ZIP-215 rules (the Zebra row of the set's results table).
//!
//! What the replicas need is that each signature gets that one verdict
//! whether it is checked alone or inside a batch of good signatures:
//! otherwise a faulty client or replica could craft a message that some
//! honest replicas accept (because it happened to be batched) and others
//! refuse.

use super::Verifier;
use crate::{ClusterId, PublicKey, Signature};
use ed25519_dalek::Signer as _;

struct Case {
    message: &'static str,
    key: &'static str,
    signature: &'static str,
    zip215: bool,
}

const CASES: [Case; 15] = [
    // 0
    Case {
        message: "2a66241a42a9ee12994d8068dcf1bb7dfc6637b45450acd43711f637fa5080fc",
        key: "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
        signature: concat!(
            "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
            "0000000000000000000000000000000000000000000000000000000000000000"
        ),
        zip215: true,
    },
    // 1
    Case {
        message: "8c93255d71dcab10e8f379c26200f3c7bd5f09d9bc3068d3ef4edeb4853022b6",
        key: "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
        signature: concat!(
            "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
            "0000000000000000000000000000000000000000000000000000000000000000"
        ),
        zip215: true,
    },
    // 2
    Case {
        message: "9bedc267423725d473888631ebf45988bad3db83851ee85c85e241a07d148b41",
        key: "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
        signature: concat!(
            "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43",
            "a5bb704786be79fc476f91d3f3f89b03984d8068dcf1bb7dfc6637b45450ac04"
        ),
        zip215: true,
    },
    // 3
    Case {
        message: "9bd9f44f4dcc75bd531b56b2cd280b0bb38fc1cd6d1230e14861d861de092e79",
        key: "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
        signature: concat!(
            "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43",
            "a5bb704786be79fc476f91d3f3f89b03984d8068dcf1bb7dfc6637b45450ac04"
        ),
        zip215: true,
    },
    // 4
    Case {
        message: "9bedc267423725d473888631ebf45988bad3db83851ee85c85e241a07d148b41",
        key: "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43",
        signature: concat!(
            "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
            "182ef1a5b928da07fec769cc8a12db6bcf70dab3f3227fa315e9d5e3e01a3405"
        ),
        zip215: true,
    },
    // 5
    Case {
        message: "aebf3f2601a0c8c5d39cc7d8911642f740b78168218da8471772b35f9d35b9ab",
        key: "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43",
        signature: concat!(
            "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
            "8c4bd45aecaca5b24fb97bc10ac27ac8751a7dfe1baff8b953ec9f5833ca260e"
        ),
        zip215: true,
    },
    // 6
    Case {
        message: "9bd9f44f4dcc75bd531b56b2cd280b0bb38fc1cd6d1230e14861d861de092e79",
        key: "cdb267ce40c5cd45306fa5d2f29731459387dbf9eb933b7bd5aed9a765b88d4d",
        signature: concat!(
            "9046a64750444938de19f227bb80485e92b83fdb4b6506c160484c016cc1852f",
            "87909e14428a7a1d62e9f22f3d3ad7802db02eb2e688b6c52fcd6648a98bd009"
        ),
        zip215: true,
    },
    // 7
    Case {
        message: "e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec4011eaccd55b53f56c",
        key: "cdb267ce40c5cd45306fa5d2f29731459387dbf9eb933b7bd5aed9a765b88d4d",
        signature: concat!(
            "160a1cb0dc9c0258cd0a7d23e94d8fa878bcb1925f2c64246b2dee1796bed512",
            "5ec6bc982a269b723e0668e540911a9a6a58921d6925e434ab10aa7940551a09"
        ),
        zip215: true,
    },
    // 8
    Case {
        message: "e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec4011eaccd55b53f56c",
        key: "cdb267ce40c5cd45306fa5d2f29731459387dbf9eb933b7bd5aed9a765b88d4d",
        signature: concat!(
            "21122a84e0b5fca4052f5b1235c80a537878b38f3142356b2c2384ebad4668b7",
            "e40bc836dac0f71076f9abe3a53f9c03c1ceeeddb658d0030494ace586687405"
        ),
        zip215: true,
    },
    // 9
    Case {
        message: "85e241a07d148b41e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec40",
        key: "442aad9f089ad9e14647b1ef9099a1ff4798d78589e66f28eca69c11f582a623",
        signature: concat!(
            "e96f66be976d82e60150baecff9906684aebb1ef181f67a7189ac78ea23b6c0e",
            "547f7690a0e2ddcd04d87dbc3490dc19b3b3052f7ff0538cb68afb369ba3a514"
        ),
        zip215: false,
    },
    // 10
    Case {
        message: "85e241a07d148b41e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec40",
        key: "442aad9f089ad9e14647b1ef9099a1ff4798d78589e66f28eca69c11f582a623",
        signature: concat!(
            "8ce5b96c8f26d0ab6c47958c9e68b937104cd36e13c33566acd2fe8d38aa1942",
            "7e71f98a473474f2f13f06f97c20d58cc3f54b8bd0d272f42b695dd7e89a8c22"
        ),
        zip215: false,
    },
    // 11
    Case {
        message: "9bedc267423725d473888631ebf45988bad3db83851ee85c85e241a07d148b41",
        key: "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43",
        signature: concat!(
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "03be9678ac102edcd92b0210bb34d7428d12ffc5df5f37e359941266a4e35f0f"
        ),
        zip215: false,
    },
    // 12
    Case {
        message: "9bedc267423725d473888631ebf45988bad3db83851ee85c85e241a07d148b41",
        key: "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43",
        signature: concat!(
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "ca8c5b64cd208982aa38d4936621a4775aa233aa0505711d8fdcfdaa943d4908"
        ),
        zip215: true,
    },
    // 13
    Case {
        message: "e96b7021eb39c1a163b6da4e3093dcd3f21387da4cc4572be588fafae23c155b",
        key: "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        signature: concat!(
            "a9d55260f765261eb9b84e106f665e00b867287a761990d7135963ee0a7d59dc",
            "a5bb704786be79fc476f91d3f3f89b03984d8068dcf1bb7dfc6637b45450ac04"
        ),
        zip215: true,
    },
    // 14
    Case {
        message: "39a591f5321bbe07fd5a23dc2f39d025d74526615746727ceefd6e82ae65c06f",
        key: "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        signature: concat!(
            "a9d55260f765261eb9b84e106f665e00b867287a761990d7135963ee0a7d59dc",
            "a5bb704786be79fc476f91d3f3f89b03984d8068dcf1bb7dfc6637b45450ac04"
        ),
        zip215: true,
    },
];

type Item = (PublicKey, Vec<u8>, Signature);

fn decode(case: &Case) -> Item {
    let bytes = |s: &str| hex::decode(s).expect("hex");
    let key = bytes(case.key).try_into().expect("32 bytes");
    let signature = bytes(case.signature).try_into().expect("64 bytes");
    (PublicKey(key), bytes(case.message), Signature(signature))
}

/// Good signatures over raw messages, to batch the edge cases with.
fn good(count: u8) -> Vec<Item> {
    (0..count)
        .map(|i| {
            let key = ed25519_dalek::SigningKey::from_bytes(&[i + 1; 32]);
            let message = vec![i; 40];
            let signature = Signature(key.sign(&message).to_bytes());
            (
                PublicKey(key.verifying_key().to_bytes()),
                message,
                signature,
            )
        })
        .collect()
}

/// A verifier that decodes every key at first use, and one that holds the
/// vectors' and the good signatures' keys decoded from the start.
fn verifiers() -> [Verifier; 2] {
    let known = CASES
        .iter()
        .map(|c| decode(c).0)
        .chain(good(6).into_iter().map(|g| g.0));
    [
        Verifier::new(ClusterId(0)),
        Verifier::new(ClusterId(0)).with_known_keys(known),
    ]
}

#[test]
fn each_vector_gets_its_zip215_verdict_alone_and_in_any_batch() {
    for (v, verifier) in verifiers().iter().enumerate() {
        assert!(verifier.check_all(&good(6)), "the good signatures verify");
        // Twice: the second round finds every key in the cache.
        for round in 0..2 {
            for (i, case) in CASES.iter().enumerate() {
                let item = decode(case);
                let alone = verifier.check_all(std::slice::from_ref(&item));
                assert_eq!(
                    alone, case.zip215,
                    "case {i} alone (verifier {v}, round {round})"
                );
                for position in [0, 3, 6] {
                    let mut batch = good(6);
                    batch.insert(position, item.clone());
                    assert_eq!(
                        verifier.check_all(&batch),
                        case.zip215,
                        "case {i} at position {position} in a batch of good signatures (verifier {v}, round {round})"
                    );
                }
            }
        }
    }
}

#[test]
fn accepted_vectors_verify_together_and_any_rejected_one_fails_the_batch() {
    for verifier in verifiers() {
        let mut batch: Vec<Item> = CASES.iter().filter(|c| c.zip215).map(decode).collect();
        batch.extend(good(3));
        assert!(verifier.check_all(&batch));
        for (i, case) in CASES.iter().enumerate().filter(|(_, c)| !c.zip215) {
            let mut with_one = batch.clone();
            with_one.push(decode(case));
            assert!(!verifier.check_all(&with_one), "case {i} fails the batch");
        }
    }
}
