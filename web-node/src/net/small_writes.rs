//! A stream-muxer wrapper that sends at most [`MAX_WRITE`] bytes per message, for WebRTC.
//!
//! libp2p's WebRTC streams (native `libp2p-webrtc` and the browser's `libp2p-webrtc-websys`)
//! frame writes into messages and may coalesce two of them into one data-channel send; the
//! peers negotiate `max-message-size: 16384`, so a burst of more than about 8 KiB (a relay
//! copying a circuit in 8 KiB reads, or a prefill's hidden states) fails with "outbound packet
//! larger than maximum message size" and closes the circuit (rust-libp2p issue 6557). And the
//! native side reads each message into an 8192-byte buffer, so a browser message above that
//! fails there with "Short buffer (size: 8192) to be filled". Wrapping the connection's muxer
//! flushes before each write and caps each write, so every message goes out alone and small.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures::{AsyncRead, AsyncWrite};
use libp2p::core::muxing::{StreamMuxer, StreamMuxerEvent};

/// Largest write handed to the inner stream at once: with the message's protobuf framing it
/// stays under the 8192-byte read buffer of the native WebRTC data channel.
pub const MAX_WRITE: usize = 8000;

/// Wraps a muxer so that its substreams write small, flushed messages.
pub struct SmallWrites<M>(pub M);

impl<M> StreamMuxer for SmallWrites<M>
where
    M: StreamMuxer + Unpin,
    M::Substream: Unpin,
{
    type Substream = SmallWriteStream<M::Substream>;
    type Error = M::Error;

    fn poll_inbound(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Self::Substream, Self::Error>> {
        Pin::new(&mut self.get_mut().0).poll_inbound(cx).map_ok(SmallWriteStream::new)
    }

    fn poll_outbound(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Self::Substream, Self::Error>> {
        Pin::new(&mut self.get_mut().0).poll_outbound(cx).map_ok(SmallWriteStream::new)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.get_mut().0).poll_close(cx)
    }

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<StreamMuxerEvent, Self::Error>> {
        Pin::new(&mut self.get_mut().0).poll(cx)
    }
}

/// A substream whose writes are capped at [`MAX_WRITE`] and flushed one by one.
pub struct SmallWriteStream<S> {
    inner: S,
    /// A write has been accepted but not flushed yet.
    unflushed: bool,
}

impl<S> SmallWriteStream<S> {
    fn new(inner: S) -> Self {
        SmallWriteStream { inner, unflushed: false }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SmallWriteStream<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SmallWriteStream<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.unflushed {
            ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
            this.unflushed = false;
        }
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &buf[..buf.len().min(MAX_WRITE)]))?;
        this.unflushed = n > 0;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        this.unflushed = false;
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::AsyncWriteExt;

    /// Records each flush's bytes as one message.
    #[derive(Default)]
    struct Messages {
        pending: Vec<u8>,
        sent: Vec<usize>,
    }

    impl AsyncWrite for Messages {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
            let this = self.get_mut();
            this.pending.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            let this = self.get_mut();
            if !this.pending.is_empty() {
                this.sent.push(this.pending.len());
                this.pending.clear();
            }
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            self.poll_flush(cx)
        }
    }

    #[test]
    fn large_writes_go_out_as_small_messages() {
        let mut s = SmallWriteStream::new(Messages::default());
        futures::executor::block_on(async {
            s.write_all(&[7u8; 85_000]).await.unwrap();
            s.write_all(&[1u8; 100]).await.unwrap();
            s.flush().await.unwrap();
        });
        let sent = &s.inner.sent;
        assert!(sent.iter().all(|&n| n <= MAX_WRITE), "{sent:?}");
        assert_eq!(sent.iter().sum::<usize>(), 85_100);
    }
}
