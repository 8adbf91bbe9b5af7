//! Delta manifests (issue 13): what one zvol snapshot's send stream wrote and freed, as dom0
//! saw it in its own `zfs send`, in a form restore can check blocks against without trusting
//! the backup qube.
//!
//! [`ManifestBuilder`] is a [`crate::zstream::Sink`]: run the stream tap over the stream and
//! the builder writes the **body** (fixed-size [`Entry`] records, sorted by offset: data
//! blocks with their keyed tags, all-zero blocks as holes, freed ranges) to any
//! `std::io::Write` as it goes, keeping a running blake3 of it; at the end it gives the
//! [`ManifestHeader`] (identity, chain, sizes, entry count, body hash), whose canonical
//! encoding is MAC'd with the key. [`ManifestHeader::verify`] checks size, then MAC, then
//! parses. A resumed stream continues a partial body ([`ManifestBuilder::resume`]).
//!
//! The formats and every rule the builder checks are specified in `protocol/README.md`,
//! "Delta manifests". Not yet: key derivation, use in `send`, storage on the backup medium,
//! and the restore-side merge.

mod builder;
mod entry;
mod error;
mod header;
mod merge;
mod stream;

/// Checks of real OpenZFS streams (the golden fixtures), shared by `protocol/tests/golden.rs`
/// and `cargo xtask golden-check`. Not an API.
#[doc(hidden)]
pub mod golden;

#[cfg(test)]
mod merge_tests;
#[cfg(test)]
mod tests;

pub use builder::{
    ManifestBuilder, ManifestParams, OBJECT_TYPE_ZVOL, OBJSET_TYPE_ZVOL, ZVOL_DATA_OBJECT,
};
pub use entry::{block_tag, Entry, EntryKind, ENTRY_LEN};
pub use error::ManifestError;
pub use header::{
    check_volume_name, ManifestHeader, HEADER_MAGIC, HEADER_VERSION, MAX_HEADER_LEN,
    MAX_VOLUME_LEN, MIN_HEADER_LEN,
};
pub use merge::{check_chain, BlockCheck, BlockCheckSummary, ChainMerge, Expected};
pub use stream::{ChainStart, Finished, Resume, SnapshotFacts, StreamManifests, Volume};
