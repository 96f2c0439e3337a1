//! Smoke test of `rstargz-bench scale-snapshots` (the snapshots part of
//! `scripts/bench-scale.sh`) at tiny counts against the real daemon's
//! socket: every level of every target has every operation's figures, the
//! store held the level's snapshots while timing, and the plot is written.
//! Asserts the report's shape, never timing.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use crate::common::Daemon;
use rstargz_bench::scale_snapshots::{self, Options, Target};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_snapshots_reports_every_operation_at_every_level() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path());
    let target = |label: &str| Target {
        label: label.into(),
        socket: daemon.socket.clone(),
        snapshotter: "rstargz".into(),
    };
    let opts = Options {
        // The same daemon twice: two targets' snapshots share its store.
        targets: vec![target("a"), target("b")],
        levels: vec![12, 30],
        ops: 4,
        lists: 2,
        max_time: Duration::from_secs(60),
        fill_concurrency: 3,
        namespace: "smoke".into(),
    };
    let report = scale_snapshots::run(&opts).await.unwrap();
    let json = serde_json::to_value(&report).unwrap();
    let targets = json["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2, "{json}");
    for (t, label) in targets.iter().zip(["a", "b"]) {
        assert_eq!(t["label"], label);
        let levels = t["levels"].as_array().unwrap();
        assert_eq!(levels.len(), 2, "{t}");
        for (level, n) in levels.iter().zip([12u64, 30]) {
            assert_eq!(level["snapshots"], n, "{level}");
            assert_eq!(level["load_avg"].as_array().unwrap().len(), 3);
            for op in ["prepare", "commit", "usage", "remove"] {
                assert_eq!(level[op]["ops"], 4, "{op}: {level}");
                assert!(level[op]["per_sec"].as_f64().unwrap() > 0.0, "{op}");
                assert!(
                    level[op]["p99_ms"].as_f64().unwrap() >= level[op]["p50_ms"].as_f64().unwrap()
                );
            }
            assert_eq!(level["list"]["ops"], 2);
            assert!(level["fill"]["ops"].as_u64().unwrap() > 0);
        }
        // Both targets' snapshots are in the one store: at 30 each, 60 in all
        // (+ b's timed ones were removed before it listed).
        let last = &levels[1];
        assert!(last["listed"].as_u64().unwrap() >= 30, "{last}");
    }
    let png = dir.path().join("scale.png");
    scale_snapshots::plot::draw(&report, &png).unwrap();
    assert!(std::fs::metadata(&png).unwrap().len() > 1000);
    daemon.stop();
}
