//! The wrapped-key file: a random master key, wrapped under a key that Argon2id derives from
//! the user's passphrase, and the per-purpose keys derived from the master.
//!
//! Pure: no file or process I/O and no Argon2 (that lives only in dom0; the receiver agent
//! stores this file as an opaque blob). [`WrappedKey::decode`] checks the size and the KDF
//! caps before anything else, so a hostile medium cannot make dom0 spend hours or gigabytes;
//! [`WrappedKey::unwrap`] checks the MAC (constant time) before it uses the wrapped bytes.
//! The format is specified in `protocol/README.md`, "The key".

use std::fmt;

/// First bytes of the file.
pub const MAGIC: [u8; 8] = *b"QZBWKEY\0";
/// Version of the file format (and of the derivations below).
pub const VERSION: u32 = 1;
/// Length of the salt given to Argon2id.
pub const SALT_LEN: usize = 32;
/// Length of the key id (shown to the user as 16 hex digits).
pub const KEY_ID_LEN: usize = 8;
/// Exact length of an encoded file.
pub const LEN: usize = 8 + 4 + 3 * 4 + SALT_LEN + KEY_ID_LEN + 32 + 32;
/// Where the MAC starts: it covers every byte before it.
const MAC_AT: usize = LEN - 32;

/// Smallest Argon2 memory accepted: 8 MiB (in KiB, Argon2's unit).
pub const MIN_MEMORY_KIB: u32 = 8 * 1024;
/// Largest Argon2 memory accepted: 1 GiB.
pub const MAX_MEMORY_KIB: u32 = 1024 * 1024;
/// Most Argon2 passes accepted.
pub const MAX_PASSES: u32 = 16;
/// Most Argon2 lanes accepted (dom0 computes them one after the other anyway).
pub const MAX_LANES: u32 = 4;
/// Largest memory × passes accepted: 4 GiB·passes (e.g. 1 GiB × 4, 256 MiB × 16). Argon2's
/// time is about proportional to this product; the cap bounds what a hostile file can make
/// dom0 spend to about five times the default (256 MiB × 3 = 768 MiB·passes).
pub const MAX_MEMORY_TIMES_PASSES_KIB: u64 = 4 * 1024 * 1024;

/// blake3 `derive_key` contexts. Each purpose has its own, so no key serves two purposes.
pub mod context {
    /// KEK → the pad XORed with the master key.
    pub const WRAP_PAD: &str = "qubes-zfs-backup 2026-12 key wrap pad";
    /// KEK → the key of the file's MAC.
    pub const WRAP_MAC: &str = "qubes-zfs-backup 2026-12 key wrap mac";
    /// master → the key of manifest block tags and manifest header MACs.
    pub const MANIFEST: &str = "qubes-zfs-backup 2026-12 manifest";
    /// master → the key of settings, set index and other metadata blobs' MACs.
    pub const METADATA: &str = "qubes-zfs-backup 2026-12 metadata";
    /// master → the key id (its first 8 bytes).
    pub const KEY_ID: &str = "qubes-zfs-backup 2026-12 key id";
}

/// Argon2id's cost parameters, as stored in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB (Argon2's `m_cost`).
    pub memory_kib: u32,
    /// Passes over the memory (`t_cost`).
    pub passes: u32,
    /// Lanes (`p_cost`).
    pub lanes: u32,
}

impl KdfParams {
    /// What `key init` uses unless told otherwise: 256 MiB, 3 passes, 1 lane.
    pub const DEFAULT: KdfParams = KdfParams {
        memory_kib: 256 * 1024,
        passes: 3,
        lanes: 1,
    };

    /// Checks the caps. [`WrappedKey::decode`] runs this before the parameters are used.
    pub fn check(&self) -> Result<(), KeyFileError> {
        let refuse = |what| {
            Err(KeyFileError::Params {
                params: *self,
                what,
            })
        };
        if self.memory_kib < MIN_MEMORY_KIB {
            return refuse("memory below 8 MiB");
        }
        if self.memory_kib > MAX_MEMORY_KIB {
            return refuse("memory above 1 GiB");
        }
        if self.passes == 0 || self.passes > MAX_PASSES {
            return refuse("passes outside 1 ..= 16");
        }
        if self.lanes == 0 || self.lanes > MAX_LANES {
            return refuse("lanes outside 1 ..= 4");
        }
        if u64::from(self.memory_kib) * u64::from(self.passes) > MAX_MEMORY_TIMES_PASSES_KIB {
            return refuse("memory × passes above 4 GiB");
        }
        Ok(())
    }
}

