//! The freeze gate of a mount handed over to a successor process.
//!
//! Handing a live FUSE connection over means the open-file table must stop
//! changing and no reply may be lost. Once frozen, handlers that would change
//! the table (open, release) and replies still waiting on data leave their
//! request unanswered: it stays in the kernel's processing queue of the
//! connection, and the successor asks the kernel to resend it
//! (`FUSE_NOTIFY_RESEND`). [`FreezeGate::freeze_and_wait`] returns once every
//! such handler that entered before the freeze is done.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Counts handlers in flight and refuses new ones once frozen.
#[derive(Debug)]
pub struct FreezeGate {
    /// (frozen, handlers inside)
    state: Mutex<(bool, usize)>,
    idle: Condvar,
    frozen_tx: tokio::sync::watch::Sender<bool>,
}

impl Default for FreezeGate {
    fn default() -> Self {
        FreezeGate {
            state: Mutex::new((false, 0)),
            idle: Condvar::new(),
            frozen_tx: tokio::sync::watch::Sender::new(false),
        }
    }
}

/// Proof of being inside the gate; leaving on drop.
#[derive(Debug)]
pub struct Pass(Arc<FreezeGate>);

impl Drop for Pass {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.1 = st.1.saturating_sub(1);
        if st.1 == 0 {
            self.0.idle.notify_all();
        }
    }
}

impl FreezeGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, (bool, usize)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Enters unless frozen.
    pub fn enter(self: &Arc<Self>) -> Option<Pass> {
        let mut st = self.lock();
        if st.0 {
            return None;
        }
        st.1 += 1;
        Some(Pass(self.clone()))
    }

    /// Whether the mount was handed over.
    pub fn is_frozen(&self) -> bool {
        self.lock().0
    }

    /// Resolves once the gate is frozen.
    pub async fn frozen(&self) {
        let mut rx = self.frozen_tx.subscribe();
        let _ = rx.wait_for(|f| *f).await;
    }

    /// Freezes and waits (at most `grace`) for the handlers inside to
    /// leave; false when some were still inside at the deadline.
    pub fn freeze_and_wait(&self, grace: Duration) -> bool {
        let deadline = Instant::now() + grace;
        let mut st = self.lock();
        st.0 = true;
        self.frozen_tx.send_replace(true);
        while st.1 > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            st = self
                .idle
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

/// A reply that is left unanswered (not failed) if it is dropped after the
/// freeze, e.g. when the runtime shuts down under a pending read: fuser
/// answers EIO for a dropped reply, which would reach the application.
pub struct Held<R> {
    reply: Option<R>,
    gate: Arc<FreezeGate>,
}

impl<R> Held<R> {
    /// Wraps `reply`.
    pub fn new(reply: R, gate: Arc<FreezeGate>) -> Self {
        Held {
            reply: Some(reply),
            gate,
        }
    }

    /// The reply, to answer it now.
    pub fn take(mut self) -> Option<R> {
        self.reply.take()
    }
}

impl<R> Drop for Held<R> {
    fn drop(&mut self) {
        if let Some(reply) = self.reply.take()
            && self.gate.is_frozen()
        {
            std::mem::forget(reply);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freeze_waits_for_handlers_inside_and_refuses_new_ones() {
        let gate = Arc::new(FreezeGate::default());
        let pass = gate.enter().expect("open gate");
        assert!(!gate.freeze_and_wait(Duration::from_millis(10)));
        assert!(gate.enter().is_none());
        let g = gate.clone();
        let t = std::thread::spawn(move || g.freeze_and_wait(Duration::from_secs(20)));
        drop(pass);
        assert!(t.join().expect("thread"));
    }

    #[test]
    fn a_held_reply_dropped_after_the_freeze_is_not_dropped() {
        struct Loud(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Loud {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let gate = Arc::new(FreezeGate::default());
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        drop(Held::new(Loud(dropped.clone()), gate.clone()));
        assert!(dropped.load(std::sync::atomic::Ordering::SeqCst));
        dropped.store(false, std::sync::atomic::Ordering::SeqCst);
        gate.freeze_and_wait(Duration::ZERO);
        drop(Held::new(Loud(dropped.clone()), gate));
        assert!(!dropped.load(std::sync::atomic::Ordering::SeqCst));
    }
}
