//! The swarm across real processes on loopback (issue 3, tests a-d): `ait relay` processes
//! serving block ranges of the default model, found through the DHT, and clients (the `ait`
//! CLI, or an in-process client node) generating through them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ait_tests::default_model;
use ait_tests::procs::{temp_dir, three_relays, Relay};
use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::{Multiaddr, PeerId};
use relay::local::{BackendKind, LocalModel};
use relay::swarm_client::{chain, connect};
use web_node::client::{ClientModel, GenerateOptions, LayerChain, SamplingParams};
use web_node::model::{ChatMessage, ModelId};
use web_node::net::chain::ChainOptions;
use web_node::net::frame::{read_frame, write_frame};
use web_node::net::protocol::{ErrorCode, Request, Response, PROTOCOL};

use crate::serial;

/// The tests here start several relays each; on a 2-core machine they run one at a time so
/// that step timings (which decide when a server counts as failed) are not distorted.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime")
}

fn ait(args: &[&str]) -> (String, String) {
    let out = ait_tests::procs::ait().args(args).env("RUST_LOG", "warn,web_node::net=info").output().expect("run ait");
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "ait {args:?} failed:\n{stderr}");
    (stdout, stderr)
}

/// Test a: three relays holding a third of the layers each generate, through `ait generate
/// --swarm`, exactly what one process holding every layer generates. The client joins over TCP
/// for one prompt and over QUIC and WebSocket for the others.
#[test]
fn three_relays_generate_what_one_process_generates() {
    let _serial = serial();
    let model = default_model();
    let m = model.to_str().unwrap();
    let root = temp_dir("swarm-a");
    let relays = three_relays(&root, &model);
    let cases = [
        ("What is the capital of France?", true, "64", "tcp"),
        ("The history of the printing press begins", false, "48", "quic-v1"),
        ("Write a haiku about rain.", true, "32", "ws"),
    ];
    for (prompt, chat, n, transport) in cases {
        let mut args = vec!["generate", "--model", m, "--temperature", "0", "--max-tokens", n, "--prompt", prompt];
        if chat {
            args.push("--chat");
        }
        let (local, _) = ait(&[args.as_slice(), &["--backend", "cpu"]].concat());
        let boot = relays[0].addr(transport);
        let (swarm, log) = ait(&[args.as_slice(), &["--swarm", &boot]].concat());
        assert!(local.trim().len() > 10, "local output too short: {local:?}");
        assert_eq!(swarm, local, "swarm output differs from the single process ({transport})");
        let route = log.lines().find(|l| l.contains("route: ")).unwrap_or_else(|| panic!("no route logged:\n{log}"));
        for r in &relays {
            assert!(route.contains(&r.peer), "relay {} not in the route {route}", r.peer);
        }
        if chat && prompt.contains("France") {
            assert!(swarm.contains("Paris"), "{swarm}");
        }
    }
    let _ = std::fs::remove_dir_all(root);
}

/// Which relay serves `[10, 20)` in the chain's current route.
fn middle_peer(route: &Mutex<Vec<web_node::net::routing::Hop>>) -> Option<PeerId> {
    route.lock().unwrap().iter().find(|h| h.blocks == (10..20)).map(|h| h.peer)
}

