//! `http://` and `https://` sources (`ADD <url>`): one downloaded file in a
//! snapshot of its own.
//!
//! As in BuildKit, the cache key is the content's digest, so the file is
//! downloaded while the key is computed — unless `http.checksum` names the
//! digest up front, in which case the download waits for `exec` and is
//! checked against it. A download's ETag is remembered with its snapshot:
//! the next build asks with `If-None-Match` and a `304` reuses the
//! snapshot. Credentials come from the build's secrets
//! (`http.authheadersecret`, else `HTTP_AUTH_HEADER_<host>` or
//! `HTTP_AUTH_TOKEN_<host>`) and never reach the key, a log or an error.
//! Start at [`HttpSource::new`].

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::Arc;

use async_trait::async_trait;
use bk_cache::{CacheManager, RecordType, Ref};
use bk_image::registry::web::{WebClient, body_error};

use bk_llb::Digest;
use bk_session::SessionManager;
use bk_solver::{Op, OpContext, OpError};

use crate::scratch::RemoveOnDrop;
use http_body_util::BodyExt as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// What is remembered of a download, by URL (and headers).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Remembered {
    etag: String,
    snapshot: String,
    digest: String,
    filename: String,
    last_modified: String,
}

/// One `http(s)://` vertex.
pub struct HttpSource {
    url: String,
    checksum: Option<String>,
    filename: Option<String>,
    perm: u32,
    uid: u32,
    gid: u32,
    headers: Vec<(String, String)>,
    auth_secret: Option<String>,
    client: WebClient,
    cache: CacheManager,
    sessions: Arc<SessionManager>,
    /// The download made for the key, for `exec`.
    fetched: tokio::sync::Mutex<Option<Fetched>>,
}

#[derive(Clone)]
struct Fetched {
    snapshot: Ref,
    digest: String,
}

fn int_attr(key: &str, value: &str) -> Result<u32, OpError> {
    // Go's strconv.ParseInt(v, 0, 64): 0x…, 0o…/0…, 0b…, or decimal.
    let v = value.trim();
    let parsed = if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        u32::from_str_radix(h, 16)
    } else if let Some(b) = v.strip_prefix("0b").or_else(|| v.strip_prefix("0B")) {
        u32::from_str_radix(b, 2)
    } else if let Some(o) = v.strip_prefix("0o").or_else(|| v.strip_prefix("0O")) {
        u32::from_str_radix(o, 8)
    } else if v.len() > 1 && v.starts_with('0') {
        u32::from_str_radix(&v[1..], 8)
    } else {
        v.parse::<u32>()
    };
    parsed.map_err(|_| OpError::new(format!("invalid {key} {value:?}")))
}

