//! Registry authentication: where credentials come from
//! ([`CredentialsProvider`]) and the Docker token flow (`Authorizer`), as
//! BuildKit's `util/resolver/authorizer.go` does it over containerd's
//! `remotes/docker/auth`.
//!
//! The flow: a request gets a 401 whose `WWW-Authenticate` names a scheme.
//! - `Bearer realm=…,service=…,scope=…`: the host gets a token handler.
//!   Tokens are fetched from the realm for the request's scopes (merged
//!   with the challenge's) and cached per host and scope set until 90 % of
//!   their lifetime has passed (60 s when the server gives none). With a
//!   username and password the token request is a GET with Basic auth,
//!   falling back to the OAuth2 POST form (`grant_type=password`) when the
//!   server answers 401, 404 or 405 (BuildKit: Docker Hub does not accept
//!   POST). With an identity token (no username: what BuildKit's session
//!   returns for a docker config `identitytoken`) it is containerd's POST
//!   form with `grant_type=refresh_token` first, then the GET. Without
//!   credentials the GET is anonymous.
//! - `Basic`: the host's requests carry the credentials, when there are any.
//!
//! A request is retried once after a challenge; a second 401 is the final
//! answer (see `client.rs`). Concurrent requests for one scope set share
//! one token request.
//!
//! Secrets are [`Secret`]s: their `Debug` shows nothing, no error message
//! contains one, and text a token server sends back is scrubbed of them
//! before it reaches an error.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, USER_AGENT, WWW_AUTHENTICATE};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;

use super::RegistryError;
use super::http::{ReqBody, Transport};

/// Text that must never be shown: a password, identity token or bearer
/// token. `Debug` prints `Secret(***)`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself, for putting on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// What BuildKit's `Auth.Credentials` answers: a username and a secret
/// (a password), or no username and an identity (refresh) token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub secret: Secret,
}

impl Credentials {
    pub fn new(username: impl Into<String>, secret: impl Into<String>) -> Credentials {
        Credentials {
            username: username.into(),
            secret: Secret::new(secret),
        }
    }

    /// An identity token (docker config's `identitytoken`).
    pub fn identity_token(token: impl Into<String>) -> Credentials {
        Credentials::new("", token)
    }
}

/// A boxed future, as trait objects need.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where credentials for a registry host come from. The daemon implements
/// it over the build session's Auth service; `None` means anonymous.
pub trait CredentialsProvider: Send + Sync {
    /// Credentials for `host` (`registry-1.docker.io`, `localhost:5000`).
    fn credentials<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Option<Credentials>>;
}

/// No credentials for anyone.
#[derive(Clone, Copy, Debug, Default)]
pub struct AnonymousCredentials;

impl CredentialsProvider for AnonymousCredentials {
    fn credentials<'a>(&'a self, _host: &'a str) -> BoxFuture<'a, Option<Credentials>> {
        Box::pin(async { None })
    }
}

/// Fixed credentials per host (tests, and tools without a session).
#[derive(Clone, Debug, Default)]
pub struct StaticCredentials {
    by_host: BTreeMap<String, Credentials>,
}

impl StaticCredentials {
    pub fn new() -> StaticCredentials {
        StaticCredentials::default()
    }

    pub fn with(mut self, host: impl Into<String>, credentials: Credentials) -> StaticCredentials {
        self.by_host.insert(host.into(), credentials);
        self
    }
}

impl CredentialsProvider for StaticCredentials {
    fn credentials<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Option<Credentials>> {
        let found = self.by_host.get(host).cloned();
        Box::pin(async move { found })
    }
}

/// An authentication scheme containerd understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scheme {
    Basic,
    Bearer,
}

/// One `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: Scheme,
    /// Parameter names lowercased (`realm`, `service`, `scope`, `error`).
    pub params: BTreeMap<String, String>,
}

/// containerd's `ParseAuthHeader`: every `WWW-Authenticate` value, unknown
/// schemes dropped, Bearer before Basic.
pub fn parse_challenges(headers: &HeaderMap) -> Vec<Challenge> {
    let mut out: Vec<Challenge> = headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(parse_challenge)
        .collect();
    // Stable, so equal schemes keep header order.
    out.sort_by_key(|c| std::cmp::Reverse(c.scheme));
    out
}

fn is_token_char(c: u8) -> bool {
    c > 32 && c < 127 && !b"\"(),/:;<=>?@[]\\{}".contains(&c)
}

fn take_token(s: &str) -> (&str, &str) {
    let end = s.bytes().position(|c| !is_token_char(c)).unwrap_or(s.len());
    s.split_at(end)
}

