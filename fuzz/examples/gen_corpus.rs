//! Writes the binary seed corpora (valid frames, messages, streams and agent sessions) under
//! `fuzz/corpus/<target>/gen-*`, and checks each agent seed reaches the reply it is meant to.
//!
//! Run from the repository root: `cargo run --manifest-path fuzz/Cargo.toml --example gen_corpus`
//! (text seeds — configs, `zfs list` output, tokens — are plain files copied from the tests and
//! recorded outputs; see docs/fuzzing.md).
#![forbid(unsafe_code)]

use std::fs;
use std::io::Cursor;
use std::path::PathBuf;

use qzb_fuzz::agent::{memory_zfs, partial_token, run_agent, PARTIAL_TOGUID, ROOT};
use qzb_fuzz::frame;
use qzb_protocol::{
    decode_reply, encode_reply, encode_request, read_frame, AbortRequest, BlobInfo, BlobName,
    DatasetKind, DatasetName, ErrorClass, ErrorReply, FrameKind, GetBlobRequest, Hello,
    InventoryRequest, ListBlobsRequest, PutBlobRequest, ReadBackRequest, ReceiveFailure,
    ReceiveMode, ReceiveRequest, ReceiveResult, Reply, Request, Role, SnapshotName, StreamFramer,
};
use receiver_agent::memory::fake_stream;
use receiver_agent::Zfs;

fn ds(s: &str) -> DatasetName {
    DatasetName::parse(s).expect("valid dataset name")
}

fn snap(s: &str) -> SnapshotName {
    SnapshotName::parse(s).expect("valid snapshot name")
}

fn blob(s: &str) -> BlobName {
    BlobName::parse(s).expect("valid blob name")
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = PathBuf::from("fuzz/corpus").join(target);
    fs::create_dir_all(&dir).expect("create corpus dir");
    fs::write(dir.join(format!("gen-{name}")), bytes).expect("write seed");
}

fn receive(dest: &str, label: &str, guid: u64, kind: DatasetKind, mode: ReceiveMode) -> Request {
    Request::Receive(ReceiveRequest {
        root: ds(ROOT),
        destination: ds(dest),
        snapshot: snap(&format!("{dest}@{label}")),
        guid,
        kind,
        mode,
        origin: None,
    })
}

fn requests() -> Vec<(&'static str, Request)> {
    let full = receive(
        &format!("{ROOT}/new/x"),
        "s1",
        31,
        DatasetKind::Volume,
        ReceiveMode::Full,
    );
    let incremental = receive(
        &format!("{ROOT}/a"),
        "s3",
        13,
        DatasetKind::Volume,
        ReceiveMode::Incremental {
            from: snap(&format!("{ROOT}/a@s2")),
            from_guid: 12,
        },
    );
    let mut clone = receive(
        &format!("{ROOT}/c"),
        "s1",
        41,
        DatasetKind::Volume,
        ReceiveMode::Incremental {
            from: snap(&format!("{ROOT}/a@s1")),
            from_guid: 11,
        },
    );
    if let Request::Receive(r) = &mut clone {
        r.origin = Some(snap(&format!("{ROOT}/a@s1")));
    }
    let resume = receive(
        &format!("{ROOT}/b"),
        "s1",
        PARTIAL_TOGUID,
        DatasetKind::Filesystem,
        ReceiveMode::Resume {
            token: partial_token(),
        },
    );
    vec![
        (
            "inventory",
            Request::Inventory(InventoryRequest { root: ds(ROOT) }),
        ),
        ("full", full),
        ("incremental", incremental),
        ("clone", clone),
        ("resume", resume),
        (
            "abort",
            Request::Abort(AbortRequest {
                root: ds(ROOT),
                dataset: ds(&format!("{ROOT}/b")),
            }),
        ),
        (
            "put-blob",
            Request::PutBlob(PutBlobRequest {
                root: ds(ROOT),
                name: blob("manifests/a/000001"),
                len: 4,
            }),
        ),
        (
            "get-blob",
            Request::GetBlob(GetBlobRequest {
                root: ds(ROOT),
                name: blob("sets/1"),
                max_len: 1 << 20,
            }),
        ),
        (
            "list-blobs",
            Request::ListBlobs(ListBlobsRequest {
                root: ds(ROOT),
                prefix: Some(blob("sets")),
            }),
        ),
        (
            "read-back",
            Request::ReadBack(ReadBackRequest {
                root: ds(ROOT),
                snapshot: snap(&format!("{ROOT}/a@s1")),
                volblocksize: 16384,
            }),
        ),
    ]
}

