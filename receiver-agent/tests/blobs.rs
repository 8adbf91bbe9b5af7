//! Blobs and read-back through the agent's `serve`, in memory: pre-built driver bytes, the
//! in-memory ZFS, real files for the blobs (in a per-test temporary directory), and read-back
//! streams in the real OpenZFS record format (`zstream::writer::StreamWriter`).

use std::io::Cursor;
use std::path::PathBuf;
use std::time::Duration;

use qzb_protocol::manifest::{OBJECT_TYPE_ZVOL, OBJSET_TYPE_ZVOL};
use qzb_protocol::zstream::writer::StreamWriter;
use qzb_protocol::zstream::{feature, Begin, Free, HeaderType, Object, Write as WriteRecord};
use qzb_protocol::*;
use receiver_agent::memory::MemoryZfs;
use receiver_agent::{serve, Config};

const ROOT: &str = "bpool/qzb";
const META: &str = "bpool/qzb/.qzb-meta";
const VOL: &str = "bpool/qzb/host/vm-work/private";
const SNAP: &str = "bpool/qzb/host/vm-work/private@s1";
const BS: u64 = 4096;

fn ds(s: &str) -> DatasetName {
    DatasetName::parse(s).unwrap()
}

fn blob(s: &str) -> BlobName {
    BlobName::parse(s).unwrap()
}

