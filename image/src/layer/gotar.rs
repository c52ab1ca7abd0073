//! A tar writer that lays out headers byte for byte as Go's `archive/tar`
//! `Writer` does, for the subset of headers BuildKit writes (layers through
//! containerd's `ChangeWriter`, archives through containerd's image
//! exporter).
//!
//! Byte equality matters because a layer's diff id is the sha256 of its
//! tar: the same change must give the digest Go BuildKit gives, or caches
//! and reproducible builds diverge. So the format choice follows Go's
//! `Header.allowedFormats`: USTAR whenever it can hold the header (with the
//! name split into prefix and name when that works), else PAX records
//! (`path`, `linkpath`, `uid`, `gid`, `size`, `mtime`, `SCHILY.xattr.*`) in a
//! `PaxHeaders.0/<base>` extended header; GNU headers are never needed for
//! what we write. Field encodings are Go's: octal numbers zero-padded with a
//! NUL terminator, the checksum as six octal digits, NUL, space, and a
//! two-block trailer without padding to a record size.

use std::collections::BTreeMap;
use std::io::{self, Write};

const BLOCK: usize = 512;
const NAME_SIZE: usize = 100;
const PREFIX_SIZE: usize = 155;

pub const TYPE_REG: u8 = b'0';
pub const TYPE_LINK: u8 = b'1';
pub const TYPE_SYMLINK: u8 = b'2';
pub const TYPE_CHAR: u8 = b'3';
pub const TYPE_BLOCK: u8 = b'4';
pub const TYPE_DIR: u8 = b'5';
pub const TYPE_FIFO: u8 = b'6';
const TYPE_XHEADER: u8 = b'x';

/// Go's `Format` as far as the writer cares: `Pax` is what containerd sets
/// on file headers (it keeps sub-second times out of USTAR's rounding);
/// `Unknown` lets the writer pick (whiteouts, archive records).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Unknown,
    Pax,
}

/// One tar header, in Go's terms. `mtime` is `None` for Go's zero
/// `time.Time` (archive records), which is always encodable and written as
/// 0; `Some((secs, nanos))` otherwise.
#[derive(Clone, Debug)]
pub struct Header {
    pub name: Vec<u8>,
    pub linkname: Vec<u8>,
    pub typeflag: u8,
    pub mode: i64,
    pub uid: i64,
    pub gid: i64,
    pub size: i64,
    pub mtime: Option<(i64, u32)>,
    pub devmajor: i64,
    pub devminor: i64,
    /// Extra PAX records (`SCHILY.xattr.<name>` → value bytes).
    pub pax_records: BTreeMap<String, Vec<u8>>,
    pub format: Format,
}

