//! Generated containerd protos (filled in by build.rs).
