//! `git://` sources: one commit of a remote repository, checked out into a
//! snapshot, as BuildKit's git source does it.
//!
//! The cache key is the commit. A full SHA as the ref (or as `git.checksum`
//! without `git.keepgitdir`) needs no network; any other ref is resolved with
//! `git ls-remote` (the remote's default branch when there is none). Each
//! remote has one bare repository, a mutable snapshot found by the remote's
//! hash, which survives restarts and fetches only what builds ask for
//! (`--depth=1`); each (commit, subdir, options) is checked out once into an
//! immutable snapshot that later builds reuse. `git.keepgitdir` gives the
//! checkout a `.git` of its own; submodules are checked out unless skipped.
//!
//! Both the repository and the remote are untrusted. Git runs with no system
//! or user configuration, no hooks, no prompts and no transport but http(s),
//! git and ssh (`file://` only to copy from our own bare repository), in a
//! process group of its own that dies with the build; a subdir is resolved
//! without ever following a symlink out of the checkout. Credentials come
//! from the build's secrets, reach git through its environment (not its
//! command line, which other users can read), and never appear in a log, an
//! error, a snapshot or a key. Start at [`GitSource::new`].

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use crate::scratch::RemoveOnDrop;
use async_trait::async_trait;
use base64::Engine as _;
use bk_cache::{CacheManager, RecordType, Ref};
use bk_llb::Digest;
use bk_session::SessionManager;
use bk_solver::{Op, OpContext, OpError};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncReadExt as _;

const ATTR_KEEP_GIT_DIR: &str = "git.keepgitdir";
const ATTR_FULL_URL: &str = "git.fullurl";
const ATTR_AUTH_HEADER_SECRET: &str = "git.authheadersecret";
const ATTR_AUTH_TOKEN_SECRET: &str = "git.authtokensecret";
const ATTR_KNOWN_SSH_HOSTS: &str = "git.knownsshhosts";
const ATTR_MOUNT_SSH_SOCK: &str = "git.mountsshsock";
const ATTR_CHECKSUM: &str = "git.checksum";
const ATTR_SKIP_SUBMODULES: &str = "git.skipsubmodules";

/// Names in the cache's named table: a remote's bare repository and a key's
/// checkout, each by a hash (a remote may carry credentials).
const REMOTE_PREFIX: &str = "git-remote::";
const SNAPSHOT_PREFIX: &str = "git-snapshot::";

/// What credentials are replaced with wherever they would be shown.
const MASK: &str = "xxxxx";

/// How much of a command's stderr its error keeps.
const STDERR_LIMIT: usize = 64 * 1024;
/// git's stdout kept (ref lists, rev-parse): far beyond any real answer.
const STDOUT_LIMIT: u64 = 64 << 20;
/// Bytes of one stderr line kept.
const LINE_LIMIT: usize = 4096;
/// Bytes of git's stderr logged to progress per command (as exec's logs).
const LOG_LIMIT: usize = 2 << 20;

/// Given to every git command ahead of anything a repository could set: only
/// network transports (`protocol.file.allow` is added per command), no hooks
/// or credential helpers, and nothing left running in the background after
/// the command returns (a detached gc would outlive its process group).
const SAFE_CONFIG: &[&str] = &[
    "protocol.allow=never",
    "protocol.http.allow=always",
    "protocol.https.allow=always",
    "protocol.git.allow=always",
    "protocol.ssh.allow=always",
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "credential.helper=",
    "submodule.recurse=false",
    "fetch.recurseSubmodules=false",
    "gc.autoDetach=false",
    "maintenance.autoDetach=false",
    "init.defaultBranch=master",
    "advice.detachedHead=false",
];

/// The daemon's proxy settings, which git should honour as BuildKit's does.
const PROXY_VARS: &[&str] = &[
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
];

/// Why a git source failed. Messages name remotes with their credentials
/// masked and never include a secret.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("{0}: invalid protocol")]
    InvalidProtocol(String),
    #[error("invalid git URL {url}: {reason}")]
    InvalidUrl { url: String, reason: &'static str },
    #[error("invalid git ref {0:?}")]
    InvalidRef(String),
    #[error("invalid subdir {subdir:?}: {reason}")]
    InvalidSubdir {
        subdir: String,
        reason: &'static str,
    },
    #[error("invalid checksum {0} for Git URL, expected hex commit hash")]
    InvalidChecksum(String),
    #[error("expected checksum to match {want}, got {got}")]
    ChecksumMismatch { want: String, got: String },
    #[error("repository does not contain ref {reference}, output: {output:?}")]
    MissingRef { reference: String, output: String },
    #[error("invalid commit sha {0:?}")]
    InvalidSha(String),
    #[error("error fetching default branch for repository {remote}: {detail}")]
    DefaultBranch { remote: String, detail: String },
    #[error("could not find default branch for repository: {0}")]
    NoDefaultBranch(String),
    #[error("failed to fetch remote {remote}: {detail}")]
    Fetch { remote: String, detail: String },
    #[error("failed to checkout remote {remote}: {detail}")]
    Checkout { remote: String, detail: String },
    #[error("failed to update submodules for {remote}: {detail}")]
    Submodules { remote: String, detail: String },
    #[error("failed to initialize the git repository for {remote}: {detail}")]
    Init { remote: String, detail: String },
    #[error("ssh agent {id:?}: {detail}")]
    Ssh { id: String, detail: String },
    /// A git command that failed: its stderr and exit status.
    #[error("{0}")]
    Command(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Cache(#[from] bk_cache::CacheError),
    #[error("{0}")]
    Task(String),
    #[error("context canceled")]
    Canceled,
}

impl From<GitError> for OpError {
    fn from(e: GitError) -> OpError {
        OpError::new(e.to_string())
    }
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> GitError + use<> {
    let path = path.to_path_buf();
    move |source| GitError::Io { what, path, source }
}

/// Turns a failed command's output into the error of the step it was part
/// of; cancellation and local failures stay what they are.
fn wrap(e: GitError, step: impl FnOnce(String) -> GitError) -> GitError {
    match e {
        GitError::Command(detail) => step(detail),
        other => other,
    }
}

/// How git reaches a remote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Http,
    Https,
    Git,
    Ssh,
}

fn transport_of(scheme: &str) -> Option<Transport> {
    match scheme.to_ascii_lowercase().as_str() {
        "http" => Some(Transport::Http),
        "https" => Some(Transport::Https),
        "git" => Some(Transport::Git),
        "ssh" => Some(Transport::Ssh),
        _ => None,
    }
}

/// A git source's identifier and attributes, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitIdentifier {
    /// The URL given to git (`git.fullurl` when set), without `#ref:subdir`.
    pub remote: String,
    pub transport: Transport,
    /// The remote's host (and port): secrets may be scoped to it.
    pub host: String,
    /// The ref to check out; empty for the remote's default branch.
    pub reference: String,
    /// A hex prefix of the commit the ref must resolve to.
    pub checksum: String,
    /// The directory of the repository the snapshot holds, cleaned and
    /// relative; empty for the whole repository.
    pub subdir: String,
    pub keep_git_dir: bool,
    pub auth_token_secret: String,
    pub auth_header_secret: String,
    pub mount_ssh_sock: String,
    pub known_ssh_hosts: String,
    pub skip_submodules: bool,
}

impl GitIdentifier {
    /// `rest` is the identifier after `git://`: `<host><path>[#<ref>[:<subdir>]]`.
    pub fn parse(rest: &str, attrs: &BTreeMap<String, String>) -> Result<GitIdentifier, GitError> {
        let parsed = parse_remote(&with_transport(rest))?;
        let fragment = parsed.fragment.unwrap_or_default();
        let (reference, subdir) = fragment.split_once(':').unwrap_or((&fragment, ""));
        let mut id = GitIdentifier {
            remote: parsed.url,
            transport: parsed.transport,
            host: parsed.host,
            reference: reference.to_string(),
            checksum: String::new(),
            subdir: clean_subdir(subdir)?,
            keep_git_dir: false,
            auth_token_secret: String::new(),
            auth_header_secret: String::new(),
            mount_ssh_sock: String::new(),
            known_ssh_hosts: String::new(),
            skip_submodules: false,
        };
        for (k, v) in attrs {
            match k.as_str() {
                ATTR_KEEP_GIT_DIR => id.keep_git_dir = v == "true",
                ATTR_FULL_URL => {
                    let full = parse_remote(&with_transport(v))?;
                    id.remote = full.url;
                    id.transport = full.transport;
                    id.host = full.host;
                }
                ATTR_AUTH_HEADER_SECRET => id.auth_header_secret = v.clone(),
                ATTR_AUTH_TOKEN_SECRET => id.auth_token_secret = v.clone(),
                ATTR_KNOWN_SSH_HOSTS => id.known_ssh_hosts = v.clone(),
                ATTR_MOUNT_SSH_SOCK => id.mount_ssh_sock = v.clone(),
                ATTR_CHECKSUM => id.checksum = v.clone(),
                ATTR_SKIP_SUBMODULES => id.skip_submodules = v == "true",
                _ => {}
            }
        }
        if !id.reference.is_empty() {
            validate_ref(&id.reference)?;
        }
        if !id.checksum.is_empty() && !id.checksum.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(GitError::InvalidChecksum(id.checksum));
        }
        Ok(id)
    }
}

