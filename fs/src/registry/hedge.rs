//! Hedged requests: an on-demand request that has not answered within a few
//! times the usual time to the response head is sent a second time, and the
//! first answer wins. A registry connection that hangs then costs the hedge
//! delay instead of the whole request timeout.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Times the usual latency a request may take before it is hedged.
const HEDGE_FACTOR: u32 = 4;

/// Moving average of the time to the response head.
#[derive(Debug, Default)]
pub(crate) struct Latency {
    micros: AtomicU64,
}

impl Latency {
    /// Folds one observed time to the response head into the average (1/8 weight).
    pub(crate) fn record(&self, took: Duration) {
        let took = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let _ = self
            .micros
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(if old == 0 {
                    took
                } else {
                    old - old / 8 + took / 8
                })
            });
    }

    /// How long to wait before hedging: a few times the usual latency,
    /// within `[floor, cap]`.
    pub(crate) fn hedge_after(&self, floor: Duration, cap: Duration) -> Duration {
        let usual = Duration::from_micros(self.micros.load(Ordering::Relaxed));
        (usual * HEDGE_FACTOR).max(floor).min(cap.max(floor))
    }
}

/// Sends `request`; when `after` is given and no answer came by then, sends
/// a copy too (calling `on_hedge`) and returns the first answer, or the
/// other one's result if the first to finish failed.
pub(crate) async fn send(
    request: reqwest::RequestBuilder,
    after: Option<Duration>,
    on_hedge: impl FnOnce(),
) -> reqwest::Result<reqwest::Response> {
    let Some((after, copy)) = after.and_then(|a| Some((a, request.try_clone()?))) else {
        return request.send().await;
    };
    let first = request.send();
    tokio::pin!(first);
    tokio::select! {
        r = &mut first => return r,
        () = tokio::time::sleep(after) => {}
    }
    on_hedge();
    let second = copy.send();
    tokio::pin!(second);
    tokio::select! {
        r = &mut first => match r {
            Ok(resp) => Ok(resp),
            Err(_) => second.await,
        },
        r = &mut second => match r {
            Ok(resp) => Ok(resp),
            Err(_) => first.await,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hedge_delay_follows_the_usual_latency_within_bounds() {
        let l = Latency::default();
        let (floor, cap) = (Duration::from_millis(50), Duration::from_secs(1));
        assert_eq!(l.hedge_after(floor, cap), floor, "nothing seen yet");
        l.record(Duration::from_millis(40));
        assert_eq!(l.hedge_after(floor, cap), Duration::from_millis(160));
        for _ in 0..100 {
            l.record(Duration::from_secs(2));
        }
        assert_eq!(l.hedge_after(floor, cap), cap);
    }
}
