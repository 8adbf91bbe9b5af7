//! In-memory sessions: the agent's `serve` driven with pre-built driver bytes and an
//! in-memory ZFS.

use std::fs::File;
use std::io::Cursor;
use std::path::PathBuf;
use std::time::Duration;

use qzb_protocol::*;
use receiver_agent::memory::{fake_stream, MemoryZfs, PlannedFailure};
use receiver_agent::{serve, AgentError, Config};

const ROOT: &str = "bpool/qzb";
const DEST: &str = "bpool/qzb/host/vm-work/private";

fn ds(s: &str) -> DatasetName {
    DatasetName::parse(s).unwrap()
}

fn snap(s: &str) -> SnapshotName {
    SnapshotName::parse(s).unwrap()
}

fn config(test: &str) -> Config {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("qzb-agent-{}-{test}", std::process::id()));
    Config {
        lock_path: dir.join("receive.lock"),
        lock_wait: Duration::from_millis(200),
        properties_on_resume: true,
        meta_base: None,
    }
}

fn zfs_with_root() -> MemoryZfs {
    let zfs = MemoryZfs::new();
    zfs.add_dataset("bpool", DatasetKind::Filesystem, 1);
    zfs.add_dataset(ROOT, DatasetKind::Filesystem, 2);
    zfs.state().available = 123_456;
    zfs
}

/// What the driver sends, built up front.
#[derive(Default)]
struct Driver {
    wire: Vec<u8>,
}

impl Driver {
    fn new() -> Driver {
        let mut d = Driver::default();
        send_hello(&mut d.wire, Role::Driver).unwrap();
        d
    }

    fn request(mut self, r: Request) -> Driver {
        write_request(&mut self.wire, &r).unwrap();
        self
    }

    /// Frames `data` in pieces of `piece` bytes (one data frame per piece) plus an end frame.
    fn stream(mut self, data: &[u8], piece: usize) -> Driver {
        let mut framer = StreamFramer::new();
        for chunk in data.chunks(piece) {
            framer.write_data(&mut self.wire, chunk).unwrap();
        }
        framer.finish(&mut self.wire).unwrap();
        self
    }

    /// Data frames only, no end frame (the caller dies).
    fn stream_without_end(mut self, data: &[u8], piece: usize) -> Driver {
        let mut framer = StreamFramer::new();
        for chunk in data.chunks(piece) {
            framer.write_data(&mut self.wire, chunk).unwrap();
        }
        self
    }

    fn raw(mut self, bytes: &[u8]) -> Driver {
        self.wire.extend_from_slice(bytes);
        self
    }
}

struct Outcome {
    result: Result<(), AgentError>,
    replies: Vec<Reply>,
}

fn run(zfs: &MemoryZfs, config: &Config, driver: Driver) -> Outcome {
    let mut out = Vec::new();
    let result = serve(config, zfs, Cursor::new(driver.wire), &mut out);
    let mut reader = Cursor::new(out);
    expect_hello(&mut reader, Role::Receiver).expect("agent sends its hello first");
    let mut replies = Vec::new();
    let mut buf = Vec::new();
    while let Some(kind) = read_frame(&mut reader, &mut buf).unwrap() {
        assert_eq!(kind, FrameKind::Reply);
        replies.push(decode_reply(&buf).unwrap());
    }
    Outcome { result, replies }
}

fn receive_req(mode: ReceiveMode, guid: u64) -> Request {
    Request::Receive(ReceiveRequest {
        root: ds(ROOT),
        destination: ds(DEST),
        snapshot: snap(&format!("{DEST}@qzb-2")),
        guid,
        kind: DatasetKind::Volume,
        mode,
        origin: None,
    })
}

fn body(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 253) as u8).collect()
}

fn failure_of(reply: &Reply) -> &ReceiveFailure {
    match reply {
        Reply::Receive(ReceiveResult::Err(f)) => f,
        other => panic!("expected a receive failure, got {other:?}"),
    }
}

