//! Checkpoints, garbage collection and state transfer in chunks (TOCS 2002,
//! sections 4.3, 5.3.2 and 6.2.2).
//!
//! # The state as a tree of pages
//! A checkpoint's state is a list of pages ([`StateImage`]): page 0 a header
//! (format, the client table's floor, how many client pages follow), then
//! the client table's entries in pages ([`ClientTable::pages`]), then the
//! application's pages ([`pbft_app::StateMachine::snapshot_pages`]). The
//! key-value store and the client table both cut with [`pbft_app::paging`]:
//! between entries, at boundaries chosen by the keys, so a change moves only
//! the pages around it, and each keeps its last cut and cuts again only the
//! pages written since, so building an image costs what changed. Every page
//! is at most [`PAGE_MAX`] bytes, far below the network's frame limit. Above
//! the pages, a tree of fixed depth:
//!
//! ```text
//! leaf_i  = H("leaf", page_i)
//! group_k = H("group", leaf_{kG} .. leaf_{kG+G-1})        G = GROUP_LEAVES
//! digest  = H("root", count, group_0 .. group_m)          the CHECKPOINT digest
//! ```
//!
//! The digest covers the client table as well as the application state, or
//! exactly-once would break after a state transfer; encoding is
//! deterministic, so honest replicas produce identical pages and digests.
//!
//! # Message flow
//! ```text
//! execute n, n % K == 0 -> expire the client table, image S, d = root(S)
//!                       -> persist the pages of S the log lacks, then
//!                          Snapshot(n, leaves of S); CHECKPOINT(n, d) to all
//! 2f+1 matching CHECKPOINT(n, d) -> stable: h := n, persist the proof,
//!                                   discard the log at and below n
//! stable n > last executed -> fetch from a signer of the proof (the source):
//!   FETCH-STATE(n, Summary)   <- STATE-DATA(Summary: proof' with seq >= n,
//!                                count, groups): 2f+1 signatures agree on d',
//!                                root(count, groups) == d'
//!   FETCH-STATE(n', Leaves k) <- STATE-DATA(Leaves k): H(leaves) == group_k
//!   (pages whose leaf digest matches a page this replica holds are reused)
//!   FETCH-STATE(n', Pages [i..]) <- STATE-DATA(Page i), one message each:
//!                                H(page) == leaf_i
//!   every page held -> decode, install, persist the pages of S' the log
//!                      lacks, then Checkpoint(proof', leaves of S')
//! ```
//!
//! # Resuming, switching, retargeting
//! Every part is checked on arrival against the certified digest, so nothing
//! unchecked is kept, and what is kept stays good: pages are held by their
//! leaf digest. The source gets `Replica::retry_interval` (base/2) per
//! request; a source that does not answer in time, or answers with anything
//! that fails a check, is replaced at once by the next signer of the proof,
//! and the transfer resumes with what is still missing. A source whose stable
//! checkpoint moved on answers with its newer summary: the transfer retargets
//! to it and keeps the pages it already holds (a page that did not change has
//! the same leaf digest).
//!
//! # Serving
//! A replica serves parts of its stable checkpoint only, at most
//! [`SERVE_BYTES_PER_INTERVAL`] bytes per peer per retry interval (a budget
//! shared with the batches it sends in answer to FETCH-BATCH), and at
//! most [`PAGES_PER_FETCH`] pages per request.
//!
//! # What is persisted
//! A snapshot is persisted as its pages and a list of their leaf digests:
//! `Record::Page` for each page the log does not already hold, then
//! `Record::Snapshot(n, leaves)` for an own checkpoint or
//! `Record::Checkpoint(proof, leaves)` for a fetched one, all in one step
//! (one group). `crate::io::LoggedSnapshots` follows what compaction keeps
//! (the snapshots at or above the stable checkpoint and the highest one, and
//! the first record of every page they list), so a checkpoint writes only
//! the pages that changed since those snapshots: with the key-value store's
//! incremental pages, its cost is what changed, not the size of the state.
//! A restart reassembles each kept snapshot from its pages; a listed page
//! missing from the log is an error, never a shorter state. A transfer
//! interrupted by a crash starts again from the summary (fetched pages live
//! in memory only).

use crate::client_table::ClientTable;
use crate::ids::{Instant, ReplicaId, RequestId, SeqNum};
use crate::io::{Output, Record};
use crate::message::{
    Checkpoint, CheckpointProof, FetchState, Message, StateBody, StateData, StatePart,
};
use crate::replica::Replica;
use pbft_app::StateMachine;
use pbft_crypto::{Digest, Signed};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

pub use pbft_app::{leaf_digest, Page, PAGE_MAX};

