//! Git sources as `ADD` names them (BuildKit's `dfgitutil.ParseGitRef`):
//! `https://host/repo.git#ref:subdir`, `git://…`, `ssh://…`,
//! `user@host:path`, with `?ref=`, `?tag=`, `?branch=`, `?checksum=`,
//! `?subdir=`, `?keep-git-dir=`, `?submodules=` queries. Start at
//! [`parse_git_ref`].

/// A git source.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GitRef {
    /// The remote without fragment or query (`https://host/repo.git`).
    pub remote: String,
    /// Host (with port) and path: the LLB identifier's body.
    pub host_path: String,
    /// ssh transport (explicit or `user@host:path`).
    pub ssh: bool,
    pub reference: String,
    pub subdir: String,
    pub checksum: String,
    pub keep_git_dir: Option<bool>,
    pub submodules: Option<bool>,
}

/// `Ok(None)`: not a git source (a context path, a plain URL). `Err`: a
/// git source that is malformed.
pub fn parse_git_ref(src: &str) -> Result<Option<GitRef>, String> {
    if src.starts_with("./") || src.starts_with("../") || src.starts_with("github.com/") {
        return Ok(None);
    }
    let (scheme, rest, ssh) = match src.split_once("://") {
        Some((scheme, rest))
            if !scheme.is_empty() && scheme.bytes().all(|b| b.is_ascii_alphanumeric()) =>
        {
            let scheme = scheme.to_ascii_lowercase();
            if !matches!(scheme.as_str(), "http" | "https" | "ssh" | "git") {
                return Ok(None);
            }
            let ssh = scheme == "ssh";
            (Some(scheme), rest, ssh)
        }
        _ => (None, src, true),
    };
    let (without_fragment, fragment) = match rest.split_once('#') {
        Some((a, f)) => (a, Some(f)),
        None => (rest, None),
    };
    let (location, query) = match without_fragment.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (without_fragment, None),
    };
    let (remote, host_path) = match &scheme {
        Some(scheme) => {
            let (authority, path) = match location.find('/') {
                Some(i) => (&location[..i], &location[i..]),
                None => (location, ""),
            };
            let host = authority.rsplit('@').next().unwrap_or_default();
            if host.is_empty() {
                return Ok(None);
            }
            if matches!(scheme.as_str(), "http" | "https") && !path.ends_with(".git") {
                return Ok(None);
            }
            (
                format!("{scheme}://{location}"),
                format!("{host}{}", clean_abs(path)),
            )
        }
        None => {
            // `user@host:path`, as BuildKit's scp-style pattern.
            let Some((user, after)) = location.split_once('@') else {
                return Ok(None);
            };
            let Some((host, path)) = after.split_once(':') else {
                return Ok(None);
            };
            let user_ok = !user.is_empty()
                && user
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            let host_ok = !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if !user_ok || !host_ok {
                return Ok(None);
            }
            (location.to_string(), format!("{host}{}", clean_abs(path)))
        }
    };
    let mut git = GitRef {
        remote,
        host_path,
        ssh,
        ..Default::default()
    };
    if let Some(fragment) = fragment.filter(|f| !f.is_empty()) {
        let (reference, subdir) = fragment.split_once(':').unwrap_or((fragment, ""));
        git.reference = reference.to_string();
        git.subdir = subdir.to_string();
    }
    if let Some(query) = query.filter(|q| !q.is_empty()) {
        load_query(&mut git, query)?;
    }
    Ok(Some(git))
}

/// `path.Join("/", p)`.
fn clean_abs(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    format!("/{}", out.join("/"))
}

fn unescape(v: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

fn load_query(git: &mut GitRef, query: &str) -> Result<(), String> {
    let mut seen: Vec<(String, String)> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (unescape(k), unescape(v));
        if seen.iter().any(|(sk, _)| *sk == k) {
            return Err(format!("query {k:?} has multiple values"));
        }
        seen.push((k, v));
    }
    let (mut tag, mut branch) = (String::new(), String::new());
    for (k, v) in seen {
        if v.is_empty() && !matches!(k.as_str(), "submodules" | "keep-git-dir") {
            return Err(format!("query {k:?} has no value"));
        }
        match k.as_str() {
            "ref" => {
                if !git.reference.is_empty() && git.reference != v {
                    return Err(format!("ref conflicts: {:?} vs {v:?}", git.reference));
                }
                git.reference = v;
            }
            "tag" => tag = v,
            "branch" => branch = v,
            "subdir" => {
                if !git.subdir.is_empty() && git.subdir != v {
                    return Err(format!("subdir conflicts: {:?} vs {v:?}", git.subdir));
                }
                git.subdir = v;
            }
            "checksum" | "commit" => git.checksum = v,
            "keep-git-dir" => {
                git.keep_git_dir = Some(if v.is_empty() {
                    true
                } else {
                    parse_bool(&v).ok_or_else(|| format!("invalid keep-git-dir value: {v:?}"))?
                });
            }
            "submodules" => {
                git.submodules = Some(if v.is_empty() {
                    true
                } else {
                    parse_bool(&v).ok_or_else(|| format!("invalid submodules value: {v:?}"))?
                });
            }
            other => return Err(format!("unexpected query {other:?}")),
        }
    }
    if !tag.is_empty() {
        if !tag.starts_with("refs/tags/") {
            tag = format!("refs/tags/{tag}");
        }
        if !git.reference.is_empty() && git.reference != tag {
            return Err(format!("ref conflicts: {:?} vs {tag:?}", git.reference));
        }
        git.reference = tag.clone();
    }
    if !branch.is_empty() {
        if !tag.is_empty() {
            return Err("branch conflicts with tag".to_string());
        }
        if !branch.starts_with("refs/heads/") {
            branch = format!("refs/heads/{branch}");
        }
        if !git.reference.is_empty() && git.reference != branch {
            return Err(format!("ref conflicts: {:?} vs {branch:?}", git.reference));
        }
        git.reference = branch;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_buildkit_reads_as_git() {
        let g = parse_git_ref("https://github.com/moby/buildkit.git#v0.10.0:docs")
            .unwrap()
            .unwrap();
        assert_eq!(g.remote, "https://github.com/moby/buildkit.git");
        assert_eq!(g.host_path, "github.com/moby/buildkit.git");
        assert_eq!(
            (g.reference.as_str(), g.subdir.as_str()),
            ("v0.10.0", "docs")
        );
        let g = parse_git_ref("git@github.com:moby/buildkit.git")
            .unwrap()
            .unwrap();
        assert!(g.ssh);
        assert_eq!(g.remote, "git@github.com:moby/buildkit.git");
        assert_eq!(g.host_path, "github.com/moby/buildkit.git");
        let g = parse_git_ref("git://127.0.0.1:9418/repo?branch=main&keep-git-dir=1")
            .unwrap()
            .unwrap();
        assert_eq!(g.host_path, "127.0.0.1:9418/repo");
        assert_eq!(g.reference, "refs/heads/main");
        assert_eq!(g.keep_git_dir, Some(true));
        for not_git in [
            "https://example.com/a.tgz",
            "./x.git",
            "github.com/moby/buildkit",
            "ftp://host/x.git",
            "src/dir",
        ] {
            assert_eq!(parse_git_ref(not_git).unwrap(), None, "{not_git}");
        }
        assert!(parse_git_ref("https://h/r.git?tag=a&branch=b").is_err());
        assert!(parse_git_ref("https://h/r.git?what=1").is_err());
        assert!(parse_git_ref("https://h/r.git#a?ref=b").is_ok());
    }
}
