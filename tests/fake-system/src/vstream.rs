//! Real OpenZFS send streams of fake volumes (records as `include/sys/zfs_ioctl.h` and
//! `module/zfs/dmu_send.c` lay them out), written with `qzb_protocol::zstream::writer` and
//! read back with the stream tap. The blocks are those of the content model (`crate::vol`).
//!
//! A volume sub-stream, as `dmu_send` writes one for a zvol:
//! ```text
//! BEGIN     objset type 3, features (below), flags FREERECORDS|SPILL_BLOCK (+CLONE), toguid,
//!           fromguid (0: full), toname, creation time; payload: XDR nvlist {resume_object,
//!           resume_offset} when resuming (-t)
//! OBJECT 1  DMU_OT_ZVOL (23), blksz = volblocksize        } not in an incremental that
//! FREE   1  tail .. u64::MAX (tail = end of highest block) } changes nothing
//! WRITE  1 / FREE 1  in offset order: data blocks, and aggregated runs of holes
//! OBJECT 2  DMU_OT_ZVOL_PROP (24), blksz 512; FREE 2 512 .. u64::MAX
//! WRITE  2  the micro-ZAP with `size` = volsize (full streams only)
//! FREEOBJECTS 3 .. 32
//! END       stream checksum, toguid
//! ```
//! Features: COMPRESSED for -c (or -w), EMBED_DATA for -e, LZ4 with either (the pool has lz4
//! active), LARGE_BLOCKS for -L only when volblocksize > 128 KiB (the dataset's large_blocks
//! feature is active only then), RESUMING for -t. Every WRITE is the plain block even with -c:
//! the model's data is incompressible, so zfs stores (and `send -c` sends) it uncompressed;
//! all-zero blocks are holes, sent as FREE. With -p or -I, the sub-streams are wrapped in a
//! compound package like libzfs': BEGIN(compound; -p: XDR nvlist {fromsnap, tosnap,
//! not_recursive}, the `fss` properties are left out), END, the sub-streams, a final END.

use crate::state::Zfs;
use crate::stream::Header;
use crate::vol::{self, VolDelta};
use qzb_protocol::zstream::writer::StreamWriter;
use qzb_protocol::zstream::{
    feature, Begin, End, EndKind, Free, FreeObjects, HeaderType, Object, Sink, Write,
    RECORD_HEADER_LEN,
};

const HDR: u64 = RECORD_HEADER_LEN as u64;
const DMU_OST_ZVOL: u32 = 3;
const DMU_OT_ZVOL: u32 = 23;
const DMU_OT_ZVOL_PROP: u32 = 24;
const ZAP_BLOCK: u64 = 512;
const ZIO_CHECKSUM_FLETCHER_4: u8 = 7;
const DRR_FLAG_CLONE: u32 = 1 << 0;
const DRR_FLAG_FREERECORDS: u32 = 1 << 2;
const DRR_FLAG_SPILL_BLOCK: u32 = 1 << 3;
/// Free dnode slots of the one dnode block after objects 1 and 2 (32 dnodes per 16 KiB).
const FREEOBJECTS: (u64, u64) = (3, 29);
/// `SPA_OLD_MAXBLOCKSIZE`: larger blocks need `-L`.
pub const OLD_MAX_BLOCK: u64 = 128 << 10;

// ---------------------------------------------------------------- XDR nvlists

/// A value of a (flat) nvlist.
#[derive(Clone, Debug, PartialEq)]
pub enum XVal {
    U64(u64),
    Str(String),
    Bool,
}

fn xdr_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    out.resize(out.len().div_ceil(4) * 4, 0);
}

