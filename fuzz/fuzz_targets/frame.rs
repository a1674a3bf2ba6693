//! Wire frames: the node's frame reader (pbft-net) on a fuzzed byte stream,
//! delivered in fuzzed chunk sizes. The first byte picks how many of the
//! following bytes are chunk sizes; the rest is the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// The node's frame limit is 16 MiB; a smaller one here reaches the
/// too-large path with short inputs as well.
const MAX_FRAMES: [usize; 2] = [16 << 20, 1000];

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 8).min(rest.len());
    let (sizes, stream) = rest.split_at(n);
    for max in MAX_FRAMES {
        let (frames, end) = pbft_net::fuzzing::read_frames(stream, sizes, max);
        let read: usize = frames.iter().map(|f| 4 + f.len()).sum();
        assert!(read <= stream.len());
        assert!(frames.iter().all(|f| f.len() <= max));
        if end.is_ok() {
            assert_eq!(read, stream.len(), "a clean end is at a frame boundary");
        }
    }
});
