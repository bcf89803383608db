//! Which sessions a client audits: drawn after the receipts exist, from a secret the node
//! never sees, so a node cannot tell which of its sessions will be checked.

use super::receipt::SignedReceipt;

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
    fn another_secret_draws_other_sessions() {
        let a = AuditDraw::seeded(0.5, [1; 32]);
        let b = AuditDraw::seeded(0.5, [2; 32]);
        let differ = (0..=63u8).filter(|&i| a.draw(&session(i, 5)).is_some() != b.draw(&session(i, 5)).is_some());
        assert!(differ.count() > 10);
        assert!(!format!("{a:?}").contains("secret"));
    }
}
