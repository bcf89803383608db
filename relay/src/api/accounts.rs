//! Prepaid API keys (`ait relay --api-keys FILE`): the relay as a paying gateway, in the manner
//! of OpenRouter's keys. Each key names an account with AIT paid in advance to the relay's
//! operator and an optional daily token quota. The relay pays the swarm from its own deposit
//! (`--pay`) and charges each request's cost (what its vouchers paid, `usage.cost`) to the key
//! that asked; a key with nothing left gets 402, one past its quota 429. What each account
//! spent lives in `DATA_DIR/accounts.redb`, so a restart forgets nothing.
//!
//! The keys file is JSON:
//! `{"keys": [{"key": "sk-…", "name": "alice", "prepaid": "5", "tokens_per_day": 100000}]}`
//! (`tokens_per_day` may be left out: no quota; `prepaid` may be `"0"` for an account with a
//! quota only, on a relay that pays nobody). Changing `prepaid` in the file and restarting
//! tops an account up; what it spent is kept by name.
//!
//! The balance is checked before a request runs and charged when it ends (also when it fails
//! or its client leaves, for what was paid and run by then), so an account can go below zero
//! by what the requests it runs at once cost, at most [`MAX_IN_FLIGHT`] of them; the next is
//! refused.

use std::collections::HashMap;
use std::path::Path;

use alloy::primitives::U256;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::openai::ApiError;

/// What each account spent (AIT, smallest unit, 32 bytes big-endian), by name.
const SPENT: TableDefinition<&str, &[u8]> = TableDefinition::new("spent");
/// Tokens each account used on a day: (day, tokens) as two big-endian u64s, by name.
const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");

/// Seconds in a quota day (days start at midnight UTC).
const DAY_S: u64 = 86_400;

/// Requests one account may run (or have queued) at once: what it can overdraw is at most
/// what these cost.
pub const MAX_IN_FLIGHT: usize = 4;

/// Why the accounts could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    /// The keys file could not be read or parsed.
    #[error("API keys file {path}: {detail}")]
    File {
        /// The file.
        path: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The accounts database failed.
    #[error("API accounts database: {0}")]
    Db(#[from] redb::Error),
}

fn db<E: Into<redb::Error>>(e: E) -> AccountsError {
    AccountsError::Db(e.into())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    keys: Vec<KeyEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    key: String,
    name: String,
    prepaid: String,
    #[serde(default)]
    tokens_per_day: Option<u64>,
}

/// One account's terms, from the keys file.
#[derive(Clone, Debug)]
struct Terms {
    name: String,
    prepaid: U256,
    tokens_per_day: Option<u64>,
}

/// Where an account stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Standing {
    /// Its name.
    pub name: String,
    /// AIT paid in advance.
    pub prepaid: U256,
    /// AIT its requests cost so far.
    pub spent: U256,
    /// Tokens (prompt and completion) used today.
    pub tokens_today: u64,
    /// Its daily token quota, if it has one.
    pub tokens_per_day: Option<u64>,
}

impl Standing {
    /// What is left of what it paid (zero once spent).
    pub fn remaining(&self) -> U256 {
        self.prepaid.saturating_sub(self.spent)
    }

    /// `GET /v1/key`'s body.
    pub fn to_json(&self) -> serde_json::Value {
        use web_node::settle::format_ait;
        serde_json::json!({ "data": {
            "name": self.name,
            "prepaid": format_ait(self.prepaid),
            "spent": format_ait(self.spent),
            "remaining": format_ait(self.remaining()),
            "tokens_today": self.tokens_today,
            "tokens_per_day": self.tokens_per_day,
        }})
    }
}

/// The API keys and what their accounts spent.
pub struct Accounts {
    /// Terms by SHA-256 of the key (a lookup by digest reveals nothing of the key by timing).
    by_digest: HashMap<[u8; 32], Terms>,
    db: Database,
    /// Requests admitted and not yet charged, per account.
    in_flight: std::sync::Mutex<HashMap<String, usize>>,
}

/// A request admitted for an account; counts against [`MAX_IN_FLIGHT`] until dropped.
#[derive(Debug)]
pub struct InFlight {
    accounts: std::sync::Arc<Accounts>,
    name: String,
}

