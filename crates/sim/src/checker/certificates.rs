//! Certificates: every certificate an honest replica acts on is backed by
//! enough distinct replicas that really signed its parts in this run.
//!
//! The agreement checker sees a quorum mistake only once it has split the
//! log, which with few faulty replicas is late and rare. This oracle checks
//! each decision when it is taken, against a ledger of what every replica
//! signed:
//!
//! * an honest replica signs a statement when its core emits it (top level,
//!   or nested in a message of its own: its pre-prepares inside its
//!   NEW-VIEW). Emitted counts even if a crash then cut the send. And the
//!   acting replica always counts itself: its own vote is its own state (a
//!   torn write can lose the step that would have sent it, while the record
//!   it rests on, the accepted pre-prepare, survived);
//! * a Byzantine replica can sign anything, so whatever of its statements
//!   appears in any message anyone emits is in the ledger. Statements an
//!   honest replica relays (nested in a VIEW-CHANGE, NEW-VIEW or CERTIFICATE)
//!   under another honest replica's name add nothing: that replica must have
//!   emitted them itself.
//!
//! What honest replica `i` acts on, and what backs it (n = 3f+1):
//!
//! | when `i` ... | the ledger must hold |
//! |---|---|
//! | executes batch `d` at `s` | 2f+1 distinct COMMIT(v, s, d) for one view v |
//! | emits COMMIT(v, s, d) (it is prepared) | PRE-PREPARE(v, s, d) from primary(v) and 2f distinct PREPARE(v, s, d) from other replicas |
//! | emits a VIEW-CHANGE | the same for each prepared proof in it |
//! | emits a NEW-VIEW for v | 2f+1 distinct VIEW-CHANGE(v) in it, each signed, each prepared proof in them backed |
//! | persists a stable checkpoint (s, d) | 2f+1 distinct CHECKPOINT(s, d) in its proof, each signed |
//! | enters view v > 0 | 2f+1 distinct VIEW-CHANGE(v) |
//! | enters or issues NEW-VIEW(v) | every seq above its min-s that an honest replica executed, and that 2f+1 committed in a view below v, re-proposed with that digest |
//!
//! And what an honest replica signs must agree with what it signed before,
//! restarts included (a replica must never lose anything it sent):
//!
//! * never two PRE-PREPAREs, PREPAREs or COMMITs for one (view, seq) with
//!   different digests, nor two CHECKPOINTs for one seq;
//! * a VIEW-CHANGE for v carries, for every seq above its checkpoint where
//!   the replica sent a COMMIT in a view w < v, a prepared proof from view w
//!   or later (with the same digest if from w).
//!
//! Signatures themselves are the verifier's business; the ledger records
//! statements by content, so a Byzantine statement with a bad signature only
//! makes the check weaker, never wrong.

use pbft_core::message::{
    Checkpoint, CheckpointProof, Commit, NewView, PrePrepare, Prepare, PreparedProof, ViewChange,
};
use pbft_core::{Config, Message, ReplicaId, SeqNum, View};
use pbft_crypto::{Digest, Signed};
use std::collections::{BTreeMap, BTreeSet};

type Signers = BTreeSet<u32>;

/// What replicas signed in the run, and the violations found so far.
#[derive(Debug)]
pub struct Certificates {
    config: Config,
    byzantine: Vec<bool>,
    pre_prepares: BTreeSet<(View, SeqNum, Digest, u32)>,
    prepares: BTreeMap<(View, SeqNum, Digest), Signers>,
    commits: BTreeMap<(SeqNum, Digest), BTreeMap<View, Signers>>,
    checkpoints: BTreeMap<(SeqNum, Digest), Signers>,
    view_changes: BTreeMap<View, Signers>,
    /// What each honest replica signed: (kind, replica, view, seq) -> digest.
    votes: BTreeMap<(&'static str, u32, View, SeqNum), Digest>,
    /// Per honest replica and seq: the highest view it sent a COMMIT in.
    committed: BTreeMap<(u32, SeqNum), (View, Digest)>,
    /// What some honest replica executed at each seq.
    decided: BTreeMap<SeqNum, Digest>,
    violations: Vec<String>,
}

impl Certificates {
    /// A ledger for `config`'s cluster, where `byzantine[i]` tells whether
    /// replica i is Byzantine.
    pub fn new(config: &Config, byzantine: Vec<bool>) -> Self {
        Certificates {
            config: config.clone(),
            byzantine,
            pre_prepares: BTreeSet::new(),
            prepares: BTreeMap::new(),
            commits: BTreeMap::new(),
            checkpoints: BTreeMap::new(),
            view_changes: BTreeMap::new(),
            votes: BTreeMap::new(),
            committed: BTreeMap::new(),
            decided: BTreeMap::new(),
            violations: Vec::new(),
        }
    }