#[test]
fn handshake_then_clean_close_is_success() {
    let zfs = zfs_with_root();
    let out = run(&zfs, &config("hs-ok"), Driver::new());
    assert!(out.result.is_ok());
    assert!(out.replies.is_empty());
}

#[test]
fn handshake_with_other_version_is_refused_naming_both() {
    let zfs = zfs_with_root();
    let mut wire = Vec::new();
    let hello = Hello {
        version: PROTOCOL_VERSION + 1,
        role: Role::Driver,
    };
    write_frame(&mut wire, FrameKind::Hello, &hello.to_payload()).unwrap();
    let out = run(&zfs, &config("hs-bad"), Driver { wire });
    let err = out.result.unwrap_err().to_string();
    assert!(
        err.contains(&format!("version {PROTOCOL_VERSION}")),
        "{err}"
    );
    assert!(
        err.contains(&format!("version {}", PROTOCOL_VERSION + 1)),
        "{err}"
    );
}

#[test]
fn full_receive_creates_unmountable_parents_and_reports_guid() {
    let zfs = zfs_with_root();
    let stream = fake_stream(0xabc, 0, &body(10_000));
    let driver = Driver::new()
        .request(receive_req(ReceiveMode::Full, 0xabc))
        .stream(&stream, 777);
    let out = run(&zfs, &config("full"), driver);
    out.result.unwrap();
    assert_eq!(out.replies[0], Reply::ReceiveReady);
    assert_eq!(
        out.replies[1],
        Reply::Receive(ReceiveResult::Ok {
            snapshot: snap(&format!("{DEST}@qzb-2")),
            guid: 0xabc,
            bytes: stream.len() as u64,
        })
    );
    let st = zfs.state();
    assert_eq!(st.received_streams, vec![stream.clone()]);
    assert_eq!(
        st.log,
        vec![
            "create bpool/qzb/host".to_string(),
            "create bpool/qzb/host/vm-work".to_string(),
            format!("receive -s -u -o volmode=none {DEST}"),
        ]
    );
    assert!(st.datasets["bpool/qzb/host/vm-work"].unmountable);
}

#[test]
fn incremental_receive_checks_the_source_and_succeeds() {
    let zfs = zfs_with_root();
    zfs.add_dataset("bpool/qzb/host", DatasetKind::Filesystem, 3);
    zfs.add_dataset("bpool/qzb/host/vm-work", DatasetKind::Filesystem, 4);
    zfs.add_dataset(DEST, DatasetKind::Volume, 5);
    zfs.add_snapshot(DEST, "qzb-1", 0x111);
    let stream = fake_stream(0x222, 0x111, &body(5000));
    let mode = ReceiveMode::Incremental {
        from: snap(&format!("{DEST}@qzb-1")),
        from_guid: 0x111,
    };
    let out = run(
        &zfs,
        &config("incr"),
        Driver::new()
            .request(receive_req(mode, 0x222))
            .stream(&stream, 1000),
    );
    out.result.unwrap();
    assert!(matches!(
        out.replies[1],
        Reply::Receive(ReceiveResult::Ok { guid: 0x222, .. })
    ));
    // Incremental receives never create datasets.
    assert!(!zfs.state().log.iter().any(|l| l.starts_with("create")));
}

#[test]
fn incremental_with_wrong_source_guid_is_refused_before_streaming() {
    let zfs = zfs_with_root();
    zfs.add_dataset(DEST, DatasetKind::Volume, 5);
    zfs.add_snapshot(DEST, "qzb-1", 0x111);
    let mode = ReceiveMode::Incremental {
        from: snap(&format!("{DEST}@qzb-1")),
        from_guid: 0x999,
    };
    let inventory = Request::Inventory(InventoryRequest { root: ds(ROOT) });
    let out = run(
        &zfs,
        &config("incr-bad"),
        Driver::new()
            .request(receive_req(mode, 0x222))
            .request(inventory),
    );
    out.result.unwrap();
    assert_eq!(
        failure_of(&out.replies[0]).class,
        ErrorClass::IncrementalSourceMismatch
    );
    // The session goes on after a refusal.
    assert!(matches!(out.replies[1], Reply::Inventory(_)));
    assert!(zfs.state().received_streams.is_empty());
}

