//! Reading the settlement chain through any JSON-RPC endpoint: a native node's provider, or a
//! tab's wallet (EIP-1193, whose `request` takes the same methods). What a charging node reads
//! (allocations, collections, signers, stakes, `Redeemed` events) is built here once, from the
//! contracts' committed ABI, so a seeding tab checks payments with the code a relay does.

use std::time::Duration;

use alloy_primitives::{Address, Bytes, B256, U256};
use alloy_sol_types::{sol, SolCall, SolEvent};
use serde_json::{json, Value};

use super::pay::GateFuture;
use super::wallet::EscrowContract;

sol!(StakingContract, "../contracts/artifacts/Staking.json");

/// The escrow's `Redeemed` event (a voucher paid: who paid whom, for which model, the shares).
pub type Redeemed = EscrowContract::Redeemed;

/// Why a chain read failed: the endpoint failed or answered something that does not decode.
#[derive(Debug, Clone, thiserror::Error)]
#[error("chain RPC: {0}")]
pub struct ReadError(pub String);

/// Why a transaction did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    /// The chain refused it (a revert, named by the contract's error where it can be).
    #[error("refused: {0}")]
    Refused(String),
    /// It could not be sent, or whether it was mined is unknown.
    #[error("{0}")]
    Failed(String),
}

/// Where a [`ChainGate`](super::ChainGate) and a [`Redeemer`](super::Redeemer) run: the
/// chain's JSON-RPC, the node's wallet to send transactions with, a way to run the ledger's
/// blocking writes, and a durable copy of what the ledger keeps where the ledger itself is not
/// durable (a tab's in-memory ledger, copied to IndexedDB).
pub trait GateHost: Send + Sync + 'static {
    /// Sends one JSON-RPC request (`eth_call`, `eth_getLogs`, …) and returns its result.
    fn rpc<'a>(&'a self, method: &'a str, params: Value) -> GateFuture<'a, Result<Value, String>>;

    /// Sends a transaction with `data` to `to` from the node's wallet, waits until it is
    /// mined, and returns the number of the block it was mined in.
    fn send<'a>(&'a self, to: Address, data: Bytes) -> GateFuture<'a, Result<u64, SendError>>;

    /// Runs `job`, which blocks on the ledger's disk, where it does not hold up the async
    /// workers (a native node's blocking pool; a tab, which has one thread, runs it at once).
    fn blocking(&self, job: Box<dyn FnOnce() + Send>);

    /// Makes what the ledger holds now durable: the gate calls it after it keeps a voucher
    /// (before its step is answered), an authorization or an allocation (a tab also after each
    /// redeem round). A ledger on disk is durable already: nothing to do.
    fn persist(&self) -> GateFuture<'_, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

/// Most blocks one `eth_getLogs` asks for: public RPC endpoints refuse wider ranges (10,000
/// is a common cap), so longer windows are read in pieces.
pub const LOG_CHUNK_BLOCKS: u64 = 10_000;

/// Blocks `from..=to` in ranges of at most [`LOG_CHUNK_BLOCKS`], in order.
pub fn log_chunks(from: u64, to: u64) -> impl Iterator<Item = (u64, u64)> {
    let mut next = (from <= to).then_some(from);
    std::iter::from_fn(move || {
        let start = next?;
        let end = to.min(start.saturating_add(LOG_CHUNK_BLOCKS - 1));
        next = end.checked_add(1).filter(|n| *n <= to);
        Some((start, end))
    })
}

/// A `Redeemed` event and the block it is in.
#[derive(Clone, Debug)]
pub struct RedeemedLog {
    /// The event.
    pub event: Redeemed,
    /// Its block's number.
    pub block: u64,
}

/// A payer's free balance in the escrow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FreeBalance {
    /// Deposited and not allocated.
    pub balance: U256,
    /// How much of it thaws.
    pub thawing: U256,
}

/// How long a read at a pinned block waits before it asks again, when the RPC refused it (a
/// backend behind a load balancer that has not seen the block yet).
const PINNED_RETRY: Duration = Duration::from_millis(500);

