//! Every message kind, nested signatures included, with real ed25519 keys:
//! the untouched message verifies, and no flipped bit anywhere in its wire
//! form yields a message that verifies while carrying a signed value that
//! nobody signed. (A flip may still decode to a message that verifies if it
//! only drops or reorders signed parts inside an unsigned container, such as
//! the batches beside a NEW-VIEW: those prove nothing new.)
//!
//! Removing the check of any one signature, top-level or nested, makes this
//! test fail for the kinds that carry it.

use pbft_core::checkpoint::PAGES_PER_FETCH;
use pbft_core::message::{
    Batch, Checkpoint, CheckpointProof, Commit, CommitCertificate, FetchBatch, FetchState, Message,
    NewView, PrePrepare, Prepare, PreparedProof, Progress, Request, StateBody, StateData,
    StatePart, StatusReport, StatusRequest, ViewChange, BATCH_REQUESTS_MAX, NEW_VIEW_BATCHES_MAX,
};
use pbft_core::{ClientId, Config, ReplicaId, RequestId, SeqNum, View};
use pbft_crypto::{ClusterId, Digest, KeyPair, Signed, Signer, Verifier};
use serde::Serialize;

struct Fixture {
    config: Config,
    replicas: Vec<Signer>,
    client: Signer,
}

fn fixture() -> Fixture {
    let cluster = ClusterId(7);
    let keys: Vec<KeyPair> = (0..4).map(|i| KeyPair::from_seed([i + 1; 32])).collect();
    let config = Config::new(cluster, keys.iter().map(KeyPair::public).collect());
    Fixture {
        config,
        replicas: keys.into_iter().map(|k| Signer::new(k, cluster)).collect(),
        client: Signer::new(KeyPair::from_seed([9; 32]), cluster),
    }
}

/// One message of every kind, each with the nested signed values it can carry.
fn messages(fx: &Fixture) -> Vec<Message> {
    let r = |i: u32| ReplicaId(i);
    let client = ClientId(fx.client.public_key());
    let request = fx.client.sign(Request {
        client,
        request_id: RequestId(5),
        op: b"op".to_vec(),
        read_only: false,
        repliers: pbft_core::message::Repliers::ALL,
    });
    let batch = Batch {
        requests: vec![request.clone()],
    };
    let digest = batch.digest();
    let (view, seq) = (View(1), SeqNum(5));
    let pre_prepare = fx.replicas[1].sign(PrePrepare {
        view,
        seq,
        digest,
        replica: r(1),
    });
    let prepares: Vec<Signed<Prepare>> = [2, 3]
        .iter()
        .map(|&i| {
            fx.replicas[i as usize].sign(Prepare {
                view,
                seq,
                digest,
                replica: r(i),
            })
        })
        .collect();
    let commits: Vec<Signed<Commit>> = [0, 1, 2]
        .iter()
        .map(|&i| {
            fx.replicas[i as usize].sign(Commit {
                view,
                seq,
                digest,
                replica: r(i),
            })
        })
        .collect();
    let state = Digest::of(b"state");
    let checkpoints: Vec<Signed<Checkpoint>> = [0, 1, 3]
        .iter()
        .map(|&i| {
            fx.replicas[i as usize].sign(Checkpoint {
                seq: SeqNum(4),
                digest: state,
                replica: r(i),
            })
        })
        .collect();
    let proof = CheckpointProof {
        seq: SeqNum(4),
        digest: state,
        checkpoints: checkpoints.clone(),
    };
    let view_change = fx.replicas[3].sign(ViewChange {
        new_view: View(2),
        checkpoint: proof.clone(),
        prepared: vec![PreparedProof {
            pre_prepare: pre_prepare.clone(),
            prepares: prepares.clone(),
        }],
        replica: r(3),
    });
    let new_view = fx.replicas[2].sign(NewView {
        view: View(2),
        view_changes: vec![view_change.clone()],
        pre_prepares: vec![fx.replicas[2].sign(PrePrepare {
            view: View(2),
            seq,
            digest,
            replica: r(2),
        })],
        replica: r(2),
    });
    vec![
        Message::Request(request),
        Message::PrePrepare(pre_prepare, batch.clone()),
        Message::Prepare(prepares[0].clone()),
        Message::Commit(commits[0].clone()),
        Message::Checkpoint(checkpoints[0].clone()),
        Message::ViewChange(view_change),
        Message::NewView(new_view, vec![batch.clone()]),
        Message::FetchBatch(fx.replicas[0].sign(FetchBatch {
            digest,
            replica: r(0),
        })),
        Message::BatchData(fx.replicas[0].sign(pbft_core::message::BatchData {
            batch: batch.clone(),
            replica: r(0),
        })),
        Message::FetchState(fx.replicas[0].sign(FetchState {
            seq: SeqNum(4),
            part: StatePart::Pages(vec![1, 2]),
            replica: r(0),
        })),
        Message::StateData(fx.replicas[0].sign(StateData {
            seq: proof.seq,
            digest: proof.digest,
            body: StateBody::Summary {
                proof: Box::new(proof),
                count: 1,
                groups: vec![Digest::of(b"group")],
            },
            replica: r(0),
        })),
        Message::StatusRequest(fx.client.sign(StatusRequest { client, nonce: 3 })),
        Message::StatusReport(fx.replicas[0].sign(StatusReport {
            view,
            active: true,
            primary: r(1),
            last_executed: seq,
            stable_checkpoint: SeqNum(4),
            state_digest: state,
            nonce: 3,
            replica: r(0),
        })),
        Message::Progress(fx.replicas[0].sign(Progress {
            view,
            active: true,
            stable: SeqNum(4),
            last_executed: seq,
            replica: r(0),
        })),
        Message::Certificate(CommitCertificate { commits }, Some(batch)),
    ]
}

