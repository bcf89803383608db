//! The settlement contracts (`contracts/`, issue 15) on a real `anvil` started by each test,
//! driven from Rust through the committed artifacts: a payer deposits with a permit,
//! allocates, authorizes a session key; vouchers signed by web-node's code pay once and in
//! full; every forgery, replay, expiry and overdraft the issue lists is refused and pays
//! nothing; thaws, revocations, slashing and registry changes obey their rules; and the
//! 70/20/10 split is exact to the unit over random amounts.

use std::sync::atomic::Ordering::Relaxed;

use ait_tests::evm::{refused, sent, warp};
use alloy::primitives::{Address, Bytes, B256, U256};
use alloy::providers::{DynProvider, Provider};
use rand::{Rng, SeedableRng};
use relay::settle::bindings::{Escrow, ModelRegistry, Staking, AIT};
use relay::settle::dev::{self, DevChain, DevOpt, RunningDevChain};
use relay::settle::{Deployment, RedeemError, VoucherError};
use web_node::settle::{
    escrow_domain, permit_vrs, registry_domain, token_domain, AuthorizeSigner, Permit, Register, SessionKey, Voucher,
};

const AIT: u128 = 1_000_000_000_000_000_000;
const THAW: u64 = 3600;
const UNBONDING: u64 = 7200;

fn ait(n: u64) -> U256 {
    U256::from(n) * U256::from(AIT)
}

/// A chain with the contracts, and who is who on it.
struct World {
    chain: DevChain,
    /// Anvil, when this test process started it (None: the test runs the chain itself).
    anvil: Option<RunningDevChain>,
    /// Deployer, DAO and arbiter.
    dao: Actor,
    payer: Actor,
    nodes: [Actor; 3],
    creator: Actor,
    stranger: Actor,
}

fn dev_opts() -> DevOpt {
    DevOpt {
        out: "unused.json".into(),
        host: "127.0.0.1".into(),
        port: 0,
        accounts: 8,
        ait_each: 10_000,
        thaw_seconds: THAW,
        unbonding_seconds: UNBONDING,
        appeal_seconds: 1800,
        jury_seconds: 1200,
    }
}

/// A dev account: its key and a provider that signs with it.
struct Actor {
    key: SessionKey,
    provider: DynProvider,
}

impl Actor {
    fn address(&self) -> Address {
        self.key.address()
    }
    fn escrow(&self, w: &World) -> Escrow::EscrowInstance<DynProvider> {
        Escrow::new(w.d().escrow, self.provider.clone())
    }
    fn token(&self, w: &World) -> AIT::AITInstance<DynProvider> {
        AIT::new(w.d().token, self.provider.clone())
    }
    fn registry(&self, w: &World) -> ModelRegistry::ModelRegistryInstance<DynProvider> {
        ModelRegistry::new(w.d().registry, self.provider.clone())
    }
    fn staking(&self, w: &World) -> Staking::StakingInstance<DynProvider> {
        Staking::new(w.d().staking, self.provider.clone())
    }
}

impl World {
    /// A chain started in this process.
    async fn start() -> World {
        let running = dev::start(&dev_opts()).await.expect("a dev chain");
        World::on(running.chain.clone(), Some(running))
    }

    fn on(chain: DevChain, anvil: Option<RunningDevChain>) -> World {
        let actor = |i: usize| {
            let a = &chain.accounts[i];
            Actor {
                key: SessionKey::from_bytes(a.key.as_slice()).unwrap(),
                provider: dev::wallet_provider(&chain.deployment.rpc, &a.key).unwrap(),
            }
        };
        World {
            dao: actor(0),
            payer: actor(1),
            nodes: [actor(2), actor(3), actor(4)],
            creator: actor(5),
            stranger: actor(6),
            anvil,
            chain,
        }
    }

    fn d(&self) -> &Deployment {
        &self.chain.deployment
    }

    async fn now_block(&self) -> u64 {
        relay::settle::latest_block(&self.dao.provider).await.unwrap().0
    }

    async fn now(&self) -> u64 {
        relay::settle::latest_block(&self.dao.provider).await.unwrap().1
    }

    /// Moves the chain's clock forward and mines a block.
    async fn warp(&self, seconds: u64) {
        warp(&self.dao.provider, seconds).await
    }

    async fn earned(&self, who: Address) -> U256 {
        self.dao.escrow(self).earned(who).call().await.unwrap()
    }

    async fn balance(&self, who: Address) -> U256 {
        self.dao.token(self).balanceOf(who).call().await.unwrap()
    }

    /// `payer` deposits `amount` through an EIP-2612 permit that `submitter` sends.
    async fn deposit_with_permit(&self, payer: &Actor, submitter: &Actor, amount: U256) {
        let deadline = U256::from(self.now().await + 600);
        let nonce = payer.token(self).nonces(payer.address()).call().await.unwrap();
        let permit = Permit { owner: payer.address(), spender: self.d().escrow, value: amount, nonce, deadline };
        let sig = payer.key.sign(&permit, &token_domain(self.d().chain_id, self.d().token)).unwrap();
        let (v, r, s) = permit_vrs(&sig);
        sent(submitter.escrow(self).depositWithPermit(payer.address(), amount, deadline, v, r, s).send().await)
            .await
            .expect("deposit with permit");
    }

    fn voucher(&self, session: B256, node: Address, model: B256, amount: U256, expiry: u64) -> Voucher {
        Voucher {
            session,
            payer: self.payer.address(),
            node,
            model,
            cumulativeAmount: amount,
            cumulativeWork: amount / U256::from(1000u64),
            // Stands for the chain of the node's receipts for that work.
            receipts: alloy::primitives::keccak256(amount.to_be_bytes::<32>()),
            expiry,
        }
    }

    fn sign(&self, key: &SessionKey, v: &Voucher) -> Bytes {
        let domain = escrow_domain(self.d().chain_id, self.d().escrow);
        Bytes::from(key.sign(v, &domain).unwrap().as_bytes().to_vec())
    }

