//! Owners for `chown` options, resolved as BuildKit's `readUser` does: by
//! id as given, by name from `/etc/passwd` and `/etc/group` inside another
//! tree (resolved inside that tree, never outside it). A name that is not
//! found, or a tree without the file, gives id 0, as upstream; a user found
//! by name brings its primary group unless a group is also given.

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use bk_proto::pb::{ChownOpt, UserOpt, user_opt};

use crate::FileOpError;
use crate::paths::{host, resolve, show};

/// Upstream refuses user files larger than this.
const MAX_USER_FILE_BYTES: u64 = 10 << 20;
/// bufio.Scanner's line limits: the default for passwd, raised for group.
const MAX_PASSWD_LINE: usize = 64 * 1024;
const MAX_GROUP_LINE: usize = 1024 * 1024;

/// A numeric owner. `u32::MAX` (Go's -1) leaves that id unchanged, as
/// `chown(2)` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// Resolve a `ChownOpt`. `None` in gives `None` out: keep the owner (a
/// copy keeps the source's, new entries get the daemon's). Named users are
/// looked up in `user_root` (the tree of `byName.input`), named groups in
/// `group_root`.
pub fn resolve_owner(
    chown: Option<&ChownOpt>,
    user_root: Option<&Path>,
    group_root: Option<&Path>,
) -> Result<Option<Owner>, FileOpError> {
    let Some(chown) = chown else {
        return Ok(None);
    };
    let mut owner = Owner { uid: 0, gid: 0 };
    match chown.user.as_ref().and_then(|u| u.user.as_ref()) {
        Some(user_opt::User::ByName(named)) => {
            let root = user_root
                .ok_or_else(|| FileOpError::Invalid("invalid missing user mount".into()))?;
            let found = read_user_file(root, b"/etc/passwd")?
                .map(|text| find_user(&text, named.name.as_bytes()))
                .transpose()?
                .flatten();
            if let Some((uid, gid)) = found {
                owner = Owner { uid, gid };
            }
        }
        Some(user_opt::User::ById(id)) => owner = Owner { uid: *id, gid: *id },
        None => {}
    }
    match chown.group.as_ref().and_then(|g| g.user.as_ref()) {
        Some(user_opt::User::ByName(named)) => {
            let root = group_root
                .ok_or_else(|| FileOpError::Invalid("invalid missing group mount".into()))?;
            let found = read_user_file(root, b"/etc/group")?
                .map(|text| find_group(&text, named.name.as_bytes()))
                .transpose()?
                .flatten();
            if let Some(gid) = found {
                owner.gid = gid;
            }
        }
        Some(user_opt::User::ById(id)) => owner.gid = *id,
        None => {}
    }
    Ok(Some(owner))
}

/// The identity an exec step runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: those listing the user as a member, when the
    /// user was named and no group was given.
    pub additional_gids: Vec<u32>,
}

/// Resolves an exec op's `user` as BuildKit's executor does (moby/sys/user
/// rules): `uid:gid` in numbers needs no files; anything else is looked up
/// in the tree's `/etc/passwd` (a name it lacks is an error, a number it
/// lacks is used as given, with gid 0) and `/etc/group`. Without an explicit
/// group, the supplementary groups are the user's primary group and those
/// listing the user as a member, in file order. `""` is user `0`.
pub fn resolve_exec_user(root: &Path, spec: &str) -> Result<ExecUser, FileOpError> {
    let numeric = |s: &str| -> Option<u32> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let spec = if spec.is_empty() { "0" } else { spec };
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if let (Some(uid), Some(Some(gid))) = (numeric(user), group.map(numeric)) {
        return Ok(ExecUser {
            uid,
            gid,
            additional_gids: Vec::new(),
        });
    }
    let passwd = read_user_file(root, b"/etc/passwd")?.unwrap_or_default();
    let mut found = None;
    for line in lines(&passwd, MAX_PASSWD_LINE)? {
        let fields: Vec<&[u8]> = line.split(|&b| b == b':').collect();
        let name = fields.first().copied().unwrap_or_default();
        let uid = fields.get(2).map_or(0, |f| atoi(f)) as u32;
        if name == user.as_bytes() || numeric(user) == Some(uid) {
            let gid = fields.get(3).map_or(0, |f| atoi(f)) as u32;
            found = Some((name.to_vec(), uid, gid));
            break;
        }
    }
    let (name, uid, mut gid) = match (found, numeric(user)) {
        (Some(f), _) => f,
        (None, Some(uid)) => (Vec::new(), uid, 0),
        (None, None) => {
            return Err(FileOpError::Invalid(format!(
                "unable to find user {user}: no matching entries in passwd file"
            )));
        }
    };
    let groups = read_user_file(root, b"/etc/group")?.unwrap_or_default();
    let mut additional_gids = Vec::new();
    let entries: Vec<(Vec<u8>, u32, Vec<Vec<u8>>)> = lines(&groups, MAX_GROUP_LINE)?
        .into_iter()
        .filter(|l| !l.starts_with(b"#"))
        .map(|line| {
            let fields: Vec<&[u8]> = line.split(|&b| b == b':').collect();
            let members = fields
                .get(3)
                .map(|m| {
                    m.split(|&b| b == b',')
                        .map(<[u8]>::trim_ascii)
                        .filter(|s| !s.is_empty())
                        .map(<[u8]>::to_vec)
                        .collect()
                })
                .unwrap_or_default();
            (
                fields.first().copied().unwrap_or_default().to_vec(),
                fields.get(2).map_or(0, |f| atoi(f)) as u32,
                members,
            )
        })
        .collect();
    match group {
        Some(group) => {
            let hit = entries
                .iter()
                .find(|(n, g, _)| n == group.as_bytes() || numeric(group) == Some(*g));
            gid = match (hit, numeric(group)) {
                (Some((_, g, _)), _) => *g,
                (None, Some(g)) => g,
                (None, None) => {
                    return Err(FileOpError::Invalid(format!(
                        "unable to find group {group}: no matching entries in group file"
                    )));
                }
            };
        }
        None => {
            for (_, g, members) in &entries {
                if *g == gid || (!name.is_empty() && members.contains(&name)) {
                    additional_gids.push(*g);
                }
            }
        }
    }
    Ok(ExecUser {
        uid,
        gid,
        additional_gids,
    })
}

