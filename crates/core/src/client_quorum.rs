//! The client's quorum logic, as pure functions and small value types so it
//! can be tested without a network. It is the one implementation: the SDK
//! (`pbft-client`, which re-exports it as `pbft_client::quorum`) and the
//! simulator's clients both decide with it. It lives in the core, not the
//! SDK, because the simulator must not depend on the network stack.
//!
//! * An ordered request's result is accepted once f+1 distinct replicas sent
//!   matching replies (at least one of them is honest, and an honest replica
//!   only replies after executing the request in the agreed order) — or
//!   2f+1 when the cluster's [`ReadMode`] is `fast`, see below
//!   ([`replies_needed`]).
//! * A read-only answer is accepted once 2f+1 distinct replicas sent matching
//!   read-only replies. If every completed write was confirmed by 2f+1
//!   replicas (at least f+1 honest ones executed it), any 2f+1 answers include
//!   one of those, so the answer reflects every write that completed before
//!   the query began. (With writes confirmed by only f+1, f faulty replicas
//!   and f+1 lagging honest ones could agree on a stale value; the simulator
//!   found exactly that.) Replicas restarted from an older checkpoint do not
//!   answer until they are back where they were.
//! * A replica counts once, whatever it sends: its latest reply replaces its
//!   earlier ones, so a Byzantine replica cannot vote twice.
//! * A retransmitted request may be answered without its result
//!   ([`ReplyStatus::Withheld`]: it ran, its result was too large to keep;
//!   [`ReplyStatus::Expired`]: the replicas forgot the client, whether it ran
//!   is unknown; see `client_table`). [`ReplyTally::outcome`] reports these
//!   once as many replicas agree on them as a result would need. A client may
//!   then re-issue a read as a new request, never a write. A withheld
//!   answer also vouches for a result sent by others whose digest it
//!   carries: f+1 replicas agree on the digest, and the bytes match it.
//! * An ordered request names the replicas asked to reply
//!   ([`crate::message::Repliers`]): as many as decide, backups first
//!   ([`ReplierChoice::pick`]). A retransmission asks every replica. A named
//!   replica that did not agree by the time the request was decided is
//!   passed over for a while ([`ReplierChoice::settle`]), so a faulty one
//!   costs a client one retransmission interval per suspicion period, not
//!   one per request.

use crate::config::ReadMode;
use crate::ids::{ReplicaId, RequestId, View};
use crate::message::{Repliers, Reply, ReplyStatus};
use pbft_crypto::Digest;
use std::collections::BTreeMap;

/// How many matching replies from distinct replicas decide a request, in a
/// cluster tolerating `f` faults that serves reads in `read_mode`: 2f+1 for
/// a read-only answer, and for an ordered result in a `fast` cluster (so that
/// any 2f+1 read-only answers include an honest replica that executed every
/// completed write); f+1 for an ordered result in an `ordered` cluster.
pub fn replies_needed(f: usize, read_mode: ReadMode, read_only: bool) -> usize {
    if read_only || read_mode == ReadMode::Fast {
        2 * f + 1
    } else {
        f + 1
    }
}

/// The replies of distinct replicas to one request.
#[derive(Clone, Debug)]
pub struct ReplyTally {
    request_id: RequestId,
    read_only: bool,
    /// One vote per replica: its latest answer.
    votes: BTreeMap<ReplicaId, (ReplyStatus, Vec<u8>)>,
}

/// What replicas agreed a request came to (see [`ReplyTally::outcome`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// Its result.
    Result(&'a [u8]),
    /// It ran, but its result was not kept.
    Withheld,
    /// The replicas forgot the client; whether it ran is unknown.
    Expired,
}

impl ReplyTally {
    /// An empty tally for `request_id`, counting only read-only replies if
    /// `read_only`, else only ordered ones.
    pub fn new(request_id: RequestId, read_only: bool) -> Self {
        ReplyTally {
            request_id,
            read_only,
            votes: BTreeMap::new(),
        }
    }

