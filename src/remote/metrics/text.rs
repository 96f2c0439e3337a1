//! Writing the Prometheus text exposition format (version 0.0.4): family
//! headers, samples with escaped label values, and histograms in a unit.

use std::fmt::{Display, Write as _};
use std::time::Duration;

use rstargz_fs::histogram::HistogramSnapshot;

/// Label pairs of one sample, in order.
pub type Labels<'a> = [(&'a str, &'a str)];

/// A metrics page being written.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

/// `v` with `\`, `"` and line feeds escaped, as label values must be.
pub fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

impl Exposition {
    /// Starts the family `name` of `kind` (counter, gauge, histogram).
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample of `name` with `labels`.
    pub fn sample(&mut self, name: &str, labels: &Labels<'_>, value: impl Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// The `_bucket`, `_sum` and `_count` samples of histogram `name`, its
    /// bounds and sum expressed in `unit` (1 ms: `le="16"` is 16 ms).
    pub fn histogram(
        &mut self,
        name: &str,
        labels: &Labels<'_>,
        h: &HistogramSnapshot,
        unit: Duration,
    ) {
        let unit_nanos = unit.as_nanos().max(1) as f64;
        let bucket = format!("{name}_bucket");
        for (bound, count) in h.cumulative() {
            let le = (bound.as_nanos() as f64 / unit_nanos).to_string();
            let with_le: Vec<(&str, &str)> = labels
                .iter()
                .copied()
                .chain([("le", le.as_str())])
                .collect();
            self.sample(&bucket, &with_le, count);
        }
        let inf: Vec<(&str, &str)> = labels.iter().copied().chain([("le", "+Inf")]).collect();
        self.sample(&bucket, &inf, h.count());
        self.sample(
            &format!("{name}_sum"),
            labels,
            h.sum_nanos as f64 / unit_nanos,
        );
        self.sample(&format!("{name}_count"), labels, h.count());
    }

    /// The page.
    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstargz_fs::histogram::GO_MILLISECOND_BOUNDS;

    #[test]
    fn samples_escape_label_values() {
        let mut e = Exposition::default();
        e.family("m", "gauge", "A metric.");
        e.sample("m", &[], 1);
        e.sample("m", &[("a", "x\"y\\z\n"), ("b", "2")], 0.5);
        assert_eq!(
            e.finish(),
            "# HELP m A metric.\n# TYPE m gauge\nm 1\nm{a=\"x\\\"y\\\\z\\n\",b=\"2\"} 0.5\n"
        );
    }

    #[test]
    fn histograms_are_cumulative_in_their_unit() {
        let mut h = HistogramSnapshot::empty(&GO_MILLISECOND_BOUNDS);
        h.observe(Duration::from_micros(1500));
        h.observe(Duration::from_secs(20));
        let mut e = Exposition::default();
        e.histogram("h", &[("op", "x")], &h, Duration::from_millis(1));
        let text = e.finish();
        assert!(text.contains("h_bucket{op=\"x\",le=\"1\"} 0\n"), "{text}");
        assert!(text.contains("h_bucket{op=\"x\",le=\"2\"} 1\n"), "{text}");
        assert!(
            text.contains("h_bucket{op=\"x\",le=\"16384\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("h_bucket{op=\"x\",le=\"+Inf\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("h_sum{op=\"x\"} 20001.5\n"), "{text}");
        assert!(text.contains("h_count{op=\"x\"} 2\n"), "{text}");
    }
}
