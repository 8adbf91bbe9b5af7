use super::writer::{put_u32, put_u64, StreamWriter};
use super::*;

/// Owned copy of every event, to compare runs.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Event {
    Begin {
        header_type: HeaderType,
        featureflags: u64,
        flags: u32,
        toguid: u64,
        fromguid: u64,
        toname: Vec<u8>,
        payload: Vec<u8>,
    },
    Object {
        object: u64,
        object_type: u32,
        blksz: u32,
        bonus: Vec<u8>,
    },
    FreeObjects(FreeObjects),
    Write {
        object: u64,
        offset: u64,
        logical_size: u64,
        compression: u8,
        payload: Vec<u8>,
    },
    Free(Free),
    Spill {
        object: u64,
        payload: Vec<u8>,
    },
    WriteEmbedded {
        object: u64,
        offset: u64,
        psize: u32,
        payload: Vec<u8>,
    },
    ObjectRange(ObjectRange),
    Redact(Redact),
    End(End),
}

#[derive(Default)]
struct Recorder(Vec<Event>);

impl Sink for Recorder {
    fn on_begin(&mut self, b: &Begin<'_>) {
        self.0.push(Event::Begin {
            header_type: b.header_type,
            featureflags: b.featureflags,
            flags: b.flags,
            toguid: b.toguid,
            fromguid: b.fromguid,
            toname: b.toname.to_vec(),
            payload: b.payload.to_vec(),
        });
    }
    fn on_object(&mut self, o: &Object<'_>) {
        self.0.push(Event::Object {
            object: o.object,
            object_type: o.object_type,
            blksz: o.blksz,
            bonus: o.bonus.to_vec(),
        });
    }
    fn on_freeobjects(&mut self, f: &FreeObjects) {
        self.0.push(Event::FreeObjects(*f));
    }
    fn on_write(&mut self, w: &Write<'_>) {
        self.0.push(Event::Write {
            object: w.object,
            offset: w.offset,
            logical_size: w.logical_size,
            compression: w.compression,
            payload: w.payload.to_vec(),
        });
    }
    fn on_free(&mut self, f: &Free) {
        self.0.push(Event::Free(*f));
    }
    fn on_spill(&mut self, s: &Spill<'_>) {
        self.0.push(Event::Spill {
            object: s.object,
            payload: s.payload.to_vec(),
        });
    }
    fn on_write_embedded(&mut self, w: &WriteEmbedded<'_>) {
        self.0.push(Event::WriteEmbedded {
            object: w.object,
            offset: w.offset,
            psize: w.psize,
            payload: w.payload.to_vec(),
        });
    }
    fn on_object_range(&mut self, r: &ObjectRange) {
        self.0.push(Event::ObjectRange(*r));
    }
    fn on_redact(&mut self, r: &Redact) {
        self.0.push(Event::Redact(*r));
    }
    fn on_end(&mut self, e: &End) {
        self.0.push(Event::End(*e));
    }
}

const ZVOL: u32 = 3;
const DMU_OT_ZVOL: u32 = 23;
const BLOCK: u64 = 16 << 10;
const TOGUID: u64 = 0x1111_2222_3333_4444;
const FROMGUID: u64 = 0x5555_6666_7777_8888;

fn begin<'a>(toname: &'a [u8], fromguid: u64, features: u64, payload: &'a [u8]) -> Begin<'a> {
    Begin {
        header_type: HeaderType::Substream,
        featureflags: features,
        creation_time: 1_700_000_000,
        objset_type: ZVOL,
        flags: 0,
        toguid: TOGUID,
        fromguid,
        toname,
        payload,
    }
}

