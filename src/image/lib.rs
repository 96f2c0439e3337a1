//! Images: reading, converting to eStargz/zstd:chunked and writing OCI
//! images held in registries or OCI layout directories.
//!
//! [`convert::convert`] is the `rstargz image convert` engine; [`build`]
//! makes plain test images from local files; [`store`] is the one place
//! that reads and writes blobs and manifests (registry or `oci:DIR[:TAG]`),
//! [`layout`] the OCI layout format, [`oci`] media types and descriptors,
//! [`platform`] the `--platform` selection, [`progress`] the events a
//! caller may show; [`optimize`] runs an image's workload in a container
//! and converts it with the files it opened prioritized.

pub mod build;
pub mod convert;
pub mod error;
pub mod layout;
pub mod oci;
pub mod optimize;
pub mod platform;
pub mod progress;
pub mod store;

pub use convert::{ConvertOptions, ConvertReport, ManifestReport, convert};
pub use error::{ImageError, Result};
pub use progress::{Event, LayerReport, Progress, Quiet, StderrLines};
pub use store::{ImageRef, Store};