/// Leaves per group of the tree.
pub const GROUP_LEAVES: usize = 4096;
/// Most pages one state may have (with pages of at most 1 MiB, 1 TiB).
pub const PAGES_MAX: usize = 1 << 20;
/// Most pages one FETCH-STATE asks for.
pub const PAGES_PER_FETCH: usize = 8;
/// Most groups of leaves asked for at once.
const GROUPS_PER_FETCH: usize = 4;
/// Most bytes of state and batches a replica sends one peer, on its
/// request, per retry interval.
pub const SERVE_BYTES_PER_INTERVAL: usize = 64 << 20;
/// The state format this code writes and reads (in page 0).
const STATE_VERSION: u8 = 2;

/// The digest of one group of leaf digests.
pub fn group_digest(leaves: &[Digest]) -> Digest {
    let mut parts: Vec<&[u8]> = Vec::with_capacity(leaves.len() + 1);
    parts.push(b"pbft-state/group");
    parts.extend(leaves.iter().map(|d| d.0.as_slice()));
    Digest::of_parts(&parts)
}

/// The root: the checkpoint digest of a state of `count` pages.
pub fn tree_root(count: u32, groups: &[Digest]) -> Digest {
    let count = count.to_le_bytes();
    let mut parts: Vec<&[u8]> = Vec::with_capacity(groups.len() + 2);
    parts.push(b"pbft-state/root");
    parts.push(&count);
    parts.extend(groups.iter().map(|d| d.0.as_slice()));
    Digest::of_parts(&parts)
}

/// How many groups a state of `count` pages has.
fn group_count(count: usize) -> usize {
    count.div_ceil(GROUP_LEAVES)
}

/// Page 0 of every state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Header {
    version: u8,
    floor: RequestId,
    client_pages: u32,
}

/// A checkpoint's state: its pages and their tree (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateImage {
    pages: Vec<Page>,
    leaves: Vec<Digest>,
    groups: Vec<Digest>,
    digest: Digest,
}

/// A persisted or assembled state that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid state image: {0}")]
pub struct ImageError(pub String);

impl StateImage {
    /// The state of `app` and `clients` (both cut again only around what
    /// changed since their last pages).
    pub fn build(app: &mut dyn StateMachine, clients: &mut ClientTable) -> StateImage {
        let client_pages = clients.pages();
        let header = Header {
            version: STATE_VERSION,
            floor: clients.floor(),
            client_pages: client_pages.len() as u32,
        };
        let mut pages = vec![Page::new(postcard::to_stdvec(&header).unwrap_or_default())];
        pages.extend(client_pages);
        pages.extend(app.snapshot_pages());
        StateImage::from_pages(pages)
    }

    /// The tree over `pages` (whose digests are already known).
    pub fn from_pages(pages: Vec<Page>) -> StateImage {
        let leaves: Vec<Digest> = pages.iter().map(Page::digest).collect();
        let groups: Vec<Digest> = leaves.chunks(GROUP_LEAVES).map(group_digest).collect();
        let digest = tree_root(pages.len() as u32, &groups);
        StateImage {
            pages,
            leaves,
            groups,
            digest,
        }
    }

    /// The checkpoint digest (the tree's root).
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// The pages.
    pub fn pages(&self) -> &[Page] {
        &self.pages
    }

    /// The leaf digests.
    pub fn leaves(&self) -> &[Digest] {
        &self.leaves
    }

    /// The group digests.
    pub fn groups(&self) -> &[Digest] {
        &self.groups
    }

    /// The image whose leaves are `leaves`, its pages taken from `held`
    /// (how a restart reassembles a persisted snapshot from its page
    /// records).
    pub fn assemble(
        leaves: &[Digest],
        held: &BTreeMap<Digest, Page>,
    ) -> Result<StateImage, ImageError> {
        if leaves.is_empty() || leaves.len() > PAGES_MAX {
            return Err(ImageError(format!("{} pages", leaves.len())));
        }
        let pages = leaves
            .iter()
            .map(|leaf| {
                held.get(leaf)
                    .cloned()
                    .ok_or_else(|| ImageError(format!("page {leaf} was never persisted")))
            })
            .collect::<Result<Vec<Page>, ImageError>>()?;
        Ok(StateImage::from_pages(pages))
    }

    /// The client table and the application's pages.
    pub fn split(&self) -> Result<(ClientTable, &[Page]), ImageError> {
        let bad = |what: String| ImageError(what);
        let header: Header = self
            .pages
            .first()
            .ok_or_else(|| bad("no header page".into()))
            .and_then(|p| {
                postcard::from_bytes(p.bytes()).map_err(|e| bad(format!("header: {e}")))
            })?;
        if header.version != STATE_VERSION {
            return Err(bad(format!("unsupported version {}", header.version)));
        }
        let client_end = 1 + header.client_pages as usize;
        if client_end > self.pages.len() {
            return Err(bad("more client pages than pages".into()));
        }
        let clients =
            ClientTable::from_pages(&self.pages[1..client_end], header.floor).map_err(bad)?;
        Ok((clients, &self.pages[client_end..]))
    }
}