impl Header {
    pub fn new(name: Vec<u8>, typeflag: u8) -> Header {
        Header {
            name,
            linkname: Vec::new(),
            typeflag,
            mode: 0,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: None,
            devmajor: 0,
            devminor: 0,
            pax_records: BTreeMap::new(),
            format: Format::Unknown,
        }
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

fn is_ascii(s: &[u8]) -> bool {
    // Go ranges over runes: any byte >= 0x80 belongs to a non-ASCII rune
    // (or to invalid UTF-8, which Go sees as U+FFFD): not ASCII either way.
    s.iter().all(|b| *b < 0x80)
}

/// Go's `toASCII`: drops non-ASCII runes and NULs.
fn to_ascii(s: &[u8]) -> Vec<u8> {
    s.iter().copied().filter(|b| *b < 0x80 && *b != 0).collect()
}

fn has_nul(s: &[u8]) -> bool {
    s.contains(&0)
}

fn fits_in_octal(n: usize, x: i64) -> bool {
    let oct_bits = (n as u32 - 1) * 3;
    x >= 0 && (n >= 22 || x < 1i64 << oct_bits)
}

/// Go's `splitUSTARPath`.
fn split_ustar_path(name: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut length = name.len();
    if length <= NAME_SIZE || !is_ascii(name) {
        return None;
    } else if length > PREFIX_SIZE + 1 {
        length = PREFIX_SIZE + 1;
    } else if name[length - 1] == b'/' {
        length -= 1;
    }
    let i = name[..length].iter().rposition(|b| *b == b'/')?;
    let nlen = name.len() - i - 1;
    if i == 0 || nlen > NAME_SIZE || nlen == 0 || i > PREFIX_SIZE {
        return None;
    }
    Some((&name[..i], &name[i + 1..]))
}

/// Go's `formatPAXTime`.
fn format_pax_time(secs: i64, nanos: u32) -> String {
    if nanos == 0 {
        return secs.to_string();
    }
    let (sign, secs, nanos) = if secs < 0 {
        ("-", -(secs + 1), 1_000_000_000 - nanos)
    } else {
        ("", secs, nanos)
    };
    let s = format!("{sign}{secs}.{nanos:09}");
    s.trim_end_matches('0').to_owned()
}

/// Go's `formatPAXRecord`: `"<len> <key>=<value>\n"` where len counts the
/// whole record including itself.
fn format_pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let padding = 3; // ' ', '=' and '\n'
    let mut size = key.len() + value.len() + padding;
    size += size.to_string().len();
    let mut record = Vec::with_capacity(size + 1);
    let write = |record: &mut Vec<u8>, size: usize| {
        record.clear();
        record.extend_from_slice(size.to_string().as_bytes());
        record.push(b' ');
        record.extend_from_slice(key.as_bytes());
        record.push(b'=');
        record.extend_from_slice(value);
        record.push(b'\n');
    };
    write(&mut record, size);
    if record.len() != size {
        size = record.len();
        write(&mut record, size);
    }
    record
}

fn valid_pax_record(key: &str, value: &[u8]) -> bool {
    if key.is_empty() || key.contains('=') {
        return false;
    }
    match key {
        "path" | "linkpath" | "uname" | "gname" => !has_nul(value),
        _ => !has_nul(key.as_bytes()),
    }
}

/// Go's `formatter.formatString`: copies what fits, NUL-terminates when
/// shorter, and never leaves a trailing slash at the cut of a too-long name.
fn format_string(b: &mut [u8], s: &[u8]) {
    let n = s.len().min(b.len());
    b[..n].copy_from_slice(&s[..n]);
    if s.len() < b.len() {
        b[s.len()] = 0;
    }
    if s.len() > b.len() && b[b.len() - 1] == b'/' {
        let kept = s[..b.len()]
            .iter()
            .rposition(|c| *c != b'/')
            .map_or(0, |i| i + 1);
        b[kept] = 0;
    }
}

/// Go's `formatter.formatOctal`: zero-padded octal leaving room for a NUL;
/// a value that does not fit is written as 0 (Go records an error that the
/// PAX path ignores, having put the value in a record).
fn format_octal(b: &mut [u8], x: i64) {
    let x = if fits_in_octal(b.len(), x) { x } else { 0 };
    let s = format!("{x:o}");
    let pad = b.len().saturating_sub(s.len() + 1);
    let mut out = Vec::with_capacity(b.len());
    out.resize(pad, b'0');
    out.extend_from_slice(s.as_bytes());
    format_string(b, &out);
}

struct Block([u8; BLOCK]);

impl Block {
    fn new() -> Block {
        Block([0u8; BLOCK])
    }
    fn name(&mut self) -> &mut [u8] {
        &mut self.0[0..100]
    }
    fn mode(&mut self) -> &mut [u8] {
        &mut self.0[100..108]
    }
    fn uid(&mut self) -> &mut [u8] {
        &mut self.0[108..116]
    }
    fn gid(&mut self) -> &mut [u8] {
        &mut self.0[116..124]
    }
    fn size(&mut self) -> &mut [u8] {
        &mut self.0[124..136]
    }
    fn mtime(&mut self) -> &mut [u8] {
        &mut self.0[136..148]
    }
    fn linkname(&mut self) -> &mut [u8] {
        &mut self.0[157..257]
    }
    fn uname(&mut self) -> &mut [u8] {
        &mut self.0[265..297]
    }
    fn gname(&mut self) -> &mut [u8] {
        &mut self.0[297..329]
    }
    fn devmajor(&mut self) -> &mut [u8] {
        &mut self.0[329..337]
    }
    fn devminor(&mut self) -> &mut [u8] {
        &mut self.0[337..345]
    }
    fn prefix(&mut self) -> &mut [u8] {
        &mut self.0[345..500]
    }

