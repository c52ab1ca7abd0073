//! Builds: what `Solve` and `Status` do, and the cache that `DiskUsage` and
//! `Prune` report on.
//!
//! [`Builds::solve`] checks the request, registers the job's progress under
//! its ref before anything slow (clients open `Status` concurrently), solves
//! the graph, and runs the exporters. [`Builds::status`] streams a job's
//! progress from its first update and ends when the job does.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use bk_cache::{CacheManager, Record, Ref};
use bk_frontend::builtin::FrontendResult;
use bk_frontend::{Bridge, Returned};
use bk_llb::{Digest, Graph};
use bk_proto::moby::buildkit::v1::types::WorkerRecord;
use bk_proto::moby::buildkit::v1::{
    Exporter, PruneRequest, SolveRequest, SolveResponse, StatusResponse, UsageRecord,
};
use bk_session::SessionManager;
use bk_solver::{Job, Progress, SolveError, Solver};
use futures::{Stream, StreamExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::filters::Filters;

/// How long `Status` waits for a job that has not started yet.
const JOB_WAIT: Duration = Duration::from_secs(6);
/// How long a finished job's progress stays available to `Status`.
const JOB_RETENTION: Duration = Duration::from_secs(60);
/// How long an exporter waits for the client's session.
const SESSION_WAIT: Duration = Duration::from_secs(5);
/// How long after a build the GC policies run (builds ending together
/// share one run).
const GC_DELAY: Duration = Duration::from_secs(1);

pub struct Builds {
    solver: Arc<Solver<Ref>>,
    cache: CacheManager,
    sessions: Arc<SessionManager>,
    allowed_entitlements: Vec<String>,
    images: Arc<bk_ops::image::ImageSources>,
    workers: Vec<WorkerRecord>,
    jobs: Mutex<HashMap<String, Progress>>,
    /// Bridges of client-side builds, by build ref.
    bridges: Mutex<HashMap<String, Arc<Bridge<Ref>>>>,
    jobs_changed: watch::Sender<u64>,
    /// A GC run is scheduled.
    gc_pending: std::sync::atomic::AtomicBool,
}

/// Finishes a job's progress however the solve ends (including the client
/// dropping the call), and forgets it after a while.
struct JobGuard {
    builds: Arc<Builds>,
    build_ref: String,
    progress: Progress,
    cancel: CancellationToken,
}

impl Drop for JobGuard {
    fn drop(&mut self) {
        tracing::debug!(build_ref = %self.build_ref, "build ended");
        self.cancel.cancel();
        self.builds
            .bridges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.build_ref);
        self.progress.finish();
        self.builds.schedule_gc();
        let builds = self.builds.clone();
        let build_ref = std::mem::take(&mut self.build_ref);
        let progress = self.progress.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                tokio::time::sleep(JOB_RETENTION).await;
                let mut jobs = builds.jobs.lock().unwrap_or_else(|e| e.into_inner());
                // Only if the ref was not reused by a newer job.
                if jobs.get(&build_ref).is_some_and(|p| p.same_as(&progress)) {
                    jobs.remove(&build_ref);
                }
            });
        }
    }
}

fn exporters(req: &SolveRequest) -> Vec<Exporter> {
    if !req.exporters.is_empty() {
        return req.exporters.clone();
    }
    if req.exporter_deprecated.is_empty() {
        return Vec::new();
    }
    vec![Exporter {
        r#type: req.exporter_deprecated.clone(),
        attrs: req.exporter_attrs_deprecated.clone(),
    }]
}

fn solve_status(e: SolveError) -> Status {
    match e {
        SolveError::Canceled => Status::cancelled("context canceled"),
        SolveError::Invalid(m) => Status::invalid_argument(m),
        SolveError::Op { message, .. } => Status::unknown(message),
    }
}

