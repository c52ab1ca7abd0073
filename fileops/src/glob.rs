//! Wildcards in copy sources and rm paths, as fsutil's `ResolveWildcards`
//! treats them: the path is split at the first component holding `*`, `?`
//! or `[`; the part before is resolved inside the root; the part after is
//! matched with Go's `filepath.Match` against paths beneath it, in walk
//! order, a matching directory not being descended into. A malformed
//! pattern matches nothing, as upstream ignores `Match`'s error.

use std::path::Path;

use crate::FileOpError;
use crate::paths::{host, join, resolve, show};

/// fsutil's `containsWildcards`: `\` escapes the next byte.
pub(crate) fn contains_wildcards(name: &[u8]) -> bool {
    let mut i = 0;
    while i < name.len() {
        match name[i] {
            b'\\' => i += 1,
            b'*' | b'?' | b'[' => return true,
            _ => {}
        }
        i += 1;
    }
    false
}

/// fsutil's `splitWildcards`: the components before the first one with a
/// wildcard, and the rest, each joined (and so cleaned) again.
pub(crate) fn split_wildcards(p: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let cleaned = join(&[p]);
    let mut before: Vec<&[u8]> = Vec::new();
    let mut after: Vec<&[u8]> = Vec::new();
    let mut found = false;
    for part in cleaned.split(|&b| b == b'/') {
        if !found && contains_wildcards(part) {
            found = true;
        }
        let part: &[u8] = if part.is_empty() { b"/" } else { part };
        if found {
            after.push(part);
        } else {
            before.push(part);
        }
    }
    (join(&before), join(&after))
}

/// fsutil's `ResolveWildcards`: the in-root paths (relative, without a
/// leading `/`, as upstream returns them) that `src` names. Without a
/// wildcard this is `src` itself, cleaned, whether it exists or not.
pub(crate) fn resolve_wildcards(
    root: &Path,
    src: &[u8],
    follow_links: bool,
) -> Result<Vec<Vec<u8>>, FileOpError> {
    let (prefix, pattern) = split_wildcards(src);
    if pattern.is_empty() {
        return Ok(vec![prefix]);
    }
    let base = resolve(root, &join(&[b"/", &prefix]), follow_links)?;
    // A name at depth n holds n-1 slashes, and each slash in a name must be
    // matched by a slash (or a class) in the pattern; deeper is pointless.
    let max_depth = pattern.iter().filter(|&&b| b == b'/').count() + 1;
    let base_host = host(root, &base);
    let meta = std::fs::symlink_metadata(&base_host)
        .map_err(|err| FileOpError::io("lstat", show(&base), err))?;
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    if !meta.is_dir() {
        return Ok(Vec::new());
    }
    // Depth-first in byte order, like filepath.Walk, without recursion.
    let mut stack: Vec<(Vec<u8>, usize)> = vec![(Vec::new(), 0)];
    while let Some((rel, depth)) = stack.pop() {
        let dir_in_root = join(&[&base, &rel]);
        let names = read_dir_sorted(root, &dir_in_root)?;
        for name in names.into_iter().rev() {
            let child_rel = join(&[&rel, &name]);
            let child_in_root = join(&[&base, &child_rel]);
            let meta = std::fs::symlink_metadata(host(root, &child_in_root))
                .map_err(|err| FileOpError::io("lstat", show(&child_in_root), err))?;
            if go_match(&pattern, &child_rel) {
                out.push((child_rel, child_in_root));
            } else if meta.is_dir() && depth + 1 < max_depth {
                stack.push((child_rel, depth + 1));
            }
        }
    }
    // The stack visits siblings in reverse; walk order is plain byte order
    // of the relative paths, parents before children.
    out.sort_by(|a, b| walk_order(&a.0, &b.0));
    Ok(out
        .into_iter()
        .map(|(_, in_root)| in_root.get(1..).unwrap_or_default().to_vec())
        .collect())
}

/// filepath.Walk's order: components compared one by one.
fn walk_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    a.split(|&c| c == b'/').cmp(b.split(|&c| c == b'/'))
}

