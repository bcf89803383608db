//! The settlement contracts (`contracts/`, issue 15) on a real `anvil` started by each test,
//! driven from Rust through the committed artifacts: a payer deposits with a permit,
//! allocates, authorizes a session key; vouchers signed by web-node's code pay once and in
//! full; every forgery, replay, expiry and overdraft the issue lists is refused and pays
//! nothing; thaws, revocations, slashing and registry changes obey their rules; and the
//! 70/20/10 split is exact to the unit over random amounts.

use alloy::primitives::{Address, Bytes, B256, U256};
use alloy::providers::{DynProvider, Provider};
use rand::{Rng, SeedableRng};
use relay::settle::bindings::{Escrow, ModelRegistry, Staking, AIT};
use relay::settle::dev::{self, DevChain, DevOpt, RunningDevChain};
use relay::settle::{ChainError, Deployment};
use web_node::settle::{
    escrow_domain, registry_domain, token_domain, AuthorizeSigner, Permit, Register, SessionKey, Voucher,
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
    _anvil: Option<RunningDevChain>,
    /// Deployer, DAO and arbiter.
    dao: Actor,
    payer: Actor,
    nodes: [Actor; 3],
    creator: Actor,
    stranger: Actor,
}

/// A running `ait chain dev`, stopped with Ctrl-C (SIGINT) on drop.
struct ChainProcess {
    child: std::process::Child,
}

impl ChainProcess {
    fn interrupt(&mut self) -> std::process::ExitStatus {
        let _ = std::process::Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "ait chain dev did not stop on SIGINT");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for ChainProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.interrupt();
        }
    }
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
            _anvil: anvil,
            chain,
        }
    }

    fn d(&self) -> &Deployment {
        &self.chain.deployment
    }

    async fn now(&self) -> u64 {
        let block = self.dao.provider.get_block_by_number(Default::default()).await.unwrap().unwrap();
        block.header.timestamp
    }

    /// Moves the chain's clock forward and mines a block.
    async fn warp(&self, seconds: u64) {
        let p = &self.dao.provider;
        let _: serde_json::Value = p.raw_request("evm_increaseTime".into(), (seconds,)).await.unwrap();
        let _: serde_json::Value = p.raw_request("evm_mine".into(), ()).await.unwrap();
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
        let (v, r, s) = vrs(&sig);
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

fn vrs(sig: &alloy::primitives::Signature) -> (u8, B256, B256) {
    (27 + sig.v() as u8, B256::from(sig.r()), B256::from(sig.s()))
}

/// Waits for a sent transaction; a refusal comes back as the contract error's text.
async fn sent(
    r: Result<alloy::providers::PendingTransactionBuilder<alloy::network::Ethereum>, alloy::contract::Error>,
) -> Result<(), String> {
    let pending = r.map_err(|e| ChainError::contract("call", &e).to_string())?;
    let receipt = pending.get_receipt().await.map_err(|e| e.to_string())?;
    if receipt.status() {
        Ok(())
    } else {
        Err("reverted".into())
    }
}

#[track_caller]
fn refused(r: Result<(), String>, error: &str) {
    match r {
        Ok(()) => panic!("expected {error}, but it went through"),
        Err(e) => assert!(e.contains(error), "expected {error}, got {e}"),
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
    // The same authorization cannot be applied twice (its nonce is spent).
    refused(
        sent(
            a.escrow(&w)
                .authorizeSignerBySig(w.payer.address(), session_key.address(), deadline, auth_bytes)
                .send()
                .await,
        )
        .await,
        "BadSignature",
    );

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
    let (v, r, s) = vrs(&sig);
    sent(w.stranger.staking(&w).stakeWithPermit(node.address(), ait(500), deadline, v, r, s).send().await)
        .await
        .unwrap();
    assert_eq!(w.dao.staking(&w).stakeOf(node.address()).call().await.unwrap().staked, ait(500));

    // Nobody but the arbiter slashes, the node itself included.
    for who in [&w.stranger, node, &w.creator] {
        refused(
            sent(who.staking(&w).slash(node.address(), ait(100), B256::ZERO).send().await).await,
            "AccessControlUnauthorizedAccount",
        );
    }
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
    use std::io::BufRead;
    let dir = ait_tests::procs::temp_dir("chain-dev");
    let file = dir.join("chain.json");
    let mut child = std::process::Command::new(ait_tests::procs::ait_bin())
        .args(["chain", "dev", "--port", "0", "--accounts", "8", "--ait-each", "10000"])
        .arg("--out")
        .arg(&file)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("ait chain dev");
    let stdout = child.stdout.take().unwrap();
    let mut process = ChainProcess { child };
    let printed: Vec<String> = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let done = line == "ready";
            lines.push(line);
            if done {
                break;
            }
        }
        lines
    })
    .await
    .unwrap();
    assert_eq!(printed.last().map(String::as_str), Some("ready"), "ait chain dev printed {printed:?}");
    let chain = DevChain::load(&file).expect("the file ait chain dev wrote");
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