/// A file name that stays inside the snapshot.
fn safe_name(name: &str) -> Option<&str> {
    (!name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0'))
        .then_some(name)
}

impl HttpSource {
    pub fn new(
        url: String,
        attrs: &BTreeMap<String, String>,
        client: WebClient,
        cache: CacheManager,
        sessions: Arc<SessionManager>,
    ) -> Result<HttpSource, OpError> {
        let mut source = HttpSource {
            url,
            checksum: None,
            filename: None,
            perm: 0,
            uid: 0,
            gid: 0,
            headers: Vec::new(),
            auth_secret: None,
            client,
            cache,
            sessions,
            fetched: tokio::sync::Mutex::new(None),
        };
        for (k, v) in attrs {
            match k.as_str() {
                "http.checksum" => {
                    bk_image::Digest::parse(v)
                        .map_err(|e| OpError::new(format!("invalid http.checksum: {e}")))?;
                    source.checksum = Some(v.clone());
                }
                "http.filename" => {
                    let name = safe_name(v).ok_or_else(|| {
                        OpError::new(format!("invalid http.filename {v:?}: not a file name"))
                    })?;
                    source.filename = Some(name.to_string());
                }
                "http.perm" => source.perm = int_attr(k, v)?,
                "http.uid" => source.uid = int_attr(k, v)?,
                "http.gid" => source.gid = int_attr(k, v)?,
                "http.authheadersecret" => source.auth_secret = Some(v.clone()),
                _ => {
                    // Only the headers BuildKit lets a build set.
                    if let Some(name) = k.strip_prefix("http.header.") {
                        let name = name.to_ascii_lowercase();
                        if name == "accept" || name == "user-agent" {
                            source.headers.push((name, v.clone()));
                        }
                    }
                }
            }
        }
        source.headers.sort();
        Ok(source)
    }

    fn host(&self) -> String {
        let rest = self
            .url
            .split_once("://")
            .map(|(_, r)| r)
            .unwrap_or(&self.url);
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let authority = authority.rsplit('@').next().unwrap_or_default();
        match authority.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h.to_string(),
            _ => authority.to_string(),
        }
    }

    /// The name the file gets without a response (the key of a checksum
    /// source), or with one.
    fn file_name(&self, content_disposition: Option<&str>) -> String {
        if let Some(f) = &self.filename {
            return f.clone();
        }
        if let Some(name) = content_disposition.and_then(disposition_filename) {
            return name;
        }
        let path = self
            .url
            .split_once("://")
            .map(|(_, r)| r)
            .unwrap_or_default();
        let path = path.split(['?', '#']).next().unwrap_or_default();
        let path = path.find('/').map_or("", |i| &path[i..]);
        let base = path.trim_end_matches('/').rsplit('/').next().unwrap_or("");
        match safe_name(base) {
            Some(b) => b.to_string(),
            None => "download".to_string(),
        }
    }

    fn key(&self, filename: &str, digest: &str, last_modified: &str) -> Digest {
        let headers: Vec<String> = self
            .headers
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let material = format!(
            "http v1\0{filename}\0{}\0{}\0{}\0{digest}\0{last_modified}\0{}\0{}",
            self.perm,
            self.uid,
            self.gid,
            self.auth_secret.as_deref().unwrap_or(""),
            headers.join("\0")
        );
        Digest::of(material.as_bytes())
    }

    fn memo_key(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.url.as_bytes());
        for (k, v) in &self.headers {
            h.update(format!("\0{k}={v}").as_bytes());
        }
        h.update(self.auth_secret.as_deref().unwrap_or("").as_bytes());
        // The snapshot holds the file as these made it.
        h.update(
            format!(
                "\0{}\0{}\0{}\0{}",
                self.filename.as_deref().unwrap_or(""),
                self.perm,
                self.uid,
                self.gid
            )
            .as_bytes(),
        );
        let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        format!("http:{hex}")
    }

    async fn auth_header(&self, group: &[String]) -> Result<Option<String>, OpError> {
        let names = match &self.auth_secret {
            Some(name) => vec![(name.clone(), false)],
            None => {
                let host = self.host();
                vec![
                    (format!("HTTP_AUTH_HEADER_{host}"), false),
                    (format!("HTTP_AUTH_TOKEN_{host}"), true),
                ]
            }
        };
        for (name, token) in names {
            match bk_session::secrets::get_secret(&self.sessions, group, &name).await {
                Ok(value) => {
                    let value = String::from_utf8_lossy(&value).into_owned();
                    return Ok(Some(if token {
                        format!("Bearer {value}")
                    } else {
                        value
                    }));
                }
                Err(bk_session::secrets::SecretError::NotFound(_)) => {}
                Err(e) if self.auth_secret.is_some() => {
                    return Err(OpError::new(format!(
                        "failed to retrieve HTTP auth secret {name}: {e}"
                    )));
                }
                Err(_) => {}
            }
        }
        if let Some(name) = &self.auth_secret {
            return Err(OpError::new(format!(
                "failed to retrieve HTTP auth secret {name}: not found"
            )));
        }
        Ok(None)
    }

    /// Downloads the file (or finds it unchanged by its ETag); returns the
    /// snapshot, the content digest, the file name and Last-Modified.
    async fn download(&self, ctx: &OpContext) -> Result<(Fetched, String, String), OpError> {
        let memo_key = self.memo_key();
        let remembered = {
            let (cache, key) = (self.cache.clone(), memo_key.clone());
            tokio::task::spawn_blocking(move || -> Option<(Remembered, Ref)> {
                let json = cache.meta(&key).ok()??;
                let r: Remembered = serde_json::from_str(&json).ok()?;
                let held = cache.get(&r.snapshot).ok()??;
                Some((r, held))
            })
            .await
            .map_err(|e| OpError::new(e.to_string()))?
        };
        let mut headers = self.headers.clone();
        if let Some(auth) = self.auth_header(&ctx.session_group).await? {
            headers.push(("authorization".to_string(), auth));
        }
        if let Some((r, _)) = &remembered {
            headers.push(("if-none-match".to_string(), r.etag.clone()));
        }
        let (resp, _) = self
            .client
            .get(&self.url, &headers)
            .await
            .map_err(|e| OpError::new(e.to_string()))?;
        let status = resp.status().as_u16();
        if status == 304
            && let Some((r, snapshot)) = remembered
        {
            let fetched = Fetched {
                snapshot,
                digest: r.digest.clone(),
            };
            return Ok((fetched, r.filename, r.last_modified));
        }
        if !(200..400).contains(&status) || status == 304 {
            return Err(OpError::new(format!("invalid response status {status}")));
        }
        let header = |name: http::header::HeaderName| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let filename = self.file_name(header(http::header::CONTENT_DISPOSITION).as_deref());
        let last_modified = header(http::header::LAST_MODIFIED).unwrap_or_default();
        let etag = header(http::header::ETAG).map(|e| e.trim_start_matches("W/").to_string());

        // The body goes to a blocking task that writes and hashes it.
        let (id, dir) = {
            let cache = self.cache.clone();
            tokio::task::spawn_blocking(move || cache.create_dir())
                .await
                .map_err(|e| OpError::new(e.to_string()))?
                .map_err(|e| OpError::new(e.to_string()))?
        };
        // Gone unless committed: a cancelled or failed download leaves
        // nothing behind.
        let mut scratch = RemoveOnDrop::new(dir.clone());
        let path = dir.join(&filename);
        let (tx, rx) = std::sync::mpsc::sync_channel::<bytes::Bytes>(8);
        let (perm, uid, gid) = (
            if self.perm == 0 { 0o600 } else { self.perm },
            self.uid,
            self.gid,
        );
        let mtime = parse_http_date(&last_modified).unwrap_or(0);
        let writer = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(perm)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(&path)?;
            let mut h = Sha256::new();
            for chunk in rx {
                h.update(&chunk);
                file.write_all(&chunk)?;
            }
            file.sync_all()?;
            drop(file);
            // The mode exactly, whatever the umask.
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(perm))?;
            if uid != 0 || gid != 0 {
                std::os::unix::fs::lchown(&path, Some(uid), Some(gid))?;
            }
            let t = rustix::fs::Timestamps {
                last_access: rustix::fs::Timespec {
                    tv_sec: mtime,
                    tv_nsec: 0,
                },
                last_modification: rustix::fs::Timespec {
                    tv_sec: mtime,
                    tv_nsec: 0,
                },
            };
            rustix::fs::utimensat(
                rustix::fs::CWD,
                &path,
                &t,
                rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            )?;
            let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
            Ok(format!("sha256:{hex}"))
        });
        let mut body = resp.into_body();
        let mut received = 0i64;
        let mut reported = (std::time::Instant::now(), 0i64);
        let started = prost_types::Timestamp::from(std::time::SystemTime::now());
        // Credentials in the URL never reach progress, errors or records.
        let shown = bk_image::registry::web::redact_url(&self.url);
        let progress_id = format!("downloading {shown}");
        let streamed: Result<(), OpError> = async {
            while let Some(frame) = body.frame().await {
                let frame =
                    frame.map_err(|e| OpError::new(format!("GET {shown}: {}", body_error(&e))))?;
                if let Ok(data) = frame.into_data() {
                    received += data.len() as i64;
                    if tx.send(data).is_err() {
                        break;
                    }
                    // A status every 100 ms or MiB, not every frame.
                    if reported.0.elapsed() >= std::time::Duration::from_millis(100)
                        || received - reported.1 >= 1 << 20
                    {
                        reported = (std::time::Instant::now(), received);
                        ctx.progress
                            .status(&progress_id, received, 0, started, None);
                    }
                }
            }
            Ok(())
        }
        .await;
        drop(tx);
        let written = writer.await.map_err(|e| OpError::new(e.to_string()))?;
        let digest = match (streamed, written) {
            (Ok(()), Ok(d)) => d,
            (Err(e), _) => return Err(e),
            (Ok(()), Err(e)) => return Err(OpError::new(format!("write {filename}: {e}"))),
        };
        ctx.progress.status(
            &progress_id,
            received,
            received,
            started,
            Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
        );
        let cache = self.cache.clone();
        let description = format!("http url {shown}");
        let remember = etag.map(|etag| Remembered {
            etag,
            snapshot: id.clone(),
            digest: digest.clone(),
            filename: filename.clone(),
            last_modified: last_modified.clone(),
        });
        let snapshot = tokio::task::spawn_blocking(move || -> Result<Ref, OpError> {
            let snapshot = cache
                .commit(&id, RecordType::Regular, &description, Vec::new(), false)
                .map_err(|e| OpError::new(e.to_string()))?;
            if let Some(r) = remember
                && let Ok(json) = serde_json::to_string(&r)
            {
                let _ = cache.set_meta(&memo_key, &json);
            }
            Ok(snapshot)
        })
        .await
        .map_err(|e| OpError::new(e.to_string()))??;
        scratch.disarm();
        Ok((Fetched { snapshot, digest }, filename, last_modified))
    }

    fn check(&self, fetched: &Fetched) -> Result<(), OpError> {
        match &self.checksum {
            Some(want) if *want != fetched.digest => Err(OpError::new(format!(
                "digest mismatch {}: {want}",
                fetched.digest
            ))),
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl Op<Ref> for HttpSource {
    async fn cache_key(&self, ctx: &OpContext, _inputs: &[Digest]) -> Result<Digest, OpError> {
        if let Some(checksum) = &self.checksum {
            return Ok(self.key(&self.file_name(None), checksum, ""));
        }
        let (fetched, filename, last_modified) = self.download(ctx).await?;
        let key = self.key(&filename, &fetched.digest, &last_modified);
        *self.fetched.lock().await = Some(fetched);
        Ok(key)
    }

    fn works_for_key(&self) -> bool {
        self.checksum.is_none()
    }

    async fn exec(&self, ctx: &OpContext, _inputs: Vec<Ref>) -> Result<Vec<Ref>, OpError> {
        let fetched = self.fetched.lock().await.clone();
        let fetched = match fetched {
            Some(f) => f,
            None => self.download(ctx).await?.0,
        };
        self.check(&fetched)?;
        Ok(vec![fetched.snapshot])
    }
}

/// `filename` of a `Content-Disposition` header, as a base name.
fn disposition_filename(value: &str) -> Option<String> {
    for part in value.split(';').skip(1) {
        let (k, v) = part.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("filename") {
            continue;
        }
        let v = v.trim().trim_matches('"');
        if v.is_empty() || v.ends_with('/') {
            return None;
        }
        let base = v.rsplit('/').next().unwrap_or(v);
        return safe_name(base).map(str::to_string);
    }
    None
}

/// Seconds since the epoch of an HTTP date (IMF-fixdate, RFC 850 or
/// asctime, as Go's `http.ParseTime`).
fn parse_http_date(s: &str) -> Option<i64> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let s = s.trim();
    let words: Vec<&str> = s.split_whitespace().collect();
    // IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT
    // RFC 850:     Sunday, 06-Nov-94 08:49:37 GMT
    // asctime:     Sun Nov  6 08:49:37 1994
    let (day, month, year, time) = match words.as_slice() {
        [_, d, m, y, t, "GMT"] if y.len() == 4 => (*d, *m, y.parse::<i64>().ok()?, *t),
        [_, dmy, t, "GMT"] => {
            let mut it = dmy.split('-');
            let (d, m, y) = (it.next()?, it.next()?, it.next()?);
            if y.len() != 2 {
                return None;
            }
            let y = y.parse::<i64>().ok()?;
            (d, m, if y < 70 { 2000 + y } else { 1900 + y }, *t)
        }
        [_, m, d, t, y] if y.len() == 4 => (*d, *m, y.parse::<i64>().ok()?, *t),
        _ => return None,
    };
    if day.len() > 2 || time.len() != 8 {
        return None;
    }
    let day: i64 = day.parse().ok()?;
    let month = MONTHS.iter().position(|m| *m == month)? as i64 + 1;
    let mut hms = time.split(':').map(|p| p.parse::<i64>().ok());
    let (h, mi, se) = (hms.next()??, hms.next()??, hms.next()??);
    if !(1..=31).contains(&day) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + se)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_as_go_reads_them() {
        let want = Some(784_111_777);
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), want);
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), want);
        assert_eq!(parse_http_date("Sun Nov  6 08:49:37 1994"), want);
        assert_eq!(parse_http_date("yesterday"), None);
        assert_eq!(
            parse_http_date("Sun, 06 Nov 999999999999 08:49:37 GMT"),
            None
        );
        assert_eq!(parse_http_date("Sun, 32 Nov 1994 08:49:37 GMT"), None);
    }

    #[test]
    fn attrs_and_names() {
        assert_eq!(int_attr("p", "0644").unwrap(), 0o644);
        assert_eq!(int_attr("p", "420").unwrap(), 420);
        assert_eq!(int_attr("p", "0x1ff").unwrap(), 0o777);
        assert!(int_attr("p", "rwx").is_err());
        assert_eq!(
            disposition_filename("attachment; filename=\"a/b/c.tgz\""),
            Some("c.tgz".into())
        );
        assert_eq!(disposition_filename("attachment; filename=\"..\""), None);
        assert_eq!(safe_name("../x"), None);
    }
}
