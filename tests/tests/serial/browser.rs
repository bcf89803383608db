//! The web app in a real browser (issue 4, tests a-d): headless Chromium with WebGPU on its
//! CPU adapter, driven over WebDriver, loads the app from `ait relay`, joins the swarm over
//! WebSocket or WebRTC-direct, chats, and seeds blocks that native clients route through.
//!
//! Needs `chromium` and `chromium-driver` (scripts/setup.sh installs them) and the built app
//! (`trunk build --release`, into `dist/`).

use std::ops::Range;
use std::time::{Duration, Instant};

use ait_tests::browser::{ask, blocks, connected, model_ready, page, seeding, web_dir, Browser};
use ait_tests::default_model;
use ait_tests::procs::{temp_dir, Relay};
use ait_tests::requantize::{k_quant_mix, requantize_gguf};
use serde_json::json;

use crate::serial;

/// The layers a seeding tab serves between two relays, of [`BEFORE`] and [`AFTER`]. Two
/// layers: SwiftShader, Chromium's CPU adapter, takes about 100 ms per block per decode step
/// (README), so a wider span would spend most of these tests in the tab's hop without
/// testing more (the K-quant test's two layers hold one Q4_K and one Q6_K matrix).
const TAB: Range<usize> = 14..16;
/// The layers of the relay before the tab, and of the one after it: as many each.
const BEFORE: Range<usize> = 0..14;
const AFTER: Range<usize> = 16..30;

/// Test b: the chat page answers "What is the capital of France?" from the swarm (one relay
/// holding every block), streams it, and keeps the conversation across a reload. A browser
/// without WebGPU is told it cannot seed, and still chats; with a second relay of every
/// block, the tab (`?audit=1`) spot-checks the server that answered on the other one, and
/// lists that it passed. When the relay dies the page says it lost it.
#[test]
fn chat_page_answers_from_the_swarm() {
    let _serial = serial();
    let model = default_model();
    let root = temp_dir("browser-b");
    let web = web_dir();
    let relay = Relay::start(
        &root.join("r0"),
        &["--model", model.to_str().unwrap(), "--blocks", "all", "--web-dir", web.to_str().unwrap()],
    );
    let b = Browser::start().expect("browser");
    let opened = Instant::now();
    b.goto(&page(&relay, "temperature=0")).unwrap();
    let conn = connected(&b);
    assert!(conn.contains("WebSocket"), "{conn}");
    model_ready(&b);
    let (answer, first_token_ms) = ask(&b, "What is the capital of France?", Duration::from_secs(180));
    eprintln!(
        "answer after {:.1} s: {answer:?}; first token {first_token_ms:.0} ms after navigation start",
        opened.elapsed().as_secs_f64()
    );
    assert!(!answer.starts_with("ERROR"), "{answer}");
    assert!(answer.contains("Paris"), "{answer}");

    // The conversation is in IndexedDB: a reload lists it.
    b.goto(&page(&relay, "")).unwrap();
    connected(&b);
    let title = b
        .wait_for(
            "the stored conversation",
            "const a = document.querySelector('.convs li a'); return a ? a.innerText : null;",
            Duration::from_secs(20),
        )
        .unwrap();
    assert!(title.as_str().unwrap_or_default().contains("capital of France"), "{title}");
    drop(b);

    // Without WebGPU the page says it cannot seed, and chat still works. A second relay of
    // every block lets the tab check each answer's server on the other.
    let mut r1 = Relay::start(
        &root.join("r1"),
        &["--model", model.to_str().unwrap(), "--blocks", "all", "--bootstrap", &relay.addr("tcp")],
    );
    let b = Browser::start_with(false).expect("browser");
    b.goto(&page(&relay, "temperature=0&audit=1")).unwrap();
    connected(&b);
    let adapter = b
        .wait_for(
            "the adapter line",
            "const a = document.getElementById('adapter'); return a && a.innerText ? a.innerText : null;",
            Duration::from_secs(20),
        )
        .unwrap();
    assert!(adapter.as_str().unwrap_or_default().contains("WebGPU is not available"), "{adapter}");
    b.exec("document.getElementById('share').click()", json!([])).unwrap();
    let state = b
        .wait_for(
            "the refusal to seed",
            "const s = document.getElementById('seed-state'); return s.dataset.state === 'error' ? s.innerText : null;",
            Duration::from_secs(20),
        )
        .unwrap();
    assert!(state.as_str().unwrap_or_default().contains("WebGPU is not available"), "{state}");
    model_ready(&b);
    let (answer, _) = ask(&b, "What is the capital of France?", Duration::from_secs(180));
    assert!(answer.contains("Paris"), "chat without WebGPU: {answer}");
    // The answer's one hop, replayed as one prefill on the other relay, is within the limit.
    let check = b
        .wait_for(
            "the spot check of the answer's server",
            "const l = document.querySelector('#spot-checks li'); return l ? [l.dataset.verdict, \
             l.dataset.audited, l.dataset.auditors, l.dataset.worst, l.dataset.tokens, l.innerText] : null;",
            Duration::from_secs(60),
        )
        .unwrap_or_else(|e| panic!("{e}; page:\n{}", b.page_text()));
    let field = |i: usize| check[i].as_str().unwrap_or_default().to_string();
    assert_eq!(field(0), "passed", "{check}");
    let (audited, auditor) = (field(1), field(2));
    let other = if audited == relay.peer { &r1.peer } else { &relay.peer };
    assert!([&relay.peer, &r1.peer].contains(&&audited), "checked {audited}, not a relay: {check}");
    assert_eq!(&auditor, other, "replayed by {auditor}, not the other relay: {check}");
    let worst: f32 = field(3).parse().expect("a deviation");
    assert!(worst < web_node::trust::DELTA_LIMIT, "{check}");
    assert!(field(4).parse::<usize>().expect("tokens") > 10, "the prompt and answer replayed: {check}");
    eprintln!("spot check: {}", field(5));
    r1.kill();

    // The relay goes away: the page says so (and keeps trying to reconnect).
    let mut relay = relay;
    relay.kill();
    let lost = b
        .wait_for(
            "the page to notice the relay is gone",
            "const c = document.getElementById('conn'); return c.dataset.state === 'error' ? c.innerText : null;",
            Duration::from_secs(30),
        )
        .unwrap();
    assert!(lost.as_str().unwrap_or_default().contains("Lost the relay"), "{lost}");
    drop(b);
    if std::env::var_os("AIT_KEEP_TEST_DIRS").is_none() {
        let _ = std::fs::remove_dir_all(root);
    }
}

