//! The audit's limit against honest drift and against every way a node can lie, on
//! generated models whose weights and inputs differ from those `ait calibrate` uses.

use std::path::Path;
use std::time::{Duration, Instant};

use ait_tests::chain_fixture::{Fault, Fixture, Weights};
use ait_tests::evm::{sent, warp};
use ait_tests::lying_backend::Lie;
use ait_tests::paid::Chain;
use ait_tests::procs::{ait, temp_dir, three_relays_with, Relay};
use ait_tests::tiny_model::{torrent_liar, torrent_model, TempDir};
use relay::swarm_client::chain as swarm_chain;
use web_node::client::{ClientModel, GenerateOptions, SamplingParams};
use web_node::engine::gpu::GpuContext;
use web_node::model::ModelId;
use web_node::net::chain::{ChainOptions, SwarmChain};
use web_node::net::evidence;
use web_node::net::fraud::{send, Answer};
use web_node::net::node::NodeHandle;
use web_node::trust::{FraudReport, Reputation, Verdict, DELTA_LIMIT};

use alloy::primitives::{Bytes, U256};
use relay::calibrate::{calibrate_generated, FAULTS};
use relay::settle::bindings::{Staking, Tribunal, AIT};
use relay::settle::deploy::{AIT_UNIT, MIN_STAKE_AIT, SLASH_AIT};
use relay::settle::dev::wallet_provider;
use relay::settle::tribunal::{AccuseError, Accuser};

/// A session's steps on the CPU backend and on wgpu (lavapipe here), each checked against an
/// audit's one prefill on either backend, never deviate by more than a tenth of the limit;
/// every session of every fault class (a skipped layer, Q4_1 run for Q8_0, another model,
/// noise of 1e-3, the input returned, a stale position) deviates by more than the limit on
/// its worst token, against either auditor.
#[test]
fn the_audit_limit_separates_honest_backends_from_every_fault() {
    let gpu = pollster::block_on(GpuContext::new()).expect("a wgpu adapter (lavapipe) is required");
    let mut honest_tokens = 0;
    for seed in [11, 12, 13] {
        let c = calibrate_generated(seed, 3, Some(&gpu), 6).unwrap();
        assert_eq!(c.backends.len(), 2, "{:?}", c.backends);
        let (worst, at) = c.worst_honest();
        assert!(worst <= DELTA_LIMIT / 10.0, "seed {seed}: honest {worst:e} at {at}");
        for fault in FAULTS {
            let mildest = c.mildest_session_of(fault);
            assert!(mildest > DELTA_LIMIT, "seed {seed}: {fault} deviates only {mildest:e}\n{c}");
        }
        for r in &c.ranges {
            // Four honest pairs (cpu and wgpu sessions against cpu and wgpu audits), each
            // token of each session checked.
            assert_eq!(r.honest.len(), 4);
            honest_tokens +=
                r.honest.iter().flat_map(|p| &p.sessions).map(|s| s.prefill.len() + s.decode.len()).sum::<usize>();
        }
    }
    assert_eq!(honest_tokens, 3 * 2 * 4 * 3 * 24);
}