    /// Submits a redeem from `submitter`; the revert's name on failure.
    async fn redeem(&self, submitter: &Actor, v: &Voucher, sig: &Bytes) -> Result<(), String> {
        sent(submitter.escrow(self).redeem(v.into(), sig.clone()).send().await).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vouchers_pay_once_in_full_and_forgeries_replays_and_overdrafts_pay_nothing() {
    let w = World::start().await;
    let model = B256::repeat_byte(0x4d);
    let [a, b, c] = &w.nodes;

    // The creator registers the model: 20% of every payment goes to its payout address.
    sent(w.creator.registry(&w).register(model, w.creator.address()).send().await).await.unwrap();

    // The payer deposits with a permit a relay submits (no approve, no gas for the payer),
    // and allocates to the node.
    w.deposit_with_permit(&w.payer, a, ait(1000)).await;
    assert_eq!(w.balance(w.d().escrow).await, ait(1000));
    sent(w.payer.escrow(&w).allocate(a.address(), ait(100)).send().await).await.unwrap();

    // The payer's wallet authorizes a session key with a signature the node submits.
    let session_key = SessionKey::random();
    let deadline = U256::from(w.now().await + 600);
    let nonce = w.dao.escrow(&w).nonces(w.payer.address()).call().await.unwrap();
    let auth = AuthorizeSigner { payer: w.payer.address(), signer: session_key.address(), nonce, deadline };
    let auth_sig = w.payer.key.sign(&auth, &escrow_domain(w.d().chain_id, w.d().escrow)).unwrap();
    let auth_bytes = Bytes::from(auth_sig.as_bytes().to_vec());
    sent(
        a.escrow(&w)
            .authorizeSignerBySig(w.payer.address(), session_key.address(), deadline, auth_bytes.clone())
            .send()
            .await,
    )
    .await
    .unwrap();
    // Applied again, it changes nothing (the key already signs).
    sent(
        a.escrow(&w).authorizeSignerBySig(w.payer.address(), session_key.address(), deadline, auth_bytes).send().await,
    )
    .await
    .unwrap();

    let session = B256::repeat_byte(0x51);
    let expiry = w.now().await + 3 * THAW;
    // The digest the chain checks is the one web-node signs.
    let v1 = w.voucher(session, a.address(), model, ait(10), expiry);
    let on_chain = w.dao.escrow(&w).voucherDigest((&v1).into()).call().await.unwrap();
    assert_eq!(
        on_chain,
        alloy::sol_types::SolStruct::eip712_signing_hash(&v1, &escrow_domain(w.d().chain_id, w.d().escrow))
    );

    // A voucher pays, split 70/20/10, to the node it names, whoever submits it.
    let s1 = w.sign(&session_key, &v1);
    w.redeem(&w.stranger, &v1, &s1).await.unwrap();
    assert_eq!(w.earned(a.address()).await, ait(7));
    assert_eq!(w.earned(w.creator.address()).await, ait(2));
    assert_eq!(w.earned(w.d().treasury).await, ait(1));
    assert_eq!(w.earned(w.stranger.address()).await, U256::ZERO);
    // The escrow records the receipts the voucher paid for.
    let to = w.now_block().await;
    let events = relay::settle::redeemed_events(&w.dao.provider, w.d().escrow, Some(a.address()), 0, to).await.unwrap();
    let [paid] = &events[..] else { panic!("one redeem: {events:?}") };
    assert_eq!((paid.event.session, paid.event.receipts, paid.event.amount), (session, v1.receipts, ait(10)));

    // Replayed, or an older (lower) voucher: nothing more to collect.
    refused(w.redeem(a, &v1, &s1).await, "NothingToCollect");
    let v_low = w.voucher(session, a.address(), model, ait(5), expiry);
    refused(w.redeem(a, &v_low, &w.sign(&session_key, &v_low)).await, "NothingToCollect");

    // A newer voucher pays only what it adds.
    let v2 = w.voucher(session, a.address(), model, ait(30), expiry);
    w.redeem(a, &v2, &w.sign(&session_key, &v2)).await.unwrap();
    assert_eq!(w.earned(a.address()).await, ait(21));
    assert_eq!(w.dao.escrow(&w).collected(w.payer.address(), session, a.address()).call().await.unwrap(), ait(30));

    // A voucher signed for node A, presented for node B or another session: the signature
    // no longer matches a signer of the payer.
    let v3 = w.voucher(session, a.address(), model, ait(40), expiry);
    let s3 = w.sign(&session_key, &v3);
    let mut for_b = v3.clone();
    for_b.node = b.address();
    refused(w.redeem(b, &for_b, &s3).await, "UnauthorizedSigner");
    let mut other_session = v3.clone();
    other_session.session = B256::repeat_byte(0x52);
    refused(w.redeem(a, &other_session, &s3).await, "UnauthorizedSigner");
    // A key the payer never authorized.
    refused(w.redeem(a, &v3, &w.sign(&w.stranger.key, &v3)).await, "UnauthorizedSigner");
    // Expired.
    let old = w.voucher(session, a.address(), model, ait(40), w.now().await - 1);
    refused(w.redeem(a, &old, &w.sign(&session_key, &old)).await, "Expired");

    // More than the node's allocation holds: reverts and pays nothing.
    let before = (w.earned(a.address()).await, w.earned(w.d().treasury).await);
    let allocation_before = w.dao.escrow(&w).allocation(w.payer.address(), a.address()).call().await.unwrap();
    let greedy = w.voucher(session, a.address(), model, ait(500), expiry);
    refused(w.redeem(a, &greedy, &w.sign(&session_key, &greedy)).await, "InsufficientAllocation");
    assert_eq!((w.earned(a.address()).await, w.earned(w.d().treasury).await), before);
    let allocation_after = w.dao.escrow(&w).allocation(w.payer.address(), a.address()).call().await.unwrap();
    assert_eq!(allocation_after.balance, allocation_before.balance);
    assert_eq!(allocation_after.balance, ait(70));
    // A node with no allocation from this payer cannot be paid by its vouchers either.
    let to_c = w.voucher(session, c.address(), model, ait(1), expiry);
    refused(w.redeem(c, &to_c, &w.sign(&session_key, &to_c)).await, "InsufficientAllocation");

    // Three nodes redeem in one batch; every balance equals what the vouchers say.
    for n in [b, c] {
        sent(w.payer.escrow(&w).allocate(n.address(), ait(50)).send().await).await.unwrap();
    }
    let batch: Vec<Voucher> = [(a, 33u64), (b, 11), (c, 50)]
        .iter()
        .map(|(n, amount)| w.voucher(session, n.address(), model, ait(*amount), expiry))
        .collect();
    let sigs: Vec<Bytes> = batch.iter().map(|v| w.sign(&session_key, v)).collect();
    let earned_before = [w.earned(a.address()).await, w.earned(b.address()).await, w.earned(c.address()).await];
    sent(a.escrow(&w).redeemBatch(batch.iter().map(Into::into).collect(), sigs.clone()).send().await).await.unwrap();
    // 3, 11 and 50 AIT more: 70% of each.
    let gained = [
        w.earned(a.address()).await - earned_before[0],
        w.earned(b.address()).await - earned_before[1],
        w.earned(c.address()).await - earned_before[2],
    ];
    assert_eq!(gained, [ait(3) * U256::from(7) / U256::from(10), ait(77) / U256::from(10), ait(35)]);
    // A batch with one bad voucher pays none of them.
    let mut bad = batch.clone();
    bad[0].cumulativeAmount = ait(34);
    bad[1].cumulativeAmount = ait(12);
    let mut bad_sigs: Vec<Bytes> = bad.iter().map(|v| w.sign(&session_key, v)).collect();
    bad_sigs[1] = w.sign(&w.stranger.key, &bad[1]);
    refused(
        sent(a.escrow(&w).redeemBatch(bad.iter().map(Into::into).collect(), bad_sigs).send().await).await,
        "UnauthorizedSigner",
    );
    assert_eq!(w.dao.escrow(&w).collected(w.payer.address(), session, a.address()).call().await.unwrap(), ait(33));

    // Revoking the session key: what it signed stays redeemable for one thaw period, then not.
    sent(w.payer.escrow(&w).revokeSigner(session_key.address()).send().await).await.unwrap();
    let v4 = w.voucher(session, a.address(), model, ait(34), expiry);
    w.redeem(a, &v4, &w.sign(&session_key, &v4)).await.unwrap();
    w.warp(THAW + 1).await;
    let v5 = w.voucher(session, a.address(), model, ait(35), expiry);
    refused(w.redeem(a, &v5, &w.sign(&session_key, &v5)).await, "UnauthorizedSigner");
    // The payer's own key still signs.
    w.redeem(a, &v5, &w.sign(&w.payer.key, &v5)).await.unwrap();

    // Withdrawals wait for the thaw: the free balance, and an allocation.
    let free = w.dao.escrow(&w).freeBalance(w.payer.address()).call().await.unwrap().balance;
    sent(w.payer.escrow(&w).thaw(Address::ZERO, free).send().await).await.unwrap();
    refused(sent(w.payer.escrow(&w).withdraw(Address::ZERO).send().await).await, "NotThawed");
    // Thawing money cannot be allocated either.
    refused(sent(w.payer.escrow(&w).allocate(a.address(), ait(1)).send().await).await, "BadAmount");
    sent(w.payer.escrow(&w).thaw(a.address(), ait(10)).send().await).await.unwrap();
    refused(sent(w.payer.escrow(&w).withdraw(a.address()).send().await).await, "NotThawed");
    w.warp(THAW + 1).await;
    let wallet_before = w.balance(w.payer.address()).await;
    sent(w.payer.escrow(&w).withdraw(Address::ZERO).send().await).await.unwrap();
    sent(w.payer.escrow(&w).withdraw(a.address()).send().await).await.unwrap();
    assert_eq!(w.balance(w.payer.address()).await - wallet_before, free + ait(10));

    // A node spends what it earned as a deposit, and withdraws the rest; the DAO's share
    // reaches the treasury.
    let earned = w.earned(a.address()).await;
    sent(a.escrow(&w).depositEarned(ait(10)).send().await).await.unwrap();
    assert_eq!(w.dao.escrow(&w).freeBalance(a.address()).call().await.unwrap().balance, ait(10));
    sent(a.escrow(&w).withdrawEarned(earned - ait(10)).send().await).await.unwrap();
    assert_eq!(w.earned(a.address()).await, U256::ZERO);
    refused(sent(a.escrow(&w).withdrawEarned(U256::from(1)).send().await).await, "BadAmount");
    let dao_share = w.earned(w.d().treasury).await;
    let treasury = relay::settle::bindings::Treasury::new(w.d().treasury, w.stranger.provider.clone());
    sent(treasury.collect(w.d().escrow).send().await).await.unwrap();
    assert_eq!(w.balance(w.d().treasury).await, dao_share);

    // Every AIT that entered the escrow is accounted for: what is left equals the payer's
    // balances and allocations plus what is earned and not withdrawn.
    let mut held = w.dao.escrow(&w).freeBalance(w.payer.address()).call().await.unwrap().balance
        + w.dao.escrow(&w).freeBalance(a.address()).call().await.unwrap().balance;
    for n in [a, b, c] {
        held += w.dao.escrow(&w).allocation(w.payer.address(), n.address()).call().await.unwrap().balance;
        held += w.earned(n.address()).await;
    }
    held += w.earned(w.creator.address()).await + w.earned(w.d().treasury).await;
    assert_eq!(w.balance(w.d().escrow).await, held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_arbiter_slashes_and_only_the_creator_or_the_dao_changes_a_registration() {
    let w = World::start().await;
    let node = &w.nodes[0];

    // A node binds its peer id and stakes with a permit.
    sent(node.staking(&w).bind(Bytes::from(vec![0x00, 0x24, 0x08, 0x01])).send().await).await.unwrap();
    assert_eq!(w.dao.staking(&w).peerIdOf(node.address()).call().await.unwrap().to_vec(), vec![0, 0x24, 8, 1]);
    refused(sent(node.staking(&w).bind(Bytes::new()).send().await).await, "BadPeerId");
    let deadline = U256::from(w.now().await + 600);
    let nonce = node.token(&w).nonces(node.address()).call().await.unwrap();
    let permit = Permit { owner: node.address(), spender: w.d().staking, value: ait(500), nonce, deadline };
    let sig = node.key.sign(&permit, &token_domain(w.d().chain_id, w.d().token)).unwrap();
    let (v, r, s) = permit_vrs(&sig);
    sent(w.stranger.staking(&w).stakeWithPermit(node.address(), ait(500), deadline, v, r, s).send().await)
        .await
        .unwrap();
    assert_eq!(w.dao.staking(&w).stakeOf(node.address()).call().await.unwrap().staked, ait(500));

    // Nobody but the arbiter slashes or locks, the node itself included.
    for who in [&w.stranger, node, &w.creator] {
        refused(
            sent(who.staking(&w).slash(node.address(), ait(100), B256::ZERO).send().await).await,
            "AccessControlUnauthorizedAccount",
        );
        refused(sent(who.staking(&w).lock(node.address()).send().await).await, "AccessControlUnauthorizedAccount");
    }
    // A staked node keeps the peer id it bound (binding it again is fine).
    refused(sent(node.staking(&w).bind(Bytes::from(vec![0x00, 0x24, 0x08, 0x02])).send().await).await, "BindingFixed");
    sent(node.staking(&w).bind(Bytes::from(vec![0x00, 0x24, 0x08, 0x01])).send().await).await.unwrap();
    // The arbiter's lock holds unbonding until it is lifted.
    sent(w.dao.staking(&w).lock(node.address()).send().await).await.unwrap();
    refused(sent(node.staking(&w).unbond(ait(1)).send().await).await, "Locked");
    // Nobody lifts a lock it did not put there.
    refused(sent(w.stranger.staking(&w).unlock(node.address()).send().await).await, "Locked");
    sent(w.dao.staking(&w).unlock(node.address()).send().await).await.unwrap();
    refused(sent(w.dao.staking(&w).unlock(node.address()).send().await).await, "Locked");
    // Unbonding does not escape a slash, and waits its period.
    sent(node.staking(&w).unbond(ait(200)).send().await).await.unwrap();
    refused(sent(node.staking(&w).withdraw().send().await).await, "StillBonded");
    let evidence = B256::repeat_byte(0xee);
    sent(w.dao.staking(&w).slash(node.address(), ait(400), evidence).send().await).await.unwrap();
    let st = w.dao.staking(&w).stakeOf(node.address()).call().await.unwrap();
    assert_eq!((st.staked, st.unbonding), (U256::ZERO, ait(100)));
    assert_eq!(w.balance(w.d().treasury).await, ait(400));
    w.warp(UNBONDING + 1).await;
    let before = w.balance(node.address()).await;
    sent(node.staking(&w).withdraw().send().await).await.unwrap();
    assert_eq!(w.balance(node.address()).await - before, ait(100));

    // The registry: a registration through a signature a relay submits.
    let model = B256::repeat_byte(0x77);
    let deadline = U256::from(w.now().await + 600);
    let nonce = w.dao.registry(&w).nonces(w.creator.address()).call().await.unwrap();
    let reg = Register { model, creator: w.creator.address(), payout: w.creator.address(), nonce, deadline };
    let sig = w.creator.key.sign(&reg, &registry_domain(w.d().chain_id, w.d().registry)).unwrap();
    let sig = Bytes::from(sig.as_bytes().to_vec());
    // Signed by someone else for the creator: refused.
    let forged = w.stranger.key.sign(&reg, &registry_domain(w.d().chain_id, w.d().registry)).unwrap();
    refused(
        sent(
            w.stranger
                .registry(&w)
                .registerBySig(
                    model,
                    w.creator.address(),
                    w.creator.address(),
                    deadline,
                    Bytes::from(forged.as_bytes().to_vec()),
                )
                .send()
                .await,
        )
        .await,
        "BadSignature",
    );
    sent(
        w.stranger
            .registry(&w)
            .registerBySig(model, w.creator.address(), w.creator.address(), deadline, sig)
            .send()
            .await,
    )
    .await
    .unwrap();
    // Nobody else registers it again, changes its payout or takes it over.
    refused(
        sent(w.stranger.registry(&w).register(model, w.stranger.address()).send().await).await,
        "AlreadyRegistered",
    );
    refused(sent(w.stranger.registry(&w).setPayout(model, w.stranger.address()).send().await).await, "NotCreator");
    refused(
        sent(w.stranger.registry(&w).transferCreator(model, w.stranger.address()).send().await).await,
        "NotCreator",
    );
    refused(
        sent(w.stranger.registry(&w).reassign(model, w.stranger.address(), w.stranger.address()).send().await).await,
        "OwnableUnauthorizedAccount",
    );
    refused(sent(w.stranger.registry(&w).setRoyalty(model, 1500).send().await).await, "OwnableUnauthorizedAccount");
    // The creator moves its payout; the DAO reassigns a squatted model and bounds royalties.
    let payout = w.nodes[2].address();
    sent(w.creator.registry(&w).setPayout(model, payout).send().await).await.unwrap();
    assert_eq!(w.dao.registry(&w).royaltyOf(model).call().await.unwrap().payout, payout);
    let squatted = B256::repeat_byte(0x78);
    sent(w.stranger.registry(&w).register(squatted, w.stranger.address()).send().await).await.unwrap();
    sent(w.dao.registry(&w).reassign(squatted, w.creator.address(), w.creator.address()).send().await).await.unwrap();
    let r = w.dao.registry(&w).registration(squatted).call().await.unwrap();
    assert_eq!((r.creator, r.payout), (w.creator.address(), w.creator.address()));
    refused(sent(w.dao.registry(&w).setRoyalty(model, 999).send().await).await, "RoyaltyOutOfBounds");
    refused(sent(w.dao.registry(&w).setRoyalty(model, 2501).send().await).await, "RoyaltyOutOfBounds");
    sent(w.dao.registry(&w).setRoyalty(model, 2500).send().await).await.unwrap();
    assert_eq!(w.dao.registry(&w).royaltyOf(model).call().await.unwrap().bps, 2500);
}

async fn escrow_royalty(w: &World, model: B256) -> u16 {
    w.dao.registry(w).royaltyOf(model).call().await.unwrap().bps
}

/// node = floor(70%), creator = floor(royalty), DAO = the rest: they sum to the amount and the
/// DAO gets less than 2 units above its exact share. Checked against the escrow's own split
/// for random amounts and royalties, and on real redeems.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_split_is_exact_to_the_unit() {
    let w = World::start().await;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(15);
    let registered = B256::repeat_byte(1);
    let unregistered = B256::repeat_byte(2);
    sent(w.creator.registry(&w).register(registered, w.creator.address()).send().await).await.unwrap();
    let escrow = w.dao.escrow(&w);
    let mut checked = 0;
    // The default royalty first (20%), then ones the DAO sets, the bounds included.
    for bps in [2000u16, 1000, 1234, 2500] {
        if bps != 2000 {
            sent(w.dao.registry(&w).setRoyalty(registered, bps).send().await).await.unwrap();
        }
        assert_eq!(escrow_royalty(&w, registered).await, bps);
        let mut amounts: Vec<U256> = [0u64, 1, 2, 3, 9, 10, 11, 99, 10_001].iter().map(|&a| U256::from(a)).collect();
        amounts.extend([U256::from(AIT) - U256::from(1), U256::from(AIT) + U256::from(1), U256::from(u128::MAX)]);
        amounts.extend((0..40).map(|_| U256::from(rng.random::<u64>())));
        amounts.extend((0..20).map(|_| U256::from(rng.random::<u128>())));
        amounts.extend((0..10).map(|_| U256::from(rng.random_range(0..100_000u64))));
        for amount in amounts {
            for (model, royalty) in [(registered, bps), (unregistered, 0)] {
                let s = escrow.split(model, amount).call().await.unwrap();
                let node = amount * U256::from(7000) / U256::from(10_000);
                let creator = amount * U256::from(royalty) / U256::from(10_000);
                assert_eq!((s.nodeShare, s.creatorShare), (node, creator), "amount {amount}, royalty {royalty}");
                assert_eq!(s.nodeShare + s.creatorShare + s.daoShare, amount);
                // DAO's exact share, times 10,000: amount x (10,000 - 7,000 - royalty).
                let exact = amount * U256::from(10_000 - 7000 - royalty as u64);
                let dao = s.daoShare * U256::from(10_000);
                assert!(dao >= exact && dao - exact < U256::from(20_000), "amount {amount}: DAO {}", s.daoShare);
                checked += 1;
            }
        }
    }
    assert!(checked > 600);

    // Real redeems credit exactly those shares, for random increments of one session.
    sent(w.dao.registry(&w).setRoyalty(registered, 2000).send().await).await.unwrap();
    let node = &w.nodes[0];
    w.deposit_with_permit(&w.payer, &w.payer, ait(100)).await;
    sent(w.payer.escrow(&w).allocate(node.address(), ait(100)).send().await).await.unwrap();
    let expiry = w.now().await + THAW;
    let mut cumulative = U256::ZERO;
    for round in 0..12 {
        let model = if round % 3 == 2 { unregistered } else { registered };
        let delta = U256::from(rng.random_range(1..5 * AIT));
        cumulative += delta;
        let v = w.voucher(B256::repeat_byte(9), node.address(), model, cumulative, expiry);
        let before =
            [w.earned(node.address()).await, w.earned(w.creator.address()).await, w.earned(w.d().treasury).await];
        w.redeem(node, &v, &w.sign(&w.payer.key, &v)).await.unwrap();
        let after =
            [w.earned(node.address()).await, w.earned(w.creator.address()).await, w.earned(w.d().treasury).await];
        let node_share = delta * U256::from(7000) / U256::from(10_000);
        let creator_share =
            if model == registered { delta * U256::from(2000) / U256::from(10_000) } else { U256::ZERO };
        assert_eq!(after[0] - before[0], node_share);
        assert_eq!(after[1] - before[1], creator_share);
        assert_eq!(after[2] - before[2], delta - node_share - creator_share);
    }
}

/// `ait chain dev` as a user runs it: a payer deposits, allocates to three nodes and pays
/// for their work with a session key's cumulative vouchers, two sessions each; every node
/// redeems only the newest voucher of each session, in one batch; every balance on chain
/// equals what the vouchers say, to the unit. Ctrl-C stops the chain and removes its file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ait_chain_dev_settles_three_nodes_to_the_unit() {
    let dir = ait_tests::procs::temp_dir("chain-dev");
    let mut process = ait_tests::procs::ChainDev::start(&dir);
    let file = process.file.clone();
    let chain = process.chain.clone();
    assert_eq!(chain.accounts.len(), 8);
    let w = World::on(chain, None);
    // Every dev account but the deployer got its AIT.
    for n in &w.nodes {
        assert_eq!(w.balance(n.address()).await, ait(10_000));
    }

    let model = B256::repeat_byte(0x4d);
    sent(w.creator.registry(&w).register(model, w.creator.address()).send().await).await.unwrap();
    w.deposit_with_permit(&w.payer, &w.payer, ait(600)).await;
    let key = SessionKey::random();
    sent(w.payer.escrow(&w).authorizeSigner(key.address()).send().await).await.unwrap();
    for n in &w.nodes {
        sent(w.payer.escrow(&w).allocate(n.address(), ait(200)).send().await).await.unwrap();
    }

    // Work: each step of a session adds layer-tokens at 1 gwei-AIT each (30 layers a token).
    let expiry = w.now().await + THAW;
    let price = U256::from(1_000_000_000u64);
    let mut owed = [U256::ZERO; 3];
    let mut batches: Vec<(Vec<Voucher>, Vec<Bytes>)> = vec![Default::default(); 3];
    for (i, n) in w.nodes.iter().enumerate() {
        for s in 0..2u8 {
            let session = B256::repeat_byte(0x10 + s);
            let mut newest = None;
            let (mut work, mut amount) = (U256::ZERO, U256::ZERO);
            for step in 0..(20 + 7 * i as u64 + s as u64) {
                let layer_tokens = U256::from(30 * (1 + step % 5));
                work += layer_tokens;
                amount += layer_tokens * price;
                let v = Voucher {
                    session,
                    payer: w.payer.address(),
                    node: n.address(),
                    model,
                    cumulativeAmount: amount,
                    cumulativeWork: work,
                    receipts: B256::from(U256::from(step)),
                    expiry,
                };
                let sig = w.sign(&key, &v);
                newest = Some((v, sig));
            }
            let (v, sig) = newest.unwrap();
            owed[i] += v.cumulativeAmount;
            batches[i].0.push(v);
            batches[i].1.push(sig);
        }
    }
    let supply_before = w.balance(w.d().escrow).await;
    for (n, (vouchers, sigs)) in w.nodes.iter().zip(&batches) {
        sent(n.escrow(&w).redeemBatch(vouchers.iter().map(Into::into).collect(), sigs.clone()).send().await)
            .await
            .unwrap();
    }
    let (mut creator, mut dao) = (U256::ZERO, U256::ZERO);
    for (i, n) in w.nodes.iter().enumerate() {
        let node_share = batches[i]
            .0
            .iter()
            .map(|v| v.cumulativeAmount * U256::from(7000) / U256::from(10_000))
            .fold(U256::ZERO, |a, b| a + b);
        let creator_share = batches[i]
            .0
            .iter()
            .map(|v| v.cumulativeAmount * U256::from(2000) / U256::from(10_000))
            .fold(U256::ZERO, |a, b| a + b);
        assert_eq!(w.earned(n.address()).await, node_share);
        creator += creator_share;
        dao += owed[i] - node_share - creator_share;
        let allocation = w.dao.escrow(&w).allocation(w.payer.address(), n.address()).call().await.unwrap();
        assert_eq!(allocation.balance, ait(200) - owed[i]);
        for v in &batches[i].0 {
            assert_eq!(
                w.dao.escrow(&w).collected(w.payer.address(), v.session, n.address()).call().await.unwrap(),
                v.cumulativeAmount
            );
        }
    }
    assert_eq!(w.earned(w.creator.address()).await, creator);
    assert_eq!(w.earned(w.d().treasury).await, dao);
    // Redeeming moves no AIT out of the escrow: it only credits shares.
    assert_eq!(w.balance(w.d().escrow).await, supply_before);
    assert_eq!(w.balance(w.d().escrow).await, ait(600));

    // Ctrl-C stops the chain and removes the file that described it.
    drop(w);
    assert!(process.interrupt().success());
    assert!(!file.exists(), "ait chain dev left {} behind", file.display());
}

/// A node's redeemer: it counts only vouchers that check out (right node, a signer of the
/// payer, newer, not about to expire, backed by the allocation), keeps the newest per session,
/// redeems them in a batch, sends again a redeem a reorg dropped, lets a voucher go only when
/// it is collected 3 blocks deep, keeps one the chain refuses with the reason, and loses
/// nothing when the chain's RPC is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_keeps_each_newest_voucher_until_its_redeem_is_final_through_a_reorg_and_a_dead_rpc() {
    let mut w = World::start().await;
    let node = &w.nodes[0];
    let model = B256::repeat_byte(0x4d);
    w.deposit_with_permit(&w.payer, &w.payer, ait(100)).await;
    sent(w.payer.escrow(&w).allocate(node.address(), ait(50)).send().await).await.unwrap();
    let key = SessionKey::random();
    sent(w.payer.escrow(&w).authorizeSigner(key.address()).send().await).await.unwrap();
    let mut r = relay::settle::redeemer(
        w.d(),
        node.provider.clone(),
        node.address(),
        std::sync::Arc::new(relay::settle::Ledger::in_memory().unwrap()),
    )
    .with_confirmations(3);
    let expiry = w.now().await + 3 * THAW;
    let (s1, s2) = (B256::repeat_byte(1), B256::repeat_byte(2));

    // Each newer voucher adds what it adds to the one held.
    let mut previous = U256::ZERO;
    for amount in [1u64, 2, 5] {
        let v = w.voucher(s1, node.address(), model, ait(amount), expiry);
        assert_eq!(r.accept(v.clone(), &w.sign(&key, &v)).await.unwrap(), ait(amount) - previous);
        previous = ait(amount);
    }
    // A signature with v as 0 or 1 (as some signers write it) is kept as 27 or 28, the only
    // form the chain's ecrecover takes: the batch below redeems it.
    let v = w.voucher(s2, node.address(), model, ait(3), expiry);
    let mut sig = w.sign(&key, &v).to_vec();
    sig[64] -= 27;
    r.accept(v.clone(), &sig).await.unwrap();
    assert_eq!((r.held(), r.held_amount(), r.outstanding()), (2, ait(8), ait(8)));

    // Refused, and what is held stays as it was.
    let replay = w.voucher(s1, node.address(), model, ait(5), expiry);
    let older = w.voucher(s1, node.address(), model, ait(2), expiry);
    let elsewhere = w.voucher(s1, w.nodes[1].address(), model, ait(6), expiry);
    let newer = w.voucher(s1, node.address(), model, ait(6), expiry);
    let soon = w.voucher(s1, node.address(), model, ait(6), w.now().await + 60);
    let unbacked = w.voucher(s1, node.address(), model, ait(60), expiry);
    // The allocation (50) backs every session of the payer: 43 in a third session would fit
    // alone, not with the 8 the other two still owe.
    let crowded = w.voucher(B256::repeat_byte(5), node.address(), model, ait(43), expiry);
    let check = |e: VoucherError, what: &str| assert!(format!("{e:?}").starts_with(what), "expected {what}, got {e:?}");
    check(r.accept(replay.clone(), &w.sign(&key, &replay)).await.unwrap_err(), "Stale");
    check(r.accept(older.clone(), &w.sign(&key, &older)).await.unwrap_err(), "Stale");
    check(r.accept(elsewhere.clone(), &w.sign(&key, &elsewhere)).await.unwrap_err(), "WrongNode");
    check(r.accept(newer.clone(), &w.sign(&w.stranger.key, &newer)).await.unwrap_err(), "UnauthorizedSigner");
    check(r.accept(newer.clone(), &w.sign(&key, &newer)[..64]).await.unwrap_err(), "Signature");
    check(r.accept(newer.clone(), &[0xff; 65]).await.unwrap_err(), "Signature");
    check(r.accept(soon.clone(), &w.sign(&key, &soon)).await.unwrap_err(), "Expired");
    check(r.accept(unbacked.clone(), &w.sign(&key, &unbacked)).await.unwrap_err(), "Unbacked");
    check(r.accept(crowded.clone(), &w.sign(&key, &crowded)).await.unwrap_err(), "Unbacked");
    assert_eq!((r.held(), r.held_amount()), (2, ait(8)));

    // A batch redeem; not final until 3 blocks deep, so a round before that sends nothing and
    // lets nothing go.
    let snapshot: serde_json::Value = w.dao.provider.raw_request("evm_snapshot".into(), ()).await.unwrap();
    let report = r.redeem_due().await.unwrap();
    assert_eq!((report.sent, report.finalized), (2, 0));
    let share = ait(8) * U256::from(7) / U256::from(10);
    assert_eq!(w.earned(node.address()).await, share);
    let report = r.redeem_due().await.unwrap();
    assert_eq!((report.sent, report.finalized, r.held()), (0, 0, 2));

    // A reorg drops the block with the redeem: the next round sends it again.
    let reverted: bool = w.dao.provider.raw_request("evm_revert".into(), (snapshot,)).await.unwrap();
    assert!(reverted);
    assert_eq!(w.earned(node.address()).await, U256::ZERO);
    // The re-sent batch has the dropped one's hash (same nonce and calldata), and anvil may
    // answer its receipt with null before it mines the batch (alloy's watcher saw that hash in
    // the dropped block): then the round ends as an RPC error, the batch is mined moments
    // later, and the next round reads the chain instead of sending again.
    match r.redeem_due().await {
        Ok(report) => assert_eq!((report.sent, report.finalized), (2, 0)),
        Err(e) => assert!(matches!(e, RedeemError::Send { .. } | RedeemError::Read(_)), "{e:?}"),
    }
    for _ in 0..100 {
        if w.earned(node.address()).await == share {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(w.earned(node.address()).await, share);
    let report = r.redeem_due().await.unwrap();
    assert_eq!((report.sent, report.finalized), (0, 0));
    for _ in 0..3 {
        let _: serde_json::Value = w.dao.provider.raw_request("evm_mine".into(), ()).await.unwrap();
    }
    let report = r.redeem_due().await.unwrap();
    assert_eq!((report.sent, report.finalized, report.finalized_amount), (0, 2, ait(8)));
    assert_eq!(r.held(), 0);
    // Paid once.
    assert_eq!(w.earned(node.address()).await, share);

    // The payer revokes the session key after the node accepted one of its vouchers: once the
    // revocation takes effect the chain refuses that voucher; the batch is retried one by one,
    // the good voucher is paid, and the refused one stays held with its reason.
    let (s3, s4) = (B256::repeat_byte(3), B256::repeat_byte(4));
    let doomed = w.voucher(s3, node.address(), model, ait(1), expiry);
    r.accept(doomed.clone(), &w.sign(&key, &doomed)).await.unwrap();
    let good = w.voucher(s4, node.address(), model, ait(2), expiry);
    r.accept(good.clone(), &w.sign(&w.payer.key, &good)).await.unwrap();
    sent(w.payer.escrow(&w).revokeSigner(key.address()).send().await).await.unwrap();
    w.warp(THAW + 1).await;
    let report = r.redeem_due().await.unwrap();
    assert_eq!(report.sent, 2);
    assert_eq!(report.refused.len(), 1, "{report:?}");
    assert!(report.refused[0].contains("UnauthorizedSigner"), "{report:?}");
    assert!(r.refusal(w.payer.address(), s3).unwrap().contains("UnauthorizedSigner"));
    assert_eq!(w.earned(node.address()).await, share + ait(2) * U256::from(7) / U256::from(10));
    assert_eq!(r.held(), 2);

    // The chain's RPC goes away: a round is an error, and nothing held is lost.
    let chain = w.anvil.take().unwrap();
    chain.anvil.stop().await;
    let err = r.redeem_due().await.unwrap_err();
    assert!(matches!(err, RedeemError::Read(_)), "{err:?}");
    assert_eq!(r.held(), 2);
    let v = w.voucher(s4, node.address(), model, ait(3), expiry);
    check(r.accept(v.clone(), &w.sign(&w.payer.key, &v)).await.unwrap_err(), "Chain");
    assert_eq!(r.held(), 2);
}

/// What the review of the contracts found, each closed: signed allocations add only what is
/// new and need a key that is not being revoked; a spare allowance cannot be deposited by
/// anyone but its owner; a revocation voids an authorization not yet applied, and a revoked
/// key cannot be authorized again by signature; a batch skips a voucher someone else already
/// redeemed; what thaws no longer counts as backing, and a redeem trims it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_allocations_permits_and_revocations_cannot_be_abused() {
    use web_node::settle::Allocation;
    let w = World::start().await;
    let node = &w.nodes[0];
    let model = B256::repeat_byte(0x4d);
    let escrow = w.dao.escrow(&w);
    w.deposit_with_permit(&w.payer, &w.payer, ait(100)).await;
    let key = SessionKey::random();
    sent(w.payer.escrow(&w).authorizeSigner(key.address()).send().await).await.unwrap();
    let domain = escrow_domain(w.d().chain_id, w.d().escrow);
    let deadline = w.now().await + 600;
    let allocation = |cumulative: u64, by: &SessionKey, deadline: u64| {
        let a = Allocation {
            payer: w.payer.address(),
            node: node.address(),
            cumulativeAllocated: ait(cumulative),
            deadline,
        };
        let sig = Bytes::from(by.sign(&a, &domain).unwrap().as_bytes().to_vec());
        (a, sig)
    };
    let balance = || async { escrow.allocation(w.payer.address(), node.address()).call().await.unwrap().balance };

    // A signed allocation adds what its cumulative amount adds; a replay adds nothing; one by
    // transaction counts toward the total.
    let (a, sig) = allocation(30, &key, deadline);
    sent(node.escrow(&w).allocateBySig((&a).into(), sig.clone()).send().await).await.unwrap();
    assert_eq!(balance().await, ait(30));
    sent(node.escrow(&w).allocateBySig((&a).into(), sig).send().await).await.unwrap();
    assert_eq!(balance().await, ait(30));
    sent(w.payer.escrow(&w).allocate(node.address(), ait(10)).send().await).await.unwrap();
    assert_eq!(escrow.allocatedTotal(w.payer.address(), node.address()).call().await.unwrap(), ait(40));
    let (a, sig) = allocation(35, &key, deadline);
    sent(node.escrow(&w).allocateBySig((&a).into(), sig).send().await).await.unwrap();
    assert_eq!(balance().await, ait(40));
    let (a, sig) = allocation(50, &key, deadline);
    sent(node.escrow(&w).allocateBySig((&a).into(), sig).send().await).await.unwrap();
    assert_eq!(balance().await, ait(50));
    // Another key, an expired one, or more than the free balance: refused.
    let (a, sig) = allocation(60, &w.stranger.key, deadline);
    refused(sent(node.escrow(&w).allocateBySig((&a).into(), sig).send().await).await, "UnauthorizedSigner");
    let (a, sig) = allocation(60, &key, w.now().await - 1);
    refused(sent(node.escrow(&w).allocateBySig((&a).into(), sig).send().await).await, "Expired");
    let (a, sig) = allocation(151, &key, deadline);
    refused(sent(node.escrow(&w).allocateBySig((&a).into(), sig).send().await).await, "BadAmount");

    // A key being revoked keeps its vouchers redeemable, but allocates nothing more.
    let v = w.voucher(B256::repeat_byte(1), node.address(), model, ait(5), w.now().await + 3 * THAW);
    let v_sig = w.sign(&key, &v);
    sent(w.payer.escrow(&w).revokeSigner(key.address()).send().await).await.unwrap();
    let (a, sig) = allocation(60, &key, deadline);
    refused(sent(node.escrow(&w).allocateBySig((&a).into(), sig).send().await).await, "UnauthorizedSigner");
    w.redeem(node, &v, &v_sig).await.unwrap();
    // ... and it cannot be authorized again by signature (only by the payer's transaction).
    let auth = |signer: Address, nonce: U256| {
        let a = AuthorizeSigner { payer: w.payer.address(), signer, nonce, deadline: U256::from(deadline) };
        Bytes::from(w.payer.key.sign(&a, &domain).unwrap().as_bytes().to_vec())
    };
    let nonce = escrow.nonces(w.payer.address()).call().await.unwrap();
    refused(
        sent(
            node.escrow(&w)
                .authorizeSignerBySig(
                    w.payer.address(),
                    key.address(),
                    U256::from(deadline),
                    auth(key.address(), nonce),
                )
                .send()
                .await,
        )
        .await,
        "SignerRevoked",
    );
    // An authorization the payer signed and then revoked before anyone applied it is void.
    let other = SessionKey::random();
    let pending = auth(other.address(), nonce);
    sent(w.payer.escrow(&w).revokeSigner(other.address()).send().await).await.unwrap();
    refused(
        sent(
            node.escrow(&w)
                .authorizeSignerBySig(w.payer.address(), other.address(), U256::from(deadline), pending)
                .send()
                .await,
        )
        .await,
        "SignerRevoked",
    );
    // Applying an authorization of a key that already signs is a no-op, so a node's
    // authorize-then-redeem does not fail when someone applied it first.
    let third = SessionKey::random();
    let nonce = escrow.nonces(w.payer.address()).call().await.unwrap();
    let sig = auth(third.address(), nonce);
    for _ in 0..2 {
        sent(
            node.escrow(&w)
                .authorizeSignerBySig(w.payer.address(), third.address(), U256::from(deadline), sig.clone())
                .send()
                .await,
        )
        .await
        .unwrap();
    }
    assert!(escrow.isSigner(w.payer.address(), third.address()).call().await.unwrap());
    // Signed by someone else than the payer, or past its deadline: refused.
    let fourth = SessionKey::random();
    let nonce = escrow.nonces(w.payer.address()).call().await.unwrap();
    let forged =
        AuthorizeSigner { payer: w.payer.address(), signer: fourth.address(), nonce, deadline: U256::from(deadline) };
    let forged = Bytes::from(w.stranger.key.sign(&forged, &domain).unwrap().as_bytes().to_vec());
    refused(
        sent(
            node.escrow(&w)
                .authorizeSignerBySig(w.payer.address(), fourth.address(), U256::from(deadline), forged)
                .send()
                .await,
        )
        .await,
        "BadSignature",
    );
    let past = w.now().await - 1;
    let late =
        AuthorizeSigner { payer: w.payer.address(), signer: fourth.address(), nonce, deadline: U256::from(past) };
    let late = Bytes::from(w.payer.key.sign(&late, &domain).unwrap().as_bytes().to_vec());
    refused(
        sent(
            node.escrow(&w)
                .authorizeSignerBySig(w.payer.address(), fourth.address(), U256::from(past), late)
                .send()
                .await,
        )
        .await,
        "BadSignature",
    );
    assert!(!escrow.isSigner(w.payer.address(), fourth.address()).call().await.unwrap());

    // A spare allowance: only its owner may deposit it without a valid permit.
    sent(w.payer.token(&w).approve(w.d().escrow, ait(20)).send().await).await.unwrap();
    let junk = (27u8, B256::repeat_byte(1), B256::repeat_byte(2));
    refused(
        sent(
            w.stranger
                .escrow(&w)
                .depositWithPermit(w.payer.address(), ait(20), U256::MAX, junk.0, junk.1, junk.2)
                .send()
                .await,
        )
        .await,
        "BadSignature",
    );
    sent(
        w.payer
            .escrow(&w)
            .depositWithPermit(w.payer.address(), ait(20), U256::MAX, junk.0, junk.1, junk.2)
            .send()
            .await,
    )
    .await
    .unwrap();

    // A batch skips a voucher someone else redeemed first, and pays the rest.
    let v1 = w.voucher(B256::repeat_byte(2), node.address(), model, ait(3), w.now().await + 3 * THAW);
    let v2 = w.voucher(B256::repeat_byte(3), node.address(), model, ait(4), w.now().await + 3 * THAW);
    let (s1, s2) = (w.sign(&third, &v1), w.sign(&third, &v2));
    w.redeem(&w.stranger, &v1, &s1).await.unwrap();
    let before = w.earned(node.address()).await;
    sent(node.escrow(&w).redeemBatch(vec![(&v1).into(), (&v2).into()], vec![s1, s2]).send().await).await.unwrap();
    assert_eq!(w.earned(node.address()).await - before, ait(4) * U256::from(7) / U256::from(10));

    // What thaws is not available to back new work; a redeem trims the thaw to what is left.
    let left = balance().await;
    assert_eq!(left, ait(50) - ait(5) - ait(3) - ait(4));
    sent(w.payer.escrow(&w).thaw(node.address(), left).send().await).await.unwrap();
    assert_eq!(escrow.available(w.payer.address(), node.address()).call().await.unwrap(), U256::ZERO);
    let v3 = w.voucher(B256::repeat_byte(3), node.address(), model, ait(6), w.now().await + 3 * THAW);
    w.redeem(node, &v3, &w.sign(&third, &v3)).await.unwrap();
    let acc = escrow.allocation(w.payer.address(), node.address()).call().await.unwrap();
    assert_eq!((acc.balance, acc.thawing), (left - ait(2), left - ait(2)));

    // Spending more than was earned: refused.
    let earned = w.earned(node.address()).await;
    refused(sent(node.escrow(&w).depositEarned(earned + U256::from(1)).send().await).await, "BadAmount");
}

/// An RPC behind a load balancer whose backends lag: `eth_call` at "latest" is answered at
/// an older block (`stale`), the latest block is block `head` while that is not 0, and the
/// first `unseen` calls at a named block are refused as a backend that has not seen it yet
/// would; everything else goes to the chain.
#[derive(Debug)]
struct LaggingRpc {
    inner: relay::settle::ProviderHost,
    stale: u64,
    head: std::sync::atomic::AtomicU64,
    unseen: std::sync::atomic::AtomicU32,
}

impl web_node::settle::GateHost for LaggingRpc {
    fn rpc<'a>(
        &'a self,
        method: &'a str,
        mut params: serde_json::Value,
    ) -> web_node::settle::GateFuture<'a, Result<serde_json::Value, String>> {
        let head = self.head.load(Relaxed);
        if method == "eth_call" && params[1] == "latest" {
            params[1] = format!("0x{:x}", self.stale).into();
        } else if method == "eth_getBlockByNumber" && params[0] == "latest" && head != 0 {
            params[0] = format!("0x{head:x}").into();
        } else if method == "eth_call" {
            let unseen = self.unseen.fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1));
            if unseen.is_ok() {
                return Box::pin(async { Err("header not found".to_string()) });
            }
        }
        web_node::settle::GateHost::rpc(&self.inner, method, params)
    }

    fn send<'a>(
        &'a self,
        to: Address,
        data: Bytes,
    ) -> web_node::settle::GateFuture<'a, Result<u64, web_node::settle::SendError>> {
        web_node::settle::GateHost::send(&self.inner, to, data)
    }

    fn blocking(&self, job: Box<dyn FnOnce() + Send>) {
        web_node::settle::GateHost::blocking(&self.inner, job)
    }
}