/// The encodings of every signed value a message carries (value and signature).
fn signed_parts(message: &Message) -> Vec<Vec<u8>> {
    fn part<T: Serialize>(s: &Signed<T>) -> Vec<u8> {
        postcard::to_stdvec(s).expect("encode")
    }
    fn batch(b: &Batch, out: &mut Vec<Vec<u8>>) {
        out.extend(b.requests.iter().map(part));
    }
    fn proof(p: &CheckpointProof, out: &mut Vec<Vec<u8>>) {
        out.extend(p.checkpoints.iter().map(part));
    }
    fn view_change(vc: &Signed<ViewChange>, out: &mut Vec<Vec<u8>>) {
        out.push(part(vc));
        proof(&vc.checkpoint, out);
        for p in &vc.prepared {
            out.push(part(&p.pre_prepare));
            out.extend(p.prepares.iter().map(part));
        }
    }
    let mut out = Vec::new();
    match message {
        Message::Request(m) => out.push(part(m)),
        Message::PrePrepare(m, b) => {
            out.push(part(m));
            batch(b, &mut out);
        }
        Message::Prepare(m) => out.push(part(m)),
        Message::Commit(m) => out.push(part(m)),
        Message::Checkpoint(m) => out.push(part(m)),
        Message::ViewChange(m) => view_change(m, &mut out),
        Message::NewView(m, batches) => {
            out.push(part(m));
            for vc in &m.view_changes {
                view_change(vc, &mut out);
            }
            out.extend(m.pre_prepares.iter().map(part));
            for b in batches {
                batch(b, &mut out);
            }
        }
        Message::FetchBatch(m) => out.push(part(m)),
        Message::BatchData(m) => {
            out.push(part(m));
            batch(&m.batch, &mut out);
        }
        Message::FetchState(m) => out.push(part(m)),
        Message::StateData(m) => {
            out.push(part(m));
            if let StateBody::Summary { proof: p, .. } = &m.body {
                proof(p, &mut out);
            }
        }
        Message::Reply(_) => {} // unsigned: authenticated by its link
        Message::StatusRequest(m) => out.push(part(m)),
        Message::StatusReport(m) => out.push(part(m)),
        Message::Progress(m) => out.push(part(m)),
        Message::Certificate(cert, b) => {
            out.extend(cert.commits.iter().map(part));
            if let Some(b) = b {
                batch(b, &mut out);
            }
        }
    }
    out
}

#[test]
fn no_flipped_bit_makes_a_forgery_verify() {
    let fx = fixture();
    let verifier = Verifier::new(ClusterId(7));
    let all = messages(&fx);
    // Every kind but REPLY, which is unsigned (the client checks its link;
    // see crates/client/tests/read_mode.rs).
    assert_eq!(all.len(), 15, "one message per signed kind");
    for original in all {
        let kind = original.kind();
        verifier
            .verify(original.clone(), &fx.config)
            .unwrap_or_else(|e| panic!("{kind}: the untouched message must verify: {e}"));
        let genuine = signed_parts(&original);
        let bytes = original.encode();
        let mut rejected = 0;
        for i in 0..bytes.len() {
            let mut tampered = bytes.clone();
            tampered[i] ^= 1 << (i % 8);
            let Ok(decoded) = Message::decode(&tampered) else {
                rejected += 1;
                continue;
            };
            if decoded == original {
                continue;
            }
            let parts = signed_parts(&decoded);
            match verifier.verify(decoded, &fx.config) {
                Err(_) => rejected += 1,
                Ok(_) => {
                    let forged = parts.iter().find(|p| !genuine.contains(p));
                    assert!(
                        forged.is_none(),
                        "{kind}: flipping bit {} of byte {i} gives a message that verifies with a signed value nobody signed",
                        i % 8
                    );
                }
            }
        }
        assert!(rejected > 0, "{kind}: no tampering was ever rejected");
    }
}

/// The message of `kind` from [`messages`].
fn message_of(fx: &Fixture, kind: &str) -> Message {
    messages(fx)
        .into_iter()
        .find(|m| m.kind() == kind)
        .unwrap_or_else(|| panic!("the fixture has a {kind}"))
}

