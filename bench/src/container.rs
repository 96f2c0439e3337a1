//! A container started through a private containerd, whose files the
//! read-path benchmark reads as the container sees them: through
//! `/proc/PID/root` of its process, that is containerd's overlayfs mount
//! over the snapshotter's layers (FUSE lowers for a remote snapshotter).
//!
//! The image needs no executable of its own: the host's busybox-static is
//! bind-mounted in and sleeps until the container is deleted.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use super::coldstart::procs::{self, Containerd, Snapshotter};

/// Where the host's busybox appears in the container (named `busybox`:
/// busybox picks its applet from that name, or else from the next argument).
const BUSYBOX_IN_CONTAINER: &str = "/.rstargz-bench/busybox";

/// The snapshotter of the container.
#[derive(Debug, Clone)]
pub enum ContainerSnapshotter {
    /// A proxy snapshotter serving on `socket`; images are pulled lazily
    /// (`ctr-remote image rpull`).
    Proxy {
        /// Which daemon (names its proxy plugin).
        which: Snapshotter,
        /// Its Snapshots socket.
        socket: PathBuf,
    },
    /// containerd's own overlayfs; images are pulled and unpacked whole.
    Overlayfs,
}

/// A running container and its containerd.
pub struct Container {
    ctrd: Containerd,
    id: String,
    image: String,
    pid: u32,
}

impl Container {
    /// Starts containerd under `work`, pulls `image` on `snapshotter` and
    /// starts a container of it that does nothing.
    pub fn start(
        work: &Path,
        snapshotter: &ContainerSnapshotter,
        image: &str,
    ) -> anyhow::Result<Container> {
        let dir = work.join("containerd");
        if dir.exists() {
            procs::unmount_under(&dir);
            std::fs::remove_dir_all(&dir).with_context(|| format!("clear {}", dir.display()))?;
        }
        let (proxies, plugin) = match snapshotter {
            ContainerSnapshotter::Proxy { which, socket } => {
                (vec![(*which, socket.clone())], which.plugin())
            }
            ContainerSnapshotter::Overlayfs => (Vec::new(), "overlayfs"),
        };
        let ctrd = Containerd::start(&dir, &proxies)?;
        let (tool, verb) = match snapshotter {
            ContainerSnapshotter::Proxy { .. } => ("ctr-remote", "rpull"),
            ContainerSnapshotter::Overlayfs => ("ctr", "pull"),
        };
        let pull = [
            "image",
            verb,
            "--plain-http",
            "--snapshotter",
            plugin,
            image,
        ];
        ctrd.tool(tool, &pull)?;
        if !Path::new(procs::BUSYBOX).exists() {
            bail!(
                "{} is missing: install busybox-static (scripts/setup.sh)",
                procs::BUSYBOX
            );
        }
        let mount = format!(
            "type=bind,src={},dst={BUSYBOX_IN_CONTAINER},options=rbind:ro",
            procs::BUSYBOX
        );
        let id = format!("read-path-{}", std::process::id());
        let cmd = [BUSYBOX_IN_CONTAINER, "sleep", "1000000"].map(String::from);
        ctrd.run_with(&["-d", "--mount", &mount], plugin, image, &id, &cmd)?;
        let tasks = ctrd.tool("ctr", &["tasks", "ls"])?;
        let pid = tasks
            .lines()
            .filter_map(|l| {
                let mut cols = l.split_whitespace();
                (cols.next() == Some(id.as_str())).then(|| cols.next())?
            })
            .find_map(|p| p.parse::<u32>().ok())
            .with_context(|| format!("no running task {id} in {tasks:?}"))?;
        Ok(Container {
            ctrd,
            id,
            image: image.to_owned(),
            pid,
        })
    }

    /// The container's root as the container sees it.
    pub fn root(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.pid))
    }

    /// Deletes the container and the image (and with it, at once, its
    /// snapshots: a remote snapshotter unmounts its layers), then stops
    /// containerd.
    pub fn stop(self) -> anyhow::Result<()> {
        let deleted = self
            .ctrd
            .tool("ctr", &["tasks", "delete", "-f", &self.id])
            .and_then(|_| self.ctrd.tool("ctr", &["containers", "delete", &self.id]))
            .and_then(|_| {
                self.ctrd
                    .tool("ctr", &["images", "delete", "--sync", &self.image])
            });
        self.ctrd.stop();
        deleted.map(|_| ())
    }
}
