//! The client table: what exactly-once execution needs of each client, and
//! no more.
//!
//! # What is kept
//! Per client, the id of its last executed request and that request's result
//! ([`ClientEntry`]). A result of at most [`Config::client_result_max`] bytes
//! is kept whole; a larger one (a long scan) only as its digest, so one
//! request can no longer add megabytes to every replica's memory, checkpoint
//! and log for good. The default (66 KiB) keeps every result the key-value
//! store's writes can produce (a replaced value is at most 64 KiB), so only
//! reads lose their results.
//!
//! # Expiry, at checkpoints
//! Before each checkpoint's snapshot, [`ClientTable::expire`] removes entries
//! until the table holds at most [`Config::client_table_max`] entries and
//! [`Config::client_table_bytes_max`] bytes: lowest request id first (ties by
//! client id). Request ids are time-based (the SDK makes every id at least the
//! UNIX time in microseconds), so these are the clients that were idle
//! longest. The table then raises its *floor* to the highest id it removed: a
//! request from a client the table does not know is refused if its id is at
//! or below the floor, because it may be the retransmission of a request that
//! already ran and was forgotten. Every id above the floor is new (each kept
//! entry's id is at least the floor, and a forgotten client's ids were all at
//! most the floor), so exactly-once holds for every request.
//!
//! The table and its floor are part of every checkpoint's state and digest,
//! and expiry depends only on the table, so every honest replica makes the
//! same decisions.
//!
//! # Pages
//! A checkpoint holds the entries in pages ([`ClientTable::pages`]), cut by
//! [`pbft_app::paging`] at about [`CLIENT_PAGE_TARGET`] bytes, with
//! boundaries chosen by the client ids. The table keeps its last cut and
//! marks the page of every entry recorded or expired since, so a checkpoint
//! encodes and hashes again only the pages of the clients that ran a request
//! since the last one, not the whole table (up to
//! [`Config::client_table_bytes_max`], 256 MiB by default).
//!
//! # What a client sees
//! * A retransmission of its last request whose result was kept: the result
//!   again ([`ReplyStatus::Result`]).
//! * One whose result was not kept: [`ReplyStatus::Withheld`], carrying the
//!   result's digest. The request ran exactly once; the SDK re-issues a read
//!   as a new request and reports a write as executed with its result lost.
//! * A request at or below the floor from a forgotten client:
//!   [`ReplyStatus::Expired`], no result. Whether it ran is unknown; the SDK
//!   re-issues a read as a new request and reports a write's outcome as
//!   unknown (it never re-issues a write: it may have run).
//!
//! # A known limit
//! Request ids are chosen by clients. In a cluster that admits any client
//! key, an attacker that executes more than `client_table_max` requests under
//! distinct keys with ids far in the future fills the table and, once those
//! entries are evicted, lifts the floor above every honest id: forgotten
//! honest clients are then refused until wall time passes those ids. Key
//! admission (the default) rules that out; a cure needs an agreed clock (a
//! primary timestamp in the pre-prepare, checked against local clocks).

use crate::config::Config;
use crate::ids::{ClientId, RequestId};
use crate::message::ReplyStatus;
use pbft_app::paging::{Layout, PageCache};
use pbft_app::Page;
use pbft_crypto::Digest;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The size the table's pages aim at.
pub const CLIENT_PAGE_TARGET: usize = 256 * 1024;

/// Bytes an entry costs beyond its kept result (key, id, digest, map node).
pub const ENTRY_OVERHEAD: usize = 96;

/// A result as the table keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeptResult {
    /// The whole result.
    Full(Vec<u8>),
    /// Only the digest of a result larger than the cap.
    Digest(Digest),
}

/// What a replica remembers of a client: its last executed request and result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientEntry {
    /// The last executed request id.
    pub request_id: RequestId,
    /// Its result (or its digest), re-sent when the request is retransmitted.
    pub result: KeptResult,
}

