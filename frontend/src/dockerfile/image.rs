//! The image config the Dockerfile converter produces, as BuildKit's
//! `dockerfile2llb` writes it: [`bk_image::Image`] (moby's
//! `DockerOCIImage`) with Go's JSON rules, plus the Go formatting that shows
//! up in history lines (`%q` of a HEALTHCHECK, `time.Duration`, RFC 3339
//! times).

use std::fmt::Write as _;

use bk_image::types::{Image, Platform, RootFs};

use super::golang::{is_print, quote};

/// History comment BuildKit puts on every entry it writes.
pub(crate) const HISTORY_COMMENT: &str = "buildkit.dockerfile.v0";

/// The default `PATH` of Linux (and every non-Windows) image.
pub const DEFAULT_PATH_ENV: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// BuildKit's `emptyImage`: the config of `FROM scratch`.
pub(crate) fn empty_image(platform: &Platform) -> Image {
    let mut img = Image {
        platform: Platform {
            architecture: platform.architecture.clone(),
            os: platform.os.clone(),
            os_version: platform.os_version.clone(),
            os_features: platform.os_features.clone(),
            variant: platform.variant.clone(),
        },
        rootfs: RootFs {
            kind: "layers".to_owned(),
            diff_ids: Vec::new(),
        },
        ..Image::default()
    };
    img.config.working_dir = "/".to_owned();
    if platform.os != "windows" {
        img.config.env = vec![format!("PATH={DEFAULT_PATH_ENV}")];
    }
    img
}

/// `json.Marshal` of the image: Go writes a nil `diff_ids` as `null` (the
/// field has no `omitempty`), which is what an image without layers has.
pub(crate) fn to_json(img: &Image) -> Result<Vec<u8>, String> {
    let mut out = bk_image::json::to_vec(img).map_err(|e| e.to_string())?;
    if img.rootfs.diff_ids.is_empty() {
        let rootfs = bk_image::json::to_vec(&img.rootfs).map_err(|e| e.to_string())?;
        let mut from = b"\"rootfs\":".to_vec();
        from.extend_from_slice(&rootfs);
        let with_null = {
            let mut kind = bk_image::json::to_vec(&img.rootfs.kind).map_err(|e| e.to_string())?;
            let mut s = b"\"rootfs\":{\"type\":".to_vec();
            s.append(&mut kind);
            s.extend_from_slice(b",\"diff_ids\":null}");
            s
        };
        // Keys before `rootfs` are fixed and string values escape their
        // quotes, so the first occurrence is the field itself.
        if let Some(pos) = out.windows(from.len()).position(|w| w == from.as_slice()) {
            out.splice(pos..pos + from.len(), with_null);
        }
    }
    Ok(out)
}

/// Go's `time.Time` JSON (RFC 3339, UTC, no fraction) of Unix seconds.
pub(crate) fn rfc3339(secs: i64) -> Result<String, String> {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    if !(0..=9999).contains(&y) {
        return Err("Time.MarshalJSON: year outside of range [0,9999]".to_owned());
    }
    Ok(format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    ))
}

/// Howard Hinnant's days-to-civil.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Go's `time.Duration.String` of `ns` nanoseconds (`1h2m3.5s`, `1.5ms`).
pub(crate) fn go_duration(ns: i64) -> String {
    let neg = ns < 0;
    let mut u = ns.unsigned_abs();
    let mut out = String::new();
    if u < 1_000_000_000 {
        if u == 0 {
            return "0s".to_owned();
        }
        let (prec, unit) = if u < 1_000 {
            (0, "ns")
        } else if u < 1_000_000 {
            (3, "µs")
        } else {
            (6, "ms")
        };
        let (frac, int) = fraction(u, prec);
        out = format!("{int}{frac}{unit}");
    } else {
        let (frac, secs) = fraction(u, 9);
        u = secs;
        let s = format!("{}{frac}s", u % 60);
        u /= 60;
        if u > 0 {
            let m = format!("{}m", u % 60);
            u /= 60;
            if u > 0 {
                out.push_str(&format!("{u}h"));
            }
            out.push_str(&m);
        }
        out.push_str(&s);
    }
    if neg {
        out.insert(0, '-');
    }
    out
}

