//! Content digests (`sha256:<hex>`), validated as opencontainers/go-digest does.
//!
//! [`Digest`] is the one type every other module uses to name content: it can
//! only hold a digest whose algorithm we can compute (sha256, sha384, sha512)
//! and whose hex part has exactly the right length in lowercase, so a digest is
//! always safe to use as a file name. [`Digester`] computes one incrementally.
//! Error messages are go-digest's, because clients see them.

use std::fmt;
use std::str::FromStr;

use sha2::Digest as _;

/// A hash algorithm go-digest can compute. Others parse as
/// [`DigestError::Unsupported`], as in go-digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha384,
    Sha512,
}

impl Algorithm {
    /// The name used in digest strings and in blob paths.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha384 => "sha384",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Length of the hex-encoded hash.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha384 => 96,
            Algorithm::Sha512 => 128,
        }
    }

    /// Starts an incremental hash.
    pub fn digester(self) -> Digester {
        Digester::new(self)
    }

    fn from_name(name: &str) -> Option<Algorithm> {
        match name {
            "sha256" => Some(Algorithm::Sha256),
            "sha384" => Some(Algorithm::Sha384),
            "sha512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a string is not a digest; the messages are go-digest's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("invalid checksum digest format")]
    InvalidFormat,
    #[error("invalid checksum digest length")]
    InvalidLength,
    #[error("unsupported digest algorithm")]
    Unsupported,
}

/// A validated digest: `<algorithm>:<lowercase hex>`.
///
/// Ordering and hashing are those of the string form.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    // The whole string is kept so `as_str` and `Display` cost nothing; the
    // algorithm is kept alongside so it is never re-parsed.
    value: String,
    algorithm: Algorithm,
}

impl Digest {
    /// Parses and validates `s` exactly as go-digest's `Parse`.
    pub fn parse(s: &str) -> Result<Digest, DigestError> {
        let Some(sep) = s.find(':') else {
            return Err(DigestError::InvalidFormat);
        };
        if sep == 0 || sep + 1 == s.len() {
            return Err(DigestError::InvalidFormat);
        }
        let (name, encoded) = (&s[..sep], &s[sep + 1..]);
        let Some(algorithm) = Algorithm::from_name(name) else {
            // go-digest distinguishes "looks like a digest of an algorithm we
            // do not know" from garbage.
            return Err(if looks_like_digest(name, encoded) {
                DigestError::Unsupported
            } else {
                DigestError::InvalidFormat
            });
        };
        if encoded.len() != algorithm.hex_len() {
            return Err(DigestError::InvalidLength);
        }
        if !encoded
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(DigestError::InvalidFormat);
        }
        Ok(Digest {
            value: s.to_owned(),
            algorithm,
        })
    }

    /// The sha256 digest of `data` (the canonical algorithm).
    pub fn sha256_of(data: &[u8]) -> Digest {
        Digest::of(Algorithm::Sha256, data)
    }

    /// The digest of `data` under `algorithm`.
    pub fn of(algorithm: Algorithm, data: &[u8]) -> Digest {
        let mut digester = Digester::new(algorithm);
        digester.update(data);
        digester.finish()
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The hex part, after the `:`.
    pub fn encoded(&self) -> &str {
        &self.value[self.algorithm.as_str().len() + 1..]
    }

    pub fn as_str(&self) -> &str {
        &self.value
    }
}

/// go-digest's `DigestRegexpAnchored`:
/// `[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+`, already split at the `:`.
fn looks_like_digest(algorithm: &str, encoded: &str) -> bool {
    let algorithm_ok = algorithm.split(['.', '+', '_', '-']).all(|part| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    });
    let encoded_ok = !encoded.is_empty()
        && encoded
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'=' | b'_' | b'-'));
    algorithm_ok && encoded_ok
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.value)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.value)
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Digest, DigestError> {
        Digest::parse(s)
    }
}

