//! The checks run on golden send streams: real `zfs send` output recorded in the test VM
//! (`tests/vm/cases/06-golden-streams.sh`), kept in `protocol/tests/golden/zfs-<version>/`.
//! Shared by the protocol crate's test (`protocol/tests/golden.rs`) and `cargo xtask
//! golden-check <dir>` (which the VM case runs on freshly recorded streams). Not an API: the
//! crate does no file I/O, so the caller passes a function that reads a file of the directory.
//!
//! `index.txt` (one directive a line, `#` starts a comment):
//!
//! ```text
//! snapshot <pool/vol@snap> volsize=<bytes> volblocksize=<bytes> blocks=<file>
//! chain <name> expect=<pool/vol@snap> streams=<file>[,<file>...] [prefix=<file> token=<file>] [equals=<chain>]
//! ```
//!
//! A `.blocks` file holds the blake3 (hex) of each `volblocksize` block of the snapshot's
//! device, one line per block. A chain is the streams that, received in order, give `expect`
//! (the first a full stream). With `prefix` and `token`, the last stream is the `zfs send -t`
//! output and `prefix` the cut stream the token continues. `equals` names an earlier chain
//! whose last manifest must have the same body.
//!
//! For each chain: (a) every stream goes through [`Tap`] (checksums verified) and its WRITE and
//! FREE records of object 1 are applied to an in-memory image, compared with each snapshot's
//! `.blocks` at its sub-stream's END; (b) [`StreamManifests`] builds the manifests (resumed:
//! continuing the prefix's partial body at the token's object and offset), which must be
//! MAC- and body-verifiable, form a chain ([`check_chain`]), and, merged ([`ChainMerge`]), pass
//! [`BlockCheck`] with the image's non-zero blocks, and fail it with one byte flipped or one
//! block left out.

use super::{
    check_chain, BlockCheck, ChainMerge, ChainStart, Finished, ManifestError, ManifestHeader,
    Resume, SnapshotFacts, StreamManifests, Volume, ZVOL_DATA_OBJECT,
};
use crate::token::decode_resume_token;
use crate::zstream::{
    Begin, End, EndKind, Free, FreeObjects, HeaderType, Object, ObjectRange, Redact, Sink, Spill,
    Tap, Write, WriteEmbedded,
};
use std::collections::HashMap;
use std::io::{Read, Write as IoWrite};
use std::sync::{Arc, Mutex};

const KEY: [u8; 32] = [0x5a; 32];

/// Reads a file of the golden directory by its name in `index.txt`.
pub type ReadFile<'a> = &'a mut dyn FnMut(&str) -> std::io::Result<Vec<u8>>;

/// One `snapshot` line.
#[derive(Clone, Debug)]
pub struct SnapshotSpec {
    pub name: String,
    pub volsize: u64,
    pub volblocksize: u64,
    pub blocks: String,
}

/// One `chain` line.
#[derive(Clone, Debug)]
pub struct ChainSpec {
    pub name: String,
    pub expect: String,
    pub streams: Vec<String>,
    /// `(prefix file, token file)`.
    pub resume: Option<(String, String)>,
    pub equals: Option<String>,
}

/// A parsed `index.txt`.
#[derive(Clone, Debug, Default)]
pub struct Index {
    pub snapshots: Vec<SnapshotSpec>,
    pub chains: Vec<ChainSpec>,
}

