//! The calling thread's CPU time and scheduling class: the blocking pool
//! counts the CPU its tasks take per purpose, and runs background work
//! (streaming, background fetch and their verification) as `SCHED_IDLE`
//! so that it takes only CPU nothing else wants: on a small machine the
//! container's own work and on-demand reads come first.

use std::time::Duration;

/// CPU time the calling thread has used so far.
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Sets the calling thread's policy (`SCHED_IDLE` or `SCHED_OTHER`, both
/// with static priority 0).
fn set_policy(policy: libc::c_int) -> std::io::Result<()> {
    set_thread_policy(0, policy)
}

/// Sets the policy of thread `tid` of this process (0: the calling
/// thread), with static priority 0.
pub(crate) fn set_thread_policy(tid: libc::pid_t, policy: libc::c_int) -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` outlives the call; a stale `tid` fails with ESRCH.
    let rc = unsafe { libc::sched_setscheduler(tid, policy, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The calling thread's kernel id.
pub(crate) fn thread_id() -> libc::pid_t {
    nix::unistd::gettid().as_raw()
}

/// The calling thread's policy.
pub(crate) fn policy() -> libc::c_int {
    // SAFETY: pid 0 is the calling thread.
    unsafe { libc::sched_getscheduler(0) }
}

/// Whether a thread may go to `SCHED_IDLE` and come back (leaving it
/// needs `CAP_SYS_NICE` or a permissive `RLIMIT_NICE`): tried once on a
/// scratch thread, so that a pool thread is never left idle-class.
pub fn idle_class_available() -> bool {
    std::thread::spawn(|| {
        let before = policy();
        if before != libc::SCHED_OTHER || set_policy(libc::SCHED_IDLE).is_err() {
            return false;
        }
        set_policy(libc::SCHED_OTHER).is_ok()
    })
    .join()
    .unwrap_or(false)
}

/// While held, the calling thread is `SCHED_IDLE`; back to `SCHED_OTHER`
/// on drop. Only for threads that were `SCHED_OTHER` (checked).
#[derive(Debug)]
pub struct IdleClass {
    lowered: bool,
}

impl IdleClass {
    /// Lowers the calling thread (a no-op when it is not `SCHED_OTHER` or
    /// the call fails).
    pub fn enter() -> IdleClass {
        let lowered = policy() == libc::SCHED_OTHER && set_policy(libc::SCHED_IDLE).is_ok();
        IdleClass { lowered }
    }

    /// Whether the thread was lowered.
    pub fn lowered(&self) -> bool {
        self.lowered
    }
}

impl Drop for IdleClass {
    fn drop(&mut self) {
        if self.lowered
            && let Err(e) = set_policy(libc::SCHED_OTHER)
        {
            tracing::warn!(error = %e, "cannot restore a pool thread's scheduling class");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_cpu_time_grows_with_work() {
        let before = thread_cpu_time();
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        assert!(thread_cpu_time() > before, "{x}");
    }

    #[test]
    fn idle_class_is_entered_and_left() {
        // Root (as the tests run) may always leave SCHED_IDLE.
        assert!(
            idle_class_available() || !nix::unistd::geteuid().is_root(),
            "root cannot use SCHED_IDLE"
        );
        if !idle_class_available() {
            return;
        }
        std::thread::spawn(|| {
            assert_eq!(policy(), libc::SCHED_OTHER);
            {
                let g = IdleClass::enter();
                assert!(g.lowered());
                assert_eq!(policy(), libc::SCHED_IDLE);
            }
            assert_eq!(policy(), libc::SCHED_OTHER);
        })
        .join()
        .expect("thread");
    }
}
