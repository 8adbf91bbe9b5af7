//! The two key files in the metadata directory: reading them with their checks, writing them
//! atomically (temporary file created with its mode, fsync, rename, directory fsync).
//!
//! The `key` file (dom0 only, 116 bytes): magic `QZBKEYS\0`, version u32le = 1, key id [8],
//! manifest key [32], metadata key [32], then blake3 of those 84 bytes [32] (catches a damaged
//! file; it is no protection against someone who can write it, who owns dom0 anyway).

use crate::error::{Error, Result};
use qzb_protocol::keyfile::{key_id_hex, DerivedKeys, WrappedKey, KEY_ID_LEN, LEN as WRAPPED_LEN};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The wrapped-key file's name in the metadata directory.
pub const WRAPPED_FILE: &str = "key.wrapped";
/// The derived keys' file name in the metadata directory.
pub const KEY_FILE: &str = "key";

const KEY_MAGIC: [u8; 8] = *b"QZBKEYS\0";
const KEY_VERSION: u32 = 1;
const KEY_BODY_LEN: usize = 8 + 4 + KEY_ID_LEN + 32 + 32;
const KEY_LEN: usize = KEY_BODY_LEN + 32;

fn encode_key_file(keys: &DerivedKeys) -> [u8; KEY_LEN] {
    let mut b = [0u8; KEY_LEN];
    b[0..8].copy_from_slice(&KEY_MAGIC);
    b[8..12].copy_from_slice(&KEY_VERSION.to_le_bytes());
    b[12..20].copy_from_slice(&keys.key_id);
    b[20..52].copy_from_slice(&keys.manifest);
    b[52..84].copy_from_slice(&keys.metadata);
    let check = blake3::hash(&b[..KEY_BODY_LEN]);
    b[KEY_BODY_LEN..].copy_from_slice(check.as_bytes());
    b
}

fn decode_key_file(b: &[u8]) -> std::result::Result<DerivedKeys, &'static str> {
    if b.len() != KEY_LEN {
        return Err("wrong size");
    }
    if b[0..8] != KEY_MAGIC {
        return Err("not a qubes-zfs-backup key file");
    }
    if b[8..12] != KEY_VERSION.to_le_bytes() {
        return Err("unknown version");
    }
    let mut check = [0u8; 32];
    check.copy_from_slice(&b[KEY_BODY_LEN..]);
    if blake3::hash(&b[..KEY_BODY_LEN]) != blake3::Hash::from(check) {
        return Err("checksum mismatch");
    }
    let mut keys = DerivedKeys {
        manifest: [0; 32],
        metadata: [0; 32],
        key_id: [0; KEY_ID_LEN],
    };
    keys.key_id.copy_from_slice(&b[12..20]);
    keys.manifest.copy_from_slice(&b[20..52]);
    keys.metadata.copy_from_slice(&b[52..84]);
    Ok(keys)
}

/// Why a `key` file with this mode and owner must not be used, if it must not.
pub(super) fn unsafe_key_file(mode: u32, owner: u32, me: u32) -> Option<String> {
    if mode & 0o077 != 0 {
        return Some(format!(
            "its mode is {:04o}: its group or others have access to it; it must be 0600 (chmod 600 it, or remove it \
             and run `qubes-zfs-backup key check` to write it again)",
            mode & 0o7777
        ));
    }
    if owner != me {
        return Some(format!(
            "it is owned by uid {owner}, not by uid {me} running qubes-zfs-backup"
        ));
    }
    None
}

/// The effective uid of this process: the owner of `/proc/self`.
fn current_uid() -> Result<u32> {
    fs::metadata("/proc/self").map(|m| m.uid()).map_err(|e| {
        Error::Key(format!(
            "cannot tell which user runs this (/proc/self): {e}"
        ))
    })
}

