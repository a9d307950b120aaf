//! ISO 8601 / RFC 3339 UTC timestamps as the Rinha APIs carry them, held as Unix milliseconds.

use chrono::{DateTime, SecondsFormat, Utc};

/// Milliseconds since the Unix epoch, now.
///
/// # Examples
///
/// ```
/// assert!(reactive_lock_demo::timestamp::now_ms() > 1_700_000_000_000);
/// ```
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// Formats Unix milliseconds as `2025-07-15T12:34:56.000Z`.
///
/// # Examples
///
/// ```
/// use reactive_lock_demo::timestamp::format_ms;
/// assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
/// ```
pub fn format_ms(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parses an RFC 3339 timestamp (any offset; `Z` for UTC) into Unix microseconds, so a
/// bound with sub-millisecond digits compares exactly against millisecond timestamps.
///
/// # Errors
///
/// A message naming the input when it is not RFC 3339.
///
/// # Examples
///
/// ```
/// use reactive_lock_demo::timestamp::parse_us;
/// assert_eq!(parse_us("1970-01-01T00:00:01.000Z"), Ok(1_000_000));
/// assert_eq!(parse_us("1970-01-01T01:00:00+01:00"), Ok(0));
/// assert!(parse_us("yesterday").is_err());
/// ```
pub fn parse_us(text: &str) -> Result<i64, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_micros())
        .map_err(|e| {
            format!(
                "invalid timestamp {text:?} (want RFC 3339, e.g. 2025-07-15T12:34:56.000Z): {e}"
            )
        })
}

/// An inclusive window of request times in milliseconds, from optional `from` / `to` bounds
/// given in microseconds: `[ceil(from), floor(to)]`, so a millisecond timestamp is inside
/// exactly when it lies between the exact bounds.
///
/// # Examples
///
/// ```
/// use reactive_lock_demo::timestamp::Window;
/// let w = Window::from_us(Some(1_500), Some(3_999));
/// assert_eq!((w.from_ms, w.to_ms), (2, 3));
/// assert!(w.contains(2) && w.contains(3) && !w.contains(4));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// First millisecond inside.
    pub from_ms: i64,
    /// Last millisecond inside.
    pub to_ms: i64,
}

impl Window {
    /// The window between optional bounds in microseconds (open ends reach the extremes).
    ///
    /// # Examples
    ///
    /// ```
    /// let all = reactive_lock_demo::timestamp::Window::from_us(None, None);
    /// assert!(all.contains(0) && all.contains(i64::MAX / 2));
    /// ```
    pub fn from_us(from_us: Option<i64>, to_us: Option<i64>) -> Window {
        Window {
            from_ms: from_us.map_or(i64::MIN / 2, |us| {
                us.div_euclid(1000) + i64::from(us.rem_euclid(1000) != 0)
            }),
            to_ms: to_us.map_or(i64::MAX / 2, |us| us.div_euclid(1000)),
        }
    }

    /// Whether the millisecond `ms` is inside.
    ///
    /// # Examples
    ///
    /// ```
    /// let w = reactive_lock_demo::timestamp::Window { from_ms: 1, to_ms: 1 };
    /// assert!(w.contains(1) && !w.contains(2));
    /// ```
    pub fn contains(&self, ms: i64) -> bool {
        self.from_ms <= ms && ms <= self.to_ms
    }
}
