//! Agreement: no two honest replicas execute different batches at one
//! sequence number, honest checkpoint digests agree at every sequence number,
//! and an honest replica executes sequence numbers in order without gaps
//! (except across a state transfer or a restart).

use pbft_crypto::Digest;
use std::collections::BTreeMap;

/// Collects what honest replicas executed and checkpointed, and the violations.
#[derive(Clone, Debug, Default)]
pub struct Agreement {
    executed: BTreeMap<u64, (usize, Digest)>,
    checkpoints: BTreeMap<u64, (usize, Digest)>,
    /// Per replica: the last sequence number it executed, if known.
    last: BTreeMap<usize, Option<u64>>,
    violations: Vec<String>,
}

impl Agreement {
    /// An empty checker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Honest `replica` executed the batch with `digest` at `seq`.
    pub fn executed(&mut self, replica: usize, seq: u64, digest: Digest) {
        match self.executed.get(&seq) {
            Some((other, d)) if *d != digest => self.violations.push(format!(
                "agreement: r{replica} executed {digest} at n{seq} but r{other} executed {d}"
            )),
            Some(_) => {}
            None => {
                self.executed.insert(seq, (replica, digest));
            }
        }
        let last = self.last.entry(replica).or_insert(Some(0));
        if let Some(prev) = *last {
            if seq != prev + 1 {
                self.violations.push(format!(
                    "agreement: r{replica} executed n{seq} right after n{prev} (gap or repeat)"
                ));
            }
        }
        *last = Some(seq);
    }

    /// Honest `replica` took a checkpoint with `digest` at `seq`.
    pub fn checkpointed(&mut self, replica: usize, seq: u64, digest: Digest) {
        self.checkpoint_digest(replica, seq, digest, "checkpointed");
    }

    /// Honest `replica` installed the certified checkpoint `digest` at `seq`.
    pub fn state_transferred(&mut self, replica: usize, seq: u64, digest: Digest) {
        self.checkpoint_digest(replica, seq, digest, "installed by state transfer");
        self.last.insert(replica, Some(seq));
    }

    /// Honest `replica` restarted from its persisted records: where it resumes
    /// executing is not known until it executes.
    pub fn restarted(&mut self, replica: usize) {
        self.last.insert(replica, None);
    }

    fn checkpoint_digest(&mut self, replica: usize, seq: u64, digest: Digest, what: &str) {
        match self.checkpoints.get(&seq) {
            Some((other, d)) if *d != digest => self.violations.push(format!(
                "agreement: r{replica} {what} state {digest} at n{seq} but r{other} has {d}"
            )),
            Some(_) => {}
            None => {
                self.checkpoints.insert(seq, (replica, digest));
            }
        }
    }

    /// The highest sequence number any honest replica executed.
    pub fn max_executed(&self) -> u64 {
        self.executed.keys().next_back().copied().unwrap_or(0)
    }

    /// The violations found so far.
    pub fn violations(&self) -> &[String] {
        &self.violations
    }
}
