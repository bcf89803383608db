//! Paying for inference inside the protocol (issues 15 and 16), with real `ait` processes on
//! `ait chain dev`: relays that charge (`--price`) serve a gateway relay that pays (`--pay`)
//! through vouchers sent with its steps; each relay keeps its vouchers in its ledger and
//! redeems them; every balance on chain matches price x layers x tokens, split 70/20/10 to
//! the unit. A client that stops paying is cut off at the credit cap; a relay killed -9
//! redeems after a restart exactly what its ledger kept.

use std::time::{Duration, Instant};

use ait_tests::default_model;
use ait_tests::paid::{Chain, NODE_STAKE_AIT, PRICE, PRICE_UNITS};
use ait_tests::procs::{temp_dir, Relay};
use alloy::primitives::{Address, U256};
use relay::settle::bindings::Escrow;
use relay::settle::dev::wallet_provider;
use web_node::net::frame::{read_frame, write_frame, FrameError};
use web_node::net::protocol::{ErrorCode, Request, Response, PROTOCOL};
use web_node::settle::{HopBill, PayTerms, Payer, Payment, SessionKey, SignedVoucher};
use web_node::trust::{output_hash, InputChain, Receipt, SessionNonce};

use crate::serial;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn units(n: u64) -> U256 {
    U256::from(n)
}