/// The scheme of `scheme://…`, as BuildKit recognises one.
fn scheme_of(s: &str) -> Option<&str> {
    let (scheme, _) = s.split_once("://")?;
    (!scheme.is_empty() && scheme.bytes().all(|b| b.is_ascii_alphanumeric())).then_some(scheme)
}

/// An scp-style address, `user@host:path[?query][#fragment]`.
struct ScpUrl<'a> {
    user: &'a str,
    host: &'a str,
    path: &'a str,
    fragment: Option<&'a str>,
}

fn parse_scp(s: &str) -> Option<ScpUrl<'_>> {
    let (user, rest) = s.split_once('@')?;
    let user_ok = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    if user.is_empty() || !user.bytes().all(user_ok) {
        return None;
    }
    let (host, rest) = rest.split_once(':')?;
    let host_ok = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'.';
    if host.is_empty() || !host.bytes().all(host_ok) {
        return None;
    }
    let end = rest.find(['?', '#']).unwrap_or(rest.len());
    let (path, tail) = rest.split_at(end);
    let fragment = match tail.strip_prefix('?') {
        Some(query) => query.split_once('#').map(|(_, f)| f),
        None => tail.strip_prefix('#'),
    };
    Some(ScpUrl {
        user,
        host,
        path,
        fragment,
    })
}

/// Whether git can be given `s` as it is (BuildKit's `IsGitTransport`).
fn is_git_transport(s: &str) -> bool {
    match scheme_of(s) {
        Some(scheme) => transport_of(scheme).is_some(),
        None => parse_scp(s).is_some(),
    }
}

/// `s` with `https://` in front when it names no transport. A scheme git
/// does not get from us (`file://`, `ext::`-like helpers, `ftp://`) stays,
/// to be refused by [`parse_remote`] rather than disguised as a host name.
fn with_transport(s: &str) -> Cow<'_, str> {
    if is_git_transport(s) || scheme_of(s).is_some() {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(format!("https://{s}"))
    }
}

struct ParsedRemote {
    url: String,
    transport: Transport,
    host: String,
    fragment: Option<String>,
}

fn parse_remote(s: &str) -> Result<ParsedRemote, GitError> {
    let invalid = |reason| GitError::InvalidUrl {
        url: redact_url(s),
        reason,
    };
    if s.chars().any(char::is_control) {
        return Err(invalid("it contains control characters"));
    }
    if let Some(scheme) = scheme_of(s) {
        let transport = transport_of(scheme)
            .ok_or_else(|| GitError::InvalidProtocol(scheme.to_ascii_lowercase()))?;
        let rest = &s[scheme.len() + 3..];
        let (rest, fragment) = match rest.split_once('#') {
            Some((r, f)) => (r, Some(percent_decode(f))),
            None => (rest, None),
        };
        let rest = rest.split_once('?').map_or(rest, |(r, _)| r);
        let authority = rest.split('/').next().unwrap_or_default();
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        if host.is_empty() {
            return Err(invalid("it has no host"));
        }
        // A host git would hand to ssh as an option.
        if host.starts_with('-') {
            return Err(invalid("its host starts with '-'"));
        }
        return Ok(ParsedRemote {
            url: format!("{}://{rest}", scheme.to_ascii_lowercase()),
            transport,
            host: host.to_string(),
            fragment,
        });
    }
    if let Some(scp) = parse_scp(s) {
        if scp.user.starts_with('-') || scp.host.starts_with('-') {
            return Err(invalid("it starts with '-'"));
        }
        return Ok(ParsedRemote {
            url: format!("{}@{}:{}", scp.user, scp.host, scp.path),
            transport: Transport::Ssh,
            host: scp.host.to_string(),
            fragment: scp.fragment.map(str::to_string),
        });
    }
    Err(invalid("unknown protocol"))
}

/// `%XX` escapes decoded, as Go's URL parser does for a fragment; anything
/// that is not a valid escape stays as it is.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Refuses refs git would take for an option or a revision expression, and
/// refspec syntax: a ref goes into `ls-remote`, `fetch` and `checkout`
/// arguments, and a default branch comes from the remote itself.
fn validate_ref(r: &str) -> Result<(), GitError> {
    let bad = r.starts_with('-')
        || r.contains("..")
        || r.contains("@{")
        || r.ends_with('/')
        || r.ends_with(".lock")
        || r.bytes().any(|b| {
            b <= b' ' || b == 0x7f || matches!(b, b'~' | b'^' | b':' | b'?' | b'*' | b'[' | b'\\')
        });
    if bad {
        return Err(GitError::InvalidRef(r.to_string()));
    }
    Ok(())
}

/// The subdir cleaned as Go's `path.Clean` would, relative; one that climbs
/// out of the repository is refused.
fn clean_subdir(s: &str) -> Result<String, GitError> {
    if s.contains('\0') {
        return Err(GitError::InvalidSubdir {
            subdir: s.to_string(),
            reason: "it contains a NUL byte",
        });
    }
    let rooted = s.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in s.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                // `/..` is `/`; a relative `..` leaves the repository.
                if parts.pop().is_none() && !rooted {
                    return Err(GitError::InvalidSubdir {
                        subdir: s.to_string(),
                        reason: "it leads outside the repository",
                    });
                }
            }
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

/// A full commit id (SHA-1, or SHA-256 for repositories that use it).
pub fn is_commit_sha(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The URL with its user name and password masked, as BuildKit shows one.
pub fn redact_url(s: &str) -> String {
    let Some(scheme) = scheme_of(s) else {
        return s.to_string();
    };
    let rest = &s[scheme.len() + 3..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return s.to_string();
    };
    let (user, password) = match userinfo.split_once(':') {
        Some((u, p)) => (u, Some(p)),
        None => (userinfo, None),
    };
    let masked = match (user.is_empty(), password) {
        (false, Some(_)) => format!("{MASK}:{MASK}"),
        (false, None) => MASK.to_string(),
        (true, Some(_)) => format!(":{MASK}"),
        (true, None) => String::new(),
    };
    format!("{scheme}://{masked}@{host}{tail}")
}

/// Replaces secrets in text git printed before it is shown anywhere.
#[derive(Clone, Default)]
struct Redactor {
    secrets: Vec<(String, String)>,
}

impl Redactor {
    fn for_remote(remote: &str) -> Redactor {
        let mut r = Redactor::default();
        r.add(remote, &redact_url(remote));
        if let Some(scheme) = scheme_of(remote) {
            let rest = &remote[scheme.len() + 3..];
            let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
            if let Some((userinfo, _)) = authority.rsplit_once('@') {
                r.add(&format!("{userinfo}@"), &format!("{MASK}@"));
                if let Some((_, password)) = userinfo.split_once(':') {
                    r.add(password, MASK);
                    r.add(&percent_decode(password), MASK);
                }
            }
        }
        r
    }

    fn add(&mut self, secret: &str, shown: &str) {
        if secret.is_empty() || secret == shown {
            return;
        }
        self.secrets.push((secret.to_string(), shown.to_string()));
        // Longest first: a URL is replaced whole before its parts are.
        self.secrets.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
    }

    fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (secret, shown) in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), shown);
            }
        }
        out
    }
}