fn skip_space(s: &str) -> &str {
    s.trim_start_matches([' ', '\t', '\r', '\n'])
}

/// One challenge: `scheme k=v, k="quoted \" value"`.
fn parse_challenge(header: &str) -> Option<Challenge> {
    let (scheme, mut rest) = take_token(header);
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "basic" => Scheme::Basic,
        "bearer" => Scheme::Bearer,
        _ => return None,
    };
    let mut params = BTreeMap::new();
    loop {
        let (key, after) = take_token(skip_space(rest));
        if key.is_empty() {
            break;
        }
        let Some(after) = after.strip_prefix('=') else {
            break;
        };
        let (value, after) = match after.strip_prefix('"') {
            Some(quoted) => {
                let mut value = String::new();
                let mut chars = quoted.char_indices();
                let mut end = None;
                while let Some((i, c)) = chars.next() {
                    match c {
                        '"' => {
                            end = Some(i + 1);
                            break;
                        }
                        '\\' => {
                            if let Some((_, escaped)) = chars.next() {
                                value.push(escaped);
                            }
                        }
                        c => value.push(c),
                    }
                }
                // An unterminated quote ends the header.
                (value, end.map_or("", |e| &quoted[e..]))
            }
            None => {
                let (v, a) = take_token(after);
                (v.to_owned(), a)
            }
        };
        params.insert(key.to_ascii_lowercase(), value);
        rest = skip_space(after);
        match rest.strip_prefix(',') {
            Some(r) => rest = r,
            None => break,
        }
    }
    Some(Challenge { scheme, params })
}

/// BuildKit's `parseScopes(...).normalize()`: scopes merged by resource
/// (`repository:name`), actions unioned and sorted, resources sorted.
pub fn normalize_scopes<'a>(scopes: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut by_resource: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for group in scopes {
        for scope in group.split(' ').filter(|s| !s.is_empty()) {
            let mut parts = scope.splitn(3, ':');
            let kind = parts.next().unwrap_or_default();
            let name = parts.next();
            let actions = parts.next();
            let resource = match name {
                Some(n) => format!("{kind}:{n}"),
                None => kind.to_owned(),
            };
            let entry = by_resource.entry(resource).or_default();
            for a in actions.into_iter().flat_map(|a| a.split(',')) {
                if !a.is_empty() {
                    entry.insert(a.to_owned());
                }
            }
        }
    }
    by_resource
        .into_iter()
        .map(|(resource, actions)| {
            format!(
                "{resource}:{}",
                actions.into_iter().collect::<Vec<_>>().join(",")
            )
        })
        .collect()
}

/// How one host authenticates, learnt from its challenge.
enum HostScheme {
    Basic {
        header: Secret,
    },
    Bearer {
        realm: String,
        service: String,
        /// Scopes the challenge asked for, added to every token request
        /// (BuildKit keeps them in the handler's common options).
        scopes: Vec<String>,
        credentials: Option<Credentials>,
    },
}

struct CachedToken {
    header: Secret,
    expires: Instant,
}

/// One host's handler: its scheme and its tokens by scope set.
struct HostAuth {
    scheme: HostScheme,
    // One async lock per scope set, so concurrent requests make one token
    // request and the rest wait for it.
    tokens: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<CachedToken>>>>>,
}

/// The token flow for every host one client talks to; see the module docs.
pub(crate) struct Authorizer {
    credentials: Arc<dyn CredentialsProvider>,
    user_agent: String,
    handlers: Mutex<HashMap<String, Arc<HostAuth>>>,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer").finish_non_exhaustive()
    }
}

/// The `client_id` BuildKit sends in OAuth token requests.
const CLIENT_ID: &str = "buildkit-client";
/// BuildKit's lifetime for tokens that do not say.
const DEFAULT_EXPIRES_IN: u64 = 60;

/// Query and form values: everything but unreserved characters encoded.
const QUERY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

