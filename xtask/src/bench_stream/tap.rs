//! The stream tap's arms of `cargo xtask bench-stream` (issue 13: "the tap adds ≤ 0.3 CPU s per
//! GiB in dom0").
//!
//! The tap parses dom0's own `zfs send` of a zvol and writes a manifest entry (a keyed blake3
//! tag) per block, so it needs a real send stream, not random bytes:
//!
//! * **zsource** (`bench-stream zsource N`) writes a full `zfs send -L` stream of a zvol with
//!   16 KiB blocks (`StreamWriter`, with the fletcher-4 checksums OpenZFS puts in it): BEGIN,
//!   FREEOBJECTS, OBJECT 1, FREE past the end, one WRITE per block of pseudo-random data,
//!   the volsize ZAP (object 2), END. [`stream_len`] bytes, a few hundred bytes per block more
//!   than N ÷ block × block. (A real `-p` stream wraps this in a compound BEGIN and END with the
//!   properties: about 1 KiB per stream, left out.)
//! * arm **zs**: zsource → framer → agent → sink, the tap off: the framer's own cost on a
//!   stream of the same shape.
//! * arm **tap**: the same with the driver's tap as the pump's observer (`VolumeTap`, spool in
//!   the run's directory: bodies written and flushed per chunk, heads at the end), as `send`
//!   runs it for a zvol when dom0 has a key. The tap's cost is the framer's CPU in this arm
//!   minus in arm zs.
//! * **in process** ([`micro`]): the tap alone over a stream in memory (no pipes, one
//!   thread), the parser alone (checksums, no manifest), and the block tag in the format's
//!   order (offset ‖ block) against block-first.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use dom0_driver::stream::tap::{Spool, VolumeTap};
use qzb_protocol::manifest::{block_tag, ChainStart, Volume, OBJECT_TYPE_ZVOL, OBJSET_TYPE_ZVOL};
use qzb_protocol::zstream::writer::StreamWriter;
use qzb_protocol::zstream::{
    Begin, Fletcher4, Free, FreeObjects, HeaderType, Object, Sink, Tap, Write, RECORD_HEADER_LEN,
};

use super::{cpu_seconds, median, mib, parse_size, stdout_file, Measure, GIB, GUID, MIB, SNAPSHOT};

/// Issue 13: the tap may add at most this much dom0 CPU per GiB of stream.
pub const TARGET_CPU_PER_GIB: f64 = 0.30;

/// The zvol's volblocksize (OpenZFS' default for volumes).
pub const BLOCK: usize = 16 << 10;
/// Manifest key of the bench (any 32 bytes).
const KEY: [u8; 32] = [0x42; 32];
/// `DRR_FLAG_FREERECORDS | DRR_FLAG_SPILL_BLOCK`, as in a real zvol stream's BEGIN.
const BEGIN_FLAGS: u32 = 12;
/// The volsize ZAP object's one block (object 2 of a zvol).
const ZAP_BLOCK: usize = 512;

/// What the framer's source is and what observes the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Random bytes, no observer (the original arm "qzb").
    Plain,
    /// A zvol send stream, no observer.
    ZStream,
    /// A zvol send stream through the driver's tap.
    Tap,
}

impl Mode {
    pub fn arm(self) -> &'static str {
        match self {
            Mode::Plain => "qzb",
            Mode::ZStream => "zs",
            Mode::Tap => "tap",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "qzb" => Ok(Mode::Plain),
            "zs" => Ok(Mode::ZStream),
            "tap" => Ok(Mode::Tap),
            _ => Err(format!("frame: unknown mode {s:?}")),
        }
    }

    /// The `bench-stream` sub-command of the source.
    pub fn source(self) -> &'static str {
        match self {
            Mode::Plain => "source",
            Mode::ZStream | Mode::Tap => "zsource",
        }
    }

    /// Bytes the source writes for a run of `bytes`.
    pub fn stream_bytes(self, bytes: u64) -> u64 {
        match self {
            Mode::Plain => bytes,
            Mode::ZStream | Mode::Tap => stream_len(blocks_for(bytes)),
        }
    }
}

/// Blocks of a zvol whose stream is about `bytes` long.
pub fn blocks_for(bytes: u64) -> u64 {
    (bytes / (BLOCK + RECORD_HEADER_LEN) as u64).max(1)
}

/// The length of [`write_stream`]'s stream of `blocks` blocks: eight bare records (BEGIN,
/// FREEOBJECTS, OBJECT, FREE, OBJECT 2, its WRITE, END), the ZAP block, and a header and a
/// block per block.
pub fn stream_len(blocks: u64) -> u64 {
    7 * RECORD_HEADER_LEN as u64 + ZAP_BLOCK as u64 + blocks * (RECORD_HEADER_LEN + BLOCK) as u64
}