fn replies() -> Vec<(&'static str, Reply)> {
    let inventory = memory_zfs(2).inventory(&ds(ROOT)).expect("inventory");
    vec![
        ("inventory", Reply::Inventory(inventory)),
        ("ready", Reply::ReceiveReady),
        (
            "receive-ok",
            Reply::Receive(ReceiveResult::Ok {
                snapshot: snap(&format!("{ROOT}/a@s3")),
                guid: 13,
                bytes: 4096,
            }),
        ),
        (
            "receive-err",
            Reply::Receive(ReceiveResult::Err(ReceiveFailure {
                class: ErrorClass::StreamInterrupted,
                message: "the caller closed the stream before the end frame".into(),
                zfs_stderr: "cannot receive new filesystem stream: checksum mismatch\n".into(),
                resume_token: Some(partial_token()),
            })),
        ),
        (
            "aborted",
            Reply::Aborted {
                dataset: ds(&format!("{ROOT}/b")),
            },
        ),
        (
            "error",
            Reply::Error(ErrorReply {
                class: ErrorClass::NotFound,
                message: "receiver root bpool/r does not exist".into(),
            }),
        ),
        (
            "blobs",
            Reply::Blobs(vec![
                BlobInfo {
                    name: blob("sets/1"),
                    len: 10,
                },
                BlobInfo {
                    name: blob("sets/2"),
                    len: 0,
                },
            ]),
        ),
        (
            "read-back-done",
            Reply::ReadBackDone {
                blocks: 2,
                bytes: 32768,
            },
        ),
    ]
}

fn request_frame(r: &Request) -> Vec<u8> {
    frame(
        FrameKind::Request as u32,
        &encode_request(r).expect("encode"),
    )
}

/// Data and end frames exactly as a correct sender writes them, for `chunks`.
fn framed_stream(chunks: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut framer = StreamFramer::new();
    for c in chunks {
        framer.write_data(&mut out, c).expect("frame data");
    }
    framer.finish(&mut out).expect("end frame");
    out
}

/// Data frames in the agent target's fix-up form (payload = data only) and an empty end frame.
fn fixup_stream(chunks: &[&[u8]], end: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for c in chunks {
        out.extend_from_slice(&frame(FrameKind::Data as u32, c));
    }
    if end {
        out.extend_from_slice(&frame(FrameKind::End as u32, &[]));
    }
    out
}

