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
    endpoint()
        .connect_with_connector(unix_connector(socket.to_path_buf()))
        .await
}

/// A channel to `socket` that connects at its first call, and again after
/// the server went away (a daemon forwarding to a service that may start
/// after it, or restart).
pub fn lazy_channel(socket: &Path) -> Channel {
    endpoint().connect_with_connector_lazy(unix_connector(socket.to_path_buf()))
}

fn endpoint() -> Endpoint {
    // The URI is required by tonic but unused: the connector dials the socket.
    Endpoint::from_static("http://[::]:0")
}

fn unix_connector(
    socket: PathBuf,
) -> impl tower::Service<
    Uri,
    Response = TokioIo<tokio::net::UnixStream>,
    Error = std::io::Error,
    Future = impl Future<Output = std::io::Result<TokioIo<tokio::net::UnixStream>>> + Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |_: Uri| {
        let socket = socket.clone();
        async move { Ok(TokioIo::new(tokio::net::UnixStream::connect(socket).await?)) }
    })
}