/// The volume size of the stream's zvol.
fn volsize(blocks: u64) -> u64 {
    blocks * BLOCK as u64
}

/// 1 MiB of pseudo-random bytes (xorshift), the block data cycles through it.
fn random_buffer() -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..MIB as usize)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn object(object: u64, object_type: u32, blksz: u32, maxblkid: u64) -> Object<'static> {
    Object {
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
        maxblkid,
        bonus: &[],
    }
}

fn write_record(object: u64, object_type: u32, offset: u64, data: &[u8]) -> Write<'_> {
    Write {
        object,
        object_type,
        offset,
        logical_size: data.len() as u64,
        checksum_type: 7,
        flags: 0,
        compression: 0,
        compressed_size: 0,
        payload: data,
    }
}

/// Writes a full send stream of a zvol of `blocks` 16 KiB blocks of random data, handing
/// `out` pieces of about 1 MiB.
pub fn write_stream(blocks: u64, out: &mut dyn FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
    let data = random_buffer();
    let per_buffer = data.len() / BLOCK;
    let mut w = StreamWriter::new();
    w.begin(&Begin {
        header_type: HeaderType::Substream,
        featureflags: 0,
        creation_time: 1_700_000_000,
        objset_type: OBJSET_TYPE_ZVOL,
        flags: BEGIN_FLAGS,
        toguid: GUID,
        fromguid: 0,
        toname: SNAPSHOT.as_bytes(),
        payload: &[],
    });
    w.freeobjects(&FreeObjects {
        firstobj: 0,
        numobjs: 1,
    });
    w.object(&object(1, OBJECT_TYPE_ZVOL, BLOCK as u32, blocks - 1));
    w.free(&Free {
        object: 1,
        offset: volsize(blocks),
        length: u64::MAX,
    });
    for i in 0..blocks {
        // Each block a different slice of the buffer, shifted by a byte per lap, so no two
        // neighbouring blocks are equal and none is all zeros.
        let at = (i as usize % per_buffer) * BLOCK;
        let lap = (i as usize / per_buffer) % BLOCK;
        let mut block = [0u8; BLOCK];
        block[..BLOCK - lap].copy_from_slice(&data[at + lap..at + BLOCK]);
        block[BLOCK - lap..].copy_from_slice(&data[at..at + lap]);
        block[0] |= 1;
        w.write(&write_record(1, OBJECT_TYPE_ZVOL, i * BLOCK as u64, &block));
        if w.bytes().len() >= MIB as usize {
            out(&w.take_bytes())?;
        }
    }
    w.object(&object(2, 22, ZAP_BLOCK as u32, 0));
    w.write(&write_record(2, 22, 0, &[5u8; ZAP_BLOCK]));
    w.end(GUID);
    out(&w.take_bytes())
}

/// `bench-stream zsource N`: the stream of a zvol of [`blocks_for`]`(N)` blocks on stdout.
pub fn zsource(args: &[String]) -> Result<(), String> {
    let bytes = parse_size(args.first().ok_or("zsource: missing byte count")?)?;
    let mut stdout = stdout_file()?;
    write_stream(blocks_for(bytes), &mut |piece| stdout.write_all(piece))
        .map_err(|e| format!("zsource: write: {e}"))
}

/// A `VolumeTap` for the stream of [`write_stream`]`(blocks)`, spooling under `spool_root`.
pub fn volume_tap(spool_root: &Path, blocks: u64) -> io::Result<VolumeTap> {
    let dataset = SNAPSHOT.split('@').next().unwrap_or(SNAPSHOT);
    VolumeTap::new(
        Spool::new(spool_root, dataset),
        Volume {
            qube: "bench".into(),
            volume: "private".into(),
            dataset: dataset.into(),
            volblocksize: BLOCK as u64,
        },
        KEY,
        ChainStart::full(),
        BTreeMap::from([(SNAPSHOT.to_owned(), volsize(blocks))]),
        None,
    )
}

/// The framer's observer of the stream.
pub enum Observer {
    None,
    Tap(Box<VolumeTap>),
}

impl Observer {
    /// `spool`: where the tap arm writes its manifests.
    pub fn new(mode: Mode, bytes: u64, spool: &Path) -> Result<Self, String> {
        match mode {
            Mode::Plain | Mode::ZStream => Ok(Observer::None),
            Mode::Tap => volume_tap(spool, blocks_for(bytes))
                .map(|t| Observer::Tap(Box::new(t)))
                .map_err(|e| format!("frame: the tap: {e}")),
        }
    }

