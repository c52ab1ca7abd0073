//! Running a build the way buildctl does: open a session serving the
//! client's directories, outputs, secrets, SSH agents and registry
//! credentials; call `Solve` and `Status` together; close the session.

use std::time::Duration;

use bk_proto::moby::buildkit::v1::{SolveResponse, StatusResponse};
use bk_session::{RunningSession, auth, content, filesync, secrets, ssh};

use crate::solve_opts::{OutputTarget, PreparedBuild};
use crate::{Client, ClientError};

/// How long a failed build's status stream may take to finish.
const STATUS_DRAIN: Duration = Duration::from_secs(2);

/// How long closing a session waits for the daemon to end it.
const SESSION_CLOSE_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("failed to start session: {0}")]
    Session(String),
    #[error("{0}")]
    Solve(ClientError),
    #[error("{0}")]
    Output(String),
}

/// The OCI layout directories the build's exports write into.
fn store_dirs(prepared: &PreparedBuild) -> Vec<std::path::PathBuf> {
    prepared
        .exports
        .iter()
        .filter_map(|e| match &e.target {
            OutputTarget::Store(dir) => Some(dir.clone()),
            _ => None,
        })
        .collect()
}

/// Opens the build's session with everything `prepared` asks the client to
/// serve. The session id is the request's.
pub async fn start_session(
    client: &Client,
    prepared: &PreparedBuild,
) -> Result<RunningSession, BuildError> {
    let mut session = bk_session::ClientSession::new(prepared.request.session.clone(), "");
    if !prepared.local_dirs.is_empty() {
        let provider = filesync::FileSyncProvider::new(prepared.local_dirs.clone());
        session = session.with_service(
            |r| r.add_service(provider.into_service()),
            filesync::FILESYNC_METHODS,
        );
    }
    let targets: Vec<_> = prepared
        .exports
        .iter()
        .map(|e| e.target.file_send_target())
        .collect();
    if targets.iter().any(Option::is_some) {
        let targets = filesync::FileSendTargets::new(targets);
        session = session.with_service(|r| r.add_service(targets), filesync::FILESEND_METHODS);
    }
    let stores = store_dirs(prepared);
    if stores.len() > 1 {
        // The store id is fixed, as in BuildKit.
        return Err(BuildError::Session(format!(
            "oci store key {:?} already exists",
            content::EXPORT_STORE
        )));
    }
    if let Some(dir) = stores.first() {
        std::fs::create_dir_all(dir)
            .map_err(|e| BuildError::Session(format!("{}: {e}", dir.display())))?;
        let stores = content::LocalStores::new([(content::EXPORT_STORE.to_string(), dir.clone())]);
        session = session.with_service(|r| r.add_service(stores.into_service()), content::METHODS);
    }
    if !prepared.secrets.is_empty() {
        let store = secrets::SecretStore::new(
            prepared
                .secrets
                .iter()
                .map(|s| (s.id.clone(), s.source.clone())),
        );
        session = session.with_service(
            |r| r.add_service(store.into_service()),
            &[secrets::GET_SECRET],
        );
    }
    if !prepared.ssh.is_empty() {
        let forwarder =
            ssh::SshForwarder::new(prepared.ssh.iter().map(|s| (s.id.clone(), s.paths.clone())))
                .map_err(BuildError::Session)?;
        session = session.with_service(|r| r.add_service(forwarder.into_service()), ssh::METHODS);
    }
    let docker_auth = auth::DockerAuth::from_env();
    session = session.with_service(|r| r.add_service(docker_auth.into_service()), auth::METHODS);
    session
        .run(client.control())
        .await
        .map_err(|s| BuildError::Session(s.message().to_string()))
}

impl Client {
    /// Runs a prepared build; every progress update goes to `on_status`.
    pub async fn build(
        &self,
        prepared: PreparedBuild,
        mut on_status: impl FnMut(StatusResponse) + Send + 'static,
    ) -> Result<SolveResponse, BuildError> {
        let session = start_session(self, &prepared).await?;
        let status_client = self.clone();
        let build_ref = prepared.request.r#ref.clone();
        let progress = tokio::spawn(async move {
            let mut stream = status_client.status(&build_ref).await?;
            while let Some(update) = stream.message().await? {
                on_status(update);
            }
            Ok::<_, ClientError>(())
        });
        let stores = store_dirs(&prepared);
        let response = self.solve(prepared.request).await;
        if response.is_err() {
            // The solve error is the one to show, after what the daemon
            // still has to say (the failed step's end, warnings); the
            // stream ends with the job.
            let abort = progress.abort_handle();
            if tokio::time::timeout(STATUS_DRAIN, progress).await.is_err() {
                abort.abort();
            }
        } else if let Ok(Err(e)) = progress.await {
            tracing::warn!("status stream: {e}");
        }
        session.close(SESSION_CLOSE_GRACE).await;
        let response = response.map_err(BuildError::Solve)?;
        for dir in stores {
            crate::oci_layout::record_export(&dir, &response.exporter_response)
                .map_err(|e| BuildError::Output(format!("{}/index.json: {e}", dir.display())))?;
        }
        Ok(response)
    }
}