/// A test's own directory (removed on drop) and the agent's config pointing into it.
struct Env {
    dir: PathBuf,
    config: Config,
    zfs: MemoryZfs,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Env {
    fn new(test: &str) -> Env {
        let dir =
            std::env::temp_dir().join(format!("qzb-agent-blobs-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let zfs = MemoryZfs::new();
        zfs.add_dataset("bpool", DatasetKind::Filesystem, 1);
        zfs.add_dataset(ROOT, DatasetKind::Filesystem, 2);
        zfs.add_dataset(VOL, DatasetKind::Volume, 3);
        zfs.add_snapshot(VOL, "s1", 77);
        let config = Config {
            lock_path: dir.join("receive.lock"),
            lock_wait: Duration::ZERO,
            properties_on_resume: true,
            meta_base: Some(dir.join("meta")),
        };
        Env { dir, config, zfs }
    }

    /// Where the blobs of ROOT live.
    fn blob_dir(&self) -> PathBuf {
        self.dir.join("meta").join(META)
    }

    /// Runs one session over `wire` (after the driver's hello), returning what the agent said
    /// after its hello and whether the session ended cleanly.
    fn run(&self, wire: &[u8]) -> (Vec<Said>, Result<(), String>) {
        let mut input = Vec::new();
        send_hello(&mut input, Role::Driver).unwrap();
        input.extend_from_slice(wire);
        let mut out = Vec::new();
        let result =
            serve(&self.config, &self.zfs, Cursor::new(input), &mut out).map_err(|e| e.to_string());
        (parse_output(&out), result)
    }
}

/// One frame from the agent, decoded.
#[derive(Debug, PartialEq)]
enum Said {
    Reply(Reply),
    Data(Vec<u8>),
    End(EndFrame),
    Block(u64, Vec<u8>),
}

fn parse_output(out: &[u8]) -> Vec<Said> {
    let mut r = Cursor::new(out);
    let mut buf = Vec::new();
    assert_eq!(
        read_frame(&mut r, &mut buf).unwrap(),
        Some(FrameKind::Hello)
    );
    let mut said = Vec::new();
    let mut verifier = StreamVerifier::new();
    while let Some(kind) = read_frame(&mut r, &mut buf).unwrap() {
        said.push(match kind {
            FrameKind::Reply => Said::Reply(decode_reply(&buf).unwrap()),
            FrameKind::Data => Said::Data(verifier.verify_data(&buf).unwrap().to_vec()),
            FrameKind::End => {
                let end = verifier.verify_end(&buf).unwrap();
                verifier = StreamVerifier::new();
                Said::End(end)
            }
            FrameKind::Block => {
                let (offset, data) = parse_block_frame(&buf).unwrap();
                Said::Block(offset, data.to_vec())
            }
            other => panic!("agent sent a {other:?} frame"),
        });
    }
    said
}

fn request(wire: &mut Vec<u8>, r: Request) {
    write_request(wire, &r).unwrap();
}

fn put(name: &str, len: u64) -> Request {
    Request::PutBlob(PutBlobRequest {
        root: ds(ROOT),
        name: blob(name),
        len,
    })
}

fn get(name: &str, max_len: u64) -> Request {
    Request::GetBlob(GetBlobRequest {
        root: ds(ROOT),
        name: blob(name),
        max_len,
    })
}

fn list(prefix: Option<&str>) -> Request {
    Request::ListBlobs(ListBlobsRequest {
        root: ds(ROOT),
        prefix: prefix.map(blob),
    })
}

/// Frames `data` in `piece`-byte data frames plus the end frame.
fn frames(wire: &mut Vec<u8>, data: &[u8], piece: usize) {
    let mut framer = StreamFramer::new();
    for chunk in data.chunks(piece.max(1)) {
        framer.write_data(wire, chunk).unwrap();
    }
    framer.finish(wire).unwrap();
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}

fn error_class(said: &Said) -> ErrorClass {
    match said {
        Said::Reply(Reply::Error(e)) => e.class,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

fn error_message(said: &Said) -> String {
    match said {
        Said::Reply(Reply::Error(e)) => e.message.clone(),
        other => panic!("expected an error reply, got {other:?}"),
    }
}

fn data_of(said: &[Said]) -> Vec<u8> {
    said.iter()
        .filter_map(|s| match s {
            Said::Data(d) => Some(d.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

#[test]
fn blobs_round_trip_and_are_listed_sorted() {
    let env = Env::new("round-trip");
    let big = pattern(3 << 20, 1);
    let small = b"set index".to_vec();
    let mut wire = Vec::new();
    request(&mut wire, list(None));
    request(&mut wire, put("manifests/vm/000002", big.len() as u64));
    frames(&mut wire, &big, 700_000);
    request(&mut wire, put("sets/1", small.len() as u64));
    frames(&mut wire, &small, 4);
    request(&mut wire, put("manifests/vm/000001", 0));
    frames(&mut wire, &[], 1);
    request(&mut wire, get("manifests/vm/000002", MAX_BLOB_LEN));
    request(&mut wire, list(None));
    request(&mut wire, list(Some("manifests")));
    request(&mut wire, list(Some("nothing")));
    let (said, result) = env.run(&wire);
    result.unwrap();

    assert_eq!(said[0], Said::Reply(Reply::Blobs(vec![])));
    assert_eq!(said[1], Said::Reply(Reply::BlobReady));
    assert_eq!(
        said[2],
        Said::Reply(Reply::BlobStored {
            name: blob("manifests/vm/000002"),
            len: big.len() as u64
        })
    );
    assert_eq!(
        said[7],
        Said::Reply(Reply::Blob {
            len: big.len() as u64
        })
    );
    let get_end = said.iter().position(|s| matches!(s, Said::End(_))).unwrap();
    assert_eq!(data_of(&said[8..get_end]), big);
    let info = |name: &str, len: usize| BlobInfo {
        name: blob(name),
        len: len as u64,
    };
    assert_eq!(
        said[get_end + 1],
        Said::Reply(Reply::Blobs(vec![
            info("manifests/vm/000001", 0),
            info("manifests/vm/000002", big.len()),
            info("sets/1", small.len()),
        ]))
    );
    assert_eq!(
        said[get_end + 2],
        Said::Reply(Reply::Blobs(vec![
            info("manifests/vm/000001", 0),
            info("manifests/vm/000002", big.len()),
        ]))
    );
    assert_eq!(said[get_end + 3], Said::Reply(Reply::Blobs(vec![])));
    // The metadata filesystem was made at the agent's own mountpoint, and holds the files.
    let log = env.zfs.state().log.clone();
    let mountpoint = env.blob_dir();
    assert!(
        log.contains(&format!("create-meta {META} {}", mountpoint.display())),
        "{log:?}"
    );
    assert_eq!(std::fs::read(mountpoint.join("sets/1")).unwrap(), small);
}

#[test]
fn a_blob_is_replaced_whole_and_no_temporary_file_is_left() {
    let env = Env::new("replace");
    let mut wire = Vec::new();
    request(&mut wire, put("sets/1", 3));
    frames(&mut wire, b"old", 3);
    request(&mut wire, put("sets/1", 5));
    frames(&mut wire, b"newer", 2);
    let (said, result) = env.run(&wire);
    result.unwrap();
    assert!(matches!(
        said.last(),
        Some(Said::Reply(Reply::BlobStored { len: 5, .. }))
    ));
    let dir = env.blob_dir().join("sets");
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["1"]);
    assert_eq!(std::fs::read(dir.join("1")).unwrap(), b"newer");
}

#[test]
fn a_blob_longer_than_announced_is_refused_and_the_old_one_kept() {
    let env = Env::new("too-long");
    let mut wire = Vec::new();
    request(&mut wire, put("sets/1", 3));
    frames(&mut wire, b"old", 3);
    request(&mut wire, put("sets/1", 4));
    frames(&mut wire, b"longer", 3);
    let (said, result) = env.run(&wire);
    assert_eq!(error_class(said.last().unwrap()), ErrorClass::StreamCorrupt);
    assert!(error_message(said.last().unwrap()).contains("more than the announced 4 bytes"));
    assert!(result.unwrap_err().contains("storing a blob failed"));
    let dir = env.blob_dir().join("sets");
    assert_eq!(std::fs::read(dir.join("1")).unwrap(), b"old");
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        1,
        "temporary file left"
    );
}

#[test]
fn a_blob_shorter_than_announced_or_cut_off_is_not_stored() {
    let env = Env::new("too-short");
    let mut wire = Vec::new();
    request(&mut wire, put("a", 10));
    frames(&mut wire, b"short", 5);
    let (said, result) = env.run(&wire);
    assert!(error_message(said.last().unwrap()).contains("5 bytes arrived, 10 were announced"));
    assert!(result.is_err());
    assert!(!env.blob_dir().join("a").exists());

    let mut wire = Vec::new();
    request(&mut wire, put("a", 10));
    StreamFramer::new().write_data(&mut wire, b"12345").unwrap();
    let (said, _) = env.run(&wire);
    assert_eq!(
        error_class(said.last().unwrap()),
        ErrorClass::StreamInterrupted
    );
    assert!(!env.blob_dir().join("a").exists());
}

#[test]
fn a_corrupted_blob_frame_is_refused() {
    let env = Env::new("corrupt");
    let mut wire = Vec::new();
    request(&mut wire, put("a", 100));
    let at = wire.len() + 8 + 48 + 10;
    frames(&mut wire, &pattern(100, 3), 100);
    wire[at] ^= 1;
    let (said, _) = env.run(&wire);
    assert_eq!(error_class(said.last().unwrap()), ErrorClass::StreamCorrupt);
    assert!(!env.blob_dir().join("a").exists());
}

#[test]
fn get_blob_refuses_missing_and_too_large_blobs_before_any_data() {
    let env = Env::new("get-refusals");
    let mut wire = Vec::new();
    request(&mut wire, get("sets/1", 10));
    request(&mut wire, put("sets/1", 5));
    frames(&mut wire, b"12345", 5);
    request(&mut wire, get("sets/1", 4));
    request(&mut wire, get("sets/2", 10));
    request(&mut wire, get("sets/1/x", 10));
    request(&mut wire, get("sets/1", 5));
    let (said, result) = env.run(&wire);
    result.unwrap();
    assert_eq!(error_class(&said[0]), ErrorClass::NotFound);
    assert_eq!(error_class(&said[3]), ErrorClass::TooLarge);
    assert_eq!(error_class(&said[4]), ErrorClass::NotFound);
    assert_ne!(said[5], Said::Reply(Reply::Blob { len: 5 }));
    assert_eq!(said[6], Said::Reply(Reply::Blob { len: 5 }));
    assert_eq!(said[7], Said::Data(b"12345".to_vec()));
    assert!(matches!(said[8], Said::End(EndFrame { total_len: 5, .. })));
}

#[test]
fn symlinks_in_the_blob_directory_are_never_followed() {
    let env = Env::new("symlinks");
    let mut wire = Vec::new();
    request(&mut wire, put("x", 1));
    frames(&mut wire, b"x", 1);
    env.run(&wire).1.unwrap();
    let outside = env.dir.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"secret").unwrap();
    std::os::unix::fs::symlink(outside.join("secret"), env.blob_dir().join("link")).unwrap();
    std::os::unix::fs::symlink(&outside, env.blob_dir().join("dir")).unwrap();

    let mut wire = Vec::new();
    request(&mut wire, get("link", 100));
    request(&mut wire, get("dir/secret", 100));
    request(&mut wire, put("dir/new", 1));
    request(&mut wire, list(None));
    request(&mut wire, put("link", 3));
    frames(&mut wire, b"new", 3);
    let (said, result) = env.run(&wire);
    result.unwrap();
    assert_ne!(said[0], Said::Reply(Reply::Blob { len: 6 }));
    assert!(matches!(said[0], Said::Reply(Reply::Error(_))));
    assert!(matches!(said[1], Said::Reply(Reply::Error(_))));
    assert_eq!(error_class(&said[2]), ErrorClass::InvalidRequest);
    assert_eq!(
        said[3],
        Said::Reply(Reply::Blobs(vec![BlobInfo {
            name: blob("x"),
            len: 1
        }]))
    );
    assert!(matches!(
        said.last(),
        Some(Said::Reply(Reply::BlobStored { .. }))
    ));
    // The link itself was replaced; what it pointed to is untouched.
    assert_eq!(std::fs::read(outside.join("secret")).unwrap(), b"secret");
    assert!(!outside.join("new").exists());
    assert_eq!(std::fs::read(env.blob_dir().join("link")).unwrap(), b"new");
}

#[test]
fn blobs_are_refused_when_the_metadata_filesystem_is_mounted_elsewhere() {
    let env = Env::new("elsewhere");
    let mut wire = Vec::new();
    request(&mut wire, put("x", 1));
    frames(&mut wire, b"x", 1);
    env.run(&wire).1.unwrap();
    env.zfs
        .state()
        .mounts
        .insert(META.into(), ("/etc".into(), true));
    let mut wire = Vec::new();
    request(&mut wire, get("x", 1));
    let (said, _) = env.run(&wire);
    assert!(
        error_message(&said[0]).contains("has mountpoint '/etc'"),
        "{said:?}"
    );
}

#[test]
fn blobs_of_a_pool_imported_with_an_altroot_live_under_the_altroot() {
    let env = Env::new("altroot");
    let altroot = env.dir.join("altroot");
    env.zfs.state().altroot = Some(altroot.to_str().unwrap().to_owned());
    let mut wire = Vec::new();
    request(&mut wire, put("sets/1", 3));
    frames(&mut wire, b"abc", 3);
    request(&mut wire, get("sets/1", 3));
    let (said, result) = env.run(&wire);
    result.unwrap();
    assert_eq!(said[0], Said::Reply(Reply::BlobReady));
    assert!(
        matches!(&said[1], Said::Reply(Reply::BlobStored { len: 3, .. })),
        "{said:?}"
    );
    assert_eq!(said[2], Said::Reply(Reply::Blob { len: 3 }));
    assert_eq!(said[3], Said::Data(b"abc".to_vec()));
    let under_altroot = PathBuf::from(format!("{}{}", altroot.display(), env.blob_dir().display()));
    assert_eq!(std::fs::read(under_altroot.join("sets/1")).unwrap(), b"abc");
    assert!(
        !env.blob_dir().exists(),
        "nothing written outside the altroot"
    );
}

#[test]
fn an_unmounted_metadata_filesystem_is_mounted_before_use() {
    let env = Env::new("unmounted");
    let mut wire = Vec::new();
    request(&mut wire, put("x", 1));
    frames(&mut wire, b"x", 1);
    env.run(&wire).1.unwrap();
    env.zfs.state().mounts.get_mut(META).unwrap().1 = false;
    let mut wire = Vec::new();
    request(&mut wire, list(None));
    let (said, _) = env.run(&wire);
    assert!(matches!(&said[0], Said::Reply(Reply::Blobs(b)) if b.len() == 1));
    assert!(env.zfs.state().log.contains(&format!("mount {META}")));
}

#[test]
fn blob_requests_are_refused_without_blob_storage_or_root() {
    let mut env = Env::new("no-storage");
    env.config.meta_base = None;
    let mut wire = Vec::new();
    request(&mut wire, put("x", 1));
    request(&mut wire, list(None));
    let (said, result) = env.run(&wire);
    result.unwrap();
    assert_eq!(error_class(&said[0]), ErrorClass::Internal);
    assert_eq!(error_class(&said[1]), ErrorClass::Internal);

    let env = Env::new("no-root");
    env.zfs.state().datasets.remove(ROOT);
    let mut wire = Vec::new();
    request(&mut wire, put("x", 1));
    let (said, _) = env.run(&wire);
    assert_eq!(error_class(&said[0]), ErrorClass::NotFound);
}

// ------------------------------------------------------------------ read-back

fn zvol_begin(w: &mut StreamWriter, objset_type: u32, features: u64, fromguid: u64) {
    w.begin(&Begin {
        header_type: HeaderType::Substream,
        featureflags: features,
        creation_time: 1_700_000_000,
        objset_type,
        flags: 0,
        toguid: 77,
        fromguid,
        toname: SNAP.as_bytes(),
        payload: &[],
    });
}

fn object(w: &mut StreamWriter, object: u64, object_type: u32, blksz: u32) {
    w.object(&Object {
        object,
        object_type,
        bonus_type: 0,
        blksz,
        bonuslen: 0,
        checksum_type: 0,
        compress: 0,
        dn_slots: 1,
        flags: 0,
        raw_bonuslen: 0,
        indblkshift: 17,
        nlevels: 2,
        nblkptr: 1,
        maxblkid: 9,
        bonus: &[],
    });
}

fn write(w: &mut StreamWriter, obj: u64, offset: u64, data: &[u8], compression: u8) {
    w.write(&WriteRecord {
        object: obj,
        object_type: OBJECT_TYPE_ZVOL,
        offset,
        logical_size: data.len() as u64,
        checksum_type: 7,
        flags: 0,
        compression,
        compressed_size: if compression != 0 {
            data.len() as u64
        } else {
            0
        },
        payload: data,
    });
}

/// A zvol's full stream: object 1 with a tail FREE, a WRITE of three blocks (the middle one
/// all zeros) at block 1, a WRITE at block 6, then object 2 (the ZAP) and the END.
fn zvol_stream() -> (Vec<u8>, Vec<(u64, Vec<u8>)>) {
    let b1 = pattern(BS as usize, 1);
    let b3 = pattern(BS as usize, 3);
    let b6 = pattern(BS as usize, 6);
    let mut w = StreamWriter::new();
    zvol_begin(&mut w, OBJSET_TYPE_ZVOL, feature::LARGE_BLOCKS, 0);
    object(&mut w, 1, OBJECT_TYPE_ZVOL, BS as u32);
    w.free(&Free {
        object: 1,
        offset: 10 * BS,
        length: u64::MAX,
    });
    let mut three = b1.clone();
    three.extend_from_slice(&vec![0; BS as usize]);
    three.extend_from_slice(&b3);
    write(&mut w, 1, BS, &three, 0);
    write(&mut w, 1, 6 * BS, &b6, 0);
    object(&mut w, 2, 50, 512);
    write(&mut w, 2, 0, &pattern(512, 9), 0);
    w.end(77);
    (w.into_bytes(), vec![(BS, b1), (3 * BS, b3), (6 * BS, b6)])
}

fn read_back(volblocksize: u64) -> Request {
    Request::ReadBack(ReadBackRequest {
        root: ds(ROOT),
        snapshot: SnapshotName::parse(SNAP).unwrap(),
        volblocksize,
    })
}

fn inventory() -> Request {
    Request::Inventory(InventoryRequest { root: ds(ROOT) })
}

#[test]
fn read_back_sends_the_non_zero_blocks_of_object_1_in_order() {
    let env = Env::new("read-back");
    let (stream, blocks) = zvol_stream();
    env.zfs.state().send_streams.insert(SNAP.into(), stream);
    let mut wire = Vec::new();
    request(&mut wire, read_back(BS));
    request(&mut wire, inventory());
    let (said, result) = env.run(&wire);
    result.unwrap();
    assert_eq!(said[0], Said::Reply(Reply::ReadBackReady));
    let got: Vec<(u64, Vec<u8>)> = said[1..4]
        .iter()
        .map(|s| match s {
            Said::Block(o, d) => (*o, d.clone()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(got, blocks);
    assert_eq!(
        said[4],
        Said::Reply(Reply::ReadBackDone {
            blocks: 3,
            bytes: 3 * BS
        })
    );
    // The session goes on after a read-back.
    assert!(matches!(said[5], Said::Reply(Reply::Inventory(_))));
    assert!(env.zfs.state().log.contains(&format!("send -L {SNAP}")));
}

/// Runs a read-back of `stream` (then an inventory) and returns the reply that ended it.
fn read_back_refusal(test: &str, stream: Vec<u8>, volblocksize: u64) -> (ErrorClass, String) {
    let env = Env::new(test);
    env.zfs.state().send_streams.insert(SNAP.into(), stream);
    let mut wire = Vec::new();
    request(&mut wire, read_back(volblocksize));
    request(&mut wire, inventory());
    let (said, result) = env.run(&wire);
    result.unwrap();
    assert_eq!(said[0], Said::Reply(Reply::ReadBackReady));
    assert!(
        matches!(said.last(), Some(Said::Reply(Reply::Inventory(_)))),
        "session not usable after the refusal: {said:?}"
    );
    let end = &said[said.len() - 2];
    (error_class(end), error_message(end))
}

#[test]
fn read_back_refuses_a_volume_with_another_block_size() {
    let (stream, _) = zvol_stream();
    let (class, message) = read_back_refusal("other-bs", stream, 2 * BS);
    assert_eq!(class, ErrorClass::ReadBackRefused);
    assert!(
        message.contains("block size is 4096, not the 8192"),
        "{message}"
    );
}

/// Writes the records of a stream before its END.
type Build = Box<dyn Fn(&mut StreamWriter)>;

#[test]
fn read_back_refuses_streams_that_are_not_a_plain_full_zvol_stream() {
    let cases: Vec<(&str, Build, &str)> = vec![
        (
            "filesystem",
            Box::new(|w| {
                zvol_begin(w, 2, 0, 0);
                object(w, 1, OBJECT_TYPE_ZVOL, BS as u32);
            }),
            "not a zvol's stream",
        ),
        (
            "incremental",
            Box::new(|w| {
                zvol_begin(w, OBJSET_TYPE_ZVOL, 0, 5);
                object(w, 1, OBJECT_TYPE_ZVOL, BS as u32);
            }),
            "not a full stream",
        ),
        (
            "raw",
            Box::new(|w| {
                zvol_begin(w, OBJSET_TYPE_ZVOL, feature::RAW, 0);
                object(w, 1, OBJECT_TYPE_ZVOL, BS as u32);
            }),
            "raw",
        ),
        (
            "object-type",
            Box::new(|w| {
                zvol_begin(w, OBJSET_TYPE_ZVOL, 0, 0);
                object(w, 1, 19, BS as u32);
            }),
            "object 1 has type 19",
        ),
        (
            "compressed",
            Box::new(|w| {
                zvol_begin(w, OBJSET_TYPE_ZVOL, 0, 0);
                object(w, 1, OBJECT_TYPE_ZVOL, BS as u32);
                write(w, 1, 0, &pattern(BS as usize, 1), 1);
            }),
            "compressed WRITE",
        ),
        (
            "out-of-order",
            Box::new(|w| {
                zvol_begin(w, OBJSET_TYPE_ZVOL, 0, 0);
                object(w, 1, OBJECT_TYPE_ZVOL, BS as u32);
                write(w, 1, 2 * BS, &pattern(BS as usize, 1), 0);
                write(w, 1, BS, &pattern(BS as usize, 2), 0);
            }),
            "out of order",
        ),
        (
            "misaligned",
            Box::new(|w| {
                zvol_begin(w, OBJSET_TYPE_ZVOL, 0, 0);
                object(w, 1, OBJECT_TYPE_ZVOL, BS as u32);
                write(w, 1, 512, &pattern(BS as usize, 1), 0);
            }),
            "not whole 4096-byte blocks",
        ),
        (
            "no-object-1",
            Box::new(|w| {
                zvol_begin(w, OBJSET_TYPE_ZVOL, 0, 0);
                object(w, 2, 50, 512);
            }),
            "no zvol data object",
        ),
    ];
    for (name, build, want) in cases {
        let mut w = StreamWriter::new();
        build(&mut w);
        w.end(77);
        let (class, message) = read_back_refusal(name, w.into_bytes(), BS);
        assert_eq!(class, ErrorClass::ReadBackRefused, "{name}: {message}");
        assert!(message.contains(want), "{name}: {message}");
    }
}

#[test]
fn read_back_refuses_a_stream_failing_its_checksums_or_cut_short() {
    let (mut stream, _) = zvol_stream();
    let flip = stream.len() - 400;
    stream[flip] ^= 1;
    let (class, message) = read_back_refusal("checksum", stream, BS);
    assert_eq!(class, ErrorClass::ReadBackRefused);
    assert!(message.contains("unusable"), "{message}");

    let (stream, _) = zvol_stream();
    let cut = stream[..stream.len() - 100].to_vec();
    let (class, _) = read_back_refusal("cut", cut, BS);
    assert_eq!(class, ErrorClass::ReadBackRefused);
}

#[test]
fn read_back_reports_a_failing_zfs_send_and_a_missing_snapshot() {
    let env = Env::new("send-fails");
    let (stream, _) = zvol_stream();
    env.zfs.state().send_streams.insert(SNAP.into(), stream);
    env.zfs.state().fail_next_send = Some("warning: cannot send: I/O error\n".into());
    let mut wire = Vec::new();
    request(&mut wire, read_back(BS));
    request(
        &mut wire,
        Request::ReadBack(ReadBackRequest {
            root: ds(ROOT),
            snapshot: SnapshotName::parse("bpool/qzb/host/vm-work/private@gone").unwrap(),
            volblocksize: BS,
        }),
    );
    let (said, result) = env.run(&wire);
    result.unwrap();
    let done = said
        .iter()
        .position(|s| matches!(s, Said::Reply(Reply::Error(_))))
        .unwrap();
    assert!(error_message(&said[done]).contains("I/O error"), "{said:?}");
    assert_eq!(error_class(&said[done + 1]), ErrorClass::NotFound);
}