/// A node's gate reads each check at one block: behind an RPC whose "latest" lags, a key the
/// payer started revoking one block ago still looks fully authorized, and a gate that read
/// the key at "latest" but the chain's clock at the newest block would open a session whose
/// vouchers may not redeem. Read at the newest block, it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_reads_one_block_behind_a_load_balanced_rpc() {
    use web_node::settle::{ChainGate, ChainReads, GateChain, HopBill, Payer, PaymentError, PaymentGate};
    let w = World::start().await;
    let node = &w.nodes[0];
    w.deposit_with_permit(&w.payer, &w.payer, ait(100)).await;
    sent(w.payer.escrow(&w).allocate(node.address(), ait(50)).send().await).await.unwrap();
    let key = SessionKey::random();
    sent(w.payer.escrow(&w).authorizeSigner(key.address()).send().await).await.unwrap();
    let (authorized_at, _) = relay::settle::latest_block(&w.dao.provider).await.unwrap();
    sent(w.payer.escrow(&w).revokeSigner(key.address()).send().await).await.unwrap();

    let rpc = std::sync::Arc::new(LaggingRpc {
        inner: relay::settle::ProviderHost::new(node.provider.clone()),
        stale: authorized_at,
        head: 0.into(),
        unseen: 0.into(),
    });
    // The lag is real: at "latest", this RPC says the key signs with no revocation.
    let reads = ChainReads::new(rpc.clone(), w.d().escrow, w.d().staking);
    assert_eq!(reads.signer_until(w.payer.address(), key.address()).await.unwrap(), u64::MAX);

    let dir = ait_tests::procs::temp_dir("gate-one-block");
    let ledger = std::sync::Arc::new(relay::settle::Ledger::open(&dir.join("ledger.redb")).unwrap());
    let chain = GateChain { chain_id: w.d().chain_id, escrow: w.d().escrow, staking: w.d().staking };
    let gate = ChainGate::new(chain, rpc.clone(), node.address(), U256::from(1000u64), ait(1), ledger);
    let payer = Payer {
        payer: w.payer.address(),
        key: key.clone(),
        authorization: None,
        chain_id: w.d().chain_id,
        escrow: w.d().escrow,
        max_price: None,
    };
    let now = web_node::settle::unix_s();
    let bill = HopBill::new(&payer, gate.terms().clone(), B256::repeat_byte(0x4d), 30, now).unwrap();
    // A backend that has not seen the newest block yet refuses the first read there: the
    // gate asks again.
    rpc.unseen.store(1, Relaxed);
    match gate.open(bill.payment()).await {
        Err(PaymentError::Refused(m)) if m.contains("being revoked") => {}
        other => panic!("expected a refusal of the key being revoked, got {other:?}"),
    }
    assert_eq!(rpc.unseen.load(Relaxed), 0, "the pinned read was refused once");
    // The payer's own key, read at the same newest block, opens a session.
    let own = Payer { key: w.payer.key.clone(), ..payer };
    let bill = HopBill::new(&own, gate.terms().clone(), B256::repeat_byte(0x4d), 30, now).unwrap();
    assert_eq!(gate.open(bill.payment()).await.unwrap(), ait(1));
    let _ = std::fs::remove_dir_all(dir);
}