#[test]
fn incremental_onto_newer_snapshots_is_refused() {
    let zfs = zfs_with_root();
    zfs.add_dataset(DEST, DatasetKind::Volume, 5);
    zfs.add_snapshot(DEST, "qzb-1", 0x111);
    zfs.add_snapshot(DEST, "manual", 0x333);
    let mode = ReceiveMode::Incremental {
        from: snap(&format!("{DEST}@qzb-1")),
        from_guid: 0x111,
    };
    let out = run(
        &zfs,
        &config("newer"),
        Driver::new().request(receive_req(mode, 0x222)),
    );
    let f = failure_of(&out.replies[0]);
    assert_eq!(f.class, ErrorClass::DestinationExists);
    assert!(f.message.contains("manual"), "{}", f.message);
}

#[test]
fn full_receive_onto_existing_destination_is_refused() {
    let zfs = zfs_with_root();
    zfs.add_dataset(DEST, DatasetKind::Volume, 5);
    let out = run(
        &zfs,
        &config("exists"),
        Driver::new().request(receive_req(ReceiveMode::Full, 1)),
    );
    assert_eq!(
        failure_of(&out.replies[0]).class,
        ErrorClass::DestinationExists
    );
}

/// First session dies mid-stream, second resumes from the token.
#[test]
fn interrupted_receive_reports_token_and_resume_completes_it() {
    let zfs = zfs_with_root();
    let stream = fake_stream(0xfeed, 0, &body(20_000));
    let cut = 12_000;
    let first = run(
        &zfs,
        &config("resume"),
        Driver::new()
            .request(receive_req(ReceiveMode::Full, 0xfeed))
            .stream_without_end(&stream[..cut], 1000),
    );
    assert!(matches!(
        first.result,
        Err(AgentError::ReceiveFailed {
            class: ErrorClass::StreamInterrupted,
            ..
        })
    ));
    let f = failure_of(&first.replies[1]);
    assert_eq!(f.class, ErrorClass::StreamInterrupted);
    assert!(f
        .zfs_stderr
        .contains("Partially received snapshot is saved"));
    let token = f.resume_token.clone().expect("token reported");
    let decoded = decode_resume_token(&token).unwrap();
    assert_eq!(decoded.toguid, 0xfeed);
    assert_eq!(decoded.fromguid, None);
    // The last verified frame was held back: zfs saw 11 of the 12 frames.
    assert_eq!(decoded.bytes, 11_000);

    let resume = ReceiveMode::Resume {
        token: token.clone(),
    };
    let rest = &stream[decoded.bytes as usize..];
    let second = run(
        &zfs,
        &config("resume"),
        Driver::new()
            .request(receive_req(resume, 0xfeed))
            .stream(rest, 4096),
    );
    second.result.unwrap();
    assert!(matches!(
        second.replies[1],
        Reply::Receive(ReceiveResult::Ok { guid: 0xfeed, .. })
    ));
    assert!(zfs.dataset(DEST).unwrap().resume_token.is_none());
}

