//! A local `anvil` (Foundry's development EVM node, from the npm package
//! `@foundry-rs/anvil` that `contracts/package.json` pins) run as a child process: the chain
//! `ait chain dev` and the settlement tests use. Its dev accounts come from a random mnemonic,
//! so no key is ever the same twice.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use alloy::primitives::B256;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::ChainError;

/// How long anvil may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// What to start anvil with.
#[derive(Clone, Debug)]
pub struct AnvilOpts {
    /// Interface to listen on.
    pub host: String,
    /// Port (0: any free port).
    pub port: u16,
    /// Dev accounts to create, each funded with 10,000 ETH.
    pub accounts: u32,
    /// Chain id.
    pub chain_id: u64,
}

impl Default for AnvilOpts {
    fn default() -> Self {
        AnvilOpts { host: "127.0.0.1".into(), port: 0, accounts: 10, chain_id: 31337 }
    }
}

/// A running anvil; dropping it kills the process.
#[derive(Debug)]
pub struct Anvil {
    child: Child,
    /// The JSON-RPC endpoint (`http://127.0.0.1:PORT`).
    pub rpc: String,
    /// The chain id.
    pub chain_id: u64,
    /// The dev accounts' secret keys, in anvil's order.
    pub keys: Vec<B256>,
}

/// The anvil binary: `$AIT_ANVIL`, else the one `npm ci` put under `contracts/node_modules`
/// (looked for from the current directory up, then in this source tree), else `anvil` on PATH.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("AIT_ANVIL") {
        return p.into();
    }
    let os = match std::env::consts::OS {
        "macos" => "darwin",
        "windows" => "win32",
        other => other,
    };
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let rel = PathBuf::from(format!("contracts/node_modules/@foundry-rs/anvil-{os}-{arch}/bin/anvil"));
    let source_tree = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut roots: Vec<PathBuf> =
        std::env::current_dir().map(|d| d.ancestors().map(PathBuf::from).collect()).unwrap_or_default();
    roots.push(source_tree);
    roots.into_iter().map(|r| r.join(&rel)).find(|p| p.is_file()).unwrap_or_else(|| "anvil".into())
}

impl Anvil {
    /// Starts anvil and waits until it listens.
    pub async fn start(opts: &AnvilOpts) -> Result<Anvil, ChainError> {
        let bin = binary();
        let config =
            std::env::temp_dir().join(format!("ait-anvil-{}-{}.json", std::process::id(), rand::random::<u64>()));
        let mut child = Command::new(&bin)
            .args(["--host", &opts.host, "--port", &opts.port.to_string()])
            .args(["--accounts", &opts.accounts.to_string(), "--chain-id", &opts.chain_id.to_string()])
            .arg("--mnemonic-random")
            .arg("--config-out")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                ChainError::Anvil(format!(
                    "cannot start {} ({e}); run `npm ci --prefix contracts` or set AIT_ANVIL",
                    bin.display()
                ))
            })?;
        // The file holds the dev keys: removed whatever happens next.
        struct RemoveOnDrop(std::path::PathBuf);
        impl Drop for RemoveOnDrop {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        let config = RemoveOnDrop(config);
        let stdout = child.stdout.take().ok_or_else(|| ChainError::Anvil("no stdout".into()))?;
        let mut lines = BufReader::new(stdout).lines();
        let listening = tokio::time::timeout(START_TIMEOUT, async {
            while let Some(line) = lines.next_line().await.map_err(|e| ChainError::Anvil(e.to_string()))? {
                if let Some(addr) = line.strip_prefix("Listening on ") {
                    return Ok(addr.trim().to_string());
                }
            }
            Err(ChainError::Anvil("exited before listening".into()))
        })
        .await
        .map_err(|_| ChainError::Anvil(format!("not listening after {START_TIMEOUT:?}")))??;
        // Anvil logs every call: keep reading so it never blocks on a full pipe.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::trace!(target: "anvil", "{line}");
            }
        });
        let keys = read_keys(&config.0)?;
        let rpc = format!("http://{}", listening.replace("0.0.0.0", "127.0.0.1"));
        tracing::info!(%rpc, accounts = keys.len(), "anvil started");
        Ok(Anvil { child, rpc, chain_id: opts.chain_id, keys })
    }

    /// Stops anvil.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

fn read_keys(config: &std::path::Path) -> Result<Vec<B256>, ChainError> {
    let text =
        std::fs::read_to_string(config).map_err(|e| ChainError::Anvil(format!("reading {}: {e}", config.display())))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ChainError::Anvil(format!("its --config-out: {e}")))?;
    json["private_keys"]
        .as_array()
        .ok_or_else(|| ChainError::Anvil("no private_keys in its --config-out".into()))?
        .iter()
        .map(|k| {
            k.as_str()
                .and_then(|s| s.parse::<B256>().ok())
                .ok_or_else(|| ChainError::Anvil(format!("bad private key {k}")))
        })
        .collect()
}
