//! The wire form: `u32` big-endian body length, then a postcard-encoded body of at most a
//! configured size. Decoding never trusts the length before checking it against the cap.

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::{Read, Write};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The peer announced a frame over the cap.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// The body is not a valid message.
    #[error("malformed frame: {0}")]
    Malformed(#[from] postcard::Error),
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed mid-frame")]
    Truncated,
    /// The peer went quiet in the middle of a frame.
    #[error("frame not completed within {0:?}")]
    Stalled(Duration),
}

/// Encodes `message` as one frame, length prefix included.
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, FrameError> {
    let mut buf = vec![0u8; HEADER_LEN];
    let mut buf = postcard::to_extend(message, std::mem::take(&mut buf))?;
    let len = u32::try_from(buf.len() - HEADER_LEN).map_err(|_| FrameError::TooLarge {
        len: buf.len(),
        max: u32::MAX as usize,
    })?;
    buf[..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    Ok(buf)
}

/// Decodes one frame body (without its length prefix).
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    Ok(postcard::from_bytes(body)?)
}

/// The body length a frame's header announces, refused past `max`.
pub fn check_len(header: [u8; HEADER_LEN], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > max {
        Err(FrameError::TooLarge { len, max })
    } else {
        Ok(len)
    }
}

/// Reads one frame body from a blocking reader (the reader's own timeouts apply).
pub fn read_blocking(r: &mut impl Read, max: usize) -> Result<Vec<u8>, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    r.read_exact(&mut header)?;
    let len = check_len(header, max)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => FrameError::Truncated,
        _ => FrameError::Io(e),
    })?;
    Ok(body)
}

/// Writes one encoded frame to a blocking writer.
pub fn write_blocking(w: &mut impl Write, frame: &[u8]) -> Result<(), FrameError> {
    w.write_all(frame)?;
    w.flush()?;
    Ok(())
}

/// How the wait for a frame's header ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Start {
    /// The peer closed the connection cleanly between frames.
    Closed,
    /// Nothing arrived within the idle limit (no byte was consumed: reading again is safe).
    Idle,
    /// A frame of this many body bytes (checked against the cap) follows.
    Frame(usize),
}

/// Reads one frame's header, waiting at most `idle` for it to start and `stall` for the
/// rest of it. The body is left unread, so the caller can decide whether it has room for it.
pub async fn read_header(
    r: &mut (impl AsyncRead + Unpin),
    max: usize,
    idle: Duration,
    stall: Duration,
) -> Result<Start, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    let first = match tokio::time::timeout(idle, r.read(&mut header)).await {
        Err(_) => return Ok(Start::Idle),
        Ok(Ok(0)) => return Ok(Start::Closed),
        Ok(Ok(n)) => n,
        Ok(Err(e)) => return Err(e.into()),
    };
    match tokio::time::timeout(stall, r.read_exact(&mut header[first..])).await {
        Err(_) => Err(FrameError::Stalled(stall)),
        Ok(Err(e)) => Err(mid_frame(e)),
        Ok(Ok(_)) => check_len(header, max).map(Start::Frame),
    }
}

/// Reads a body of `len` bytes, which must arrive within `stall`.
pub async fn read_body(
    r: &mut (impl AsyncRead + Unpin),
    len: usize,
    stall: Duration,
) -> Result<Vec<u8>, FrameError> {
    let mut body = vec![0u8; len];
    match tokio::time::timeout(stall, r.read_exact(&mut body)).await {
        Err(_) => Err(FrameError::Stalled(stall)),
        Ok(Err(e)) => Err(mid_frame(e)),
        Ok(Ok(_)) => Ok(body),
    }
}

fn mid_frame(e: std::io::Error) -> FrameError {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => FrameError::Truncated,
        _ => FrameError::Io(e),
    }
}

/// Reads one frame body, waiting at most `idle` for it to start and `stall` for it to finish.
/// Returns `Ok(None)` when the peer closed cleanly between frames or stayed idle too long.
pub async fn read_async(
    r: &mut (impl AsyncRead + Unpin),
    max: usize,
    idle: Duration,
    stall: Duration,
) -> Result<Option<Vec<u8>>, FrameError> {
    match read_header(r, max, idle, stall).await? {
        Start::Closed | Start::Idle => Ok(None),
        Start::Frame(len) => read_body(r, len, stall).await.map(Some),
    }
}