pub(crate) fn read_dir_sorted(root: &Path, dir: &[u8]) -> Result<Vec<Vec<u8>>, FileOpError> {
    read_names(&host(root, dir)).map_err(|err| FileOpError::io("open", show(dir), err))
}

/// The names in a directory, in byte order (`os.ReadDir`'s order).
pub(crate) fn read_names(dir: &Path) -> std::io::Result<Vec<Vec<u8>>> {
    use std::os::unix::ffi::OsStrExt;
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        names.push(entry?.file_name().as_bytes().to_vec());
    }
    names.sort();
    Ok(names)
}

/// Go's `filepath.Match` on Unix, with errors read as "no match". `*` and
/// `?` do not match `/`; a character class does, as in Go. The matcher is
/// fsutil's, shared with `.dockerignore` patterns.
pub(crate) fn go_match(pattern: &[u8], name: &[u8]) -> bool {
    matches!(
        bk_fsutil::patterns::glob_match_bytes(pattern, name),
        Ok(true)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn match_like_go() {
        // Cases from Go's path/filepath match tests.
        let cases: &[(&str, &str, bool)] = &[
            ("abc", "abc", true),
            ("*", "abc", true),
            ("*c", "abc", true),
            ("a*", "a", true),
            ("a*", "abc", true),
            ("a*", "ab/c", false),
            ("a*/b", "abc/b", true),
            ("a*/b", "a/c/b", false),
            ("a*b*c*d*e*/f", "axbxcxdxe/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", false),
            ("a*b?c*x", "abxbbxdbxebxczzx", true),
            ("a*b?c*x", "abxbbxdbxebxczzy", false),
            ("ab[c]", "abc", true),
            ("ab[b-d]", "abc", true),
            ("ab[e-g]", "abc", false),
            ("ab[^c]", "abc", false),
            ("ab[^b-d]", "abc", false),
            ("ab[^e-g]", "abc", true),
            ("a\\*b", "a*b", true),
            ("a\\*b", "ab", false),
            ("a?b", "a☺b", true),
            ("a[^a]b", "a☺b", true),
            ("a???b", "a☺b", false),
            ("a[^a][^a][^a]b", "a☺b", false),
            ("[a-ζ]*", "α", true),
            ("*[a-ζ]", "A", false),
            ("a?b", "a/b", false),
            ("a*b", "a/b", false),
            ("[\\]a]", "]", true),
            ("[\\-]", "-", true),
            ("[x\\-]", "x", true),
            ("[x\\-]", "-", true),
            ("[x\\-]", "z", false),
            ("[\\-x]", "x", true),
            ("[\\-x]", "-", true),
            ("[\\-x]", "a", false),
            // Errors read as no match.
            ("[]a]", "]", false),
            ("[-]", "-", false),
            ("[x-]", "x", false),
            ("[a-b-c]", "a", false),
            ("[", "a", false),
            ("[^", "a", false),
            ("[^bc", "a", false),
            ("a[", "a", false),
            ("a[", "ab", false),
            ("a[", "x", false),
            ("a/b[", "x", false),
            ("*x", "xxx", true),
            // A class matches a slash.
            ("a[/]b", "a/b", true),
        ];
        for &(pattern, name, want) in cases {
            assert_eq!(
                go_match(pattern.as_bytes(), name.as_bytes()),
                want,
                "{pattern:?} {name:?}"
            );
        }
    }

    #[test]
    fn wildcard_split() {
        let split = |p: &str| {
            let (a, b) = split_wildcards(p.as_bytes());
            (String::from_utf8(a).unwrap(), String::from_utf8(b).unwrap())
        };
        assert_eq!(split("/a/b*/c"), ("/a".into(), "b*/c".into()));
        assert_eq!(split("/a/b/"), ("/a/b".into(), "".into()));
        assert_eq!(split("*"), ("".into(), "*".into()));
        assert_eq!(split("/*"), ("/".into(), "*".into()));
        assert_eq!(split("/a\\*b"), ("/a\\*b".into(), "".into()));
        assert!(contains_wildcards(b"a[b"));
        assert!(!contains_wildcards(b"a\\[b"));
    }
}