/// The commit `reference` names in `git ls-remote` output, and the full ref
/// it came from: an exact `refs/…` match first, then a branch, then a tag
/// (peeled when the remote lists the `^{}` line), as BuildKit chooses.
fn pick_ref(reference: &str, output: &str) -> Result<(String, String), GitError> {
    let partial = format!(
        "refs/{}",
        reference.strip_prefix("refs/").unwrap_or(reference)
    );
    let head = format!(
        "refs/heads/{}",
        reference.strip_prefix("refs/heads/").unwrap_or(reference)
    );
    let tag = format!(
        "refs/tags/{}",
        reference.strip_prefix("refs/tags/").unwrap_or(reference)
    );
    let peeled = format!("{tag}^{{}}");
    let (mut sha, mut used) = (String::new(), String::new());
    let (mut head_sha, mut tag_sha) = (String::new(), String::new());
    for line in output.split('\n') {
        let (line_sha, line_ref) = line.split_once('\t').unwrap_or((line, ""));
        if line_ref == head {
            head_sha = line_sha.to_string();
        } else if line_ref == tag || line_ref == peeled {
            tag_sha = line_sha.to_string();
        } else if line_ref == partial {
            sha = line_sha.to_string();
            used = partial.clone();
        }
    }
    if sha.is_empty() {
        sha = head_sha;
        used = head;
    }
    if sha.is_empty() {
        sha = tag_sha;
        used = tag;
    }
    if sha.is_empty() {
        return Err(GitError::MissingRef {
            reference: reference.to_string(),
            output: output.to_string(),
        });
    }
    if !is_commit_sha(&sha) {
        return Err(GitError::InvalidSha(sha));
    }
    Ok((sha, used))
}

/// The branch `git ls-remote --symref <remote> HEAD` names.
fn default_branch(output: &str) -> Option<String> {
    let start = output.find("refs/heads/")? + "refs/heads/".len();
    let name: String = output[start..]
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect();
    (!name.is_empty()).then_some(name)
}

fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// State shared by every git source of a worker: a lock per remote (its
/// bare repository runs one sequence of git commands at a time) and per
/// checkout (made once however many builds want it at the same moment).
#[derive(Default)]
pub struct GitRepos {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A held lock of [`GitRepos`]; its entry goes when nobody holds or awaits it.
struct KeyLock<'a> {
    repos: &'a GitRepos,
    key: String,
    mutex: Option<Arc<tokio::sync::Mutex<()>>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl GitRepos {
    async fn lock(&self, key: String) -> KeyLock<'_> {
        let mutex = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.entry(key.clone()).or_default().clone()
        };
        let mut held = KeyLock {
            repos: self,
            key,
            mutex: Some(mutex.clone()),
            guard: None,
        };
        held.guard = Some(mutex.lock_owned().await);
        held
    }
}

impl Drop for KeyLock<'_> {
    fn drop(&mut self) {
        self.guard.take();
        self.mutex.take();
        let mut locks = self.repos.locks.lock().unwrap_or_else(|e| e.into_inner());
        // Every holder and waiter clones the entry under this map lock, so
        // one reference left is the map's own.
        if locks
            .get(&self.key)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            locks.remove(&self.key);
        }
    }
}

/// What a ref resolved to.
#[derive(Debug, Clone)]
struct Resolved {
    sha: String,
    target: Target,
    /// The ref as the user gave it (or the default branch), for display.
    shown_ref: String,
    key: Digest,
}

/// How the commit is fetched.
#[derive(Debug, Clone)]
enum Target {
    /// A ref `ls-remote` listed, by its full name.
    Named(String),
    /// The commit itself; `hint` is a ref that must point at it (a
    /// `git.checksum` given with a branch or tag).
    Commit { hint: Option<String> },
}

/// The cache key: the commit and everything else that shapes the snapshot.
/// With a `.git` kept, the ref it was fetched by and the remote it names are
/// in the snapshot too (masked: never a credential in a key).
fn key_of(id: &GitIdentifier, sha: &str, used_ref: &str) -> Digest {
    let (used_ref, remote) = if id.keep_git_dir {
        (used_ref, redact_url(&id.remote))
    } else {
        ("", String::new())
    };
    let material = format!(
        "git v1\0{sha}\0keepgitdir={}\0ref={used_ref}\0remote={remote}\0subdir={}\0skipsubmodules={}",
        id.keep_git_dir, id.subdir, id.skip_submodules
    );
    Digest::of(material.as_bytes())
}

/// The credential sent to an http(s) remote.
#[derive(Clone)]
struct Auth {
    /// `http.<url>.extraheader`.
    key: String,
    /// `Authorization: …`.
    header: String,
    /// What the secret held, and its encoded form, to redact.
    secret: String,
    encoded: String,
}

/// One `git://` vertex.
pub struct GitSource {
    id: GitIdentifier,
    cache: CacheManager,
    sessions: Arc<SessionManager>,
    repos: Arc<GitRepos>,
    /// Names the remote's bare repository and lock.
    remote_hash: String,
    auth: tokio::sync::OnceCell<Option<Auth>>,
    resolved: tokio::sync::Mutex<Option<Resolved>>,
}

impl GitSource {
    /// `rest` is the identifier after `git://`; `attrs` the source's.
    pub fn new(
        rest: &str,
        attrs: &BTreeMap<String, String>,
        cache: CacheManager,
        sessions: Arc<SessionManager>,
        repos: Arc<GitRepos>,
    ) -> Result<GitSource, OpError> {
        let id = GitIdentifier::parse(rest, attrs)?;
        Ok(GitSource {
            remote_hash: sha256_hex(&id.remote),
            id,
            cache,
            sessions,
            repos,
            auth: tokio::sync::OnceCell::new(),
            resolved: tokio::sync::Mutex::new(None),
        })
    }

    pub fn identifier(&self) -> &GitIdentifier {
        &self.id
    }

    fn shown_remote(&self) -> String {
        redact_url(&self.id.remote)
    }

    fn remote_lock(&self) -> String {
        format!("remote:{}", self.remote_hash)
    }

    /// The credential from the build's secrets, looked up once: the
    /// host-scoped names first, a header before a token, as BuildKit does.
    /// Only http(s) remotes get one.
    async fn auth(&self, ctx: &OpContext) -> Option<Auth> {
        self.auth.get_or_init(|| self.load_auth(ctx)).await.clone()
    }

    async fn load_auth(&self, ctx: &OpContext) -> Option<Auth> {
        if !matches!(self.id.transport, Transport::Http | Transport::Https) {
            return None;
        }
        let (header, token) = (&self.id.auth_header_secret, &self.id.auth_token_secret);
        let host = &self.id.host;
        let mut names = Vec::new();
        if !header.is_empty() {
            names.push((format!("{header}.{host}"), false));
        }
        if !token.is_empty() {
            names.push((format!("{token}.{host}"), true));
        }
        if !header.is_empty() {
            names.push((header.clone(), false));
        }
        if !token.is_empty() {
            names.push((token.clone(), true));
        }
        for (name, is_token) in names {
            match bk_session::secrets::get_secret(&self.sessions, &ctx.session_group, &name).await {
                Ok(value) => {
                    let secret = String::from_utf8_lossy(&value).into_owned();
                    let (value, encoded) = if is_token {
                        let encoded = base64::engine::general_purpose::STANDARD
                            .encode(format!("x-access-token:{secret}"));
                        (format!("basic {encoded}"), encoded)
                    } else {
                        (secret.clone(), String::new())
                    };
                    return Some(Auth {
                        key: format!("http.{}.extraheader", token_scope(&self.id.remote)),
                        header: format!("Authorization: {value}"),
                        secret,
                        encoded,
                    });
                }
                Err(bk_session::secrets::SecretError::NotFound(_)) => {}
                Err(e) => {
                    // As in BuildKit, a secret that cannot be read means an
                    // anonymous fetch, which fails by itself if it must not.
                    tracing::debug!(secret = %name, error = %e, "git auth secret unavailable");
                    return None;
                }
            }
        }
        None
    }