impl Builds {
    pub fn new(
        solver: Arc<Solver<Ref>>,
        cache: CacheManager,
        sessions: Arc<SessionManager>,
        allowed_entitlements: Vec<String>,
        workers: Vec<WorkerRecord>,
        images: Arc<bk_ops::image::ImageSources>,
    ) -> Arc<Builds> {
        Arc::new(Builds {
            images,
            solver,
            cache,
            sessions,
            allowed_entitlements,
            workers,
            jobs: Mutex::new(HashMap::new()),
            bridges: Mutex::new(HashMap::new()),
            jobs_changed: watch::channel(0).0,
            gc_pending: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The bridge of client-side build `id`, waiting up to `wait` for it.
    pub async fn bridge(&self, id: &str, wait: Duration) -> Result<Arc<Bridge<Ref>>, Status> {
        let mut changes = self.jobs_changed.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(b) = self
                .bridges
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(id)
            {
                return Ok(b.clone());
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                _ => return Err(Status::not_found(format!("no such job {id}"))),
            }
        }
    }

    fn check_request(&self, req: &SolveRequest) -> Result<Vec<Exporter>, Status> {
        if req.r#ref.is_empty() {
            return Err(Status::invalid_argument("solve request has no ref"));
        }
        if !req.frontend.is_empty() {
            if req.definition.as_ref().is_some_and(|d| !d.def.is_empty()) {
                return Err(Status::invalid_argument(
                    "both frontend and definition are set",
                ));
            }
            if !bk_frontend::builtin::is_builtin(&req.frontend, &req.frontend_attrs) {
                return Err(Status::unimplemented(format!(
                    "frontend {:?} is not supported yet by buildkit-rs (dockerfile.v0 is)",
                    req.frontend
                )));
            }
        }
        for e in &req.entitlements {
            let base = e.split('=').next().unwrap_or(e);
            if !self
                .allowed_entitlements
                .iter()
                .any(|a| a == e || a == base)
            {
                return Err(Status::permission_denied(format!(
                    "granting entitlement {e} is not allowed by build daemon configuration"
                )));
            }
        }
        let mut exporters = exporters(req);
        // BuildKit hands the build's SOURCE_DATE_EPOCH to every exporter.
        if let Some(epoch) = req.frontend_attrs.get("build-arg:SOURCE_DATE_EPOCH") {
            for e in &mut exporters {
                e.attrs
                    .entry("source-date-epoch".to_string())
                    .or_insert_with(|| epoch.clone());
            }
        }
        for e in &exporters {
            match e.r#type.as_str() {
                "local" | "tar" => {}
                "image" | "oci" | "docker" => {
                    let kind = image_kind(&e.r#type);
                    bk_ops::image_export::ImageExportOptions::from_attrs(kind, &e.attrs)
                        .map_err(|err| Status::invalid_argument(err.to_string()))?;
                }
                other => {
                    return Err(Status::invalid_argument(format!(
                        "exporter {other:?} could not be found"
                    )));
                }
            }
        }
        Ok(exporters)
    }

    /// Serves one `Solve`.
    pub async fn solve(self: &Arc<Self>, req: SolveRequest) -> Result<SolveResponse, Status> {
        let exporters = self.check_request(&req)?;
        // With a definition, solve it; without one, the client builds
        // through the bridge and returns the result.
        let graph = match req.definition.as_ref().filter(|d| !d.def.is_empty()) {
            Some(definition) => {
                let graph = Graph::decode(definition)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
                graph
                    .check_entitlements(&req.entitlements)
                    .map_err(Status::permission_denied)?;
                Some(graph)
            }
            None => None,
        };

        let progress = Progress::new();
        let cancel = CancellationToken::new();
        {
            let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
            if jobs.get(&req.r#ref).is_some_and(|p| !p.is_finished()) {
                return Err(Status::already_exists(format!(
                    "job {} already exists",
                    req.r#ref
                )));
            }
            jobs.insert(req.r#ref.clone(), progress.clone());
        }
        self.jobs_changed.send_modify(|n| *n += 1);
        let _guard = JobGuard {
            builds: self.clone(),
            build_ref: req.r#ref.clone(),
            progress: progress.clone(),
            cancel: cancel.clone(),
        };

        let session_group = vec![req.session.clone()];
        let (result, metadata) = match graph {
            Some(graph) => {
                let job = Job {
                    graph,
                    session_group,
                    progress: progress.clone(),
                    cancel,
                };
                (
                    Some(Built::Single(
                        self.solver.solve(job).await.map_err(solve_status)?,
                    )),
                    BTreeMap::new(),
                )
            }
            // An empty definition (scratch) is an empty result.
            None if req.frontend.is_empty() && req.definition.is_some() => {
                (Some(Built::Empty), BTreeMap::new())
            }
            None if !req.frontend.is_empty() => {
                self.frontend(&req, session_group, &progress, cancel)
                    .await?
            }
            None => {
                self.client_side(
                    &req.r#ref,
                    session_group,
                    &progress,
                    cancel,
                    req.entitlements.clone(),
                )
                .await?
            }
        };

        let mut exporter_response = BTreeMap::new();
        if !exporters.is_empty() {
            let result = result.unwrap_or(Built::Empty);
            for (index, exporter) in exporters.iter().enumerate() {
                let response = self
                    .export(index, exporter, &result, &metadata, &req.session, &progress)
                    .await?;
                exporter_response.extend(response);
            }
        }
        Ok(SolveResponse { exporter_response })
    }

    /// A build by a built-in frontend (`dockerfile.v0`): it reads the
    /// client's files through a bridge of its own and returns a definition,
    /// which is built here.
    async fn frontend(
        &self,
        req: &SolveRequest,
        session_group: Vec<String>,
        progress: &Progress,
        cancel: CancellationToken,
    ) -> Result<(Option<Built>, BTreeMap<String, Vec<u8>>), Status> {
        let (bridge, _returned) = Bridge::new(
            self.solver.clone(),
            progress.clone(),
            session_group.clone(),
            cancel,
            self.workers.clone(),
            req.entitlements.clone(),
            crate::frontends::services(self.images.clone(), session_group),
        );
        let out = bk_frontend::builtin::run(
            &req.frontend,
            &*bridge,
            &req.frontend_attrs,
            &req.frontend_inputs,
        )
        .await?;
        let built = match out.result {
            FrontendResult::Single(definition) if definition.def.is_empty() => Built::Empty,
            FrontendResult::Single(definition) => {
                let id = bridge.register(&definition)?;
                Built::Single(bridge.evaluate(&id).await?)
            }
            FrontendResult::Platforms(definitions) => {
                // An empty definition is an empty filesystem: no ref.
                let ids = definitions
                    .iter()
                    .map(|(p, d)| {
                        let id = if d.def.is_empty() {
                            String::new()
                        } else {
                            bridge.register(d)?
                        };
                        Ok((p.clone(), id))
                    })
                    .collect::<Result<Vec<_>, Status>>()?;
                Built::Platforms(evaluate_all(&bridge, ids).await?)
            }
        };
        Ok((Some(built), out.metadata))
    }

    /// A build driven by the client through the bridge: waits for its
    /// `Return`, then builds what it returned.
    async fn client_side(
        &self,
        build_ref: &str,
        session_group: Vec<String>,
        progress: &Progress,
        cancel: CancellationToken,
        entitlements: Vec<String>,
    ) -> Result<(Option<Built>, BTreeMap<String, Vec<u8>>), Status> {
        let (bridge, returned) = Bridge::new(
            self.solver.clone(),
            progress.clone(),
            session_group.clone(),
            cancel,
            self.workers.clone(),
            entitlements,
            crate::frontends::services(self.images.clone(), session_group),
        );
        self.bridges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(build_ref.to_string(), bridge.clone());
        self.jobs_changed.send_modify(|n| *n += 1);
        let returned = returned
            .await
            .map_err(|_| Status::cancelled("the build ended without a result"))?;
        match returned {
            Returned::Ref(id, metadata) => {
                Ok((Some(Built::Single(bridge.evaluate(&id).await?)), metadata))
            }
            Returned::Refs(ids, metadata) => Ok((
                Some(Built::Platforms(
                    evaluate_all(&bridge, ids.into_iter().collect()).await?,
                )),
                metadata,
            )),
            Returned::Empty(metadata) => Ok((Some(Built::Empty), metadata)),
            // The client's error keeps its details (the Dockerfile source a
            // frontend attached, stacks): clients print them.
            Returned::Error(error) => {
                use prost::Message;
                let code = tonic::Code::from_i32(error.code);
                let message = error.message.clone();
                Err(if error.details.is_empty() {
                    Status::new(code, message)
                } else {
                    Status::with_details(code, message, error.encode_to_vec().into())
                })
            }
        }
    }

    async fn export(
        &self,
        index: usize,
        exporter: &Exporter,
        result: &Built,
        metadata: &BTreeMap<String, Vec<u8>>,
        session_id: &str,
        progress: &Progress,
    ) -> Result<BTreeMap<String, String>, Status> {
        let name = match exporter.r#type.as_str() {
            "tar" => "exporting to client tarball",
            "image" => "exporting to image",
            "oci" => "exporting to oci image format",
            "docker" => "exporting to docker image format",
            _ => "exporting to client directory",
        };
        // Not an LLB vertex: a stable digest of its own.
        let digest = Digest::of(format!("export:{index}:{name}:{}", result.id()).as_bytes());
        progress.announce([(digest.clone(), name.to_string(), vec![])]);
        progress.started(&digest);
        let outcome = async {
            match exporter.r#type.as_str() {
                kind @ ("image" | "oci" | "docker") => {
                    self.export_image(index, kind, exporter, result, metadata, session_id)
                        .await
                }
                other => {
                    let split = match exporter.attrs.get("platform-split").map(String::as_str) {
                        None | Some("") => true,
                        Some("true" | "1") => true,
                        Some("false" | "0") => false,
                        Some(v) => return Err(format!("non-bool value {v:?} for platform-split")),
                    };
                    let tree = match result {
                        Built::Empty => bk_ops::export::ExportTree::Empty,
                        Built::Single(r) => bk_ops::export::ExportTree::Single(r),
                        Built::Platforms(refs) if split => bk_ops::export::ExportTree::Split(
                            refs.iter()
                                .map(|(p, r)| (p.replace('/', "_"), r.as_ref()))
                                .collect(),
                        ),
                        Built::Platforms(refs) if refs.len() == 1 => match &refs[0].1 {
                            Some(r) => bk_ops::export::ExportTree::Single(r),
                            None => bk_ops::export::ExportTree::Empty,
                        },
                        Built::Platforms(_) => {
                            return Err(
                                "platform-split=false with several platforms is not supported yet by buildkit-rs"
                                    .to_string(),
                            );
                        }
                    };
                    let session = self
                        .sessions
                        .get(session_id, SESSION_WAIT)
                        .await
                        .map_err(|e| e.to_string())?;
                    match other {
                        "tar" => bk_ops::export::export_tar(&session, index, tree).await,
                        _ => bk_ops::export::export_local(&session, index, tree).await,
                    }
                    .map_err(|e| e.to_string())?;
                    Ok(BTreeMap::new())
                }
            }
        }
        .await;
        match outcome {
            Ok(response) => {
                progress.completed(&digest, false, None);
                Ok(response)
            }
            Err(message) => {
                progress.completed(&digest, false, Some(&message));
                Err(Status::unknown(message))
            }
        }
    }