/// Reads of the escrow and staking contracts through `host`'s JSON-RPC, at the latest block
/// or at one block ([`ChainReads::at`]).
pub struct ChainReads<H: ?Sized> {
    host: std::sync::Arc<H>,
    escrow: Address,
    staking: Address,
    timeout: Duration,
    block: Option<u64>,
}

impl<H: ?Sized> Clone for ChainReads<H> {
    fn clone(&self) -> Self {
        ChainReads {
            host: self.host.clone(),
            escrow: self.escrow,
            staking: self.staking,
            timeout: self.timeout,
            block: self.block,
        }
    }
}

fn hex_u64(v: &Value, what: &str) -> Result<u64, ReadError> {
    v.as_str()
        .and_then(|h| u64::from_str_radix(h.trim_start_matches("0x"), 16).ok())
        .ok_or_else(|| ReadError(format!("{what}: not a hex number: {v}")))
}

impl<H: GateHost + ?Sized> ChainReads<H> {
    /// Reads of `escrow` and `staking` through `host`, each request given up after 10 s.
    pub fn new(host: std::sync::Arc<H>, escrow: Address, staking: Address) -> Self {
        ChainReads { host, escrow, staking, timeout: Duration::from_secs(10), block: None }
    }

    /// The same reads, each request given up after `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The same contract calls at block `block` (logs and the latest block are unaffected).
    pub fn at(&self, block: u64) -> Self {
        ChainReads { block: Some(block), ..self.clone() }
    }

    /// The escrow read.
    pub fn escrow(&self) -> Address {
        self.escrow
    }

    async fn request(&self, method: &str, params: Value) -> Result<Value, ReadError> {
        self.answer(method, params).await.unwrap_or_else(|| Err(self.no_answer(method)))
    }

    /// What a read that got no answer within the timeout fails with.
    fn no_answer(&self, method: &str) -> ReadError {
        ReadError(format!("{method}: no answer in {:?}", self.timeout))
    }

    /// The host's answer, or `None` when it gave none within the timeout.
    async fn answer(&self, method: &str, params: Value) -> Option<Result<Value, ReadError>> {
        let answer = crate::time::timeout(self.timeout, self.host.rpc(method, params)).await?;
        Some(answer.map_err(|e| ReadError(format!("{method}: {e}"))))
    }

    async fn call<C: SolCall>(&self, to: Address, call: C) -> Result<C::Return, ReadError> {
        let data = Bytes::from(call.abi_encode());
        let block = self.block.map_or_else(|| "latest".to_string(), |b| format!("0x{b:x}"));
        let params = json!([{ "to": to, "data": data }, block]);
        let mut answer = self.answer("eth_call", params.clone()).await;
        // Behind a load balancer, the backend asked may not have the pinned block yet ("header
        // not found"): once more, a moment later. A timeout already waited: not retried.
        if self.block.is_some() && matches!(answer, Some(Err(_))) {
            futures_timer::Delay::new(PINNED_RETRY).await;
            answer = self.answer("eth_call", params).await;
        }
        let answer = answer
            .unwrap_or_else(|| Err(self.no_answer("eth_call")))
            .map_err(|e| ReadError(format!("{}: {}", C::SIGNATURE, e.0)))?;
        let bytes: Bytes = answer
            .as_str()
            .and_then(|h| h.parse().ok())
            .ok_or_else(|| ReadError(format!("{}: not hex: {answer}", C::SIGNATURE)))?;
        C::abi_decode_returns(&bytes).map_err(|e| ReadError(format!("{}: {e}", C::SIGNATURE)))
    }

    /// The latest block's number and time (Unix seconds): the chain's clock.
    pub async fn latest_block(&self) -> Result<(u64, u64), ReadError> {
        let block = self.request("eth_getBlockByNumber", json!(["latest", false])).await?;
        Ok((hex_u64(&block["number"], "block number")?, hex_u64(&block["timestamp"], "block time")?))
    }

