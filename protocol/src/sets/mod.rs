//! What a backup run stores about itself on the medium, MAC'd with dom0's metadata key: the
//! settings of the qubes it backed up ([`SettingsDoc`]) and the run's **set index**
//! ([`SetIndex`]: which snapshot of which dataset, with the hash of each stream and of each
//! volume's manifest header, plus the settings' hash).
//!
//! Both travel in one sealed envelope (spec in `protocol/README.md`, "Sealed metadata"):
//!
//! ```text
//! magic "QZBSEAL\0" | purpose u8 | version u8 | 0u16 | body length u32 LE | body | MAC (32)
//! ```
//!
//! The MAC is keyed blake3 (the metadata key) of everything before it. [`open`] checks the
//! length against the purpose's cap *before* hashing, then the MAC (constant time), then the
//! fixed fields; only then is the body decoded (bincode 2 with the same cap) and validated.
//! The purpose byte keeps a settings document from being passed off as an index.

mod index;
mod settings;
#[cfg(test)]
mod tests;

pub use index::{IndexEntry, IndexManifest, SetIndex, MAX_INDEX_ENTRIES};
pub use settings::{
    DeviceList, Property, QubeSettings, SettingsDoc, VolumeSettings, MAX_FEATURES,
    MAX_FIREWALL_RULES, MAX_PROPERTIES, MAX_SETTINGS_QUBES, MAX_SETTING_TEXT, MAX_TAGS,
};

use std::fmt;

/// First bytes of a sealed document.
pub const SEAL_MAGIC: [u8; 8] = *b"QZBSEAL\0";
/// Version of the envelope and of both bodies.
pub const SEAL_VERSION: u8 = 1;
/// Magic, purpose, version, reserved u16, body length u32.
pub const SEAL_HEADER_LEN: usize = 16;
/// The MAC after the body.
pub const SEAL_MAC_LEN: usize = 32;

/// What a sealed document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Settings = 1,
    SetIndex = 2,
}

/// Largest body of either purpose: 16 MiB (a qube's settings are a few KiB, an index entry
/// under 200 bytes).
pub const MAX_BODY_LEN: usize = 16 << 20;

impl Purpose {
    fn max_body(self) -> usize {
        MAX_BODY_LEN
    }

    fn name(self) -> &'static str {
        match self {
            Purpose::Settings => "settings",
            Purpose::SetIndex => "set index",
        }
    }
}

/// Why a sealed document was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SealError {
    TooShort {
        len: usize,
    },
    TooLarge {
        len: usize,
        max: usize,
    },
    /// The MAC does not match: altered, or sealed with another key.
    BadMac,
    /// MAC'd, but not what was asked for (wrong purpose, version or length field).
    Mismatch(String),
    /// MAC'd, but the body does not decode or breaks a rule: a bug or a newer dom0.
    BadBody(String),
    /// Building a document: it is over a limit.
    Encode(String),
}

impl fmt::Display for SealError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SealError::TooShort { len } => {
                write!(f, "{len} bytes, too short for a sealed document")
            }
            SealError::TooLarge { len, max } => {
                write!(f, "{len} bytes, more than the {max} allowed")
            }
            SealError::BadMac => write!(
                f,
                "its MAC does not match (altered, or made with another key)"
            ),
            SealError::Mismatch(m) => write!(f, "{m}"),
            SealError::BadBody(m) => write!(f, "its content is invalid: {m}"),
            SealError::Encode(m) => write!(f, "cannot build it: {m}"),
        }
    }
}

impl std::error::Error for SealError {}

/// Seals `body` for `purpose` with `key`.
pub fn seal(purpose: Purpose, body: &[u8], key: &[u8; 32]) -> Result<Vec<u8>, SealError> {
    if body.len() > purpose.max_body() {
        return Err(SealError::Encode(format!(
            "the {} is {} bytes, limit {}",
            purpose.name(),
            body.len(),
            purpose.max_body()
        )));
    }
    let mut out = Vec::with_capacity(SEAL_HEADER_LEN + body.len() + SEAL_MAC_LEN);
    out.extend_from_slice(&SEAL_MAGIC);
    out.push(purpose as u8);
    out.push(SEAL_VERSION);
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    let mac = blake3::keyed_hash(key, &out);
    out.extend_from_slice(mac.as_bytes());
    Ok(out)
}

/// The largest sealed document of `purpose` [`open`] accepts: what a reader may fetch.
pub fn max_sealed_len(purpose: Purpose) -> usize {
    SEAL_HEADER_LEN + purpose.max_body() + SEAL_MAC_LEN
}

