//! What can be wrong with a send stream, and where.

use super::records::RecordType;
use std::fmt;

/// What went wrong, and where: `offset` is the stream offset of the start of the record at
/// fault (for truncation and trailing data, of the first byte that is missing or extra).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamError {
    pub offset: u64,
    pub kind: ErrorKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// `drr_type` past `DRR_REDACT`: its payload length is unknown, so nothing can follow.
    UnknownRecordType(u32),
    /// A record type the tap does not take (`DRR_WRITE_BYREF`: dedup streams).
    UnsupportedRecordType(RecordType),
    /// A BEGIN whose magic is not `DMU_BACKUP_MAGIC`.
    BadMagic(u64),
    /// A BEGIN with the magic byteswapped: a stream written by a big-endian host.
    Byteswapped,
    /// `DMU_GET_STREAM_HDRTYPE` is neither sub-stream (1) nor compound (2).
    UnknownHeaderType(u64),
    /// Feature flags outside what OpenZFS 2.3 can receive (the unknown bits).
    UnsupportedFeatures(u64),
    /// A payload length over the tap's limit for the record type (checked before buffering).
    PayloadTooLarge {
        record: RecordType,
        length: u64,
        limit: u64,
    },
    /// A size field OpenZFS would refuse (e.g. a WRITE smaller than 512 bytes).
    InvalidSize {
        record: RecordType,
        field: &'static str,
        value: u64,
    },
    /// A record's trailing checksum is not the fletcher-4 of the stream before it.
    ChecksumMismatch {
        record: RecordType,
        expected: [u64; 4],
        found: [u64; 4],
    },
    /// A record inside a sub-stream without its trailing checksum.
    MissingChecksum(RecordType),
    /// An END's `drr_checksum` is not the fletcher-4 of the stream before it.
    EndChecksumMismatch { expected: [u64; 4], found: [u64; 4] },
    /// A record where the stream's structure does not allow it (e.g. a WRITE before BEGIN,
    /// a BEGIN inside a sub-stream, a compound BEGIN inside a package).
    UnexpectedRecord {
        record: RecordType,
        expected: &'static str,
    },
    /// Bytes after the stream's last END.
    TrailingData,
    /// `finish()` inside a record: `missing` more bytes were needed for it.
    Truncated { missing: u64 },
    /// `finish()` between records, but before the stream's last END.
    MissingEnd { expected: &'static str },
    /// The tap already failed; it refuses any more input.
    AlreadyFailed,
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "send stream at byte {}: ", self.offset)?;
        match &self.kind {
            ErrorKind::UnknownRecordType(t) => write!(f, "unknown record type {t}"),
            ErrorKind::UnsupportedRecordType(t) => {
                write!(f, "unsupported record type {} (dedup stream)", t.name())
            }
            ErrorKind::BadMagic(m) => write!(f, "bad BEGIN magic {m:#x}"),
            ErrorKind::Byteswapped => write!(
                f,
                "stream written in the other byte order (big-endian host); not supported"
            ),
            ErrorKind::UnknownHeaderType(t) => write!(f, "unknown stream header type {t}"),
            ErrorKind::UnsupportedFeatures(bits) => {
                write!(f, "unsupported stream feature flags {bits:#x}")
            }
            ErrorKind::PayloadTooLarge {
                record,
                length,
                limit,
            } => write!(
                f,
                "{} payload of {length} bytes exceeds the limit of {limit}",
                record.name()
            ),
            ErrorKind::InvalidSize {
                record,
                field,
                value,
            } => write!(f, "{} has an invalid {field} of {value}", record.name()),
            ErrorKind::ChecksumMismatch {
                record,
                expected,
                found,
            } => write!(
                f,
                "{} header checksum {} does not match the stream's {}",
                record.name(),
                hex4(found),
                hex4(expected)
            ),
            ErrorKind::MissingChecksum(record) => {
                write!(f, "{} has no header checksum", record.name())
            }
            ErrorKind::EndChecksumMismatch { expected, found } => write!(
                f,
                "DRR_END checksum {} does not match the stream's {}",
                hex4(found),
                hex4(expected)
            ),
            ErrorKind::UnexpectedRecord { record, expected } => {
                write!(f, "unexpected {}; expected {expected}", record.name())
            }
            ErrorKind::TrailingData => write!(f, "data after the end of the stream"),
            ErrorKind::Truncated { missing } => {
                write!(f, "stream ends inside a record ({missing} bytes missing)")
            }
            ErrorKind::MissingEnd { expected } => {
                write!(f, "stream ends without its DRR_END (expected {expected})")
            }
            ErrorKind::AlreadyFailed => write!(f, "the stream already failed"),
        }
    }
}

impl std::error::Error for StreamError {}

fn hex4(words: &[u64; 4]) -> String {
    format!(
        "{:x}/{:x}/{:x}/{:x}",
        words[0], words[1], words[2], words[3]
    )
}
