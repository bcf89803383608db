//! Which sessions a client audits: drawn after the receipts exist, from a secret the node
//! never sees, so a node cannot tell which of its sessions will be checked; who gives the
//! second opinions when an audit fails; and how the opinions make a verdict.

use libp2p::PeerId;

use super::receipt::SignedReceipt;

/// Opinions that decide a verdict: a node is judged faulty when this many auditors fail it,
/// and cleared when this many pass it (of at most [`MAX_OPINIONS`]).
pub const QUORUM: usize = 2;

/// Auditors asked at most about one audited session: the first, and two second opinions.
pub const MAX_OPINIONS: usize = 3;

/// Share of hop sessions a client audits unless told otherwise (`ait --audit-rate`, a tab's
/// `?audit=`). At 5%, audits replay one session in 20 up to a random step, as one prefill:
/// between half of 5% and 5% more work for the swarm, with second opinions and fraud-report
/// recomputations on top only when an audit fails. A cheater that lies from a session's
/// first step is caught within 59 sessions with 95% odds, and the slash covers the S/r
/// steps a cheater that lies only in a session's last step serves before its first verdict
/// (docs/ARCHITECTURE.md, "Why cheating loses money").
pub const DEFAULT_AUDIT_RATE: f64 = 0.05;

/// An audit rate as a user writes it (`0.05`, `1`, `0`): a share between 0 and 1, or
/// `None`.
pub fn parse_rate(s: &str) -> Option<f64> {
    s.trim().parse::<f64>().ok().filter(|r| (0.0..=1.0).contains(r))
}

/// What the opinions about one audited session come to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The first auditor passed it, or [`QUORUM`] auditors did.
    Passed,
    /// [`QUORUM`] auditors failed it.
    Faulty,
    /// One auditor failed it and no quorum either way could be had (too few other servers
    /// of those layers answered): nobody is judged.
    Unconfirmed,
}

impl Verdict {
    /// The verdict of opinions given in order (`true`: passed), the first auditor's first:
    /// the first auditor alone clears a node; a failure needs [`QUORUM`] to agree.
    pub fn of(passed: &[bool]) -> Verdict {
        let passes = passed.iter().filter(|p| **p).count();
        let fails = passed.len() - passes;
        if fails >= QUORUM {
            Verdict::Faulty
        } else if passed.first() == Some(&true) || passes >= QUORUM {
            Verdict::Passed
        } else {
            Verdict::Unconfirmed
        }
    }

    /// Whether the opinions so far (`true`: passed) settle the verdict, so no more auditors
    /// are asked.
    pub fn settled(passed: &[bool]) -> bool {
        passed.len() >= MAX_OPINIONS || Verdict::of(passed) != Verdict::Unconfirmed
    }

    /// Its name in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Passed => "passed",
            Verdict::Faulty => "faulty",
            Verdict::Unconfirmed => "unconfirmed",
        }
    }
}

/// The order in which servers are asked for a second opinion about the session that
/// `signed` ends: by a hash of the audited node's own signature and each server's id. The
/// accuser cannot choose it (it cannot change what the node signed) and anyone who knows
/// the servers of those layers can check it.
pub fn second_opinion_rank(signed: &SignedReceipt, server: &PeerId) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"ait second opinion v1");
    h.update(&signed.signature);
    h.update(&server.to_bytes());
    *h.finalize().as_bytes()
}

/// A client's audit draw: a rate and a secret.
#[derive(Clone)]
pub struct AuditDraw {
    /// Share of sessions audited, 0 to 1.
    pub rate: f64,
    secret: [u8; 32],
}

impl std::fmt::Debug for AuditDraw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditDraw").field("rate", &self.rate).finish_non_exhaustive()
    }
}

impl AuditDraw {
    /// A draw at `rate` with a random secret.
    pub fn new(rate: f64) -> AuditDraw {
        AuditDraw::seeded(rate, rand::random())
    }

    /// A draw at `rate` with the given secret (tests make their draws repeatable with it).
    pub fn seeded(rate: f64, secret: [u8; 32]) -> AuditDraw {
        AuditDraw { rate: rate.clamp(0.0, 1.0), secret }
    }

