//! The push parser: [`Tap`] takes the stream in chunks of any size and calls a [`Sink`] for
//! each complete record.

use super::error::{ErrorKind, StreamError};
use super::fletcher4::Fletcher4;
use super::records::{
    feature, off, Begin, End, EndKind, Free, FreeObjects, Header, HeaderType, Object, ObjectRange,
    RecordType, Redact, Spill, Write, WriteEmbedded, BACKUP_MAGIC, CHECKSUM_OFFSET,
    HDRTYPE_COMPOUNDSTREAM, HDRTYPE_SUBSTREAM, MAX_BLOCK_SIZE, MAX_EMBEDDED_PAYLOAD,
    MIN_BLOCK_SIZE, RECORD_HEADER_LEN, TONAME_LEN,
};

/// Largest BEGIN payload (the nvlist of a compound or resumed stream) the tap accepts. A
/// `-p` stream of one zvol carries a few KiB; libzfs' own cap (for `-R` of many datasets) is
/// 64 MiB, far beyond what dom0 sends.
pub const MAX_BEGIN_PAYLOAD: u64 = 1 << 20;
/// Largest WRITE or SPILL payload: `SPA_MAXBLOCKSIZE`, 16 MiB.
pub const MAX_RECORD_PAYLOAD: u64 = MAX_BLOCK_SIZE;
/// Largest OBJECT payload (bonus buffer). The largest possible is a 16 KiB dnode's bonus
/// (just under 16 KiB); the cap leaves room.
pub const MAX_OBJECT_PAYLOAD: u64 = 64 << 10;

/// Receives the records of a stream, in stream order. Every method has an empty default.
/// Payload slices are only valid during the call.
pub trait Sink {
    fn on_begin(&mut self, _begin: &Begin<'_>) {}
    fn on_object(&mut self, _object: &Object<'_>) {}
    fn on_freeobjects(&mut self, _freeobjects: &FreeObjects) {}
    fn on_write(&mut self, _write: &Write<'_>) {}
    fn on_free(&mut self, _free: &Free) {}
    fn on_spill(&mut self, _spill: &Spill<'_>) {}
    fn on_write_embedded(&mut self, _write: &WriteEmbedded<'_>) {}
    fn on_object_range(&mut self, _range: &ObjectRange) {}
    fn on_redact(&mut self, _redact: &Redact) {}
    fn on_end(&mut self, _end: &End) {}
}

/// Where the stream is, between records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Structure {
    /// Nothing read yet: a BEGIN must come.
    Start,
    /// After a compound BEGIN (and its nvlist): its END must come.
    CompoundHeader,
    /// Inside a compound package: a sub-stream BEGIN or the package's final END.
    Package,
    /// Inside a sub-stream: data records, then END. `in_package`: return to `Package` after.
    Substream { in_package: bool },
    /// The last END was read: nothing more may come.
    Done,
    /// An error was returned.
    Failed,
}

impl Structure {
    fn expected(self) -> &'static str {
        match self {
            Self::Start => "DRR_BEGIN",
            Self::CompoundHeader => "the DRR_END of the compound header",
            Self::Package => "a sub-stream DRR_BEGIN or the package's final DRR_END",
            Self::Substream { .. } => "the sub-stream's records up to its DRR_END",
            Self::Done => "nothing (the stream ended)",
            Self::Failed => "nothing (the stream failed)",
        }
    }
}

/// Tap options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Verify each record's header checksum and each END's stream checksum (default: on).
    /// Off only for fuzzing the structure below the checksums, and for diagnostics.
    pub verify_checksums: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            verify_checksums: true,
        }
    }
}

/// A streaming parser of an OpenZFS send stream. Feed it the stream in chunks of any size
/// with [`Tap::feed`], then call [`Tap::finish`]. It keeps one 312-byte header and, only when
/// a payload is split across chunks, that one payload (bounded by the limits above, checked
/// before the buffer is sized); a payload that lies within one chunk is passed to the sink
/// as a slice of that chunk. After an error the tap refuses all further input.
pub struct Tap<S> {
    sink: S,
    options: Options,
    structure: Structure,
    header: [u8; RECORD_HEADER_LEN],
    header_filled: usize,
    /// Payload length still to come for the current record (0 = reading a header).
    payload_len: usize,
    in_payload: bool,
    payload_buf: Vec<u8>,
    /// Stream offset of the next byte fed.
    offset: u64,
    /// Stream offset of the current record's header.
    record_offset: u64,
    cksum: Fletcher4,
    /// The checksum before the current record's header (what an END must carry).
    cksum_before_header: Fletcher4,
    records: u64,
}