/// Tests a, c and d: a tab seeds blocks [`TAB`] between two native relays serving the layers
/// before and after them; a native client's generation is routed through the tab and equals the
/// single-process output (a). Then, mid-generation, a native relay for [`TAB`] joins and
/// the seeding tab is closed: the client re-routes to that relay and still produces the
/// single-process output (c). Both over WebSocket and over WebRTC-direct (d).
#[test]
fn a_seeding_tab_serves_blocks_and_closing_it_reroutes() {
    use relay::local::{BackendKind, LocalModel};
    use relay::swarm_client::{chain, connect};
    use web_node::client::{ClientModel, GenerateOptions, LayerChain, SamplingParams};
    use web_node::model::ChatMessage;
    use web_node::net::chain::ChainOptions;

    let _serial = serial();
    let model = default_model();
    let m = model.to_str().unwrap();
    let web = web_dir();
    let root = temp_dir("browser-a");
    let greedy =
        |n| GenerateOptions { max_tokens: n, sampling: SamplingParams::greedy(), ..GenerateOptions::default() };
    let prompts = ["What is the capital of France?", "Tell me a long story about a dragon who learns to cook."];
    let mut local = LocalModel::load(&model, BackendKind::Cpu, None).unwrap();
    let reference: Vec<_> = prompts
        .iter()
        .zip([32, 96])
        .map(|(p, n)| {
            let prompt = local.client.chat_prompt(&[ChatMessage::user(*p)]).unwrap();
            pollster::block_on(local.client.generate(&mut local.chain, &prompt, &greedy(n), |_| {})).unwrap()
        })
        .collect();
    assert_eq!(reference[1].tokens.len(), 96, "the second reference must run long enough to be interrupted");
    let client = ClientModel::load(&model).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();

    let transports: Vec<String> = std::env::var("AIT_TEST_TRANSPORTS")
        .map(|t| t.split(',').map(str::to_string).collect())
        .unwrap_or_else(|_| vec!["ws".into(), "webrtc".into()]);
    for transport in transports.iter().map(String::as_str) {
        let dir = root.join(transport);
        let r0 = Relay::start(
            &dir.join("r0"),
            &["--model", m, "--blocks", &blocks(&BEFORE), "--web-dir", web.to_str().unwrap()],
        );
        let boot = r0.addr("tcp");
        let _r2 = Relay::start(&dir.join("r2"), &["--model", m, "--blocks", &blocks(&AFTER), "--bootstrap", &boot]);
        let b = Browser::start().expect("browser");
        b.goto(&page(&r0, &format!("seed={}&transport={transport}", blocks(&TAB)))).unwrap();
        let conn = connected(&b);
        let expect = if transport == "ws" { "WebSocket" } else { "WebRTC-direct" };
        assert!(conn.contains(expect), "{conn}");
        let started = Instant::now();
        let tab = seeding(&b);
        eprintln!("[{transport}] tab {tab} serving {TAB:?} after {:.1} s", started.elapsed().as_secs_f64());

        // a: the tab is the hop of its layers, and the output is the single-process output.
        let prompt = client.chat_prompt(&[ChatMessage::user(prompts[0])]).unwrap();
        let (out, hops) = rt.block_on(async {
            let handle = connect(&[boot.parse().unwrap()]).await.unwrap();
            // The tab's announcement reaches the DHT after it says it serves: wait until its
            // provider record of its first block can be found, as a client's route needs it.
            let key = web_node::net::record::block_key(&client.id, TAB.start);
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let found = handle.get_providers(key.clone(), Duration::from_millis(300), Duration::from_secs(5)).await;
                if found.unwrap().iter().any(|p| p.to_string() == tab) {
                    break;
                }
                assert!(Instant::now() < deadline, "[{transport}] the tab's block 10 is not found in the DHT");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let mut chain = chain(handle, &client, ChainOptions::default());
            let out = client.generate(&mut chain, &prompt, &greedy(32), |_| {}).await;
            let hops = chain.hop_stats();
            chain.end().await.unwrap();
            (out, hops)
        });
        let out = out.unwrap_or_else(|e| panic!("[{transport}] generation through the tab failed: {e}"));
        assert_eq!(out.tokens, reference[0].tokens, "[{transport}] output through the tab differs");
        let (hop, stats) = hops.iter().find(|(h, _)| h.blocks == TAB).expect("a hop of the tab's layers");
        assert_eq!(hop.peer.to_string(), tab, "[{transport}] the {TAB:?} hop is not the tab");
        let decode_steps = stats.steps.saturating_sub(1).max(1);
        eprintln!(
            "[{transport}] through the tab: {:?}; tab hop {:.1} ms/step wall, {:.1} ms/step compute, {} protocol bytes for {} steps",
            out.text,
            stats.wall.as_secs_f64() * 1e3 / stats.steps as f64,
            stats.compute.as_secs_f64() * 1e3 / stats.steps as f64,
            stats.bytes,
            decode_steps,
        );
        let served = b.exec("return Number(document.getElementById('seed-state').dataset.tokens)", json!([])).unwrap();
        eprintln!("[{transport}] the tab counts {served} tokens served");

        // c: a relay for the tab's layers joins mid-generation, then the tab is closed.
        let prompt = client.chat_prompt(&[ChatMessage::user(prompts[1])]).unwrap();
        let mut spare = None;
        let (out, recoveries, route_before) = rt.block_on(async {
            let handle = connect(&[boot.parse().unwrap()]).await.unwrap();
            let mut chain = chain(handle, &client, ChainOptions::default());
            let route = chain.route_watch();
            let mut pieces = 0;
            let mut route_before = String::new();
            let out = client
                .generate(&mut chain, &prompt, &greedy(96), |_| {
                    pieces += 1;
                    if pieces == 10 {
                        route_before = format!("{:?}", route.lock().unwrap());
                        spare = Some(Relay::start(
                            &dir.join("r1"),
                            &["--model", m, "--blocks", &blocks(&TAB), "--bootstrap", &boot],
                        ));
                        b.close_tab().expect("close the seeding tab");
                    }
                })
                .await;
            chain.end().await.unwrap();
            (out, chain.recoveries().to_vec(), route_before)
        });
        let out = out.unwrap_or_else(|e| panic!("[{transport}] generation after closing the tab failed: {e}"));
        assert!(
            route_before.contains(&tab),
            "[{transport}] the tab was not in the route before closing: {route_before}"
        );
        assert_eq!(out.tokens, reference[1].tokens, "[{transport}] output changed after the tab closed");
        let spare = spare.expect("spare relay");
        let rec = recoveries
            .iter()
            .find(|r| r.failed.to_string() == tab)
            .unwrap_or_else(|| panic!("[{transport}] no re-route away from the tab: {recoveries:?}"));
        assert_eq!(rec.blocks, TAB);
        assert_eq!(rec.replacements.iter().map(|p| p.to_string()).collect::<Vec<_>>(), vec![spare.peer.clone()]);
        eprintln!("[{transport}] tab closed: re-routed to {} in {:?} after: {}", spare.peer, rec.took, rec.error);
        drop(b);
    }
    if std::env::var_os("AIT_KEEP_TEST_DIRS").is_none() {
        let _ = std::fs::remove_dir_all(root);
    }
}

