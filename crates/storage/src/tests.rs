use super::*;
use pbft_core::io::compact;
use pbft_core::message::{CheckpointProof, PrePrepare};
use pbft_core::{SeqNum, View};
use pbft_crypto::{ClusterId, Digest, KeyPair, Signer};
use segment::ENTRY_HEADER_LEN;
use std::sync::mpsc;
use std::time::Duration;

fn pre_prepare(seq: u64) -> Record {
    let signer = Signer::new(KeyPair::from_seed([1; 32]), ClusterId(1));
    Record::PrePrepare(
        signer.sign(PrePrepare {
            view: View(0),
            seq: SeqNum(seq),
            digest: Digest::of(&seq.to_le_bytes()),
            replica: ReplicaId(0),
        }),
        None,
    )
}

fn proof(seq: u64) -> CheckpointProof {
    CheckpointProof {
        seq: SeqNum(seq),
        digest: Digest::of(&seq.to_le_bytes()),
        checkpoints: vec![],
    }
}

/// A snapshot record listing `pages` leaf digests (about 32 bytes each).
fn snapshot(seq: u64, fill: u8, pages: usize) -> Record {
    Record::Snapshot(SeqNum(seq), vec![Digest([fill; 32]); pages])
}

fn checkpoint_of(seq: u64, pages: usize) -> Record {
    let leaves = vec![Digest([seq as u8; 32]); pages];
    Record::Checkpoint(
        CheckpointProof {
            seq: SeqNum(seq),
            digest: Digest::of(&[seq as u8]),
            checkpoints: vec![],
        },
        leaves,
    )
}

fn checkpoint(seq: u64) -> Record {
    checkpoint_of(seq, 1)
}

fn stable(seq: u64) -> Record {
    Record::Stable(proof(seq))
}

/// Options whose segments hold about `n` small records.
fn small(n: u64) -> Options {
    Options {
        sync: true,
        segment_bytes: HEADER_LEN as u64 + n * 150,
    }
}

/// An initialised, opened data directory with `options`.
fn fresh_with(options: Options) -> (tempfile::TempDir, Storage) {
    let dir = tempfile::tempdir().expect("tempdir");
    Storage::init_with(dir.path(), 1, ReplicaId(0), &options).expect("init");
    let (s, records) = Storage::open_with(dir.path(), 1, ReplicaId(0), options).expect("open");
    assert!(records.is_empty());
    (dir, s)
}

fn fresh() -> (tempfile::TempDir, Storage) {
    fresh_with(small(1000))
}

fn first_segment(dir: &tempfile::TempDir) -> PathBuf {
    segment::path(dir.path(), 1)
}

fn reopen(dir: &tempfile::TempDir) -> Result<Vec<Record>, StorageError> {
    Storage::open_with(dir.path(), 1, ReplicaId(0), small(1000)).map(|(_, r)| r)
}

fn segment_ids(dir: &tempfile::TempDir) -> Vec<u64> {
    list(dir.path()).expect("list").segments
}

/// The byte offsets at which each entry of a segment starts, and where the
/// entries end.
fn entry_offsets(bytes: &[u8]) -> (Vec<usize>, usize) {
    let mut at = HEADER_LEN;
    let mut out = Vec::new();
    while at + ENTRY_HEADER_LEN <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        if len == 0 {
            break;
        }
        out.push(at);
        at += ENTRY_HEADER_LEN + len as usize;
    }
    (out, at)
}

/// Whether `sub` is `all` with some records left out, in order.
fn is_subsequence(sub: &[Record], all: &[Record]) -> bool {
    let mut rest = all.iter();
    sub.iter().all(|r| rest.any(|a| a == r))
}

fn compacted(records: &[Record]) -> Vec<Record> {
    let mut records = records.to_vec();
    compact(&mut records);
    records
}

#[test]
fn round_trip() {
    let (dir, mut s) = fresh();
    s.append(&[pre_prepare(1), pre_prepare(2)]).expect("append");
    s.append(&[pre_prepare(3)]).expect("append");
    drop(s);
    assert_eq!(
        reopen(&dir).expect("reopen"),
        vec![pre_prepare(1), pre_prepare(2), pre_prepare(3)]
    );
}

#[test]
fn segments_are_preallocated_and_appends_do_not_grow_them() {
    let options = small(100);
    let (dir, mut s) = fresh_with(options);
    let path = first_segment(&dir);
    assert_eq!(
        fs::metadata(&path).expect("meta").len(),
        options.segment_bytes
    );
    s.append(&[pre_prepare(1), pre_prepare(2)]).expect("append");
    assert_eq!(
        fs::metadata(&path).expect("meta").len(),
        options.segment_bytes
    );
    assert_eq!(s.stats().syncs, 1);
    assert_eq!(s.stats().segments_created, 0);
    // The write and its sync took some time, and it is counted.
    let timed = s.stats().write_nanos;
    assert!(timed > 0);
    s.append(&[pre_prepare(3)]).expect("append");
    assert!(s.stats().write_nanos > timed);
}

#[test]
fn a_full_segment_rolls_over_to_the_next() {
    let (dir, mut s) = fresh_with(small(3));
    let all: Vec<Record> = (1..=10).map(pre_prepare).collect();
    for r in &all {
        s.append(std::slice::from_ref(r)).expect("append");
    }
    assert!(s.segments() >= 3, "{}", s.segments());
    assert_eq!(s.stats().segments_created as usize, s.segments() - 1);
    drop(s);
    let ids = segment_ids(&dir);
    assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>());
    assert_eq!(reopen(&dir).expect("reopen"), all);
}