/// `nvlist_pack(NV_ENCODE_XDR)` of a flat nvlist, padded to 8 bytes as `dmu_send` and
/// libzfs pad it. Each pair: encoded size, decoded (native) size, name, type, count, value;
/// two zero words end the list.
pub fn xdr_pack(pairs: &[(&str, XVal)]) -> Vec<u8> {
    let mut out = vec![1u8, 1, 0, 0]; // NV_ENCODE_XDR, little-endian host
    out.extend_from_slice(&0i32.to_be_bytes()); // nvl_version
    out.extend_from_slice(&1u32.to_be_bytes()); // NV_UNIQUE_NAME
    for (name, v) in pairs {
        let (ty, nelem, native): (i32, i32, usize) = match v {
            XVal::U64(_) => (8, 1, 8),
            XVal::Str(s) => (9, 1, s.len() + 1),
            XVal::Bool => (1, 0, 0),
        };
        let mut body = Vec::new();
        xdr_string(&mut body, name);
        body.extend_from_slice(&ty.to_be_bytes());
        body.extend_from_slice(&nelem.to_be_bytes());
        match v {
            XVal::U64(x) => body.extend_from_slice(&x.to_be_bytes()),
            XVal::Str(s) => xdr_string(&mut body, s),
            XVal::Bool => {}
        }
        let decoded = (16 + name.len() + 1).div_ceil(8) * 8 + native.div_ceil(8) * 8;
        out.extend_from_slice(&((body.len() + 8) as i32).to_be_bytes());
        out.extend_from_slice(&(decoded as i32).to_be_bytes());
        out.extend_from_slice(&body);
    }
    out.extend_from_slice(&[0; 8]);
    out.resize(out.len().div_ceil(8) * 8, 0);
    out
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn xdr_str(b: &[u8], at: &mut usize) -> Option<String> {
    let n = be_u32(b, *at)? as usize;
    let start = at.checked_add(4)?;
    let s = b.get(start..start.checked_add(n)?)?;
    *at = start + n.div_ceil(4) * 4;
    Some(String::from_utf8_lossy(s).into_owned())
}

/// Reads a flat XDR nvlist as [`xdr_pack`] writes it (pairs of other types are skipped by
/// their encoded size). None if it is not one.
pub fn xdr_unpack(b: &[u8]) -> Option<Vec<(String, XVal)>> {
    if b.len() < 12 || b[0] != 1 {
        return None;
    }
    let mut at = 12usize;
    let mut out = Vec::new();
    loop {
        let size = be_u32(b, at)? as usize;
        if size == 0 {
            return Some(out);
        }
        let end = at.checked_add(size)?;
        if size < 8 || end > b.len() {
            return None;
        }
        let mut p = at + 8;
        let name = xdr_str(b, &mut p)?;
        let ty = be_u32(b, p)?;
        p += 8;
        let v = match ty {
            8 => {
                let s = b.get(p..p + 8)?;
                Some(XVal::U64(u64::from_be_bytes(s.try_into().ok()?)))
            }
            9 => Some(XVal::Str(xdr_str(b, &mut p)?)),
            1 => Some(XVal::Bool),
            _ => None,
        };
        if let Some(v) = v {
            out.push((name, v));
        }
        at = end;
    }
}

fn xget(nvl: &[(String, XVal)], key: &str) -> Option<u64> {
    nvl.iter().find_map(|(k, v)| match v {
        XVal::U64(x) if k == key => Some(*x),
        _ => None,
    })
}

/// The volume's micro-ZAP (object 2): `mzap_phys_t` (block type `ZBT_MICRO`, a fixed salt: a
/// receiver stores the block as sent) and one entry `size` = volsize, little-endian as an x86
/// host stores it.
fn zap_block(volsize: u64) -> Vec<u8> {
    let salt = 0x5a17_5a17_5a17_5a17u64;
    let mut b = vec![0u8; ZAP_BLOCK as usize];
    b[0..8].copy_from_slice(&((1u64 << 63) + 3).to_le_bytes());
    b[8..16].copy_from_slice(&salt.to_le_bytes());
    b[64..72].copy_from_slice(&volsize.to_le_bytes());
    b[78..82].copy_from_slice(b"size");
    b
}

fn zap_size(b: &[u8]) -> Option<u64> {
    if b.len() < 128 || b[0..8] != ((1u64 << 63) + 3).to_le_bytes() || &b[78..83] != b"size\0" {
        return None;
    }
    Some(u64::from_le_bytes(b[64..72].try_into().ok()?))
}

// ---------------------------------------------------------------- send

/// One record of a volume sub-stream (BEGIN and END are implicit).
#[derive(Clone, Debug, PartialEq)]
enum Rec {
    Object {
        object: u64,
        otype: u32,
        blksz: u64,
    },
    Free {
        object: u64,
        offset: u64,
        length: u64,
    },
    /// A data block of object 1 (generator `g`).
    Write {
        offset: u64,
        g: u64,
    },
    Zap,
    FreeObjects,
}

/// A planned volume sub-stream.
pub struct Sub {
    toname: String,
    toguid: u64,
    fromguid: u64,
    features: u64,
    flags: u32,
    creation: u64,
    begin_payload: Vec<u8>,
    vbs: u64,
    volsize: u64,
    recs: Vec<Rec>,
}

impl Sub {
    /// Exact bytes of this sub-stream.
    pub fn size(&self) -> u64 {
        let recs: u64 = self
            .recs
            .iter()
            .map(|r| {
                HDR + match r {
                    Rec::Write { .. } => self.vbs,
                    Rec::Zap => ZAP_BLOCK,
                    _ => 0,
                }
            })
            .sum();
        HDR + self.begin_payload.len() as u64 + recs + HDR
    }
}

fn free_rec(recs: &mut Vec<Rec>, object: u64, offset: u64, length: u64) {
    if length == 0 {
        return;
    }
    if let Some(Rec::Free {
        object: o,
        offset: s,
        length: l,
    }) = recs.last_mut()
    {
        if *o == object && *l != u64::MAX && *s + *l == offset {
            *l += length;
            return;
        }
    }
    recs.push(Rec::Free {
        object,
        offset,
        length,
    });
}

/// Plans the sub-stream `h` (a volume's snapshot; `h.offset` is the resume offset in bytes).
pub fn plan(z: &Zfs, host: &str, h: &Header) -> Result<Sub, String> {
    let (dn, _) = h
        .toname
        .split_once('@')
        .ok_or_else(|| format!("cannot open '{}'", h.toname))?;
    let d = z
        .datasets
        .get(dn)
        .ok_or_else(|| format!("cannot open '{dn}': dataset does not exist"))?;
    let snap = d
        .snapshots
        .iter()
        .find(|s| vol::guid_of(s, dn, host) == h.toguid)
        .ok_or_else(|| format!("cannot open '{}': dataset does not exist", h.toname))?;
    let steps = vol::chain(z, host, &format!("{dn}@{}", snap.name))
        .ok_or_else(|| format!("cannot open '{}'", h.toname))?;
    let content = vol::content(&steps);
    let vbs = vol::volblocksize(d);
    let tail = content.tail.max(1);
    let full = h.fromguid == 0;
    let touched = if full {
        vec![[0, tail]]
    } else {
        vol::touched_after(&steps, h.fromguid).ok_or_else(|| {
            format!(
                "warning: cannot send '{}': not an earlier snapshot from the same fs",
                h.toname
            )
        })?
    };
    let resume_blk = h.offset / vbs;
    let mut recs = Vec::new();
    if full || !touched.is_empty() {
        recs.push(Rec::Object {
            object: 1,
            otype: DMU_OT_ZVOL,
            blksz: vbs,
        });
        recs.push(Rec::Free {
            object: 1,
            offset: tail * vbs,
            length: u64::MAX,
        });
        for &[a, b] in &touched {
            let (a, b) = (a.max(resume_blk), b.min(tail));
            let mut blk = a;
            while blk < b {
                let i = content.ext.partition_point(|x| x[1] <= blk);
                let (g, ext_end) = match content.ext.get(i) {
                    Some(&[s, e, g]) if s <= blk => (g, e.min(b)),
                    Some(&[s, _, _]) => (0, s.min(b)),
                    None => (0, b),
                };
                if g == 0 {
                    free_rec(&mut recs, 1, blk * vbs, (ext_end - blk) * vbs);
                } else {
                    for x in blk..ext_end {
                        if vol::is_zero(g, x * vbs) {
                            free_rec(&mut recs, 1, x * vbs, vbs);
                        } else {
                            recs.push(Rec::Write { offset: x * vbs, g });
                        }
                    }
                }
                blk = ext_end;
            }
        }
        recs.push(Rec::Object {
            object: 2,
            otype: DMU_OT_ZVOL_PROP,
            blksz: ZAP_BLOCK,
        });
        recs.push(Rec::Free {
            object: 2,
            offset: ZAP_BLOCK,
            length: u64::MAX,
        });
        if full {
            recs.push(Rec::Zap);
        }
        recs.push(Rec::FreeObjects);
    }
    let mut features = 0;
    if h.flags.contains('L') && vbs > OLD_MAX_BLOCK {
        features |= feature::LARGE_BLOCKS;
    }
    if h.flags.contains('e') {
        features |= feature::EMBED_DATA;
    }
    if h.flags.contains('c') || h.flags.contains('w') {
        features |= feature::COMPRESSED;
    }
    if features & (feature::EMBED_DATA | feature::COMPRESSED) != 0 {
        features |= feature::LZ4;
    }
    let mut begin_payload = Vec::new();
    if h.resume {
        features |= feature::RESUMING;
        begin_payload = xdr_pack(&[
            ("resume_object", XVal::U64(1)),
            ("resume_offset", XVal::U64(h.offset)),
        ]);
    }
    let mut flags = DRR_FLAG_FREERECORDS | DRR_FLAG_SPILL_BLOCK;
    if h.clone {
        flags |= DRR_FLAG_CLONE;
    }
    Ok(Sub {
        toname: h.toname.clone(),
        toguid: h.toguid,
        fromguid: h.fromguid,
        features,
        flags,
        creation: snap.creation.unwrap_or(1_700_000_000 + 60 * snap.createtxg),
        begin_payload,
        vbs,
        volsize: vol::volsize(d),
        recs,
    })
}

/// The compound wrapper of a package: (toname, BEGIN payload).
pub struct Compound {
    pub toname: String,
    pub payload: Vec<u8>,
}

impl Compound {
    /// libzfs' header for `-p` (with the nvlist) or `-I` alone (empty).
    pub fn new(toname: &str, fromsnap: Option<&str>, props: bool) -> Compound {
        let payload = if props {
            let tosnap = toname.split_once('@').map_or("", |x| x.1);
            let mut pairs = Vec::new();
            if let Some(f) = fromsnap {
                pairs.push(("fromsnap", XVal::Str(f.to_string())));
            }
            pairs.push(("tosnap", XVal::Str(tosnap.to_string())));
            pairs.push(("not_recursive", XVal::Bool));
            xdr_pack(&pairs)
        } else {
            Vec::new()
        };
        Compound {
            toname: toname.to_string(),
            payload,
        }
    }

    /// Bytes of the wrapper: BEGIN, its payload, END, and the final END.
    pub fn size(&self) -> u64 {
        3 * HDR + self.payload.len() as u64
    }
}

/// Fault injection and pacing of one `zfs send`.
pub struct Faults {
    /// Bytes that may still be written (`QZB_FAKE_SEND_DIE_AFTER`).
    pub budget: Option<u64>,
    pub delay: Option<std::time::Duration>,
    /// Index (from 0) of the object-1 WRITE to alter / to leave out.
    pub flip: Option<u64>,
    pub drop: Option<u64>,
}

struct Out<'a, W: std::io::Write> {
    out: &'a mut W,
    f: &'a mut Faults,
    written: u64,
    progress: Option<std::ffi::OsString>,
    writes: u64,
}

