//! [`BlockingWork`]: the data path's blocking work (inflating and verifying
//! chunks, disk-cache reads and writes, TOC parsing and indexing, assembling
//! passthrough files) on a bounded number of threads, most urgent
//! [`Purpose`] first.
//!
//! Bare `spawn_blocking` starts a thread for every call made while the
//! others are busy, up to tokio's 512: the background fetch of one window
//! of a layer of small files reads and writes hundreds of chunks at once,
//! and 514 threads were measured during one image's background fetch. Here
//! a task waits (as a future, holding no thread) for one of a fixed number
//! of slots, and an on-demand read's chunk overtakes queued background work.
//! Background tasks also run as `SCHED_IDLE` (when the daemon may leave that
//! class again): once started they still yield the CPU to the container and
//! to on-demand work, unless a reader waits for their result (see
//! [`urgency`](crate::urgency)). The CPU every task takes is counted per
//! priority class.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::priority_gate::PriorityGate;
use crate::purpose::Purpose;
use crate::thread_sched::thread_cpu_time;
use crate::urgency::Urgency;

/// A blocking task was lost (it panicked or its runtime shut down).
#[derive(Debug, thiserror::Error)]
#[error("blocking task failed: {0}")]
pub struct WorkError(String);

/// At most `threads` blocking tasks at once, by priority.
#[derive(Debug)]
pub struct BlockingWork {
    gate: Arc<PriorityGate>,
    threads: usize,
    /// Background tasks run as `SCHED_IDLE`.
    idle_background: bool,
    /// CPU nanoseconds taken by tasks, per priority class.
    cpu_ns: Arc<[AtomicU64; Purpose::PRIORITIES]>,
}

impl BlockingWork {
    /// Runs at most `threads` tasks at once (at least 1); background tasks
    /// as `SCHED_IDLE` when available.
    pub fn new(threads: usize) -> Arc<Self> {
        Self::with_idle_background(threads, true)
    }

    /// Like [`Self::new`]; `idle_background` false keeps background tasks
    /// in the normal class (`[background_fetch] idle_cpu = false`).
    pub fn with_idle_background(threads: usize, idle_background: bool) -> Arc<Self> {
        Arc::new(BlockingWork {
            gate: PriorityGate::new(threads),
            threads: threads.max(1),
            idle_background: idle_background && idle_class_usable(),
            cpu_ns: Arc::default(),
        })
    }

    /// Whether background tasks run as `SCHED_IDLE`.
    pub fn idle_background(&self) -> bool {
        self.idle_background
    }

    /// CPU taken by tasks so far, per priority class (in
    /// [`Purpose::BY_PRIORITY`] order).
    pub fn cpu_by_priority(&self) -> [Duration; Purpose::PRIORITIES] {
        std::array::from_fn(|i| Duration::from_nanos(self.cpu_ns[i].load(Ordering::Relaxed)))
    }

    /// Two per core, between 4 and 16: enough to keep the cores busy while
    /// some tasks wait on the disk, few enough to stay small next to the
    /// FUSE threads.
    pub fn default_threads() -> usize {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        (cores * 2).clamp(4, 16)
    }

    /// The bound on tasks running at once.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Tasks running now.
    pub fn running(&self) -> usize {
        self.gate.in_use()
    }

    /// Runs `f` on a blocking thread once a slot is free for `purpose`. The
    /// slot is held until `f` returns, even if the caller stops waiting.
    pub async fn run<T, F>(&self, purpose: Purpose, f: F) -> Result<T, WorkError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        // Work a waiting reader can raise (see `urgency`) queues and runs
        // as on-demand once raised, even while it runs.
        let urgency = Urgency::current();
        let permit = self.gate.acquire_raisable(purpose, urgency.as_ref()).await;
        let idle = self.idle_background && purpose == Purpose::Background;
        let cpu_ns = self.cpu_ns.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let _class = idle.then(|| urgency.unwrap_or_default().enter_idle());
            let start = thread_cpu_time();
            let out = f();
            let took = thread_cpu_time().saturating_sub(start);
            cpu_ns[purpose.priority()].fetch_add(
                u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
            out
        })
        .await
        .map_err(|e| WorkError(e.to_string()))
    }
}

/// [`crate::thread_sched::idle_class_available`], tried once per process.
fn idle_class_usable() -> bool {
    static USABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *USABLE.get_or_init(crate::thread_sched::idle_class_available)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn never_more_than_the_bound_at_once() {
        let work = BlockingWork::new(3);
        let (now, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let tasks = (0..40).map(|i| {
            let (now, peak, work) = (now.clone(), peak.clone(), work.clone());
            async move {
                let purpose = if i % 2 == 0 {
                    Purpose::Background
                } else {
                    Purpose::OnDemand
                };
                work.run(purpose, move || {
                    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(n, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(2));
                    now.fetch_sub(1, Ordering::SeqCst);
                    i
                })
                .await
                .unwrap()
            }
        });
        let done = futures_util::future::join_all(tasks).await;
        assert_eq!(done, (0..40).collect::<Vec<_>>());
        assert!(peak.load(Ordering::SeqCst) <= 3, "{peak:?}");
        assert_eq!(work.running(), 0);
    }

    #[tokio::test]
    async fn a_panicking_task_is_an_error_and_frees_its_slot() {
        let work = BlockingWork::new(1);
        let failed = work.run(Purpose::OnDemand, || panic!("boom")).await;
        assert!(failed.is_err());
        assert_eq!(work.run(Purpose::OnDemand, || 7).await.unwrap(), 7);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cpu_is_counted_per_priority_and_background_runs_idle_class() {
        let policy = crate::thread_sched::policy;
        let work = BlockingWork::new(2);
        let spin = || {
            let start = std::time::Instant::now();
            let mut x = 0u64;
            while start.elapsed() < Duration::from_millis(20) {
                x = std::hint::black_box(x.wrapping_add(1));
            }
            x
        };
        work.run(Purpose::OnDemand, spin).await.unwrap();
        let in_background = work.run(Purpose::Background, policy).await.unwrap();
        let cpu = work.cpu_by_priority();
        assert!(cpu[0] > Duration::ZERO, "{cpu:?}");
        assert_eq!(cpu[1], Duration::ZERO, "{cpu:?}");
        // Root (as the tests run) may leave SCHED_IDLE again.
        assert!(work.idle_background() || !nix::unistd::geteuid().is_root());
        if work.idle_background() {
            assert_eq!(in_background, libc::SCHED_IDLE);
        }
        // The pool's threads are back in the normal class afterwards.
        for _ in 0..4 {
            let after = work.run(Purpose::OnDemand, policy).await.unwrap();
            assert_eq!(after, libc::SCHED_OTHER);
        }
        let plain = BlockingWork::with_idle_background(1, false);
        let in_background = plain.run(Purpose::Background, policy).await.unwrap();
        assert_eq!(in_background, libc::SCHED_OTHER);
    }
}
