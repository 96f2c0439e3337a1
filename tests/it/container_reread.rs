//! The re-read inside a container (issue 18): a container on rstargz
//! (containerd's overlayfs over the FUSE lowers, the daemon's default
//! config) reads a file once, cold, then again. The first read fills the
//! file's passthrough copy, so the second is served by the kernel from it:
//! no FUSE READ of it reaches the daemon (its metrics count them), and the
//! open is a passthrough open. Through the FUSE page cache instead the
//! re-read ran at about a quarter of overlayfs's speed (4 KiB folios), and
//! a copy assembled only after the cold read's close came too late for an
//! immediate re-read. Asserts the mechanism, never the time (that the copy
//! is ready when the last read is answered is checked in
//! `fs/tests/it/fuse_passthrough.rs`).

#![allow(clippy::unwrap_used)]

use crate::common;
use crate::common::image as image_common;

use std::path::Path;

use common::containerd::{Containerd, RunDirGuard};
use common::remote::{sample, scrape};
use common::workload::image_layers;
use common::*;
use image_common::registry::TestRegistry;
use image_common::{build_estargz, client};
use rstargz_image::build::LayerInput;
use sha2::Digest as _;

const PLUGIN: &str = "rstargz";
const NAMESPACE: &str = "rstargz-reread";
const FILE: &str = "/data/a.bin";

/// The daemon with its default config, but no ambient credentials, its
/// metrics on a free port (returned), and no background fetch: the file is
/// then still cold when the container opens it, as a 100 MiB file is in a
/// real run (this small layer would otherwise be streamed whole right
/// after the pull, and the open would assemble the copy from the chunks).
fn start_daemon(dir: &Path) -> (Daemon, String) {
    let addr = format!("127.0.0.1:{}", rstargz_test_support::closed_port());
    let config = dir.join("rstargz.toml");
    std::fs::write(
        &config,
        format!(
            "no_background_fetch = true\nmetrics_address = \"{addr}\"\n\
             [resolver]\ndocker_config = \"{}\"\n",
            dir.join("no-docker-config.json").display()
        ),
    )
    .unwrap();
    let daemon = Daemon::start_with(dir, &["--config", config.to_str().unwrap()]);
    (daemon, addr)
}

/// FUSE operations of kind `op` the daemon has served.
fn fuse_ops(addr: &str, op: &str) -> f64 {
    sample(
        &scrape(addr),
        &format!("rstargz_fuse_operations_total{{op=\"{op}\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_re_read_in_a_container_is_served_without_the_daemon() {
    let _run_dir = RunDirGuard::new();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let reg = TestRegistry::start().await;
    let layers = image_layers(dir);
    let inputs: Vec<LayerInput> = layers.iter().cloned().map(LayerInput::Dir).collect();
    let (esgz, _) = build_estargz(&client(dir), &reg.host(), "reread/image", &inputs).await;
    let want = {
        let host = layers[1].join(&FILE[1..]);
        let sum = sha2::Sha256::digest(std::fs::read(host).unwrap());
        let hex: String = sum.iter().map(|b| format!("{b:02x}")).collect();
        format!("{hex}  {FILE}\n")
    };

    let (daemon, metrics) = start_daemon(dir);
    let ctrd = Containerd::start(dir, &daemon.socket, PLUGIN);
    let image = esgz.to_string();
    let ns = ["--namespace", NAMESPACE];
    ctrd.tool_ok(
        "ctr-remote",
        &[
            &ns[..],
            &[
                "image",
                "rpull",
                "--plain-http",
                "--snapshotter",
                PLUGIN,
                &image,
            ],
        ]
        .concat(),
    );
    let id = "reread";
    let runc_root = dir.join("runc");
    let cgroup = format!("/rstargz-reread-{}", std::process::id());
    ctrd.ctr(
        &[
            &ns[..],
            &[
                "run",
                "-d",
                "--snapshotter",
                PLUGIN,
                "--runc-root",
                runc_root.to_str().unwrap(),
                "--cgroup",
                &cgroup,
                &image,
                id,
                "/bin/busybox",
                "sleep",
                "600",
            ],
        ]
        .concat(),
    );
    let read_in_container = |exec_id: &str| {
        ctrd.ctr(
            &[
                &ns[..],
                &[
                    "task",
                    "exec",
                    "--exec-id",
                    exec_id,
                    id,
                    "/bin/busybox",
                    "sha256sum",
                    FILE,
                ],
            ]
            .concat(),
        )
    };

    let (reads_before, passthrough_before) = (
        fuse_ops(&metrics, "read"),
        fuse_ops(&metrics, "passthrough_open"),
    );
    let (opens_before, releases_before) =
        (fuse_ops(&metrics, "open"), fuse_ops(&metrics, "release"));
    assert_eq!(read_in_container("cold"), want);
    let reads_cold = fuse_ops(&metrics, "read");
    assert!(
        reads_cold > reads_before,
        "the cold read went through the daemon"
    );
    // A new process's open follows the releases of the last one's files
    // in practice; here it is made certain (the container's `sleep` keeps
    // its own opens).
    wait_for("the cold read's releases", || {
        fuse_ops(&metrics, "release") - releases_before >= fuse_ops(&metrics, "open") - opens_before
    });
    assert_eq!(read_in_container("again"), want);
    assert_eq!(
        fuse_ops(&metrics, "read"),
        reads_cold,
        "a READ of the re-read reached the daemon"
    );
    assert_eq!(
        fuse_ops(&metrics, "passthrough_open"),
        passthrough_before + 1.0,
        "the re-read's open was not passed through"
    );
    // Ready because the cold read filled it (not assembled afterwards,
    // which takes a second per 100 MiB and would miss an immediate re-read).
    let filled = sample(
        &scrape(&metrics),
        "rstargz_passthrough_files_total{how=\"filled\"}",
    );
    assert!(filled >= 1.0, "no file was filled by its reads");
    drop(ctrd);
    daemon.stop();
}