impl<W: std::io::Write> Out<'_, W> {
    /// Writes `data` within the budget; false if the budget ran out.
    fn emit(&mut self, data: &[u8]) -> std::io::Result<bool> {
        let mut data = data;
        while !data.is_empty() {
            let mut n = data.len().min(65536 - (self.written % 65536) as usize);
            if let Some(b) = self.f.budget {
                if b == 0 {
                    return Ok(false);
                }
                n = n.min(b as usize);
                self.f.budget = Some(b - n as u64);
            }
            self.out.write_all(&data[..n])?;
            self.written += n as u64;
            data = &data[n..];
            if self.written.is_multiple_of(65536) {
                if let Some(d) = self.f.delay {
                    self.out.flush()?;
                    if let Some(p) = &self.progress {
                        let _ = std::fs::write(p, self.written.to_string());
                    }
                    std::thread::sleep(d);
                }
            }
        }
        Ok(true)
    }

    fn drain(&mut self, w: &mut StreamWriter) -> std::io::Result<bool> {
        let bytes = w.take_bytes();
        self.emit(&bytes)
    }
}

/// Writes the sub-streams (wrapped in `compound` if given). Ok(false): cut by the budget.
pub fn write(
    out: &mut impl std::io::Write,
    compound: Option<&Compound>,
    subs: &[Sub],
    faults: &mut Faults,
) -> std::io::Result<bool> {
    let mut o = Out {
        out,
        f: faults,
        written: 0,
        progress: std::env::var_os("QZB_FAKE_SEND_PROGRESS").filter(|p| !p.is_empty()),
        writes: 0,
    };
    let mut w = StreamWriter::new();
    if let Some(c) = compound {
        w.begin(&Begin {
            header_type: HeaderType::Compound,
            featureflags: 0,
            creation_time: 0,
            objset_type: 0,
            flags: 0,
            toguid: 0,
            fromguid: 0,
            toname: c.toname.as_bytes(),
            payload: &c.payload,
        });
        w.compound_end();
        if !o.drain(&mut w)? {
            return Ok(false);
        }
    }
    for s in subs {
        if !write_sub(&mut o, &mut w, s)? {
            return Ok(false);
        }
    }
    if compound.is_some() {
        w.package_end();
        if !o.drain(&mut w)? {
            return Ok(false);
        }
    }
    o.out.flush()?;
    Ok(true)
}

