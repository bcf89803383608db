//! Attacks on a real `ait relay` process over loopback (issue 11): connection floods with and
//! without handshakes, stream floods, session squatting from many identities, a circuit used
//! as a tunnel, poisoned directory records and a server that forges its claims and answers. Attackers
//! come from 127.0.0.2, the honest client from 127.0.0.1 (both loopback; per-IP limits tell
//! them apart). Each test checks that the limit holds and that the honest client still
//! generates, and prints its time to first token before and during the attack, the relay's
//! file descriptors and memory (numbers for SECURITY.md; not asserted as timings).

use std::time::{Duration, Instant};

use ait_tests::default_model;
use ait_tests::procs::{temp_dir, Relay};
use libp2p::{Multiaddr, PeerId};
use relay::swarm_client::{chain, connect, connect_as, connect_from};
use web_node::client::{ClientModel, GenerateOptions, SamplingParams};
use web_node::model::{ChatMessage, ModelId};
use web_node::net::chain::{ChainOptions, SwarmChain};
use web_node::net::frame::{read_frame, write_frame};
use web_node::net::node::NodeHandle;
use web_node::net::protocol::{Request, Response, PROTOCOL};

use crate::serial;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime")
}

/// The attackers' address.
const ATTACKER: &str = "127.0.0.2";

