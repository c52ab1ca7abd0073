//! Registry credentials: the daemon asks the build client for them by host
//! ([`credentials`]); the client answers from `~/.docker/config.json` and its
//! credential helpers ([`DockerAuth`]), as the docker CLI and buildctl do.
//!
//! The token-authority flow (the client signing token requests itself) is
//! not offered: clients answer `Unimplemented`, which BuildKit treats as
//! "use Credentials".

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use base64::Engine as _;
use bk_proto::moby::filesync::v1::auth_client::AuthClient;
use bk_proto::moby::filesync::v1::auth_server::{Auth, AuthServer};
use bk_proto::moby::filesync::v1::{
    CredentialsRequest, CredentialsResponse, FetchTokenRequest, FetchTokenResponse,
    GetTokenAuthorityRequest, GetTokenAuthorityResponse, VerifyTokenAuthorityRequest,
    VerifyTokenAuthorityResponse,
};
use serde::Deserialize;
use tonic::{Code, Request, Response, Status};

use crate::{SessionError, SessionManager};

pub const CREDENTIALS: &str = "/moby.filesync.v1.Auth/Credentials";
pub const METHODS: &[&str] = &[
    CREDENTIALS,
    "/moby.filesync.v1.Auth/FetchToken",
    "/moby.filesync.v1.Auth/GetTokenAuthority",
    "/moby.filesync.v1.Auth/VerifyTokenAuthority",
];

/// The key Docker stores Docker Hub credentials under.
const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// Username and secret for a registry; both empty means anonymous.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub secret: String,
}

/// Asks the sessions of `group`, in order, for credentials for `host`.
/// Clients without an Auth service, or answering `Unimplemented`, mean
/// anonymous access.
pub async fn credentials(
    manager: &SessionManager,
    group: &[String],
    host: &str,
) -> Result<Credentials, SessionError> {
    let result = manager
        .any(group, |session| async move {
            if !session.supports(CREDENTIALS) {
                return Ok(Credentials::default());
            }
            let mut client = AuthClient::new(session.channel());
            let request = CredentialsRequest {
                host: host.to_string(),
            };
            let response = session
                .call(client.credentials(request))
                .await?
                .into_inner();
            Ok(Credentials {
                username: response.username,
                secret: response.secret,
            })
        })
        .await;
    match result {
        Err(SessionError::Call(status)) if status.code() == Code::Unimplemented => {
            Ok(Credentials::default())
        }
        other => other,
    }
}

/// Whether a status means "the client does not do that": the caller falls
/// back (to `Credentials`, or to fetching tokens itself).
fn not_offered(status: &tonic::Status) -> bool {
    matches!(status.code(), Code::Unimplemented | Code::Unavailable)
}

/// Asks the client to fetch a registry token itself (it holds a token
/// authority). `None`: it does not; use [`credentials`].
pub async fn fetch_token(
    session: &crate::Session,
    request: FetchTokenRequest,
) -> Result<Option<FetchTokenResponse>, SessionError> {
    if !session.supports("/moby.filesync.v1.Auth/FetchToken") {
        return Ok(None);
    }
    let mut client = AuthClient::new(session.channel());
    match session.call(client.fetch_token(request)).await {
        Ok(response) => Ok(Some(response.into_inner())),
        Err(SessionError::Call(status)) if not_offered(&status) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The client's token-authority public key for `host` (32 bytes), if it
/// has one.
pub async fn token_authority(
    session: &crate::Session,
    host: &str,
    salt: &[u8],
) -> Result<Option<Vec<u8>>, SessionError> {
    if !session.supports("/moby.filesync.v1.Auth/GetTokenAuthority") {
        return Ok(None);
    }
    let mut client = AuthClient::new(session.channel());
    let request = GetTokenAuthorityRequest {
        host: host.to_string(),
        salt: salt.to_vec(),
    };
    match session.call(client.get_token_authority(request)).await {
        Ok(response) => {
            let key = response.into_inner().public_key;
            // An authority key is an ed25519 public key or nothing.
            Ok((key.len() == 32).then_some(key))
        }
        Err(SessionError::Call(status)) if not_offered(&status) => Ok(None),
        Err(e) => Err(e),
    }
}

#[derive(Debug, Default, Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default, rename = "identitytoken")]
    identity_token: Option<String>,
}

#[derive(Debug, Deserialize)]
struct HelperOutput {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

/// The client's Auth service, backed by a Docker config file.
#[derive(Debug, Clone)]
pub struct DockerAuth {
    config: PathBuf,
}

impl DockerAuth {
    /// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
    pub fn from_env() -> DockerAuth {
        let dir = std::env::var_os("DOCKER_CONFIG")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))
            .unwrap_or_else(|| PathBuf::from(".docker"));
        DockerAuth {
            config: dir.join("config.json"),
        }
    }

    pub fn with_config(path: impl Into<PathBuf>) -> DockerAuth {
        DockerAuth {
            config: path.into(),
        }
    }

    pub fn into_service(self) -> AuthServer<DockerAuth> {
        AuthServer::new(self)
    }

    /// Credentials for `host`; anonymous when the config has none.
    pub fn lookup(&self, host: &str) -> Result<Credentials, String> {
        let config: DockerConfig = match std::fs::read(&self.config) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("invalid docker config {}: {e}", self.config.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Credentials::default()),
            Err(e) => return Err(format!("failed to read {}: {e}", self.config.display())),
        };
        let key = match host {
            "docker.io" | "registry-1.docker.io" | "index.docker.io" => DOCKER_HUB_KEY,
            other => other,
        };
        let helper = config.cred_helpers.get(key).or(config.creds_store.as_ref());
        if let Some(creds) = helper.map(|h| run_helper(h, key)).transpose()?.flatten() {
            return Ok(creds);
        }
        let entry = config.auths.get(key).or_else(|| {
            // Entries are sometimes stored as URLs.
            config
                .auths
                .iter()
                .find(|(k, _)| strip_scheme(k).trim_end_matches('/') == key)
                .map(|(_, v)| v)
        });
        let Some(entry) = entry else {
            return Ok(Credentials::default());
        };
        if let Some(token) = entry.identity_token.as_ref().filter(|t| !t.is_empty()) {
            return Ok(Credentials {
                username: String::new(),
                secret: token.clone(),
            });
        }
        if let Some(auth) = entry.auth.as_ref().filter(|a| !a.is_empty()) {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|_| format!("invalid auth for {key} in {}", self.config.display()))?;
            let text = String::from_utf8(decoded).map_err(|_| format!("invalid auth for {key}"))?;
            let (username, secret) = text
                .split_once(':')
                .ok_or_else(|| format!("invalid auth for {key}"))?;
            return Ok(Credentials {
                username: username.to_string(),
                secret: secret.to_string(),
            });
        }
        Ok(Credentials {
            username: entry.username.clone().unwrap_or_default(),
            secret: entry.password.clone().unwrap_or_default(),
        })
    }
}