#[test]
fn a_group_larger_than_a_segment_gets_one_of_its_own() {
    let (dir, mut s) = fresh_with(small(2));
    s.append(&[pre_prepare(1)]).expect("append");
    let big = Record::Page(pbft_app::Page::new(vec![7; 2000]));
    s.append(&[big.clone(), pre_prepare(2)]).expect("append");
    s.append(&[pre_prepare(3)]).expect("append");
    drop(s);
    assert_eq!(
        reopen(&dir).expect("reopen"),
        vec![pre_prepare(1), big, pre_prepare(2), pre_prepare(3)]
    );
    assert_eq!(segment_ids(&dir), vec![1, 2, 3]);
}

/// A group larger than what is left of a segment fills it and goes on in
/// the next ones, each full segment synced before the next is started; a
/// record larger than a segment still gets one of its own.
#[test]
fn a_large_group_is_spread_over_segments() {
    let options = small(8);
    let (dir, mut s) = fresh_with(options);
    s.append(&[pre_prepare(1)]).expect("append");
    let pages: Vec<Record> = (0..20u8)
        .map(|i| Record::Page(pbft_app::Page::new(vec![i; 300])))
        .collect();
    s.append(&pages).expect("append");
    assert_eq!(
        s.stats().syncs,
        2,
        "one sync per append; rollovers sync the rest"
    );
    drop(s);
    let ids = segment_ids(&dir);
    assert!(ids.len() >= 5, "{ids:?}");
    for id in &ids {
        let len = fs::metadata(segment::path(dir.path(), *id))
            .expect("meta")
            .len();
        assert_eq!(len, options.segment_bytes, "segment {id} kept its size");
    }
    let mut all = vec![pre_prepare(1)];
    all.extend(pages);
    assert_eq!(reopen(&dir).expect("reopen"), all);
    // A crash while the last segment was written keeps a prefix.
    let last = segment::path(dir.path(), *ids.last().expect("segments"));
    let bytes = fs::read(&last).expect("read");
    let (offsets, _) = entry_offsets(&bytes);
    let mut torn = bytes.clone();
    torn[offsets[0] + ENTRY_HEADER_LEN + 5..].fill(0);
    fs::write(&last, &torn).expect("write");
    let records = reopen(&dir).expect("a torn tail is cut");
    assert!(records.len() < all.len() && all.starts_with(&records));
}

#[test]
fn compaction_keeps_what_restart_needs() {
    let (dir, mut s) = fresh();
    for seq in 1..=5 {
        s.append(&[pre_prepare(seq)]).expect("append");
    }
    s.append(&[checkpoint(4)]).expect("append");
    assert_eq!(s.live_records(), 2);
    drop(s);
    // One segment: nothing is deleted yet, and the records read back
    // restore the same replica as the compacted ones.
    let records = reopen(&dir).expect("reopen");
    assert_eq!(compacted(&records), vec![pre_prepare(5), checkpoint(4)]);
}

#[test]
fn compaction_deletes_older_segments_without_rewriting_the_newest() {
    let (dir, mut s) = fresh_with(small(3));
    let mut all = Vec::new();
    for seq in 1..=12 {
        all.push(pre_prepare(seq));
        s.append(&[pre_prepare(seq)]).expect("append");
    }
    let before = s.segments();
    assert!(before >= 4);
    let newest = *s.segments.keys().last().expect("segments");
    let newest_bytes = fs::read(segment::path(dir.path(), newest)).expect("read");
    all.push(stable(11));
    s.append(&[stable(11)]).expect("append");
    assert!(s.stats().segments_deleted > 0);
    drop(s);
    let ids = segment_ids(&dir);
    assert!(ids.len() < before, "{ids:?}");
    // The newest segment was appended to, not rewritten.
    let now = fs::read(segment::path(dir.path(), newest)).expect("read");
    let (_, end) = entry_offsets(&newest_bytes);
    assert_eq!(now[..end], newest_bytes[..end]);
    let records = reopen(&dir).expect("reopen");
    assert!(is_subsequence(&records, &all));
    assert_eq!(compacted(&records), compacted(&all));
}

#[test]
fn retained_records_of_older_segments_are_carried_into_a_compacted_segment() {
    let (dir, mut s) = fresh_with(small(3));
    // The snapshot to start from, written long before the stable checkpoint.
    let base = snapshot(0, 1, 1);
    let mut all = vec![base.clone()];
    s.append(std::slice::from_ref(&base)).expect("append");
    for seq in 1..=12 {
        all.push(pre_prepare(seq));
        s.append(&[pre_prepare(seq)]).expect("append");
    }
    all.push(stable(10));
    s.append(&[stable(10)]).expect("append");
    drop(s);
    let ids = segment_ids(&dir);
    let headers = read_segments(dir.path(), &ids, 1, ReplicaId(0)).expect("read");
    let compacted_segment = &headers[0].2;
    assert!(
        compacted_segment.covers_from < compacted_segment.id,
        "{compacted_segment:?}"
    );
    let records = reopen(&dir).expect("reopen");
    assert_eq!(records[0], base, "the base snapshot is kept, first");
    assert!(is_subsequence(&records, &all));
    assert_eq!(compacted(&records), compacted(&all));
}

