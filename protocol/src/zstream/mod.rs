//! A parser of OpenZFS send streams ("the stream tap", issue 13).
//!
//! dom0 runs [`Tap`] over the bytes of its own `zfs send` while it frames them, to learn which
//! blocks a snapshot writes and frees. The input is trusted (dom0's own kernel wrote it), but
//! the parser still never panics, never allocates more than its documented limits (checked
//! before any buffer is sized), and rejects whatever it does not understand: unknown record
//! types, unknown feature flags, byteswapped streams, records out of place, bad checksums.
//!
//! The format as implemented, with its limits, is described in `protocol/README.md`
//! ("Send streams (the stream tap)"); it follows `include/sys/zfs_ioctl.h` of OpenZFS.
//!
//! [`writer::StreamWriter`] writes valid streams (with their checksums) for tests and fuzzing.

mod error;
mod fletcher4;
mod parser;
mod records;
pub mod writer;

#[cfg(test)]
mod tests;

pub use error::{ErrorKind, StreamError};
pub use fletcher4::Fletcher4;
pub use parser::{Options, Sink, Tap, MAX_BEGIN_PAYLOAD, MAX_OBJECT_PAYLOAD, MAX_RECORD_PAYLOAD};
pub use records::{
    feature, Begin, End, EndKind, Free, FreeObjects, HeaderType, Object, ObjectRange, RecordType,
    Redact, Spill, Write, WriteEmbedded, BACKUP_MAGIC, CHECKSUM_OFFSET, HDRTYPE_COMPOUNDSTREAM,
    HDRTYPE_SUBSTREAM, MAX_BLOCK_SIZE, MAX_EMBEDDED_PAYLOAD, MIN_BLOCK_SIZE, RECORD_HEADER_LEN,
    TONAME_LEN,
};
