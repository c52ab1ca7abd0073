//! chmod(1) mode strings for `COPY --chmod` (`modeStr`): octal (`755`,
//! `4755`) or symbolic (`u+x,g-w`, `go=u-w`, `+X`, `a=rwx,o-t`), with the
//! semantics of BSD `setmode(3)` as fsutil uses them through
//! `tonistiigi/dchapes-mode` (the revision BuildKit vendors) with a zero
//! umask. A string parses into a list
//! of bit operations applied in order to each copied entry's mode; `X` adds
//! execute only to directories and to files already executable by someone.

use crate::FileOpError;

const IS_UID: u16 = 0o4000;
const IS_GID: u16 = 0o2000;
const IS_TXT: u16 = 0o1000;
const RWX_U: u16 = 0o700;
const R_U: u16 = 0o400;
const W_U: u16 = 0o200;
const X_U: u16 = 0o100;
const RWX_G: u16 = 0o070;
const R_G: u16 = 0o040;
const W_G: u16 = 0o020;
const X_G: u16 = 0o010;
const RWX_O: u16 = 0o007;
const R_O: u16 = 0o004;
const W_O: u16 = 0o002;
const X_O: u16 = 0o001;
const STANDARD: u16 = IS_UID | IS_GID | RWX_U | RWX_G | RWX_O;
/// Umask zero: nothing is masked.
const MASK: u16 = !0;

const COPY_CLEAR: u8 = 1;
const COPY_SET: u8 = 2;
const COPY_G: u8 = 4;
const COPY_O: u8 = 8;
const COPY_U: u8 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Set,
    Clear,
    /// Set only for directories and files with some execute bit.
    SetIfExec,
    /// Copy one class's bits (u, g or o) onto others.
    CopyFrom(u8),
}

#[derive(Debug, Clone, Copy)]
struct Cmd {
    op: Op,
    flags: u8,
    bits: u16,
}

/// A parsed mode string.
#[derive(Debug, Clone)]
pub struct ModeSet {
    cmds: Vec<Cmd>,
}

fn syntax() -> FileOpError {
    FileOpError::Invalid("invalid syntax".to_string())
}

impl ModeSet {
    /// Parse as `mode.ParseWithUmask(s, 0)` does. Errors are upstream's:
    /// `invalid syntax`, or strconv's text for a bad octal number.
    pub fn parse(s: &str) -> Result<ModeSet, FileOpError> {
        let s = s.as_bytes();
        let Some(&first) = s.first() else {
            return Err(syntax());
        };
        let mut set = ModeSet { cmds: Vec::new() };
        if first.is_ascii_digit() {
            let v = parse_octal_i16(s)?;
            if v & !(STANDARD | IS_TXT) != 0 {
                return Err(syntax());
            }
            set.add('=', STANDARD | IS_TXT, v);
            return Ok(set);
        }

        let mut i = 0;
        let mut equal_done = false;
        loop {
            let mut who: u16 = 0;
            loop {
                let Some(&c) = s.get(i) else {
                    return Err(syntax());
                };
                match c {
                    b'a' => who |= STANDARD,
                    b'u' => who |= IS_UID | RWX_U,
                    b'g' => who |= IS_GID | RWX_G,
                    b'o' => who |= RWX_O,
                    _ => break,
                }
                i += 1;
            }
            // One or more `op perms` runs share this `who` until a comma.
            loop {
                let Some(&op) = s.get(i) else {
                    return Err(syntax());
                };
                i += 1;
                match op {
                    b'+' | b'-' => {}
                    b'=' => equal_done = false,
                    _ => return Err(syntax()),
                }
                who &= !IS_TXT;
                let mut perm: u16 = 0;
                let mut perm_x: u16 = 0;
                loop {
                    let b = s.get(i).copied().unwrap_or(0);
                    match b {
                        b'r' => perm |= R_U | R_G | R_O,
                        b's' => {
                            // Set-id bits mean nothing for "other" alone.
                            if who == 0 || who & !RWX_O != 0 {
                                perm |= IS_UID | IS_GID;
                            }
                        }
                        b't' => {
                            if who == 0 || who & !RWX_O != 0 {
                                who |= IS_TXT;
                                perm |= IS_TXT;
                            }
                        }
                        b'w' => perm |= W_U | W_G | W_O,
                        // BuildKit's vendored copy: `X` counts for `=` as
                        // well as `+`, and `-X` is `-x`.
                        b'X' => {
                            if op != b'-' {
                                perm_x = X_U | X_G | X_O;
                            } else {
                                perm |= X_U | X_G | X_O;
                            }
                        }
                        b'x' => perm |= X_U | X_G | X_O,
                        b'u' | b'g' | b'o' => {
                            if perm != 0 {
                                set.add(op as char, who, perm);
                                perm = 0;
                            }
                            if op == b'=' {
                                equal_done = true;
                            }
                            if perm_x != 0 {
                                set.add('X', who, perm_x);
                                perm_x = 0;
                            }
                            set.add_copy(b, who, op);
                        }
                        _ => {
                            if perm != 0 || (op == b'=' && !equal_done) {
                                if op == b'=' {
                                    equal_done = true;
                                }
                                set.add(op as char, who, perm);
                            }
                            if perm_x != 0 {
                                set.add('X', who, perm_x);
                            }
                            break;
                        }
                    }
                    i += 1;
                }
                match s.get(i) {
                    None => return Ok(set),
                    Some(b',') => {
                        i += 1;
                        break;
                    }
                    Some(_) => {}
                }
            }
        }
    }

