//! A child process that is stopped when its guard drops: the one
//! spawn / wait-until-ready / stop sequence behind the test guards
//! ([`crate::containerd`], [`crate::docker`]) and the benchmarks' daemons.
//! Errors are returned, not panicked, so a benchmark can report them; the
//! test guards turn them into panics.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a process may take to come up, or to go down after SIGTERM.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);

/// How often readiness and exit are polled.
const POLL: Duration = Duration::from_millis(20);

/// A child process, SIGTERMed (then SIGKILLed after a bounded wait) on drop.
#[derive(Debug)]
pub struct ProcessGuard {
    child: Child,
    name: String,
    log: PathBuf,
    deadline: Duration,
}

impl ProcessGuard {
    /// Spawns `cmd` with stdin closed and stdout and stderr into `log`.
    pub fn spawn(name: impl Into<String>, mut cmd: Command, log: &Path) -> io::Result<Self> {
        let name = name.into();
        let out = std::fs::File::create(log)
            .map_err(|e| io::Error::new(e.kind(), format!("create {}: {e}", log.display())))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("start {name} ({:?}): {e}", cmd.get_program()),
                )
            })?;
        Ok(ProcessGuard {
            child,
            name,
            log: log.to_path_buf(),
            deadline: DEFAULT_DEADLINE,
        })
    }

    /// The same guard with another bound on start-up and shutdown.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Polls `ready` until it holds; an error if the process exits first or
    /// the deadline passes (with the end of its log).
    pub fn wait_until(&mut self, mut ready: impl FnMut() -> bool) -> io::Result<()> {
        let start = Instant::now();
        while !ready() {
            if let Some(status) = self.exited() {
                return Err(io::Error::other(format!(
                    "{} exited ({status}): {}",
                    self.name,
                    self.log_tail()
                )));
            }
            if start.elapsed() > self.deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{} not ready after {:?}: {}",
                        self.name,
                        self.deadline,
                        self.log_tail()
                    ),
                ));
            }
            std::thread::sleep(POLL);
        }
        Ok(())
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Everything it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last 2000 bytes of its log.
    pub fn log_tail(&self) -> String {
        let text = self.log_text();
        let mut start = text.len().saturating_sub(2000);
        while !text.is_char_boundary(start) {
            start += 1;
        }
        text[start..].to_string()
    }

    /// SIGTERM, a bounded wait, then SIGKILL.
    pub fn stop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let start = Instant::now();
        while self.exited().is_none() && start.elapsed() < self.deadline {
            std::thread::sleep(POLL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }
}

/// Makes `cmd`'s process get SIGTERM when the thread that spawns it ends
/// (a benchmark killed mid-run takes its daemons along). Only for a
/// spawning thread that outlives the process, such as a program's main one.
pub fn die_with_spawning_thread(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        });
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        self.stop();
    }
}
