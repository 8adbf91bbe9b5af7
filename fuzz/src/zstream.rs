//! Harness for the send-stream tap (`qzb_protocol::zstream`).
//!
//! Input: `flags:u8 seed:u8 stream...`. Flags bit 0 turns checksum verification off (so that
//! mutations reach the structure checks instead of failing at the first checksum); bits 1-7
//! pick the largest chunk of the split run, `2^((flags >> 1) % 17)` bytes (1 B to 64 KiB),
//! and `seed` seeds the split generator. The stream is parsed twice:
//! fed whole, and fed in chunks split by a generator seeded from `seed`. Checks beyond "no
//! panic": both runs give the same events (payloads compared by their fletcher-4) and the
//! same result, error offset included; an accepted stream ends with an END; payload slices
//! have the length their record type gives.
use qzb_protocol::zstream::{
    writer::StreamWriter, Begin, End, EndKind, Fletcher4, Free, FreeObjects, HeaderType, Object,
    ObjectRange, Options, Redact, Sink, Spill, StreamError, Tap, Write, WriteEmbedded,
};

/// A compact trace of the events: numbers only, payloads by length and checksum.
#[derive(Default, PartialEq, Eq, Debug)]
struct Trace(Vec<u64>);

impl Trace {
    fn payload(&mut self, p: &[u8]) {
        let mut f = Fletcher4::new();
        f.update(p);
        self.0.push(p.len() as u64);
        self.0.extend(f.words());
        // fletcher-4 ignores a trailing partial word; keep those bytes too.
        for &b in &p[p.len() - p.len() % 4..] {
            self.0.push(u64::from(b));
        }
    }
}

impl Sink for Trace {
    fn on_begin(&mut self, b: &Begin<'_>) {
        let kind = matches!(b.header_type, HeaderType::Compound) as u64;
        self.0.extend([
            0,
            kind,
            b.featureflags,
            b.toguid,
            b.fromguid,
            b.flags.into(),
        ]);
        self.payload(b.toname);
        self.payload(b.payload);
    }
    fn on_object(&mut self, o: &Object<'_>) {
        assert_eq!(
            o.bonus.len() as u64,
            if o.raw_bonuslen != 0 {
                u64::from(o.raw_bonuslen)
            } else {
                u64::from(o.bonuslen).div_ceil(8) * 8
            }
        );
        self.0.extend([1, o.object, o.blksz.into(), o.maxblkid]);
        self.payload(o.bonus);
    }
    fn on_freeobjects(&mut self, f: &FreeObjects) {
        self.0.extend([2, f.firstobj, f.numobjs]);
    }
    fn on_write(&mut self, w: &Write<'_>) {
        let expected = if w.compression != 0 {
            w.compressed_size
        } else {
            w.logical_size
        };
        assert_eq!(w.payload.len() as u64, expected);
        self.0.extend([3, w.object, w.offset, w.logical_size]);
        self.payload(w.payload);
    }
    fn on_free(&mut self, f: &Free) {
        self.0.extend([4, f.object, f.offset, f.length]);
    }
    fn on_end(&mut self, e: &End) {
        let kind = match e.kind {
            EndKind::Substream => 0,
            EndKind::CompoundHeader => 1,
            EndKind::Package => 2,
        };
        self.0.extend([5, kind, e.toguid]);
        self.0.extend(e.checksum);
    }
    fn on_spill(&mut self, s: &Spill<'_>) {
        self.0.extend([7, s.object, s.length]);
        self.payload(s.payload);
    }
    fn on_write_embedded(&mut self, w: &WriteEmbedded<'_>) {
        assert_eq!(w.payload.len() as u64, u64::from(w.psize).div_ceil(8) * 8);
        self.0.extend([8, w.object, w.offset]);
        self.payload(w.payload);
    }
    fn on_object_range(&mut self, r: &ObjectRange) {
        self.0.extend([9, r.firstobj, r.numslots]);
    }
    fn on_redact(&mut self, r: &Redact) {
        self.0.extend([10, r.object, r.offset, r.length]);
    }
}

fn run(
    stream: &[u8],
    options: Options,
    chunks: &mut dyn Iterator<Item = usize>,
) -> (Trace, Result<(), StreamError>, bool) {
    let mut tap = Tap::with_options(Trace::default(), options);
    let mut rest = stream;
    let mut result = Ok(());
    while !rest.is_empty() {
        let n = chunks.next().unwrap_or(rest.len()).clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        result = tap.feed(chunk);
        if result.is_err() {
            break;
        }
    }
    if result.is_ok() {
        result = tap.finish();
    }
    let done = tap.is_done();
    (tap.into_sink(), result, done)
}

/// Largest chunk for the split run: 1, 2, 4, ... up to 2^16 bytes.
fn max_chunk(flags: u8) -> u64 {
    1 << ((flags >> 1) % 17)
}

