//! [`ManifestBuilder`]: a [`Sink`] for the stream tap that writes a zvol snapshot's manifest
//! body as the stream goes by, and its header at the end.

use super::entry::{block_tag, Entry, EntryKind, ENTRY_LEN};
use super::error::ManifestError;
use super::header::{check_names, ManifestHeader};
use crate::zstream::{
    feature, Begin, End, EndKind, Free, FreeObjects, HeaderType, Object, RecordType, Redact, Sink,
    Spill, Write, WriteEmbedded, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE,
};
use std::io::{Read, Write as IoWrite};

/// `DMU_OST_ZVOL`: the objset type in a zvol stream's BEGIN.
pub const OBJSET_TYPE_ZVOL: u32 = 3;
/// `DMU_OT_ZVOL`: the type of a zvol's data object.
pub const OBJECT_TYPE_ZVOL: u32 = 23;
/// A zvol's data lives in object 1 (`ZVOL_OBJ`).
pub const ZVOL_DATA_OBJECT: u64 = 1;

/// What the caller knows about the snapshot before the stream starts (the guids come from the
/// stream itself). `volsize` and `volblocksize` are the volume's (`zfs get`); the builder
/// checks the stream against them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestParams {
    pub qube: String,
    pub volume: String,
    pub dataset: String,
    pub seq: u64,
    pub prev_header_hash: [u8; 32],
    pub volsize: u64,
    pub volblocksize: u64,
    /// Seconds since the Unix epoch.
    pub created: u64,
}

impl ManifestParams {
    fn check(&self) -> Result<(), ManifestError> {
        check_names(&self.qube, &self.volume, &self.dataset)
            .map_err(ManifestError::InvalidParams)?;
        let bs = self.volblocksize;
        if !bs.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&bs) {
            return Err(ManifestError::InvalidParams(
                "volblocksize is not a power of two in 512 ..= 16 MiB",
            ));
        }
        if self.volsize == 0 || !self.volsize.is_multiple_of(bs) {
            return Err(ManifestError::InvalidParams(
                "volsize is zero or not a multiple of volblocksize",
            ));
        }
        Ok(())
    }
}

/// Where the stream is with respect to object 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Object1 {
    /// Its OBJECT record has not come yet.
    NotSeen,
    /// After its OBJECT record: its WRITE and FREE records may come.
    Current,
    /// A later object (or the END) came: object 1 is complete.
    Done,
}

/// Builds the manifest of one zvol snapshot from the records of its send stream (see
/// `protocol/README.md`, "Delta manifests", for the format and every rule checked).
///
/// Memory is flat: the builder holds its parameters, a blake3 hasher, a few counters and at
/// most one pending "free to the end" offset, never a per-block collection. Each entry goes to
/// `out` when its record is complete (wrap a file in a `BufWriter`; see the README for what
/// must be flushed before a resumable stream is forwarded). The `Sink` methods cannot return
/// errors: the first error is kept ([`ManifestBuilder::error`]), everything after it is
/// ignored, and [`ManifestBuilder::finish`] returns it.
pub struct ManifestBuilder<W> {
    params: ManifestParams,
    key: [u8; 32],
    out: W,
    body: blake3::Hasher,
    entries: u64,
    /// End of the last entry written: the next one must start at or after it.
    pos: u64,
    /// Start of a FREE to the end of the volume, written when object 1 is complete (OpenZFS
    /// sends it right after the OBJECT record, before the data it follows).
    tail: Option<u64>,
    object1: Object1,
    seen_object1: bool,
    /// `(toguid, fromguid)` of the sub-stream's BEGIN.
    guids: Option<(u64, u64)>,
    ended: bool,
    resuming: bool,
    error: Option<ManifestError>,
}

impl<W: IoWrite> ManifestBuilder<W> {
    /// A builder for a full or incremental stream (not a resumed one: see
    /// [`ManifestBuilder::resume`]). `key` makes the block tags and, later, the header MAC.
    pub fn new(params: ManifestParams, key: [u8; 32], out: W) -> Result<Self, ManifestError> {
        params.check()?;
        Ok(Self {
            params,
            key,
            out,
            body: blake3::Hasher::new(),
            entries: 0,
            pos: 0,
            tail: None,
            object1: Object1::NotSeen,
            seen_object1: false,
            guids: None,
            ended: false,
            resuming: false,
            error: None,
        })
    }

