//! Running the workload's bundle with `runc run` for at most a period:
//! the container's output goes to our stderr; when the period ends (or the
//! caller is interrupted) it is killed; whatever happens, it is deleted.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::watch;

use super::OptimizeError;

/// How long a killed container may take to be gone before runc itself is killed.
const KILL_GRACE: Duration = Duration::from_secs(10);

/// How the workload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It exited by itself (runc's status is the container's).
    Exited(ExitStatus),
    /// The period ran out and it was killed.
    PeriodOver,
    /// The caller was interrupted and it was killed.
    Interrupted,
}

/// The `runc` binary and the state directory its containers use.
#[derive(Debug, Clone)]
pub struct Runc {
    binary: PathBuf,
    root: PathBuf,
}

/// Deletes the container when dropped, on every path (`runc delete --force`
/// kills it first if it still runs).
struct DeleteOnDrop<'a> {
    runc: &'a Runc,
    id: &'a str,
}

impl Drop for DeleteOnDrop<'_> {
    fn drop(&mut self) {
        let deleted = std::process::Command::new(&self.runc.binary)
            .arg("--root")
            .arg(&self.runc.root)
            .args(["delete", "--force", self.id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Err(e) = deleted {
            tracing::warn!(id = self.id, error = %e, "runc delete failed");
        }
    }
}

impl Runc {
    /// `binary` (a path, or a name looked up on `PATH`) with its state under `root`.
    pub fn find(binary: &Path, root: &Path) -> Result<Runc, OptimizeError> {
        let found = if binary.components().count() > 1 {
            binary.is_file().then(|| binary.to_path_buf())
        } else {
            std::env::var_os("PATH").and_then(|path| {
                std::env::split_paths(&path)
                    .map(|dir| dir.join(binary))
                    .find(|candidate| candidate.is_file())
            })
        };
        let binary = found.ok_or_else(|| OptimizeError::RuncMissing(binary.to_path_buf()))?;
        Ok(Runc {
            binary,
            root: root.to_path_buf(),
        })
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg("--root").arg(&self.root);
        c
    }

    /// Runs the bundle at `bundle` as container `id` until it exits, `period`
    /// ends or `stop` turns true; the container is deleted before this returns.
    pub async fn run(
        &self,
        bundle: &Path,
        id: &str,
        period: Duration,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Ended, OptimizeError> {
        let io = |e: std::io::Error| OptimizeError::Io {
            context: format!("run {}", self.binary.display()),
            source: e,
        };
        let output = std::io::stderr().as_fd().try_clone_to_owned().map_err(io)?;
        let errors = std::io::stderr().as_fd().try_clone_to_owned().map_err(io)?;
        let _delete = DeleteOnDrop { runc: self, id };
        let mut child = self
            .command()
            .arg("run")
            .arg("--bundle")
            .arg(bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::from(output))
            .stderr(Stdio::from(errors))
            // Its own process group: a terminal's Ctrl-C reaches only us,
            // and we stop the container (runc would forward it to the
            // workload, which may ignore it as pid 1).
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(io)?;
        let ended = tokio::select! {
            status = child.wait() => return Ok(Ended::Exited(status.map_err(io)?)),
            _ = tokio::time::sleep(period) => Ended::PeriodOver,
            _ = stop.wait_for(|stopped| *stopped) => Ended::Interrupted,
        };
        let killed = self
            .command()
            .args(["kill", id, "KILL"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
        if let Err(e) = killed {
            tracing::warn!(id, error = %e, "runc kill failed");
        }
        if tokio::time::timeout(KILL_GRACE, child.wait())
            .await
            .is_err()
        {
            tracing::warn!(id, "the container outlived its kill; killing runc");
            let _ = child.kill().await;
        }
        Ok(ended)
    }
}