/// Parses `index.txt`.
pub fn parse_index(text: &str) -> Result<Index, String> {
    let mut index = Index::default();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut words = line.split_whitespace();
        let (Some(kind), Some(name)) = (words.next(), words.next()) else {
            if line.is_empty() {
                continue;
            }
            return Err(format!("index.txt line {}: too short", n + 1));
        };
        let mut kv = HashMap::new();
        for w in words {
            let (k, v) = w
                .split_once('=')
                .ok_or_else(|| format!("index.txt line {}: {w:?} is not key=value", n + 1))?;
            kv.insert(k, v.to_string());
        }
        let mut take = |k: &str| {
            kv.remove(k)
                .ok_or_else(|| format!("index.txt line {}: no {k}=", n + 1))
        };
        let number = |v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("index.txt line {}: {v:?} is not a number", n + 1))
        };
        match kind {
            "snapshot" => index.snapshots.push(SnapshotSpec {
                name: name.to_string(),
                volsize: number(take("volsize")?)?,
                volblocksize: number(take("volblocksize")?)?,
                blocks: take("blocks")?,
            }),
            "chain" => {
                let expect = take("expect")?;
                let streams = take("streams")?.split(',').map(String::from).collect();
                let resume = match (take("prefix").ok(), take("token").ok()) {
                    (Some(p), Some(t)) => Some((p, t)),
                    (None, None) => None,
                    _ => return Err(format!("index.txt line {}: prefix without token", n + 1)),
                };
                let equals = take("equals").ok();
                index.chains.push(ChainSpec {
                    name: name.to_string(),
                    expect,
                    streams,
                    resume,
                    equals,
                });
            }
            other => return Err(format!("index.txt line {}: unknown {other:?}", n + 1)),
        }
        if let Some(k) = kv.keys().next() {
            return Err(format!("index.txt line {}: unknown key {k:?}", n + 1));
        }
    }
    Ok(index)
}

/// The expected per-block hashes of a snapshot, read from its `.blocks` file.
fn read_blocks(spec: &SnapshotSpec, read: ReadFile<'_>) -> Result<Vec<[u8; 32]>, String> {
    let text = read(&spec.blocks).map_err(|e| format!("{}: {e}", spec.blocks))?;
    let text = String::from_utf8(text).map_err(|_| format!("{}: not text", spec.blocks))?;
    let blocks: Vec<[u8; 32]> = text
        .lines()
        .map(|l| parse_hex32(l.split_whitespace().next().unwrap_or("")))
        .collect::<Option<_>>()
        .ok_or_else(|| format!("{}: a line is not a blake3 hex digest", spec.blocks))?;
    if blocks.len() as u64 * spec.volblocksize != spec.volsize {
        return Err(format!(
            "{}: {} blocks of {} bytes, but volsize is {}",
            spec.blocks,
            blocks.len(),
            spec.volblocksize,
            spec.volsize
        ));
    }
    Ok(blocks)
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        let hex = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(hex, 16).ok()?;
    }
    Some(out)
}

/// Applies the object-1 records of a stream to an image of the volume, and compares the image
/// with each snapshot's expected blocks at its sub-stream's END.
struct ImageSink<'a> {
    image: &'a mut Vec<u8>,
    snapshots: &'a HashMap<String, (SnapshotSpec, Vec<[u8; 32]>)>,
    current: Option<String>,
    checked: Vec<String>,
    error: Option<String>,
}

impl ImageSink<'_> {
    fn fail(&mut self, e: String) {
        self.error.get_or_insert(e);
    }

    fn begin(&mut self, b: &Begin<'_>) -> Result<(), String> {
        let name = String::from_utf8_lossy(b.toname).into_owned();
        let (spec, _) = self
            .snapshots
            .get(&name)
            .ok_or_else(|| format!("no snapshot line for {name}"))?;
        let resuming = b.featureflags & crate::zstream::feature::RESUMING != 0;
        if b.fromguid == 0 && !resuming {
            self.image.clear();
        }
        let len = usize::try_from(spec.volsize).map_err(|_| "volsize too large".to_string())?;
        self.image.resize(len, 0);
        self.current = Some(name);
        Ok(())
    }

    fn end(&mut self) -> Result<(), String> {
        let name = self.current.take().ok_or("END without BEGIN")?;
        let (spec, blocks) = &self.snapshots[&name];
        if let Some(i) = first_mismatch(self.image, spec.volblocksize, blocks) {
            return Err(format!(
                "after the sub-stream of {name}, block {i} (offset {}) differs from the snapshot's device",
                i as u64 * spec.volblocksize
            ));
        }
        self.checked.push(name);
        Ok(())
    }

    /// `offset .. offset + len`, clipped to the image (a FREE may reach past the volume).
    fn range(&self, offset: u64, len: u64) -> std::ops::Range<usize> {
        let end = offset.saturating_add(len).min(self.image.len() as u64);
        let start = offset.min(end);
        start as usize..end as usize
    }
}

