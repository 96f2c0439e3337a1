//! `containerd.services.snapshots.v1.Snapshots` served by a `Snapshotter`.
//! Each RPC only converts the request, calls the core and converts back.
//! The `snapshotter` field and the containerd namespace header are ignored:
//! a proxy plugin serves one snapshotter for every namespace.

use std::pin::Pin;

use rstargz_proto::snapshots as pb;
use rstargz_proto::snapshots::snapshots_server::{Snapshots, SnapshotsServer};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::convert;
use super::status::to_status;
use crate::snapshot::Snapshotter;

/// Infos per List message: keeps messages well under gRPC's 4 MiB limit
/// even with large labels.
const LIST_BATCH: usize = 100;

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct SnapshotsService {
    core: Snapshotter,
}

impl SnapshotsService {
    /// Wraps `core`.
    pub fn new(core: Snapshotter) -> SnapshotsService {
        SnapshotsService { core }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> SnapshotsServer<SnapshotsService> {
        SnapshotsServer::new(self)
    }
}

type ListStream = Pin<Box<dyn Stream<Item = Result<pb::ListSnapshotsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Snapshots for SnapshotsService {
    async fn prepare(
        &self,
        req: Request<pb::PrepareSnapshotRequest>,
    ) -> Result<Response<pb::PrepareSnapshotResponse>, Status> {
        let r = req.into_inner();
        let mounts = self
            .core
            .prepare(r.key, r.parent, convert::labels(r.labels))
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::PrepareSnapshotResponse {
            mounts: convert::mounts(mounts),
        }))
    }

    async fn view(
        &self,
        req: Request<pb::ViewSnapshotRequest>,
    ) -> Result<Response<pb::ViewSnapshotResponse>, Status> {
        let r = req.into_inner();
        let mounts = self
            .core
            .view(r.key, r.parent, convert::labels(r.labels))
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::ViewSnapshotResponse {
            mounts: convert::mounts(mounts),
        }))
    }

    async fn mounts(
        &self,
        req: Request<pb::MountsRequest>,
    ) -> Result<Response<pb::MountsResponse>, Status> {
        let mounts = self
            .core
            .mounts(req.into_inner().key)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::MountsResponse {
            mounts: convert::mounts(mounts),
        }))
    }

    async fn commit(
        &self,
        req: Request<pb::CommitSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let r = req.into_inner();
        self.core
            .commit(r.name, r.key, convert::labels(r.labels))
            .await
            .map_err(to_status)?;
        Ok(Response::new(()))
    }

    async fn remove(
        &self,
        req: Request<pb::RemoveSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        self.core
            .remove(req.into_inner().key)
            .await
            .map_err(to_status)?;
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        req: Request<pb::StatSnapshotRequest>,
    ) -> Result<Response<pb::StatSnapshotResponse>, Status> {
        let info = self
            .core
            .stat(req.into_inner().key)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::StatSnapshotResponse {
            info: Some(convert::info(info)),
        }))
    }

    async fn update(
        &self,
        req: Request<pb::UpdateSnapshotRequest>,
    ) -> Result<Response<pb::UpdateSnapshotResponse>, Status> {
        let r = req.into_inner();
        let info = convert::info_from_pb(r.info).map_err(to_status)?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let info = self.core.update(info, paths).await.map_err(to_status)?;
        Ok(Response::new(pb::UpdateSnapshotResponse {
            info: Some(convert::info(info)),
        }))
    }

    type ListStream = ListStream;

    async fn list(
        &self,
        req: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let infos = self
            .core
            .walk(req.into_inner().filters)
            .await
            .map_err(to_status)?;
        let mut batches = Vec::new();
        let mut iter = infos.into_iter().map(convert::info).peekable();
        while iter.peek().is_some() {
            let info: Vec<pb::Info> = iter.by_ref().take(LIST_BATCH).collect();
            batches.push(Ok(pb::ListSnapshotsResponse { info }));
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(batches))))
    }

    async fn usage(
        &self,
        req: Request<pb::UsageRequest>,
    ) -> Result<Response<pb::UsageResponse>, Status> {
        let u = self
            .core
            .usage(req.into_inner().key)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::UsageResponse {
            size: u.size,
            inodes: u.inodes,
        }))
    }

    async fn cleanup(&self, _req: Request<pb::CleanupRequest>) -> Result<Response<()>, Status> {
        self.core.cleanup().await.map_err(to_status)?;
        Ok(Response::new(()))
    }
}
