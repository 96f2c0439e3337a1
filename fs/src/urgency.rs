//! [`Urgency`]: prefetch or background work that a reader can make urgent
//! once it waits for the same bytes.
//!
//! A chunk is fetched once for every caller (the chunk cache is
//! single-flight), so an on-demand read of a chunk that a background window
//! already has in flight waits for that window: for its request queued
//! behind other background requests, for its decoding queued behind other
//! background tasks, and for a thread running as `SCHED_IDLE`, which a busy
//! container starves. Raising the window's `Urgency` moves all three to the
//! front: the waiting registry request and blocking task are re-queued as
//! on-demand, and a running task's thread goes back to the normal class.
//!
//! The work does not take the handle as an argument: it runs inside
//! [`Urgency::scope`], and the pieces that queue or lower a thread
//! ([`PriorityGate`](crate::priority_gate::PriorityGate) and
//! [`BlockingWork`](crate::work::BlockingWork)) read it from the task.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::purpose::Purpose;
use crate::thread_sched::{self, IdleClass};

tokio::task_local! {
    static CURRENT: Urgency;
}

/// A shared flag that a waiting reader raises; see the module docs.
#[derive(Clone, Debug, Default)]
pub struct Urgency(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    raised: AtomicBool,
    notify: Notify,
    /// Threads of the work running now as `SCHED_IDLE` (kernel thread ids).
    idle_threads: Mutex<Vec<libc::pid_t>>,
}

impl Urgency {
    /// A handle not raised yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The handle of the work the calling task runs, if any.
    pub fn current() -> Option<Urgency> {
        CURRENT.try_with(Urgency::clone).ok()
    }

    /// Runs `fut` as work that `self` can make urgent.
    pub async fn scope<F: Future>(self, fut: F) -> F::Output {
        CURRENT.scope(self, fut).await
    }

    /// Runs `fut` under the calling task's handle, if it has one: for the
    /// futures a piece of work hands to tasks it spawns.
    pub fn inherit<F: Future>(fut: F) -> impl Future<Output = F::Output> {
        let current = Self::current();
        async move {
            match current {
                Some(u) => u.scope(fut).await,
                None => fut.await,
            }
        }
    }

    /// Someone waits for this work now: its queued requests and tasks go
    /// ahead as on-demand, and its idle-class threads return to normal.
    pub fn raise(&self) {
        if self.0.raised.swap(true, Ordering::SeqCst) {
            return;
        }
        self.0.notify.notify_waiters();
        let Ok(threads) = self.0.idle_threads.lock() else {
            return;
        };
        for &tid in threads.iter() {
            if let Err(e) = thread_sched::set_thread_policy(tid, libc::SCHED_OTHER) {
                tracing::debug!(tid, error = %e, "cannot raise a background thread");
            }
        }
    }

    /// Whether [`Self::raise`] was called.
    pub fn is_raised(&self) -> bool {
        self.0.raised.load(Ordering::SeqCst)
    }

    /// Completes once the handle is raised.
    pub async fn raised(&self) {
        loop {
            let notified = self.0.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_raised() {
                return;
            }
            notified.await;
        }
    }

    /// `purpose`, or on-demand once raised.
    pub fn effective(&self, purpose: Purpose) -> Purpose {
        if self.is_raised() && !purpose.is_urgent() {
            Purpose::OnDemand
        } else {
            purpose
        }
    }

    /// Lowers the calling thread to `SCHED_IDLE` unless the handle is
    /// already raised, and registers it so that [`Self::raise`] can lift it
    /// while it runs. Checked and registered under one lock, so a raise
    /// either sees the thread or the thread sees the raise.
    pub(crate) fn enter_idle(&self) -> IdleThread {
        let Ok(mut threads) = self.0.idle_threads.lock() else {
            return IdleThread {
                urgency: None,
                class: None,
            };
        };
        if self.is_raised() {
            return IdleThread {
                urgency: None,
                class: None,
            };
        }
        let class = IdleClass::enter();
        if !class.lowered() {
            return IdleThread {
                urgency: None,
                class: Some(class),
            };
        }
        threads.push(thread_sched::thread_id());
        IdleThread {
            urgency: Some(self.clone()),
            class: Some(class),
        }
    }
}

/// A thread lowered by [`Urgency::enter_idle`]: unregistered, then back to
/// the normal class, on drop.
#[derive(Debug)]
pub(crate) struct IdleThread {
    urgency: Option<Urgency>,
    class: Option<IdleClass>,
}

impl Drop for IdleThread {
    fn drop(&mut self) {
        if let Some(u) = &self.urgency
            && let Ok(mut threads) = u.0.idle_threads.lock()
        {
            // Unregistered before the class is restored (below, by
            // `IdleClass`): a raise never touches a thread that has moved on
            // to another task.
            let me = thread_sched::thread_id();
            threads.retain(|&t| t != me);
        }
        self.class.take();
    }
}