/// Test b: with two relays serving [10, 20), the one in use is killed (SIGKILL) or frozen
/// (SIGSTOP, so the client times out) in the middle of a generation; the client bans it,
/// re-routes that span to the other one, replays the history, and finishes with exactly the
/// single-process output.
#[test]
fn losing_a_relay_mid_generation_reroutes_with_identical_output() {
    let _serial = serial();
    let model = default_model();
    let m = model.to_str().unwrap();
    let root = temp_dir("swarm-b");
    let prompt_text = "Tell me a long story about a dragon who learns to cook.";
    let opts = GenerateOptions { max_tokens: 96, sampling: SamplingParams::greedy(), ..GenerateOptions::default() };

    let reference = {
        let mut local = LocalModel::load(&model, BackendKind::Cpu, None).unwrap();
        let prompt = local.client.chat_prompt(&[ChatMessage::user(prompt_text)]).unwrap();
        pollster::block_on(local.client.generate(&mut local.chain, &prompt, &opts, |_| {})).unwrap()
    };
    assert_eq!(reference.tokens.len(), 96, "the reference must run long enough to be interrupted");

    let client = ClientModel::load(&model).unwrap();
    let prompt = client.chat_prompt(&[ChatMessage::user(prompt_text)]).unwrap();
    let rt = runtime();
    for freeze in [false, true] {
        let mut relays = three_relays(&root.join(format!("freeze-{freeze}")), &model);
        let boot = relays[0].addr("tcp");
        let spare = Relay::start(
            &root.join(format!("freeze-{freeze}/r3")),
            &["--model", m, "--blocks", "10..20", "--bootstrap", &boot],
        );
        relays.push(spare);
        let relays = Arc::new(Mutex::new(relays));
        let boot: Multiaddr = boot.parse().unwrap();
        let (result, recoveries, victim) = rt.block_on(async {
            let handle = connect(&[boot]).await.unwrap();
            let mut chain = chain(handle, &client, ChainOptions::default());
            let route = chain.route_watch();
            let mut pieces = 0;
            let mut victim = None;
            let r = client
                .generate(&mut chain, &prompt, &opts, |_| {
                    pieces += 1;
                    if pieces == 10 {
                        let peer = middle_peer(&route).expect("a [10, 20) hop").to_string();
                        let mut relays = relays.lock().unwrap();
                        let r = relays.iter_mut().find(|r| r.peer == peer).expect("the relay in use");
                        if freeze {
                            r.freeze();
                        } else {
                            r.kill();
                        }
                        victim = Some(peer);
                    }
                })
                .await;
            chain.end().await.unwrap();
            (r, chain.recoveries().to_vec(), victim)
        });
        let result = result.unwrap();
        let victim = victim.expect("the relay was stopped mid-generation");
        assert_eq!(result.tokens, reference.tokens, "output changed after losing a relay (freeze: {freeze})");
        // Normally exactly one re-route; a slow machine may add a spurious one (still correct).
        let rec = recoveries
            .iter()
            .find(|r| r.failed.to_string() == victim)
            .unwrap_or_else(|| panic!("no re-route away from {victim}: {recoveries:?}"));
        assert_eq!(rec.failed.to_string(), victim);
        assert_eq!(rec.blocks, 10..20);
        assert_eq!(rec.replacements.len(), 1);
        assert_ne!(rec.replacements[0].to_string(), victim);
        assert!(rec.replayed_tokens > prompt.len(), "{rec:?}");
        eprintln!("freeze={freeze}: re-routed in {:?} after: {}", rec.took, rec.error);
    }
    let _ = std::fs::remove_dir_all(root);
}

async fn open(handle: &web_node::net::node::NodeHandle, peer: PeerId) -> libp2p::Stream {
    let mut control = handle.control();
    control.open_stream(peer, PROTOCOL).await.expect("stream")
}

async fn ask(s: &mut libp2p::Stream, req: &Request) -> Response {
    write_frame(s, &req.encode()).await.expect("write");
    recv(s).await
}

async fn recv(s: &mut libp2p::Stream) -> Response {
    let t = Duration::from_secs(10);
    Response::decode(&read_frame(s, 1 << 24, t, t).await.expect("answer")).expect("decodes")
}

