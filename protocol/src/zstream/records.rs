//! The send-stream record layout (`dmu_replay_record_t` in OpenZFS `include/sys/zfs_ioctl.h`),
//! decoded from the fixed 312-byte header. Offsets are from the start of the record; every
//! integer is little-endian (the native order of the x86 dom0 that writes the stream).

/// Size of every record header (`sizeof (dmu_replay_record_t)`).
pub const RECORD_HEADER_LEN: usize = 312;
/// Offset of the trailing `zio_cksum_t` (`drr_u.drr_checksum.drr_checksum`).
pub const CHECKSUM_OFFSET: usize = 280;
/// `DMU_BACKUP_MAGIC`, in `drr_begin.drr_magic`.
pub const BACKUP_MAGIC: u64 = 0x0002_F5BA_CBAC;
/// Length of `drr_begin.drr_toname` (`MAXNAMELEN`).
pub const TONAME_LEN: usize = 256;

/// `SPA_MINBLOCKSIZE`: smallest logical size of a WRITE.
pub const MIN_BLOCK_SIZE: u64 = 512;
/// `SPA_MAXBLOCKSIZE` (16 MiB): largest logical or on-wire size of a WRITE or SPILL.
pub const MAX_BLOCK_SIZE: u64 = 16 << 20;
/// `BPE_PAYLOAD_SIZE`: largest `drr_psize` of a WRITE_EMBEDDED.
pub const MAX_EMBEDDED_PAYLOAD: u64 = 112;

/// The low two bits of `drr_versioninfo` (`DMU_GET_STREAM_HDRTYPE`).
pub const HDRTYPE_SUBSTREAM: u64 = 1;
/// See [`HDRTYPE_SUBSTREAM`].
pub const HDRTYPE_COMPOUNDSTREAM: u64 = 2;

/// `DMU_BACKUP_FEATURE_*` bits, as returned by [`Begin::featureflags`].
pub mod feature {
    pub const DEDUP: u64 = 1 << 0;
    pub const DEDUPPROPS: u64 = 1 << 1;
    pub const SA_SPILL: u64 = 1 << 2;
    pub const EMBED_DATA: u64 = 1 << 16;
    pub const LZ4: u64 = 1 << 17;
    pub const LARGE_BLOCKS: u64 = 1 << 19;
    pub const RESUMING: u64 = 1 << 20;
    pub const REDACTED: u64 = 1 << 21;
    pub const COMPRESSED: u64 = 1 << 22;
    pub const LARGE_DNODE: u64 = 1 << 23;
    pub const RAW: u64 = 1 << 24;
    pub const ZSTD: u64 = 1 << 25;
    pub const HOLDS: u64 = 1 << 26;
    pub const SWITCH_TO_LARGE_BLOCKS: u64 = 1 << 27;
    pub const LONGNAME: u64 = 1 << 28;
    pub const LARGE_MICROZAP: u64 = 1 << 29;
    /// `DMU_BACKUP_FEATURE_MASK` of OpenZFS 2.3+: everything it can receive. `DEDUP` is not
    /// in it (dedup streams were removed in 2.2); the tap refuses any other bit.
    pub const KNOWN: u64 = SA_SPILL
        | EMBED_DATA
        | LZ4
        | RESUMING
        | LARGE_BLOCKS
        | COMPRESSED
        | LARGE_DNODE
        | RAW
        | HOLDS
        | REDACTED
        | SWITCH_TO_LARGE_BLOCKS
        | ZSTD
        | LONGNAME
        | LARGE_MICROZAP;
}

/// `drr_type`: the record types, in the order of the C enum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordType {
    Begin = 0,
    Object = 1,
    FreeObjects = 2,
    Write = 3,
    Free = 4,
    End = 5,
    WriteByRef = 6,
    Spill = 7,
    WriteEmbedded = 8,
    ObjectRange = 9,
    Redact = 10,
}

impl RecordType {
    /// The type for a `drr_type` value, `None` for anything past `DRR_REDACT`.
    pub fn from_u32(value: u32) -> Option<Self> {
        Some(match value {
            0 => Self::Begin,
            1 => Self::Object,
            2 => Self::FreeObjects,
            3 => Self::Write,
            4 => Self::Free,
            5 => Self::End,
            6 => Self::WriteByRef,
            7 => Self::Spill,
            8 => Self::WriteEmbedded,
            9 => Self::ObjectRange,
            10 => Self::Redact,
            _ => return None,
        })
    }

    /// OpenZFS' name for the type.
    pub fn name(self) -> &'static str {
        match self {
            Self::Begin => "DRR_BEGIN",
            Self::Object => "DRR_OBJECT",
            Self::FreeObjects => "DRR_FREEOBJECTS",
            Self::Write => "DRR_WRITE",
            Self::Free => "DRR_FREE",
            Self::End => "DRR_END",
            Self::WriteByRef => "DRR_WRITE_BYREF",
            Self::Spill => "DRR_SPILL",
            Self::WriteEmbedded => "DRR_WRITE_EMBEDDED",
            Self::ObjectRange => "DRR_OBJECT_RANGE",
            Self::Redact => "DRR_REDACT",
        }
    }
}