#[test]
fn resume_with_a_token_the_destination_does_not_hold_is_refused() {
    let zfs = zfs_with_root();
    let stream = fake_stream(0xfeed, 0, &body(5000));
    let first = run(
        &zfs,
        &config("resume-bad"),
        Driver::new()
            .request(receive_req(ReceiveMode::Full, 0xfeed))
            .stream_without_end(&stream[..3000], 1000),
    );
    let real = failure_of(&first.replies[1]).resume_token.clone().unwrap();
    let mut other = decode_resume_token(&real).unwrap();
    other.bytes += 1;
    let forged = encode_resume_token(&other);
    let out = run(
        &zfs,
        &config("resume-bad"),
        Driver::new().request(receive_req(ReceiveMode::Resume { token: forged }, 0xfeed)),
    );
    let f = failure_of(&out.replies[0]);
    assert_eq!(f.class, ErrorClass::ResumeTokenMismatch);
    assert_eq!(f.resume_token.as_deref(), Some(real.as_str()));

    // The right token for a different snapshot guid is refused too.
    let out = run(
        &zfs,
        &config("resume-bad"),
        Driver::new().request(receive_req(ReceiveMode::Resume { token: real }, 0xbad)),
    );
    assert_eq!(
        failure_of(&out.replies[0]).class,
        ErrorClass::ResumeTokenMismatch
    );
}

/// Runs a full receive whose wire bytes are altered by `mangle`, returning the outcome.
fn full_receive_mangled(
    test: &str,
    mangle: impl FnOnce(&mut Vec<u8>, usize),
) -> (MemoryZfs, Outcome) {
    let zfs = zfs_with_root();
    let stream = fake_stream(0xabc, 0, &body(8000));
    let mut driver = Driver::new().request(receive_req(ReceiveMode::Full, 0xabc));
    let stream_start = driver.wire.len();
    driver = driver.stream(&stream, 1000);
    mangle(&mut driver.wire, stream_start);
    let out = run(&zfs, &config(test), driver);
    (zfs, out)
}

fn frame_len() -> usize {
    FRAME_HEADER_LEN + DATA_PREFIX_LEN + 1000
}

fn assert_stopped_with_partial_state(zfs: &MemoryZfs, out: &Outcome, class: ErrorClass) {
    assert!(out.result.is_err(), "a failed stream is never success");
    let f = failure_of(out.replies.last().unwrap());
    assert_eq!(f.class, class, "{}", f.message);
    assert!(f.resume_token.is_some(), "partial state token reported");
    let dest = zfs.dataset(DEST).unwrap();
    assert!(dest.snapshots.is_empty(), "no snapshot from a bad stream");
    assert!(!zfs.state().received_streams[0].ends_with(b"QZBFAKE-END"));
}

#[test]
fn corrupted_byte_in_a_data_frame_stops_the_receive() {
    let (zfs, out) = full_receive_mangled("corrupt", |wire, start| {
        wire[start + 3 * frame_len() + 100] ^= 0x40;
    });
    assert_stopped_with_partial_state(&zfs, &out, ErrorClass::StreamCorrupt);
    // Frames 0..=1 were fed; frame 2 was held back and discarded.
    assert_eq!(zfs.state().received_streams[0].len(), 2000);
}

#[test]
fn dropped_frame_is_detected() {
    let (zfs, out) = full_receive_mangled("dropped", |wire, start| {
        let at = start + 2 * frame_len();
        wire.drain(at..at + frame_len());
    });
    assert_stopped_with_partial_state(&zfs, &out, ErrorClass::StreamCorrupt);
    assert!(failure_of(&out.replies[1])
        .message
        .contains("out of sequence"));
}

#[test]
fn truncated_stream_mid_frame_is_interrupted() {
    let (zfs, out) = full_receive_mangled("truncated", |wire, start| {
        wire.truncate(start + 4 * frame_len() + 20);
    });
    assert_stopped_with_partial_state(&zfs, &out, ErrorClass::StreamInterrupted);
}

#[test]
fn eof_without_end_frame_is_never_success() {
    let (zfs, out) = full_receive_mangled("no-end", |wire, _| {
        wire.truncate(wire.len() - FRAME_HEADER_LEN - END_PAYLOAD_LEN);
    });
    assert_stopped_with_partial_state(&zfs, &out, ErrorClass::StreamInterrupted);
    // Everything but the held-back last frame reached zfs: its END record never did.
    // The stream is 8035 bytes in frames of 1000: the last 35 bytes were held back.
    assert_eq!(zfs.state().received_streams[0].len(), 8000);
}

