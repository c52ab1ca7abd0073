//! buildkitd for buildkit-rs: the one crate that wires concrete types
//! together.
//!
//! Start at [`run`]: it takes the parsed flags and config
//! ([`cli`], [`config`], merged by [`settings`]), locks the state root, binds
//! the listeners ([`listen`]) and serves the gRPC API ([`control`]) until
//! SIGTERM or SIGINT.

pub mod build;
pub mod cli;
pub mod config;
pub mod control;
pub mod debug;
pub mod filters;
mod frontends;
pub mod gateway;
pub mod gc;
pub mod listen;
pub mod settings;
pub mod version;
pub mod worker;

use std::fs::File;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use bk_proto::MAX_MESSAGE_SIZE;
use bk_proto::moby::buildkit::v1::control_server::ControlServer;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;

use crate::settings::Settings;

/// How long in-flight calls get to finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Holds `<root>/buildkitd.lock` for the daemon's lifetime.
fn lock_root(root: &Path) -> anyhow::Result<File> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .with_context(|| format!("failed to create root {}", root.display()))?;
    let path = root.join("buildkitd.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("failed to open {}", path.display()))?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
        |_| {
            anyhow::anyhow!(
                "could not lock {}, another instance running?",
                path.display()
            )
        },
    )?;
    Ok(file)
}

/// Runs the daemon until it is asked to stop.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    for warning in &settings.warnings {
        tracing::warn!("{warning}");
    }
    let _lock = lock_root(&settings.root)?;

    let mut workers = Vec::new();
    let mut oci_config = None;
    if let Some(oci) = &settings.oci {
        let (record, config) = worker::oci_worker_record(&settings.root, oci)?;
        workers.push(record);
        oci_config = Some(config);
    }
    if settings.containerd == Some(true) {
        tracing::warn!("the containerd worker is not implemented yet; it is not started");
    }
    if workers.is_empty() {
        anyhow::bail!("no worker enabled: enable the OCI worker (--oci-worker=true)");
    }
    for w in &workers {
        tracing::info!(id = %w.id, platforms = ?w.platforms.iter().map(worker::format_platform).collect::<Vec<_>>(), "found worker");
    }

    let sessions = bk_session::SessionManager::new();
    let oci_config = oci_config.context("no worker state directory")?;
    // Containers and mounts a killed daemon left go first: only then may
    // the cache delete unfinished snapshot directories. Both before the
    // socket exists, so a client never meets a daemon still recovering.
    bk_worker_oci::OciWorker::recover(&oci_config)
        .await
        .context("worker start-up failed")?;
    let state_dir = oci_config.state_dir.clone();
    let cache = tokio::task::spawn_blocking(move || bk_cache::CacheManager::open(&state_dir))
        .await
        .context("cache start-up failed")??;

    let listeners = listen::Listeners::bind(&settings).await?;
    let socket_paths = listeners.socket_paths();
    if let Some(addr) = &settings.debug_addr {
        debug::serve(addr)
            .await
            .with_context(|| format!("failed to listen on debug address {addr}"))?;
    }

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<ControlServer<control::ControlService>>()
        .await;
    let max_parallelism = settings.oci.as_ref().and_then(|o| o.max_parallelism);
    let oci_worker = bk_worker_oci::OciWorker::new(&oci_config, cache.clone(), sessions.clone())
        .context("worker start-up failed")?;
    // Images: a content store beside the snapshots, pulled through the
    // configured registries with the clients' credentials.
    let content = bk_image::content::ContentStore::open(oci_config.state_dir.join("content"))
        .await
        .context("content store start-up failed")?;
    let hosts = frontends::registry_hosts(&settings.registry)
        .map_err(|e| anyhow::anyhow!("invalid registry configuration: {e}"))?;
    let registry = bk_image::registry::RegistryClient::new(
        hosts,
        std::sync::Arc::new(frontends::SessionCredentials(sessions.clone())),
    );
    let image_store = bk_image::images::ImageStore::open(oci_config.state_dir.join("images.json"))
        .context("image store start-up failed")?;
    let images = std::sync::Arc::new(bk_ops::image::ImageSources::new(
        bk_image::pull::Puller::new(registry, content),
        cache.clone(),
        image_store,
    ));
    let oci_worker =
        oci_worker.with_images(images.clone(), worker::default_image_platform(&workers));
    let worker_stopper = oci_worker.stopper();
    let solver = bk_solver::Solver::new(
        std::sync::Arc::new(oci_worker),
        std::sync::Arc::new(bk_ops::SnapshotResults::new(cache.clone())),
        max_parallelism,
    );
    let builds = build::Builds::new(
        solver,
        cache,
        sessions.clone(),
        settings.entitlements.clone(),
        workers.clone(),
        images,
    );
    let gateway = bk_proto::moby::buildkit::v1::frontend::llb_bridge_server::LlbBridgeServer::new(
        gateway::GatewayService::new(builds.clone()),
    )
    .max_decoding_message_size(MAX_MESSAGE_SIZE)
    .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let control = ControlServer::new(control::ControlService::new(
        workers,
        sessions,
        builds,
        shutdown_rx.clone(),
    ))
    .max_decoding_message_size(MAX_MESSAGE_SIZE)
    .max_encoding_message_size(MAX_MESSAGE_SIZE);

    let incoming = ReceiverStream::new(listeners.accept_all());
    let mut stop = shutdown_rx.clone();
    let server = tonic::transport::Server::builder()
        .initial_stream_window_size(bk_proto::STREAM_WINDOW)
        .initial_connection_window_size(bk_proto::CONNECTION_WINDOW)
        .add_service(health_service)
        .add_service(control)
        .add_service(gateway)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop.wait_for(|s| *s).await;
        });
    let mut server = tokio::spawn(server);

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    tracing::info!(version = version::VERSION, "running server");
    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = sigint.recv() => tracing::info!("SIGINT: shutting down"),
        result = &mut server => {
            result.context("server task failed")?.context("server failed")?;
        }
    }
    let _ = shutdown_tx.send(true);
    if tokio::time::timeout(SHUTDOWN_GRACE, &mut server)
        .await
        .is_err()
    {
        tracing::warn!("calls still open after {SHUTDOWN_GRACE:?}; closing them");
        server.abort();
    }
    // Canceled builds' steps kill their containers and unmount; wait for
    // that, so nothing is left mounted when the process exits.
    worker_stopper.shutdown(SHUTDOWN_GRACE).await;
    for path in socket_paths {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!("stopped");
    Ok(())
}

/// Sets up logging to stderr at the configured level (RUST_LOG, when set,
/// takes precedence).
pub fn init_logging(settings: &Settings) {
    let level = match settings.log_level.as_str() {
        "warning" => "warn",
        "fatal" | "panic" => "error",
        other => other,
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match settings.log_format {
        settings::LogFormat::Json => builder.json().init(),
        settings::LogFormat::Text => builder.init(),
    }
}
