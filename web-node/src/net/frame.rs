//! Length-prefixed frames: a little-endian `u32` length, then that many bytes.
//!
//! The length is checked against the reader's limit before anything is allocated, and the body
//! must arrive within a deadline once its length has been read, so a peer can neither make us
//! allocate what it announces nor hold a half-sent frame forever.

use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame any node accepts (16 MiB): 7,000 tokens of the default model's hidden states.
pub const MAX_FRAME: usize = 16 << 20;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer announced a frame above the limit.
    #[error("frame of {len} bytes is over the {limit}-byte limit")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Limit.
        limit: usize,
    },
    /// The stream ended between frames.
    #[error("stream closed")]
    Closed,
    /// Nothing (or only part of a frame) arrived in time.
    #[error("timed out after {0:?} waiting for a frame")]
    Timeout(Duration),
    /// Transport error.
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
}

/// Bytes [`read_frame`] reserves for a payload before they arrive.
const GROW_FROM: usize = 64 << 10;

/// Frames up to this size are written in one write (the length copied in front).
const COPY_BELOW: usize = 64 << 10;

/// The slowest a frame's payload may arrive once started, in bytes per second, on top of the
/// `body` time: a 16 MiB replay over a slow circuit gets 256 s more, a small frame no more
/// than `body`.
pub const MIN_FRAME_RATE: u64 = 64 << 10;

/// Reads one frame. Waits up to `idle` for the first byte of the length, then up to `body`
/// for the rest of the length and up to `body` plus the payload's length at
/// [`MIN_FRAME_RATE`] for the payload. The payload's buffer starts at [`GROW_FROM`] bytes and
/// grows with the bytes that arrive, so an announced length alone cannot make us allocate.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: usize,
    idle: Duration,
    body: Duration,
) -> Result<Vec<u8>, FrameError> {
    let n = read_len(r, limit, idle, body).await?;
    let payload = async {
        let mut buf = Vec::with_capacity(n.min(GROW_FROM));
        (&mut *r).take(n as u64).read_to_end(&mut buf).await?;
        if buf.len() < n {
            return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        Ok(buf)
    };
    let allowed = payload_time(body, n);
    super::timeout(allowed, payload).await.ok_or(FrameError::Timeout(allowed))?
}

/// [`read_frame`] into `buf`, a buffer the caller keeps for the next frame, for answers this
/// node asked for and reads many of (part ranges): the payload is `buf[..n]`, and a buffer
/// already that large is neither allocated nor cleared again. Returns `n`. `buf` grows to
/// the announced length at once, so `limit` must be one the caller can afford.
pub async fn read_frame_into<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: usize,
    idle: Duration,
    body: Duration,
    buf: &mut Vec<u8>,
) -> Result<usize, FrameError> {
    let n = read_len(r, limit, idle, body).await?;
    if buf.len() < n {
        buf.resize(n, 0);
    }
    let allowed = payload_time(body, n);
    super::timeout(allowed, r.read_exact(&mut buf[..n])).await.ok_or(FrameError::Timeout(allowed))??;
    Ok(n)
}

/// Reads a frame's length (waiting up to `idle` for its first byte and `body` for the rest)
/// and checks it against `limit`.
async fn read_len<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: usize,
    idle: Duration,
    body: Duration,
) -> Result<usize, FrameError> {
    let mut len = [0u8; 4];
    let first = super::timeout(idle, r.read(&mut len[..1])).await.ok_or(FrameError::Timeout(idle))??;
    if first == 0 {
        return Err(FrameError::Closed);
    }
    super::timeout(body, r.read_exact(&mut len[1..])).await.ok_or(FrameError::Timeout(body))??;
    let n = u32::from_le_bytes(len) as usize;
    if n > limit {
        return Err(FrameError::TooLarge { len: n, limit });
    }
    Ok(n)
}

/// The time a payload of `n` bytes may take: `body`, plus `n` at [`MIN_FRAME_RATE`].
fn payload_time(body: Duration, n: usize) -> Duration {
    body + Duration::from_millis((n as u64).saturating_mul(1000) / MIN_FRAME_RATE)
}

