//! Length-delimited frames on a QUIC stream: a 4-byte big-endian payload
//! length, then the payload.
//!
//! [`read_frame`] is written against [`FrameSource`] (a QUIC receive stream in
//! the node; an in-memory source for tests and fuzzing, see
//! [`crate::fuzzing`]), so the code that parses untrusted bytes is the same
//! in both. It never allocates for the announced length up front: at most
//! [`INITIAL_BUF`] before any payload byte arrived, then as bytes arrive.

use bytes::{Bytes, BytesMut};

/// Bytes in the length prefix.
pub(crate) const LEN_PREFIX: usize = 4;

/// Initial read buffer for a frame: the buffer grows with the bytes that
/// actually arrive, never to the announced length up front.
const INITIAL_BUF: usize = 64 * 1024;

/// Why a frame could not be read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// The announced length exceeds the maximum.
    TooLarge { len: usize, max: usize },
    /// The stream ended inside a frame.
    Truncated,
    /// The stream or connection failed.
    Stream(String),
}

/// How reading the length prefix ended.
pub(crate) enum HeaderRead {
    /// All four bytes were read.
    Complete,
    /// The stream ended after `n` (< 4) bytes.
    FinishedEarly(usize),
}

/// Where frames are read from.
pub(crate) trait FrameSource {
    /// Fills `buf` entirely, or reports how many bytes arrived before the end.
    async fn read_header(&mut self, buf: &mut [u8; LEN_PREFIX]) -> Result<HeaderRead, FrameError>;
    /// The next chunk of at most `max` bytes, in order; `None` at the end.
    async fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>, FrameError>;
}

impl FrameSource for quinn::RecvStream {
    async fn read_header(&mut self, buf: &mut [u8; LEN_PREFIX]) -> Result<HeaderRead, FrameError> {
        match self.read_exact(buf).await {
            Ok(()) => Ok(HeaderRead::Complete),
            Err(quinn::ReadExactError::FinishedEarly(n)) => Ok(HeaderRead::FinishedEarly(n)),
            Err(quinn::ReadExactError::ReadError(e)) => Err(FrameError::Stream(e.to_string())),
        }
    }

    async fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>, FrameError> {
        match quinn::RecvStream::read_chunk(self, max, true).await {
            Ok(chunk) => Ok(chunk.map(|c| c.bytes)),
            Err(e) => Err(FrameError::Stream(e.to_string())),
        }
    }
}

/// Reads the next frame. `Ok(None)` when the peer finished the stream at a
/// frame boundary.
pub(crate) async fn read_frame(
    stream: &mut impl FrameSource,
    max: usize,
) -> Result<Option<Bytes>, FrameError> {
    let mut header = [0u8; LEN_PREFIX];
    match stream.read_header(&mut header).await? {
        HeaderRead::Complete => {}
        HeaderRead::FinishedEarly(0) => return Ok(None),
        HeaderRead::FinishedEarly(_) => return Err(FrameError::Truncated),
    }
    let len = u32::from_be_bytes(header) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut buf = BytesMut::new();
    while buf.len() < len {
        let remaining = len - buf.len();
        match stream.read_chunk(remaining).await? {
            Some(chunk) => {
                if chunk.len() > remaining {
                    return Err(FrameError::Stream(format!(
                        "the stream returned {} bytes when at most {remaining} were asked for",
                        chunk.len()
                    )));
                }
                if buf.is_empty() && chunk.len() == len {
                    // The whole payload in one chunk: no copy.
                    return Ok(Some(chunk));
                }
                if buf.capacity() == 0 {
                    buf.reserve(len.min(INITIAL_BUF));
                }
                buf.extend_from_slice(&chunk);
            }
            None => return Err(FrameError::Truncated),
        }
    }
    Ok(Some(buf.freeze()))
}