fn first_mismatch(image: &[u8], bs: u64, blocks: &[[u8; 32]]) -> Option<usize> {
    if image.len() as u64 != blocks.len() as u64 * bs {
        return Some(0);
    }
    image
        .chunks_exact(bs as usize)
        .zip(blocks)
        .position(|(block, want)| blake3::hash(block).as_bytes() != want)
}

impl Sink for ImageSink<'_> {
    fn on_begin(&mut self, b: &Begin<'_>) {
        if b.header_type == HeaderType::Substream {
            if let Err(e) = self.begin(b) {
                self.fail(e);
            }
        }
    }
    fn on_write(&mut self, w: &Write<'_>) {
        if w.object != ZVOL_DATA_OBJECT {
            return;
        }
        if !w.is_plain()
            || w.offset.saturating_add(w.payload.len() as u64) > self.image.len() as u64
        {
            return self.fail(format!("WRITE at {} does not fit the image", w.offset));
        }
        let at = w.offset as usize;
        self.image[at..at + w.payload.len()].copy_from_slice(w.payload);
    }
    fn on_free(&mut self, f: &Free) {
        if f.object == ZVOL_DATA_OBJECT {
            let r = self.range(f.offset, f.length);
            self.image[r].fill(0);
        }
    }
    fn on_write_embedded(&mut self, w: &WriteEmbedded<'_>) {
        if w.object == ZVOL_DATA_OBJECT {
            self.fail(format!("WRITE_EMBEDDED of object 1 at {}", w.offset));
        }
    }
    fn on_spill(&mut self, s: &Spill<'_>) {
        if s.object == ZVOL_DATA_OBJECT {
            self.fail("SPILL of object 1".into());
        }
    }
    fn on_end(&mut self, e: &End) {
        if e.kind == EndKind::Substream {
            if let Err(err) = self.end() {
                self.fail(err);
            }
        }
    }
}

/// Manifest bodies by snapshot guid, shared with the writers handed to [`StreamManifests`].
#[derive(Clone, Default)]
struct Bodies(Arc<Mutex<HashMap<u64, Vec<u8>>>>);

struct BodyWriter(Bodies, u64);

impl IoWrite for BodyWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut map = self.0 .0.lock().map_err(|_| std::io::ErrorKind::Other)?;
        map.entry(self.1).or_default().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Facts {
    volsizes: HashMap<String, u64>,
    bodies: Bodies,
}

impl SnapshotFacts for Facts {
    fn volsize(&self, toname: &[u8]) -> Option<u64> {
        self.volsizes
            .get(std::str::from_utf8(toname).ok()?)
            .copied()
    }
    fn body_writer(&mut self, toguid: u64) -> std::io::Result<Box<dyn IoWrite + Send>> {
        Ok(Box::new(BodyWriter(self.bodies.clone(), toguid)))
    }
}

impl Bodies {
    fn take(&self, guid: u64) -> Vec<u8> {
        self.0
            .lock()
            .map(|mut m| m.remove(&guid).unwrap_or_default())
            .unwrap_or_default()
    }
}

/// Runs one stream through the tap into `sink`; `complete`: it must end properly.
fn tap_stream<S: Sink>(sink: S, stream: &[u8], complete: bool) -> Result<S, String> {
    let mut tap = Tap::new(sink);
    // In pieces, as dom0 reads its pipe.
    for chunk in stream.chunks(64 << 10) {
        tap.feed(chunk).map_err(|e| e.to_string())?;
    }
    if complete {
        tap.finish().map_err(|e| e.to_string())?;
    }
    Ok(tap.into_sink())
}

/// What one chain's check found, for the report.
#[derive(Clone, Debug)]
pub struct ChainReport {
    pub name: String,
    pub manifests: usize,
    pub entries: u64,
    pub data_blocks: u64,
    /// The last manifest's `(entries, body_hash)`, for `equals`.
    pub last_body: (u64, [u8; 32]),
    /// `object offset` of the token, for a resumed chain.
    pub resumed_at: Option<(u64, u64)>,
}