    /// The violations found so far.
    pub fn violations(&self) -> &[String] {
        &self.violations
    }

    /// Whether a statement signed by `signer`, found in a message `emitter`
    /// emitted, is the signer's own doing.
    fn counts(&self, emitter: usize, signer: ReplicaId) -> bool {
        let s = signer.index();
        s < self.config.n() && (s == emitter || self.byzantine.get(s).copied().unwrap_or(false))
    }

    /// Records the statements of a message replica `emitter`'s core emitted
    /// (before the Byzantine transform, for an honest one) or a Byzantine
    /// replica sent.
    pub fn signed(&mut self, emitter: usize, msg: &Message) {
        match msg {
            Message::PrePrepare(pp, _) => self.pre_prepare(emitter, pp),
            Message::Prepare(p) => self.prepare(emitter, p),
            Message::Commit(c) => self.commit(emitter, c),
            Message::Checkpoint(c) => self.checkpoint(emitter, c),
            Message::ViewChange(vc) => self.view_change(emitter, vc),
            Message::NewView(nv, _) => {
                for vc in &nv.view_changes {
                    self.view_change(emitter, vc);
                }
                for pp in &nv.pre_prepares {
                    self.pre_prepare(emitter, pp);
                }
            }
            Message::Certificate(cert, _) => {
                for c in &cert.commits {
                    self.commit(emitter, c);
                }
            }
            _ => {}
        }
    }

    fn pre_prepare(&mut self, emitter: usize, pp: &Signed<PrePrepare>) {
        if self.counts(emitter, pp.replica) {
            self.pre_prepares
                .insert((pp.view, pp.seq, pp.digest, pp.replica.0));
        }
    }

    fn prepare(&mut self, emitter: usize, p: &Signed<Prepare>) {
        if self.counts(emitter, p.replica) {
            self.prepares
                .entry((p.view, p.seq, p.digest))
                .or_default()
                .insert(p.replica.0);
        }
    }

    fn commit(&mut self, emitter: usize, c: &Signed<Commit>) {
        if self.counts(emitter, c.replica) {
            self.commits
                .entry((c.seq, c.digest))
                .or_default()
                .entry(c.view)
                .or_default()
                .insert(c.replica.0);
        }
    }

    fn checkpoint(&mut self, emitter: usize, c: &Signed<Checkpoint>) {
        if self.counts(emitter, c.replica) {
            self.checkpoints
                .entry((c.seq, c.digest))
                .or_default()
                .insert(c.replica.0);
        }
    }

    fn view_change(&mut self, emitter: usize, vc: &Signed<ViewChange>) {
        for c in &vc.checkpoint.checkpoints {
            self.checkpoint(emitter, c);
        }
        for p in &vc.prepared {
            self.pre_prepare(emitter, &p.pre_prepare);
            for q in &p.prepares {
                self.prepare(emitter, q);
            }
        }
        if self.counts(emitter, vc.replica) {
            self.view_changes
                .entry(vc.new_view)
                .or_default()
                .insert(vc.replica.0);
        }
    }

    fn violation(&mut self, replica: usize, what: String) {
        if self.violations.len() < 20 {
            self.violations
                .push(format!("certificate: r{replica} {what}"));
        }
    }

    /// Whether (view, seq, digest) is prepared by the ledger: the primary's
    /// pre-prepare and 2f prepares from other replicas.
    fn prepared(
        &self,
        actor: Option<usize>,
        view: View,
        seq: SeqNum,
        digest: Digest,
    ) -> Result<(), String> {
        let primary = self.config.primary(view).0;
        if !self.pre_prepares.contains(&(view, seq, digest, primary)) {
            return Err(format!(
                "no PRE-PREPARE({view}, {seq}, {digest}) from its primary r{primary} was signed"
            ));
        }
        let signed = self.prepares.get(&(view, seq, digest));
        let counted = |r: u32| r != primary;
        let prepares = signed.map_or(0, |s| s.iter().filter(|&&r| counted(r)).count())
            + actor
                .map(|i| i as u32)
                .filter(|&i| counted(i) && !signed.is_some_and(|s| s.contains(&i)))
                .map_or(0, |_| 1);
        if prepares < 2 * self.config.f() {
            return Err(format!(
                "only {prepares} replicas signed PREPARE({view}, {seq}, {digest}), {} needed",
                2 * self.config.f()
            ));
        }
        Ok(())
    }

