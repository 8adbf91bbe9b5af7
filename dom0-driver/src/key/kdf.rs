//! Argon2id (the passphrase → key-encryption key) and random bytes from the kernel.

use crate::error::{Error, Result};
use qzb_protocol::keyfile::KdfParams;
use std::io::Read;

/// Argon2id (version 0x13) of `passphrase` with `salt` and `params`, 32 bytes out, no secret
/// and no associated data. The caps are checked again here, so nothing reaches Argon2 that a
/// decoded file could not hold.
pub(super) fn kek(passphrase: &[u8], salt: &[u8; 32], params: KdfParams) -> Result<[u8; 32]> {
    params
        .check()
        .map_err(|e| Error::Key(format!("wrapped key: {e}")))?;
    let argon_params =
        argon2::Params::new(params.memory_kib, params.passes, params.lanes, Some(32))
            .map_err(|e| Error::Key(format!("Argon2 refused the parameters ({params}): {e}")))?;
    let argon = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon_params,
    );
    let mut out = [0u8; 32];
    argon
        .hash_password_into(passphrase, salt, &mut out)
        .map_err(|e| Error::Key(format!("Argon2 failed ({params}): {e}")))?;
    Ok(out)
}

/// `N` bytes from `/dev/urandom` (the kernel's CSPRNG; dom0 is long past early boot).
pub(super) fn random<const N: usize>() -> Result<[u8; N]> {
    let mut out = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut out))
        .map_err(|e| Error::Key(format!("cannot read random bytes from /dev/urandom: {e}")))?;
    Ok(out)
}
