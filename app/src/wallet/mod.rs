//! The Wallet panel: a person connects a standard wallet (EIP-1193, [`eip1193`]), deposits AIT
//! into the escrow with a permit (one signature and one transaction, no approve), and
//! authorizes a session key with one more signature (no transaction: the escrow takes it from
//! whoever submits it, so a node can put it before its first redeem). From then on the tab's
//! session key can sign vouchers without prompting.
//!
//! The relay says which chain and contracts it settles on (`GET /ait/chain`; a relay without
//! a chain serves free, and the panel says so). Every signed message is built by
//! `web_node::settle`, the code native nodes check them with.

pub mod eip1193;
pub mod view;

pub use view::WalletView;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::{Address, U256};
use leptos::prelude::*;
use leptos::task::spawn_local;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
pub use web_node::settle::format_ait;
use web_node::settle::wallet::{
    balance_of, deposit_with_permit, escrow_nonce, free_balance, parse_signature, thaw, token_nonce, typed_data_json,
    withdraw, word,
};
use web_node::settle::{
    escrow_domain, recover_signer, token_domain, AuthorizeSigner, Payer, Permit, SendError, SessionKey,
    SignedAuthorization,
};

use crate::error::AppError;

/// How long a transaction may take to be mined before the panel gives up waiting.
const TX_WAIT: Duration = Duration::from_secs(120);

/// How long a session key's authorization may be applied.
const AUTHORIZATION_SECONDS: u64 = 7 * 24 * 3600;

/// The chain and contracts the relay settles on (`GET /ait/chain`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ChainInfo {
    /// The chain id every signature commits to.
    pub chain_id: u64,
    /// The AIT token.
    pub token: Address,
    /// The escrow.
    pub escrow: Address,
    /// The staking contract (a charging tab reads payers' stakes for its priority slots).
    pub staking: Address,
    /// Blocks a redeem must be under before a charging tab lets its voucher go.
    pub confirmations: u64,
}

/// A session key's authorization, signed by the payer's wallet, for a node to submit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SessionAuth {
    /// The wallet that pays.
    pub payer: Address,
    /// The session key.
    pub signer: Address,
    /// The payer's escrow nonce it was signed with.
    pub nonce: U256,
    /// Unix seconds after which it cannot be applied.
    pub deadline: U256,
    /// The wallet's signature (`0x`, 65 bytes).
    pub signature: String,
}

/// Where the panel is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalletState {
    /// No wallet connected yet.
    Disconnected,
    /// Waiting for the wallet or the chain.
    Working,
    /// Connected: balances shown, deposit and authorize possible.
    Connected,
    /// The last step failed (the message says why).
    Error,
}

impl fmt::Display for WalletState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WalletState::Disconnected => "disconnected",
            WalletState::Working => "working",
            WalletState::Connected => "connected",
            WalletState::Error => "error",
        })
    }
}

/// The panel's state, as signals (a Copy handle).
#[derive(Clone, Copy)]
pub struct Wallet {
    /// Where the panel is.
    pub state: RwSignal<WalletState>,
    /// What the panel says.
    pub message: RwSignal<String>,
    /// The connected account.
    pub address: RwSignal<Option<Address>>,
    /// The relay's chain.
    pub chain: RwSignal<Option<ChainInfo>>,
    /// AIT in the wallet (smallest unit).
    pub ait: RwSignal<Option<U256>>,
    /// AIT deposited in the escrow and not allocated (smallest unit).
    pub deposited: RwSignal<Option<U256>>,
    /// How much of the deposit thaws, and from when (Unix seconds) it can be withdrawn.
    pub thawing: RwSignal<Option<(U256, u64)>>,
    /// The session key's authorization, once signed.
    pub session: RwSignal<Option<SessionAuth>>,
    /// After an unpaid answer through servers' free tiers: the fewest tokens left of this
    /// tab's daily quota at any of them.
    pub free_left: RwSignal<Option<u32>>,
    /// The session key (it signs vouchers; it lives as long as the page).
    key: StoredValue<Option<SessionKey>>,
}