#[test]
fn a_compacted_segment_is_not_rewritten_when_nothing_would_go() {
    let (_dir, mut s) = fresh_with(small(3));
    s.append(&[snapshot(0, 1, 1)]).expect("append");
    for seq in 1..=12 {
        s.append(&[pre_prepare(seq)]).expect("append");
    }
    s.append(&[stable(10)]).expect("append");
    let created = s.stats().segments_created;
    // Only the carried snapshot is in an older segment; another stable
    // checkpoint in the same newest segment changes nothing there.
    s.append(&[stable(11)]).expect("append");
    assert_eq!(s.stats().segments_created, created);
}

/// A state of 20 pages that the checkpoints after it never change: each
/// lists the same pages, so they stay retained. Compaction must not copy
/// them whenever a checkpoint frees anything (that cost the state's size
/// per checkpoint); it waits until there is as much to free as to copy.
#[test]
fn a_large_unchanged_snapshot_is_not_copied_at_every_checkpoint() {
    let (dir, mut s) = fresh_with(small(4));
    let pages: Vec<pbft_app::Page> = (0..20u8)
        .map(|i| pbft_app::Page::new(vec![i; 2000]))
        .collect();
    let leaves: Vec<Digest> = pages.iter().map(pbft_app::Page::digest).collect();
    let mut all: Vec<Record> = pages.iter().cloned().map(Record::Page).collect();
    all.push(Record::Snapshot(SeqNum(0), leaves.clone()));
    s.append(&all).expect("append");
    for round in 1..=100u64 {
        let seq = round * 4;
        let mut group: Vec<Record> = (seq - 3..=seq).map(pre_prepare).collect();
        group.push(Record::Snapshot(SeqNum(seq), leaves.clone()));
        s.append(&group).expect("append");
        s.append(&[stable(seq)]).expect("append");
        all.extend(group);
        all.push(stable(seq));
    }
    let stats = s.stats();
    assert!(stats.segments_deleted > 0, "compaction ran");
    assert!(
        stats.compacted_bytes <= stats.bytes,
        "copied {} bytes for {} appended",
        stats.compacted_bytes,
        stats.bytes
    );
    drop(s);
    let on_disk: u64 = segment_ids(&dir)
        .iter()
        .map(|id| {
            fs::metadata(segment::path(dir.path(), *id))
                .expect("meta")
                .len()
        })
        .sum();
    assert!(
        on_disk < 3 * 40_000,
        "{on_disk} bytes on disk for a 40 kB state"
    );
    let records = reopen(&dir).expect("reopen");
    assert!(is_subsequence(&records, &all));
    assert_eq!(compacted(&records), compacted(&all));
}

/// A state whose pages were written over many segments, each beside more
/// bytes of records that later go: compaction replaces runs of segments,
/// each copying at most the budget (plus what one segment carries), never
/// the whole state at once, and the log still reads back as the same
/// replica.
#[test]
fn one_compaction_copies_at_most_its_budget() {
    const BUDGET: u64 = 6_000;
    let (dir, mut s) = fresh_with(small(8));
    s.compaction_bytes_max = BUDGET;
    let pages: Vec<pbft_app::Page> = (0..40u8)
        .map(|i| pbft_app::Page::new(vec![i; 300]))
        .collect();
    let leaves: Vec<Digest> = pages.iter().map(pbft_app::Page::digest).collect();
    let mut all = Vec::new();
    let mut seq = 0;
    for page in &pages {
        let mut group = vec![Record::Page(page.clone())];
        group.extend((seq + 1..=seq + 3).map(pre_prepare));
        seq += 3;
        s.append(&group).expect("append");
        all.extend(group);
    }
    let (mut largest, mut copied) = (0, 0);
    for round in 0..100u64 {
        let mut group: Vec<Record> = (seq + 1..=seq + 3).map(pre_prepare).collect();
        seq += 3;
        group.push(Record::Snapshot(SeqNum(seq), leaves.clone()));
        group.push(stable(seq));
        let before = s.stats().compacted_bytes;
        s.append(&group).expect("append");
        all.extend(group);
        let now = s.stats().compacted_bytes - before;
        largest = largest.max(now);
        copied += now;
        if round % 25 == 24 {
            drop(s);
            let (reopened, records) =
                Storage::open_with(dir.path(), 1, ReplicaId(0), small(8)).expect("reopen");
            assert!(is_subsequence(&records, &all), "round {round}");
            assert_eq!(compacted(&records), compacted(&all), "round {round}");
            s = reopened;
            s.compaction_bytes_max = BUDGET;
        }
    }
    // The state (40 pages of 300 bytes) is copied, in several runs.
    assert!(copied > 12_000, "compaction copied {copied} bytes");
    // No segment alone carries more than the budget here.
    assert!(largest <= BUDGET, "one compaction copied {largest} bytes");
    assert!(s.segments() < 20, "{} segments", s.segments());
}

/// A long run of appends, checkpoints, rollovers and compactions: after
/// every group, the log reads back as a subsequence of what was appended
/// that compacts to the same records (so it restores the same replica).
#[test]
fn model_check_against_compact() {
    model_check(COMPACTION_BYTES_MAX);
}