    /// Whether the session of `receipts` (one node's, in order) is audited, and if so the
    /// index of the step up to whose end it is replayed (every step up to it is checked by
    /// that one replay). Keyed by the secret, the session's id and the last receipt's
    /// signature: fixed once the session's answers are signed, unknown to the node before.
    pub fn draw(&self, receipts: &[SignedReceipt]) -> Option<usize> {
        let last = receipts.last()?;
        let mut h = blake3::Hasher::new_keyed(&self.secret);
        h.update(&last.receipt.session);
        h.update(&last.signature);
        let out = h.finalize();
        let b = out.as_bytes();
        let pick = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
        // A uniform draw in [0, 1) against the rate; 1.0 audits every session.
        if (pick >> 11) as f64 / (1u64 << 53) as f64 >= self.rate {
            return None;
        }
        let at = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"));
        Some((at % receipts.len() as u64) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_is_a_share_between_0_and_1() {
        assert_eq!(parse_rate("0"), Some(0.0));
        assert_eq!(parse_rate("1"), Some(1.0));
        assert_eq!(parse_rate(" 0.05 "), Some(0.05));
        for bad in ["", "x", "-0.1", "1.5", "NaN", "inf"] {
            assert_eq!(parse_rate(bad), None, "{bad}");
        }
    }
    use crate::model::ModelId;
    use crate::trust::Receipt;

    fn session(i: u8, steps: u32) -> Vec<SignedReceipt> {
        (0..steps)
            .map(|s| SignedReceipt {
                receipt: Receipt {
                    session: [i; 32],
                    model: ModelId([0; 32]),
                    start: 0,
                    end: 10,
                    pos: s,
                    n_tokens: 1,
                    inputs: [s as u8; 32],
                    output: [0; 32],
                },
                signature: vec![i, s as u8],
            })
            .collect()
    }

    #[test]
    fn the_rate_holds_and_the_step_is_any_of_the_session() {
        let draw = AuditDraw::seeded(0.25, [9; 32]);
        let drawn: Vec<usize> = (0..=255u8).filter_map(|i| draw.draw(&session(i, 7))).collect();
        // 256 sessions at 25%: 64 expected; a binomial's 4 sigma is about 28.
        assert!((36..=92).contains(&drawn.len()), "{} of 256", drawn.len());
        assert!(drawn.iter().all(|&k| k < 7));
        assert!((0..7).all(|k| drawn.contains(&k)), "{drawn:?}");
        assert_eq!(AuditDraw::seeded(0.0, [9; 32]).draw(&session(1, 3)), None);
        assert!((0..=255u8).all(|i| AuditDraw::seeded(1.0, [9; 32]).draw(&session(i, 3)).is_some()));
        assert_eq!(draw.draw(&[]), None);
    }

    #[test]
    fn a_failure_needs_a_quorum_and_the_first_pass_clears() {
        use Verdict::*;
        let cases: [(&[bool], Verdict, bool); 8] = [
            (&[true], Passed, true),
            (&[false], Unconfirmed, false),
            (&[false, false], Faulty, true),
            (&[false, true], Unconfirmed, false),
            (&[false, true, true], Passed, true),
            (&[false, true, false], Faulty, true),
            (&[false, false, true], Faulty, true),
            (&[], Unconfirmed, false),
        ];
        for (opinions, verdict, settled) in cases {
            assert_eq!(Verdict::of(opinions), verdict, "{opinions:?}");
            assert_eq!(Verdict::settled(opinions), settled, "{opinions:?}");
        }
    }

    #[test]
    fn second_opinions_are_ordered_by_what_the_node_signed() {
        let peers: Vec<PeerId> = (0..6).map(|_| PeerId::random()).collect();
        let order = |signed: &SignedReceipt| {
            let mut p = peers.clone();
            p.sort_by_key(|peer| second_opinion_rank(signed, peer));
            p
        };
        let (a, b) = (&session(1, 3)[2], &session(2, 3)[2]);
        assert_eq!(order(a), order(a));
        assert_ne!(order(a), order(b), "another signature, another order");
    }

    #[test]
    fn another_secret_draws_other_sessions() {
        let a = AuditDraw::seeded(0.5, [1; 32]);
        let b = AuditDraw::seeded(0.5, [2; 32]);
        let differ = (0..=63u8).filter(|&i| a.draw(&session(i, 5)).is_some() != b.draw(&session(i, 5)).is_some());
        assert!(differ.count() > 10);
        assert!(!format!("{a:?}").contains("secret"));
    }
}