    /// A builder for a resumed stream (`zfs send -t`), continuing the partial body an
    /// interrupted run wrote. `previous` is that body; `resume_object` and `resume_offset`
    /// are the token's `object` and `offset`. The cut is `resume_offset` for object 1, the
    /// start of the volume for an earlier object, and nothing (keep all) for a later one.
    ///
    /// The partial body's entries are checked like new ones and copied to `out` (and into
    /// the body hash) up to the cut: an entry starting at or after the cut is dropped with
    /// everything after it, a FREE range across the cut is shortened to end there, a torn
    /// last entry (shorter than [`ENTRY_LEN`]) is dropped. The resumed stream then continues
    /// from there. The parameters must be the interrupted run's: the body does not record
    /// them.
    pub fn resume<R: Read>(
        params: ManifestParams,
        key: [u8; 32],
        out: W,
        mut previous: R,
        resume_object: u64,
        resume_offset: u64,
    ) -> Result<Self, ManifestError> {
        let mut builder = Self::new(params, key, out)?;
        builder.resuming = true;
        let cut = match resume_object {
            0 => 0,
            ZVOL_DATA_OBJECT => resume_offset,
            _ => u64::MAX,
        };
        let bs = builder.params.volblocksize;
        if cut != u64::MAX && !cut.is_multiple_of(bs) {
            return Err(ManifestError::Misaligned {
                offset: cut,
                block: bs,
            });
        }
        let mut buf = [0u8; ENTRY_LEN];
        let mut index = 0u64;
        while read_full(&mut previous, &mut buf)? == ENTRY_LEN {
            let mut entry = Entry::decode(&buf, index)?;
            if entry.offset >= cut {
                break;
            }
            if entry.end() > cut {
                if entry.kind != EntryKind::Free {
                    return Err(ManifestError::CutInsideBlock { offset: cut });
                }
                entry.len = cut - entry.offset;
            }
            builder.emit(entry)?;
            index += 1;
        }
        if cut == u64::MAX {
            // Object 1 was complete in the interrupted run; the resumed stream does not
            // carry it again.
            builder.object1 = Object1::Done;
            builder.seen_object1 = true;
        }
        Ok(builder)
    }

    /// The first error met, if any (the caller may stop feeding the tap then).
    pub fn error(&self) -> Option<&ManifestError> {
        self.error.as_ref()
    }

    /// The error a `finish` now would return: the first error met, else [`ManifestError::Incomplete`].
    pub fn error_or_incomplete(self) -> ManifestError {
        self.error.unwrap_or(ManifestError::Incomplete)
    }

    /// Flushes the body writer (see "Resumed streams" in protocol/README.md for when).
    pub fn flush_body(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }

