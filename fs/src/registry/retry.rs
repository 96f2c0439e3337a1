//! Retry policy: which failures are worth retrying, and exponential backoff
//! with jitter (derived from the clock, so no RNG dependency) that honours
//! `Retry-After` (seconds or an HTTP-date).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Backoff settings.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    /// Delay before the first retry.
    pub min: Duration,
    /// Largest delay.
    pub max: Duration,
    /// Retries after the first attempt.
    pub max_retries: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            min: Duration::from_millis(30),
            max: Duration::from_secs(10),
            max_retries: 5,
        }
    }
}

impl Backoff {
    /// Delay before retry number `attempt` (0-based): min·2^attempt with up
    /// to 100 % jitter, capped at max; a server's Retry-After wins if longer.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let base = self.min.saturating_mul(1u32 << attempt.min(20));
        let jitter = base.mul_f64(jitter_fraction(attempt));
        // Saturating: a configured min near Duration::MAX must not panic.
        let d = base.saturating_add(jitter).min(self.max);
        match retry_after {
            Some(r) => r.min(self.max).max(d),
            None => d,
        }
    }
}

/// Whether an HTTP status is worth retrying (429 and 5xx except 501).
pub fn retryable_status(status: u16) -> bool {
    status == 429 || (500..600).contains(&status) && status != 501
}

/// Parses `Retry-After`: delay seconds, or an HTTP-date (a date in the
/// past means no wait).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// A number in [0, 1) that differs between calls and callers.
fn jitter_fraction(salt: u32) -> f64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    // splitmix64 finaliser over time and salt.
    let mut x = (nanos as u64) ^ (u64::from(salt) << 32) ^ 0x9E37_79B9_7F4A_7C15;
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let b = Backoff {
            min: Duration::from_millis(10),
            max: Duration::from_millis(500),
            max_retries: 5,
        };
        let d0 = b.delay(0, None);
        assert!(d0 >= Duration::from_millis(10) && d0 < Duration::from_millis(20));
        let huge = Backoff {
            min: Duration::MAX,
            max: Duration::MAX,
            max_retries: 5,
        };
        assert_eq!(huge.delay(3, None), Duration::MAX);
        let d3 = b.delay(3, None);
        assert!(d3 >= Duration::from_millis(80) && d3 < Duration::from_millis(160));
        assert_eq!(b.delay(30, None), Duration::from_millis(500));
        assert_eq!(
            b.delay(0, Some(Duration::from_millis(300))),
            Duration::from_millis(300)
        );
        assert_eq!(
            b.delay(0, Some(Duration::from_secs(100))),
            Duration::from_millis(500)
        );
    }

    #[test]
    fn retryable_statuses() {
        assert!(retryable_status(429) && retryable_status(500) && retryable_status(503));
        assert!(!retryable_status(501) && !retryable_status(404) && !retryable_status(401));
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO),
            "a date in the past: retry at once"
        );
        let soon = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        let d = parse_retry_after(&soon).unwrap();
        assert!(
            d > Duration::from_secs(110) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