    fn proof_backed(&self, proof: &PreparedProof) -> Result<(), String> {
        let pp = &proof.pre_prepare;
        if pp.replica != self.config.primary(pp.view) {
            return Err(format!(
                "a prepared proof for {} {} whose pre-prepare is from r{}, not the primary",
                pp.view, pp.seq, pp.replica.0
            ));
        }
        let distinct: Signers = proof
            .prepares
            .iter()
            .filter(|q| {
                q.view == pp.view
                    && q.seq == pp.seq
                    && q.digest == pp.digest
                    && q.replica != pp.replica
            })
            .map(|q| q.replica.0)
            .collect();
        if distinct.len() < 2 * self.config.f() {
            return Err(format!(
                "a prepared proof for {} {} with {} distinct matching prepares, {} needed",
                pp.view,
                pp.seq,
                distinct.len(),
                2 * self.config.f()
            ));
        }
        self.prepared(None, pp.view, pp.seq, pp.digest)
    }

    /// Honest replica `i` signs `kind` for (view, seq) with `digest`: it
    /// must not have signed another digest there before.
    fn vote(&mut self, i: usize, kind: &'static str, view: View, seq: SeqNum, digest: Digest) {
        match self.votes.get(&(kind, i as u32, view, seq)) {
            Some(d) if *d != digest => {
                let d = *d;
                self.violation(
                    i,
                    format!(
                        "signed {kind} for {view} {seq} with {digest} after signing it with {d}"
                    ),
                );
            }
            Some(_) => {}
            None => {
                self.votes.insert((kind, i as u32, view, seq), digest);
            }
        }
    }

