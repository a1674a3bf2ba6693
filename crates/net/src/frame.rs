//! Length-delimited frames on a QUIC stream: a 4-byte big-endian payload
//! length, then the payload.

use bytes::{Bytes, BytesMut};

/// Bytes in the length prefix.
pub(crate) const LEN_PREFIX: usize = 4;

/// Initial read buffer for a frame: the buffer grows with the bytes that
/// actually arrive, never to the announced length up front.
const INITIAL_BUF: usize = 64 * 1024;

/// Why a frame could not be read.
#[derive(Debug)]
pub(crate) enum FrameError {
    /// The announced length exceeds the maximum.
    TooLarge { len: usize, max: usize },
    /// The stream ended inside a frame.
    Truncated,
    /// The stream or connection failed.
    Stream(String),
}

/// Reads the next frame. `Ok(None)` when the peer finished the stream at a
/// frame boundary.
pub(crate) async fn read_frame(
    stream: &mut quinn::RecvStream,
    max: usize,
) -> Result<Option<Bytes>, FrameError> {
    let mut header = [0u8; LEN_PREFIX];
    match stream.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(FrameError::Truncated),
        Err(quinn::ReadExactError::ReadError(e)) => return Err(FrameError::Stream(e.to_string())),
    }
    let len = u32::from_be_bytes(header) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut buf = BytesMut::new();
    while buf.len() < len {
        let remaining = len - buf.len();
        match stream.read_chunk(remaining, true).await {
            Ok(Some(chunk)) => {
                if buf.is_empty() && chunk.bytes.len() == len {
                    // The whole payload in one chunk: no copy.
                    return Ok(Some(chunk.bytes));
                }
                if buf.capacity() == 0 {
                    buf.reserve(len.min(INITIAL_BUF));
                }
                buf.extend_from_slice(&chunk.bytes);
            }
            Ok(None) => return Err(FrameError::Truncated),
            Err(e) => return Err(FrameError::Stream(e.to_string())),
        }
    }
    Ok(Some(buf.freeze()))
}

/// Writes one frame (the caller has checked it against `max_frame_len`).
pub(crate) async fn write_frame(
    stream: &mut quinn::SendStream,
    frame: Bytes,
) -> Result<(), String> {
    let len = u32::try_from(frame.len()).map_err(|_| "frame longer than u32::MAX".to_string())?;
    stream
        .write_all(&len.to_be_bytes())
        .await
        .map_err(|e| e.to_string())?;
    if !frame.is_empty() {
        stream.write_chunk(frame).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}
