//! AIT amounts as people write them (decimal, 18 places) and as the chain counts them (the
//! smallest unit), and the `(v, r, s)` form of a signature that EIP-2612 permits take.

use alloy_primitives::utils::{format_units, parse_units, ParseUnits};
use alloy_primitives::{Signature, B256, U256};

use super::SettleError;

/// A decimal amount of AIT (`12.5`) in the smallest unit; more than 0.
pub fn parse_ait(amount: &str) -> Result<U256, SettleError> {
    match parse_units(amount.trim(), 18)
        .map_err(|e| SettleError::Amount(format!("{amount:?} is not an amount of AIT: {e}")))?
    {
        ParseUnits::U256(v) if !v.is_zero() => Ok(v),
        _ => Err(SettleError::Amount(format!("{amount:?}: the amount must be more than 0 AIT"))),
    }
}

/// The smallest unit as decimal AIT, without trailing zeros (`12.5`, `7`).
pub fn format_ait(amount: U256) -> String {
    match format_units(amount, 18) {
        Ok(s) if s.contains('.') => s.trim_end_matches('0').trim_end_matches('.').to_string(),
        Ok(s) => s,
        Err(_) => amount.to_string(),
    }
}

/// The smallest unit as a float of whole AIT, for weighing and gauges (exact amounts stay
/// `U256`).
pub fn ait_f64(amount: U256) -> f64 {
    f64::from(amount) / 1e18
}

/// A signature as a permit's `v` (27 or 28), `r` and `s`.
pub fn permit_vrs(sig: &Signature) -> (u8, B256, B256) {
    (27 + sig.v() as u8, B256::from(sig.r()), B256::from(sig.s()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_read_and_print_as_people_write_them() {
        let unit = U256::from(10u64).pow(U256::from(18u64));
        assert_eq!(parse_ait("12.5").unwrap(), unit * U256::from(25u64) / U256::from(2u64));
        assert_eq!(format_ait(unit * U256::from(25u64) / U256::from(2u64)), "12.5");
        assert_eq!(format_ait(unit * U256::from(7u64)), "7");
        assert_eq!(format_ait(U256::ZERO), "0");
        for bad in ["0", "-5", "abc", ""] {
            assert!(parse_ait(bad).is_err(), "{bad}");
        }
    }
}