/// K-quants in the tab: the default model with its `ffn_down` matrices in Q4_K and Q6_K
/// (alternating layers, as a Q4_K_M file mixes them). A tab seeds [`TAB`] between native
/// relays over WebSocket, so its WebGPU kernels run both K-quant types, and a native client's
/// greedy generation through it equals the single-process CPU output. Then the client audits
/// the tab's hop on a CPU relay of the same layers: WebGPU's honest drift passes.
#[test]
fn a_seeding_tab_serves_k_quant_blocks() {
    use relay::local::{BackendKind, LocalModel};
    use relay::swarm_client::{chain, connect};
    use web_node::client::{ClientModel, GenerateOptions, LayerChain, SamplingParams};
    use web_node::model::ChatMessage;
    use web_node::net::chain::{AuditError, ChainOptions};
    use web_node::trust::{Verdict, DELTA_LIMIT};

    let _serial = serial();
    let root = temp_dir("browser-kquant");
    let model = root.join("smollm2-q4_k-q6_k.gguf");
    std::fs::write(&model, requantize_gguf(&default_model(), k_quant_mix)).expect("write the K-quant model");
    let m = model.to_str().unwrap();
    let opts = GenerateOptions { max_tokens: 16, sampling: SamplingParams::greedy(), ..GenerateOptions::default() };
    let mut local = LocalModel::load(&model, BackendKind::Cpu, None).unwrap();
    let prompt = local.client.chat_prompt(&[ChatMessage::user("What is the capital of France?")]).unwrap();
    let reference = pollster::block_on(local.client.generate(&mut local.chain, &prompt, &opts, |_| {})).unwrap();
    let client = ClientModel::load(&model).unwrap();

    let r0 = Relay::start(
        &root.join("r0"),
        &["--model", m, "--blocks", &blocks(&BEFORE), "--web-dir", web_dir().to_str().unwrap()],
    );
    let boot = r0.addr("tcp");
    let _r2 = Relay::start(&root.join("r2"), &["--model", m, "--blocks", &blocks(&AFTER), "--bootstrap", &boot]);
    let b = Browser::start().expect("browser");
    b.goto(&page(&r0, &format!("seed={}&transport=ws", blocks(&TAB)))).unwrap();
    connected(&b);
    let tab = seeding(&b);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let (out, hops, mut chain) = rt.block_on(async {
        let handle = connect(&[boot.parse().unwrap()]).await.unwrap();
        let mut chain = chain(handle, &client, ChainOptions::default());
        let out = client.generate(&mut chain, &prompt, &opts, |_| {}).await;
        let hops = chain.hop_stats();
        chain.end().await.unwrap();
        (out, hops, chain)
    });
    let out = out.unwrap_or_else(|e| panic!("generation through the K-quant tab failed: {e}"));
    let (hop, _) = hops.iter().find(|(h, _)| h.blocks == TAB).expect("a hop of the tab's layers");
    assert_eq!(hop.peer.to_string(), tab, "the {TAB:?} hop is not the tab");
    assert_eq!(out.tokens, reference.tokens, "output through the K-quant tab differs from one process");
    eprintln!("through the K-quant tab: {:?}", out.text);

    // An audit of the tab's hop, replayed on a CPU relay of its layers that joins now: the
    // honest drift between WebGPU (SwiftShader) and the CPU backend is under the limit.
    let _r1 = Relay::start(&root.join("r1"), &["--model", m, "--blocks", &blocks(&TAB), "--bootstrap", &boot]);
    let outcome = rt.block_on(async {
        let case = chain.audit_cases().iter().find(|c| c.hop.blocks == TAB).expect("the tab's hop").clone();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match chain.audit(&case, case.receipts.len() - 1).await {
                Err(AuditError::NoAuditor { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(300)).await
                }
                other => break other.expect("the audit of the tab runs"),
            }
        }
    });
    assert_eq!(outcome.verdict, Verdict::Passed, "{outcome:?}");
    let worst = outcome.opinions[0].deviation.worst;
    assert!(worst <= DELTA_LIMIT / 10.0, "the tab deviates by {worst:e}");
    eprintln!("the tab's hop audited on a CPU relay over {} tokens: worst {worst:.2e}", outcome.tokens);
    drop(b);
    if std::env::var_os("AIT_KEEP_TEST_DIRS").is_none() {
        let _ = std::fs::remove_dir_all(root);
    }
}

