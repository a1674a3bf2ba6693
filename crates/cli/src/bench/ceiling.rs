//! The crypto ceiling: what signature checks alone allow on this machine.
//!
//! Every replica checks each client request's signature once, so a cluster
//! of N replicas on one machine with `cores` cores can order at most
//! `cores / (N x cost)` requests per second, where `cost` is one client
//! signature checked inside a batch (the verification stage's way), measured
//! here with pbft-crypto's own verifier on requests like the bench's.

use pbft_app::kv::KvOp;
use pbft_core::message::Request;
use pbft_core::{ClientId, Config, Message, RequestId};
use pbft_crypto::{ClusterId, KeyPair, Signer, Verifier};
use std::time::{Duration, Instant};

/// Requests per batch: the verification stage's largest batch
/// (pbft-net's `DEFAULT_MAX_BATCH`, which the node uses).
pub const BATCH: usize = 64;

/// One measurement of signature-check costs.
#[derive(Clone, Copy, Debug)]
pub struct CryptoCost {
    /// Seconds per client signature checked in a batch of [`BATCH`].
    pub batched: f64,
    /// Seconds per client signature checked alone.
    pub single: f64,
}

/// Signed requests of `BATCH` distinct clients with `payload`-byte values.
fn requests(payload: usize) -> Vec<Message> {
    (0..BATCH)
        .map(|i| {
            let key = KeyPair::generate();
            let signer = Signer::new(key, ClusterId(1));
            let op = KvOp::Put {
                key: format!("b{i}-0").into_bytes(),
                value: vec![b'x'; payload],
            };
            Message::Request(signer.sign(Request {
                client: ClientId(signer.public_key()),
                request_id: RequestId(1),
                op: op.encode(),
                read_only: false,
                repliers: pbft_core::message::Repliers::ALL,
            }))
        })
        .collect()
}

/// Measures both costs for `at_least` each (on one thread).
pub fn measure(payload: usize, at_least: Duration) -> CryptoCost {
    let messages = requests(payload);
    let replicas = (0..4).map(|_| KeyPair::generate().public()).collect();
    let config = Config::new(ClusterId(1), replicas);
    let verifier = Verifier::new(ClusterId(1));

    let started = Instant::now();
    let mut checked = 0usize;
    while checked < 3 * BATCH || started.elapsed() < at_least {
        let results = verifier.verify_batch(messages.clone(), &config);
        debug_assert!(results.iter().all(Result::is_ok));
        checked += results.len();
    }
    let batched = started.elapsed().as_secs_f64() / checked as f64;

    let started = Instant::now();
    let mut checked = 0usize;
    while checked < BATCH || started.elapsed() < at_least {
        for m in &messages {
            let ok = verifier.verify(m.clone(), &config).is_ok();
            debug_assert!(ok);
            checked += 1;
        }
    }
    let single = started.elapsed().as_secs_f64() / checked as f64;
    CryptoCost { batched, single }
}

/// `openssl speed -seconds 1 ed25519`: verifications per second, if
/// `openssl` is on PATH and answers within 15 s.
pub async fn openssl_verify_per_second() -> Option<f64> {
    let run = tokio::process::Command::new("openssl")
        .args(["speed", "-seconds", "1", "ed25519"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(15), run)
        .await
        .ok()?
        .ok()?;
    parse_openssl(&String::from_utf8_lossy(&output.stdout))
}

/// The verify/s column of openssl speed's Ed25519 summary line
/// (`253 bits EdDSA (Ed25519)   0.0000s   0.0001s  25000.0   9000.0`).
fn parse_openssl(text: &str) -> Option<f64> {
    let line = text.lines().rev().find(|l| {
        l.contains("(Ed25519)") && l.trim_end().ends_with(|c: char| c.is_ascii_digit())
    })?;
    line.split_whitespace().last()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batched_check_costs_less_than_a_single_one() {
        let cost = measure(0, Duration::from_millis(50));
        assert!(cost.batched > 0.0 && cost.single > 0.0, "{cost:?}");
        // Batch verification of 64 ed25519 signatures is well over 1.5x
        // cheaper per signature; a generous bound against noise.
        assert!(cost.batched < cost.single, "{cost:?}");
    }

    #[test]
    fn reads_the_verify_column_of_openssl_speed() {
        let out = "version: 3.0\n                              sign    verify    sign/s verify/s\n\
                   253 bits EdDSA (Ed25519)   0.0000s   0.0001s  25123.0   9001.5\n";
        assert_eq!(parse_openssl(out), Some(9001.5));
        assert_eq!(parse_openssl("nothing here"), None);
    }
}