/// Payloads up to this size are copied next to their length prefix; larger
/// ones go out as chunks of their own, uncopied.
const COPY_MAX: usize = 4 * 1024;
/// A gathered write holds at most this many frames...
pub(crate) const GATHER_MAX_FRAMES: usize = 256;
/// ...and stops taking more once it holds this many bytes.
pub(crate) const GATHER_MAX_BYTES: usize = 256 * 1024;

/// Frames gathered for one write on a stream: the length prefixes and small
/// payloads copied together, large payloads as chunks of their own, so a
/// queue of frames costs one `write_all_chunks` (one wake-up of the
/// connection) instead of two writes per frame.
#[derive(Default)]
pub(crate) struct Gather {
    chunks: Vec<Bytes>,
    copied: BytesMut,
    frames: usize,
    bytes: usize,
}

impl Gather {
    /// Appends one frame (the caller has checked it against `max_frame_len`).
    pub(crate) fn push(&mut self, frame: Bytes) -> Result<(), String> {
        let len = frame.len();
        let prefix = u32::try_from(len).map_err(|_| "frame longer than u32::MAX".to_string())?;
        self.copied.extend_from_slice(&prefix.to_be_bytes());
        if len <= COPY_MAX {
            self.copied.extend_from_slice(&frame);
        } else {
            self.chunks.push(self.copied.split().freeze());
            self.chunks.push(frame);
        }
        self.frames += 1;
        self.bytes += LEN_PREFIX + len;
        Ok(())
    }

    /// Whether the write should go out without taking more frames.
    pub(crate) fn is_full(&self) -> bool {
        self.frames >= GATHER_MAX_FRAMES || self.bytes >= GATHER_MAX_BYTES
    }

    /// The gathered bytes as chunks, in order; the gather is empty again.
    fn take_chunks(&mut self) -> Vec<Bytes> {
        let mut chunks = std::mem::take(&mut self.chunks);
        if !self.copied.is_empty() {
            chunks.push(self.copied.split().freeze());
        }
        chunks.retain(|c| !c.is_empty());
        self.frames = 0;
        self.bytes = 0;
        chunks
    }

    /// Writes everything gathered with one `write_all_chunks`; returns how
    /// many frames went out.
    pub(crate) async fn write(&mut self, stream: &mut quinn::SendStream) -> Result<u64, String> {
        let frames = self.frames as u64;
        let mut chunks = self.take_chunks();
        stream
            .write_all_chunks(&mut chunks)
            .await
            .map_err(|e| e.to_string())?;
        Ok(frames)
    }
}

/// An in-memory [`FrameSource`]: `bytes`, delivered in chunks whose sizes
/// are taken in turn from `chunk_sizes` (cycled; a 0 means "as much as
/// asked for"), never more than the reader asks for.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) struct MemorySource<'a> {
    bytes: &'a [u8],
    chunk_sizes: &'a [u8],
    next_size: usize,
}

#[cfg(any(test, feature = "fuzzing"))]
impl<'a> MemorySource<'a> {
    pub(crate) fn new(bytes: &'a [u8], chunk_sizes: &'a [u8]) -> Self {
        MemorySource {
            bytes,
            chunk_sizes,
            next_size: 0,
        }
    }
}

#[cfg(any(test, feature = "fuzzing"))]
impl FrameSource for MemorySource<'_> {
    async fn read_header(&mut self, buf: &mut [u8; LEN_PREFIX]) -> Result<HeaderRead, FrameError> {
        if self.bytes.len() < LEN_PREFIX {
            let n = self.bytes.len();
            self.bytes = &[];
            return Ok(HeaderRead::FinishedEarly(n));
        }
        buf.copy_from_slice(&self.bytes[..LEN_PREFIX]);
        self.bytes = &self.bytes[LEN_PREFIX..];
        Ok(HeaderRead::Complete)
    }

    async fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>, FrameError> {
        if self.bytes.is_empty() {
            return Ok(None);
        }
        let size = match self.chunk_sizes {
            [] => max,
            sizes => {
                let s = sizes[self.next_size % sizes.len()];
                self.next_size = self.next_size.wrapping_add(1);
                if s == 0 {
                    max
                } else {
                    usize::from(s) * 64
                }
            }
        };
        let n = size.min(max).min(self.bytes.len());
        let (chunk, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(Some(Bytes::copy_from_slice(chunk)))
    }
}