/// Whether a BEGIN opens a compound stream (`-R`, `-p`, `-I`, ...) or one sub-stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HeaderType {
    /// `DMU_SUBSTREAM`: one snapshot's records (from the kernel).
    Substream,
    /// `DMU_COMPOUNDSTREAM`: libzfs' wrapper, whose payload is an XDR nvlist.
    Compound,
}

/// `drr_begin`, plus the stream's BEGIN payload (a packed nvlist or nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Begin<'a> {
    pub header_type: HeaderType,
    /// `DMU_GET_FEATUREFLAGS(drr_versioninfo)`: the `feature::*` bits.
    pub featureflags: u64,
    pub creation_time: u64,
    /// `dmu_objset_type_t` (2 = ZFS, 3 = ZVOL).
    pub objset_type: u32,
    /// `DRR_FLAG_*` (`CLONE`, `CI_DATA`, `FREERECORDS`, `SPILL_BLOCK`).
    pub flags: u32,
    pub toguid: u64,
    /// 0 for a full stream.
    pub fromguid: u64,
    /// `drr_toname` up to its first NUL (the whole 256 bytes if there is none).
    pub toname: &'a [u8],
    /// The packed nvlist after the header (compound: stream properties; sub-stream: the
    /// resume or redaction nvlist, crypt keys), padded to 8 bytes; empty when there is none.
    pub payload: &'a [u8],
}

/// Which END a record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndKind {
    /// Closes a sub-stream; its checksum was verified against the stream before it.
    Substream,
    /// Closes the compound BEGIN and its nvlist (written right after them by libzfs).
    CompoundHeader,
    /// The final ("double") END of a compound package, written zeroed by libzfs.
    Package,
}

/// `drr_end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct End {
    pub kind: EndKind,
    /// `drr_checksum`: fletcher-4 of the (sub-)stream before this record's header.
    pub checksum: [u64; 4],
    pub toguid: u64,
}

/// `drr_object`, with its bonus payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Object<'a> {
    pub object: u64,
    /// `dmu_object_type_t` of the object (23 = `DMU_OT_ZVOL` for a zvol's data object 1).
    pub object_type: u32,
    pub bonus_type: u32,
    pub blksz: u32,
    pub bonuslen: u32,
    pub checksum_type: u8,
    pub compress: u8,
    pub dn_slots: u8,
    pub flags: u8,
    pub raw_bonuslen: u32,
    pub indblkshift: u8,
    pub nlevels: u8,
    pub nblkptr: u8,
    pub maxblkid: u64,
    /// `DRR_OBJECT_PAYLOAD_SIZE` bytes: the bonus buffer padded to 8 (raw: as encrypted).
    pub bonus: &'a [u8],
}

/// `drr_freeobjects`: objects `firstobj .. firstobj + numobjs` are free.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FreeObjects {
    pub firstobj: u64,
    pub numobjs: u64,
}

/// `drr_write`, with its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Write<'a> {
    pub object: u64,
    pub object_type: u32,
    pub offset: u64,
    pub logical_size: u64,
    pub checksum_type: u8,
    pub flags: u8,
    /// 0 = the payload is the plain logical block (`zfs send` without `-c`/`-w`).
    pub compression: u8,
    pub compressed_size: u64,
    /// `DRR_WRITE_PAYLOAD_SIZE` bytes: the block, compressed if `compression != 0`.
    pub payload: &'a [u8],
}

impl Write<'_> {
    /// Whether the payload is the logical block itself (what a zvol tap wants).
    pub fn is_plain(&self) -> bool {
        self.compression == 0
    }
}

/// `drr_free`: `length` bytes from `offset` of `object` are holes; `u64::MAX` = to the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Free {
    pub object: u64,
    pub offset: u64,
    pub length: u64,
}

/// `drr_spill`, with its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Spill<'a> {
    pub object: u64,
    pub length: u64,
    pub flags: u8,
    pub compression: u8,
    pub compressed_size: u64,
    pub object_type: u32,
    /// `DRR_SPILL_PAYLOAD_SIZE` bytes.
    pub payload: &'a [u8],
}

/// `drr_write_embedded`: a block small enough to live in its block pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WriteEmbedded<'a> {
    pub object: u64,
    pub offset: u64,
    pub length: u64,
    pub compression: u8,
    pub etype: u8,
    pub lsize: u32,
    pub psize: u32,
    /// `psize` rounded up to 8 bytes (the bytes past `psize` are padding).
    pub payload: &'a [u8],
}

/// `drr_object_range` (raw streams).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ObjectRange {
    pub firstobj: u64,
    pub numslots: u64,
    pub flags: u8,
}

