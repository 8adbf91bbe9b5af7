//! OpenZFS `receive_resume_token` decoding and encoding.
//!
//! Format (libzfs `zfs_send_resume_token_to_nvlist`, built by `get_receive_resume_token_impl`
//! in `dsl_dataset.c`):
//!
//! ```text
//! 1-<checksum hex>-<packed length hex>-<hex of zlib(packed nvlist)>
//! ```
//! * `checksum` is word 0 of fletcher-4 over the *compressed* bytes, i.e. the wrapping sum of
//!   the little-endian 32-bit words (trailing bytes that do not fill a word are ignored, as
//!   `fletcher_4_native_varsize` does).
//! * The nvlist is packed by `fnvlist_pack`, which uses `NV_ENCODE_NATIVE` (not XDR): a 4-byte
//!   header (encoding 0, endian 1 = little), `nvl_version` (0) and `nvl_nvflag` as i32, then
//!   each nvpair as its in-memory image (`nvp_size:i32 name_sz:i16 reserve:i16 nelem:i32
//!   type:i32 name\0` padded to 8, value padded to 8), and a zero i32. The decoder also
//!   accepts the XDR encoding (`nvs_xdr`), which `nvlist_unpack` would accept too.
//! * Fields: `fromguid` (absent for full sends), `object`, `offset`, `bytes`, `toguid`,
//!   `toname`, flags `largeblockok` `embedok` `compressok` `rawok`, and for redacted sends
//!   `redact_snaps` / `book_redact_snaps` (uint64 arrays). Any other field is refused: dom0
//!   must not pass on a token it does not fully understand.
//!
//!
//! This file holds the token's fields, its text form (version, checksum, length, zlib) and the
//! mapping between the token and its nvlist fields; `nvlist` packs and unpacks the nvlist.
//! Decoding never allocates more than a small multiple of the (capped) token length.

mod nvlist;

use crate::text::quoted;
use std::fmt;

use crate::messages::MAX_RESUME_TOKEN_LEN;
use crate::names::SnapshotName;

/// Largest uncompressed nvlist accepted (real ones are a few hundred bytes).
pub const MAX_TOKEN_PACKED_LEN: usize = 64 << 10;
/// Most nvpairs accepted in a token.
pub const MAX_TOKEN_FIELDS: usize = 64;
/// Most elements in a uint64 array field.
pub const MAX_TOKEN_ARRAY_LEN: usize = 4096;

const TOKEN_VERSION: u32 = 1;

use nvlist::{pack_native, pack_xdr, parse_nvlist, NvValue};

/// A decoded resume token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeToken {
    pub object: u64,
    pub offset: u64,
    pub bytes: u64,
    pub toguid: u64,
    pub toname: SnapshotName,
    /// `None` for a full send.
    pub fromguid: Option<u64>,
    pub largeblockok: bool,
    pub embedok: bool,
    pub compressok: bool,
    pub rawok: bool,
    pub redact_snaps: Option<Vec<u64>>,
    pub book_redact_snaps: Option<Vec<u64>>,
}

