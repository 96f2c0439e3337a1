//! A Snapshots gRPC client over a unix socket, shared by the bench command
//! and the integration tests (containerd's proxy-plugin wire protocol).

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use rstargz_proto::snapshots::snapshots_client::SnapshotsClient;
use tonic::transport::{Channel, Endpoint, Uri};

/// The generated Snapshots client on a unix-socket channel.
pub type Client = SnapshotsClient<Channel>;

/// Connects to a Snapshots service listening on the unix socket `socket`.
pub async fn connect(socket: &Path) -> Result<Client, tonic::transport::Error> {
    Ok(SnapshotsClient::new(channel(socket).await?))
}

/// A gRPC channel to the unix socket `socket`, for any generated client
/// (the tests also speak CRI to containerd over it).
pub async fn channel(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let socket: PathBuf = socket.to_path_buf();
    // The URI is required by tonic but unused: the connector dials the socket.
    Endpoint::from_static("http://[::]:0")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
}
