//! Protocol messages (Castro & Liskov, TOCS 2002, section 4), their signatures
//! and their wire form.
//!
//! Every message that crosses the network is, or carries, a [`Signed`] value
//! whose signer is named inside it (a replica id, or a client key for
//! requests). [`Message`] implements [`Authenticated`], so the verification
//! stage checks every signature, nested certificates included, before the core
//! sees a [`pbft_crypto::Verified<Message>`]. Signatures say *who* sent what;
//! everything else (quorum sizes, matching digests, water marks) the core
//! checks itself.
//!
//! # Shape before signatures
//! Before a single signature of a message is checked, its shape is: no list
//! holds more entries than a valid message of its kind can (at most n signers
//! per certificate, at most L prepared certificates or re-issued
//! pre-prepares, at most [`BATCH_REQUESTS_MAX`] requests per batch and per
//! NEW-VIEW). A faulty sender can thus make a receiver check at most the
//! signatures an honest message of that kind would carry, not the 150,000 a
//! 16 MiB frame has room for. Lists whose entries take far more memory than
//! wire bytes (a batch is one byte on the wire when empty) are bounded while
//! they are decoded (`bounded`).

use crate::config::Config;
use crate::ids::{ClientId, ReplicaId, RequestId, SeqNum, View};
use pbft_crypto::{
    Authenticated, Digest, Malformed, SigChecks, Signable, Signed, UnknownSigner, VerifyError,
};
use serde::{Deserialize, Serialize};

/// Most requests in one batch, and in all the batches one NEW-VIEW carries:
/// a protocol limit, above any local `batch_size_max`.
pub const BATCH_REQUESTS_MAX: usize = 10_000;
/// Most batches one NEW-VIEW carries (checked while decoding).
pub const NEW_VIEW_BATCHES_MAX: usize = 4096;

/// A client's request: signed by the client, so no replica can alter or forge it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Who asks.
    pub client: ClientId,
    /// Strictly increasing per client.
    pub request_id: RequestId,
    /// The application operation.
    pub op: Vec<u8>,
    /// Ask for the read-only fast path (answered without ordering).
    pub read_only: bool,
    /// The replicas asked to reply once the request has executed.
    pub repliers: Repliers,
}

/// The replicas a client asks to reply to an ordered request once it has
/// executed: as a bit mask, bit i for replica i; empty ([`Repliers::ALL`])
/// asks every replica.
///
/// A client needs only f+1 matching replies (2f+1 in a `fast` cluster), so
/// it names that many replicas instead of having all n send one: on this
/// kind of deployment a reply costs a datagram at both ends, about a third
/// of a request's whole cost. The names are the client's, signed with the
/// request: a primary cannot change them. A replica not named still keeps
/// the result in its client table and answers retransmissions, and a client
/// that does not decide soon after the first named reply retransmits with
/// [`Repliers::ALL`] (the SDK after 50 ms), so a named replica that is
/// faulty costs the client that wait, after which it names others for a
/// while ([`crate::client_quorum::ReplierChoice`]). A result too large for
/// the client table is sent by every replica. Replicas with an id of 64 or
/// more cannot be named and always reply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Repliers(u64);

impl Repliers {
    /// Every replica replies.
    pub const ALL: Repliers = Repliers(0);
    /// Replicas with an id at or above this always reply.
    pub const NAMEABLE: u32 = 64;

    /// Exactly these replicas (those with an id of 64 or more always reply
    /// anyway); no replica at all means every replica.
    pub fn of(replicas: impl IntoIterator<Item = ReplicaId>) -> Repliers {
        Repliers(
            replicas
                .into_iter()
                .filter(|r| r.0 < Self::NAMEABLE)
                .fold(0, |mask, r| mask | 1 << r.0),
        )
    }

    /// Whether `replica` is asked to reply.
    pub fn asks(self, replica: ReplicaId) -> bool {
        self.0 == 0 || replica.0 >= Self::NAMEABLE || self.0 & (1 << replica.0) != 0
    }

    /// Whether every replica is asked.
    pub fn is_all(self) -> bool {
        self.0 == 0
    }
}

/// The ordered contents of one sequence number. Its digest commits to the
/// exact signed requests in order; the empty batch is the null request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// The requests, in execution order.
    pub requests: Vec<Signed<Request>>,
}

