//! Remote (lazily pulled) eStargz layers: [`StargzFs`] implements the
//! snapshotter core's [`RemoteFs`](rstargz_snapshotter::remote_fs::RemoteFs)
//! seam by mounting each layer from its registry over FUSE, with prefetch,
//! background fetch, restore after a restart and live hand-over of mounts
//! (and of the CRI keychain's credentials).

pub mod buffered;
pub mod config;
pub mod cri_keychain;
pub mod decline;
pub mod fd_holder;
pub mod held_credentials;
pub mod image_mount;
pub mod live;
pub mod memory;
pub mod metrics;
pub mod mounts;
pub mod persist;
pub mod policy;
pub mod prefetch;
pub mod resolver;
pub mod restore;
pub mod series;
pub mod source;
pub mod stargz;
pub mod warm;

pub use config::RemoteConfig;
pub use decline::DeclineReason;
pub use stargz::StargzFs;
