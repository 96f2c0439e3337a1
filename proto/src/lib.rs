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

/// Shows who and where, never the secrets: a `PullImageRequest` logged with `{:?}` (by us,
/// tonic or a caller) must not print the password or tokens kubelet sent.
impl std::fmt::Debug for cri::AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |secret: &str| if secret.is_empty() { "" } else { "<redacted>" };
        f.debug_struct("AuthConfig")
            .field("username", &self.username)
            .field("password", &redacted(&self.password))
            .field("auth", &redacted(&self.auth))
            .field("server_address", &self.server_address)
            .field("identity_token", &redacted(&self.identity_token))
            .field("registry_token", &redacted(&self.registry_token))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::cri;

    #[test]
    fn auth_config_debug_hides_every_secret() {
        let request = cri::PullImageRequest {
            auth: Some(cri::AuthConfig {
                username: "alice".into(),
                password: "hunter2-password".into(),
                auth: "YWxpY2U6aHVudGVyMg==".into(),
                server_address: "127.0.0.1:5000".into(),
                identity_token: "id-token-secret".into(),
                registry_token: "registry-token-secret".into(),
            }),
            ..Default::default()
        };
        let shown = format!("{request:?} {request:#?}");
        for secret in [
            "hunter2-password",
            "YWxpY2U6aHVudGVyMg==",
            "id-token-secret",
            "registry-token-secret",
        ] {
            assert!(!shown.contains(secret), "{secret} leaked: {shown}");
        }
        assert!(
            shown.contains("alice") && shown.contains("127.0.0.1:5000"),
            "{shown}"
        );
    }
}
pub use tonic;
