//! The CRI keychain (the Go reference's `service/keychain/cri`): CRI's
//! `runtime.v1.ImageService` served to kubelet and forwarded, call by call,
//! to containerd's. Each PullImage's `auth` (the pod's imagePullSecret)
//! becomes the [`Keychain`] credential of the image's registry host, so
//! the lazily mounted layers of a private image authenticate as its pull
//! did. Every answer and every error (with its gRPC code) is containerd's.
//!
//! Credentials are keyed by registry host, not by image: a newer pull with
//! credentials for the host replaces the older ones, and a pull without
//! credentials, or a RemoveImage, leaves them (running containers of the
//! host's other images may still read their layers).

use rstargz_fs::registry::{AuthFields, Credential, Keychain, Reference, normalise_host};
use rstargz_proto::cri;
use rstargz_proto::cri::image_service_client::ImageServiceClient;
use rstargz_proto::cri::image_service_server::{ImageService, ImageServiceServer};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// Largest message either way: containerd's own limit (a node's ListImages
/// grows with its images).
const MAX_MESSAGE: usize = 16 << 20;

/// The gRPC header carrying the caller's deadline, passed on to containerd.
const TIMEOUT_HEADER: &str = "grpc-timeout";

/// The ImageService proxy.
#[derive(Debug, Clone)]
pub struct CriKeychain {
    keychain: Keychain,
    backend: ImageServiceClient<Channel>,
}