fn block(seed: u8) -> Vec<u8> {
    (0..BLOCK as usize)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn zvol_object(w: &mut StreamWriter) {
    w.object(&Object {
        object: 1,
        object_type: DMU_OT_ZVOL,
        bonus_type: 0,
        blksz: BLOCK as u32,
        bonuslen: 0,
        checksum_type: 0,
        compress: 0,
        dn_slots: 1,
        flags: 0,
        raw_bonuslen: 0,
        indblkshift: 17,
        nlevels: 2,
        nblkptr: 1,
        maxblkid: 63,
        bonus: &[],
    });
}

fn plain_write(w: &mut StreamWriter, offset: u64, data: &[u8]) {
    w.write(&Write {
        object: 1,
        object_type: DMU_OT_ZVOL,
        offset,
        logical_size: data.len() as u64,
        checksum_type: 7,
        flags: 0,
        compression: 0,
        compressed_size: 0,
        payload: data,
    });
}

fn free(w: &mut StreamWriter, offset: u64, length: u64) {
    w.free(&Free {
        object: 1,
        offset,
        length,
    });
}

/// `zfs send pool/vm/root@s1` of a zvol: OBJECT 1, its writes, the holes, FREE to the end.
fn write_full_substream(w: &mut StreamWriter, name: &[u8]) {
    w.begin(&begin(name, 0, 0, &[]));
    w.freeobjects(&FreeObjects {
        firstobj: 0,
        numobjs: 1,
    });
    zvol_object(w);
    w.freeobjects(&FreeObjects {
        firstobj: 2,
        numobjs: 30,
    });
    plain_write(w, 0, &block(1));
    plain_write(w, BLOCK, &block(2));
    free(w, 2 * BLOCK, 3 * BLOCK);
    plain_write(w, 5 * BLOCK, &block(3));
    free(w, 6 * BLOCK, u64::MAX);
    w.end(TOGUID);
}

fn full_stream() -> Vec<u8> {
    let mut w = StreamWriter::new();
    write_full_substream(&mut w, b"pool/vm/root@s1");
    w.into_bytes()
}

fn write_incremental_substream(w: &mut StreamWriter, name: &[u8], seed: u8) {
    w.begin(&begin(name, FROMGUID, 0, &[]));
    zvol_object(w);
    plain_write(w, 3 * BLOCK, &block(seed));
    free(w, 4 * BLOCK, BLOCK);
    w.end(TOGUID);
}

fn incremental_stream() -> Vec<u8> {
    let mut w = StreamWriter::new();
    write_incremental_substream(&mut w, b"pool/vm/root@s2", 9);
    w.into_bytes()
}

/// An XDR-packed nvlist stands in for the payload: the tap does not decode it.
fn nvlist_bytes(len: usize) -> Vec<u8> {
    let mut v = vec![1, 1, 0, 0];
    v.extend((0..len - 4).map(|i| (i % 251) as u8));
    v
}

fn compound_begin<'a>(name: &'a [u8], payload: &'a [u8]) -> Begin<'a> {
    Begin {
        header_type: HeaderType::Compound,
        featureflags: 0,
        creation_time: 0,
        objset_type: 0,
        flags: 0,
        toguid: 0,
        fromguid: 0,
        toname: name,
        payload,
    }
}

/// `zfs send -p pool/vm/root@s1`: compound BEGIN + nvlist, END, the sub-stream, final END.
fn compound_p_stream() -> Vec<u8> {
    let nv = nvlist_bytes(200);
    let mut w = StreamWriter::new();
    w.begin(&compound_begin(b"pool/vm/root@s1", &nv));
    w.compound_end();
    write_full_substream(&mut w, b"pool/vm/root@s1");
    w.package_end();
    w.into_bytes()
}

/// `zfs send -I @s1 pool/vm/root@s3`: one sub-stream per snapshot in a compound package.
fn i_package_stream() -> Vec<u8> {
    let mut w = StreamWriter::new();
    w.begin(&compound_begin(b"pool/vm/root@s3", &[]));
    w.compound_end();
    write_incremental_substream(&mut w, b"pool/vm/root@s2", 4);
    write_incremental_substream(&mut w, b"pool/vm/root@s3", 5);
    w.package_end();
    w.into_bytes()
}

/// `zfs send -t <token>`: RESUMING, the resume nvlist as BEGIN payload, the first write in
/// the middle of the object.
fn resumed_stream() -> Vec<u8> {
    let nv = nvlist_bytes(96);
    let mut w = StreamWriter::new();
    w.begin(&begin(b"pool/vm/root@s1", 0, feature::RESUMING, &nv));
    zvol_object(&mut w);
    plain_write(&mut w, 40 * BLOCK, &block(7));
    free(&mut w, 41 * BLOCK, u64::MAX);
    w.end(TOGUID);
    w.into_bytes()
}

fn samples() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("full", full_stream()),
        ("incremental", incremental_stream()),
        ("compound -p", compound_p_stream()),
        ("-I package", i_package_stream()),
        ("resumed", resumed_stream()),
    ]
}

