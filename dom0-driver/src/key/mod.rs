//! The backup key: a random master key, wrapped by a passphrase (Argon2id), and the keys
//! derived from it for manifests and metadata.
//!
//! Two files in the metadata directory:
//! - `key.wrapped`: the wrapped-key file (`qzb_protocol::keyfile`, 128 bytes, spec in
//!   `protocol/README.md`). Useless without the passphrase; it goes to every backup medium, so
//!   a fresh dom0 can unlock the key with the medium and the passphrase alone.
//! - `key`: the derived keys for unattended runs (no passphrase needed to `send`). Written
//!   0600 and refused when anyone but its owner could read it, or when it is not owned by
//!   the user running the driver.
//!
//! `key init|check|change` are the commands (`commands.rs`); [`load`], [`wrapped_bytes`],
//! [`unlock`] and [`read_passphrase`] are what the rest of the driver uses. Argon2 lives only
//! here: the receiver agent never links it.

mod commands;
mod files;
mod kdf;
mod passphrase;

pub use commands::{change, check, init};
pub use files::{KEY_FILE, WRAPPED_FILE};
pub use passphrase::{read_passphrase, Passphrase, PassphraseReader, PassphraseSource};
pub use qzb_protocol::keyfile::KdfParams;

use crate::error::{Error, Result};
use qzb_protocol::keyfile::{key_id_hex, DerivedKeys, MasterKey, WrappedKey};
use std::fmt;
use std::path::Path;

/// The keys a backup run uses, derived from the master key.
#[derive(Clone, PartialEq, Eq)]
pub struct Keys {
    /// Manifest block tags and manifest header MACs.
    pub manifest: [u8; 32],
    /// MACs of settings, set indexes and other metadata blobs.
    pub metadata: [u8; 32],
    /// The key id, 16 hex digits: shown to the user, and binds media to this key.
    pub key_id: String,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keys {{ key_id: {} }}", self.key_id)
    }
}

impl From<&DerivedKeys> for Keys {
    fn from(d: &DerivedKeys) -> Self {
        Keys {
            manifest: d.manifest,
            metadata: d.metadata,
            key_id: key_id_hex(&d.key_id),
        }
    }
}

/// The keys for an unattended run, from the metadata directory's `key` file; `None` when no
/// key has been set up (neither `key` nor `key.wrapped` exists). Refuses a `key` file others
/// could read or that another user owns, a damaged one, and one that does not belong to
/// `key.wrapped`.
pub fn load(metadata_dir: &Path) -> Result<Option<Keys>> {
    files::load(metadata_dir).map(|k| k.map(|d| Keys::from(&d)))
}

/// The bytes of `key.wrapped` (checked: size, format and KDF caps), to store on each backup
/// medium; `None` when no key has been set up.
pub fn wrapped_bytes(metadata_dir: &Path) -> Result<Option<Vec<u8>>> {
    Ok(files::read_wrapped(metadata_dir)?.map(|(w, _)| w.encode().to_vec()))
}

/// Unlocks a wrapped-key file (e.g. read back from a backup medium on a fresh dom0): decodes
/// it with its caps checked first, runs Argon2id, checks the MAC, unwraps the master key and
/// derives the keys.
pub fn unlock(wrapped: &[u8], passphrase: &[u8]) -> Result<Keys> {
    unlock_with(wrapped, passphrase, kdf::kek).map(|d| Keys::from(&d))
}

/// [`unlock`] with the KDF given (tests pass one that must not run).
fn unlock_with(
    wrapped: &[u8],
    passphrase: &[u8],
    kdf: impl FnOnce(&[u8], &[u8; 32], KdfParams) -> Result<[u8; 32]>,
) -> Result<DerivedKeys> {
    let w = WrappedKey::decode(wrapped).map_err(|e| Error::Key(format!("wrapped key: {e}")))?;
    Ok(unlock_master(&w, passphrase, kdf)?.derive())
}

/// Argon2id with the file's (already capped) parameters, then the MAC check and the unwrap.
fn unlock_master(
    w: &WrappedKey,
    passphrase: &[u8],
    kdf: impl FnOnce(&[u8], &[u8; 32], KdfParams) -> Result<[u8; 32]>,
) -> Result<MasterKey> {
    let kek = kdf(passphrase, &w.salt, w.params)?;
    w.unwrap(&kek).map_err(|e| Error::Key(e.to_string()))
}

#[cfg(test)]
mod tests;