impl InFlight {
    /// The account.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The accounts it belongs to.
    pub fn accounts(&self) -> &std::sync::Arc<Accounts> {
        &self.accounts
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut n = self.accounts.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = n.get_mut(&self.name) {
            *c = c.saturating_sub(1);
            if *c == 0 {
                n.remove(&self.name);
            }
        }
    }
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts").field("keys", &self.by_digest.len()).finish_non_exhaustive()
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl Accounts {
    /// Reads the keys in `keys_file` and opens (or creates) the spending database `db_path`.
    pub fn open(keys_file: &Path, db_path: &Path) -> Result<Accounts, AccountsError> {
        let bad = |detail: String| AccountsError::File { path: keys_file.display().to_string(), detail };
        let text = std::fs::read_to_string(keys_file).map_err(|e| bad(e.to_string()))?;
        let file: KeysFile = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let mut by_digest = HashMap::new();
        let mut names = std::collections::HashSet::new();
        for k in file.keys {
            if k.key.len() < 16 || !k.key.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(bad(format!(
                    "the key of `{}` is shorter than 16 characters or not visible ASCII (what a header carries)",
                    k.name
                )));
            }
            if k.name.is_empty() || !names.insert(k.name.clone()) {
                return Err(bad(format!("account name `{}` is empty or used twice", k.name)));
            }
            // "0": an account with a daily quota only (on a relay that pays nobody).
            let prepaid = match k.prepaid.trim() {
                "0" => U256::ZERO,
                p => web_node::settle::parse_ait(p).map_err(|e| bad(format!("prepaid of `{}`: {e}", k.name)))?,
            };
            let terms = Terms { name: k.name, prepaid, tokens_per_day: k.tokens_per_day };
            if by_digest.insert(digest(&k.key), terms).is_some() {
                return Err(bad("the same key is listed twice".into()));
            }
        }
        let database = Database::create(db_path).map_err(db)?;
        let txn = database.begin_write().map_err(db)?;
        txn.open_table(SPENT).map_err(db)?;
        txn.open_table(TOKENS).map_err(db)?;
        txn.commit().map_err(db)?;
        Ok(Accounts { by_digest, db: database, in_flight: Default::default() })
    }

    /// Keys listed.
    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    /// Whether no key is listed.
    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// The account of bearer token `key`, if it is one of the keys.
    pub fn account_of(&self, key: &str) -> Option<String> {
        self.by_digest.get(&digest(key)).map(|t| t.name.clone())
    }

    fn terms(&self, name: &str) -> Option<&Terms> {
        self.by_digest.values().find(|t| t.name == name)
    }

    /// Where account `name` stands at Unix time `now_s`.
    pub fn standing(&self, name: &str, now_s: u64) -> Result<Standing, ApiError> {
        let t = self.terms(name).ok_or_else(ApiError::unauthorized)?;
        let (spent, (day, tokens)) = self.read(name).map_err(|e| ApiError::internal(e.to_string()))?;
        let tokens_today = if day == now_s / DAY_S { tokens } else { 0 };
        Ok(Standing { name: t.name.clone(), prepaid: t.prepaid, spent, tokens_today, tokens_per_day: t.tokens_per_day })
    }

    /// Whether account `name` may run a request now: fewer than [`MAX_IN_FLIGHT`] running,
    /// something left of what it paid (when the relay pays for requests, `paying`), and of
    /// its daily quota. The request counts as running until the [`InFlight`] is dropped.
    pub fn admit(self: &std::sync::Arc<Self>, name: &str, paying: bool, now_s: u64) -> Result<InFlight, ApiError> {
        self.check(name, paying, now_s)?;
        let mut n = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let running = n.entry(name.to_string()).or_default();
        if *running >= MAX_IN_FLIGHT {
            return Err(ApiError::account_busy(name, MAX_IN_FLIGHT));
        }
        *running += 1;
        Ok(InFlight { accounts: self.clone(), name: name.to_string() })
    }

    /// [`Accounts::admit`]'s checks of the balance and the quota.
    fn check(&self, name: &str, paying: bool, now_s: u64) -> Result<Standing, ApiError> {
        let s = self.standing(name, now_s)?;
        if paying && s.remaining().is_zero() {
            return Err(ApiError::credits_used(&s.name, s.prepaid));
        }
        if let Some(quota) = s.tokens_per_day {
            if s.tokens_today >= quota {
                return Err(ApiError::quota_used(&s.name, quota));
            }
        }
        Ok(s)
    }

    /// Charges account `name` `cost` and `tokens` at Unix time `now_s`.
    pub fn charge(&self, name: &str, cost: U256, tokens: u64, now_s: u64) -> Result<(), AccountsError> {
        let today = now_s / DAY_S;
        let txn = self.db.begin_write().map_err(db)?;
        {
            let mut spent = txn.open_table(SPENT).map_err(db)?;
            let before = spent.get(name).map_err(db)?.map(|v| U256::from_be_slice(v.value())).unwrap_or_default();
            spent.insert(name, before.saturating_add(cost).to_be_bytes::<32>().as_slice()).map_err(db)?;
            let mut used = txn.open_table(TOKENS).map_err(db)?;
            let (day, before) = used.get(name).map_err(db)?.map(|v| day_tokens(v.value())).unwrap_or_default();
            let now = if day == today { before.saturating_add(tokens) } else { tokens };
            let mut row = [0u8; 16];
            row[..8].copy_from_slice(&today.to_be_bytes());
            row[8..].copy_from_slice(&now.to_be_bytes());
            used.insert(name, row.as_slice()).map_err(db)?;
        }
        txn.commit().map_err(db)?;
        Ok(())
    }

