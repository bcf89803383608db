//! Transactions on a test's dev chain: waiting for one, expecting a refusal by name, and
//! moving the chain's clock (anvil's `evm_increaseTime`).

use alloy::providers::{DynProvider, Provider};

/// Waits for a sent transaction; a refusal comes back as the contract error's text.
pub async fn sent(r: relay::settle::Sent) -> Result<(), String> {
    relay::settle::mined("call", r).await.map_err(|e| e.to_string())
}

/// Asserts that a transaction was refused with the contract error `error`.
#[track_caller]
pub fn refused(r: Result<(), String>, error: &str) {
    match r {
        Ok(()) => panic!("expected {error}, but it went through"),
        Err(e) => assert!(e.contains(error), "expected {error}, got {e}"),
    }
}

/// Moves the chain's clock forward by `seconds` and mines a block.
pub async fn warp(provider: &DynProvider, seconds: u64) {
    let _: serde_json::Value =
        provider.raw_request("evm_increaseTime".into(), (seconds,)).await.expect("increase time");
    mine(provider).await;
}

/// Mines an empty block.
pub async fn mine(provider: &DynProvider) {
    let _: serde_json::Value = provider.raw_request("evm_mine".into(), ()).await.expect("mine");
}

/// Mines `n` empty blocks at once (anvil's `anvil_mine`).
pub async fn mine_blocks(provider: &DynProvider, n: u64) {
    let _: serde_json::Value =
        provider.raw_request("anvil_mine".into(), (format!("{n:#x}"),)).await.expect("anvil_mine");
}
