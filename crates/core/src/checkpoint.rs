//! Checkpoints, garbage collection and state transfer (TOCS 2002, sections
//! 4.3 and 5.3.2).
//!
//! ```text
//! execute n, n % K == 0 -> snapshot S = (app state, client table), d = H(S)
//!                       -> CHECKPOINT(n, d) to all
//! 2f+1 matching CHECKPOINT(n, d) -> stable: h := n, persist (proof, S),
//!                                   discard the log at and below n
//! stable n > last executed -> FETCH-STATE(n) to a signer of the proof
//!   <- STATE-DATA(proof', S') with proof'.seq >= n: check the 2f+1
//!      signatures agree on d', check H(S') == d', install S'
//! ```
//!
//! The digest covers the client table as well as the application state, or
//! exactly-once would break after a state transfer. Snapshot encoding is
//! deterministic, so honest replicas produce byte-identical snapshots.

use crate::client_table::ClientTable;
use crate::ids::SeqNum;
use crate::io::{Output, Record};
use crate::message::{Checkpoint, CheckpointProof, FetchState, Message, StateData};
use crate::replica::Replica;
use crate::Instant;
use pbft_crypto::{Digest, Signed};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// A checkpoint's contents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The application's snapshot.
    pub app: Vec<u8>,
    /// The client table.
    pub clients: ClientTable,
}

impl Snapshot {
    /// Encodes a snapshot from its parts.
    pub fn encode_parts(app: Vec<u8>, clients: &ClientTable) -> Vec<u8> {
        #[derive(Serialize)]
        struct Ref<'a> {
            app: Vec<u8>,
            clients: &'a ClientTable,
        }
        postcard::to_stdvec(&Ref { app, clients }).unwrap_or_default()
    }

    /// Decodes a snapshot.
    pub fn decode(bytes: &[u8]) -> Result<Snapshot, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

/// A state transfer under way.
#[derive(Clone, Debug)]
pub(crate) struct StateFetch {
    /// The checkpoint to reach (or pass).
    pub target: CheckpointProof,
    /// Which signer of the proof to ask next.
    pub next_source: usize,
    /// When to ask the next one.
    pub deadline: Instant,
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

