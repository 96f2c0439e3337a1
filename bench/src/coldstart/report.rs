//! Medians, ratios against the same run's baselines, the markdown tables,
//! `report.json` and the plots.

use std::fmt::Write as _;
use std::path::Path;

use super::converters::Converter;
use super::images::Kind;
use super::model::{LinkCase, Mode, Report, Sample, describe, median};

/// Median of the samples of one cell.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Cell {
    /// Pull + run, s.
    pub total_s: f64,
    /// Pull, s.
    pub pull_s: f64,
    /// Registry bytes.
    pub bytes: f64,
    /// Registry requests.
    pub requests: f64,
    /// Runs.
    pub runs: usize,
}

impl Report {
    fn samples(&self, image: Kind, link: &str, mode: Mode, converter: Converter) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| {
                s.image == image
                    && s.link == link
                    && s.mode == mode
                    // The full pull's plain image is the same for every converter.
                    && (mode == Mode::Overlayfs || s.converter == Some(converter))
            })
            .collect()
    }

    /// The median cell of `mode` on `converter`'s image, if measured (the
    /// full pull ignores `converter`).
    pub fn cell(&self, image: Kind, link: &str, mode: Mode, converter: Converter) -> Option<Cell> {
        let s = self.samples(image, link, mode, converter);
        if s.is_empty() {
            return None;
        }
        Some(Cell {
            total_s: median(s.iter().map(|x| x.total_s).collect()),
            pull_s: median(s.iter().map(|x| x.pull_s).collect()),
            bytes: median(s.iter().map(|x| x.bytes as f64).collect()),
            requests: median(s.iter().map(|x| x.requests as f64).collect()),
            runs: s.len(),
        })
    }

    /// The network floor (needed bytes over the link plus the minimum round
    /// trips) and the local part (the container run with the image on
    /// disk, page cache dropped: median of the overlayfs runs), in s;
    /// `None` when the run left out the overlayfs mode.
    pub fn floor(&self, image: Kind, link: &LinkCase) -> Option<(f64, f64)> {
        let facts = self.images.iter().find(|f| f.image == image)?;
        let net = facts.needs.floor(link.link()).as_secs_f64();
        let local: Vec<f64> = self
            .samples(image, &link.name, Mode::Overlayfs, Converter::Rstargz)
            .iter()
            .filter_map(|s| s.local_run_s)
            .collect();
        if local.is_empty() {
            return None;
        }
        Some((net, median(local)))
    }
}

fn secs(s: f64) -> String {
    if s >= 10.0 {
        format!("{s:.1} s")
    } else {
        format!("{s:.2} s")
    }
}

fn ratio(a: f64, b: f64) -> String {
    format!("{:.2}×", a / b)
}

/// The header and separator of a table with one column per mode.
fn header(md: &mut String, modes: &[Mode], last: &str) {
    let _ = write!(md, "| image | converter |");
    for m in modes {
        let _ = write!(md, " {} |", m.label());
    }
    let _ = writeln!(md, " {last} |");
    let _ = writeln!(md, "|---|---|{}---|", "---|".repeat(modes.len()));
}