/// Real processes: three relays of the default model and a spare of the middle range on the
/// other backend (wgpu on lavapipe); `ait generate --swarm --audit-rate 1` audits every hop
/// it can after the generation. The middle hop is replayed on the other backend and passes
/// (honest cross-backend drift is far under the limit); the outer hops have nobody else to
/// audit them, which is said, and judges nobody. The first relay, an API gateway with
/// `--audit-rate 1`, audits the other relays' hops of its request after the answer (its own
/// server's hop it leaves to others) and counts them in `/metrics`.
#[test]
fn the_cli_and_the_gateway_audit_a_relay_on_another_backend_and_it_passes() {
    let model = ait_tests::default_model();
    let m = model.to_str().unwrap();
    let root = temp_dir("trust-cli");
    let mut relays = three_relays_with(&root, &model, &["--audit-rate", "1"]);
    let boot = relays[0].addr("tcp");
    relays.push(Relay::start(
        &root.join("r3"),
        &["--model", m, "--blocks", "10..20", "--backend", "wgpu", "--bootstrap", &boot],
    ));
    let args = [
        "generate",
        "--model",
        m,
        "--temperature",
        "0",
        "--max-tokens",
        "16",
        "--chat",
        "--prompt",
        "Name three colours.",
        "--swarm",
        &boot,
        "--audit-rate",
        "1",
    ];
    let out = ait().args(args).output().expect("run ait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ait generate failed:\n{stderr}");
    let audits: Vec<&str> = stderr.lines().filter(|l| l.starts_with("audit: ")).collect();
    assert_eq!(audits.len(), 3, "one audit line per hop:\n{stderr}");
    let middle: Vec<&&str> = audits.iter().filter(|l| l.contains("(blocks 10..20) passed over ")).collect();
    assert_eq!(middle.len(), 1, "the middle hop was not audited and passed:\n{stderr}");
    let unmade = audits.iter().filter(|l| l.starts_with("audit: not made: no server other than")).count();
    assert_eq!(unmade, 2, "{stderr}");
    eprintln!("{}", middle[0]);

    let http = relays[0].http.clone().expect("the gateway's API");
    let models: serde_json::Value =
        ureq::get(&format!("{http}/v1/models")).call().expect("/v1/models").body_mut().read_json().unwrap();
    let name = models["data"][0]["id"].as_str().expect("a model").to_string();
    let body = serde_json::json!({"model": name, "prompt": "The sea is", "max_tokens": 8, "temperature": 0});
    ureq::post(&format!("{http}/v1/completions")).send_json(&body).expect("a completion");
    let count = |result: &str| -> f64 {
        let text = ureq::get(&format!("{http}/metrics")).call().expect("/metrics").body_mut().read_to_string().unwrap();
        let name = format!("ait_audits_total{{result=\"{result}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(&name)?.trim().parse().ok()).unwrap_or(0.0)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while count("passed") + count("not_made") < 2.0 {
        assert!(std::time::Instant::now() < deadline, "the gateway's audits did not run");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // [10, 20) has the other backend; [20, 30) has nobody else; its own hop [0, 10), first in
    // the route (audits run in route order), is not audited.
    assert_eq!((count("passed"), count("not_made"), count("faulty"), count("unconfirmed")), (1.0, 1.0, 0.0, 0.0));
    drop(relays);
    let _ = std::fs::remove_dir_all(root);
}

/// What `/metrics` at `http` counts for `name{label="value"}` (0 when absent).
fn metric(http: &str, name: &str, label: &str, value: &str) -> f64 {
    let text = ureq::get(&format!("{http}/metrics")).call().expect("/metrics").body_mut().read_to_string().unwrap();
    let name = format!("{name}{{{label}=\"{value}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&name)?.trim().parse().ok()).unwrap_or(0.0)
}

/// The fraud report of an audit of the middle hop of an in-process chain over `servers` of
/// the model at `path` (`id`), with `faults` set (the verdict must be faulty).
async fn audited(
    path: &std::path::Path,
    id: ModelId,
    servers: &[(std::ops::Range<usize>, f64)],
    faults: &[(usize, Fault)],
) -> FraudReport {
    let fx = Fixture::serving(path, id, servers, TempDir::new("trust-fraud-fixture"));
    for &(i, f) in faults {
        fx.set_fault(i, f, 0);
    }
    let opts = ChainOptions { settle: Duration::from_millis(10), ..ChainOptions::default() };
    let mut chain = fx.chain(opts);
    fx.outputs(&mut chain, &[1, 2, 3, 4, 5], &[6, 7, 8]).await.expect("the chain runs");
    web_node::client::LayerChain::end(&mut chain).await.expect("end");
    let case = chain.audit_cases()[1].clone();
    let outcome = chain.audit(&case, case.receipts.len() - 1).await.expect("the audit runs");
    assert_eq!(outcome.verdict, Verdict::Faulty, "{outcome:?}");
    outcome.report.expect("a faulty verdict leaves a report")
}

/// Greedy tokens of a prompt through `chain`, which then holds its audit cases.
async fn greedy(client: &ClientModel, chain: &mut SwarmChain) -> Vec<u32> {
    let opts = GenerateOptions { max_tokens: 8, sampling: SamplingParams::greedy(), ..GenerateOptions::default() };
    let out = client.generate(chain, &[1, 2, 3, 4, 5, 6, 7], &opts, |_| {}).await.expect("the generation runs");
    out.tokens
}

/// A client at `handle` keeping `book` generates through the relay `liar` (lying as `lie`
/// says) once routing has found it, notices nothing, audits its session on the other servers
/// of its layers, judges it faulty and routes its next chain around it, generating
/// `reference`; returns the fraud report.
async fn caught(
    handle: &NodeHandle,
    client: &ClientModel,
    book: &Reputation,
    liar: libp2p::PeerId,
    reference: &[u32],
    lie: &str,
) -> FraudReport {
    let opts = ChainOptions { reputation: book.clone(), ..ChainOptions::default() };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut chain = loop {
        let mut chain = swarm_chain(handle.clone(), client, opts.clone());
        greedy(client, &mut chain).await;
        if chain.audit_cases()[1].hop.peer == liar {
            break chain;
        }
        assert!(Instant::now() < deadline, "{lie}: routing never chose the lying relay");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(chain.recoveries().is_empty(), "{lie}: noticed while generating");
    let case = chain.audit_cases()[1].clone();
    let outcome = chain.audit(&case, case.receipts.len() - 1).await.expect("the audit runs");
    assert_eq!(outcome.verdict, Verdict::Faulty, "{lie}: {outcome:?}");
    let worst = outcome.opinions.iter().map(|o| o.deviation.worst).fold(f32::INFINITY, f32::min);
    assert!(worst > DELTA_LIMIT, "{lie}: {worst:e}");
    eprintln!("{lie}: judged faulty by {} auditors, mildest worst token {worst:.2e}", outcome.opinions.len());
    assert!(book.rating(&liar).convicted, "{lie}");
    let mut next = swarm_chain(handle.clone(), client, opts);
    let exact = greedy(client, &mut next).await;
    assert_ne!(next.audit_cases()[1].hop.peer, liar, "{lie}: routed through the liar again");
    assert_eq!(exact, reference, "{lie}: the chain around the liar");
    outcome.report.expect("a faulty verdict leaves a report")
}

/// Test 6a across real processes, for every fault class, and what a fraud report does
/// then. Two relays serve layers 0..2 and 4..6 of the generated model on the
/// CPU, and two spares serve 2..4 on wgpu (lavapipe: slower, so routing prefers a CPU server
/// of those layers). For each fault class, a `lying_relay` process of layers 2..4 joins on the
/// CPU: it announces the model and signs a receipt for every answer, computed with a skipped
/// layer, Q4_1 weights run for Q8_0 or another model of the same shape, or computed honestly
/// and then answered with noise of 1e-3, its input, or a stale position.
/// A client's generation routes through it and notices nothing; an audit of its session
/// replays on the two spares, both fail it, it is judged faulty and convicted in the
/// client's book; the next chain of that book routes around it (and the liars caught before,
/// still up) and generates exactly what the chain through a spare generated before any liar
/// joined.
///
/// The fraud report of the first liar (a skipped layer) is then sent over `/ait/fraud/2` to
/// a judge, which recomputes it on its own server, convicts the node and passes the report
/// on to the other judge, which recomputes and convicts in turn. The same report again
/// counts once; a forged one and garbage are refused; a report by two auditors who framed
/// an honest node (made in process) is recomputed and clears it. The conviction is on the
/// relay's disk when it has stopped.
///
/// Both relays judge (`--judge`, each with 1,000 AIT staked on a dev chain): asked about an
/// address the chain does not bind to the liar they sign nothing; asked about the liar's
/// bound address they sign its verdict, and the two signatures accuse it on chain
/// (`Accuser`, as a client with a wallet does). Each judge shows the report to anyone who
/// asks by its id (`/ait/evidence/1`), as jurors would, and holds none it did not sign.
/// Unappealed, the case is closed by the judges' relays on their own once the appeal window
/// has passed: the liar's stake is slashed and each judge paid its bounty. Restarted without
/// HTTP, a judge still shows the report from disk and recomputes the reports it is sent.
#[test]
fn a_fraud_report_travels_between_relays_that_each_recompute_it_and_their_verdicts_slash_the_liar() {
    let _ = tracing_subscriber::fmt().with_env_filter("warn,web_node::net::chain=info").with_test_writer().try_init();
    let root = temp_dir("trust-fraud");
    std::fs::create_dir_all(&root).expect("dir");
    let (path, manifest) = torrent_model(&root);
    let p = path.to_str().unwrap();
    let chain = Chain::start(&root);
    let d = chain.dev.chain.deployment.clone();
    let judge_dir = |name: &str, account: usize| {
        let (dir, address) = chain.wallet_dir(name, account);
        chain.ait(&["stake", &MIN_STAKE_AIT.to_string(), "--data-dir", dir.to_str().unwrap()]);
        (dir, address)
    };
    let ((d0, a0), (d1, a1)) = (judge_dir("r0", 1), judge_dir("r1", 2));
    let settle = chain.relay_args();
    let settle: Vec<&str> = settle.iter().map(String::as_str).collect();
    let relay = |name: &str, args: &[&str]| Relay::start(&root.join(name), &[&["--model", p][..], args].concat());
    let first = relay("first", &["--blocks", "0..2"]);
    let boot = first.addr("tcp");
    let _last = relay("last", &["--blocks", "4..6", "--bootstrap", &boot]);
    let spares =
        ["spare-0", "spare-1"].map(|n| relay(n, &["--blocks", "2..4", "--backend", "wgpu", "--bootstrap", &boot]));
    let spares_claim = spares.iter().map(|r| r.ms_per_block().expect("a spare's speed")).fold(f64::INFINITY, f64::min);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (fast, spare) = (0.1, 1.0);
    let servers = [(0..2, fast), (2..4, fast), (4..6, fast), (2..4, spare), (2..4, spare)];
    let client_model = ClientModel::load(&path).expect("the client's model");
    let generating = rt.block_on(relay::swarm_client::connect(&[boot.parse().unwrap()])).expect("a client");
    let reference = rt.block_on(async {
        let mut honest = swarm_chain(generating.clone(), &client_model, ChainOptions::default());
        greedy(&client_model, &mut honest).await
    });
    let mut reports = Vec::new();
    let by_weights = [Weights::SkipLayer, Weights::OtherQuant, Weights::OtherModel]
        .map(|w| (format!("{w:?}"), "--weights", torrent_liar(&root, w, 2..4).to_str().unwrap().to_string()));
    let by_answers =
        [Lie::Noise, Lie::Echo, Lie::Stale].map(|l| (format!("{l:?}"), "--lie", format!("{l:?}").to_lowercase()));
    // The client keeps one book: the liars it caught stay up, left out of its routes and
    // audits, as liars that are not stopped would.
    let book = Reputation::new();
    let mut liars = Vec::new();
    for (lie, how, what) in by_weights.into_iter().chain(by_answers) {
        let args = ["--model", p, how, &what, "--blocks", "2..4", "--bootstrap", &boot];
        let liar = Relay::start_lying(Path::new(env!("CARGO_BIN_EXE_lying_relay")), &root.join(&lie), &args);
        let claim = liar.ms_per_block().expect("the liar's speed");
        assert!(
            claim < spares_claim,
            "routing prefers the liar on the CPU: it claims {claim} ms, the spares {spares_claim}"
        );
        let peer = liar.peer.parse().unwrap();
        reports.push(rt.block_on(caught(&generating, &client_model, &book, peer, &reference, &lie)));
        liars.push(liar);
    }
    drop(liars);
    // The judges join: relays of the liar's layers that were not its auditors.
    let judge = [&["--model", p, "--blocks", "2..4", "--judge", "--bootstrap", &boot][..], &settle].concat();
    let r0 = Relay::start(&d0, &judge);
    let r1 = Relay::start(&d1, &[&judge[..], &["--bootstrap", &r0.addr("tcp")]].concat());
    let (h0, h1) = (r0.http.clone().expect("r0's http"), r1.http.clone().expect("r1's http"));
    let client = rt
        .block_on(relay::swarm_client::connect(&[r0.addr("tcp").parse().unwrap(), r1.addr("tcp").parse().unwrap()]))
        .expect("a client");
    let report = reports.swap_remove(0);
    let (framing, liar) = rt.block_on(async {
        let framing = audited(&path, manifest.id(), &servers, &[(3, Fault::Lie), (4, Fault::Lie)]).await;
        // The liar's operator (dev account 5) staked and bound the liar's peer id.
        let liar = chain.dev.chain.accounts[5].clone();
        let p = wallet_provider(&d.rpc, &liar.key).unwrap();
        let stake = U256::from(2 * SLASH_AIT) * U256::from(AIT_UNIT);
        sent(AIT::new(d.token, p.clone()).approve(d.staking, stake).send().await).await.expect("approve");
        sent(Staking::new(d.staking, p.clone()).stake(stake).send().await).await.expect("stake");
        let peer = Bytes::from(report.accused.node.to_bytes());
        sent(Staking::new(d.staking, p).bind(peer).send().await).await.expect("bind");
        (framing, liar.address)
    });
    let v0 = rt.block_on(async {
        let to0: libp2p::PeerId = r0.peer.parse().unwrap();
        let mut control = client.control();
        let unbound = chain.address_of(6);
        let answer = send(&mut control, to0, &report.encode(), Some(unbound)).await.expect("the relay answers");
        assert_eq!(answer, Answer::Convicted(None), "a verdict about an address not bound to the liar");
        let again = send(&mut control, to0, &report.encode(), Some(liar)).await.expect("the relay answers");
        let Answer::Known(Some(v0)) = again else { panic!("a report counts once, and is signed: {again:?}") };
        assert_eq!(v0.judge, a0);
        let mut forged = report.clone();
        forged.replays.pop();
        let refused = send(&mut control, to0, &forged.encode(), None).await.expect("the relay answers");
        assert!(matches!(&refused, Answer::Refused(why) if why.contains("auditors")), "{refused:?}");
        let garbage = send(&mut control, to0, b"not a report", None).await.expect("the relay answers");
        assert!(matches!(garbage, Answer::Refused(_)), "{garbage:?}");
        let cleared = send(&mut control, to0, &framing.encode(), Some(liar)).await.expect("the relay answers");
        assert_eq!(cleared, Answer::Cleared, "the framed node is cleared by recomputation");
        v0
    });
    let counted = |http: &str, answer: &str| metric(http, "ait_fraud_reports_total", "answer", answer);
    // The first relay passed on the report it confirmed (and only that one); asked
    // afterwards, the second relay signs its verdict too.
    let deadline = Instant::now() + Duration::from_secs(60);
    while counted(&h1, "convicted") < 1.0 {
        assert!(Instant::now() < deadline, "the second relay never recomputed the report");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let v1 = rt.block_on(async {
        let to1: libp2p::PeerId = r1.peer.parse().unwrap();
        let answer = send(&mut client.control(), to1, &report.encode(), Some(liar)).await.expect("the relay answers");
        let Answer::Known(Some(v1)) = answer else { panic!("the second relay did not sign: {answer:?}") };
        v1
    });
    assert_eq!(v1.judge, a1);
    // (How often each judge was told of the report again depends on which other relays of
    // those layers it was passed on to: "known" is not counted here.)
    assert_eq!(
        ["convicted", "refused", "cleared"].map(|a| counted(&h0, a)),
        [1.0, 2.0, 1.0],
        "what the first relay made of each report"
    );
    assert_eq!(["convicted", "refused", "cleared"].map(|a| counted(&h1, a)), [1.0, 0.0, 0.0]);

    // The two signed verdicts accuse the liar on chain; unappealed, it is slashed.
    rt.block_on(async {
        let client_node = &client;
        let client = wallet_provider(&d.rpc, &chain.dev.chain.accounts[7].key).unwrap();
        let accuser = Accuser::new(&d, client.clone()).expect("the chain has a tribunal");
        let lone = accuser.accuse(&report, liar, std::slice::from_ref(&v0)).await;
        assert!(matches!(lone, Err(AccuseError::Quorum(1))), "{lone:?}");
        let judges = accuser.accuse(&report, liar, &[v0.clone(), v1.clone(), v0.clone()]).await.expect("accused");
        assert_eq!(judges, vec![a0, a1]);
        let tribunal = Tribunal::new(d.tribunal, client.clone());
        let id = alloy::primitives::B256::from(report.id());
        let staking = Staking::new(d.staking, client.clone());
        let before = staking.stakeOf(liar).call().await.unwrap().staked;
        let token = AIT::new(d.token, client.clone());
        let earned = token.balanceOf(a0).call().await.unwrap();
        // The judges kept the report: anyone may fetch it by id, as jurors would.
        let (to0, to1): (libp2p::PeerId, libp2p::PeerId) = (r0.peer.parse().unwrap(), r1.peer.parse().unwrap());
        for to in [to0, to1] {
            let shown = evidence::fetch(&mut client_node.control(), to, report.id()).await.expect("the evidence");
            assert_eq!(shown, report, "the report a judge shows");
        }
        let unknown = evidence::fetch(&mut client_node.control(), to0, framing.id()).await;
        assert!(matches!(unknown, Err(evidence::EvidenceError::NotHeld(_))), "{unknown:?}");
        // Unappealed, the case is closed by the judges' relays once the window has passed.
        warp(&client, tribunal.appealWindow().call().await.unwrap() + 1).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        while tribunal.caseOf(id, liar).call().await.unwrap().stage != 4 {
            assert!(Instant::now() < deadline, "the judges' relays never closed the case");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let after = staking.stakeOf(liar).call().await.unwrap().staked;
        assert_eq!(before - after, U256::from(SLASH_AIT) * U256::from(AIT_UNIT), "the liar's slash");
        let bounty = U256::from(relay::settle::deploy::BOUNTY_AIT) * U256::from(AIT_UNIT);
        assert_eq!(token.balanceOf(a0).call().await.unwrap() - earned, bounty, "the judge's bounty");
    });
    let liar_peer = report.accused.node;
    let framed = framing.accused.node;
    drop((r0, r1));
    // The conviction outlives the relay: its book on disk holds the liar, not the framed node.
    let book = Reputation::open(&d0.join("reputation.redb")).expect("the first relay's book");
    assert!(book.rating(&liar_peer).convicted && !book.rating(&framed).convicted);
    drop(book);
    // So does its evidence; and a relay without HTTP takes reports too.
    let quiet = [&["--model", p, "--blocks", "2..4", "--judge", "--no-http"][..], &settle].concat();
    let r0 = Relay::start(&d0, &quiet);
    rt.block_on(async {
        let client = relay::swarm_client::connect(&[r0.addr("tcp").parse().unwrap()]).await.expect("a client");
        let to0: libp2p::PeerId = r0.peer.parse().unwrap();
        let shown = evidence::fetch(&mut client.control(), to0, report.id()).await.expect("the kept evidence");
        assert_eq!(shown, report);
        let answer = send(&mut client.control(), to0, &framing.encode(), None).await.expect("the relay answers");
        assert_eq!(answer, Answer::Cleared, "a --no-http relay recomputes reports");
    });
    drop(r0);
    drop(chain);
    let _ = std::fs::remove_dir_all(root);
}