    /// Counts `reply` (already verified) if it answers this tally's request
    /// with the right kind; returns whether it was counted. A replica that
    /// already voted has its vote replaced, never added.
    pub fn add(&mut self, reply: &Reply) -> bool {
        if reply.request_id != self.request_id || reply.read_only != self.read_only {
            return false;
        }
        self.votes
            .insert(reply.replica, (reply.status, reply.result.clone()));
        true
    }

    /// The number of distinct replicas that replied.
    pub fn voters(&self) -> usize {
        self.votes.len()
    }

    /// The result that at least `needed` distinct replicas sent, or vouched
    /// for with its digest ([`ReplyStatus::Withheld`]: a replica that
    /// answers a retransmission from its client table may have kept only
    /// the digest), if any.
    pub fn decided(&self, needed: usize) -> Option<&[u8]> {
        let results = self
            .votes
            .values()
            .filter(|(s, _)| *s == ReplyStatus::Result)
            .map(|(_, r)| r.as_slice());
        if !self
            .votes
            .values()
            .any(|(s, _)| *s == ReplyStatus::Withheld)
        {
            return decide(results, needed);
        }
        let mut results: Vec<&[u8]> = results.collect();
        results.sort_unstable();
        results.dedup();
        results
            .into_iter()
            .find(|r| self.supporters(r).count() >= needed.max(1))
    }

    /// The replicas that sent `result`, or its digest as withheld.
    fn supporters<'a>(&'a self, result: &'a [u8]) -> impl Iterator<Item = ReplicaId> + 'a {
        let digest = Digest::of(result);
        self.votes
            .iter()
            .filter(move |(_, (status, r))| match status {
                ReplyStatus::Result => r.as_slice() == result,
                ReplyStatus::Withheld => r.as_slice() == digest.0,
                ReplyStatus::Expired => false,
            })
            .map(|(replica, _)| *replica)
    }

    /// What at least `needed` distinct replicas agree on: a result, or that
    /// the result was withheld (matching digests) or the request expired.
    pub fn outcome(&self, needed: usize) -> Option<Outcome<'_>> {
        if let Some(result) = self.decided(needed) {
            return Some(Outcome::Result(result));
        }
        let mut counts: BTreeMap<(ReplyStatus, &[u8]), usize> = BTreeMap::new();
        for (status, r) in self.votes.values() {
            *counts.entry((*status, r.as_slice())).or_default() += 1;
        }
        counts
            .into_iter()
            .find(|(_, c)| *c >= needed.max(1))
            .and_then(|((status, _), _)| match status {
                ReplyStatus::Result => None,
                ReplyStatus::Withheld => Some(Outcome::Withheld),
                ReplyStatus::Expired => Some(Outcome::Expired),
            })
    }

    /// The replicas whose vote is what at least `needed` of them agree on
    /// ([`ReplyTally::outcome`]); empty while nothing is decided.
    pub fn agreeing(&self, needed: usize) -> Vec<ReplicaId> {
        let Some(outcome) = self.outcome(needed) else {
            return Vec::new();
        };
        let status = match outcome {
            Outcome::Result(r) => return self.supporters(r).collect(),
            Outcome::Withheld => ReplyStatus::Withheld,
            Outcome::Expired => ReplyStatus::Expired,
        };
        self.votes
            .iter()
            .filter(|(_, (s, _))| *s == status)
            .map(|(replica, _)| *replica)
            .collect()
    }

    /// Whether every replica of the `n` that `asked` names has voted.
    pub fn all_voted(&self, asked: Repliers, n: usize) -> bool {
        (0..n as u32)
            .map(ReplicaId)
            .filter(|r| asked.asks(*r))
            .all(|r| self.votes.contains_key(&r))
    }

    /// Whether no result can reach `needed` votes any more, given `n` replicas.
    pub fn hopeless(&self, needed: usize, n: usize) -> bool {
        let missing = n.saturating_sub(self.votes.len());
        let mut counts: BTreeMap<(ReplyStatus, &[u8]), usize> = BTreeMap::new();
        for (status, v) in self.votes.values() {
            *counts.entry((*status, v.as_slice())).or_default() += 1;
        }
        let best = counts.values().copied().max().unwrap_or(0);
        best + missing < needed
    }
}