/// `drr_redact`: `length` bytes from `offset` of `object` are redacted (not sent).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Redact {
    pub object: u64,
    pub offset: u64,
    pub length: u64,
}

/// A record header, read only through bounds-free accessors (the slice is always 312 bytes).
pub(crate) struct Header<'a>(pub(crate) &'a [u8; RECORD_HEADER_LEN]);

impl Header<'_> {
    pub(crate) fn u8(&self, at: usize) -> u8 {
        self.0[at]
    }
    pub(crate) fn u32(&self, at: usize) -> u32 {
        let b = &self.0[at..at + 4];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
    pub(crate) fn u64(&self, at: usize) -> u64 {
        let b = &self.0[at..at + 8];
        u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    }
    pub(crate) fn cksum(&self, at: usize) -> [u64; 4] {
        [
            self.u64(at),
            self.u64(at + 8),
            self.u64(at + 16),
            self.u64(at + 24),
        ]
    }
    pub(crate) fn record_type(&self) -> u32 {
        self.u32(0)
    }
    pub(crate) fn payloadlen(&self) -> u32 {
        self.u32(4)
    }
    /// The trailing `zio_cksum_t` of a non-BEGIN record.
    pub(crate) fn trailer(&self) -> [u64; 4] {
        self.cksum(CHECKSUM_OFFSET)
    }
}

// Field offsets (from the start of the record; the union starts at 8).
pub(crate) mod off {
    // drr_begin
    pub const BEGIN_MAGIC: usize = 8;
    pub const BEGIN_VERSIONINFO: usize = 16;
    pub const BEGIN_CREATION_TIME: usize = 24;
    pub const BEGIN_TYPE: usize = 32;
    pub const BEGIN_FLAGS: usize = 36;
    pub const BEGIN_TOGUID: usize = 40;
    pub const BEGIN_FROMGUID: usize = 48;
    pub const BEGIN_TONAME: usize = 56;
    // drr_end
    pub const END_CHECKSUM: usize = 8;
    pub const END_TOGUID: usize = 40;
    // drr_object
    pub const OBJECT_OBJECT: usize = 8;
    pub const OBJECT_TYPE: usize = 16;
    pub const OBJECT_BONUSTYPE: usize = 20;
    pub const OBJECT_BLKSZ: usize = 24;
    pub const OBJECT_BONUSLEN: usize = 28;
    pub const OBJECT_CHECKSUMTYPE: usize = 32;
    pub const OBJECT_COMPRESS: usize = 33;
    pub const OBJECT_DN_SLOTS: usize = 34;
    pub const OBJECT_FLAGS: usize = 35;
    pub const OBJECT_RAW_BONUSLEN: usize = 36;
    pub const OBJECT_INDBLKSHIFT: usize = 48;
    pub const OBJECT_NLEVELS: usize = 49;
    pub const OBJECT_NBLKPTR: usize = 50;
    pub const OBJECT_MAXBLKID: usize = 56;
    // drr_freeobjects
    pub const FREEOBJECTS_FIRSTOBJ: usize = 8;
    pub const FREEOBJECTS_NUMOBJS: usize = 16;
    // drr_write
    pub const WRITE_OBJECT: usize = 8;
    pub const WRITE_TYPE: usize = 16;
    pub const WRITE_OFFSET: usize = 24;
    pub const WRITE_LOGICAL_SIZE: usize = 32;
    pub const WRITE_CHECKSUMTYPE: usize = 48;
    pub const WRITE_FLAGS: usize = 49;
    pub const WRITE_COMPRESSIONTYPE: usize = 50;
    pub const WRITE_COMPRESSED_SIZE: usize = 96;
    // drr_free and drr_redact (same layout)
    pub const FREE_OBJECT: usize = 8;
    pub const FREE_OFFSET: usize = 16;
    pub const FREE_LENGTH: usize = 24;
    // drr_spill
    pub const SPILL_OBJECT: usize = 8;
    pub const SPILL_LENGTH: usize = 16;
    pub const SPILL_FLAGS: usize = 32;
    pub const SPILL_COMPRESSIONTYPE: usize = 33;
    pub const SPILL_COMPRESSED_SIZE: usize = 40;
    pub const SPILL_TYPE: usize = 84;
    // drr_write_embedded
    pub const WE_OBJECT: usize = 8;
    pub const WE_OFFSET: usize = 16;
    pub const WE_LENGTH: usize = 24;
    pub const WE_COMPRESSION: usize = 40;
    pub const WE_ETYPE: usize = 41;
    pub const WE_LSIZE: usize = 48;
    pub const WE_PSIZE: usize = 52;
    // drr_object_range
    pub const OR_FIRSTOBJ: usize = 8;
    pub const OR_NUMSLOTS: usize = 16;
    pub const OR_FLAGS: usize = 68;
}