/// The markdown tables: one row per image and converter, one column per
/// measured mode.
pub fn markdown(r: &Report) -> String {
    let mut md = String::new();
    let images: Vec<Kind> = r.images.iter().map(|f| f.image).collect();
    let converters = r.converters.clone();
    // The modes this run measured, in table order.
    let modes: Vec<Mode> = Mode::ALL
        .into_iter()
        .filter(|m| r.samples.iter().any(|s| s.mode == *m))
        .collect();
    let _ = writeln!(
        md,
        "\nConverters (who made the eStargz images the lazy modes pull):\n"
    );
    for c in &converters {
        let _ = writeln!(md, "- `{}`: {}", c.name(), c.describe());
    }
    for link in &r.links {
        let (through, what, baseline) = if r.cri {
            (
                "through CRI ",
                "CRI PullImage + RunPodSandbox + CreateContainer + StartContainer to the workload's end (pause image already local)",
                "× containerd's overlayfs through CRI in the same run",
            )
        } else {
            (
                "",
                "Pull + create + run to the workload's end",
                "× the Go reference in the same mode on the same converter's image",
            )
        };
        let _ = writeln!(
            md,
            "\n### Cold start {through}over {} (median of {} runs)\n",
            describe(link),
            r.runs
        );
        let _ = writeln!(
            md,
            "{what}. rstargz cells: time ({baseline}, × the floor); others: time (× the floor). Floor = needed bytes / bandwidth + {} round trips × RTT, plus the container's run with the image already local. The full pull pulls the plain image: the same figure in every row of an image.\n",
            super::floor::MIN_ROUND_TRIPS
        );
        header(&mut md, &modes, "floor (network + local)");
        for image in &images {
            let floor = r.floor(*image, link);
            let floor_total = floor.map(|(n, l)| n + l);
            for c in &converters {
                let _ = write!(md, "| {} | {} |", image.name(), c.name());
                for &m in &modes {
                    let Some(cell) = r.cell(*image, &link.name, m, *c) else {
                        let _ = write!(md, " — |");
                        continue;
                    };
                    let (base, name) = match (m, r.cri) {
                        (Mode::Rstargz | Mode::RstargzPrio, true) => {
                            (r.cell(*image, &link.name, Mode::Overlayfs, *c), "overlayfs")
                        }
                        (Mode::Rstargz | Mode::RstargzPrio, false) => {
                            (r.cell(*image, &link.name, m.go_counterpart(), *c), "Go")
                        }
                        _ => (None, ""),
                    };
                    let vs: Vec<String> = [
                        base.map(|g| format!("{} {name}", ratio(cell.total_s, g.total_s))),
                        floor_total.map(|f| format!("{} floor", ratio(cell.total_s, f))),
                    ]
                    .into_iter()
                    .flatten()
                    .collect();
                    let _ = if vs.is_empty() {
                        write!(md, " {} |", secs(cell.total_s))
                    } else {
                        write!(md, " {} ({}) |", secs(cell.total_s), vs.join(", "))
                    };
                }
                let _ = match floor {
                    Some((n, l)) => writeln!(md, " {} ({} + {}) |", secs(n + l), secs(n), secs(l)),
                    None => writeln!(md, " — |"),
                };
            }
        }
        let fetch = if r.background_fetch {
            "each lazy snapshotter with its default background fetch"
        } else {
            "both lazy snapshotters with `no_background_fetch = true`"
        };
        let _ = writeln!(
            md,
            "\nRegistry bytes (MB) / requests in the measured window (medians; {fetch}):\n"
        );
        header(&mut md, &modes, "needed");
        for image in &images {
            let needed = r
                .images
                .iter()
                .find(|f| f.image == *image)
                .map_or(0, |f| f.needs.needed_bytes);
            for c in &converters {
                let _ = write!(md, "| {} | {} |", image.name(), c.name());
                for &m in &modes {
                    let _ = match r.cell(*image, &link.name, m, *c) {
                        Some(cell) => {
                            write!(md, " {:.1} / {:.0} |", cell.bytes / 1e6, cell.requests)
                        }
                        None => write!(md, " — |"),
                    };
                }
                let _ = writeln!(md, " {:.1} |", needed as f64 / 1e6);
            }
        }
    }
    md.push_str(&super::analysis::markdown(r));
    // The targets are those of the `ctr` cold start (issues 8 and 19).
    if !r.cri {
        md.push_str(&targets(r));
    }
    md
}

