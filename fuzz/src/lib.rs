//! Shared pieces of the fuzz targets: a fixed cluster (keys from fixed
//! seeds, so seed inputs can carry valid signatures), a per-process scratch
//! directory for the decoders that read files, and seed inputs.

use pbft_core::message::{
    Batch, BatchData, Checkpoint, CheckpointProof, Commit, CommitCertificate, FetchBatch,
    FetchState, NewView, PrePrepare, Prepare, PreparedProof, Progress, Reply, Request, StateBody,
    StateData, StatePart, StatusReport, StatusRequest, ViewChange,
};
use pbft_core::{ClientId, Config, Message, ReplicaId, RequestId, SeqNum, View};
use pbft_crypto::{ClusterId, Digest, KeyPair, Signer};
use std::path::PathBuf;

/// The fuzzed cluster's id.
pub const CLUSTER: u64 = 7;

/// Replica `i`'s signer (n = 4).
pub fn replica(i: u32) -> Signer {
    Signer::new(KeyPair::from_seed([i as u8 + 1; 32]), ClusterId(CLUSTER))
}

/// The client's signer.
pub fn client() -> Signer {
    Signer::new(KeyPair::from_seed([0xc1; 32]), ClusterId(CLUSTER))
}

/// The core configuration of the fuzzed cluster.
pub fn config() -> Config {
    Config::new(
        ClusterId(CLUSTER),
        (0..4).map(|i| replica(i).public_key()).collect(),
    )
}

/// A scratch directory for this process (created once, reused per input).
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pbft-fuzz-{name}-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    dir
}

fn request(id: u64, op: Vec<u8>) -> pbft_crypto::Signed<Request> {
    let c = client();
    c.sign(Request {
        client: ClientId(c.public_key()),
        request_id: RequestId(id),
        op,
        read_only: false,
        repliers: pbft_core::message::Repliers::ALL,
    })
}

/// One message of every kind, with nested certificates, validly signed.
pub fn seed_messages(ops: &[Vec<u8>]) -> Vec<Message> {
    let batch = Batch {
        requests: ops
            .iter()
            .enumerate()
            .map(|(i, op)| request(i as u64 + 1, op.clone()))
            .collect(),
    };
    let digest = Digest::of(b"batch");
    let pre_prepare = replica(0).sign(PrePrepare {
        view: View(0),
        seq: SeqNum(1),
        digest,
        replica: ReplicaId(0),
    });
    let prepares: Vec<_> = (1..3)
        .map(|i| {
            replica(i).sign(Prepare {
                view: View(0),
                seq: SeqNum(1),
                digest,
                replica: ReplicaId(i),
            })
        })
        .collect();
    let checkpoint_proof = CheckpointProof {
        seq: SeqNum(64),
        digest: Digest::of(b"state"),
        checkpoints: (0..3)
            .map(|i| {
                replica(i).sign(Checkpoint {
                    seq: SeqNum(64),
                    digest: Digest::of(b"state"),
                    replica: ReplicaId(i),
                })
            })
            .collect(),
    };
    let view_change = |i: u32| {
        replica(i).sign(ViewChange {
            new_view: View(1),
            checkpoint: checkpoint_proof.clone(),
            prepared: vec![PreparedProof {
                pre_prepare: pre_prepare.clone(),
                prepares: prepares.clone(),
            }],
            replica: ReplicaId(i),
        })
    };
    let c = client();
    let commits: Vec<_> = (0..3)
        .map(|i| {
            replica(i).sign(Commit {
                view: View(0),
                seq: SeqNum(1),
                digest,
                replica: ReplicaId(i),
            })
        })
        .collect();
    vec![
        Message::Progress(replica(3).sign(Progress {
            view: View(0),
            active: true,
            stable: SeqNum(0),
            last_executed: SeqNum(0),
            replica: ReplicaId(3),
        })),
        Message::Certificate(CommitCertificate { commits }, Some(batch.clone())),
        Message::Request(request(9, ops.first().cloned().unwrap_or_default())),
        Message::PrePrepare(pre_prepare.clone(), batch.clone()),
        Message::Prepare(prepares[0].clone()),
        Message::Commit(replica(2).sign(Commit {
            view: View(0),
            seq: SeqNum(1),
            digest,
            replica: ReplicaId(2),
        })),
        Message::Checkpoint(checkpoint_proof.checkpoints[0].clone()),
        Message::ViewChange(view_change(1)),
        Message::NewView(
            replica(1).sign(NewView {
                view: View(1),
                view_changes: (0..3).map(view_change).collect(),
                pre_prepares: vec![replica(1).sign(PrePrepare {
                    view: View(1),
                    seq: SeqNum(1),
                    digest,
                    replica: ReplicaId(1),
                })],
                replica: ReplicaId(1),
            }),
            vec![batch.clone()],
        ),
        Message::FetchBatch(replica(3).sign(FetchBatch {
            digest,
            replica: ReplicaId(3),
        })),
        Message::BatchData(replica(0).sign(BatchData {
            batch,
            replica: ReplicaId(0),
        })),
        Message::FetchState(replica(3).sign(FetchState {
            seq: SeqNum(64),
            part: StatePart::Summary,
            replica: ReplicaId(3),
        })),
        Message::StateData(replica(0).sign(StateData {
            seq: checkpoint_proof.seq,
            digest: checkpoint_proof.digest,
            body: StateBody::Summary {
                proof: Box::new(checkpoint_proof.clone()),
                count: 1,
                groups: vec![Digest::of(b"group")],
            },
            replica: ReplicaId(0),
        })),
        Message::StateData(replica(0).sign(StateData {
            seq: checkpoint_proof.seq,
            digest: checkpoint_proof.digest,
            body: StateBody::Page {
                index: 0,
                bytes: vec![0, 0],
            },
            replica: ReplicaId(0),
        })),
        Message::Reply(Reply {
            view: View(0),
            client: ClientId(c.public_key()),
            request_id: RequestId(1),
            result: vec![0],
            status: Default::default(),
            read_only: false,
            replica: ReplicaId(2),
        }),
        Message::StatusRequest(c.sign(StatusRequest {
            client: ClientId(c.public_key()),
            nonce: 1,
        })),
        Message::StatusReport(replica(0).sign(StatusReport {
            view: View(0),
            active: true,
            primary: ReplicaId(0),
            last_executed: SeqNum(1),
            stable_checkpoint: SeqNum(0),
            state_digest: Digest::of(b"state"),
            nonce: 1,
            replica: ReplicaId(0),
        })),
    ]
}