impl Batch {
    /// The batch digest that pre-prepares carry.
    pub fn digest(&self) -> Digest {
        Digest::of_value(&self.requests)
    }

    /// About how many bytes the batch takes on the wire: its operations and,
    /// per request, its client key, signature and ids. Used for budgets.
    pub fn wire_bytes(&self) -> usize {
        const PER_REQUEST: usize = 32 + 64 + 16;
        self.requests.iter().map(|r| r.op.len() + PER_REQUEST).sum()
    }

    /// The digest of the null request (the empty batch).
    pub fn null_digest() -> Digest {
        Batch::default().digest()
    }
}

/// PRE-PREPARE: the primary of `view` assigns `seq` to the batch with `digest`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrePrepare {
    /// The view.
    pub view: View,
    /// The assigned sequence number.
    pub seq: SeqNum,
    /// The batch digest.
    pub digest: Digest,
    /// The sender; valid only if it is the primary of `view`.
    pub replica: ReplicaId,
}

/// PREPARE: a backup accepted the pre-prepare for (view, seq, digest).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prepare {
    /// The view.
    pub view: View,
    /// The sequence number.
    pub seq: SeqNum,
    /// The batch digest.
    pub digest: Digest,
    /// The sender.
    pub replica: ReplicaId,
}

/// COMMIT: the sender holds a prepared certificate for (view, seq, digest).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    /// The view.
    pub view: View,
    /// The sequence number.
    pub seq: SeqNum,
    /// The batch digest.
    pub digest: Digest,
    /// The sender.
    pub replica: ReplicaId,
}

/// CHECKPOINT: the sender's state after executing `seq` has digest `digest`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The sequence number (a multiple of K).
    pub seq: SeqNum,
    /// Digest of the checkpoint snapshot (application state and client table).
    pub digest: Digest,
    /// The sender.
    pub replica: ReplicaId,
}

/// A stable-checkpoint certificate: 2f+1 matching CHECKPOINTs from distinct
/// replicas. Sequence number 0 (the start state) needs no signatures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointProof {
    /// The checkpoint's sequence number.
    pub seq: SeqNum,
    /// The certified state digest.
    pub digest: Digest,
    /// The matching checkpoint messages.
    pub checkpoints: Vec<Signed<Checkpoint>>,
}

/// A prepared certificate: a pre-prepare from its view's primary and 2f
/// matching prepares from distinct other replicas.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedProof {
    /// The pre-prepare.
    pub pre_prepare: Signed<PrePrepare>,
    /// The 2f prepares.
    pub prepares: Vec<Signed<Prepare>>,
}

/// VIEW-CHANGE to `new_view`: the sender's stable checkpoint and every
/// prepared certificate above it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewChange {
    /// The view being moved to.
    pub new_view: View,
    /// The sender's stable checkpoint.
    pub checkpoint: CheckpointProof,
    /// For each sequence number above the checkpoint that prepared at the
    /// sender, the certificate of the latest view in which it prepared.
    pub prepared: Vec<PreparedProof>,
    /// The sender.
    pub replica: ReplicaId,
}

/// NEW-VIEW: the new primary's proof (2f+1 view changes) and the pre-prepares
/// it re-issues, which every replica recomputes and compares.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewView {
    /// The new view.
    pub view: View,
    /// The 2f+1 view-change messages.
    pub view_changes: Vec<Signed<ViewChange>>,
    /// The re-issued pre-prepares for (min-s, max-s].
    pub pre_prepares: Vec<Signed<PrePrepare>>,
    /// The sender (the primary of `view`).
    pub replica: ReplicaId,
}

/// What a [`Reply`]'s `result` holds (see `client_table`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ReplyStatus {
    /// The request's result.
    #[default]
    Result,
    /// The request ran, but its result was too large to keep for
    /// retransmissions: `result` is the result's digest.
    Withheld,
    /// The request is at or below the floor of a client the table forgot:
    /// whether it ran is unknown; `result` is empty.
    Expired,
}