/// Waits (up to 60 s) until `earned(who)` on chain is `want` for every pair; panics with
/// what it saw otherwise.
fn wait_earned(chain: &Chain, want: &[(Address, U256)]) {
    let escrow = chain.escrow();
    let rt = runtime();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen: Vec<U256> = rt.block_on(async {
            let mut seen = Vec::new();
            for (a, _) in want {
                seen.push(escrow.earned(*a).call().await.unwrap());
            }
            seen
        });
        if seen.iter().zip(want).all(|(s, (_, w))| s == w) {
            return;
        }
        assert!(Instant::now() < deadline, "earned on chain {seen:?}, expected {:?}", want);
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// POSTs a greedy completion of `max_tokens` to a relay's API; returns the response.
fn complete(http: &str, model: &str, prompt: &str, max_tokens: usize) -> serde_json::Value {
    let body = serde_json::json!({ "model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0 });
    let mut resp = ureq::post(&format!("{http}/v1/completions")).send_json(&body).expect("completion");
    resp.body_mut().read_json().expect("json")
}

/// Test 16a (and 15's end to end through the protocol): three relays charging for
/// `[0,10)`, `[10,20)`, `[20,30)` serve a gateway relay paying from its escrow (it deposited
/// only; each session brings a signed allocation that the node submits); after they redeem,
/// each node earned 70% of price x 10 layers x tokens, the model's creator 20% of the three,
/// the DAO 10%, to the unit; each allocation paid exactly that, and the API reported the
/// same cost. `ait generate --swarm --pay` then pays the same way, saying the route's price
/// per token first and what it cost at the end: what the nodes collect. With
/// `--staked-only` it finds no route while the nodes hold less than the tribunal's slash,
/// and pays them once they stake up to it.
#[test]
fn a_paid_generation_pays_every_node_its_price_to_the_unit() {
    let _serial = serial();
    let dir = temp_dir("pay-a");
    let chain = Chain::start(&dir);
    let model = default_model();
    let m = model.to_str().unwrap();
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(chain.node_dir(&format!("r{i}"), 2 + i));
    }
    // The payer only deposits: the gateway allocates to each node by signature as it opens
    // a session there, and the node submits it.
    let (gateway_dir, payer) = chain.payer_dir("gateway", 1, "100", &[], "0");
    let settle = chain.relay_args();
    let settle: Vec<&str> = settle.iter().map(String::as_str).collect();
    let charge = [&settle[..], &["--price", PRICE, "--redeem-every", "1"]].concat();
    let first = Relay::start(&nodes[0].0, &[&["--model", m, "--blocks", "0..10"][..], &charge].concat());
    let boot = first.addr("tcp");
    let mut relays = vec![first];
    for (i, blocks) in [(1, "10..20"), (2, "20..30")] {
        relays.push(Relay::start(
            &nodes[i].0,
            &[&["--model", m, "--blocks", blocks, "--bootstrap", &boot][..], &charge].concat(),
        ));
    }
    assert!(
        relays[0].stdout.iter().any(|l| l.contains("charging: 0.000001 AIT per layer-token")),
        "{:?}",
        relays[0].stdout
    );
    // The creator registers the model; royalties go to its payout address.
    let model_id = relays[0].model_id();
    let creator_store = dir.join("creator.json");
    let creator: Address = chain
        .ait(&["wallet", "new", "--dev-account", "5", "--keystore", creator_store.to_str().unwrap()])
        .trim()
        .parse()
        .unwrap();
    chain.ait(&[
        "model",
        "register",
        &format!("0x{model_id}"),
        "--payout",
        &creator.to_string(),
        "--keystore",
        creator_store.to_str().unwrap(),
    ]);

    let gateway = Relay::start(&gateway_dir, &[&["--model", m, "--bootstrap", &boot, "--pay"][..], &settle].concat());
    let answer = complete(gateway.http.as_deref().unwrap(), &model_id, "The capital of France is", 8);
    let usage = &answer["usage"];
    let (prompt, completion) = (usage["prompt_tokens"].as_u64().unwrap(), usage["completion_tokens"].as_u64().unwrap());
    // Every prompt token and every generated token but the last went through each node (a
    // generation cut at its length does not run its last token).
    let finish = answer["choices"][0]["finish_reason"].as_str().unwrap();
    let tokens = prompt + completion - u64::from(finish == "length");
    let per_node = units(PRICE_UNITS) * units(10) * units(tokens);
    let total = per_node * units(3);
    assert_eq!(usage["cost"].as_str(), Some(web_node::settle::format_ait(total).as_str()), "{answer}");

    let seven = per_node * units(7) / units(10);
    let treasury = chain.dev.chain.deployment.treasury;
    let mut want: Vec<(Address, U256)> = nodes.iter().map(|(_, a)| (*a, seven)).collect();
    want.push((creator, total * units(2) / units(10)));
    want.push((treasury, total / units(10)));
    wait_earned(&chain, &want);
    // The Creator view's numbers, from the chain: the model's registration, its three paid
    // sessions (one per node), the layer-tokens they ran, what they paid and the royalties.
    let http0 = relays[0].http.as_deref().unwrap();
    let earnings: serde_json::Value = ureq::get(&format!("{http0}/ait/models/{model_id}/earnings"))
        .call()
        .expect("earnings")
        .body_mut()
        .read_json()
        .unwrap();
    let royalties = total * units(2) / units(10);
    let field = |k: &str| earnings[k].as_str().unwrap_or_default().to_string();
    assert_eq!(field("creator").parse::<Address>().ok(), Some(creator), "{earnings}");
    assert_eq!(field("payout").parse::<Address>().ok(), Some(creator), "{earnings}");
    assert_eq!(earnings["sessions"], 3, "{earnings}");
    assert_eq!(field("work"), (units(tokens) * units(30)).to_string(), "{earnings}");
    assert_eq!(field("paid"), total.to_string(), "{earnings}");
    assert_eq!(field("royalties"), royalties.to_string(), "{earnings}");
    let printed = chain.ait(&["model", "earnings", &format!("0x{model_id}")]);
    let royalties_line = format!("royalties  {} AIT", web_node::settle::format_ait(royalties));
    assert!(printed.contains(&royalties_line) && printed.contains("sessions   3 paid"), "{printed}");
    // Each relay's /metrics counts the tokens it served and the vouchers it redeemed.
    // (A relay counts its redeem once the transaction's receipt is in: poll a little.)
    let tokens = format!("ait_tokens_served_total{{model=\"{model_id}\"}} {tokens}");
    for r in &relays {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = ureq::get(&format!("{}/metrics", r.http.as_deref().unwrap()))
                .call()
                .expect("/metrics")
                .body_mut()
                .read_to_string()
                .unwrap();
            let redeemed = text.contains("ait_vouchers_redeemed_total 1") && text.contains("ait_vouchers_pending 0");
            if text.contains(&tokens) && redeemed {
                break;
            }
            assert!(Instant::now() < deadline, "no `{tokens}`, or the voucher not redeemed, in:\n{text}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let escrow = chain.escrow();
    let rt = runtime();
    for (_, node) in &nodes {
        let (total, left) = rt.block_on(async {
            (
                escrow.allocatedTotal(payer, *node).call().await.unwrap(),
                escrow.allocation(payer, *node).call().await.unwrap().balance,
            )
        });
        assert!(total > per_node, "allocated {total} to {node}");
        assert_eq!(total - left, per_node, "allocation to {node}");
    }

    // `ait generate --swarm --pay` pays the same way from the command line: it says what a
    // token through its route costs before the first one, then what the generation cost, and
    // that is what the nodes collect from its allocations.
    let (cli_dir, cli_payer) = chain.unstaked_payer_dir("cli", 6, "100");
    let out = ait_tests::procs::ait()
        .args(["generate", "--swarm", &boot, "--model", m, "--prompt", "The capital of France is"])
        .args(["--temperature", "0", "--max-tokens", "6", "--pay", "--data-dir", cli_dir.to_str().unwrap()])
        .args(&settle)
        .output()
        .expect("ait generate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ait generate --pay failed:\n{stderr}");
    let price_line =
        format!("route: 3 servers, {} AIT per token", web_node::settle::format_ait(units(PRICE_UNITS) * units(30)));
    let route_at = stderr.find(&price_line).unwrap_or_else(|| panic!("no `{price_line}` in:\n{stderr}"));
    let tokens_line = stderr.lines().find(|l| l.contains("generated:")).expect("the generation's numbers");
    let number = |after: &str| -> u64 {
        let rest = &tokens_line[tokens_line.find(after).unwrap() + after.len()..];
        rest.split_whitespace().next().unwrap().parse().unwrap()
    };
    let tokens = number("prompt: ") + number("generated: ") - u64::from(tokens_line.contains("(Length)"));
    let cost = units(PRICE_UNITS) * units(30) * units(tokens);
    let cost_line = format!("cost: {} AIT", web_node::settle::format_ait(cost));
    assert!(stderr[route_at..].contains(&cost_line), "no `{cost_line}` after the route in:\n{stderr}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let spent = rt.block_on(async {
            let mut spent = U256::ZERO;
            for (_, node) in &nodes {
                let total = escrow.allocatedTotal(cli_payer, *node).call().await.unwrap();
                spent += total - escrow.allocation(cli_payer, *node).call().await.unwrap().balance;
            }
            spent
        });
        if spent == cost {
            break;
        }
        assert!(Instant::now() < deadline, "the nodes collected {spent} from the command line's payer, it said {cost}");
        std::thread::sleep(Duration::from_millis(300));
    }

    // `--staked-only`: nodes holding less than the tribunal's slash are not paid, so no route
    // covers the model; once each stakes up to the slash, the same command goes through.
    let staked_only = || {
        ait_tests::procs::ait()
            .args(["generate", "--swarm", &boot, "--model", m, "--prompt", "The capital of France is"])
            .args(["--temperature", "0", "--max-tokens", "2", "--pay", "--staked-only"])
            .args(["--data-dir", cli_dir.to_str().unwrap()])
            .args(&settle)
            .output()
            .expect("ait generate")
    };
    let out = staked_only();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("no chain of servers covers"), "{stderr}");
    let slash = relay::settle::deploy::SLASH_AIT;
    for (node_dir, _) in &nodes {
        chain.ait(&["stake", &(slash - NODE_STAKE_AIT).to_string(), "--data-dir", node_dir.to_str().unwrap()]);
    }
    let out = staked_only();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.contains("route: 3 servers"), "{stderr}");
    drop(gateway);
    drop(relays);
    drop(chain);
    if std::env::var_os("AIT_KEEP_TEST_DIRS").is_none() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A session stream to a relay, spoken by hand: what a client that cheats would send.
struct Raw {
    stream: libp2p::Stream,
}

impl Raw {
    async fn open(node: &web_node::net::node::NodeHandle, peer: libp2p::PeerId) -> Raw {
        let stream = node.control().open_stream(peer, PROTOCOL).await.expect("stream");
        Raw { stream }
    }

    async fn ask(&mut self, req: &Request) -> Response {
        write_frame(&mut self.stream, &req.encode()).await.expect("write");
        let t = Duration::from_secs(20);
        Response::decode(&read_frame(&mut self.stream, 1 << 24, t, t).await.expect("answer")).expect("decodes")
    }
}

const DIM: usize = 576;

fn step(pos: u32, voucher: Option<SignedVoucher>) -> Request {
    Request::Step { pos, n_tokens: 1, hidden: vec![0.01; DIM], voucher }
}

/// A hand-spoken session's steps (each `step`'s input) as a client keeps them: the receipt of
/// each answer, rebuilt and checked against the relay's peer id, for a bill to chain into its
/// vouchers.
struct Steps {
    session: SessionNonce,
    model: web_node::model::ModelId,
    inputs: InputChain,
}

impl Steps {
    fn new(session: SessionNonce, model: web_node::model::ModelId) -> Steps {
        Steps { session, model, inputs: InputChain::new(&session) }
    }

    /// The receipt `peer` signed for the step at `pos` that answered `r`, over all 30 layers.
    fn receipt(&mut self, peer: &libp2p::PeerId, pos: u32, r: &Response) -> Receipt {
        let Response::Hidden { n_tokens: 1, receipt: signature, hidden, .. } = r else {
            panic!("step {pos}: expected one row of hidden states, got {}", describe(r))
        };
        self.inputs.absorb(&[0.01; DIM], DIM);
        let receipt = Receipt {
            session: self.session,
            model: self.model,
            start: 0,
            end: 30,
            pos,
            n_tokens: 1,
            inputs: self.inputs.value(),
            output: output_hash(hidden),
        };
        receipt.verify(peer, signature).expect("the relay's receipt");
        receipt
    }
}

fn refusal(r: &Response) -> (ErrorCode, &str) {
    match r {
        Response::Error { code, message } => (*code, message.as_str()),
        other => panic!("expected a refusal, got {}", describe(other)),
    }
}

fn describe(r: &Response) -> String {
    match r {
        Response::Hidden { n_tokens, .. } => format!("{n_tokens} rows of hidden states"),
        other => format!("{other:?}"),
    }
}

/// The terms a relay announces, from its status.
async fn terms(raw: &mut Raw) -> PayTerms {
    match raw.ask(&Request::Info).await {
        Response::Info(s) => s.pay.expect("the relay charges"),
        other => panic!("no status: {other:?}"),
    }
}

/// Test 16c, and the bad input of both issues: a relay charging for `[0,30)` with a credit
/// cap of six tokens. A client that never pays is served exactly six tokens and then gets
/// `payment required`; a client that does not pay gets the free tier's quota (eight tokens a
/// day here) and then `payment required`; opening with a key the payer never authorized, or
/// for a payer with no allocation is refused; a forged voucher (another key, more work than
/// served, an amount changed after signing) ends its session only. An honest client, paying
/// as it goes, runs past the cap; after the redeem the node earned exactly what the honest
/// vouchers say: the cheater's six tokens (the cap) are all it lost.
#[test]
fn a_client_that_stops_paying_is_cut_off_at_the_credit_cap() {
    let _serial = serial();
    let dir = temp_dir("pay-c");
    let chain = Chain::start(&dir);
    let model = default_model();
    let (node_dir, node) = chain.node_dir("r", 2);
    let (_, payer) = chain.payer_dir("payer", 1, "10", &[node], "5");
    // The cheater pays from an escrow of its own.
    let (_, cheater) = chain.payer_dir("cheater", 3, "10", &[node], "5");
    // A payer that allocates nothing up front.
    let (_, tight) = chain.payer_dir("tight", 4, "10", &[], "0");
    let cap = web_node::settle::format_ait(units(PRICE_UNITS) * units(30 * 6));
    let settle = chain.relay_args();
    let settle: Vec<&str> = settle.iter().map(String::as_str).collect();
    let args = [
        &["--model", model.to_str().unwrap(), "--blocks", "all", "--price", PRICE, "--credit-cap", &cap][..],
        &["--redeem-every", "1", "--free-tokens", "8"],
        &settle,
    ]
    .concat();
    let relay = Relay::start(&node_dir, &args);
    let model_id = web_node::model::ModelId::from_hex(&relay.model_id()).unwrap();
    let peer: libp2p::PeerId = relay.peer.parse().unwrap();
    let addr: libp2p::Multiaddr = relay.addr("tcp").parse().unwrap();
    let accounts = &chain.dev.chain.accounts;
    let payer_key = SessionKey::from_bytes(accounts[1].key.as_slice()).unwrap();
    let d = &chain.dev.chain.deployment;
    let pays = |key: &SessionKey, payer: Address| Payer {
        payer,
        key: key.clone(),
        authorization: None,
        chain_id: d.chain_id,
        escrow: d.escrow,
        max_price: None,
    };
    let open = |payment: Option<Payment>| Request::Open {
        model: model_id,
        session: [1; 32],
        start: 0,
        end: 30,
        max_len: 64,
        payment,
    };
    let rt = runtime();
    let honest_paid = rt.block_on(async {
        let h = relay::swarm_client::connect(&[addr]).await.unwrap();
        let mut probe = Raw::open(&h, peer).await;
        let t = terms(&mut probe).await;
        assert_eq!((t.node, t.price, t.credit_cap), (node, units(PRICE_UNITS), units(PRICE_UNITS) * units(180)));

        // Without paying: the free tier's eight tokens a day (each session's opening says
        // what is left), then `payment required`, on this session and the next.
        assert_eq!(t.free_tokens_per_day, 8);
        let mut s = Raw::open(&h, peer).await;
        assert_eq!(s.ask(&open(None)).await, Response::Opened { max_len: 64, free_left: Some(8) });
        for pos in 0..5 {
            assert!(matches!(s.ask(&step(pos, None)).await, Response::Hidden { .. }), "free step {pos}");
        }
        let mut s = Raw::open(&h, peer).await;
        assert_eq!(s.ask(&open(None)).await, Response::Opened { max_len: 64, free_left: Some(3) });
        for pos in 0..3 {
            assert!(matches!(s.ask(&step(pos, None)).await, Response::Hidden { .. }), "free step {pos}");
        }
        let r = s.ask(&step(3, None)).await;
        assert!(matches!(refusal(&r), (ErrorCode::PaymentRequired, m) if m.contains("free tier")), "{r:?}");
        let mut s = Raw::open(&h, peer).await;
        let r = s.ask(&open(None)).await;
        assert!(matches!(refusal(&r), (ErrorCode::PaymentRequired, m) if m.contains("used up")), "{r:?}");

        // With a key the payer never authorized, for a payer with no allocation to this
        // node: each refused with `payment required`, before any step.
        let stranger = SessionKey::from_bytes(accounts[6].key.as_slice()).unwrap();
        let unauthorized =
            HopBill::new(&pays(&stranger, payer), t.clone(), model_id.0.into(), 30, web_node::settle::unix_s())
                .unwrap();
        let mut s = Raw::open(&h, peer).await;
        let r = s.ask(&open(Some(unauthorized.payment().clone()))).await;
        assert!(matches!(refusal(&r), (ErrorCode::PaymentRequired, m) if m.contains("may not sign")), "{r:?}");
        // A key the payer authorized, then started revoking: it still signs during the thaw,
        // but its vouchers would redeem only until then, so the node opens it no session.
        let revoking = SessionKey::from_bytes(accounts[7].key.as_slice()).unwrap();
        let as_payer = Escrow::new(d.escrow, wallet_provider(&d.rpc, &accounts[1].key).unwrap());
        ait_tests::evm::sent(as_payer.authorizeSigner(revoking.address()).send().await).await.unwrap();
        ait_tests::evm::sent(as_payer.revokeSigner(revoking.address()).send().await).await.unwrap();
        assert!(as_payer.isSigner(payer, revoking.address()).call().await.unwrap(), "it signs during the thaw");
        let bill = HopBill::new(&pays(&revoking, payer), t.clone(), model_id.0.into(), 30, web_node::settle::unix_s())
            .unwrap();
        let mut s = Raw::open(&h, peer).await;
        let r = s.ask(&open(Some(bill.payment().clone()))).await;
        assert!(matches!(refusal(&r), (ErrorCode::PaymentRequired, m) if m.contains("being revoked")), "{r:?}");
        let broke = pays(&stranger, stranger.address());
        let broke = HopBill::new(&broke, t.clone(), model_id.0.into(), 30, web_node::settle::unix_s()).unwrap();
        let mut s = Raw::open(&h, peer).await;
        let r = s.ask(&open(Some(broke.payment().clone()))).await;
        assert!(matches!(refusal(&r), (ErrorCode::PaymentRequired, m) if m.contains("allocation")), "{r:?}");

        // The cheater opens properly and never sends a voucher: six tokens, then cut off.
        let cheater_key = SessionKey::from_bytes(accounts[3].key.as_slice()).unwrap();
        let cheat =
            HopBill::new(&pays(&cheater_key, cheater), t.clone(), model_id.0.into(), 30, web_node::settle::unix_s())
                .unwrap();
        let mut s = Raw::open(&h, peer).await;
        assert_eq!(
            s.ask(&open(Some(cheat.payment().clone()))).await,
            Response::Opened { max_len: 64, free_left: None }
        );
        let mut served = 0;
        let refused = loop {
            match s.ask(&step(served, None)).await {
                Response::Hidden { .. } => served += 1,
                other => break other,
            }
            assert!(served <= 6, "served past the cap");
        };
        assert_eq!(served, 6);
        let (code, why) = refusal(&refused);
        assert!(code == ErrorCode::PaymentRequired && why.contains("credit"), "{why}");
        // It left a cap unpaid: the node opens it no more sessions.
        let again =
            HopBill::new(&pays(&cheater_key, cheater), t.clone(), model_id.0.into(), 30, web_node::settle::unix_s())
                .unwrap();
        let mut s = Raw::open(&h, peer).await;
        let r = s.ask(&open(Some(again.payment().clone()))).await;
        assert!(matches!(refusal(&r), (ErrorCode::PaymentRequired, m) if m.contains("unpaid")), "{r:?}");
        // Nobody opens a session in a payer's name without its key: a proof signed by another
        // key, and a session id already used, are refused.
        let mut forged =
            HopBill::new(&pays(&stranger, payer), t.clone(), model_id.0.into(), 30, web_node::settle::unix_s())
                .unwrap()
                .payment()
                .clone();
        forged.signer = payer;
        let mut s = Raw::open(&h, peer).await;
        let r = s.ask(&open(Some(forged))).await;
        assert!(matches!(refusal(&r), (ErrorCode::PaymentRequired, m) if m.contains("proof")), "{r:?}");

        // Forged vouchers, each on a session of its own: refused, and the session ends.
        // A voucher must name the receipts the relay signed: one chaining a receipt of
        // another answer (its output changed) pays for work the relay did not sign for.
        let forges = ["stranger's key", "more work than served", "amount changed after signing", "other receipts"];
        for forge in forges {
            let mut bill =
                HopBill::new(&pays(&payer_key, payer), t.clone(), model_id.0.into(), 30, web_node::settle::unix_s())
                    .unwrap();
            let mut s = Raw::open(&h, peer).await;
            assert_eq!(
                s.ask(&open(Some(bill.payment().clone()))).await,
                Response::Opened { max_len: 64, free_left: None }
            );
            let mut steps = Steps::new([1; 32], model_id);
            let mut receipt = steps.receipt(&peer, 0, &s.ask(&step(0, None)).await);
            if forge == "other receipts" {
                receipt.output[0] ^= 1;
            }
            bill.received(1, &receipt);
            let mut v = match forge {
                "stranger's key" => bill.sign(&stranger, web_node::settle::unix_s()).unwrap().unwrap(),
                _ => bill.sign(&payer_key, web_node::settle::unix_s()).unwrap().unwrap(),
            };
            match forge {
                "more work than served" => {
                    let mut more = v.voucher.clone();
                    more.cumulativeWork = units(60);
                    more.cumulativeAmount = units(PRICE_UNITS) * units(60);
                    let sig = payer_key.sign(&more, &t.domain()).unwrap();
                    v = SignedVoucher { voucher: more, signature: sig.as_bytes().to_vec().into() };
                }
                "amount changed after signing" => v.voucher.cumulativeAmount += units(1),
                _ => {}
            }
            let r = s.ask(&step(1, Some(v))).await;
            assert_eq!(refusal(&r).0, ErrorCode::PaymentRequired, "{forge}: {r:?}");
            if forge == "other receipts" {
                assert!(refusal(&r).1.contains("signed others"), "{r:?}");
            }
        }

        // The honest client pays as it goes and runs 20 tokens, past the cap of six.
        let mut bill =
            HopBill::new(&pays(&payer_key, payer), t.clone(), model_id.0.into(), 30, web_node::settle::unix_s())
                .unwrap();
        let mut s = Raw::open(&h, peer).await;
        assert_eq!(s.ask(&open(Some(bill.payment().clone()))).await, Response::Opened { max_len: 64, free_left: None });
        let mut vouchers = 0;
        let mut steps = Steps::new([1; 32], model_id);
        for pos in 0..20 {
            let v = if bill.due(1) { bill.sign(&payer_key, web_node::settle::unix_s()).unwrap() } else { None };
            vouchers += usize::from(v.is_some());
            let r = s.ask(&step(pos, v)).await;
            bill.received(1, &steps.receipt(&peer, pos, &r));
        }
        assert!(vouchers >= 5, "{vouchers} vouchers for 20 tokens with a cap of 6");
        let last = bill.sign(&payer_key, web_node::settle::unix_s()).unwrap();
        write_frame(&mut s.stream, &Request::Close { voucher: last }.encode()).await.unwrap();
        // The relay closes the stream once it kept the closing voucher.
        let wait = Duration::from_secs(10);
        assert!(matches!(read_frame(&mut s.stream, 1 << 16, wait, wait).await, Err(FrameError::Closed)));
        // Opening the same session again would replay what it paid: refused.
        let mut s = Raw::open(&h, peer).await;
        let r = s.ask(&open(Some(bill.payment().clone()))).await;
        assert!(matches!(refusal(&r), (ErrorCode::PaymentRequired, m) if m.contains("not new")), "{r:?}");
        let honest = bill.signed();

        // A payer with nothing allocated tops up by signature for the session's 64 tokens.
        // Its vouchers are redeemed while the session runs: each later one adds to the backing
        // only what it adds to what was collected (a redeem takes that out of the allocation).
        let tight_key = SessionKey::from_bytes(accounts[4].key.as_slice()).unwrap();
        let mut bill =
            HopBill::new(&pays(&tight_key, tight), t.clone(), model_id.0.into(), 30, web_node::settle::unix_s())
                .unwrap();
        let mut s = Raw::open(&h, peer).await;
        let Response::Quote(q) = s.ask(&Request::Quote { payer: tight }).await else { panic!("no quote") };
        assert!(!bill.allocate(&q, 64, &tight_key, web_node::settle::unix_s()).unwrap().is_zero());
        assert_eq!(s.ask(&open(Some(bill.payment().clone()))).await, Response::Opened { max_len: 64, free_left: None });
        let escrow = chain.escrow();
        let mut steps = Steps::new([1; 32], model_id);
        for pos in 0..60 {
            if pos == 40 {
                // Wait for the relay to redeem what was paid so far.
                let (session, signed) = (bill.payment().session, bill.signed());
                let started = Instant::now();
                while escrow.collected(tight, session, node).call().await.unwrap() < signed {
                    assert!(started.elapsed() < Duration::from_secs(30), "no redeem of the tight payer's vouchers");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            let v = if bill.due(1) { bill.sign(&tight_key, web_node::settle::unix_s()).unwrap() } else { None };
            let r = s.ask(&step(pos, v)).await;
            bill.received(1, &steps.receipt(&peer, pos, &r));
        }
        (honest, bill.signed())
    });
    let (honest_paid, tight_paid) = honest_paid;
    assert_eq!(honest_paid, units(PRICE_UNITS) * units(30 * 20));
    let honest_paid = honest_paid + tight_paid;
    // The model is not registered: the creator's share goes to the DAO with its own.
    let treasury = chain.dev.chain.deployment.treasury;
    wait_earned(&chain, &[(node, honest_paid * units(7) / units(10)), (treasury, honest_paid * units(3) / units(10))]);
    drop(relay);
    drop(chain);
    if std::env::var_os("AIT_KEEP_TEST_DIRS").is_none() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Test 16d: a relay killed -9 in the middle of a paid session, with vouchers in its ledger
/// and none redeemed yet, is started again on its data directory and redeems exactly what the
/// newest voucher it kept says: no more, no less. The work it served past that voucher is
/// under the credit cap. The same voucher submitted again by anyone pays nothing.
#[test]
fn a_relay_killed_mid_session_redeems_its_ledger_once_after_a_restart() {
    let _serial = serial();
    let dir = temp_dir("pay-d");
    let chain = Chain::start(&dir);
    let model = default_model();
    let (node_dir, node) = chain.node_dir("r", 2);
    let (_, payer) = chain.payer_dir("payer", 1, "10", &[node], "5");
    let cap_units = units(PRICE_UNITS) * units(30 * 4);
    let cap = web_node::settle::format_ait(cap_units);
    let settle = chain.relay_args();
    let settle: Vec<&str> = settle.iter().map(String::as_str).collect();
    let serve =
        [&["--model", model.to_str().unwrap(), "--blocks", "all", "--price", PRICE, "--credit-cap", &cap][..], &settle]
            .concat();
    // First life: no redeem round comes before the kill.
    let mut relay = Relay::start(&node_dir, &[&serve[..], &["--redeem-every", "3600"]].concat());
    let model_id = web_node::model::ModelId::from_hex(&relay.model_id()).unwrap();
    let peer: libp2p::PeerId = relay.peer.parse().unwrap();
    let addr: libp2p::Multiaddr = relay.addr("tcp").parse().unwrap();
    let d = chain.dev.chain.deployment.clone();
    let key = SessionKey::from_bytes(chain.dev.chain.accounts[1].key.as_slice()).unwrap();
    let payer_of =
        Payer { payer, key: key.clone(), authorization: None, chain_id: d.chain_id, escrow: d.escrow, max_price: None };
    let rt = runtime();
    let (signed, received, last) = rt.block_on(async {
        let h = relay::swarm_client::connect(&[addr]).await.unwrap();
        let mut s = Raw::open(&h, peer).await;
        let t = terms(&mut s).await;
        let mut bill = HopBill::new(&payer_of, t, model_id.0.into(), 30, web_node::settle::unix_s()).unwrap();
        let open = Request::Open {
            model: model_id,
            session: [2; 32],
            start: 0,
            end: 30,
            max_len: 64,
            payment: Some(bill.payment().clone()),
        };
        assert_eq!(s.ask(&open).await, Response::Opened { max_len: 64, free_left: None });
        let mut last = None;
        let mut steps = Steps::new([2; 32], model_id);
        for pos in 0..11 {
            let v = if bill.due(1) { bill.sign(&key, web_node::settle::unix_s()).unwrap() } else { None };
            if v.is_some() {
                last = v.clone();
            }
            let r = s.ask(&step(pos, v)).await;
            bill.received(1, &steps.receipt(&peer, pos, &r));
        }
        (bill.signed(), bill.owed(), last.expect("vouchers were sent"))
    });
    relay.kill();
    assert!(signed > U256::ZERO && received - signed <= cap_units, "signed {signed}, owed {received}");
    // What the ledger kept is the newest voucher the relay answered a step after.
    let ledger = relay::settle::Ledger::open(&node_dir.join("ledger.redb")).unwrap();
    let kept = ledger.entries().unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].voucher.voucher, last.voucher);
    drop(ledger);
    wait_earned(&chain, &[(node, U256::ZERO)]);

    // Second life: the redeemer finds the ledger and redeems it, once.
    let relay = Relay::start(&node_dir, &[&serve[..], &["--redeem-every", "1"]].concat());
    let treasury = d.treasury;
    let want = [(node, signed * units(7) / units(10)), (treasury, signed * units(3) / units(10))];
    wait_earned(&chain, &want);
    // Anyone may submit a voucher; the same one again pays nothing.
    let stranger = wallet_provider(&d.rpc, &chain.dev.chain.accounts[6].key).unwrap();
    let escrow = Escrow::new(d.escrow, stranger);
    let again = rt.block_on(async {
        escrow
            .redeem((&last.voucher).into(), last.signature.clone())
            .send()
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    assert!(again.as_ref().is_err_and(|e| e.contains("revert")), "{again:?}");
    std::thread::sleep(Duration::from_secs(2));
    wait_earned(&chain, &want);
    drop(relay);
    // `ait earnings` tells the operator the same, and that nothing is left to redeem.
    let out = chain.ait(&["earnings", "--data-dir", node_dir.to_str().unwrap()]);
    let share = web_node::settle::format_ait(want[0].1);
    assert!(out.contains(&format!("redeemed  {share} AIT (node share) in 1 redeems")), "{out}");
    assert!(out.contains("pending   0 AIT in 0 vouchers"), "{out}");
    drop(chain);
    if std::env::var_os("AIT_KEEP_TEST_DIRS").is_none() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A relay's `/metrics` text.
fn metrics_of(relay: &Relay) -> String {
    ureq::get(&format!("{}/metrics", relay.http.as_deref().unwrap()))
        .call()
        .expect("/metrics")
        .body_mut()
        .read_to_string()
        .unwrap()
}

/// The value of gauge `name` in `/metrics` text.
fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Test 16e: a charging relay with five session slots (four scored, one lottery), saturated
/// by a paying gateway that stakes nothing (priority score 0; ten long requests: four run,
/// one takes the lottery slot, five wait) and three free-tier gateways (fresh keys, no
/// deposit; three requests each and one streamed, all waiting; the streamed one is told its
/// place). A staked gateway's four requests (score 10)
/// then overtake the unstaked payer's waiting ones for the scored slots, as the relay's
/// admission log shows in order: every scored admission is the best score waiting, and the
/// staked requests were admitted while unstaked ones still waited. Free-tier requests ran in
/// the lottery slot only, and every request completes.
#[test]
fn contributors_are_admitted_ahead_of_the_free_tier_which_still_completes() {
    let _serial = serial();
    let dir = temp_dir("pay-e");
    let chain = Chain::start(&dir);
    let model = default_model();
    let m = model.to_str().unwrap();
    let (node_dir, _) = chain.node_dir("r", 2);
    let (staked_dir, _) = chain.payer_dir("staked", 1, "10", &[], "0");
    let (unstaked_dir, _) = chain.unstaked_payer_dir("unstaked", 3, "10");
    let settle = chain.relay_args();
    let settle: Vec<&str> = settle.iter().map(String::as_str).collect();
    let serve = [
        &["--model", m, "--blocks", "all", "--price", PRICE, "--max-sessions", "5"][..],
        &["--max-sessions-per-peer", "16", "--max-sessions-per-ip", "16", "--max-streams-per-peer", "32"],
        &settle,
    ]
    .concat();
    let node = Relay::start_logged(&node_dir, &serve, "warn,web_node::net::serve::session=info");
    let boot = node.addr("tcp");
    let model_id = node.model_id();
    let gateway = |dir: &std::path::Path, pay: bool| {
        let mut args = vec!["--model", m, "--bootstrap", &boot, "--api-concurrency", "12"];
        if pay {
            args.extend(["--pay"]);
            args.extend(&settle);
        }
        Relay::start(dir, &args)
    };
    let unstaked = gateway(&unstaked_dir, true);
    let staked = gateway(&staked_dir, true);
    let free: Vec<Relay> = (0..3).map(|i| gateway(&dir.join(format!("free-{i}")), false)).collect();

    let ask = |relay: &Relay, tokens: usize| {
        let (http, model) = (relay.http.clone().unwrap(), model_id.clone());
        std::thread::spawn(move || {
            let answer = complete(&http, &model, "Once upon a time", tokens);
            answer["usage"]["completion_tokens"].as_u64().unwrap_or(0)
        })
    };
    let queued = |at_least: f64| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while gauge(&metrics_of(&node), "ait_session_queue_length").unwrap_or(0.0) < at_least {
            assert!(Instant::now() < deadline, "fewer than {at_least} requests queued:\n{}", metrics_of(&node));
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let mut asks: Vec<_> = (0..10).map(|_| ask(&unstaked, 64)).collect();
    queued(5.0);
    asks.extend(free.iter().flat_map(|f| (0..3).map(|_| ask(f, 40)).collect::<Vec<_>>()));
    queued(12.0);
    // A streamed free-tier request, queued behind the others: its stream says where it waits
    // (SSE comments) before the text comes.
    let streamed = {
        let (http, model) = (free[0].http.clone().unwrap(), model_id.clone());
        std::thread::spawn(move || {
            let body = serde_json::json!({ "model": model, "prompt": "Once upon a time", "max_tokens": 4,
                                           "temperature": 0, "stream": true });
            let resp = ureq::post(&format!("{http}/v1/completions")).send_json(&body).expect("streamed");
            let lines: Vec<String> = std::io::BufRead::lines(std::io::BufReader::new(resp.into_body().into_reader()))
                .map_while(Result::ok)
                .collect();
            lines
        })
    };
    let staked_asks: Vec<_> = (0..4).map(|_| ask(&staked, 8)).collect();
    for a in staked_asks.into_iter().chain(asks) {
        assert!(a.join().unwrap() > 0, "a request failed");
    }
    let lines = streamed.join().unwrap();
    let notice = lines.iter().position(|l| l.starts_with(": queued: "));
    let text = lines.iter().position(|l| l.contains("\"text\":\"") && !l.contains("\"text\":\"\""));
    assert!(notice.is_some() && notice < text, "no queue notice before the text: {lines:#?}");
    assert!(lines.iter().any(|l| l == "data: [DONE]"), "{lines:#?}");

    // The admissions, in order.
    let log = std::fs::read_to_string(node_dir.join("relay.log")).unwrap();
    #[derive(Debug)]
    struct Admitted {
        standing: String,
        pool: String,
        score: f64,
        best_waiting: f64,
    }
    let admitted: Vec<Admitted> = log
        .lines()
        .filter(|l| l.contains("session admitted"))
        .map(|l| {
            let plain = strip_ansi(l);
            let field = |key: &str| -> String {
                let value = plain.split_whitespace().find_map(|w| w.strip_prefix(&format!("{key}=")));
                value.unwrap_or("").trim_matches('"').to_string()
            };
            Admitted {
                standing: field("standing"),
                pool: field("pool"),
                score: field("score").parse().unwrap_or(f64::NAN),
                best_waiting: field("best_waiting").parse().unwrap_or(f64::NAN),
            }
        })
        .collect();
    let count = |f: &dyn Fn(&Admitted) -> bool| admitted.iter().filter(|a| f(a)).count();
    assert_eq!(count(&|a| a.standing == "paying" && a.score == 10.0), 4, "{admitted:#?}");
    assert_eq!(count(&|a| a.standing == "paying" && a.score == 0.0), 10, "{admitted:#?}");
    assert!(count(&|a| a.standing == "free") >= 10, "{admitted:#?}");
    // The free tier only ever ran in the lottery slot.
    assert!(admitted.iter().filter(|a| a.standing == "free").all(|a| a.pool == "lottery"), "{admitted:#?}");
    // Each scored slot went to the best score waiting...
    let scored: Vec<_> = admitted.iter().filter(|a| a.pool == "scored").collect();
    assert!(scored.iter().all(|a| a.score >= a.best_waiting), "{admitted:#?}");
    // ...so the staked requests went ahead of unstaked ones that were waiting before them.
    assert!(
        scored.iter().any(|a| a.score == 10.0 && a.best_waiting == 0.0),
        "no staked request overtook a waiting unstaked one: {admitted:#?}"
    );
    drop((node, free, staked, unstaked, chain));
    if std::env::var_os("AIT_KEEP_TEST_DIRS").is_none() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// `s` without ANSI colour codes.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Item 5: a gateway relay with prepaid API keys (`--api-keys`) pays a charging relay from its
/// own deposit and charges each request's cost (`usage.cost`) and tokens to the key that
/// asked; `GET /v1/key` shows the account. A key that spent what it prepaid gets 402, one
/// past its daily tokens 429, none or an unknown one 401; a restarted gateway forgets nothing.
#[test]
fn prepaid_api_keys_are_charged_what_their_requests_cost() {
    let _serial = serial();
    let dir = temp_dir("pay-keys");
    let chain = Chain::start(&dir);
    let model = default_model();
    let m = model.to_str().unwrap();
    let (node_dir, _) = chain.node_dir("r", 2);
    let (gateway_dir, _) = chain.payer_dir("gateway", 1, "10", &[], "0");
    let settle = chain.relay_args();
    let settle: Vec<&str> = settle.iter().map(String::as_str).collect();
    let node = Relay::start(&node_dir, &[&["--model", m, "--blocks", "all", "--price", PRICE][..], &settle].concat());
    let keys = dir.join("keys.json");
    std::fs::write(
        &keys,
        r#"{"keys": [
            {"key": "sk-alice-0123456789", "name": "alice", "prepaid": "1"},
            {"key": "sk-bob-0123456789ab", "name": "bob", "prepaid": "0.000001"},
            {"key": "sk-carol-0123456789", "name": "carol", "prepaid": "1", "tokens_per_day": 5}
        ]}"#,
    )
    .unwrap();
    let boot = node.addr("tcp");
    let gateway_args =
        [&["--model", m, "--bootstrap", &boot, "--pay", "--api-keys", keys.to_str().unwrap()][..], &settle].concat();
    let gateway = Relay::start(&gateway_dir, &gateway_args);
    let model_id = node.model_id();
    let http = gateway.http.clone().unwrap();
    let ask = |key: Option<&str>| -> (u16, serde_json::Value) {
        let body = serde_json::json!({ "model": model_id, "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0 });
        let mut req = ureq::post(&format!("{http}/v1/completions")).config().http_status_as_error(false).build();
        if let Some(k) = key {
            req = req.header("Authorization", &format!("Bearer {k}"));
        }
        let mut resp = req.send_json(&body).expect("completion");
        (resp.status().as_u16(), resp.body_mut().read_json().expect("json"))
    };
    let account = |http: &str, key: &str| -> serde_json::Value {
        let mut resp = ureq::get(&format!("{http}/v1/key"))
            .header("Authorization", &format!("Bearer {key}"))
            .call()
            .expect("/v1/key");
        resp.body_mut().read_json::<serde_json::Value>().expect("json")["data"].clone()
    };
    assert_eq!(ask(None).0, 401);
    assert_eq!(ask(Some("sk-mallory-0123456789")).0, 401);

    let (status, answer) = ask(Some("sk-alice-0123456789"));
    assert_eq!(status, 200, "{answer}");
    let cost = answer["usage"]["cost"].as_str().expect("a cost").to_string();
    let tokens = answer["usage"]["total_tokens"].as_u64().unwrap();
    assert_ne!(cost, "0");
    let alice = account(&http, "sk-alice-0123456789");
    assert_eq!(alice["spent"].as_str(), Some(cost.as_str()), "{alice}");
    assert_eq!(alice["tokens_today"].as_u64(), Some(tokens), "{alice}");

    // Bob's prepaid AIT pay for less than one request: it runs (the balance is checked
    // before, charged after), and the next is refused.
    assert_eq!(ask(Some("sk-bob-0123456789ab")).0, 200);
    let (status, refused) = ask(Some("sk-bob-0123456789ab"));
    assert_eq!((status, refused["error"]["code"].as_str()), (402, Some("insufficient_credits")), "{refused}");
    // Carol's five tokens a day are used by her first request (all its tokens count).
    let (status, answer) = ask(Some("sk-carol-0123456789"));
    assert_eq!(status, 200, "{answer}");
    let carol = account(&http, "sk-carol-0123456789");
    assert_eq!(carol["tokens_today"], answer["usage"]["total_tokens"], "{carol}");
    let (status, refused) = ask(Some("sk-carol-0123456789"));
    assert_eq!((status, refused["error"]["code"].as_str()), (429, Some("daily_quota_exceeded")), "{refused}");

    // Started again, the gateway remembers what each account spent.
    drop(gateway);
    let gateway = Relay::start(&gateway_dir, &gateway_args);
    let again = account(gateway.http.as_deref().unwrap(), "sk-alice-0123456789");
    assert_eq!(again["spent"], alice["spent"], "{again}");
    drop((gateway, node, chain));
    if std::env::var_os("AIT_KEEP_TEST_DIRS").is_none() {
        let _ = std::fs::remove_dir_all(dir);
    }
}