/// Writes one frame and flushes it. A small frame goes out in one write; a large one as its
/// length and then its payload, rather than copying the payload behind the length.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, payload: &[u8]) -> Result<(), FrameError> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&n| n as usize <= MAX_FRAME)
        .ok_or(FrameError::TooLarge { len: payload.len(), limit: MAX_FRAME })?;
    if payload.len() > COPY_BELOW {
        w.write_all(&len.to_le_bytes()).await?;
        w.write_all(payload).await?;
    } else {
        let mut buf = Vec::with_capacity(4 + payload.len());
        buf.extend_from_slice(&len.to_le_bytes());
        buf.extend_from_slice(payload);
        w.write_all(&buf).await?;
    }
    w.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;
    use futures::StreamExt;

    const T: Duration = Duration::from_secs(1);

    #[test]
    fn round_trip_and_limits() {
        futures::executor::block_on(async {
            let mut out = Cursor::new(Vec::new());
            write_frame(&mut out, b"hello").await.unwrap();
            write_frame(&mut out, b"").await.unwrap();
            let mut r = Cursor::new(out.into_inner());
            assert_eq!(read_frame(&mut r, 16, T, T).await.unwrap(), b"hello");
            assert_eq!(read_frame(&mut r, 16, T, T).await.unwrap(), b"");
            assert!(matches!(read_frame(&mut r, 16, T, T).await, Err(FrameError::Closed)));

            // Announces 4 GiB: refused before allocating.
            let mut r = Cursor::new(vec![0xff, 0xff, 0xff, 0xff, 1, 2]);
            assert!(matches!(read_frame(&mut r, 1 << 20, T, T).await, Err(FrameError::TooLarge { .. })));
            // Truncated body.
            let mut r = Cursor::new(vec![10, 0, 0, 0, 1, 2]);
            assert!(matches!(read_frame(&mut r, 1 << 20, T, T).await, Err(FrameError::Io(_))));
        });
    }

    /// `read_frame_into` reads frames one after another into one buffer, growing it only
    /// for a longer frame, and keeps the limits of `read_frame`.
    #[test]
    fn frames_read_into_one_buffer() {
        futures::executor::block_on(async {
            let mut out = Cursor::new(Vec::new());
            write_frame(&mut out, &[1u8; 100]).await.unwrap();
            write_frame(&mut out, &[2u8; 10]).await.unwrap();
            write_frame(&mut out, &[3u8; 20]).await.unwrap();
            let mut r = Cursor::new(out.into_inner());
            let mut buf = Vec::new();
            assert_eq!(read_frame_into(&mut r, 100, T, T, &mut buf).await.unwrap(), 100);
            assert_eq!(buf, [1u8; 100]);
            assert_eq!(read_frame_into(&mut r, 100, T, T, &mut buf).await.unwrap(), 10);
            assert_eq!((&buf[..10], buf.len()), (&[2u8; 10][..], 100));
            assert!(matches!(read_frame_into(&mut r, 19, T, T, &mut buf).await, Err(FrameError::TooLarge { .. })));
            let mut r = Cursor::new(vec![10, 0, 0, 0, 1, 2]);
            assert!(matches!(read_frame_into(&mut r, 100, T, T, &mut buf).await, Err(FrameError::Io(_))));
            assert!(matches!(
                read_frame_into(&mut Cursor::new(vec![]), 100, T, T, &mut buf).await,
                Err(FrameError::Closed)
            ));
        });
    }

    /// A big frame over a slow link (here 256 KiB in 16 pieces 80 ms apart, 1.3 s) is not cut
    /// off by the 1 s `body` time: the payload gets time in proportion to its length.
    #[test]
    fn big_frames_get_time_in_proportion_to_their_length() {
        use futures::TryStreamExt;
        let payload = vec![7u8; 256 << 10];
        let mut framed = (payload.len() as u32).to_le_bytes().to_vec();
        framed.extend_from_slice(&payload);
        let pieces: Vec<Vec<u8>> = framed.chunks(16 << 10).map(<[u8]>::to_vec).collect();
        let slow = futures::stream::iter(pieces)
            .then(|p| async move {
                futures_timer::Delay::new(Duration::from_millis(80)).await;
                Ok::<_, std::io::Error>(p)
            })
            .into_async_read();
        let mut slow = std::pin::pin!(slow);
        let got = futures::executor::block_on(read_frame(&mut slow, 1 << 20, T, T)).unwrap();
        assert_eq!(got, payload);
    }
}
