//! Bounded concurrency with priorities (requests per registry endpoint,
//! blocking work in [`work`](crate::work)): a task may start only when a
//! slot is free and no task of a more urgent [`Purpose`] (by
//! [`Purpose::priority`]) is waiting, so on-demand reads overtake prefetch
//! and background fetches. Cancel-safe: a dropped waiter unregisters itself.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::purpose::Purpose;
use crate::urgency::Urgency;

#[derive(Debug, Default)]
struct GateState {
    in_use: usize,
    waiting: [usize; Purpose::PRIORITIES],
}

/// A priority-aware counting semaphore.
#[derive(Debug)]
pub struct PriorityGate {
    capacity: usize,
    state: Mutex<GateState>,
    notify: Notify,
}

/// A held slot; released on drop.
#[derive(Debug)]
pub struct GatePermit {
    gate: Arc<PriorityGate>,
}

impl Drop for GatePermit {
    fn drop(&mut self) {
        if let Ok(mut s) = self.gate.state.lock() {
            s.in_use = s.in_use.saturating_sub(1);
        }
        self.gate.notify.notify_waiters();
    }
}

struct WaitingGuard<'a> {
    gate: &'a PriorityGate,
    level: usize,
    registered: bool,
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        if self.registered {
            if let Ok(mut s) = self.gate.state.lock() {
                s.waiting[self.level] = s.waiting[self.level].saturating_sub(1);
            }
            // A less urgent waiter may now be allowed to go.
            self.gate.notify.notify_waiters();
        }
    }
}

impl PriorityGate {
    /// A gate with `capacity` slots (at least 1).
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity: capacity.max(1),
            state: Mutex::new(GateState::default()),
            notify: Notify::new(),
        })
    }

    /// Waits for a slot for a request of `purpose`.
    pub async fn acquire(self: &Arc<Self>, purpose: Purpose) -> GatePermit {
        self.acquire_raisable(purpose, None).await
    }

    /// Like [`Self::acquire`], but waits as on-demand from the moment
    /// `urgency` is raised (a reader waits for this request's result).
    pub async fn acquire_raisable(
        self: &Arc<Self>,
        purpose: Purpose,
        urgency: Option<&Urgency>,
    ) -> GatePermit {
        let level_now = || urgency.map_or(purpose, |u| u.effective(purpose)).priority();
        let mut guard = WaitingGuard {
            gate: self,
            level: level_now(),
            registered: false,
        };
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let Ok(mut s) = self.state.lock() else {
                    // A poisoned lock means a panic elsewhere; do not block forever.
                    return GatePermit { gate: self.clone() };
                };
                let level = level_now();
                if guard.registered && level != guard.level {
                    s.waiting[guard.level] -= 1;
                    s.waiting[level] += 1;
                }
                guard.level = level;
                let more_urgent_waiting = s.waiting[..level].iter().any(|w| *w > 0);
                if s.in_use < self.capacity && !more_urgent_waiting {
                    s.in_use += 1;
                    if guard.registered {
                        s.waiting[level] -= 1;
                        guard.registered = false;
                    }
                    return GatePermit { gate: self.clone() };
                }
                if !guard.registered {
                    s.waiting[level] += 1;
                    guard.registered = true;
                }
            }
            match urgency.filter(|u| !u.is_raised()) {
                Some(u) => {
                    tokio::select! {
                        () = notified.as_mut() => {}
                        () = u.raised() => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Slots currently held (for tests and metrics).
    pub fn in_use(&self) -> usize {
        self.state.lock().map(|s| s.in_use).unwrap_or(0)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn on_demand_overtakes_background() {
        let gate = PriorityGate::new(1);
        let held = gate.acquire(Purpose::Background).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // Background waiters queue first, then one on-demand waiter.
        for (i, p) in [Purpose::Background, Purpose::Background, Purpose::OnDemand]
            .into_iter()
            .enumerate()
        {
            let (g, o) = (gate.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _p = g.acquire(p).await;
                o.lock().unwrap().push(p);
            }));
            // Wait until this waiter is registered before starting the next.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while gate.state.lock().unwrap().waiting.iter().sum::<usize>() < i + 1 {
                assert!(tokio::time::Instant::now() < deadline);
                tokio::task::yield_now().await;
            }
        }
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap();
        assert_eq!(order[0], Purpose::OnDemand, "{order:?}");
        assert_eq!(order.len(), 3);
        assert_eq!(gate.in_use(), 0);
    }

    #[tokio::test]
    async fn a_raised_background_waiter_overtakes_waiting_prefetch() {
        let gate = PriorityGate::new(1);
        let held = gate.acquire(Purpose::Background).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let urgency = Urgency::new();
        let waiters = [
            ("prefetch", Purpose::Prefetch, None),
            ("raised", Purpose::Background, Some(urgency.clone())),
        ];
        let mut tasks = Vec::new();
        for (i, (name, purpose, u)) in waiters.into_iter().enumerate() {
            let (g, o) = (gate.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _p = g.acquire_raisable(purpose, u.as_ref()).await;
                o.lock().unwrap().push(name);
            }));
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while gate.state.lock().unwrap().waiting.iter().sum::<usize>() < i + 1 {
                assert!(tokio::time::Instant::now() < deadline);
                tokio::task::yield_now().await;
            }
        }
        urgency.raise();
        // The raised waiter moves to the on-demand queue before the slot frees.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while gate.state.lock().unwrap().waiting[0] != 1 {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::task::yield_now().await;
        }
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["raised", "prefetch"]);
        assert_eq!(gate.state.lock().unwrap().waiting, [0, 0, 0]);
    }

    #[tokio::test]
    async fn cancelled_waiter_unregisters() {
        let gate = PriorityGate::new(1);
        let held = gate.acquire(Purpose::Background).await;
        let waiter = gate.acquire(Purpose::OnDemand);
        // Poll once so it registers, then drop it.
        assert!(
            tokio::time::timeout(Duration::from_millis(1), waiter)
                .await
                .is_err()
        );
        drop(held);
        // A background request must not be blocked by the vanished on-demand one.
        let p =
            tokio::time::timeout(Duration::from_secs(5), gate.acquire(Purpose::Background)).await;
        assert!(p.is_ok());
    }
}