impl ClientEntry {
    /// The bytes this entry counts against the table's budget.
    pub fn cost(&self) -> usize {
        ENTRY_OVERHEAD
            + match &self.result {
                KeptResult::Full(r) => r.len(),
                KeptResult::Digest(_) => 0,
            }
    }

    /// The reply to a retransmission of the request: its status and bytes.
    pub fn retransmission(&self) -> (ReplyStatus, Vec<u8>) {
        match &self.result {
            KeptResult::Full(r) => (ReplyStatus::Result, r.clone()),
            KeptResult::Digest(d) => (ReplyStatus::Withheld, d.0.to_vec()),
        }
    }
}

/// How the table classifies a request (see [`ClientTable::admit`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission<'a> {
    /// Never executed: may run.
    New,
    /// The client's last executed request: answer from the entry.
    Last(&'a ClientEntry),
    /// Older than the client's last executed request: ignore.
    Old,
    /// From a client the table forgot, at or below the floor: refuse.
    Expired,
}

/// The client table (see the module docs). Equality compares the entries
/// and the floor, not the cached pages.
#[derive(Clone, Debug, Default)]
pub struct ClientTable {
    entries: BTreeMap<ClientId, ClientEntry>,
    floor: RequestId,
    /// The pages of the last [`ClientTable::pages`] call, with those changed
    /// since marked: every change to `entries` must touch its client.
    pages: PageCache<ClientId>,
}

impl PartialEq for ClientTable {
    fn eq(&self, other: &ClientTable) -> bool {
        self.entries == other.entries && self.floor == other.floor
    }
}

impl Eq for ClientTable {}

/// How the table is cut into pages: an entry counts its
/// [`ClientEntry::cost`]; a page may end early after a client whose id's
/// first byte is below 64 (ids are public keys: about one in four); a page
/// is the postcard encoding of its `(client, entry)` pairs.
struct ClientLayout;

impl Layout<ClientId, ClientEntry> for ClientLayout {
    fn target(&self) -> usize {
        CLIENT_PAGE_TARGET
    }

    fn size(&self, _: &ClientId, entry: &ClientEntry) -> usize {
        entry.cost()
    }

    fn boundary(&self, client: &ClientId) -> bool {
        client.0 .0[0] < 64
    }

    fn encode(&self, _: usize, entries: &[(&ClientId, &ClientEntry)]) -> Vec<u8> {
        postcard::to_stdvec(entries).unwrap_or_default()
    }
}