/// The first word of each reply the agent wrote for `input`.
fn agent_replies(input: &[u8]) -> Vec<String> {
    run_agent(input);
    // run_agent checks the replies; rerun serve here only to print what they were.
    let flags = input[0];
    let zfs = memory_zfs(flags & 3);
    let mut wire = Vec::new();
    if flags & 4 == 0 {
        wire.extend_from_slice(&frame(1, &Hello::ours(Role::Driver).to_payload()));
    }
    if flags & 8 != 0 {
        wire.extend_from_slice(&qzb_fuzz::stream::fix_up_frames(&input[1..]));
    } else {
        wire.extend_from_slice(&input[1..]);
    }
    let dir = std::env::temp_dir().join(format!("qzb-gen-corpus-{}", std::process::id()));
    let config = receiver_agent::Config {
        lock_path: dir.join("lock"),
        lock_wait: std::time::Duration::ZERO,
        properties_on_resume: true,
        meta_base: None,
    };
    let mut out = Vec::new();
    let _ = receiver_agent::serve(&config, &zfs, Cursor::new(&wire), &mut out);
    let mut reader = Cursor::new(&out);
    let mut payload = Vec::new();
    let mut seen = Vec::new();
    while let Ok(Some(kind)) = read_frame(&mut reader, &mut payload) {
        if kind == FrameKind::Reply {
            let reply = decode_reply(&payload).expect("valid reply");
            let text = match reply {
                Reply::Receive(ReceiveResult::Ok { .. }) => "receive-ok".to_owned(),
                Reply::Receive(ReceiveResult::Err(f)) => format!("receive-err:{:?}", f.class),
                Reply::Error(e) => format!("error:{:?}", e.class),
                other => format!("{other:?}")
                    .split([' ', '('])
                    .next()
                    .unwrap_or("")
                    .into(),
            };
            seen.push(text);
        }
    }
    seen
}