/// The input indexes a `ChownOpt` needs trees for: (user, group), each
/// present only for a by-name lookup.
pub fn owner_inputs(chown: Option<&ChownOpt>) -> (Option<i64>, Option<i64>) {
    let named = |u: Option<&UserOpt>| match u.and_then(|u| u.user.as_ref()) {
        Some(user_opt::User::ByName(n)) => Some(n.input),
        _ => None,
    };
    match chown {
        Some(c) => (named(c.user.as_ref()), named(c.group.as_ref())),
        None => (None, None),
    }
}

/// The file's bytes, or `None` where upstream treats it as absent (missing,
/// or a path component that is not a directory).
fn read_user_file(root: &Path, path: &[u8]) -> Result<Option<Vec<u8>>, FileOpError> {
    let absent = |err: &std::io::Error| {
        err.kind() == std::io::ErrorKind::NotFound
            || err.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error())
    };
    let p = match resolve(root, path, true) {
        Ok(p) => p,
        Err(FileOpError::Io { source, .. }) if absent(&source) => return Ok(None),
        Err(err) => return Err(err),
    };
    let file_path = host(root, &p);
    // Look before opening: opening a FIFO would block and opening a device
    // can have effects.
    match std::fs::symlink_metadata(&file_path) {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => {
            return Err(FileOpError::Invalid(format!(
                "{} is not a regular file",
                show(&p)
            )));
        }
        Err(err) if absent(&err) => return Ok(None),
        Err(err) => return Err(FileOpError::io("lstat", show(&p), err)),
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_flags())
        .open(&file_path);
    let file = match file {
        Ok(f) => f,
        Err(err) if absent(&err) => return Ok(None),
        Err(err) => return Err(FileOpError::io("open", show(&p), err)),
    };
    let meta = file
        .metadata()
        .map_err(|err| FileOpError::io("stat", show(&p), err))?;
    let ft = meta.file_type();
    if !ft.is_file() || ft.is_fifo() || ft.is_char_device() || ft.is_block_device() {
        return Err(FileOpError::Invalid(format!(
            "{} is not a regular file",
            show(&p)
        )));
    }
    let mut text = Vec::new();
    file.take(MAX_USER_FILE_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|err| FileOpError::io("read", show(&p), err))?;
    if text.len() as u64 > MAX_USER_FILE_BYTES {
        return Err(FileOpError::Invalid(format!(
            "{:?} exceeds {MAX_USER_FILE_BYTES} bytes",
            show(&p)
        )));
    }
    Ok(Some(text))
}

