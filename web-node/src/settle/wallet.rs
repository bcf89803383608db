//! What a page asks of a wallet (EIP-1193): the JSON of `eth_signTypedData_v4` requests, and
//! the calldata of the few contract calls a tab makes, from the contracts' committed
//! artifacts (`contracts/artifacts/`, the same ABI the native bindings load).
#![allow(missing_docs, clippy::too_many_arguments)]

use alloy_dyn_abi::TypedData;
use alloy_primitives::{Address, Bytes, Signature, U256};
use alloy_sol_types::{sol, Eip712Domain, SolCall, SolStruct};

use super::SettleError;

sol!(AitToken, "../contracts/artifacts/AIT.json");
sol!(
    #[derive(Debug)]
    EscrowContract,
    "../contracts/artifacts/Escrow.json"
);

/// The `eth_signTypedData_v4` JSON of `message` under `domain` (what MetaMask and other
/// wallets show and sign; the second parameter of the request, as a string).
pub fn typed_data_json<T: SolStruct + serde::Serialize>(message: &T, domain: &Eip712Domain) -> String {
    let typed = TypedData::from_struct(message, Some(domain.clone()));
    serde_json::to_string(&typed).unwrap_or_default()
}

/// A wallet's 65-byte signature from its `0x` hex.
pub fn parse_signature(hex_sig: &str) -> Result<Signature, SettleError> {
    let bytes: Bytes = hex_sig.parse().map_err(|e| SettleError::Signature(format!("{e}")))?;
    Signature::try_from(&bytes[..]).map_err(|e| SettleError::Signature(e.to_string()))
}

/// Calldata of `AIT.balanceOf(who)`.
pub fn balance_of(who: Address) -> Bytes {
    AitToken::balanceOfCall { account: who }.abi_encode().into()
}

/// Calldata of `AIT.nonces(owner)` (the permit nonce).
pub fn token_nonce(owner: Address) -> Bytes {
    AitToken::noncesCall { owner }.abi_encode().into()
}

/// Calldata of `Escrow.nonces(owner)` (the nonce of `AuthorizeSigner`).
pub fn escrow_nonce(owner: Address) -> Bytes {
    EscrowContract::noncesCall { owner }.abi_encode().into()
}

/// Calldata of `Escrow.freeBalance(payer)`.
pub fn free_balance(payer: Address) -> Bytes {
    EscrowContract::freeBalanceCall { payer }.abi_encode().into()
}

/// Calldata of `Escrow.depositWithPermit` for a permit the payer's wallet signed.
pub fn deposit_with_permit(payer: Address, amount: U256, deadline: U256, permit: &Signature) -> Bytes {
    let (v, r, s) = super::permit_vrs(permit);
    EscrowContract::depositWithPermitCall { payer, amount, deadline, v, r, s }.abi_encode().into()
}

/// Calldata of `Escrow.thaw(node, amount)` (`node` zero: the free balance).
pub fn thaw(node: Address, amount: U256) -> Bytes {
    EscrowContract::thawCall { node, amount }.abi_encode().into()
}

/// Calldata of `Escrow.withdraw(node)` (`node` zero: the free balance).
pub fn withdraw(node: Address) -> Bytes {
    EscrowContract::withdrawCall { node }.abi_encode().into()
}

/// Calldata of `Escrow.authorizeSignerBySig` for a payer's signed authorization (anyone may
/// submit it: a seeding tab does before redeeming that payer's vouchers).
pub fn authorize_signer_by_sig(a: &super::SignedAuthorization) -> Bytes {
    let auth = &a.authorization;
    EscrowContract::authorizeSignerBySigCall {
        payer: auth.payer,
        signer: auth.signer,
        deadline: auth.deadline,
        signature: a.signature.clone(),
    }
    .abi_encode()
    .into()
}

