//! Codec tests: round trips, truncation, oversize, garbage, and deterministic fuzzing.

use std::io::Cursor;

use qzb_protocol::*;

fn ds(s: &str) -> DatasetName {
    DatasetName::parse(s).unwrap()
}

fn snap(s: &str) -> SnapshotName {
    SnapshotName::parse(s).unwrap()
}

fn receive_request(mode: ReceiveMode) -> ReceiveRequest {
    ReceiveRequest {
        root: ds("bpool/qzb"),
        destination: ds("bpool/qzb/dom0/vm-work/private"),
        snapshot: snap("bpool/qzb/dom0/vm-work/private@qzb-2"),
        guid: 0xdead_beef,
        kind: DatasetKind::Volume,
        mode,
        origin: None,
    }
}

fn sample_requests() -> Vec<Request> {
    vec![
        Request::Inventory(InventoryRequest {
            root: ds("bpool/qzb"),
        }),
        Request::Receive(receive_request(ReceiveMode::Full)),
        Request::Receive(receive_request(ReceiveMode::Incremental {
            from: snap("bpool/qzb/dom0/vm-work/private@qzb-1"),
            from_guid: 77,
        })),
        Request::Receive(receive_request(ReceiveMode::Resume {
            token: "1-abc-10-789c".into(),
        })),
        Request::Abort(AbortRequest {
            root: ds("bpool/qzb"),
            dataset: ds("bpool/qzb/x"),
        }),
        Request::PutBlob(PutBlobRequest {
            root: ds("bpool/qzb"),
            name: blob("manifests/a/000001"),
            len: 4096,
        }),
        Request::GetBlob(GetBlobRequest {
            root: ds("bpool/qzb"),
            name: blob("sets/1"),
            max_len: MAX_BLOB_LEN,
        }),
        Request::ListBlobs(ListBlobsRequest {
            root: ds("bpool/qzb"),
            prefix: Some(blob("manifests")),
        }),
        Request::ListBlobs(ListBlobsRequest {
            root: ds("bpool/qzb"),
            prefix: None,
        }),
        Request::ReadBack(ReadBackRequest {
            root: ds("bpool/qzb"),
            snapshot: snap("bpool/qzb/dom0/vm-work/private@qzb-2"),
            volblocksize: 16384,
        }),
    ]
}

fn blob(s: &str) -> BlobName {
    BlobName::parse(s).unwrap()
}

fn sample_replies() -> Vec<Reply> {
    vec![
        Reply::Inventory(InventoryReply {
            root: ds("bpool/qzb"),
            available: 1 << 40,
            datasets: vec![
                DatasetInfo {
                    name: ds("bpool/qzb"),
                    kind: DatasetKind::Filesystem,
                    guid: 1,
                    receive_resume_token: None,
                    snapshots: vec![],
                },
                DatasetInfo {
                    name: ds("bpool/qzb/a"),
                    kind: DatasetKind::Volume,
                    guid: 2,
                    receive_resume_token: Some("1-1-1-00".into()),
                    snapshots: vec![SnapshotInfo {
                        name: snap("bpool/qzb/a@s1"),
                        guid: 3,
                        createtxg: 4,
                    }],
                },
            ],
        }),
        Reply::ReceiveReady,
        Reply::Receive(ReceiveResult::Ok {
            snapshot: snap("bpool/qzb/a@s1"),
            guid: 3,
            bytes: 12345,
        }),
        Reply::Receive(ReceiveResult::Err(ReceiveFailure {
            class: ErrorClass::StreamCorrupt,
            message: "data frame 3 failed its blake3 check".into(),
            zfs_stderr: "cannot receive: checksum mismatch".into(),
            resume_token: Some("1-2-3-ab".into()),
        })),
        Reply::Aborted {
            dataset: ds("bpool/qzb/a"),
        },
        Reply::Error(ErrorReply {
            class: ErrorClass::Busy,
            message: "busy".into(),
        }),
        Reply::BlobReady,
        Reply::BlobStored {
            name: blob("sets/1"),
            len: 7,
        },
        Reply::Blob { len: 7 },
        Reply::Blobs(vec![
            BlobInfo {
                name: blob("m/a"),
                len: 1,
            },
            BlobInfo {
                name: blob("m/b"),
                len: 0,
            },
        ]),
        Reply::ReadBackReady,
        Reply::ReadBackDone {
            blocks: 3,
            bytes: 3 * 16384,
        },
    ]
}