fn mark(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

/// The issues' targets, checked against this run's figures.
fn targets(r: &Report) -> String {
    let mut md = String::from("\n### Targets\n\nIssue 8 (rstargz's own images):\n\n");
    let rs = Converter::Rstargz;
    for link in &r.links {
        for f in &r.images {
            let cell = |m| r.cell(f.image, &link.name, m, rs);
            if let (Some(ours), Some(go)) = (cell(Mode::RstargzPrio), cell(Mode::GoPrio)) {
                let x = ours.total_s / go.total_s;
                let _ = writeln!(
                    md,
                    "- {} over {}: rstargz + prio at {x:.2}× the Go reference + prio (target ≤ 0.5×): {}",
                    f.image.name(),
                    describe(link),
                    mark(x <= 0.5)
                );
            }
            if let (Some(ours), Some(go)) = (cell(Mode::Rstargz), cell(Mode::Go)) {
                let x = ours.total_s / go.total_s;
                let _ = writeln!(
                    md,
                    "- {} over {}: rstargz at {x:.2}× the Go reference, no list (target ≤ 0.5×): {}",
                    f.image.name(),
                    describe(link),
                    mark(x <= 0.5)
                );
            }
            if let (Some(ours), Some((n, l))) = (cell(Mode::RstargzPrio), r.floor(f.image, link)) {
                let x = ours.total_s / (n + l);
                let _ = writeln!(
                    md,
                    "- {} over {}: rstargz + prio at {x:.2}× the floor (target ≤ 1.5×): {}",
                    f.image.name(),
                    describe(link),
                    mark(x <= 1.5)
                );
            }
            if f.image == Kind::Large
                && link.rate_mbit > 0
                && let (Some(ours), Some(full)) = (cell(Mode::RstargzPrio), cell(Mode::Overlayfs))
            {
                let x = full.total_s / ours.total_s;
                let _ = writeln!(
                    md,
                    "- large over {}: rstargz + prio {x:.1}× faster than the overlayfs full pull (target ≥ 5×): {}",
                    describe(link),
                    mark(x >= 5.0)
                );
            }
        }
    }
    md.push_str(&issue_19_targets(r));
    md
}

/// Issue 19: on every converter's image, ≤ 0.9× the Go reference in the
/// same mode on every link, and ≤ 1.25× the floor on shaped links.
fn issue_19_targets(r: &Report) -> String {
    let mut md = String::from("\nIssue 19 (every converter's images):\n\n");
    for link in &r.links {
        for f in &r.images {
            for c in r.converters.clone() {
                for m in [Mode::Rstargz, Mode::RstargzPrio] {
                    let Some(ours) = r.cell(f.image, &link.name, m, c) else {
                        continue;
                    };
                    let what = format!(
                        "{} on {} over {}: {}",
                        f.image.name(),
                        c.name(),
                        describe(link),
                        m.label()
                    );
                    if let Some(go) = r.cell(f.image, &link.name, m.go_counterpart(), c) {
                        let x = ours.total_s / go.total_s;
                        let _ = writeln!(
                            md,
                            "- {what} at {x:.2}× the Go reference (target ≤ 0.9×): {}",
                            mark(x <= 0.9)
                        );
                    }
                    if link.rate_mbit > 0
                        && let Some((n, l)) = r.floor(f.image, link)
                    {
                        let x = ours.total_s / (n + l);
                        let _ = writeln!(
                            md,
                            "- {what} at {x:.2}× the floor (target ≤ 1.25×): {}",
                            mark(x <= 1.25)
                        );
                    }
                }
            }
        }
    }
    md
}

/// Writes `report.json`, `report.md` and one `cold-start-<link>.png` per link.
pub fn write(r: &Report, out: &Path) -> anyhow::Result<()> {
    std::fs::write(out.join("report.json"), serde_json::to_vec_pretty(r)?)?;
    std::fs::write(out.join("report.md"), markdown(r))?;
    for link in &r.links {
        let png = out.join(format!("cold-start-{}.png", link.name));
        super::plot::cold_start(r, link, &png)?;
    }
    Ok(())
}
