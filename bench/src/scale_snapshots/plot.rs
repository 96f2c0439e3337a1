//! The PNG of the snapshot-metadata benchmark: one panel per operation,
//! one group of bars per level, one bar per target (operations per second),
//! drawn with the cold-start plots' font and PNG writer.

use std::path::Path;

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use super::{Level, Rate, Report};
use crate::coldstart::plot::write_png;

const PANEL_WIDTH: u32 = 420;
const HEIGHT: u32 = 480;

/// How to read one operation's figures from a level.
type Pick = fn(&Level) -> &Rate;

/// The operations drawn, with how to read each from a level.
const OPS: [(&str, Pick); 6] = [
    ("Prepare", |l| &l.prepare),
    ("Commit", |l| &l.commit),
    ("Remove", |l| &l.remove),
    ("Usage", |l| &l.usage),
    ("List (whole store)", |l| &l.list),
    ("Fill (concurrent Prepare)", |l| &l.fill),
];

const COLORS: [RGBColor; 5] = [
    RGBColor(230, 120, 40),
    RGBColor(90, 150, 220),
    RGBColor(140, 140, 140),
    RGBColor(200, 60, 20),
    RGBColor(30, 80, 170),
];

/// Draws `r` into the PNG at `path`.
pub fn draw(r: &Report, path: &Path) -> anyhow::Result<()> {
    let size = (PANEL_WIDTH * 3, HEIGHT * 2);
    write_png(path, size, |buf| panels(r, buf, size))
}

fn panels(r: &Report, buf: &mut [u8], size: (u32, u32)) -> Result<(), Box<dyn std::error::Error>> {
    let root = BitMapBackend::with_buffer(buf, size).into_drawing_area();
    root.fill(&WHITE)?;
    let legend = r
        .targets
        .iter()
        .map(|t| t.label.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let root = root.titled(
        &format!("Snapshot operations per second by snapshots in the store; bars: {legend}"),
        ("sans-serif", 18),
    )?;
    let levels: Vec<u64> = r
        .targets
        .first()
        .map(|t| t.levels.iter().map(|l| l.snapshots).collect())
        .unwrap_or_default();
    let bars = r.targets.len().max(1);
    let slots = levels.len() * (bars + 1);
    for (panel, (name, rate)) in root.split_evenly((2, 3)).iter().zip(OPS) {
        let values: Vec<(usize, usize, f64)> = r
            .targets
            .iter()
            .enumerate()
            .flat_map(|(ti, t)| {
                t.levels
                    .iter()
                    .enumerate()
                    .map(move |(li, l)| (li * (bars + 1) + ti, ti, rate(l).per_sec))
            })
            .collect();
        let top = values.iter().map(|v| v.2).fold(0.0f64, f64::max).max(0.01) * 1.15;
        let mut chart = ChartBuilder::on(panel)
            .caption(name, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d((0..slots.max(1) - 1).into_segmented(), 0f64..top)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(slots.max(1))
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) | SegmentValue::Exact(i)
                    if i % (bars + 1) == (bars - 1) / 2 =>
                {
                    levels.get(i / (bars + 1)).map_or(String::new(), |&n| {
                        if n >= 1000 {
                            format!("{}k", n / 1000)
                        } else {
                            n.to_string()
                        }
                    })
                }
                _ => String::new(),
            })
            .y_desc("per second")
            .label_style(("sans-serif", 13))
            .draw()?;
        chart.draw_series(values.iter().map(|(slot, ti, v)| {
            let color = COLORS[ti % COLORS.len()];
            Rectangle::new(
                [
                    (SegmentValue::Exact(*slot), 0.0),
                    (SegmentValue::Exact(*slot + 1), *v),
                ],
                color.filled(),
            )
        }))?;
        chart.draw_series(values.iter().map(|(slot, _, v)| {
            Text::new(
                if *v >= 100.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v:.1}")
                },
                (SegmentValue::Exact(*slot), *v + top * 0.03),
                ("sans-serif", 12).into_font().color(&BLACK),
            )
        }))?;
    }
    root.present()?;
    Ok(())
}