pub(crate) fn encode(s: &str) -> String {
    utf8_percent_encode(s, QUERY).to_string()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every update is a single insert or remove: a poisoned map is whole.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Authorizer {
    pub(crate) fn new(credentials: Arc<dyn CredentialsProvider>, user_agent: &str) -> Authorizer {
        Authorizer {
            credentials,
            user_agent: user_agent.to_owned(),
            handlers: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn credentials(&self) -> Arc<dyn CredentialsProvider> {
        self.credentials.clone()
    }

    /// The `Authorization` value for a request to `host` needing `scopes`,
    /// once the host has challenged us; `None` before (or when it asked
    /// for Basic and we have nothing to give).
    pub(crate) async fn authorize(
        &self,
        host: &str,
        scopes: &[String],
        transport: &Transport,
    ) -> Result<Option<Secret>, RegistryError> {
        let Some(handler) = lock(&self.handlers).get(host).cloned() else {
            return Ok(None);
        };
        let (realm, service, challenge_scopes, credentials) = match &handler.scheme {
            HostScheme::Basic { header } => return Ok(Some(header.clone())),
            HostScheme::Bearer {
                realm,
                service,
                scopes,
                credentials,
            } => (realm, service, scopes, credentials),
        };
        let wanted = normalize_scopes(
            scopes
                .iter()
                .chain(challenge_scopes.iter())
                .map(String::as_str),
        );
        let key = wanted.join(" ");
        let slot = lock(&handler.tokens).entry(key).or_default().clone();
        let mut cached = slot.lock().await;
        if let Some(t) = cached.as_ref().filter(|t| t.expires > Instant::now()) {
            return Ok(Some(t.header.clone()));
        }
        let token = self
            .fetch_token(
                host,
                transport,
                realm,
                service,
                &wanted,
                credentials.as_ref(),
            )
            .await?;
        let header = Secret::new(format!("Bearer {}", token.token.expose()));
        *cached = Some(CachedToken {
            header: header.clone(),
            expires: token.expires,
        });
        Ok(Some(header))
    }

    /// Learns from a 401: sets up (or resets) `host`'s handler from its
    /// challenge. Returns whether the request should be sent again.
    pub(crate) async fn on_unauthorized(&self, host: &str, headers: &HeaderMap) -> bool {
        for challenge in parse_challenges(headers) {
            match challenge.scheme {
                Scheme::Bearer => {
                    let Some(realm) = challenge.params.get("realm").cloned() else {
                        tracing::debug!(host, "bearer challenge without realm");
                        continue;
                    };
                    let mut scopes: Vec<String> = challenge
                        .params
                        .get("scope")
                        .map(|s| {
                            s.split(' ')
                                .filter(|s| !s.is_empty())
                                .map(str::to_owned)
                                .collect()
                        })
                        .unwrap_or_default();
                    // A fresh handler drops cached tokens (they were just
                    // refused) but keeps the scopes learnt so far.
                    let old = lock(&self.handlers).get(host).cloned();
                    if let Some(HostScheme::Bearer { scopes: old, .. }) =
                        old.as_ref().map(|h| &h.scheme)
                    {
                        scopes.extend(old.iter().cloned());
                    }
                    let scopes = normalize_scopes(scopes.iter().map(String::as_str));
                    let credentials = self
                        .credentials
                        .credentials(host)
                        .await
                        .filter(|c| !c.secret.is_empty());
                    let handler = HostAuth {
                        scheme: HostScheme::Bearer {
                            realm,
                            service: challenge.params.get("service").cloned().unwrap_or_default(),
                            scopes,
                            credentials,
                        },
                        tokens: Mutex::default(),
                    };
                    lock(&self.handlers).insert(host.to_owned(), Arc::new(handler));
                    return true;
                }
                Scheme::Basic => {
                    let Some(c) = self.credentials.credentials(host).await else {
                        continue;
                    };
                    if c.username.is_empty() || c.secret.is_empty() {
                        continue;
                    }
                    let encoded = STANDARD.encode(format!("{}:{}", c.username, c.secret.expose()));
                    let handler = HostAuth {
                        scheme: HostScheme::Basic {
                            header: Secret::new(format!("Basic {encoded}")),
                        },
                        tokens: Mutex::default(),
                    };
                    lock(&self.handlers).insert(host.to_owned(), Arc::new(handler));
                    return true;
                }
            }
        }
        false
    }

    async fn fetch_token(
        &self,
        host: &str,
        transport: &Transport,
        realm: &str,
        service: &str,
        scopes: &[String],
        credentials: Option<&Credentials>,
    ) -> Result<Token, RegistryError> {
        let req = TokenRequest {
            host,
            transport,
            realm,
            service,
            scopes,
            user_agent: &self.user_agent,
            credentials,
        };
        match credentials {
            None => req.get("anonymous").await,
            Some(c) if c.username.is_empty() => match req.post().await {
                Err(TokenFailure::Status(s, e)) if matches!(s.as_u16(), 400 | 401 | 404) => {
                    let e = req.scrub(&e);
                    tracing::debug!(host, status = %s, error = %e, "OAuth POST refused; trying GET");
                    req.get("oauth").await
                }
                other => other.map_err(|f| f.into_error(&req, "oauth")),
            },
            Some(_) => match req.get_raw().await {
                Err(TokenFailure::Status(s, e)) if matches!(s.as_u16(), 401 | 404 | 405) => {
                    let e = req.scrub(&e);
                    tracing::debug!(host, status = %s, error = %e, "token GET refused; trying OAuth POST");
                    req.post().await.map_err(|f| f.into_error(&req, "oauth"))
                }
                other => other.map_err(|f| f.into_error(&req, "oauth")),
            },
        }
    }
}

struct Token {
    token: Secret,
    expires: Instant,
}

/// Why a token request failed, before it becomes an error message.
pub(crate) enum TokenFailure {
    Status(StatusCode, String),
    Other(String),
}

impl TokenFailure {
    fn into_error(self, req: &TokenRequest<'_>, kind: &'static str) -> RegistryError {
        let message = match self {
            TokenFailure::Status(s, body) if body.is_empty() => format!("unexpected status {s}"),
            TokenFailure::Status(s, body) => format!("unexpected status {s}: {body}"),
            TokenFailure::Other(m) => m,
        };
        RegistryError::Token {
            kind,
            realm: req.realm.to_owned(),
            host: req.host.to_owned(),
            message: req.scrub(&message),
        }
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: String,
    #[serde(default)]
    access_token: String,
    #[serde(default)]
    expires_in: i64,
}

struct TokenRequest<'a> {
    host: &'a str,
    transport: &'a Transport,
    realm: &'a str,
    service: &'a str,
    scopes: &'a [String],
    user_agent: &'a str,
    credentials: Option<&'a Credentials>,
}

impl TokenRequest<'_> {
    /// Removes any secret from text a server sent (a hostile one could
    /// echo it back).
    fn scrub(&self, text: &str) -> String {
        match self.credentials {
            Some(c) if !c.secret.is_empty() => text.replace(c.secret.expose(), "***"),
            _ => text.to_owned(),
        }
    }

    async fn get(&self, kind: &'static str) -> Result<Token, RegistryError> {
        self.get_raw().await.map_err(|f| f.into_error(self, kind))
    }

    /// containerd's `FetchToken`: GET realm?service=…&scope=…, with Basic
    /// auth when there is a secret.
    async fn get_raw(&self) -> Result<Token, TokenFailure> {
        let mut query = Vec::new();
        if !self.service.is_empty() {
            query.push(format!("service={}", encode(self.service)));
        }
        for s in self.scopes {
            query.push(format!("scope={}", encode(s)));
        }
        let mut url = self.realm.to_owned();
        if !query.is_empty() {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(&query.join("&"));
        }
        let mut builder = Request::builder()
            .method(Method::GET)
            .uri(url)
            .header(USER_AGENT, self.user_agent);
        if let Some(c) = self.credentials.filter(|c| !c.secret.is_empty()) {
            let basic = STANDARD.encode(format!("{}:{}", c.username, c.secret.expose()));
            builder = builder.header(AUTHORIZATION, sensitive(&format!("Basic {basic}"))?);
        }
        let req = builder
            .body(empty())
            .map_err(|e| TokenFailure::Other(format!("invalid token realm: {e}")))?;
        self.send(req).await
    }

    /// containerd's `FetchTokenWithOAuth`: the OAuth2 form POST.
    async fn post(&self) -> Result<Token, TokenFailure> {
        let mut form = Vec::new();
        if !self.scopes.is_empty() {
            form.push(format!("scope={}", encode(&self.scopes.join(" "))));
        }
        form.push(format!("service={}", encode(self.service)));
        form.push(format!("client_id={CLIENT_ID}"));
        match self.credentials {
            Some(c) if !c.username.is_empty() => {
                form.push("grant_type=password".to_owned());
                form.push(format!("username={}", encode(&c.username)));
                form.push(format!("password={}", encode(c.secret.expose())));
            }
            Some(c) => {
                form.push("grant_type=refresh_token".to_owned());
                form.push(format!("refresh_token={}", encode(c.secret.expose())));
            }
            None => {}
        }
        let body: ReqBody = Full::new(Bytes::from(form.join("&")))
            .map_err(|never| match never {})
            .boxed();
        let req = Request::builder()
            .method(Method::POST)
            .uri(self.realm)
            .header(USER_AGENT, self.user_agent)
            .header(
                CONTENT_TYPE,
                "application/x-www-form-urlencoded; charset=utf-8",
            )
            .body(body)
            .map_err(|e| TokenFailure::Other(format!("invalid token realm: {e}")))?;
        self.send(req).await
    }

    async fn send(&self, req: Request<ReqBody>) -> Result<Token, TokenFailure> {
        let resp = self
            .transport
            .send(req)
            .await
            .map_err(|e| TokenFailure::Other(e.message))?;
        let status = resp.status();
        let body = read_limited(resp.into_body(), 1 << 20)
            .await
            .map_err(TokenFailure::Other)?;
        if !(200..400).contains(&status.as_u16()) {
            let text = String::from_utf8_lossy(&body);
            return Err(TokenFailure::Status(status, excerpt(&text)));
        }
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| TokenFailure::Other(format!("unable to decode token response: {e}")))?;
        let token = if parsed.access_token.is_empty() {
            parsed.token
        } else {
            parsed.access_token
        };
        if token.is_empty() {
            return Err(TokenFailure::Other(
                "authorization server did not include a token in the response".into(),
            ));
        }
        let expires_in = u64::try_from(parsed.expires_in)
            .ok()
            .filter(|s| *s > 0)
            .unwrap_or(DEFAULT_EXPIRES_IN);
        // From our clock, not the server's issued_at: a skewed registry
        // clock must not make every token look expired (or eternal).
        let lifetime = Duration::from_millis(expires_in.saturating_mul(900));
        Ok(Token {
            token: Secret::new(token),
            expires: Instant::now() + lifetime,
        })
    }
}

/// A header value marked sensitive (hyper and `http` then never show it).
pub(crate) fn sensitive(value: &str) -> Result<http::HeaderValue, TokenFailure> {
    let mut v = http::HeaderValue::from_str(value)
        .map_err(|_| TokenFailure::Other("credentials are not a valid header value".into()))?;
    v.set_sensitive(true);
    Ok(v)
}

pub(crate) fn empty() -> ReqBody {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

/// The first 200 characters of a server's text, on one line.
pub(crate) fn excerpt(text: &str) -> String {
    let one_line: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    one_line
}

/// Reads at most `limit` bytes of a body (the rest is dropped).
pub(crate) async fn read_limited(
    mut body: hyper::body::Incoming,
    limit: usize,
) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| format!("reading response: {}", super::http::error_chain(&e)))?;
        if let Ok(data) = frame.into_data() {
            let room = limit.saturating_sub(out.len());
            out.extend_from_slice(&data[..data.len().min(room)]);
            if out.len() >= limit {
                break;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(WWW_AUTHENTICATE, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn parses_challenges_like_containerd() {
        let c = parse_challenges(&headers(&[
            r#"Basic realm="basic-realm""#,
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:samalba/my-app:pull,push",error="insufficient_scope""#,
            "Negotiate abc",
        ]));
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].scheme, Scheme::Bearer);
        assert_eq!(c[0].params["realm"], "https://auth.docker.io/token");
        assert_eq!(c[0].params["service"], "registry.docker.io");
        assert_eq!(c[0].params["scope"], "repository:samalba/my-app:pull,push");
        assert_eq!(c[0].params["error"], "insufficient_scope");
        assert_eq!(c[1].scheme, Scheme::Basic);
        assert_eq!(c[1].params["realm"], "basic-realm");

        let c = parse_challenges(&headers(&[r#"BEARER Realm=tok , Scope="a \"b\"""#]));
        assert_eq!(c[0].params["realm"], "tok");
        assert_eq!(c[0].params["scope"], r#"a "b""#);
        // Malformed: what parsed so far is kept.
        let c = parse_challenges(&headers(&[r#"Bearer realm="unterminated"#]));
        assert_eq!(c[0].params["realm"], "unterminated");
        assert!(parse_challenges(&headers(&[""])).is_empty());
    }

    #[test]
    fn normalizes_scopes_like_buildkit() {
        assert_eq!(
            normalize_scopes([
                "repository:b:push",
                "repository:a:pull repository:b:pull",
                "repository:b:pull,push",
                "registry:catalog:*",
            ]),
            [
                "registry:catalog:*",
                "repository:a:pull",
                "repository:b:pull,push"
            ]
        );
        assert!(normalize_scopes([]).is_empty());
    }

    #[test]
    fn secrets_do_not_show() {
        let c = Credentials::new("user", "hunter2");
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(c.secret.expose(), "hunter2");
    }

    #[test]
    fn encodes_query_values() {
        assert_eq!(
            encode("repository:a/b:pull,push x"),
            "repository%3Aa%2Fb%3Apull%2Cpush%20x"
        );
    }
}
