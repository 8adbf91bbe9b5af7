use super::*;
use crate::zstream::writer::StreamWriter;
use crate::zstream::{
    feature, Begin, Free, FreeObjects, HeaderType, Object, Tap, Write, MIN_BLOCK_SIZE,
};

const BLOCK: u64 = 16 << 10;
const VOLSIZE: u64 = 8 * BLOCK;
const KEY: [u8; 32] = [7; 32];
const TOGUID: u64 = 0x1111_2222_3333_4444;
const FROMGUID: u64 = 0x5555_6666_7777_8888;

fn params() -> ManifestParams {
    ManifestParams {
        qube: "work".into(),
        volume: "private".into(),
        dataset: "pool/qubes/work/private".into(),
        seq: 3,
        prev_header_hash: [9; 32],
        volsize: VOLSIZE,
        volblocksize: BLOCK,
        created: 1_700_000_000,
    }
}

fn block(seed: u8) -> Vec<u8> {
    (0..BLOCK as usize)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

fn begin(w: &mut StreamWriter, fromguid: u64, features: u64) {
    w.begin(&Begin {
        header_type: HeaderType::Substream,
        featureflags: features,
        creation_time: 1_700_000_000,
        objset_type: OBJSET_TYPE_ZVOL,
        flags: 0,
        toguid: TOGUID,
        fromguid,
        toname: b"pool/qubes/work/private@s1",
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
        maxblkid: 5,
        bonus: &[],
    });
}

fn write_c(w: &mut StreamWriter, obj: u64, offset: u64, data: &[u8], compression: u8) {
    w.write(&Write {
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

fn write(w: &mut StreamWriter, offset: u64, data: &[u8]) {
    write_c(w, 1, offset, data, 0);
}

fn free(w: &mut StreamWriter, offset: u64, length: u64) {
    w.free(&Free {
        object: 1,
        offset,
        length,
    });
}

/// Object 1's records as OpenZFS orders them: OBJECT, the FREE past the object's end, then
/// the data in offset order. `from_block` skips the blocks before it (a resumed stream).
fn object1_records(w: &mut StreamWriter, from_block: u64) {
    object(w, 1, OBJECT_TYPE_ZVOL, BLOCK as u32);
    free(w, 6 * BLOCK, u64::MAX);
    let mut two = block(1);
    two.extend(vec![0u8; BLOCK as usize]);
    if from_block == 0 {
        write(w, 0, &two); // data at 0, zeros at 1
    }
    if from_block <= 2 {
        free(w, 2 * BLOCK, 2 * BLOCK);
    }
    if from_block <= 4 {
        write(w, 4 * BLOCK, &block(3));
    }
    if from_block <= 5 {
        write(w, 5 * BLOCK, &block(4));
    }
}

/// The ZAP object 2 (volsize property) after object 1: ignored, but it ends object 1.
fn object2_records(w: &mut StreamWriter) {
    object(w, 2, 22, 512);
    write_c(w, 2, 0, &[5u8; 512], 0);
}

fn full_stream() -> Vec<u8> {
    let mut w = StreamWriter::new();
    begin(&mut w, 0, 0);
    w.freeobjects(&FreeObjects {
        firstobj: 0,
        numobjs: 1,
    });
    object1_records(&mut w, 0);
    object2_records(&mut w);
    w.end(TOGUID);
    w.into_bytes()
}

fn run_chunks<'a>(
    builder: ManifestBuilder<Vec<u8>>,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> Result<(ManifestHeader, Vec<u8>), ManifestError> {
    let mut tap = Tap::new(builder);
    for chunk in chunks {
        tap.feed(chunk).expect("stream parses");
    }
    tap.finish().expect("stream ends");
    tap.into_sink().finish()
}

fn run(stream: &[u8]) -> Result<(ManifestHeader, Vec<u8>), ManifestError> {
    run_chunks(
        ManifestBuilder::new(params(), KEY, Vec::new()).unwrap(),
        [stream],
    )
}

fn entries(body: &[u8]) -> Vec<Entry> {
    assert_eq!(body.len() % ENTRY_LEN, 0);
    body.chunks_exact(ENTRY_LEN)
        .enumerate()
        .map(|(i, e)| Entry::decode(e.try_into().unwrap(), i as u64).unwrap())
        .collect()
}

fn data(offset: u64, seed: u8) -> Entry {
    Entry {
        kind: EntryKind::Data,
        offset,
        len: BLOCK,
        tag: block_tag(&KEY, offset, &block(seed)),
    }
}

fn range(kind: EntryKind, offset: u64, len: u64) -> Entry {
    Entry {
        kind,
        offset,
        len,
        tag: [0; 32],
    }
}

fn expected_full_entries() -> Vec<Entry> {
    vec![
        data(0, 1),
        range(EntryKind::Hole, BLOCK, BLOCK),
        range(EntryKind::Free, 2 * BLOCK, 2 * BLOCK),
        data(4 * BLOCK, 3),
        data(5 * BLOCK, 4),
        range(EntryKind::Free, 6 * BLOCK, 2 * BLOCK),
    ]
}

fn err(stream: &[u8]) -> ManifestError {
    run(stream).expect_err("manifest refused")
}

#[test]
fn full_stream_yields_data_holes_and_frees_in_offset_order() {
    let (header, body) = run(&full_stream()).unwrap();
    assert_eq!(entries(&body), expected_full_entries());
    assert_eq!(header.entries, 6);
    assert_eq!(header.body_hash, *blake3::hash(&body).as_bytes());
    assert_eq!(header.snapshot_guid, TOGUID);
    assert_eq!(header.parent_guid, 0);
    assert_eq!(
        (header.volsize, header.volblocksize, header.seq),
        (VOLSIZE, BLOCK, 3)
    );
    assert_eq!(header.prev_header_hash, [9; 32]);
    header.verify_body(&body[..]).unwrap();
}

#[test]
fn incremental_stream_records_its_parent_guid() {
    let mut w = StreamWriter::new();
    begin(&mut w, FROMGUID, 0);
    object(&mut w, 1, OBJECT_TYPE_ZVOL, BLOCK as u32);
    write(&mut w, 3 * BLOCK, &block(8));
    w.end(TOGUID);
    let (header, body) = run(w.bytes()).unwrap();
    assert_eq!(header.parent_guid, FROMGUID);
    assert_eq!(entries(&body), vec![data(3 * BLOCK, 8)]);
}

#[test]
fn any_chunking_gives_identical_manifest_bytes() {
    let stream = full_stream();
    let (whole_header, whole_body) = run(&stream).unwrap();
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for max in [1usize, 3, 311, 313, 4096, 20_000] {
        let mut chunks = Vec::new();
        let mut rest = &stream[..];
        while !rest.is_empty() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let n = (seed as usize % max + 1).min(rest.len());
            let (c, tail) = rest.split_at(n);
            chunks.push(c);
            rest = tail;
        }
        let builder = ManifestBuilder::new(params(), KEY, Vec::new()).unwrap();
        let (header, body) = run_chunks(builder, chunks).unwrap();
        assert_eq!(body, whole_body, "chunks of at most {max}");
        assert_eq!(header.encode(), whole_header.encode());
        assert_eq!(header.mac(&KEY), whole_header.mac(&KEY));
    }
}

#[test]
fn moved_block_gets_a_different_tag() {
    let b = block(1);
    assert_ne!(block_tag(&KEY, 0, &b), block_tag(&KEY, BLOCK, &b));
    assert_ne!(block_tag(&KEY, 0, &b), block_tag(&[8; 32], 0, &b));
    let stream_at = |offset| {
        let mut w = StreamWriter::new();
        begin(&mut w, FROMGUID, 0);
        object(&mut w, 1, OBJECT_TYPE_ZVOL, BLOCK as u32);
        write(&mut w, offset, &b);
        w.end(TOGUID);
        entries(&run(w.bytes()).unwrap().1)
    };
    let (at0, at1) = (stream_at(0), stream_at(BLOCK));
    assert_ne!(at0[0].tag, at1[0].tag);
}

#[test]
fn header_round_trips_through_verify() {
    let (header, _) = run(&full_stream()).unwrap();
    let bytes = header.encode();
    assert!((MIN_HEADER_LEN..=MAX_HEADER_LEN).contains(&bytes.len()));
    let again = ManifestHeader::verify(&bytes, &header.mac(&KEY), &KEY).unwrap();
    assert_eq!(again, header);
    assert_eq!(again.hash(), *blake3::hash(&bytes).as_bytes());
}

#[test]
fn flipped_byte_in_header_or_body_fails_verify() {
    let (header, body) = run(&full_stream()).unwrap();
    let bytes = header.encode();
    let mac = header.mac(&KEY);
    for i in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0x01;
        assert!(
            matches!(
                ManifestHeader::verify(&bad, &mac, &KEY),
                Err(ManifestError::BadMac)
            ),
            "header byte {i}"
        );
    }
    let mut bad_mac = mac;
    bad_mac[31] ^= 0x80;
    assert!(matches!(
        ManifestHeader::verify(&bytes, &bad_mac, &KEY),
        Err(ManifestError::BadMac)
    ));
    assert!(matches!(
        ManifestHeader::verify(&bytes, &mac, &[8; 32]),
        Err(ManifestError::BadMac)
    ));
    for i in (0..body.len()).step_by(7) {
        let mut bad = body.clone();
        bad[i] ^= 0x01;
        assert!(
            matches!(
                header.verify_body(&bad[..]),
                Err(ManifestError::BodyMismatch)
            ),
            "body byte {i}"
        );
    }
    assert!(header.verify_body(&body[..body.len() - ENTRY_LEN]).is_err());
    let mut longer = body.clone();
    longer.extend_from_slice(&body[..ENTRY_LEN]);
    assert!(header.verify_body(&longer[..]).is_err());
}

#[test]
fn oversized_or_short_header_is_refused_before_the_mac() {
    // Even with the right MAC for these bytes, the length is refused first.
    let big = vec![0u8; MAX_HEADER_LEN + 1];
    let mac = *blake3::keyed_hash(&KEY, &big).as_bytes();
    assert!(matches!(
        ManifestHeader::verify(&big, &mac, &KEY),
        Err(ManifestError::HeaderTooLarge { .. })
    ));
    let short = vec![0u8; MIN_HEADER_LEN - 1];
    let mac = *blake3::keyed_hash(&KEY, &short).as_bytes();
    assert!(matches!(
        ManifestHeader::verify(&short, &mac, &KEY),
        Err(ManifestError::HeaderTooShort { .. })
    ));
    // And a header MAC can never be mistaken for a block tag: tag messages are longer.
    assert!(MAX_HEADER_LEN < 8 + MIN_BLOCK_SIZE as usize);
}

#[test]
fn mac_checked_header_with_trailing_bytes_or_bad_names_is_refused() {
    let (header, _) = run(&full_stream()).unwrap();
    let mut bytes = header.encode();
    bytes.push(0);
    let mac = *blake3::keyed_hash(&KEY, &bytes).as_bytes();
    assert!(matches!(
        ManifestHeader::verify(&bytes, &mac, &KEY),
        Err(ManifestError::BadHeader(_))
    ));
    let mut bad = header.clone();
    bad.qube = "1bad".into();
    let bytes = bad.encode();
    assert!(matches!(
        ManifestHeader::verify(&bytes, &bad.mac(&KEY), &KEY),
        Err(ManifestError::BadHeader(_))
    ));
}

#[test]
fn compressed_write_is_refused() {
    let mut w = StreamWriter::new();
    begin(&mut w, 0, feature::COMPRESSED);
    object(&mut w, 1, OBJECT_TYPE_ZVOL, BLOCK as u32);
    write_c(&mut w, 1, 0, &block(1), 15);
    w.end(TOGUID);
    assert!(matches!(
        err(w.bytes()),
        ManifestError::CompressedWrite { offset: 0, .. }
    ));
}

#[test]
fn raw_stream_is_refused() {
    let mut w = StreamWriter::new();
    begin(&mut w, 0, feature::RAW);
    w.end(TOGUID);
    assert!(matches!(err(w.bytes()), ManifestError::RawStream));
}

#[test]
fn out_of_order_offsets_are_refused() {
    let mut w = StreamWriter::new();
    begin(&mut w, 0, 0);
    object(&mut w, 1, OBJECT_TYPE_ZVOL, BLOCK as u32);
    write(&mut w, 2 * BLOCK, &block(1));
    write(&mut w, BLOCK, &block(2));
    w.end(TOGUID);
    assert!(matches!(
        err(w.bytes()),
        ManifestError::OutOfOrder {
            offset: BLOCK,
            previous_end
        } if previous_end == 3 * BLOCK
    ));
    // The same offset twice is out of order too, and so is a FREE over written data.
    let mut w = StreamWriter::new();
    begin(&mut w, 0, 0);
    object(&mut w, 1, OBJECT_TYPE_ZVOL, BLOCK as u32);
    write(&mut w, 2 * BLOCK, &block(1));
    free(&mut w, 2 * BLOCK, BLOCK);
    w.end(TOGUID);
    assert!(matches!(err(w.bytes()), ManifestError::OutOfOrder { .. }));
    // Data inside the range already freed to the end.
    let mut w = StreamWriter::new();
    begin(&mut w, 0, 0);
    object(&mut w, 1, OBJECT_TYPE_ZVOL, BLOCK as u32);
    free(&mut w, 4 * BLOCK, u64::MAX);
    write(&mut w, 5 * BLOCK, &block(1));
    w.end(TOGUID);
    assert!(matches!(
        err(w.bytes()),
        ManifestError::InsideFreedTail { .. }
    ));
}

#[test]
fn write_not_a_multiple_of_the_block_size_is_refused() {
    let mut w = StreamWriter::new();
    begin(&mut w, 0, 0);
    object(&mut w, 1, OBJECT_TYPE_ZVOL, BLOCK as u32);
    write(&mut w, 0, &[1u8; 4096]);
    w.end(TOGUID);
    assert!(matches!(
        err(w.bytes()),
        ManifestError::SizeNotMultiple { size: 4096, .. }
    ));
}

#[test]
fn stream_that_is_not_the_expected_zvol_is_refused() {
    // Another block size than the volume's.
    let mut w = StreamWriter::new();
    begin(&mut w, 0, 0);
    object(&mut w, 1, OBJECT_TYPE_ZVOL, 8192);
    w.end(TOGUID);
    assert!(matches!(
        err(w.bytes()),
        ManifestError::BlockSizeMismatch { found: 8192, .. }
    ));
    // Object 1 of a filesystem.
    let mut w = StreamWriter::new();
    begin(&mut w, 0, 0);
    object(&mut w, 1, 21, BLOCK as u32);
    w.end(TOGUID);
    assert!(matches!(
        err(w.bytes()),
        ManifestError::NotZvolObject { object_type: 21 }
    ));
    // A full stream without object 1; data before it; a block past the volume.
    let mut w = StreamWriter::new();
    begin(&mut w, 0, 0);
    w.end(TOGUID);
    assert!(matches!(err(w.bytes()), ManifestError::MissingObject));
    let mut w = StreamWriter::new();
    begin(&mut w, 0, 0);
    write(&mut w, 0, &block(1));
    w.end(TOGUID);
    assert!(matches!(
        err(w.bytes()),
        ManifestError::RecordOutsideObject { .. }
    ));
    let mut w = StreamWriter::new();
    begin(&mut w, 0, 0);
    object(&mut w, 1, OBJECT_TYPE_ZVOL, BLOCK as u32);
    write(&mut w, VOLSIZE, &block(1));
    w.end(TOGUID);
    assert!(matches!(err(w.bytes()), ManifestError::BeyondVolume { .. }));
}

#[test]
fn stream_cut_before_its_end_is_incomplete() {
    let stream = full_stream();
    let mut tap = Tap::new(ManifestBuilder::new(params(), KEY, Vec::new()).unwrap());
    tap.feed(&stream[..stream.len() - 312]).unwrap();
    assert!(matches!(
        tap.into_sink().finish(),
        Err(ManifestError::Incomplete)
    ));
}

/// `zfs send -t` of the full stream, resumed at block `from_block` of object 1.
fn resumed_stream(from_block: u64) -> Vec<u8> {
    let mut w = StreamWriter::new();
    begin(&mut w, 0, feature::RESUMING);
    object1_records(&mut w, from_block);
    object2_records(&mut w);
    w.end(TOGUID);
    w.into_bytes()
}

#[test]
fn resume_cut_and_continue_gives_the_uninterrupted_body() {
    let (whole_header, whole_body) = run(&full_stream()).unwrap();
    // Cuts at record boundaries (real zvol WRITEs are one block each; this stream's first
    // WRITE carries two), including one inside a FREE range and one inside the tail.
    for cut_block in [0u64, 2, 3, 4, 5, 6] {
        // The interrupted run wrote more than the receiver kept (everything here), plus a
        // torn entry; the cut at the token's offset drops the surplus.
        let mut partial = whole_body.clone();
        partial.extend_from_slice(&[3u8; 20]);
        let builder = ManifestBuilder::resume(
            params(),
            KEY,
            Vec::new(),
            &partial[..],
            1,
            cut_block * BLOCK,
        )
        .unwrap();
        // The resumed stream restarts at the first record at or after the cut.
        let resumed = if cut_block == 3 {
            // The FREE of blocks 2-3 is re-sent from block 3 only.
            let mut w = StreamWriter::new();
            begin(&mut w, 0, feature::RESUMING);
            object(&mut w, 1, OBJECT_TYPE_ZVOL, BLOCK as u32);
            free(&mut w, 6 * BLOCK, u64::MAX);
            free(&mut w, 3 * BLOCK, BLOCK);
            write(&mut w, 4 * BLOCK, &block(3));
            write(&mut w, 5 * BLOCK, &block(4));
            object2_records(&mut w);
            w.end(TOGUID);
            w.into_bytes()
        } else {
            resumed_stream(cut_block)
        };
        let (header, body) = run_chunks(builder, [&resumed[..]]).unwrap();
        if cut_block == 3 {
            // Same blocks, the free split in two at the cut.
            let mut expected = expected_full_entries();
            expected.splice(
                2..3,
                [
                    range(EntryKind::Free, 2 * BLOCK, BLOCK),
                    range(EntryKind::Free, 3 * BLOCK, BLOCK),
                ],
            );
            assert_eq!(entries(&body), expected);
            continue;
        }
        assert_eq!(body, whole_body, "cut at block {cut_block}");
        assert_eq!(header, whole_header);
    }
}

#[test]
fn resume_past_object_1_keeps_the_whole_partial_body() {
    let (whole_header, whole_body) = run(&full_stream()).unwrap();
    let builder =
        ManifestBuilder::resume(params(), KEY, Vec::new(), &whole_body[..], 2, 0).unwrap();
    let mut w = StreamWriter::new();
    begin(&mut w, 0, feature::RESUMING);
    object2_records(&mut w);
    w.end(TOGUID);
    let (header, body) = run_chunks(builder, [w.bytes()]).unwrap();
    assert_eq!(body, whole_body);
    assert_eq!(header, whole_header);
}

#[test]
fn resumed_stream_needs_a_resumed_builder_and_the_other_way_round() {
    assert!(matches!(
        err(&resumed_stream(4)),
        ManifestError::ResumeMismatch {
            stream_resuming: true
        }
    ));
    let builder = ManifestBuilder::resume(params(), KEY, Vec::new(), &[][..], 1, 0).unwrap();
    assert!(matches!(
        run_chunks(builder, [&full_stream()[..]]),
        Err(ManifestError::ResumeMismatch {
            stream_resuming: false
        })
    ));
}

#[test]
fn resume_refuses_a_cut_inside_a_block_or_a_bad_partial_entry() {
    let (_, body) = run(&full_stream()).unwrap();
    assert!(matches!(
        ManifestBuilder::resume(params(), KEY, Vec::new(), &body[..], 1, 100),
        Err(ManifestError::Misaligned { offset: 100, .. })
    ));
    let mut bad = body.clone();
    bad[ENTRY_LEN] = 9; // the second entry's kind
    assert!(matches!(
        ManifestBuilder::resume(params(), KEY, Vec::new(), &bad[..], 1, 6 * BLOCK),
        Err(ManifestError::BadEntry { index: 1, .. })
    ));
    // Entries out of order in the partial body are refused like new ones.
    let mut swapped = body[ENTRY_LEN..2 * ENTRY_LEN].to_vec();
    swapped.extend_from_slice(&body[..ENTRY_LEN]);
    assert!(matches!(
        ManifestBuilder::resume(params(), KEY, Vec::new(), &swapped[..], 1, 6 * BLOCK),
        Err(ManifestError::OutOfOrder { .. })
    ));
}

/// A writer that only counts, so the test sees when entries leave the builder.
struct Counter<'a>(&'a std::cell::Cell<u64>);

impl std::io::Write for Counter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.set(self.0.get() + buf.len() as u64);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn entries_leave_the_builder_as_records_arrive_and_its_state_is_fixed_size() {
    // Each WRITE's entry reaches the writer as soon as the tap has parsed that WRITE, so
    // nothing per block stays in the builder: its fields are the parameters, counters, one
    // hasher and one pending tail offset, no collection (and its size is fixed).
    let bs = MIN_BLOCK_SIZE;
    let blocks = 4096u64;
    let mut p = params();
    p.volblocksize = bs;
    p.volsize = blocks * bs;
    let written = std::cell::Cell::new(0u64);
    let mut tap = Tap::new(ManifestBuilder::new(p, KEY, Counter(&written)).unwrap());
    let mut w = StreamWriter::new();
    begin(&mut w, 0, 0);
    object(&mut w, 1, OBJECT_TYPE_ZVOL, bs as u32);
    tap.feed(w.bytes()).unwrap();
    let mut fed = w.bytes().len();
    for i in 0..blocks {
        write_c(&mut w, 1, i * bs, &[(i as u8) | 1; 512], 0);
        tap.feed(&w.bytes()[fed..]).unwrap();
        fed = w.bytes().len();
        assert_eq!(tap.sink().entries(), i + 1);
        assert_eq!(written.get(), (i + 1) * ENTRY_LEN as u64);
    }
    w.end(TOGUID);
    tap.feed(&w.bytes()[fed..]).unwrap();
    let (header, _) = tap.into_sink().finish().unwrap();
    assert_eq!(header.entries, blocks);
    assert!(std::mem::size_of::<ManifestBuilder<Counter<'_>>>() < 4096);
}

#[test]
fn longest_names_fill_the_header_exactly_and_still_verify() {
    let (mut header, _) = run(&full_stream()).unwrap();
    header.qube = "q".repeat(31);
    header.volume = "v".repeat(64);
    header.dataset = format!("p/{}", "d".repeat(253));
    let bytes = header.encode();
    assert_eq!(bytes.len(), MAX_HEADER_LEN);
    assert_eq!(
        ManifestHeader::verify(&bytes, &header.mac(&KEY), &KEY).unwrap(),
        header
    );
    header.volume = "v".repeat(65);
    let bytes = header.encode();
    assert!(matches!(
        ManifestHeader::verify(&bytes, &header.mac(&KEY), &KEY),
        Err(ManifestError::HeaderTooLarge { .. })
    ));
}