    /// USTAR/PAX magic and the checksum (Go's `setFormat`).
    fn finish(&mut self) {
        self.0[257..263].copy_from_slice(b"ustar\0");
        self.0[263..265].copy_from_slice(b"00");
        let mut sum: i64 = 0;
        for (i, b) in self.0.iter().enumerate() {
            sum += if (148..156).contains(&i) {
                i64::from(b' ')
            } else {
                i64::from(*b)
            };
        }
        format_octal(&mut self.0[148..155], sum);
        self.0[155] = b' ';
    }
}

/// Which of USTAR and PAX can hold a header, and the PAX records it needs
/// (Go's `allowedFormats`, without GNU, which we never write).
struct Plan {
    ustar: bool,
    pax: bool,
    records: BTreeMap<String, Vec<u8>>,
}

fn plan(h: &Header) -> io::Result<Plan> {
    let mut ustar = true;
    let mut pax = true;
    let mut prefer_pax = false;
    let mut records: BTreeMap<String, Vec<u8>> = BTreeMap::new();

    // Strings: path may be split for USTAR; linkpath may not.
    for (value, key, can_split) in [(&h.name, "path", true), (&h.linkname, "linkpath", false)] {
        let too_long = value.len() > NAME_SIZE;
        if !is_ascii(value) || too_long {
            if !can_split || split_ustar_path(value).is_none() {
                ustar = false;
            }
            records.insert(key.to_owned(), value.clone());
        }
    }
    // Numbers: mode and device numbers have no PAX key.
    for (value, size, key) in [
        (h.mode, 8, None),
        (h.uid, 8, Some("uid")),
        (h.gid, 8, Some("gid")),
        (h.size, 12, Some("size")),
        (h.devmajor, 8, None),
        (h.devminor, 8, None),
    ] {
        if !fits_in_octal(size, value) {
            ustar = false;
            match key {
                None => pax = false,
                Some(k) => {
                    records.insert(k.to_owned(), value.to_string().into_bytes());
                }
            }
        }
    }
    if let Some((secs, nanos)) = h.mtime {
        let fits = fits_in_octal(12, secs);
        if !fits {
            ustar = false;
        }
        if !fits || nanos != 0 {
            prefer_pax = true;
            records.insert(
                "mtime".to_owned(),
                format_pax_time(secs, nanos).into_bytes(),
            );
        }
    }
    match h.typeflag {
        TYPE_REG | TYPE_CHAR | TYPE_BLOCK | TYPE_FIFO if h.name.ends_with(b"/") => {
            return Err(invalid(format!(
                "tar header {:?}: filename may not have trailing slash",
                String::from_utf8_lossy(&h.name)
            )));
        }
        _ => {}
    }
    if !h.pax_records.is_empty() {
        for (k, v) in &h.pax_records {
            // Existing records win; basic keys are never taken from here.
            if !records.contains_key(k) && !is_basic_key(k) && !k.starts_with("GNU.sparse.") {
                records.insert(k.clone(), v.clone());
            }
        }
        ustar = false;
    }
    for (k, v) in &records {
        if !valid_pax_record(k, v) {
            return Err(invalid(format!("invalid PAX record: {k:?}")));
        }
    }
    if h.format == Format::Pax {
        // PAX implies USTAR is fine too unless sub-second times need PAX.
        if prefer_pax {
            ustar = false;
        }
    }
    if !ustar && !pax {
        return Err(invalid(format!(
            "tar header {:?} cannot be encoded",
            String::from_utf8_lossy(&h.name)
        )));
    }
    Ok(Plan {
        ustar,
        pax,
        records,
    })
}

fn is_basic_key(k: &str) -> bool {
    matches!(
        k,
        "path"
            | "linkpath"
            | "size"
            | "uid"
            | "gid"
            | "uname"
            | "gname"
            | "mtime"
            | "atime"
            | "ctime"
    )
}

/// Go's `templateV7Plus`: the fields every format shares.
fn template(h: &Header, to_ascii_strings: bool) -> Block {
    let mut blk = Block::new();
    blk.0[156] = h.typeflag;
    let conv = |s: &[u8]| {
        if to_ascii_strings {
            to_ascii(s)
        } else {
            s.to_vec()
        }
    };
    format_string(blk.name(), &conv(&h.name));
    format_string(blk.linkname(), &conv(&h.linkname));
    format_octal(blk.mode(), h.mode);
    format_octal(blk.uid(), h.uid);
    format_octal(blk.gid(), h.gid);
    format_octal(blk.size(), h.size);
    format_octal(blk.mtime(), h.mtime.map_or(0, |(s, _)| s));
    format_string(blk.uname(), b"");
    format_string(blk.gname(), b"");
    format_octal(blk.devmajor(), h.devmajor);
    format_octal(blk.devminor(), h.devminor);
    blk
}

/// Go's `path.Join(dir, "PaxHeaders.0", file)` for `path.Split(name)`.
fn pax_header_name(name: &[u8]) -> Vec<u8> {
    let (dir, file) = match name.iter().rposition(|b| *b == b'/') {
        Some(i) => (&name[..=i], &name[i + 1..]),
        None => (&name[..0], name),
    };
    let mut joined = Vec::with_capacity(name.len() + 14);
    joined.extend_from_slice(dir);
    if !joined.is_empty() {
        joined.push(b'/');
    }
    joined.extend_from_slice(b"PaxHeaders.0");
    if !file.is_empty() {
        joined.push(b'/');
        joined.extend_from_slice(file);
    }
    clean(&joined)
}

/// Go's `path.Clean` for the relative, `.`/`..`-free names we write:
/// repeated slashes collapse and a trailing slash goes.
fn clean(p: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::with_capacity(p.len());
    for part in p
        .split(|b| *b == b'/')
        .filter(|s| !s.is_empty() && *s != b".")
    {
        if !out.is_empty() {
            out.push(b'/');
        }
        out.extend_from_slice(part);
    }
    if out.is_empty() {
        out.push(b'.');
    }
    out
}

/// Writes tar entries to `W`. Call [`TarWriter::write_header`], then exactly
/// `size` bytes of data with [`TarWriter::write_data`], and finally
/// [`TarWriter::finish`].
pub struct TarWriter<W: Write> {
    out: W,
    remaining: u64,
    pad: usize,
    written: u64,
}

impl<W: Write> TarWriter<W> {
    pub fn new(out: W) -> TarWriter<W> {
        TarWriter {
            out,
            remaining: 0,
            pad: 0,
            written: 0,
        }
    }

