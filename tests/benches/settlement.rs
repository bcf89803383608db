//! `cargo bench -p ait-tests --bench settlement`: what settlement costs, printing JSON (issue
//! 15's "measure and report"). On a real anvil started here:
//!
//! - gas of a deposit, an allocation, a first redeem of a session, a later redeem of the same
//!   session, and `redeemBatch` of 1, 10 and 50 vouchers (gas per voucher);
//! - the break-even voucher amount: the AIT owed at which the node's 70% pays the gas of its
//!   share of a 50-voucher batch, at two stated gas prices and a stated AIT price in ETH;
//! - how many vouchers a node checks off chain per second on one core (`recover_signer`: the
//!   EIP-712 hash and the secp256k1 recovery), median of 5 runs;
//! - gas of the tribunal's steps: an accusation by two judges, its execution (a slash and two
//!   bounties), an appeal (with its bond), a jury's draw from a pool of eight, a juror's vote,
//!   and the third vote, which rules and overturns two judges.

use std::time::Instant;

use alloy::primitives::{Address, Bytes, B256, U256};
use alloy::providers::DynProvider;
use relay::bench::median;
use relay::settle::bindings::{Escrow, Staking, Tribunal, AIT};
use relay::settle::deploy::MIN_STAKE_AIT;
use relay::settle::dev::{self, DevOpt};
use serde_json::json;
use web_node::settle::{escrow_domain, recover_signer, SessionKey, Voucher};
use web_node::trust::tribunal::{tribunal_domain, Verdict};

const AIT_UNIT: u128 = 1_000_000_000_000_000_000;