/// A node's redeemer behind an RPC whose "latest" falls back to a block before the node's
/// own redeem: it reads the chain at the block its redeem was mined in (or later), so it
/// neither sends that redeem again (a batch skips a voucher already collected: gas for
/// nothing) nor records less collected than it knows was (which would count the voucher as
/// promised again, against a backing the redeem already lowered). Its ledger keeps that
/// block: started again on the same ledger file, behind the same RPC, it still does neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redeemer_reads_no_block_before_its_own_redeem() {
    use web_node::settle::{GateChain, Redeemer};
    let w = World::start().await;
    let node = &w.nodes[0];
    w.deposit_with_permit(&w.payer, &w.payer, ait(100)).await;
    sent(w.payer.escrow(&w).allocate(node.address(), ait(50)).send().await).await.unwrap();
    let before = w.now_block().await;
    let rpc = std::sync::Arc::new(LaggingRpc {
        inner: relay::settle::ProviderHost::new(node.provider.clone()),
        stale: before,
        head: 0.into(),
        unseen: 0.into(),
    });
    let chain = GateChain { chain_id: w.d().chain_id, escrow: w.d().escrow, staking: w.d().staking };
    let dir = ait_tests::procs::temp_dir("redeem-floor");
    let ledger_file = dir.join("ledger.redb");
    let ledger = std::sync::Arc::new(relay::settle::Ledger::open(&ledger_file).unwrap());
    let mut r = Redeemer::new(chain, 3, rpc.clone(), node.address(), ledger.clone());
    let v = w.voucher(B256::repeat_byte(1), node.address(), B256::repeat_byte(0x4d), ait(5), w.now().await + 3 * THAW);
    r.accept(v.clone(), &w.sign(&w.payer.key, &v)).await.unwrap();
    let report = r.redeem_due().await.unwrap();
    assert_eq!(report.sent, 1, "{report:?}");
    let share = ait(5) * U256::from(7) / U256::from(10);
    assert_eq!(w.earned(node.address()).await, share);
    assert!(w.now_block().await > before);

    // The RPC's "latest" lags behind the redeem now: the round still reads the voucher as
    // collected, sends nothing, and the ledger keeps what was collected.
    rpc.head.store(before, Relaxed);
    let report = r.redeem_due().await.unwrap();
    assert_eq!((report.sent, report.finalized, report.refused.len()), (0, 0, 0), "{report:?}");
    assert_eq!((r.held(), r.outstanding()), (1, U256::ZERO));
    assert_eq!(ledger.entries().unwrap()[0].collected, ait(5));
    assert_eq!(w.earned(node.address()).await, share);

    // Started again: a new redeemer (and backing) on the ledger file, the RPC still behind.
    drop((r, ledger));
    let ledger = std::sync::Arc::new(relay::settle::Ledger::open(&ledger_file).unwrap());
    let mut r = Redeemer::new(chain, 3, rpc.clone(), node.address(), ledger.clone());
    let report = r.redeem_due().await.unwrap();
    assert_eq!((report.sent, report.finalized, report.refused.len()), (0, 0, 0), "after a restart: {report:?}");
    assert_eq!((r.held(), r.outstanding()), (1, U256::ZERO));
    assert_eq!(ledger.entries().unwrap()[0].collected, ait(5));
    assert_eq!(w.earned(node.address()).await, share);
    drop((r, ledger));
    let _ = std::fs::remove_dir_all(dir);
}

