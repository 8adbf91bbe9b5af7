//! What can go wrong while building, resuming or verifying a manifest.

use crate::zstream::RecordType;
use std::fmt;

/// Every error of the `manifest` module. The builder keeps the first one it meets (its
/// `Sink` methods cannot return errors) and ignores everything after it.
#[derive(Debug)]
pub enum ManifestError {
    /// Writing the body (or reading a partial body to resume) failed.
    Io(std::io::Error),
    /// The builder's parameters are unusable (`what` says which and why).
    InvalidParams(&'static str),
    /// The sub-stream is not a zvol's (`drr_type` of its BEGIN is not `DMU_OST_ZVOL`, 3).
    NotZvol { objset_type: u32 },
    /// A raw (`zfs send -w`) stream: its payloads are ciphertext, not blocks.
    RawStream,
    /// A second sub-stream BEGIN: one builder describes one snapshot.
    MultipleSnapshots,
    /// The stream is resumed (`RESUMING` in its BEGIN) but the builder is not, or the
    /// other way round. `stream_resuming` is what the stream says.
    ResumeMismatch { stream_resuming: bool },
    /// Object 1 is not of type `DMU_OT_ZVOL` (23).
    NotZvolObject { object_type: u32 },
    /// Object 1's `blksz` is not the volblocksize the builder was given.
    BlockSizeMismatch { found: u64, expected: u64 },
    /// A full stream without an OBJECT record for object 1.
    MissingObject,
    /// A WRITE or FREE of object 1 before its OBJECT record, or after records of a later
    /// object (OpenZFS sends objects in increasing order).
    RecordOutsideObject { record: RecordType },
    /// A FREEOBJECTS record that frees object 1 after its OBJECT record.
    ObjectFreed,
    /// A WRITE of object 1 with a compressed payload (`zfs send -c`).
    CompressedWrite { offset: u64, compression: u8 },
    /// A record type for object 1 that a plain zvol stream never carries (embedded block,
    /// spill block, redaction).
    UnsupportedRecord { record: RecordType },
    /// A WRITE whose logical size is not a multiple of the block size.
    SizeNotMultiple { offset: u64, size: u64, block: u64 },
    /// A WRITE or FREE that does not start (or a FREE that does not end) on a block boundary.
    Misaligned { offset: u64, block: u64 },
    /// A block or range that starts before the end of the previous one: OpenZFS sends a
    /// zvol's blocks in increasing offset order, and the manifest relies on it.
    OutOfOrder { offset: u64, previous_end: u64 },
    /// A block that ends past the volume's size.
    BeyondVolume { offset: u64, volsize: u64 },
    /// A block or range past the start of a range already freed to the end of the volume.
    InsideFreedTail { offset: u64, tail: u64 },
    /// `finish` before the sub-stream's END.
    Incomplete,
    /// A partial body entry that is not a valid entry (`index` counts from 0).
    BadEntry { index: u64, reason: &'static str },
    /// The resume point falls inside a data block of the partial body.
    CutInsideBlock { offset: u64 },
    /// A header longer than [`super::MAX_HEADER_LEN`]: refused before any MAC work.
    HeaderTooLarge { len: usize, max: usize },
    /// A header shorter than [`super::MIN_HEADER_LEN`]: refused before any MAC work.
    HeaderTooShort { len: usize, min: usize },
    /// The header's MAC does not match: nothing in it was read.
    BadMac,
    /// The body does not have the header's entry count or hash.
    BodyMismatch,
    /// A MAC-checked header whose fields are not canonical (`what` says which).
    BadHeader(&'static str),
    /// Verified headers that do not form one chain (`seq` of the manifest where it breaks).
    ChainBroken { seq: u64, reason: &'static str },
    /// A block read back from the medium whose tag does not match the manifest: altered, or
    /// moved from another offset.
    ReadBackAltered { offset: u64 },
    /// A data block the manifests list that the medium did not return.
    ReadBackMissing { offset: u64 },
    /// A non-zero block read back where the manifests say the volume holds zeros.
    ReadBackUnexpected { offset: u64 },
    /// A block read back at or before the previous one, or off a block boundary.
    ReadBackOrder { offset: u64, next: u64 },
    /// A block read back that is not exactly one volblocksize long.
    ReadBackBlockSize { offset: u64, len: u64, block: u64 },
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ManifestError::*;
        match self {
            Io(e) => write!(f, "manifest I/O: {e}"),
            InvalidParams(what) => write!(f, "invalid manifest parameters: {what}"),
            NotZvol { objset_type } => {
                write!(f, "not a zvol stream (objset type {objset_type})")
            }
            RawStream => write!(f, "raw (encrypted) send stream; send zvols without -w"),
            MultipleSnapshots => write!(f, "more than one snapshot in the stream"),
            ResumeMismatch { stream_resuming } => {
                if *stream_resuming {
                    write!(f, "resumed stream but no partial manifest to continue")
                } else {
                    write!(f, "manifest is resuming but the stream is not a resumed one")
                }
            }
            NotZvolObject { object_type } => {
                write!(f, "object 1 has type {object_type}, not DMU_OT_ZVOL")
            }
            BlockSizeMismatch { found, expected } => write!(
                f,
                "object 1 has block size {found}, expected volblocksize {expected}"
            ),
            MissingObject => write!(f, "full stream without object 1"),
            RecordOutsideObject { record } => write!(
                f,
                "{} of object 1 outside its object (before its OBJECT record or after a later object)",
                record.name()
            ),
            ObjectFreed => write!(f, "FREEOBJECTS frees object 1 of a zvol"),
            CompressedWrite {
                offset,
                compression,
            } => write!(
                f,
                "compressed WRITE (compression {compression}) at {offset}; send zvols without -c"
            ),
            UnsupportedRecord { record } => {
                write!(f, "{} of object 1 is not supported", record.name())
            }
            SizeNotMultiple {
                offset,
                size,
                block,
            } => write!(
                f,
                "WRITE at {offset} of {size} bytes is not a multiple of the block size {block}"
            ),
            Misaligned { offset, block } => {
                write!(f, "offset {offset} is not a multiple of the block size {block}")
            }
            OutOfOrder {
                offset,
                previous_end,
            } => write!(
                f,
                "block or range at {offset} starts before the end of the previous one ({previous_end})"
            ),
            BeyondVolume { offset, volsize } => {
                write!(f, "block at {offset} ends past the volume size {volsize}")
            }
            InsideFreedTail { offset, tail } => write!(
                f,
                "block or range at {offset} lies in the range freed to the end from {tail}"
            ),
            Incomplete => write!(f, "the stream did not reach its END"),
            BadEntry { index, reason } => write!(f, "partial manifest entry {index}: {reason}"),
            CutInsideBlock { offset } => {
                write!(f, "resume offset {offset} falls inside a data block")
            }
            HeaderTooLarge { len, max } => {
                write!(f, "manifest header of {len} bytes exceeds {max}")
            }
            HeaderTooShort { len, min } => {
                write!(f, "manifest header of {len} bytes is shorter than {min}")
            }
            BadMac => write!(f, "manifest header MAC does not match"),
            BodyMismatch => write!(f, "manifest body does not match its header"),
            BadHeader(what) => write!(f, "manifest header: {what}"),
            ChainBroken { seq, reason } => {
                write!(f, "manifest chain broken at sequence number {seq}: {reason}")
            }
            ReadBackAltered { offset } => write!(
                f,
                "the block at offset {offset} does not match its manifest tag (altered or moved)"
            ),
            ReadBackMissing { offset } => write!(
                f,
                "the data block at offset {offset} is in the manifests but was not read back"
            ),
            ReadBackUnexpected { offset } => write!(
                f,
                "a non-zero block was read back at offset {offset}, where the manifests say zeros"
            ),
            ReadBackOrder { offset, next } => write!(
                f,
                "block read back at offset {offset} is out of order or misaligned (expected {next} or later, on a block boundary)"
            ),
            ReadBackBlockSize { offset, len, block } => write!(
                f,
                "block read back at offset {offset} has {len} bytes, not the volblocksize {block}"
            ),
        }
    }
}

impl std::error::Error for ManifestError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ManifestError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<std::io::Error> for ManifestError {
    fn from(e: std::io::Error) -> Self {
        ManifestError::Io(e)
    }
}
