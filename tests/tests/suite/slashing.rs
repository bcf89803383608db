//! Slashing (issue 17, deliverable 5) on a real `anvil`: fraud reports made by real audits of
//! the in-process chain fixture (`ait_tests::chain_fixture`, a tiny model served by real
//! servers, one of them lying), recomputed by judges who sign EIP-712 verdicts with their EVM
//! keys (`web_node::trust::tribunal`), submitted to `contracts/src/Tribunal.sol`, which holds
//! `Staking`'s arbiter role.
//!
//! - Every fault class: the liar's report, recomputed by two staked judges, slashes its
//!   stake to the DAO fund once the appeal window has passed; the judges get their bounty.
//! - Forged or misdirected verdicts slash nobody: one judge, an unstaked judge, the accused
//!   as its own judge, a judge named twice, a signature that is not the named judge's, a
//!   cleared verdict passed off as faulty, a verdict pointed at an address bound to another
//!   peer, a replayed case, an appeal by anyone but the accused, an early execution.
//! - Two staked sybils framing an honest node: the node appeals (putting up the bond), the
//!   chain draws a jury from the hash of a later block (sybils and accused excluded), the
//!   jurors recompute the report and vote the node cleared, and the sybils lose stake; a case
//!   never drawn is dismissed and moves no stake; one whose jury does not rule is dismissed
//!   and its silent jurors lose their penalty.
//! - Nodes' duties (`relay::settle::duty`) doing all of it on their own: a liar concedes, and
//!   appealing anyway loses its bond too; a framed node appeals and is cleared.

use std::ops::Range;
use std::sync::Arc;

use ait_tests::chain_fixture::{quick_options, Fault, Fixture, FAULT_CLASSES};
use ait_tests::evm::{mine_blocks, refused, sent, warp};
use ait_tests::paid::Chain;
use alloy::primitives::{Address, Bytes, B256, U256};
use alloy::providers::DynProvider;
use alloy::sol_types::SolStruct;
use futures::future::BoxFuture;
use libp2p::PeerId;
use relay::settle::bindings::{Staking, Tribunal, AIT};
use relay::settle::deploy::{
    APPEAL_BOND_AIT, BOUNTY_AIT, JUDGE_PENALTY_AIT, JUROR_PENALTY_AIT, MIN_STAKE_AIT, SLASH_AIT,
};
use relay::settle::dev::{self, wallet_provider, DevOpt, RunningDevChain};
use relay::settle::duty::{Acts, Duty, Evidence};
use relay::settle::{send_with_gas_margin, Deployment};
use web_node::client::LayerChain;
use web_node::settle::SessionKey;
use web_node::trust::tribunal::{tribunal_domain, Verdict as Signed};
use web_node::trust::{FraudReport, Verdict};

const AIT: u128 = 1_000_000_000_000_000_000;
const APPEAL: u64 = 1800;
const JURY_WINDOW: u64 = 1200;

const FAST: f64 = 0.01;
const SPARE: f64 = 2.0;
/// Three hops and three spares of the middle span: two audit, one recomputes for the judges.
const SERVERS: [(Range<usize>, f64); 6] =
    [(0..2, FAST), (2..4, FAST), (4..6, FAST), (2..4, SPARE), (2..4, SPARE), (2..4, SPARE)];
const PROMPT: [u32; 5] = [3, 17, 42, 99, 7];
const DECODE: [u32; 4] = [11, 64, 5, 120];

/// Tribunal stages and outcomes, as the contract numbers them.
const ACCUSED: u8 = 1;
const APPEALED: u8 = 2;
const DRAWN: u8 = 3;
const CLOSED: u8 = 4;
const SLASHED: u8 = 1;
const OVERTURNED: u8 = 2;
const DISMISSED: u8 = 3;

fn ait(n: u64) -> U256 {
    U256::from(n) * U256::from(AIT)
}

/// A dev account: its key (its EVM identity) and a provider that signs with it.
struct Node {
    key: SessionKey,
    provider: DynProvider,
}

/// A dev chain with the contracts; `nodes[0]` deployed them and is the DAO.
struct Court {
    running: RunningDevChain,
    nodes: Vec<Node>,
}

impl Court {
    async fn start(accounts: u32) -> Court {
        let opts = DevOpt {
            out: "unused.json".into(),
            host: "127.0.0.1".into(),
            port: 0,
            accounts,
            ait_each: 20_000,
            thaw_seconds: 3600,
            unbonding_seconds: 7200,
            appeal_seconds: APPEAL,
            jury_seconds: JURY_WINDOW,
        };
        let running = dev::start(&opts).await.expect("a dev chain");
        let rpc = running.chain.deployment.rpc.clone();
        let nodes = running
            .chain
            .accounts
            .iter()
            .map(|a| Node {
                key: SessionKey::from_bytes(a.key.as_slice()).unwrap(),
                provider: dev::wallet_provider(&rpc, &a.key).unwrap(),
            })
            .collect();
        Court { running, nodes }
    }

    fn d(&self) -> &Deployment {
        &self.running.chain.deployment
    }

    fn tribunal(&self, i: usize) -> Tribunal::TribunalInstance<DynProvider> {
        Tribunal::new(self.d().tribunal, self.nodes[i].provider.clone())
    }

    fn staking(&self, i: usize) -> Staking::StakingInstance<DynProvider> {
        Staking::new(self.d().staking, self.nodes[i].provider.clone())
    }

    fn address(&self, i: usize) -> Address {
        self.nodes[i].key.address()
    }

    fn domain(&self) -> alloy::sol_types::Eip712Domain {
        tribunal_domain(self.d().chain_id, self.d().tribunal)
    }

    /// Node `i` stakes `amount` AIT.
    async fn stake(&self, i: usize, amount: u64) {
        let token = AIT::new(self.d().token, self.nodes[i].provider.clone());
        sent(token.approve(self.d().staking, ait(amount)).send().await).await.expect("approve");
        sent(self.staking(i).stake(ait(amount)).send().await).await.expect("stake");
    }