pub fn run_tap(data: &[u8]) {
    let (Some(&flags), Some(&seed)) = (data.first(), data.get(1)) else {
        return;
    };
    let stream = &data[2..];
    let options = Options {
        verify_checksums: flags & 1 == 0,
    };
    let (whole, whole_result, done) = run(stream, options, &mut std::iter::empty());
    if whole_result.is_ok() {
        assert!(done, "accepted stream without its last END");
        assert_eq!(
            whole.0.iter().rev().nth(6),
            Some(&5),
            "accepted stream ends with END"
        );
    }
    if let Err(e) = &whole_result {
        assert!(!e.to_string().is_empty());
    }
    let max = max_chunk(flags);
    let mut state = u64::from(seed) | 0x9E37_79B9_7F4A_7C00;
    let mut splits = std::iter::from_fn(|| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        Some((state % max) as usize + 1)
    });
    let (split, split_result, _) = run(stream, options, &mut splits);
    assert_eq!(split_result, whole_result, "result depends on the chunking");
    assert_eq!(split, whole, "events depend on the chunking");
}

/// Seeds for the corpus: valid streams of each shape, small blocks, checksums on.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let begin = |toname: &'static [u8], fromguid, featureflags, payload: &'static [u8]| Begin {
        header_type: HeaderType::Substream,
        featureflags,
        creation_time: 1_700_000_000,
        objset_type: 3,
        flags: 4,
        toguid: 0xabcdef,
        fromguid,
        toname,
        payload,
    };
    let compound = |payload: &'static [u8]| Begin {
        header_type: HeaderType::Compound,
        objset_type: 0,
        toguid: 0,
        ..begin(b"pool/vm/root@s2", 0, 0, payload)
    };
    let zvol = |w: &mut StreamWriter, seed: u8, fromguid: u64| {
        w.begin(&begin(b"pool/vm/root@s1", fromguid, 0, &[]));
        w.object(&Object {
            object: 1,
            object_type: 23,
            bonus_type: 0,
            blksz: 512,
            bonuslen: 0,
            checksum_type: 0,
            compress: 0,
            dn_slots: 1,
            flags: 0,
            raw_bonuslen: 0,
            indblkshift: 17,
            nlevels: 1,
            nblkptr: 1,
            maxblkid: 7,
            bonus: &[],
        });
        let data = vec![seed; 512];
        w.write(&Write {
            object: 1,
            object_type: 23,
            offset: 512,
            logical_size: 512,
            checksum_type: 7,
            flags: 0,
            compression: 0,
            compressed_size: 0,
            payload: &data,
        });
        w.free(&Free {
            object: 1,
            offset: 1024,
            length: u64::MAX,
        });
        w.end(0xabcdef);
    };
    let mut out = Vec::new();
    let mut w = StreamWriter::new();
    zvol(&mut w, 1, 0);
    out.push(("full", w.into_bytes()));
    let mut w = StreamWriter::new();
    zvol(&mut w, 2, 0x1234);
    out.push(("incremental", w.into_bytes()));
    let mut w = StreamWriter::new();
    w.begin(&compound(&[0, 1, 0, 0, 0, 0, 0, 0]));
    w.compound_end();
    zvol(&mut w, 3, 0);
    zvol(&mut w, 4, 0x1234);
    w.package_end();
    out.push(("package", w.into_bytes()));
    let mut w = StreamWriter::new();
    w.begin(&begin(
        b"pool/fs@s",
        0,
        1 << 16 | 1 << 22 | 1 << 2,
        b"resume...",
    ));
    w.write_embedded(&WriteEmbedded {
        object: 8,
        offset: 0,
        length: 512,
        compression: 2,
        etype: 0,
        lsize: 512,
        psize: 13,
        payload: &[7; 16],
    });
    w.spill(&Spill {
        object: 8,
        length: 16,
        flags: 0,
        compression: 0,
        compressed_size: 0,
        object_type: 45,
        payload: &[9; 16],
    });
    w.object_range(&ObjectRange {
        firstobj: 0,
        numslots: 32,
        flags: 0,
    });
    w.redact(&Redact {
        object: 8,
        offset: 512,
        length: 512,
    });
    w.freeobjects(&FreeObjects {
        firstobj: 9,
        numobjs: 23,
    });
    w.end(0xabcdef);
    out.push(("other-records", w.into_bytes()));
    // Prefix: 0x10 = checksums on, chunks up to 256 B; 0x21 = checksums off, up to 64 KiB.
    out.into_iter()
        .flat_map(|(name, s)| {
            [
                (name, [&[0x10u8, 7][..], &s].concat()),
                (
                    match name {
                        "full" => "full-unverified",
                        "incremental" => "incremental-unverified",
                        "package" => "package-unverified",
                        _ => "other-unverified",
                    },
                    [&[0x21u8, 3][..], &s].concat(),
                ),
            ]
        })
        .collect()
}