/// REPLY to a client. Not signed: a reply travels only on the link
/// between its replica and the client, which TLS authenticates with both
/// keys pinned, and nobody but that client ever needs to check it. The
/// receiver must see that the link's key is the key of `replica`
/// ([`Reply::came_from`]); `Message::verify` checks nothing for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The replica's current view, so clients learn the primary.
    pub view: View,
    /// The client.
    pub client: ClientId,
    /// The request answered.
    pub request_id: RequestId,
    /// The result bytes.
    pub result: Vec<u8>,
    /// What `result` holds.
    pub status: ReplyStatus,
    /// Whether this is a read-only (unordered, tentative) answer.
    pub read_only: bool,
    /// The sender.
    pub replica: ReplicaId,
}

impl Reply {
    /// Whether a reply that arrived on a link authenticated as `link` was
    /// sent by the replica it names.
    pub fn came_from(&self, config: &crate::Config, link: &pbft_crypto::PublicKey) -> bool {
        config.key(self.replica) == Some(link)
    }
}

/// Asks for the batch with `digest` (after a NEW-VIEW re-issued its digest).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchBatch {
    /// The batch digest.
    pub digest: Digest,
    /// The sender.
    pub replica: ReplicaId,
}

/// A batch sent in answer to [`FetchBatch`]; checked against its digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchData {
    /// The batch.
    pub batch: Batch,
    /// The sender.
    pub replica: ReplicaId,
}

/// What a [`FetchState`] asks for (see `checkpoint` for the tree).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StatePart {
    /// The certified summary of a stable checkpoint at or above `seq`.
    Summary,
    /// The leaf digests of one group of pages.
    Leaves(u32),
    /// These pages (at most `checkpoint::PAGES_PER_FETCH`).
    Pages(#[serde(deserialize_with = "bounded::page_indexes")] Vec<u32>),
}

/// Asks for part of the state of the stable checkpoint at `seq` (for the
/// summary: at or above `seq`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchState {
    /// The checkpoint.
    pub seq: SeqNum,
    /// The part wanted.
    pub part: StatePart,
    /// The sender.
    pub replica: ReplicaId,
}

/// A part of a checkpoint's state (see `checkpoint`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StateBody {
    /// The tree's top: the receiver checks the proof's 2f+1 signatures and
    /// that `count` and `groups` hash to the certified digest.
    Summary {
        /// 2f+1 signatures on the state's digest.
        proof: Box<CheckpointProof>,
        /// How many pages the state has.
        count: u32,
        /// The digest of each group of leaf digests.
        groups: Vec<Digest>,
    },
    /// One group's leaf digests, checked against the summary's group digest.
    Leaves {
        /// The group.
        group: u32,
        /// The digests of its pages.
        leaves: Vec<Digest>,
    },
    /// One page, checked against its leaf digest.
    Page {
        /// Its index.
        index: u32,
        /// Its bytes.
        bytes: Vec<u8>,
    },
}

/// A part of the state of the checkpoint (`seq`, `digest`), in answer to
/// [`FetchState`]; nothing is installed before every part is checked against
/// the certified digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateData {
    /// The checkpoint.
    pub seq: SeqNum,
    /// Its certified digest (the root of its tree).
    pub digest: Digest,
    /// The part.
    pub body: StateBody,
    /// The sender.
    pub replica: ReplicaId,
}

/// Asks a replica for its [`StatusReport`] (signed by the client).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRequest {
    /// Who asks.
    pub client: ClientId,
    /// Echoed in the report, to match answers to questions.
    pub nonce: u64,
}

/// A replica's progress, signed, for operators and the `pbft status` command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The current view.
    pub view: View,
    /// False while a view change is under way.
    pub active: bool,
    /// The primary of `view`.
    pub primary: ReplicaId,
    /// The last executed sequence number.
    pub last_executed: SeqNum,
    /// The stable checkpoint.
    pub stable_checkpoint: SeqNum,
    /// The digest of the state (application and client table) after
    /// `last_executed`, as a checkpoint there would certify
    /// (`Replica::state_root`): equal at equal `last_executed` on honest
    /// replicas.
    pub state_digest: Digest,
    /// The request's nonce.
    pub nonce: u64,
    /// The sender.
    pub replica: ReplicaId,
}

/// PBFT's STATUS between replicas (TOCS 2002, 5.2): where the sender stands,
/// sent when it has executed nothing for a while. Peers that know more
/// answer with what it lacks (see `retransmit`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The sender's view.
    pub view: View,
    /// False while it is changing to `view`.
    pub active: bool,
    /// Its stable checkpoint.
    pub stable: SeqNum,
    /// Its last executed sequence number.
    pub last_executed: SeqNum,
    /// The sender.
    pub replica: ReplicaId,
}

