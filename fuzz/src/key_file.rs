//! Harness for the wrapped-key file (`qzb_protocol::keyfile::WrappedKey`), which dom0 reads
//! back from a backup medium on a fresh install, before it runs Argon2 with the file's
//! parameters.
//!
//! Input: the file's bytes. Checks beyond "no panic", with a fixed key-encryption key (Argon2
//! itself is not run: the point is what `decode` lets through to it):
//! * anything but exactly `LEN` bytes is `WrongSize`, whatever the content;
//! * an accepted decode has parameters within every cap (memory, passes, lanes, memory ×
//!   passes) and re-encodes to the same bytes;
//! * `unwrap` under the fixed KEK accepts only when the stored MAC is the one `wrap` computes,
//!   and then returns a master key whose id is the stored one and which wraps again (same
//!   KEK, parameters and salt) to exactly the input.
use qzb_protocol::keyfile::{
    KeyFileError, WrappedKey, LEN, MAX_LANES, MAX_MEMORY_KIB, MAX_MEMORY_TIMES_PASSES_KIB,
    MAX_PASSES, MIN_MEMORY_KIB,
};

/// The key-encryption key every run uses.
pub const KEK: [u8; 32] = [0x4b; 32];

pub fn run(data: &[u8]) {
    let w = match WrappedKey::decode(data) {
        Ok(w) => w,
        Err(KeyFileError::WrongSize { len }) => {
            assert!(len == data.len() && len != LEN);
            return;
        }
        Err(e) => {
            assert_eq!(data.len(), LEN, "{e}");
            let _ = e.to_string();
            return;
        }
    };
    let p = w.params;
    assert!((MIN_MEMORY_KIB..=MAX_MEMORY_KIB).contains(&p.memory_kib));
    assert!((1..=MAX_PASSES).contains(&p.passes));
    assert!((1..=MAX_LANES).contains(&p.lanes));
    assert!(u64::from(p.memory_kib) * u64::from(p.passes) <= MAX_MEMORY_TIMES_PASSES_KIB);
    assert_eq!(&w.encode()[..], data, "decode is not canonical");
    match w.unwrap(&KEK) {
        Ok(master) => {
            assert_eq!(master.key_id(), w.key_id);
            let again = WrappedKey::wrap(&master, &KEK, p, w.salt).expect("params passed decode");
            assert_eq!(
                &again.encode()[..],
                data,
                "unwrap accepted a MAC wrap would not write"
            );
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// Seeds: files wrapped under [`KEK`] at the smallest, the default and the largest accepted
/// parameters, and one with memory over the cap.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use qzb_protocol::keyfile::{KdfParams, MasterKey};
    let wrap = |params: KdfParams, fill: u8| {
        WrappedKey::wrap(&MasterKey([fill; 32]), &KEK, params, [fill ^ 0x5a; 32])
            .expect("valid params")
            .encode()
            .to_vec()
    };
    let min = KdfParams {
        memory_kib: MIN_MEMORY_KIB,
        passes: 1,
        lanes: 1,
    };
    let max = KdfParams {
        memory_kib: MAX_MEMORY_KIB,
        passes: 4,
        lanes: MAX_LANES,
    };
    let mut over = wrap(min, 3);
    over[12..16].copy_from_slice(&(MAX_MEMORY_KIB + 1).to_le_bytes());
    vec![
        ("min-params", wrap(min, 1)),
        ("default-params", wrap(KdfParams::DEFAULT, 2)),
        ("max-params", wrap(max, 4)),
        ("memory-over-cap", over),
    ]
}