fn write_sub<W: std::io::Write>(
    o: &mut Out<'_, W>,
    w: &mut StreamWriter,
    s: &Sub,
) -> std::io::Result<bool> {
    w.begin(&Begin {
        header_type: HeaderType::Substream,
        featureflags: s.features,
        creation_time: s.creation,
        objset_type: DMU_OST_ZVOL,
        flags: s.flags,
        toguid: s.toguid,
        fromguid: s.fromguid,
        toname: s.toname.as_bytes(),
        payload: &s.begin_payload,
    });
    let mut buf = vec![0u8; s.vbs as usize];
    for r in &s.recs {
        match *r {
            Rec::Object {
                object,
                otype,
                blksz,
            } => w.object(&Object {
                object,
                object_type: otype,
                bonus_type: 0,
                blksz: blksz as u32,
                bonuslen: 0,
                checksum_type: 0,
                compress: 0,
                dn_slots: 1,
                flags: 0,
                raw_bonuslen: 0,
                indblkshift: 0,
                nlevels: 0,
                nblkptr: 0,
                maxblkid: 0,
                bonus: &[],
            }),
            Rec::Free {
                object,
                offset,
                length,
            } => w.free(&Free {
                object,
                offset,
                length,
            }),
            Rec::Write { offset, g } => {
                let n = o.writes;
                o.writes += 1;
                if o.f.drop == Some(n) {
                    continue;
                }
                vol::block(g, offset, &mut buf);
                if o.f.flip == Some(n) {
                    let at = buf.len() / 2;
                    buf[at] ^= 0x01;
                }
                w.write(&Write {
                    object: 1,
                    object_type: DMU_OT_ZVOL,
                    offset,
                    logical_size: s.vbs,
                    checksum_type: ZIO_CHECKSUM_FLETCHER_4,
                    flags: 0,
                    compression: 0,
                    compressed_size: 0,
                    payload: &buf,
                });
            }
            Rec::Zap => w.write(&Write {
                object: 2,
                object_type: DMU_OT_ZVOL_PROP,
                offset: 0,
                logical_size: ZAP_BLOCK,
                checksum_type: ZIO_CHECKSUM_FLETCHER_4,
                flags: 0,
                compression: 0,
                compressed_size: 0,
                payload: &zap_block(s.volsize),
            }),
            Rec::FreeObjects => w.freeobjects(&FreeObjects {
                firstobj: FREEOBJECTS.0,
                numobjs: FREEOBJECTS.1,
            }),
        }
        if !o.drain(w)? {
            return Ok(false);
        }
    }
    w.end(s.toguid);
    o.drain(w)
}