    /// Takes a checkpoint of the state after executing `last_executed`.
    pub(crate) fn take_checkpoint(&mut self, out: &mut Vec<Output>) {
        let seq = self.last_executed;
        if self.clients.expire(&self.config) > 0 {
            // Requests the table now refuses no longer wait.
            let clients = &self.clients;
            self.pending
                .retain(|c, p| !clients.settled(c, p.request.request_id));
            self.update_view_change_timer();
        }
        let snapshot = Snapshot::encode_parts(self.app.snapshot(), &self.clients);
        let digest = Digest::of(&snapshot);
        out.push(Output::Persist(Record::Snapshot(seq, snapshot.clone())));
        self.own_checkpoints.insert(seq, (digest, snapshot));
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
        // Serve the stable checkpoint's state only if it is this one's.
        self.stable_snapshot.clear();
        match self.own_checkpoints.get(&seq) {
            Some((digest, snapshot)) if *digest == proof.digest => {
                tracing::debug!(seq = seq.0, "checkpoint stable");
                self.stable_snapshot = snapshot.clone();
            }
            Some((digest, _)) => {
                tracing::error!(
                    seq = seq.0, own = %digest, certified = %proof.digest,
                    "own checkpoint differs from the certified one; fetching the certified state"
                );
                self.start_state_fetch(proof.clone(), out);
            }
            None if self.last_executed < seq => self.start_state_fetch(proof.clone(), out),
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

    /// Starts (or retargets) a state transfer towards `target`.
    pub(crate) fn start_state_fetch(&mut self, target: CheckpointProof, out: &mut Vec<Output>) {
        if self
            .state_fetch
            .as_ref()
            .is_some_and(|f| f.target.seq >= target.seq)
        {
            return;
        }
        tracing::info!(seq = target.seq.0, "fetching checkpoint state");
        self.state_fetch = Some(StateFetch {
            target,
            next_source: 0,
            deadline: self.now,
        });
        self.ask_next_state_source(out);
    }

    fn ask_next_state_source(&mut self, out: &mut Vec<Output>) {
        let retry = self.retry_interval();
        let now = self.now;
        let me = self.id;
        let Some(fetch) = self.state_fetch.as_mut() else {
            return;
        };
        let sources: Vec<_> = fetch
            .target
            .checkpoints
            .iter()
            .map(|c| c.replica)
            .filter(|r| *r != me)
            .collect();
        if sources.is_empty() {
            return;
        }
        let source = sources[fetch.next_source % sources.len()];
        fetch.next_source += 1;
        fetch.deadline = now + retry;
        let request = self.signer.sign(FetchState {
            seq: fetch.target.seq,
            replica: me,
        });
        out.push(Output::Send(source, Message::FetchState(request)));
    }

    /// The state source did not answer in time: ask another.
    pub(crate) fn on_timeout_state_fetch(&mut self, out: &mut Vec<Output>) {
        self.ask_next_state_source(out);
    }

    /// FETCH-STATE: serve the stable checkpoint if it is recent enough.
    pub(crate) fn on_fetch_state(&mut self, request: FetchState, out: &mut Vec<Output>) {
        if !self.may_help(request.replica, "fetch-state") {
            return self.drop_input("state request answered too recently");
        }
        if self.stable.seq < request.seq
            || self.stable_snapshot.is_empty()
            || self.stable.seq == SeqNum(0)
        {
            return self.drop_input("state request for a checkpoint not held");
        }
        let data = self.signer.sign(StateData {
            proof: self.stable.clone(),
            snapshot: self.stable_snapshot.clone(),
            replica: self.id,
        });
        out.push(Output::Send(request.replica, Message::StateData(data)));
    }

    /// STATE-DATA: install it if it is certified, hashes to its digest and
    /// is at least what we are fetching.
    pub(crate) fn on_state_data(&mut self, data: StateData, out: &mut Vec<Output>) {
        let Some(fetch) = &self.state_fetch else {
            return self.drop_input("unrequested state");
        };
        if data.proof.seq < fetch.target.seq {
            return self.drop_input("state older than requested");
        }
        if !self.check_checkpoint_proof(&data.proof) {
            return self.drop_input("state with an invalid checkpoint proof");
        }
        if Digest::of(&data.snapshot) != data.proof.digest {
            return self.drop_input("state does not match its certified digest");
        }
        let seq = data.proof.seq;
        if let Err(reason) = self.install_snapshot(data.proof.clone(), data.snapshot.clone()) {
            tracing::error!(seq = seq.0, %reason, "certified snapshot failed to restore");
            return self.drop_input("certified snapshot failed to restore");
        }
        self.state_fetch = None;
        out.push(Output::Persist(Record::Checkpoint(
            data.proof.clone(),
            data.snapshot,
        )));
        out.push(Output::StateTransferred {
            seq,
            digest: data.proof.digest,
        });
        self.try_execute(out);
        self.try_propose(out);
    }

    /// Replaces the application state and client table with `snapshot`, the
    /// state after executing `seq`.
    pub(crate) fn load_state(&mut self, seq: SeqNum, snapshot: &[u8]) -> Result<(), String> {
        let decoded =
            Snapshot::decode(snapshot).map_err(|e| format!("snapshot does not decode: {e}"))?;
        decoded.clients.check()?;
        self.app.restore(&decoded.app).map_err(|e| e.to_string())?;
        self.clients = decoded.clients;
        // Slots above the checkpoint that had executed run again from this
        // state; execution is deterministic, so they give the same results.
        self.last_executed = seq;
        // Requests that executed inside the loaded state no longer wait.
        let clients = &self.clients;
        self.pending
            .retain(|c, p| !clients.settled(c, p.request.request_id));
        Ok(())
    }

    /// Replaces the state with a certified snapshot (whose digest was checked).
    pub(crate) fn install_snapshot(
        &mut self,
        proof: CheckpointProof,
        snapshot: Vec<u8>,
    ) -> Result<(), String> {
        self.load_state(proof.seq, &snapshot)?;
        self.own_checkpoints.retain(|s, _| *s > proof.seq);
        self.last_assigned = self.last_assigned.max(proof.seq);
        if proof.seq > self.stable.seq {
            self.stable = proof;
            self.collect_garbage();
        }
        self.stable_snapshot = snapshot;
        self.update_view_change_timer();
        Ok(())
    }
}