    /// Node `i` binds its address to `peer`.
    async fn bind(&self, i: usize, peer: &PeerId) {
        sent(self.staking(i).bind(Bytes::from(peer.to_bytes())).send().await).await.expect("bind");
    }

    async fn staked(&self, who: Address) -> U256 {
        self.staking(0).stakeOf(who).call().await.unwrap().staked
    }

    async fn balance(&self, who: Address) -> U256 {
        AIT::new(self.d().token, self.nodes[0].provider.clone()).balanceOf(who).call().await.unwrap()
    }

    /// Stakes and AIT balances of `who`, to check that nothing moved.
    async fn holdings(&self, who: &[Address]) -> Vec<(U256, U256)> {
        let mut out = vec![];
        for &w in who {
            out.push((self.staked(w).await, self.balance(w).await));
        }
        out
    }

    async fn stage(&self, v: &Signed) -> (u8, u8) {
        let c = self.tribunal(0).caseOf(v.report, v.accused).call().await.unwrap();
        (c.stage, c.outcome)
    }

    async fn locks(&self, who: Address) -> U256 {
        self.staking(0).locksOf(who).call().await.unwrap()
    }

    /// Node `i` appeals its case of `report`, with the bond.
    async fn appeal(&self, i: usize, report: B256) -> Result<(), String> {
        sent(self.tribunal(i).appeal(report).send().await).await
    }

    /// Opens a case from node `from`.
    async fn accuse(&self, from: usize, v: &Signed, judges: &[Address], sigs: &[Bytes]) -> Result<(), String> {
        let call = self.tribunal(from);
        let call = call.accuse(v.report, v.accused, v.accusedPeer.clone(), judges.to_vec(), sigs.to_vec());
        sent(call.send().await).await
    }
}

/// A session through the fixture, audited at its last step: the faulty verdict's report.
async fn report_of(fx: &Fixture) -> FraudReport {
    let mut chain = fx.chain(quick_options());
    fx.outputs(&mut chain, &PROMPT, &DECODE).await.expect("the swarm chain runs");
    chain.end().await.expect("end");
    let case = chain.audit_cases()[1].clone();
    let outcome = chain.audit(&case, case.receipts.len() - 1).await.expect("the audit runs");
    assert_eq!(outcome.verdict, Verdict::Faulty, "{outcome:?}");
    outcome.report.expect("a faulty verdict leaves a report")
}

/// What node `i` of `court` signs after recomputing `report` itself (a chain with a book of
/// its own, on a server the report does not involve), about the accused at `accused`.
async fn judge(court: &Court, i: usize, fx: &Fixture, report: &FraudReport, accused: Address) -> (Signed, Bytes) {
    let judgment = fx.chain(quick_options()).verify_report(report).await.expect("the report is recomputed");
    let checked = report.check().expect("the report holds");
    let verdict = Signed::of(&checked, &judgment, accused);
    let sig = verdict.sign(&court.nodes[i].key, &court.domain()).unwrap();
    (verdict, sig)
}

/// Test 6a's slashing, every fault class: two staked judges recompute the liar's report and
/// sign; the tribunal takes the slash from its stake to the DAO fund once the appeal window
/// has passed, and pays each judge its bounty (from its own fund, not the slash).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_class_is_slashed_on_anvil_once_two_staked_judges_recompute_its_report() {
    // One liar's operator per class (a staked address keeps the peer id it bound).
    let court = Court::start(9).await;
    let judges = [7, 8];
    for j in judges {
        court.stake(j, MIN_STAKE_AIT).await;
    }
    let judge_addrs = judges.map(|j| court.address(j));
    let treasury = court.d().treasury;

    for (n, class) in FAULT_CLASSES.into_iter().enumerate() {
        let liar = 1 + n;
        let fx = Fixture::lying(7, &SERVERS, 1, class);
        let report = report_of(&fx).await;
        court.bind(liar, &fx.peer(1)).await;
        court.stake(liar, 2 * SLASH_AIT).await;
        let mut verdicts = vec![];
        for j in judges {
            verdicts.push(judge(&court, j, &fx, &report, court.address(liar)).await);
        }
        let v = verdicts[0].0.clone();
        assert!(v.faulty && verdicts.iter().all(|(w, _)| *w == v), "{}: {verdicts:?}", class.name);
        if n == 0 {
            // The contract hashes a verdict as web-node does.
            let tribunal = court.tribunal(0);
            let peer_hash = alloy::primitives::keccak256(&v.accusedPeer);
            let digest = tribunal.verdictDigest(v.report, v.accused, peer_hash, true).call().await.unwrap();
            assert_eq!(digest, v.eip712_signing_hash(&court.domain()));
        }
        let sigs: Vec<Bytes> = verdicts.iter().map(|(_, s)| s.clone()).collect();
        court.accuse(0, &v, &judge_addrs, &sigs).await.unwrap_or_else(|e| panic!("{}: {e}", class.name));
        assert_eq!(court.stage(&v).await, (ACCUSED, 0), "{}", class.name);
        for who in [court.address(liar), judge_addrs[0], judge_addrs[1]] {
            assert_eq!(court.locks(who).await, U256::from(1), "{}: an open case locks its stakes", class.name);
        }

        let before = court.holdings(&[court.address(liar), treasury, judge_addrs[0], judge_addrs[1]]).await;
        refused(sent(court.tribunal(0).execute(v.report, v.accused).send().await).await, "TooEarly");
        warp(&court.nodes[0].provider, APPEAL + 1).await;
        sent(court.tribunal(0).execute(v.report, v.accused).send().await).await.expect("execute");
        let after = court.holdings(&[court.address(liar), treasury, judge_addrs[0], judge_addrs[1]]).await;
        assert_eq!(court.stage(&v).await, (CLOSED, SLASHED), "{}", class.name);
        for who in [court.address(liar), judge_addrs[0], judge_addrs[1]] {
            assert_eq!(court.locks(who).await, U256::ZERO, "{}: a closed case unlocks", class.name);
        }
        assert_eq!(before[0].0 - after[0].0, ait(SLASH_AIT), "{}: the liar's stake", class.name);
        assert_eq!(after[1].1 - before[1].1, ait(SLASH_AIT), "{}: the DAO fund", class.name);
        for k in 2..4 {
            assert_eq!(after[k].1 - before[k].1, ait(BOUNTY_AIT), "{}: a judge's bounty", class.name);
            assert_eq!(after[k].0, before[k].0, "{}: a judge's stake", class.name);
        }
        assert_eq!(after[0].0, ait(SLASH_AIT), "{}: what the liar keeps", class.name);
        eprintln!("{}: slashed {SLASH_AIT} AIT on anvil", class.name);
    }
}