/// The same with a budget of one byte: every compaction copies one
/// segment's run at most and leaves the rest for later, so runs start in the
/// middle of the log.
#[test]
fn model_check_against_compact_in_small_runs() {
    assert!(
        model_check(1),
        "no run in the middle of the log was compacted"
    );
}

/// Returns whether a run in the middle of the log was ever compacted.
fn model_check(budget: u64) -> bool {
    let mut middle = false;
    let (dir, mut s) = fresh_with(small(4));
    s.compaction_bytes_max = budget;
    let mut all: Vec<Record> = Vec::new();
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut seq = 0;
    for step in 0..120 {
        let mut group = Vec::new();
        for _ in 0..=next() % 3 {
            seq += 1;
            group.push(pre_prepare(seq));
            if next() % 4 == 0 {
                group.push(Record::Executed(SeqNum(seq)));
            }
        }
        match next() % 6 {
            0 => group.push(snapshot(seq, seq as u8, 1)),
            1 => group.push(stable(seq.saturating_sub(next() % 4))),
            2 if step % 5 == 0 => group.push(checkpoint_of(seq, 2)),
            _ => {}
        }
        s.append(&group).expect("append");
        // A compacted segment that is not the oldest: a run in the middle.
        middle |= s.segments.iter().skip(1).any(|(id, u)| u.covers_from < *id);
        all.extend(group);
        if step % 10 == 9 {
            drop(s);
            let (reopened, records) =
                Storage::open_with(dir.path(), 1, ReplicaId(0), small(4)).expect("reopen");
            assert!(is_subsequence(&records, &all), "step {step}");
            assert_eq!(compacted(&records), compacted(&all), "step {step}");
            assert_eq!(reopened.live_records(), compacted(&all).len());
            s = reopened;
            s.compaction_bytes_max = budget;
        }
    }
    assert!(s.stats().segments_deleted > 0 || s.segments() < 10);
    assert!(s.segments() < 10, "{} segments", s.segments());
    middle
}

/// The segment files and their bytes.
fn snapshot_files(dir: &tempfile::TempDir) -> Vec<(u64, Vec<u8>)> {
    segment_ids(dir)
        .into_iter()
        .map(|id| (id, fs::read(segment::path(dir.path(), id)).expect("read")))
        .collect()
}

#[test]
fn crash_between_the_compacted_segment_and_the_deletions_restores_once() {
    let (dir, mut s) = fresh_with(small(3));
    let base = snapshot(0, 1, 1);
    let mut all = vec![base.clone()];
    s.append(std::slice::from_ref(&base)).expect("append");
    for seq in 1..=12 {
        all.push(pre_prepare(seq));
        s.append(&[pre_prepare(seq)]).expect("append");
    }
    let before = snapshot_files(&dir);
    all.push(stable(10));
    s.append(&[stable(10)]).expect("append");
    drop(s);
    let after_compaction = reopen(&dir).expect("reopen");
    let compacted_id = segment_ids(&dir)[0];
    // As if the crash came right after the rename: the segments the
    // compacted one replaces are all still there.
    for (id, bytes) in &before {
        if *id < compacted_id {
            fs::write(segment::path(dir.path(), *id), bytes).expect("restore old segment");
        }
    }
    let records = reopen(&dir).expect("reopen");
    assert_eq!(records, after_compaction, "no record twice, none lost");
    assert_eq!(records.iter().filter(|r| **r == base).count(), 1);
    assert_eq!(
        segment_ids(&dir)[0],
        compacted_id,
        "the replaced ones are gone"
    );
    assert_eq!(compacted(&records), compacted(&all));
}

#[test]
fn crash_before_the_rename_leaves_the_old_segments() {
    let (dir, mut s) = fresh_with(small(3));
    let mut all = Vec::new();
    for seq in 1..=8 {
        all.push(pre_prepare(seq));
        s.append(&[pre_prepare(seq)]).expect("append");
    }
    drop(s);
    // A compacted segment being made when the crash came.
    let tmp = segment::temporary_path(dir.path(), 2);
    fs::write(&tmp, b"half a segment").expect("write");
    assert_eq!(reopen(&dir).expect("reopen"), all);
    assert!(!tmp.exists());
}

#[test]
fn crash_in_the_middle_of_the_deletions_restores() {
    let (dir, mut s) = fresh_with(small(3));
    let mut all = Vec::new();
    for seq in 1..=12 {
        all.push(pre_prepare(seq));
        s.append(&[pre_prepare(seq)]).expect("append");
    }
    let before = snapshot_files(&dir);
    all.push(stable(12));
    s.append(&[stable(12)]).expect("append");
    drop(s);
    let first_left = segment_ids(&dir)[0];
    assert!(first_left > 2);
    // The oldest went, the crash came before the others did.
    for (id, bytes) in &before[1..] {
        if *id < first_left {
            fs::write(segment::path(dir.path(), *id), bytes).expect("restore");
        }
    }
    let records = reopen(&dir).expect("reopen");
    assert!(is_subsequence(&records, &all));
    assert_eq!(compacted(&records), compacted(&all));
}

#[test]
fn a_missing_middle_segment_is_corruption() {
    let (dir, mut s) = fresh_with(small(3));
    for seq in 1..=10 {
        s.append(&[pre_prepare(seq)]).expect("append");
    }
    drop(s);
    let ids = segment_ids(&dir);
    assert!(ids.len() >= 3);
    fs::remove_file(segment::path(dir.path(), ids[1])).expect("lose one");
    let err = reopen(&dir).expect_err("must fail");
    assert!(matches!(err, StorageError::Corrupted { .. }), "{err}");
    assert!(err.to_string().contains("missing"), "{err}");
}