impl std::fmt::Display for ChainReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "chain {}: {} manifests, {} entries, {} data blocks read back and verified; a flipped byte and a missing block refused",
            self.name, self.manifests, self.entries, self.data_blocks
        )?;
        if let Some((o, off)) = self.resumed_at {
            write!(f, "; resumed at object {o} offset {off}")?;
        }
        Ok(())
    }
}

/// Checks every chain of a golden directory; the first failure is the error.
pub fn check_dir(read: ReadFile<'_>) -> Result<Vec<ChainReport>, String> {
    let text = read("index.txt").map_err(|e| format!("index.txt: {e}"))?;
    let index = parse_index(&String::from_utf8_lossy(&text))?;
    if index.chains.is_empty() {
        return Err("index.txt names no chain".into());
    }
    let mut snapshots = HashMap::new();
    for spec in &index.snapshots {
        let blocks = read_blocks(spec, read)?;
        snapshots.insert(spec.name.clone(), (spec.clone(), blocks));
    }
    let mut reports: Vec<ChainReport> = Vec::new();
    for chain in &index.chains {
        let report =
            check_one(chain, &snapshots, read).map_err(|e| format!("chain {}: {e}", chain.name))?;
        if let Some(other) = &chain.equals {
            let twin = reports.iter().find(|r| &r.name == other).ok_or_else(|| {
                format!(
                    "chain {}: equals={other}: no such earlier chain",
                    chain.name
                )
            })?;
            if twin.last_body != report.last_body {
                return Err(format!(
                    "chain {}: its last manifest body differs from chain {other}'s",
                    chain.name
                ));
            }
        }
        reports.push(report);
    }
    Ok(reports)
}