impl<S: Sink> Tap<S> {
    /// A tap that verifies checksums and sends events to `sink`.
    pub fn new(sink: S) -> Self {
        Self::with_options(sink, Options::default())
    }

    pub fn with_options(sink: S, options: Options) -> Self {
        Self {
            sink,
            options,
            structure: Structure::Start,
            header: [0; RECORD_HEADER_LEN],
            header_filled: 0,
            payload_len: 0,
            in_payload: false,
            payload_buf: Vec::new(),
            offset: 0,
            record_offset: 0,
            cksum: Fletcher4::new(),
            cksum_before_header: Fletcher4::new(),
            records: 0,
        }
    }

    pub fn sink(&self) -> &S {
        &self.sink
    }

    pub fn sink_mut(&mut self) -> &mut S {
        &mut self.sink
    }

    pub fn into_sink(self) -> S {
        self.sink
    }

    /// Bytes fed so far (the offset of the next byte).
    pub fn bytes(&self) -> u64 {
        self.offset
    }

    /// Complete records parsed so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Whether the stream's last END was read.
    pub fn is_done(&self) -> bool {
        self.structure == Structure::Done
    }

    /// Takes the next chunk of the stream.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), StreamError> {
        if self.structure == Structure::Failed {
            return Err(self.error_at(self.offset, ErrorKind::AlreadyFailed));
        }
        let result = self.feed_inner(&mut data);
        if result.is_err() {
            self.structure = Structure::Failed;
            self.payload_buf = Vec::new();
        }
        result
    }

    /// Ends the stream: an error unless the last END was read and no record is open.
    pub fn finish(&self) -> Result<(), StreamError> {
        match self.structure {
            Structure::Failed => Err(self.error_at(self.offset, ErrorKind::AlreadyFailed)),
            Structure::Done => Ok(()),
            structure => {
                let missing = if self.in_payload {
                    (self.payload_len - self.payload_buf.len()) as u64
                } else if self.header_filled > 0 {
                    (RECORD_HEADER_LEN - self.header_filled) as u64
                } else {
                    0
                };
                let kind = if missing > 0 {
                    ErrorKind::Truncated { missing }
                } else {
                    ErrorKind::MissingEnd {
                        expected: structure.expected(),
                    }
                };
                Err(self.error_at(self.offset, kind))
            }
        }
    }

    fn error_at(&self, offset: u64, kind: ErrorKind) -> StreamError {
        StreamError { offset, kind }
    }

    fn error(&self, kind: ErrorKind) -> StreamError {
        self.error_at(self.record_offset, kind)
    }

    fn feed_inner(&mut self, data: &mut &[u8]) -> Result<(), StreamError> {
        while !data.is_empty() {
            if self.structure == Structure::Done {
                return Err(self.error_at(self.offset, ErrorKind::TrailingData));
            }
            if !self.in_payload {
                let take = (RECORD_HEADER_LEN - self.header_filled).min(data.len());
                let (head, rest) = data.split_at(take);
                self.header[self.header_filled..self.header_filled + take].copy_from_slice(head);
                self.header_filled += take;
                self.offset += take as u64;
                *data = rest;
                if self.header_filled == RECORD_HEADER_LEN {
                    self.header_filled = 0;
                    self.on_header()?;
                }
            } else if self.payload_buf.is_empty() && data.len() >= self.payload_len {
                // The whole payload is in this chunk: hand it through without copying.
                let (payload, rest) = data.split_at(self.payload_len);
                self.offset += payload.len() as u64;
                *data = rest;
                self.on_payload(payload)?;
            } else {
                if self.payload_buf.capacity() < self.payload_len {
                    // payload_len was checked against its limit in on_header.
                    self.payload_buf
                        .reserve_exact(self.payload_len - self.payload_buf.len());
                }
                let take = (self.payload_len - self.payload_buf.len()).min(data.len());
                let (part, rest) = data.split_at(take);
                self.payload_buf.extend_from_slice(part);
                self.offset += take as u64;
                *data = rest;
                if self.payload_buf.len() == self.payload_len {
                    let buf = std::mem::take(&mut self.payload_buf);
                    let result = self.on_payload(&buf);
                    self.payload_buf = buf;
                    self.payload_buf.clear();
                    result?;
                }
            }
        }
        Ok(())
    }

    /// A complete header is in `self.header`: check it, account its checksum, and either emit
    /// the record (no payload) or start reading its payload.
    fn on_header(&mut self) -> Result<(), StreamError> {
        self.record_offset = self.offset - RECORD_HEADER_LEN as u64;
        let h = Header(&self.header);
        let raw_type = h.record_type();
        let Some(rtype) = RecordType::from_u32(raw_type) else {
            return Err(self.error(ErrorKind::UnknownRecordType(raw_type)));
        };
        self.check_structure(rtype)?;
        let payload_len = self.payload_length(rtype)?;

        // Checksums: a BEGIN restarts the chain and is summed whole (its checksum field is
        // part of drr_toname); any other record is summed up to its checksum field, which
        // must equal the sum so far, then the field itself is summed as stored.
        self.cksum_before_header = self.cksum;
        if rtype == RecordType::Begin {
            self.cksum = Fletcher4::new();
            self.cksum.update(&self.header);
        } else {
            self.cksum.update(&self.header[..CHECKSUM_OFFSET]);
            let found = Header(&self.header).trailer();
            if self.options.verify_checksums {
                let in_substream = matches!(self.structure, Structure::Substream { .. });
                if found == [0; 4] {
                    // libzfs writes the compound stream's END records without one.
                    if in_substream {
                        return Err(self.error(ErrorKind::MissingChecksum(rtype)));
                    }
                } else if found != self.cksum.words() {
                    return Err(self.error(ErrorKind::ChecksumMismatch {
                        record: rtype,
                        expected: self.cksum.words(),
                        found,
                    }));
                }
            }
            self.cksum.update(&self.header[CHECKSUM_OFFSET..]);
        }

        if payload_len == 0 {
            self.emit(rtype, &[])
        } else {
            self.payload_len = payload_len;
            self.in_payload = true;
            Ok(())
        }
    }

    fn on_payload(&mut self, payload: &[u8]) -> Result<(), StreamError> {
        self.in_payload = false;
        self.payload_len = 0;
        self.cksum.update(payload);
        let h = Header(&self.header);
        let rtype = RecordType::from_u32(h.record_type()).ok_or_else(|| {
            self.error(ErrorKind::UnknownRecordType(
                Header(&self.header).record_type(),
            ))
        })?;
        self.emit(rtype, payload)
    }

    /// Whether a record of this type may come now (before its payload is read).
    fn check_structure(&mut self, rtype: RecordType) -> Result<(), StreamError> {
        let ok = match (self.structure, rtype) {
            (Structure::Start, RecordType::Begin) => true,
            (Structure::Package, RecordType::Begin) => {
                // Only a sub-stream BEGIN inside a package; decide_begin checks the type.
                true
            }
            (Structure::CompoundHeader | Structure::Package, RecordType::End) => true,
            (Structure::Substream { .. }, RecordType::Begin) => false,
            (Structure::Substream { .. }, _) => true,
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(self.error(ErrorKind::UnexpectedRecord {
                record: rtype,
                expected: self.structure.expected(),
            }))
        }
    }

    /// The payload length of the record in `self.header`, computed as OpenZFS does, and
    /// checked against its limit.
    fn payload_length(&self, rtype: RecordType) -> Result<usize, StreamError> {
        let h = Header(&self.header);
        let too_large = |length: u64, limit: u64| {
            self.error(ErrorKind::PayloadTooLarge {
                record: rtype,
                length,
                limit,
            })
        };
        let invalid = |field: &'static str, value: u64| {
            self.error(ErrorKind::InvalidSize {
                record: rtype,
                field,
                value,
            })
        };
        let (length, limit) = match rtype {
            RecordType::Begin => {
                self.check_begin_header()?;
                (u64::from(h.payloadlen()), MAX_BEGIN_PAYLOAD)
            }
            RecordType::Object => {
                // DRR_OBJECT_PAYLOAD_SIZE: raw_bonuslen if set, else bonuslen rounded to 8.
                let raw = u64::from(h.u32(off::OBJECT_RAW_BONUSLEN));
                let len = if raw != 0 {
                    raw
                } else {
                    round8(u64::from(h.u32(off::OBJECT_BONUSLEN)))
                };
                (len, MAX_OBJECT_PAYLOAD)
            }
            RecordType::Write => {
                // DRR_WRITE_PAYLOAD_SIZE: compressed size if compressed, else logical size.
                let logical = h.u64(off::WRITE_LOGICAL_SIZE);
                if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&logical) {
                    return Err(invalid("logical size", logical));
                }
                let len = if h.u8(off::WRITE_COMPRESSIONTYPE) != 0 {
                    let psize = h.u64(off::WRITE_COMPRESSED_SIZE);
                    if psize == 0 {
                        return Err(invalid("compressed size", psize));
                    }
                    psize
                } else {
                    logical
                };
                (len, MAX_RECORD_PAYLOAD)
            }
            RecordType::Spill => {
                // DRR_SPILL_PAYLOAD_SIZE: compressed size if set, else length.
                let psize = h.u64(off::SPILL_COMPRESSED_SIZE);
                let len = if psize != 0 {
                    psize
                } else {
                    h.u64(off::SPILL_LENGTH)
                };
                (len, MAX_RECORD_PAYLOAD)
            }
            RecordType::WriteEmbedded => {
                let psize = u64::from(h.u32(off::WE_PSIZE));
                if psize > MAX_EMBEDDED_PAYLOAD {
                    return Err(too_large(psize, MAX_EMBEDDED_PAYLOAD));
                }
                (round8(psize), MAX_EMBEDDED_PAYLOAD)
            }
            RecordType::WriteByRef => {
                return Err(self.error(ErrorKind::UnsupportedRecordType(rtype)));
            }
            RecordType::FreeObjects
            | RecordType::Free
            | RecordType::End
            | RecordType::ObjectRange
            | RecordType::Redact => (0, 0),
        };
        if length > limit {
            return Err(too_large(length, limit));
        }
        // limit <= 16 MiB, so this always fits in usize.
        usize::try_from(length).map_err(|_| too_large(length, limit))
    }

    /// Magic, header type and feature flags of the BEGIN in `self.header`, and whether that
    /// kind of BEGIN may come here.
    fn check_begin_header(&self) -> Result<(), StreamError> {
        let h = Header(&self.header);
        let magic = h.u64(off::BEGIN_MAGIC);
        if magic != BACKUP_MAGIC {
            if magic == BACKUP_MAGIC.swap_bytes() {
                return Err(self.error(ErrorKind::Byteswapped));
            }
            return Err(self.error(ErrorKind::BadMagic(magic)));
        }
        let versioninfo = h.u64(off::BEGIN_VERSIONINFO);
        let hdrtype = versioninfo & 3;
        let features = (versioninfo >> 2) & ((1 << 56) - 1);
        let unknown = features & !feature::KNOWN;
        if unknown != 0 || versioninfo >> 58 != 0 {
            return Err(self.error(ErrorKind::UnsupportedFeatures(
                unknown | (versioninfo >> 58) << 56,
            )));
        }
        match hdrtype {
            HDRTYPE_SUBSTREAM => Ok(()),
            HDRTYPE_COMPOUNDSTREAM if self.structure == Structure::Start => Ok(()),
            HDRTYPE_COMPOUNDSTREAM => Err(self.error(ErrorKind::UnexpectedRecord {
                record: RecordType::Begin,
                expected: "a sub-stream DRR_BEGIN (compound streams do not nest)",
            })),
            other => Err(self.error(ErrorKind::UnknownHeaderType(other))),
        }
    }

    /// Emits the complete record in `self.header` (with `payload`) and moves the structure on.
    fn emit(&mut self, rtype: RecordType, payload: &[u8]) -> Result<(), StreamError> {
        let h = Header(&self.header);
        match rtype {
            RecordType::Begin => {
                let versioninfo = h.u64(off::BEGIN_VERSIONINFO);
                let header_type = if versioninfo & 3 == HDRTYPE_COMPOUNDSTREAM {
                    HeaderType::Compound
                } else {
                    HeaderType::Substream
                };
                let name = &self.header[off::BEGIN_TONAME..off::BEGIN_TONAME + TONAME_LEN];
                let name_len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
                self.sink.on_begin(&Begin {
                    header_type,
                    featureflags: (versioninfo >> 2) & ((1 << 56) - 1),
                    creation_time: h.u64(off::BEGIN_CREATION_TIME),
                    objset_type: h.u32(off::BEGIN_TYPE),
                    flags: h.u32(off::BEGIN_FLAGS),
                    toguid: h.u64(off::BEGIN_TOGUID),
                    fromguid: h.u64(off::BEGIN_FROMGUID),
                    toname: &name[..name_len],
                    payload,
                });
                self.structure = match (header_type, self.structure) {
                    (HeaderType::Compound, _) => Structure::CompoundHeader,
                    (HeaderType::Substream, Structure::Package) => {
                        Structure::Substream { in_package: true }
                    }
                    (HeaderType::Substream, _) => Structure::Substream { in_package: false },
                };
            }
            RecordType::End => {
                let found = h.cksum(off::END_CHECKSUM);
                let (kind, next) = match self.structure {
                    Structure::CompoundHeader => (EndKind::CompoundHeader, Structure::Package),
                    Structure::Package => (EndKind::Package, Structure::Done),
                    Structure::Substream { in_package: true } => {
                        (EndKind::Substream, Structure::Package)
                    }
                    _ => (EndKind::Substream, Structure::Done),
                };
                // The package's final END is written zeroed and checked by nobody.
                let expected = self.cksum_before_header.words();
                if self.options.verify_checksums && kind != EndKind::Package && found != expected {
                    return Err(self.error(ErrorKind::EndChecksumMismatch { expected, found }));
                }
                self.sink.on_end(&End {
                    kind,
                    checksum: found,
                    toguid: h.u64(off::END_TOGUID),
                });
                self.structure = next;
            }
            RecordType::Object => self.sink.on_object(&Object {
                object: h.u64(off::OBJECT_OBJECT),
                object_type: h.u32(off::OBJECT_TYPE),
                bonus_type: h.u32(off::OBJECT_BONUSTYPE),
                blksz: h.u32(off::OBJECT_BLKSZ),
                bonuslen: h.u32(off::OBJECT_BONUSLEN),
                checksum_type: h.u8(off::OBJECT_CHECKSUMTYPE),
                compress: h.u8(off::OBJECT_COMPRESS),
                dn_slots: h.u8(off::OBJECT_DN_SLOTS),
                flags: h.u8(off::OBJECT_FLAGS),
                raw_bonuslen: h.u32(off::OBJECT_RAW_BONUSLEN),
                indblkshift: h.u8(off::OBJECT_INDBLKSHIFT),
                nlevels: h.u8(off::OBJECT_NLEVELS),
                nblkptr: h.u8(off::OBJECT_NBLKPTR),
                maxblkid: h.u64(off::OBJECT_MAXBLKID),
                bonus: payload,
            }),
            RecordType::FreeObjects => self.sink.on_freeobjects(&FreeObjects {
                firstobj: h.u64(off::FREEOBJECTS_FIRSTOBJ),
                numobjs: h.u64(off::FREEOBJECTS_NUMOBJS),
            }),
            RecordType::Write => self.sink.on_write(&Write {
                object: h.u64(off::WRITE_OBJECT),
                object_type: h.u32(off::WRITE_TYPE),
                offset: h.u64(off::WRITE_OFFSET),
                logical_size: h.u64(off::WRITE_LOGICAL_SIZE),
                checksum_type: h.u8(off::WRITE_CHECKSUMTYPE),
                flags: h.u8(off::WRITE_FLAGS),
                compression: h.u8(off::WRITE_COMPRESSIONTYPE),
                compressed_size: h.u64(off::WRITE_COMPRESSED_SIZE),
                payload,
            }),
            RecordType::Free => self.sink.on_free(&Free {
                object: h.u64(off::FREE_OBJECT),
                offset: h.u64(off::FREE_OFFSET),
                length: h.u64(off::FREE_LENGTH),
            }),
            RecordType::Redact => self.sink.on_redact(&Redact {
                object: h.u64(off::FREE_OBJECT),
                offset: h.u64(off::FREE_OFFSET),
                length: h.u64(off::FREE_LENGTH),
            }),
            RecordType::Spill => self.sink.on_spill(&Spill {
                object: h.u64(off::SPILL_OBJECT),
                length: h.u64(off::SPILL_LENGTH),
                flags: h.u8(off::SPILL_FLAGS),
                compression: h.u8(off::SPILL_COMPRESSIONTYPE),
                compressed_size: h.u64(off::SPILL_COMPRESSED_SIZE),
                object_type: h.u32(off::SPILL_TYPE),
                payload,
            }),
            RecordType::WriteEmbedded => self.sink.on_write_embedded(&WriteEmbedded {
                object: h.u64(off::WE_OBJECT),
                offset: h.u64(off::WE_OFFSET),
                length: h.u64(off::WE_LENGTH),
                compression: h.u8(off::WE_COMPRESSION),
                etype: h.u8(off::WE_ETYPE),
                lsize: h.u32(off::WE_LSIZE),
                psize: h.u32(off::WE_PSIZE),
                payload,
            }),
            RecordType::ObjectRange => self.sink.on_object_range(&ObjectRange {
                firstobj: h.u64(off::OR_FIRSTOBJ),
                numslots: h.u64(off::OR_NUMSLOTS),
                flags: h.u8(off::OR_FLAGS),
            }),
            RecordType::WriteByRef => {
                return Err(self.error(ErrorKind::UnsupportedRecordType(rtype)));
            }
        }
        self.records += 1;
        Ok(())
    }
}

fn round8(n: u64) -> u64 {
    // n < 2^33 for every caller (a u32 field), so this cannot overflow.
    n.div_ceil(8) * 8
}