#[test]
fn a_damaged_older_segment_is_corruption_even_at_its_end() {
    let (dir, mut s) = fresh_with(small(3));
    for seq in 1..=10 {
        s.append(&[pre_prepare(seq)]).expect("append");
    }
    drop(s);
    let path = first_segment(&dir);
    let mut bytes = fs::read(&path).expect("read");
    let (offsets, _) = entry_offsets(&bytes);
    let last = *offsets.last().expect("entries");
    // What would be a torn tail in the newest segment.
    bytes[last + ENTRY_HEADER_LEN + 3] ^= 0x40;
    fs::write(&path, &bytes).expect("write");
    let err = reopen(&dir).expect_err("must fail");
    assert!(err.to_string().contains("older than the newest"), "{err}");
    assert_eq!(fs::read(&path).expect("read"), bytes, "nothing was cut");

    // Garbage in an older segment's preallocated zeros, too.
    let (dir, mut s) = fresh_with(small(3));
    for seq in 1..=10 {
        s.append(&[pre_prepare(seq)]).expect("append");
    }
    drop(s);
    let path = first_segment(&dir);
    let mut bytes = fs::read(&path).expect("read");
    let n = bytes.len();
    bytes[n - 1] = 1;
    fs::write(&path, &bytes).expect("write");
    let err = reopen(&dir).expect_err("must fail");
    assert!(matches!(err, StorageError::Corrupted { .. }), "{err}");
}

#[test]
fn torn_tail_is_cleared() {
    let (dir, mut s) = fresh();
    s.append(&[pre_prepare(1), pre_prepare(2)]).expect("append");
    drop(s);
    let path = first_segment(&dir);
    let mut bytes = fs::read(&path).expect("read");
    let (_, end) = entry_offsets(&bytes);
    // The last three bytes of the group never reached the disk.
    bytes[end - 3..end].fill(0);
    fs::write(&path, &bytes).expect("write");
    assert_eq!(reopen(&dir).expect("reopen"), vec![pre_prepare(1)]);
    // The torn bytes are gone for good: the next append follows the valid prefix.
    let (mut s, _) = Storage::open_with(dir.path(), 1, ReplicaId(0), small(1000)).expect("open");
    s.append(&[pre_prepare(3)]).expect("append");
    drop(s);
    assert_eq!(
        reopen(&dir).expect("reopen"),
        vec![pre_prepare(1), pre_prepare(3)]
    );
}

#[test]
fn a_torn_tail_past_the_preallocated_size_is_cut() {
    // Segments of no preallocated room: each record grows its own file.
    let options = Options {
        sync: true,
        segment_bytes: 0,
    };
    let (dir, mut s) = fresh_with(options);
    s.append(&[pre_prepare(1), pre_prepare(2)]).expect("append");
    drop(s);
    assert_eq!(segment_ids(&dir), vec![1, 2]);
    let path = segment::path(dir.path(), 2);
    let len = fs::metadata(&path).expect("meta").len();
    let f = OpenOptions::new().write(true).open(&path).expect("open");
    f.set_len(len - 3).expect("truncate");
    drop(f);
    assert_eq!(reopen(&dir).expect("reopen"), vec![pre_prepare(1)]);
}

#[test]
fn full_length_last_entry_with_bad_checksum_is_torn() {
    let (dir, mut s) = fresh();
    s.append(&[pre_prepare(1), pre_prepare(2)]).expect("append");
    drop(s);
    let path = first_segment(&dir);
    let mut bytes = fs::read(&path).expect("read");
    let (offsets, end) = entry_offsets(&bytes);
    let last = *offsets.last().expect("entries");
    // A torn sector inside the last entry's payload: full length, bad checksum.
    bytes[last + ENTRY_HEADER_LEN + 3..end].fill(0xaa);
    fs::write(&path, &bytes).expect("write");
    assert_eq!(
        reopen(&dir).expect("torn, not corrupted"),
        vec![pre_prepare(1)]
    );
    let now = fs::read(&path).expect("read");
    assert!(now[last..].iter().all(|&b| b == 0), "torn tail cleared");
}

#[test]
fn bad_checksum_followed_by_valid_entries_is_corruption() {
    let (dir, mut s) = fresh();
    s.append(&[pre_prepare(1), pre_prepare(2), pre_prepare(3)])
        .expect("append");
    drop(s);
    let path = first_segment(&dir);
    let mut bytes = fs::read(&path).expect("read");
    let second = entry_offsets(&bytes).0[1];
    bytes[second + ENTRY_HEADER_LEN + 5] ^= 0x10;
    fs::write(&path, &bytes).expect("write");
    let err = reopen(&dir).expect_err("must fail");
    assert!(matches!(err, StorageError::Corrupted { .. }), "{err}");
    assert!(err.to_string().contains("checksum"), "{err}");
    // Nothing was cut.
    assert_eq!(fs::read(&path).expect("read"), bytes);
}