/// The `ait` settlement commands against `ait chain dev`, as an operator and a payer run
/// them: wallets kept encrypted (the key never in the file or the output), a deposit with a
/// permit, an allocation, stake bound to the node's peer id, a model registration, vouchers
/// redeemed from a file, earnings withdrawn; early withdrawals and unstakes are refused with
/// the contract's reason.
#[test]
fn the_ait_settlement_commands_move_what_they_say() {
    let dir = ait_tests::procs::temp_dir("chain-cli");
    let chain = ait_tests::procs::ChainDev::start(&dir.join("chain"));
    let file = chain.file.to_str().unwrap().to_string();
    let ait_cmd = |args: &[&str]| {
        let out = ait_tests::procs::ait()
            .args(args)
            .args(["--chain", &file])
            .env("AIT_WALLET_PASSWORD", "correct horse")
            .output()
            .expect("ait");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    };
    let ok = |args: &[&str]| {
        let (ok, text) = ait_cmd(args);
        assert!(ok, "ait {args:?} failed: {text}");
        text
    };
    let payer_store = dir.join("payer.json");
    let payer_store = payer_store.to_str().unwrap();
    let node_dir = dir.join("node");
    let node_dir = node_dir.to_str().unwrap();
    let payer = chain.chain.accounts[1].clone();
    let node = chain.chain.accounts[2].clone();

    // Wallets: the dev keys, encrypted; the key appears in neither the file nor the output.
    let out = ok(&["wallet", "new", "--dev-account", "1", "--keystore", payer_store]);
    assert_eq!(out.trim(), payer.address.to_string());
    let secret = hex::encode(payer.key);
    assert!(!std::fs::read_to_string(payer_store).unwrap().contains(&secret), "the keystore holds the key in clear");
    assert!(!out.contains(&secret));
    let (created, text) = ait_cmd(&["wallet", "new", "--keystore", payer_store]);
    assert!(!created && text.contains("never overwritten"), "{text}");
    // The node's data directory holds its libp2p identity, as a relay's does.
    std::fs::create_dir_all(node_dir).unwrap();
    relay::p2p::load_or_create_key(std::path::Path::new(node_dir)).unwrap();
    let out = ok(&["wallet", "new", "--dev-account", "2", "--data-dir", node_dir]);
    assert_eq!(out.trim(), node.address.to_string());
    assert_eq!(ok(&["wallet", "show", "--data-dir", node_dir]).trim(), node.address.to_string());
    let wrong = ait_tests::procs::ait()
        .args(["wallet", "show", "--data-dir", node_dir])
        .env("AIT_WALLET_PASSWORD", "wrong")
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("wrong password"), "{wrong:?}");

    // The payer deposits and allocates to the node.
    assert!(ok(&["deposit", "12.5", "--keystore", payer_store]).contains("deposited 12.5 AIT"));
    ok(&["allocate", &node.address.to_string(), "10", "--keystore", payer_store]);
    let balance = ok(&["wallet", "balance", "--keystore", payer_store]);
    assert!(balance.contains("deposited 2.5 (thawing 0)"), "{balance}");
    assert!(balance.contains("ait       9987.5"), "{balance}");

    // The node stakes, bound to its peer id, and cannot leave before unbonding.
    ok(&["stake", "100", "--data-dir", node_dir]);
    ok(&["unstake", "40", "--data-dir", node_dir]);
    let (done, text) = ait_cmd(&["unstake", "--finish", "--data-dir", node_dir]);
    assert!(!done && text.contains("StillBonded"), "{text}");
    let balance = ok(&["wallet", "balance", "--data-dir", node_dir]);
    assert!(balance.contains("staked    60 (unbonding 40)"), "{balance}");
    let peer = relay::p2p::load_or_create_key(std::path::Path::new(node_dir)).unwrap().public().to_peer_id();

    // The node registers a model; a payer's vouchers for it are redeemed from a file.
    let model = B256::repeat_byte(0x6d);
    ok(&["model", "register", &model.to_string(), "--payout", &node.address.to_string(), "--data-dir", node_dir]);
    let d = chain.chain.deployment.clone();
    let key = SessionKey::from_bytes(payer.key.as_slice()).unwrap();
    let domain = escrow_domain(d.chain_id, d.escrow);
    let lines: Vec<String> = [(1u8, 3u64), (2, 4)]
        .iter()
        .map(|&(session, amount)| {
            let v = Voucher {
                session: B256::repeat_byte(session),
                payer: payer.address,
                node: node.address,
                model,
                cumulativeAmount: ait(amount),
                cumulativeWork: U256::from(amount * 30),
                receipts: B256::repeat_byte(session),
                expiry: u64::MAX / 2,
            };
            let sig = format!("0x{}", hex::encode(key.sign(&v, &domain).unwrap().as_bytes()));
            serde_json::json!({ "voucher": v, "signature": sig }).to_string()
        })
        .collect();
    let vouchers = dir.join("vouchers.jsonl");
    std::fs::write(&vouchers, lines.join("\n")).unwrap();
    // The dev chain's file says 0 confirmations (anvil mines only per transaction).
    let out = ok(&["redeem", "--vouchers", vouchers.to_str().unwrap(), "--data-dir", node_dir]);
    assert!(out.contains("redeemed 7 AIT, final"), "{out}");
    // Again: nothing left to collect, so both are refused before any transaction.
    let out = ok(&["redeem", "--vouchers", vouchers.to_str().unwrap(), "--data-dir", node_dir]);
    assert!(out.contains("0 vouchers to redeem (0 AIT not yet collected), 2 refused"), "{out}");
    // Negative and zero amounts are refused before anything is sent.
    let (done, text) = ait_cmd(&["deposit", "-5", "--keystore", payer_store]);
    assert!(!done && text.contains("more than 0"), "{text}");
    // Staking needs the node's identity: a data directory without one is refused.
    let empty = dir.join("no-node");
    let (done, text) = ait_cmd(&["stake", "1", "--data-dir", empty.to_str().unwrap(), "--keystore", payer_store]);
    assert!(!done && text.contains("no node identity"), "{text}");

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let p = dev::wallet_provider(&d.rpc, &chain.chain.accounts[0].key).unwrap();
        let staking = Staking::new(d.staking, p.clone());
        assert_eq!(staking.peerIdOf(node.address).call().await.unwrap().to_vec(), peer.to_bytes());
        // The node is the model's creator too: 70% + 20% of 7 AIT.
        let escrow = Escrow::new(d.escrow, p.clone());
        assert_eq!(escrow.earned(node.address).call().await.unwrap(), ait(63) / U256::from(10));
        assert_eq!(escrow.allocation(payer.address, node.address).call().await.unwrap().balance, ait(3));
    });
    ok(&["withdraw", "--earned", "6.3", "--data-dir", node_dir]);
    assert!(ok(&["wallet", "balance", "--data-dir", node_dir]).contains("earned    0\n"));
    ok(&["withdraw", "2", "--keystore", payer_store]);
    let (done, text) = ait_cmd(&["withdraw", "--finish", "--keystore", payer_store]);
    assert!(!done && text.contains("NotThawed"), "{text}");

    // `ait chain deploy` puts a second set of contracts on the same chain from a wallet.
    let deployed = dir.join("deployed.json");
    let out = ait_tests::procs::ait()
        .args(["chain", "deploy", "--rpc", &d.rpc, "--supply", "5000", "--keystore", payer_store, "--out"])
        .arg(&deployed)
        .env("AIT_WALLET_PASSWORD", "correct horse")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let second = Deployment::load(&deployed).unwrap();
    assert_ne!(second.escrow, d.escrow);
    rt.block_on(async {
        let p = dev::wallet_provider(&d.rpc, &chain.chain.accounts[0].key).unwrap();
        let token = AIT::new(second.token, p);
        assert_eq!(token.balanceOf(payer.address).call().await.unwrap(), ait(5000));
    });
    drop(chain);
    if std::env::var_os("AIT_KEEP_TEST_DIRS").is_none() {
        let _ = std::fs::remove_dir_all(dir);
    }
}