/// An accusation that must be refused: what it is, the verdict, its judges and their
/// signatures, and the contract error expected.
type Forgery = (&'static str, Signed, Vec<Address>, Vec<Bytes>, &'static str);

/// Test 6c's slashing: verdicts that are forged, unstaked, misdirected or replayed, and
/// calls out of turn, are refused and move no stake; the true accusation then slashes once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_unstaked_misdirected_and_replayed_verdicts_slash_nobody() {
    let court = Court::start(7).await;
    let (liar, j1, j2, unstaked, poor, other) = (1, 2, 3, 4, 5, 6);
    court.stake(liar, 5 * SLASH_AIT).await;
    court.stake(j1, MIN_STAKE_AIT).await;
    court.stake(j2, MIN_STAKE_AIT).await;
    court.stake(poor, MIN_STAKE_AIT - 1).await;
    court.stake(other, SLASH_AIT - 1).await;
    let noise = FAULT_CLASSES.into_iter().find(|c| c.fault == Some(Fault::Lie)).unwrap();
    let fx = Fixture::lying(7, &SERVERS, 1, noise);
    let report = report_of(&fx).await;
    court.bind(liar, &fx.peer(1)).await;
    court.bind(other, &fx.peer(0)).await;
    let accused = court.address(liar);
    let (v, s1) = judge(&court, j1, &fx, &report, accused).await;
    let (_, s2) = judge(&court, j2, &fx, &report, accused).await;
    let sign = |i: usize, v: &Signed| v.sign(&court.nodes[i].key, &court.domain()).unwrap();
    let a = |i: usize| court.address(i);
    let everyone: Vec<Address> = (0..7).map(a).chain([court.d().treasury]).collect();
    let start = court.holdings(&everyone).await;

    let cleared = Signed { faulty: false, ..v.clone() };
    let at_other = Signed { accused: a(other), ..v.clone() };
    // `other` bound the liar's peer id as well, with too little stake to be worth a case.
    let decoy = Signed { accused: a(other), accusedPeer: v.accusedPeer.clone(), ..v.clone() };
    court.bind(unstaked, &fx.peer(1)).await;
    let cases: Vec<Forgery> = vec![
        ("one judge", v.clone(), vec![a(j1)], vec![s1.clone()], "Quorum"),
        ("four judges", v.clone(), vec![a(j1), a(j2), a(poor), a(0)], vec![s1.clone(); 4], "Quorum"),
        ("an unstaked judge", v.clone(), vec![a(j1), a(unstaked)], vec![s1.clone(), sign(unstaked, &v)], "NotStaked"),
        ("a judge under the minimum", v.clone(), vec![a(j1), a(poor)], vec![s1.clone(), sign(poor, &v)], "NotStaked"),
        ("the accused as judge", v.clone(), vec![a(j1), accused], vec![s1.clone(), sign(liar, &v)], "BadSigner"),
        ("a judge twice", v.clone(), vec![a(j1), a(j1)], vec![s1.clone(), s1.clone()], "BadSigner"),
        ("another's signature", v.clone(), vec![a(j1), a(j2)], vec![s1.clone(), sign(unstaked, &v)], "BadSigner"),
        (
            "a cleared verdict as faulty",
            v.clone(),
            vec![a(j1), a(j2)],
            vec![s1.clone(), sign(j2, &cleared)],
            "BadSigner",
        ),
        (
            "an address bound to another peer",
            at_other.clone(),
            vec![a(j1), a(j2)],
            vec![sign(j1, &at_other), sign(j2, &at_other)],
            "NotBound",
        ),
        (
            "an accused without the slash staked",
            decoy.clone(),
            vec![a(j1), a(j2)],
            vec![sign(j1, &decoy), sign(j2, &decoy)],
            "NotBound",
        ),
    ];
    for (what, verdict, judges, sigs, error) in cases {
        let r = court.accuse(0, &verdict, &judges, &sigs).await;
        assert!(matches!(&r, Err(e) if e.contains(error)), "{what}: expected {error}, got {r:?}");
    }
    assert_eq!(court.stage(&v).await, (0, 0), "a refused accusation opened a case");
    assert_eq!(court.holdings(&everyone).await, start, "a refused accusation moved AIT");

    // An accused bound to the peer id with too little stake: the case would slash nothing.
    let unstaked_accused = Signed { accused: a(unstaked), ..v.clone() };
    let sigs = [sign(j1, &unstaked_accused), sign(j2, &unstaked_accused)];
    refused(court.accuse(0, &unstaked_accused, &[a(j1), a(j2)], &sigs).await, "AccusedUnstaked");

    court.accuse(unstaked, &v, &[a(j1), a(j2)], &[s1.clone(), s2.clone()]).await.expect("the true accusation");
    refused(court.accuse(0, &v, &[a(j1), a(j2)], &[s1.clone(), s2.clone()]).await, "CaseExists");
    // While the case is open, neither the liar nor its judges can unbond or rebind.
    refused(sent(court.staking(liar).unbond(ait(1)).send().await).await, "Locked");
    refused(sent(court.staking(j1).unbond(ait(1)).send().await).await, "Locked");
    refused(sent(court.staking(liar).bind(Bytes::from(fx.peer(2).to_bytes())).send().await).await, "BindingFixed");
    refused(sent(court.tribunal(j1).appeal(v.report).send().await).await, "WrongStage");
    refused(sent(court.tribunal(0).execute(v.report, accused).send().await).await, "TooEarly");
    refused(sent(court.tribunal(0).draw(v.report, accused).send().await).await, "WrongStage");
    assert_eq!(court.holdings(&everyone).await, start, "an open case moved AIT");
    warp(&court.nodes[0].provider, APPEAL + 1).await;
    refused(sent(court.tribunal(liar).appeal(v.report).send().await).await, "TooLate");
    sent(court.tribunal(0).execute(v.report, accused).send().await).await.expect("execute");
    refused(sent(court.tribunal(0).execute(v.report, accused).send().await).await, "WrongStage");
    let end = court.holdings(&everyone).await;
    assert_eq!(start[liar].0 - end[liar].0, ait(SLASH_AIT));
    assert_eq!(end[7].1 - start[7].1, ait(SLASH_AIT), "the DAO fund");
    for i in [0, unstaked, poor, other] {
        assert_eq!(end[i], start[i], "account {i}");
    }

    // A judge answers for each open case with the penalty: 1,000 AIT bonded covers two.
    for (n, b) in [0x61u8, 0x62, 0x63].into_iter().enumerate() {
        let more = Signed { report: B256::repeat_byte(b), ..v.clone() };
        let r = court.accuse(0, &more, &[a(j1), a(j2)], &[sign(j1, &more), sign(j2, &more)]).await;
        match n {
            2 => refused(r, "NotStaked"),
            _ => r.expect("a judge's case within its bond"),
        }
    }
}