/// Which replicas one client asks to reply to its ordered requests, and which
/// it passes over. Generic over the clock (`T`: the SDK's `Instant`, the
/// simulator's microseconds).
#[derive(Clone, Debug)]
pub struct ReplierChoice<T> {
    n: usize,
    needed: usize,
    /// Where this client starts among the backups, so that clients spread
    /// their replies over the replicas.
    offset: usize,
    /// Until when each replica is passed over.
    suspected_until: Vec<Option<T>>,
}

impl<T: Copy + Ord> ReplierChoice<T> {
    /// For a client of `n` replicas whose ordered results need `needed`
    /// matching replies ([`replies_needed`]), starting at `offset` (any
    /// number that differs between clients, such as a byte of its key).
    pub fn new(n: usize, needed: usize, offset: usize) -> Self {
        ReplierChoice {
            n,
            needed,
            offset,
            suspected_until: vec![None; n],
        }
    }

    fn suspected(&self, replica: usize, now: T) -> bool {
        self.suspected_until[replica].is_some_and(|until| now < until)
    }

    /// The replicas to ask for a new request while `primary` is believed to
    /// be the primary: `needed` of them, backups first (the primary has the
    /// most to send already), from this client's offset on, passing over
    /// the suspected ones; every replica when fewer are left, or when the
    /// cluster is too large to name its replicas.
    pub fn pick(&self, primary: ReplicaId, now: T) -> Repliers {
        let n = self.n;
        if n > Repliers::NAMEABLE as usize {
            return Repliers::ALL;
        }
        let primary = primary.index() % n.max(1);
        let backups =
            (0..n.saturating_sub(1)).map(|k| (primary + 1 + (self.offset + k) % (n - 1)) % n);
        let chosen: Vec<ReplicaId> = backups
            .chain([primary])
            .filter(|r| !self.suspected(*r, now))
            .take(self.needed)
            .map(|r| ReplicaId(r as u32))
            .collect();
        if chosen.len() < self.needed {
            Repliers::ALL
        } else {
            Repliers::of(chosen)
        }
    }

    /// A request that asked `asked` was decided by `agreeing`: each replica
    /// it named that is not among them (silent, slow, or answering
    /// otherwise) is passed over until `until`; the agreeing ones are
    /// trusted again. A request that asked every replica suspects nobody
    /// (the ones not counted were merely slower).
    pub fn settle(&mut self, asked: Repliers, agreeing: &[ReplicaId], until: T) {
        for r in agreeing {
            if let Some(s) = self.suspected_until.get_mut(r.index()) {
                *s = None;
            }
        }
        if asked.is_all() {
            return;
        }
        for (i, s) in self.suspected_until.iter_mut().enumerate() {
            let r = ReplicaId(i as u32);
            if asked.asks(r) && !agreeing.contains(&r) {
                *s = Some(until);
            }
        }
    }
}

/// The value that at least `needed` of `votes` (one per replica) agree on.
pub fn decide<'a>(votes: impl IntoIterator<Item = &'a [u8]>, needed: usize) -> Option<&'a [u8]> {
    let mut counts: BTreeMap<&[u8], usize> = BTreeMap::new();
    for v in votes {
        let c = counts.entry(v).or_default();
        *c += 1;
        if *c >= needed.max(1) {
            return Some(v);
        }
    }
    None
}

