//! The audit's metric: per token, the distance between a claimed and a recomputed output of
//! a block range, relative to what the block adds to its input.
//!
//! For input `x`, the auditor's output `r` and the node's claimed output `c`, the error of
//! the claimed delta `c - x` against the recomputed delta `r - x` is
//! `|c - r| / |r - x|` (Euclidean norms over the hidden dimension). It is 0 for identical
//! outputs, exactly 1 for a node that returns its input unchanged, and scale-free, so one
//! limit serves every layer range and model size.

/// Above this deviation (see [`deviation`]) a token's output is not the honest computation.
///
/// From `ait calibrate` on this project's CPU backends (2-core VM, CPU backend vs wgpu on
/// Mesa's lavapipe, decode steps vs one prefill, SmolLM2-135M Q4_1 and a generated
/// Q8_0 model of another shape): the honest worst case stays far under it and the mildest
/// fault measured (noise of 1e-3 of the output's size) far over it; the numbers and the
/// margin are in `docs/ARCHITECTURE.md` ("Trust").
pub const DELTA_LIMIT: f32 = 1e-4;

/// How far a claimed output is from the recomputed one, over the tokens of one step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Deviation {
    /// The largest per-token deviation (infinite for a non-finite claimed value).
    pub worst: f32,
    /// The token (row) where it is.
    pub worst_token: usize,
    /// The mean per-token deviation.
    pub mean: f32,
}

impl Deviation {
    /// Whether every token is within `limit`.
    pub fn within(&self, limit: f32) -> bool {
        self.worst <= limit
    }
}

/// Inputs [`deviation`] cannot compare.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CompareError {
    /// The hidden size is zero.
    #[error("hidden size is zero")]
    NoHidden,
    /// The three arrays are not all `[n_tokens, hidden]` for the same `n_tokens >= 1`.
    #[error("shapes differ: input {input}, recomputed {reference}, claimed {claimed} values for hidden size {hidden}")]
    Shape {
        /// Length of the input.
        input: usize,
        /// Length of the recomputed output.
        reference: usize,
        /// Length of the claimed output.
        claimed: usize,
        /// The hidden size.
        hidden: usize,
    },
}

/// The per-token deviation of `claimed` from `reference` relative to the block's delta
/// `reference - input` (all `[n_tokens, hidden]`, row-major), see the module docs.
///
/// A token whose recomputed delta is zero deviates by 0 when the claim is identical and by
/// infinity otherwise; a claimed NaN or infinity deviates by infinity.
pub fn deviation(input: &[f32], reference: &[f32], claimed: &[f32], hidden: usize) -> Result<Deviation, CompareError> {
    if hidden == 0 {
        return Err(CompareError::NoHidden);
    }
    let n = input.len();
    if n == 0 || !n.is_multiple_of(hidden) || reference.len() != n || claimed.len() != n {
        return Err(CompareError::Shape { input: n, reference: reference.len(), claimed: claimed.len(), hidden });
    }
    let (mut worst, mut worst_token, mut sum) = (0.0f64, 0, 0.0f64);
    let rows = input.chunks_exact(hidden).zip(reference.chunks_exact(hidden)).zip(claimed.chunks_exact(hidden));
    for (t, ((x, r), c)) in rows.enumerate() {
        let (mut off, mut delta) = (0.0f64, 0.0f64);
        for ((&x, &r), &c) in x.iter().zip(r).zip(c) {
            off += (f64::from(c) - f64::from(r)).powi(2);
            delta += (f64::from(r) - f64::from(x)).powi(2);
        }
        let d = if !off.is_finite() {
            f64::INFINITY
        } else if delta == 0.0 {
            if off == 0.0 {
                0.0
            } else {
                f64::INFINITY
            }
        } else {
            (off / delta).sqrt()
        };
        if d > worst || t == 0 {
            worst = d;
            worst_token = t;
        }
        sum += d;
    }
    let tokens = (n / hidden) as f64;
    Ok(Deviation { worst: worst as f32, worst_token, mean: (sum / tokens) as f32 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_is_zero_and_the_input_returned_is_one() {
        let x = [1.0, 2.0, 3.0, 4.0];
        let r = [1.5, 2.0, 2.0, 4.5];
        assert_eq!(deviation(&x, &r, &r, 2).unwrap().worst, 0.0);
        let d = deviation(&x, &r, &x, 2).unwrap();
        assert!((d.worst - 1.0).abs() < 1e-6, "{d:?}");
    }

    #[test]
    fn relative_to_the_delta_not_the_output() {
        // A residual of 100 and a delta of 1: an error of 0.1 is 10% of what the block did.
        let x = [100.0, 0.0];
        let r = [101.0, 0.0];
        let c = [101.1, 0.0];
        let d = deviation(&x, &r, &c, 2).unwrap();
        assert!((d.worst - 0.1).abs() < 1e-4, "{d:?}");
    }

    #[test]
    fn the_worst_token_is_named_and_the_mean_kept() {
        let x = [0.0; 6];
        let r = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0];
        let c = [1.0, 0.0, 1.0, 0.5, 1.0, 0.1];
        let d = deviation(&x, &r, &c, 2).unwrap();
        assert_eq!(d.worst_token, 1);
        assert!((d.worst - 0.5).abs() < 1e-6 && (d.mean - 0.2).abs() < 1e-6, "{d:?}");
        assert!(!d.within(DELTA_LIMIT) && Deviation { worst: DELTA_LIMIT, ..d }.within(DELTA_LIMIT));
    }

    #[test]
    fn non_finite_claims_and_zero_deltas() {
        let x = [1.0, 1.0];
        assert_eq!(deviation(&x, &[2.0, 1.0], &[f32::NAN, 1.0], 2).unwrap().worst, f32::INFINITY);
        assert_eq!(deviation(&x, &[2.0, 1.0], &[f32::INFINITY, 1.0], 2).unwrap().worst, f32::INFINITY);
        assert_eq!(deviation(&x, &x, &x, 2).unwrap().worst, 0.0);
        assert_eq!(deviation(&x, &x, &[1.0, 1.5], 2).unwrap().worst, f32::INFINITY);
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert_eq!(deviation(&[1.0], &[1.0], &[1.0], 0), Err(CompareError::NoHidden));
        assert!(deviation(&[], &[], &[], 2).is_err());
        assert!(deviation(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0], 2).is_err());
        assert!(deviation(&[1.0, 2.0], &[1.0, 2.0], &[1.0], 2).is_err());
    }
}