#[test]
fn flipped_bit_in_a_length_is_corruption_not_a_torn_tail() {
    let (dir, mut s) = fresh();
    s.append(&[pre_prepare(1), pre_prepare(2), pre_prepare(3)])
        .expect("append");
    drop(s);
    let path = first_segment(&dir);
    let mut bytes = fs::read(&path).expect("read");
    let second = entry_offsets(&bytes).0[1];
    // The length now points far past the end of the file.
    bytes[second + 2] ^= 0x01;
    fs::write(&path, &bytes).expect("write");
    let err = reopen(&dir).expect_err("must fail");
    assert!(
        matches!(err, StorageError::Corrupted { offset, .. } if offset == second as u64),
        "{err}"
    );
}

/// Writes raw entry bytes where the next entry of `s` goes.
fn write_raw(s: &mut Storage, bytes: &[u8]) {
    let file = &mut s.active.file;
    file.seek(SeekFrom::Start(s.active.len)).expect("seek");
    file.write_all(bytes).expect("raw write");
    s.active.len += bytes.len() as u64;
}

#[test]
fn checksummed_but_undecodable_entry_is_corruption() {
    let (_dir, mut s) = fresh();
    let payload = [0xffu8; 7];
    let mut head = [0u8; ENTRY_HEADER_LEN];
    head[..4].copy_from_slice(&7u32.to_le_bytes());
    head[4..8].copy_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    let head_crc = crc32fast::hash(&head[..8]);
    head[8..].copy_from_slice(&head_crc.to_le_bytes());
    write_raw(&mut s, &head);
    write_raw(&mut s, &payload);
    drop(s);
    let err = reopen(&_dir).expect_err("must fail");
    assert!(err.to_string().contains("undecodable"), "{err}");
}

#[test]
fn writer_refuses_what_the_reader_would_refuse() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = small(1000);
    Storage::init_with(dir.path(), 1, ReplicaId(0), &options).expect("init");
    let limit = 200;
    let open = |limit| Storage::open_with_limit(dir.path(), 1, ReplicaId(0), options, limit);
    let (mut s, _) = open(limit).expect("open");
    s.append(&[pre_prepare(1)]).expect("small record");
    let big = checkpoint_of(2, limit + 1);
    let err = s
        .append(&[pre_prepare(2), big.clone()])
        .expect_err("above the limit");
    assert!(
        matches!(err, StorageError::EntryTooLarge { max, .. } if max == limit),
        "{err}"
    );
    drop(s);
    // Nothing of the refused group was written; the log still opens.
    let (_, records) = open(limit).expect("reopen");
    assert_eq!(records, vec![pre_prepare(1)]);

    // The reader, with the same limit, refuses such an entry.
    let (mut s, _) = open(ENTRY_LEN_MAX).expect("open");
    s.append(&[pre_prepare(3)]).expect("small");
    let mut bytes = Vec::new();
    segment::encode_entry(&big, &mut bytes, ENTRY_LEN_MAX).expect("encodes under the real limit");
    write_raw(&mut s, &bytes);
    s.append(&[pre_prepare(4)]).expect("small");
    drop(s);
    let err = open(limit).err().expect("must fail");
    assert!(err.to_string().contains("exceeds the limit"), "{err}");
}

#[test]
fn writer_refusal_holds_for_compaction_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    Storage::init_with(dir.path(), 1, ReplicaId(0), &small(10)).expect("init");
    let (mut s, _) =
        Storage::open_with_limit(dir.path(), 1, ReplicaId(0), small(10), 100).expect("open");
    let err = s.append(&[checkpoint_of(4, 500)]).expect_err("too large");
    assert!(matches!(err, StorageError::EntryTooLarge { .. }), "{err}");
    assert!(list(dir.path()).expect("list").temporaries.is_empty());
}

#[test]
fn flipped_bit_is_corruption() {
    let (dir, mut s) = fresh();
    s.append(&[pre_prepare(1), pre_prepare(2)]).expect("append");
    drop(s);
    let path = first_segment(&dir);
    let mut bytes = fs::read(&path).expect("read");
    bytes[HEADER_LEN + ENTRY_HEADER_LEN + 5] ^= 0x10;
    fs::write(&path, bytes).expect("write");
    let err = reopen(&dir).expect_err("must fail");
    assert!(matches!(err, StorageError::Corrupted { .. }), "{err}");
    assert!(err.to_string().contains("checksum"));
}

#[test]
fn other_replica_garbage_or_old_formats_are_refused() {
    let (dir, s) = fresh();
    drop(s);
    let err = Storage::open(dir.path(), 1, ReplicaId(2))
        .err()
        .expect("other replica");
    assert!(matches!(err, StorageError::Corrupted { .. }), "{err}");
    let path = first_segment(&dir);
    let good = fs::read(&path).expect("read");
    fs::write(&path, b"hello").expect("write");
    assert!(matches!(reopen(&dir), Err(StorageError::Corrupted { .. })));
    fs::write(&path, &good).expect("write");

    // The single-file logs of older versions.
    for (magic, version) in [(b"PBFTLOG1", "v1"), (b"PBFTLOG2", "v2")] {
        let mut old = magic.to_vec();
        old.extend_from_slice(&[0; 12]);
        fs::write(dir.path().join(OLD_LOG_FILE), old).expect("write");
        let err = reopen(&dir).expect_err("old format");
        assert!(
            err.to_string().contains("older version") && err.to_string().contains(version),
            "{err}"
        );
    }
    fs::write(dir.path().join(OLD_LOG_FILE), b"not a log").expect("write");
    let err = reopen(&dir).expect_err("stray file");
    assert!(matches!(err, StorageError::Corrupted { .. }), "{err}");
    // And an old magic in a segment.
    fs::remove_file(dir.path().join(OLD_LOG_FILE)).expect("rm");
    for magic in [b"PBFTLOG2", b"PBFTLOG3"] {
        let mut old = good.clone();
        old[..8].copy_from_slice(magic);
        fs::write(&path, old).expect("write");
        let err = reopen(&dir).expect_err("old magic");
        assert!(err.to_string().contains("older version"), "{err}");
    }
}

