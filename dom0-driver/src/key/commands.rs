//! `key init`, `key check`, `key change`.

use super::files::{self, KEY_FILE};
use super::passphrase::{PassphraseReader, PassphraseSource};
use super::{kdf, unlock_master};
use crate::error::{Error, Result};
use qzb_protocol::keyfile::{key_id_hex, KdfParams, MasterKey, WrappedKey};
use std::path::Path;

fn check_params(params: KdfParams) -> Result<()> {
    params.check().map_err(|e| Error::Key(e.to_string()))
}

fn no_key(dir: &Path) -> Error {
    Error::Key(format!(
        "no key is set up in {}; run `qubes-zfs-backup key init`",
        dir.display()
    ))
}

/// Wraps `master` under a fresh salt and the passphrase, and checks the result unwraps.
fn wrap_new(master: &MasterKey, passphrase: &[u8], params: KdfParams) -> Result<WrappedKey> {
    let salt = kdf::random::<32>()?;
    let kek = kdf::kek(passphrase, &salt, params)?;
    let w = WrappedKey::wrap(master, &kek, params, salt).map_err(|e| Error::Key(e.to_string()))?;
    if w.unwrap(&kek).as_ref() != Ok(master) {
        return Err(Error::Key(
            "the new wrapped key does not unwrap again; nothing was written".into(),
        ));
    }
    Ok(w)
}

/// `key init`: a new random master key, wrapped by a new passphrase. Refuses when a key
/// exists (replacing it would leave every backup made with it unverifiable).
pub fn init(dir: &Path, source: PassphraseSource, params: KdfParams) -> Result<()> {
    if files::any_exists(dir) {
        let id = files::read_wrapped(dir)
            .ok()
            .flatten()
            .map(|(w, _)| format!(" (key {})", w.key_id_hex()))
            .unwrap_or_default();
        return Err(Error::Key(format!(
            "a key is already set up in {}{id}; `key init` never replaces one (what was backed up \
             with it could no longer be verified or restored). To change its passphrase, use \
             `qubes-zfs-backup key change`",
            dir.display()
        )));
    }
    check_params(params)?;
    let mut reader = PassphraseReader::new(source);
    let passphrase = reader.new_passphrase("New passphrase: ")?;
    reader.finish()?;
    let master = MasterKey(kdf::random::<32>()?);
    let wrapped = wrap_new(&master, passphrase.as_bytes(), params)?;
    files::write_wrapped(dir, &wrapped)?;
    files::write_key_file(dir, &master.derive())?;
    crate::outln!("Key {} set up ({params}).", wrapped.key_id_hex());
    crate::outln!(
        "  {}: the key wrapped by the passphrase; every `send` stores it on the backup medium.",
        dir.join(files::WRAPPED_FILE).display()
    );
    crate::outln!(
        "  {}: the derived keys for unattended runs (mode 0600).",
        dir.join(KEY_FILE).display()
    );
    crate::outln!(
        "Remember the passphrase: after losing dom0, nothing can be verified or restored without it."
    );
    Ok(())
}

/// `key check`: whether the passphrase unlocks `key.wrapped`; shows the key id and the KDF
/// parameters, and writes the `key` file again if it is missing.
pub fn check(dir: &Path, source: PassphraseSource) -> Result<()> {
    let (wrapped, path) = files::read_wrapped(dir)?.ok_or_else(|| no_key(dir))?;
    crate::outln!(
        "Key {} in {} ({}).",
        wrapped.key_id_hex(),
        path.display(),
        wrapped.params
    );
    let mut reader = PassphraseReader::new(source);
    let passphrase = reader.current("Passphrase: ")?;
    reader.finish()?;
    let master = unlock_master(&wrapped, passphrase.as_bytes(), kdf::kek)
        .map_err(|e| Error::Key(format!("{}: {e}", path.display())))?;
    crate::outln!("The passphrase unlocks key {}.", wrapped.key_id_hex());
    let derived = master.derive();
    let key_path = dir.join(KEY_FILE);
    match files::read_key_file(dir)? {
        Some(k) if k == derived => {
            crate::outln!(
                "The key file for unattended runs ({}) matches.",
                key_path.display()
            );
        }
        Some(k) => {
            return Err(Error::Key(format!(
                "{} holds the keys of key {}, not of key {}; remove it and run `key check` \
                 again to write the right one",
                key_path.display(),
                key_id_hex(&k.key_id),
                wrapped.key_id_hex()
            )));
        }
        None => {
            files::write_key_file(dir, &derived)?;
            crate::outln!(
                "The key file for unattended runs ({}) was missing; written again (mode 0600).",
                key_path.display()
            );
        }
    }
    Ok(())
}

/// `key change`: the current passphrase, then a new one; the same master key wrapped again
/// under a fresh salt, so everything made with the key stays verifiable.
pub fn change(dir: &Path, source: PassphraseSource, params: KdfParams) -> Result<()> {
    let (wrapped, path) = files::read_wrapped(dir)?.ok_or_else(|| no_key(dir))?;
    check_params(params)?;
    let mut reader = PassphraseReader::new(source);
    let old = reader.current("Current passphrase: ")?;
    let master = unlock_master(&wrapped, old.as_bytes(), kdf::kek)
        .map_err(|e| Error::Key(format!("{}: {e}; nothing was changed", path.display())))?;
    let new = reader.new_passphrase("New passphrase: ")?;
    reader.finish()?;
    let rewrapped = wrap_new(&master, new.as_bytes(), params)?;
    files::write_wrapped(dir, &rewrapped)?;
    if files::read_key_file(dir)?.is_none() {
        files::write_key_file(dir, &master.derive())?;
    }
    crate::outln!(
        "Passphrase changed for key {} ({params}).",
        rewrapped.key_id_hex()
    );
    crate::outln!(
        "The key itself is the same: everything backed up with it still verifies. Backup media \
         keep the old wrapping (the old passphrase unlocks it) until the next `send` stores the new one."
    );
    Ok(())
}