/// Test 6c's sybils: two staked nodes sign faulty verdicts on a report that frames an honest
/// node (they are its auditors and lied). The node appeals; the chain draws a jury from the
/// hash of the block after the appeal, never a judge or the accused; the jurors recompute
/// the report, clear the node, and their majority overturns the verdict: each sybil loses
/// its penalty to the DAO fund, the node keeps its stake. A case never drawn is dismissed and
/// moves nothing; one whose jury does not rule is dismissed and its silent jurors lose their
/// penalty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staked_sybils_framing_an_honest_node_are_overturned_by_a_drawn_jury_and_lose_stake() {
    let court = Court::start(12).await;
    let (honest, sybils, jurors, late) = (1, [2, 3], 4..11, 11);
    court.stake(honest, 5 * SLASH_AIT).await;
    for i in sybils.into_iter().chain(jurors.clone()) {
        court.stake(i, MIN_STAKE_AIT).await;
        sent(court.tribunal(i).enlist().send().await).await.expect("enlist");
    }
    refused(sent(court.tribunal(0).enlist().send().await).await, "NotStaked");
    assert_eq!(court.tribunal(0).poolSize().call().await.unwrap(), U256::from(2 + jurors.len()));
    refused(sent(court.staking(4).unbond(ait(1)).send().await).await, "Locked");
    court.stake(late, MIN_STAKE_AIT).await;

    // The middle node is honest; two of its spares lie alike and audit it.
    let fx = Fixture::new(7, &SERVERS);
    fx.set_fault(3, Fault::Lie, 0);
    fx.set_fault(4, Fault::Lie, 0);
    fx.set_fault(5, Fault::Freeze, 0);
    let report = report_of(&fx).await;
    fx.clear_fault(5);
    court.bind(honest, &fx.peer(1)).await;
    let checked = report.check().expect("the framing report holds up to recomputation");
    let accused = court.address(honest);
    let framing = Signed::of(
        &checked,
        &web_node::trust::Judgment { accused_faulty: true, worst: checked.worst, lying_auditors: vec![] },
        accused,
    );
    let sybil_addrs = sybils.map(|s| court.address(s));
    let sybil_sigs: Vec<Bytes> =
        sybils.iter().map(|&s| framing.sign(&court.nodes[s].key, &court.domain()).unwrap()).collect();
    court.accuse(sybils[0], &framing, &sybil_addrs, &sybil_sigs).await.expect("the sybils' accusation");
    let everyone: Vec<Address> = (0..12).map(|i| court.address(i)).chain([court.d().treasury]).collect();
    let start = court.holdings(&everyone).await;

    court.appeal(honest, framing.report).await.expect("appeal");
    refused(sent(court.tribunal(0).draw(framing.report, accused).send().await).await, "TooEarly");
    // A node that enlists once the appeal is in cannot sit on its jury.
    sent(court.tribunal(late).enlist().send().await).await.expect("a late enlisting");
    sent(send_with_gas_margin(court.tribunal(0).draw(framing.report, accused)).await).await.expect("draw");
    let jury = court.tribunal(0).partiesOf(framing.report, accused).call().await.unwrap().jury;
    assert!(!jury.contains(&court.address(late)), "a node that enlisted after the appeal was drawn");
    assert_eq!(jury.len(), 5);
    let juror_index = |addr: &Address| jurors.clone().find(|&i| court.address(i) == *addr);
    assert!(jury.iter().all(|j| juror_index(j).is_some()), "a judge or the accused was drawn: {jury:?}");
    let mut distinct = jury.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 5, "a juror drawn twice");
    let left_out = jurors.clone().find(|&i| !jury.contains(&court.address(i))).expect("one enlisted juror not drawn");

    // Each juror recomputes the report and clears the node, and votes so.
    let mut cleared = vec![];
    for addr in &jury[..3] {
        let i = juror_index(addr).unwrap();
        let (v, _) = judge(&court, i, &fx, &report, accused).await;
        assert!(!v.faulty, "juror {i} convicted the honest node");
        cleared.push(i);
    }
    let vote = |i: usize, faulty: bool| {
        let t = court.tribunal(i);
        async move { sent(t.vote(framing.report, accused, faulty).send().await).await }
    };
    let appealed = court.holdings(&everyone).await;
    refused(vote(left_out, false).await, "NotJuror");
    refused(vote(sybils[0], true).await, "NotJuror");
    refused(vote(honest, false).await, "NotJuror");
    vote(cleared[0], false).await.expect("a juror's vote");
    refused(vote(cleared[0], false).await, "NotJuror");
    vote(cleared[1], false).await.expect("a juror's vote");
    assert_eq!(court.stage(&framing).await.0, DRAWN, "two votes do not rule");
    assert_eq!(court.holdings(&everyone).await, appealed, "a vote short of a majority moved AIT");
    vote(cleared[2], false).await.expect("the third vote rules");
    refused(vote(juror_index(&jury[3]).unwrap(), true).await, "WrongStage");
    assert_eq!(court.stage(&framing).await, (CLOSED, OVERTURNED));
    for j in &jury {
        assert_eq!(court.locks(*j).await, U256::from(1), "a juror keeps only its enlisting lock");
    }
    let end = court.holdings(&everyone).await;
    assert_eq!(end[honest], start[honest], "the honest node lost nothing");
    for s in sybils {
        assert_eq!(start[s].0 - end[s].0, ait(JUDGE_PENALTY_AIT), "sybil {s}'s stake");
    }
    assert_eq!(end[12].1 - start[12].1, ait(2 * JUDGE_PENALTY_AIT), "the DAO fund");
    for &i in &cleared {
        assert_eq!(end[i].1 - start[i].1, ait(BOUNTY_AIT), "juror {i}'s bounty");
    }

    // Under the minimum stake now, the sybils cannot judge until they stake again. Accused
    // of a report nobody can show, the node appeals; no jury is drawn in time and the case is
    // dismissed: nobody is slashed.
    let invented = Signed { report: B256::repeat_byte(0x42), ..framing.clone() };
    let sigs: Vec<Bytes> =
        sybils.iter().map(|&s| invented.sign(&court.nodes[s].key, &court.domain()).unwrap()).collect();
    refused(court.accuse(0, &invented, &sybil_addrs, &sigs).await, "NotStaked");
    for s in sybils {
        court.stake(s, JUDGE_PENALTY_AIT).await;
    }
    court.accuse(0, &invented, &sybil_addrs, &sigs).await.expect("an accusation the chain cannot check");
    let before = court.holdings(&everyone).await;
    court.appeal(honest, invented.report).await.expect("appeal");
    warp(&court.nodes[0].provider, JURY_WINDOW + 1).await;
    refused(sent(court.tribunal(0).draw(invented.report, accused).send().await).await, "TooLate");
    sent(court.tribunal(0).execute(invented.report, accused).send().await).await.expect("execute");
    assert_eq!(court.stage(&invented).await, (CLOSED, DISMISSED));
    assert_eq!(court.holdings(&everyone).await, before, "a dismissed case moved AIT (the bond is back)");

    // Drawn, but only two jurors vote and one abstains: dismissed once the window ends. The
    // two silent jurors lose their penalty; the others and the accused lose nothing.
    let unruled = Signed { report: B256::repeat_byte(0x43), ..framing.clone() };
    let sigs: Vec<Bytes> =
        sybils.iter().map(|&s| unruled.sign(&court.nodes[s].key, &court.domain()).unwrap()).collect();
    court.accuse(0, &unruled, &sybil_addrs, &sigs).await.expect("an accusation");
    let before = court.holdings(&everyone).await;
    court.appeal(honest, unruled.report).await.expect("appeal");
    mine_blocks(&court.nodes[0].provider, 2).await;
    sent(send_with_gas_margin(court.tribunal(0).draw(unruled.report, accused)).await).await.expect("draw");
    let jury = court.tribunal(0).partiesOf(unruled.report, accused).call().await.unwrap().jury;
    let index = |a: &Address| (0..12).find(|&i| court.address(i) == *a).unwrap();
    for a in &jury[..2] {
        sent(court.tribunal(index(a)).vote(unruled.report, accused, false).send().await).await.expect("vote");
    }
    let abstain = |i: usize| {
        let t = court.tribunal(i);
        async move { sent(t.abstain(unruled.report, accused).send().await).await }
    };
    refused(abstain(index(&jury[0])).await, "NotJuror");
    refused(abstain(sybils[0]).await, "NotJuror");
    abstain(index(&jury[2])).await.expect("abstain");
    refused(abstain(index(&jury[2])).await, "NotJuror");
    warp(&court.nodes[0].provider, JURY_WINDOW + 1).await;
    sent(court.tribunal(0).execute(unruled.report, accused).send().await).await.expect("execute");
    assert_eq!(court.stage(&unruled).await, (CLOSED, DISMISSED));
    let after = court.holdings(&everyone).await;
    for a in &jury[3..] {
        let i = index(a);
        assert_eq!(before[i].0 - after[i].0, ait(JUROR_PENALTY_AIT), "silent juror {i}'s penalty");
    }
    for i in jury[..3].iter().map(index).chain([honest]) {
        assert_eq!(after[i], before[i], "{i} lost nothing");
    }
    assert_eq!(after[12].1 - before[12].1, ait(2 * JUROR_PENALTY_AIT), "the DAO fund");
}