    /// Entries written so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Ends the manifest: an error if any record was refused or the sub-stream's END did not
    /// come; else flushes `out` and returns the header (MAC it with
    /// [`ManifestHeader::mac`]) and the writer.
    pub fn finish(mut self) -> Result<(ManifestHeader, W), ManifestError> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let Some((toguid, fromguid)) = self.guids.filter(|_| self.ended) else {
            return Err(ManifestError::Incomplete);
        };
        if fromguid == 0 && !self.seen_object1 {
            return Err(ManifestError::MissingObject);
        }
        self.out.flush()?;
        let p = self.params;
        let header = ManifestHeader {
            qube: p.qube,
            volume: p.volume,
            dataset: p.dataset,
            snapshot_guid: toguid,
            parent_guid: fromguid,
            seq: p.seq,
            prev_header_hash: p.prev_header_hash,
            volsize: p.volsize,
            volblocksize: p.volblocksize,
            created: p.created,
            entries: self.entries,
            body_hash: *self.body.finalize().as_bytes(),
        };
        Ok((header, self.out))
    }

    /// Runs `f` unless an error was already met; keeps its error.
    fn guard(&mut self, f: impl FnOnce(&mut Self) -> Result<(), ManifestError>) {
        if self.error.is_none() {
            if let Err(e) = f(self) {
                self.error = Some(e);
            }
        }
    }

    /// Checks an entry against the ones before it and the volume, then writes and hashes it.
    fn emit(&mut self, entry: Entry) -> Result<(), ManifestError> {
        let bs = self.params.volblocksize;
        let end = entry
            .offset
            .checked_add(entry.len)
            .ok_or(ManifestError::BeyondVolume {
                offset: entry.offset,
                volsize: self.params.volsize,
            })?;
        for at in [entry.offset, end] {
            if !at.is_multiple_of(bs) {
                return Err(ManifestError::Misaligned {
                    offset: at,
                    block: bs,
                });
            }
        }
        if entry.kind != EntryKind::Free && entry.len != bs {
            return Err(ManifestError::SizeNotMultiple {
                offset: entry.offset,
                size: entry.len,
                block: bs,
            });
        }
        if entry.offset < self.pos {
            return Err(ManifestError::OutOfOrder {
                offset: entry.offset,
                previous_end: self.pos,
            });
        }
        if end > self.params.volsize {
            return Err(ManifestError::BeyondVolume {
                offset: entry.offset,
                volsize: self.params.volsize,
            });
        }
        if let Some(tail) = self.tail {
            if end > tail {
                return Err(ManifestError::InsideFreedTail {
                    offset: entry.offset,
                    tail,
                });
            }
        }
        let bytes = entry.encode();
        self.out.write_all(&bytes)?;
        self.body.update(&bytes);
        self.entries += 1;
        self.pos = end;
        Ok(())
    }

    /// Object 1 is complete (a later object or the END came): write the pending tail.
    fn leave_object1(&mut self) -> Result<(), ManifestError> {
        if self.object1 == Object1::Current {
            if let Some(tail) = self.tail.take() {
                self.emit(Entry {
                    kind: EntryKind::Free,
                    offset: tail,
                    len: self.params.volsize - tail,
                    tag: [0; 32],
                })?;
            }
        }
        self.object1 = Object1::Done;
        Ok(())
    }

    /// A record of `object` that is not data of object 1: passing a later object ends
    /// object 1; object 1 itself may not carry `record`.
    fn other_record(&mut self, object: u64, record: RecordType) -> Result<(), ManifestError> {
        match object {
            ZVOL_DATA_OBJECT => Err(ManifestError::UnsupportedRecord { record }),
            o if o > ZVOL_DATA_OBJECT => self.leave_object1(),
            _ => Ok(()),
        }
    }

    fn in_object1(&self, record: RecordType) -> Result<(), ManifestError> {
        if self.object1 == Object1::Current {
            Ok(())
        } else {
            Err(ManifestError::RecordOutsideObject { record })
        }
    }

    fn begin(&mut self, b: &Begin<'_>) -> Result<(), ManifestError> {
        if b.header_type == HeaderType::Compound {
            // libzfs' wrapper (`-p`): its sub-stream follows.
            return Ok(());
        }
        if self.guids.is_some() {
            return Err(ManifestError::MultipleSnapshots);
        }
        if b.objset_type != OBJSET_TYPE_ZVOL {
            return Err(ManifestError::NotZvol {
                objset_type: b.objset_type,
            });
        }
        if b.featureflags & feature::RAW != 0 {
            return Err(ManifestError::RawStream);
        }
        let resuming = b.featureflags & feature::RESUMING != 0;
        if resuming != self.resuming {
            return Err(ManifestError::ResumeMismatch {
                stream_resuming: resuming,
            });
        }
        self.guids = Some((b.toguid, b.fromguid));
        Ok(())
    }

    fn object(&mut self, o: &Object<'_>) -> Result<(), ManifestError> {
        if o.object != ZVOL_DATA_OBJECT {
            return self.other_record(o.object, RecordType::Object);
        }
        if self.object1 == Object1::Done {
            return Err(ManifestError::RecordOutsideObject {
                record: RecordType::Object,
            });
        }
        if o.object_type != OBJECT_TYPE_ZVOL {
            return Err(ManifestError::NotZvolObject {
                object_type: o.object_type,
            });
        }
        if u64::from(o.blksz) != self.params.volblocksize {
            return Err(ManifestError::BlockSizeMismatch {
                found: o.blksz.into(),
                expected: self.params.volblocksize,
            });
        }
        self.object1 = Object1::Current;
        self.seen_object1 = true;
        Ok(())
    }

    fn freeobjects(&mut self, f: &FreeObjects) -> Result<(), ManifestError> {
        let covers_1 = f.firstobj <= ZVOL_DATA_OBJECT
            && f.numobjs > ZVOL_DATA_OBJECT - f.firstobj
            && self.object1 != Object1::NotSeen;
        if covers_1 {
            return Err(ManifestError::ObjectFreed);
        }
        Ok(())
    }

    fn write(&mut self, w: &Write<'_>) -> Result<(), ManifestError> {
        if w.object != ZVOL_DATA_OBJECT {
            return self.other_record(w.object, RecordType::Write);
        }
        self.in_object1(RecordType::Write)?;
        if !w.is_plain() {
            return Err(ManifestError::CompressedWrite {
                offset: w.offset,
                compression: w.compression,
            });
        }
        let bs = self.params.volblocksize;
        let size = w.payload.len() as u64;
        if size != w.logical_size || !size.is_multiple_of(bs) {
            return Err(ManifestError::SizeNotMultiple {
                offset: w.offset,
                size: w.logical_size,
                block: bs,
            });
        }
        // bs <= 16 MiB, so it fits in usize.
        for (i, block) in w.payload.chunks_exact(bs as usize).enumerate() {
            let offset = (i as u64)
                .checked_mul(bs)
                .and_then(|d| w.offset.checked_add(d))
                .ok_or(ManifestError::BeyondVolume {
                    offset: w.offset,
                    volsize: self.params.volsize,
                })?;
            let entry = if block.iter().all(|&b| b == 0) {
                Entry {
                    kind: EntryKind::Hole,
                    offset,
                    len: bs,
                    tag: [0; 32],
                }
            } else {
                Entry {
                    kind: EntryKind::Data,
                    offset,
                    len: bs,
                    tag: block_tag(&self.key, offset, block),
                }
            };
            self.emit(entry)?;
        }
        Ok(())
    }

    fn free(&mut self, f: &Free) -> Result<(), ManifestError> {
        if f.object != ZVOL_DATA_OBJECT {
            return self.other_record(f.object, RecordType::Free);
        }
        self.in_object1(RecordType::Free)?;
        if f.length == 0 {
            return Ok(());
        }
        let bs = self.params.volblocksize;
        let volsize = self.params.volsize;
        if !f.offset.is_multiple_of(bs) {
            return Err(ManifestError::Misaligned {
                offset: f.offset,
                block: bs,
            });
        }
        if f.offset < self.pos {
            return Err(ManifestError::OutOfOrder {
                offset: f.offset,
                previous_end: self.pos,
            });
        }
        let end = f
            .offset
            .checked_add(f.length)
            .filter(|_| f.length != u64::MAX);
        match end {
            Some(end) if end < volsize => self.emit(Entry {
                kind: EntryKind::Free,
                offset: f.offset,
                len: end - f.offset,
                tag: [0; 32],
            }),
            // A range that reaches the volume's end (`u64::MAX`, or past volsize): held as
            // the tail and written once object 1 is complete.
            _ => {
                if f.offset < volsize {
                    self.tail = Some(self.tail.map_or(f.offset, |t| t.min(f.offset)));
                }
                Ok(())
            }
        }
    }
}