fn libc_flags() -> i32 {
    (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32
}

/// Lines as bufio.Scanner gives them (a final `\r` dropped), trimmed, blank
/// ones skipped.
fn lines(text: &[u8], max: usize) -> Result<Vec<&[u8]>, FileOpError> {
    let mut out = Vec::new();
    for line in text.split(|&b| b == b'\n') {
        if line.len() >= max {
            return Err(FileOpError::Invalid("bufio.Scanner: token too long".into()));
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let line = line.trim_ascii();
        if !line.is_empty() {
            out.push(line);
        }
    }
    Ok(out)
}

/// The first passwd entry named `name`: (uid, gid).
fn find_user(text: &[u8], name: &[u8]) -> Result<Option<(u32, u32)>, FileOpError> {
    for line in lines(text, MAX_PASSWD_LINE)? {
        let fields: Vec<&[u8]> = line.split(|&b| b == b':').collect();
        if fields.first() == Some(&name) {
            let uid = fields.get(2).map_or(0, |f| atoi(f));
            let gid = fields.get(3).map_or(0, |f| atoi(f));
            return Ok(Some((uid as u32, gid as u32)));
        }
    }
    Ok(None)
}

/// The first group entry named `name`: its gid. `#` lines are comments here
/// (but not in passwd), as in moby/sys/user.
fn find_group(text: &[u8], name: &[u8]) -> Result<Option<u32>, FileOpError> {
    for line in lines(text, MAX_GROUP_LINE)? {
        if line.starts_with(b"#") {
            continue;
        }
        let fields: Vec<&[u8]> = line.split(|&b| b == b':').collect();
        if fields.first() == Some(&name) {
            return Ok(Some(fields.get(2).map_or(0, |f| atoi(f)) as u32));
        }
    }
    Ok(None)
}

/// Go's `strconv.Atoi` with its error ignored, as moby/sys/user does:
/// malformed is 0, out of range saturates. Callers truncate to 32 bits as
/// the kernel does with Go's int.
fn atoi(s: &[u8]) -> i64 {
    let (neg, digits) = match s {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        _ => (false, s),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return 0;
    }
    let mut n: i64 = 0;
    for &d in digits {
        let d = i64::from(d - b'0');
        let next = n.checked_mul(10).and_then(|n| {
            if neg {
                n.checked_sub(d)
            } else {
                n.checked_add(d)
            }
        });
        match next {
            Some(v) => n = v,
            None => return if neg { i64::MIN } else { i64::MAX },
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use bk_proto::pb::NamedUserOpt;

    fn by_name(name: &str, input: i64) -> Option<UserOpt> {
        Some(UserOpt {
            user: Some(user_opt::User::ByName(NamedUserOpt {
                name: name.into(),
                input,
            })),
        })
    }

    fn by_id(id: u32) -> Option<UserOpt> {
        Some(UserOpt {
            user: Some(user_opt::User::ById(id)),
        })
    }

    fn tree(passwd: &str, group: &str) -> crate::testutil::Tmp {
        let dir = crate::testutil::tempdir();
        std::fs::create_dir(dir.join("etc")).unwrap();
        std::fs::write(dir.join("etc/passwd"), passwd).unwrap();
        std::fs::write(dir.join("etc/group"), group).unwrap();
        dir
    }

    #[test]
    fn exec_users() {
        let t = tree(
            "root:x:0:0::/root:/bin/sh\nuser:x:1000:1001::/home/user:/bin/sh\n",
            "root:x:0:\nstaff:x:1001:\nwheel:x:10:user,other\naudio:x:29:user\n",
        );
        let u = |s: &str| resolve_exec_user(&t, s);
        let eu = |uid, gid, extra: &[u32]| ExecUser {
            uid,
            gid,
            additional_gids: extra.to_vec(),
        };
        assert_eq!(u("").unwrap(), eu(0, 0, &[0]));
        assert_eq!(u("1234").unwrap(), eu(1234, 0, &[0]));
        assert_eq!(u("1000").unwrap(), eu(1000, 1001, &[1001, 10, 29]));
        assert_eq!(u("1234:55").unwrap(), eu(1234, 55, &[]));
        assert_eq!(u("user").unwrap(), eu(1000, 1001, &[1001, 10, 29]));
        assert_eq!(u("user:wheel").unwrap(), eu(1000, 10, &[]));
        assert_eq!(u("user:77").unwrap(), eu(1000, 77, &[]));
        assert_eq!(u("1000:staff").unwrap(), eu(1000, 1001, &[]));
        assert!(
            u("nobody")
                .unwrap_err()
                .to_string()
                .contains("unable to find user nobody")
        );
        assert!(
            u("user:nogroup")
                .unwrap_err()
                .to_string()
                .contains("unable to find group nogroup")
        );
        let empty = crate::testutil::tempdir();
        assert_eq!(resolve_exec_user(&empty, "5:6").unwrap(), eu(5, 6, &[]));
        assert!(resolve_exec_user(&empty, "app").is_err());
    }

    #[test]
    fn atoi_like_go() {
        assert_eq!(atoi(b"123"), 123);
        assert_eq!(atoi(b"+7"), 7);
        assert_eq!(atoi(b"-1"), -1);
        assert_eq!(atoi(b"x"), 0);
        assert_eq!(atoi(b""), 0);
        assert_eq!(atoi(b"1_000"), 0);
        assert_eq!(atoi(b"99999999999999999999"), i64::MAX);
        assert_eq!(atoi(b"-99999999999999999999"), i64::MIN);
    }

    #[test]
    fn owners() {
        let root = tree(
            "root:x:0:0::/root:/bin/sh\n  app:x:1000:1001:App:/home/app:/bin/sh  \r\nshort:x:7\n",
            "# app:x:5:\nstaff:x:50:app\napp:x:1002:\n",
        );
        let r = Some(&*root);
        let opt = |user, group| ChownOpt { user, group };
        assert_eq!(resolve_owner(None, r, r).unwrap(), None);
        assert_eq!(
            resolve_owner(Some(&opt(None, None)), r, r).unwrap(),
            Some(Owner { uid: 0, gid: 0 })
        );
        assert_eq!(
            resolve_owner(Some(&opt(by_name("app", 1), None)), r, None).unwrap(),
            Some(Owner {
                uid: 1000,
                gid: 1001
            })
        );
        assert_eq!(
            resolve_owner(Some(&opt(by_name("app", 1), by_name("staff", 1))), r, r).unwrap(),
            Some(Owner { uid: 1000, gid: 50 })
        );
        // The commented group line is skipped; the real one wins.
        assert_eq!(
            resolve_owner(Some(&opt(None, by_name("app", 1))), None, r).unwrap(),
            Some(Owner { uid: 0, gid: 1002 })
        );
        assert_eq!(
            resolve_owner(Some(&opt(by_name("short", 1), None)), r, None).unwrap(),
            Some(Owner { uid: 7, gid: 0 })
        );
        assert_eq!(
            resolve_owner(Some(&opt(by_name("nobody", 1), None)), r, None).unwrap(),
            Some(Owner { uid: 0, gid: 0 })
        );
        assert_eq!(
            resolve_owner(Some(&opt(by_id(5), by_id(6))), None, None).unwrap(),
            Some(Owner { uid: 5, gid: 6 })
        );
        assert_eq!(
            resolve_owner(Some(&opt(by_id(5), None)), None, None).unwrap(),
            Some(Owner { uid: 5, gid: 5 })
        );
        let err = resolve_owner(Some(&opt(by_name("app", 1), None)), None, None).unwrap_err();
        assert_eq!(err.to_string(), "invalid missing user mount");
        assert_eq!(
            owner_inputs(Some(&opt(by_name("a", 3), by_id(1)))),
            (Some(3), None)
        );
    }

    #[test]
    fn missing_or_hostile_user_files() {
        // No /etc at all: not found, so root.
        let empty = crate::testutil::tempdir();
        let opt = ChownOpt {
            user: by_name("app", 0),
            group: by_name("app", 0),
        };
        assert_eq!(
            resolve_owner(Some(&opt), Some(&empty), Some(&empty)).unwrap(),
            Some(Owner { uid: 0, gid: 0 })
        );
        // /etc a file: ENOTDIR counts as absent.
        let notdir = crate::testutil::tempdir();
        std::fs::write(notdir.join("etc"), "x").unwrap();
        assert_eq!(
            resolve_owner(Some(&opt), Some(&notdir), Some(&notdir)).unwrap(),
            Some(Owner { uid: 0, gid: 0 })
        );
        // /etc/passwd a symlink climbing out resolves inside the tree.
        let escape = crate::testutil::tempdir();
        std::fs::create_dir(escape.join("etc")).unwrap();
        std::fs::write(escape.join("real"), "app:x:5:6::/:/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("../../../../../real", escape.join("etc/passwd")).unwrap();
        assert_eq!(
            resolve_owner(Some(&opt), Some(&escape), Some(&escape)).unwrap(),
            Some(Owner { uid: 5, gid: 6 })
        );
        std::fs::remove_file(escape.join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", escape.join("etc/passwd")).unwrap();
        let err = resolve_owner(Some(&opt), Some(&escape), Some(&escape)).unwrap_err();
        assert_eq!(err.to_string(), "/etc/passwd: too many links");
        // A FIFO is refused without blocking.
        let fifo = crate::testutil::tempdir();
        std::fs::create_dir(fifo.join("etc")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            fifo.join("etc/passwd").as_path(),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let err = resolve_owner(Some(&opt), Some(&fifo), None).unwrap_err();
        assert_eq!(err.to_string(), "/etc/passwd is not a regular file");
        // Too large.
        let big = tree(&"x".repeat(40).repeat(300_000), "");
        let err = resolve_owner(Some(&opt), Some(&big), None).unwrap_err();
        assert!(err.to_string().contains("exceeds"), "{err}");
    }
}