/// Issue 14, test d: tabs fetch and seed model parts over libp2p. `r1` holds the model file and
/// seeds every part; `r0`, the page's relay, took only the head and block 0 from the swarm and
/// hands out no parts over HTTP. Tab A seeds blocks [10, 12): their parts come over libp2p from
/// `r1`. Once `r1` is gone only A holds them, and tab B (another browser, nothing stored)
/// seeding [10, 11) gets block 10 from A through `r0`'s circuit; A counts what it sent.
#[test]
fn tabs_fetch_and_seed_parts_over_libp2p() {
    let _serial = serial();
    let model = default_model();
    let root = temp_dir("browser-parts");
    let web = web_dir();
    let mut r1 = Relay::start(&root.join("r1"), &["--model", model.to_str().unwrap(), "--blocks", "0..1"]);
    let id = r1.model_id();
    let boot = r1.addr("tcp");
    let r0 = Relay::start(
        &root.join("r0"),
        &[
            "--model",
            &id,
            "--blocks",
            "0..1",
            "--no-http-parts",
            "--bootstrap",
            &boot,
            "--web-dir",
            web.to_str().unwrap(),
        ],
    );
    let http = r0.http.clone().expect("r0 serves HTTP");
    let refused = ureq::get(&format!("{http}/ait/models/{id}/blocks/0")).call();
    assert!(matches!(refused, Err(ureq::Error::StatusCode(404))), "r0 hands out parts over HTTP: {refused:?}");
    let tail = |peer: &str| peer[peer.len().saturating_sub(8)..].to_string();
    let origins = |b: &Browser| {
        let script = "const o = document.getElementById('seed-origins').innerText; return o ? o : null;";
        let v = b.wait_for("where the blocks came from", script, Duration::from_secs(10));
        v.unwrap_or_else(|e| panic!("{e}; page:\n{}", b.page_text())).as_str().unwrap_or_default().to_string()
    };

    let a = Browser::start().expect("browser");
    a.goto(&page(&r0, "seed=10..12&transport=ws")).unwrap();
    connected(&a);
    let started = Instant::now();
    let tab_a = seeding(&a);
    let from_a = origins(&a);
    eprintln!("tab A {tab_a} serving [10, 12) after {:.1} s: {from_a}", started.elapsed().as_secs_f64());
    for block in [10, 11] {
        let line = format!("block {block} from the swarm (1 peer: …{})", tail(&r1.peer));
        assert!(from_a.contains(&line), "tab A did not get block {block} from r1 over libp2p: {from_a}");
    }

    r1.kill();
    let b = Browser::start().expect("browser");
    b.goto(&page(&r0, "seed=10..11&transport=ws")).unwrap();
    connected(&b);
    let started = Instant::now();
    let tab_b = seeding(&b);
    let from_b = origins(&b);
    eprintln!("tab B {tab_b} serving [10, 11) after {:.1} s: {from_b}", started.elapsed().as_secs_f64());
    let line = format!("block 10 from the swarm (1 peer: …{})", tail(&tab_a));
    assert!(from_b.contains(&line), "tab B did not get block 10 from tab A: {from_b}");

    // A sent B at least what B received (their numbers are read every second).
    let counted = |b: &Browser, attr: &str, who: &str| {
        let script =
            format!("const n = Number(document.getElementById('seed-state').dataset.{attr}); return n > 0 ? n : null;");
        let v = b.wait_for(&format!("tab {who} to count part bytes {attr}"), &script, Duration::from_secs(10));
        v.unwrap_or_else(|e| panic!("{e}; page:\n{}", b.page_text())).as_u64().unwrap_or(0)
    };
    let received_b = counted(&b, "received", "B");
    let sent = counted(&a, "sent", "A");
    assert!(sent >= received_b, "tab A sent {sent} bytes, tab B received {received_b}");
    eprintln!("tab A sent {sent} bytes, tab B received {received_b}");
    drop((a, b));
    if std::env::var_os("AIT_KEEP_TEST_DIRS").is_none() {
        let _ = std::fs::remove_dir_all(root);
    }
}

/// Issue 14, deliverable 5: a model published from a tab. The tab reads a GGUF file picked in
/// the Publish panel, cuts and hashes it in wasm (to the id the native code computes), signs
/// its card with the tab's key and seeds it; a relay started with only that id fetches the
/// head and every block from the tab, the only seeder, through the page's relay's circuit,
/// and keeps the tab's card.
#[test]
fn a_model_published_from_a_tab_is_fetched_by_a_relay() {
    let _serial = serial();
    let root = temp_dir("browser-publish");
    let (path, manifest) = ait_tests::tiny_model::torrent_model(&root);
    let id = manifest.id().to_hex();
    let web = web_dir();
    let r0 = Relay::start(&root.join("r0"), &["--web-dir", web.to_str().unwrap()]);
    let b = Browser::start().expect("browser");
    b.goto(&page(&r0, "")).unwrap();
    connected(&b);
    b.exec("document.getElementById('tab-publish').click()", json!([])).unwrap();
    b.upload("#publish-file", &path).unwrap();
    b.exec(
        "const n = document.getElementById('publish-name'); n.value = 'Tab Tiny'; \
         document.getElementById('publish-tags').value = 'chat, From Tab'; \
         document.getElementById('publish-go').click();",
        json!([]),
    )
    .unwrap();
    let started = Instant::now();
    let published = b
        .wait_for(
            "the tab to publish the model",
            "const s = document.getElementById('publish-state'); \
             if (s.dataset.state === 'error') return 'ERROR ' + s.innerText; \
             return s.dataset.state === 'seeding' ? s.dataset.model : null;",
            Duration::from_secs(120),
        )
        .unwrap_or_else(|e| panic!("{e}; page:\n{}", b.page_text()));
    let published = published.as_str().unwrap_or_default().to_string();
    eprintln!("published from the tab in {:.1} s: {published}", started.elapsed().as_secs_f64());
    assert!(!published.starts_with("ERROR"), "{published}");
    assert_eq!(published, id, "the tab's model id differs from the native manifest's");

    let boot = r0.addr("tcp");
    let n = manifest.n_layers;
    let blocks = format!("0..{n}");
    let r1 = Relay::start(&root.join("r1"), &["--model", &id, "--blocks", &blocks, "--bootstrap", &boot]);
    assert_eq!(r1.model_id(), id);
    let fetched: Vec<&String> = r1.stdout.iter().filter(|l| l.starts_with("fetched ")).collect();
    assert_eq!(fetched.len(), n + 1, "the head and {n} blocks: {:?}", r1.stdout);
    assert!(fetched.iter().all(|l| l.contains(" from 1 peers, 0 resumed")), "{fetched:?}");
    let card = r1.stdout.iter().find(|l| l.starts_with("card: ")).unwrap_or_else(|| panic!("{:?}", r1.stdout));
    let creator = b.exec("return document.getElementById('publish-creator').innerText", json!([])).unwrap();
    let creator = creator.as_str().unwrap_or_default().trim().to_string();
    assert!(creator.starts_with("12D3"), "{creator}");
    assert_eq!(card, &format!("card: \"Tab Tiny\" by {creator}"), "the card is not signed by the tab's creator key");
    // The card carries the time block 0 took per token on the tab's GPU.
    let listed = ait_tests::procs::ait_stdout(&["models", "--swarm", &boot, "--json"]);
    let listed: serde_json::Value = serde_json::from_str(&listed).expect("ait models --json");
    let m = listed.as_array().and_then(|a| a.iter().find(|m| m["id"] == id.as_str())).expect("the model is listed");
    let measured = &m["card"]["measured"];
    eprintln!("measured in the tab: {measured}");
    assert!(measured["ms_per_block"].as_f64().is_some_and(|ms| ms > 0.0), "{m}");
    assert_eq!(measured["backend"].as_str(), Some("webgpu"), "{m}");

    // Once r1 serves it, the chat's model picker lists the model with the card's labels.
    let option = b
        .wait_for(
            "the picker to show the model's labels",
            "const o = [...document.querySelectorAll('option')].map(o => o.innerText).find(t => t.includes('Tab Tiny'));              return o && o.includes('blocks served') ? o : null;",
            Duration::from_secs(60),
        )
        .unwrap_or_else(|e| panic!("{e}; page:\n{}", b.page_text()));
    let option = option.as_str().unwrap_or_default();
    eprintln!("picker: {option}");
    assert!(option.contains("parameters · q8_0") && option.contains("chat · from-tab"), "{option}");
    // The creator key stays across visits (the node's key does not).
    b.goto(&page(&r0, "")).unwrap();
    connected(&b);
    let again = b.exec("return document.getElementById('publish-creator').innerText", json!([])).unwrap();
    assert_eq!(again.as_str().unwrap_or_default().trim(), creator, "the creator key changed on reload");
    drop(b);
    if std::env::var_os("AIT_KEEP_TEST_DIRS").is_none() {
        let _ = std::fs::remove_dir_all(root);
    }
}

