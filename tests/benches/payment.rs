//! `cargo bench -p ait-tests --bench payment`: what paying inside the protocol costs (issue
//! 16's benchmark), printing JSON.
//!
//! - Decode with and without payment, same run: two swarms of three relays over
//!   `[0,10)`, `[10,20)`, `[20,30)` of the default model on `ait chain dev`, one free and one
//!   charging with a credit cap of 32 tokens (so a voucher rides on every 16th step of each hop),
//!   each with a gateway relay; rounds alternate between the two gateways' APIs, each a greedy
//!   chat completion of 64 tokens, streamed: decode tokens/s is taken from the first to the last
//!   streamed piece. Medians and their ratio (target: payment costs at most 2%).
//! - Vouchers signed (client) and checked (node: EIP-712 hash, secp256k1 recovery and the
//!   meter's rules) per second on one core, median of 5 runs; and the median time of the
//!   ledger's durable write of a voucher (a redb commit), which a node makes before it answers
//!   the step the voucher came with.
//! - Priority (test 16e's benchmark): a staked contributor's time to first token on a
//!   charging relay with five session slots, idle and while three free-tier gateways keep nine
//!   requests going (the lottery slot always busy, free-tier requests always queued); medians
//!   of 9 and their ratio (goal: at most 1.2x).

use std::io::BufRead;
use std::time::Instant;

use ait_tests::default_model;
use ait_tests::paid::{Chain, PRICE, PRICE_UNITS};
use ait_tests::procs::{temp_dir, Relay};
use alloy::primitives::{Address, B256, U256};
use relay::bench::median;
use serde_json::json;
use web_node::settle::{HopBill, Meter, PayTerms, Payer, SessionKey};
use web_node::trust::Receipt;