/// Calldata of `Escrow.allocateBySig` for a payer's signed allocation.
pub fn allocate_by_sig(a: &super::SignedAllocation) -> Bytes {
    let al = &a.allocation;
    let allocation = Escrow::Allocation {
        payer: al.payer,
        node: al.node,
        cumulativeAllocated: al.cumulativeAllocated,
        deadline: al.deadline,
    };
    EscrowContract::allocateBySigCall { a: allocation, signature: a.signature.clone() }.abi_encode().into()
}

/// A voucher as the escrow's ABI types it.
fn contract_voucher(v: &super::Voucher) -> Escrow::Voucher {
    Escrow::Voucher {
        session: v.session,
        payer: v.payer,
        node: v.node,
        model: v.model,
        cumulativeAmount: v.cumulativeAmount,
        cumulativeWork: v.cumulativeWork,
        receipts: v.receipts,
        expiry: v.expiry,
    }
}

/// Calldata of `Escrow.redeemBatch` for `vouchers` (their signatures' `v` as 27 or 28, as the
/// ledger keeps them).
pub fn redeem_batch<'a>(vouchers: impl IntoIterator<Item = &'a super::SignedVoucher>) -> Bytes {
    let (vouchers, signatures) =
        vouchers.into_iter().map(|s| (contract_voucher(&s.voucher), s.signature.clone())).unzip();
    EscrowContract::redeemBatchCall { vouchers, signatures }.abi_encode().into()
}

/// Calldata of `Escrow.redeem` for one voucher.
pub fn redeem_one(v: &super::SignedVoucher) -> Bytes {
    EscrowContract::redeemCall { voucher: contract_voucher(&v.voucher), signature: v.signature.clone() }
        .abi_encode()
        .into()
}

/// Calldata of `Escrow.depositEarned(amount)`: earnings become deposit, to pay with.
pub fn deposit_earned(amount: U256) -> Bytes {
    EscrowContract::depositEarnedCall { amount }.abi_encode().into()
}

/// The escrow's error a revert's data names (`NothingToCollect(..)`, `Expired(..)`), if it is
/// one of the escrow's.
pub fn escrow_revert(data: &[u8]) -> Option<String> {
    use alloy_sol_types::SolInterface;
    EscrowContract::EscrowContractErrors::abi_decode(data).ok().map(|e| format!("{e:?}"))
}

/// Word `index` (from 0) of an `eth_call` result, as a number.
pub fn word(result: &str, index: usize) -> Result<U256, SettleError> {
    let bytes: Bytes = result.parse().map_err(|e| SettleError::Signature(format!("bad call result: {e}")))?;
    let at = index * 32;
    bytes
        .get(at..at + 32)
        .map(U256::from_be_slice)
        .ok_or_else(|| SettleError::Signature(format!("call result of {} bytes has no word {index}", bytes.len())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settle::{escrow_domain, AuthorizeSigner, SessionKey};
    use alloy_primitives::address;

    #[test]
    fn the_typed_data_a_wallet_signs_hashes_to_what_the_contract_checks() {
        let domain = escrow_domain(31337, address!("5FbDB2315678afecb367f032d93F642f64180aa3"));
        let auth = AuthorizeSigner {
            payer: address!("00000000000000000000000000000000000000aa"),
            signer: address!("00000000000000000000000000000000000000bb"),
            nonce: U256::from(3u64),
            deadline: U256::from(2_000_000_000u64),
        };
        let json = typed_data_json(&auth, &domain);
        let parsed: TypedData = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed.eip712_signing_hash().unwrap(), auth.eip712_signing_hash(&domain));
        assert_eq!(parsed.primary_type, "AuthorizeSigner");
        // A signature read back from hex is the one made.
        let key = SessionKey::from_bytes(&[7; 32]).unwrap();
        let sig = key.sign(&auth, &domain).unwrap();
        assert_eq!(parse_signature(&format!("0x{}", hex::encode(sig.as_bytes()))).unwrap(), sig);
    }
}