/// 2f+1 COMMITs from distinct replicas for one (view, seq, digest): proof
/// that `seq` is decided, whatever view the receiver is in. Relayed as is
/// (each commit keeps its own signer's signature), so the relay is not
/// trusted and need not sign.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitCertificate {
    /// The commits.
    pub commits: Vec<Signed<Commit>>,
}

macro_rules! signable {
    ($($t:ty => $kind:literal),* $(,)?) => {
        $(impl Signable for $t { const KIND: &'static str = $kind; })*
    };
}

signable! {
    Request => "request",
    PrePrepare => "pre-prepare",
    Prepare => "prepare",
    Commit => "commit",
    Checkpoint => "checkpoint",
    ViewChange => "view-change",
    NewView => "new-view",
    FetchBatch => "fetch-batch",
    BatchData => "batch-data",
    FetchState => "fetch-state",
    StateData => "state-data",
    StatusRequest => "status-request",
    StatusReport => "status-report",
    Progress => "progress",
}

/// Everything replicas and clients send each other.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// A client request (from the client, or forwarded by a backup).
    Request(Signed<Request>),
    /// A pre-prepare with the batch it names.
    PrePrepare(Signed<PrePrepare>, Batch),
    /// A prepare.
    Prepare(Signed<Prepare>),
    /// A commit.
    Commit(Signed<Commit>),
    /// A checkpoint.
    Checkpoint(Signed<Checkpoint>),
    /// A view change.
    ViewChange(Signed<ViewChange>),
    /// A new view, with some of the batches of its re-issued pre-prepares
    /// (at most [`NEW_VIEW_BATCHES_MAX`], each checked against its digest;
    /// the receiver fetches the others).
    NewView(
        Signed<NewView>,
        #[serde(deserialize_with = "bounded::new_view_batches")] Vec<Batch>,
    ),
    /// A batch request.
    FetchBatch(Signed<FetchBatch>),
    /// A batch.
    BatchData(Signed<BatchData>),
    /// A state request.
    FetchState(Signed<FetchState>),
    /// A part of a checkpoint's state.
    StateData(Signed<StateData>),
    /// A reply (replica to client).
    Reply(Reply),
    /// A status question (client to replica).
    StatusRequest(Signed<StatusRequest>),
    /// A status answer (replica to client).
    StatusReport(Signed<StatusReport>),
    /// Where a replica stands (replica to replica).
    Progress(Signed<Progress>),
    /// A decided sequence number, with its batch when the relay has it.
    Certificate(CommitCertificate, Option<Batch>),
}

impl Message {
    /// The message kind, for logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Request(_) => Request::KIND,
            Message::PrePrepare(..) => PrePrepare::KIND,
            Message::Prepare(_) => Prepare::KIND,
            Message::Commit(_) => Commit::KIND,
            Message::Checkpoint(_) => Checkpoint::KIND,
            Message::ViewChange(_) => ViewChange::KIND,
            Message::NewView(..) => NewView::KIND,
            Message::FetchBatch(_) => FetchBatch::KIND,
            Message::BatchData(_) => BatchData::KIND,
            Message::FetchState(_) => FetchState::KIND,
            Message::StateData(_) => StateData::KIND,
            Message::Reply(_) => "reply",
            Message::StatusRequest(_) => StatusRequest::KIND,
            Message::StatusReport(_) => StatusReport::KIND,
            Message::Progress(_) => Progress::KIND,
            Message::Certificate(..) => "commit-certificate",
        }
    }

    /// Whether this message, broadcast, may leave before the record it rests
    /// on is durable (PRE-PREPARE and PREPARE: see [`crate::Output`], votes
    /// ahead of their records).
    pub fn may_precede_its_record(&self) -> bool {
        matches!(self, Message::PrePrepare(..) | Message::Prepare(_))
    }

    /// The replica that signed this message, if a replica did.
    pub fn replica(&self) -> Option<ReplicaId> {
        Some(match self {
            Message::Request(_) | Message::StatusRequest(_) | Message::Certificate(..) => {
                return None
            }
            Message::PrePrepare(m, _) => m.replica,
            Message::Prepare(m) => m.replica,
            Message::Commit(m) => m.replica,
            Message::Checkpoint(m) => m.replica,
            Message::ViewChange(m) => m.replica,
            Message::NewView(m, _) => m.replica,
            Message::FetchBatch(m) => m.replica,
            Message::BatchData(m) => m.replica,
            Message::FetchState(m) => m.replica,
            Message::StateData(m) => m.replica,
            Message::Reply(m) => m.replica,
            Message::StatusReport(m) => m.replica,
            Message::Progress(m) => m.replica,
        })
    }

    /// The wire encoding (postcard).
    pub fn encode(&self) -> Vec<u8> {
        // Plain data into a Vec: cannot fail.
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Decodes the wire encoding; garbage is an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Message, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

fn replica_key(config: &Config, id: ReplicaId) -> Result<pbft_crypto::PublicKey, UnknownSigner> {
    config
        .key(id)
        .copied()
        .ok_or_else(|| UnknownSigner(format!("replica {id}")))
}

fn add_replica<T: Signable>(
    config: &Config,
    id: ReplicaId,
    signed: &Signed<T>,
    checks: &mut SigChecks,
) -> Result<(), UnknownSigner> {
    checks.add(replica_key(config, id)?, signed);
    Ok(())
}

/// Refuses a list longer than any valid message of its kind holds.
fn at_most<T>(list: &[T], max: usize, what: &str) -> Result<(), Malformed> {
    if list.len() > max {
        return Err(Malformed(format!("{} {what} (at most {max})", list.len())));
    }
    Ok(())
}

fn batch_shape(batch: &Batch) -> Result<(), Malformed> {
    at_most(&batch.requests, BATCH_REQUESTS_MAX, "requests in a batch")
}

fn checkpoint_proof_shape(config: &Config, proof: &CheckpointProof) -> Result<(), Malformed> {
    at_most(&proof.checkpoints, config.n(), "checkpoints in a proof")
}

fn view_change_shape(config: &Config, vc: &ViewChange) -> Result<(), Malformed> {
    checkpoint_proof_shape(config, &vc.checkpoint)?;
    at_most(&vc.prepared, window(config), "prepared certificates")?;
    for p in &vc.prepared {
        at_most(&p.prepares, config.n(), "prepares in a certificate")?;
    }
    Ok(())
}

/// L as a length (a window too large for memory is refused by its lists).
fn window(config: &Config) -> usize {
    usize::try_from(config.log_window).unwrap_or(usize::MAX)
}

impl Message {
    /// Refuses a message with more nested entries than any valid one of its
    /// kind carries; cheap, and run before any signature is checked.
    pub fn check_shape(&self, config: &Config) -> Result<(), Malformed> {
        match self {
            Message::PrePrepare(_, batch) => batch_shape(batch)?,
            Message::Certificate(cert, batch) => {
                at_most(&cert.commits, config.n(), "commits in a certificate")?;
                if let Some(batch) = batch {
                    batch_shape(batch)?;
                }
            }
            Message::BatchData(m) => batch_shape(&m.batch)?,
            Message::ViewChange(vc) => view_change_shape(config, vc)?,
            Message::NewView(nv, batches) => {
                at_most(&nv.view_changes, config.n(), "view-changes")?;
                for vc in &nv.view_changes {
                    view_change_shape(config, vc)?;
                }
                at_most(&nv.pre_prepares, window(config), "re-issued pre-prepares")?;
                at_most(batches, nv.pre_prepares.len(), "batches")?;
                let requests: usize = batches.iter().map(|b| b.requests.len()).sum();
                if requests > BATCH_REQUESTS_MAX {
                    return Err(Malformed(format!(
                        "{requests} requests in a new-view's batches (at most {BATCH_REQUESTS_MAX})"
                    )));
                }
            }
            Message::StateData(m) => {
                if let StateBody::Summary { proof, .. } = &m.body {
                    checkpoint_proof_shape(config, proof)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

fn add_batch(batch: &Batch, checks: &mut SigChecks) {
    for request in &batch.requests {
        checks.add(request.client.0, request);
    }
}

fn add_checkpoint_proof(
    config: &Config,
    proof: &CheckpointProof,
    checks: &mut SigChecks,
) -> Result<(), UnknownSigner> {
    for c in &proof.checkpoints {
        add_replica(config, c.replica, c, checks)?;
    }
    Ok(())
}

fn add_view_change(
    config: &Config,
    vc: &Signed<ViewChange>,
    checks: &mut SigChecks,
) -> Result<(), UnknownSigner> {
    add_replica(config, vc.replica, vc, checks)?;
    add_checkpoint_proof(config, &vc.checkpoint, checks)?;
    for p in &vc.prepared {
        add_replica(config, p.pre_prepare.replica, &p.pre_prepare, checks)?;
        for prepare in &p.prepares {
            add_replica(config, prepare.replica, prepare, checks)?;
        }
    }
    Ok(())
}

impl Authenticated for Message {
    type Keys = Config;

    fn collect_signatures(
        &self,
        config: &Config,
        checks: &mut SigChecks,
    ) -> Result<(), VerifyError> {
        self.check_shape(config)?;
        match self {
            Message::Request(r) => checks.add(r.client.0, r),
            Message::PrePrepare(m, batch) => {
                add_replica(config, m.replica, m, checks)?;
                add_batch(batch, checks);
            }
            Message::Prepare(m) => add_replica(config, m.replica, m, checks)?,
            Message::Commit(m) => add_replica(config, m.replica, m, checks)?,
            Message::Checkpoint(m) => add_replica(config, m.replica, m, checks)?,
            Message::ViewChange(m) => add_view_change(config, m, checks)?,
            Message::NewView(m, batches) => {
                add_replica(config, m.replica, m, checks)?;
                for vc in &m.view_changes {
                    add_view_change(config, vc, checks)?;
                }
                for pp in &m.pre_prepares {
                    add_replica(config, pp.replica, pp, checks)?;
                }
                for b in batches {
                    add_batch(b, checks);
                }
            }
            Message::FetchBatch(m) => add_replica(config, m.replica, m, checks)?,
            Message::BatchData(m) => {
                add_replica(config, m.replica, m, checks)?;
                add_batch(&m.batch, checks);
            }
            Message::FetchState(m) => add_replica(config, m.replica, m, checks)?,
            Message::StateData(m) => {
                add_replica(config, m.replica, m, checks)?;
                if let StateBody::Summary { proof, .. } = &m.body {
                    add_checkpoint_proof(config, proof, checks)?;
                }
            }
            Message::Reply(_) => {} // authenticated by its link, see `Reply`
            Message::StatusRequest(m) => checks.add(m.client.0, m),
            Message::StatusReport(m) => add_replica(config, m.replica, m, checks)?,
            Message::Progress(m) => add_replica(config, m.replica, m, checks)?,
            Message::Certificate(cert, batch) => {
                for c in &cert.commits {
                    add_replica(config, c.replica, c, checks)?;
                }
                if let Some(b) = batch {
                    add_batch(b, checks);
                }
            }
        }
        Ok(())
    }
}

/// Decoders for lists whose entries take much more memory than wire bytes:
/// they refuse a list past its bound while decoding it, so one frame cannot
/// decode into hundreds of MiB before any check runs.
mod bounded {
    use super::{Batch, NEW_VIEW_BATCHES_MAX};
    use serde::de::{Deserialize, Deserializer, Error, SeqAccess, Visitor};
    use std::fmt;
    use std::marker::PhantomData;

    struct Bounded<T>(usize, PhantomData<T>);

    impl<'de, T: Deserialize<'de>> Visitor<'de> for Bounded<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a list of at most {} entries", self.0)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(self.0).min(64));
            while let Some(item) = seq.next_element()? {
                if out.len() == self.0 {
                    return Err(A::Error::custom(format_args!(
                        "a list longer than {} entries",
                        self.0
                    )));
                }
                out.push(item);
            }
            Ok(out)
        }
    }

    fn vec<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
        max: usize,
    ) -> Result<Vec<T>, D::Error> {
        d.deserialize_seq(Bounded(max, PhantomData))
    }

    pub(super) fn new_view_batches<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<Batch>, D::Error> {
        vec(d, NEW_VIEW_BATCHES_MAX)
    }

    pub(super) fn page_indexes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
        vec(d, crate::checkpoint::PAGES_PER_FETCH)
    }
}
