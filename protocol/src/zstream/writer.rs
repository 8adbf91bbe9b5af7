//! Writes send streams record by record, with the checksums OpenZFS puts in them: for the
//! tap's tests and the fuzz corpus. It writes whatever fields it is given, so it can also
//! write streams the tap must refuse. Payloads are written as given (the caller sizes them).

use super::fletcher4::Fletcher4;
use super::records::{
    off, Begin, Free, FreeObjects, HeaderType, Object, ObjectRange, RecordType, Redact, Spill,
    Write, WriteEmbedded, BACKUP_MAGIC, CHECKSUM_OFFSET, HDRTYPE_COMPOUNDSTREAM, HDRTYPE_SUBSTREAM,
    RECORD_HEADER_LEN, TONAME_LEN,
};

/// A record header being filled in.
pub type RawHeader = [u8; RECORD_HEADER_LEN];

pub fn put_u8(h: &mut RawHeader, at: usize, v: u8) {
    h[at] = v;
}

pub fn put_u32(h: &mut RawHeader, at: usize, v: u32) {
    h[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

pub fn put_u64(h: &mut RawHeader, at: usize, v: u64) {
    h[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Builds a stream in memory.
#[derive(Clone, Debug, Default)]
pub struct StreamWriter {
    out: Vec<u8>,
    cksum: Fletcher4,
}

impl StreamWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// The stream so far.
    pub fn bytes(&self) -> &[u8] {
        &self.out
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.out
    }

    /// Takes the bytes written so far, leaving the writer empty but in the same place in the
    /// stream (its running checksum continues): to write a long stream out piece by piece.
    pub fn take_bytes(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// The fletcher-4 of the current (sub-)stream so far.
    pub fn checksum(&self) -> [u64; 4] {
        self.cksum.words()
    }

    /// A BEGIN as the kernel (sub-stream) or libzfs (compound) writes it: the checksum
    /// restarts, and is taken over the whole header and the payload. `begin.featureflags`
    /// goes to bits 2.. of `drr_versioninfo` as given (unmasked, so tests can set any bit).
    pub fn begin(&mut self, begin: &Begin<'_>) {
        let hdrtype = match begin.header_type {
            HeaderType::Substream => HDRTYPE_SUBSTREAM,
            HeaderType::Compound => HDRTYPE_COMPOUNDSTREAM,
        };
        self.begin_with(BACKUP_MAGIC, (begin.featureflags << 2) | hdrtype, begin);
    }

    /// A BEGIN with a given magic and `drr_versioninfo` (for refused streams).
    pub fn begin_with(&mut self, magic: u64, versioninfo: u64, begin: &Begin<'_>) {
        let mut h = [0u8; RECORD_HEADER_LEN];
        put_u32(&mut h, 0, RecordType::Begin as u32);
        put_u32(&mut h, 4, begin.payload.len() as u32);
        put_u64(&mut h, off::BEGIN_MAGIC, magic);
        put_u64(&mut h, off::BEGIN_VERSIONINFO, versioninfo);
        put_u64(&mut h, off::BEGIN_CREATION_TIME, begin.creation_time);
        put_u32(&mut h, off::BEGIN_TYPE, begin.objset_type);
        put_u32(&mut h, off::BEGIN_FLAGS, begin.flags);
        put_u64(&mut h, off::BEGIN_TOGUID, begin.toguid);
        put_u64(&mut h, off::BEGIN_FROMGUID, begin.fromguid);
        let name = &begin.toname[..begin.toname.len().min(TONAME_LEN)];
        h[off::BEGIN_TONAME..off::BEGIN_TONAME + name.len()].copy_from_slice(name);
        self.cksum = Fletcher4::new();
        self.cksum.update(&h);
        self.out.extend_from_slice(&h);
        self.cksum.update(begin.payload);
        self.out.extend_from_slice(begin.payload);
    }

    /// Any non-BEGIN record as the kernel writes it: the header with its trailing checksum
    /// (the fletcher-4 of everything before it), then the payload.
    pub fn record(&mut self, mut h: RawHeader, payload: &[u8]) {
        self.cksum.update(&h[..CHECKSUM_OFFSET]);
        let words = self.cksum.words();
        for (i, w) in words.iter().enumerate() {
            put_u64(&mut h, CHECKSUM_OFFSET + 8 * i, *w);
        }
        self.cksum.update(&h[CHECKSUM_OFFSET..]);
        self.out.extend_from_slice(&h);
        self.cksum.update(payload);
        self.out.extend_from_slice(payload);
    }

    /// A header of type `rtype` (a raw `drr_type`, so unknown types can be written).
    pub fn header(rtype: u32) -> RawHeader {
        let mut h = [0u8; RECORD_HEADER_LEN];
        put_u32(&mut h, 0, rtype);
        h
    }

    pub fn object(&mut self, o: &Object<'_>) {
        let mut h = Self::header(RecordType::Object as u32);
        put_u64(&mut h, off::OBJECT_OBJECT, o.object);
        put_u32(&mut h, off::OBJECT_TYPE, o.object_type);
        put_u32(&mut h, off::OBJECT_BONUSTYPE, o.bonus_type);
        put_u32(&mut h, off::OBJECT_BLKSZ, o.blksz);
        put_u32(&mut h, off::OBJECT_BONUSLEN, o.bonuslen);
        put_u8(&mut h, off::OBJECT_CHECKSUMTYPE, o.checksum_type);
        put_u8(&mut h, off::OBJECT_COMPRESS, o.compress);
        put_u8(&mut h, off::OBJECT_DN_SLOTS, o.dn_slots);
        put_u8(&mut h, off::OBJECT_FLAGS, o.flags);
        put_u32(&mut h, off::OBJECT_RAW_BONUSLEN, o.raw_bonuslen);
        put_u8(&mut h, off::OBJECT_INDBLKSHIFT, o.indblkshift);
        put_u8(&mut h, off::OBJECT_NLEVELS, o.nlevels);
        put_u8(&mut h, off::OBJECT_NBLKPTR, o.nblkptr);
        put_u64(&mut h, off::OBJECT_MAXBLKID, o.maxblkid);
        self.record(h, o.bonus);
    }

    pub fn freeobjects(&mut self, f: &FreeObjects) {
        let mut h = Self::header(RecordType::FreeObjects as u32);
        put_u64(&mut h, off::FREEOBJECTS_FIRSTOBJ, f.firstobj);
        put_u64(&mut h, off::FREEOBJECTS_NUMOBJS, f.numobjs);
        self.record(h, &[]);
    }

    pub fn write(&mut self, w: &Write<'_>) {
        let mut h = Self::header(RecordType::Write as u32);
        put_u64(&mut h, off::WRITE_OBJECT, w.object);
        put_u32(&mut h, off::WRITE_TYPE, w.object_type);
        put_u64(&mut h, off::WRITE_OFFSET, w.offset);
        put_u64(&mut h, off::WRITE_LOGICAL_SIZE, w.logical_size);
        put_u8(&mut h, off::WRITE_CHECKSUMTYPE, w.checksum_type);
        put_u8(&mut h, off::WRITE_FLAGS, w.flags);
        put_u8(&mut h, off::WRITE_COMPRESSIONTYPE, w.compression);
        put_u64(&mut h, off::WRITE_COMPRESSED_SIZE, w.compressed_size);
        self.record(h, w.payload);
    }

    pub fn free(&mut self, f: &Free) {
        self.free_like(RecordType::Free, f.object, f.offset, f.length);
    }

    pub fn redact(&mut self, r: &Redact) {
        self.free_like(RecordType::Redact, r.object, r.offset, r.length);
    }

    fn free_like(&mut self, rtype: RecordType, object: u64, offset: u64, length: u64) {
        let mut h = Self::header(rtype as u32);
        put_u64(&mut h, off::FREE_OBJECT, object);
        put_u64(&mut h, off::FREE_OFFSET, offset);
        put_u64(&mut h, off::FREE_LENGTH, length);
        self.record(h, &[]);
    }

    pub fn spill(&mut self, s: &Spill<'_>) {
        let mut h = Self::header(RecordType::Spill as u32);
        put_u64(&mut h, off::SPILL_OBJECT, s.object);
        put_u64(&mut h, off::SPILL_LENGTH, s.length);
        put_u8(&mut h, off::SPILL_FLAGS, s.flags);
        put_u8(&mut h, off::SPILL_COMPRESSIONTYPE, s.compression);
        put_u64(&mut h, off::SPILL_COMPRESSED_SIZE, s.compressed_size);
        put_u32(&mut h, off::SPILL_TYPE, s.object_type);
        self.record(h, s.payload);
    }

    pub fn write_embedded(&mut self, w: &WriteEmbedded<'_>) {
        let mut h = Self::header(RecordType::WriteEmbedded as u32);
        put_u64(&mut h, off::WE_OBJECT, w.object);
        put_u64(&mut h, off::WE_OFFSET, w.offset);
        put_u64(&mut h, off::WE_LENGTH, w.length);
        put_u8(&mut h, off::WE_COMPRESSION, w.compression);
        put_u8(&mut h, off::WE_ETYPE, w.etype);
        put_u32(&mut h, off::WE_LSIZE, w.lsize);
        put_u32(&mut h, off::WE_PSIZE, w.psize);
        self.record(h, w.payload);
    }

    pub fn object_range(&mut self, r: &ObjectRange) {
        let mut h = Self::header(RecordType::ObjectRange as u32);
        put_u64(&mut h, off::OR_FIRSTOBJ, r.firstobj);
        put_u64(&mut h, off::OR_NUMSLOTS, r.numslots);
        put_u8(&mut h, off::OR_FLAGS, r.flags);
        self.record(h, &[]);
    }

    /// A sub-stream's END as the kernel writes it: `drr_checksum` is the fletcher-4 of the
    /// sub-stream before this record, and the trailer is set like any record's.
    pub fn end(&mut self, toguid: u64) {
        let mut h = Self::header(RecordType::End as u32);
        for (i, w) in self.cksum.words().iter().enumerate() {
            put_u64(&mut h, off::END_CHECKSUM + 8 * i, *w);
        }
        put_u64(&mut h, off::END_TOGUID, toguid);
        self.record(h, &[]);
    }

    /// The END libzfs writes after a compound BEGIN and its nvlist: `drr_checksum` set, no
    /// trailing checksum.
    pub fn compound_end(&mut self) {
        let mut h = Self::header(RecordType::End as u32);
        for (i, w) in self.cksum.words().iter().enumerate() {
            put_u64(&mut h, off::END_CHECKSUM + 8 * i, *w);
        }
        self.out.extend_from_slice(&h);
    }

    /// The final END of a compound package: all zero but its type.
    pub fn package_end(&mut self) {
        self.out
            .extend_from_slice(&Self::header(RecordType::End as u32));
    }

    /// Raw bytes, unchecksummed (to damage a stream).
    pub fn raw(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }
}
