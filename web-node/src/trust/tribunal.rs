//! Verdicts for the chain: the EIP-712 message a node signs with its EVM key after it
//! recomputed a fraud report, as `contracts/src/Tribunal.sol` hashes it. Two or three staked
//! judges' faulty verdicts open a case against the accused's stake; on appeal, a jury drawn by
//! the chain signs verdicts either way and its majority decides (see docs/ARCHITECTURE.md,
//! "Slashing").
//!
//! A verdict names the report's id ([`FraudReport::id`](super::FraudReport::id)), the accused's
//! EVM address and the libp2p peer id that address bound in `Staking` (the tribunal checks the
//! binding, so a verdict cannot be pointed at another node's stake).

use alloy_primitives::{Address, Bytes, B256};
use alloy_sol_types::{eip712_domain, sol, Eip712Domain};
use libp2p::PeerId;

use super::report::{Checked, Judgment};
use crate::settle::{recover_signer, SessionKey, SettleError};

sol! {
    /// A judge's or juror's verdict on one fraud report.
    #[derive(Debug, PartialEq, Eq)]
    struct Verdict {
        /// The report's id.
        bytes32 report;
        /// The accused's EVM address.
        address accused;
        /// The libp2p peer id (its bytes) that address bound in `Staking`.
        bytes accusedPeer;
        /// Whether the accused's answers are off the honest computation of its layers.
        bool faulty;
    }
}

/// The EIP-712 domain of the tribunal at `tribunal` on chain `chain_id`.
pub fn tribunal_domain(chain_id: u64, tribunal: Address) -> Eip712Domain {
    eip712_domain! {
        name: "AI Torrent Tribunal",
        version: "1",
        chain_id: chain_id,
        verifying_contract: tribunal,
    }
}

/// A judge's signature of a verdict, as it travels back to whoever asked for it (the verdict
/// itself follows from the report and the address asked about).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedVerdict {
    /// The judge's EVM address.
    pub judge: Address,
    /// Its signature, `r || s || v`.
    pub signature: Bytes,
}

/// Length of a signature.
pub const SIGNATURE_BYTES: usize = 65;

impl SignedVerdict {
    /// Its bytes on the wire: the judge's address, then the signature.
    pub fn encode(&self) -> Vec<u8> {
        [self.judge.as_slice(), &self.signature].concat()
    }

    /// Reads [`SignedVerdict::encode`]'s bytes; `None` unless they are exactly that long.
    pub fn decode(b: &[u8]) -> Option<SignedVerdict> {
        (b.len() == 20 + SIGNATURE_BYTES).then(|| SignedVerdict {
            judge: Address::from_slice(&b[..20]),
            signature: Bytes::copy_from_slice(&b[20..]),
        })
    }

    /// Whether it is `verdict` signed by the judge it names, under `domain`.
    pub fn signs(&self, verdict: &Verdict, domain: &Eip712Domain) -> bool {
        verdict.signer(domain, &self.signature).is_ok_and(|a| a == self.judge)
    }
}

impl Verdict {
    /// The verdict on report `report` about the node `peer`, bound to `accused`.
    pub fn new(report: [u8; 32], accused: Address, peer: &PeerId, faulty: bool) -> Verdict {
        Verdict { report: B256::from(report), accused, accusedPeer: Bytes::from(peer.to_bytes()), faulty }
    }

    /// The verdict a node's own recomputation of a checked report (`judgment`) comes to, about
    /// the accused at `accused` (the address its peer id is bound to).
    pub fn of(checked: &Checked, judgment: &Judgment, accused: Address) -> Verdict {
        Verdict::new(checked.id, accused, &checked.accused, judgment.accused_faulty)
    }

    /// Signs it with `key` as the judge: what travels back to the node that asked.
    pub fn signed_by(&self, key: &SessionKey, domain: &Eip712Domain) -> Result<SignedVerdict, SettleError> {
        Ok(SignedVerdict { judge: key.address(), signature: self.sign(key, domain)? })
    }

    /// The accused's peer id, if the bytes are one.
    pub fn accused_peer(&self) -> Option<PeerId> {
        PeerId::from_bytes(&self.accusedPeer).ok()
    }

    /// Signs it with `key` for the tribunal of `domain`: 65 bytes, `r || s || v`.
    pub fn sign(&self, key: &SessionKey, domain: &Eip712Domain) -> Result<Bytes, SettleError> {
        Ok(Bytes::from(key.sign(self, domain)?.as_bytes().to_vec()))
    }

    /// Who signed it, from `signature`.
    pub fn signer(&self, domain: &Eip712Domain, signature: &[u8]) -> Result<Address, SettleError> {
        recover_signer(self, domain, signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_primitives::address;

    fn checked(accused: PeerId) -> Checked {
        Checked {
            id: [5; 32],
            accused,
            auditors: vec![],
            model: crate::model::ModelId([1; 32]),
            layers: 0..2,
            tokens: 3,
            worst: 1.0,
        }
    }

    #[test]
    fn a_verdict_names_the_report_the_accused_and_its_peer_and_recovers_its_signer() {
        let peer = PeerId::random();
        let judgment = Judgment { accused_faulty: true, worst: 0.5, lying_auditors: vec![] };
        let accused = address!("00000000000000000000000000000000000000cc");
        let v = Verdict::of(&checked(peer), &judgment, accused);
        assert_eq!(
            (v.report, v.accused, v.accused_peer(), v.faulty),
            (B256::repeat_byte(5), accused, Some(peer), true)
        );

        let key = SessionKey::random();
        let domain = tribunal_domain(31337, address!("00000000000000000000000000000000000000dd"));
        let sig = v.sign(&key, &domain).unwrap();
        assert_eq!(v.signer(&domain, &sig).unwrap(), key.address());
        // The other verdict, another accused, or another tribunal recovers someone else.
        let cleared = Verdict { faulty: false, ..v.clone() };
        assert_ne!(cleared.signer(&domain, &sig).unwrap(), key.address());
        let elsewhere = Verdict { accused: Address::ZERO, ..v.clone() };
        assert_ne!(elsewhere.signer(&domain, &sig).unwrap(), key.address());
        let other = tribunal_domain(31337, Address::ZERO);
        assert_ne!(v.signer(&other, &sig).unwrap(), key.address());

        // On the wire: the judge and its signature, checked against the verdict asked for.
        let signed = v.signed_by(&key, &domain).unwrap();
        assert_eq!(SignedVerdict::decode(&signed.encode()), Some(signed.clone()));
        assert!(signed.signs(&v, &domain) && !signed.signs(&cleared, &domain));
        let claimed = SignedVerdict { judge: Address::ZERO, ..signed.clone() };
        assert!(!claimed.signs(&v, &domain), "a signature claimed for another judge");
        assert_eq!(SignedVerdict::decode(&signed.encode()[1..]), None);
    }
}