impl ResumeToken {
    /// A token for a full stream of `toname` from its start, with no stream flags: the base
    /// that the decoder and the test fakes fill in.
    pub fn new(toname: SnapshotName, toguid: u64) -> Self {
        ResumeToken {
            object: 0,
            offset: 0,
            bytes: 0,
            toguid,
            toname,
            fromguid: None,
            largeblockok: false,
            embedok: false,
            compressok: false,
            rawok: false,
            redact_snaps: None,
            book_redact_snaps: None,
        }
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    TooLong { len: usize },
    BadFormat(&'static str),
    UnsupportedVersion(String),
    BadChecksum { expected: u64, actual: u64 },
    PackedTooLarge { len: u64 },
    Decompress,
    LengthMismatch { expected: u64, actual: usize },
    BadNvlist(String),
    MissingField(&'static str),
    UnknownField(String),
    BadName(String),
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::TooLong { len } => write!(
                f,
                "resume token is {len} bytes long, limit {MAX_RESUME_TOKEN_LEN}"
            ),
            TokenError::BadFormat(why) => write!(f, "resume token is malformed: {why}"),
            TokenError::UnsupportedVersion(v) => {
                write!(f, "resume token version {} is not supported (only 1)", quoted(v))
            }
            TokenError::BadChecksum { expected, actual } => write!(
                f,
                "resume token checksum mismatch: token says {expected:x}, payload sums to {actual:x}"
            ),
            TokenError::PackedTooLarge { len } => write!(
                f,
                "resume token claims {len} uncompressed bytes, limit {MAX_TOKEN_PACKED_LEN}"
            ),
            TokenError::Decompress => write!(f, "resume token payload does not decompress"),
            TokenError::LengthMismatch { expected, actual } => write!(
                f,
                "resume token payload decompresses to {actual} bytes, header says {expected}"
            ),
            TokenError::BadNvlist(why) => write!(f, "resume token nvlist is malformed: {why}"),
            TokenError::MissingField(name) => {
                write!(f, "resume token lacks field {}", quoted(name))
            }
            TokenError::UnknownField(name) => {
                write!(f, "resume token has unknown or mistyped field {}", quoted(name))
            }
            TokenError::BadName(why) => write!(f, "resume token toname is invalid: {why}"),
        }
    }
}

impl std::error::Error for TokenError {}

/// Word 0 of ZFS fletcher-4 (`fletcher_4_native_varsize`) on a little-endian host.
pub fn fletcher4_word0(bytes: &[u8]) -> u64 {
    bytes.chunks_exact(4).fold(0u64, |a, word| {
        a.wrapping_add(u64::from(u32::from_le_bytes(
            word.try_into().expect("4 bytes"),
        )))
    })
}

fn parse_hex_u64(text: &str, what: &'static str) -> Result<u64, TokenError> {
    if text.is_empty() || text.len() > 16 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(TokenError::BadFormat(what));
    }
    u64::from_str_radix(text, 16).map_err(|_| TokenError::BadFormat(what))
}

fn hex_nibble(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes and verifies a `receive_resume_token`.
pub fn decode_resume_token(token: &str) -> Result<ResumeToken, TokenError> {
    if token.len() > MAX_RESUME_TOKEN_LEN {
        return Err(TokenError::TooLong { len: token.len() });
    }
    let mut parts = token.splitn(4, '-');
    let version = parts.next().unwrap_or("");
    let checksum = parts
        .next()
        .ok_or(TokenError::BadFormat("missing checksum"))?;
    let packed_len = parts
        .next()
        .ok_or(TokenError::BadFormat("missing packed length"))?;
    let payload_hex = parts
        .next()
        .ok_or(TokenError::BadFormat("missing payload"))?;
    if version.parse::<u32>().ok() != Some(TOKEN_VERSION) || version.len() != 1 {
        return Err(TokenError::UnsupportedVersion(
            version.chars().take(16).collect(),
        ));
    }
    let checksum = parse_hex_u64(checksum, "checksum is not hex")?;
    let packed_len = parse_hex_u64(packed_len, "packed length is not hex")?;
    if packed_len as usize > MAX_TOKEN_PACKED_LEN || packed_len > MAX_TOKEN_PACKED_LEN as u64 {
        return Err(TokenError::PackedTooLarge { len: packed_len });
    }
    if payload_hex.is_empty() || payload_hex.len() % 2 != 0 {
        return Err(TokenError::BadFormat(
            "payload is not an even number of hex digits",
        ));
    }
    let compressed = payload_hex
        .as_bytes()
        .chunks_exact(2)
        .map(|pair| Some(hex_nibble(pair[0])? << 4 | hex_nibble(pair[1])?))
        .collect::<Option<Vec<u8>>>()
        .ok_or(TokenError::BadFormat("payload is not hex"))?;
    let actual = fletcher4_word0(&compressed);
    if actual != checksum {
        return Err(TokenError::BadChecksum {
            expected: checksum,
            actual,
        });
    }
    // The limit caps the output buffer, so a zlib bomb cannot make us allocate more.
    let packed =
        miniz_oxide::inflate::decompress_to_vec_zlib_with_limit(&compressed, packed_len as usize)
            .map_err(|_| TokenError::Decompress)?;
    if packed.len() as u64 != packed_len {
        return Err(TokenError::LengthMismatch {
            expected: packed_len,
            actual: packed.len(),
        });
    }
    let pairs = parse_nvlist(&packed)?;
    token_from_pairs(pairs)
}

fn token_from_pairs(pairs: Vec<(String, NvValue)>) -> Result<ResumeToken, TokenError> {
    let mut object = None;
    let mut offset = None;
    let mut bytes = None;
    let mut toguid = None;
    let mut toname = None;
    let mut token = ResumeToken::new(
        SnapshotName::parse("placeholder@placeholder").expect("valid"),
        0,
    );
    for (name, value) in pairs {
        match (name.as_str(), value) {
            ("object", NvValue::Uint64(v)) => object = Some(v),
            ("offset", NvValue::Uint64(v)) => offset = Some(v),
            ("bytes", NvValue::Uint64(v)) => bytes = Some(v),
            ("toguid", NvValue::Uint64(v)) => toguid = Some(v),
            ("fromguid", NvValue::Uint64(v)) => token.fromguid = Some(v),
            ("toname", NvValue::String(v)) => {
                toname =
                    Some(SnapshotName::parse(&v).map_err(|e| TokenError::BadName(e.to_string()))?)
            }
            ("largeblockok", NvValue::Boolean) => token.largeblockok = true,
            ("embedok", NvValue::Boolean) => token.embedok = true,
            ("compressok", NvValue::Boolean) => token.compressok = true,
            ("rawok", NvValue::Boolean) => token.rawok = true,
            ("redact_snaps", NvValue::Uint64Array(v)) => token.redact_snaps = Some(v),
            ("book_redact_snaps", NvValue::Uint64Array(v)) => token.book_redact_snaps = Some(v),
            _ => return Err(TokenError::UnknownField(name)),
        }
    }
    token.object = object.ok_or(TokenError::MissingField("object"))?;
    token.offset = offset.ok_or(TokenError::MissingField("offset"))?;
    token.bytes = bytes.ok_or(TokenError::MissingField("bytes"))?;
    token.toguid = toguid.ok_or(TokenError::MissingField("toguid"))?;
    token.toname = toname.ok_or(TokenError::MissingField("toname"))?;
    Ok(token)
}

/// How to pack the nvlist; ZFS itself uses `NativeLittle`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NvEncoding {
    NativeLittle,
    Xdr,
}