/// A wallet extension stands in: `window.ethereum.request` forwards to the test's anvil, whose
/// unlocked dev account signs typed data and sends transactions, sharing only `account`.
const INJECTED_WALLET: &str = "const rpc = arguments[0], account = arguments[1]; let id = 0; \
    window.ethereum = { request: async ({ method, params }) => { \
        if (method === 'eth_requestAccounts' || method === 'eth_accounts') return [account]; \
        const r = await fetch(rpc, { method: 'POST', headers: { 'content-type': 'application/json' }, \
            body: JSON.stringify({ jsonrpc: '2.0', id: ++id, method, params: params || [] }) }); \
        const j = await r.json(); \
        if (j.error) { const e = new Error(j.error.message); e.code = j.error.code; throw e; } \
        return j.result; } };";

/// Asks "What is the capital of France?" in the Chat panel, checks the answer names Paris,
/// and returns what the page says it cost (more than zero: the tab paid).
fn paid_answer(b: &Browser, limit: Duration) -> alloy::primitives::U256 {
    b.exec("document.getElementById('tab-chat').click();", json!([])).unwrap();
    model_ready(b);
    let (answer, _) = ask(b, "What is the capital of France?", limit);
    assert!(answer.contains("Paris"), "{answer}");
    let cost: alloy::primitives::U256 = b
        .exec("return document.getElementById('chat-notice').dataset.cost", json!([]))
        .unwrap()
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(!cost.is_zero(), "the answer cost nothing");
    cost
}