impl AsRef<str> for Digest {
    fn as_ref(&self) -> &str {
        &self.value
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.value)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Digest, D::Error> {
        let s = String::deserialize(deserializer)?;
        Digest::parse(&s).map_err(|e| serde::de::Error::custom(format!("{e}: {s:?}")))
    }
}

/// An incremental hash producing a [`Digest`].
#[derive(Clone)]
pub struct Digester {
    inner: Hasher,
}

#[derive(Clone)]
enum Hasher {
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

impl Digester {
    pub fn new(algorithm: Algorithm) -> Digester {
        let inner = match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha384 => Hasher::Sha384(sha2::Sha384::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        };
        Digester { inner }
    }

    pub fn algorithm(&self) -> Algorithm {
        match self.inner {
            Hasher::Sha256(_) => Algorithm::Sha256,
            Hasher::Sha384(_) => Algorithm::Sha384,
            Hasher::Sha512(_) => Algorithm::Sha512,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match &mut self.inner {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha384(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    pub fn finish(self) -> Digest {
        let algorithm = self.algorithm();
        let bytes: Vec<u8> = match self.inner {
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::Sha384(h) => h.finalize().to_vec(),
            Hasher::Sha512(h) => h.finalize().to_vec(),
        };
        let mut value = String::with_capacity(algorithm.as_str().len() + 1 + bytes.len() * 2);
        value.push_str(algorithm.as_str());
        value.push(':');
        push_hex(&mut value, &bytes);
        Digest { value, algorithm }
    }
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0x0f)] as char);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_SHA256: &str =
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn computes_known_digests() {
        assert_eq!(Digest::sha256_of(b"").as_str(), EMPTY_SHA256);
        assert_eq!(
            Digest::sha256_of(b"{}").as_str(),
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        let d = Digest::of(Algorithm::Sha512, b"");
        assert_eq!(d.encoded().len(), 128);
        assert!(d.as_str().starts_with("sha512:cf83e1357eefb8bd"));
        let d = Digest::of(Algorithm::Sha384, b"");
        assert_eq!(d.encoded().len(), 96);
        assert!(d.as_str().starts_with("sha384:38b060a751ac9638"));
    }

    #[test]
    fn incremental_equals_one_shot() {
        let mut d = Digester::new(Algorithm::Sha256);
        d.update(b"hello ");
        d.update(b"world");
        assert_eq!(d.finish(), Digest::sha256_of(b"hello world"));
    }

    #[test]
    fn parse_accepts_and_rejects_like_go_digest() {
        let d = Digest::parse(EMPTY_SHA256).unwrap();
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        assert_eq!(d.encoded(), &EMPTY_SHA256[7..]);
        assert_eq!(d.to_string(), EMPTY_SHA256);

        let cases: &[(&str, DigestError)] = &[
            ("", DigestError::InvalidFormat),
            ("sha256", DigestError::InvalidFormat),
            (":abc", DigestError::InvalidFormat),
            ("sha256:", DigestError::InvalidFormat),
            ("sha256:abc", DigestError::InvalidLength),
            (
                "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
                DigestError::InvalidFormat,
            ),
            (
                "sha256:z3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                DigestError::InvalidFormat,
            ),
            (
                "md5:d41d8cd98f00b204e9800998ecf8427e",
                DigestError::Unsupported,
            ),
            (
                "multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8",
                DigestError::Unsupported,
            ),
            ("SHA256:abc", DigestError::InvalidFormat),
            ("sha256:../../etc/passwd", DigestError::InvalidLength),
            ("foo/bar:abc", DigestError::InvalidFormat),
        ];
        for (input, want) in cases {
            assert_eq!(Digest::parse(input).unwrap_err(), *want, "{input:?}");
        }
    }

    #[test]
    fn serde_round_trip_validates() {
        let d: Digest = serde_json::from_str(&format!("\"{EMPTY_SHA256}\"")).unwrap();
        assert_eq!(
            serde_json::to_string(&d).unwrap(),
            format!("\"{EMPTY_SHA256}\"")
        );
        assert!(serde_json::from_str::<Digest>("\"sha256:short\"").is_err());
    }
}
