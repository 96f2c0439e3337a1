//! The drain's `report.json`, `report.md` (medians, the floor, ratios
//! against the floor and the Go reference) and `drain.png` (every pod's
//! time in each mode's median run, the floor as a line).

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use super::model::DrainReport;
use crate::coldstart::model::{Mode, describe};
use crate::coldstart::plot::{color, register_font, short, write_png};

/// Writes `report.json`, `report.md` and `drain.png` into `out`.
pub fn write(r: &DrainReport, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("report.json"), serde_json::to_vec_pretty(r)?)?;
    std::fs::write(out.join("report.md"), markdown(r))?;
    plot(r, &out.join("drain.png"))
}

fn mb(b: f64) -> f64 {
    b / 1e6
}

/// The report as markdown.
pub fn markdown(r: &DrainReport) -> String {
    let mut s = String::new();
    let floor = r.floor_s();
    let _ = writeln!(
        s,
        "### Drain: {} pods over {} ({}), median of {} runs\n",
        r.pods,
        describe(&r.link),
        r.label,
        r.runs
    );
    let plain: u64 = r.images.iter().map(|f| f.plain_bytes).sum();
    let esgz: u64 = r.images.iter().map(|f| f.esgz_bytes).sum();
    let _ = writeln!(
        s,
        "{} images: plain {:.1} MB, eStargz {:.1} MB; the workloads need {:.1} MB. \
         Floor {:.2} s = {:.2} s network (needed bytes over the link + {} round trips) + {} local run.\n",
        r.images.len(),
        mb(plain as f64),
        mb(esgz as f64),
        mb(r.needed_bytes() as f64),
        floor,
        r.network_floor_s(),
        crate::coldstart::floor::MIN_ROUND_TRIPS,
        r.local_run_s()
            .map_or("no".to_string(), |l| format!("{l:.2} s"))
    );
    let _ = writeln!(
        s,
        "| mode | all done (s) | × floor | × Go | worst pod (s) | mean pod (s) | best pod (s) | MB fetched | peak RSS (MB) | load (1 min) |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
    for m in r.modes() {
        let Some(c) = r.summary(m) else { continue };
        let go = r
            .summary(m.go_counterpart())
            .filter(|_| m.go_counterpart() != m);
        let load = crate::coldstart::model::median(
            r.samples
                .iter()
                .filter(|x| x.mode == m)
                .map(|x| x.load_avg[0])
                .collect(),
        );
        let _ = writeln!(
            s,
            "| {} | {:.2} | {:.2} | {} | {:.2} | {:.2} | {:.2} | {:.1} | {} | {:.2} |",
            m.label(),
            c.all_s,
            c.all_s / floor,
            go.map_or("".into(), |g| format!("{:.2}", c.all_s / g.all_s)),
            c.worst_pod_s,
            c.mean_pod_s,
            c.best_pod_s,
            mb(c.bytes),
            c.peak_rss_bytes
                .map_or("".into(), |b| format!("{:.0}", mb(b))),
            load
        );
    }
    s
}

/// The run of `mode` whose all-done time is the median one.
fn median_run(r: &DrainReport, mode: Mode) -> Option<&super::DrainSample> {
    let mut runs: Vec<_> = r.samples.iter().filter(|s| s.mode == mode).collect();
    runs.sort_by(|a, b| a.all_s.total_cmp(&b.all_s));
    runs.get(runs.len() / 2).copied()
}

fn plot(r: &DrainReport, path: &Path) -> anyhow::Result<()> {
    register_font()?;
    write_png(path, (1000, 560), |buf| draw(r, buf, (1000, 560)))
}

fn draw(
    r: &DrainReport,
    buf: &mut [u8],
    size: (u32, u32),
) -> Result<(), Box<dyn std::error::Error>> {
    let root = BitMapBackend::with_buffer(buf, size).into_drawing_area();
    root.fill(&WHITE)?;
    let modes = r.modes();
    let floor = r.floor_s();
    let runs: Vec<(usize, Mode, Vec<f64>)> = modes
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            median_run(r, *m).map(|s| {
                let mut pods = s.pods_s.clone();
                pods.sort_by(f64::total_cmp);
                (i, *m, pods)
            })
        })
        .collect();
    let top = runs
        .iter()
        .flat_map(|(_, _, p)| p.iter().copied())
        .chain(floor.is_finite().then_some(floor))
        .fold(0.01f64, f64::max)
        * 1.15;
    let slots = modes.len().max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Drain: {} pods at once over {}; each pod's time (median run), red: floor",
                r.pods,
                describe(&r.link)
            ),
            ("sans-serif", 18),
        )
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..slots as f64, 0f64..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(slots * 2 + 1)
        .x_label_formatter(&|v| {
            // Labels at the slots' centres only.
            let i = (*v - 0.5).round();
            if (*v - 0.5 - i).abs() < 1e-6 && i >= 0.0 {
                modes
                    .get(i as usize)
                    .map_or(String::new(), |m| short(*m).to_string())
            } else {
                String::new()
            }
        })
        .y_desc("seconds from the common start")
        .label_style(("sans-serif", 13))
        .draw()?;
    // One thin bar per pod, slowest last, inside each mode's slot.
    for (i, m, pods) in &runs {
        let n = pods.len().max(1) as f64;
        let x = *i as f64;
        chart.draw_series(pods.iter().enumerate().map(|(k, t)| {
            let x0 = x + 0.1 + 0.8 * k as f64 / n;
            let x1 = x + 0.1 + 0.8 * (k as f64 + 0.8) / n;
            Rectangle::new([(x0, *t), (x1, 0.0)], color(*m).filled())
        }))?;
        let worst = pods.last().copied().unwrap_or(0.0);
        chart.draw_series(std::iter::once(Text::new(
            format!("{worst:.1} s"),
            (x + 0.8, worst + top * 0.03),
            ("sans-serif", 13).into_font().color(&BLACK),
        )))?;
    }
    if floor.is_finite() {
        chart.draw_series(LineSeries::new(
            vec![(0.0, floor), (slots as f64, floor)],
            RED.stroke_width(2),
        ))?;
    }
    root.present()?;
    Ok(())
}