/// A decimal amount of AIT typed by the person, in the smallest unit (more than 0).
fn parse_ait(amount: &str) -> Result<U256, AppError> {
    web_node::settle::parse_ait(amount).map_err(wallet_err)
}

fn wallet_err(e: impl fmt::Display) -> AppError {
    AppError::Wallet(e.to_string())
}

impl Wallet {
    /// A disconnected panel.
    pub fn new() -> Self {
        Wallet {
            state: RwSignal::new(WalletState::Disconnected),
            message: RwSignal::new("Connect a wallet to pay for what you use with AIT.".into()),
            address: RwSignal::new(None),
            chain: RwSignal::new(None),
            ait: RwSignal::new(None),
            deposited: RwSignal::new(None),
            thawing: RwSignal::new(None),
            session: RwSignal::new(None),
            free_left: RwSignal::new(None),
            key: StoredValue::new(None),
        }
    }

    /// The session key, if one was authorized.
    pub fn session_key(&self) -> Option<SessionKey> {
        self.key.get_value()
    }

    /// Who pays for the tab's chats: the connected wallet's escrow, through the session key
    /// (its authorization goes to the nodes, which submit it), once one is authorized.
    pub fn payer(&self) -> Option<Arc<Payer>> {
        let key = self.key.get_value()?;
        let auth = self.session.get_untracked()?;
        let chain = self.chain.get_untracked()?;
        let signature = parse_signature(&auth.signature).ok()?.as_bytes().to_vec().into();
        let authorization =
            AuthorizeSigner { payer: auth.payer, signer: auth.signer, nonce: auth.nonce, deadline: auth.deadline };
        Some(Arc::new(Payer {
            payer: auth.payer,
            key,
            authorization: Some(SignedAuthorization { authorization, signature }),
            chain_id: chain.chain_id,
            escrow: chain.escrow,
            max_price: None,
        }))
    }

    /// Runs `step` with the panel marked busy; shows its result or error.
    fn run<F>(self, step: F)
    where
        F: std::future::Future<Output = Result<String, AppError>> + 'static,
    {
        self.state.set(WalletState::Working);
        spawn_local(async move {
            match step.await {
                Ok(message) => {
                    self.message.set(message);
                    self.state.set(WalletState::Connected);
                }
                Err(e) => {
                    self.message.set(e.to_string());
                    self.state.set(WalletState::Error);
                }
            }
        });
    }