fn strip_scheme(s: &str) -> &str {
    s.strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s)
}

/// Runs `docker-credential-<helper> get`; `None` when it has nothing.
fn run_helper(helper: &str, key: &str) -> Result<Option<Credentials>, String> {
    let program = format!("docker-credential-{helper}");
    let mut child = match Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => return Err(format!("credential helper {program}: {e}")),
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(key.as_bytes());
    }
    let output = child
        .wait_with_output()
        .map_err(|e| format!("credential helper {program}: {e}"))?;
    if !output.status.success() {
        return Ok(None);
    }
    let parsed: HelperOutput = serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("credential helper {program}: {e}"))?;
    Ok(Some(Credentials {
        username: if parsed.username == "<token>" {
            String::new()
        } else {
            parsed.username
        },
        secret: parsed.secret,
    }))
}

#[tonic::async_trait]
impl Auth for DockerAuth {
    async fn credentials(
        &self,
        request: Request<CredentialsRequest>,
    ) -> Result<Response<CredentialsResponse>, Status> {
        let host = request.into_inner().host;
        let auth = self.clone();
        let creds = tokio::task::spawn_blocking(move || auth.lookup(&host))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(Status::internal)?;
        Ok(Response::new(CredentialsResponse {
            username: creds.username,
            secret: creds.secret,
        }))
    }

    async fn fetch_token(
        &self,
        _: Request<FetchTokenRequest>,
    ) -> Result<Response<FetchTokenResponse>, Status> {
        Err(Status::unimplemented(
            "token fetching is left to the daemon",
        ))
    }

    async fn get_token_authority(
        &self,
        _: Request<GetTokenAuthorityRequest>,
    ) -> Result<Response<GetTokenAuthorityResponse>, Status> {
        Err(Status::unimplemented("no token authority"))
    }

    async fn verify_token_authority(
        &self,
        _: Request<VerifyTokenAuthorityRequest>,
    ) -> Result<Response<VerifyTokenAuthorityResponse>, Status> {
        Err(Status::unimplemented("no token authority"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_docker_config_forms() {
        let dir = std::env::temp_dir().join(format!("bk-auth-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.json");
        let basic = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        std::fs::write(
            &path,
            format!(
                r#"{{"auths": {{
                    "https://index.docker.io/v1/": {{"auth": "{basic}"}},
                    "https://reg.example.com/": {{"username": "bob", "password": "pw"}},
                    "tok.example.com": {{"identitytoken": "idt"}}
                }}}}"#
            ),
        )
        .unwrap();
        let auth = DockerAuth::with_config(&path);
        assert_eq!(
            auth.lookup("docker.io").unwrap(),
            Credentials {
                username: "alice".into(),
                secret: "s3cret".into()
            }
        );
        assert_eq!(auth.lookup("reg.example.com").unwrap().username, "bob");
        assert_eq!(auth.lookup("tok.example.com").unwrap().secret, "idt");
        assert_eq!(
            auth.lookup("other.example.com").unwrap(),
            Credentials::default()
        );
        std::fs::write(&path, "{not json").unwrap();
        assert!(auth.lookup("docker.io").is_err());
        assert_eq!(
            DockerAuth::with_config(dir.join("missing.json"))
                .lookup("docker.io")
                .unwrap(),
            Credentials::default()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