    /// A runner for this source's git commands; `log` streams their stderr
    /// to the vertex's logs.
    async fn git(&self, ctx: &OpContext, log: bool) -> Result<Git, GitError> {
        let mut env = base_env();
        let mut redactor = Redactor::for_remote(&self.id.remote);
        if let Some(auth) = self.auth(ctx).await {
            env.push(("GIT_CONFIG_COUNT".into(), "1".into()));
            env.push(("GIT_CONFIG_KEY_0".into(), auth.key.into()));
            env.push(("GIT_CONFIG_VALUE_0".into(), auth.header.clone().into()));
            redactor.add(&auth.header, &format!("Authorization: {MASK}"));
            redactor.add(&auth.secret, MASK);
            redactor.add(&auth.encoded, MASK);
        }
        let mut ssh = None;
        let mut ssh_command = String::from("ssh -F /dev/null -o BatchMode=yes");
        let wants_ssh_setup = self.id.transport == Transport::Ssh
            && (!self.id.known_ssh_hosts.is_empty() || !self.id.mount_ssh_sock.is_empty());
        if wants_ssh_setup {
            let setup = self.ssh_setup(ctx).await?;
            match &setup.known_hosts {
                Some(path) => {
                    ssh_command.push_str(" -o UserKnownHostsFile=");
                    ssh_command.push_str(&shell_quote(&path.to_string_lossy()));
                }
                None => ssh_command
                    .push_str(" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"),
            }
            if let Some(sock) = &setup.agent {
                env.push(("SSH_AUTH_SOCK".into(), sock.clone().into_os_string()));
            }
            ssh = Some(setup);
        } else {
            // BuildKit's default: no known hosts to check against. Nothing is
            // written to the daemon's own known_hosts either.
            ssh_command.push_str(" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null");
        }
        env.push(("GIT_SSH_COMMAND".into(), ssh_command.into()));
        Ok(Git {
            env,
            redactor,
            ctx: ctx.clone(),
            log,
            _ssh: ssh,
        })
    }