#[test]
fn requests_and_replies_round_trip_through_frames() {
    let mut wire = Vec::new();
    for r in sample_requests() {
        write_request(&mut wire, &r).unwrap();
    }
    let mut reader = Cursor::new(wire);
    let mut buf = Vec::new();
    for want in sample_requests() {
        assert_eq!(read_request(&mut reader, &mut buf).unwrap(), Some(want));
    }
    assert_eq!(read_request(&mut reader, &mut buf).unwrap(), None);

    let mut wire = Vec::new();
    for r in sample_replies() {
        write_reply(&mut wire, &r).unwrap();
    }
    let mut reader = Cursor::new(wire);
    for want in sample_replies() {
        assert_eq!(read_reply(&mut reader, &mut buf).unwrap(), want);
    }
    assert!(matches!(
        read_reply(&mut reader, &mut buf),
        Err(ProtocolError::Truncated { .. })
    ));
}

#[test]
fn hello_exchange_accepts_matching_peer() {
    let mut wire = Vec::new();
    send_hello(&mut wire, Role::Driver).unwrap();
    assert_eq!(wire.len(), FRAME_HEADER_LEN + HELLO_PAYLOAD_LEN);
    let hello = expect_hello(&mut Cursor::new(&wire), Role::Driver).unwrap();
    assert_eq!(hello.version, PROTOCOL_VERSION);
}

#[test]
fn hello_version_mismatch_names_both_versions() {
    let mut wire = Vec::new();
    let theirs = Hello {
        version: PROTOCOL_VERSION + 6,
        role: Role::Receiver,
    };
    write_frame(&mut wire, FrameKind::Hello, &theirs.to_payload()).unwrap();
    let err = expect_hello(&mut Cursor::new(&wire), Role::Receiver).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, ProtocolError::VersionMismatch { ours, theirs } if ours == PROTOCOL_VERSION && theirs == PROTOCOL_VERSION + 6)
    );
    assert!(
        text.contains(&format!("version {PROTOCOL_VERSION}")),
        "{text}"
    );
    assert!(
        text.contains(&format!("version {}", PROTOCOL_VERSION + 6)),
        "{text}"
    );
}

#[test]
fn hello_from_wrong_role_or_garbage_is_refused() {
    let mut wire = Vec::new();
    send_hello(&mut wire, Role::Driver).unwrap();
    assert!(matches!(
        expect_hello(&mut Cursor::new(&wire), Role::Receiver),
        Err(ProtocolError::WrongRole { .. })
    ));
    let garbage = b"bash: qubes-zfs-backup-receiver: command not found\n";
    assert!(matches!(
        expect_hello(&mut Cursor::new(&garbage[..]), Role::Receiver),
        Err(ProtocolError::NotOurProtocol)
    ));
    assert!(matches!(
        expect_hello(&mut Cursor::new(&[][..]), Role::Receiver),
        Err(ProtocolError::Truncated { .. })
    ));
    assert!(matches!(
        expect_hello(&mut Cursor::new(&wire[..10]), Role::Driver),
        Err(ProtocolError::Truncated { .. })
    ));
}

#[test]
fn unknown_frame_kind_is_an_error() {
    let mut wire = 99u32.to_le_bytes().to_vec();
    wire.extend_from_slice(&4u32.to_le_bytes());
    wire.extend_from_slice(b"abcd");
    let mut buf = Vec::new();
    assert!(matches!(
        read_frame(&mut Cursor::new(wire), &mut buf),
        Err(ProtocolError::UnknownFrameKind(99))
    ));
}

