//! The manifest header: identity, chain and size of one snapshot's manifest, with a
//! canonical byte encoding that is MAC'd with the key.

use super::entry::ENTRY_LEN;
use super::error::ManifestError;
use crate::names::{DatasetName, QubeName, MAX_NAME_LEN, MAX_QUBE_NAME_LEN};
use std::io::Read;

/// First bytes of an encoded header.
pub const HEADER_MAGIC: [u8; 8] = *b"QZBMANI\0";
/// Version of the header and entry formats.
pub const HEADER_VERSION: u32 = 1;
/// Longest volume name (`root`, `private`, `volatile`, `kernel` in Qubes).
pub const MAX_VOLUME_LEN: usize = 64;
/// The fixed part: magic, version, three u16 string lengths, seven u64 and two 32-byte hashes.
const FIXED_LEN: usize = 8 + 4 + 3 * 2 + 7 * 8 + 2 * 32;
/// Shortest possible encoding (every string one byte long).
pub const MIN_HEADER_LEN: usize = FIXED_LEN + 3;
/// Longest possible encoding: 488 bytes.
pub const MAX_HEADER_LEN: usize = FIXED_LEN + MAX_QUBE_NAME_LEN + MAX_VOLUME_LEN + MAX_NAME_LEN;

// The block tags and the header MAC use the same key; their messages cannot collide because
// every tag message (`offset || block`, at least 8 + 512 bytes) is longer than any header.
const _: () = assert!(MAX_HEADER_LEN < 8 + crate::zstream::MIN_BLOCK_SIZE as usize);

/// What a manifest says about itself. `entries` and `body_hash` bind the body; the rest binds
/// the snapshot to its qube, volume, dataset and place in the chain.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ManifestHeader {
    pub qube: String,
    pub volume: String,
    pub dataset: String,
    /// The snapshot's guid (`drr_toguid` of the stream).
    pub snapshot_guid: u64,
    /// The incremental source's guid (`drr_fromguid`), 0 for a full stream.
    pub parent_guid: u64,
    /// Position in the volume's chain of manifests.
    pub seq: u64,
    /// [`ManifestHeader::hash`] of the previous manifest's header (zero for the first).
    pub prev_header_hash: [u8; 32],
    pub volsize: u64,
    pub volblocksize: u64,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// Number of body entries.
    pub entries: u64,
    /// blake3 (unkeyed) of the whole body.
    pub body_hash: [u8; 32],
}

/// Checks a volume name: 1 to 64 ASCII letters, digits, `_`, `-`, `.`, starting with a
/// letter or digit.
pub fn check_volume_name(volume: &str) -> Result<(), &'static str> {
    let bytes = volume.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_VOLUME_LEN {
        return Err("volume name empty or longer than 64 bytes");
    }
    if !bytes[0].is_ascii_alphanumeric()
        || !bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err("volume name has a character outside [A-Za-z0-9_.-]");
    }
    Ok(())
}

/// Checks the three names as the decoder does (so the builder never encodes a header its own
/// decoder refuses).
pub(crate) fn check_names(qube: &str, volume: &str, dataset: &str) -> Result<(), &'static str> {
    QubeName::parse(qube).map_err(|_| "invalid qube name")?;
    check_volume_name(volume)?;
    DatasetName::parse(dataset).map_err(|_| "invalid dataset name")?;
    Ok(())
}