fn check_one(
    chain: &ChainSpec,
    snapshots: &HashMap<String, (SnapshotSpec, Vec<[u8; 32]>)>,
    read: ReadFile<'_>,
) -> Result<ChainReport, String> {
    let (expect, expect_blocks) = snapshots
        .get(&chain.expect)
        .ok_or_else(|| format!("no snapshot line for {}", chain.expect))?;
    let bs = expect.volblocksize;
    if !bs.is_power_of_two() || bs < 512 {
        return Err(format!(
            "volblocksize {bs} is not a power of two of at least 512"
        ));
    }
    let mut files = Vec::new();
    for name in &chain.streams {
        files.push(read(name).map_err(|e| format!("{name}: {e}"))?);
    }
    let resume = match &chain.resume {
        Some((prefix, token)) => {
            let p = read(prefix).map_err(|e| format!("{prefix}: {e}"))?;
            let t = read(token).map_err(|e| format!("{token}: {e}"))?;
            let t = String::from_utf8_lossy(&t).trim().to_string();
            let t = decode_resume_token(&t).map_err(|e| format!("{token}: {e}"))?;
            Some((p, t))
        }
        None => None,
    };

    // (a) the records against the real volume.
    let mut image = Vec::new();
    let last = files.len().checked_sub(1).ok_or("no stream")?;
    for (i, stream) in files.iter().enumerate() {
        let mut passes = vec![(stream, true)];
        if let (Some((prefix, _)), true) = (&resume, i == last) {
            passes.insert(0, (prefix, false));
        }
        for (bytes, complete) in passes {
            let sink = ImageSink {
                image: &mut image,
                snapshots,
                current: None,
                checked: Vec::new(),
                error: None,
            };
            let sink = tap_stream(sink, bytes, complete)?;
            if let Some(e) = sink.error {
                return Err(e);
            }
            if complete && sink.checked.is_empty() {
                return Err(format!("{}: no sub-stream", chain.streams[i]));
            }
        }
    }
    if let Some(i) = first_mismatch(&image, bs, expect_blocks) {
        return Err(format!(
            "the image differs from {} at block {i}",
            chain.expect
        ));
    }

    // (b) the manifests.
    let volume = Volume {
        qube: "golden".into(),
        volume: "vol".into(),
        dataset: chain.expect.split('@').next().unwrap_or("").to_string(),
        volblocksize: bs,
    };
    let volsizes: HashMap<String, u64> = snapshots
        .iter()
        .map(|(k, (s, _))| (k.clone(), s.volsize))
        .collect();
    let bodies = Bodies::default();
    let facts = || Facts {
        volsizes: volsizes.clone(),
        bodies: bodies.clone(),
    };
    let mut manifests: Vec<(ManifestHeader, Vec<u8>)> = Vec::new();
    for (i, stream) in files.iter().enumerate() {
        let start = manifests
            .last()
            .map_or_else(ChainStart::full, |(h, _)| ChainStart::after(h));
        let mut previous = None;
        if let (Some((prefix, token)), true) = (&resume, i == last) {
            let sm = StreamManifests::new(volume.clone(), KEY, 0, facts(), start.clone(), None);
            let mut sm = tap_stream(sm, prefix, false)?;
            if let Some(e) = sm.error() {
                return Err(format!("the cut stream's manifest: {e}"));
            }
            sm.flush().map_err(|e| e.to_string())?;
            let partial: Box<dyn Read + Send> =
                Box::new(std::io::Cursor::new(bodies.take(token.toguid)));
            previous = Some(Resume {
                previous_body: partial,
                object: token.object,
                offset: token.offset,
            });
        }
        let sm = StreamManifests::new(volume.clone(), KEY, 0, facts(), start, previous);
        let sm = tap_stream(sm, stream, true)?;
        let (finished, _) = sm
            .finish()
            .map_err(|e| format!("{}: {e}", chain.streams[i]))?;
        for Finished { header, mac, .. } in finished {
            let verified =
                ManifestHeader::verify(&header.encode(), &mac, &KEY).map_err(|e| e.to_string())?;
            let body = bodies.take(header.snapshot_guid);
            verified
                .verify_body(body.as_slice())
                .map_err(|e| e.to_string())?;
            manifests.push((verified, body));
        }
    }
    let headers: Vec<ManifestHeader> = manifests.iter().map(|(h, _)| h.clone()).collect();
    check_chain(&headers).map_err(|e| e.to_string())?;

    let blocks: Vec<(u64, &[u8])> = image
        .chunks_exact(bs as usize)
        .enumerate()
        .filter(|(_, b)| b.iter().any(|&x| x != 0))
        .map(|(i, b)| (i as u64 * bs, b))
        .collect();
    let read_back = |blocks: &[(u64, &[u8])]| -> Result<u64, ManifestError> {
        let merge = ChainMerge::new(
            manifests
                .iter()
                .map(|(h, b)| (h.clone(), b.as_slice()))
                .collect(),
        )?;
        let mut check = BlockCheck::new(merge, KEY);
        for (offset, data) in blocks {
            check.block(*offset, data)?;
        }
        Ok(check.finish()?.data_blocks)
    };
    let data_blocks = read_back(&blocks).map_err(|e| format!("read-back check: {e}"))?;
    if data_blocks != blocks.len() as u64 {
        return Err(format!(
            "{data_blocks} data blocks checked, {} expected",
            blocks.len()
        ));
    }
    if let Some(mid) = blocks.len().checked_sub(1).map(|n| n / 2) {
        let at = blocks[mid].0;
        let mut flipped = blocks[mid].1.to_vec();
        flipped[bs as usize / 2] ^= 0x01;
        let mut altered = blocks.clone();
        altered[mid].1 = &flipped;
        match read_back(&altered) {
            Err(ManifestError::ReadBackAltered { offset }) if offset == at => {}
            other => {
                return Err(format!(
                    "a flipped byte at {at}: {other:?}, not ReadBackAltered"
                ))
            }
        }
        let mut missing = blocks.clone();
        missing.remove(mid);
        match read_back(&missing) {
            Err(ManifestError::ReadBackMissing { offset }) if offset == at => {}
            other => {
                return Err(format!(
                    "a missing block at {at}: {other:?}, not ReadBackMissing"
                ))
            }
        }
    } else {
        return Err("the volume holds no data: nothing to check".into());
    }
    let (h, _) = manifests.last().ok_or("no manifest")?;
    Ok(ChainReport {
        name: chain.name.clone(),
        manifests: manifests.len(),
        entries: manifests.iter().map(|(h, _)| h.entries).sum(),
        data_blocks,
        last_body: (h.entries, h.body_hash),
        resumed_at: resume.map(|(_, t)| (t.object, t.offset)),
    })
}

