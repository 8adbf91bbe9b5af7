use super::files::{self, KEY_FILE, WRAPPED_FILE};
use super::passphrase::{self, PassphraseReader, PassphraseSource};
use super::*;
use qzb_protocol::keyfile::{self, MasterKey, LEN, MIN_MEMORY_KIB};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;

const FAST: KdfParams = KdfParams {
    memory_kib: MIN_MEMORY_KIB,
    passes: 1,
    lanes: 1,
};

/// A stand-in KDF for tests that are not about Argon2 (still depends on every input).
fn stub_kdf(pass: &[u8], salt: &[u8; 32], params: KdfParams) -> Result<[u8; 32]> {
    let mut h = blake3::Hasher::new();
    h.update(pass)
        .update(salt)
        .update(&params.memory_kib.to_le_bytes())
        .update(&params.passes.to_le_bytes())
        .update(&params.lanes.to_le_bytes());
    Ok(*h.finalize().as_bytes())
}

fn never_kdf(_: &[u8], _: &[u8; 32], params: KdfParams) -> Result<[u8; 32]> {
    panic!("the KDF ran with {params:?}")
}

fn wrapped_with(master: &MasterKey, pass: &[u8], salt: u8) -> WrappedKey {
    let salt = [salt; 32];
    let kek = stub_kdf(pass, &salt, FAST).unwrap();
    WrappedKey::wrap(master, &kek, FAST, salt).unwrap()
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("qzb-key-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A file holding `text`, open for reading: its descriptor is the passphrase source.
fn passphrase_file(dir: &TempDir, name: &str, text: &str) -> std::fs::File {
    let p = dir.0.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::File::open(p).unwrap()
}

fn fd_of(f: &std::fs::File) -> PassphraseSource {
    PassphraseSource::Fd(f.as_raw_fd() as u32)
}

fn key_error(r: Result<impl std::fmt::Debug>) -> String {
    match r {
        Err(Error::Key(m)) => m,
        other => panic!("expected a key error, got {other:?}"),
    }
}

#[test]
fn unlock_with_the_passphrase_gives_the_masters_derived_keys() {
    let master = MasterKey([1; 32]);
    let w = wrapped_with(&master, b"correct horse battery", 2);
    let d = unlock_with(&w.encode(), b"correct horse battery", stub_kdf).unwrap();
    assert_eq!(d, master.derive());
}

#[test]
fn real_argon2_wraps_and_unwraps() {
    let master = MasterKey([4; 32]);
    let salt = [5; 32];
    let kek = kdf::kek(b"a long passphrase", &salt, FAST).unwrap();
    let w = WrappedKey::wrap(&master, &kek, FAST, salt).unwrap();
    let keys = unlock(&w.encode(), b"a long passphrase").unwrap();
    assert_eq!(keys, Keys::from(&master.derive()));
    assert_eq!(keys.key_id.len(), 16);
    let wrong = key_error(unlock(&w.encode(), b"a long passphrasf"));
    assert!(wrong.contains("does not unlock"), "{wrong}");
}

#[test]
fn a_wrong_passphrase_is_a_clear_key_error() {
    let w = wrapped_with(&MasterKey([1; 32]), b"right passphrase", 2);
    let m = key_error(unlock_with(&w.encode(), b"wrong passphrase", stub_kdf));
    assert!(m.contains("the passphrase does not unlock"), "{m}");
}

#[test]
fn changing_the_passphrase_keeps_the_master_key() {
    let master = MasterKey([1; 32]);
    let old = wrapped_with(&master, b"old passphrase", 2);
    let unlocked = unlock_master(&old, b"old passphrase", stub_kdf).unwrap();
    let new = wrapped_with(&unlocked, b"new passphrase", 3);
    assert_ne!(new.encode(), old.encode());
    assert_eq!(new.key_id, old.key_id);
    assert_eq!(
        unlock_with(&new.encode(), b"new passphrase", stub_kdf).unwrap(),
        master.derive()
    );
    assert!(unlock_with(&new.encode(), b"old passphrase", stub_kdf).is_err());
}

#[test]
fn every_cap_is_refused_before_the_kdf_runs() {
    let good = wrapped_with(&MasterKey([1; 32]), b"p", 2).encode();
    let hostile: [(u32, u32, u32); 7] = [
        (u32::MAX, 1, 1),
        (keyfile::MAX_MEMORY_KIB + 1, 1, 1),
        (MIN_MEMORY_KIB - 1, 1, 1),
        (MIN_MEMORY_KIB, 0, 1),
        (MIN_MEMORY_KIB, u32::MAX, 1),
        (MIN_MEMORY_KIB, 1, 64),
        (keyfile::MAX_MEMORY_KIB, 16, 1),
    ];
    for (m, t, p) in hostile {
        let mut b = good;
        b[12..16].copy_from_slice(&m.to_le_bytes());
        b[16..20].copy_from_slice(&t.to_le_bytes());
        b[20..24].copy_from_slice(&p.to_le_bytes());
        let msg = key_error(unlock_with(&b, b"p", never_kdf));
        assert!(msg.contains("refused KDF parameters"), "{msg}");
    }
    for bad in [&good[..LEN - 1], &[0u8; 4096][..], &[][..]] {
        let msg = key_error(unlock_with(bad, b"p", never_kdf));
        assert!(msg.contains("not a wrapped-key file"), "{msg}");
    }
    // The real KDF refuses them too (a caller that skipped decode).
    let huge = KdfParams {
        memory_kib: u32::MAX,
        passes: 1,
        lanes: 1,
    };
    assert!(kdf::kek(b"p", &[0; 32], huge).is_err());
}

#[test]
fn a_flipped_bit_anywhere_in_the_wrapped_key_fails_the_unlock() {
    let good = wrapped_with(&MasterKey([1; 32]), b"pass", 2).encode();
    for i in 0..LEN {
        let mut b = good;
        b[i] ^= 0x10;
        assert!(unlock_with(&b, b"pass", stub_kdf).is_err(), "byte {i}");
    }
}

#[test]
fn the_key_file_round_trips_and_a_damaged_one_is_refused() {
    let d = MasterKey([9; 32]).derive();
    assert_eq!(files::key_file_round_trip(&d), Ok(d.clone()));
    let bytes = files::key_file_bytes(&d);
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 1;
        assert!(files::decode_key_file_for_test(&b).is_err(), "byte {i}");
    }
    assert!(files::decode_key_file_for_test(&bytes[1..]).is_err());
}

#[test]
fn a_key_file_others_can_reach_or_another_user_owns_is_unsafe() {
    assert_eq!(files::unsafe_key_file(0o100600, 0, 0), None);
    assert_eq!(files::unsafe_key_file(0o100400, 1000, 1000), None);
    for mode in [0o100640, 0o100604, 0o100644, 0o100660, 0o100610] {
        let why = files::unsafe_key_file(mode, 0, 0).expect("refused");
        assert!(why.contains("must be 0600"), "{why}");
    }
    let why = files::unsafe_key_file(0o100600, 1000, 0).expect("refused");
    assert!(why.contains("owned by uid 1000"), "{why}");
}

#[test]
fn passphrase_lines_are_split_and_checked() {
    let parse = passphrase::parse_lines_for_test;
    assert_eq!(parse(b"one\n").unwrap(), vec![b"one".to_vec()]);
    assert_eq!(parse(b"one").unwrap(), vec![b"one".to_vec()]);
    assert_eq!(
        parse(b"old one\nnew one\n").unwrap(),
        vec![b"old one".to_vec(), b"new one".to_vec()]
    );
    assert!(key_error(parse(b"")).contains("is empty"));
    assert!(key_error(parse(b"\n")).contains("is empty"));
    assert!(key_error(parse(b"a\n\nb")).contains("line 2"));
    let long = vec![b'x'; passphrase::MAX_PASSPHRASE_LEN + 1];
    assert!(key_error(parse(&long)).contains("longer than 1024"));
}

#[test]
fn a_descriptor_gives_the_lines_a_command_needs_and_no_other_count() {
    let dir = TempDir::new("fd");
    let f = passphrase_file(&dir, "one", "a good long passphrase\n");
    let p = read_passphrase(fd_of(&f), true).unwrap();
    assert_eq!(p.as_bytes(), b"a good long passphrase");

    let f = passphrase_file(&dir, "two", "first passphrase\nsecond passphrase\n");
    let m = key_error(read_passphrase(fd_of(&f), false));
    assert!(
        m.contains("holds 2 passphrase lines, this command reads 1"),
        "{m}"
    );

    let f = passphrase_file(&dir, "short", "too short\n");
    let m = key_error(read_passphrase(fd_of(&f), true));
    assert!(m.contains("at least 12"), "{m}");
    // An existing passphrase is taken as it is.
    let f = passphrase_file(&dir, "short2", "too short\n");
    assert!(read_passphrase(fd_of(&f), false).is_ok());

    let f = passphrase_file(&dir, "change", "current one\n");
    let mut r = PassphraseReader::new(fd_of(&f));
    r.current("").unwrap();
    let m = key_error(r.new_passphrase(""));
    assert!(m.contains("needs more"), "{m}");

    let f = passphrase_file(&dir, "big", &"x\n".repeat(3000));
    let m = key_error(read_passphrase(fd_of(&f), false));
    assert!(m.contains("more than 4096 bytes"), "{m}");

    let m = key_error(read_passphrase(PassphraseSource::Fd(987_654), false));
    assert!(m.contains("file descriptor 987654"), "{m}");
}

#[test]
fn init_check_change_and_load_work_together() {
    let dir = TempDir::new("flow");
    let meta = dir.0.join("meta");
    assert_eq!(load(&meta).unwrap(), None);
    assert_eq!(wrapped_bytes(&meta).unwrap(), None);
    assert!(key_error(check(&meta, PassphraseSource::Fd(0))).contains("key init"));

    let f = passphrase_file(&dir, "p1", "first passphrase\n");
    init(&meta, fd_of(&f), FAST).unwrap();
    let mode = std::fs::metadata(meta.join(KEY_FILE)).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let keys = load(&meta).unwrap().expect("a key");
    let wrapped = wrapped_bytes(&meta).unwrap().expect("wrapped");
    assert_eq!(unlock(&wrapped, b"first passphrase").unwrap(), keys);

    let f = passphrase_file(&dir, "p2", "first passphrase\n");
    let m = key_error(init(&meta, fd_of(&f), FAST));
    assert!(m.contains("key change"), "{m}");

    let f = passphrase_file(&dir, "p3", "first passphrase\n");
    check(&meta, fd_of(&f)).unwrap();
    let f = passphrase_file(&dir, "p4", "wrong passphrase\n");
    assert!(key_error(check(&meta, fd_of(&f))).contains("does not unlock"));

    let f = passphrase_file(&dir, "p5", "first passphrase\nsecond passphrase\n");
    change(&meta, fd_of(&f), FAST).unwrap();
    assert_eq!(load(&meta).unwrap().as_ref(), Some(&keys));
    let rewrapped = wrapped_bytes(&meta).unwrap().expect("wrapped");
    assert_ne!(rewrapped, wrapped);
    assert_eq!(unlock(&rewrapped, b"second passphrase").unwrap(), keys);
    assert!(unlock(&rewrapped, b"first passphrase").is_err());

    // A missing key file is reported, and `check` writes it again.
    std::fs::remove_file(meta.join(KEY_FILE)).unwrap();
    assert!(key_error(load(&meta)).contains("key check"));
    let f = passphrase_file(&dir, "p6", "second passphrase\n");
    check(&meta, fd_of(&f)).unwrap();
    assert_eq!(load(&meta).unwrap(), Some(keys));

    // No temporary files are left behind.
    let mut names: Vec<String> = std::fs::read_dir(&meta)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec![KEY_FILE.to_owned(), WRAPPED_FILE.to_owned()]);
}