/// Writes `frame` whole; a peer that takes none of it for `stall` is gone (a client that stops
/// reading its answers must not hold the memory they take forever).
pub async fn write_async(
    w: &mut (impl AsyncWrite + Unpin),
    mut frame: &[u8],
    stall: Duration,
) -> Result<(), FrameError> {
    while !frame.is_empty() {
        match tokio::time::timeout(stall, w.write(frame)).await {
            Err(_) => return Err(FrameError::Stalled(stall)),
            Ok(Err(e)) => return Err(e.into()),
            Ok(Ok(0)) => return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into()),
            Ok(Ok(n)) => frame = &frame[n..],
        }
    }
    match tokio::time::timeout(stall, w.flush()).await {
        Err(_) => Err(FrameError::Stalled(stall)),
        Ok(r) => Ok(r?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::protocol::{CallRequest, Request, RequestFrame};

    fn sample() -> RequestFrame {
        RequestFrame {
            id: 7,
            body: Request::Call(CallRequest {
                call_id: "cli-1".into(),
                module: "echo".into(),
                method: "shout".into(),
                args: b"\"hi\"".to_vec(),
                timeout_ms: 1000,
            }),
        }
    }

    #[test]
    fn round_trip_blocking() {
        let frame = encode(&sample()).unwrap();
        let body = read_blocking(&mut frame.as_slice(), 1024).unwrap();
        let back: RequestFrame = decode(&body).unwrap();
        assert_eq!(back, sample());
    }

    #[test]
    fn oversized_and_truncated_frames_are_errors() {
        let frame = encode(&sample()).unwrap();
        assert!(matches!(
            read_blocking(&mut frame.as_slice(), 4),
            Err(FrameError::TooLarge { .. })
        ));
        let cut = &frame[..frame.len() - 2];
        assert!(matches!(
            read_blocking(&mut &cut[..], 1024),
            Err(FrameError::Truncated)
        ));
        assert!(matches!(
            decode::<RequestFrame>(&[0xff, 0xff, 0xff]),
            Err(FrameError::Malformed(_))
        ));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn async_reader_handles_eof_cap_and_stall() {
        let frame = encode(&sample()).unwrap();
        let got = read_async(
            &mut frame.as_slice(),
            1024,
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        assert_eq!(decode::<RequestFrame>(&got.unwrap()).unwrap(), sample());

        let empty: &[u8] = &[];
        assert!(read_async(
            &mut &empty[..],
            1024,
            Duration::from_secs(1),
            Duration::from_secs(1)
        )
        .await
        .unwrap()
        .is_none());

        let cut = &frame[..frame.len() - 1];
        let r = read_async(
            &mut &cut[..],
            1024,
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
        .await;
        assert!(matches!(r, Err(FrameError::Truncated)), "{r:?}");

        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, &[0, 0, 0, 9, 1])
            .await
            .unwrap();
        let r = read_async(
            &mut server,
            1024,
            Duration::from_secs(1),
            Duration::from_millis(20),
        )
        .await;
        assert!(matches!(r, Err(FrameError::Stalled(_))), "{r:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_header_read_again_after_idle_loses_nothing_and_a_stuck_peer_stalls_writes() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let quick = Duration::from_millis(20);
        assert_eq!(
            read_header(&mut server, 1024, quick, quick).await.unwrap(),
            Start::Idle
        );
        let frame = encode(&sample()).unwrap();
        let (body_len, to_send) = (frame.len() - HEADER_LEN, frame.clone());
        let sending = tokio::spawn(async move {
            tokio::io::AsyncWriteExt::write_all(&mut client, &to_send)
                .await
                .unwrap();
            client
        });
        let second = Duration::from_secs(1);
        assert_eq!(
            read_header(&mut server, 1024, second, second)
                .await
                .unwrap(),
            Start::Frame(body_len)
        );
        let body = read_body(&mut server, body_len, second).await.unwrap();
        assert_eq!(decode::<RequestFrame>(&body).unwrap(), sample());
        let client = sending.await.unwrap();
        drop(client);
        assert_eq!(
            read_header(&mut server, 1024, second, second)
                .await
                .unwrap(),
            Start::Closed
        );

        // Nobody reads the other end: the write stalls once the pipe is full.
        let (mut writer, _reader) = tokio::io::duplex(64);
        let r = write_async(&mut writer, &[7u8; 1000], quick).await;
        assert!(matches!(r, Err(FrameError::Stalled(_))), "{r:?}");
    }
}
