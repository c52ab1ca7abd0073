//! The LLB bridge of one build: what `LLBBridge` calls act on.
//!
//! A client-side build (buildctl, buildx) or a frontend asks the bridge to
//! solve definitions; each answer is a ref id the bridge remembers together
//! with its definition, built only when something needs it (`Evaluate`, a
//! file read, or the final result). `Return` hands the build's result (or
//! error) to whoever waits in [`Bridge::returned`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bk_llb::Graph;
use bk_proto::google::rpc;
use bk_proto::moby::buildkit::v1::VertexWarning;
use bk_proto::moby::buildkit::v1::apicaps::ApiCap;
use bk_proto::moby::buildkit::v1::frontend::{self as gw, result::Result as ResultKind};
use bk_proto::moby::buildkit::v1::types::WorkerRecord;
use bk_proto::pb;
use bk_solver::{Job, Progress, ResultRef, SolveError, Solver};
use tokio::sync::{OnceCell, oneshot};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::builtin::{FrontendHost, FrontendResult};
use crate::dockerfile::convert::ImageResolver;

/// Gateway API capabilities this bridge implements.
pub const FRONTEND_CAPS: &[&str] = &[
    "gateway.evaluate",
    "gateway.solve.evaluate",
    "gateway.warnings",
    "proto.refarray",
    "readdir",
    "readfile",
    "resolveimage",
    "resolveimage.resolvemode",
    "return",
    "returnmap",
    "solve.base",
    "statfile",
];

/// LLB capabilities the solver and its ops implement.
pub const LLB_CAPS: &[&str] = &[
    "constraints",
    "exec.cgroup",
    "exec.meta.base",
    "exec.meta.cgroup.parent",
    "exec.meta.network",
    "exec.meta.proxyenv",
    "exec.meta.removemountstubs.recursive",
    "exec.meta.security",
    "exec.meta.setsdefaultpath",
    "exec.meta.ulimit",
    "exec.mount.bind",
    "exec.mount.bind.readwrite-nooutput",
    "exec.mount.cache",
    "exec.mount.cache.sharing",
    "exec.mount.secret",
    "exec.mount.selector",
    "exec.mount.ssh",
    "exec.mount.tmpfs",
    "exec.mount.tmpfs.size",
    "exec.secretenv",
    "exec.validexitcode",
    "file.base",
    "file.copy.alwaysreplaceexistingdestpaths",
    "file.copy.includeexcludepatterns",
    "file.copy.modestring",
    "file.rm.nofollowsymlink",
    "file.rm.wildcard",
    "file.symlink.create",
    "mergeop",
    "meta.description",
    "meta.ignorecache",
    "platform",
    "source.local",
    "source.local.differ",
    "source.local.excludepatterns",
    "source.local.followpaths",
    "source.local.includepatterns",
    "source.local.sessionid",
    "source.local.sharedkeyhint",
    "source.local.unique",
];