#[test]
fn a_segment_renamed_to_another_id_is_refused() {
    let (dir, mut s) = fresh_with(small(3));
    for seq in 1..=5 {
        s.append(&[pre_prepare(seq)]).expect("append");
    }
    drop(s);
    let ids = segment_ids(&dir);
    let last = *ids.last().expect("ids");
    fs::rename(
        segment::path(dir.path(), last),
        segment::path(dir.path(), last + 1),
    )
    .expect("rename");
    let err = reopen(&dir).expect_err("must fail");
    assert!(err.to_string().contains("file name"), "{err}");
}

#[test]
fn second_opener_is_locked_out() {
    let (dir, _first) = fresh();
    assert!(matches!(
        Storage::open(dir.path(), 1, ReplicaId(0)),
        Err(StorageError::Locked { .. })
    ));
}

#[test]
fn uninitialised_directory_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = Storage::open(dir.path(), 1, ReplicaId(0))
        .err()
        .expect("empty dir");
    assert!(matches!(err, StorageError::NotInitialised { .. }), "{err}");
    assert!(err.to_string().contains("--init"), "{err}");
    assert!(segment_ids(&dir).is_empty(), "open must not create a log");
    let missing = dir.path().join("nope");
    let err = Storage::open(&missing, 1, ReplicaId(0))
        .err()
        .expect("no dir");
    assert!(matches!(err, StorageError::NotInitialised { .. }), "{err}");
    assert!(!missing.exists(), "open must not create the directory");
}

#[test]
fn marker_without_log_is_corruption() {
    let (dir, mut s) = fresh();
    s.append(&[pre_prepare(1)]).expect("append");
    drop(s);
    fs::remove_file(first_segment(&dir)).expect("lose the log");
    let err = reopen(&dir).expect_err("must fail");
    assert!(matches!(err, StorageError::Corrupted { .. }), "{err}");
    assert!(err.to_string().contains("missing"), "{err}");
}

#[test]
fn log_without_marker_is_accepted_and_the_marker_written() {
    let (dir, mut s) = fresh();
    s.append(&[pre_prepare(1)]).expect("append");
    drop(s);
    fs::remove_file(dir.path().join(INIT_MARKER)).expect("as if init was cut short");
    assert_eq!(reopen(&dir).expect("open"), vec![pre_prepare(1)]);
    assert!(dir.path().join(INIT_MARKER).exists());
}

#[test]
fn marker_of_another_replica_is_refused() {
    let (dir, s) = fresh();
    drop(s);
    fs::write(dir.path().join(INIT_MARKER), marker_text(1, ReplicaId(3))).expect("write");
    let err = reopen(&dir).expect_err("must fail");
    assert!(err.to_string().contains("init marker"), "{err}");
}

#[test]
fn init_twice_is_refused() {
    let (dir, s) = fresh();
    drop(s);
    let err = Storage::init(dir.path(), 1, ReplicaId(0)).expect_err("twice");
    assert!(
        matches!(err, StorageError::AlreadyInitialised { .. }),
        "{err}"
    );
    fs::remove_file(dir.path().join(INIT_MARKER)).expect("rm marker");
    let err = Storage::init(dir.path(), 1, ReplicaId(0)).expect_err("a segment is there");
    assert!(
        matches!(err, StorageError::AlreadyInitialised { .. }),
        "{err}"
    );
}

#[cfg(unix)]
#[test]
fn data_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, mut s) = fresh_with(small(2));
    s.append(&[snapshot(0, 1, 1)]).expect("append");
    for seq in 1..=6 {
        s.append(&[pre_prepare(seq)]).expect("append");
    }
    s.append(&[pre_prepare(7), checkpoint(6)])
        .expect("append and compact");
    let mut names: Vec<String> = segment_ids(&dir)
        .into_iter()
        .map(segment_file_name)
        .collect();
    names.extend([INIT_MARKER.to_string(), LOCK_FILE.to_string()]);
    for name in names {
        let mode = fs::metadata(dir.path().join(&name))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}: {mode:o}");
    }
    let nested = dir.path().join("a/b");
    Storage::init_with(&nested, 1, ReplicaId(0), &small(2)).expect("init");
    let mode = fs::metadata(&nested).expect("meta").permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "{mode:o}");
}

