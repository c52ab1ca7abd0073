//! Image references (`busybox`, `localhost:5000/app:v1`, `name@sha256:…`),
//! parsed and normalised exactly as github.com/distribution/reference does.
//!
//! Start with [`Reference::parse_normalized_named`] (Go's
//! `ParseNormalizedNamed`) followed by [`Reference::tag_name_only`] (Go's
//! `TagNameOnly`): that is how BuildKit turns what a user typed into
//! `docker.io/library/busybox:latest`. [`Reference::parse_docker_ref`] is
//! Go's `ParseDockerRef` (a digest wins over a tag). [`Reference::parse`] is
//! the raw grammar without Docker Hub defaults.
//!
//! The grammar is Go's regular expressions written out by hand. The only
//! ambiguity in it is whether the first path component is a registry host;
//! Go's regexp prefers the host reading whenever both readings match, and so
//! does `split_name`. Error messages are the Go package's, because clients
//! print them.

use std::fmt;
use std::str::FromStr;

use crate::digest::{Digest, DigestError};

/// Docker Hub's canonical domain: familiar names normalise to it.
pub const DEFAULT_DOMAIN: &str = "docker.io";
/// The legacy Docker Index domain, canonicalised to [`DEFAULT_DOMAIN`].
pub const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
/// Namespace of Docker Hub's official images (`busybox` is `library/busybox`).
pub const OFFICIAL_REPO_PREFIX: &str = "library/";
/// The tag [`Reference::tag_name_only`] adds.
pub const DEFAULT_TAG: &str = "latest";
/// Longest repository path (without the domain) Go accepts.
pub const REPOSITORY_NAME_TOTAL_LENGTH_MAX: usize = 255;

/// Why a string is not a reference; each message is the Go package's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("invalid reference format")]
    InvalidFormat,
    #[error("invalid tag format")]
    InvalidTag,
    #[error("repository name must have at least one component")]
    NameEmpty,
    #[error("repository name must be lowercase")]
    NameContainsUppercase,
    #[error("repository name must not be more than {REPOSITORY_NAME_TOTAL_LENGTH_MAX} characters")]
    NameTooLong,
    /// `ParseNormalizedNamed` refuses a bare 64-hex string: it would be
    /// ambiguous with an image id.
    #[error("invalid repository name ({0}), cannot specify 64-byte hexadecimal strings")]
    HexIdentifier(String),
    /// `ParseNormalizedNamed`'s own lowercase check (names the repository).
    #[error("invalid reference format: repository name ({0}) must be lowercase")]
    RepositoryNotLowercase(String),
    #[error(transparent)]
    Digest(#[from] DigestError),
}