impl CriKeychain {
    /// Keeps pull credentials in `keychain` and forwards every call over
    /// `backend` (containerd's CRI socket).
    pub fn new(keychain: Keychain, backend: Channel) -> Self {
        CriKeychain {
            keychain,
            backend: ImageServiceClient::new(backend)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> ImageServiceServer<CriKeychain> {
        ImageServiceServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// Keeps the credential of a PullImage of `image` with `auth`.
    fn learn(&self, image: &str, auth: Option<&cri::AuthConfig>) {
        let Some(auth) = auth else { return };
        let host = match Reference::parse(image) {
            Ok(r) => r.registry,
            Err(e) => return tracing::debug!(error = %e, "PullImage of an unparsable image"),
        };
        match credential_of(auth, &host) {
            Ok(Some(credential)) => {
                tracing::info!(host = %normalise_host(&host), "CRI keychain: credentials of a PullImage kept");
                self.keychain.insert(&host, credential);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "CRI keychain: PullImage credentials unusable"),
        }
    }
}

/// The credential `auth` gives for the registry `host`; None when it has
/// none, or names another registry (`server_address`).
pub fn credential_of(
    auth: &cri::AuthConfig,
    host: &str,
) -> Result<Option<Credential>, rstargz_fs::registry::RegistryError> {
    if !auth.server_address.is_empty()
        && normalise_host(&auth.server_address) != normalise_host(host)
    {
        return Ok(None);
    }
    AuthFields {
        username: &auth.username,
        password: &auth.password,
        auth: &auth.auth,
        identity_token: &auth.identity_token,
    }
    .credential(host)
}

/// `req` as sent on to containerd: the message and the caller's deadline.
fn forward<T>(req: Request<T>) -> Request<T> {
    let deadline = req.metadata().get(TIMEOUT_HEADER).cloned();
    let mut out = Request::new(req.into_inner());
    if let Some(d) = deadline {
        out.metadata_mut().insert(TIMEOUT_HEADER, d);
    }
    out
}

/// containerd's error as ours: same code, message and details.
fn backend_error(status: Status) -> Status {
    Status::with_details(
        status.code(),
        status.message(),
        status.details().to_vec().into(),
    )
}

/// containerd's answer as ours.
fn answer<T>(res: Result<Response<T>, Status>) -> Result<Response<T>, Status> {
    res.map(|r| Response::new(r.into_inner()))
        .map_err(backend_error)
}

#[tonic::async_trait]
impl ImageService for CriKeychain {
    async fn list_images(
        &self,
        req: Request<cri::ListImagesRequest>,
    ) -> Result<Response<cri::ListImagesResponse>, Status> {
        answer(self.backend.clone().list_images(forward(req)).await)
    }

    async fn image_status(
        &self,
        req: Request<cri::ImageStatusRequest>,
    ) -> Result<Response<cri::ImageStatusResponse>, Status> {
        answer(self.backend.clone().image_status(forward(req)).await)
    }

    async fn pull_image(
        &self,
        req: Request<cri::PullImageRequest>,
    ) -> Result<Response<cri::PullImageResponse>, Status> {
        let r = req.get_ref();
        if let Some(spec) = &r.image {
            self.learn(&spec.image, r.auth.as_ref());
        }
        answer(self.backend.clone().pull_image(forward(req)).await)
    }

    async fn remove_image(
        &self,
        req: Request<cri::RemoveImageRequest>,
    ) -> Result<Response<cri::RemoveImageResponse>, Status> {
        answer(self.backend.clone().remove_image(forward(req)).await)
    }

    async fn image_fs_info(
        &self,
        req: Request<cri::ImageFsInfoRequest>,
    ) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        answer(self.backend.clone().image_fs_info(forward(req)).await)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rstargz_fs::registry::Secret;

    fn basic(user: &str, password: &str) -> Option<Credential> {
        Some(Credential::Basic {
            username: user.into(),
            password: Secret::new(password),
        })
    }

    #[test]
    fn pull_auth_becomes_the_hosts_credential() {
        let auth = |f: fn(&mut cri::AuthConfig)| {
            let mut a = cri::AuthConfig::default();
            f(&mut a);
            a
        };
        let plain = auth(|a| {
            a.username = "u".into();
            a.password = "p".into();
        });
        assert_eq!(credential_of(&plain, "reg:5000").unwrap(), basic("u", "p"));
        // base64("u2:p2"), NUL-padded as some clients send it.
        let encoded = auth(|a| a.auth = "dTI6cDIAAA==".into());
        assert_eq!(
            credential_of(&encoded, "reg:5000").unwrap(),
            basic("u2", "p2")
        );
        let token = auth(|a| a.identity_token = "refresh".into());
        assert!(matches!(
            credential_of(&token, "reg:5000").unwrap(),
            Some(Credential::IdentityToken(_))
        ));
        assert_eq!(
            credential_of(&cri::AuthConfig::default(), "reg:5000").unwrap(),
            None
        );
        // server_address names the registry the secret is for.
        let other = auth(|a| {
            a.username = "u".into();
            a.server_address = "https://other:5000".into();
        });
        assert_eq!(credential_of(&other, "reg:5000").unwrap(), None);
        let hub = auth(|a| {
            a.username = "u".into();
            a.server_address = "https://index.docker.io/v1/".into();
        });
        assert_eq!(credential_of(&hub, "docker.io").unwrap(), basic("u", ""));
        let bad = auth(|a| a.auth = "not base64 of anything!".into());
        let err = credential_of(&bad, "reg:5000").unwrap_err().to_string();
        assert!(!err.contains("anything"), "{err}");
    }

    #[tokio::test]
    async fn a_pull_replaces_the_hosts_credential_and_one_without_auth_keeps_it() {
        let keychain = Keychain::default();
        let proxy = CriKeychain::new(
            keychain.clone(),
            rstargz_snapshotter::client::lazy_channel(std::path::Path::new("/nonexistent.sock")),
        );
        let with = |user: &str| cri::AuthConfig {
            username: user.into(),
            password: "pw".into(),
            ..Default::default()
        };
        proxy.learn("reg:5000/a/b:1", Some(&with("first")));
        proxy.learn("reg:5000/c:2", Some(&with("second")));
        proxy.learn("reg:5000/d:3", None);
        proxy.learn("reg:5000/e:4", Some(&cri::AuthConfig::default()));
        assert_eq!(keychain.get("reg:5000"), basic("second", "pw"));
        proxy.learn("busybox", Some(&with("hub")));
        assert_eq!(keychain.get("registry-1.docker.io"), basic("hub", "pw"));
        assert_eq!(keychain.hosts(), ["index.docker.io", "reg:5000"]);
    }
}