/// An honest client node, joined through `boot` once the relay is listed in the directory
/// (it announces itself just after it says `ready`).
async fn honest(boot: &Multiaddr) -> NodeHandle {
    let started = Instant::now();
    let handle = connect(std::slice::from_ref(boot)).await.expect("honest client joins");
    while web_node::net::directory::list(&handle, Duration::from_secs(2)).await.map_or(true, |l| l.is_empty()) {
        assert!(started.elapsed() < Duration::from_secs(20), "the relay never appeared in the directory");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    handle
}

/// `peer`'s server record as the network listing (through `handle`) shows it.
async fn listed_record(handle: &NodeHandle, peer: &str) -> web_node::net::record::ServerRecord {
    let listed = web_node::net::directory::list(handle, Duration::from_secs(2)).await.expect("the listing");
    listed.into_iter().find(|r| r.peer == peer).expect("the relay's record")
}

/// Generates 4 tokens greedily through `handle`; returns the time to the first token.
async fn honest_ttft(client: &ClientModel, handle: &NodeHandle) -> Duration {
    let mut chain = chain(handle.clone(), client, ChainOptions::default());
    greedy(client, &mut chain).await.1
}

/// Generates 4 tokens greedily through `chain`; returns them and the time to the first.
async fn greedy(client: &ClientModel, chain: &mut SwarmChain) -> (Vec<u32>, Duration) {
    let started = Instant::now();
    let prompt = client.chat_prompt(&[ChatMessage::user("Name a color.")]).unwrap();
    let opts = GenerateOptions { max_tokens: 4, sampling: SamplingParams::greedy(), ..GenerateOptions::default() };
    let mut first = None;
    let out = client
        .generate(chain, &prompt, &opts, |_| {
            first.get_or_insert_with(|| started.elapsed());
        })
        .await
        .expect("the honest client generates during the attack");
    assert_eq!(out.tokens.len(), 4);
    (out.tokens, first.expect("a first token"))
}

/// A client node of a fresh identity dialing from 127.0.0.2; `None` if the relay refused it.
async fn attacker(boot: &Multiaddr) -> Option<NodeHandle> {
    let listen: Multiaddr = format!("/ip4/{ATTACKER}/tcp/0").parse().unwrap();
    tokio::time::timeout(Duration::from_secs(10), connect_from(std::slice::from_ref(boot), &[listen])).await.ok()?.ok()
}

async fn ask(s: &mut libp2p::Stream, req: &Request) -> Option<Response> {
    write_frame(s, &req.encode()).await.ok()?;
    let t = Duration::from_secs(5);
    Response::decode(&read_frame(s, 1 << 24, t, t).await.ok()?).ok()
}

/// Floods: 300 TCP connections from one address (127.0.0.2) that never handshake, then 40
/// fresh identities from one address. The relay holds at most its per-IP limits of them, its
/// file descriptors stay bounded, and a connected client keeps generating. (libp2p's TCP
/// transport dials from the kernel's choice of source address, 127.0.0.1 on loopback, so the
/// identities come from the honest client's address: it connects first; that other addresses
/// get their own allowance is `ip_limit`'s unit test.)
#[test]
fn connection_floods_are_capped_per_ip() {
    let _serial = serial();
    let model = default_model();
    let root = temp_dir("attack-conn");
    let relay = Relay::start(&root.join("r"), &["--model", model.to_str().unwrap(), "--blocks", "all"]);
    let boot: Multiaddr = relay.addr("tcp").parse().unwrap();
    let port: u16 = relay.addr("tcp").split("/tcp/").nth(1).and_then(|s| s.split('/').next()).unwrap().parse().unwrap();
    let client = ClientModel::load(&model).unwrap();
    let rt = runtime();
    rt.block_on(async {
        let h = honest(&boot).await;
        let before = honest_ttft(&client, &h).await;
        let (fds_before, rss_before) = (relay.open_fds(), relay.rss_kib());

        // Handshake-less connections: each is accepted by the kernel, then counted pending.
        let mut raw = Vec::new();
        for _ in 0..300 {
            let s = tokio::net::TcpSocket::new_v4().unwrap();
            s.bind(format!("{ATTACKER}:0").parse().unwrap()).unwrap();
            if let Ok(c) = s.connect(format!("127.0.0.1:{port}").parse().unwrap()).await {
                raw.push(c);
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut held = 0;
        for c in &raw {
            let mut b = [0u8; 1];
            // Still open: nothing to read yet (a refused one reads EOF or fails).
            if tokio::time::timeout(Duration::from_millis(5), c.peek(&mut b)).await.is_err() {
                held += 1;
            }
        }
        let fds_raw = relay.open_fds();
        // Fresh identities from the same address.
        // Admitted: the connection survives and the relay answers on it.
        let peer: PeerId = relay.peer.parse().unwrap();
        let mut nodes = Vec::new();
        for _ in 0..40 {
            let Some(n) = attacker(&boot).await else { continue };
            let mut control = n.control();
            if let Ok(Ok(mut s)) =
                tokio::time::timeout(Duration::from_secs(5), control.open_stream(peer, PROTOCOL)).await
            {
                if let Some(Response::Info(_)) = ask(&mut s, &Request::Info).await {
                    nodes.push((n, s));
                }
            }
        }
        let during = honest_ttft(&client, &h).await;
        let (fds_during, rss_during) = (relay.open_fds(), relay.rss_kib());
        eprintln!(
            "connection flood: {held} of {} handshake-less connections held, {} of 40 identities admitted; \
             fds {fds_before} -> {fds_raw} (raw flood) -> {fds_during}; RSS {rss_before} -> {rss_during} KiB; \
             time to first token {before:?} before, {during:?} during",
            raw.len(),
            nodes.len()
        );
        assert!(held <= 8, "{held} handshake-less connections from one address held (limit 8)");
        assert!(nodes.len() <= 16, "{} identities from one address admitted (limit 16)", nodes.len());
        assert!(!nodes.is_empty(), "the per-IP limit must still admit some connections");
        assert!(fds_raw < fds_before + 100, "the relay holds {fds_raw} fds after the raw flood ({fds_before} before)");
    });
    let _ = std::fs::remove_dir_all(root);
}

/// One identity opens 40 session streams at once: at most its per-peer stream limit (8) are
/// served, the rest are closed at once; the relay answers others.
#[test]
fn stream_floods_are_capped_per_peer() {
    let _serial = serial();
    let model = default_model();
    let root = temp_dir("attack-streams");
    let relay = Relay::start(&root.join("r"), &["--model", model.to_str().unwrap(), "--blocks", "all"]);
    let boot: Multiaddr = relay.addr("tcp").parse().unwrap();
    let peer: PeerId = relay.peer.parse().unwrap();
    let client = ClientModel::load(&model).unwrap();
    runtime().block_on(async {
        let honest = honest(&boot).await;
        let h = attacker(&boot).await.expect("one connection is allowed");
        let mut streams = Vec::new();
        for _ in 0..40 {
            let mut control = h.control();
            if let Ok(s) = control.open_stream(peer, PROTOCOL).await {
                streams.push(s);
            }
        }
        // Hold them all open, then see which are served.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut served = 0;
        for s in &mut streams {
            if matches!(ask(s, &Request::Info).await, Some(Response::Info(_))) {
                served += 1;
            }
        }
        let ttft = honest_ttft(&client, &honest).await;
        eprintln!("stream flood: {served} of {} streams served; honest time to first token {ttft:?}", streams.len());
        assert!(served <= 8, "{served} concurrent streams served for one peer (limit 8)");
        assert!(served >= 1, "the first streams must be served");
    });
    let _ = std::fs::remove_dir_all(root);
}

/// Session squatting: 12 identities from one address try to hold every session slot (4
/// each, the per-peer cap). The per-IP cap (8) leaves the other 8 slots to everyone else (the
/// relay's own status says so), and a squatter that only sends `Info` loses its session after
/// the idle timeout.
#[test]
fn session_squatting_from_many_identities_leaves_room() {
    let _serial = serial();
    let model = default_model();
    let root = temp_dir("attack-squat");
    let relay = Relay::start(
        &root.join("r"),
        &["--model", model.to_str().unwrap(), "--blocks", "all", "--session-idle-secs", "3"],
    );
    let boot: Multiaddr = relay.addr("tcp").parse().unwrap();
    let peer: PeerId = relay.peer.parse().unwrap();
    let model_id = ModelId::from_hex(&relay.model_id()).unwrap();
    let open = Request::Open { model: model_id, session: [0; 32], start: 0, end: 30, max_len: 8, payment: None };
    runtime().block_on(async {
        let mut held = Vec::new();
        let mut nodes = Vec::new();
        for _ in 0..12 {
            let Some(h) = attacker(&boot).await else { continue };
            for _ in 0..4 {
                let mut control = h.control();
                let Ok(mut s) = control.open_stream(peer, PROTOCOL).await else { continue };
                if let Some(Response::Opened { .. }) = ask(&mut s, &open).await {
                    held.push(s);
                }
            }
            nodes.push(h);
        }
        let mut control = nodes[0].control();
        let mut s = control.open_stream(peer, PROTOCOL).await.expect("a stream for Info");
        let Some(Response::Info(status)) = ask(&mut s, &Request::Info).await else { panic!("no status") };
        eprintln!(
            "squatting: {} sessions held by {} identities; the relay counts {} active of 16",
            held.len(),
            nodes.len(),
            status.active_sessions
        );
        assert!(held.len() <= 8, "{} sessions held from one address (limit 8)", held.len());
        assert!(!held.is_empty());
        assert!(status.active_sessions <= 8, "{} of 16 slots taken from one address", status.active_sessions);

        // `Info` is not progress: the session is closed after the idle timeout (3 s).
        let mut s = held.pop().unwrap();
        let started = Instant::now();
        let mut alive = true;
        while started.elapsed() < Duration::from_secs(8) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if !matches!(ask(&mut s, &Request::Info).await, Some(Response::Info(_))) {
                alive = false;
                break;
            }
        }
        eprintln!("an Info-only session was closed after {:?}", started.elapsed());
        assert!(!alive, "a session kept alive by Info alone");
    });
    let _ = std::fs::remove_dir_all(root);
}

/// A circuit used as a tunnel: two clients of the relay (one reachable only through it, as a
/// tab is) push 4 MiB through a circuit of a relay capped at 1 MiB per circuit. The relay
/// closes the circuit near the cap instead of carrying everything.
#[test]
fn circuits_carry_bounded_bytes() {
    use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
    let _serial = serial();
    let root = temp_dir("attack-circuit");
    let relay = Relay::start(&root.join("r"), &["--max-circuit-mib", "1"]);
    let relay_addr: Multiaddr = relay.addr("tcp").parse().unwrap();
    let proto = libp2p::StreamProtocol::new("/ait-test/tunnel/1");
    runtime().block_on(async {
        // The far end: reachable only through a reservation on the relay.
        let far = connect(std::slice::from_ref(&relay_addr)).await.unwrap();
        let mut incoming = far.control().accept(proto.clone()).unwrap();
        far.listen_on(relay_addr.clone().with(libp2p::multiaddr::Protocol::P2pCircuit)).await.unwrap();
        let started = Instant::now();
        let circuit = loop {
            let addrs = far.addresses().await.unwrap();
            if let Some(a) = addrs.into_iter().find(|a| a.to_string().contains("p2p-circuit")) {
                break a;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "no reservation");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let circuit = relay::p2p::with_peer(circuit, far.peer_id());
        let received = tokio::spawn(async move {
            let (_, mut s) = incoming.next().await.expect("a tunnel stream");
            let mut total = 0usize;
            let mut buf = vec![0u8; 64 << 10];
            while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
                if n == 0 {
                    break;
                }
                total += n;
            }
            total
        });
        let near = connect(std::slice::from_ref(&relay_addr)).await.unwrap();
        near.dial(circuit, Duration::from_secs(10)).await.expect("dial through the relay");
        let mut s = near.control().open_stream(far.peer_id(), proto).await.expect("a stream through the circuit");
        let chunk = vec![7u8; 64 << 10];
        let mut sent = 0usize;
        for _ in 0..64 {
            match tokio::time::timeout(Duration::from_secs(5), s.write_all(&chunk)).await {
                Ok(Ok(())) => sent += chunk.len(),
                _ => break,
            }
        }
        let _ = s.close().await;
        let total = received.await.unwrap();
        eprintln!("circuit: {sent} bytes sent, {total} received through a 1 MiB circuit");
        assert!(total > 0, "nothing went through the circuit");
        assert!(total <= 2 << 20, "{total} bytes went through a circuit capped at 1 MiB");
    });
    let _ = std::fs::remove_dir_all(root);
}

/// A poisoned directory: a client stores junk, and a record it signed itself, under the
/// relay's own DHT keys. The relay's store keeps only records the named peer signed, so the
/// network listing still shows the relay, and clients still generate through it.
#[test]
fn poisoned_records_do_not_replace_a_servers_own() {
    use web_node::net::record::{peer_key, server_key, ServerRecord};
    let _serial = serial();
    let model = default_model();
    let root = temp_dir("attack-poison");
    let relay = Relay::start(&root.join("r"), &["--model", model.to_str().unwrap(), "--blocks", "all"]);
    let boot: Multiaddr = relay.addr("tcp").parse().unwrap();
    let peer: PeerId = relay.peer.parse().unwrap();
    let model_id = ModelId::from_hex(&relay.model_id()).unwrap();
    let client = ClientModel::load(&model).unwrap();
    runtime().block_on(async {
        let h = honest(&boot).await;
        let liar = connect(std::slice::from_ref(&boot)).await.unwrap();
        // A well-formed record, signed by the liar, claiming the relay's keys.
        let key = libp2p::identity::Keypair::generate_ed25519();
        let mut forged = listed_record(&h, &relay.peer).await;
        forged.peer = key.public().to_peer_id().to_string();
        forged.expires_ms += 60_000;
        let forged = forged.sign(&key).unwrap();
        for k in [peer_key(&peer), server_key(&model_id, &peer)] {
            liar.put_record(k.clone(), b"junk".to_vec()).await.unwrap();
            liar.put_record(k, forged.clone()).await.unwrap();
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        // What the relay's DHT now answers for its own keys.
        let fresh = connect(std::slice::from_ref(&boot)).await.unwrap();
        let copies = fresh.get_records(peer_key(&peer), Duration::from_millis(300), Duration::from_secs(5)).await.unwrap();
        let now = web_node::net::unix_ms();
        let valid = copies.iter().filter(|b| ServerRecord::verify_any(b, &peer, now).is_ok()).count();
        let listed = web_node::net::directory::list(&fresh, Duration::from_secs(2)).await.unwrap();
        let ttft = honest_ttft(&client, &fresh).await;
        eprintln!(
            "poisoning: {} copies under the relay's key, {valid} valid; {} servers listed; time to first token {ttft:?}",
            copies.len(),
            listed.len()
        );
        assert!(copies.len() == valid && valid > 0, "junk stored under the relay's key: {} copies, {valid} valid", copies.len());
        assert!(listed.iter().any(|r| r.peer == relay.peer), "the relay vanished from the directory");
    });
    let _ = std::fs::remove_dir_all(root);
}

/// A forged-claims server: a peer announces every block of the model at 0 ms per block (in
/// its signed record and its live status) and answers each step by passing it to the relay
/// and spoiling the answer (one value NaN). A fresh client routes through the liar (an
/// unmeasured claim, floored, still beats the relay's honest one), finds the answer unusable,
/// bans the liar and finishes through the relay with the tokens it gets without the liar.
#[test]
fn forged_claims_server_is_caught() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use web_node::net::record::{block_key, directory_key, peer_key, server_key, ServerRecord};
    let _serial = serial();
    let model = default_model();
    let root = temp_dir("attack-forged");
    let relay = Relay::start(&root.join("r"), &["--model", model.to_str().unwrap(), "--blocks", "all"]);
    let boot: Multiaddr = relay.addr("tcp").parse().unwrap();
    let relay_peer: PeerId = relay.peer.parse().unwrap();
    let model_id = ModelId::from_hex(&relay.model_id()).unwrap();
    let client = ClientModel::load(&model).unwrap();
    runtime().block_on(async {
        let h = honest(&boot).await;
        let (reference, before) = greedy(&client, &mut chain(h.clone(), &client, ChainOptions::default())).await;

        let key = libp2p::identity::Keypair::generate_ed25519();
        let listen: Multiaddr = "/ip4/127.0.0.1/tcp/0".parse().unwrap();
        let liar = connect_as(key.clone(), std::slice::from_ref(&boot), &[listen]).await.unwrap();
        let mut status = listed_record(&h, &relay.peer).await.status;
        status.ms_per_block = 0.0;
        let n_blocks = status.end;
        let steps = Arc::new(AtomicUsize::new(0));
        let incoming = liar.control().accept(PROTOCOL).expect("the liar serves the protocol");
        tokio::spawn(forge(incoming, liar.control(), relay_peer, status.clone(), steps.clone()));
        let liar_addrs = liar.addresses().await.unwrap();
        // Reachable as a server is (a provider record without addresses is not passed on).
        liar.add_external_address(liar_addrs[0].clone()).await.unwrap();
        let record = ServerRecord {
            peer: liar.peer_id().to_string(),
            addrs: liar_addrs.iter().map(|a| a.to_string()).collect(),
            expires_ms: web_node::net::unix_ms() + 90_000,
            status,
        }
        .sign(&key)
        .unwrap();
        liar.put_record(server_key(&model_id, &liar.peer_id()), record.clone()).await.unwrap();
        liar.put_record(peer_key(&liar.peer_id()), record).await.unwrap();
        liar.provide((0..n_blocks).map(|b| block_key(&model_id, b)).chain([directory_key()]).collect()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;

        // A client that has measured nobody yet, connected to both (as to any peer it met).
        let fresh = connect(std::slice::from_ref(&boot)).await.unwrap();
        fresh.dial(liar_addrs[0].clone(), Duration::from_secs(5)).await.expect("dialing the liar");
        let mut c = chain(fresh, &client, ChainOptions::default());
        let (tokens, during) = greedy(&client, &mut c).await;
        let recoveries = c.recoveries().to_vec();
        let spoiled = steps.load(Ordering::SeqCst);
        // The client keeps the liar banned: its next generation goes straight to the relay.
        let (again, after) = greedy(&client, &mut c).await;
        eprintln!(
            "forged claims: time to first token {before:?} before; {during:?} with the liar ({spoiled} step(s) \
             spoiled, {} recovery); {after:?} for the next request",
            recoveries.len()
        );
        assert_eq!(again, reference);
        assert_eq!(steps.load(Ordering::SeqCst), spoiled, "the banned liar was routed to again");
        assert!(spoiled > 0, "the liar was never routed to: the test shows nothing");
        assert_eq!(tokens, reference, "the liar changed the answer");
        let [r] = &recoveries[..] else { panic!("one recovery expected: {recoveries:?}") };
        assert_eq!((r.failed, &r.replacements[..]), (liar.peer_id(), &[relay_peer][..]), "{r:?}");
    });
    let _ = std::fs::remove_dir_all(root);
}

/// The liar's side of [`forged_claims_server_is_caught`]: every stream is passed to the relay
/// but status requests, answered at once with `status`; each step's first value is made NaN.
async fn forge(
    mut incoming: libp2p_stream::IncomingStreams,
    control: libp2p_stream::Control,
    relay: PeerId,
    status: web_node::net::protocol::ServerStatus,
    steps: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use futures::StreamExt;
    while let Some((_, mut from)) = incoming.next().await {
        let (steps, status, mut control) = (steps.clone(), status.clone(), control.clone());
        tokio::spawn(async move {
            let t = Duration::from_secs(60);
            // The stream to the relay, opened in this task on the first frame to pass on (not
            // in the accept loop, which must not wait on the relay before taking the next
            // incoming stream).
            let mut to: Option<libp2p::Stream> = None;
            while let Ok(frame) = read_frame(&mut from, 1 << 24, t, t).await {
                let request = Request::decode(&frame);
                if matches!(request, Ok(Request::Info)) {
                    if write_frame(&mut from, &Response::Info(status.clone()).encode()).await.is_err() {
                        return;
                    }
                    continue;
                }
                let step = matches!(request, Ok(Request::Step { .. }));
                if to.is_none() {
                    to = control.open_stream(relay, PROTOCOL).await.ok();
                }
                let Some(s) = to.as_mut() else { return };
                if write_frame(s, &frame).await.is_err() {
                    return;
                }
                let Ok(reply) = read_frame(s, 1 << 24, t, t).await else { return };
                let reply = match Response::decode(&reply) {
                    Ok(Response::Hidden { n_tokens, compute_us, receipt, mut hidden }) if step => {
                        steps.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        hidden[0] = f32::NAN;
                        Response::Hidden { n_tokens, compute_us, receipt, hidden }.encode()
                    }
                    _ => reply,
                };
                if write_frame(&mut from, &reply).await.is_err() {
                    return;
                }
            }
        });
    }
}