impl fmt::Display for KdfParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mem = if self.memory_kib.is_multiple_of(1024) {
            format!("{} MiB", self.memory_kib / 1024)
        } else {
            format!("{} KiB", self.memory_kib)
        };
        let plural = |n: u32, one: &str, many: &str| {
            if n == 1 {
                format!("{n} {one}")
            } else {
                format!("{n} {many}")
            }
        };
        write!(
            f,
            "Argon2id, {mem}, {}, {}",
            plural(self.passes, "pass", "passes"),
            plural(self.lanes, "lane", "lanes")
        )
    }
}

/// The random master key. Never stored in the clear; not printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey(pub [u8; 32]);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

/// The keys derived from the master key, one per purpose. Not printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct DerivedKeys {
    /// Manifest block tags and manifest header MACs.
    pub manifest: [u8; 32],
    /// MACs of settings, set indexes and other metadata blobs.
    pub metadata: [u8; 32],
    /// Names the master key (not secret).
    pub key_id: [u8; KEY_ID_LEN],
}

impl fmt::Debug for DerivedKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DerivedKeys {{ key_id: {} }}", key_id_hex(&self.key_id))
    }
}

impl MasterKey {
    /// The per-purpose keys and the key id.
    pub fn derive(&self) -> DerivedKeys {
        DerivedKeys {
            manifest: blake3::derive_key(context::MANIFEST, &self.0),
            metadata: blake3::derive_key(context::METADATA, &self.0),
            key_id: self.key_id(),
        }
    }

    /// The first 8 bytes of the key-id derive.
    pub fn key_id(&self) -> [u8; KEY_ID_LEN] {
        let full = blake3::derive_key(context::KEY_ID, &self.0);
        let mut id = [0; KEY_ID_LEN];
        id.copy_from_slice(&full[..KEY_ID_LEN]);
        id
    }
}

/// A key id as the user sees it: 16 lowercase hex digits.
pub fn key_id_hex(id: &[u8; KEY_ID_LEN]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// The decoded file. Only [`WrappedKey::unwrap`] with the right KEK says it is genuine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrappedKey {
    pub params: KdfParams,
    pub salt: [u8; SALT_LEN],
    pub key_id: [u8; KEY_ID_LEN],
    pub wrapped: [u8; 32],
    pub mac: [u8; 32],
}

impl WrappedKey {
    /// Wraps `master` under `kek` (the Argon2id output for `params` and `salt`).
    pub fn wrap(
        master: &MasterKey,
        kek: &[u8; 32],
        params: KdfParams,
        salt: [u8; SALT_LEN],
    ) -> Result<WrappedKey, KeyFileError> {
        params.check()?;
        let mut w = WrappedKey {
            params,
            salt,
            key_id: master.key_id(),
            wrapped: xor(&master.0, &blake3::derive_key(context::WRAP_PAD, kek)),
            mac: [0; 32],
        };
        let bytes = w.encode();
        w.mac = *mac_of(kek, &bytes[..MAC_AT]).as_bytes();
        Ok(w)
    }

    /// The file's bytes.
    pub fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.params.memory_kib.to_le_bytes());
        b[16..20].copy_from_slice(&self.params.passes.to_le_bytes());
        b[20..24].copy_from_slice(&self.params.lanes.to_le_bytes());
        b[24..56].copy_from_slice(&self.salt);
        b[56..64].copy_from_slice(&self.key_id);
        b[64..96].copy_from_slice(&self.wrapped);
        b[96..128].copy_from_slice(&self.mac);
        b
    }

    /// Reads a file: exact size, magic, version, then the KDF caps, in that order; nothing is
    /// hashed or allocated. The MAC is checked by [`WrappedKey::unwrap`].
    pub fn decode(bytes: &[u8]) -> Result<WrappedKey, KeyFileError> {
        let b: &[u8; LEN] = bytes
            .try_into()
            .map_err(|_| KeyFileError::WrongSize { len: bytes.len() })?;
        if b[0..8] != MAGIC {
            return Err(KeyFileError::BadMagic);
        }
        let version = u32_at(b, 8);
        if version != VERSION {
            return Err(KeyFileError::UnsupportedVersion(version));
        }
        let params = KdfParams {
            memory_kib: u32_at(b, 12),
            passes: u32_at(b, 16),
            lanes: u32_at(b, 20),
        };
        params.check()?;
        Ok(WrappedKey {
            params,
            salt: array(&b[24..56]),
            key_id: array(&b[56..64]),
            wrapped: array(&b[64..96]),
            mac: array(&b[96..128]),
        })
    }

    /// Checks the MAC under `kek` (constant-time comparison), then unwraps the master key and
    /// checks that it has the stored key id.
    pub fn unwrap(&self, kek: &[u8; 32]) -> Result<MasterKey, KeyFileError> {
        let bytes = self.encode();
        if mac_of(kek, &bytes[..MAC_AT]) != blake3::Hash::from(self.mac) {
            return Err(KeyFileError::BadMac);
        }
        let master = MasterKey(xor(
            &self.wrapped,
            &blake3::derive_key(context::WRAP_PAD, kek),
        ));
        if master.key_id() != self.key_id {
            return Err(KeyFileError::KeyIdMismatch);
        }
        Ok(master)
    }

    /// The stored key id as the user sees it (not authenticated before [`WrappedKey::unwrap`]).
    pub fn key_id_hex(&self) -> String {
        key_id_hex(&self.key_id)
    }
}

