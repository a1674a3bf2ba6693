//! The record log reader (pbft-storage): fuzzed bytes as the only segment of
//! an initialised data directory, opened with `Storage::open` (which also cuts
//! a torn tail), and the pure `decode_segment` on the same bytes. Unless the
//! input starts with the log magic, a valid segment header for the expected
//! cluster and replica is put in front so the fuzzer works on entries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pbft_core::ReplicaId;
use pbft_storage::{decode_segment, segment_file_name, segment_header, Storage, INIT_MARKER};
use std::sync::OnceLock;

const REPLICA: ReplicaId = ReplicaId(0);
/// The segment `Storage::init` makes.
const SEGMENT: u64 = 1;

fuzz_target!(|data: &[u8]| {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = pbft_fuzz::scratch("record-log");
        let _ = std::fs::remove_dir_all(&dir);
        Storage::init(&dir, pbft_fuzz::CLUSTER, REPLICA).expect("init");
        dir
    });
    let mut bytes = Vec::new();
    if !data.starts_with(b"PBFTLOG") {
        bytes.extend_from_slice(&segment_header(pbft_fuzz::CLUSTER, REPLICA, SEGMENT));
    }
    bytes.extend_from_slice(data);
    let decoded = decode_segment(&bytes, pbft_fuzz::CLUSTER, REPLICA, SEGMENT);
    if let Ok((_, valid)) = &decoded {
        assert!(*valid <= bytes.len());
    }
    assert!(dir.join(INIT_MARKER).exists());
    std::fs::write(dir.join(segment_file_name(SEGMENT)), &bytes).expect("write segment");
    let opened = Storage::open(dir, pbft_fuzz::CLUSTER, REPLICA).map(|(_, r)| r);
    match (&decoded, &opened) {
        (Ok((records, _)), Ok(opened)) => assert_eq!(records, opened),
        (Err(_), Err(_)) => {}
        _ => panic!("decode_segment and open disagree: {decoded:?} vs {opened:?}"),
    }
});
