//! The key-value store's decoders of untrusted bytes: an operation (from a
//! client request, executed by every replica), a result (decoded by clients
//! from replicas' replies), a store snapshot and a checkpoint snapshot
//! (state transfer). Decoded operations are executed against a small store.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pbft_app::kv::{KvOp, KvResult, KvStore};
use pbft_app::StateMachine;

fuzz_target!(|data: &[u8]| {
    if let Ok(op) = KvOp::decode(data) {
        assert_eq!(KvOp::decode(&op.encode()).as_ref(), Ok(&op));
        let mut store = KvStore::new();
        for op in [
            KvOp::Put {
                key: b"a".to_vec(),
                value: b"1".to_vec(),
            },
            KvOp::Put {
                key: b"m".to_vec(),
                value: b"2".to_vec(),
            },
        ] {
            store.execute(&op);
        }
        let read = store.is_read_only(data).then(|| store.query(data));
        let result = store.apply(data);
        if let Some(read) = read {
            assert_eq!(read, result, "a read-only op answers the same either way");
        }
        assert!(KvResult::decode(&result).is_ok());
    }
    if let Ok(result) = KvResult::decode(data) {
        assert_eq!(KvResult::decode(&result.encode()).as_ref(), Ok(&result));
    }
    let mut store = KvStore::new();
    if store.restore(data).is_ok() {
        let mut again = KvStore::new();
        again
            .restore(&store.snapshot())
            .expect("a snapshot restores");
        assert_eq!(again.digest(), store.digest());
    }
    // A state's pages (cut at 0xff bytes): the image's header and client
    // pages, and the store's own pages, decode or are refused.
    let pages: Vec<pbft_app::Page> = data
        .split(|b| *b == 0xff)
        .map(|p| pbft_app::Page::new(p.to_vec()))
        .collect();
    let image = pbft_core::checkpoint::StateImage::from_pages(pages.clone());
    if let Ok((_, app_pages)) = image.split() {
        let _ = KvStore::new().restore_pages(app_pages);
    }
    let _ = KvStore::new().restore_pages(&pages);
});