    fn put(&mut self, data: &[u8]) -> io::Result<()> {
        self.out.write_all(data)?;
        self.written += data.len() as u64;
        Ok(())
    }

    fn end_entry(&mut self) -> io::Result<()> {
        if self.remaining != 0 {
            return Err(io::Error::other(format!(
                "tar entry is {} bytes short of its header's size",
                self.remaining
            )));
        }
        if self.pad > 0 {
            let zeros = [0u8; BLOCK];
            let pad = self.pad;
            self.put(&zeros[..pad])?;
            self.pad = 0;
        }
        Ok(())
    }

    pub fn write_header(&mut self, h: &Header) -> io::Result<()> {
        self.end_entry()?;
        // Go rounds the time of a header whose format it may choose, so
        // that plain headers never need PAX for sub-second times.
        let rounded;
        let h = match (h.format, h.mtime) {
            (Format::Unknown, Some((secs, nanos))) if nanos != 0 => {
                let mut r = h.clone();
                r.mtime = Some((secs + i64::from(nanos >= 500_000_000), 0));
                rounded = r;
                &rounded
            }
            _ => h,
        };
        let plan = plan(h)?;
        if plan.ustar {
            let split = split_ustar_path(&h.name);
            let mut hh = h.clone();
            if let Some((_, suffix)) = split {
                hh.name = suffix.to_vec();
            }
            let mut blk = template(&hh, false);
            format_string(blk.prefix(), split.map_or(&b""[..], |(p, _)| p));
            blk.finish();
            self.put(&blk.0)?;
        } else {
            debug_assert!(plan.pax);
            if !plan.records.is_empty() {
                let mut data = Vec::new();
                for (k, v) in &plan.records {
                    data.extend_from_slice(&format_pax_record(k, v));
                }
                self.write_raw_file(&pax_header_name(&h.name), &data, TYPE_XHEADER)?;
            }
            let mut blk = template(h, true);
            blk.finish();
            self.put(&blk.0)?;
        }
        // Header-only types carry no data whatever their size says.
        let size = match h.typeflag {
            TYPE_LINK | TYPE_SYMLINK | TYPE_CHAR | TYPE_BLOCK | TYPE_DIR | TYPE_FIFO => 0,
            _ => u64::try_from(h.size).unwrap_or(0),
        };
        self.remaining = size;
        self.pad = ((BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64) as usize;
        Ok(())
    }

    /// Go's `writeRawFile` for the PAX extended header.
    fn write_raw_file(&mut self, name: &[u8], data: &[u8], flag: u8) -> io::Result<()> {
        let mut name = to_ascii(name);
        name.truncate(NAME_SIZE);
        while name.last() == Some(&b'/') {
            name.pop();
        }
        let mut blk = Block::new();
        blk.0[156] = flag;
        format_string(blk.name(), &name);
        format_octal(blk.mode(), 0);
        format_octal(blk.uid(), 0);
        format_octal(blk.gid(), 0);
        format_octal(blk.size(), data.len() as i64);
        format_octal(blk.mtime(), 0);
        blk.finish();
        self.put(&blk.0)?;
        self.put(data)?;
        let pad = (BLOCK - data.len() % BLOCK) % BLOCK;
        self.put(&[0u8; BLOCK][..pad])
    }

    /// Entry data; more than the header's size is an error.
    pub fn write_data(&mut self, data: &[u8]) -> io::Result<()> {
        if data.len() as u64 > self.remaining {
            return Err(io::Error::other("write too long for the tar entry"));
        }
        self.remaining -= data.len() as u64;
        self.put(data)
    }

    /// Pads the last entry and writes the two-block trailer (no padding to
    /// a record size, as Go).
    /// Returns the output and the tar's total size.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        self.end_entry()?;
        self.put(&[0u8; BLOCK * 2])?;
        self.out.flush()?;
        Ok((self.out, self.written))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(h: &Header) -> Vec<u8> {
        let mut w = TarWriter::new(Vec::new());
        w.write_header(h).unwrap();
        w.out
    }

    #[test]
    fn ustar_fields_as_go() {
        let mut h = Header::new(b"dir/setuid".to_vec(), TYPE_REG);
        h.mode = 0o4755;
        h.size = 2;
        h.mtime = Some((0o15302372542, 0));
        h.format = Format::Pax;
        let b = blocks(&h);
        assert_eq!(b.len(), 512);
        assert_eq!(&b[100..108], b"0004755\0");
        assert_eq!(&b[124..136], b"00000000002\0");
        assert_eq!(&b[136..148], b"15302372542\0");
        // The checksum Go wrote for this very header.
        assert_eq!(&b[148..156], b"011244\0 ");
        assert_eq!(&b[257..265], b"ustar\x0000");
        assert_eq!(&b[329..345], b"0000000\x000000000\0");
    }

    #[test]
    fn long_names_split_or_go_to_pax() {
        let d = "d".repeat(60);
        let e = "e".repeat(60);
        let mut h = Header::new(format!("{d}/{e}/").into_bytes(), TYPE_DIR);
        h.format = Format::Pax;
        let b = blocks(&h);
        assert_eq!(b.len(), 512);
        assert_eq!(&b[0..61], format!("{e}/").as_bytes());
        assert_eq!(&b[345..405], d.as_bytes());

        let n = "n".repeat(120);
        let h = Header::new(format!("dir/{n}").into_bytes(), TYPE_REG);
        let b = blocks(&h);
        assert_eq!(b.len(), 1536);
        // The extended header's name is cut at 100 bytes.
        assert_eq!(
            &b[0..100],
            format!("dir/PaxHeaders.0/{}", &n[..83]).as_bytes()
        );
        assert_eq!(&b[512..646], format!("134 path=dir/{n}\n").as_bytes());
    }

    #[test]
    fn non_ascii_and_times() {
        let h = Header::new("dir/é.txt".as_bytes().to_vec(), TYPE_REG);
        let b = blocks(&h);
        assert_eq!(&b[0..22], b"dir/PaxHeaders.0/.txt\0");
        assert_eq!(&b[512..531], "19 path=dir/é.txt\n".as_bytes());
        assert_eq!(&b[1024..1033], b"dir/.txt\0");
        assert_eq!(format_pax_time(5, 500_000_000), "5.5");
        assert_eq!(format_pax_time(-1, 500_000_000), "-0.5");
        assert_eq!(format_pax_record("k", b"v"), b"6 k=v\n");
        // 99 bytes plus a two-digit length is 101, whose length has three
        // digits: Go recomputes to 102.
        let v = "x".repeat(95);
        let r = format_pax_record("k", v.as_bytes());
        assert_eq!(r.len(), 102);
        assert!(r.starts_with(b"102 k="));
    }
}
