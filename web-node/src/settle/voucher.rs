//! EIP-712 vouchers, signer authorizations and allocations, as `Escrow.sol` hashes them, and
//! the secp256k1 key that signs them.

use alloy_primitives::{Address, Signature, B256};
use alloy_sol_types::{eip712_domain, sol, Eip712Domain, SolStruct};
use k256::ecdsa::SigningKey;

sol! {
    /// A payer's promise to one node for one session, to date: each voucher supersedes the
    /// last, and `redeem` pays what `cumulativeAmount` adds to what was collected.
    #[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    struct Voucher {
        /// The session (random, chosen by the client).
        bytes32 session;
        /// Whose escrow pays.
        address payer;
        /// Who is paid: the serving node's EVM address.
        address node;
        /// The model id (the manifest's hash).
        bytes32 model;
        /// AIT (smallest unit) owed for the session so far.
        uint256 cumulativeAmount;
        /// Work done so far: tokens x layers.
        uint256 cumulativeWork;
        /// The node's receipts for that work, chained (`trust::ReceiptChain`): the answers
        /// this voucher pays for.
        bytes32 receipts;
        /// Unix seconds after which the voucher cannot be redeemed.
        uint64 expiry;
    }

    /// A payer's authorization of a session key, which a node may submit for it.
    #[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    struct AuthorizeSigner {
        /// The payer (the wallet that signs this).
        address payer;
        /// The session key.
        address signer;
        /// The payer's next nonce in the escrow (`nonces(payer)`).
        uint256 nonce;
        /// Unix seconds after which it cannot be applied.
        uint256 deadline;
    }

    /// A payer's allocation to a node, cumulative over all its allocations to that node.
    #[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    struct Allocation {
        /// The payer.
        address payer;
        /// The node allocated to.
        address node;
        /// Everything allocated to the node so far, this included.
        uint256 cumulativeAllocated;
        /// Unix seconds after which it cannot be applied.
        uint64 deadline;
    }

    /// An EIP-2612 permit of the AIT token: lets the escrow or staking take `value` from
    /// `owner` with one signature instead of an approve transaction.
    #[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    struct Permit {
        /// Whose AIT.
        address owner;
        /// Who may take it (the escrow, or staking).
        address spender;
        /// How much.
        uint256 value;
        /// The owner's next nonce in the token (`nonces(owner)`).
        uint256 nonce;
        /// Unix seconds after which it cannot be applied.
        uint256 deadline;
    }

    /// A creator's registration of a model, which anyone may submit for it.
    #[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    struct Register {
        /// The model id.
        bytes32 model;
        /// The creator.
        address creator;
        /// Where royalties go.
        address payout;
        /// The creator's next nonce in the registry.
        uint256 nonce;
        /// Unix seconds after which it cannot be applied.
        uint256 deadline;
    }
}

/// Why a signature or key was refused.
#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    /// Not a 65-byte `r || s || v` signature, or no key recovers from it.
    #[error("bad signature: {0}")]
    Signature(String),
    /// Not a 32-byte secp256k1 secret key.
    #[error("bad key: {0}")]
    Key(String),
    /// Not an amount of AIT that can be paid.
    #[error("{0}")]
    Amount(String),
}

/// The EIP-712 domain of the escrow at `escrow` on chain `chain_id`.
pub fn escrow_domain(chain_id: u64, escrow: Address) -> Eip712Domain {
    eip712_domain! {
        name: "AI Torrent Escrow",
        version: "1",
        chain_id: chain_id,
        verifying_contract: escrow,
    }
}

/// The EIP-712 domain of the AIT token at `token` (its permits).
pub fn token_domain(chain_id: u64, token: Address) -> Eip712Domain {
    eip712_domain! {
        name: "AI Torrent",
        version: "1",
        chain_id: chain_id,
        verifying_contract: token,
    }
}

/// The EIP-712 domain of the model registry at `registry` on chain `chain_id`.
pub fn registry_domain(chain_id: u64, registry: Address) -> Eip712Domain {
    eip712_domain! {
        name: "AI Torrent ModelRegistry",
        version: "1",
        chain_id: chain_id,
        verifying_contract: registry,
    }
}

/// A secp256k1 key that signs EIP-712 messages: a tab's session key, or a node's EVM key.
#[derive(Clone)]
pub struct SessionKey(SigningKey);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionKey({})", self.address())
    }
}

impl SessionKey {
    /// A fresh random key.
    pub fn random() -> Self {
        let mut secret = [0u8; 32];
        loop {
            rand::fill(&mut secret);
            if let Ok(key) = Self::from_bytes(&secret) {
                return key;
            }
        }
    }