fn parse_chunks<'a>(
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> (Vec<Event>, Result<(), StreamError>) {
    let mut tap = Tap::new(Recorder::default());
    let mut result = Ok(());
    for chunk in chunks {
        result = tap.feed(chunk);
        if result.is_err() {
            break;
        }
    }
    if result.is_ok() {
        result = tap.finish();
    }
    (tap.into_sink().0, result)
}

fn parse(data: &[u8]) -> (Vec<Event>, Result<(), StreamError>) {
    parse_chunks([data])
}

fn parse_ok(data: &[u8]) -> Vec<Event> {
    let (events, result) = parse(data);
    result.expect("stream parses");
    events
}

fn parse_err(data: &[u8]) -> ErrorKind {
    parse(data).1.expect_err("stream is refused").kind
}

/// A small deterministic generator (xorshift64*) for splits and noise.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn random_splits<'a>(data: &'a [u8], rng: &mut Rng, max: u64) -> Vec<&'a [u8]> {
    let mut chunks = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let n = (1 + rng.below(max) as usize).min(rest.len());
        let (a, b) = rest.split_at(n);
        chunks.push(a);
        rest = b;
    }
    chunks
}

fn writes(events: &[Event]) -> Vec<(u64, u64, Vec<u8>)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Write {
                offset,
                logical_size,
                payload,
                ..
            } => Some((*offset, *logical_size, payload.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn full_zvol_stream_yields_object_writes_frees_and_a_free_to_the_end() {
    let events = parse_ok(&full_stream());
    let Event::Begin {
        header_type,
        toguid,
        fromguid,
        toname,
        payload,
        ..
    } = &events[0]
    else {
        panic!("first event {:?}", events[0]);
    };
    assert_eq!(*header_type, HeaderType::Substream);
    assert_eq!((*toguid, *fromguid), (TOGUID, 0));
    assert_eq!(toname, b"pool/vm/root@s1");
    assert!(payload.is_empty());
    assert!(events.contains(&Event::Object {
        object: 1,
        object_type: DMU_OT_ZVOL,
        blksz: BLOCK as u32,
        bonus: vec![],
    }));
    assert_eq!(
        writes(&events),
        vec![
            (0, BLOCK, block(1)),
            (BLOCK, BLOCK, block(2)),
            (5 * BLOCK, BLOCK, block(3)),
        ]
    );
    assert!(events.contains(&Event::Free(Free {
        object: 1,
        offset: 6 * BLOCK,
        length: u64::MAX
    })));
    let Event::End(end) = events.last().unwrap() else {
        panic!("last event {:?}", events.last());
    };
    assert_eq!(end.kind, EndKind::Substream);
    assert_eq!(end.toguid, TOGUID);
    assert_eq!(events.len(), 10);
}

#[test]
fn incremental_stream_carries_its_fromguid_and_only_the_changes() {
    let events = parse_ok(&incremental_stream());
    assert!(matches!(&events[0], Event::Begin { fromguid, .. } if *fromguid == FROMGUID));
    assert_eq!(writes(&events), vec![(3 * BLOCK, BLOCK, block(9))]);
    assert!(events.contains(&Event::Free(Free {
        object: 1,
        offset: 4 * BLOCK,
        length: BLOCK
    })));
}

#[test]
fn compound_p_stream_yields_its_nvlist_header_end_substream_and_package_end() {
    let events = parse_ok(&compound_p_stream());
    assert!(matches!(&events[0],
        Event::Begin { header_type: HeaderType::Compound, payload, .. } if *payload == nvlist_bytes(200)));
    assert!(matches!(&events[1], Event::End(e) if e.kind == EndKind::CompoundHeader));
    assert!(matches!(
        &events[2],
        Event::Begin {
            header_type: HeaderType::Substream,
            ..
        }
    ));
    let kinds: Vec<EndKind> = events
        .iter()
        .filter_map(|e| match e {
            Event::End(e) => Some(e.kind),
            _ => None,
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            EndKind::CompoundHeader,
            EndKind::Substream,
            EndKind::Package
        ]
    );
    assert_eq!(writes(&events).len(), 3);
}

#[test]
fn i_package_yields_each_substream_in_order() {
    let events = parse_ok(&i_package_stream());
    let names: Vec<Vec<u8>> = events
        .iter()
        .filter_map(|e| match e {
            Event::Begin {
                header_type: HeaderType::Substream,
                toname,
                ..
            } => Some(toname.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        names,
        vec![b"pool/vm/root@s2".to_vec(), b"pool/vm/root@s3".to_vec()]
    );
    assert_eq!(
        writes(&events),
        vec![(3 * BLOCK, BLOCK, block(4)), (3 * BLOCK, BLOCK, block(5))]
    );
}

#[test]
fn resumed_stream_carries_its_resume_nvlist_and_starts_mid_object() {
    let events = parse_ok(&resumed_stream());
    assert!(matches!(&events[0],
        Event::Begin { featureflags, payload, .. }
            if *featureflags == feature::RESUMING && *payload == nvlist_bytes(96)));
    assert_eq!(writes(&events), vec![(40 * BLOCK, BLOCK, block(7))]);
}

#[test]
fn events_are_identical_whatever_the_chunking() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for (name, stream) in samples() {
        let whole = parse_ok(&stream);
        let (bytewise, result) = parse_chunks(stream.chunks(1));
        result.unwrap_or_else(|e| panic!("{name} byte by byte: {e}"));
        assert_eq!(bytewise, whole, "{name} byte by byte");
        for max in [7, 313, 4096, 20_000, 300_000] {
            for _ in 0..5 {
                let (events, result) = parse_chunks(random_splits(&stream, &mut rng, max));
                result.unwrap_or_else(|e| panic!("{name} split ≤{max}: {e}"));
                assert_eq!(events, whole, "{name} split ≤{max}");
            }
        }
    }
}

#[test]
fn payload_inside_one_chunk_is_handed_through_without_copying() {
    struct Pointers(Vec<usize>);
    impl Sink for Pointers {
        fn on_write(&mut self, w: &Write<'_>) {
            self.0.push(w.payload.as_ptr() as usize);
        }
    }
    let stream = full_stream();
    let mut tap = Tap::new(Pointers(Vec::new()));
    tap.feed(&stream).unwrap();
    tap.finish().unwrap();
    let start = stream.as_ptr() as usize;
    for p in tap.into_sink().0 {
        assert!(p >= start && p < start + stream.len());
    }
}

#[test]
fn truncation_anywhere_is_an_error_from_finish() {
    for (name, stream) in samples() {
        // Every cut inside the first records and the last ones, and a stride through the rest.
        let cuts =
            (0..stream.len()).filter(|&n| n < 1500 || n > stream.len() - 1500 || n % 97 == 0);
        for cut in cuts {
            let mut tap = Tap::new(Recorder::default());
            tap.feed(&stream[..cut])
                .unwrap_or_else(|e| panic!("{name} prefix {cut}: {e}"));
            let err = tap.finish().expect_err("truncated stream is refused");
            assert!(
                matches!(
                    err.kind,
                    ErrorKind::Truncated { .. } | ErrorKind::MissingEnd { .. }
                ),
                "{name} cut at {cut}: {err}"
            );
            assert_eq!(err.offset, cut as u64);
        }
    }
}

#[test]
fn unknown_record_type_is_an_error() {
    let mut w = StreamWriter::new();
    w.begin(&begin(b"p/v@s", 0, 0, &[]));
    w.record(StreamWriter::header(11), &[]);
    w.end(TOGUID);
    let err = parse(w.bytes()).1.unwrap_err();
    assert_eq!(err.kind, ErrorKind::UnknownRecordType(11));
    assert_eq!(err.offset, RECORD_HEADER_LEN as u64);
}

#[test]
fn write_byref_of_a_dedup_stream_is_refused() {
    let mut w = StreamWriter::new();
    w.begin(&begin(b"p/v@s", 0, 0, &[]));
    w.record(StreamWriter::header(RecordType::WriteByRef as u32), &[]);
    assert_eq!(
        parse_err(w.bytes()),
        ErrorKind::UnsupportedRecordType(RecordType::WriteByRef)
    );
}

#[test]
fn oversized_write_is_refused_from_its_header_alone() {
    let mut w = StreamWriter::new();
    w.begin(&begin(b"p/v@s", 0, feature::LARGE_BLOCKS, &[]));
    let mut h = StreamWriter::header(RecordType::Write as u32);
    put_u64(&mut h, 32, MAX_BLOCK_SIZE * 2); // drr_logical_size
    w.record(h, &[]);
    // Only the headers are fed: the refusal comes before any payload is awaited.
    let mut tap = Tap::new(Recorder::default());
    let err = tap.feed(w.bytes()).unwrap_err();
    assert!(matches!(
        err.kind,
        ErrorKind::InvalidSize {
            field: "logical size",
            ..
        }
    ));

    // A compressed write whose payload size is over the limit.
    let mut w = StreamWriter::new();
    w.begin(&begin(b"p/v@s", 0, feature::COMPRESSED, &[]));
    let mut h = StreamWriter::header(RecordType::Write as u32);
    put_u64(&mut h, 32, BLOCK);
    h[50] = 15; // drr_compressiontype
    put_u64(&mut h, 96, u64::MAX); // drr_compressed_size
    w.record(h, &[]);
    assert!(matches!(
        parse_err(w.bytes()),
        ErrorKind::PayloadTooLarge {
            record: RecordType::Write,
            length: u64::MAX,
            ..
        }
    ));
}

#[test]
fn write_smaller_than_the_minimum_block_is_refused() {
    let mut w = StreamWriter::new();
    w.begin(&begin(b"p/v@s", 0, 0, &[]));
    plain_write(&mut w, 0, &[0u8; 8]);
    assert!(matches!(
        parse_err(w.bytes()),
        ErrorKind::InvalidSize {
            record: RecordType::Write,
            value: 8,
            ..
        }
    ));
}

#[test]
fn oversized_begin_payload_is_refused() {
    let mut h = [0u8; RECORD_HEADER_LEN];
    put_u32(&mut h, 4, (MAX_BEGIN_PAYLOAD + 8) as u32);
    put_u64(&mut h, 8, BACKUP_MAGIC);
    put_u64(&mut h, 16, HDRTYPE_SUBSTREAM);
    assert_eq!(
        parse_err(&h),
        ErrorKind::PayloadTooLarge {
            record: RecordType::Begin,
            length: MAX_BEGIN_PAYLOAD + 8,
            limit: MAX_BEGIN_PAYLOAD
        }
    );
}

#[test]
fn oversized_object_bonus_and_embedded_payload_are_refused() {
    let mut w = StreamWriter::new();
    w.begin(&begin(b"p/v@s", 0, 0, &[]));
    let mut h = StreamWriter::header(RecordType::Object as u32);
    put_u32(&mut h, 36, u32::MAX); // drr_raw_bonuslen
    w.record(h, &[]);
    assert!(matches!(
        parse_err(w.bytes()),
        ErrorKind::PayloadTooLarge {
            record: RecordType::Object,
            ..
        }
    ));

    let mut w = StreamWriter::new();
    w.begin(&begin(b"p/v@s", 0, feature::EMBED_DATA, &[]));
    let mut h = StreamWriter::header(RecordType::WriteEmbedded as u32);
    put_u32(&mut h, 52, 113); // drr_psize
    w.record(h, &[]);
    assert!(matches!(
        parse_err(w.bytes()),
        ErrorKind::PayloadTooLarge {
            record: RecordType::WriteEmbedded,
            length: 113,
            ..
        }
    ));
}

#[test]
fn payload_lengths_follow_openzfs_per_record_type() {
    let mut w = StreamWriter::new();
    let features = feature::EMBED_DATA | feature::COMPRESSED | feature::RAW | feature::SA_SPILL;
    w.begin(&begin(b"p/fs@s", 0, features, &[]));
    // OBJECT: bonuslen 13 -> 16 bytes; raw_bonuslen 20 wins over bonuslen when set.
    let mut object = Object {
        object: 5,
        object_type: 19,
        bonus_type: 44,
        blksz: 512,
        bonuslen: 13,
        checksum_type: 0,
        compress: 0,
        dn_slots: 1,
        flags: 0,
        raw_bonuslen: 0,
        indblkshift: 17,
        nlevels: 1,
        nblkptr: 1,
        maxblkid: 0,
        bonus: &[0xb; 16],
    };
    w.object(&object);
    object.raw_bonuslen = 20;
    object.bonus = &[0xc; 20];
    w.object(&object);
    // WRITE compressed: compressed size, not logical size.
    w.write(&Write {
        object: 5,
        object_type: 19,
        offset: 0,
        logical_size: 4096,
        checksum_type: 7,
        flags: 0,
        compression: 15,
        compressed_size: 100,
        payload: &[0xd; 100],
    });
    // SPILL: length, or compressed size when set.
    let mut spill = Spill {
        object: 5,
        length: 512,
        flags: 0,
        compression: 0,
        compressed_size: 0,
        object_type: 45,
        payload: &[0xe; 512],
    };
    w.spill(&spill);
    spill.compressed_size = 24;
    spill.payload = &[0xf; 24];
    w.spill(&spill);
    // WRITE_EMBEDDED: psize rounded up to 8.
    w.write_embedded(&WriteEmbedded {
        object: 5,
        offset: 4096,
        length: 4096,
        compression: 2,
        etype: 0,
        lsize: 4096,
        psize: 61,
        payload: &[0x1; 64],
    });
    w.object_range(&ObjectRange {
        firstobj: 0,
        numslots: 32,
        flags: 0,
    });
    w.redact(&Redact {
        object: 5,
        offset: 8192,
        length: 4096,
    });
    w.end(TOGUID);
    let events = parse_ok(w.bytes());
    let lens: Vec<usize> = events
        .iter()
        .filter_map(|e| match e {
            Event::Object { bonus, .. } => Some(bonus.len()),
            Event::Write { payload, .. }
            | Event::Spill { payload, .. }
            | Event::WriteEmbedded { payload, .. } => Some(payload.len()),
            _ => None,
        })
        .collect();
    assert_eq!(lens, vec![16, 20, 100, 512, 24, 64]);
    assert!(events.contains(&Event::Redact(Redact {
        object: 5,
        offset: 8192,
        length: 4096
    })));
    assert!(events.contains(&Event::ObjectRange(ObjectRange {
        firstobj: 0,
        numslots: 32,
        flags: 0
    })));
}

#[test]
fn bad_magic_is_refused() {
    let mut w = StreamWriter::new();
    w.begin_with(0xdead_beef, HDRTYPE_SUBSTREAM, &begin(b"p/v@s", 0, 0, &[]));
    assert_eq!(parse_err(w.bytes()), ErrorKind::BadMagic(0xdead_beef));
}

#[test]
fn byteswapped_stream_is_refused_as_such() {
    let mut w = StreamWriter::new();
    w.begin_with(
        BACKUP_MAGIC.swap_bytes(),
        HDRTYPE_SUBSTREAM.swap_bytes(),
        &begin(b"p/v@s", 0, 0, &[]),
    );
    let err = parse(w.bytes()).1.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Byteswapped);
    assert!(err.to_string().contains("byte order"));
}

#[test]
fn unknown_feature_flags_and_header_types_are_refused() {
    let mut w = StreamWriter::new();
    w.begin(&begin(b"p/v@s", 0, 1 << 30, &[]));
    assert_eq!(
        parse_err(w.bytes()),
        ErrorKind::UnsupportedFeatures(1 << 30)
    );
    let mut w = StreamWriter::new();
    w.begin(&begin(b"p/v@s", 0, feature::DEDUP, &[]));
    assert_eq!(
        parse_err(w.bytes()),
        ErrorKind::UnsupportedFeatures(feature::DEDUP)
    );
    let mut w = StreamWriter::new();
    w.begin_with(BACKUP_MAGIC, 3, &begin(b"p/v@s", 0, 0, &[]));
    assert_eq!(parse_err(w.bytes()), ErrorKind::UnknownHeaderType(3));
}

#[test]
fn corrupted_payload_fails_the_next_header_checksum() {
    let mut stream = full_stream();
    // A byte inside the first WRITE's payload: after BEGIN, FREEOBJECTS, OBJECT, FREEOBJECTS
    // and the WRITE header.
    let at = 5 * RECORD_HEADER_LEN + 100;
    stream[at] ^= 1;
    let err = parse(&stream).1.unwrap_err();
    assert!(
        matches!(
            err.kind,
            ErrorKind::ChecksumMismatch {
                record: RecordType::Write,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.offset, 5 * RECORD_HEADER_LEN as u64 + BLOCK);
    // Without verification the same stream parses (the structure is intact).
    let mut tap = Tap::with_options(
        Recorder::default(),
        Options {
            verify_checksums: false,
        },
    );
    tap.feed(&stream).unwrap();
    tap.finish().unwrap();
}

#[test]
fn end_checksum_mismatch_is_refused() {
    let mut w = StreamWriter::new();
    w.begin(&begin(b"p/v@s", 0, 0, &[]));
    let mut h = StreamWriter::header(RecordType::End as u32);
    put_u64(&mut h, 8, 42);
    w.record(h, &[]);
    assert!(matches!(
        parse_err(w.bytes()),
        ErrorKind::EndChecksumMismatch { .. }
    ));
}

#[test]
fn record_without_checksum_inside_a_substream_is_refused() {
    let mut w = StreamWriter::new();
    w.begin(&begin(b"p/v@s", 0, 0, &[]));
    w.raw(&StreamWriter::header(RecordType::FreeObjects as u32));
    assert_eq!(
        parse_err(w.bytes()),
        ErrorKind::MissingChecksum(RecordType::FreeObjects)
    );
}

#[test]
fn records_out_of_place_are_refused() {
    // A record before BEGIN.
    let mut w = StreamWriter::new();
    w.freeobjects(&FreeObjects {
        firstobj: 0,
        numobjs: 1,
    });
    assert!(matches!(
        parse_err(w.bytes()),
        ErrorKind::UnexpectedRecord {
            record: RecordType::FreeObjects,
            ..
        }
    ));
    // A BEGIN inside a sub-stream.
    let mut w = StreamWriter::new();
    w.begin(&begin(b"p/v@s", 0, 0, &[]));
    w.begin(&begin(b"p/v@t", 0, 0, &[]));
    assert!(matches!(
        parse_err(w.bytes()),
        ErrorKind::UnexpectedRecord {
            record: RecordType::Begin,
            ..
        }
    ));
    // A compound BEGIN inside a package.
    let mut w = StreamWriter::new();
    w.begin(&compound_begin(b"p/v@s", &[]));
    w.compound_end();
    w.begin(&compound_begin(b"p/v@s", &[]));
    assert!(matches!(
        parse_err(w.bytes()),
        ErrorKind::UnexpectedRecord {
            record: RecordType::Begin,
            ..
        }
    ));
    // A data record between the sub-streams of a package.
    let mut w = StreamWriter::new();
    w.begin(&compound_begin(b"p/v@s", &[]));
    w.compound_end();
    free(&mut w, 0, 1);
    assert!(matches!(
        parse_err(w.bytes()),
        ErrorKind::UnexpectedRecord {
            record: RecordType::Free,
            ..
        }
    ));
}

#[test]
fn data_after_the_end_is_refused() {
    let mut stream = full_stream();
    let len = stream.len() as u64;
    stream.push(0);
    let err = parse(&stream).1.unwrap_err();
    assert_eq!((err.kind, err.offset), (ErrorKind::TrailingData, len));
    // A second plain stream appended is not a package either.
    let mut two = full_stream();
    two.extend(full_stream());
    assert_eq!(parse_err(&two), ErrorKind::TrailingData);
}

#[test]
fn package_without_its_final_end_is_refused_by_finish() {
    let stream = compound_p_stream();
    let without = &stream[..stream.len() - RECORD_HEADER_LEN];
    assert!(matches!(parse_err(without), ErrorKind::MissingEnd { .. }));
}

#[test]
fn a_failed_tap_refuses_further_input() {
    let mut tap = Tap::new(Recorder::default());
    assert!(tap.feed(&[0xff; RECORD_HEADER_LEN]).is_err());
    assert_eq!(tap.feed(&[]).unwrap_err().kind, ErrorKind::AlreadyFailed);
    assert_eq!(tap.finish().unwrap_err().kind, ErrorKind::AlreadyFailed);
}

#[test]
fn arbitrary_bytes_and_mutated_streams_never_panic() {
    let mut rng = Rng(0x0123_4567_89AB_CDEF);
    let samples = samples();
    for round in 0..3000 {
        let mut data = if round % 3 == 0 {
            (0..rng.below(2000)).map(|_| rng.next() as u8).collect()
        } else {
            let (_, s) = &samples[rng.below(samples.len() as u64) as usize];
            let mut s = s.clone();
            for _ in 0..=rng.below(4) {
                let at = rng.below(s.len() as u64) as usize;
                s[at] = rng.next() as u8;
            }
            s.truncate(rng.below(s.len() as u64 + 1) as usize + s.len() / 2);
            s
        };
        if round % 5 == 0 {
            data.extend((0..rng.below(600)).map(|_| rng.next() as u8));
        }
        for verify_checksums in [true, false] {
            let mut tap = Tap::with_options(Recorder::default(), Options { verify_checksums });
            for chunk in random_splits(&data, &mut rng, 700) {
                if tap.feed(chunk).is_err() {
                    break;
                }
            }
            let _ = tap.finish().map_err(|e| e.to_string());
        }
    }
}

#[test]
fn a_stream_taken_piece_by_piece_is_the_same_stream() {
    let mut w = StreamWriter::new();
    let mut pieces = Vec::new();
    w.begin(&begin(b"pool/vm/root@s1", 0, 0, &[]));
    pieces.extend(w.take_bytes());
    assert!(w.bytes().is_empty());
    zvol_object(&mut w);
    plain_write(&mut w, 0, &block(1));
    pieces.extend(w.take_bytes());
    free(&mut w, BLOCK, u64::MAX);
    w.end(TOGUID);
    pieces.extend(w.take_bytes());

    let mut whole = StreamWriter::new();
    whole.begin(&begin(b"pool/vm/root@s1", 0, 0, &[]));
    zvol_object(&mut whole);
    plain_write(&mut whole, 0, &block(1));
    free(&mut whole, BLOCK, u64::MAX);
    whole.end(TOGUID);
    assert_eq!(pieces, whole.into_bytes());
    parse_ok(&pieces);
}
