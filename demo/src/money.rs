//! Amounts as integer cents: sums and differences are exact, the JSON carries decimals.

/// Parses a JSON decimal amount into cents. `None` for negative, non-finite or
/// sub-cent amounts (`19.901`), and for amounts too large to sum safely.
///
/// # Examples
///
/// ```
/// use reactive_lock_demo::money::{cents_from_decimal, decimal_from_cents};
/// assert_eq!(cents_from_decimal(19.90), Some(1990));
/// assert_eq!(cents_from_decimal(19.901), None);
/// assert_eq!(cents_from_decimal(-1.0), None);
/// assert_eq!(decimal_from_cents(1990), 19.9);
/// ```
pub fn cents_from_decimal(amount: f64) -> Option<i64> {
    if !amount.is_finite() || !(0.0..=1e12).contains(&amount) {
        return None;
    }
    let cents = (amount * 100.0).round();
    // A binary double cannot hold 19.90 exactly: accept what rounds to a cent within a
    // tolerance far below one cent.
    if (amount * 100.0 - cents).abs() > 1e-6 {
        return None;
    }
    Some(cents as i64)
}

/// Cents as the decimal the JSON APIs carry.
///
/// # Examples
///
/// ```
/// assert_eq!(reactive_lock_demo::money::decimal_from_cents(5), 0.05);
/// ```
pub fn decimal_from_cents(cents: i64) -> f64 {
    cents as f64 / 100.0
}
