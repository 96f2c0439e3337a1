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

use std::sync::Arc;

use crate::priority_gate::PriorityGate;
use crate::purpose::Purpose;

/// A blocking task was lost (it panicked or its runtime shut down).
#[derive(Debug, thiserror::Error)]
#[error("blocking task failed: {0}")]
pub struct WorkError(String);

/// At most `threads` blocking tasks at once, by priority.
#[derive(Debug)]
pub struct BlockingWork {
    gate: Arc<PriorityGate>,
    threads: usize,
}

impl BlockingWork {
    /// Runs at most `threads` tasks at once (at least 1).
    pub fn new(threads: usize) -> Arc<Self> {
        Arc::new(BlockingWork {
            gate: PriorityGate::new(threads),
            threads: threads.max(1),
        })
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
        let permit = self.gate.acquire(purpose).await;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f()
        })
        .await
        .map_err(|e| WorkError(e.to_string()))
    }
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
}