/// One [`Urgency`] per key for everyone working on or waiting for the same
/// key at the same time: the first arrival's handle is shared by the later
/// ones until the last leaves, so a reader that arrives while background
/// work is in flight raises that very work.
#[derive(Debug)]
pub struct UrgencyTable<K> {
    entries: Mutex<HashMap<K, (Urgency, usize)>>,
}

impl<K> Default for UrgencyTable<K> {
    fn default() -> Self {
        UrgencyTable {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone> UrgencyTable<K> {
    /// Joins the handle of `key` (made from `preferred` if nobody holds
    /// one, else a new one), until the returned guard drops.
    pub fn join(&self, key: K, preferred: Option<Urgency>) -> Joined<'_, K> {
        let urgency = match self.entries.lock() {
            Ok(mut entries) => {
                let entry = entries
                    .entry(key.clone())
                    .or_insert_with(|| (preferred.unwrap_or_default(), 0));
                entry.1 += 1;
                entry.0.clone()
            }
            // A poisoned table only loses the raising, never the read.
            Err(_) => preferred.unwrap_or_default(),
        };
        Joined {
            table: self,
            key,
            urgency,
        }
    }

    /// Keys with a handle now (for tests).
    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    /// Whether no key has a handle.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Membership of one key's handle in an [`UrgencyTable`].
#[derive(Debug)]
pub struct Joined<'a, K: Eq + Hash> {
    table: &'a UrgencyTable<K>,
    key: K,
    urgency: Urgency,
}

impl<K: Eq + Hash> Joined<'_, K> {
    /// The shared handle.
    pub fn urgency(&self) -> &Urgency {
        &self.urgency
    }
}

impl<K: Eq + Hash> Drop for Joined<'_, K> {
    fn drop(&mut self) {
        if let Ok(mut entries) = self.table.entries.lock()
            && let Some(entry) = entries.get_mut(&self.key)
        {
            entry.1 = entry.1.saturating_sub(1);
            if entry.1 == 0 {
                entries.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn raise_wakes_waiters_and_changes_the_effective_purpose() {
        let u = Urgency::new();
        assert_eq!(u.effective(Purpose::Background), Purpose::Background);
        let waiter = tokio::spawn({
            let u = u.clone();
            async move { u.raised().await }
        });
        u.raise();
        waiter.await.unwrap();
        assert_eq!(u.effective(Purpose::Background), Purpose::OnDemand);
        assert_eq!(u.effective(Purpose::Prefetch), Purpose::OnDemand);
        assert_eq!(u.effective(Purpose::Metadata), Purpose::Metadata);
    }

    #[tokio::test]
    async fn scope_is_seen_by_the_task_and_inherited_by_spawned_futures() {
        assert!(Urgency::current().is_none());
        let u = Urgency::new();
        let seen = u
            .clone()
            .scope(async {
                let spawned = tokio::spawn(Urgency::inherit(async { Urgency::current() }));
                (Urgency::current(), spawned.await.unwrap())
            })
            .await;
        u.raise();
        assert!(seen.0.is_some_and(|s| s.is_raised()));
        assert!(seen.1.is_some_and(|s| s.is_raised()));
    }

    #[test]
    fn raising_lifts_a_running_idle_thread_to_the_normal_class() {
        if !thread_sched::idle_class_available() {
            assert!(
                !nix::unistd::geteuid().is_root(),
                "root cannot use SCHED_IDLE"
            );
            return;
        }
        let u = Urgency::new();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let worker = std::thread::spawn({
            let u = u.clone();
            move || {
                let _idle = u.enter_idle();
                started_tx.send(thread_sched::policy()).unwrap();
                // Runs until the raise is seen from inside the thread.
                let deadline = Instant::now() + Duration::from_secs(10);
                while thread_sched::policy() != libc::SCHED_OTHER && Instant::now() < deadline {
                    std::thread::yield_now();
                }
                thread_sched::policy()
            }
        });
        assert_eq!(started_rx.recv().unwrap(), libc::SCHED_IDLE);
        u.raise();
        assert_eq!(worker.join().unwrap(), libc::SCHED_OTHER);
        // Raised before it starts: the thread is never lowered.
        let late = std::thread::spawn(move || {
            let _idle = u.enter_idle();
            thread_sched::policy()
        });
        assert_eq!(late.join().unwrap(), libc::SCHED_OTHER);
    }

    #[test]
    fn a_key_has_one_handle_while_anyone_holds_it() {
        let table = UrgencyTable::default();
        let window = Urgency::new();
        let first = table.join(7u32, Some(window.clone()));
        let reader = table.join(7u32, None);
        reader.urgency().raise();
        assert!(
            window.is_raised(),
            "the reader raised the background work's handle"
        );
        drop(first);
        drop(reader);
        assert!(table.is_empty());
        let fresh = table.join(7u32, None);
        assert!(!fresh.urgency().is_raised());
    }
}
