//! A token server for the registry's `auth: token:` mode: checks Basic
//! credentials (GET) or the OAuth2 form (POST, password or refresh-token
//! grant) and issues ES256 JWTs with an `x5c` header chaining to a
//! self-signed certificate the registry is told to trust.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};

use super::{TestServer, TokenAuthConfig, b64, b64url, now_unix, respond};

pub const SERVICE: &str = "test-registry";
pub const ISSUER: &str = "test-issuer";

/// One request the token server saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub grant_type: String,
    pub username: String,
    pub scopes: Vec<String>,
    pub granted: bool,
}

#[derive(Clone)]
pub struct TokenOptions {
    pub users: Vec<(String, String)>,
    pub refresh_tokens: Vec<String>,
    /// Anonymous GETs get pull-only tokens.
    pub anonymous_pull: bool,
    pub expires_in: u64,
}

impl Default for TokenOptions {
    fn default() -> Self {
        TokenOptions {
            users: vec![("alice".into(), "s3cret-pa55".into())],
            refresh_tokens: vec!["refresh-t0ken".into()],
            anonymous_pull: false,
            expires_in: 300,
        }
    }
}

pub struct TokenServer {
    pub server: TestServer,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub dir: tempfile::TempDir,
}

fn decode(s: &str) -> String {
    let s = s.replace('+', " ");
    percent_encoding::percent_decode_str(&s)
        .decode_utf8_lossy()
        .into_owned()
}

fn pairs(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

impl TokenServer {
    pub async fn start(opts: TokenOptions) -> TokenServer {
        let dir = tempfile::tempdir().unwrap();
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let rc_key = rcgen::KeyPair::try_from(pkcs8.as_ref()).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["token-signer".to_owned()])
            .unwrap()
            .self_signed(&rc_key)
            .unwrap();
        std::fs::write(dir.path().join("token-root.pem"), cert.pem()).unwrap();
        let x5c = b64(cert.der());
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        let key = Arc::new(key);
        let handler = Arc::new(move |req: &hyper::Request<()>, body: Bytes| {
            let method = req.method().to_string();
            let mut params = pairs(req.uri().query().unwrap_or_default());
            let mut grant_type = String::new();
            let mut user: Option<(String, String)> = None;
            let mut refresh: Option<String> = None;
            if method == "POST" {
                params = pairs(&String::from_utf8_lossy(&body));
                let get = |k: &str| {
                    params
                        .iter()
                        .find(|(pk, _)| pk == k)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                };
                grant_type = get("grant_type");
                match grant_type.as_str() {
                    "password" => user = Some((get("username"), get("password"))),
                    "refresh_token" => refresh = Some(get("refresh_token")),
                    _ => {}
                }
            } else if let Some(auth) = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Basic "))
            {
                use base64::Engine as _;
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(auth)
                    .unwrap_or_default();
                let raw = String::from_utf8_lossy(&raw).into_owned();
                let (u, p) = raw.split_once(':').unwrap_or((&raw, ""));
                user = Some((u.to_owned(), p.to_owned()));
            }
            let scopes: Vec<String> = params
                .iter()
                .filter(|(k, _)| k == "scope")
                .flat_map(|(_, v)| v.split(' ').map(str::to_owned).collect::<Vec<_>>())
                .filter(|s| !s.is_empty())
                .collect();
            let (granted, subject, pull_only) = match (&user, &refresh) {
                (Some((u, p)), _) => (
                    opts.users.iter().any(|(ou, op)| ou == u && op == p),
                    u.clone(),
                    false,
                ),
                (None, Some(t)) => (opts.refresh_tokens.contains(t), "refresh".to_owned(), false),
                (None, None) => (opts.anonymous_pull, String::new(), true),
            };
            log.lock().unwrap().push(Seen {
                method: method.clone(),
                grant_type: grant_type.clone(),
                username: subject.clone(),
                scopes: scopes.clone(),
                granted,
            });
            if !granted {
                return respond(
                    401,
                    &[("Content-Type", "application/json".into())],
                    r#"{"details":"invalid credentials"}"#,
                );
            }
            let access: Vec<serde_json::Value> = scopes
                .iter()
                .filter_map(|s| {
                    let mut parts = s.splitn(3, ':');
                    let kind = parts.next()?;
                    let name = parts.next()?;
                    let actions: Vec<&str> = parts
                        .next()
                        .unwrap_or_default()
                        .split(',')
                        .filter(|a| !pull_only || *a == "pull")
                        .collect();
                    Some(serde_json::json!({"type": kind, "name": name, "actions": actions}))
                })
                .collect();
            let now = now_unix();
            let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [x5c]});
            let claims = serde_json::json!({
                "iss": ISSUER, "sub": subject, "aud": SERVICE,
                "exp": now + opts.expires_in, "nbf": now - 10, "iat": now,
                "jti": format!("{}", rand_u64()), "access": access,
            });
            let signing_input = format!(
                "{}.{}",
                b64url(header.to_string().as_bytes()),
                b64url(claims.to_string().as_bytes())
            );
            let sig = key
                .sign(&SystemRandom::new(), signing_input.as_bytes())
                .unwrap();
            let jwt = format!("{signing_input}.{}", b64url(sig.as_ref()));
            let body = serde_json::json!({"token": jwt, "expires_in": opts.expires_in});
            respond(
                200,
                &[("Content-Type", "application/json".into())],
                body.to_string(),
            )
        });
        let server = TestServer::start(handler).await;
        TokenServer { server, seen, dir }
    }

    pub fn auth_config(&self) -> TokenAuthConfig {
        TokenAuthConfig {
            realm: format!("http://{}/token", self.server.host()),
            service: SERVICE.to_owned(),
            issuer: ISSUER.to_owned(),
            root_bundle: self.dir.path().join("token-root.pem"),
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    ring::rand::SecureRandom::fill(&SystemRandom::new(), &mut b).unwrap();
    u64::from_le_bytes(b)
}
