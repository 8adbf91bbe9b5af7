//! The body of a manifest: a sequence of fixed-size entries, sorted by offset.

use super::error::ManifestError;

/// Size of one body entry: `kind u8 | offset u64 le | len u64 le | tag [u8; 32]`.
pub const ENTRY_LEN: usize = 1 + 8 + 8 + 32;

/// What an entry says about `offset .. offset + len` of the volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// One block of data (`len` = volblocksize); `tag` = keyed blake3 of
    /// `offset (u64 le) || block`.
    Data = 1,
    /// One block written as all zeros (`len` = volblocksize, `tag` zero): a hole to restore.
    Hole = 2,
    /// A range freed by a FREE record (`len` a multiple of volblocksize, `tag` zero).
    Free = 3,
}

impl EntryKind {
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::Data),
            2 => Some(Self::Hole),
            3 => Some(Self::Free),
            _ => None,
        }
    }
}

/// One body entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    pub kind: EntryKind,
    pub offset: u64,
    pub len: u64,
    /// The block's tag for [`EntryKind::Data`], zero otherwise.
    pub tag: [u8; 32],
}

impl Entry {
    /// The offset just past the entry (`offset + len`; entries never wrap, see `decode`).
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }

    pub fn encode(&self) -> [u8; ENTRY_LEN] {
        let mut out = [0u8; ENTRY_LEN];
        out[0] = self.kind as u8;
        out[1..9].copy_from_slice(&self.offset.to_le_bytes());
        out[9..17].copy_from_slice(&self.len.to_le_bytes());
        out[17..].copy_from_slice(&self.tag);
        out
    }

    /// Decodes one entry and checks what an entry alone can show: a known kind, a non-zero
    /// length that does not wrap, a zero tag for holes and frees. Order, alignment and the
    /// volume's bounds are the reader's to check (the builder does, on resume).
    pub fn decode(bytes: &[u8; ENTRY_LEN], index: u64) -> Result<Self, ManifestError> {
        let bad = |reason| ManifestError::BadEntry { index, reason };
        let kind = EntryKind::from_u8(bytes[0]).ok_or(bad("unknown kind"))?;
        let offset = u64::from_le_bytes(bytes[1..9].try_into().expect("8 bytes"));
        let len = u64::from_le_bytes(bytes[9..17].try_into().expect("8 bytes"));
        let tag: [u8; 32] = bytes[17..].try_into().expect("32 bytes");
        if len == 0 {
            return Err(bad("zero length"));
        }
        if offset.checked_add(len).is_none() {
            return Err(bad("range wraps past 2^64"));
        }
        if kind != EntryKind::Data && tag != [0; 32] {
            return Err(bad("hole or free with a non-zero tag"));
        }
        Ok(Self {
            kind,
            offset,
            len,
            tag,
        })
    }
}

/// The tag of the block at `offset`: keyed blake3 of `offset (u64 le) || block`, so the same
/// block at another offset has another tag.
pub fn block_tag(key: &[u8; 32], offset: u64, block: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_keyed(key);
    hasher.update(&offset.to_le_bytes());
    hasher.update(block);
    *hasher.finalize().as_bytes()
}