// ---------------------------------------------------------------- receive

/// What the receiver learns from one record (payloads are checked in the sink, not kept).
#[derive(Clone, Debug, PartialEq)]
pub enum Ev {
    Begin {
        compound: bool,
        features: u64,
        objset: u32,
        flags: u32,
        toguid: u64,
        fromguid: u64,
        toname: String,
        resume_offset: Option<u64>,
    },
    Object {
        object: u64,
        blksz: u64,
    },
    /// A WRITE of object 1: per block, its generator if it is the model's block there.
    Write {
        offset: u64,
        blocks: Vec<Option<u64>>,
    },
    /// The ZAP's `size`.
    Volsize(u64),
    Free {
        object: u64,
        offset: u64,
        length: u64,
    },
    End(EndKind),
    Other,
}

/// Collects the tap's records as [`Ev`]s with the stream offset where each record ends.
#[derive(Default)]
pub struct RxSink {
    /// Each record with the stream offsets where it starts and ends.
    pub events: std::collections::VecDeque<(Ev, u64, u64)>,
    bytes: u64,
    vbs: u64,
}

impl RxSink {
    fn push(&mut self, ev: Ev, payload: usize) {
        let start = self.bytes;
        self.bytes += HDR + payload as u64;
        self.events.push_back((ev, start, self.bytes));
    }
}