    pub fn observe(&mut self, chunk: &[u8]) -> io::Result<()> {
        match self {
            Observer::None => Ok(()),
            Observer::Tap(tap) => tap.observe(chunk),
        }
    }

    /// After the stream: the manifest's head and body durable in the spool, as `send` does.
    pub fn finish(self) -> Result<(), String> {
        match self {
            Observer::None => Ok(()),
            Observer::Tap(tap) => match tap.finish() {
                Ok(m) if m.len() == 1 => Ok(()),
                Ok(m) => Err(format!("frame: the tap made {} manifests, not 1", m.len())),
                Err(e) => Err(format!("frame: the tap: {e}")),
            },
        }
    }
}

/// Bytes in the files under `dir` (the tap's spool: the manifest's size).
pub fn dir_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => dir_bytes(&e.path()),
                    _ => e.metadata().map_or(0, |m| m.len()),
                })
                .sum()
        })
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// In process

/// A sink that ignores every record: the parser's own cost (header checks, fletcher-4).
struct Null;
impl Sink for Null {}

/// What [`micro`] measured, CPU seconds per GiB of stream (tags: per GiB of blocks).
pub struct Micro {
    pub stream_bytes: u64,
    pub tap: f64,
    pub parser: f64,
    pub fletcher4: f64,
    pub manifest_bytes: u64,
    pub tag_offset_first: f64,
    pub tag_block_first: f64,
    pub tag_unkeyed_block: f64,
}

fn cpu_now() -> f64 {
    cpu_seconds("self").0
}

/// CPU seconds per GiB of `f` run `laps` times over `bytes` each.
fn per_gib(
    laps: usize,
    bytes: u64,
    mut f: impl FnMut(usize) -> Result<(), String>,
) -> Result<f64, String> {
    let c0 = cpu_now();
    for lap in 0..laps {
        f(lap)?;
    }
    Ok((cpu_now() - c0) / (laps as f64 * bytes as f64 / GIB as f64))
}

/// The tap and the tag orders in this process, over a `stream` of about `bytes` built in memory
/// first (and fed `laps` times, each through a new tap, like a new stream).
pub fn micro(dir: &Path, bytes: u64, laps: usize) -> Result<Micro, String> {
    let blocks = blocks_for(bytes);
    let mut stream = Vec::with_capacity(stream_len(blocks) as usize);
    write_stream(blocks, &mut |p| {
        stream.extend_from_slice(p);
        Ok(())
    })
    .map_err(|e| e.to_string())?;
    let len = stream.len() as u64;
    // The pump hands the tap chunks of 256 KiB .. 1 MiB; 1 MiB here.
    let chunk = MIB as usize;

    let spool = |lap: usize| -> PathBuf { dir.join(format!("micro-spool-{lap}")) };
    let tap = per_gib(laps, len, |lap| {
        let mut tap = volume_tap(&spool(lap), blocks).map_err(|e| e.to_string())?;
        for c in stream.chunks(chunk) {
            tap.observe(c).map_err(|e| e.to_string())?;
        }
        tap.finish().map(|_| ()).map_err(|e| e.to_string())
    })?;
    let manifest_bytes = dir_bytes(&spool(0));
    for lap in 0..laps {
        let _ = fs::remove_dir_all(spool(lap));
    }
    let parser = per_gib(laps, len, |_| {
        let mut t = Tap::new(Null);
        for c in stream.chunks(chunk) {
            t.feed(c).map_err(|e| e.to_string())?;
        }
        t.finish().map_err(|e| e.to_string())
    })?;
    let mut sum = Fletcher4::new();
    let fletcher4 = per_gib(laps, len, |_| {
        sum.update(std::hint::black_box(&stream));
        Ok(())
    })?;
    std::hint::black_box(sum);

    // The tags alone, over the same blocks (the first laps' worth of the stream's data).
    let data = random_buffer();
    let tag_bytes = (blocks * BLOCK as u64).min(bytes);
    let tag_blocks = tag_bytes / BLOCK as u64;
    let block_at = |i: u64| {
        let at = (i as usize % (data.len() / BLOCK)) * BLOCK;
        &data[at..at + BLOCK]
    };
    let mut sink = 0u8;
    let mut tags = |f: &dyn Fn(u64, &[u8]) -> [u8; 32]| {
        per_gib(laps, tag_blocks * BLOCK as u64, |_| {
            for i in 0..tag_blocks {
                sink ^= std::hint::black_box(f(i * BLOCK as u64, block_at(i)))[0];
            }
            Ok(())
        })
    };
    let tag_offset_first = tags(&|offset, block| block_tag(&KEY, offset, block))?;
    let tag_block_first = tags(&|offset, block| {
        let mut h = blake3::Hasher::new_keyed(&KEY);
        h.update(block);
        h.update(&offset.to_le_bytes());
        *h.finalize().as_bytes()
    })?;
    let tag_unkeyed_block = tags(&|_, block| *blake3::hash(block).as_bytes())?;
    std::hint::black_box(sink);
    Ok(Micro {
        stream_bytes: len,
        tap,
        parser,
        fletcher4,
        manifest_bytes,
        tag_offset_first,
        tag_block_first,
        tag_unkeyed_block,
    })
}

