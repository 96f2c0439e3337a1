//! The layers benchmark's plot: one panel per figure (peak threads,
//! steady RSS, Mounts p99 during background fetch, time per layer), N on
//! a log axis, one line per daemon; drawn like the cold-start plots.

use std::path::Path;

use plotters::prelude::*;

use super::Report;
use super::measure::Cell;
use crate::coldstart::plot::{register_font, write_png};

type Panel = (&'static str, fn(&Cell) -> f64);

const PANELS: [Panel; 4] = [
    ("peak threads (mounting, reading)", |c| {
        c.threads_peak_mount.max(c.threads_peak_read) as f64
    }),
    ("steady RSS after reading every file, MiB", |c| {
        c.rss_steady_kib as f64 / 1024.0
    }),
    ("Mounts p99 during background fetch, ms", |c| {
        c.mounts_busy.p99_ms
    }),
    ("mount time per layer, ms", |c| c.ms_per_layer),
];

const DAEMONS: [(&str, &str, RGBColor); 2] = [
    ("rstargz", "rstargz", RGBColor(230, 120, 40)),
    ("go", "Go reference", RGBColor(90, 150, 220)),
];

/// Draws the figures of `r` against N into the PNG at `path`.
pub fn layers(r: &Report, path: &Path) -> anyhow::Result<()> {
    register_font()?;
    let size = (1100, 820);
    write_png(path, size, |buf| draw(r, buf, size))
}

fn draw(r: &Report, buf: &mut [u8], size: (u32, u32)) -> Result<(), Box<dyn std::error::Error>> {
    let root = BitMapBackend::with_buffer(buf, size).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        "Mounted remote layers through the Snapshots API (same run, each daemon fresh per N)",
        ("sans-serif", 20),
    )?;
    let lo = r.counts.iter().copied().min().unwrap_or(1).max(1) as f64;
    let hi = (r.counts.iter().copied().max().unwrap_or(10) as f64).max(lo * 10.0);
    for (area, (title, get)) in root.split_evenly((2, 2)).iter().zip(PANELS) {
        let top = r.cells.iter().map(get).fold(0.0f64, f64::max).max(0.01) * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d((lo * 0.8..hi * 1.25).log_scale(), 0f64..top)?;
        chart
            .configure_mesh()
            .x_desc("mounted layers (N)")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .label_style(("sans-serif", 13))
            .draw()?;
        for (name, label, color) in DAEMONS {
            let points: Vec<(f64, f64)> = r
                .counts
                .iter()
                .filter_map(|&n| r.cell(name, n).map(|c| (n as f64, get(c))))
                .collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            chart.draw_series(
                points
                    .iter()
                    .map(|&(x, y)| Circle::new((x, y), 4, color.filled())),
            )?;
            chart.draw_series(points.iter().map(|&(x, y)| {
                Text::new(
                    if y >= 10.0 {
                        format!("{y:.0}")
                    } else {
                        format!("{y:.1}")
                    },
                    (x, y + top * 0.03),
                    ("sans-serif", 12).into_font().color(&BLACK),
                )
            }))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()?;
    }
    root.present()?;
    Ok(())
}