/// What an in-process node knows of its cases: the reports their parties show (each with the
/// fixture that serves its layers), and its own recomputation on that fixture's servers.
/// The cross-process fraud test fetches reports by id from real relays.
#[derive(Clone)]
struct Shown(Arc<Vec<(Arc<Fixture>, FraudReport)>>);

impl Evidence for Shown {
    fn report(&self, id: [u8; 32], holders: Vec<PeerId>) -> BoxFuture<'_, Option<FraudReport>> {
        let shown = self.0.iter().find(|(_, r)| r.id() == id).map(|(_, r)| r.clone());
        Box::pin(async move { shown.filter(|_| !holders.is_empty()) })
    }

    fn faulty<'a>(&'a self, report: &'a FraudReport) -> BoxFuture<'a, Result<bool, String>> {
        Box::pin(async move {
            let (fx, _) = self.0.iter().find(|(_, r)| r.id() == report.id()).ok_or("no fixture serves it")?;
            let judgment = fx.chain(quick_options()).recheck_report(report).await.map_err(|e| e.to_string())?;
            judgment.accused().ok_or_else(|| "the recomputation agreed with nobody".to_string())
        })
    }
}

/// Nodes' tribunal duties (`relay::settle::duty`), on anvil, with real reports and real
/// recomputation: a liar's duty appeals (every accused does: its own server is the one
/// accused), the judges' duties draw the jury, the jurors' duties recompute the report and
/// vote it faulty, and the liar loses its slash and its appeal bond. An honest node framed by two sybils
/// (who show nobody their report) appeals on its own and draws its jury, the jurors fetch
/// the report from it, clear it, and the sybils lose their penalty while the node keeps its
/// stake. Accused of a report nobody shows, it appeals, and its jurors clear it once the
/// first half of their window has passed without the evidence. Jurors shown a report they
/// cannot recompute abstain then; the case lapses and nobody loses stake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duties_appeal_draw_and_sit_on_juries_that_slash_a_liar_and_clear_a_framed_node() {
    // A duty logs the steps that fail (and tries them again after a backoff): show them.
    let _ = tracing_subscriber::fmt().with_env_filter("warn,relay::settle::duty=info").with_test_writer().try_init();
    let court = Court::start(13).await;
    let (liar, judges, jurors, honest, sybils) = (1, [2, 3], 4..10, 10, [11, 12]);
    let lying = Arc::new(Fixture::lying(7, &SERVERS, 1, FAULT_CLASSES[0]));
    let report = report_of(&lying).await;
    let framed = Arc::new(Fixture::new(7, &SERVERS));
    framed.set_fault(3, Fault::Lie, 0);
    framed.set_fault(4, Fault::Lie, 0);
    framed.set_fault(5, Fault::Freeze, 0);
    let framing_report = report_of(&framed).await;
    framed.clear_fault(5);
    let shown = Shown(Arc::new(vec![(lying.clone(), report.clone()), (framed.clone(), framing_report.clone())]));

    court.stake(liar, 2 * SLASH_AIT).await;
    court.bind(liar, &lying.peer(1)).await;
    court.stake(honest, 2 * SLASH_AIT).await;
    court.bind(honest, &framed.peer(1)).await;
    for (j, peer) in judges.into_iter().zip([lying.peer(0), lying.peer(2)]) {
        court.stake(j, MIN_STAKE_AIT).await;
        court.bind(j, &peer).await;
    }
    for s in sybils {
        court.stake(s, MIN_STAKE_AIT).await;
    }
    let duty = |i: usize| {
        let (d, provider, me, shown) =
            (court.d().clone(), court.nodes[i].provider.clone(), court.address(i), shown.clone());
        async move { Duty::new(&d, provider, me, shown).await.expect("a duty") }
    };
    let mut jury_duties = vec![];
    for i in jurors.clone() {
        court.stake(i, MIN_STAKE_AIT).await;
        let d = duty(i).await;
        d.enlist().await.expect("enlist");
        jury_duties.push((i, d));
    }
    let mut liar_duty = duty(liar).await;
    let mut judge_duties = [duty(judges[0]).await, duty(judges[1]).await];
    // The honest node keeps its cases on disk, as a relay does (`evidence.redb`).
    let cases_dir = ait_tests::procs::temp_dir("slashing-duty-cases");
    let kept = Arc::new(relay::evidence::EvidenceStore::open(&cases_dir.join("evidence.redb")).expect("a store"));
    let mut honest_duty = duty(honest).await.keeping_cases_in(kept.clone()).expect("the cases kept");

    // The liar's case: two judges recompute and accuse; its duty appeals, the judges' draw,
    // the jurors' vote.
    let everyone: Vec<Address> = (0..13).map(|i| court.address(i)).chain([court.d().tribunal]).collect();
    let accused = court.address(liar);
    let mut signed = vec![];
    for j in judges {
        signed.push(judge(&court, j, &lying, &report, accused).await);
    }
    let v = signed[0].0.clone();
    let judge_addrs = judges.map(|j| court.address(j));
    court.accuse(0, &v, &judge_addrs, &[signed[0].1.clone(), signed[1].1.clone()]).await.expect("accused");
    let start = court.holdings(&everyone).await;
    assert_eq!(liar_duty.tick().await.expect("the liar's duty").appealed, 1);
    assert_eq!(court.stage(&v).await, (APPEALED, 0));
    assert_eq!(liar_duty.tick().await.unwrap(), Acts::default(), "the seed block is not past yet");
    mine_blocks(&court.nodes[0].provider, 2).await;
    let drawn: usize =
        [judge_duties[0].tick().await.unwrap().drawn, judge_duties[1].tick().await.unwrap().drawn].iter().sum();
    assert_eq!(drawn, 1, "one judge draws the jury");
    assert_eq!(court.stage(&v).await, (DRAWN, 0));
    let mut voters = vec![];
    for (i, d) in &mut jury_duties {
        let acts = d.tick().await.expect("a juror's duty");
        assert_eq!(acts.voted.1, 0, "juror {i} cleared the liar");
        if acts.voted.0 == 1 {
            voters.push(*i);
        }
    }
    assert_eq!(voters.len(), 3, "three jurors vote, then the case is closed");
    assert_eq!(court.stage(&v).await, (CLOSED, SLASHED));
    let end = court.holdings(&everyone).await;
    assert_eq!(start[liar].0 - end[liar].0, ait(SLASH_AIT + APPEAL_BOND_AIT), "the liar's slash and bond");
    assert_eq!(start[liar].1, end[liar].1, "the bond comes from the stake");
    for i in judges.into_iter().chain(voters.iter().copied()) {
        assert_eq!(end[i].1 - start[i].1, ait(BOUNTY_AIT), "{i}'s bounty");
    }
    let fund = |h: &[(U256, U256)]| h[13].1;
    assert_eq!(fund(&end) + ait(5 * BOUNTY_AIT), fund(&start), "five bounties from the tribunal's fund");
    for (_, d) in &mut jury_duties {
        d.tick().await.expect("a juror's duty");
        assert!(d.cases().is_empty(), "a closed case is dropped");
    }

    // The framing: the sybils show nobody their report; the honest node appeals on its own.
    let accused = court.address(honest);
    let checked = framing_report.check().expect("the framing report holds");
    let judgment = web_node::trust::Judgment { accused_faulty: true, worst: checked.worst, lying_auditors: vec![] };
    let framing = Signed::of(&checked, &judgment, accused);
    let sigs: Vec<Bytes> =
        sybils.iter().map(|&s| framing.sign(&court.nodes[s].key, &court.domain()).unwrap()).collect();
    let start = court.holdings(&everyone).await;
    court.accuse(0, &framing, &sybils.map(|s| court.address(s)), &sigs).await.expect("the sybils' accusation");
    assert_eq!(honest_duty.tick().await.unwrap().appealed, 1, "the framed node appeals");
    mine_blocks(&court.nodes[0].provider, 2).await;
    assert_eq!(honest_duty.tick().await.unwrap().drawn, 1, "the framed node draws its jury");
    let mut cleared = vec![];
    for (i, d) in &mut jury_duties {
        let acts = d.tick().await.expect("a juror's duty");
        assert_eq!(acts.voted.0, 0, "juror {i} convicted the framed node");
        if acts.voted.1 == 1 {
            cleared.push(*i);
        }
    }
    assert_eq!(cleared.len(), 3);
    assert_eq!(court.stage(&framing).await, (CLOSED, OVERTURNED));
    let end = court.holdings(&everyone).await;
    assert_eq!(end[honest], start[honest], "the framed node keeps its stake and gets its bond back");
    for s in sybils {
        assert_eq!(start[s].0 - end[s].0, ait(JUDGE_PENALTY_AIT), "sybil {s}'s penalty");
    }
    assert_eq!(honest_duty.tick().await.unwrap(), Acts::default());
    assert!(honest_duty.cases().is_empty(), "a closed case is dropped");

    // Accused of a report nobody shows, the node appeals; its jurors wait for the evidence
    // through the first half of their window, then clear it.
    for s in sybils {
        court.stake(s, JUDGE_PENALTY_AIT).await;
    }
    let invented = Signed { report: B256::repeat_byte(0x42), ..framing.clone() };
    let sigs: Vec<Bytes> =
        sybils.iter().map(|&s| invented.sign(&court.nodes[s].key, &court.domain()).unwrap()).collect();
    court.accuse(0, &invented, &sybils.map(|s| court.address(s)), &sigs).await.expect("an unshown accusation");
    assert_eq!(honest_duty.tick().await.unwrap().appealed, 1, "appealed without seeing the report");
    // The next pass reads the appeal's event (its seed block is not past yet). Restarted
    // then, the node takes its open case and the next block to read up from disk (anvil's
    // chain is shorter than the lookback: without them it would read from block 0), and
    // draws the jury with the seed block it kept, not read again.
    assert_eq!(honest_duty.tick().await.unwrap(), Acts::default());
    let (open, next) = (honest_duty.cases().clone(), honest_duty.next_block());
    assert_eq!(open.len(), 1, "{open:?}");
    drop(honest_duty);
    honest_duty = duty(honest).await.keeping_cases_in(kept.clone()).expect("the cases kept");
    assert_eq!(honest_duty.cases(), &open, "the restarted duty's cases");
    assert!(next > 0 && honest_duty.next_block() == next, "read on from {}, not {next}", honest_duty.next_block());
    mine_blocks(&court.nodes[0].provider, 2).await;
    assert_eq!(honest_duty.tick().await.unwrap().drawn, 1, "drawn with the seed block kept");
    for (_, d) in &mut jury_duties {
        assert_eq!(d.tick().await.unwrap().voted, (0, 0), "a juror voted before the evidence was due");
    }
    warp(&court.nodes[0].provider, JURY_WINDOW / 2 + 1).await;
    let mut votes = (0, 0);
    for (_, d) in &mut jury_duties {
        let v = d.tick().await.unwrap().voted;
        votes = (votes.0 + v.0, votes.1 + v.1);
    }
    assert_eq!(votes, (0, 3), "no evidence shown: cleared");
    assert_eq!(court.stage(&invented).await, (CLOSED, OVERTURNED));

    // Jurors that are shown a report but cannot recompute it (here: no server of theirs
    // serves it) wait through the first half of their window, then abstain: the case is
    // dismissed and nobody loses stake.
    for s in sybils {
        court.stake(s, JUDGE_PENALTY_AIT).await;
    }
    let unheard = report_of(&framed).await;
    // What these jurors serve is another model, so the report cannot be recomputed there.
    let blind = Shown(Arc::new(vec![(Arc::new(Fixture::new(9, &SERVERS)), unheard.clone())]));
    let checked = unheard.check().expect("a framing report");
    let case = Signed::of(&checked, &judgment, accused);
    let sigs: Vec<Bytes> = sybils.iter().map(|&s| case.sign(&court.nodes[s].key, &court.domain()).unwrap()).collect();
    court.accuse(0, &case, &sybils.map(|s| court.address(s)), &sigs).await.expect("another framing");
    assert_eq!(honest_duty.tick().await.unwrap().appealed, 1);
    mine_blocks(&court.nodes[0].provider, 2).await;
    assert_eq!(honest_duty.tick().await.unwrap().drawn, 1);
    let mut blind_duties = vec![];
    for i in jurors.clone() {
        let (d, provider, me) = (court.d().clone(), court.nodes[i].provider.clone(), court.address(i));
        blind_duties.push(Duty::new(&d, provider, me, blind.clone()).await.expect("a duty"));
    }
    let before = court.holdings(&everyone).await;
    for d in &mut blind_duties {
        assert_eq!(d.tick().await.unwrap(), Acts::default(), "a juror gave up before its window's second half");
    }
    warp(&court.nodes[0].provider, JURY_WINDOW / 2 + 1).await;
    let mut abstained = 0;
    for d in &mut blind_duties {
        let acts = d.tick().await.unwrap();
        assert_eq!(acts.voted, (0, 0), "a juror voted without recomputing");
        abstained += acts.abstained;
    }
    assert_eq!(abstained, 5, "the drawn jurors abstain");
    warp(&court.nodes[0].provider, JURY_WINDOW / 2 + 1).await;
    assert_eq!(honest_duty.tick().await.unwrap().executed, 1, "the accused closes its lapsed case");
    assert_eq!(court.stage(&case).await, (CLOSED, DISMISSED));
    assert_eq!(court.holdings(&everyone).await, before, "abstaining jurors lose nothing");
    for d in &mut judge_duties {
        assert_eq!(d.tick().await.unwrap(), Acts::default(), "a closed case asks nothing of its judges");
        assert!(d.cases().is_empty(), "a closed case is dropped");
    }
    assert!(honest_duty.cases().is_empty());
    let restarted = duty(honest).await.keeping_cases_in(kept.clone()).expect("the cases kept");
    assert!(restarted.cases().is_empty(), "closed cases are dropped from disk too");
    drop((restarted, kept));
    let _ = std::fs::remove_dir_all(cases_dir);
}

