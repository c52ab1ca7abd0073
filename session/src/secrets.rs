//! Secrets: the daemon asks the build client for a secret by id
//! ([`get_secret`]); the client answers from files or environment variables
//! ([`SecretStore`]). Values never appear in errors or logs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use bk_proto::moby::buildkit::secrets::v1::secrets_client::SecretsClient;
use bk_proto::moby::buildkit::secrets::v1::secrets_server::{Secrets, SecretsServer};
use bk_proto::moby::buildkit::secrets::v1::{GetSecretRequest, GetSecretResponse};
use tonic::{Code, Request, Response, Status};

use crate::{SessionError, SessionManager};

pub const GET_SECRET: &str = "/moby.buildkit.secrets.v1.Secrets/GetSecret";

/// Clients refuse secrets above this size (500 KB), and so do we.
pub const MAX_SECRET_SIZE: u64 = 500 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret {0}: not found")]
    NotFound(String),
    #[error("secret {id}: {source}")]
    Session { id: String, source: SessionError },
}

/// Fetches secret `id` from the first session of `group` that has it. A
/// client that does not serve secrets, or answers `NotFound` or
/// `Unimplemented`, does not have it.
pub async fn get_secret(
    manager: &SessionManager,
    group: &[String],
    id: &str,
) -> Result<Vec<u8>, SecretError> {
    let result = manager
        .any(group, |session| async move {
            if !session.supports(GET_SECRET) {
                return Err(SessionError::Call(Status::not_found("no secrets")));
            }
            let mut client = SecretsClient::new(session.channel());
            let request = GetSecretRequest {
                id: id.to_string(),
                annotations: BTreeMap::new(),
            };
            let response = session.call(client.get_secret(request)).await?;
            Ok(response.into_inner().data)
        })
        .await;
    match result {
        Ok(data) => Ok(data),
        Err(SessionError::Call(status))
            if matches!(status.code(), Code::NotFound | Code::Unimplemented) =>
        {
            Err(SecretError::NotFound(id.to_string()))
        }
        Err(source) => Err(SecretError::Session {
            id: id.to_string(),
            source,
        }),
    }
}

/// Where the client reads one secret from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    File(PathBuf),
    Env(String),
}

/// The client's secrets, by id (`--secret id=…,src=…|env=…`).
#[derive(Debug, Clone, Default)]
pub struct SecretStore {
    secrets: BTreeMap<String, SecretSource>,
}

impl SecretStore {
    pub fn new(secrets: impl IntoIterator<Item = (String, SecretSource)>) -> SecretStore {
        SecretStore {
            secrets: secrets.into_iter().collect(),
        }
    }

    /// The gRPC service to add to a client session.
    pub fn into_service(self) -> SecretsServer<SecretStore> {
        SecretsServer::new(self)
    }

    fn read(&self, id: &str) -> Result<Vec<u8>, Status> {
        let not_found = || Status::not_found(format!("secret {id} not found"));
        match self.secrets.get(id).ok_or_else(not_found)? {
            SecretSource::Env(var) => std::env::var_os(var)
                .map(|v| v.into_encoded_bytes())
                .ok_or_else(not_found),
            SecretSource::File(path) => {
                let meta = std::fs::metadata(path).map_err(|_| not_found())?;
                if meta.len() > MAX_SECRET_SIZE {
                    return Err(Status::invalid_argument(format!(
                        "secret {id} is too big: {} bytes, at most {MAX_SECRET_SIZE}",
                        meta.len()
                    )));
                }
                std::fs::read(path)
                    .map_err(|e| Status::internal(format!("secret {id}: {}", e.kind())))
            }
        }
    }
}

#[tonic::async_trait]
impl Secrets for SecretStore {
    async fn get_secret(
        &self,
        request: Request<GetSecretRequest>,
    ) -> Result<Response<GetSecretResponse>, Status> {
        let id = request.into_inner().id;
        let store = self.clone();
        let data = tokio::task::spawn_blocking(move || store.read(&id))
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(GetSecretResponse { data }))
    }
}