#[test]
fn bad_end_frame_keeps_the_last_frame_from_zfs() {
    let (zfs, out) = full_receive_mangled("bad-end", |wire, _| {
        let last = wire.len() - 1;
        wire[last] ^= 1;
    });
    assert_stopped_with_partial_state(&zfs, &out, ErrorClass::StreamCorrupt);
}

#[test]
fn oversize_frame_is_refused() {
    let (zfs, out) = full_receive_mangled("oversize", |wire, start| {
        let at = start + 3 * frame_len();
        wire[at + 4..at + 8].copy_from_slice(&(64u32 << 20).to_le_bytes());
    });
    assert_stopped_with_partial_state(&zfs, &out, ErrorClass::StreamCorrupt);
}

#[test]
fn unknown_frame_kind_in_stream_is_refused() {
    let (zfs, out) = full_receive_mangled("unknown-kind", |wire, start| {
        let at = start + 3 * frame_len();
        wire[at..at + 4].copy_from_slice(&77u32.to_le_bytes());
    });
    assert_stopped_with_partial_state(&zfs, &out, ErrorClass::StreamCorrupt);
}

#[test]
fn request_frame_inside_a_stream_is_a_protocol_violation() {
    let (zfs, out) = full_receive_mangled("violation", |wire, start| {
        let at = start + 2 * frame_len();
        let mut request = Vec::new();
        write_request(
            &mut request,
            &Request::Inventory(InventoryRequest { root: ds(ROOT) }),
        )
        .unwrap();
        wire.splice(at..at, request);
    });
    assert_stopped_with_partial_state(&zfs, &out, ErrorClass::ProtocolViolation);
}

#[test]
fn zfs_receive_failing_mid_stream_is_classified_with_its_stderr() {
    let zfs = zfs_with_root();
    zfs.state().fail_next_receive = Some(PlannedFailure {
        after_bytes: 1500,
        stderr: "cannot receive new filesystem stream: out of space\n".into(),
    });
    let stream = fake_stream(0xabc, 0, &body(8000));
    let out = run(
        &zfs,
        &config("nospace"),
        Driver::new()
            .request(receive_req(ReceiveMode::Full, 0xabc))
            .stream(&stream, 1000),
    );
    let f = failure_of(&out.replies[1]);
    assert_eq!(f.class, ErrorClass::NoSpace);
    assert_eq!(
        f.zfs_stderr,
        "cannot receive new filesystem stream: out of space\n"
    );
    assert!(out.result.is_err());
}

#[test]
fn received_guid_must_match_the_request() {
    let zfs = zfs_with_root();
    let stream = fake_stream(0xabc, 0, &body(100));
    let out = run(
        &zfs,
        &config("guid"),
        Driver::new()
            .request(receive_req(ReceiveMode::Full, 0xdef))
            .stream(&stream, 1000),
    );
    assert_eq!(failure_of(&out.replies[1]).class, ErrorClass::GuidMismatch);
}

#[test]
fn clone_receive_passes_the_origin() {
    let zfs = zfs_with_root();
    zfs.add_dataset("bpool/qzb/tpl", DatasetKind::Volume, 9);
    zfs.add_snapshot("bpool/qzb/tpl", "qzb-1", 0x77);
    let stream = fake_stream(0xabc, 0x77, &body(100));
    let origin = snap("bpool/qzb/tpl@qzb-1");
    let Request::Receive(mut req) = receive_req(
        ReceiveMode::Incremental {
            from: origin.clone(),
            from_guid: 0x77,
        },
        0xabc,
    ) else {
        unreachable!()
    };
    req.origin = Some(origin);
    let out = run(
        &zfs,
        &config("clone"),
        Driver::new()
            .request(Request::Receive(req))
            .stream(&stream, 1000),
    );
    out.result.unwrap();
    assert!(zfs.state().log.contains(&format!(
        "receive -s -u -o volmode=none -o origin=bpool/qzb/tpl@qzb-1 {DEST}"
    )));
}