/// A named image reference: `[domain/]path[:tag][@digest]`.
///
/// `domain` is empty only for references from [`Reference::parse`] whose
/// first component is not a host; normalised references always have one.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Go's `reference.Parse`: the grammar alone, no Docker Hub defaults.
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        let Some(parts) = match_reference(s) else {
            if s.is_empty() {
                return Err(ReferenceError::NameEmpty);
            }
            // Go reports uppercase specially when lowercasing would have
            // made the string valid.
            if match_reference(&s.to_lowercase()).is_some() {
                return Err(ReferenceError::NameContainsUppercase);
            }
            return Err(ReferenceError::InvalidFormat);
        };
        if parts.path.len() > REPOSITORY_NAME_TOTAL_LENGTH_MAX {
            return Err(ReferenceError::NameTooLong);
        }
        let digest = match parts.digest {
            Some(d) => Some(Digest::parse(d)?),
            None => None,
        };
        Ok(Reference {
            domain: parts.domain.unwrap_or("").to_owned(),
            path: parts.path.to_owned(),
            tag: parts.tag.map(str::to_owned),
            digest,
        })
    }

    /// Go's `ParseNormalizedNamed`: a familiar name as typed in the Docker
    /// UI to a fully qualified reference (`ubuntu` is
    /// `docker.io/library/ubuntu`). No tag is added; see
    /// [`Reference::tag_name_only`].
    pub fn parse_normalized_named(s: &str) -> Result<Reference, ReferenceError> {
        if is_identifier(s) {
            return Err(ReferenceError::HexIdentifier(s.to_owned()));
        }
        let (domain, remainder) = split_docker_domain(s);
        let remote = match remainder.find(':') {
            Some(i) => &remainder[..i],
            None => remainder.as_str(),
        };
        if remote.to_lowercase() != remote {
            return Err(ReferenceError::RepositoryNotLowercase(remote.to_owned()));
        }
        Reference::parse(&format!("{domain}/{remainder}"))
    }

    /// Go's `ParseDockerRef`: normalised, `latest` added when there is
    /// neither tag nor digest, and the tag dropped when there is a digest
    /// (the digest is what gets pulled).
    pub fn parse_docker_ref(s: &str) -> Result<Reference, ReferenceError> {
        let mut r = Reference::parse_normalized_named(s)?;
        if r.digest.is_some() {
            r.tag = None;
            return Ok(r);
        }
        Ok(r.tag_name_only())
    }

    /// Go's `TagNameOnly`: adds `:latest` to a reference with neither tag
    /// nor digest; anything else is returned unchanged.
    pub fn tag_name_only(self) -> Reference {
        if self.is_name_only() {
            return Reference {
                tag: Some(DEFAULT_TAG.to_owned()),
                ..self
            };
        }
        self
    }

    /// Go's `IsNameOnly`: neither tag nor digest.
    pub fn is_name_only(&self) -> bool {
        self.tag.is_none() && self.digest.is_none()
    }

    /// Go's `WithTag`: the same name (and digest) with `tag`.
    pub fn with_tag(&self, tag: &str) -> Result<Reference, ReferenceError> {
        if !is_tag(tag) {
            return Err(ReferenceError::InvalidTag);
        }
        Ok(Reference {
            tag: Some(tag.to_owned()),
            ..self.clone()
        })
    }

    /// Go's `WithDigest`: the same name (and tag) with `digest`.
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// Go's `TrimNamed`: the name alone, without tag or digest.
    pub fn trim_named(&self) -> Reference {
        Reference {
            domain: self.domain.clone(),
            path: self.path.clone(),
            tag: None,
            digest: None,
        }
    }

    /// The registry host (and port): `docker.io`, `localhost:5000`.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The repository path within the registry: `library/busybox`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// `domain/path` (Go's `Name()`).
    pub fn name(&self) -> String {
        if self.domain.is_empty() {
            self.path.clone()
        } else {
            format!("{}/{}", self.domain, self.path)
        }
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// Go's `FamiliarName`: the name as the Docker UI shows it
    /// (`docker.io/library/busybox` is `busybox`).
    pub fn familiar_name(&self) -> String {
        let (domain, path) = self.familiar_parts();
        if domain.is_empty() {
            path.to_owned()
        } else {
            format!("{domain}/{path}")
        }
    }

    /// Go's `FamiliarString`: the familiar name with tag and digest
    /// (`busybox:latest`).
    pub fn familiar_string(&self) -> String {
        let mut s = self.familiar_name();
        self.push_suffix(&mut s);
        s
    }

    fn familiar_parts(&self) -> (&str, &str) {
        if self.domain != DEFAULT_DOMAIN {
            return (&self.domain, &self.path);
        }
        // Only one level below library/ is shortened: Go does not assume
        // the library namespace is flat beyond that.
        match self.path.strip_prefix(OFFICIAL_REPO_PREFIX) {
            Some(rest) if !rest.contains('/') => ("", rest),
            _ => ("", &self.path),
        }
    }

    fn push_suffix(&self, s: &mut String) {
        if let Some(tag) = &self.tag {
            s.push(':');
            s.push_str(tag);
        }
        if let Some(digest) = &self.digest {
            s.push('@');
            s.push_str(digest.as_str());
        }
    }
}

/// The full form: `docker.io/library/busybox:latest` (Go's `String()`).
impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = self.name();
        self.push_suffix(&mut s);
        f.write_str(&s)
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reference({self})")
    }
}

/// Same as [`Reference::parse_normalized_named`].
impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Reference, ReferenceError> {
        Reference::parse_normalized_named(s)
    }
}

/// Go's `splitDockerDomain`: decides whether the first component names a
/// registry, and fills in Docker Hub otherwise.
fn split_docker_domain(name: &str) -> (&str, String) {
    let Some((maybe_domain, maybe_remote)) = name.split_once('/') else {
        // One element ("ubuntu", "ubuntu:latest", even "localhost:5000"):
        // always an official Docker Hub image, never a host.
        return (DEFAULT_DOMAIN, format!("{OFFICIAL_REPO_PREFIX}{name}"));
    };
    let (domain, remote) = if maybe_domain == "localhost" {
        (maybe_domain, maybe_remote)
    } else if maybe_domain == LEGACY_DEFAULT_DOMAIN {
        (DEFAULT_DOMAIN, maybe_remote)
    } else if maybe_domain.contains(['.', ':']) {
        (maybe_domain, maybe_remote)
    } else if maybe_domain.to_lowercase() != maybe_domain {
        // Namespaces cannot be uppercase, so an uppercase first element can
        // only be a host name.
        (maybe_domain, maybe_remote)
    } else {
        (DEFAULT_DOMAIN, name)
    };
    if domain == DEFAULT_DOMAIN && !remote.contains('/') {
        return (domain, format!("{OFFICIAL_REPO_PREFIX}{remote}"));
    }
    (domain, remote.to_owned())
}

