//! Plain HTTP(S) downloads (`ADD https://…`, BuildKit's `http` source) over
//! the registry client's transport: system CAs, a pooled HTTP/1.1 client,
//! redirects followed as Go's `http.Client` does (at most 10).

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::http::{ReqBody, Transport, client_config, error_chain, system_roots};

const MAX_REDIRECTS: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("invalid URL {url:?}: {message}")]
    InvalidUrl { url: String, message: String },
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("GET {url}: {message}")]
    Request { url: String, message: String },
    #[error("GET {url}: stopped after {MAX_REDIRECTS} redirects")]
    TooManyRedirects { url: String },
}

/// A GET client. Cheap to clone; clones share connections.
#[derive(Clone, Debug)]
pub struct WebClient {
    transport: Transport,
    user_agent: Arc<str>,
}

impl WebClient {
    pub fn new(user_agent: &str) -> Result<WebClient, WebError> {
        let tls =
            client_config(system_roots(), None, false).map_err(|e| WebError::Tls(e.to_string()))?;
        Ok(WebClient {
            transport: Transport::new(Arc::new(tls)),
            user_agent: Arc::from(user_agent),
        })
    }

    /// GETs `url` with `headers` (sent again on each redirect, as Go does
    /// for the same host; dropped for another host, so credentials never
    /// follow a redirect elsewhere). Returns the final response, whatever
    /// its status, and the URL it came from.
    pub async fn get(
        &self,
        url: &str,
        headers: &[(String, String)],
    ) -> Result<(Response<Incoming>, String), WebError> {
        // Credentials in the URL become Basic auth, as Go's client does,
        // and never appear in a request line or an error.
        let (stripped, basic) = split_userinfo(url);
        let url = stripped.as_str();
        let mut headers = headers.to_vec();
        if let Some(basic) = basic
            && !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        {
            headers.push(("authorization".to_string(), basic));
        }
        let mut current = url.to_string();
        let origin = host_of(url)?;
        let secure = url.starts_with("https://");
        for _ in 0..=MAX_REDIRECTS {
            let uri: Uri =
                current
                    .parse()
                    .map_err(|e: http::uri::InvalidUri| WebError::InvalidUrl {
                        url: current.clone(),
                        message: e.to_string(),
                    })?;
            // Credentials stay with the origin, and off plain HTTP once
            // the origin was HTTPS.
            let same_host =
                host_of(&current)? == origin && !(secure && current.starts_with("http://"));
            let mut req = Request::builder()
                .method(Method::GET)
                .uri(uri.clone())
                .header(http::header::USER_AGENT, &*self.user_agent);
            for (k, v) in &headers {
                if same_host || !k.eq_ignore_ascii_case("authorization") {
                    req = req.header(k.as_str(), v.as_str());
                }
            }
            let body: ReqBody = http_body_util::Empty::<Bytes>::new()
                .map_err(|never| match never {})
                .boxed();
            let req = req.body(body).map_err(|e| WebError::Request {
                url: current.clone(),
                message: e.to_string(),
            })?;
            let resp = self
                .transport
                .send(req)
                .await
                .map_err(|e| WebError::Request {
                    url: current.clone(),
                    message: e.message,
                })?;
            let redirect = matches!(
                resp.status(),
                StatusCode::MOVED_PERMANENTLY
                    | StatusCode::FOUND
                    | StatusCode::SEE_OTHER
                    | StatusCode::TEMPORARY_REDIRECT
                    | StatusCode::PERMANENT_REDIRECT
            );
            let location = resp
                .headers()
                .get(http::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .map(str::to_string);
            match (redirect, location) {
                (true, Some(location)) => {
                    current = resolve(&uri, &location).map_err(|message| WebError::Request {
                        url: current.clone(),
                        message,
                    })?;
                }
                _ => return Ok((resp, current)),
            }
        }
        Err(WebError::TooManyRedirects {
            url: url.to_string(),
        })
    }
}

fn host_of(url: &str) -> Result<String, WebError> {
    let uri: Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| WebError::InvalidUrl {
            url: url.to_string(),
            message: e.to_string(),
        })?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(a)) => Ok(a.as_str().to_ascii_lowercase()),
        _ => Err(WebError::InvalidUrl {
            url: url.to_string(),
            message: "not an http or https URL".into(),
        }),
    }
}

/// `url` as it may be shown: without `user:password@`.
pub fn redact_url(url: &str) -> String {
    split_userinfo(url).0
}

/// `url` without `user:password@`, and the Basic authorization those
/// make.
fn split_userinfo(url: &str) -> (String, Option<String>) {
    use base64::Engine as _;
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_string(), None);
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return (url.to_string(), None);
    };
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let token = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        decode(user),
        decode(pass)
    ));
    (
        format!("{scheme}://{host}{tail}"),
        Some(format!("Basic {token}")),
    )
}

/// A `Location` against the URL it answered.
fn resolve(base: &Uri, location: &str) -> Result<String, String> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return Ok(location.to_string());
    }
    let scheme = base.scheme_str().unwrap_or("http");
    let authority = base.authority().map(|a| a.as_str()).unwrap_or_default();
    if let Some(rest) = location.strip_prefix("//") {
        return Ok(format!("{scheme}://{rest}"));
    }
    if location.starts_with('/') {
        return Ok(format!("{scheme}://{authority}{location}"));
    }
    let path = base.path();
    let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    let dir = if dir.is_empty() { "/" } else { dir };
    Ok(format!("{scheme}://{authority}{dir}{location}"))
}

/// The whole error chain of a body read.
pub fn body_error(e: &hyper::Error) -> String {
    error_chain(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_resolve_against_the_request() {
        let base: Uri = "http://h:1/a/b?q".parse().unwrap();
        assert_eq!(resolve(&base, "/x").unwrap(), "http://h:1/x");
        assert_eq!(resolve(&base, "c").unwrap(), "http://h:1/a/c");
        assert_eq!(resolve(&base, "//o/p").unwrap(), "http://o/p");
        assert_eq!(resolve(&base, "https://e/f").unwrap(), "https://e/f");
    }

    #[test]
    fn credentials_in_urls_become_basic_auth() {
        let (url, auth) = split_userinfo("https://u%40x:p%3Aw@host:1/a@b?c");
        assert_eq!(url, "https://host:1/a@b?c");
        // base64("u@x:p:w")
        assert_eq!(auth.as_deref(), Some("Basic dUB4OnA6dw=="));
        assert_eq!(split_userinfo("http://h/p").1, None);
    }
}