impl Sink for RxSink {
    fn on_begin(&mut self, b: &Begin<'_>) {
        let resume_offset = xdr_unpack(b.payload).and_then(|n| xget(&n, "resume_offset"));
        self.push(
            Ev::Begin {
                compound: b.header_type == HeaderType::Compound,
                features: b.featureflags,
                objset: b.objset_type,
                flags: b.flags,
                toguid: b.toguid,
                fromguid: b.fromguid,
                toname: String::from_utf8_lossy(b.toname).into_owned(),
                resume_offset,
            },
            b.payload.len(),
        );
    }
    fn on_object(&mut self, o: &Object<'_>) {
        if o.object == 1 {
            self.vbs = u64::from(o.blksz);
        }
        self.push(
            Ev::Object {
                object: o.object,
                blksz: u64::from(o.blksz),
            },
            o.bonus.len(),
        );
    }
    fn on_write(&mut self, w: &Write<'_>) {
        let ev = match w.object {
            1 => {
                let bs = self.vbs as usize;
                let blocks = if bs == 0
                    || !w.is_plain()
                    || !w.payload.len().is_multiple_of(bs)
                    || !w.offset.is_multiple_of(self.vbs)
                {
                    vec![None]
                } else {
                    w.payload
                        .chunks(bs)
                        .enumerate()
                        .map(|(i, c)| vol::check_block(c, w.offset + (i * bs) as u64))
                        .collect()
                };
                Ev::Write {
                    offset: w.offset,
                    blocks,
                }
            }
            2 => zap_size(w.payload).map_or(Ev::Other, Ev::Volsize),
            _ => Ev::Other,
        };
        self.push(ev, w.payload.len());
    }
    fn on_free(&mut self, f: &Free) {
        self.push(
            Ev::Free {
                object: f.object,
                offset: f.offset,
                length: f.length,
            },
            0,
        );
    }
    fn on_freeobjects(&mut self, _: &FreeObjects) {
        self.push(Ev::Other, 0);
    }
    fn on_spill(&mut self, s: &qzb_protocol::zstream::Spill<'_>) {
        self.push(Ev::Other, s.payload.len());
    }
    fn on_write_embedded(&mut self, w: &qzb_protocol::zstream::WriteEmbedded<'_>) {
        // not the model's: an embedded block of object 1 cannot be checked
        let ev = if w.object == 1 {
            Ev::Write {
                offset: w.offset,
                blocks: vec![None],
            }
        } else {
            Ev::Other
        };
        self.push(ev, w.payload.len());
    }
    fn on_object_range(&mut self, _: &qzb_protocol::zstream::ObjectRange) {
        self.push(Ev::Other, 0);
    }
    fn on_redact(&mut self, _: &qzb_protocol::zstream::Redact) {
        self.push(Ev::Other, 0);
    }
    fn on_end(&mut self, e: &End) {
        self.push(Ev::End(e.kind), 0);
    }
}

