//! Go's `os.FileMode` bit layout, which fsutil's `Stat.mode` carries on the
//! wire, and conversion to and from POSIX `st_mode`. Convert only at the
//! filesystem boundary; everything on the wire stays Go-shaped.

/// Permission bits (rwxrwxrwx).
pub const PERM: u32 = 0o777;
pub const DIR: u32 = 1 << 31;
pub const APPEND: u32 = 1 << 30;
pub const EXCLUSIVE: u32 = 1 << 29;
pub const TEMPORARY: u32 = 1 << 28;
pub const SYMLINK: u32 = 1 << 27;
pub const DEVICE: u32 = 1 << 26;
pub const NAMED_PIPE: u32 = 1 << 25;
pub const SOCKET: u32 = 1 << 24;
pub const SETUID: u32 = 1 << 23;
pub const SETGID: u32 = 1 << 22;
pub const CHAR_DEVICE: u32 = 1 << 21;
pub const STICKY: u32 = 1 << 20;
pub const IRREGULAR: u32 = 1 << 19;

/// Bits that say what kind of entry this is; all zero for a regular file.
pub const TYPE_MASK: u32 = DIR | SYMLINK | NAMED_PIPE | SOCKET | DEVICE | CHAR_DEVICE | IRREGULAR;

const S_IFMT: u32 = 0o170000;
const S_IFSOCK: u32 = 0o140000;
const S_IFLNK: u32 = 0o120000;
const S_IFREG: u32 = 0o100000;
const S_IFBLK: u32 = 0o060000;
const S_IFDIR: u32 = 0o040000;
const S_IFCHR: u32 = 0o020000;
const S_IFIFO: u32 = 0o010000;
const S_ISUID: u32 = 0o4000;
const S_ISGID: u32 = 0o2000;
const S_ISVTX: u32 = 0o1000;

/// `st_mode` → Go FileMode, as Go's `os.Lstat` computes it.
pub fn from_unix(st_mode: u32) -> u32 {
    let mut mode = st_mode & PERM;
    mode |= match st_mode & S_IFMT {
        S_IFBLK => DEVICE,
        S_IFCHR => DEVICE | CHAR_DEVICE,
        S_IFDIR => DIR,
        S_IFIFO => NAMED_PIPE,
        S_IFLNK => SYMLINK,
        S_IFSOCK => SOCKET,
        _ => 0,
    };
    if st_mode & S_ISUID != 0 {
        mode |= SETUID;
    }
    if st_mode & S_ISGID != 0 {
        mode |= SETGID;
    }
    if st_mode & S_ISVTX != 0 {
        mode |= STICKY;
    }
    mode
}

/// Go FileMode → `st_mode` (type and permission bits).
pub fn to_unix(mode: u32) -> u32 {
    let mut st = mode & PERM;
    st |= if mode & DIR != 0 {
        S_IFDIR
    } else if mode & SYMLINK != 0 {
        S_IFLNK
    } else if mode & NAMED_PIPE != 0 {
        S_IFIFO
    } else if mode & SOCKET != 0 {
        S_IFSOCK
    } else if mode & DEVICE != 0 {
        if mode & CHAR_DEVICE != 0 {
            S_IFCHR
        } else {
            S_IFBLK
        }
    } else {
        S_IFREG
    };
    if mode & SETUID != 0 {
        st |= S_ISUID;
    }
    if mode & SETGID != 0 {
        st |= S_ISGID;
    }
    if mode & STICKY != 0 {
        st |= S_ISVTX;
    }
    st
}

pub fn is_dir(mode: u32) -> bool {
    mode & DIR != 0
}

pub fn is_symlink(mode: u32) -> bool {
    mode & SYMLINK != 0
}

/// A regular file: the only kind whose content is transferred.
pub fn is_regular(mode: u32) -> bool {
    mode & TYPE_MASK == 0
}

/// Device numbers as fsutil splits `rdev`: the classic 12-bit major and
/// 20-bit minor layout.
pub fn split_rdev(rdev: u64) -> (i64, i64) {
    let major = (rdev >> 8) & 0xfff;
    let minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
    (major as i64, minor as i64)
}

/// The inverse of [`split_rdev`].
pub fn join_rdev(major: i64, minor: i64) -> u64 {
    let (major, minor) = (major as u64, minor as u64);
    ((major & 0xfff) << 8) | (minor & 0xff) | ((minor & 0xfff00) << 12)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_0755_matches_the_wire_example() {
        assert_eq!(from_unix(S_IFDIR | 0o755), 0x8000_01ED);
        assert_eq!(to_unix(0x8000_01ED), S_IFDIR | 0o755);
    }

    #[test]
    fn round_trips_every_kind() {
        for st in [
            S_IFREG | 0o644,
            S_IFREG | 0o4755,
            S_IFDIR | 0o1777,
            S_IFLNK | 0o777,
            S_IFCHR | 0o666,
            S_IFBLK | 0o660,
            S_IFIFO | 0o600,
            S_IFREG | 0o2755,
        ] {
            assert_eq!(to_unix(from_unix(st)), st, "{st:o}");
        }
        assert!(is_regular(from_unix(S_IFREG | 0o4755)));
        assert!(!is_regular(from_unix(S_IFCHR | 0o666)));
    }

    #[test]
    fn rdev_split() {
        let (major, minor) = split_rdev(join_rdev(8, 300));
        assert_eq!((major, minor), (8, 300));
        assert_eq!(split_rdev(0x0103), (1, 3));
    }
}