    /// What `name` spent, and its (day, tokens) row.
    fn read(&self, name: &str) -> Result<(U256, (u64, u64)), AccountsError> {
        let txn = self.db.begin_read().map_err(db)?;
        let spent = txn.open_table(SPENT).map_err(db)?;
        let spent = spent.get(name).map_err(db)?.map(|v| U256::from_be_slice(v.value())).unwrap_or_default();
        let used = txn.open_table(TOKENS).map_err(db)?;
        let used = used.get(name).map_err(db)?.map(|v| day_tokens(v.value())).unwrap_or_default();
        Ok((spent, used))
    }
}

fn day_tokens(v: &[u8]) -> (u64, u64) {
    let mut day = [0u8; 8];
    let mut tokens = [0u8; 8];
    if v.len() == 16 {
        day.copy_from_slice(&v[..8]);
        tokens.copy_from_slice(&v[8..]);
    }
    (u64::from_be_bytes(day), u64::from_be_bytes(tokens))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accounts(dir: &Path, json: &str) -> Result<Accounts, AccountsError> {
        let keys = dir.join("keys.json");
        std::fs::write(&keys, json).unwrap();
        Accounts::open(&keys, &dir.join("accounts.redb"))
    }

    #[test]
    fn a_key_spends_what_it_prepaid_and_its_quota_and_a_restart_forgets_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let json = r#"{"keys": [{"key": "sk-alice-0123456789", "name": "alice", "prepaid": "1", "tokens_per_day": 100},
                                 {"key": "sk-bob-0123456789ab", "name": "bob", "prepaid": "0.5"},
                                 {"key": "sk-dave-0123456789a", "name": "dave", "prepaid": "0", "tokens_per_day": 10}]}"#;
        let a = std::sync::Arc::new(accounts(dir.path(), json).unwrap());
        assert_eq!(a.account_of("sk-alice-0123456789").as_deref(), Some("alice"));
        assert_eq!(a.account_of("sk-alice-012345678"), None);
        let t = 10 * DAY_S;
        let ait = |s: &str| web_node::settle::parse_ait(s).unwrap();
        a.admit("alice", true, t).unwrap();
        a.charge("alice", ait("0.6"), 60, t).unwrap();
        a.charge("alice", ait("0.3"), 39, t).unwrap();
        let s = a.standing("alice", t).unwrap();
        assert_eq!((s.remaining(), s.tokens_today), (ait("0.1"), 99));
        a.charge("alice", ait("0.1"), 1, t).unwrap();
        // The quota is used up today; so is what it paid.
        assert_eq!(a.admit("alice", false, t).unwrap_err().status, 429);
        assert_eq!(a.admit("alice", true, t + DAY_S).unwrap_err().status, 402);
        assert!(a.admit("alice", false, t + DAY_S).is_ok());
        // At most MAX_IN_FLIGHT requests of one account at once.
        let running: Vec<_> = (0..MAX_IN_FLIGHT).map(|_| a.admit("bob", true, t).unwrap()).collect();
        assert_eq!(a.admit("bob", true, t).unwrap_err().status, 429);
        drop(running);
        a.admit("bob", true, t).unwrap();
        // A quota-only account: nothing prepaid, so it may run only where the relay pays nobody.
        assert_eq!(a.admit("dave", true, t).unwrap_err().status, 402);
        a.admit("dave", false, t).unwrap();
        drop(a);
        // Reopened: what was spent is still spent.
        let a = accounts(dir.path(), json).unwrap();
        assert_eq!(a.standing("alice", t).unwrap().spent, ait("1"));
        assert_eq!(a.standing("bob", t).unwrap().spent, U256::ZERO);
    }

    #[test]
    fn a_bad_keys_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        for (json, says) in [
            (r#"{"keys": [{"key": "short", "name": "a", "prepaid": "1"}]}"#, "shorter than 16"),
            (
                r#"{"keys": [{"key": "sk-0123456789abcdef", "name": "a", "prepaid": "1"},
                             {"key": "sk-0123456789abcdeg", "name": "a", "prepaid": "1"}]}"#,
                "used twice",
            ),
            (r#"{"keys": [{"key": "sk-0123456789abcdef", "name": "a", "prepaid": "lots"}]}"#, "prepaid"),
            (r#"{"keys": [{"key": "sk-0123456789abcdef", "name": "a", "prepaid": "-1"}]}"#, "prepaid"),
            (r#"{"keys": [{"key": "sk-0123456789abcdef", "name": "a", "prepaid": "1", "x": 1}]}"#, "unknown field"),
            ("not json", "expected"),
        ] {
            let e = accounts(dir.path(), json).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
    }
}
