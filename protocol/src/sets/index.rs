//! The set index of one run: which snapshot of which dataset the medium holds for the
//! backup after the run, with what binds each one to what dom0 sent (the stream's hash, the
//! volume's manifest header), and the hash of the run's settings.

use bincode::{Decode, Encode};

use super::{check_count, check_text, Purpose, Sealed};
use crate::names::SnapshotName;

/// Most entries in one index.
pub const MAX_INDEX_ENTRIES: usize = 100_000;

/// One run's index.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct SetIndex {
    /// The backup's name (`import`'s name).
    pub backup: String,
    /// Seconds since the Unix epoch, at the end of the run.
    pub created: u64,
    /// The key's id (16 hex digits), as `key check` shows it.
    pub key_id: String,
    /// Every target of the backup was on the medium after this run.
    pub complete: bool,
    /// blake3 of the sealed settings blob of this run, if settings were captured.
    pub settings_hash: Option<[u8; 32]>,
    /// The backup's targets on the medium, in plan order, no snapshot twice.
    pub entries: Vec<IndexEntry>,
}

/// One snapshot on the medium.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct IndexEntry {
    /// The source snapshot (dom0's name).
    pub snapshot: String,
    pub guid: u64,
    /// A zvol (else a filesystem).
    pub volume: bool,
    /// The stream dom0 sent for it (the last one, after resumes: its bytes and blake3), when
    /// dom0 sent it; `None` when it was already on the medium.
    pub stream: Option<(u64, [u8; 32])>,
    /// The zvol's manifest header on the medium, when it has one.
    pub manifest: Option<IndexManifest>,
}

/// A manifest header: its place in the volume's chain and its hash.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct IndexManifest {
    pub seq: u64,
    /// `ManifestHeader::hash` (blake3 of its encoding).
    pub header_hash: [u8; 32],
}

impl SetIndex {
    /// Checks every rule of the format.
    pub fn validate(&self) -> Result<(), String> {
        if self.backup.is_empty() {
            return Err("empty backup name".into());
        }
        check_text("the backup name", &self.backup, 255)?;
        if self.key_id.len() != 16 || !self.key_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("the key id is not 16 hex digits".into());
        }
        check_count("entries", self.entries.len(), MAX_INDEX_ENTRIES)?;
        let mut seen = std::collections::BTreeSet::new();
        for e in &self.entries {
            SnapshotName::parse(&e.snapshot).map_err(|err| format!("snapshot name: {err}"))?;
            if !seen.insert(e.snapshot.as_str()) {
                return Err(format!("{} listed twice", e.snapshot));
            }
            if e.manifest.is_some() && !e.volume {
                return Err(format!("{} is a filesystem with a manifest", e.snapshot));
            }
        }
        Ok(())
    }
}

impl Sealed for SetIndex {
    const PURPOSE: Purpose = Purpose::SetIndex;
    fn check_rules(&self) -> Result<(), String> {
        self.validate()
    }
}