/// Runs `future` to completion when it never waits (an in-memory source).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn block_on_ready<F: std::future::Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(out) => Some(out),
        std::task::Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(bytes: &[u8], sizes: &[u8], max: usize) -> Vec<Result<Option<Bytes>, FrameError>> {
        let mut source = MemorySource::new(bytes, sizes);
        let mut out = Vec::new();
        loop {
            let r = block_on_ready(read_frame(&mut source, max)).expect("never waits");
            let stop = !matches!(r, Ok(Some(_)));
            out.push(r);
            if stop {
                return out;
            }
        }
    }

    fn framed(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            out.extend_from_slice(&(p.len() as u32).to_be_bytes());
            out.extend_from_slice(p);
        }
        out
    }

    #[test]
    fn frames_in_any_chunking() {
        let big = vec![7u8; 1000];
        let bytes = framed(&[b"abc", b"", &big]);
        for sizes in [&[][..], &[1], &[0], &[1, 3, 0]] {
            let got = frames(&bytes, sizes, 4096);
            assert_eq!(
                got,
                vec![
                    Ok(Some(Bytes::from_static(b"abc"))),
                    Ok(Some(Bytes::new())),
                    Ok(Some(Bytes::from(big.clone()))),
                    Ok(None)
                ],
                "{sizes:?}"
            );
        }
    }

    #[test]
    fn gathered_frames_are_the_framed_bytes_in_order() {
        let big = Bytes::from(vec![9u8; COPY_MAX + 1]);
        let payloads = [
            Bytes::from_static(b"abc"),
            Bytes::new(),
            big.clone(),
            Bytes::from_static(b"after the big one"),
            big.clone(),
        ];
        let mut gather = Gather::default();
        for p in &payloads {
            assert!(!gather.is_full());
            gather.push(p.clone()).expect("push");
        }
        let chunks = gather.take_chunks();
        assert_eq!(gather.take_chunks(), Vec::<Bytes>::new(), "empty again");
        assert!(
            chunks.iter().any(|c| c.as_ptr() == big.as_ptr()),
            "a large payload is passed on, not copied"
        );
        let bytes: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let refs: Vec<&[u8]> = payloads.iter().map(|p| &p[..]).collect();
        assert_eq!(bytes, framed(&refs));
        let mut expected: Vec<_> = payloads.iter().map(|p| Ok(Some(p.clone()))).collect();
        expected.push(Ok(None));
        assert_eq!(frames(&bytes, &[], 1 << 20), expected);
    }

    #[test]
    fn a_gather_is_full_at_its_frame_or_byte_bound() {
        let mut by_count = Gather::default();
        for _ in 0..GATHER_MAX_FRAMES {
            assert!(!by_count.is_full());
            by_count.push(Bytes::from_static(b"x")).expect("push");
        }
        assert!(by_count.is_full());
        let mut by_size = Gather::default();
        by_size
            .push(Bytes::from(vec![0u8; GATHER_MAX_BYTES]))
            .expect("push");
        assert!(by_size.is_full());
    }

    #[test]
    fn oversized_and_truncated_frames_are_errors() {
        let bytes = framed(&[&[1; 100]]);
        assert_eq!(
            frames(&bytes, &[], 99),
            vec![Err(FrameError::TooLarge { len: 100, max: 99 })]
        );
        assert_eq!(
            frames(&bytes[..50], &[], 1000),
            vec![Err(FrameError::Truncated)]
        );
        assert_eq!(
            frames(&bytes[..2], &[], 1000),
            vec![Err(FrameError::Truncated)]
        );
    }
}
