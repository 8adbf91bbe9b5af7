//! Real OpenZFS send streams (recorded in the test VM by tests/vm/cases/06-golden-streams.sh,
//! kept in protocol/tests/golden/zfs-<version>/) through the stream tap and the manifest code:
//! the checks of `qzb_protocol::manifest::golden` (also `cargo xtask golden-check <dir>`), and
//! what the real streams taught us (docs/ARCHITECTURE.md), pinned.

use qzb_protocol::manifest::golden;
use qzb_protocol::zstream::{Begin, Free, Object, Sink, Tap, Write};
use std::path::{Path, PathBuf};

fn golden_dirs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("protocol/tests/golden")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.join("index.txt").is_file())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no golden stream directory");
    dirs
}

/// The 2.1.11 recording (the one the record-level tests below describe).
fn dir_2_1() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/zfs-2.1.11")
}

/// `check_dir` on `dir`, with `alter` applied to the bytes of the file it names.
fn check_altered(
    dir: &Path,
    file: &str,
    alter: impl Fn(&mut Vec<u8>),
) -> Result<Vec<golden::ChainReport>, String> {
    let mut read = |name: &str| {
        let mut bytes = std::fs::read(dir.join(name))?;
        if name == file {
            alter(&mut bytes);
        }
        Ok(bytes)
    };
    golden::check_dir(&mut read)
}

#[test]
fn real_streams_match_their_volumes_and_their_manifests_pass_the_read_back_check() {
    for dir in golden_dirs() {
        let reports =
            check_altered(&dir, "", |_| {}).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let index = std::fs::read_to_string(dir.join("index.txt")).unwrap();
        let chains = golden::parse_index(&index).unwrap().chains.len();
        assert_eq!(reports.len(), chains, "{}", dir.display());
        // Both resumed chains resumed inside object 1's data, not at its start.
        let resumed: Vec<_> = reports.iter().filter_map(|r| r.resumed_at).collect();
        assert_eq!(resumed.len(), 2, "{}", dir.display());
        assert!(resumed
            .iter()
            .all(|&(object, offset)| object == 1 && offset > 0));
    }
}

#[test]
fn a_block_hash_that_does_not_match_the_stream_fails_the_image_check() {
    let err = check_altered(&dir_2_1(), "off-s2.blocks", |b| {
        // The first hex digit of block 1's line (block 1 is overwritten in @s2).
        let at = b.iter().position(|&c| c == b'\n').unwrap() + 1;
        b[at] = if b[at] == b'0' { b'1' } else { b'0' };
    })
    .unwrap_err();
    assert!(
        err.contains("chain off-i") && err.contains("block 1 "),
        "{err}"
    );
}

#[test]
fn a_flipped_byte_in_a_real_stream_fails_its_checksum() {
    let err = check_altered(&dir_2_1(), "off-full-s1.zstream", |b| {
        let mid = b.len() / 2;
        b[mid] ^= 0x40;
    })
    .unwrap_err();
    assert!(
        err.contains("chain off-full") && err.contains("checksum"),
        "{err}"
    );
}

#[test]
fn a_resume_at_another_offset_than_the_token_gives_another_manifest() {
    // The token of the resumed full stream, re-encoded with the offset one block earlier: the
    // partial body is cut there (its FREE of blocks 3-4 shortened to end at block 4), the resumed
    // stream still starts at block 5, so block 4 is in no entry and the manifest no longer
    // equals the uninterrupted stream's.
    let dir = dir_2_1();
    let err = check_altered(&dir, "off-resume-full.token", |b| {
        let text = String::from_utf8(b.clone()).unwrap();
        let mut token = qzb_protocol::decode_resume_token(text.trim()).unwrap();
        token.offset -= 16384;
        *b = qzb_protocol::encode_resume_token(&token).into_bytes();
    })
    .unwrap_err();
    assert!(
        err.contains("chain off-resume-full") && err.contains("differs from chain off-full"),
        "{err}"
    );
}

/// The records of object 1 in stream order, as `(kind, offset, length)`; kind: `O` OBJECT,
/// `W` WRITE of data, `Z` WRITE of zeros, `F` FREE; and the sub-stream BEGINs' feature flags.
#[derive(Default)]
struct Object1 {
    records: Vec<(char, u64, u64)>,
    begins: Vec<u64>,
}