    /// Asks the relay for its chain and the wallet for an account on that chain.
    pub fn connect(self) {
        self.run(async move {
            let chain: ChainInfo = crate::http::json("/ait/chain").await?;
            let accounts = eip1193::request("eth_requestAccounts", json!([])).await?;
            let address: Address = accounts
                .get(0)
                .and_then(Value::as_str)
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| wallet_err("the wallet shared no account"))?;
            let id = eip1193::request("eth_chainId", json!([])).await?;
            let id = hex_u64(&id);
            if id != Some(chain.chain_id) {
                return Err(wallet_err(format!(
                    "the wallet is on chain {}, the relay settles on chain {}: switch the wallet's network",
                    id.map(|i| i.to_string()).unwrap_or_else(|| "?".into()),
                    chain.chain_id
                )));
            }
            self.address.set(Some(address));
            self.chain.set(Some(chain));
            self.refresh().await?;
            Ok(format!("Connected {address}."))
        });
    }

    /// The connected account and the relay's chain, or an error that says to connect.
    pub(crate) fn connected(&self) -> Result<(Address, ChainInfo), AppError> {
        match (self.address.get_untracked(), self.chain.get_untracked()) {
            (Some(a), Some(c)) => Ok((a, c)),
            _ => Err(wallet_err("connect a wallet first")),
        }
    }

    /// Reads the wallet's AIT and the escrow's free balance.
    pub(crate) async fn refresh(&self) -> Result<(), AppError> {
        let (address, chain) = self.connected()?;
        self.ait.set(Some(call_word(chain.token, balance_of(address), 0).await?));
        let data = free_balance(address);
        self.deposited.set(Some(call_word(chain.escrow, data.clone(), 0).await?));
        let thawing = call_word(chain.escrow, data.clone(), 1).await?;
        let until = call_word(chain.escrow, data, 2).await?;
        self.thawing.set((!thawing.is_zero()).then(|| (thawing, until.saturating_to())));
        Ok(())
    }

    /// Starts thawing `amount` AIT of the deposit (a transaction): withdrawable after the
    /// escrow's thaw period.
    pub fn start_withdrawal(self, amount: String) {
        self.run(async move {
            let (payer, chain) = self.connected()?;
            let value = parse_ait(&amount)?;
            send_and_wait(payer, chain.escrow, &thaw(Address::ZERO, value).to_string()).await?;
            self.refresh().await?;
            Ok(format!("{} AIT thaws; withdraw it once the thaw period is over.", format_ait(value)))
        });
    }

    /// Withdraws what has thawed (a transaction).
    pub fn finish_withdrawal(self) {
        self.run(async move {
            let (payer, chain) = self.connected()?;
            self.refresh().await?;
            let Some((_, until)) = self.thawing.get_untracked() else {
                return Err(wallet_err("nothing thaws: start a withdrawal first"));
            };
            // The chain's clock decides, not this computer's.
            let now = chain_time().await?;
            if now < until {
                return Err(wallet_err(format!("the thaw ends in {} s: withdraw after that", until - now)));
            }
            send_and_wait(payer, chain.escrow, &withdraw(Address::ZERO).to_string()).await?;
            self.refresh().await?;
            Ok("Withdrawn to the wallet.".into())
        });
    }

    /// Deposits `amount` AIT (a decimal string): the wallet signs a permit, then sends
    /// `depositWithPermit`.
    pub fn deposit(self, amount: String) {
        self.run(async move {
            let (payer, chain) = self.connected()?;
            let value = parse_ait(&amount)?;
            let nonce = call_word(chain.token, token_nonce(payer), 0).await?;
            let deadline = U256::from(chain_time().await? + 3600);
            let permit = Permit { owner: payer, spender: chain.escrow, value, nonce, deadline };
            let typed = typed_data_json(&permit, &token_domain(chain.chain_id, chain.token));
            let sig = eip1193::request("eth_signTypedData_v4", json!([payer, typed])).await?;
            let sig = parse_signature(sig.as_str().unwrap_or_default()).map_err(wallet_err)?;
            let data = deposit_with_permit(payer, value, deadline, &sig);
            send_and_wait(payer, chain.escrow, &data.to_string()).await?;
            self.refresh().await?;
            Ok(format!("Deposited {} AIT.", format_ait(value)))
        });
    }

    /// Makes a session key and has the wallet sign its authorization (one prompt, no
    /// transaction).
    pub fn authorize(self) {
        self.run(async move {
            let (payer, chain) = self.connected()?;
            let key = SessionKey::random();
            let nonce = call_word(chain.escrow, escrow_nonce(payer), 0).await?;
            let deadline = U256::from(chain_time().await? + AUTHORIZATION_SECONDS);
            let auth = AuthorizeSigner { payer, signer: key.address(), nonce, deadline };
            let domain = escrow_domain(chain.chain_id, chain.escrow);
            let sig = eip1193::request("eth_signTypedData_v4", json!([payer, typed_data_json(&auth, &domain)])).await?;
            let sig_hex = sig.as_str().unwrap_or_default().to_string();
            let sig = parse_signature(&sig_hex).map_err(wallet_err)?;
            // A wallet that signed with another account would authorize nothing: check here.
            let signer = recover_signer(&auth, &domain, &sig.as_bytes()).map_err(wallet_err)?;
            if signer != payer {
                return Err(wallet_err(format!("the wallet signed as {signer}, not {payer}")));
            }
            self.key.set_value(Some(key.clone()));
            self.session.set(Some(SessionAuth {
                payer,
                signer: key.address(),
                nonce,
                deadline,
                signature: format!("0x{}", hex::encode(sig.as_bytes())),
            }));
            Ok(format!("This tab's session key {} may sign vouchers for {payer}.", key.address()))
        });
    }
}