impl ClientTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// The entry of `client`, if the table knows it.
    pub fn get(&self, client: &ClientId) -> Option<&ClientEntry> {
        self.entries.get(client)
    }

    /// Requests from forgotten clients at or below this id are refused.
    pub fn floor(&self) -> RequestId {
        self.floor
    }

    /// The number of clients known.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no client is known.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries, in client order.
    pub fn iter(&self) -> impl Iterator<Item = (&ClientId, &ClientEntry)> {
        self.entries.iter()
    }

    /// The bytes the table counts against its budget.
    pub fn bytes(&self) -> usize {
        self.entries.values().map(ClientEntry::cost).sum()
    }

    /// A table of `entries` under `floor`, checked like [`ClientTable::check`].
    fn from_entries(
        entries: BTreeMap<ClientId, ClientEntry>,
        floor: RequestId,
    ) -> Result<ClientTable, String> {
        let table = ClientTable {
            entries,
            floor,
            pages: PageCache::default(),
        };
        table.check()?;
        Ok(table)
    }

    /// A table under `floor` (checked like [`ClientTable::check`]), decoded
    /// from `pages`, which are kept
    /// as the table's own cut where they are the canonical pages (see
    /// [`PageCache::seed`]). The pages may be cut anyhow, but together they
    /// must list the clients in strictly increasing order.
    pub fn from_pages(pages: &[Page], floor: RequestId) -> Result<ClientTable, String> {
        let mut entries = BTreeMap::new();
        let mut last: Option<ClientId> = None;
        for (i, page) in pages.iter().enumerate() {
            let part: Vec<(ClientId, ClientEntry)> =
                postcard::from_bytes(page.bytes()).map_err(|e| format!("client page {i}: {e}"))?;
            for (c, e) in part {
                if last.is_some_and(|l| l >= c) {
                    return Err("clients not in strictly increasing order".into());
                }
                last = Some(c);
                entries.insert(c, e);
            }
        }
        let mut table = ClientTable::from_entries(entries, floor)?;
        table.pages.seed(&table.entries, &ClientLayout, pages);
        Ok(table)
    }

    /// The entries as pages (see the module docs): cut again only around
    /// the clients whose entries changed since the last call.
    pub fn pages(&mut self) -> Vec<Page> {
        self.pages.cut(&self.entries, &ClientLayout)
    }

    /// Checks what a peer could get wrong in a (certified) snapshot's
    /// table: every entry is at or above the floor.
    pub fn check(&self) -> Result<(), String> {
        match self.entries.iter().find(|(_, e)| e.request_id < self.floor) {
            Some((c, _)) => Err(format!("client {c:?} is below the client table's floor")),
            None => Ok(()),
        }
    }

    /// Whether `request_id` from `client` may run (see [`Admission`]).
    pub fn admit(&self, client: &ClientId, request_id: RequestId) -> Admission<'_> {
        match self.entries.get(client) {
            Some(e) if request_id < e.request_id => Admission::Old,
            Some(e) if request_id == e.request_id => Admission::Last(e),
            Some(_) => Admission::New,
            None if request_id <= self.floor => Admission::Expired,
            None => Admission::New,
        }
    }

    /// Whether `request_id` from `client` has already been decided here:
    /// executed, or refused for good (old or expired).
    pub fn settled(&self, client: &ClientId, request_id: RequestId) -> bool {
        !matches!(self.admit(client, request_id), Admission::New)
    }

    /// Records that `request_id` of `client` executed with `result`; a result
    /// above `result_max` bytes is kept as its digest.
    pub fn record(
        &mut self,
        client: ClientId,
        request_id: RequestId,
        result: &[u8],
        result_max: usize,
    ) {
        let result = if result.len() <= result_max {
            KeptResult::Full(result.to_vec())
        } else {
            KeptResult::Digest(Digest::of(result))
        };
        self.entries
            .insert(client, ClientEntry { request_id, result });
        self.pages.touch(&client);
    }

    /// Expires entries until the table fits `config`'s budgets, lowest
    /// request id first, raising the floor to the highest id removed.
    /// Returns how many entries it removed.
    pub fn expire(&mut self, config: &Config) -> usize {
        let mut bytes = self.bytes();
        let (max, bytes_max) = (config.client_table_max, config.client_table_bytes_max);
        if self.entries.len() <= max && bytes <= bytes_max {
            return 0;
        }
        let mut order: Vec<(RequestId, ClientId)> = self
            .entries
            .iter()
            .map(|(c, e)| (e.request_id, *c))
            .collect();
        order.sort_unstable();
        let mut removed = 0;
        for (id, client) in order {
            if self.entries.len() <= max && bytes <= bytes_max {
                break;
            }
            if let Some(e) = self.entries.remove(&client) {
                self.pages.touch(&client);
                bytes -= e.cost();
                self.floor = self.floor.max(id);
                removed += 1;
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbft_crypto::{ClusterId, PublicKey};

    fn client(i: u8) -> ClientId {
        ClientId(PublicKey([i; 32]))
    }

    fn config(max: usize, bytes: usize) -> Config {
        let keys = (0..4).map(|i| PublicKey([100 + i; 32])).collect();
        let mut c = Config::new(ClusterId(0), keys);
        c.client_table_max = max;
        c.client_table_bytes_max = bytes;
        c
    }

    #[test]
    fn large_results_are_kept_as_digests() {
        let mut t = ClientTable::new();
        t.record(client(1), RequestId(5), &[7; 10], 10);
        t.record(client(2), RequestId(5), &[7; 11], 10);
        assert_eq!(
            t.get(&client(1)).map(|e| e.retransmission()),
            Some((ReplyStatus::Result, vec![7; 10]))
        );
        assert_eq!(
            t.get(&client(2)).map(|e| e.retransmission()),
            Some((ReplyStatus::Withheld, Digest::of(&[7; 11]).0.to_vec()))
        );
        assert_eq!(t.bytes(), 2 * ENTRY_OVERHEAD + 10);
    }

    #[test]
    fn expiry_removes_the_oldest_ids_and_raises_the_floor() {
        let mut t = ClientTable::new();
        for i in 1..=5u8 {
            t.record(client(i), RequestId(u64::from(i) * 10), b"ok", 100);
        }
        assert_eq!(t.expire(&config(5, usize::MAX)), 0);
        assert_eq!(t.expire(&config(3, usize::MAX)), 2);
        assert_eq!(t.len(), 3);
        assert_eq!(t.floor(), RequestId(20));
        // A forgotten client at or below the floor is refused; above, new.
        assert_eq!(t.admit(&client(1), RequestId(10)), Admission::Expired);
        assert_eq!(t.admit(&client(2), RequestId(20)), Admission::Expired);
        assert_eq!(t.admit(&client(2), RequestId(21)), Admission::New);
        assert_eq!(t.admit(&client(9), RequestId(21)), Admission::New);
        // Known clients keep their own exactly-once check.
        assert_eq!(t.admit(&client(3), RequestId(29)), Admission::Old);
        assert!(matches!(
            t.admit(&client(3), RequestId(30)),
            Admission::Last(_)
        ));
        assert_eq!(t.admit(&client(3), RequestId(31)), Admission::New);
        assert!(t.settled(&client(1), RequestId(10)));
        assert!(!t.settled(&client(3), RequestId(31)));
    }

    #[test]
    fn expiry_keeps_the_byte_budget() {
        let mut t = ClientTable::new();
        for i in 1..=4u8 {
            t.record(client(i), RequestId(u64::from(i)), &[0; 1000], 2000);
        }
        let budget = 2 * (ENTRY_OVERHEAD + 1000);
        assert_eq!(t.expire(&config(100, budget)), 2);
        assert!(t.bytes() <= budget);
        assert_eq!(t.floor(), RequestId(2));
    }

    #[test]
    fn expiry_is_a_function_of_the_table_alone() {
        let build = |order: &[u8]| {
            let mut t = ClientTable::new();
            for &i in order {
                t.record(client(i), RequestId(7), b"same id", 100);
            }
            t.expire(&config(2, usize::MAX));
            t
        };
        assert_eq!(build(&[1, 2, 3, 4]), build(&[4, 2, 3, 1]));
        assert!(build(&[1, 2, 3, 4]).get(&client(4)).is_some());
    }

    #[test]
    fn entries_below_the_floor_are_refused() {
        let mut t = ClientTable::new();
        t.record(client(1), RequestId(3), b"", 10);
        t.floor = RequestId(3);
        assert!(t.check().is_ok());
        t.floor = RequestId(4);
        assert!(t.check().is_err());
    }

    /// A client id from a 64-bit number (spread over the key bytes, as
    /// public keys are).
    fn spread(i: u64) -> ClientId {
        ClientId(PublicKey(Digest::of(&i.to_le_bytes()).0))
    }

    /// The table's pages, checked against the from-scratch cut and a decode.
    fn check_pages(t: &mut ClientTable, context: &str) -> Vec<Page> {
        let pages = t.pages();
        let reference = pbft_app::paging::cut_all(&t.entries, &ClientLayout);
        assert_eq!(pages, reference, "{context}");
        let back = ClientTable::from_pages(&pages, t.floor()).expect("own pages decode");
        assert_eq!(back, *t, "{context}");
        pages
    }

    #[test]
    fn pages_are_cut_again_only_around_changed_clients() {
        let mut t = ClientTable::new();
        let empty = check_pages(&mut t, "empty");
        assert_eq!(empty.len(), 1);
        // 20,000 clients with results of 0 to 2 KiB: about 20 MiB in pages.
        for i in 0..20_000u64 {
            let result = vec![i as u8; (i as usize * 37) % 2048];
            t.record(spread(i), RequestId(i + 1), &result, 4096);
        }
        let before = check_pages(&mut t, "filled");
        assert!(before.len() > 50, "{} pages", before.len());
        // One client runs a request: at most a couple of pages change.
        t.record(spread(77), RequestId(30_000), b"new", 4096);
        let after = check_pages(&mut t, "one record");
        let fresh = after.iter().filter(|p| !before.iter().any(|b| b.shares(p)));
        assert!(fresh.count() <= 2, "one record recut more than 2 pages");
        // Nothing changed: every page shared.
        let again = t.pages();
        assert!(again.iter().zip(&after).all(|(a, b)| a.shares(b)));
        // Expiry changes many entries; the cut still equals the reference.
        let mut small = config(15_000, usize::MAX);
        assert_eq!(t.expire(&small), 5_000);
        check_pages(&mut t, "expired");
        small.client_table_max = 10;
        t.expire(&small);
        check_pages(&mut t, "expired to 10");
        // A decoded table starts from the pages it was given.
        let given = t.pages();
        let mut back = ClientTable::from_pages(&given, t.floor()).expect("decodes");
        assert!(back.pages().iter().zip(&given).all(|(a, b)| a.shares(b)));
    }

    #[test]
    fn decoding_refuses_unordered_or_repeated_clients() {
        let mut t = ClientTable::new();
        for i in 0..3u8 {
            t.record(client(i), RequestId(9), b"r", 10);
        }
        let entries: Vec<(ClientId, ClientEntry)> =
            t.iter().map(|(c, e)| (*c, e.clone())).collect();
        let page = |list: &[(ClientId, ClientEntry)]| {
            Page::new(postcard::to_stdvec(list).expect("encodes"))
        };
        let whole = [page(&entries)];
        assert!(ClientTable::from_pages(&whole, RequestId(0)).is_ok());
        let split = [page(&entries[..2]), page(&entries[1..])];
        assert!(ClientTable::from_pages(&split, RequestId(0)).is_err());
        let reversed: Vec<_> = entries.iter().rev().cloned().collect();
        assert!(ClientTable::from_pages(&[page(&reversed)], RequestId(0)).is_err());
        assert!(ClientTable::from_pages(&[Page::new(vec![0xff; 3])], RequestId(0)).is_err());
        assert!(
            ClientTable::from_pages(&whole, RequestId(10)).is_err(),
            "below the floor"
        );
    }

    /// Run with `cargo test --release -p pbft-core --lib client_table_figure
    /// -- --ignored --nocapture`.
    #[test]
    #[ignore = "a timing figure over a full table"]
    #[allow(clippy::disallowed_methods, reason = "a benchmark reads the clock")]
    fn client_table_figure_incremental_against_full_cut() {
        use std::time::Instant;
        let mut t = ClientTable::new();
        let clients = Config::new(ClusterId(0), vec![]).client_table_max as u64;
        for i in 0..clients {
            t.record(spread(i), RequestId(i + 1), &[i as u8; 2048], 4096);
        }
        let start = Instant::now();
        let full = pbft_app::paging::cut_all(&t.entries, &ClientLayout);
        let full_time = start.elapsed();
        assert_eq!(t.pages(), full);
        for changes in [1000u64, 50, 1, 0] {
            for i in 0..changes {
                t.record(
                    spread(i * 61 % clients),
                    RequestId(clients + i + 1),
                    b"ok",
                    4096,
                );
            }
            let start = Instant::now();
            let pages = t.pages();
            let time = start.elapsed();
            println!(
                "{clients} clients, {} MiB in {} pages: full cut {full_time:?}; \
                 {changes} clients changed: {:?}",
                t.bytes() >> 20,
                pages.len(),
                time
            );
        }
    }
}