impl Sink for Object1 {
    fn on_begin(&mut self, b: &Begin<'_>) {
        if b.objset_type == 3 {
            self.begins.push(b.featureflags);
        }
    }
    fn on_object(&mut self, o: &Object<'_>) {
        if o.object == 1 {
            assert_eq!(
                (o.maxblkid, o.nlevels),
                (0, 0),
                "only raw streams fill these"
            );
            self.records.push(('O', 0, u64::from(o.blksz)));
        }
    }
    fn on_write(&mut self, w: &Write<'_>) {
        if w.object == 1 {
            let kind = if w.payload.iter().all(|&b| b == 0) {
                'Z'
            } else {
                'W'
            };
            self.records.push((kind, w.offset, w.logical_size));
        }
    }
    fn on_free(&mut self, f: &Free) {
        if f.object == 1 {
            self.records.push(('F', f.offset, f.length));
        }
    }
}

fn object1(file: &str, complete: bool) -> Object1 {
    let bytes = std::fs::read(dir_2_1().join(file)).unwrap();
    let mut tap = Tap::new(Object1::default());
    tap.feed(&bytes).unwrap();
    if complete {
        tap.finish().unwrap();
    }
    tap.into_sink()
}

const BS: u64 = 16384;

#[test]
fn real_full_streams_free_every_hole_and_free_to_the_end_right_after_the_object_record() {
    for c in ["off", "lz4"] {
        let r = object1(&format!("{c}-full-s1.zstream"), true).records;
        // OBJECT, then FREE from past the last written block (40) to u64::MAX, then the data.
        assert_eq!(r[0], ('O', 0, BS));
        assert_eq!(r[1], ('F', 41 * BS, u64::MAX));
        // Never-written blocks 3-4 come as a FREE in offset order between the data.
        assert!(r.contains(&('F', 3 * BS, 2 * BS)), "{c}: {r:?}");
        let offsets: Vec<u64> = r[2..].iter().map(|x| x.1).collect();
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "{c}: in offset order"
        );
        // Block 12 was written with zeros: compression=off sends a WRITE of zeros, lz4 a hole.
        let zero_write = r.contains(&('Z', 12 * BS, BS));
        assert_eq!(zero_write, c == "off", "{c}: {r:?}");
    }
}

#[test]
fn real_trim_and_incremental_holes_come_as_free_ranges_wider_than_what_changed() {
    // @s2 trimmed blocks 8-12 (blkdiscard); the incremental frees 6-19: the never-written or
    // already-free neighbours are sent again.
    let r = object1("off-i-s1-s2.zstream", true).records;
    assert!(r.contains(&('F', 6 * BS, 14 * BS)), "{r:?}");
    // Each incremental sub-stream starts like a full one: OBJECT, then the FREE to the end.
    let i = object1("off-I-s1-s3.zstream", true).records;
    let objects: Vec<usize> = (0..i.len()).filter(|&k| i[k].0 == 'O').collect();
    assert_eq!(objects.len(), 2);
    assert_eq!(i[objects[0] + 1], ('F', 41 * BS, u64::MAX));
    // After growing to 2 MiB with the last block written, the FREE to the end starts at volsize.
    assert_eq!(i[objects[1] + 1], ('F', 128 * BS, u64::MAX));
}

#[test]
fn a_real_resumed_stream_resends_the_object_record_and_the_tail_then_data_from_the_token_offset() {
    let token = std::fs::read_to_string(dir_2_1().join("off-resume-full.token")).unwrap();
    let token = qzb_protocol::decode_resume_token(token.trim()).unwrap();
    let resumed = object1("off-resume-full-resumed.zstream", true);
    assert_eq!(
        resumed.begins,
        vec![qzb_protocol::zstream::feature::RESUMING]
    );
    let r = &resumed.records;
    assert_eq!(r[0], ('O', 0, BS));
    assert_eq!(r[1], ('F', 41 * BS, u64::MAX));
    assert_eq!(
        r[2],
        ('W', token.offset, BS),
        "the block at the token's offset is sent again"
    );
    // The cut prefix held that block too: the token names the last WRITE the receiver applied.
    let prefix = object1("off-resume-full-prefix.zstream", false).records;
    assert!(prefix.contains(&('W', token.offset, BS)));
}