/// A regular file's bytes if it exists, refused when not exactly `len` bytes; the opened
/// file's metadata comes with them (for the mode and owner checks).
fn read_exact_file(path: &Path, len: usize) -> Result<Option<(Vec<u8>, fs::Metadata)>> {
    let shown = path.display();
    let before = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::Key(format!("cannot read {shown}: {e}"))),
    };
    if !before.file_type().is_file() {
        return Err(Error::Key(format!(
            "{shown} is not a regular file (a symlink, directory or device); refusing it"
        )));
    }
    let file = File::open(path).map_err(|e| Error::Key(format!("cannot open {shown}: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| Error::Key(format!("cannot read {shown}: {e}")))?;
    if meta.dev() != before.dev() || meta.ino() != before.ino() {
        return Err(Error::Key(format!(
            "{shown} was replaced while being opened; refusing it"
        )));
    }
    if meta.len() != len as u64 {
        return Err(Error::Key(format!(
            "{shown} is {} bytes, a key file of this kind is exactly {len}; it is damaged or not one",
            meta.len()
        )));
    }
    let mut bytes = Vec::with_capacity(len);
    file.take(len as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::Key(format!("cannot read {shown}: {e}")))?;
    if bytes.len() != len {
        return Err(Error::Key(format!("{shown} changed size while being read")));
    }
    Ok(Some((bytes, meta)))
}

/// `key.wrapped`, decoded (size, format and KDF caps checked), with its path.
pub(super) fn read_wrapped(dir: &Path) -> Result<Option<(WrappedKey, PathBuf)>> {
    let path = dir.join(WRAPPED_FILE);
    let Some((bytes, _)) = read_exact_file(&path, WRAPPED_LEN)? else {
        return Ok(None);
    };
    let w =
        WrappedKey::decode(&bytes).map_err(|e| Error::Key(format!("{}: {e}", path.display())))?;
    Ok(Some((w, path)))
}

/// The `key` file, with the mode and owner checks.
pub(super) fn read_key_file(dir: &Path) -> Result<Option<DerivedKeys>> {
    let path = dir.join(KEY_FILE);
    let Some((bytes, meta)) = read_exact_file(&path, KEY_LEN)? else {
        return Ok(None);
    };
    if let Some(why) = unsafe_key_file(meta.mode(), meta.uid(), current_uid()?) {
        return Err(Error::Key(format!(
            "refusing the key file {}: {why}",
            path.display()
        )));
    }
    decode_key_file(&bytes)
        .map(Some)
        .map_err(|why| Error::Key(format!("the key file {} is damaged ({why}); remove it and run `qubes-zfs-backup key check` to write it again", path.display())))
}

/// Both files, checked against each other (see [`super::load`]).
pub(super) fn load(dir: &Path) -> Result<Option<DerivedKeys>> {
    let keys = read_key_file(dir)?;
    let wrapped = read_wrapped(dir)?;
    match (keys, wrapped) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(Error::Key(format!(
            "{} is missing (the wrapped key that goes to every backup medium) while {} exists; \
             copy it back from a backup medium or from a copy",
            dir.join(WRAPPED_FILE).display(),
            dir.join(KEY_FILE).display()
        ))),
        (None, Some((_, path))) => Err(Error::Key(format!(
            "{} is missing (the keys for unattended runs; {} is there): run \
             `qubes-zfs-backup key check`, which writes it again from the passphrase",
            dir.join(KEY_FILE).display(),
            path.display()
        ))),
        (Some(k), Some((w, path))) if k.key_id != w.key_id => Err(Error::Key(format!(
            "{} (key {}) and {} (key {}) belong to different keys; remove {} and run \
             `qubes-zfs-backup key check` to write it again from the passphrase",
            dir.join(KEY_FILE).display(),
            key_id_hex(&k.key_id),
            path.display(),
            w.key_id_hex(),
            dir.join(KEY_FILE).display()
        ))),
        (Some(k), Some(_)) => Ok(Some(k)),
    }
}

/// Creates the metadata directory (mode 0700) if it is missing.
fn ensure_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| {
            Error::Key(format!(
                "cannot create metadata directory {}: {e}",
                dir.display()
            ))
        })
}

/// Writes `dir/name` atomically with mode 0600: a new temporary file created with that mode,
/// fsync, rename over the old one, fsync of the directory. A failure removes the temporary.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    ensure_dir(dir)?;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let io =
        |what: &str, e: std::io::Error| Error::Key(format!("cannot {what} {}: {e}", tmp.display()));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io("create", e))?;
    let written = f
        .write_all(bytes)
        .map_err(|e| io("write", e))
        .and_then(|()| f.sync_all().map_err(|e| io("sync", e)))
        .and_then(|()| {
            fs::rename(&tmp, &path)
                .map_err(|e| Error::Key(format!("cannot replace {}: {e}", path.display())))
        });
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
        return written;
    }
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

pub(super) fn write_wrapped(dir: &Path, w: &WrappedKey) -> Result<()> {
    write_atomic(dir, WRAPPED_FILE, &w.encode())
}

pub(super) fn write_key_file(dir: &Path, keys: &DerivedKeys) -> Result<()> {
    write_atomic(dir, KEY_FILE, &encode_key_file(keys))
}

/// Whether either key file exists (even a broken one).
pub(super) fn any_exists(dir: &Path) -> bool {
    [WRAPPED_FILE, KEY_FILE]
        .iter()
        .any(|n| fs::symlink_metadata(dir.join(n)).is_ok())
}

#[cfg(test)]
pub(super) fn key_file_round_trip(
    keys: &DerivedKeys,
) -> std::result::Result<DerivedKeys, &'static str> {
    decode_key_file(&encode_key_file(keys))
}

#[cfg(test)]
pub(super) fn key_file_bytes(keys: &DerivedKeys) -> Vec<u8> {
    encode_key_file(keys).to_vec()
}

#[cfg(test)]
pub(super) fn decode_key_file_for_test(b: &[u8]) -> std::result::Result<DerivedKeys, &'static str> {
    decode_key_file(b)
}