    /// The latest block's number and time, but not a block before `floor` (one this node has
    /// seen already: a block it read at, or mined a redeem in) while that block exists.
    /// Behind a load balancer the backend asked may lag, and a read there would show the chain
    /// before what the node already recorded (an allocation before the redeem that collected
    /// from it). When "latest" is behind `floor`, the RPC is asked for block `floor` itself
    /// (twice, 500 ms apart): shown, the reads pin to it (a backend that has not seen it
    /// refuses them, and they ask again); not shown, a reorg shortened the chain and "latest"
    /// stands.
    pub async fn latest_block_since(&self, floor: u64) -> Result<(u64, u64), ReadError> {
        let (block, time) = self.latest_block().await?;
        if block >= floor {
            return Ok((block, time));
        }
        for attempt in 0..2 {
            if attempt > 0 {
                futures_timer::Delay::new(PINNED_RETRY).await;
            }
            let seen = self.request("eth_getBlockByNumber", json!([format!("0x{floor:x}"), false])).await?;
            if !seen.is_null() {
                return Ok((floor, hex_u64(&seen["timestamp"], "block time")?));
            }
        }
        Ok((block, time))
    }

    /// Everything `payer` ever allocated to `node`.
    pub async fn allocated_total(&self, payer: Address, node: Address) -> Result<U256, ReadError> {
        self.call(self.escrow, EscrowContract::allocatedTotalCall { payer, node }).await
    }

    /// `payer`'s allocation to `node` less what thaws.
    pub async fn available(&self, payer: Address, node: Address) -> Result<U256, ReadError> {
        self.call(self.escrow, EscrowContract::availableCall { payer, node }).await
    }

    /// What was collected for (`payer`, `session`, `node`).
    pub async fn collected(&self, payer: Address, session: B256, node: Address) -> Result<U256, ReadError> {
        self.call(self.escrow, EscrowContract::collectedCall { payer, session, node }).await
    }

    /// Whether `signer` may sign for `payer` now.
    pub async fn is_signer(&self, payer: Address, signer: Address) -> Result<bool, ReadError> {
        self.call(self.escrow, EscrowContract::isSignerCall { payer, signer }).await
    }

    /// Until when `signer` signs for `payer` (Unix seconds): 0 if it never was authorized,
    /// `u64::MAX` while it is and no revocation has started, else the end of its revocation.
    pub async fn signer_until(&self, payer: Address, signer: Address) -> Result<u64, ReadError> {
        self.call(self.escrow, EscrowContract::signerUntilCall { payer, signer }).await
    }

    /// `owner`'s escrow nonce (of its next `AuthorizeSigner`).
    pub async fn nonce(&self, owner: Address) -> Result<U256, ReadError> {
        self.call(self.escrow, EscrowContract::noncesCall { owner }).await
    }

    /// `payer`'s free balance.
    pub async fn free_balance(&self, payer: Address) -> Result<FreeBalance, ReadError> {
        let r = self.call(self.escrow, EscrowContract::freeBalanceCall { payer }).await?;
        Ok(FreeBalance { balance: r.balance, thawing: r.thawing })
    }

    /// What `who` earned in the escrow and has not withdrawn or spent.
    pub async fn earned(&self, who: Address) -> Result<U256, ReadError> {
        self.call(self.escrow, EscrowContract::earnedCall { who }).await
    }

    /// `who`'s stake.
    pub async fn stake_of(&self, who: Address) -> Result<U256, ReadError> {
        Ok(self.call(self.staking, StakingContract::stakeOfCall { node: who }).await?.staked)
    }

    /// The libp2p peer id (its bytes) `who` bound in `Staking`; empty when none.
    pub async fn peer_id_of(&self, who: Address) -> Result<Bytes, ReadError> {
        self.call(self.staking, StakingContract::peerIdOfCall { node: who }).await
    }

