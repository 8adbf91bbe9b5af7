//! The last manifest header of every volume on every medium: what the next incremental's
//! manifest chains to. dom0 keeps only these (the manifests themselves live on the medium).
//!
//! One file per (medium, dataset): `<metadata>/chains/<medium-id>/<dataset-id>.head`, the
//! header's encoding followed by its MAC, checked with the key on every read (a file that does
//! not verify is an error, never silently a new chain).

use crate::error::{Error, Result};
use crate::state::write_atomic;
use qzb_protocol::manifest::ManifestHeader;
use std::fs;
use std::path::{Path, PathBuf};

/// A short stable id of a name, for file and blob names (dataset names may hold characters
/// that file and blob names do not).
pub fn name_id(name: &str) -> String {
    blake3::hash(name.as_bytes()).to_hex()[..24].to_owned()
}

/// The id of a medium: the backup qube and the receiver root dataset on it.
pub fn medium_id(receiver_qube: &str, receiver_root: &str) -> String {
    name_id(&format!("{receiver_qube}\0{receiver_root}"))
}

/// Reads and writes the last headers.
pub struct Chains {
    dir: PathBuf,
}

impl Chains {
    pub fn new(metadata_dir: &Path) -> Self {
        Chains {
            dir: metadata_dir.join("chains"),
        }
    }

    fn path(&self, medium: &str, dataset: &str) -> PathBuf {
        self.dir
            .join(medium)
            .join(format!("{}.head", name_id(dataset)))
    }

    /// The last header stored for `dataset` on `medium`, verified with `key`.
    pub fn last(
        &self,
        medium: &str,
        dataset: &str,
        key: &[u8; 32],
    ) -> Result<Option<ManifestHeader>> {
        let path = self.path(medium, dataset);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::State(format!("cannot read {}: {e}", path.display()))),
        };
        let header = bytes
            .len()
            .checked_sub(32)
            .ok_or(qzb_protocol::manifest::ManifestError::BadMac)
            .and_then(|at| {
                let (head, mac) = bytes.split_at(at);
                ManifestHeader::verify(head, mac.try_into().expect("32 bytes"), key)
            })
            .map_err(|e| {
                Error::State(format!(
                    "{} does not verify with the key ({e}); if the key was replaced, remove it and make the next send of {dataset} a full one",
                    path.display()
                ))
            })?;
        if header.dataset != dataset {
            return Err(Error::State(format!(
                "{} names {} instead of {dataset}",
                path.display(),
                header.dataset
            )));
        }
        Ok(Some(header))
    }

    /// Records `header` (with its MAC) as the last of its dataset on `medium`.
    pub fn record(&self, medium: &str, header: &ManifestHeader, mac: &[u8; 32]) -> Result<()> {
        let path = self.path(medium, &header.dataset);
        let dir = path.parent().expect("a medium directory");
        let io = |e: std::io::Error| Error::State(format!("cannot write {}: {e}", path.display()));
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir).map_err(io)?;
        let mut bytes = header.encode();
        bytes.extend_from_slice(mac);
        write_atomic(&path, &bytes, 0o600).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(guid: u64, seq: u64) -> ManifestHeader {
        ManifestHeader {
            qube: "work".into(),
            volume: "private".into(),
            dataset: "pool/qubes/work/private".into(),
            snapshot_guid: guid,
            parent_guid: 0,
            seq,
            prev_header_hash: [0; 32],
            volsize: 1 << 20,
            volblocksize: 16384,
            created: 1,
            entries: 0,
            body_hash: [0; 32],
        }
    }

    #[test]
    fn the_last_header_round_trips_per_medium_and_a_tampered_one_is_an_error() {
        let dir = std::env::temp_dir().join(format!("qzb-chains-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let chains = Chains::new(&dir);
        let key = [5; 32];
        let (a, b) = (
            medium_id("backups", "pool/a"),
            medium_id("backups", "pool/b"),
        );
        let ds = "pool/qubes/work/private";
        assert_eq!(chains.last(&a, ds, &key).unwrap(), None);
        let h = header(7, 0);
        chains.record(&a, &h, &h.mac(&key)).unwrap();
        assert_eq!(chains.last(&a, ds, &key).unwrap(), Some(h.clone()));
        assert_eq!(chains.last(&b, ds, &key).unwrap(), None, "another medium");
        let h2 = header(8, 1);
        chains.record(&a, &h2, &h2.mac(&key)).unwrap();
        assert_eq!(chains.last(&a, ds, &key).unwrap(), Some(h2));

        let path = chains.path(&a, ds);
        let mut bytes = fs::read(&path).unwrap();
        bytes[20] ^= 1;
        fs::write(&path, bytes).unwrap();
        let e = chains.last(&a, ds, &key).unwrap_err().to_string();
        assert!(e.contains("does not verify"), "{e}");
        assert!(chains.last(&a, ds, &[6; 32]).is_err(), "another key");
        fs::remove_dir_all(&dir).unwrap();
    }
}
