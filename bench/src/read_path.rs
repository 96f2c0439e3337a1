//! Read-path benchmark (issue 8, point 3): timed reads of one file and
//! walks of one tree in a container root, mounted either lazily through a
//! snapshotter socket, natively (overlay on a local directory), or by
//! containerd for a running container (read as the container sees it), so
//! both snapshotters and the baseline run the same runs in one invocation
//! each.
//!
//! Cache states: `cold` and `disk` drop the page cache first (the caller
//! decides whether the snapshotter's own caches are empty, `cold`, or hold
//! the file, `disk`); `page` reads the whole file once untimed and then
//! measures without dropping anything; `reread` is the read right after a
//! cold one (run `reread-BLOCK`: both are timed, nothing in between).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

use super::container::{Container, ContainerSnapshotter};
use super::io::{self, Access, ReadFigures, ReadSpec, WalkFigures};
use super::remote_layer::{self, MountedImage, Snapshotter};

/// Where the container root comes from.
#[derive(Debug, Clone)]
pub enum Target {
    /// An image mounted through the Snapshots service on this socket.
    Remote {
        /// Snapshots socket.
        socket: PathBuf,
        /// Image reference in the registry.
        image: String,
    },
    /// The same tree on local disk, under an overlay.
    Native {
        /// The directory holding the tree.
        lower: PathBuf,
    },
    /// A container of the image, started through a private containerd.
    Container {
        /// Its snapshotter.
        snapshotter: ContainerSnapshotter,
        /// Image reference in the registry.
        image: String,
    },
}

/// Page-cache state of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Page cache dropped; the snapshotter has not seen the data yet.
    Cold,
    /// Page cache dropped; the snapshotter holds the data in its caches.
    Disk,
    /// Data in the page cache.
    Page,
    /// Read again at once after a cold read (what the first read left).
    Reread,
}

/// One measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    /// Timed reads of the file.
    Read {
        /// Cache state.
        state: State,
        /// Order.
        access: Access,
        /// Bytes per read.
        block: usize,
    },
    /// `find` + `stat` of the tree; `cold` drops dentries and inodes first.
    Walk {
        /// Whether caches are dropped first.
        cold: bool,
    },
    /// A cold sequential read of the file and, at once, a second one.
    Reread {
        /// Bytes per read.
        block: usize,
    },
}

impl FromStr for Run {
    type Err = String;

    /// `cold-seq-4k`, `disk-rand-128k`, `page-seq-1m`, `walk-cold`,
    /// `walk-warm`, `reread-1m`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("bad run {s:?}: want STATE-ACCESS-BLOCK, walk-cold|walk-warm or reread-BLOCK")
        };
        let parts: Vec<&str> = s.split('-').collect();
        match parts.as_slice() {
            ["walk", "cold"] => Ok(Run::Walk { cold: true }),
            ["walk", "warm"] => Ok(Run::Walk { cold: false }),
            ["reread", block] => Ok(Run::Reread {
                block: parse_size(block).ok_or_else(bad)?,
            }),
            [state, access, block] => Ok(Run::Read {
                state: match *state {
                    "cold" => State::Cold,
                    "disk" => State::Disk,
                    "page" => State::Page,
                    _ => return Err(bad()),
                },
                access: match *access {
                    "seq" => Access::Seq,
                    "rand" => Access::Rand,
                    _ => return Err(bad()),
                },
                block: parse_size(block).ok_or_else(bad)?,
            }),
            _ => Err(bad()),
        }
    }
}

fn parse_size(s: &str) -> Option<usize> {
    let (num, shift) = match s.to_ascii_lowercase() {
        x if x.ends_with('k') => (x[..x.len() - 1].to_owned(), 10),
        x if x.ends_with('m') => (x[..x.len() - 1].to_owned(), 20),
        x => (x, 0),
    };
    num.parse::<usize>().ok().map(|n| n << shift)
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the tree comes from.
    pub target: Target,
    /// Scratch directory (mountpoint, overlay upper/work).
    pub work: PathBuf,
    /// The file to read, relative to the root.
    pub file: PathBuf,
    /// The tree to walk, relative to the root.
    pub tree: PathBuf,
    /// Runs in order.
    pub runs: Vec<Run>,
    /// Reads per random run.
    pub random_ops: u64,
    /// Time bound of each run.
    pub max_time: Duration,
    /// Times each run that does not start cold is repeated; the best is
    /// reported (other load on the machine only ever slows a run down).
    pub repeat: u32,
    /// Idle time between the mount (or the container's start) and the
    /// first run.
    pub start_after: Duration,
}