fn refused(r: &Response) -> ErrorCode {
    match r {
        Response::Error { code, .. } => *code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// After a refusal the relay closes that stream.
async fn assert_closed(s: &mut libp2p::Stream) {
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("closed in time");
    assert!(matches!(n, Ok(0) | Err(_)), "stream still open");
}

/// Test c: garbage, an oversized frame, sessions for a range or model the relay does not serve,
/// out-of-order and wrongly shaped steps, and too many sessions get a refusal on that stream
/// only; a session opened before them keeps working, and the relay keeps running.
#[test]
fn bad_requests_are_refused_per_stream() {
    let _serial = serial();
    let model = default_model();
    let root = temp_dir("swarm-c");
    // 1 MiB of KV cache = 68 tokens of 10 blocks; two sessions per peer.
    let mut relay = Relay::start(
        &root.join("r"),
        &[
            "--model",
            model.to_str().unwrap(),
            "--blocks",
            "10..20",
            "--max-kv-mib",
            "1",
            "--max-sessions-per-peer",
            "2",
        ],
    );
    let model_id = ModelId::from_hex(&relay.model_id()).unwrap();
    let peer: PeerId = relay.peer.parse().unwrap();
    let addr: Multiaddr = relay.addr("tcp").parse().unwrap();
    let dim = 576;
    let session = [0x5e; 32];
    let open_req = |start, end, max_len| Request::Open { model: model_id, session, start, end, max_len, payment: None };
    let step = |pos, n: usize| Request::Step { pos, n_tokens: n as u32, hidden: vec![0.01; n * dim], voucher: None };
    runtime().block_on(async {
        let h = connect(&[addr]).await.unwrap();

        let mut good = open(&h, peer).await;
        assert_eq!(ask(&mut good, &open_req(10, 20, 8)).await, Response::Opened { max_len: 8, free_left: None });
        let Response::Hidden { n_tokens: 2, hidden, receipt: signature, .. } = ask(&mut good, &step(0, 2)).await else {
            panic!("no hidden")
        };
        assert_eq!(hidden.len(), 2 * dim);
        assert!(hidden.iter().all(|x| x.is_finite()));
        // The relay signed what this client sent and got, under its peer id; nothing else.
        let mut inputs = web_node::trust::InputChain::new(&session);
        inputs.absorb(&vec![0.01; 2 * dim], dim);
        let receipt = web_node::trust::Receipt {
            session,
            model: model_id,
            start: 10,
            end: 20,
            pos: 0,
            n_tokens: 2,
            inputs: inputs.value(),
            output: web_node::trust::output_hash(&hidden),
        };
        receipt.verify(&peer, &signature).expect("the relay's receipt verifies");
        let other = web_node::trust::Receipt { output: web_node::trust::output_hash(&hidden[1..]), ..receipt };
        assert!(other.verify(&peer, &signature).is_err());

        // Garbage.
        let mut s = open(&h, peer).await;
        assert_eq!(refused(&ask_raw(&mut s, &[0x42, 1, 2, 3]).await), ErrorCode::BadRequest);
        assert_closed(&mut s).await;
        // A frame announcing 1 GiB: refused without waiting for (or allocating) it.
        let mut s = open(&h, peer).await;
        s.write_all(&(1u32 << 30).to_le_bytes()).await.unwrap();
        s.write_all(&[0u8; 64]).await.unwrap();
        s.flush().await.unwrap();
        assert_eq!(refused(&recv(&mut s).await), ErrorCode::TooLarge);
        assert_closed(&mut s).await;
        // Blocks it does not serve, another model, too long a session, a step before opening.
        for (req, code) in [
            (open_req(0, 10, 8), ErrorCode::RangeNotServed),
            (open_req(10, 30, 8), ErrorCode::RangeNotServed),
            (
                Request::Open { model: ModelId([7; 32]), session, start: 10, end: 20, max_len: 8, payment: None },
                ErrorCode::UnknownModel,
            ),
            (open_req(10, 20, 1 << 30), ErrorCode::TooLong),
            (step(0, 1), ErrorCode::BadRequest),
        ] {
            let mut s = open(&h, peer).await;
            assert_eq!(refused(&ask(&mut s, &req).await), code, "{req:?}");
            assert_closed(&mut s).await;
        }
        // A step of the wrong width, and one at the wrong position, on their own sessions.
        let mut s = open(&h, peer).await;
        assert_eq!(ask(&mut s, &open_req(10, 20, 8)).await, Response::Opened { max_len: 8, free_left: None });
        let bad_width = Request::Step { pos: 0, n_tokens: 1, hidden: vec![0.0; dim - 1], voucher: None };
        assert_eq!(refused(&ask(&mut s, &bad_width).await), ErrorCode::BadRequest);
        let mut s = open(&h, peer).await;
        assert_eq!(ask(&mut s, &open_req(10, 20, 8)).await, Response::Opened { max_len: 8, free_left: None });
        assert_eq!(refused(&ask(&mut s, &step(5, 1)).await), ErrorCode::BadRequest);
        drop(s);

        // Per-peer cap: `good` plus one more; a third is refused.
        let mut second = open(&h, peer).await;
        assert_eq!(ask(&mut second, &open_req(10, 20, 8)).await, Response::Opened { max_len: 8, free_left: None });
        let mut third = open(&h, peer).await;
        assert_eq!(refused(&ask(&mut third, &open_req(10, 20, 8)).await), ErrorCode::Busy);
        // Closing frees the slot.
        write_frame(&mut second, &Request::Close { voucher: None }.encode()).await.unwrap();
        assert_closed(&mut second).await;
        // KV budget: 8 tokens held by `good`; 64 more would exceed 1 MiB.
        let mut big = open(&h, peer).await;
        assert_eq!(refused(&ask(&mut big, &open_req(10, 20, 64)).await), ErrorCode::Busy);
        let mut fits = open(&h, peer).await;
        assert_eq!(ask(&mut fits, &open_req(10, 20, 56)).await, Response::Opened { max_len: 56, free_left: None });
        drop(fits);

        // The first session still works, at the right position.
        let Response::Hidden { n_tokens: 1, .. } = ask(&mut good, &step(2, 1)).await else { panic!("session broken") };
        let mut info = open(&h, peer).await;
        let Response::Info(status) = ask(&mut info, &Request::Info).await else { panic!("no status") };
        assert_eq!((status.start, status.end), (10, 20));
    });
    assert!(relay.is_running(), "the relay died");
    let _ = std::fs::remove_dir_all(root);
}

async fn ask_raw(s: &mut libp2p::Stream, payload: &[u8]) -> Response {
    write_frame(s, payload).await.expect("write");
    recv(s).await
}

/// Test d: a relay restarted on the same data directory keeps its peer id and its WebRTC
/// certhash; a second relay on a directory in use is refused.
#[test]
fn restarted_relay_keeps_identity_and_certhash() {
    let _serial = serial();
    let root = temp_dir("swarm-d");
    let dir = root.join("r");
    let certhash = |r: &Relay| {
        let a = r.addr("webrtc-direct");
        a.split("/certhash/").nth(1).and_then(|s| s.split('/').next()).expect("certhash").to_string()
    };
    let mut first = Relay::start(&dir, &[]);
    let (peer, hash) = (first.peer.clone(), certhash(&first));
    let clash = Relay::try_start(&dir, &[]).err().expect("a second relay on the same directory must fail");
    assert!(clash.contains("another relay is using"), "{clash}");
    first.kill();
    let second = Relay::start(&dir, &[]);
    assert_eq!(second.peer, peer);
    assert_eq!(certhash(&second), hash);
    let other = Relay::start(&root.join("other"), &[]);
    assert_ne!(other.peer, peer);
    assert_ne!(certhash(&other), hash);

    // A swarm where nobody serves the model: a clear error, not a hang.
    let out = ait_tests::procs::ait()
        .args(["generate", "--prompt", "hi", "--max-tokens", "4", "--swarm", &second.addr("tcp")])
        .output()
        .expect("run ait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no chain of servers covers blocks [0, 30)"), "{stderr}");
    let _ = std::fs::remove_dir_all(root);
}