    /// `image`, `oci`, `docker`: the result as an image in the content
    /// store, pushed, or streamed to the client as an archive.
    async fn export_image(
        &self,
        index: usize,
        kind: &str,
        exporter: &Exporter,
        result: &Built,
        metadata: &BTreeMap<String, Vec<u8>>,
        session_id: &str,
    ) -> Result<BTreeMap<String, String>, String> {
        use bk_ops::image_export::{self, ExportInput, ImageExportOptions};
        let kind = image_kind(kind);
        let opts =
            ImageExportOptions::from_attrs(kind, &exporter.attrs).map_err(|e| e.to_string())?;
        let store = self.images.puller.store().clone();
        let default_platform = crate::worker::default_image_platform(&self.workers);
        let (inputs, multi) = match result {
            Built::Empty => (
                vec![ExportInput {
                    result: None,
                    config: metadata.get("containerimage.config").map(Vec::as_slice),
                    platform: default_platform,
                }],
                false,
            ),
            Built::Single(r) => (
                vec![ExportInput {
                    result: Some(r),
                    config: metadata.get("containerimage.config").map(Vec::as_slice),
                    platform: default_platform,
                }],
                false,
            ),
            Built::Platforms(refs) => {
                if kind == image_export::ImageExporter::Docker {
                    return Err(
                        "docker exporter does not currently support exporting manifest lists"
                            .to_string(),
                    );
                }
                let mut inputs = Vec::new();
                for (id, r) in refs {
                    let platform = bk_image::platforms::parse(id).map_err(|e| {
                        format!("invalid platform {id:?} in the build's result: {e}")
                    })?;
                    inputs.push(ExportInput {
                        result: r.as_ref(),
                        config: metadata
                            .get(&format!("containerimage.config/{id}"))
                            .map(Vec::as_slice),
                        platform,
                    });
                }
                (inputs, true)
            }
        };
        let targets = image_export::ExportTargets {
            registry: self.images.puller.client(),
            images: &self.images.images,
            gc_lock: &self.images.gc_lock,
        };
        let mut image = bk_ops::image::with_session_group(
            vec![session_id.to_string()],
            image_export::export_image(&self.cache, &store, &targets, &inputs, multi, &opts),
        )
        .await
        .map_err(|e| e.to_string())?;
        if kind == image_export::ImageExporter::Image {
            return Ok(image_export::response(&image));
        }
        image_export::archive_descriptor(&mut image, opts.epoch);
        let response = image_export::response(&image);
        let session = self
            .sessions
            .get(session_id, SESSION_WAIT)
            .await
            .map_err(|e| e.to_string())?;
        if !opts.tar {
            image_export::send_to_client_store(&session, &store, &image)
                .await
                .map_err(|e| e.to_string())?;
        } else {
            bk_ops::export::send_written(&session, index, move |out| {
                image_export::write_archive(&store, kind, &image, out)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())?;
        }
        Ok(response)
    }

    /// Serves one `Status`: waits briefly for the job, then streams it.
    pub async fn status(
        &self,
        build_ref: &str,
    ) -> Result<Pin<Box<dyn Stream<Item = Result<StatusResponse, Status>> + Send>>, Status> {
        let mut changes = self.jobs_changed.subscribe();
        let deadline = tokio::time::Instant::now() + JOB_WAIT;
        let progress = loop {
            if let Some(p) = self
                .jobs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(build_ref)
            {
                break p.clone();
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                _ => return Err(Status::not_found(format!("no such job {build_ref}"))),
            }
        };
        Ok(Box::pin(progress.subscribe().map(Ok)))
    }

    // `parent` is deprecated on the wire but older clients still print it.
    #[allow(deprecated)]
    fn usage_record(&self, r: &Record) -> UsageRecord {
        let ts = |secs: u64| prost_types::Timestamp::from(UNIX_EPOCH + Duration::from_secs(secs));
        UsageRecord {
            id: r.id.clone(),
            mutable: r.mutable,
            in_use: self.cache.in_use(&r.id),
            size: r.size,
            parent: r.parents.first().cloned().unwrap_or_default(),
            created_at: Some(ts(r.created_at)),
            last_used_at: r.last_used_at.map(ts),
            usage_count: r.usage_count as i64,
            description: r.description.clone(),
            record_type: r.kind.as_str().to_string(),
            shared: false,
            parents: r.parents.clone(),
        }
    }

    fn record_field(&self, r: &Record, path: &[String]) -> Option<String> {
        let field = path.first()?.as_str();
        Some(match field {
            "id" => r.id.clone(),
            "description" => r.description.clone(),
            "type" => r.kind.as_str().to_string(),
            "parents" => r.parents.join(";"),
            "inuse" => self.cache.in_use(&r.id).to_string(),
            "mutable" => r.mutable.to_string(),
            "immutable" => (!r.mutable).to_string(),
            "shared" => "false".to_string(),
            "private" => "true".to_string(),
            _ => return None,
        })
    }

    pub async fn disk_usage(
        self: &Arc<Self>,
        filter: Vec<String>,
    ) -> Result<Vec<UsageRecord>, Status> {
        let filters = Filters::parse(&filter).map_err(Status::invalid_argument)?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let records = this
                .cache
                .records()
                .map_err(|e| Status::internal(e.to_string()))?;
            Ok(records
                .iter()
                .filter(|r| filters.matches(|p| this.record_field(r, p)))
                .map(|r| this.usage_record(r))
                .collect())
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
    }

    pub async fn prune(self: &Arc<Self>, req: PruneRequest) -> Result<Vec<UsageRecord>, Status> {
        let spec = crate::gc::PruneSpec {
            filters: Filters::parse(&req.filter).map_err(Status::invalid_argument)?,
            all: req.all,
            keep_duration: Duration::from_nanos(u64::try_from(req.keep_duration).unwrap_or(0)),
            reserved_space: req.reserved_space,
            max_used_space: req.max_used_space,
            min_free_space: req.min_free_space,
        };
        let removed = self
            .prune_blocking(vec![spec])
            .await
            .map_err(Status::internal)?;
        self.collect_content_garbage().await;
        Ok(removed.iter().map(|r| self.usage_record(r)).collect())
    }

    /// Runs `specs` in order on a blocking thread.
    async fn prune_blocking(
        self: &Arc<Self>,
        specs: Vec<crate::gc::PruneSpec>,
    ) -> Result<Vec<Record>, String> {
        let this = self.clone();
        let disk = self.images.puller.store().root().to_path_buf();
        tokio::task::spawn_blocking(move || {
            let mut removed = Vec::new();
            for spec in &specs {
                removed.extend(
                    crate::gc::prune(&this.cache, spec, |r, p| this.record_field(r, p), &disk)
                        .map_err(|e| e.to_string())?,
                );
            }
            Ok(removed)
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// The worker's GC policies, run a moment after builds end (at most
    /// one run waiting at a time), then content garbage collection.
    fn schedule_gc(self: &Arc<Self>) {
        let Some(worker) = self.workers.first() else {
            return;
        };
        if worker.gc_policy.is_empty()
            || self
                .gc_pending
                .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            self.gc_pending
                .store(false, std::sync::atomic::Ordering::Release);
            return;
        };
        let this = self.clone();
        let policies = worker.gc_policy.clone();
        handle.spawn(async move {
            tokio::time::sleep(GC_DELAY).await;
            this.gc_pending
                .store(false, std::sync::atomic::Ordering::Release);
            let mut specs = Vec::new();
            for p in &policies {
                let Ok(filters) = Filters::parse(&p.filters) else {
                    tracing::warn!(filters = ?p.filters, "gc policy with invalid filters skipped");
                    continue;
                };
                specs.push(crate::gc::PruneSpec {
                    filters,
                    all: p.all,
                    keep_duration: Duration::from_nanos(
                        u64::try_from(p.keep_duration).unwrap_or(0),
                    ),
                    reserved_space: p.reserved_space,
                    max_used_space: p.max_used_space,
                    min_free_space: p.min_free_space,
                });
            }
            match this.prune_blocking(specs).await {
                Ok(removed) if !removed.is_empty() => {
                    let bytes: i64 = removed.iter().map(|r| r.size.max(0)).sum();
                    tracing::info!(records = removed.len(), bytes, "garbage collected");
                    this.collect_content_garbage().await;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("garbage collection: {e}"),
            }
        });
    }

    /// Deletes the blobs no named image, live snapshot's layer or running
    /// pull or export needs. Failures are logged: the prune itself worked.
    async fn collect_content_garbage(&self) {
        let _alone = self.images.gc_lock.write().await;
        let (cache, images) = (self.cache.clone(), self.images.images.clone());
        let roots = match tokio::task::spawn_blocking(move || {
            bk_ops::image_export::content_roots(&cache, &images)
        })
        .await
        {
            Ok(Ok(roots)) => roots,
            Ok(Err(e)) => return tracing::warn!("content garbage collection: {e}"),
            Err(e) => return tracing::warn!("content garbage collection: {e}"),
        };
        match bk_image::gc::collect_garbage(self.images.puller.store(), roots).await {
            Ok(report) => tracing::info!(
                blobs = report.deleted.len(),
                bytes = report.bytes,
                "content garbage collected"
            ),
            Err(e) => tracing::warn!("content garbage collection: {e}"),
        }
    }
}

/// What a build produced: one result, or one per platform id.
pub enum Built {
    /// An empty filesystem (a `FROM scratch` result).
    Empty,
    Single(Ref),
    /// By platform id; `None` is an empty filesystem.
    Platforms(Vec<(String, Option<Ref>)>),
}

impl Built {
    /// A name for the result in progress digests.
    fn id(&self) -> String {
        match self {
            Built::Empty => "scratch".to_string(),
            Built::Single(r) => r.id().to_string(),
            Built::Platforms(refs) => refs
                .iter()
                .map(|(p, r)| format!("{p}={}", r.as_ref().map_or("scratch", |r| r.id())))
                .collect::<Vec<_>>()
                .join(","),
        }
    }
}

/// Evaluates each platform's bridge ref, all at once (an empty id is an
/// empty filesystem).
async fn evaluate_all(
    bridge: &Arc<Bridge<Ref>>,
    ids: Vec<(String, String)>,
) -> Result<Vec<(String, Option<Ref>)>, Status> {
    let evaluated = futures::future::try_join_all(ids.iter().map(|(_, id)| async move {
        if id.is_empty() {
            Ok(None)
        } else {
            bridge.evaluate(id).await.map(Some)
        }
    }))
    .await?;
    Ok(ids.into_iter().map(|(p, _)| p).zip(evaluated).collect())
}

fn image_kind(name: &str) -> bk_ops::image_export::ImageExporter {
    use bk_ops::image_export::ImageExporter;
    match name {
        "oci" => ImageExporter::Oci,
        "docker" => ImageExporter::Docker,
        _ => ImageExporter::Image,
    }
}
