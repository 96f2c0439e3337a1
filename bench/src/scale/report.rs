//! The layers benchmark's report as markdown: per N, each daemon's
//! figures and rstargz's ratio to the Go reference's, then rpull.

use std::fmt::Write as _;

use super::Report;
use super::measure::Cell;

fn ratio(ours: f64, go: Option<f64>) -> String {
    match go {
        Some(g) if g > 0.0 => format!("{:.2}×", ours / g),
        _ => "—".into(),
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// One figure of a cell, as a number, and its format.
type Figure = (&'static str, fn(&Cell) -> f64, usize);

const FIGURES: &[Figure] = &[
    ("threads idle", |c| c.threads_idle as f64, 0),
    ("threads peak (mount)", |c| c.threads_peak_mount as f64, 0),
    ("threads peak (read)", |c| c.threads_peak_read as f64, 0),
    ("threads steady", |c| c.threads_steady as f64, 0),
    ("RSS mounted, MiB", |c| mib(c.rss_mounted_kib), 1),
    ("RSS steady, MiB", |c| mib(c.rss_steady_kib), 1),
    ("fds steady", |c| c.fds_steady as f64, 0),
    ("mount, s (all layers)", |c| c.mount_seconds, 2),
    ("ms per layer", |c| c.ms_per_layer, 1),
    ("Prepare p50, ms", |c| c.prepare.p50_ms, 1),
    ("Prepare p99, ms", |c| c.prepare.p99_ms, 1),
    ("Mounts p50 (busy), ms", |c| c.mounts_busy.p50_ms, 2),
    ("Mounts p99 (busy), ms", |c| c.mounts_busy.p99_ms, 2),
    ("Mounts p50 (idle), ms", |c| c.mounts_idle.p50_ms, 2),
    ("Mounts p99 (idle), ms", |c| c.mounts_idle.p99_ms, 2),
    ("read every file, s", |c| c.read_seconds, 2),
];

/// The report as markdown tables.
pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Mounted remote layers (issue 18)\n\n{} cores, kernel {}, {} files of 1–4 KiB per layer, \
         images of up to 100 layers; run took {:.0} s.\n",
        r.cores, r.kernel, r.files_per_layer, r.seconds
    );
    for &n in &r.counts {
        let ours = r.cell("rstargz", n);
        let go = r.cell("go", n);
        let load = |c: Option<&Cell>| {
            c.map_or("—".into(), |c| {
                format!("{:.2}–{:.2}", c.load_average.0, c.load_average.1)
            })
        };
        let _ = writeln!(
            s,
            "## N = {n} ({} roots; load average rstargz {}, Go {})\n",
            ours.or(go).map_or(0, |c| c.roots),
            load(ours),
            load(go)
        );
        let _ = writeln!(
            s,
            "| figure | rstargz | Go reference | ratio |\n|---|---|---|---|"
        );
        for (name, get, digits) in FIGURES {
            let cell =
                |c: Option<&Cell>| c.map_or("—".into(), |c| format!("{:.*}", digits, get(c)));
            let _ = writeln!(
                s,
                "| {name} | {} | {} | {} |",
                cell(ours),
                cell(go),
                ours.map_or("—".into(), |o| ratio(get(o), go.map(get)))
            );
        }
        s.push('\n');
    }
    for (n, why) in &r.go_skipped {
        let _ = writeln!(s, "Go reference not run at N = {n}: {why}.\n");
    }
    if let [a, b, ..] = r.rpull.as_slice() {
        let _ = writeln!(
            s,
            "## rpull of a {}-layer image (median of {})\n\n| | rstargz | Go reference | ratio |\n|---|---|---|---|",
            a.layers,
            a.seconds.len()
        );
        let _ = writeln!(
            s,
            "| seconds | {:.2} ({}) | {:.2} ({}) | {:.2}× |",
            a.median_s,
            join(&a.seconds),
            b.median_s,
            join(&b.seconds),
            a.median_s / b.median_s
        );
        let _ = writeln!(
            s,
            "| threads after | {:?} | {:?} | |\n| load average | {} | {} | |",
            a.threads_after,
            b.threads_after,
            join(&a.load_average),
            join(&b.load_average)
        );
    }
    s
}

fn join(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}