/// `.ddd` of `v / 10^prec` without trailing zeros (nothing when zero), and
/// the integer part.
fn fraction(v: u64, prec: u32) -> (String, u64) {
    let p = 10u64.pow(prec);
    let digits = v % p;
    if digits == 0 {
        return (String::new(), v / p);
    }
    let s = format!("{digits:0width$}", width = prec as usize);
    (format!(".{}", s.trim_end_matches('0')), v / p)
}

/// Go's `%q` of an integer: `strconv.QuoteRune` of it as a rune.
pub(crate) fn quote_rune(n: i64) -> String {
    let c = u32::try_from(n)
        .ok()
        .and_then(char::from_u32)
        .unwrap_or('\u{fffd}');
    let body = match c {
        '\'' => "\\'".to_owned(),
        '\\' => "\\\\".to_owned(),
        c if is_print(c) => c.to_string(),
        '\u{7}' => "\\a".to_owned(),
        '\u{8}' => "\\b".to_owned(),
        '\u{c}' => "\\f".to_owned(),
        '\n' => "\\n".to_owned(),
        '\r' => "\\r".to_owned(),
        '\t' => "\\t".to_owned(),
        '\u{b}' => "\\v".to_owned(),
        c if (c as u32) < 0x80 => format!("\\x{:02x}", c as u32),
        c if (c as u32) < 0x10000 => format!("\\u{:04x}", c as u32),
        c => format!("\\U{:08x}", c as u32),
    };
    format!("'{body}'")
}

/// Go's `%q` of a `[]string`: `["a" "b"]`.
pub(crate) fn quote_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| quote(s)).collect();
    format!("[{}]", quoted.join(" "))
}

/// Go's `%v` of a `[]string`: `[a b]`.
pub(crate) fn plain_list(items: &[String]) -> String {
    format!("[{}]", items.join(" "))
}

/// The history line of HEALTHCHECK: Go's `%q` of the config pointer.
pub(crate) fn healthcheck_history(h: &bk_image::types::HealthConfig) -> String {
    let mut s = String::from("HEALTHCHECK &{");
    s.push_str(&quote_list(&h.test));
    for d in [h.interval, h.timeout, h.start_period, h.start_interval] {
        let _ = write!(s, " {}", quote(&go_duration(d)));
    }
    let _ = write!(s, " {}}}", quote_rune(h.retries));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_match_go() {
        for (ns, want) in [
            (0, "0s"),
            (1, "1ns"),
            (1_500, "1.5µs"),
            (1_500_000, "1.5ms"),
            (1_000_000_000, "1s"),
            (30_000_000_000, "30s"),
            (90_000_000_000, "1m30s"),
            (3_600_000_000_000, "1h0m0s"),
            (3_723_500_000_000, "1h2m3.5s"),
            (-1_000_000_000, "-1s"),
        ] {
            assert_eq!(go_duration(ns), want, "{ns}");
        }
    }

    #[test]
    fn runes_and_times() {
        assert_eq!(quote_rune(0), r"'\x00'");
        assert_eq!(quote_rune(3), r"'\x03'");
        assert_eq!(quote_rune(10), r"'\n'");
        assert_eq!(quote_rune(65), "'A'");
        assert_eq!(rfc3339(0).unwrap(), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000).unwrap(), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(-1).unwrap(), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn scratch_config_json() {
        let img = empty_image(&Platform::new("linux", "amd64"));
        let json = String::from_utf8(to_json(&img).unwrap()).unwrap();
        assert_eq!(
            json,
            r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":null},"config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"WorkingDir":"/"}}"#
        );
    }
}