#[test]
fn interrupted_clone_receive_resumes_with_its_origin() {
    let zfs = zfs_with_root();
    zfs.add_dataset("bpool/qzb/tpl", DatasetKind::Volume, 9);
    zfs.add_snapshot("bpool/qzb/tpl", "qzb-1", 0x77);
    let stream = fake_stream(0xabc, 0x77, &body(5000));
    let origin = snap("bpool/qzb/tpl@qzb-1");
    let clone_req = |mode| {
        let Request::Receive(mut req) = receive_req(mode, 0xabc) else {
            unreachable!()
        };
        req.origin = Some(origin.clone());
        Request::Receive(req)
    };
    let incremental = ReceiveMode::Incremental {
        from: origin.clone(),
        from_guid: 0x77,
    };
    let first = run(
        &zfs,
        &config("clone-resume"),
        Driver::new()
            .request(clone_req(incremental))
            .stream_without_end(&stream[..3000], 1000),
    );
    let token = failure_of(&first.replies[1]).resume_token.clone().unwrap();
    let done = decode_resume_token(&token).unwrap().bytes as usize;
    assert_eq!(decode_resume_token(&token).unwrap().fromguid, Some(0x77));
    let second = run(
        &zfs,
        &config("clone-resume"),
        Driver::new()
            .request(clone_req(ReceiveMode::Resume { token }))
            .stream(&stream[done..], 1000),
    );
    second.result.unwrap();
    assert!(matches!(
        second.replies[1],
        Reply::Receive(ReceiveResult::Ok { guid: 0xabc, .. })
    ));
}

#[test]
fn hostile_names_are_refused_and_the_session_continues() {
    // Abort requests built from raw strings, bypassing the validated types. bincode
    // standard: variant index and string lengths are one-byte varints below 251.
    fn raw_abort(root: &str, dataset: &str) -> Vec<u8> {
        let mut payload = vec![2u8, root.len() as u8];
        payload.extend_from_slice(root.as_bytes());
        payload.push(dataset.len() as u8);
        payload.extend_from_slice(dataset.as_bytes());
        payload
    }
    let hostile = [
        "bpool/qzb/../../etc",
        "/bpool/qzb/a",
        "bpool/other",
        "bpool/qzb",
        "bpool/qzbx/a",
        "bpool/qzb/a\0b",
        "bpool/qzb/a\nb",
        "bpool/qzb/a@snap",
        "bpool/qzb/a@b@c",
        "bpool/qzb/-R",
    ];
    let zfs = zfs_with_root();
    let mut driver = Driver::new();
    for name in hostile {
        let payload = raw_abort(ROOT, name);
        let mut frame = Vec::new();
        write_frame(&mut frame, FrameKind::Request, &payload).unwrap();
        driver = driver.raw(&frame);
    }
    let driver = driver.request(Request::Inventory(InventoryRequest { root: ds(ROOT) }));
    let out = run(&zfs, &config("hostile"), driver);
    out.result.unwrap();
    assert_eq!(out.replies.len(), hostile.len() + 1);
    for reply in &out.replies[..hostile.len()] {
        assert!(
            matches!(
                reply,
                Reply::Error(ErrorReply {
                    class: ErrorClass::InvalidRequest,
                    ..
                })
            ),
            "{reply:?}"
        );
    }
    assert!(matches!(out.replies.last(), Some(Reply::Inventory(_))));
    assert!(zfs.state().log.is_empty(), "no zfs command ran");
}