/// Gas a transaction used.
async fn gas(call: relay::settle::Sent) -> u64 {
    let receipt = call.expect("sent").get_receipt().await.expect("mined");
    assert!(receipt.status(), "reverted");
    receipt.gas_used
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test` runs benches once without --bench: nothing to check here.
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let out = rt.block_on(run());
    println!("{}", serde_json::to_string_pretty(&out).unwrap());
}

async fn run() -> serde_json::Value {
    let opts = DevOpt {
        out: "unused.json".into(),
        host: "127.0.0.1".into(),
        port: 0,
        accounts: 12,
        ait_each: 1_000_000,
        thaw_seconds: 3600,
        unbonding_seconds: 7200,
        appeal_seconds: 1800,
        jury_seconds: 1200,
    };
    let chain = dev::start(&opts).await.expect("a dev chain");
    let d = chain.chain.deployment.clone();
    let provider = |i: usize| -> DynProvider { dev::wallet_provider(&d.rpc, &chain.chain.accounts[i].key).unwrap() };
    let payer_key = SessionKey::from_bytes(chain.chain.accounts[1].key.as_slice()).unwrap();
    let node: Address = chain.chain.accounts[2].address;
    let payer = Escrow::new(d.escrow, provider(1));
    let by_node = Escrow::new(d.escrow, provider(2));
    let token = AIT::new(d.token, provider(1));
    let domain = escrow_domain(d.chain_id, d.escrow);
    let ait = |n: u64| U256::from(n) * U256::from(AIT_UNIT);

    gas(token.approve(d.escrow, ait(1_000_000)).send().await).await;
    let deposit = gas(payer.deposit(ait(500_000)).send().await).await;
    let allocate = gas(payer.allocate(node, ait(400_000)).send().await).await;

    let model = B256::repeat_byte(0x4d);
    let expiry = u64::MAX / 2;
    let voucher = |session: u64, amount: u64| Voucher {
        session: B256::from(U256::from(session)),
        payer: payer_key.address(),
        node,
        model,
        cumulativeAmount: ait(amount),
        cumulativeWork: U256::from(amount * 30),
        receipts: B256::repeat_byte(0x5e),
        expiry,
    };
    let sign = |v: &Voucher| Bytes::from(payer_key.sign(v, &domain).unwrap().as_bytes().to_vec());

    // One session: its first redeem writes a new `collected` slot, later ones update it.
    let v = voucher(1, 10);
    let first = gas(by_node.redeem((&v).into(), sign(&v)).send().await).await;
    let v = voucher(1, 20);
    let later = gas(by_node.redeem((&v).into(), sign(&v)).send().await).await;

    // Batches of n sessions: their first redeems (new `collected` slots), then later ones
    // (the steady state of a node that redeems long sessions now and then). The break-even
    // below takes the later ones.
    let mut batch_gas = serde_json::Map::new();
    let mut per_voucher_50 = 0.0;
    for (round, n) in [1u64, 10, 50].into_iter().enumerate() {
        let sessions: Vec<u64> = (0..n).map(|i| 1000 * (round as u64 + 1) + i).collect();
        let opening: Vec<Voucher> = sessions.iter().map(|&s| voucher(s, 1)).collect();
        let sigs: Vec<Bytes> = opening.iter().map(sign).collect();
        let opened = gas(by_node.redeemBatch(opening.iter().map(Into::into).collect(), sigs).send().await).await;
        let vouchers: Vec<Voucher> = sessions.iter().map(|&s| voucher(s, 2)).collect();
        let sigs: Vec<Bytes> = vouchers.iter().map(sign).collect();
        let used = gas(by_node.redeemBatch(vouchers.iter().map(Into::into).collect(), sigs).send().await).await;
        let each = used as f64 / n as f64;
        if n == 50 {
            per_voucher_50 = each;
        }
        batch_gas.insert(
            format!("{n}"),
            json!({
                "first_of_sessions_gas_per_voucher": (opened as f64 / n as f64).round(),
                "later_of_sessions_gas_per_voucher": each.round(),
            }),
        );
    }

    // Break-even: the node's 70% of the amount pays the gas of its voucher in a 50-batch.
    let ait_in_eth = 1e-6; // stated assumption: 1 AIT = 0.000001 ETH
    let break_even = |gwei: f64| {
        let eth = per_voucher_50 * gwei * 1e-9;
        json!({
            "gas_price_gwei": gwei,
            "eth_per_voucher": eth,
            "break_even_ait": (eth / ait_in_eth / 0.7 * 1e6).round() / 1e6,
        })
    };

    // Off-chain checks: distinct vouchers, so nothing is cached.
    let vouchers: Vec<Voucher> = (0..2000).map(|i| voucher(i, i + 1)).collect();
    let sigs: Vec<[u8; 65]> = vouchers.iter().map(|v| payer_key.sign(v, &domain).unwrap().as_bytes()).collect();
    let runs: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            for (v, s) in vouchers.iter().zip(&sigs) {
                assert_eq!(recover_signer(v, &domain, s).unwrap(), payer_key.address());
            }
            vouchers.len() as f64 / t.elapsed().as_secs_f64()
        })
        .collect();

    let tribunal = tribunal_gas(&chain.chain).await;

    json!({
        "tribunal_gas": tribunal,
        "gas": {
            "deposit": deposit,
            "allocate": allocate,
            "redeem_first_of_session": first,
            "redeem_later_of_session": later,
            "redeem_batch": batch_gas,
        },
        "ait_price_eth_assumed": ait_in_eth,
        "break_even": [break_even(0.01), break_even(1.0)],
        "vouchers_verified_per_s_one_core": median(&runs).round(),
    })
}

/// Gas of the tribunal's steps on `chain`'s dev accounts 3 to 11: 3 the accused, 4 and 5 the
/// judges, 4 to 11 enlisted (the case's draw leaves the judges out).
async fn tribunal_gas(chain: &dev::DevChain) -> serde_json::Value {
    let d = &chain.deployment;
    let provider = |i: usize| -> DynProvider { dev::wallet_provider(&d.rpc, &chain.accounts[i].key).unwrap() };
    let key = |i: usize| SessionKey::from_bytes(chain.accounts[i].key.as_slice()).unwrap();
    for i in 3..12 {
        // The accused is slashed once and appeals once more: the slash and the bond left.
        let stake = U256::from(if i == 3 { 3 } else { 2 } * MIN_STAKE_AIT) * U256::from(AIT_UNIT);
        gas(AIT::new(d.token, provider(i)).approve(d.staking, stake).send().await).await;
        gas(Staking::new(d.staking, provider(i)).stake(stake).send().await).await;
        if i >= 4 {
            gas(Tribunal::new(d.tribunal, provider(i)).enlist().send().await).await;
        }
    }
    let peer = libp2p::PeerId::random();
    gas(Staking::new(d.staking, provider(3)).bind(Bytes::from(peer.to_bytes())).send().await).await;
    let domain = tribunal_domain(d.chain_id, d.tribunal);
    let accused = chain.accounts[3].address;
    let judges = vec![chain.accounts[4].address, chain.accounts[5].address];
    let by = |i: usize| Tribunal::new(d.tribunal, provider(i));
    let dao = by(0);
    let accuse = |report: [u8; 32]| {
        let v = Verdict::new(report, accused, &peer, true);
        let sigs: Vec<Bytes> = [4, 5].iter().map(|&i| v.sign(&key(i), &domain).unwrap()).collect();
        dao.accuse(v.report, accused, v.accusedPeer.clone(), judges.clone(), sigs)
    };
    let warp = |seconds: u64| {
        let p = provider(0);
        async move { ait_tests::evm::warp(&p, seconds).await }
    };
    // Unappealed: accused, then slashed once the window has passed.
    let accused_gas = gas(accuse([1; 32]).send().await).await;
    warp(1801).await;
    let execute = gas(dao.execute(B256::repeat_byte(1), accused).send().await).await;
    // Appealed: a jury drawn and three of it overturn the judges.
    gas(accuse([2; 32]).send().await).await;
    let id = B256::repeat_byte(2);
    let appeal = gas(by(3).appeal(id).send().await).await;
    warp(1).await;
    let draw = gas(dao.draw(id, accused).send().await).await;
    let jury = dao.partiesOf(id, accused).call().await.unwrap().jury;
    let juror = |a: &Address| chain.accounts.iter().position(|x| x.address == *a).unwrap();
    let mut votes = vec![];
    for a in &jury[..3] {
        votes.push(gas(by(juror(a)).vote(id, accused, false).send().await).await);
    }
    json!({
        "accuse_two_judges": accused_gas,
        "execute_slash_and_two_bounties": execute,
        "appeal": appeal,
        "draw_jury_of_5_from_8": draw,
        "vote": votes[0],
        "third_vote_overturning_2_judges": votes[2],
    })
}