    fn add(&mut self, op: char, who: u16, arg: u16) {
        let pick = |arg: u16| if who != 0 { who & arg } else { MASK & arg };
        let (op, bits) = match op {
            '=' => {
                let clear = if who != 0 { who } else { STANDARD };
                self.cmds.push(Cmd {
                    op: Op::Clear,
                    flags: 0,
                    bits: clear,
                });
                (Op::Set, pick(arg))
            }
            '+' => (Op::Set, pick(arg)),
            '-' => (Op::Clear, pick(arg)),
            _ => (Op::SetIfExec, pick(arg)),
        };
        self.cmds.push(Cmd { op, flags: 0, bits });
    }

    fn add_copy(&mut self, from: u8, who: u16, op: u8) {
        let (mut flags, bits) = if who != 0 {
            let mut flags = 0;
            if who & R_U != 0 {
                flags |= COPY_U;
            }
            if who & R_G != 0 {
                flags |= COPY_G;
            }
            if who & R_O != 0 {
                flags |= COPY_O;
            }
            (flags, !0)
        } else {
            (COPY_U | COPY_G | COPY_O, MASK)
        };
        flags |= match op {
            b'+' => COPY_SET,
            b'-' => COPY_CLEAR,
            _ => COPY_SET | COPY_CLEAR,
        };
        self.cmds.push(Cmd {
            op: Op::CopyFrom(from),
            flags,
            bits,
        });
    }

    /// The new permission bits (`0o7777`) for an entry with permission bits
    /// `mode`; `is_dir` matters for `X`.
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        let old = (mode & 0o7777) as u16;
        let mut new = old;
        for c in &self.cmds {
            match c.op {
                Op::Set => new |= c.bits,
                Op::Clear => new &= !c.bits,
                Op::SetIfExec => {
                    if old & (X_U | X_G | X_O) != 0 || is_dir {
                        new |= c.bits;
                    }
                }
                Op::CopyFrom(from) => {
                    let value = match from {
                        b'u' => (new & RWX_U) >> 6,
                        b'g' => (new & RWX_G) >> 3,
                        _ => new & RWX_O,
                    };
                    if c.flags & COPY_CLEAR != 0 {
                        let clr = if c.flags & COPY_SET != 0 {
                            RWX_O
                        } else {
                            value
                        };
                        if c.flags & COPY_U != 0 {
                            new &= !((clr << 6) & c.bits);
                        }
                        if c.flags & COPY_G != 0 {
                            new &= !((clr << 3) & c.bits);
                        }
                        if c.flags & COPY_O != 0 {
                            new &= !(clr & c.bits);
                        }
                    }
                    if c.flags & COPY_SET != 0 {
                        if c.flags & COPY_U != 0 {
                            new |= (value << 6) & c.bits;
                        }
                        if c.flags & COPY_G != 0 {
                            new |= (value << 3) & c.bits;
                        }
                        if c.flags & COPY_O != 0 {
                            new |= value & c.bits;
                        }
                    }
                }
            }
        }
        u32::from(new)
    }
}

