//! PNG plots of the cold-start benchmark: one figure per link, one panel
//! per image (columns) and converter (rows), each with its own scale, one
//! bar per mode, the floor as a line. Drawn with plotters into a memory bitmap and encoded with `png`;
//! text uses DejaVu Sans read from Debian's fonts-dejavu-core (no system
//! font libraries).

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context, anyhow};
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use super::converters::Converter;
use super::model::{LinkCase, Mode, Report, describe};

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const PANEL_WIDTH: u32 = 480;
const HEIGHT: u32 = 520;

/// Makes DejaVu Sans the "sans-serif" of every plot (once per process).
pub(crate) fn register_font() -> anyhow::Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let bytes = std::fs::read(FONT).map_err(|e| {
            format!("{FONT}: {e} (install fonts-dejavu-core, scripts/setup-bench.sh)")
        })?;
        // plotters keeps fonts for the process's lifetime.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{FONT} is not a usable font"))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// A mode's short name on a plot's axis.
pub(crate) fn short(m: Mode) -> &'static str {
    match m {
        Mode::Overlayfs => "overlayfs",
        Mode::Rstargz => "rstargz",
        Mode::RstargzPrio => "rstargz+p",
        Mode::Go => "Go",
        Mode::GoPrio => "Go+p",
    }
}

/// A mode's bar colour.
pub(crate) fn color(m: Mode) -> RGBColor {
    match m {
        Mode::Overlayfs => RGBColor(140, 140, 140),
        Mode::Rstargz => RGBColor(230, 120, 40),
        Mode::RstargzPrio => RGBColor(200, 60, 20),
        Mode::Go => RGBColor(90, 150, 220),
        Mode::GoPrio => RGBColor(30, 80, 170),
    }
}

/// Draws the cold-start times over `link` into the PNG at `path`.
pub fn cold_start(r: &Report, link: &LinkCase, path: &Path) -> anyhow::Result<()> {
    let panels = r.images.len().max(1) as u32;
    let rows = r.converters.len().max(1) as u32;
    // Wide enough for the title even with one panel.
    let (w, h) = ((PANEL_WIDTH * panels).max(900), HEIGHT * rows);
    write_png(path, (w, h), |buf| draw(r, link, buf, (w, h)))
}

/// Draws a `size` RGB bitmap with `draw` (after registering the font) and
/// writes it to `path` as PNG.
pub(crate) fn write_png(
    path: &Path,
    (w, h): (u32, u32),
    draw: impl FnOnce(&mut [u8]) -> Result<(), Box<dyn std::error::Error>>,
) -> anyhow::Result<()> {
    register_font()?;
    let mut buf = vec![0u8; (w * h * 3) as usize];
    draw(&mut buf).map_err(|e| anyhow!("drawing {}: {e}", path.display()))?;
    let file = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header()?;
    writer.write_image_data(&buf)?;
    writer.finish()?;
    Ok(())
}

fn draw(
    r: &Report,
    link: &LinkCase,
    buf: &mut [u8],
    size: (u32, u32),
) -> Result<(), Box<dyn std::error::Error>> {
    let root = BitMapBackend::with_buffer(buf, size).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        &format!(
            "Cold start (pull + run) over {}, median of {} runs; red line: floor",
            describe(link),
            r.runs
        ),
        ("sans-serif", 20),
    )?;
    let mut converters = r.converters.clone();
    if converters.is_empty() {
        converters.push(Converter::Rstargz);
    }
    let panels = root.split_evenly((converters.len(), r.images.len().max(1)));
    let grid = converters
        .iter()
        .flat_map(|c| r.images.iter().map(move |f| (*c, f)));
    for (panel, (converter, facts)) in panels.iter().zip(grid) {
        let values: Vec<(usize, Mode, f64)> = Mode::ALL
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                r.cell(facts.image, &link.name, *m, converter)
                    .map(|c| (i, *m, c.total_s))
            })
            .collect();
        let floor = r
            .floor(facts.image, link)
            .map(|(n, l)| n + l)
            .filter(|f| f.is_finite());
        let top = values
            .iter()
            .map(|v| v.2)
            .chain(floor)
            .fold(0.0f64, f64::max)
            .max(0.01)
            * 1.15;
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!(
                    "{} on {} ({:.0} MB, needs {:.1} MB)",
                    facts.image.name(),
                    converter.name(),
                    facts.plain_bytes as f64 / 1e6,
                    facts.needs.needed_bytes as f64 / 1e6
                ),
                ("sans-serif", 16),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d((0..Mode::ALL.len() - 1).into_segmented(), 0f64..top)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(Mode::ALL.len())
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => Mode::ALL
                    .get(*i)
                    .map_or(String::new(), |m| short(*m).to_string()),
                SegmentValue::Last => String::new(),
            })
            .y_desc("seconds")
            .label_style(("sans-serif", 13))
            .draw()?;
        chart.draw_series(
            Histogram::vertical(&chart)
                .margin(8)
                .style_func(|x, _| {
                    let i = match x {
                        SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => *i,
                        SegmentValue::Last => 0,
                    };
                    color(Mode::ALL.get(i).copied().unwrap_or(Mode::Overlayfs)).filled()
                })
                .data(values.iter().map(|(i, _, v)| (*i, *v))),
        )?;
        chart.draw_series(values.iter().map(|(i, _, v)| {
            Text::new(
                if *v >= 10.0 {
                    format!("{v:.1}")
                } else {
                    format!("{v:.2}")
                },
                (SegmentValue::CenterOf(*i), *v + top * 0.03),
                ("sans-serif", 13).into_font().color(&BLACK),
            )
        }))?;
        if let Some(f) = floor {
            chart.draw_series(LineSeries::new(
                vec![(SegmentValue::Exact(0), f), (SegmentValue::Last, f)],
                RED.stroke_width(2),
            ))?;
        }
    }
    root.present()?;
    Ok(())
}