impl ManifestHeader {
    /// The canonical encoding (all integers little-endian):
    ///
    /// ```text
    /// magic "QZBMANI\0" | version u32 = 1
    /// qube_len u16 | qube | volume_len u16 | volume | dataset_len u16 | dataset
    /// snapshot_guid u64 | parent_guid u64 | seq u64 | prev_header_hash [32]
    /// volsize u64 | volblocksize u64 | created u64 | entries u64 | body_hash [32]
    /// ```
    ///
    /// Names are encoded as given; [`ManifestHeader::decode_unverified`] refuses invalid ones,
    /// so a header built from unchecked names does not verify.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            FIXED_LEN + self.qube.len() + self.volume.len() + self.dataset.len(),
        );
        out.extend_from_slice(&HEADER_MAGIC);
        out.extend_from_slice(&HEADER_VERSION.to_le_bytes());
        for s in [&self.qube, &self.volume, &self.dataset] {
            // Longer names are cut at u16::MAX here and refused by the decoder.
            let len = s.len().min(usize::from(u16::MAX));
            out.extend_from_slice(&(len as u16).to_le_bytes());
            out.extend_from_slice(&s.as_bytes()[..len]);
        }
        for v in [self.snapshot_guid, self.parent_guid, self.seq] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.prev_header_hash);
        for v in [self.volsize, self.volblocksize, self.created, self.entries] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.body_hash);
        out
    }

    /// The header's MAC: keyed blake3 of [`ManifestHeader::encode`].
    pub fn mac(&self, key: &[u8; 32]) -> [u8; 32] {
        *blake3::keyed_hash(key, &self.encode()).as_bytes()
    }

    /// The header's hash for the next manifest's `prev_header_hash`: blake3 (unkeyed) of
    /// [`ManifestHeader::encode`].
    pub fn hash(&self) -> [u8; 32] {
        *blake3::hash(&self.encode()).as_bytes()
    }

    /// Authenticates and decodes a header from untrusted bytes, in this order: the length is
    /// checked against [`MIN_HEADER_LEN`] ..= [`MAX_HEADER_LEN`] (before any hashing), then
    /// the MAC (keyed blake3 of `bytes`) is compared in constant time (`blake3::Hash`'s `==`
    /// is constant-time), and only then are the fields parsed.
    pub fn verify(bytes: &[u8], mac: &[u8; 32], key: &[u8; 32]) -> Result<Self, ManifestError> {
        check_len(bytes.len())?;
        let computed = blake3::keyed_hash(key, bytes);
        if computed != blake3::Hash::from_bytes(*mac) {
            return Err(ManifestError::BadMac);
        }
        Self::decode_unverified(bytes)
    }

    /// Checks a body against this (verified) header, reading it once in fixed-size pieces:
    /// exactly `entries * ENTRY_LEN` bytes whose blake3 is `body_hash` (compared in constant
    /// time). Memory stays flat whatever the body's size.
    pub fn verify_body<R: Read>(&self, mut body: R) -> Result<(), ManifestError> {
        let expected_len = self
            .entries
            .checked_mul(ENTRY_LEN as u64)
            .ok_or(ManifestError::BodyMismatch)?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = [0u8; 64 * ENTRY_LEN];
        let mut len = 0u64;
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            len += n as u64;
            if len > expected_len {
                return Err(ManifestError::BodyMismatch);
            }
            hasher.update(&buf[..n]);
        }
        if len != expected_len || hasher.finalize() != blake3::Hash::from_bytes(self.body_hash) {
            return Err(ManifestError::BodyMismatch);
        }
        Ok(())
    }

    /// Parses a header WITHOUT checking its MAC: for [`ManifestHeader::verify`] (after the
    /// MAC), tests and fuzzing. Strict: the length bounds, magic, version, valid names, and no
    /// byte left over, so that only one encoding of a header exists.
    pub fn decode_unverified(bytes: &[u8]) -> Result<Self, ManifestError> {
        check_len(bytes.len())?;
        let mut r = Reader { bytes, at: 0 };
        if r.take(8)? != HEADER_MAGIC {
            return Err(ManifestError::BadHeader("bad magic"));
        }
        if r.u32()? != HEADER_VERSION {
            return Err(ManifestError::BadHeader("unknown version"));
        }
        let qube = r.string(MAX_QUBE_NAME_LEN)?;
        let volume = r.string(MAX_VOLUME_LEN)?;
        let dataset = r.string(MAX_NAME_LEN)?;
        check_names(&qube, &volume, &dataset).map_err(ManifestError::BadHeader)?;
        let snapshot_guid = r.u64()?;
        let parent_guid = r.u64()?;
        let seq = r.u64()?;
        let prev_header_hash = r.hash()?;
        let volsize = r.u64()?;
        let volblocksize = r.u64()?;
        let created = r.u64()?;
        let entries = r.u64()?;
        let body_hash = r.hash()?;
        if r.at != bytes.len() {
            return Err(ManifestError::BadHeader("bytes after the last field"));
        }
        Ok(Self {
            qube,
            volume,
            dataset,
            snapshot_guid,
            parent_guid,
            seq,
            prev_header_hash,
            volsize,
            volblocksize,
            created,
            entries,
            body_hash,
        })
    }
}

fn check_len(len: usize) -> Result<(), ManifestError> {
    if len > MAX_HEADER_LEN {
        return Err(ManifestError::HeaderTooLarge {
            len,
            max: MAX_HEADER_LEN,
        });
    }
    if len < MIN_HEADER_LEN {
        return Err(ManifestError::HeaderTooShort {
            len,
            min: MIN_HEADER_LEN,
        });
    }
    Ok(())
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ManifestError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or(ManifestError::BadHeader("truncated"))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn u32(&mut self) -> Result<u32, ManifestError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, ManifestError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn hash(&mut self) -> Result<[u8; 32], ManifestError> {
        Ok(self.take(32)?.try_into().expect("32"))
    }
    fn string(&mut self, max: usize) -> Result<String, ManifestError> {
        let len = usize::from(u16::from_le_bytes(self.take(2)?.try_into().expect("2")));
        if len == 0 || len > max {
            return Err(ManifestError::BadHeader("name length out of bounds"));
        }
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| ManifestError::BadHeader("name is not UTF-8"))
    }
}