/// An operator's `ait tribunal` commands, through the binary on `ait chain dev`: four staked
/// nodes enlist for juries; two staked judges accuse a third node (of a report the chain
/// cannot check); `case` shows it; the accused appeals once it stakes the bond besides the
/// slash; `draw` is refused while fewer than
/// five nodes can sit on its jury; once the jury window has passed, `execute` dismisses the
/// case and nobody's stake moved.
#[test]
fn the_tribunal_commands_enlist_show_appeal_draw_and_close_a_case() {
    let dir = ait_tests::procs::temp_dir("slashing-cli");
    let chain = Chain::start(&dir);
    let d = chain.dev.chain.deployment.clone();
    let data = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let staked = |name: &str, account: usize| {
        let (dir, address) = chain.wallet_dir(name, account);
        chain.ait(&["stake", &MIN_STAKE_AIT.to_string(), "--data-dir", &data(&dir)]);
        (dir, address)
    };
    let (j1, j2, (accused_dir, accused)) = (staked("j1", 1), staked("j2", 2), staked("accused", 3));
    let mut jurors = vec![];
    for i in 4..8 {
        let (juror, _) = staked(&format!("juror{i}"), i);
        assert!(chain.ait(&["tribunal", "enlist", "--data-dir", &data(&juror)]).contains("enlisted"));
        jurors.push(juror);
    }
    let peer = relay::p2p::load_or_create_key(&accused_dir).unwrap().public().to_peer_id();
    let report = [0x51; 32];
    let id = B256::from(report).to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dao = wallet_provider(&d.rpc, &chain.dev.chain.accounts[0].key).unwrap();
    let before = rt.block_on(async {
        let v = Signed::new(report, accused, &peer, true);
        let domain = tribunal_domain(d.chain_id, d.tribunal);
        let key = |i: usize| SessionKey::from_bytes(chain.dev.chain.accounts[i].key.as_slice()).unwrap();
        let sigs = vec![v.sign(&key(1), &domain).unwrap(), v.sign(&key(2), &domain).unwrap()];
        let tribunal = Tribunal::new(d.tribunal, dao.clone());
        let call = tribunal.accuse(v.report, accused, v.accusedPeer.clone(), vec![j1.1, j2.1], sigs);
        sent(call.send().await).await.expect("accuse");
        Staking::new(d.staking, dao.clone()).stakeOf(accused).call().await.unwrap().staked
    });

    let who = accused.to_string();
    let case = chain.ait(&["tribunal", "case", &id, &who, "--data-dir", &data(&j1.0)]);
    assert!(case.contains("stage    accused") && case.contains(&who), "{case}");
    let refused = chain.ait_fails(&["tribunal", "appeal", &id, "--data-dir", &data(&j1.0)]);
    assert!(refused.contains("WrongStage"), "{refused}");
    // Holding the slash but not the bond besides, the accused cannot appeal until it stakes more.
    let short = chain.ait_fails(&["tribunal", "appeal", &id, "--data-dir", &data(&accused_dir)]);
    assert!(short.contains("AccusedUnstaked"), "{short}");
    chain.ait(&["stake", &APPEAL_BOND_AIT.to_string(), "--data-dir", &data(&accused_dir)]);
    assert!(chain.ait(&["tribunal", "appeal", &id, "--data-dir", &data(&accused_dir)]).contains("appealed"));
    rt.block_on(mine_blocks(&dao, 1));
    let refused = chain.ait_fails(&["tribunal", "draw", &id, &who, "--data-dir", &data(&j1.0)]);
    assert!(refused.contains("PoolTooSmall"), "{refused}");
    rt.block_on(warp(&dao, 1200 + 1));
    let closed = chain.ait(&["tribunal", "execute", &id, &who, "--data-dir", &data(&j1.0)]);
    assert!(closed.contains("closed: dismissed"), "{closed}");
    let case = chain.ait(&["tribunal", "case", &id, &who, "--data-dir", &data(&j1.0)]);
    assert!(case.contains("stage    closed") && case.contains("outcome  dismissed"), "{case}");
    let after =
        rt.block_on(async { Staking::new(d.staking, dao.clone()).stakeOf(accused).call().await.unwrap().staked });
    let bond = U256::from(APPEAL_BOND_AIT) * U256::from(AIT);
    assert_eq!(after, before + bond, "a dismissed case moved stake");
    // A juror that resigns stays locked while a draw may still pick it, then is released.
    assert!(chain.ait(&["tribunal", "resign", "--data-dir", &data(&jurors[0])]).contains("resigned"));
    let refused = chain.ait_fails(&["unstake", "1", "--data-dir", &data(&jurors[0])]);
    assert!(refused.contains("Locked"), "{refused}");
    let refused = chain.ait_fails(&["tribunal", "release", "--data-dir", &data(&jurors[0])]);
    assert!(refused.contains("NotReleased"), "{refused}");
    rt.block_on(mine_blocks(&dao, 258));
    assert!(chain.ait(&["tribunal", "release", "--data-dir", &data(&jurors[0])]).contains("released"));
    chain.ait(&["unstake", "1", "--data-dir", &data(&jurors[0])]);
    drop(chain);
    let _ = std::fs::remove_dir_all(dir);
}
