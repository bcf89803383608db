//! The HTTP server loop: hyper's HTTP/1 with a header read timeout (which also closes idle
//! keep-alive connections), caps on open connections (in all and per client IP), and a write
//! timeout for clients that stop reading. `axum::serve` sets none of these.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;

use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

use web_node::net::keyed_limit::{KeyedLimit, Over, Ticket};

use super::limits::HttpLimits;

/// Admits connections within the caps (in all and per IP); a [`Slot`] gives its place back
/// when dropped.
#[derive(Clone)]
pub(super) struct ConnLimiter(KeyedLimit<IpAddr>);

/// One admitted connection.
pub(super) type Slot = Ticket<IpAddr>;

/// Why a connection was refused.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refused {
    /// The total cap.
    Total(usize),
    /// The per-IP cap.
    PerIp(usize),
}

impl ConnLimiter {
    pub(super) fn new(max_total: usize, max_per_ip: usize) -> Self {
        ConnLimiter(KeyedLimit::new(max_total.max(1), max_per_ip.max(1)))
    }

    pub(super) fn admit(&self, ip: IpAddr) -> Result<Slot, Refused> {
        self.0.admit(ip, false).map_err(|over| match over {
            // No cap on distinct addresses is set here.
            Over::Total(n) | Over::Keys(n) => Refused::Total(n),
            Over::PerKey(n) => Refused::PerIp(n),
        })
    }
}

/// A stream whose writes fail with `TimedOut` once one has waited `timeout` for the peer to
/// take bytes (a client that stops reading a response).
struct WriteTimeout<S> {
    inner: S,
    timeout: Duration,
    waiting: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteTimeout<S> {
    fn new(inner: S, timeout: Duration) -> Self {
        WriteTimeout { inner, timeout, waiting: None }
    }

    /// Maps a write's poll result: a ready one ends the wait; a pending one starts it or
    /// fails once it has lasted `timeout`.
    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.waiting = None;
            return poll;
        }
        let timeout = self.timeout;
        let sleep = self.waiting.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading"))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteTimeout<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, poll)
    }
}

/// Accepts connections on `listener` and serves `app` on each, within `limits`, until the
/// task is dropped.
pub(super) async fn accept_loop(listener: TcpListener, app: Router, limits: HttpLimits) {
    let conns = ConnLimiter::new(limits.http_max_connections, limits.http_max_connections_per_ip);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors, most likely: wait instead of spinning.
                limited_warn!("http-accept", "HTTP accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match conns.admit(peer.ip()) {
            Ok(slot) => {
                tokio::spawn(serve_connection(stream, peer, app.clone(), limits.clone(), slot));
            }
            Err(why) => {
                let (kind, what) = match why {
                    Refused::Total(n) => {
                        ("http-connections", format!("{n} connections in all (--http-max-connections)"))
                    }
                    Refused::PerIp(n) => {
                        ("http-connections-per-ip", format!("{n} connections per IP (--http-max-connections-per-ip)"))
                    }
                };
                limited_warn!(kind, "HTTP connection from {peer} refused: at the cap of {what}");
                // Best effort, never waiting: the socket buffer takes this at once.
                let _ = stream
                    .try_write(b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 0\r\n\r\n");
            }
        }
    }
}

async fn serve_connection(stream: TcpStream, peer: SocketAddr, app: Router, limits: HttpLimits, slot: Slot) {
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(WriteTimeout::new(stream, limits.write_timeout()));
    let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(req.map(axum::body::Body::new))
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout())
        .serve_connection(io, service);
    if let Err(e) = conn.await {
        if e.is_timeout() {
            limited_warn!("http-header-timeout", "HTTP connection from {peer} closed: {e} (--http-header-timeout)");
        } else if let Some(io) = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<io::Error>()) {
            if io.kind() == io::ErrorKind::TimedOut {
                limited_warn!("http-write-timeout", "HTTP connection from {peer} closed: {io} (--http-write-timeout)");
            }
        } else {
            tracing::debug!("HTTP connection from {peer}: {e}");
        }
    }
    drop(slot);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_in_all_and_per_ip() {
        let l = ConnLimiter::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let a1 = l.admit(a).expect("first");
        let _a2 = l.admit(a).expect("second");
        assert_eq!(l.admit(a).err(), Some(Refused::PerIp(2)));
        let _b1 = l.admit(b).expect("other ip");
        assert_eq!(l.admit(b).err(), Some(Refused::Total(3)));
        drop(a1);
        let _a3 = l.admit(a).expect("a slot came back");
    }
}