/// The length is checked before the payload buffer is sized: nothing is allocated.
#[test]
fn oversize_frame_is_refused_before_allocating() {
    for (kind, len) in [
        (FrameKind::Data, MAX_DATA_PAYLOAD as u32 + 1),
        (FrameKind::Request, MAX_REQUEST_PAYLOAD as u32 + 1),
        (FrameKind::Reply, u32::MAX),
        (FrameKind::End, END_PAYLOAD_LEN as u32 + 1),
        (FrameKind::Hello, 15),
        (FrameKind::Data, DATA_PREFIX_LEN as u32),
    ] {
        let mut wire = (kind as u32).to_le_bytes().to_vec();
        wire.extend_from_slice(&len.to_le_bytes());
        let mut buf = Vec::new();
        let err = read_frame(&mut Cursor::new(wire), &mut buf).unwrap_err();
        assert!(
            matches!(err, ProtocolError::BadFrameLength { .. }),
            "{kind:?} {len}: {err}"
        );
        assert_eq!(buf.capacity(), 0, "allocated for a refused frame");
    }
}

#[test]
fn truncated_frames_are_errors_but_clean_eof_is_not() {
    let mut wire = Vec::new();
    write_request(&mut wire, &sample_requests()[1]).unwrap();
    let mut buf = Vec::new();
    for cut in 1..wire.len() {
        let err = read_frame(&mut Cursor::new(&wire[..cut]), &mut buf).unwrap_err();
        assert!(matches!(err, ProtocolError::Truncated { .. }), "cut {cut}");
    }
    assert_eq!(
        read_frame(&mut Cursor::new(&[][..]), &mut buf).unwrap(),
        None
    );
}

#[test]
fn writer_refuses_frames_the_peer_would_reject() {
    let mut sink = Vec::new();
    assert!(write_frame(&mut sink, FrameKind::End, &[0; 3]).is_err());
    assert!(write_frame(
        &mut sink,
        FrameKind::Request,
        &vec![0; MAX_REQUEST_PAYLOAD + 1]
    )
    .is_err());
    assert!(sink.is_empty());
}

#[test]
fn requests_breaking_rules_are_refused_on_decode() {
    let outside = ReceiveRequest {
        destination: ds("bpool/other/x"),
        snapshot: snap("bpool/other/x@s"),
        ..receive_request(ReceiveMode::Full)
    };
    let root_itself = ReceiveRequest {
        destination: ds("bpool/qzb"),
        snapshot: snap("bpool/qzb@s"),
        ..receive_request(ReceiveMode::Full)
    };
    let snapshot_elsewhere = ReceiveRequest {
        snapshot: snap("bpool/qzb/y@s"),
        ..receive_request(ReceiveMode::Full)
    };
    let from_elsewhere = receive_request(ReceiveMode::Incremental {
        from: snap("bpool/qzb/y@s"),
        from_guid: 1,
    });
    let origin_outside = ReceiveRequest {
        origin: Some(snap("bpool/base@s")),
        ..receive_request(ReceiveMode::Incremental {
            from: snap("bpool/base@s"),
            from_guid: 1,
        })
    };
    let origin_on_full = ReceiveRequest {
        origin: Some(snap("bpool/qzb/tpl@s")),
        ..receive_request(ReceiveMode::Full)
    };
    let bad_token = receive_request(ReceiveMode::Resume {
        token: "1-2-3-zz; rm -rf /".into(),
    });
    let abort_root = Request::Abort(AbortRequest {
        root: ds("bpool/qzb"),
        dataset: ds("bpool/qzb"),
    });
    let mut cases: Vec<Request> = [
        outside,
        root_itself,
        snapshot_elsewhere,
        from_elsewhere,
        origin_outside,
        origin_on_full,
        bad_token,
    ]
    .into_iter()
    .map(Request::Receive)
    .collect();
    cases.push(abort_root);
    for request in cases {
        let bytes = bincode::encode_to_vec(&request, bincode::config::standard()).unwrap();
        let err = decode_request(&bytes).unwrap_err();
        assert!(
            matches!(err, ProtocolError::InvalidMessage(_)),
            "{request:?}: {err}"
        );
    }
    // A clone stream whose source is the origin is fine.
    let clone = Request::Receive(ReceiveRequest {
        origin: Some(snap("bpool/qzb/tpl@s")),
        ..receive_request(ReceiveMode::Incremental {
            from: snap("bpool/qzb/tpl@s"),
            from_guid: 1,
        })
    });
    assert_eq!(
        decode_request(&encode_request(&clone).unwrap()).unwrap(),
        clone
    );
}