impl Default for Wallet {
    fn default() -> Self {
        Self::new()
    }
}

/// `eth_call` through the wallet; word `index` of the answer.
async fn call_word(to: Address, data: alloy_primitives::Bytes, index: usize) -> Result<U256, AppError> {
    let answer = eip1193::request("eth_call", json!([{ "to": to, "data": data.to_string() }, "latest"])).await?;
    word(answer.as_str().unwrap_or_default(), index).map_err(wallet_err)
}

/// A JSON-RPC quantity (`"0x2a"`) as a number; `None` when `v` is not one.
fn hex_u64(v: &Value) -> Option<u64> {
    v.as_str().and_then(|h| u64::from_str_radix(h.trim_start_matches("0x"), 16).ok())
}

/// The latest block's time (Unix seconds), as the chain sees it.
pub(crate) async fn chain_time() -> Result<u64, AppError> {
    let block = eip1193::request("eth_getBlockByNumber", json!(["latest", false])).await?;
    hex_u64(&block["timestamp"]).ok_or_else(|| wallet_err("the chain's latest block has no time"))
}

/// Has the wallet send a transaction and waits until it is mined; a reverted one is an error.
pub(crate) async fn send_and_wait(from: Address, to: Address, data: &str) -> Result<(), AppError> {
    send_tx(from, to, data).await.map(drop).map_err(wallet_err)
}

/// Has the wallet send a transaction and waits until it is mined: refused when the chain
/// reverts it (when the wallet estimates its gas, or once mined), failed when it could not be
/// sent (the person declined, the wallet is gone) or its outcome is not known in time.
/// Returns the number of the block it was mined in.
pub(crate) async fn send_tx(from: Address, to: Address, data: &str) -> Result<u64, SendError> {
    // A revert shows when the wallet estimates the gas: the chain refused it, named by the
    // escrow's error where the wallet passes the node's revert data on.
    let failed = |f: eip1193::Failure| match f.is_revert() {
        true => SendError::Refused(
            f.revert_data().and_then(|d| web_node::settle::wallet::escrow_revert(&d)).unwrap_or_else(|| f.to_string()),
        ),
        false => SendError::Failed(f.to_string()),
    };
    let hash = eip1193::request_detailed("eth_sendTransaction", json!([{ "from": from, "to": to, "data": data }]))
        .await
        .map_err(failed)?;
    let hash = hash.as_str().ok_or_else(|| SendError::Failed("the wallet returned no transaction hash".into()))?;
    let started = web_time::Instant::now();
    loop {
        let receipt = eip1193::request("eth_getTransactionReceipt", json!([hash]))
            .await
            .map_err(|e| SendError::Failed(e.to_string()))?;
        if let Some(status) = receipt.get("status").and_then(Value::as_str) {
            return if status == "0x1" {
                hex_u64(&receipt["blockNumber"])
                    .ok_or_else(|| SendError::Failed(format!("transaction {hash}: a receipt without a block number")))
            } else {
                Err(SendError::Refused(format!("transaction {hash} reverted")))
            };
        }
        if started.elapsed() > TX_WAIT {
            return Err(SendError::Failed(format!("transaction {hash} not mined after {TX_WAIT:?}")));
        }
        futures_timer::Delay::new(Duration::from_millis(500)).await;
    }
}