/// Issue 15, test c: the Wallet panel, with a wallet injected through EIP-1193, connects to
/// the chain the relay names (`--chain`), deposits with a permit (no approve), has the wallet
/// sign the authorization of the tab's session key, and withdraws only after the thaw. Then
/// the tab chats with a relay that charges (`--price`): its session key signs the allocation
/// and the vouchers, the relay submits the authorization and the allocation and redeems the
/// vouchers on anvil, and the relay earned 70% of what the page says the answer cost.
#[test]
fn the_wallet_panel_deposits_with_a_permit_and_authorizes_a_session_key() {
    use alloy::primitives::{Address, U256};
    use relay::settle::bindings::{Escrow, AIT};
    let _serial = serial();
    let root = temp_dir("browser-wallet");
    let chain = ait_tests::procs::ChainDev::start(&root.join("chain"));
    let d = chain.chain.deployment.clone();
    let payer = chain.chain.accounts[1].address;
    let web = web_dir();
    // The relay serves every block and charges, with the wallet of dev account 2.
    let node_dir = root.join("r0");
    std::fs::create_dir_all(&node_dir).unwrap();
    let password = root.join("password");
    std::fs::write(&password, "browser-wallet").unwrap();
    let out = ait_tests::procs::ait()
        .args(["wallet", "new", "--dev-account", "2", "--chain", chain.file.to_str().unwrap(), "--data-dir"])
        .arg(&node_dir)
        .env("AIT_WALLET_PASSWORD", "browser-wallet")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let node: Address = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let model = default_model();
    let r0 = Relay::start(
        &node_dir,
        &[
            "--web-dir",
            web.to_str().unwrap(),
            "--chain",
            chain.file.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--blocks",
            "all",
            "--price",
            "0.000001",
            "--redeem-every",
            "1",
            "--password-file",
            password.to_str().unwrap(),
        ],
    );
    let b = Browser::start().expect("browser");
    b.goto(&page(&r0, "temperature=0")).unwrap();
    connected(&b);
    // Before any wallet, the relay's free tier answers, and the Wallet panel says what is
    // left of the tab's daily quota (4,096 tokens by default) after it.
    model_ready(&b);
    let (answer, _) = ask(&b, "What is the capital of France?", Duration::from_secs(180));
    assert!(answer.contains("Paris"), "{answer}");
    let left = b
        .wait_for(
            "the free tier's quota left",
            "const f = document.getElementById('wallet-free'); return f.dataset.left ? Number(f.dataset.left) : null;",
            Duration::from_secs(10),
        )
        .unwrap();
    let left = left.as_u64().unwrap();
    eprintln!("free tier: {left} tokens left after one answer");
    assert!(left > 4096 - 200 && left < 4096, "{left} of 4096 tokens left");
    b.exec("document.getElementById('new-chat').click();", json!([])).unwrap();
    b.exec(INJECTED_WALLET, json!([d.rpc, payer.to_string()])).unwrap();
    b.exec(
        "document.getElementById('tab-wallet').click(); document.getElementById('wallet-connect').click();",
        json!([]),
    )
    .unwrap();
    let state = |what: &str, until: &str| {
        let script = format!(
            "const s = document.getElementById('wallet-state'); \
             if (s.dataset.state === 'error') return 'ERROR ' + s.innerText; \
             return s.dataset.state === 'connected' && ({until}) ? s.dataset : null;"
        );
        let v = b
            .wait_for(what, &script, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e}; page:\n{}", b.page_text()));
        assert!(!v.as_str().unwrap_or_default().starts_with("ERROR"), "{v}");
        v
    };
    let ait = |n: u64| U256::from(n) * U256::from(10u64).pow(U256::from(18));
    let s = state("the wallet to connect", "s.dataset.ait !== ''");
    assert_eq!(s["address"].as_str().unwrap().parse::<Address>().unwrap(), payer);
    assert_eq!(s["ait"].as_str().unwrap().parse::<U256>().unwrap(), ait(10_000));
    assert_eq!(s["deposited"].as_str().unwrap(), "0");

    // Deposit with a permit: the wallet signs it and sends one transaction.
    b.exec(
        "document.getElementById('wallet-amount').value = '25'; document.getElementById('wallet-deposit').click();",
        json!([]),
    )
    .unwrap();
    let s = state("the deposit", "s.dataset.deposited !== '0'");
    assert_eq!(s["deposited"].as_str().unwrap().parse::<U256>().unwrap(), ait(25));
    assert_eq!(s["ait"].as_str().unwrap().parse::<U256>().unwrap(), ait(10_000 - 25));

    // The session key's authorization: one signature, no transaction.
    b.exec("document.getElementById('wallet-authorize').click();", json!([])).unwrap();
    let s = state("the authorization", "s.dataset.authorization !== ''");
    let auth: serde_json::Value = serde_json::from_str(s["authorization"].as_str().unwrap()).unwrap();
    let signer: Address = auth["signer"].as_str().unwrap().parse().unwrap();
    assert_eq!(s["sessionKey"].as_str().unwrap().parse::<Address>().unwrap(), signer);
    assert_eq!(auth["payer"].as_str().unwrap().parse::<Address>().unwrap(), payer);

    // Withdrawing waits the thaw period: too early is refused, after it the AIT comes back.
    b.exec(
        "document.getElementById('wallet-amount').value = '5'; document.getElementById('wallet-thaw').click();",
        json!([]),
    )
    .unwrap();
    let s = state("the thaw to start", "s.dataset.thawing !== ''");
    assert_eq!(s["thawing"].as_str().unwrap().parse::<U256>().unwrap(), ait(5));
    b.exec("document.getElementById('wallet-withdraw').click();", json!([])).unwrap();
    let refused = b
        .wait_for(
            "the early withdrawal to be refused",
            "const s = document.getElementById('wallet-state'); return s.dataset.state === 'error' ? s.innerText : null;",
            Duration::from_secs(60),
        )
        .unwrap();
    eprintln!("early withdrawal: {refused}");
    assert!(refused.as_str().unwrap_or_default().contains("the thaw ends in"), "{refused}");
    let rpc = |method: &str, params: serde_json::Value| {
        let body = json!({ "jsonrpc": "2.0", "id": 1, "method": method, "params": params });
        ureq::post(&d.rpc).send_json(&body).expect("anvil").body_mut().read_json::<serde_json::Value>().unwrap()
    };
    rpc("evm_increaseTime", json!([d.thaw_seconds + 1]));
    rpc("evm_mine", json!([]));
    b.exec("document.getElementById('wallet-withdraw').click();", json!([])).unwrap();
    let s = state("the withdrawal", "s.dataset.thawing === ''");
    assert_eq!(s["deposited"].as_str().unwrap().parse::<U256>().unwrap(), ait(20));
    assert_eq!(s["ait"].as_str().unwrap().parse::<U256>().unwrap(), ait(10_000 - 20));

    // The tab chats, paying the relay with its session key: no prompt, no transaction.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let reader = relay::settle::dev::wallet_provider(&d.rpc, &chain.chain.accounts[0].key).unwrap();
    let escrow = Escrow::new(d.escrow, reader.clone());
    assert!(!rt.block_on(async { escrow.isSigner(payer, signer).call().await }).unwrap());
    let cost = paid_answer(&b, Duration::from_secs(180));
    // The Wallet panel counts it against the conversation.
    b.exec("document.getElementById('tab-wallet').click();", json!([])).unwrap();
    let spent = b
        .wait_for(
            "the conversation's spend",
            "const s = document.getElementById('wallet-spent'); \
             return s && s.dataset.total !== '0' \
                 ? [s.dataset.total, [...document.querySelectorAll('#wallet-spend li')].map(l => l.dataset.spent)] : null;",
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| panic!("{e}; page:\n{}", b.page_text()));
    assert_eq!(spent, json!([cost.to_string(), [cost.to_string()]]), "the answer cost {cost}");
    // The relay submits the tab's authorization and allocation, then redeems its vouchers:
    // 70% of the cost to the node, the rest to the DAO (the model is not registered).
    let deadline = Instant::now() + Duration::from_secs(60);
    let earned = loop {
        let earned = rt.block_on(async { escrow.earned(node).call().await }).unwrap();
        if earned == cost * U256::from(7u8) / U256::from(10u8) || Instant::now() > deadline {
            break earned;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(earned, cost * U256::from(7u8) / U256::from(10u8), "the tab's answer cost {cost}");
    // The Creator view reads that redeem from the chain: one paid session of the model, its
    // tokens (the cost over the price of 30 layers), what it paid, and no royalties (the model
    // is not registered: the creator's share went to the DAO).
    b.exec("document.getElementById('tab-publish').click();", json!([])).unwrap();
    let row = b
        .wait_for(
            "the Creator view's line of the model",
            "const r = document.querySelector('#creator-earnings tr[data-sessions=\"1\"]'); return r ? r.dataset : null;",
            Duration::from_secs(40),
        )
        .unwrap_or_else(|e| panic!("{e}; page:\n{}", b.page_text()));
    let price_of_30_layers = U256::from(30u64) * U256::from(10u64).pow(U256::from(12u64));
    assert_eq!(row["paid"].as_str(), Some(cost.to_string().as_str()), "{row}");
    assert_eq!(row["tokens"].as_str(), Some((cost / price_of_30_layers).to_string().as_str()), "{row}");
    assert_eq!(row["royalties"].as_str(), Some("0"), "{row}");
    rt.block_on(async {
        assert!(escrow.isSigner(payer, signer).call().await.unwrap());
        let allocated = escrow.allocatedTotal(payer, node).call().await.unwrap();
        assert_eq!(escrow.allocation(payer, node).call().await.unwrap().balance, allocated - cost);
        assert_eq!(escrow.freeBalance(payer).call().await.unwrap().balance, ait(20) - allocated);
        assert_eq!(escrow.earned(d.treasury).call().await.unwrap(), cost * U256::from(3u8) / U256::from(10u8));
        assert_eq!(AIT::new(d.token, reader).balanceOf(d.escrow).call().await.unwrap(), ait(20));
    });
    drop(b);
    if std::env::var_os("AIT_KEEP_TEST_DIRS").is_none() {
        let _ = std::fs::remove_dir_all(root);
    }
}

/// The `newest_block` of every ledger record the page keeps in IndexedDB, once read (polled
/// with [`Browser::wait_for`]: the read is asynchronous).
const KEPT_NEWEST_BLOCKS: &str = "if (window.aitKept === undefined) { window.aitKept = null; \
    const open = indexedDB.open('ait'); open.onsuccess = () => { \
    const all = open.result.transaction('ledger').objectStore('ledger').getAll(); \
    all.onsuccess = () => { window.aitKept = all.result.map(r => r.value.newest_block); open.result.close(); }; }; } \
    return window.aitKept;";

/// Issue 16, test b: a tab earns its chats. It seeds [`TAB`] between relays serving [0, 14)
/// and [16, 30), all charging, and is paid to the wallet it connects: dev account 4, which
/// holds AIT but never deposits any. A native client (`ait generate --swarm --pay`, with its
/// own deposit) generates through the tab, whose Seed panel then holds vouchers worth exactly
/// the tab's price x 2 layers x the tokens that went through it, and again after a reload.
/// The tab redeems them (70% to its wallet's earnings; IndexedDB keeps the redeem's block
/// with the ledger), makes its earnings its deposit (`depositEarned`), authorizes a session
/// key and chats through the swarm: the two relays are paid 70/20/10 from what the tab
/// earned, its own hop is free, and its wallet's AIT never moved.
#[test]
fn a_seeding_tab_earns_redeems_and_pays_its_chats_with_what_it_earned() {
    use ait_tests::paid::{Chain, PRICE, PRICE_UNITS};
    use alloy::primitives::{Address, U256};
    use alloy::providers::Provider;
    use relay::settle::bindings::AIT;
    let _serial = serial();
    let root = temp_dir("browser-earn");
    let chain = Chain::start(&root);
    let d = chain.dev.chain.deployment.clone();
    let tab_wallet = chain.dev.chain.accounts[4].address;
    let model = default_model();
    let m = model.to_str().unwrap();
    let web = web_dir();
    let (r0_dir, n0) = chain.node_dir("r0", 2);
    let (r2_dir, n2) = chain.node_dir("r2", 3);
    let settle = chain.relay_args();
    let settle: Vec<&str> = settle.iter().map(String::as_str).collect();
    let charge = [&settle[..], &["--price", PRICE, "--redeem-every", "1"]].concat();
    let r0 = Relay::start(
        &r0_dir,
        &[&["--model", m, "--blocks", &blocks(&BEFORE), "--web-dir", web.to_str().unwrap()][..], &charge].concat(),
    );
    let boot = r0.addr("tcp");
    let _r2 = Relay::start(
        &r2_dir,
        &[&["--model", m, "--blocks", &blocks(&AFTER), "--bootstrap", &boot][..], &charge].concat(),
    );
    // The tab asks 1,000 times the relays' price, so what it earns from one generation pays
    // for its own answer.
    let tab_price_units = U256::from(PRICE_UNITS) * U256::from(1000u64);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let escrow = chain.escrow();
    let token =
        AIT::new(d.token, relay::settle::dev::wallet_provider(&d.rpc, &chain.dev.chain.accounts[0].key).unwrap());
    let tab_ait = rt.block_on(async { token.balanceOf(tab_wallet).call().await }).unwrap();

    // `?seed=&price=` starts seeding once the wallet to be paid is connected.
    let b = Browser::start().expect("browser");
    let page_opened = Instant::now();
    b.goto(&page(&r0, &format!("seed={}&price=0.001&temperature=0", blocks(&TAB)))).unwrap();
    let connect_and_seed = || {
        connected(&b);
        b.exec(INJECTED_WALLET, json!([d.rpc, tab_wallet.to_string()])).unwrap();
        b.exec(
            "document.getElementById('tab-wallet').click(); document.getElementById('wallet-connect').click();",
            json!([]),
        )
        .unwrap();
        b.exec("document.getElementById('tab-seed').click();", json!([])).unwrap();
        seeding(&b)
    };
    let tab = connect_and_seed();
    let state = b.exec("return document.getElementById('seed-state').innerText", json!([])).unwrap();
    assert!(state.as_str().unwrap_or_default().contains("charging 0.001 AIT per layer-token"), "{state}");

    // A native client with a deposit pays for a generation through the tab (the only server
    // of its layers; its DHT records may take a moment to be found).
    let (cli_dir, _) = chain.unstaked_payer_dir("cli", 6, "200");
    let started = Instant::now();
    let stderr = loop {
        let out = ait_tests::procs::ait()
            .args(["generate", "--swarm", &boot, "--model", m, "--prompt", "The capital of France is"])
            .args(["--temperature", "0", "--max-tokens", "16", "--pay", "--data-dir", cli_dir.to_str().unwrap()])
            .args(&settle)
            .output()
            .expect("ait generate");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() {
            break stderr;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "ait generate --pay through the tab failed:\n{stderr}");
        std::thread::sleep(Duration::from_secs(2));
    };
    let tokens_line = stderr.lines().find(|l| l.contains("generated:")).expect("the generation's numbers");
    let number = |after: &str| -> u64 {
        let rest = &tokens_line[tokens_line.find(after).unwrap() + after.len()..];
        rest.split_whitespace().next().unwrap().parse().unwrap()
    };
    let tokens = number("prompt: ") + number("generated: ") - u64::from(tokens_line.contains("(Length)"));
    let tab_layers = U256::from(TAB.len());
    let owed = tab_price_units * tab_layers * U256::from(tokens);
    eprintln!("the client's generation: {tokens} tokens through the tab {tab}, {owed} owed to it");

    // The Seed panel holds the vouchers: exactly what the work through the tab cost.
    let earnings = |what: &str, until: &str| {
        b.wait_for(
            what,
            &format!("const e = document.getElementById('seed-earnings').dataset; return ({until}) ? e : null;"),
            Duration::from_secs(40),
        )
        .unwrap_or_else(|e| panic!("{e}; page:\n{}", b.page_text()))
    };
    let e = earnings("the tab's vouchers", &format!("e.pending === '{owed}'"));
    assert_eq!(e["sessions"], json!("1"), "{e}");
    assert_eq!(e["earned"], json!("0"), "{e}");
    let node_share = owed * U256::from(7u8) / U256::from(10u8);
    // The rate: the node share of what it was paid, over less time than since the page opened.
    let since_opened = U256::from(page_opened.elapsed().as_secs() + 1);
    let at_least = node_share * U256::from(3600u64) / since_opened;
    assert!(e["perHour"].as_str().unwrap().parse::<U256>().unwrap() >= at_least, "{e}: at least {at_least} an hour");
    assert_eq!(e["waiting"], json!("1"), "the client's signed allocation waits to be submitted: {e}");

    // The vouchers outlive the page: reloaded, the tab seeds again once the wallet is back,
    // and its ledger comes back from IndexedDB.
    b.exec("location.reload();", json!([])).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    connect_and_seed();
    let e = earnings("the tab's vouchers after a reload", &format!("e.pending === '{owed}'"));
    assert_eq!(e["sessions"], json!("1"), "{e}");

    // Redeem: the tab's wallet submits the client's authorization, allocation and voucher.
    let step = |button: &str, what: &str, says: &str| {
        let before = b.exec("return document.getElementById('seed-earn-state').innerText", json!([])).unwrap();
        b.exec(&format!("document.getElementById('{button}').click();"), json!([])).unwrap();
        let said = b
            .wait_for(
                what,
                &format!(
                    "const s = document.getElementById('seed-earn-state'); const t = s.innerText; \
                     return t && t !== {before} && !t.startsWith('Waiting') ? [s.dataset.error, t] : null;"
                ),
                Duration::from_secs(60),
            )
            .unwrap_or_else(|e| panic!("{e}; page:\n{}", b.page_text()));
        assert_eq!(said[0], json!("false"), "{what}: {said}");
        assert!(said[1].as_str().unwrap_or_default().contains(says), "{what}: {said}");
    };
    let block = || rt.block_on(async { token.provider().get_block_number().await }).unwrap();
    let before_redeem = block();
    step("seed-redeem", "the redeem", "Redeemed 1 voucher(s)");
    let after_redeem = block();
    assert_eq!(rt.block_on(async { escrow.earned(tab_wallet).call().await }).unwrap(), node_share);
    // IndexedDB keeps the block the redeem was mined in with the ledger, so a reloaded tab
    // reads the chain no earlier than its own redeem.
    let kept = b.wait_for("the kept ledger", KEPT_NEWEST_BLOCKS, Duration::from_secs(10)).unwrap();
    let kept: Vec<u64> = serde_json::from_value(kept).unwrap();
    assert!(
        kept.len() == 1 && (before_redeem + 1..=after_redeem).contains(&kept[0]),
        "kept newest blocks {kept:?}, the redeem was mined in {before_redeem}..={after_redeem}"
    );
    let e = earnings("the redeemed earnings", &format!("e.earned === '{node_share}' && e.pending === '0'"));
    assert_eq!(e["redeemed"].as_str(), Some(node_share.to_string().as_str()), "{e}");
    assert_eq!(e["waiting"], json!("0"), "{e}");

    // Spend: the earnings become the tab's deposit.
    step("seed-spend", "spending the earnings", "are now your deposit");
    rt.block_on(async {
        assert_eq!(escrow.earned(tab_wallet).call().await.unwrap(), U256::ZERO);
        assert_eq!(escrow.freeBalance(tab_wallet).call().await.unwrap().balance, node_share);
    });

    // The tab authorizes a session key and chats, paying the relays from what it earned.
    b.exec(
        "document.getElementById('tab-wallet').click(); document.getElementById('wallet-authorize').click();",
        json!([]),
    )
    .unwrap();
    b.wait_for(
        "the session key's authorization",
        "const s = document.getElementById('wallet-state'); \
         if (s.dataset.state === 'error') return 'ERROR ' + s.innerText; \
         return s.dataset.authorization ? s.dataset.authorization : null;",
        Duration::from_secs(60),
    )
    .map(|v| assert!(!v.as_str().unwrap_or_default().starts_with("ERROR"), "{v}"))
    .unwrap_or_else(|e| panic!("{e}; page:\n{}", b.page_text()));
    let cost = paid_answer(&b, Duration::from_secs(300));
    // Each relay redeems its half (the tab's own hop does not charge it), after what the
    // native client paid it for its layers of its tokens: 70% to the node.
    let deadline = Instant::now() + Duration::from_secs(60);
    let relay_layers = U256::from(BEFORE.len());
    let from_client = U256::from(PRICE_UNITS) * relay_layers * U256::from(tokens);
    let relay_share = (from_client + cost / U256::from(2u8)) * U256::from(7u8) / U256::from(10u8);
    let (e0, e2) = loop {
        let read = |n: Address| rt.block_on(async { escrow.earned(n).call().await }).unwrap();
        let (e0, e2) = (read(n0), read(n2));
        if (e0 == relay_share && e2 == relay_share) || Instant::now() > deadline {
            break (e0, e2);
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!((e0, e2), (relay_share, relay_share), "the tab's answer cost {cost}");
    let paid_layers = U256::from(BEFORE.len() + AFTER.len());
    assert_eq!(cost % (U256::from(PRICE_UNITS) * paid_layers), U256::ZERO, "{cost}: {paid_layers} paid layers a token");
    rt.block_on(async {
        // What the relays were paid came out of the earnings the tab deposited.
        let allocated = escrow.allocatedTotal(tab_wallet, n0).call().await.unwrap()
            + escrow.allocatedTotal(tab_wallet, n2).call().await.unwrap();
        assert_eq!(escrow.freeBalance(tab_wallet).call().await.unwrap().balance, node_share - allocated);
        // The tab's wallet never paid in AIT of its own.
        assert_eq!(token.balanceOf(tab_wallet).call().await.unwrap(), tab_ait);
    });
    eprintln!("the tab earned {node_share}, and its answer cost {cost} of it");
    drop(b);
    if std::env::var_os("AIT_KEEP_TEST_DIRS").is_none() {
        let _ = std::fs::remove_dir_all(root);
    }
}
