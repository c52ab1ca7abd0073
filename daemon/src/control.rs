//! The `moby.buildkit.v1.Control` service.
//!
//! Builds (`Solve`, `Status`, `DiskUsage`, `Prune`) are [`Builds`]' work;
//! sessions go to the session manager; workers, version and the (not yet
//! recorded) build history are answered here.

use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use bk_proto::moby::buildkit::v1::control_server::Control;
use bk_proto::moby::buildkit::v1::{
    BuildHistoryEvent, BuildHistoryRequest, BytesMessage, DiskUsageRequest, DiskUsageResponse,
    InfoRequest, InfoResponse, ListWorkersRequest, ListWorkersResponse, PruneRequest, SolveRequest,
    SolveResponse, StatusRequest, StatusResponse, UpdateBuildHistoryRequest,
    UpdateBuildHistoryResponse, UsageRecord, types::WorkerRecord,
};
use bk_session::SessionManager;
use futures::{Stream, StreamExt as _};
use tokio::sync::watch;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};

use crate::build::Builds;
use crate::filters::Filters;
use crate::worker::format_platform;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Response header clients use to correct for clock skew.
const CURRENT_TIMESTAMP_HEADER: &str = "buildkit-current-timestamp";

pub struct ControlService {
    workers: Vec<WorkerRecord>,
    sessions: Arc<SessionManager>,
    builds: Arc<Builds>,
    shutdown: watch::Receiver<bool>,
}

impl ControlService {
    pub fn new(
        workers: Vec<WorkerRecord>,
        sessions: Arc<SessionManager>,
        builds: Arc<Builds>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        ControlService {
            workers,
            sessions,
            builds,
            shutdown,
        }
    }
}

fn with_timestamp<T>(body: T) -> Response<T> {
    let mut response = Response::new(body);
    let now = humantime::format_rfc3339_nanos(SystemTime::now()).to_string();
    if let Ok(value) = MetadataValue::try_from(now) {
        response
            .metadata_mut()
            .insert(CURRENT_TIMESTAMP_HEADER, value);
    }
    response
}

fn worker_field(w: &WorkerRecord, path: &[String]) -> Option<String> {
    match path {
        [field] if field == "id" => Some(w.id.clone()),
        [field, key] if field == "labels" => w.labels.get(key).cloned(),
        [field] if field == "platforms" => Some(
            w.platforms
                .iter()
                .map(format_platform)
                .collect::<Vec<_>>()
                .join(","),
        ),
        _ => None,
    }
}

#[tonic::async_trait]
impl Control for ControlService {
    async fn disk_usage(
        &self,
        request: Request<DiskUsageRequest>,
    ) -> Result<Response<DiskUsageResponse>, Status> {
        let record = self.builds.disk_usage(request.into_inner().filter).await?;
        Ok(Response::new(DiskUsageResponse { record }))
    }

    type PruneStream = BoxStream<UsageRecord>;

    async fn prune(
        &self,
        request: Request<PruneRequest>,
    ) -> Result<Response<Self::PruneStream>, Status> {
        let removed = self.builds.prune(request.into_inner()).await?;
        Ok(Response::new(Box::pin(futures::stream::iter(
            removed.into_iter().map(Ok),
        ))))
    }

    async fn solve(
        &self,
        request: Request<SolveRequest>,
    ) -> Result<Response<SolveResponse>, Status> {
        let req = request.into_inner();
        tracing::info!(r#ref = %req.r#ref, frontend = %req.frontend, "solve");
        let response = self.builds.solve(req).await?;
        Ok(Response::new(response))
    }

    type StatusStream = BoxStream<StatusResponse>;

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<Self::StatusStream>, Status> {
        let stream = self.builds.status(&request.get_ref().r#ref).await?;
        Ok(with_timestamp(stream))
    }

    type SessionStream = BoxStream<BytesMessage>;

    async fn session(
        &self,
        request: Request<Streaming<BytesMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let metadata = request.metadata().clone();
        let stream = self.sessions.handle(&metadata, request.into_inner())?;
        Ok(Response::new(stream))
    }

    async fn list_workers(
        &self,
        request: Request<ListWorkersRequest>,
    ) -> Result<Response<ListWorkersResponse>, Status> {
        let filters =
            Filters::parse(&request.get_ref().filter).map_err(Status::invalid_argument)?;
        let record = self
            .workers
            .iter()
            .filter(|w| filters.matches(|path| worker_field(w, path)))
            .cloned()
            .collect();
        Ok(Response::new(ListWorkersResponse { record }))
    }

    async fn info(&self, _request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        Ok(Response::new(InfoResponse {
            buildkit_version: Some(crate::version::buildkit_version()),
        }))
    }

    type ListenBuildHistoryStream = BoxStream<BuildHistoryEvent>;

    async fn listen_build_history(
        &self,
        request: Request<BuildHistoryRequest>,
    ) -> Result<Response<Self::ListenBuildHistoryStream>, Status> {
        let req = request.into_inner();
        // No build has run yet, so there is nothing to replay. With EarlyExit
        // the stream ends cleanly now (buildx's feature probe needs exactly
        // that); otherwise it stays open for live events until the client
        // leaves or the daemon stops.
        if req.early_exit {
            return Ok(with_timestamp(Box::pin(futures::stream::empty())));
        }
        let mut shutdown = self.shutdown.clone();
        let stream = async_stream_until_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        });
        Ok(with_timestamp(stream))
    }

    async fn update_build_history(
        &self,
        request: Request<UpdateBuildHistoryRequest>,
    ) -> Result<Response<UpdateBuildHistoryResponse>, Status> {
        Err(Status::not_found(format!(
            "build history record {:?} not found",
            request.get_ref().r#ref
        )))
    }
}

/// An empty event stream that ends when `until` completes.
fn async_stream_until_shutdown<F>(until: F) -> BoxStream<BuildHistoryEvent>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    Box::pin(futures::stream::once(until).filter_map(|()| std::future::ready(None)))
}