    /// The key whose secret is `secret` (32 bytes, big-endian).
    pub fn from_bytes(secret: &[u8]) -> Result<Self, SettleError> {
        SigningKey::from_slice(secret).map(Self).map_err(|e| SettleError::Key(e.to_string()))
    }

    /// The secret, to store the key.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes().into()
    }

    /// The EVM address of the key.
    pub fn address(&self) -> Address {
        Address::from_public_key(self.0.verifying_key())
    }

    /// Signs a 32-byte digest; the signature is low-s, as `ECDSA.recover` wants.
    pub fn sign_hash(&self, digest: &B256) -> Result<Signature, SettleError> {
        let (sig, recid) =
            self.0.sign_prehash_recoverable(digest.as_slice()).map_err(|e| SettleError::Signature(e.to_string()))?;
        Ok(Signature::from((sig, recid)))
    }

    /// Signs `message` under `domain`, as `eth_signTypedData_v4` would.
    pub fn sign<T: SolStruct>(&self, message: &T, domain: &Eip712Domain) -> Result<Signature, SettleError> {
        self.sign_hash(&message.eip712_signing_hash(domain))
    }
}

/// Who signed `message` under `domain`, from a 65-byte `r || s || v` signature.
pub fn recover_signer<T: SolStruct>(
    message: &T,
    domain: &Eip712Domain,
    signature: &[u8],
) -> Result<Address, SettleError> {
    let sig = Signature::try_from(signature).map_err(|e| SettleError::Signature(e.to_string()))?;
    // The escrow refuses high-s signatures (OpenZeppelin's ECDSA): refuse them here too, so a
    // voucher a node accepts is one the chain pays.
    if sig.normalize_s().is_some() {
        return Err(SettleError::Signature("high s".into()));
    }
    sig.recover_address_from_prehash(&message.eip712_signing_hash(domain))
        .map_err(|e| SettleError::Signature(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_primitives::{address, b256, U256};

    fn voucher() -> Voucher {
        Voucher {
            session: b256!("0101010101010101010101010101010101010101010101010101010101010101"),
            payer: address!("00000000000000000000000000000000000000aa"),
            node: address!("00000000000000000000000000000000000000bb"),
            model: B256::repeat_byte(7),
            cumulativeAmount: U256::from(1_000_000u64),
            cumulativeWork: U256::from(300u64),
            receipts: B256::repeat_byte(3),
            expiry: 2_000_000_000,
        }
    }

    #[test]
    fn a_signed_voucher_recovers_its_signer_and_nothing_else_does() {
        let key = SessionKey::from_bytes(&[0x11; 32]).unwrap();
        let domain = escrow_domain(31337, address!("5FbDB2315678afecb367f032d93F642f64180aa3"));
        let v = voucher();
        let sig = key.sign(&v, &domain).unwrap().as_bytes();
        assert_eq!(recover_signer(&v, &domain, &sig).unwrap(), key.address());

        // Any changed field, or another chain or escrow, recovers someone else.
        let mut more = v.clone();
        more.cumulativeAmount += U256::from(1u64);
        assert_ne!(recover_signer(&more, &domain, &sig).unwrap(), key.address());
        let mut other_receipts = v.clone();
        other_receipts.receipts = B256::repeat_byte(4);
        assert_ne!(recover_signer(&other_receipts, &domain, &sig).unwrap(), key.address());
        let other_chain = escrow_domain(1, address!("5FbDB2315678afecb367f032d93F642f64180aa3"));
        assert_ne!(recover_signer(&v, &other_chain, &sig).unwrap(), key.address());

        // A truncated signature and a high-s twin are refused.
        assert!(recover_signer(&v, &domain, &sig[..64]).is_err());
        let parsed = Signature::try_from(&sig[..]).unwrap();
        // secp256k1's group order.
        let n: U256 = "0xfffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141".parse().unwrap();
        let twin = Signature::new(parsed.r(), n - parsed.s(), !parsed.v());
        assert_eq!(twin.normalize_s(), Some(parsed));
        assert!(matches!(recover_signer(&v, &domain, &twin.as_bytes()), Err(SettleError::Signature(_))));
    }

    #[test]
    fn the_signed_types_are_the_contracts() {
        // Each type string is what the contract hashes into its typehash.
        let escrow = include_str!("../../../contracts/src/Escrow.sol");
        for t in
            [Voucher::eip712_encode_type(), AuthorizeSigner::eip712_encode_type(), Allocation::eip712_encode_type()]
        {
            assert!(escrow.contains(&format!("\"{t}\"")), "Escrow.sol does not hash {t}");
        }
        let registry = include_str!("../../../contracts/src/ModelRegistry.sol");
        let t = Register::eip712_encode_type();
        assert!(registry.contains(&format!("\"{t}\"")), "ModelRegistry.sol does not hash {t}");
    }
}