#[test]
fn abort_discards_partial_state_and_refuses_when_there_is_none() {
    let zfs = zfs_with_root();
    let stream = fake_stream(0xabc, 0, &body(5000));
    run(
        &zfs,
        &config("abort"),
        Driver::new()
            .request(receive_req(ReceiveMode::Full, 0xabc))
            .stream_without_end(&stream, 1000),
    );
    assert!(zfs.dataset(DEST).unwrap().resume_token.is_some());
    let abort = Request::Abort(AbortRequest {
        root: ds(ROOT),
        dataset: ds(DEST),
    });
    let out = run(
        &zfs,
        &config("abort"),
        Driver::new().request(abort.clone()).request(abort),
    );
    out.result.unwrap();
    assert_eq!(out.replies[0], Reply::Aborted { dataset: ds(DEST) });
    assert!(matches!(
        out.replies[1],
        Reply::Error(ErrorReply {
            class: ErrorClass::NotFound,
            ..
        })
    ));
    assert!(zfs.state().log.contains(&format!("abort {DEST}")));
    assert!(zfs.dataset(DEST).is_none());
}

#[test]
fn inventory_lists_datasets_snapshots_tokens_and_free_space() {
    let zfs = zfs_with_root();
    zfs.add_dataset("bpool/qzb/a", DatasetKind::Volume, 10);
    zfs.add_snapshot("bpool/qzb/a", "s1", 11);
    zfs.add_snapshot("bpool/qzb/a", "s2", 12);
    zfs.add_dataset("bpool/elsewhere", DatasetKind::Volume, 13);
    zfs.state()
        .datasets
        .get_mut("bpool/qzb/a")
        .unwrap()
        .resume_token = Some("1-1-1-00".into());
    let out = run(
        &zfs,
        &config("inventory"),
        Driver::new()
            .request(Request::Inventory(InventoryRequest { root: ds(ROOT) }))
            .request(Request::Inventory(InventoryRequest {
                root: ds("bpool/missing"),
            })),
    );
    let Reply::Inventory(inv) = &out.replies[0] else {
        panic!("{:?}", out.replies[0])
    };
    assert_eq!(inv.available, 123_456);
    let names: Vec<_> = inv.datasets.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["bpool/qzb", "bpool/qzb/a"]);
    let a = &inv.datasets[1];
    assert_eq!(a.receive_resume_token.as_deref(), Some("1-1-1-00"));
    let snaps: Vec<_> = a
        .snapshots
        .iter()
        .map(|s| (s.name.label().as_str(), s.guid))
        .collect();
    assert_eq!(snaps, [("s1", 11), ("s2", 12)]);
    assert!(matches!(
        out.replies[1],
        Reply::Error(ErrorReply {
            class: ErrorClass::NotFound,
            ..
        })
    ));
}

#[test]
fn second_receive_waits_a_bounded_time_then_is_refused_as_busy() {
    let cfg = config("busy");
    std::fs::create_dir_all(cfg.lock_path.parent().unwrap()).unwrap();
    let holder = File::create(&cfg.lock_path).unwrap();
    holder.lock().unwrap();
    let zfs = zfs_with_root();
    let started = std::time::Instant::now();
    let out = run(
        &zfs,
        &cfg,
        Driver::new().request(receive_req(ReceiveMode::Full, 1)),
    );
    assert!(started.elapsed() >= cfg.lock_wait);
    // First the notice that it waits (the holder wrote nothing into the lock file), then the
    // refusal.
    assert!(
        matches!(&out.replies[0], Reply::Waiting { holder } if holder.starts_with("another session; waiting up to")),
        "{:?}",
        out.replies[0]
    );
    let f = failure_of(&out.replies[1]);
    assert_eq!(f.class, ErrorClass::Busy);
    assert!(f.message.contains("another receive"), "{}", f.message);
    assert!(zfs.state().log.is_empty());
    drop(holder);
}

#[test]
fn garbage_instead_of_a_request_ends_the_session_with_an_error() {
    let zfs = zfs_with_root();
    let out = run(
        &zfs,
        &config("garbage"),
        Driver::new().raw(b"\x09\x00\x00\x00\x04\x00\x00\x00abcd"),
    );
    assert!(out.result.is_err());
    assert!(matches!(
        out.replies[0],
        Reply::Error(ErrorReply {
            class: ErrorClass::ProtocolViolation,
            ..
        })
    ));
}
