//! Measures how much memory `Message::decode` allocates per input byte for
//! the worst shape found by reading the message types (empty batches in a
//! NEW-VIEW: 1 byte on the wire, a 24-byte `Vec` in memory), at the node's
//! 16 MiB frame limit. Before the batch list was bounded while decoding
//! (`NEW_VIEW_BATCHES_MAX`), the peak was 767 MiB; now decoding stops at the
//! bound:
//!
//! ```sh
//! cargo run --release --manifest-path fuzz/Cargo.toml --example amplification
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn main() {
    const FRAME_MAX: usize = 16 << 20;
    let seed = pbft_fuzz::seed_messages(&[]);
    let Some(pbft_core::Message::NewView(nv, _)) = seed
        .iter()
        .find(|m| matches!(m, pbft_core::Message::NewView(..)))
        .cloned()
    else {
        unreachable!("the seeds hold a NEW-VIEW")
    };
    // A NEW-VIEW whose batch list is `count` empty batches.
    let head = pbft_core::Message::NewView(nv, vec![]).encode();
    let head = &head[..head.len() - 1]; // drop the empty list's length
    let count = FRAME_MAX - head.len() - 5;
    let mut bytes = head.to_vec();
    varint(count as u64, &mut bytes);
    bytes.resize(bytes.len() + count, 0);
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let decoded = pbft_core::Message::decode(&bytes);
    let peak = PEAK.load(Ordering::Relaxed) - before;
    let held = LIVE.load(Ordering::Relaxed) - before;
    println!(
        "NEW-VIEW with {count} empty batches: frame {} bytes, {}, decode peak {} KiB ({:.3}x), held {} KiB",
        bytes.len(),
        match &decoded {
            Ok(_) => "decoded".to_string(),
            Err(e) => format!("refused ({e})"),
        },
        peak >> 10,
        peak as f64 / bytes.len() as f64,
        held >> 10,
    );
    drop(decoded);
}
