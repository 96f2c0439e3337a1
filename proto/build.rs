//! Compiles the vendored containerd and cri-api protos with protox (no system `protoc`)
//! and generates prost messages plus tonic client and server code.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "containerd/api/types/mount.proto",
    "containerd/api/services/snapshots/v1/snapshots.proto",
    "k8s/cri-api/runtime/v1/api.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(proto).display());
    }
    let fds = protox::compile(PROTOS, [&root])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Its Debug is written by hand (src/lib.rs) so a logged request never shows a secret.
        .skip_debug(["runtime.v1.AuthConfig"])
        .compile_fds(fds)?;
    Ok(())
}