#[test]
fn load_refuses_unsafe_damaged_or_mismatched_key_files() {
    let dir = TempDir::new("load");
    let meta = &dir.0;
    let master = MasterKey([1; 32]);
    files::write_wrapped(meta, &wrapped_with(&master, b"p", 2)).unwrap();
    files::write_key_file(meta, &master.derive()).unwrap();
    assert!(load(meta).unwrap().is_some());

    let key = meta.join(KEY_FILE);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let m = key_error(load(meta));
    assert!(m.contains("0640") && m.contains("must be 0600"), "{m}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

    files::write_key_file(meta, &MasterKey([2; 32]).derive()).unwrap();
    assert!(key_error(load(meta)).contains("belong to different keys"));

    std::fs::write(&key, b"short").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(key_error(load(meta)).contains("exactly 116"));

    std::fs::remove_file(&key).unwrap();
    std::os::unix::fs::symlink(meta.join(WRAPPED_FILE), &key).unwrap();
    assert!(key_error(load(meta)).contains("not a regular file"));
    std::fs::remove_file(&key).unwrap();

    files::write_key_file(meta, &master.derive()).unwrap();
    std::fs::remove_file(meta.join(WRAPPED_FILE)).unwrap();
    assert!(key_error(load(meta)).contains("is missing"));
    assert_eq!(wrapped_bytes(meta).unwrap(), None);

    std::fs::write(meta.join(WRAPPED_FILE), [0u8; LEN]).unwrap();
    assert!(key_error(wrapped_bytes(meta)).contains("wrong magic"));
}

#[test]
fn keys_debug_shows_only_the_key_id() {
    let keys = Keys::from(&MasterKey([3; 32]).derive());
    let text = format!("{keys:?}");
    assert_eq!(text, format!("Keys {{ key_id: {} }}", keys.key_id));
}