#[test]
fn hostile_names_inside_messages_fail_to_decode() {
    // Build the bincode by hand with raw strings, bypassing the validated types.
    #[derive(bincode::Encode)]
    enum RawRequest {
        Inventory { root: String },
    }
    for name in [
        "../etc",
        "/bpool",
        "bpool/a\0b",
        "bpool/a\nb",
        "bpool@x",
        "-o",
    ] {
        let raw = RawRequest::Inventory { root: name.into() };
        let bytes = bincode::encode_to_vec(raw, bincode::config::standard()).unwrap();
        assert!(
            matches!(decode_request(&bytes), Err(ProtocolError::Decode(_))),
            "{name:?}"
        );
    }
}

#[test]
fn replies_breaking_limits_are_refused_on_decode() {
    let outside = Reply::Inventory(InventoryReply {
        root: ds("bpool/qzb"),
        available: 0,
        datasets: vec![DatasetInfo {
            name: ds("bpool/elsewhere"),
            kind: DatasetKind::Filesystem,
            guid: 1,
            receive_resume_token: None,
            snapshots: vec![],
        }],
    });
    let misplaced_snapshot = Reply::Inventory(InventoryReply {
        root: ds("bpool/qzb"),
        available: 0,
        datasets: vec![DatasetInfo {
            name: ds("bpool/qzb/a"),
            kind: DatasetKind::Filesystem,
            guid: 1,
            receive_resume_token: None,
            snapshots: vec![SnapshotInfo {
                name: snap("bpool/qzb/b@s"),
                guid: 1,
                createtxg: 1,
            }],
        }],
    });
    let long_message = Reply::Error(ErrorReply {
        class: ErrorClass::Internal,
        message: "x".repeat(MAX_MESSAGE_LEN + 1),
    });
    for reply in [outside, misplaced_snapshot, long_message] {
        let bytes = bincode::encode_to_vec(&reply, bincode::config::standard()).unwrap();
        assert!(
            matches!(decode_reply(&bytes), Err(ProtocolError::InvalidMessage(_))),
            "{reply:?}"
        );
    }
}

#[test]
fn trailing_bytes_after_a_message_are_refused() {
    let mut bytes = encode_request(&sample_requests()[0]).unwrap();
    bytes.push(0);
    assert!(matches!(
        decode_request(&bytes),
        Err(ProtocolError::Decode(_))
    ));
}

#[test]
fn huge_claimed_collection_length_does_not_allocate() {
    // Reply::Inventory with a datasets Vec claiming u64::MAX elements.
    let mut bytes = Vec::new();
    bytes.push(0); // Reply::Inventory
    bytes.extend(bincode::encode_to_vec(ds("bpool/qzb"), bincode::config::standard()).unwrap());
    bytes.push(0); // available = 0
    bytes.push(253); // varint u64 marker
    bytes.extend_from_slice(&u64::MAX.to_le_bytes());
    assert!(decode_reply(&bytes).is_err());
}

#[test]
fn truncate_text_keeps_the_limit_and_char_boundaries() {
    let text = "é".repeat(100);
    let cut = truncate_text(&text, 51);
    assert!(cut.len() <= 51);
    assert!(cut.ends_with("[truncated]"));
    assert_eq!(truncate_text("short", 51), "short");
}