/// Figures of one run.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum RunReport {
    /// A read run.
    Read {
        /// Cache state.
        state: State,
        /// Order.
        access: Access,
        /// Bytes per read.
        block: usize,
        /// Figures.
        #[serde(flatten)]
        figures: ReadFigures,
    },
    /// A walk.
    Walk {
        /// Whether caches were dropped first.
        cold: bool,
        /// Figures.
        #[serde(flatten)]
        figures: WalkFigures,
    },
}

/// Everything measured in one invocation.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Milliseconds from Prepare to AlreadyExists per layer (empty for native).
    pub prepare_ms: Vec<f64>,
    /// The runs, in order.
    pub runs: Vec<RunReport>,
}

/// Errors of the benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Mounting through the snapshotter failed.
    #[error(transparent)]
    Mount(#[from] remote_layer::MountError),
    /// File I/O failed.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// Starting or stopping the container failed.
    #[error("container: {0:#}")]
    Container(anyhow::Error),
}

fn io_err(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> BenchError {
    let what = what.to_string();
    move |e| BenchError::Io(what, e)
}

/// A mounted root and how to take it down.
enum Root {
    Remote(Box<Snapshotter>, MountedImage),
    Native(PathBuf),
    Container(Box<Container>, PathBuf),
}

impl Root {
    async fn mount(opts: &Options) -> Result<(Root, Vec<f64>), BenchError> {
        let at = opts.work.join("root");
        match &opts.target {
            Target::Remote { socket, image } => {
                let image = remote_layer::resolve(image).await?;
                let mut s = Snapshotter::connect(socket).await?;
                let tag = format!("bench-{}-{}", std::process::id(), nanos());
                let m = s.mount(&image, &tag, &at).await?;
                let ms = m.prepare_ms.clone();
                Ok((Root::Remote(Box::new(s), m), ms))
            }
            Target::Native { lower } => {
                let scratch = opts.work.join("native-scratch");
                remote_layer::mount_native(lower, &scratch, &at)
                    .map_err(io_err(format!("overlay on {}", lower.display())))?;
                Ok((Root::Native(at), Vec::new()))
            }
            Target::Container { snapshotter, image } => {
                let work = opts.work.clone();
                let (snapshotter, image) = (snapshotter.clone(), image.clone());
                let c = tokio::task::spawn_blocking(move || {
                    Container::start(&work, &snapshotter, &image)
                })
                .await
                .map_err(|e| BenchError::Container(e.into()))?
                .map_err(BenchError::Container)?;
                let root = c.root();
                Ok((Root::Container(Box::new(c), root), Vec::new()))
            }
        }
    }

    fn dir(&self) -> &Path {
        match self {
            Root::Remote(_, m) => &m.dir,
            Root::Native(d) | Root::Container(_, d) => d,
        }
    }

    async fn unmount(self) -> Result<(), BenchError> {
        match self {
            Root::Remote(mut s, m) => Ok(s.unmount(&m).await?),
            Root::Native(d) => nix::mount::umount2(&d, nix::mount::MntFlags::MNT_DETACH)
                .map_err(|e| io_err(format!("unmount {}", d.display()))(e.into())),
            Root::Container(c, _) => tokio::task::spawn_blocking(move || c.stop())
                .await
                .map_err(|e| BenchError::Container(e.into()))?
                .map_err(BenchError::Container),
        }
    }
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// Mounts the target, performs the runs, unmounts.
pub async fn run(opts: &Options) -> Result<Report, BenchError> {
    let (root, prepare_ms) = Root::mount(opts).await?;
    // Not synchronisation: the workload's own start delay, measured as such.
    tokio::time::sleep(opts.start_after).await;
    let result = tokio::task::block_in_place(|| runs(opts, root.dir()));
    let unmounted = root.unmount().await;
    let runs = result?;
    unmounted?;
    Ok(Report { prepare_ms, runs })
}

fn runs(opts: &Options, root: &Path) -> Result<Vec<RunReport>, BenchError> {
    let mut primed = false;
    let mut out = Vec::new();
    for run in &opts.runs {
        // A cold read is cold only the first time.
        let times = match run {
            Run::Read {
                state: State::Cold, ..
            }
            | Run::Reread { .. } => 1,
            _ => opts.repeat.max(1),
        };
        let mut best: Option<(f64, Vec<RunReport>)> = None;
        for _ in 0..times {
            let reports = one_run(opts, root, run, &mut primed)?;
            let speed = match reports.first() {
                Some(RunReport::Read { figures, .. }) => figures.mb_per_s,
                Some(RunReport::Walk { figures, .. }) => figures.entries_per_s,
                None => 0.0,
            };
            if best.as_ref().is_none_or(|(b, _)| speed > *b) {
                best = Some((speed, reports));
            }
        }
        out.extend(best.map(|(_, r)| r).unwrap_or_default());
    }
    Ok(out)
}

/// A cold sequential read of the file, then at once a second one.
fn reread(opts: &Options, root: &Path, block: usize) -> Result<[RunReport; 2], BenchError> {
    let file = root.join(&opts.file);
    io::drop_caches().map_err(io_err("dropping caches"))?;
    let spec = ReadSpec {
        access: Access::Seq,
        block,
        max_ops: u64::MAX,
        max_time: opts.max_time,
    };
    let read = |state| {
        let figures = io::read_file(&file, &spec).map_err(io_err(file.display()))?;
        Ok::<_, BenchError>(RunReport::Read {
            state,
            access: Access::Seq,
            block,
            figures,
        })
    };
    let cold = read(State::Cold)?;
    Ok([cold, read(State::Reread)?])
}

fn one_run(
    opts: &Options,
    root: &Path,
    run: &Run,
    primed: &mut bool,
) -> Result<Vec<RunReport>, BenchError> {
    let file = root.join(&opts.file);
    let tree = root.join(&opts.tree);
    {
        match *run {
            Run::Read {
                state,
                access,
                block,
            } => {
                if state == State::Page {
                    if !*primed {
                        io::prime(&file).map_err(io_err(file.display()))?;
                        *primed = true;
                    }
                } else {
                    io::drop_caches().map_err(io_err("dropping caches"))?;
                    *primed = false;
                }
                let spec = ReadSpec {
                    access,
                    block,
                    max_ops: match access {
                        Access::Seq => u64::MAX,
                        Access::Rand => opts.random_ops,
                    },
                    max_time: opts.max_time,
                };
                let figures = io::read_file(&file, &spec).map_err(io_err(file.display()))?;
                Ok(vec![RunReport::Read {
                    state,
                    access,
                    block,
                    figures,
                }])
            }
            Run::Walk { cold } => {
                if cold {
                    io::drop_caches().map_err(io_err("dropping caches"))?;
                    *primed = false;
                }
                let figures = io::walk(&tree).map_err(io_err(tree.display()))?;
                Ok(vec![RunReport::Walk { cold, figures }])
            }
            Run::Reread { block } => {
                // The file stays in the page cache as the re-read left it.
                *primed = true;
                Ok(reread(opts, root, block)?.to_vec())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_names_parse() {
        assert_eq!(
            "cold-rand-4k".parse::<Run>(),
            Ok(Run::Read {
                state: State::Cold,
                access: Access::Rand,
                block: 4096
            })
        );
        assert_eq!(
            "page-seq-1m".parse::<Run>().map(|r| match r {
                Run::Read { block, .. } => block,
                Run::Walk { .. } | Run::Reread { .. } => 0,
            }),
            Ok(1 << 20)
        );
        assert_eq!("walk-warm".parse::<Run>(), Ok(Run::Walk { cold: false }));
        assert_eq!(
            "reread-1m".parse::<Run>(),
            Ok(Run::Reread { block: 1 << 20 })
        );
        assert!("reread-x".parse::<Run>().is_err());
        assert!("warm-seq-4k".parse::<Run>().is_err());
        assert!("cold-seq".parse::<Run>().is_err());
    }
}