/// The state of a volume sub-stream being received.
pub struct Applied {
    pub vbs: u64,
    pub volsize: Option<u64>,
    pub delta: VolDelta,
    /// Volume byte offset of the first block not committed.
    pub next: u64,
}

impl Applied {
    pub fn new(delta: VolDelta, next: u64) -> Applied {
        Applied {
            vbs: 0,
            volsize: None,
            delta,
            next,
        }
    }

    /// Applies one record of the sub-stream; Err if it is not acceptable (corrupt block,
    /// out of order): the stream is then treated as cut there.
    pub fn apply(&mut self, ev: &Ev) -> Result<(), ()> {
        match *ev {
            Ev::Object { object: 1, blksz } => {
                if blksz == 0 || !blksz.is_power_of_two() {
                    return Err(());
                }
                self.vbs = blksz;
            }
            Ev::Free {
                object: 1,
                offset,
                length,
            } => {
                let bs = self.vbs;
                if bs == 0 || offset % bs != 0 {
                    return Err(());
                }
                if length == u64::MAX || offset.checked_add(length).is_none() {
                    self.delta.tail = self.delta.tail.max(offset / bs);
                    return Ok(());
                }
                if length % bs != 0 || offset < self.delta.ext.last().map_or(0, |x| x[1]) * bs {
                    return Err(());
                }
                self.delta.push(offset / bs, (offset + length) / bs, 0);
                self.next = offset + length;
            }
            Ev::Write { offset, ref blocks } => {
                let bs = self.vbs;
                if bs == 0 || offset < self.delta.ext.last().map_or(0, |x| x[1]) * bs {
                    return Err(());
                }
                for (i, b) in blocks.iter().enumerate() {
                    let at = offset / bs + i as u64;
                    let Some(g) = b else {
                        return Err(());
                    };
                    self.delta.push(at, at + 1, *g);
                    self.delta.tail = self.delta.tail.max(at + 1);
                    self.next = (at + 1) * bs;
                }
            }
            Ev::Volsize(v) => self.volsize = Some(v),
            _ => {}
        }
        Ok(())
    }

    /// Bytes of data blocks in the delta (for the snapshot's size).
    pub fn data_bytes(&self) -> u64 {
        self.delta
            .ext
            .iter()
            .filter(|x| x[2] != 0)
            .map(|x| x[1] - x[0])
            .sum::<u64>()
            * self.vbs.max(1)
    }
}

/// Send flags as a token records them (L e c w) from a BEGIN's features.
pub fn token_flags(features: u64) -> String {
    let mut f = String::new();
    for (bit, c) in [
        (feature::LARGE_BLOCKS, 'L'),
        (feature::EMBED_DATA, 'e'),
        (feature::COMPRESSED, 'c'),
        (feature::RAW, 'w'),
    ] {
        if features & bit != 0 {
            f.push(c);
        }
    }
    f
}

pub fn is_clone(flags: u32) -> bool {
    flags & DRR_FLAG_CLONE != 0
}

pub const OBJSET_ZVOL: u32 = DMU_OST_ZVOL;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xdr_nvlist_round_trips_and_is_padded_to_8() {
        let b = xdr_pack(&[
            ("resume_object", XVal::U64(1)),
            ("resume_offset", XVal::U64(0x1234_0000)),
            ("tosnap", XVal::Str("b1".into())),
            ("not_recursive", XVal::Bool),
        ]);
        assert_eq!(b.len() % 8, 0);
        let n = xdr_unpack(&b).unwrap();
        assert_eq!(xget(&n, "resume_offset"), Some(0x1234_0000));
        assert_eq!(n[2], ("tosnap".into(), XVal::Str("b1".into())));
        assert_eq!(n[3], ("not_recursive".into(), XVal::Bool));
        assert!(xdr_unpack(&b[..20]).is_none());
        assert!(xdr_unpack(&[]).is_none());
    }

    #[test]
    fn the_zap_block_carries_the_volsize() {
        assert_eq!(zap_size(&zap_block(2 << 30)), Some(2 << 30));
        assert_eq!(zap_size(&[0u8; 512]), None);
    }
}