/// Authenticates a sealed document from untrusted bytes and returns its body: length first,
/// then the MAC, then magic, purpose, version and the length field.
pub fn open<'a>(purpose: Purpose, bytes: &'a [u8], key: &[u8; 32]) -> Result<&'a [u8], SealError> {
    let len = bytes.len();
    if len < SEAL_HEADER_LEN + SEAL_MAC_LEN {
        return Err(SealError::TooShort { len });
    }
    let max = max_sealed_len(purpose);
    if len > max {
        return Err(SealError::TooLarge { len, max });
    }
    let (signed, mac) = bytes.split_at(len - SEAL_MAC_LEN);
    let mac: [u8; 32] = mac.try_into().expect("32 bytes");
    if blake3::keyed_hash(key, signed) != blake3::Hash::from_bytes(mac) {
        return Err(SealError::BadMac);
    }
    let mismatch = |m: String| Err(SealError::Mismatch(m));
    if signed[..8] != SEAL_MAGIC {
        return mismatch("not a sealed document (bad magic)".into());
    }
    if signed[8] != purpose as u8 {
        return mismatch(format!(
            "it is not a {} (purpose byte {})",
            purpose.name(),
            signed[8]
        ));
    }
    if signed[9] != SEAL_VERSION || signed[10..12] != [0, 0] {
        return mismatch(format!(
            "unknown format version {} (made by a newer qubes-zfs-backup?)",
            signed[9]
        ));
    }
    let body_len = u32::from_le_bytes(signed[12..16].try_into().expect("4 bytes")) as usize;
    if body_len != signed.len() - SEAL_HEADER_LEN {
        return mismatch(format!(
            "its length field says {body_len} bytes, it has {}",
            signed.len() - SEAL_HEADER_LEN
        ));
    }
    Ok(&signed[SEAL_HEADER_LEN..])
}

/// A document that travels sealed: its purpose and its rules give it the encoding, the seal
/// and the checked decoding.
pub trait Sealed: bincode::Encode + bincode::Decode<()> + Sized {
    const PURPOSE: Purpose;

    /// Every rule of the format (limits, names, order).
    fn check_rules(&self) -> Result<(), String>;

    /// The body's encoding (bincode 2), checked against the rules and the cap.
    fn body(&self) -> Result<Vec<u8>, SealError> {
        self.check_rules().map_err(SealError::Encode)?;
        encode_body(self, Self::PURPOSE)
    }

    /// The sealed bytes to store on the medium.
    fn seal(&self, key: &[u8; 32]) -> Result<Vec<u8>, SealError> {
        seal(Self::PURPOSE, &self.body()?, key)
    }

    /// Authenticates, decodes and checks a sealed document from untrusted bytes.
    fn open(bytes: &[u8], key: &[u8; 32]) -> Result<Self, SealError> {
        Self::decode_unverified(open(Self::PURPOSE, bytes, key)?)
    }

    /// Decodes and checks a body WITHOUT a MAC check: for [`Sealed::open`] and fuzzing.
    fn decode_unverified(body: &[u8]) -> Result<Self, SealError> {
        let value: Self = decode_body::<Self, MAX_BODY_LEN>(body)?;
        value.check_rules().map_err(SealError::BadBody)?;
        Ok(value)
    }
}

/// bincode 2 encoding of a body, with its cap.
fn encode_body<T: bincode::Encode>(value: &T, purpose: Purpose) -> Result<Vec<u8>, SealError> {
    let bytes = bincode::encode_to_vec(value, bincode::config::standard())
        .map_err(|e| SealError::Encode(e.to_string()))?;
    if bytes.len() > purpose.max_body() {
        return Err(SealError::Encode(format!(
            "the {} is {} bytes, limit {}",
            purpose.name(),
            bytes.len(),
            purpose.max_body()
        )));
    }
    Ok(bytes)
}

/// Decodes a body (at most `LIMIT` bytes' worth); trailing bytes are an error.
fn decode_body<T: bincode::Decode<()>, const LIMIT: usize>(bytes: &[u8]) -> Result<T, SealError> {
    let config = bincode::config::standard().with_limit::<LIMIT>();
    let (value, used): (T, usize) =
        bincode::decode_from_slice(bytes, config).map_err(|e| SealError::BadBody(e.to_string()))?;
    if used != bytes.len() {
        return Err(SealError::BadBody(format!(
            "{} bytes after the end",
            bytes.len() - used
        )));
    }
    Ok(value)
}

/// Checks a piece of text: at most `max` bytes, no NUL.
fn check_text(what: &str, text: &str, max: usize) -> Result<(), String> {
    if text.len() > max {
        return Err(format!("{what} is {} bytes, limit {max}", text.len()));
    }
    if text.contains('\0') {
        return Err(format!("{what} contains a NUL byte"));
    }
    Ok(())
}

fn check_count(what: &str, n: usize, max: usize) -> Result<(), String> {
    if n > max {
        return Err(format!("{n} {what}, limit {max}"));
    }
    Ok(())
}