fn token_pairs(token: &ResumeToken) -> Vec<(&'static str, NvValue)> {
    // Same order as get_receive_resume_token_impl, so our tokens look like real ones.
    let mut pairs = Vec::new();
    if let Some(from) = token.fromguid {
        pairs.push(("fromguid", NvValue::Uint64(from)));
    }
    pairs.push(("object", NvValue::Uint64(token.object)));
    pairs.push(("offset", NvValue::Uint64(token.offset)));
    pairs.push(("bytes", NvValue::Uint64(token.bytes)));
    pairs.push(("toguid", NvValue::Uint64(token.toguid)));
    pairs.push(("toname", NvValue::String(token.toname.to_string())));
    for (set, name) in [
        (token.largeblockok, "largeblockok"),
        (token.embedok, "embedok"),
        (token.compressok, "compressok"),
        (token.rawok, "rawok"),
    ] {
        if set {
            pairs.push((name, NvValue::Boolean));
        }
    }
    if let Some(v) = &token.redact_snaps {
        pairs.push(("redact_snaps", NvValue::Uint64Array(v.clone())));
    }
    if let Some(v) = &token.book_redact_snaps {
        pairs.push(("book_redact_snaps", NvValue::Uint64Array(v.clone())));
    }
    pairs
}

/// Encodes a token exactly the way OpenZFS does (native little-endian nvlist, zlib level 6).
pub fn encode_resume_token(token: &ResumeToken) -> String {
    encode_resume_token_with(token, NvEncoding::NativeLittle)
}

/// Encodes a token with the given nvlist encoding (XDR is for tests of the decoder).
pub fn encode_resume_token_with(token: &ResumeToken, encoding: NvEncoding) -> String {
    let pairs = token_pairs(token);
    let packed = match encoding {
        NvEncoding::NativeLittle => pack_native(&pairs),
        NvEncoding::Xdr => pack_xdr(&pairs),
    };
    let compressed = miniz_oxide::deflate::compress_to_vec_zlib(&packed, 6);
    let mut text = format!(
        "{TOKEN_VERSION}-{:x}-{:x}-",
        fletcher4_word0(&compressed),
        packed.len()
    );
    for b in &compressed {
        text.push_str(&format!("{b:02x}"));
    }
    text
}

#[cfg(test)]
mod tests;