/// A one-line-per-record listing of a stream (what the tap saw), for documenting what real
/// streams carry; consecutive WRITEs of object 1 are folded into one line.
pub fn trace(stream: &[u8]) -> String {
    #[derive(Default)]
    struct T {
        out: String,
        /// A run of contiguous non-zero WRITEs of object 1: `(start, end, records)`.
        writes: Option<(u64, u64, u64)>,
    }
    impl T {
        fn flush(&mut self) {
            if let Some((first, end, n)) = self.writes.take() {
                self.out
                    .push_str(&format!("WRITE obj 1 [{first}, {end}) in {n} records\n"));
            }
        }
        fn line(&mut self, s: String) {
            self.flush();
            self.out.push_str(&s);
            self.out.push('\n');
        }
    }
    impl Sink for T {
        fn on_begin(&mut self, b: &Begin<'_>) {
            self.line(format!(
                "BEGIN {:?} {} type {} features {:#x} flags {:#x} fromguid {:#x} toguid {:#x} payload {} B",
                b.header_type,
                String::from_utf8_lossy(b.toname),
                b.objset_type,
                b.featureflags,
                b.flags,
                b.fromguid,
                b.toguid,
                b.payload.len()
            ));
        }
        fn on_object(&mut self, o: &Object<'_>) {
            self.line(format!(
                "OBJECT {} type {} blksz {} maxblkid {} nlevels {} bonuslen {}",
                o.object, o.object_type, o.blksz, o.maxblkid, o.nlevels, o.bonuslen
            ));
        }
        fn on_freeobjects(&mut self, f: &FreeObjects) {
            self.line(format!(
                "FREEOBJECTS first {} num {}",
                f.firstobj, f.numobjs
            ));
        }
        fn on_write(&mut self, w: &Write<'_>) {
            let zero = w.payload.iter().all(|&b| b == 0);
            if w.object == ZVOL_DATA_OBJECT && w.compression == 0 && !zero {
                let end = w.offset.saturating_add(w.logical_size);
                match self.writes {
                    Some((first, e, n)) if e == w.offset => self.writes = Some((first, end, n + 1)),
                    _ => {
                        self.flush();
                        self.writes = Some((w.offset, end, 1));
                    }
                }
                return;
            }
            self.line(format!(
                "WRITE obj {} offset {} size {} compression {}{}",
                w.object,
                w.offset,
                w.logical_size,
                w.compression,
                if zero { " (all zeros)" } else { "" }
            ));
        }
        fn on_free(&mut self, f: &Free) {
            let len = if f.length == u64::MAX {
                "MAX".to_string()
            } else {
                f.length.to_string()
            };
            self.line(format!(
                "FREE obj {} offset {} length {len}",
                f.object, f.offset
            ));
        }
        fn on_spill(&mut self, s: &Spill<'_>) {
            self.line(format!("SPILL obj {}", s.object));
        }
        fn on_write_embedded(&mut self, w: &WriteEmbedded<'_>) {
            self.line(format!(
                "WRITE_EMBEDDED obj {} offset {}",
                w.object, w.offset
            ));
        }
        fn on_object_range(&mut self, r: &ObjectRange) {
            self.line(format!("OBJECT_RANGE first {}", r.firstobj));
        }
        fn on_redact(&mut self, r: &Redact) {
            self.line(format!("REDACT obj {}", r.object));
        }
        fn on_end(&mut self, e: &End) {
            self.line(format!("END {:?}", e.kind));
        }
    }
    let mut tap = Tap::new(T::default());
    let result = tap.feed(stream).and_then(|()| tap.finish());
    let mut t = tap.into_sink();
    t.line(match result {
        Ok(()) => format!("({} bytes)", stream.len()),
        Err(e) => format!("(tap: {e})"),
    });
    t.out
}