impl<W: IoWrite> Sink for ManifestBuilder<W> {
    fn on_begin(&mut self, begin: &Begin<'_>) {
        self.guard(|s| s.begin(begin));
    }
    fn on_object(&mut self, object: &Object<'_>) {
        self.guard(|s| s.object(object));
    }
    fn on_freeobjects(&mut self, freeobjects: &FreeObjects) {
        self.guard(|s| s.freeobjects(freeobjects));
    }
    fn on_write(&mut self, write: &Write<'_>) {
        self.guard(|s| s.write(write));
    }
    fn on_free(&mut self, free: &Free) {
        self.guard(|s| s.free(free));
    }
    fn on_spill(&mut self, spill: &Spill<'_>) {
        self.guard(|s| s.other_record(spill.object, RecordType::Spill));
    }
    fn on_write_embedded(&mut self, write: &WriteEmbedded<'_>) {
        self.guard(|s| s.other_record(write.object, RecordType::WriteEmbedded));
    }
    fn on_redact(&mut self, redact: &Redact) {
        self.guard(|s| s.other_record(redact.object, RecordType::Redact));
    }
    fn on_end(&mut self, end: &End) {
        if end.kind == EndKind::Substream {
            self.guard(|s| {
                s.leave_object1()?;
                s.ended = true;
                Ok(())
            });
        }
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<usize, ManifestError> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(filled)
}