/// The verified top of the tree a transfer assembles.
#[derive(Clone, Debug)]
pub(crate) struct Summary {
    proof: CheckpointProof,
    count: u32,
    groups: Vec<Digest>,
}

/// One thing a transfer asked its source for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Item {
    Summary,
    Leaves(u32),
    Page(u32),
}

/// A state transfer under way (see the module docs).
#[derive(Clone, Debug)]
pub(crate) struct StateFetch {
    /// The checkpoint to reach (or pass).
    pub target: CheckpointProof,
    /// Which signer of the proof to ask next.
    next_source: usize,
    /// Who is being asked.
    source: Option<ReplicaId>,
    /// When the source must have answered.
    pub deadline: Instant,
    /// When the transfer began (kept across retargets): until one
    /// view-change timeout after it, the view-change timer waits for it.
    pub started: Instant,
    /// The verified summary being assembled (at or above the target).
    summary: Option<Summary>,
    /// Verified groups of leaf digests.
    leaves: BTreeMap<u32, Vec<Digest>>,
    /// Verified pages, by leaf digest (kept across retargets).
    pages: BTreeMap<Digest, Page>,
    /// What the last request asked for and has not arrived.
    outstanding: BTreeSet<Item>,
    /// Pages fetched from peers.
    fetched: usize,
    /// Whether pages this replica holds were taken for the current summary.
    reused: bool,
    /// Every page below this index is held (pages are asked in order).
    scan_from: u32,
}

impl StateFetch {
    /// A transfer towards `target` that starts at `now`.
    pub(crate) fn new(target: CheckpointProof, now: Instant) -> StateFetch {
        StateFetch {
            target,
            next_source: 0,
            source: None,
            deadline: now,
            started: now,
            summary: None,
            leaves: BTreeMap::new(),
            pages: BTreeMap::new(),
            outstanding: BTreeSet::new(),
            fetched: 0,
            reused: false,
            scan_from: 0,
        }
    }

    /// Forgets what belongs to the summary (not the pages, which are kept
    /// by their digest).
    fn reset_tree(&mut self) {
        self.leaves.clear();
        self.outstanding.clear();
        self.reused = false;
        self.scan_from = 0;
    }

    /// The leaf digest of page `index`, once its group is known.
    fn leaf(&self, index: u32) -> Option<Digest> {
        let i = index as usize;
        let group = (i / GROUP_LEAVES) as u32;
        self.leaves.get(&group)?.get(i % GROUP_LEAVES).copied()
    }
}