fn framed(data: &[u8]) -> Vec<u8> {
    let mut wire = Vec::new();
    let mut framer = StreamFramer::new();
    framer.write_data(&mut wire, data).unwrap();
    framer.finish(&mut wire).unwrap();
    wire
}

/// Reads a framed stream and returns the data, or the first error.
fn verify_stream(wire: &[u8]) -> Result<Vec<u8>, ProtocolError> {
    let mut reader = Cursor::new(wire);
    let mut buf = Vec::new();
    let mut verifier = StreamVerifier::new();
    let mut out = Vec::new();
    loop {
        match read_frame_required(&mut reader, &mut buf, "end frame")? {
            FrameKind::Data => out.extend_from_slice(verifier.verify_data(&buf)?),
            FrameKind::End => {
                let end = verifier.verify_end(&buf)?;
                assert_eq!(end.total_len, out.len() as u64);
                return Ok(out);
            }
            other => {
                return Err(ProtocolError::UnexpectedFrame {
                    expected: "data",
                    got: other,
                })
            }
        }
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[test]
fn data_stream_round_trips_across_frame_boundaries() {
    for len in [
        1,
        1000,
        MAX_DATA_CHUNK,
        MAX_DATA_CHUNK + 1,
        3 * MAX_DATA_CHUNK + 17,
    ] {
        let data = pattern(len);
        assert_eq!(verify_stream(&framed(&data)).unwrap(), data, "{len}");
    }
    assert_eq!(verify_stream(&framed(&[])).unwrap(), Vec::<u8>::new());
}

/// Offsets of each frame in a framed stream: (start, payload_len, kind).
fn frames_of(wire: &[u8]) -> Vec<(usize, usize, u32)> {
    let mut at = 0;
    let mut out = Vec::new();
    while at < wire.len() {
        let kind = u32::from_le_bytes(wire[at..at + 4].try_into().unwrap());
        let len = u32::from_le_bytes(wire[at + 4..at + 8].try_into().unwrap()) as usize;
        out.push((at, len, kind));
        at += FRAME_HEADER_LEN + len;
    }
    out
}

#[test]
fn flipped_byte_anywhere_in_a_data_frame_is_detected() {
    let wire = framed(&pattern(5000));
    let (start, len, _) = frames_of(&wire)[0];
    for offset in [0, 8, 16, 40, DATA_PREFIX_LEN, DATA_PREFIX_LEN + 4999] {
        let mut bad = wire.clone();
        bad[start + FRAME_HEADER_LEN + offset.min(len - 1)] ^= 1;
        assert!(verify_stream(&bad).is_err(), "offset {offset}");
    }
}

#[test]
fn dropped_duplicated_or_reordered_frames_are_detected() {
    let wire = framed(&pattern(3 * MAX_DATA_CHUNK));
    let frames = frames_of(&wire);
    let piece = |i: usize| {
        let (start, len, _) = frames[i];
        wire[start..start + FRAME_HEADER_LEN + len].to_vec()
    };
    let dropped = [piece(0), piece(2), piece(3)].concat();
    let duplicated = [piece(0), piece(1), piece(1), piece(2), piece(3)].concat();
    let reordered = [piece(1), piece(0), piece(2), piece(3)].concat();
    assert!(matches!(
        verify_stream(&dropped),
        Err(ProtocolError::DataSequence {
            expected: 1,
            got: 2
        })
    ));
    assert!(matches!(
        verify_stream(&duplicated),
        Err(ProtocolError::DataSequence {
            expected: 2,
            got: 1
        })
    ));
    assert!(matches!(
        verify_stream(&reordered),
        Err(ProtocolError::DataSequence {
            expected: 0,
            got: 1
        })
    ));
    let missing_last = [piece(0), piece(1), piece(3)].concat();
    assert!(verify_stream(&missing_last).is_err());
}

#[test]
fn end_frame_mismatches_are_detected() {
    let data = pattern(100);
    let mut wire = Vec::new();
    let mut framer = StreamFramer::new();
    framer.write_data(&mut wire, &data).unwrap();
    let good = framer.end_frame();
    for bad in [
        EndFrame {
            total_len: 99,
            ..good
        },
        EndFrame {
            frame_count: 2,
            ..good
        },
        EndFrame {
            blake3: [0; 32],
            ..good
        },
    ] {
        let mut w = wire.clone();
        write_frame(&mut w, FrameKind::End, &bad.to_payload()).unwrap();
        assert!(verify_stream(&w).is_err(), "{bad:?}");
    }
}

/// xorshift64*: deterministic randomness without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn fuzzed_frames_and_messages_never_panic() {
    let mut rng = Rng(0x1234_5678);
    let mut corpus: Vec<Vec<u8>> = Vec::new();
    for r in sample_requests() {
        let mut w = Vec::new();
        write_request(&mut w, &r).unwrap();
        corpus.push(w);
    }
    for r in sample_replies() {
        let mut w = Vec::new();
        write_reply(&mut w, &r).unwrap();
        corpus.push(w);
    }
    corpus.push(framed(&pattern(300)));
    let mut buf = Vec::new();
    for round in 0..12_000 {
        let mut bytes = corpus[round % corpus.len()].clone();
        for _ in 0..(1 + rng.next() % 3) {
            let at = (rng.next() as usize) % bytes.len();
            match rng.next() % 4 {
                0 => bytes[at] = rng.next() as u8,
                1 => bytes.truncate(at.max(1)),
                2 => bytes.insert(at, rng.next() as u8),
                _ => bytes[at] ^= 1 << (rng.next() % 8),
            }
        }
        let mut reader = Cursor::new(&bytes);
        while let Ok(Some(kind)) = read_frame(&mut reader, &mut buf) {
            match kind {
                FrameKind::Request => {
                    let _ = decode_request(&buf);
                }
                FrameKind::Reply => {
                    let _ = decode_reply(&buf);
                }
                FrameKind::Hello => {
                    let _ = Hello::from_payload(&buf);
                }
                FrameKind::Data => {
                    let _ = StreamVerifier::new().verify_data(&buf);
                }
                FrameKind::End => {
                    let _ = StreamVerifier::new().verify_end(&buf);
                }
                FrameKind::Block => {
                    let _ = parse_block_frame(&buf);
                }
            }
        }
        // Raw message decoders on the mutated bytes directly, too.
        let _ = decode_request(&bytes);
        let _ = decode_reply(&bytes);
    }
    for _ in 0..10_000 {
        let len = (rng.next() % 64) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let _ = read_frame(&mut Cursor::new(&bytes), &mut buf);
        let _ = decode_request(&bytes);
        let _ = decode_reply(&bytes);
    }
}

#[test]
fn blob_and_read_back_requests_breaking_limits_are_refused_on_decode() {
    let refused = |r: Request, want: &str| {
        let bytes = encode_request(&r).unwrap();
        match decode_request(&bytes) {
            Err(ProtocolError::InvalidMessage(m)) => assert!(m.contains(want), "{m}"),
            other => panic!("{r:?} decoded as {other:?}"),
        }
    };
    refused(
        Request::PutBlob(PutBlobRequest {
            root: ds("bpool/qzb"),
            name: blob("a"),
            len: MAX_BLOB_LEN + 1,
        }),
        "over the limit",
    );
    refused(
        Request::GetBlob(GetBlobRequest {
            root: ds("bpool/qzb"),
            name: blob("a"),
            max_len: u64::MAX,
        }),
        "over the limit",
    );
    let read_back = |snapshot: &str, volblocksize| {
        Request::ReadBack(ReadBackRequest {
            root: ds("bpool/qzb"),
            snapshot: snap(snapshot),
            volblocksize,
        })
    };
    refused(read_back("bpool/qzb@s", 16384), "not strictly under");
    refused(read_back("bpool/other/v@s", 16384), "not strictly under");
    for bad in [0, 256, 3 * 4096, 2 << 20] {
        refused(read_back("bpool/qzb/v@s", bad), "not a power of two");
    }
    for good in [512, 16384, 1 << 20] {
        let r = read_back("bpool/qzb/v@s", good);
        assert_eq!(decode_request(&encode_request(&r).unwrap()).unwrap(), r);
    }
}

#[test]
fn blob_names_that_could_escape_are_refused_inside_messages() {
    // Encode a valid request, then swap the name for a hostile one of the same length.
    let r = Request::GetBlob(GetBlobRequest {
        root: ds("bpool/qzb"),
        name: blob("aa/bb"),
        max_len: 1,
    });
    let bytes = encode_request(&r).unwrap();
    for hostile in ["../bb", "/a/bb", "aa/.b", "AA/bb", "aa//b"] {
        let at = bytes.windows(5).position(|w| w == b"aa/bb").unwrap();
        let mut evil = bytes.clone();
        evil[at..at + 5].copy_from_slice(hostile.as_bytes());
        match decode_request(&evil) {
            Err(ProtocolError::Decode(m)) => assert!(m.contains("invalid blob name"), "{m}"),
            other => panic!("{hostile}: {other:?}"),
        }
    }
}

#[test]
fn blob_lists_that_are_too_long_unsorted_or_oversized_are_refused_on_decode() {
    let info = |name: &str, len| BlobInfo {
        name: blob(name),
        len,
    };
    let refused = |r: Reply, want: &str| match decode_reply(&encode_reply(&r).unwrap()) {
        Err(ProtocolError::InvalidMessage(m)) => assert!(m.contains(want), "{m}"),
        other => panic!("{other:?}"),
    };
    refused(Reply::Blobs(vec![info("b", 1), info("a", 1)]), "not sorted");
    refused(Reply::Blobs(vec![info("a", 1), info("a", 1)]), "not sorted");
    refused(
        Reply::Blobs(vec![info("a", MAX_BLOB_LEN + 1)]),
        "over the limit",
    );
    refused(
        Reply::Blob {
            len: MAX_BLOB_LEN + 1,
        },
        "over the limit",
    );
    let many: Vec<BlobInfo> = (0..=MAX_BLOBS_LISTED)
        .map(|i| info(&format!("{i:06}"), 0))
        .collect();
    refused(Reply::Blobs(many), "limit");
}

#[test]
fn block_frames_carry_an_offset_and_512_bytes_to_1_mib() {
    let mut wire = Vec::new();
    let block = pattern(16384);
    write_block_frame(&mut wire, 32768, &block).unwrap();
    let mut payload = Vec::new();
    let kind = read_frame(&mut Cursor::new(&wire), &mut payload).unwrap();
    assert_eq!(kind, Some(FrameKind::Block));
    let (offset, data) = parse_block_frame(&payload).unwrap();
    assert_eq!((offset, data), (32768, &block[..]));

    for bad in [0, 511, MAX_BLOCK_DATA + 1] {
        let mut out = Vec::new();
        assert!(
            write_block_frame(&mut out, 0, &vec![1; bad]).is_err(),
            "{bad}"
        );
        assert!(out.is_empty());
        assert!(parse_block_frame(&vec![1; BLOCK_PREFIX_LEN + bad]).is_err());
    }
    // A header claiming a larger block is refused before any buffer is sized.
    let mut huge = Vec::new();
    huge.extend_from_slice(&6u32.to_le_bytes());
    huge.extend_from_slice(&(u32::MAX).to_le_bytes());
    let mut payload = Vec::new();
    match read_frame(&mut Cursor::new(&huge), &mut payload) {
        Err(ProtocolError::BadFrameLength { kind, .. }) => assert_eq!(kind, FrameKind::Block),
        other => panic!("{other:?}"),
    }
    assert!(payload.capacity() < 1 << 20);
}