    /// The escrow's `Redeemed` events of blocks `from..=to`, those naming `node` as the node
    /// when given, read [`LOG_CHUNK_BLOCKS`] at a time.
    pub async fn redeemed_events(
        &self,
        node: Option<Address>,
        from: u64,
        to: u64,
    ) -> Result<Vec<RedeemedLog>, ReadError> {
        let mut out = Vec::new();
        for (start, end) in log_chunks(from, to) {
            let topics = match node {
                Some(n) => json!([Redeemed::SIGNATURE_HASH, null, n.into_word()]),
                None => json!([Redeemed::SIGNATURE_HASH]),
            };
            let filter = json!([{
                "address": self.escrow,
                "fromBlock": format!("0x{start:x}"),
                "toBlock": format!("0x{end:x}"),
                "topics": topics,
            }]);
            let logs = self.request("eth_getLogs", filter).await?;
            for log in logs.as_array().ok_or_else(|| ReadError(format!("eth_getLogs: not a list: {logs}")))? {
                out.push(decode_redeemed(log)?);
            }
        }
        Ok(out)
    }
}

/// A `Redeemed` log of an `eth_getLogs` answer.
fn decode_redeemed(log: &Value) -> Result<RedeemedLog, ReadError> {
    let bad = |what: &str| ReadError(format!("a Redeemed log's {what}: {log}"));
    let topics: Vec<B256> = log["topics"]
        .as_array()
        .ok_or_else(|| bad("topics"))?
        .iter()
        .map(|t| t.as_str().and_then(|t| t.parse().ok()).ok_or_else(|| bad("topic")))
        .collect::<Result<_, _>>()?;
    let data: Bytes = log["data"].as_str().and_then(|d| d.parse().ok()).ok_or_else(|| bad("data"))?;
    let event = Redeemed::decode_raw_log(topics, &data).map_err(|e| ReadError(format!("a Redeemed log: {e}")))?;
    Ok(RedeemedLog { event, block: hex_u64(&log["blockNumber"], "a Redeemed log's block")? })
}

/// What `who` earned serving others in `events`: the node shares of redeems naming it as
/// node, paid by payers other than itself (what a node pays itself does not count).
pub fn earned_from_others<'a>(events: impl IntoIterator<Item = &'a RedeemedLog>, who: Address) -> U256 {
    events
        .into_iter()
        .map(|l| &l.event)
        .filter(|r| r.node == who && r.payer != who)
        .fold(U256::ZERO, |a, r| a.saturating_add(r.nodeShare))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_windows_are_read_in_ranges_rpcs_accept() {
        let chunks: Vec<_> = log_chunks(5, 25_004).collect();
        assert_eq!(chunks, vec![(5, 10_004), (10_005, 20_004), (20_005, 25_004)]);
        assert_eq!(log_chunks(7, 7).collect::<Vec<_>>(), vec![(7, 7)]);
        assert_eq!(log_chunks(8, 7).count(), 0);
        let top: Vec<_> = log_chunks(u64::MAX - 3, u64::MAX).collect();
        assert_eq!(top, vec![(u64::MAX - 3, u64::MAX)]);
    }

    #[test]
    fn a_redeemed_log_decodes_from_its_json() {
        let event = Redeemed {
            payer: Address::repeat_byte(1),
            node: Address::repeat_byte(2),
            session: B256::repeat_byte(3),
            model: B256::repeat_byte(4),
            amount: U256::from(100),
            cumulativeWork: U256::from(30),
            receipts: B256::repeat_byte(5),
            nodeShare: U256::from(70),
            creatorShare: U256::from(20),
            daoShare: U256::from(10),
        };
        let log = event.encode_log_data();
        let json = json!({
            "topics": log.topics(),
            "data": log.data,
            "blockNumber": "0x2a",
        });
        let decoded = decode_redeemed(&json).unwrap();
        assert_eq!(decoded.block, 42);
        assert_eq!(decoded.event.nodeShare, U256::from(70));
        assert_eq!(decoded.event.node, Address::repeat_byte(2));
        // What the node paid itself does not count as earned from others.
        let mut own = decoded.clone();
        own.event.payer = own.event.node;
        assert_eq!(earned_from_others([&decoded, &own], Address::repeat_byte(2)), U256::from(70));
        assert!(decode_redeemed(&json!({ "topics": [], "data": "0x", "blockNumber": "0x1" })).is_err());
    }
}
