//! A dev chain for paid swarms (tests and benches): `ait chain dev`, wallets kept encrypted
//! with a known password, nodes staked and bound to their peer ids, and the flags a relay
//! needs to charge or pay.

use std::path::{Path, PathBuf};

use alloy::primitives::Address;
use relay::settle::bindings::Escrow;
use relay::settle::dev::wallet_provider;

use crate::procs::{ait, ChainDev};

/// The price charging relays ask in tests and benches: 10^12 units (0.000001 AIT) per
/// layer-token, a multiple of 10 so every share of the 70/20/10 split is exact.
pub const PRICE: &str = "0.000001";
/// [`PRICE`] in the smallest unit.
pub const PRICE_UNITS: u64 = 1_000_000_000_000;
/// AIT a node made by [`Chain::node_dir`] stakes: less than the tribunal's slash.
pub const NODE_STAKE_AIT: u64 = 10;
/// The password of every keystore made here.
const PASSWORD: &str = "pay-test";

/// A dev chain, a password file, and the `ait` settlement commands against them.
pub struct Chain {
    /// The running chain.
    pub dev: ChainDev,
    dir: PathBuf,
    password: PathBuf,
}

impl Chain {
    /// Starts `ait chain dev` under `dir`.
    pub fn start(dir: &Path) -> Chain {
        let dev = ChainDev::start(&dir.join("chain"));
        let password = dir.join("password");
        std::fs::write(&password, PASSWORD).unwrap();
        Chain { dev, dir: dir.into(), password }
    }

    /// The chain's deployment file.
    pub fn file(&self) -> &str {
        self.dev.file.to_str().unwrap()
    }

    /// `ait ARGS --chain FILE`, which must succeed; its stdout.
    pub fn ait(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "ait {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ait ARGS --chain FILE`, which must fail; its stderr.
    pub fn ait_fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "ait {args:?} succeeded:\n{}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        ait().args(args).args(["--chain", self.file()]).env("AIT_WALLET_PASSWORD", PASSWORD).output().expect("ait")
    }

    /// A node's data directory holding its identity and the wallet of dev account `account`,
    /// staked ([`NODE_STAKE_AIT`]) and bound to its peer id.
    pub fn node_dir(&self, name: &str, account: usize) -> (PathBuf, Address) {
        let (dir, address) = self.wallet_dir(name, account);
        self.ait(&["stake", &NODE_STAKE_AIT.to_string(), "--data-dir", dir.to_str().unwrap()]);
        (dir, address)
    }

    /// Like [`Chain::node_dir`], without the stake.
    pub fn wallet_dir(&self, name: &str, account: usize) -> (PathBuf, Address) {
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        relay::p2p::load_or_create_key(&dir).unwrap();
        let d = dir.to_str().unwrap();
        let address: Address = self
            .ait(&["wallet", "new", "--dev-account", &account.to_string(), "--data-dir", d])
            .trim()
            .parse()
            .unwrap();
        (dir, address)
    }

    /// Like [`Chain::node_dir`], for a payer that deposits `deposit` AIT and allocates
    /// `allocate` AIT to each of `nodes`.
    pub fn payer_dir(
        &self,
        name: &str,
        account: usize,
        deposit: &str,
        nodes: &[Address],
        allocate: &str,
    ) -> (PathBuf, Address) {
        let (dir, address) = self.node_dir(name, account);
        self.fund(&dir, deposit, nodes, allocate);
        (dir, address)
    }

    /// Like [`Chain::payer_dir`], for a payer that stakes nothing (its priority score is 0).
    pub fn unstaked_payer_dir(&self, name: &str, account: usize, deposit: &str) -> (PathBuf, Address) {
        let (dir, address) = self.wallet_dir(name, account);
        self.fund(&dir, deposit, &[], "0");
        (dir, address)
    }

    /// Deposits `deposit` AIT from the wallet in `dir` and allocates `allocate` to each of `nodes`.
    fn fund(&self, dir: &std::path::Path, deposit: &str, nodes: &[Address], allocate: &str) {
        let d = dir.to_str().unwrap();
        self.ait(&["deposit", deposit, "--data-dir", d]);
        for node in nodes {
            self.ait(&["allocate", &node.to_string(), allocate, "--data-dir", d]);
        }
    }

    /// The address of dev account `account`.
    pub fn address_of(&self, account: usize) -> Address {
        self.dev.chain.accounts[account].address
    }

    /// The settlement flags of a relay: the chain and the wallet's password.
    pub fn relay_args(&self) -> Vec<String> {
        vec!["--chain".into(), self.file().into(), "--password-file".into(), self.password.to_str().unwrap().into()]
    }

    /// The escrow, read (and written) as dev account 0.
    pub fn escrow(&self) -> Escrow::EscrowInstance<alloy::providers::DynProvider> {
        let d = &self.dev.chain.deployment;
        Escrow::new(d.escrow, wallet_provider(&d.rpc, &self.dev.chain.accounts[0].key).unwrap())
    }
}