fn main() {
    let hello_driver = Hello::ours(Role::Driver).to_payload();
    let hello_receiver = Hello::ours(Role::Receiver).to_payload();
    let mut hello_v2 = hello_driver;
    hello_v2[8] = 2;
    write("hello", "driver", &hello_driver);
    write("hello", "receiver", &hello_receiver);
    write("hello", "version-2", &hello_v2);

    let requests = requests();
    for (name, r) in &requests {
        write("request", name, &encode_request(r).expect("encode"));
    }
    let replies = replies();
    for (name, r) in &replies {
        write("reply", name, &encode_reply(r).expect("encode"));
    }

    let stream = fake_stream(31, 0, &[0x5a; 300]);
    let (a, b) = stream.split_at(100);
    let mut session = frame(1, &hello_driver);
    session.extend_from_slice(&request_frame(&requests[1].1));
    session.extend_from_slice(&frame(
        3,
        &encode_reply(&Reply::ReceiveReady).expect("encode"),
    ));
    session.extend_from_slice(&framed_stream(&[a, b]));
    write("frame", "session", &session);
    let mut block = Vec::new();
    qzb_protocol::write_block_frame(&mut block, 16384, &[0xa5; 512]).expect("block frame");
    write("frame", "block", &block);
    let mut replies_only = frame(1, &hello_receiver);
    for (_, r) in &replies {
        replies_only.extend_from_slice(&frame(3, &encode_reply(r).expect("encode")));
    }
    write("frame", "replies", &replies_only);

    // stream_verifier: tag:u8 len:u16le bytes (see qzb_fuzz::stream::run_verifier).
    let chunk = |tag: u8, bytes: &[u8]| {
        let mut c = vec![tag];
        c.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
        c.extend_from_slice(bytes);
        c
    };
    write(
        "stream_verifier",
        "fixed-up",
        &[chunk(2, a), chunk(2, b), chunk(3, &[])].concat(),
    );
    let mut raw = Vec::new();
    let mut reader = Cursor::new(framed_stream(&[a, b, b"tail"]));
    let mut payload = Vec::new();
    while let Ok(Some(kind)) = read_frame(&mut reader, &mut payload) {
        raw.extend_from_slice(&chunk(u8::from(kind == FrameKind::End), &payload));
    }
    write("stream_verifier", "raw-frames", &raw);

    // agent_serve: flags (state | raw<<2 | fix-up<<3) then wire bytes.
    let req = |name: &str| {
        request_frame(
            &requests
                .iter()
                .find(|(n, _)| *n == name)
                .expect("known request")
                .1,
        )
    };
    let incr = fake_stream(13, 12, b"incremental body");
    let clone = fake_stream(41, 11, b"clone body");
    let partial_rest = fake_stream(PARTIAL_TOGUID, 0, b"partial body")[30..].to_vec();
    let agent_seeds: Vec<(&str, Vec<u8>, &[&str])> = vec![
        (
            "inventory",
            [vec![0], req("inventory")].concat(),
            &["Inventory"],
        ),
        (
            "full",
            [
                vec![8],
                req("full"),
                fixup_stream(&[a, b], true),
                req("inventory"),
            ]
            .concat(),
            &["ReceiveReady", "receive-ok", "Inventory"],
        ),
        (
            "full-raw-frames",
            [vec![0], req("full"), framed_stream(&[a, b])].concat(),
            &["ReceiveReady", "receive-ok"],
        ),
        (
            "full-interrupted",
            [vec![8], req("full"), fixup_stream(&[a], false)].concat(),
            &["ReceiveReady", "receive-err:StreamInterrupted"],
        ),
        (
            "incremental",
            [vec![9], req("incremental"), fixup_stream(&[&incr], true)].concat(),
            &["ReceiveReady", "receive-ok"],
        ),
        (
            "clone",
            [vec![9], req("clone"), fixup_stream(&[&clone], true)].concat(),
            &["ReceiveReady", "receive-ok"],
        ),
        (
            "resume",
            [
                vec![10],
                req("resume"),
                fixup_stream(&[&partial_rest], true),
            ]
            .concat(),
            &["ReceiveReady", "receive-ok"],
        ),
        (
            "abort",
            [vec![2], req("abort"), req("inventory")].concat(),
            &["Aborted", "Inventory"],
        ),
        (
            "no-space",
            [vec![11], req("full"), fixup_stream(&[a, b], true)].concat(),
            &["ReceiveReady", "receive-err:NoSpace"],
        ),
        (
            "own-hello",
            [vec![4], frame(1, &hello_driver), req("inventory")].concat(),
            &["Inventory"],
        ),
    ];
    for (name, input, expected) in &agent_seeds {
        let got = agent_replies(input);
        assert_eq!(&got, expected, "agent seed {name}");
        write("agent_serve", name, input);
    }
    for (name, input) in qzb_fuzz::zstream::seeds() {
        qzb_fuzz::zstream::run_tap(&input);
        write("zstream", name, &input);
    }
    // Real OpenZFS streams (protocol/tests/golden/zfs-<version>/, recorded in the test VM):
    // checksums verified, 256-byte chunks.
    for (name, stream) in golden_streams() {
        let input = [&[0x10, 0x2a][..], &stream].concat();
        qzb_fuzz::zstream::run_tap(&input);
        write("zstream", &name, &input);
    }
    for (name, input) in qzb_fuzz::manifest::seeds() {
        qzb_fuzz::manifest::run_header(&input);
        write("manifest_header", name, &input);
    }
    for (name, input) in qzb_fuzz::key_file::seeds() {
        qzb_fuzz::key_file::run(&input);
        write("key_file", name, &input);
    }
    for (name, input) in qzb_fuzz::sealed::seeds() {
        qzb_fuzz::sealed::run(&input);
        write("sealed", name, &input);
    }
    println!("corpus written under fuzz/corpus/");
}

/// `(golden-<zfs version>-<stream name>, stream)` for every `*.zstream` under
/// `protocol/tests/golden/`, sorted.
fn golden_streams() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let root = PathBuf::from("protocol/tests/golden");
    for dir in fs::read_dir(&root).expect("protocol/tests/golden") {
        let dir = dir.expect("dir entry").path();
        let Some(version) = dir.file_name().and_then(|n| n.to_str()).map(String::from) else {
            continue;
        };
        if !dir.is_dir() {
            continue;
        }
        for file in fs::read_dir(&dir).expect("golden dir") {
            let path = file.expect("dir entry").path();
            let (Some(stem), Some("zstream")) = (
                path.file_stem().and_then(|n| n.to_str()),
                path.extension().and_then(|n| n.to_str()),
            ) else {
                continue;
            };
            let name = format!("golden-{version}-{stem}");
            out.push((name, fs::read(&path).expect("read golden stream")));
        }
    }
    out.sort();
    out
}
