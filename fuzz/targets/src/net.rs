//! Targets for what arrives from the swarm: frames, protocol messages, signed server records,
//! fraud reports, and whole session streams fed to a real [`Server`](web_node::net::serve::Server).

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::io::Cursor;
use futures::{AsyncRead, AsyncWrite};
use libp2p::core::SignedEnvelope;
use libp2p::identity::Keypair;
use libp2p::PeerId;
use web_node::net::frame::{read_frame, MAX_FRAME};
use web_node::net::protocol::{Request, Response};
use web_node::net::record::ServerRecord;
use web_node::net::serve::Server;
use web_node::trust::FraudReport;

use crate::{split_first, tiny};

/// Signature domain of server records (`web_node::net::record`'s, which is private).
pub const RECORD_DOMAIN: &str = "ai-torrent-server-record";
/// Payload type of server records (`web_node::net::record`'s, which is private).
pub const RECORD_PAYLOAD_TYPE: &[u8] = b"/ait/server-record/1";
/// The time the record target verifies at (ms since the epoch), fixed so runs repeat.
pub const RECORD_NOW_MS: u64 = 1_700_000_000_000;

const T: Duration = Duration::from_secs(1);

/// Frames read back to back from a reader holding the input; the first byte picks the limit
/// (16 B, the pre-session 4 KiB, or the 16 MiB maximum).
pub fn frame(data: &[u8]) {
    let (mode, rest) = split_first(data);
    let limit = [16, web_node::net::serve::PRE_SESSION_FRAME, MAX_FRAME][mode as usize % 3];
    let mut r = Cursor::new(rest);
    futures::executor::block_on(async {
        for _ in 0..64 {
            match read_frame(&mut r, limit, T, T).await {
                Ok(f) => assert!(f.len() <= limit, "a {}-byte frame passed the {limit}-byte limit", f.len()),
                Err(_) => break,
            }
        }
    });
}

/// `Request::decode` and `Response::decode`; whatever decodes must encode to bytes that
/// decode to the same message.
pub fn protocol(data: &[u8]) {
    if let Ok(req) = Request::decode(data) {
        let bytes = req.encode();
        let again = Request::decode(&bytes).expect("an encoded request decodes");
        assert_eq!(again.encode(), bytes, "request changed over a round trip");
    }
    if let Ok(resp) = Response::decode(data) {
        let bytes = resp.encode();
        let again = Response::decode(&bytes).expect("an encoded response decodes");
        assert_eq!(again.encode(), bytes, "response changed over a round trip");
    }
}

/// `FraudReport::decode`, then `check` on whatever decodes (and `judge` by each auditor's
/// outputs on whatever checks); whatever decodes must encode to a report that decodes to
/// itself.
pub fn report(data: &[u8]) {
    let Ok(report) = FraudReport::decode(data) else { return };
    let bytes = report.encode();
    let again = FraudReport::decode(&bytes).expect("an encoded report decodes");
    assert_eq!(again.encode(), bytes, "a report changed over a round trip");
    if report.check().is_ok() {
        for replay in &report.replays {
            let _ = report.judge(&replay.outputs);
        }
    }
}

/// The key the record target signs with (a fixed ed25519 key).
pub fn record_key() -> Keypair {
    Keypair::ed25519_from_bytes([7u8; 32]).expect("32 bytes make an ed25519 key")
}

/// Signs `payload` as a server record envelope with [`record_key`], as a hostile but
/// correctly signing server would.
pub fn sign_record_payload(payload: &[u8]) -> Vec<u8> {
    SignedEnvelope::new(&record_key(), RECORD_DOMAIN.into(), RECORD_PAYLOAD_TYPE.to_vec(), payload.to_vec())
        .expect("ed25519 signing cannot fail")
        .into_protobuf_encoding()
}

/// Server record verification. First byte even: the rest is an envelope as received from
/// the DHT (forged or garbled signatures). Odd: the rest is the JSON payload, signed here with
/// [`record_key`] (what a peer can announce about itself).
pub fn record(data: &[u8]) {
    let (mode, rest) = split_first(data);
    let key = record_key();
    let peer = key.public().to_peer_id();
    let bytes = if mode % 2 == 0 { rest.to_vec() } else { sign_record_payload(rest) };
    if let Ok(rec) = ServerRecord::verify_any(&bytes, &peer, RECORD_NOW_MS) {
        let _ = rec.multiaddrs();
        let _ = ServerRecord::verify(&bytes, &peer, &tiny::model_id(), tiny::N_LAYERS, RECORD_NOW_MS);
    }
    let _ = ServerRecord::verify_any(&bytes, &PeerId::random(), RECORD_NOW_MS);
}

/// A session stream whose peer sends the fuzz input and then closes its side; what the
/// server writes is counted and dropped.
struct Scripted<'a> {
    input: Cursor<&'a [u8]>,
    written: Vec<u8>,
}

impl AsyncRead for Scripted<'_> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.input).poll_read(cx, buf)
    }
}

impl AsyncWrite for Scripted<'_> {
    fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        // Keep what a real session could answer, not more: the rest is counted as written.
        let room = (1usize << 20).saturating_sub(self.written.len());
        self.written.extend_from_slice(&buf[..buf.len().min(room)]);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The server of every session run: all blocks of the tiny model.
fn session_server() -> &'static Arc<Server> {
    static SERVER: OnceLock<Arc<Server>> = OnceLock::new();
    SERVER.get_or_init(|| tiny::server(0..tiny::N_LAYERS))
}

/// `Server::serve_stream`: the input is everything a peer sends on one session stream
/// (frames of requests, or anything else), then the stream ends. Returns what the server
/// wrote back (its first MiB).
pub fn session_output(data: &[u8]) -> Vec<u8> {
    let server = session_server();
    let peer = PeerId::from_public_key(&record_key().public());
    let mut stream = Scripted { input: Cursor::new(data), written: Vec::new() };
    futures::executor::block_on(server.serve_stream(peer, &mut stream));
    stream.written
}

/// [`session_output`], answers dropped.
pub fn session(data: &[u8]) {
    let _ = session_output(data);
}