fn caps(ids: &[&str]) -> Vec<ApiCap> {
    let mut out: Vec<ApiCap> = ids
        .iter()
        .map(|id| ApiCap {
            id: id.to_string(),
            enabled: true,
            ..Default::default()
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// Bytes of warnings a client frontend may add to one build's progress.
const MAX_WARNING_BYTES: usize = 64 << 20;

/// Definitions one build may have the bridge remember (each up to a
/// message's size), so a client cannot exhaust the daemon's memory.
const MAX_REFS: usize = 4096;

/// What `Return` delivered.
#[derive(Debug, Clone)]
pub enum Returned {
    /// The result is this bridge ref, with the result's metadata (the
    /// image config a frontend made, `containerimage.config`).
    Ref(String, std::collections::BTreeMap<String, Vec<u8>>),
    /// One bridge ref per platform id (`linux/arm64`), with the metadata
    /// (`refs.platforms`, `containerimage.config/<id>`).
    Refs(
        std::collections::BTreeMap<String, String>,
        std::collections::BTreeMap<String, Vec<u8>>,
    ),
    /// A result without a filesystem (`FROM scratch` and nothing more),
    /// with its metadata.
    Empty(std::collections::BTreeMap<String, Vec<u8>>),
    /// The build failed on the client's side.
    Error(rpc::Status),
}

struct BridgeRef<R> {
    definition: pb::Definition,
    result: OnceCell<Result<R, SolveError>>,
}

/// What the daemon lends a bridge for frontends: reading files out of
/// results and resolving image configs.
pub struct BridgeServices<R> {
    pub files: Arc<dyn ResultFiles<R>>,
    pub images: Arc<dyn ImageResolver>,
}

impl<R> Clone for BridgeServices<R> {
    fn clone(&self) -> Self {
        BridgeServices {
            files: self.files.clone(),
            images: self.images.clone(),
        }
    }
}

/// Reads a file of a result (the daemon knows where results live).
#[async_trait]
pub trait ResultFiles<R>: Send + Sync {
    async fn read_file(
        &self,
        result: &R,
        path: &str,
        limit: usize,
    ) -> Result<Option<Vec<u8>>, Status>;
}

/// One build's bridge.
pub struct Bridge<R: ResultRef> {
    solver: Arc<Solver<R>>,
    services: BridgeServices<R>,
    progress: Progress,
    session_group: Vec<String>,
    cancel: CancellationToken,
    workers: Vec<WorkerRecord>,
    /// What the build's `Solve` was granted (`network.host`, …).
    entitlements: Vec<String>,
    refs: Mutex<HashMap<String, Arc<BridgeRef<R>>>>,
    returned: Mutex<Option<oneshot::Sender<Returned>>>,
    warned_bytes: std::sync::atomic::AtomicUsize,
}

fn new_ref_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    bk_llb::Digest::of(format!("{t}:{n}").as_bytes()).as_str()[7..32].to_string()
}

impl<R: ResultRef> Bridge<R> {
    /// A bridge whose solves report to `progress`; the receiver resolves
    /// when the client calls `Return`.
    pub fn new(
        solver: Arc<Solver<R>>,
        progress: Progress,
        session_group: Vec<String>,
        cancel: CancellationToken,
        workers: Vec<WorkerRecord>,
        entitlements: Vec<String>,
        services: BridgeServices<R>,
    ) -> (Arc<Bridge<R>>, oneshot::Receiver<Returned>) {
        let (tx, rx) = oneshot::channel();
        let bridge = Arc::new(Bridge {
            solver,
            services,
            progress,
            session_group,
            cancel,
            workers,
            entitlements,
            refs: Mutex::new(HashMap::new()),
            returned: Mutex::new(Some(tx)),
            warned_bytes: std::sync::atomic::AtomicUsize::new(0),
        });
        (bridge, rx)
    }

    /// `Warn`: a warning in the build's progress, on the vertex the
    /// frontend names.
    pub fn warn_request(&self, req: gw::WarnRequest) -> Result<(), Status> {
        use prost::Message;
        let warning = VertexWarning {
            vertex: req.digest,
            level: req.level,
            short: req.short,
            detail: req.detail,
            url: req.url,
            info: req.info,
            ranges: req.ranges,
        };
        // Every warning stays in the build's progress record: bounded.
        let size = warning.encoded_len();
        let before = self
            .warned_bytes
            .fetch_add(size, std::sync::atomic::Ordering::Relaxed);
        if before + size > MAX_WARNING_BYTES {
            return Err(Status::resource_exhausted(format!(
                "a build may send at most {MAX_WARNING_BYTES} bytes of warnings"
            )));
        }
        self.progress.warn(warning);
        Ok(())
    }

    pub fn ping(&self) -> gw::PongResponse {
        gw::PongResponse {
            frontend_api_caps: caps(FRONTEND_CAPS),
            llb_caps: caps(LLB_CAPS),
            workers: self.workers.clone(),
        }
    }

    /// Records a definition and answers with its ref; builds it only when
    /// asked to evaluate.
    pub async fn solve(&self, req: gw::SolveRequest) -> Result<gw::SolveResponse, Status> {
        let mut metadata = std::collections::BTreeMap::new();
        let result = if !req.frontend.is_empty() {
            if req.definition.as_ref().is_some_and(|d| !d.def.is_empty()) {
                return Err(Status::invalid_argument(
                    "both frontend and definition are set",
                ));
            }
            let out =
                crate::builtin::run(&req.frontend, self, &req.frontend_opt, &req.frontend_inputs)
                    .await?;
            metadata = out.metadata;
            Some(out.result)
        } else {
            req.definition
                .filter(|d| !d.def.is_empty())
                .map(FrontendResult::Single)
        };
        let result_kind = match result {
            None => None,
            // An empty filesystem: a ref without an id, as Go answers.
            Some(FrontendResult::Single(definition)) if definition.def.is_empty() => {
                Some(if req.allow_result_array_ref {
                    ResultKind::Ref(gw::Ref {
                        id: String::new(),
                        def: Some(definition),
                    })
                } else {
                    ResultKind::RefDeprecated(String::new())
                })
            }
            Some(FrontendResult::Single(definition)) => {
                let id = self.register(&definition)?;
                if req.evaluate {
                    self.evaluate(&id).await?;
                }
                Some(if req.allow_result_array_ref {
                    ResultKind::Ref(gw::Ref {
                        id,
                        def: Some(definition),
                    })
                } else {
                    ResultKind::RefDeprecated(id)
                })
            }
            Some(FrontendResult::Platforms(definitions)) => {
                if !req.allow_result_return {
                    return Err(Status::invalid_argument(
                        "a multi-platform result needs a client that takes results",
                    ));
                }
                let mut refs = std::collections::BTreeMap::new();
                for (platform, definition) in definitions {
                    // An empty filesystem: a ref without an id.
                    if definition.def.is_empty() {
                        refs.insert(platform, (String::new(), definition));
                        continue;
                    }
                    let id = self.register(&definition)?;
                    if req.evaluate {
                        self.evaluate(&id).await?;
                    }
                    refs.insert(platform, (id, definition));
                }
                Some(if req.allow_result_array_ref {
                    ResultKind::Refs(gw::RefMap {
                        refs: refs
                            .into_iter()
                            .map(|(p, (id, def))| (p, gw::Ref { id, def: Some(def) }))
                            .collect(),
                    })
                } else {
                    ResultKind::RefsDeprecated(gw::RefMapDeprecated {
                        refs: refs.into_iter().map(|(p, (id, _))| (p, id)).collect(),
                    })
                })
            }
        };
        if req.allow_result_return {
            return Ok(gw::SolveResponse {
                r#ref: String::new(),
                result: Some(gw::Result {
                    result: result_kind,
                    metadata,
                    ..Default::default()
                }),
            });
        }
        let id = match result_kind {
            Some(ResultKind::Ref(r)) => r.id,
            Some(ResultKind::RefDeprecated(id)) => id,
            _ => String::new(),
        };
        Ok(gw::SolveResponse {
            r#ref: id,
            result: None,
        })
    }

    /// `ResolveImageConfig`: an image's digest and config for a platform
    /// (the bridge's own when the request names none).
    pub async fn resolve_image_config(
        &self,
        req: gw::ResolveImageConfigRequest,
    ) -> Result<gw::ResolveImageConfigResponse, Status> {
        if req.resolver_type != 0 {
            return Err(Status::unimplemented(
                "resolving images from OCI layouts is not supported yet by buildkit-rs",
            ));
        }
        let (digest, config) = self
            .resolve_image(&req.r#ref, req.platform, &req.resolve_mode)
            .await?;
        Ok(gw::ResolveImageConfigResponse {
            digest,
            config,
            r#ref: req.r#ref,
        })
    }

    /// An image's digest and config for `platform` (the bridge's own when
    /// none is given).
    async fn resolve_image(
        &self,
        reference: &str,
        platform: Option<pb::Platform>,
        mode: &str,
    ) -> Result<(String, Vec<u8>), Status> {
        let platform = platform
            .filter(|p| !p.os.is_empty())
            .unwrap_or_else(|| FrontendHost::platform(self));
        self.services
            .images
            .resolve(reference, &platform, mode)
            .await
            .map_err(Status::not_found)
    }

    /// `ResolveSourceMeta` for image sources: the resolved digest and (unless
    /// `NoConfig`) the config, the op returned as given. Git and HTTP
    /// sources are not resolved ahead of the build yet.
    pub async fn resolve_source_meta(
        &self,
        req: gw::ResolveSourceMetaRequest,
    ) -> Result<gw::ResolveSourceMetaResponse, Status> {
        let source = req
            .source
            .ok_or_else(|| Status::invalid_argument("missing source"))?;
        let Some(reference) = source.identifier.strip_prefix("docker-image://") else {
            let scheme = source.identifier.split("://").next().unwrap_or_default();
            return Err(Status::unimplemented(format!(
                "resolving {scheme} source metadata is not supported yet by buildkit-rs"
            )));
        };
        let mode = if req.resolve_mode.is_empty() {
            source
                .attrs
                .get("image.resolvemode")
                .cloned()
                .unwrap_or_default()
        } else {
            req.resolve_mode.clone()
        };
        let (digest, config) = self.resolve_image(reference, req.platform, &mode).await?;
        let no_config = req.image.as_ref().is_some_and(|i| i.no_config);
        Ok(gw::ResolveSourceMetaResponse {
            source: Some(source),
            image: Some(gw::ResolveSourceImageResponse {
                digest,
                config: if no_config { Vec::new() } else { config },
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    /// Remembers a checked definition under a new ref id.
    pub fn register(&self, definition: &pb::Definition) -> Result<String, Status> {
        let graph =
            Graph::decode(definition).map_err(|e| Status::invalid_argument(e.to_string()))?;
        graph
            .check_entitlements(&self.entitlements)
            .map_err(Status::permission_denied)?;
        let mut refs = self.refs.lock().unwrap_or_else(|e| e.into_inner());
        if refs.len() >= MAX_REFS {
            return Err(Status::resource_exhausted(format!(
                "a build may hold at most {MAX_REFS} solved definitions"
            )));
        }
        let id = new_ref_id();
        refs.insert(
            id.clone(),
            Arc::new(BridgeRef {
                definition: definition.clone(),
                result: OnceCell::new(),
            }),
        );
        Ok(id)
    }

    /// Builds ref `id` (once; later calls share the outcome).
    pub async fn evaluate(&self, id: &str) -> Result<R, Status> {
        let entry = self
            .refs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("no such ref {id}")))?;
        let outcome = entry
            .result
            .get_or_init(|| async {
                let graph = Graph::decode(&entry.definition)
                    .map_err(|e| SolveError::Invalid(e.to_string()))?;
                let job = Job {
                    graph,
                    session_group: self.session_group.clone(),
                    progress: self.progress.clone(),
                    cancel: self.cancel.clone(),
                };
                self.solver.solve(job).await
            })
            .await;
        outcome.clone().map_err(|e| match e {
            SolveError::Canceled => Status::cancelled("context canceled"),
            SolveError::Invalid(m) => Status::invalid_argument(m),
            SolveError::Op {
                message, vertex, ..
            } => op_error(&entry.definition, vertex.as_str(), &message),
        })
    }

    /// `Return`: the build's result or error, delivered once.
    pub fn r#return(&self, req: gw::ReturnRequest) -> Result<(), Status> {
        let returned = match (req.error.filter(|e| e.code != 0), req.result) {
            (Some(error), _) => Returned::Error(error),
            (None, Some(result)) => match result.result {
                Some(ResultKind::Ref(r)) if !r.id.is_empty() => {
                    Returned::Ref(r.id, result.metadata)
                }
                Some(ResultKind::RefDeprecated(id)) if !id.is_empty() => {
                    Returned::Ref(id, result.metadata)
                }
                Some(ResultKind::Refs(map)) => Returned::Refs(
                    map.refs.into_iter().map(|(p, r)| (p, r.id)).collect(),
                    result.metadata,
                ),
                Some(ResultKind::RefsDeprecated(map)) => {
                    Returned::Refs(map.refs.into_iter().collect(), result.metadata)
                }
                _ => Returned::Empty(result.metadata),
            },
            (None, None) => Returned::Empty(Default::default()),
        };
        let sender = self
            .returned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        match sender {
            Some(tx) => {
                let _ = tx.send(returned);
                Ok(())
            }
            None => Err(Status::failed_precondition("result was already returned")),
        }
    }
}

#[async_trait]
impl<R: ResultRef> FrontendHost<R> for Bridge<R> {
    fn warn(&self, warning: VertexWarning) {
        self.progress.warn(warning);
    }

    async fn solve(&self, definition: pb::Definition) -> Result<R, Status> {
        let id = self.register(&definition)?;
        self.evaluate(&id).await
    }

    async fn read_file(
        &self,
        result: &R,
        path: &str,
        limit: usize,
    ) -> Result<Option<Vec<u8>>, Status> {
        self.services.files.read_file(result, path, limit).await
    }

    fn images(&self) -> &dyn ImageResolver {
        &*self.services.images
    }

    fn platform(&self) -> pb::Platform {
        self.workers
            .first()
            .and_then(|w| w.platforms.first())
            .cloned()
            .unwrap_or_else(|| pb::Platform {
                architecture: "amd64".into(),
                os: "linux".into(),
                ..Default::default()
            })
    }

    fn session_id(&self) -> String {
        self.session_group.first().cloned().unwrap_or_default()
    }
}

/// A failed op's error with BuildKit's details: the vertex, and where the
/// definition's source map puts it (the Dockerfile lines of the step).
fn op_error(definition: &pb::Definition, vertex: &str, message: &str) -> Status {
    let mut details = vec![crate::builtin::vertex_detail(vertex)];
    if let Some(source) = &definition.source
        && let Some(locations) = source.locations.get(vertex)
    {
        for location in &locations.locations {
            let info = usize::try_from(location.source_index)
                .ok()
                .and_then(|i| source.infos.get(i));
            if let Some(info) = info {
                details.push(crate::builtin::source_detail(info, &location.ranges));
            }
        }
    }
    crate::builtin::with_details(tonic::Code::Unknown, message, details)
}