/// Why a part of the state was refused, and whether its sender is to blame
/// (a part that fails a check) or not (a late part of an older checkpoint).
struct Refusal(&'static str, bool);

/// Bytes sent to each peer in the current retry interval.
#[derive(Clone, Debug, Default)]
pub(crate) struct Serving {
    sent: BTreeMap<ReplicaId, (Instant, usize)>,
}

/// Most CHECKPOINT messages kept per replica above the stable checkpoint.
fn votes_per_replica_max(interval: u64, window: u64) -> usize {
    (window / interval) as usize + 2
}

impl Replica {
    /// Checks a stable-checkpoint certificate: 2f+1 distinct replicas signed
    /// the same (seq, digest); sequence number 0 is the start state.
    pub(crate) fn check_checkpoint_proof(&self, proof: &CheckpointProof) -> bool {
        if proof.seq == SeqNum(0) {
            return proof.digest == self.genesis_digest && proof.checkpoints.is_empty();
        }
        if !proof.seq.0.is_multiple_of(self.config.checkpoint_interval)
            || proof.checkpoints.len() > self.config.n()
        {
            return false;
        }
        let mut signers = BTreeSet::new();
        for c in &proof.checkpoints {
            if c.seq != proof.seq
                || c.digest != proof.digest
                || self.config.key(c.replica).is_none()
                || !signers.insert(c.replica)
            {
                return false;
            }
        }
        signers.len() >= self.config.quorum()
    }

    /// Takes a checkpoint of the state after executing `last_executed`:
    /// expires the client table first (every replica does, at the same
    /// sequence numbers, from the same table).
    pub(crate) fn take_checkpoint(&mut self, out: &mut Vec<Output>) {
        let seq = self.last_executed;
        if self.clients.expire(&self.config) > 0 {
            // Requests the table now refuses no longer wait.
            let clients = &self.clients;
            self.pending
                .retain(|c, p| !clients.settled(c, p.request.request_id));
            self.update_view_change_timer();
        }
        let image = Arc::new(StateImage::build(self.app.as_mut(), &mut self.clients));
        let digest = image.digest();
        self.persist_snapshot(seq, &image, |leaves| Record::Snapshot(seq, leaves), out);
        self.own_checkpoints.insert(seq, image);
        let checkpoint = self.signer.sign(Checkpoint {
            seq,
            digest,
            replica: self.id,
        });
        tracing::debug!(seq = seq.0, %digest, "checkpoint");
        out.push(Output::Checkpointed { seq, digest });
        out.push(Output::Broadcast(Message::Checkpoint(checkpoint.clone())));
        self.record_checkpoint_vote(checkpoint, out);
    }

    /// Persists `image`, the state after `seq`, as `record` (made from its
    /// leaf digests), preceded by the pages it holds that the log does not:
    /// a checkpoint writes what changed since the snapshots the log keeps,
    /// not the whole state. Pages and record go out in one step, so they
    /// are in one group: a crash keeps a prefix of it, and a snapshot
    /// record that survives has its pages before it.
    fn persist_snapshot(
        &mut self,
        seq: SeqNum,
        image: &StateImage,
        record: impl FnOnce(Vec<Digest>) -> Record,
        out: &mut Vec<Output>,
    ) {
        let mut logged = self.logged_snapshots.pages();
        for page in image.pages() {
            if logged.insert(page.digest()) {
                out.push(Output::Persist(Record::Page(page.clone())));
            }
        }
        let leaves = image.leaves().to_vec();
        self.logged_snapshots.snapshot(seq, leaves.clone());
        out.push(Output::Persist(record(leaves)));
    }

    /// CHECKPOINT from a peer.
    pub(crate) fn on_checkpoint(&mut self, checkpoint: Signed<Checkpoint>, out: &mut Vec<Output>) {
        if checkpoint.seq <= self.stable.seq {
            return self.drop_input("checkpoint at or below the stable one");
        }
        if !checkpoint
            .seq
            .0
            .is_multiple_of(self.config.checkpoint_interval)
        {
            return self.drop_input("checkpoint off the interval");
        }
        self.record_checkpoint_vote(checkpoint, out);
    }

    fn record_checkpoint_vote(&mut self, checkpoint: Signed<Checkpoint>, out: &mut Vec<Output>) {
        let (seq, replica) = (checkpoint.seq, checkpoint.replica);
        let votes = self.checkpoint_votes.entry(seq).or_default();
        if votes.contains_key(&replica) {
            return self.drop_input("duplicate checkpoint");
        }
        votes.insert(replica, checkpoint);
        // Bound what one replica can make us keep: its highest few checkpoints.
        let max = votes_per_replica_max(self.config.checkpoint_interval, self.config.log_window);
        let mine: Vec<SeqNum> = self
            .checkpoint_votes
            .iter()
            .filter(|(_, v)| v.contains_key(&replica))
            .map(|(s, _)| *s)
            .collect();
        if mine.len() > max {
            for s in &mine[..mine.len() - max] {
                if let Some(v) = self.checkpoint_votes.get_mut(s) {
                    v.remove(&replica);
                }
            }
        }
        self.try_stable(seq, out);
    }

    /// Checks whether the checkpoint at `seq` has 2f+1 matching votes.
    fn try_stable(&mut self, seq: SeqNum, out: &mut Vec<Output>) {
        let Some(votes) = self.checkpoint_votes.get(&seq) else {
            return;
        };
        let mut by_digest: BTreeMap<Digest, Vec<Signed<Checkpoint>>> = BTreeMap::new();
        for v in votes.values() {
            by_digest.entry(v.digest).or_default().push(v.clone());
        }
        let quorum = self.config.quorum();
        let Some((digest, checkpoints)) = by_digest.into_iter().find(|(_, v)| v.len() >= quorum)
        else {
            return;
        };
        let proof = CheckpointProof {
            seq,
            digest,
            checkpoints: checkpoints.into_iter().take(quorum).collect(),
        };
        self.advance_stable(proof, out);
    }

    /// Makes `proof` the stable checkpoint if it is newer: persists it (its
    /// snapshot, when this replica has that state, is already persisted
    /// since it took the checkpoint), otherwise fetches the state; then
    /// discards the log at and below it. The proof is persisted before the
    /// window moves, so a restart comes back with the same window and never
    /// drops what it accepted in it.
    pub(crate) fn advance_stable(&mut self, proof: CheckpointProof, out: &mut Vec<Output>) {
        if proof.seq <= self.stable.seq {
            return;
        }
        let seq = proof.seq;
        out.push(Output::Persist(Record::Stable(proof.clone())));
        self.logged_snapshots.stable(seq);
        // Serve the stable checkpoint's state only if it is this one's.
        let previous = self.stable_snapshot.take();
        match self.own_checkpoints.get(&seq) {
            Some(image) if image.digest() == proof.digest => {
                tracing::debug!(seq = seq.0, "checkpoint stable");
                self.stable_snapshot = Some(image.clone());
            }
            Some(image) => {
                tracing::error!(
                    seq = seq.0, own = %image.digest(), certified = %proof.digest,
                    "own checkpoint differs from the certified one; fetching the certified state"
                );
                self.local_pages = previous;
                self.start_state_fetch(proof.clone(), out);
            }
            None if self.last_executed < seq => {
                self.local_pages = previous.or_else(|| self.local_pages.take());
                self.start_state_fetch(proof.clone(), out)
            }
            // Executed past it without a checkpoint of our own (we reached a
            // later state by transfer): keep the proof; no snapshot to serve.
            None => {}
        }
        self.stable = proof;
        self.last_assigned = self.last_assigned.max(seq);
        self.collect_garbage();
        // A higher low water mark opens the window for the primary.
        self.try_propose(out);
    }

    /// Discards everything at or below the stable checkpoint.
    pub(crate) fn collect_garbage(&mut self) {
        let h = self.stable.seq;
        self.log.retain(|seq, _| *seq > h);
        self.own_checkpoints.retain(|seq, _| *seq > h);
        self.checkpoint_votes.retain(|seq, _| *seq > h);
        self.decided.retain(|seq, _| *seq > h);
        let referenced: BTreeSet<Digest> = self
            .log
            .values()
            .filter_map(|slot| slot.pre_prepare.as_ref().map(|pp| pp.digest))
            .chain(
                self.log
                    .values()
                    .filter_map(|slot| slot.prepared.as_ref().map(|p| p.pre_prepare.digest)),
            )
            .chain(self.decided.values().copied())
            .collect();
        self.batches.retain(|d, _| referenced.contains(d));
        self.missing_batches.retain(|d| referenced.contains(d));
    }

    /// Starts (or retargets) a state transfer towards `target`. A transfer
    /// already under way keeps the pages it holds.
    pub(crate) fn start_state_fetch(&mut self, target: CheckpointProof, out: &mut Vec<Output>) {
        let now = self.now;
        match self.state_fetch.as_mut() {
            Some(f) if f.target.seq >= target.seq => return,
            Some(f) => {
                f.target = target;
                if f.summary
                    .as_ref()
                    .is_some_and(|s| s.proof.seq < f.target.seq)
                {
                    f.summary = None;
                    f.reset_tree();
                }
                f.outstanding.clear();
            }
            None => {
                self.state_fetch = Some(StateFetch::new(target, now));
                self.update_view_change_timer();
            }
        }
        if let Some(f) = &self.state_fetch {
            tracing::info!(seq = f.target.seq.0, "fetching checkpoint state");
        }
        self.ask_state(out);
    }

    /// Asks the current source for what the transfer lacks next; installs
    /// the state once every page is held.
    fn ask_state(&mut self, out: &mut Vec<Output>) {
        let (me, now, retry) = (self.id, self.now, self.retry_interval());
        let Some(mut fetch) = self.state_fetch.take() else {
            return;
        };
        let proof = fetch.summary.as_ref().map_or(&fetch.target, |s| &s.proof);
        let sources: Vec<ReplicaId> = proof
            .checkpoints
            .iter()
            .map(|c| c.replica)
            .filter(|r| *r != me)
            .collect();
        fetch.deadline = now + retry;
        if sources.is_empty() {
            self.state_fetch = Some(fetch);
            return;
        }
        let source = *fetch
            .source
            .get_or_insert(sources[fetch.next_source % sources.len()]);
        let mut wanted: Vec<Item> = Vec::new();
        let mut complete = false;
        match fetch.summary.as_ref().map(|s| (s.count, s.groups.len())) {
            None => wanted.push(Item::Summary),
            Some((count, groups)) => {
                let missing_groups: Vec<u32> = (0..groups as u32)
                    .filter(|g| !fetch.leaves.contains_key(g))
                    .collect();
                if !missing_groups.is_empty() {
                    wanted.extend(
                        missing_groups
                            .into_iter()
                            .take(GROUPS_PER_FETCH)
                            .map(Item::Leaves),
                    );
                } else {
                    if !fetch.reused {
                        self.reuse_local_pages(&mut fetch);
                        fetch.reused = true;
                    }
                    let held = |f: &StateFetch, i: u32| {
                        f.leaf(i).is_some_and(|leaf| f.pages.contains_key(&leaf))
                    };
                    while fetch.scan_from < count && held(&fetch, fetch.scan_from) {
                        fetch.scan_from += 1;
                    }
                    let missing: Vec<u32> = (fetch.scan_from..count)
                        .filter(|i| !held(&fetch, *i))
                        .take(PAGES_PER_FETCH)
                        .collect();
                    complete = missing.is_empty();
                    wanted.extend(missing.into_iter().map(Item::Page));
                }
            }
        }
        if complete {
            return self.finish_state_fetch(fetch, out);
        }
        let seq = fetch
            .summary
            .as_ref()
            .map_or(fetch.target.seq, |s| s.proof.seq);
        let mut pages = Vec::new();
        for item in &wanted {
            let part = match item {
                Item::Summary => StatePart::Summary,
                Item::Leaves(g) => StatePart::Leaves(*g),
                Item::Page(i) => {
                    pages.push(*i);
                    continue;
                }
            };
            let request = self.signer.sign(FetchState {
                seq,
                part,
                replica: me,
            });
            out.push(Output::Send(source, Message::FetchState(request)));
        }
        if !pages.is_empty() {
            let request = self.signer.sign(FetchState {
                seq,
                part: StatePart::Pages(pages),
                replica: me,
            });
            out.push(Output::Send(source, Message::FetchState(request)));
        }
        fetch.outstanding = wanted.into_iter().collect();
        self.state_fetch = Some(fetch);
    }

    /// Takes the pages the transfer lacks from this replica's own state, if
    /// it holds them (same leaf digest, same bytes).
    fn reuse_local_pages(&self, fetch: &mut StateFetch) {
        let locals = [&self.stable_snapshot, &self.local_pages]
            .into_iter()
            .flatten()
            .chain(self.own_checkpoints.values().next_back());
        let mut held: BTreeMap<Digest, &Page> = BTreeMap::new();
        for image in locals {
            for page in image.pages() {
                held.entry(page.digest()).or_insert(page);
            }
        }
        let wanted: Vec<Digest> = fetch
            .leaves
            .values()
            .flatten()
            .filter(|l| !fetch.pages.contains_key(l))
            .copied()
            .collect();
        for leaf in wanted {
            if let Some(page) = held.get(&leaf) {
                fetch.pages.insert(leaf, (*page).clone());
            }
        }
    }

    /// Every page is held and checked: install the state.
    fn finish_state_fetch(&mut self, mut fetch: StateFetch, out: &mut Vec<Output>) {
        let Some(summary) = fetch.summary.take() else {
            self.state_fetch = Some(fetch);
            return;
        };
        let pages: Vec<Page> = fetch
            .leaves
            .values()
            .flatten()
            .map(|l| {
                fetch
                    .pages
                    .get(l)
                    .cloned()
                    .unwrap_or_else(|| Page::new(Vec::new()))
            })
            .collect();
        let image = StateImage::from_pages(pages);
        let proof = summary.proof.clone();
        let seq = proof.seq;
        if image.digest() != proof.digest {
            // Every part was checked: this is a bug, not a peer's doing.
            tracing::error!(seq = seq.0, "assembled state does not match its digest");
            fetch.pages.clear();
            fetch.reset_tree();
            self.state_fetch = Some(fetch);
            return;
        }
        let image = Arc::new(image);
        if let Err(reason) = self.install_snapshot(proof.clone(), image.clone()) {
            tracing::error!(seq = seq.0, %reason, "certified snapshot failed to restore");
            self.drop_input("certified snapshot failed to restore");
            fetch.summary = Some(summary);
            self.state_fetch = Some(fetch);
            return;
        }
        self.state_fetch = None;
        self.local_pages = None;
        tracing::info!(
            seq = seq.0,
            pages = image.pages().len(),
            fetched = fetch.fetched,
            "state transferred"
        );
        self.persist_snapshot(
            seq,
            &image,
            |leaves| Record::Checkpoint(proof.clone(), leaves),
            out,
        );
        self.logged_snapshots.stable(seq);
        out.push(Output::StateTransferred {
            seq,
            digest: proof.digest,
            pages: image.pages().len(),
            fetched: fetch.fetched,
        });
        self.try_execute(out);
        self.try_propose(out);
    }

    /// The source did not answer in time, or answered with something that
    /// failed a check: ask the next signer, for what is still missing.
    fn switch_state_source(&mut self, out: &mut Vec<Output>) {
        if let Some(f) = self.state_fetch.as_mut() {
            f.next_source += 1;
            f.source = None;
            f.outstanding.clear();
        }
        self.ask_state(out);
    }

    /// The state source did not answer in time: ask another.
    pub(crate) fn on_timeout_state_fetch(&mut self, out: &mut Vec<Output>) {
        self.switch_state_source(out);
    }

    /// Counts `bytes` against what `peer` may be sent on request this
    /// interval (state parts and batches share the budget).
    pub(crate) fn may_serve(&mut self, peer: ReplicaId, bytes: usize) -> bool {
        let (now, retry) = (self.now, self.retry_interval());
        let (start, sent) = self.serving.sent.entry(peer).or_insert((now, 0));
        if now >= *start + retry {
            *start = now;
            *sent = 0;
        }
        if *sent + bytes > SERVE_BYTES_PER_INTERVAL {
            return false;
        }
        *sent += bytes;
        true
    }

    /// FETCH-STATE: serve a part of the stable checkpoint.
    pub(crate) fn on_fetch_state(&mut self, request: FetchState, out: &mut Vec<Output>) {
        let peer = request.replica;
        if self.config.key(peer).is_none() {
            return self.drop_input("state request from an unknown replica");
        }
        let Some(image) = self.stable_snapshot.clone() else {
            return self.drop_input("state request for a checkpoint not held");
        };
        if self.stable.seq < request.seq || self.stable.seq == SeqNum(0) {
            return self.drop_input("state request for a checkpoint not held");
        }
        let (seq, digest) = (self.stable.seq, self.stable.digest);
        let summary = |r: &Replica| StateBody::Summary {
            proof: Box::new(r.stable.clone()),
            count: image.pages().len() as u32,
            groups: image.groups().to_vec(),
        };
        let bodies: Vec<StateBody> = match request.part {
            // Asked for parts of an older checkpoint: here is the newer one.
            _ if request.seq < seq => vec![summary(self)],
            StatePart::Summary => vec![summary(self)],
            StatePart::Leaves(g) => {
                let start = g as usize * GROUP_LEAVES;
                let Some(leaves) = image.leaves().get(start..) else {
                    return self.drop_input("state request for a group not held");
                };
                let leaves = leaves[..leaves.len().min(GROUP_LEAVES)].to_vec();
                vec![StateBody::Leaves { group: g, leaves }]
            }
            StatePart::Pages(indices) => {
                if indices.len() > PAGES_PER_FETCH {
                    return self.drop_input("state request for too many pages");
                }
                let mut bodies = Vec::new();
                for index in indices {
                    let Some(page) = image.pages().get(index as usize) else {
                        return self.drop_input("state request for a page not held");
                    };
                    bodies.push(StateBody::Page {
                        index,
                        bytes: page.bytes().to_vec(),
                    });
                }
                bodies
            }
        };
        for body in bodies {
            let bytes = match &body {
                StateBody::Summary { groups, .. } => 1024 + 32 * groups.len(),
                StateBody::Leaves { leaves, .. } => 32 * leaves.len(),
                StateBody::Page { bytes, .. } => bytes.len(),
            };
            if !self.may_serve(peer, bytes) {
                return self.drop_input("state requests over the byte budget");
            }
            let data = self.signer.sign(StateData {
                seq,
                digest,
                body,
                replica: self.id,
            });
            out.push(Output::Send(peer, Message::StateData(data)));
        }
    }

    /// STATE-DATA: check the part against the certified digest and keep it;
    /// a source that sends anything wrong is replaced at once.
    pub(crate) fn on_state_data(&mut self, data: StateData, out: &mut Vec<Output>) {
        let Some(fetch) = self.state_fetch.as_ref() else {
            return self.drop_input("unrequested state");
        };
        let from_source = fetch.source == Some(data.replica);
        let verdict = match data.body {
            StateBody::Summary {
                proof,
                count,
                groups,
            } => {
                if !from_source {
                    return self.drop_input("state summary from a replica not asked");
                }
                self.check_summary(data.seq, data.digest, *proof, count, groups)
            }
            body => self.check_state_part(data.seq, data.digest, body),
        };
        match verdict {
            Ok(item) => {
                let retry = self.retry_interval();
                let Some(fetch) = self.state_fetch.as_mut() else {
                    return;
                };
                if from_source {
                    fetch.deadline = self.now + retry;
                }
                if let Some(item) = item {
                    fetch.outstanding.remove(&item);
                }
                if fetch.outstanding.is_empty() {
                    self.ask_state(out);
                }
            }
            Err(Refusal(reason, blame)) => {
                self.drop_input(reason);
                if blame && from_source {
                    self.switch_state_source(out);
                }
            }
        }
    }

    /// A summary from the source: certified, at or above the target, and
    /// hashing to its digest. Returns what it answers.
    fn check_summary(
        &mut self,
        seq: SeqNum,
        digest: Digest,
        proof: CheckpointProof,
        count: u32,
        groups: Vec<Digest>,
    ) -> Result<Option<Item>, Refusal> {
        let Some(fetch) = self.state_fetch.as_ref() else {
            return Err(Refusal("unrequested state", false));
        };
        if proof.seq < fetch.target.seq {
            return Err(Refusal("state older than requested", false));
        }
        if proof.seq != seq || proof.digest != digest {
            return Err(Refusal("state summary for another checkpoint", true));
        }
        if !self.check_checkpoint_proof(&proof) {
            return Err(Refusal("state with an invalid checkpoint proof", true));
        }
        if count == 0 || count as usize > PAGES_MAX || groups.len() != group_count(count as usize) {
            return Err(Refusal("state summary with a wrong shape", true));
        }
        if tree_root(count, &groups) != proof.digest {
            return Err(Refusal("state does not match its certified digest", true));
        }
        let Some(fetch) = self.state_fetch.as_mut() else {
            return Err(Refusal("unrequested state", false));
        };
        if fetch
            .summary
            .as_ref()
            .is_some_and(|s| s.proof.seq >= proof.seq)
        {
            return Ok(Some(Item::Summary));
        }
        // A newer checkpoint: assemble it instead, keeping the pages held.
        fetch.summary = Some(Summary {
            proof,
            count,
            groups,
        });
        fetch.reset_tree();
        Ok(None)
    }

    /// Leaves or a page of the summary being assembled, checked against it.
    fn check_state_part(
        &mut self,
        seq: SeqNum,
        digest: Digest,
        body: StateBody,
    ) -> Result<Option<Item>, Refusal> {
        let Some(fetch) = self.state_fetch.as_mut() else {
            return Err(Refusal("unrequested state", false));
        };
        let Some(summary) = &fetch.summary else {
            return Err(Refusal("state part before its summary", false));
        };
        if summary.proof.seq != seq || summary.proof.digest != digest {
            return Err(Refusal("state part of another checkpoint", false));
        }
        match body {
            StateBody::Leaves { group, leaves } => {
                let g = group as usize;
                let Some(expected) = summary.groups.get(g) else {
                    return Err(Refusal("state leaves of a group that does not exist", true));
                };
                let len = (summary.count as usize - g * GROUP_LEAVES).min(GROUP_LEAVES);
                if leaves.len() != len || group_digest(&leaves) != *expected {
                    return Err(Refusal(
                        "state leaves do not match their group digest",
                        true,
                    ));
                }
                fetch.leaves.insert(group, leaves);
                Ok(Some(Item::Leaves(group)))
            }
            StateBody::Page { index, bytes } => {
                if index >= summary.count {
                    return Err(Refusal("state page that does not exist", true));
                }
                let Some(leaf) = fetch.leaf(index) else {
                    return Err(Refusal("state page before its leaves", true));
                };
                if bytes.len() > PAGE_MAX {
                    return Err(Refusal("state page does not match its leaf digest", true));
                }
                let page = Page::new(bytes);
                if page.digest() != leaf {
                    return Err(Refusal("state page does not match its leaf digest", true));
                }
                if fetch.pages.insert(leaf, page).is_none() {
                    fetch.fetched += 1;
                }
                Ok(Some(Item::Page(index)))
            }
            StateBody::Summary { .. } => Err(Refusal("unrequested state", false)),
        }
    }

    /// Replaces the application state and client table with `image`, the
    /// state after executing `seq`.
    pub(crate) fn load_state(&mut self, seq: SeqNum, image: &StateImage) -> Result<(), String> {
        let (clients, app_pages) = image.split().map_err(|e| e.to_string())?;
        self.app
            .restore_pages(app_pages)
            .map_err(|e| e.to_string())?;
        self.clients = clients;
        // Slots above the checkpoint that had executed run again from this
        // state; execution is deterministic, so they give the same results.
        self.last_executed = seq;
        // Requests that executed inside the loaded state no longer wait.
        let clients = &self.clients;
        self.pending
            .retain(|c, p| !clients.settled(c, p.request.request_id));
        Ok(())
    }

    /// Replaces the state with a certified image (whose digest was checked).
    pub(crate) fn install_snapshot(
        &mut self,
        proof: CheckpointProof,
        image: Arc<StateImage>,
    ) -> Result<(), String> {
        self.load_state(proof.seq, &image)?;
        self.own_checkpoints.retain(|s, _| *s > proof.seq);
        self.last_assigned = self.last_assigned.max(proof.seq);
        if proof.seq > self.stable.seq {
            self.stable = proof;
            self.collect_garbage();
        }
        self.stable_snapshot = Some(image);
        self.update_view_change_timer();
        Ok(())
    }
}