fn mac_of(kek: &[u8; 32], message: &[u8]) -> blake3::Hash {
    blake3::keyed_hash(&blake3::derive_key(context::WRAP_MAC, kek), message)
}

fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    std::array::from_fn(|i| a[i] ^ b[i])
}

fn u32_at(b: &[u8; LEN], at: usize) -> u32 {
    u32::from_le_bytes(array(&b[at..at + 4]))
}

fn array<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut a = [0; N];
    a.copy_from_slice(s);
    a
}

/// Why a wrapped-key file was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyFileError {
    /// Not exactly [`LEN`] bytes.
    WrongSize { len: usize },
    /// Does not start with [`MAGIC`].
    BadMagic,
    /// A format version this build does not read.
    UnsupportedVersion(u32),
    /// KDF parameters outside the caps (`what` says which).
    Params {
        params: KdfParams,
        what: &'static str,
    },
    /// The MAC does not match: a wrong passphrase, or a damaged or forged file.
    BadMac,
    /// The MAC matched but the unwrapped key does not have the stored key id.
    KeyIdMismatch,
}

impl fmt::Display for KeyFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyFileError::WrongSize { len } => {
                write!(f, "not a wrapped-key file: {len} bytes, expected {LEN}")
            }
            KeyFileError::BadMagic => f.write_str("not a wrapped-key file (wrong magic)"),
            KeyFileError::UnsupportedVersion(v) => write!(
                f,
                "wrapped-key file format {v}, this build reads only {VERSION}; upgrade qubes-zfs-backup"
            ),
            KeyFileError::Params { params, what } => write!(
                f,
                "refused KDF parameters ({what}): memory {} KiB, {} passes, {} lanes; \
                 allowed 8 MiB ..= 1 GiB, 1 ..= 16 passes, 1 ..= 4 lanes, memory × passes ≤ 4 GiB",
                params.memory_kib, params.passes, params.lanes
            ),
            KeyFileError::BadMac => f.write_str(
                "the passphrase does not unlock this key (wrong passphrase, or a damaged or forged key file)",
            ),
            KeyFileError::KeyIdMismatch => {
                f.write_str("the key file's key id does not match its key (damaged or forged)")
            }
        }
    }
}