/// The view the client should believe, from the latest view each replica
/// reported: the highest view that at least `f + 1` replicas report being in
/// or beyond (so at least one honest replica reached it; f Byzantine replicas
/// cannot push the client to a view nobody is in). `None` with fewer than
/// `f + 1` reports.
pub fn learned_view(reported: &BTreeMap<ReplicaId, View>, f: usize) -> Option<View> {
    let mut views: Vec<View> = reported.values().copied().collect();
    views.sort_unstable_by(|a, b| b.cmp(a));
    views.get(f).copied()
}

/// The next request id: strictly above `last`, and at least the current time
/// in microseconds since the UNIX epoch, so that ids stay increasing across
/// processes and restarts that use the same key (replicas remember only the
/// last id of each client and ignore older ones).
pub fn next_request_id(last: RequestId, now_micros: u64) -> RequestId {
    RequestId(last.0.saturating_add(1).max(now_micros))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ClientId;
    use pbft_crypto::PublicKey;

    fn reply(replica: u32, id: u64, result: &[u8], read_only: bool) -> Reply {
        Reply {
            view: View(0),
            client: ClientId(PublicKey([9; 32])),
            request_id: RequestId(id),
            result: result.to_vec(),
            status: ReplyStatus::Result,
            read_only,
            replica: ReplicaId(replica),
        }
    }

    #[test]
    fn withheld_and_expired_answers_need_a_quorum_too() {
        let mut t = ReplyTally::new(RequestId(5), false);
        let mut withheld = reply(0, 5, &[1; 32], false);
        withheld.status = ReplyStatus::Withheld;
        t.add(&withheld);
        assert_eq!(t.outcome(2), None);
        // The same digest bytes as a plain result do not match it.
        t.add(&reply(1, 5, &[1; 32], false));
        assert_eq!(t.outcome(2), None);
        withheld.replica = ReplicaId(2);
        t.add(&withheld);
        assert_eq!(t.outcome(2), Some(Outcome::Withheld));
        assert_eq!(t.decided(2), None);

        let mut t = ReplyTally::new(RequestId(5), false);
        let mut expired = reply(0, 5, b"", false);
        expired.status = ReplyStatus::Expired;
        t.add(&expired);
        expired.replica = ReplicaId(3);
        t.add(&expired);
        assert_eq!(t.outcome(2), Some(Outcome::Expired));
        // A result agreed by enough replicas wins over the rest.
        t.add(&reply(1, 5, b"r", false));
        t.add(&reply(2, 5, b"r", false));
        assert_eq!(t.outcome(2), Some(Outcome::Result(b"r")));
    }

    fn named(r: Repliers, n: u32) -> Vec<u32> {
        (0..n).filter(|i| r.asks(ReplicaId(*i))).collect()
    }

    #[test]
    fn a_client_names_as_many_backups_as_decide_and_passes_over_suspects() {
        // n = 4, f = 1: two backups, from the client's offset on.
        let c = ReplierChoice::<u64>::new(4, 2, 0);
        assert_eq!(named(c.pick(ReplicaId(0), 0), 4), [1, 2]);
        assert_eq!(named(c.pick(ReplicaId(2), 0), 4), [0, 3]);
        let c = ReplierChoice::<u64>::new(4, 2, 1);
        assert_eq!(named(c.pick(ReplicaId(0), 0), 4), [2, 3]);
        // Clients spread over the backups: every backup is named by some.
        let mut load = [0; 4];
        for offset in 0..6 {
            for r in named(
                ReplierChoice::<u64>::new(4, 2, offset).pick(ReplicaId(0), 0),
                4,
            ) {
                load[r as usize] += 1;
            }
        }
        assert_eq!(load, [0, 4, 4, 4]);

        // Replica 2 was named and did not agree: passed over until time 10,
        // when the primary fills in if need be.
        let mut c = ReplierChoice::<u64>::new(4, 2, 0);
        let asked = c.pick(ReplicaId(0), 0);
        c.settle(asked, &[ReplicaId(1), ReplicaId(3)], 10);
        assert_eq!(named(c.pick(ReplicaId(0), 5), 4), [1, 3]);
        c.settle(c.pick(ReplicaId(0), 5), &[ReplicaId(1)], 10);
        assert_eq!(named(c.pick(ReplicaId(0), 5), 4), [0, 1]);
        // Suspicion ends with time, or when the replica agrees again.
        assert_eq!(named(c.pick(ReplicaId(0), 10), 4), [1, 2]);
        c.settle(Repliers::ALL, &[ReplicaId(2), ReplicaId(3)], 20);
        assert_eq!(named(c.pick(ReplicaId(0), 5), 4), [1, 2]);
        // Asking everyone suspects nobody.
        let mut c = ReplierChoice::<u64>::new(4, 2, 0);
        c.settle(Repliers::ALL, &[ReplicaId(0), ReplicaId(3)], 10);
        assert_eq!(named(c.pick(ReplicaId(0), 5), 4), [1, 2]);
        // Too few unsuspected replicas: everyone is asked.
        let mut c = ReplierChoice::<u64>::new(4, 3, 0);
        c.settle(c.pick(ReplicaId(0), 0), &[ReplicaId(1)], 10);
        assert!(c.pick(ReplicaId(0), 5).is_all());
        // One replica: it is the one asked.
        assert_eq!(
            named(ReplierChoice::<u64>::new(1, 1, 7).pick(ReplicaId(0), 0), 1),
            [0]
        );
        // Clusters too large to name their replicas ask everyone.
        assert!(ReplierChoice::<u64>::new(67, 23, 0)
            .pick(ReplicaId(0), 0)
            .is_all());
    }

    #[test]
    fn the_agreeing_replicas_and_whether_all_named_voted() {
        let mut t = ReplyTally::new(RequestId(5), false);
        let asked = Repliers::of([ReplicaId(1), ReplicaId(2)]);
        t.add(&reply(1, 5, b"ok", false));
        assert!(!t.all_voted(asked, 4));
        assert!(t.agreeing(2).is_empty());
        t.add(&reply(2, 5, b"bad", false));
        assert!(t.all_voted(asked, 4));
        t.add(&reply(3, 5, b"ok", false));
        assert_eq!(t.agreeing(2), [ReplicaId(1), ReplicaId(3)]);
        assert!(!t.all_voted(Repliers::ALL, 4));
    }

    #[test]
    fn repliers_name_replicas_below_64_and_empty_means_all() {
        let r = Repliers::of([ReplicaId(0), ReplicaId(63), ReplicaId(70)]);
        assert!(r.asks(ReplicaId(0)) && r.asks(ReplicaId(63)));
        assert!(!r.asks(ReplicaId(1)) && !r.is_all());
        // Ids of 64 and more cannot be named: they always reply.
        assert!(r.asks(ReplicaId(64)) && r.asks(ReplicaId(70)));
        assert!(Repliers::of([]).is_all() && Repliers::ALL.asks(ReplicaId(5)));
    }

    #[test]
    fn replies_needed_follow_the_cluster_read_mode() {
        for f in 0..4 {
            assert_eq!(replies_needed(f, ReadMode::Ordered, false), f + 1);
            assert_eq!(replies_needed(f, ReadMode::Fast, false), 2 * f + 1);
            assert_eq!(replies_needed(f, ReadMode::Fast, true), 2 * f + 1);
            // A read-only answer never decides on fewer, whatever the mode.
            assert_eq!(replies_needed(f, ReadMode::Ordered, true), 2 * f + 1);
        }
    }

    #[test]
    fn f_plus_one_matching_ordered_replies_decide() {
        // n = 4, f = 1: two matching replies are enough.
        let mut t = ReplyTally::new(RequestId(5), false);
        assert!(t.add(&reply(0, 5, b"ok", false)));
        assert_eq!(t.decided(2), None);
        assert!(t.add(&reply(2, 5, b"ok", false)));
        assert_eq!(t.decided(2), Some(&b"ok"[..]));
    }

    #[test]
    fn read_only_needs_two_f_plus_one() {
        let mut t = ReplyTally::new(RequestId(5), true);
        t.add(&reply(0, 5, b"v", true));
        t.add(&reply(1, 5, b"v", true));
        assert_eq!(t.decided(3), None);
        t.add(&reply(3, 5, b"v", true));
        assert_eq!(t.decided(3), Some(&b"v"[..]));
    }

    #[test]
    fn byzantine_wrong_result_is_outvoted() {
        let mut t = ReplyTally::new(RequestId(1), false);
        t.add(&reply(0, 1, b"evil", false));
        assert_eq!(t.decided(2), None);
        t.add(&reply(1, 1, b"good", false));
        assert_eq!(t.decided(2), None, "one vote each: no decision yet");
        t.add(&reply(2, 1, b"good", false));
        assert_eq!(t.decided(2), Some(&b"good"[..]));
    }

    #[test]
    fn duplicates_from_one_replica_count_once() {
        let mut t = ReplyTally::new(RequestId(1), false);
        for _ in 0..5 {
            t.add(&reply(3, 1, b"evil", false));
        }
        assert_eq!(t.voters(), 1);
        assert_eq!(t.decided(2), None);
        // A replica that changes its answer still has one vote.
        t.add(&reply(3, 1, b"good", false));
        t.add(&reply(1, 1, b"good", false));
        assert_eq!(t.voters(), 2);
        assert_eq!(t.decided(2), Some(&b"good"[..]));
    }

    #[test]
    fn other_requests_and_kinds_are_not_counted() {
        let mut t = ReplyTally::new(RequestId(7), false);
        assert!(!t.add(&reply(0, 6, b"x", false)), "older request");
        assert!(
            !t.add(&reply(1, 7, b"x", true)),
            "read-only reply to an ordered request"
        );
        assert_eq!(t.voters(), 0);
        let mut r = ReplyTally::new(RequestId(7), true);
        assert!(!r.add(&reply(1, 7, b"x", false)));
    }

    #[test]
    fn split_read_only_answers_become_hopeless() {
        // n = 4, need 3: 2 + 2 split can never reach 3.
        let mut t = ReplyTally::new(RequestId(1), true);
        t.add(&reply(0, 1, b"a", true));
        t.add(&reply(1, 1, b"b", true));
        assert!(!t.hopeless(3, 4));
        t.add(&reply(2, 1, b"a", true));
        t.add(&reply(3, 1, b"b", true));
        assert!(t.hopeless(3, 4));
        assert_eq!(t.decided(3), None);
    }

    #[test]
    fn decide_ignores_needed_zero() {
        assert_eq!(decide([&b"a"[..]], 0), Some(&b"a"[..]));
        assert_eq!(decide(std::iter::empty(), 1), None);
    }

    #[test]
    fn learned_view_needs_f_plus_one() {
        let mut m = BTreeMap::new();
        m.insert(ReplicaId(0), View(9)); // a Byzantine replica lies
        assert_eq!(learned_view(&m, 1), None);
        m.insert(ReplicaId(1), View(2));
        assert_eq!(learned_view(&m, 1), Some(View(2)));
        m.insert(ReplicaId(2), View(3));
        assert_eq!(learned_view(&m, 1), Some(View(3)));
        m.insert(ReplicaId(3), View(1));
        assert_eq!(learned_view(&m, 1), Some(View(3)));
    }

    #[test]
    fn request_ids_increase_and_follow_the_clock() {
        assert_eq!(next_request_id(RequestId(0), 1_000), RequestId(1_000));
        assert_eq!(next_request_id(RequestId(5_000), 1_000), RequestId(5_001));
        assert_eq!(next_request_id(RequestId(u64::MAX), 0), RequestId(u64::MAX));
    }
}