/// `strconv.ParseInt(s, 8, 16)`, errors worded as Go words them.
fn parse_octal_i16(s: &[u8]) -> Result<u16, FileOpError> {
    let err = |what: &str| {
        FileOpError::Invalid(format!(
            "strconv.ParseInt: parsing {:?}: {what}",
            String::from_utf8_lossy(s)
        ))
    };
    let mut n: u64 = 0;
    for &c in s {
        let d = match c {
            b'0'..=b'7' => u64::from(c - b'0'),
            _ => return Err(err("invalid syntax")),
        };
        n = n * 8 + d;
        if n > u64::from(u16::MAX) {
            return Err(err("value out of range"));
        }
    }
    if n >= 1 << 15 {
        return Err(err("value out of range"));
    }
    Ok(n as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIR: bool = true;

    fn apply(s: &str, mode: u32, is_dir: bool) -> u32 {
        ModeSet::parse(s).unwrap().apply(mode, is_dir)
    }

    #[test]
    fn parse_errors() {
        for bad in ["", ",", "q+r", "017777", "z", "u", "g", "o", "go", "u+r,"] {
            assert!(ModeSet::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            ModeSet::parse("9").unwrap_err().to_string(),
            "strconv.ParseInt: parsing \"9\": invalid syntax"
        );
        assert_eq!(
            ModeSet::parse("01000000000000000007777")
                .unwrap_err()
                .to_string(),
            "strconv.ParseInt: parsing \"01000000000000000007777\": value out of range"
        );
        assert_eq!(
            ModeSet::parse("017777").unwrap_err().to_string(),
            "invalid syntax"
        );
        for i in 0..=0o7777u32 {
            assert!(ModeSet::parse(&format!("0{i:o}")).is_ok());
        }
    }

    #[test]
    fn apply_like_setmode() {
        // (old, new, string), from dchapes-mode's table (umask 0 rows).
        let cases: &[(u32, u32, &str)] = &[
            (0o777, 0o000, "="),
            (0o777, 0o777, "+"),
            (0o421, 0o421, "-"),
            (0o421, 0o1421, "+t"),
            (0o1421, 0o421, "-t"),
            (0o000, 0o400, "u+r"),
            (0o000, 0o100, "u+x"),
            (0o000, 0o000, "u+X"),
            (0o001, 0o101, "u+X"),
            (0o000, 0o4000, "u+s"),
            (0o100, 0o110, "g+X"),
            (0o000, 0o2000, "g+s"),
            (0o000, 0o000, "o+s"),
            (0o000, 0o421, "0421"),
            (0o000, 0o7421, "07421"),
            (0o000, 0o444, "+r"),
            (0o010, 0o111, "+X"),
            (0o000, 0o6000, "+s"),
            (0o777, 0o333, "-r"),
            (0o777, 0o666, "-X"),
            (0o6777, 0o777, "-s"),
            (0o4777, 0o777, "u-s"),
            (0o777, 0o677, "u=rw"),
            (0o777, 0o077, "u="),
            (0o777, 0o666, "=rw"),
            (0o042, 0o442, "u=g"),
            (0o722, 0o022, "u=g-w"),
            (0o772, 0o572, "u=g-w"),
            (0o021, 0o121, "u+o"),
            (0o021, 0o221, "u+g"),
            (0o755, 0o711, "go=u-rw"),
            (0o644, 0o755, "u+x,go+rx"),
            (0o644, 0o744, "u+x"),
            (0o664, 0o644, "g-w"),
            (0o600, 0o755, "755"),
            (0o777, 0o755, "u=rwx,go=rx"),
            (0o777, 0o755, "go-w"),
            (0o640, 0o644, "a+r,a-x"),
            (0o600, 0o640, "g+r-w"),
        ];
        for &(old, want, s) in cases {
            assert_eq!(apply(s, old, false), want, "{s:?} on {old:o}");
        }
        assert_eq!(apply("u+X", 0, DIR), 0o100);
        assert_eq!(apply("+X", 0, DIR), 0o111);
        assert_eq!(apply("a=rwX", 0o600, DIR), 0o777);
        assert_eq!(apply("a=rwX", 0o600, false), 0o666);
        assert_eq!(apply("a=rwX", 0o700, false), 0o777);
        assert_eq!(apply("u=rw,a+X", 0o600, DIR), 0o711);
        assert_eq!(apply("a+X", 0o644, false), 0o644);
        // X looks at the mode before the string, not at bits set earlier.
        assert_eq!(apply("u+x,g+X", 0o600, false), 0o700);
    }
}
