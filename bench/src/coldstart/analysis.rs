//! The "where the time goes" tables of the report (issue 19): per lazy
//! cell, the medians of what [`probe`](super::probe) counted in the
//! window: daemon CPU (both daemons), and for rstargz the blocking pool's
//! CPU, the registry bytes and the FUSE reads that waited, by purpose.

use std::fmt::Write as _;

use super::converters::Converter;
use super::images::Kind;
use super::model::{LinkCase, Mode, Report, Sample, describe, median};

fn samples<'a>(
    r: &'a Report,
    image: Kind,
    link: &LinkCase,
    mode: Mode,
    c: Converter,
) -> Vec<&'a Sample> {
    r.samples
        .iter()
        .filter(|s| {
            s.image == image && s.link == link.name && s.mode == mode && s.converter == Some(c)
        })
        .collect()
}

fn med(s: &[&Sample], f: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
    let v: Vec<f64> = s.iter().filter_map(|x| f(x)).collect();
    (!v.is_empty()).then(|| median(v))
}

/// The converters' images: size, chunking, and what their prioritized
/// prefix holds (TOCs and manifest included).
fn images(r: &Report) -> String {
    let mut md = String::from(
        "\n### The converters' images\n\n| image | converter | tag | layers MB | chunks | largest chunk | TOCs + prefix MB | made in |\n|---|---|---|---|---|---|---|---|\n",
    );
    for f in &r.images {
        for c in &f.converted {
            let n = &c.needs;
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.1} | {} | {:.2} MiB | {:.2} | {:.0} s |",
                f.image.name(),
                c.converter.name(),
                c.tag,
                n.layer_bytes as f64 / 1e6,
                n.chunks,
                n.largest_chunk as f64 / f64::from(1 << 20),
                n.needed_bytes as f64 / 1e6,
                c.seconds
            );
        }
    }
    md
}

/// The converters' images, then one table per link: one row per image,
/// converter and lazy mode.
pub fn markdown(r: &Report) -> String {
    let mut md = images(r);
    let lazy = [Mode::Rstargz, Mode::Go, Mode::RstargzPrio, Mode::GoPrio];
    for link in &r.links {
        let _ = writeln!(
            md,
            "\n### Where the time goes over {} (medians of {} runs)\n",
            describe(link),
            r.runs
        );
        let _ = writeln!(
            md,
            "Daemon CPU: the snapshotter process's user + system CPU in the window. rstargz only: its blocking pool's CPU (decoding, verifying, disk cache), the registry bytes and requests, and the FUSE reads that waited for a fetch or decode, by purpose (on-demand / prefetch / background).\n"
        );
        let _ = writeln!(
            md,
            "| image | converter | mode | time | daemon CPU | pool CPU s (od / pf / bg) | MB (od / pf / bg) | requests (od / pf / bg) | waited reads (n, mean) |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
        for f in &r.images {
            for c in &r.converters {
                for m in lazy {
                    let s = samples(r, f.image, link, m, *c);
                    if s.is_empty() {
                        continue;
                    }
                    let total = med(&s, |x| Some(x.total_s)).unwrap_or(f64::NAN);
                    let cpu = med(&s, |x| x.probe.as_ref().map(|p| p.daemon_cpu_s));
                    let ours = |g: &dyn Fn(&super::probe::Counters) -> f64| {
                        med(&s, |x| x.probe.as_ref()?.rstargz.as_ref().map(g))
                    };
                    let triple = |g: &dyn Fn(&super::probe::Counters, usize) -> f64,
                                  fmt: &dyn Fn(f64) -> String| {
                        let v: Vec<Option<f64>> = (0..3).map(|i| ours(&|c| g(c, i))).collect();
                        if v.iter().all(Option::is_none) {
                            "—".to_string()
                        } else {
                            v.into_iter()
                                .map(|x| x.map_or("—".into(), fmt))
                                .collect::<Vec<_>>()
                                .join(" / ")
                        }
                    };
                    let pool = triple(&|c, i| c.blocking_cpu_s[i], &|x| format!("{x:.2}"));
                    let mb = triple(&|c, i| c.fetch_bytes[i] as f64 / 1e6, &|x| {
                        format!("{x:.1}")
                    });
                    let req = triple(&|c, i| c.fetch_requests[i] as f64, &|x| format!("{x:.0}"));
                    let waited = match (ours(&|c| c.waited_reads as f64), ours(&|c| c.waited_s)) {
                        (Some(n), Some(sum)) if n > 0.0 => {
                            format!("{n:.0}, {:.1} ms", sum / n * 1e3)
                        }
                        (Some(_), _) => "0".to_string(),
                        _ => "—".to_string(),
                    };
                    let _ = writeln!(
                        md,
                        "| {} | {} | {} | {total:.2} s | {} | {pool} | {mb} | {req} | {waited} |",
                        f.image.name(),
                        c.name(),
                        m.label(),
                        cpu.map_or("—".into(), |x| format!("{x:.2} s")),
                    );
                }
            }
        }
    }
    md
}