/// Refused for its shape, before any signature is checked. The padding copies
/// genuine signed values, so every signature in the message is good: without
/// the shape check it would verify, and a signature check cannot give
/// `Malformed`.
fn assert_refused_for_shape(fx: &Fixture, message: Message, what: &str) {
    match Verifier::new(ClusterId(7)).verify(message, &fx.config) {
        Err(pbft_crypto::VerifyError::Malformed(m)) => {
            assert!(m.to_string().contains(what), "{what}: refused as {m}")
        }
        other => panic!("{what}: expected a shape refusal, got {other:?}"),
    }
}

#[test]
fn oversized_lists_are_refused_before_their_signatures_are_checked() {
    let fx = fixture();
    let n = fx.config.n();
    let window = fx.config.log_window as usize;

    let Message::ViewChange(vc) = message_of(&fx, "view-change") else {
        unreachable!()
    };
    let mut more = vc.clone();
    let c = more.value.checkpoint.checkpoints[0].clone();
    more.value.checkpoint.checkpoints.resize(n + 1, c);
    assert_refused_for_shape(&fx, Message::ViewChange(more), "checkpoints in a proof");
    let mut more = vc.clone();
    let p = more.value.prepared[0].clone();
    more.value.prepared.resize(window + 1, p);
    assert_refused_for_shape(&fx, Message::ViewChange(more), "prepared certificates");
    let mut more = vc.clone();
    let p = more.value.prepared[0].prepares[0].clone();
    more.value.prepared[0].prepares.resize(n + 1, p);
    assert_refused_for_shape(&fx, Message::ViewChange(more), "prepares in a certificate");

    let Message::NewView(nv, batches) = message_of(&fx, "new-view") else {
        unreachable!()
    };
    let mut more = nv.clone();
    more.value.view_changes.resize(n + 1, vc.clone());
    assert_refused_for_shape(&fx, Message::NewView(more, batches.clone()), "view-changes");
    let mut nested = nv.clone();
    nested.value.view_changes[0].value.prepared = vec![vc.prepared[0].clone(); window + 1];
    assert_refused_for_shape(
        &fx,
        Message::NewView(nested, batches.clone()),
        "prepared certificates",
    );
    let mut more = nv.clone();
    let pp = more.value.pre_prepares[0].clone();
    more.value.pre_prepares.resize(window + 1, pp);
    assert_refused_for_shape(
        &fx,
        Message::NewView(more, batches.clone()),
        "re-issued pre-prepares",
    );
    let two = vec![batches[0].clone(), batches[0].clone()];
    assert_refused_for_shape(&fx, Message::NewView(nv.clone(), two), "batches");
    // Within the batch count, but more requests in all than one batch may hold.
    let mut wide = nv.clone();
    let pp = wide.value.pre_prepares[0].clone();
    wide.value.pre_prepares.resize(2, pp);
    let request = batches[0].requests[0].clone();
    let half = Batch {
        requests: vec![request.clone(); BATCH_REQUESTS_MAX / 2 + 1],
    };
    assert_refused_for_shape(
        &fx,
        Message::NewView(wide, vec![half.clone(), half]),
        "requests in a new-view's batches",
    );

    let Message::PrePrepare(pp, _) = message_of(&fx, "pre-prepare") else {
        unreachable!()
    };
    let huge = Batch {
        requests: vec![request; BATCH_REQUESTS_MAX + 1],
    };
    assert_refused_for_shape(
        &fx,
        Message::PrePrepare(pp, huge.clone()),
        "requests in a batch",
    );
    let Message::Certificate(mut cert, batch) = message_of(&fx, "commit-certificate") else {
        unreachable!()
    };
    assert_refused_for_shape(
        &fx,
        Message::Certificate(cert.clone(), Some(huge)),
        "requests in a batch",
    );
    let c = cert.commits[0].clone();
    cert.commits.resize(n + 1, c);
    assert_refused_for_shape(
        &fx,
        Message::Certificate(cert, batch),
        "commits in a certificate",
    );
}

#[test]
fn lists_that_decode_far_larger_than_their_bytes_are_bounded_while_decoding() {
    let fx = fixture();
    let Message::NewView(nv, _) = message_of(&fx, "new-view") else {
        unreachable!()
    };
    // An empty batch is one byte on the wire and a Vec in memory.
    let at_limit = Message::NewView(nv.clone(), vec![Batch::default(); NEW_VIEW_BATCHES_MAX]);
    assert_eq!(Message::decode(&at_limit.encode()).as_ref(), Ok(&at_limit));
    let over = Message::NewView(nv, vec![Batch::default(); NEW_VIEW_BATCHES_MAX + 1]);
    assert!(Message::decode(&over.encode()).is_err());

    let fetch = |pages: Vec<u32>| {
        Message::FetchState(fx.replicas[0].sign(FetchState {
            seq: SeqNum(4),
            part: StatePart::Pages(pages),
            replica: ReplicaId(0),
        }))
    };
    let most = fetch((0..PAGES_PER_FETCH as u32).collect());
    assert_eq!(Message::decode(&most.encode()).as_ref(), Ok(&most));
    assert!(Message::decode(&fetch((0..=PAGES_PER_FETCH as u32).collect()).encode()).is_err());
}