/// The pieces of a string matching Go's `ReferenceRegexp`.
struct Parts<'a> {
    domain: Option<&'a str>,
    path: &'a str,
    tag: Option<&'a str>,
    digest: Option<&'a str>,
}

/// `^name(?::tag)?(?:@digest)?$`. Neither name nor tag can hold `@`, and a
/// tag can hold neither `:` nor `/`, so the only `:` that can start a tag is
/// one after the last `/`; the split is therefore unique.
fn match_reference(s: &str) -> Option<Parts<'_>> {
    let (name_and_tag, digest) = match s.split_once('@') {
        Some((before, after)) => (before, Some(after)),
        None => (s, None),
    };
    if digest.is_some_and(|d| !is_digest_pattern(d)) {
        return None;
    }
    let after_slash = name_and_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_and_tag[after_slash..].find(':') {
        Some(i) => {
            let at = after_slash + i;
            (&name_and_tag[..at], Some(&name_and_tag[at + 1..]))
        }
        None => (name_and_tag, None),
    };
    if tag.is_some_and(|t| !is_tag(t)) {
        return None;
    }
    let (domain, path) = split_name(name)?;
    Some(Parts {
        domain,
        path,
        tag,
        digest,
    })
}

/// `^(?:(domainAndPort)/)?(remoteName)$`, preferring the domain reading as
/// Go's leftmost-first regexp does.
fn split_name(name: &str) -> Option<(Option<&str>, &str)> {
    let with_domain = name
        .split_once('/')
        .filter(|(first, rest)| is_domain_and_port(first) && is_remote_name(rest));
    if let Some((first, rest)) = with_domain {
        return Some((Some(first), rest));
    }
    if is_remote_name(name) {
        return Some((None, name));
    }
    None
}

/// `host(?::[0-9]+)?` where host is a domain name (components of letters,
/// digits and inner hyphens, joined by dots) or a bracketed IPv6 address
/// without zone.
fn is_domain_and_port(s: &str) -> bool {
    let (host_ok, rest) = if let Some(inner_and_rest) = s.strip_prefix('[') {
        match inner_and_rest.split_once(']') {
            Some((inner, rest)) => (
                !inner.is_empty() && inner.bytes().all(|b| b.is_ascii_hexdigit() || b == b':'),
                rest,
            ),
            None => (false, ""),
        }
    } else {
        let end = s.find(':').unwrap_or(s.len());
        let host = &s[..end];
        (host.split('.').all(is_domain_component), &s[end..])
    };
    if !host_ok {
        return false;
    }
    match rest.strip_prefix(':') {
        None => rest.is_empty(),
        Some(port) => !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()),
    }
}

/// `[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]`
fn is_domain_component(c: &str) -> bool {
    let b = c.as_bytes();
    match (b.first(), b.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
        }
        _ => false,
    }
}

/// `pathComponent(?:/pathComponent)*`
fn is_remote_name(s: &str) -> bool {
    s.split('/').all(is_path_component)
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`: lowercase alphanumeric runs
/// joined by exactly one of `.`, `_`, `__` or any number of `-`.
fn is_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    let mut i = 0;
    loop {
        let start = i;
        while i < b.len() && alnum(b[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == b.len() {
            return true;
        }
        let sep_start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[sep_start..i];
        let sep_ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|x| x == b'-');
        if !sep_ok {
            return false;
        }
    }
}

/// `[\w][\w.-]{0,127}` (`\w` is ASCII in Go's RE2).
fn is_tag(t: &str) -> bool {
    let b = t.as_bytes();
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    match b.split_first() {
        Some((first, rest)) => {
            b.len() <= 128
                && word(*first)
                && rest.iter().all(|x| word(*x) || matches!(x, b'.' | b'-'))
        }
        None => false,
    }
}

/// The reference grammar's looser digest shape,
/// `[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}`;
/// go-digest validates it properly afterwards.
fn is_digest_pattern(d: &str) -> bool {
    let Some((algorithm, hex)) = d.split_once(':') else {
        return false;
    };
    let algorithm_ok = algorithm.split(['-', '_', '+', '.']).all(|part| {
        let b = part.as_bytes();
        match b.split_first() {
            Some((first, rest)) => {
                first.is_ascii_alphabetic() && rest.iter().all(u8::is_ascii_alphanumeric)
            }
            None => false,
        }
    });
    algorithm_ok && hex.len() >= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `^[a-f0-9]{64}$`: an image id, which is not a valid name.
fn is_identifier(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests;
