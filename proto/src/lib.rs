//! Generated containerd protos: the Snapshots service (v1) and the Mount type,
//! as served by rstargz; and Kubernetes' CRI (`runtime.v1`), as kubelet
//! speaks it to containerd's CRI plugin. See `SOURCES` for the upstream tag. The module tree
//! mirrors the proto packages because prost's generated code refers to
//! sibling packages with relative `super::` paths.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// Proto package root `containerd`.
pub mod containerd {
    /// `containerd.types`: the Mount message.
    pub mod types {
        tonic::include_proto!("containerd.types");
    }

    /// `containerd.services`.
    pub mod services {
        /// `containerd.services.snapshots`.
        pub mod snapshots {
            /// `containerd.services.snapshots.v1`: the Snapshots service.
            pub mod v1 {
                tonic::include_proto!("containerd.services.snapshots.v1");
            }
        }
    }
}

/// Proto package root `runtime`.
pub mod runtime {
    /// `runtime.v1`: the CRI RuntimeService and ImageService (cri-api).
    pub mod v1 {
        tonic::include_proto!("runtime.v1");
    }
}

pub use containerd::services::snapshots::v1 as snapshots;
pub use containerd::types;
pub use prost;
pub use prost_types;
pub use runtime::v1 as cri;
pub use tonic;