impl std::error::Error for KeyFileError {}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: KdfParams = KdfParams {
        memory_kib: MIN_MEMORY_KIB,
        passes: 1,
        lanes: 1,
    };

    fn sample() -> (MasterKey, [u8; 32], WrappedKey) {
        let master = MasterKey([7; 32]);
        let kek = [9; 32];
        let w = WrappedKey::wrap(&master, &kek, FAST, [3; SALT_LEN]).unwrap();
        (master, kek, w)
    }

    #[test]
    fn wrap_then_unwrap_gives_the_master_back() {
        let (master, kek, w) = sample();
        let decoded = WrappedKey::decode(&w.encode()).unwrap();
        assert_eq!(decoded, w);
        assert_eq!(decoded.unwrap(&kek).unwrap(), master);
        assert_eq!(w.key_id, master.key_id());
        assert_ne!(w.wrapped, master.0, "the master is not stored in the clear");
    }

    #[test]
    fn another_kek_fails_the_mac() {
        let (_, _, w) = sample();
        assert_eq!(w.unwrap(&[8; 32]), Err(KeyFileError::BadMac));
    }

    #[test]
    fn a_flipped_bit_anywhere_is_refused() {
        let (_, kek, w) = sample();
        let bytes = w.encode();
        for i in 0..LEN {
            for bit in [0, 7] {
                let mut b = bytes;
                b[i] ^= 1 << bit;
                let refused = WrappedKey::decode(&b).and_then(|w| w.unwrap(&kek));
                assert!(refused.is_err(), "byte {i} bit {bit}");
            }
        }
    }

    #[test]
    fn a_wrong_size_is_refused_by_its_size() {
        let (_, _, w) = sample();
        let bytes = w.encode();
        for len in [0, 1, LEN - 1, LEN + 1, 4096] {
            let mut v = bytes.to_vec();
            v.resize(len, 0);
            assert_eq!(WrappedKey::decode(&v), Err(KeyFileError::WrongSize { len }));
        }
    }

    #[test]
    fn magic_and_version_are_checked() {
        let (_, _, w) = sample();
        let mut b = w.encode();
        b[0] = b'X';
        assert_eq!(WrappedKey::decode(&b), Err(KeyFileError::BadMagic));
        let mut b = w.encode();
        b[8..12].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(
            WrappedKey::decode(&b),
            Err(KeyFileError::UnsupportedVersion(2))
        );
    }

    fn with_params(memory_kib: u32, passes: u32, lanes: u32) -> Result<WrappedKey, KeyFileError> {
        let (_, _, w) = sample();
        let mut b = w.encode();
        b[12..16].copy_from_slice(&memory_kib.to_le_bytes());
        b[16..20].copy_from_slice(&passes.to_le_bytes());
        b[20..24].copy_from_slice(&lanes.to_le_bytes());
        WrappedKey::decode(&b)
    }

    #[test]
    fn every_cap_is_enforced_by_decode() {
        let refused = |m, t, p| matches!(with_params(m, t, p), Err(KeyFileError::Params { .. }));
        assert!(refused(MIN_MEMORY_KIB - 1, 1, 1));
        assert!(refused(MAX_MEMORY_KIB + 1, 1, 1));
        assert!(refused(u32::MAX, 1, 1));
        assert!(refused(MIN_MEMORY_KIB, 0, 1));
        assert!(refused(MIN_MEMORY_KIB, MAX_PASSES + 1, 1));
        assert!(refused(MIN_MEMORY_KIB, u32::MAX, 1));
        assert!(refused(MIN_MEMORY_KIB, 1, 0));
        assert!(refused(MIN_MEMORY_KIB, 1, MAX_LANES + 1));
        assert!(refused(MAX_MEMORY_KIB, 5, 1), "1 GiB × 5 passes");
        assert!(refused(512 * 1024, 9, 1), "512 MiB × 9 passes");
        // The edges themselves are accepted (the MAC then fails, as the params changed).
        for (m, t, p) in [
            (MIN_MEMORY_KIB, 1, 1),
            (MAX_MEMORY_KIB, 4, MAX_LANES),
            (256 * 1024, MAX_PASSES, 1),
        ] {
            assert!(with_params(m, t, p).is_ok(), "{m} {t} {p}");
        }
        assert!(KdfParams::DEFAULT.check().is_ok());
    }

    #[test]
    fn wrap_refuses_params_outside_the_caps() {
        let bad = KdfParams {
            memory_kib: 1024,
            passes: 1,
            lanes: 1,
        };
        assert!(matches!(
            WrappedKey::wrap(&MasterKey([1; 32]), &[2; 32], bad, [0; SALT_LEN]),
            Err(KeyFileError::Params { .. })
        ));
    }

    #[test]
    fn purpose_keys_differ_from_each_other_and_from_the_master() {
        let master = MasterKey([5; 32]);
        let d = master.derive();
        assert_ne!(d.manifest, d.metadata);
        assert_ne!(d.manifest, master.0);
        assert_ne!(d.metadata, master.0);
        assert_eq!(d.key_id, master.key_id());
        assert_eq!(key_id_hex(&d.key_id).len(), 16);
        assert_eq!(master.derive(), d, "deterministic");
        assert_ne!(MasterKey([6; 32]).derive().manifest, d.manifest);
    }

    #[test]
    fn debug_output_shows_no_key_material() {
        let master = MasterKey([0xab; 32]);
        assert!(!format!("{master:?}").contains("171"));
        let d = master.derive();
        let text = format!("{d:?}");
        assert!(text.contains(&key_id_hex(&d.key_id)));
        assert!(!text.contains("manifest"));
    }

    #[test]
    fn params_are_shown_in_mib() {
        assert_eq!(
            KdfParams::DEFAULT.to_string(),
            "Argon2id, 256 MiB, 3 passes, 1 lane"
        );
    }
}