#[test]
fn decode_segment_matches_open() {
    let (dir, mut s) = fresh();
    s.append(&[pre_prepare(1), pre_prepare(2)]).expect("append");
    drop(s);
    let bytes = fs::read(first_segment(&dir)).expect("read");
    let (_, end) = entry_offsets(&bytes);
    let (records, valid) = decode_segment(&bytes, 1, ReplicaId(0), 1).expect("decode");
    assert_eq!(records, vec![pre_prepare(1), pre_prepare(2)]);
    assert_eq!(valid, end);
    let (records, valid) = decode_segment(&bytes[..end - 1], 1, ReplicaId(0), 1).expect("torn");
    assert_eq!(records, vec![pre_prepare(1)]);
    assert!(valid < end - 1);
    assert_eq!(
        &bytes[..HEADER_LEN],
        &segment_header(1, ReplicaId(0), 1)[..]
    );
}

#[test]
fn without_sync_appends_are_written_but_not_synced() {
    let options = Options {
        sync: false,
        ..small(1000)
    };
    let (dir, mut s) = fresh_with(options);
    s.append(&[pre_prepare(1)]).expect("append");
    s.append(&[pre_prepare(2)]).expect("append");
    assert_eq!(s.stats().syncs, 0);
    assert_eq!(s.stats().writes, 2);
    drop(s);
    assert_eq!(
        reopen(&dir).expect("reopen"),
        vec![pre_prepare(1), pre_prepare(2)]
    );
}

type Reports = mpsc::Receiver<Result<Progress, Arc<StorageError>>>;

fn writer(s: Storage) -> (LogWriter, Reports) {
    let (tx, rx) = mpsc::channel();
    let notify: Notify = Box::new(move |p| {
        let _ = tx.send(p);
    });
    (LogWriter::spawn(s, notify).expect("spawn"), rx)
}

fn wait_durable(reports: &Reports, position: u64) -> Progress {
    loop {
        let p = reports
            .recv_timeout(Duration::from_secs(20))
            .expect("a report in time")
            .expect("no failure");
        if p.durable >= position {
            return p;
        }
    }
}

use std::sync::Arc;

#[test]
fn log_writer_reports_positions_in_order_after_they_are_on_disk() {
    let (dir, s) = fresh_with(small(5));
    let (mut w, reports) = writer(s);
    let mut all = Vec::new();
    let mut last = 0;
    for seq in 1..=40 {
        let group = vec![pre_prepare(seq)];
        all.extend(group.clone());
        let position = w.submit(group).expect("submit");
        assert_eq!(position, seq);
        if seq % 10 == 0 {
            // What is reported durable is in the files already.
            let p = wait_durable(&reports, position);
            assert!(p.durable >= last);
            last = p.durable;
            let on_disk: Vec<Record> = snapshot_files(&dir)
                .iter()
                .flat_map(|(id, bytes)| {
                    decode_segment(bytes, 1, ReplicaId(0), *id)
                        .expect("decode")
                        .0
                })
                .collect();
            assert_eq!(on_disk, all[..p.durable as usize]);
            assert!(p.stats.syncs <= p.stats.groups);
            assert_eq!(p.stats.groups, p.durable);
        }
    }
    let s = w.close().expect("close");
    assert_eq!(s.stats().groups, 40);
    drop(s);
    assert_eq!(reopen(&dir).expect("reopen"), all);
}

#[test]
fn log_writer_covers_what_queued_meanwhile_with_one_sync() {
    let (_dir, s) = fresh_with(small(10_000));
    let (mut w, reports) = writer(s);
    for seq in 1..=200 {
        w.submit(vec![pre_prepare(seq)]).expect("submit");
    }
    let p = wait_durable(&reports, 200);
    assert_eq!(p.stats.groups, 200);
    assert!(
        p.stats.syncs < 200,
        "{} syncs for 200 groups submitted at once",
        p.stats.syncs
    );
    assert_eq!(p.stats.syncs, p.stats.writes);
}

#[test]
fn log_writer_stops_at_the_first_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    Storage::init_with(dir.path(), 1, ReplicaId(0), &small(100)).expect("init");
    let (s, _) =
        Storage::open_with_limit(dir.path(), 1, ReplicaId(0), small(100), 200).expect("open");
    let (mut w, reports) = writer(s);
    w.submit(vec![pre_prepare(1)]).expect("submit");
    wait_durable(&reports, 1);
    w.submit(vec![checkpoint_of(2, 500)]).expect("submit");
    let failure = reports
        .recv_timeout(Duration::from_secs(20))
        .expect("a report");
    let err = failure.expect_err("too large");
    assert!(matches!(*err, StorageError::EntryTooLarge { .. }), "{err}");
    // The thread stopped: later groups are refused, nothing more is reported.
    let mut refused = false;
    for seq in 3..100 {
        if w.submit(vec![pre_prepare(seq)]).is_err() {
            refused = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(refused, "submit after the failure must fail");
    assert!(matches!(w.close(), Err(StorageError::WriterStopped)));
    assert_eq!(reopen(&dir).expect("reopen"), vec![pre_prepare(1)]);
}

#[test]
fn log_writer_compacts_and_releases_the_directory_when_dropped() {
    let (dir, s) = fresh_with(small(3));
    let (mut w, reports) = writer(s);
    let mut all = Vec::new();
    for seq in 1..=12 {
        all.push(pre_prepare(seq));
        w.submit(vec![pre_prepare(seq)]).expect("submit");
    }
    all.push(stable(12));
    let position = w.submit(vec![stable(12)]).expect("submit");
    wait_durable(&reports, position);
    drop(w);
    let records = reopen(&dir).expect("the lock is free again");
    assert!(is_subsequence(&records, &all));
    assert_eq!(compacted(&records), compacted(&all));
}