    /// Honest replica `i` emitted `msg`: what it claims must be backed, and
    /// must agree with what it signed before.
    pub fn emitted_by_honest(&mut self, i: usize, msg: &Message) {
        match msg {
            Message::PrePrepare(pp, _) if pp.replica.index() == i => {
                self.vote(i, "PRE-PREPARE", pp.view, pp.seq, pp.digest);
            }
            Message::Prepare(p) if p.replica.index() == i => {
                self.vote(i, "PREPARE", p.view, p.seq, p.digest);
            }
            Message::Checkpoint(c) if c.replica.index() == i => {
                self.vote(i, "CHECKPOINT", View(0), c.seq, c.digest);
            }
            Message::Commit(c) if c.replica.index() == i => {
                self.vote(i, "COMMIT", c.view, c.seq, c.digest);
                if let Err(e) = self.prepared(Some(i), c.view, c.seq, c.digest) {
                    self.violation(i, format!("committed (sent COMMIT) though {e}"));
                }
                let entry = self
                    .committed
                    .entry((i as u32, c.seq))
                    .or_insert((c.view, c.digest));
                if c.view > entry.0 {
                    *entry = (c.view, c.digest);
                }
            }
            Message::ViewChange(vc) => {
                for p in &vc.prepared {
                    if let Err(e) = self.proof_backed(p) {
                        self.violation(i, format!("sent a VIEW-CHANGE with {e}"));
                    }
                }
                if vc.replica.index() == i {
                    self.keeps_votes(i, vc);
                }
            }
            Message::NewView(nv, _) => {
                let signers: Signers = nv
                    .view_changes
                    .iter()
                    .filter(|vc| vc.new_view == nv.view)
                    .map(|vc| vc.replica.0)
                    .collect();
                if signers.len() < self.quorum() {
                    self.violation(
                        i,
                        format!(
                            "sent a NEW-VIEW for {} with {} distinct view changes",
                            nv.view,
                            signers.len()
                        ),
                    );
                }
                for vc in &nv.view_changes {
                    for p in &vc.prepared {
                        if let Err(e) = self.proof_backed(p) {
                            self.violation(
                                i,
                                format!(
                                    "sent a NEW-VIEW for {} holding r{}'s VIEW-CHANGE with {e}",
                                    nv.view, vc.replica.0
                                ),
                            );
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// Honest replica `i`'s own VIEW-CHANGE must carry what it committed
    /// above its checkpoint in earlier views.
    fn keeps_votes(&mut self, i: usize, vc: &ViewChange) {
        let from = (i as u32, vc.checkpoint.seq.next());
        let to = (i as u32, SeqNum(u64::MAX));
        let lost: Vec<(SeqNum, View, Digest)> = self
            .committed
            .range(from..=to)
            .filter(|(_, (w, _))| *w < vc.new_view)
            .filter(|((_, s), (w, d))| {
                !vc.prepared.iter().any(|p| {
                    let pp = &p.pre_prepare;
                    pp.seq == *s && (pp.view > *w || (pp.view == *w && pp.digest == *d))
                })
            })
            .map(|((_, s), (w, d))| (*s, *w, *d))
            .collect();
        for (s, w, d) in lost {
            self.violation(
                i,
                format!(
                    "sent a VIEW-CHANGE for {} without {s}, where it sent COMMIT({w}, {s}, {d})",
                    vc.new_view
                ),
            );
        }
    }

    /// The earliest view in which 2f+1 replicas signed COMMIT(v, seq, digest).
    fn committed_in(&self, seq: SeqNum, digest: Digest) -> Option<View> {
        let quorum = self.quorum();
        self.commits
            .get(&(seq, digest))?
            .iter()
            .find(|(_, signers)| signers.len() >= quorum)
            .map(|(v, _)| *v)
    }

    /// A NEW-VIEW for v that honest replica `i` entered or issued
    /// re-proposes every sequence number above its min-s that was executed
    /// and committed in a view below v, with the digest executed.
    fn keeps_decided(&mut self, i: usize, nv: &NewView) {
        let min_s = nv
            .view_changes
            .iter()
            .map(|vc| vc.checkpoint.seq)
            .max()
            .unwrap_or(SeqNum(0));
        let wrong: Vec<(SeqNum, Digest, Option<Digest>)> = self
            .decided
            .range(min_s.next()..)
            .filter(|(s, d)| self.committed_in(**s, **d).is_some_and(|w| w < nv.view))
            .filter_map(|(s, d)| {
                let proposed = nv
                    .pre_prepares
                    .iter()
                    .find(|pp| pp.seq == *s)
                    .map(|pp| pp.digest);
                (proposed != Some(*d)).then_some((*s, *d, proposed))
            })
            .collect();
        for (s, d, proposed) in wrong {
            let proposed = proposed.map_or("nothing".to_string(), |p| p.to_string());
            self.violation(
                i,
                format!(
                    "took a NEW-VIEW for {} that proposes {proposed} at {s}, where {d} was executed",
                    nv.view
                ),
            );
        }
    }

    /// Honest replica `i` persisted the NEW-VIEW it entered or issued.
    pub fn new_view(&mut self, i: usize, nv: &NewView) {
        self.keeps_decided(i, nv);
    }

    fn quorum(&self) -> usize {
        2 * self.config.f() + 1
    }

    /// Honest replica `i` executed the batch `digest` at `seq`.
    pub fn executed(&mut self, i: usize, seq: SeqNum, digest: Digest) {
        self.decided.entry(seq).or_insert(digest);
        let me = i as u32;
        let best = self
            .commits
            .get(&(seq, digest))
            .and_then(|views| {
                views
                    .values()
                    .map(|s| s.len() + usize::from(!s.contains(&me)))
                    .max()
            })
            .unwrap_or(1);
        if best < self.quorum() {
            self.violation(
                i,
                format!(
                    "executed {digest} at {seq} with at most {best} COMMITs signed in one view, {} needed",
                    self.quorum()
                ),
            );
        }
    }

    /// Honest replica `i` persisted `proof` as its stable checkpoint.
    pub fn stable(&mut self, i: usize, proof: &CheckpointProof) {
        let signed = self.checkpoints.get(&(proof.seq, proof.digest));
        let distinct: Signers = proof
            .checkpoints
            .iter()
            .filter(|c| c.seq == proof.seq && c.digest == proof.digest)
            .map(|c| c.replica.0)
            .filter(|r| *r == i as u32 || signed.is_some_and(|s| s.contains(r)))
            .collect();
        if distinct.len() < self.quorum() {
            self.violation(
                i,
                format!(
                    "made {} {} its stable checkpoint on {} distinct signed CHECKPOINTs",
                    proof.seq,
                    proof.digest,
                    distinct.len()
                ),
            );
        }
    }

    /// Honest replica `i` entered `view`.
    pub fn entered_view(&mut self, i: usize, view: View) {
        if view.0 == 0 {
            return;
        }
        let me = i as u32;
        let signers = self
            .view_changes
            .get(&view)
            .map_or(1, |s| s.len() + usize::from(!s.contains(&me)));
        if signers < self.quorum() {
            self.violation(
                i,
                format!("entered {view} with {signers} VIEW-CHANGEs for it signed"),
            );
        }
    }
}