/// Framer CPU seconds per GiB of stream of one run.
fn framer_per_gib(m: &Measure) -> f64 {
    m.report.as_ref().map_or(0.0, |r| r.framer_cpu) / (m.bytes as f64 / GIB as f64)
}

/// Prints the tap's figures; true if the tap's cost meets the target (in the pipeline, and
/// in process).
pub fn report(zss: &[Measure], taps: &[Measure], micro: &Micro) -> bool {
    let zs = median(zss.iter().map(framer_per_gib).collect());
    let tap = median(taps.iter().map(framer_per_gib).collect());
    let diffs: Vec<f64> = zss
        .iter()
        .zip(taps)
        .map(|(z, t)| framer_per_gib(t) - framer_per_gib(z))
        .collect();
    let added = median(diffs.clone());
    let speed = |ms: &[Measure]| median(ms.iter().map(Measure::mib_s).collect());
    let hwm = taps
        .iter()
        .filter_map(|m| m.report.as_ref().map(|r| r.framer_hwm_kib))
        .max()
        .unwrap_or(0);
    println!();
    println!(
        "tap (issue 13), zvol stream of 16 KiB blocks: framer CPU s per GiB (median): \
         without the tap {zs:.3}, with it {tap:.3}: the tap adds {added:.3} \
         (per round: {}; target ≤ {TARGET_CPU_PER_GIB:.2})",
        diffs
            .iter()
            .map(|d| format!("{d:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  throughput: zs arm {:.0} MiB/s, tap arm {:.0} MiB/s ({:.1} % of zs); framer peak \
         RSS with the tap {}",
        speed(zss),
        speed(taps),
        100.0 * speed(taps) / speed(zss),
        mib(hwm)
    );
    println!(
        "  in process, one thread, {} stream × 4 in 1 MiB chunks: tap {:.3} CPU s per GiB \
         (parser alone {:.3}, of it fletcher-4 {:.3}; manifest {:.3}); manifest {} per GiB of \
         stream",
        super::human(micro.stream_bytes),
        micro.tap,
        micro.parser,
        micro.fletcher4,
        micro.tap - micro.parser,
        mib(micro.manifest_bytes * GIB / micro.stream_bytes / 1024),
    );
    println!(
        "  block tag, 16 KiB blocks, CPU s per GiB: keyed(offset ‖ block) (the format) {:.3}; \
         keyed(block ‖ offset) {:.3} ({:.0} % of it); unkeyed blake3(block) {:.3}",
        micro.tag_offset_first,
        micro.tag_block_first,
        100.0 * micro.tag_block_first / micro.tag_offset_first,
        micro.tag_unkeyed_block,
    );
    added <= TARGET_CPU_PER_GIB && micro.tap <= TARGET_CPU_PER_GIB
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_has_its_length_and_the_tap_makes_one_manifest_of_every_block() {
        for blocks in [1, 3, 70] {
            let mut stream = Vec::new();
            write_stream(blocks, &mut |p| {
                stream.extend_from_slice(p);
                Ok(())
            })
            .unwrap();
            assert_eq!(stream.len() as u64, stream_len(blocks));
            let dir = std::env::temp_dir().join(format!(
                "qzb-bench-tap-test-{}-{blocks}",
                std::process::id()
            ));
            let mut tap = volume_tap(&dir, blocks).unwrap();
            for c in stream.chunks(100_000) {
                tap.observe(c).unwrap();
            }
            let manifests = tap.finish().unwrap();
            let _ = fs::remove_dir_all(&dir);
            assert_eq!(manifests.len(), 1);
            assert_eq!(manifests[0].0.entries, blocks);
            assert_eq!(manifests[0].0.volsize, blocks * BLOCK as u64);
        }
    }

    #[test]
    fn blocks_for_rounds_down_to_a_stream_of_about_that_size() {
        let b = blocks_for(GIB);
        assert!(stream_len(b) <= GIB + 4096 && stream_len(b + 1) > GIB);
    }
}