    /// A private directory holding the known hosts and a socket that
    /// forwards to the client's ssh agent.
    async fn ssh_setup(&self, ctx: &OpContext) -> Result<SshSetup, GitError> {
        let dir = std::env::temp_dir().join(format!("buildkit-git-{}", bk_cache::new_id()));
        let mut setup = SshSetup {
            dir: dir.clone(),
            known_hosts: None,
            agent: None,
            forwarder: None,
        };
        let known = self.id.known_ssh_hosts.clone();
        let d = dir.clone();
        setup.known_hosts = run_blocking(move || {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&d)
                .map_err(io_err("create", &d))?;
            if known.is_empty() {
                return Ok(None);
            }
            let path = d.join("known_hosts");
            std::fs::write(&path, known.as_bytes()).map_err(io_err("write", &path))?;
            Ok(Some(path))
        })
        .await?;
        if !self.id.mount_ssh_sock.is_empty() {
            let agent_id = self.id.mount_ssh_sock.clone();
            let session = self
                .sessions
                .any(&ctx.session_group, |session| {
                    let id = agent_id.clone();
                    async move {
                        bk_session::ssh::check_agent(&session, &id).await?;
                        Ok(session)
                    }
                })
                .await
                .map_err(|e| GitError::Ssh {
                    id: agent_id.clone(),
                    detail: e.to_string(),
                })?;
            let sock = dir.join("agent.sock");
            let listener =
                tokio::net::UnixListener::bind(&sock).map_err(io_err("listen", &sock))?;
            setup.forwarder = Some(tokio::spawn(async move {
                while let Ok((conn, _)) = listener.accept().await {
                    let session = session.clone();
                    let agent_id = agent_id.clone();
                    tokio::spawn(async move {
                        if let Err(e) =
                            bk_session::ssh::forward_connection(&session, &agent_id, conn).await
                        {
                            tracing::debug!(error = %e, "git ssh agent connection ended");
                        }
                    });
                }
            }));
            setup.agent = Some(sock);
        }
        Ok(setup)
    }

    /// The commit the source names, resolved once per op.
    async fn resolve(&self, ctx: &OpContext) -> Result<Resolved, GitError> {
        let mut slot = self.resolved.lock().await;
        if let Some(r) = slot.as_ref() {
            return Ok(r.clone());
        }
        let resolved = self.resolve_now(ctx).await?;
        *slot = Some(resolved.clone());
        Ok(resolved)
    }

    async fn resolve_now(&self, ctx: &OpContext) -> Result<Resolved, GitError> {
        let checksum = self.id.checksum.to_ascii_lowercase();
        let reference = &self.id.reference;
        let mismatch = |got: &str| GitError::ChecksumMismatch {
            want: self.id.checksum.clone(),
            got: got.to_string(),
        };
        let (sha, target, shown_ref, used_ref) =
            if is_commit_sha(&checksum) && !self.id.keep_git_dir {
                // The checksum is the commit: no network until it is fetched.
                if is_commit_sha(reference) && *reference != checksum {
                    return Err(mismatch(reference));
                }
                let hint =
                    (!reference.is_empty() && !is_commit_sha(reference)).then(|| reference.clone());
                let shown = if reference.is_empty() {
                    checksum.clone()
                } else {
                    reference.clone()
                };
                (
                    checksum.clone(),
                    Target::Commit { hint },
                    shown,
                    String::new(),
                )
            } else if is_commit_sha(reference) {
                (
                    reference.clone(),
                    Target::Commit { hint: None },
                    reference.clone(),
                    String::new(),
                )
            } else {
                let (sha, used, shown) = self.ls_remote(ctx).await?;
                (sha, Target::Named(used.clone()), shown, used)
            };
        if !checksum.is_empty() && !sha.starts_with(&checksum) {
            return Err(mismatch(&sha));
        }
        let key = key_of(&self.id, &sha, &used_ref);
        Ok(Resolved {
            sha,
            target,
            shown_ref,
            key,
        })
    }

    /// The commit of the ref (or of the default branch) on the remote, the
    /// full ref it came from, and the ref asked for.
    async fn ls_remote(&self, ctx: &OpContext) -> Result<(String, String, String), GitError> {
        let _remote = self.repos.lock(self.remote_lock()).await;
        let git = self.git(ctx, false).await?;
        let bare = self.open_repo(&git).await?;
        let at = At::git_dir(bare.path());
        let reference = if self.id.reference.is_empty() {
            let out = git
                .run(at, &["ls-remote", "--symref", "origin", "HEAD"])
                .await
                .map_err(|e| {
                    wrap(e, |detail| GitError::DefaultBranch {
                        remote: self.shown_remote(),
                        detail,
                    })
                })?;
            let branch = default_branch(&out)
                .ok_or_else(|| GitError::NoDefaultBranch(self.shown_remote()))?;
            // The name comes from the remote: it is checked like a user's.
            validate_ref(&branch)?;
            branch
        } else {
            self.id.reference.clone()
        };
        let peeled = format!("{reference}^{{}}");
        let out = git
            .run(
                at,
                &["ls-remote", "origin", reference.as_str(), peeled.as_str()],
            )
            .await
            .map_err(|e| self.fetch_error(e))?;
        let (sha, used) = pick_ref(&reference, &out)?;
        Ok((sha, used, reference))
    }

    fn fetch_error(&self, e: GitError) -> GitError {
        wrap(e, |detail| GitError::Fetch {
            remote: self.shown_remote(),
            detail,
        })
    }

    fn checkout_error(&self, e: GitError) -> GitError {
        wrap(e, |detail| GitError::Checkout {
            remote: self.shown_remote(),
            detail,
        })
    }

    /// The remote's bare repository, made on first use. It is a mutable
    /// snapshot: it survives restarts, a prune may remove it (it is made
    /// again), and it is held while in use.
    async fn open_repo(&self, git: &Git) -> Result<Ref, GitError> {
        let name = format!("{REMOTE_PREFIX}{}", self.remote_hash);
        let (cache, n) = (self.cache.clone(), name.clone());
        let existing = run_blocking(move || {
            let Some(id) = cache.named(&n)? else {
                return Ok(None);
            };
            Ok(cache.get(&id)?.filter(|r| r.path().join("HEAD").is_file()))
        })
        .await?;
        if let Some(repo) = existing {
            return Ok(repo);
        }
        let (id, dir) = self.create_dir().await?;
        let mut pending = RemoveOnDrop::new(dir.clone());
        let init_error = |e| {
            wrap(e, |detail| GitError::Init {
                remote: self.shown_remote(),
                detail,
            })
        };
        git.run(At::cwd(&dir), &["init", "--bare", "-q", "."])
            .await
            .map_err(init_error)?;
        git.run(
            At::git_dir(&dir),
            &["remote", "add", "--", "origin", self.id.remote.as_str()],
        )
        .await
        .map_err(init_error)?;
        let cache = self.cache.clone();
        let description = format!("shared git repo for {}", self.shown_remote());
        let repo = run_blocking(move || {
            let repo = cache.commit(&id, RecordType::Regular, &description, Vec::new(), true)?;
            cache.set_named(&name, &id)?;
            Ok(repo)
        })
        .await?;
        pending.disarm();
        Ok(repo)
    }

    async fn create_dir(&self) -> Result<(String, PathBuf), GitError> {
        let cache = self.cache.clone();
        run_blocking(move || Ok(cache.create_dir()?)).await
    }

    /// Whether the bare repository has the commit; only cancellation fails.
    async fn has_commit(&self, git: &Git, bare: &Path, sha: &str) -> Result<bool, GitError> {
        let object = format!("{sha}^{{commit}}");
        match git
            .run(At::git_dir(bare), &["cat-file", "-e", object.as_str()])
            .await
        {
            Ok(_) => Ok(true),
            Err(GitError::Command(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether the bare repository's `full` ref leads to commit `sha`; only
    /// cancellation fails.
    async fn ref_points_to(
        &self,
        git: &Git,
        bare: &Path,
        full: &str,
        sha: &str,
    ) -> Result<bool, GitError> {
        let peeled = format!("{full}^{{commit}}");
        match git
            .run(
                At::git_dir(bare),
                &["rev-parse", "--verify", "-q", peeled.as_str()],
            )
            .await
        {
            Ok(out) => Ok(out.trim() == sha),
            Err(GitError::Command(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `git fetch` that retries without `--depth` when the server cannot
    /// make shallow packs (dumb http).
    async fn fetch_shallow(&self, git: &Git, bare: &Path, args: &[&str]) -> Result<(), GitError> {
        match git.run(At::git_dir(bare), args).await {
            Err(GitError::Command(detail))
                if detail.contains("--depth") || detail.contains("shallow") =>
            {
                let deep: Vec<&str> = args.iter().copied().filter(|a| *a != "--depth=1").collect();
                git.run(At::git_dir(bare), &deep).await.map(drop)
            }
            other => other.map(drop),
        }
    }

    /// Brings the key's commit into the bare repository.
    async fn fetch(&self, git: &Git, bare: &Path, resolved: &Resolved) -> Result<(), GitError> {
        let sha = resolved.sha.as_str();
        // A `.git` kept gets the ref under its own name: the bare
        // repository must have the ref too, not just the commit.
        let named_ok = match &resolved.target {
            Target::Named(full) if self.id.keep_git_dir => {
                self.ref_points_to(git, bare, full, sha).await?
            }
            _ => true,
        };
        if named_ok && self.has_commit(git, bare, sha).await? {
            return Ok(());
        }
        let b = bare.to_path_buf();
        run_blocking(move || {
            remove_stale_locks(&b);
            Ok(())
        })
        .await?;
        let at = At::git_dir(bare);
        match &resolved.target {
            Target::Named(full) => {
                // The ref is kept under its own name: the next fetch then
                // tells the server what it already has.
                let refspec = format!("{full}:{full}");
                self.fetch_shallow(
                    git,
                    bare,
                    &[
                        "fetch",
                        "--depth=1",
                        "--no-tags",
                        "--force",
                        "origin",
                        &refspec,
                    ],
                )
                .await
                .map_err(|e| self.fetch_error(e))?;
                if !self.has_commit(git, bare, sha).await? {
                    // The ref moved after the key was computed; the key's
                    // commit is what must be checked out.
                    if let Err(GitError::Canceled) = git
                        .run(at, &["fetch", "--depth=1", "--no-tags", "origin", sha])
                        .await
                    {
                        return Err(GitError::Canceled);
                    }
                    if !self.has_commit(git, bare, sha).await? {
                        return Err(GitError::Fetch {
                            remote: self.shown_remote(),
                            detail: format!("{full} no longer points to {sha}"),
                        });
                    }
                }
            }
            Target::Commit { hint: Some(hint) } => {
                self.fetch_shallow(
                    git,
                    bare,
                    &["fetch", "--depth=1", "--no-tags", "origin", hint],
                )
                .await
                .map_err(|e| self.fetch_error(e))?;
                let got = git
                    .run(at, &["rev-parse", "--verify", "-q", "FETCH_HEAD^{commit}"])
                    .await
                    .map_err(|e| self.fetch_error(e))?;
                let got = got.trim();
                if got != sha {
                    return Err(GitError::ChecksumMismatch {
                        want: self.id.checksum.clone(),
                        got: got.to_string(),
                    });
                }
            }
            Target::Commit { hint: None } => {
                // Most servers hand out any commit they have; the others
                // only what their refs reach, so all of it is fetched then.
                if let Err(GitError::Canceled) = git
                    .run(at, &["fetch", "--depth=1", "--no-tags", "origin", sha])
                    .await
                {
                    return Err(GitError::Canceled);
                }
                if !self.has_commit(git, bare, sha).await? {
                    let shallow = tokio::fs::try_exists(bare.join("shallow"))
                        .await
                        .unwrap_or(false);
                    let mut args = vec!["fetch", "--tags"];
                    if shallow {
                        args.push("--unshallow");
                    }
                    args.push("origin");
                    git.run(at, &args).await.map_err(|e| self.fetch_error(e))?;
                }
            }
        }
        if !self.has_commit(git, bare, sha).await? {
            return Err(GitError::Fetch {
                remote: self.shown_remote(),
                detail: format!("commit {sha} not found"),
            });
        }
        Ok(())
    }

    /// The key's snapshot: found, or fetched and checked out.
    async fn snapshot(&self, ctx: &OpContext) -> Result<Ref, GitError> {
        let resolved = self.resolve(ctx).await?;
        let name = format!("{SNAPSHOT_PREFIX}{}", resolved.key);
        let _checkout = self.repos.lock(name.clone()).await;
        let (cache, n) = (self.cache.clone(), name.clone());
        let existing = run_blocking(move || match cache.named(&n)? {
            Some(id) => Ok(cache.get(&id)?),
            None => Ok(None),
        })
        .await?;
        if let Some(snapshot) = existing {
            return Ok(snapshot);
        }
        let _remote = self.repos.lock(self.remote_lock()).await;
        let git = self.git(ctx, true).await?;
        let bare = self.open_repo(&git).await?;
        self.fetch(&git, bare.path(), &resolved).await?;
        let snapshot = self.checkout(&git, bare.path(), &resolved).await?;
        let (cache, id, bare_id) = (
            self.cache.clone(),
            snapshot.id().to_string(),
            bare.id().to_string(),
        );
        run_blocking(move || {
            cache.set_named(&name, &id)?;
            // The repository grew: its record's size and use follow.
            cache.touch(&bare_id)?;
            Ok(())
        })
        .await?;
        Ok(snapshot)
    }

    /// Checks the commit out into a new snapshot.
    async fn checkout(&self, git: &Git, bare: &Path, resolved: &Resolved) -> Result<Ref, GitError> {
        let (id, dir) = self.create_dir().await?;
        let mut pending = RemoveOnDrop::new(dir.clone());
        // BuildKit ignores keepgitdir for a subdir: a `.git` describes the
        // whole tree.
        let written = if self.id.keep_git_dir && self.id.subdir.is_empty() {
            self.checkout_with_git_dir(git, bare, resolved, &dir).await
        } else {
            self.checkout_tree(git, bare, resolved, &dir).await
        };
        if let Err(e) = written {
            pending.remove().await;
            return Err(e);
        }
        let cache = self.cache.clone();
        let description = format!(
            "git snapshot for {}#{}",
            self.shown_remote(),
            resolved.shown_ref
        );
        let d = dir.clone();
        let snapshot = run_blocking(move || {
            use std::os::unix::fs::PermissionsExt;
            // The root's mode whatever the daemon's umask was.
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))
                .map_err(io_err("chmod", &d))?;
            Ok(cache.commit(
                &id,
                RecordType::GitCheckout,
                &description,
                Vec::new(),
                false,
            )?)
        })
        .await?;
        pending.disarm();
        Ok(snapshot)
    }

    /// A checkout without `.git`: the tree is written from a throwaway
    /// repository that borrows the bare one's objects, so submodule state
    /// (URLs from the repository's `.gitmodules`, their clones) never
    /// lingers in the shared repository to be reused by another commit.
    async fn checkout_tree(
        &self,
        git: &Git,
        bare: &Path,
        resolved: &Resolved,
        dir: &Path,
    ) -> Result<(), GitError> {
        let (_, scratch) = self.create_dir().await?;
        let scratch_dir = RemoveOnDrop::new(scratch.clone());
        let written = self.write_tree(git, bare, resolved, dir, &scratch).await;
        // Whatever happened, the scratch space goes now.
        scratch_dir.remove().await;
        written
    }

    async fn write_tree(
        &self,
        git: &Git,
        bare: &Path,
        resolved: &Resolved,
        dir: &Path,
        scratch: &Path,
    ) -> Result<(), GitError> {
        let git_dir = scratch.join("git");
        let subdir = self.id.subdir.clone();
        let work = if subdir.is_empty() {
            dir.to_path_buf()
        } else {
            scratch.join("tree")
        };
        git.run(
            At::cwd(scratch),
            &["init", "--bare", "-q", "--template=", "git"],
        )
        .await
        .map_err(|e| self.checkout_error(e))?;
        let (g, w, b) = (git_dir.clone(), work.clone(), bare.to_path_buf());
        let separate_tree = !subdir.is_empty();
        run_blocking(move || {
            let info = g.join("objects").join("info");
            std::fs::create_dir_all(&info).map_err(io_err("create", &info))?;
            let alternates = info.join("alternates");
            let objects = b.join("objects");
            let mut line = objects.into_os_string().into_encoded_bytes();
            line.push(b'\n');
            std::fs::write(&alternates, line).map_err(io_err("write", &alternates))?;
            if separate_tree {
                std::fs::create_dir(&w).map_err(io_err("create", &w))?;
            }
            Ok(())
        })
        .await?;
        let tree = At::tree(&git_dir, &work);
        git.run(tree, &["checkout", "-q", resolved.sha.as_str(), "--", "."])
            .await
            .map_err(|e| self.checkout_error(e))?;
        if self.wants_submodules(&work).await {
            // Relative submodule URLs are relative to the remote.
            git.run(
                At::git_dir(&git_dir),
                &["remote", "add", "--", "origin", self.id.remote.as_str()],
            )
            .await
            .map_err(|e| self.checkout_error(e))?;
            self.update_submodules(git, tree).await?;
            // Each submodule's `.git` points into the throwaway repository.
            let w = work.clone();
            run_blocking(move || remove_git_entries(&w)).await?;
        }
        if !subdir.is_empty() {
            let (w, d) = (work.clone(), dir.to_path_buf());
            run_blocking(move || {
                let found = resolve_subdir(&w, &subdir)?;
                // The snapshot's directory is empty: the subdir replaces it.
                std::fs::rename(&found, &d).map_err(io_err("rename", &found))
            })
            .await?;
        }
        Ok(())
    }

    /// A checkout with a `.git` of its own, fetched from the bare repository
    /// over `file://` (never a local clone, which could be steered into
    /// copying other host files) and left naming the remote.
    async fn checkout_with_git_dir(
        &self,
        git: &Git,
        bare: &Path,
        resolved: &Resolved,
        dir: &Path,
    ) -> Result<(), GitError> {
        let sha = resolved.sha.as_str();
        let git_dir = dir.join(".git");
        let g = At::git_dir(&git_dir);
        git.run(At::cwd(dir), &["init", "-q", "."])
            .await
            .map_err(|e| self.checkout_error(e))?;
        let origin = format!("file://{}", bare.to_string_lossy());
        git.run(g, &["remote", "add", "--", "origin", origin.as_str()])
            .await
            .map_err(|e| self.checkout_error(e))?;
        // A branch or tag arrives under its own name (`git describe` and
        // `git branch` work); anything else through a temporary ref.
        let mut temporary = None;
        let named = match &resolved.target {
            Target::Named(full) if self.ref_points_to(git, bare, full, sha).await? => {
                Some(full.clone())
            }
            _ => None,
        };
        let refspec = match named {
            Some(full) if full.starts_with("refs/heads/") || full.starts_with("refs/tags/") => {
                format!("{full}:{full}")
            }
            Some(full) => full,
            None => {
                let tmp = format!("refs/buildkit/{}", bk_cache::new_id());
                git.run(At::git_dir(bare), &["update-ref", tmp.as_str(), sha])
                    .await
                    .map_err(|e| self.checkout_error(e))?;
                temporary = Some(tmp.clone());
                tmp
            }
        };
        let fetched = git
            .run(
                At {
                    allow_file: true,
                    ..g
                },
                &[
                    "fetch",
                    "-u",
                    "-q",
                    "--depth=1",
                    "--no-tags",
                    "origin",
                    refspec.as_str(),
                ],
            )
            .await;
        if let Some(tmp) = &temporary {
            // The temporary ref would pin the commit in the bare repository.
            if let Err(e) = git
                .run(At::git_dir(bare), &["update-ref", "-d", tmp.as_str()])
                .await
            {
                tracing::debug!(error = %e, "failed to remove a temporary git ref");
            }
        }
        fetched.map_err(|e| self.checkout_error(e))?;
        let tree = At::tree(&git_dir, dir);
        git.run(tree, &["checkout", "-q", "-f", "--detach", sha])
            .await
            .map_err(|e| self.checkout_error(e))?;
        let shown = self.shown_remote();
        git.run(g, &["remote", "set-url", "--", "origin", shown.as_str()])
            .await
            .map_err(|e| self.checkout_error(e))?;
        // The reflogs and FETCH_HEAD name the daemon's own paths.
        git.run(g, &["reflog", "expire", "--all", "--expire=now"])
            .await
            .map_err(|e| self.checkout_error(e))?;
        let fetch_head = git_dir.join("FETCH_HEAD");
        match tokio::fs::remove_file(&fetch_head).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io_err("remove", &fetch_head)(e));
            }
            _ => {}
        }
        if self.wants_submodules(dir).await {
            self.update_submodules(git, tree).await?;
        }
        Ok(())
    }

    /// Whether submodules are to be checked out: not skipped, and the tree
    /// declares some.
    async fn wants_submodules(&self, work: &Path) -> bool {
        !self.id.skip_submodules
            && tokio::fs::symlink_metadata(work.join(".gitmodules"))
                .await
                .is_ok()
    }

    async fn update_submodules(&self, git: &Git, tree: At<'_>) -> Result<(), GitError> {
        git.run(
            tree,
            &["submodule", "update", "--init", "--recursive", "--depth=1"],
        )
        .await
        .map_err(|e| {
            wrap(e, |detail| GitError::Submodules {
                remote: self.shown_remote(),
                detail,
            })
        })?;
        Ok(())
    }
}

#[async_trait]
impl Op<Ref> for GitSource {
    async fn cache_key(&self, ctx: &OpContext, _inputs: &[Digest]) -> Result<Digest, OpError> {
        Ok(self.resolve(ctx).await?.key)
    }

    async fn exec(&self, ctx: &OpContext, _inputs: Vec<Ref>) -> Result<Vec<Ref>, OpError> {
        Ok(vec![self.snapshot(ctx).await?])
    }
}

/// GitHub tokens work for every repository there, so BuildKit (like
/// actions/checkout) scopes them to the host; elsewhere only to the remote.
fn token_scope(remote: &str) -> &str {
    for prefix in ["https://github.com/", "https://www.github.com/"] {
        if remote.starts_with(prefix) {
            return prefix;
        }
    }
    remote
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn base_env() -> Vec<(OsString, OsString)> {
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    let mut env: Vec<(OsString, OsString)> = vec![
        ("PATH".into(), path),
        ("GIT_TERMINAL_PROMPT".into(), "0".into()),
        // No system or user configuration: HOME is not a directory, so
        // nothing can be read from it or written to it.
        ("GIT_CONFIG_NOSYSTEM".into(), "1".into()),
        ("GIT_CONFIG_GLOBAL".into(), "/dev/null".into()),
        ("HOME".into(), "/dev/null".into()),
        ("LC_ALL".into(), "C".into()),
    ];
    for name in PROXY_VARS {
        if let Some(value) = std::env::var_os(name) {
            env.push((name.into(), value));
        }
    }
    env
}

/// Where a git command runs.
#[derive(Clone, Copy, Default)]
struct At<'a> {
    git_dir: Option<&'a Path>,
    work_tree: Option<&'a Path>,
    cwd: Option<&'a Path>,
    /// Lets this command use `file://` (our own bare repository).
    allow_file: bool,
}

impl<'a> At<'a> {
    fn git_dir(git_dir: &'a Path) -> At<'a> {
        At {
            git_dir: Some(git_dir),
            ..At::default()
        }
    }

    fn tree(git_dir: &'a Path, work_tree: &'a Path) -> At<'a> {
        At {
            git_dir: Some(git_dir),
            work_tree: Some(work_tree),
            ..At::default()
        }
    }

    fn cwd(cwd: &'a Path) -> At<'a> {
        At {
            cwd: Some(cwd),
            ..At::default()
        }
    }
}

/// Runs git for one source: its environment (credentials, ssh), redaction,
/// logs and cancellation.
struct Git {
    env: Vec<(OsString, OsString)>,
    redactor: Redactor,
    ctx: OpContext,
    log: bool,
    /// Kept alive while the commands may use the agent socket.
    _ssh: Option<SshSetup>,
}

impl Git {
    /// Runs `git <args>` and returns its stdout; a failure carries its
    /// (redacted) stderr.
    async fn run<S: AsRef<OsStr>>(&self, at: At<'_>, args: &[S]) -> Result<String, GitError> {
        // Through sh, for a umask of 022 in git alone: checked-out files get
        // the modes BuildKit's do, whatever the daemon's umask is.
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(r#"umask 022 && exec git "$@""#)
            .arg("git");
        for config in SAFE_CONFIG {
            cmd.arg("-c").arg(config);
        }
        cmd.arg("-c").arg(if at.allow_file {
            "protocol.file.allow=user"
        } else {
            "protocol.file.allow=never"
        });
        if let Some(d) = at.git_dir {
            cmd.arg("--git-dir").arg(d);
        }
        if let Some(w) = at.work_tree {
            cmd.arg("--work-tree").arg(w);
        }
        cmd.args(args);
        let cwd = at
            .cwd
            .or(at.work_tree)
            .or(at.git_dir)
            .unwrap_or(Path::new("/"));
        cmd.current_dir(cwd)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Its own group: remote helpers and ssh die with it.
            .process_group(0);
        let mut child = cmd
            .spawn()
            .map_err(|e| GitError::Command(format!("failed to run git: {e}")))?;
        let mut group = ProcessGroup(
            child
                .id()
                .and_then(|id| rustix::process::Pid::from_raw(id as i32)),
        );
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let reading_out = tokio::spawn(async move {
            let mut buf = Vec::new();
            if let Some(out) = stdout {
                // A hostile remote can list refs without end: what is kept
                // is bounded, the rest drained so git never blocks.
                let mut out = out.take(STDOUT_LIMIT);
                let _ = out.read_to_end(&mut buf).await;
                let _ = tokio::io::copy(&mut out.into_inner(), &mut tokio::io::sink()).await;
            }
            buf
        });
        let redactor = self.redactor.clone();
        let progress = self.log.then(|| self.ctx.progress.clone());
        let reading_err = tokio::spawn(async move {
            let mut kept = String::new();
            let Some(err) = stderr else {
                return kept;
            };
            // Lines end at `\n` or `\r` (sideband progress) and are cut
            // at LINE_LIMIT; the log and the kept text are bounded.
            let mut err = err;
            let mut chunk = vec![0u8; 8192];
            let mut line: Vec<u8> = Vec::new();
            let mut logged = 0usize;
            let mut emit = |line: &[u8], kept: &mut String| {
                let text = redactor.redact(&String::from_utf8_lossy(line));
                if let Some(p) = &progress
                    && logged < LOG_LIMIT
                {
                    logged += text.len();
                    p.log(2, text.as_bytes());
                }
                if kept.len() < STDERR_LIMIT {
                    let room = STDERR_LIMIT - kept.len();
                    let mut end = text.len().min(room);
                    while !text.is_char_boundary(end) {
                        end -= 1;
                    }
                    kept.push_str(&text[..end]);
                }
            };
            loop {
                let n = match err.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                for &b in &chunk[..n] {
                    if line.len() < LINE_LIMIT {
                        line.push(b);
                    }
                    if b == b'\n' || b == b'\r' {
                        emit(&line, &mut kept);
                        line.clear();
                    }
                }
            }
            if !line.is_empty() {
                emit(&line, &mut kept);
            }
            kept
        });
        let status = tokio::select! {
            status = child.wait() => Some(status),
            _ = self.ctx.cancel.cancelled() => None,
        };
        let Some(status) = status else {
            group.kill();
            let _ = child.wait().await;
            return Err(GitError::Canceled);
        };
        group.disarm();
        let status =
            status.map_err(|e| GitError::Command(format!("failed to wait for git: {e}")))?;
        let out = reading_out.await.unwrap_or_default();
        let err = reading_err.await.unwrap_or_default();
        if status.success() {
            return Ok(String::from_utf8_lossy(&out).into_owned());
        }
        let how = match status.code() {
            // sh's answer when it cannot find the program to exec.
            Some(127) => "exit status 127 (is git installed?)".to_string(),
            Some(code) => format!("exit status {code}"),
            None => status.to_string(),
        };
        Err(GitError::Command(format!("git stderr:\n{err}: {how}")))
    }
}

/// Kills a command's whole process group unless it finished: a canceled
/// build, or a dropped future, leaves no git or helper running.
struct ProcessGroup(Option<rustix::process::Pid>);

impl ProcessGroup {
    fn kill(&mut self) {
        if let Some(pid) = self.0.take() {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }

    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The known hosts and agent socket of an ssh remote, in a private
/// directory removed with it.
struct SshSetup {
    dir: PathBuf,
    known_hosts: Option<PathBuf>,
    agent: Option<PathBuf>,
    forwarder: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for SshSetup {
    fn drop(&mut self) {
        if let Some(f) = self.forwarder.take() {
            f.abort();
        }
        // Two small files: quick enough for any thread.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn run_blocking<T, F>(work: F) -> Result<T, GitError>
where
    F: FnOnce() -> Result<T, GitError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| GitError::Task(e.to_string()))?
}

/// Lock files a killed git left in the bare repository. Nothing else uses
/// it while the remote's lock is held, so any lock file there is stale.
fn remove_stale_locks(bare: &Path) {
    for name in [
        "shallow.lock",
        "packed-refs.lock",
        "config.lock",
        "HEAD.lock",
        "FETCH_HEAD.lock",
        "index.lock",
    ] {
        let _ = std::fs::remove_file(bare.join(name));
    }
    // Temporary refs a cancelled checkout left (checkouts run under the
    // same remote lock as this): they would pin their commits forever.
    let _ = std::fs::remove_dir_all(bare.join("refs/buildkit"));
    let mut stack = vec![bare.join("refs")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                stack.push(entry.path());
            } else if entry.file_name().as_encoded_bytes().ends_with(b".lock") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Removes every `.git` under `root` (git never checks one out, so each is
/// a submodule's), following no symlink.
fn remove_git_entries(root: &Path) -> Result<(), GitError> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(io_err("read", &dir))?;
        for entry in entries {
            let entry = entry.map_err(io_err("read", &dir))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(io_err("stat", &path))?;
            if entry.file_name() == ".git" {
                if kind.is_dir() {
                    std::fs::remove_dir_all(&path).map_err(io_err("remove", &path))?;
                } else {
                    std::fs::remove_file(&path).map_err(io_err("remove", &path))?;
                }
            } else if kind.is_dir() {
                stack.push(path);
            }
        }
    }
    Ok(())
}

/// The directory `subdir` names inside the checkout at `root`. Symlinks are
/// followed only while they stay inside: the content is untrusted, and one
/// leading out (absolute, or climbing above the root) is refused rather
/// than followed to the daemon's own files.
fn resolve_subdir(root: &Path, subdir: &str) -> Result<PathBuf, GitError> {
    let invalid = |reason| GitError::InvalidSubdir {
        subdir: subdir.to_string(),
        reason,
    };
    let mut resolved: Vec<OsString> = Vec::new();
    let mut pending: VecDeque<OsString> = subdir.split('/').map(OsString::from).collect();
    let mut links = 0;
    while let Some(part) = pending.pop_front() {
        if part.is_empty() || part == "." {
            continue;
        }
        if part == ".." {
            if resolved.pop().is_none() {
                return Err(invalid("it leads outside the repository"));
            }
            continue;
        }
        let mut path = root.to_path_buf();
        path.extend(&resolved);
        path.push(&part);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(invalid("no such directory in the repository"));
            }
            Err(e) => return Err(io_err("stat", &path)(e)),
        };
        if meta.file_type().is_symlink() {
            links += 1;
            if links > 40 {
                return Err(invalid("too many levels of symbolic links"));
            }
            let target = std::fs::read_link(&path).map_err(io_err("readlink", &path))?;
            if target.is_absolute() {
                return Err(invalid("a symlink in it leads outside the repository"));
            }
            for c in target.components().rev() {
                pending.push_front(c.as_os_str().to_os_string());
            }
        } else if meta.is_dir() {
            resolved.push(part);
        } else {
            return Err(invalid("not a directory"));
        }
    }
    let mut path = root.to_path_buf();
    path.extend(&resolved);
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(rest: &str) -> GitIdentifier {
        GitIdentifier::parse(rest, &BTreeMap::new()).unwrap()
    }

    #[test]
    fn identifiers_as_buildkit_reads_them() {
        let id = parse("github.com/moby/buildkit.git#main");
        assert_eq!(id.remote, "https://github.com/moby/buildkit.git");
        assert_eq!(id.transport, Transport::Https);
        assert_eq!(id.host, "github.com");
        assert_eq!(id.reference, "main");
        assert_eq!(id.subdir, "");

        let id = parse("git@github.com:user/repo.git#mybranch:mydir/mysubdir/");
        assert_eq!(id.remote, "git@github.com:user/repo.git");
        assert_eq!(id.transport, Transport::Ssh);
        assert_eq!(id.reference, "mybranch");
        assert_eq!(id.subdir, "mydir/mysubdir");

        let id = parse("ssh://foo%40barcorp.com@github.com/user/repo.git#mybranch:mydir");
        assert_eq!(
            id.remote,
            "ssh://foo%40barcorp.com@github.com/user/repo.git"
        );
        assert_eq!(id.host, "github.com");

        let id = parse("git://github.com/user/repo.git#:mydir/mysubdir/");
        assert_eq!(id.remote, "git://github.com/user/repo.git");
        assert_eq!(id.reference, "");
        assert_eq!(id.subdir, "mydir/mysubdir");

        let id = parse("127.0.0.1:9418/repo#v1:/");
        assert_eq!(id.remote, "https://127.0.0.1:9418/repo");
        assert_eq!(id.host, "127.0.0.1:9418");
        assert_eq!(id.subdir, "");

        let attrs = BTreeMap::from([
            (
                ATTR_FULL_URL.to_string(),
                "git://127.0.0.1:9418/repo".to_string(),
            ),
            (ATTR_KEEP_GIT_DIR.to_string(), "true".to_string()),
            (ATTR_CHECKSUM.to_string(), "AbC123".to_string()),
            (ATTR_SKIP_SUBMODULES.to_string(), "true".to_string()),
        ]);
        let id = GitIdentifier::parse("127.0.0.1:9418/repo#main:/a/../b", &attrs).unwrap();
        assert_eq!(id.remote, "git://127.0.0.1:9418/repo");
        assert_eq!(id.transport, Transport::Git);
        assert!(id.keep_git_dir && id.skip_submodules);
        assert_eq!(id.checksum, "AbC123");
        assert_eq!(id.subdir, "b");
    }

    #[test]
    fn bad_identifiers_are_refused() {
        let err = |rest: &str, attrs: &[(&str, &str)]| {
            let attrs = attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            GitIdentifier::parse(rest, &attrs).unwrap_err().to_string()
        };
        assert_eq!(err("ftp://host/repo", &[]), "ftp: invalid protocol");
        assert_eq!(
            err("host/repo", &[(ATTR_FULL_URL, "file:///etc")]),
            "file: invalid protocol"
        );
        assert!(err("host/repo#--upload-pack=x", &[]).contains("invalid git ref"));
        assert!(err("host/repo#a..b", &[]).contains("invalid git ref"));
        assert!(err("host/repo#main:../x", &[]).contains("leads outside"));
        assert!(err("host/repo#main:a/../../x", &[]).contains("leads outside"));
        assert_eq!(
            err("host/repo", &[(ATTR_CHECKSUM, "xyz")]),
            "invalid checksum xyz for Git URL, expected hex commit hash"
        );
        assert!(err("ssh://-oProxyCommand=x/repo", &[]).contains("starts with '-'"));
        assert!(err("-u@host:repo", &[(ATTR_FULL_URL, "-u@host:repo")]).contains("'-'"));
        assert!(err("host/re\npo", &[]).contains("control"));
    }

    #[test]
    fn credentials_are_masked() {
        assert_eq!(
            redact_url("https://user:password@host.tld/this:that"),
            "https://xxxxx:xxxxx@host.tld/this:that"
        );
        assert_eq!(
            redact_url("https://user@host.tld/this:that"),
            "https://xxxxx@host.tld/this:that"
        );
        assert_eq!(
            redact_url("https://:password@host.tld/x"),
            "https://:xxxxx@host.tld/x"
        );
        assert_eq!(redact_url("https://host.tld/a@b"), "https://host.tld/a@b");
        assert_eq!(redact_url("git@github.com:x/y"), "git@github.com:x/y");

        let mut r = Redactor::for_remote("https://me:s3cr%2Ft@host/repo.git");
        r.add("tok", MASK);
        let text = "fatal: unable to access 'https://me:s3cr%2Ft@host/repo.git/': s3cr/t tok";
        assert_eq!(
            r.redact(text),
            "fatal: unable to access 'https://xxxxx:xxxxx@host/repo.git/': xxxxx xxxxx"
        );
    }

    #[test]
    fn refs_are_chosen_as_buildkit_chooses() {
        let a = "a".repeat(40);
        let b = "b".repeat(40);
        let c = "c".repeat(40);
        let out = format!("{a}\trefs/heads/v1\n{b}\trefs/tags/v1\n{c}\trefs/tags/v1^{{}}\n");
        // A branch wins over a tag of the same name.
        assert_eq!(
            pick_ref("v1", &out).unwrap(),
            (a.clone(), "refs/heads/v1".into())
        );
        // A tag is its commit (the peeled line), under the tag's name.
        assert_eq!(
            pick_ref("refs/tags/v1", &out).unwrap(),
            (c.clone(), "refs/tags/v1".into())
        );
        let out = format!("{b}\trefs/tags/v1\n{c}\trefs/tags/v1^{{}}\n");
        assert_eq!(pick_ref("v1", &out).unwrap(), (c, "refs/tags/v1".into()));
        assert_eq!(
            pick_ref("heads/v1", &format!("{a}\trefs/heads/v1\n")).unwrap(),
            (a, "refs/heads/v1".into())
        );
        let e = pick_ref("nope", "").unwrap_err().to_string();
        assert_eq!(e, "repository does not contain ref nope, output: \"\"");
        assert!(pick_ref("x", "zz\trefs/heads/x\n").is_err());
        assert_eq!(
            default_branch("ref: refs/heads/trunk\tHEAD\nabc\tHEAD\n"),
            Some("trunk".into())
        );
        assert_eq!(default_branch("abc\tHEAD\n"), None);
    }

    #[test]
    fn subdirs_never_leave_the_checkout() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("file"), b"x").unwrap();
        std::os::unix::fs::symlink("a/b", root.join("inside")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../..", root.join("a/up")).unwrap();
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        std::os::unix::fs::symlink(".", root.join("dot")).unwrap();
        assert_eq!(resolve_subdir(&root, "a/b").unwrap(), root.join("a/b"));
        assert_eq!(resolve_subdir(&root, "inside").unwrap(), root.join("a/b"));
        assert_eq!(resolve_subdir(&root, "dot").unwrap(), root);
        assert_eq!(resolve_subdir(&root, "a/b/../b").unwrap(), root.join("a/b"));
        for bad in ["abs", "a/up", "a/up/root", "loop", "file", "missing"] {
            assert!(resolve_subdir(&root, bad).is_err(), "{bad}");
        }
        let e = resolve_subdir(&root, "abs").unwrap_err().to_string();
        assert!(e.contains("leads outside"), "{e}");
    }

    #[test]
    fn commit_ids_and_keys() {
        assert!(is_commit_sha(&"a".repeat(40)));
        assert!(is_commit_sha(&"0".repeat(64)));
        assert!(!is_commit_sha(&"A".repeat(40)));
        assert!(!is_commit_sha("abc"));
        let mut id = parse("host/repo#main");
        let sha = "a".repeat(40);
        let plain = key_of(&id, &sha, "refs/heads/main");
        // Without .git the ref does not shape the snapshot.
        assert_eq!(plain, key_of(&id, &sha, "refs/tags/v1"));
        assert_ne!(plain, key_of(&id, &"b".repeat(40), "refs/heads/main"));
        id.keep_git_dir = true;
        let kept = key_of(&id, &sha, "refs/heads/main");
        assert_ne!(plain, kept);
        assert_ne!(kept, key_of(&id, &sha, "refs/tags/v1"));
        id.keep_git_dir = false;
        id.subdir = "docs".into();
        assert_ne!(plain, key_of(&id, &sha, "refs/heads/main"));
        assert_eq!(
            token_scope("https://github.com/a/b.git"),
            "https://github.com/"
        );
        assert_eq!(token_scope("https://host/a/b.git"), "https://host/a/b.git");
    }
}