const ROUNDS: usize = 7;
/// The charging relays' credit cap, in tokens through their 10 layers: the gateway sends each
/// a voucher every `CAP_TOKENS / 2` steps.
const CAP_TOKENS: u64 = 32;
const TOKENS: usize = 64;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test` runs benches once without --bench: nothing to check here.
    }
    let out = json!({ "decode": decode(), "vouchers": vouchers(), "priority": priority() });
    println!("{}", serde_json::to_string_pretty(&out).unwrap());
}

/// A three-relay swarm and its gateway; with `charge`, the relays charge and the gateway pays.
fn swarm(root: &std::path::Path, chain: &Chain, name: &str, accounts: [usize; 4], charge: bool) -> Vec<Relay> {
    let model = default_model();
    let m = model.to_str().unwrap();
    let settle = chain.relay_args();
    let settle: Vec<&str> = settle.iter().map(String::as_str).collect();
    let cap = web_node::settle::format_ait(U256::from(PRICE_UNITS) * U256::from(10 * CAP_TOKENS));
    let pay = [&settle[..], &["--price", PRICE, "--credit-cap", &cap, "--redeem-every", "5"]].concat();
    let mut relays: Vec<Relay> = Vec::new();
    for (i, blocks) in ["0..10", "10..20", "20..30"].into_iter().enumerate() {
        let dir = if charge {
            chain.node_dir(&format!("{name}-r{i}"), accounts[i]).0
        } else {
            root.join(format!("{name}-r{i}"))
        };
        let mut args = vec!["--model", m, "--blocks", blocks];
        let boot = relays.first().map(|r| r.addr("tcp"));
        if let Some(b) = &boot {
            args.extend(["--bootstrap", b.as_str()]);
        }
        if charge {
            args.extend(&pay);
        }
        relays.push(Relay::start(&dir, &args));
    }
    let boot = relays[0].addr("tcp");
    let gateway = if charge {
        // Nothing allocated up front: each session tops up its allocation by signature.
        let (dir, _) = chain.payer_dir(&format!("{name}-gateway"), accounts[3], "1000", &[], "0");
        Relay::start(&dir, &[&["--model", m, "--bootstrap", &boot, "--pay"][..], &settle].concat())
    } else {
        Relay::start(&root.join(format!("{name}-gateway")), &["--model", m, "--bootstrap", &boot])
    };
    relays.push(gateway);
    relays
}

/// POSTs a streamed chat completion `body` to a relay's API and calls `on_event` with each
/// event until `[DONE]`; an error event fails the bench.
fn stream_chat(http: &str, body: &serde_json::Value, mut on_event: impl FnMut(&serde_json::Value)) {
    let resp = ureq::post(&format!("{http}/v1/chat/completions")).send_json(body).expect("completion");
    let reader = std::io::BufReader::new(resp.into_body().into_reader());
    for line in reader.lines().map_while(Result::ok) {
        let Some(data) = line.strip_prefix("data: ") else { continue };
        if data == "[DONE]" {
            break;
        }
        let v: serde_json::Value = serde_json::from_str(data).expect("event");
        assert!(v.get("error").is_none(), "the generation failed: {v}");
        on_event(&v);
    }
}

/// Whether a streamed chat event carries text.
fn has_text(v: &serde_json::Value) -> bool {
    v["choices"][0]["delta"]["content"].as_str().is_some_and(|t| !t.is_empty())
}

/// One streamed greedy completion: (decode tokens/s from first to last piece, cost in AIT).
fn generate(http: &str, model: &str) -> (f64, Option<String>) {
    let body = json!({ "model": model,
        "messages": [{ "role": "user", "content": "Write a long story about a lighthouse keeper." }],
        "max_tokens": TOKENS, "temperature": 0, "stream": true,
        "stream_options": { "include_usage": true } });
    let (mut first, mut last, mut pieces, mut cost) = (None, Instant::now(), 0usize, None);
    stream_chat(http, &body, |v| {
        if let Some(c) = v["usage"]["cost"].as_str() {
            cost = Some(c.to_string());
        }
        if has_text(v) {
            first.get_or_insert_with(Instant::now);
            last = Instant::now();
            pieces += 1;
        }
    });
    let secs = first.map_or(0.0, |f| last.duration_since(f).as_secs_f64());
    ((pieces.saturating_sub(1)) as f64 / secs.max(1e-9), cost)
}

fn decode() -> serde_json::Value {
    let root = temp_dir("bench-payment");
    let chain = Chain::start(&root);
    let free = swarm(&root, &chain, "free", [0; 4], false);
    let paid = swarm(&root, &chain, "paid", [2, 3, 4, 1], true);
    let model = free[0].model_id();
    let (fh, ph) = (free[3].http.clone().unwrap(), paid[3].http.clone().unwrap());
    // Warm both (routes found, caches filled).
    generate(&fh, &model);
    let (_, cost) = generate(&ph, &model);
    let (mut f, mut p) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let order = if round % 2 == 0 { [false, true] } else { [true, false] };
        for paying in order {
            let (tps, _) = generate(if paying { &ph } else { &fh }, &model);
            if paying {
                p.push(tps)
            } else {
                f.push(tps)
            };
        }
    }
    let (fm, pm) = (median(&f), median(&p));
    eprintln!("decode tokens/s free {f:?} paid {p:?}");
    drop((free, paid, chain));
    let _ = std::fs::remove_dir_all(&root);
    json!({
        "tokens": TOKENS,
        "rounds": ROUNDS,
        "free_tokens_per_s": f,
        "paid_tokens_per_s": p,
        "free_median": fm,
        "paid_median": pm,
        "paid_over_free": pm / fm,
        "cost_of_one_generation_ait": cost,
        "credit_cap_tokens": CAP_TOKENS,
        "vouchers_per_hop": format!("one every {} steps, and one with close", CAP_TOKENS / 2),
    })
}

/// The receipt of a one-token step at `pos` over 10 layers (its hashes made up: vouchers only
/// chain receipts).
fn receipt(pos: u32) -> Receipt {
    Receipt {
        session: [1; 32],
        model: web_node::model::ModelId([7; 32]),
        start: 0,
        end: 10,
        pos,
        n_tokens: 1,
        inputs: [2; 32],
        output: [3; 32],
    }
}

/// Vouchers signed and checked per second on one core (each chaining its step's receipt).
fn vouchers() -> serde_json::Value {
    let key = SessionKey::from_bytes(&[0x21; 32]).unwrap();
    let terms = PayTerms {
        node: Address::repeat_byte(0xbb),
        price: U256::from(PRICE_UNITS),
        credit_cap: U256::MAX,
        chain_id: 31337,
        escrow: Address::repeat_byte(0xee),
        free_tokens_per_day: 0,
    };
    let payer = Payer {
        payer: key.address(),
        key: key.clone(),
        authorization: None,
        chain_id: terms.chain_id,
        escrow: terms.escrow,
        max_price: None,
    };
    let model = B256::repeat_byte(7);
    let n = 2000;
    let (mut signed, mut checked) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let mut bill = HopBill::new(&payer, terms.clone(), model, 10, 1_000_000).unwrap();
        let mut meter = Meter::new(terms.clone(), bill.payment().clone(), model, 10, U256::MAX);
        let mut all = Vec::with_capacity(n);
        let receipts: Vec<Receipt> = (0..n as u32).map(receipt).collect();
        let t = Instant::now();
        for r in &receipts {
            bill.received(1, r);
            all.push(bill.sign(&key, 2_000_000_000).unwrap().unwrap());
        }
        signed.push(n as f64 / t.elapsed().as_secs_f64());
        for r in &receipts {
            meter.count(1, r);
        }
        let t = Instant::now();
        for v in &all {
            meter.check(v, 1_000_000_000).unwrap();
            meter.accept(v);
        }
        checked.push(n as f64 / t.elapsed().as_secs_f64());
    }
    let dir = temp_dir("bench-ledger");
    let ledger = relay::settle::Ledger::open(&dir.join("ledger.redb")).unwrap();
    let mut bill = HopBill::new(&payer, terms.clone(), model, 10, 1_000_000).unwrap();
    let mut put_ms = Vec::new();
    for pos in 0..200 {
        bill.received(1, &receipt(pos));
        let v = bill.sign(&key, 2_000_000_000).unwrap().unwrap();
        let t = Instant::now();
        assert!(ledger.put(&v).unwrap());
        put_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    drop(ledger);
    let _ = std::fs::remove_dir_all(&dir);
    json!({ "signed_per_s": median(&signed), "checked_per_s": median(&checked), "runs": 5, "per_run": n,
            "ledger_put_ms_median": median(&put_ms), "ledger_puts": put_ms.len() })
}

/// Milliseconds from sending a streamed greedy chat request of `tokens` tokens to its first
/// piece of text.
fn ttft_ms(http: &str, model: &str, tokens: usize) -> f64 {
    let body = json!({ "model": model, "messages": [{ "role": "user", "content": "Name a color." }],
        "max_tokens": tokens, "temperature": 0, "stream": true });
    let sent = Instant::now();
    let mut first = None;
    stream_chat(http, &body, |v| {
        if first.is_none() && has_text(v) {
            first = Some(sent.elapsed());
        }
    });
    first.expect("no text").as_secs_f64() * 1e3
}

/// A staked contributor's time to first token on a charging relay with five session slots,
/// idle and while three free-tier gateways keep three requests each going (the lottery slot
/// busy and free-tier requests always queued). Goal: under load at most 1.2x idle.
///
/// Every process shares this machine's cores, the free-tier gateways' own work (their heads
/// and sampling) included, so the same load is also run against a second node in a swarm of
/// its own: the contributor's node then has no load at all, and its TTFT shows what sharing
/// the machine alone costs.
fn priority() -> serde_json::Value {
    const SAMPLES: usize = 9;
    let root = temp_dir("bench-priority");
    let chain = Chain::start(&root);
    let model = default_model();
    let m = model.to_str().unwrap();
    let settle = chain.relay_args();
    let settle: Vec<&str> = settle.iter().map(String::as_str).collect();
    let serve = [
        &["--model", m, "--blocks", "all", "--price", PRICE, "--max-sessions", "5"][..],
        &["--max-sessions-per-peer", "16", "--max-sessions-per-ip", "16", "--max-streams-per-peer", "32"],
        &settle,
    ]
    .concat();
    let (node_dir, _) = chain.node_dir("node", 2);
    let node = Relay::start(&node_dir, &serve);
    let boot = node.addr("tcp");
    // The same kind of node, in a swarm of its own: the control's load goes there.
    let (other_dir, _) = chain.node_dir("other", 3);
    let other = Relay::start(&other_dir, &serve);
    let model_id = node.model_id();
    let (payer_dir, _) = chain.payer_dir("contributor", 1, "100", &[], "0");
    let contributor = Relay::start(&payer_dir, &[&["--model", m, "--bootstrap", &boot, "--pay"][..], &settle].concat());
    let http = contributor.http.clone().unwrap();
    ttft_ms(&http, &model_id, 4); // warm: route found, allocation made
    let idle: Vec<f64> = (0..SAMPLES).map(|_| ttft_ms(&http, &model_id, 4)).collect();

    // Three free-tier gateways of the swarm of `to`, three requests each at a time, while
    // the contributor's TTFT is sampled; returns the samples and the free requests done.
    let under_load = |name: &str, to: &str| {
        let free: Vec<Relay> = (0..3)
            .map(|i| Relay::start(&root.join(format!("{name}-{i}")), &["--model", m, "--bootstrap", to]))
            .collect();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let load: Vec<_> = free
            .iter()
            .flat_map(|f| (0..3).map(move |_| f.http.clone().unwrap()))
            .map(|h| {
                let (stop, model) = (stop.clone(), model_id.clone());
                std::thread::spawn(move || {
                    let mut done = 0usize;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let body =
                            json!({ "model": model, "prompt": "Once upon a time", "max_tokens": 32, "temperature": 0 });
                        if ureq::post(&format!("{h}/v1/completions")).send_json(&body).is_ok() {
                            done += 1;
                        }
                    }
                    done
                })
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_secs(3));
        let samples: Vec<f64> = (0..SAMPLES).map(|_| ttft_ms(&http, &model_id, 4)).collect();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let done: usize = load.into_iter().map(|t| t.join().unwrap_or(0)).sum();
        (samples, done)
    };
    let (loaded, free_done) = under_load("free", &boot);
    let (elsewhere, elsewhere_done) = under_load("elsewhere", &other.addr("tcp"));
    eprintln!(
        "contributor TTFT ms idle {idle:?} under free-tier load {loaded:?} with the load on another node {elsewhere:?}"
    );
    let (im, lm, em) = (median(&idle), median(&loaded), median(&elsewhere));
    drop((contributor, node, other, chain));
    let _ = std::fs::remove_dir_all(&root);
    json!({
        "slots": "5 (4 scored, 1 lottery)",
        "free_tier_load": "3 gateways x 3 requests of 32 tokens at a time",
        "free_tier_requests_completed_meanwhile": free_done,
        "contributor_ttft_ms_idle": idle,
        "contributor_ttft_ms_under_load": loaded,
        "contributor_ttft_ms_load_on_another_node": elsewhere,
        "free_tier_requests_completed_on_another_node": elsewhere_done,
        "idle_median_ms": im,
        "under_load_median_ms": lm,
        "load_on_another_node_median_ms": em,
        "under_load_over_idle": lm / im,
        "load_on_another_node_over_idle": em / im,
        "under_load_over_load_on_another_node": lm / em,
    })
}
