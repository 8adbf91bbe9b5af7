//! Frames: the byte-level envelope of everything on the wire.
//!
//! ```text
//! frame   = kind:u32le  length:u32le  payload[length]
//! hello   = kind 1, payload = magic[8] "QZBACKUP"  version:u32le  role:u8  reserved[3]=0
//! request = kind 2, payload = bincode(Request)
//! reply   = kind 3, payload = bincode(Reply)
//! data    = kind 4, payload = seq:u64le  offset:u64le  blake3(data)[32]  data[1..=1 MiB]
//! end     = kind 5, payload = total_len:u64le  frame_count:u64le  blake3(frame hashes)[32]
//! block   = kind 6, payload = offset:u64le  data[512 ..= 1 MiB]   (read-back, agent → driver)
//! ```
//! The length is checked against the per-kind maximum *before* any buffer is sized, so a
//! hostile peer cannot make us allocate more than [`MAX_REPLY_PAYLOAD`].

use std::fmt;
use std::io::{self, Read, Write};

/// Bytes in a frame header.
pub const FRAME_HEADER_LEN: usize = 8;
/// `QZBACKUP`: first bytes of every hello payload.
pub const MAGIC: [u8; 8] = *b"QZBACKUP";
/// The protocol version this crate speaks. Bump on any incompatible wire change.
pub const PROTOCOL_VERSION: u32 = 3;
/// Hello payload size (fixed layout, so any future version can still read it).
pub const HELLO_PAYLOAD_LEN: usize = 16;
/// Largest chunk of `zfs send` bytes carried by one data frame.
pub const MAX_DATA_CHUNK: usize = 1 << 20;
/// Bytes before the data in a data frame payload (seq, offset, blake3).
pub const DATA_PREFIX_LEN: usize = 8 + 8 + 32;
/// Bytes on the wire before the data of a data frame: frame header and payload prefix.
pub const DATA_FRAME_PREFIX_LEN: usize = FRAME_HEADER_LEN + DATA_PREFIX_LEN;
/// Largest data frame payload.
pub const MAX_DATA_PAYLOAD: usize = DATA_PREFIX_LEN + MAX_DATA_CHUNK;
/// End frame payload size.
pub const END_PAYLOAD_LEN: usize = 8 + 8 + 32;
/// Largest request payload (requests are small: names and a token).
pub const MAX_REQUEST_PAYLOAD: usize = 64 << 10;
/// Largest reply payload (an inventory of many datasets and snapshots).
pub const MAX_REPLY_PAYLOAD: usize = 16 << 20;
/// Bytes before the data in a block frame payload (the volume offset).
pub const BLOCK_PREFIX_LEN: usize = 8;
/// Smallest block in a block frame (the smallest `volblocksize`).
pub const MIN_BLOCK_DATA: usize = 512;
/// Largest block in a block frame (the largest `volblocksize` a read-back accepts).
pub const MAX_BLOCK_DATA: usize = 1 << 20;

/// What a frame carries. Unknown values are an error, never a panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum FrameKind {
    Hello = 1,
    Request = 2,
    Reply = 3,
    Data = 4,
    End = 5,
    /// One volume block of a read-back (added in protocol version 3).
    Block = 6,
}

impl FrameKind {
    /// Its name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            FrameKind::Hello => "hello",
            FrameKind::Request => "request",
            FrameKind::Reply => "reply",
            FrameKind::Data => "data",
            FrameKind::End => "end",
            FrameKind::Block => "block",
        }
    }

    pub fn from_wire(value: u32) -> Option<FrameKind> {
        Some(match value {
            1 => FrameKind::Hello,
            2 => FrameKind::Request,
            3 => FrameKind::Reply,
            4 => FrameKind::Data,
            5 => FrameKind::End,
            6 => FrameKind::Block,
            _ => return None,
        })
    }

    /// (smallest, largest) payload allowed for this kind.
    pub fn payload_bounds(self) -> (usize, usize) {
        match self {
            FrameKind::Hello => (HELLO_PAYLOAD_LEN, HELLO_PAYLOAD_LEN),
            FrameKind::Request => (1, MAX_REQUEST_PAYLOAD),
            FrameKind::Reply => (1, MAX_REPLY_PAYLOAD),
            FrameKind::Data => (DATA_PREFIX_LEN + 1, MAX_DATA_PAYLOAD),
            FrameKind::End => (END_PAYLOAD_LEN, END_PAYLOAD_LEN),
            FrameKind::Block => (
                BLOCK_PREFIX_LEN + MIN_BLOCK_DATA,
                BLOCK_PREFIX_LEN + MAX_BLOCK_DATA,
            ),
        }
    }
}

/// Which end of the conversation sent a hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The dom0 driver.
    Driver = 1,
    /// The receiver agent in the backup qube.
    Receiver = 2,
}

/// Everything that can go wrong reading or checking the wire format.
#[derive(Debug)]
pub enum ProtocolError {
    Io(io::Error),
    /// The peer closed the stream in the middle of a frame.
    Truncated {
        what: &'static str,
    },
    UnknownFrameKind(u32),
    BadFrameLength {
        kind: FrameKind,
        len: u32,
        min: usize,
        max: usize,
    },
    UnexpectedFrame {
        expected: &'static str,
        got: FrameKind,
    },
    NotOurProtocol,
    VersionMismatch {
        ours: u32,
        theirs: u32,
    },
    WrongRole {
        expected: Role,
    },
    Decode(String),
    Encode(String),
    /// A message decoded but broke a documented limit or rule.
    InvalidMessage(String),
    DataChecksum {
        seq: u64,
    },
    DataSequence {
        expected: u64,
        got: u64,
    },
    DataOffset {
        seq: u64,
        expected: u64,
        got: u64,
    },
    EndLength {
        expected: u64,
        got: u64,
    },
    EndFrameCount {
        expected: u64,
        got: u64,
    },
    EndChecksum,
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ProtocolError::*;
        match self {
            Io(e) => write!(f, "I/O error on the protocol stream: {e}"),
            Truncated { what } => write!(f, "stream ended in the middle of a {what}"),
            UnknownFrameKind(k) => write!(f, "unknown frame kind {k}"),
            BadFrameLength {
                kind,
                len,
                min,
                max,
            } => write!(
                f,
                "{kind:?} frame of {len} bytes is outside the allowed {min}..={max} bytes"
            ),
            UnexpectedFrame { expected, got } => {
                write!(f, "expected {expected}, got a {got:?} frame")
            }
            NotOurProtocol => write!(
                f,
                "peer does not speak the qubes-zfs-backup protocol (bad hello magic)"
            ),
            VersionMismatch { ours, theirs } => write!(
                f,
                "protocol version mismatch: we speak version {ours}, the peer speaks version \
                 {theirs}; install the same qubes-zfs-backup version in dom0 and the backup qube"
            ),
            WrongRole { expected } => write!(f, "peer hello does not come from a {expected:?}"),
            Decode(e) => write!(f, "cannot decode message: {e}"),
            Encode(e) => write!(f, "cannot encode message: {e}"),
            InvalidMessage(e) => write!(f, "invalid message: {e}"),
            DataChecksum { seq } => write!(f, "data frame {seq} failed its blake3 check"),
            DataSequence { expected, got } => write!(
                f,
                "data frame out of sequence: expected frame {expected}, got frame {got} \
                 (dropped, duplicated or reordered frame)"
            ),
            DataOffset { seq, expected, got } => write!(
                f,
                "data frame {seq} claims stream offset {got}, expected {expected}"
            ),
            EndLength { expected, got } => write!(
                f,
                "end frame says the stream has {got} bytes, but {expected} bytes arrived"
            ),
            EndFrameCount { expected, got } => write!(
                f,
                "end frame says the stream has {got} frames, but {expected} frames arrived"
            ),
            EndChecksum => write!(f, "whole-stream blake3 in the end frame does not match"),
        }
    }
}

impl std::error::Error for ProtocolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ProtocolError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for ProtocolError {
    fn from(e: io::Error) -> Self {
        ProtocolError::Io(e)
    }
}

/// Reads exactly `buf.len()` bytes; `Ok(false)` if the stream was already at EOF before the
/// first byte, `Truncated` if it ended part way.
fn read_full<R: Read + ?Sized>(
    reader: &mut R,
    buf: &mut [u8],
    what: &'static str,
) -> Result<bool, ProtocolError> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(ProtocolError::Truncated { what }),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ProtocolError::Io(e)),
        }
    }
    Ok(true)
}

/// Reads one frame into `payload` (reused between calls to keep memory flat).
///
/// Returns `Ok(None)` on a clean end of stream at a frame boundary; whether that is acceptable
/// is the caller's decision. The length is checked against the kind's bounds before `payload`
/// is resized.
pub fn read_frame<R: Read + ?Sized>(
    reader: &mut R,
    payload: &mut Vec<u8>,
) -> Result<Option<FrameKind>, ProtocolError> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    if !read_full(reader, &mut header, "frame header")? {
        return Ok(None);
    }
    let raw_kind = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
    let len = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    let kind = FrameKind::from_wire(raw_kind).ok_or(ProtocolError::UnknownFrameKind(raw_kind))?;
    let (min, max) = kind.payload_bounds();
    let len_usize = len as usize;
    if len_usize < min || len_usize > max {
        return Err(ProtocolError::BadFrameLength {
            kind,
            len,
            min,
            max,
        });
    }
    // Reuse what the buffer already holds instead of zero-filling a megabyte per frame: every
    // byte up to `len` is overwritten below, and on a short read the caller gets an error.
    if payload.len() >= len_usize {
        payload.truncate(len_usize);
    } else {
        payload.resize(len_usize, 0);
    }
    if !read_full(reader, payload, "frame payload")? {
        return Err(ProtocolError::Truncated {
            what: "frame payload",
        });
    }
    Ok(Some(kind))
}

/// Like [`read_frame`], but end of stream is an error naming what was expected.
pub fn read_frame_required<R: Read + ?Sized>(
    reader: &mut R,
    payload: &mut Vec<u8>,
    expected: &'static str,
) -> Result<FrameKind, ProtocolError> {
    read_frame(reader, payload)?.ok_or(ProtocolError::Truncated { what: expected })
}

fn header(kind: FrameKind, len: usize) -> [u8; FRAME_HEADER_LEN] {
    let mut h = [0u8; FRAME_HEADER_LEN];
    h[0..4].copy_from_slice(&(kind as u32).to_le_bytes());
    h[4..8].copy_from_slice(&(len as u32).to_le_bytes());
    h
}

/// Writes one frame. Refuses payloads outside the kind's bounds, so we never send what the
/// peer must reject.
pub fn write_frame<W: Write + ?Sized>(
    writer: &mut W,
    kind: FrameKind,
    payload: &[u8],
) -> Result<(), ProtocolError> {
    let (min, max) = kind.payload_bounds();
    if payload.len() < min || payload.len() > max {
        return Err(ProtocolError::BadFrameLength {
            kind,
            len: payload.len().min(u32::MAX as usize) as u32,
            min,
            max,
        });
    }
    writer.write_all(&header(kind, payload.len()))?;
    writer.write_all(payload)?;
    Ok(())
}

/// Writes one block frame (`offset:u64le · data`) without copying `data`. Refuses a block
/// outside 512 ..= 1 MiB, so we never send what the peer must reject.
pub fn write_block_frame<W: Write + ?Sized>(
    writer: &mut W,
    offset: u64,
    data: &[u8],
) -> Result<(), ProtocolError> {
    let len = BLOCK_PREFIX_LEN + data.len();
    let (min, max) = FrameKind::Block.payload_bounds();
    if len < min || len > max {
        return Err(ProtocolError::BadFrameLength {
            kind: FrameKind::Block,
            len: len.min(u32::MAX as usize) as u32,
            min,
            max,
        });
    }
    writer.write_all(&header(FrameKind::Block, len))?;
    writer.write_all(&offset.to_le_bytes())?;
    writer.write_all(data)?;
    Ok(())
}

/// Splits a block frame payload into its volume offset and block. The length is checked
/// again here (512 ..= 1 MiB of data), so a payload from anywhere is safe to pass; whether the
/// block has the volume's block size, and where it may lie, is the reader's check.
pub fn parse_block_frame(payload: &[u8]) -> Result<(u64, &[u8]), ProtocolError> {
    let (min, max) = FrameKind::Block.payload_bounds();
    if payload.len() < min || payload.len() > max {
        return Err(ProtocolError::BadFrameLength {
            kind: FrameKind::Block,
            len: payload.len().min(u32::MAX as usize) as u32,
            min,
            max,
        });
    }
    let offset = u64::from_le_bytes(payload[..BLOCK_PREFIX_LEN].try_into().expect("8 bytes"));
    Ok((offset, &payload[BLOCK_PREFIX_LEN..]))
}

/// The first frame each side sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    pub version: u32,
    pub role: Role,
}

impl Hello {
    pub fn ours(role: Role) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            role,
        }
    }

    pub fn to_payload(&self) -> [u8; HELLO_PAYLOAD_LEN] {
        let mut p = [0u8; HELLO_PAYLOAD_LEN];
        p[0..8].copy_from_slice(&MAGIC);
        p[8..12].copy_from_slice(&self.version.to_le_bytes());
        p[12] = self.role as u8;
        p
    }

    /// Parses a hello payload. The version is returned even if it is not ours, so the caller
    /// can name both versions.
    pub fn from_payload(payload: &[u8]) -> Result<Hello, ProtocolError> {
        if payload.len() != HELLO_PAYLOAD_LEN || payload[0..8] != MAGIC {
            return Err(ProtocolError::NotOurProtocol);
        }
        let version = u32::from_le_bytes(payload[8..12].try_into().expect("4 bytes"));
        let role = match payload[12] {
            1 => Role::Driver,
            2 => Role::Receiver,
            _ => return Err(ProtocolError::NotOurProtocol),
        };
        Ok(Hello { version, role })
    }
}

/// Sends our hello.
pub fn send_hello<W: Write + ?Sized>(writer: &mut W, role: Role) -> Result<(), ProtocolError> {
    write_frame(writer, FrameKind::Hello, &Hello::ours(role).to_payload())?;
    writer.flush()?;
    Ok(())
}

/// Reads the peer's hello and checks magic, version and role.
pub fn expect_hello<R: Read + ?Sized>(
    reader: &mut R,
    peer_role: Role,
) -> Result<Hello, ProtocolError> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    if !read_full(reader, &mut header, "hello")? {
        return Err(ProtocolError::Truncated { what: "hello" });
    }
    // Anything that is not a well-formed hello header (a shell error message, a different
    // program) is "not our protocol", which is a more helpful message than a frame error.
    let kind = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
    let len = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    if kind != FrameKind::Hello as u32 || len as usize != HELLO_PAYLOAD_LEN {
        return Err(ProtocolError::NotOurProtocol);
    }
    let mut payload = [0u8; HELLO_PAYLOAD_LEN];
    if !read_full(reader, &mut payload, "hello")? {
        return Err(ProtocolError::Truncated { what: "hello" });
    }
    let hello = Hello::from_payload(&payload)?;
    if hello.version != PROTOCOL_VERSION {
        return Err(ProtocolError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: hello.version,
        });
    }
    if hello.role != peer_role {
        return Err(ProtocolError::WrongRole {
            expected: peer_role,
        });
    }
    Ok(hello)
}

/// The parsed end frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndFrame {
    pub total_len: u64,
    pub frame_count: u64,
    /// The stream hash: blake3 over the data frames' 32-byte hashes, in order.
    pub blake3: [u8; 32],
}

impl EndFrame {
    pub fn to_payload(&self) -> [u8; END_PAYLOAD_LEN] {
        let mut p = [0u8; END_PAYLOAD_LEN];
        p[0..8].copy_from_slice(&self.total_len.to_le_bytes());
        p[8..16].copy_from_slice(&self.frame_count.to_le_bytes());
        p[16..48].copy_from_slice(&self.blake3);
        p
    }

    pub fn from_payload(payload: &[u8]) -> Result<EndFrame, ProtocolError> {
        if payload.len() != END_PAYLOAD_LEN {
            return Err(ProtocolError::BadFrameLength {
                kind: FrameKind::End,
                len: payload.len() as u32,
                min: END_PAYLOAD_LEN,
                max: END_PAYLOAD_LEN,
            });
        }
        Ok(EndFrame {
            total_len: u64::from_le_bytes(payload[0..8].try_into().expect("8 bytes")),
            frame_count: u64::from_le_bytes(payload[8..16].try_into().expect("8 bytes")),
            blake3: payload[16..48].try_into().expect("32 bytes"),
        })
    }
}

/// Sender side of a data stream: frames chunks of `zfs send` output and finishes with an end
/// frame. Chunks larger than [`MAX_DATA_CHUNK`] are split.
#[derive(Default)]
pub struct StreamFramer {
    seq: u64,
    offset: u64,
    whole: blake3::Hasher,
}

impl StreamFramer {
    pub fn new() -> StreamFramer {
        StreamFramer::default()
    }

    /// Frames `data` (any length; empty writes nothing).
    pub fn write_data<W: Write + ?Sized>(
        &mut self,
        writer: &mut W,
        data: &[u8],
    ) -> Result<(), ProtocolError> {
        for chunk in data.chunks(MAX_DATA_CHUNK) {
            let prefix = self.frame_prefix(chunk);
            writer.write_all(&prefix)?;
            writer.write_all(chunk)?;
        }
        Ok(())
    }

    /// Frames one chunk without writing it: returns the bytes (frame header, seq, offset,
    /// blake3) that must go on the wire right before `chunk`, and counts the chunk as framed.
    /// For a sender that hashes on one thread and writes on another; the prefixes must be
    /// written in the order they were made, each followed by its chunk.
    ///
    /// # Panics
    /// If `chunk` is empty or longer than [`MAX_DATA_CHUNK`] (a data frame carries 1 byte to
    /// 1 MiB; [`StreamFramer::write_data`] splits for you).
    pub fn frame_prefix(&mut self, chunk: &[u8]) -> [u8; DATA_FRAME_PREFIX_LEN] {
        assert!(
            !chunk.is_empty() && chunk.len() <= MAX_DATA_CHUNK,
            "a data frame carries 1..={MAX_DATA_CHUNK} bytes, not {}",
            chunk.len()
        );
        let mut prefix = [0u8; DATA_FRAME_PREFIX_LEN];
        prefix[..FRAME_HEADER_LEN]
            .copy_from_slice(&header(FrameKind::Data, DATA_PREFIX_LEN + chunk.len()));
        let p = &mut prefix[FRAME_HEADER_LEN..];
        p[0..8].copy_from_slice(&self.seq.to_le_bytes());
        p[8..16].copy_from_slice(&self.offset.to_le_bytes());
        let hash = blake3::hash(chunk);
        p[16..48].copy_from_slice(hash.as_bytes());
        // The stream hash chains the frame hashes: every byte is hashed once per side.
        self.whole.update(hash.as_bytes());
        self.seq += 1;
        self.offset += chunk.len() as u64;
        prefix
    }

    pub fn bytes(&self) -> u64 {
        self.offset
    }

    /// Writes the end frame and returns what it said.
    pub fn finish<W: Write + ?Sized>(self, writer: &mut W) -> Result<EndFrame, ProtocolError> {
        let end = self.end_frame();
        write_frame(writer, FrameKind::End, &end.to_payload())?;
        writer.flush()?;
        Ok(end)
    }

    /// The end frame for what has been framed so far (without writing it).
    pub fn end_frame(&self) -> EndFrame {
        EndFrame {
            total_len: self.offset,
            frame_count: self.seq,
            blake3: *self.whole.finalize().as_bytes(),
        }
    }
}

/// Receiver side of a data stream: checks each data frame's blake3, sequence number and
/// offset as it arrives, and the end frame against everything seen.
#[derive(Default)]
pub struct StreamVerifier {
    seq: u64,
    offset: u64,
    whole: blake3::Hasher,
}

impl StreamVerifier {
    pub fn new() -> StreamVerifier {
        StreamVerifier::default()
    }

    /// Verifies a data frame payload and returns its data bytes.
    pub fn verify_data<'a>(&mut self, payload: &'a [u8]) -> Result<&'a [u8], ProtocolError> {
        if payload.len() <= DATA_PREFIX_LEN || payload.len() > MAX_DATA_PAYLOAD {
            return Err(ProtocolError::BadFrameLength {
                kind: FrameKind::Data,
                len: payload.len().min(u32::MAX as usize) as u32,
                min: DATA_PREFIX_LEN + 1,
                max: MAX_DATA_PAYLOAD,
            });
        }
        let seq = u64::from_le_bytes(payload[0..8].try_into().expect("8 bytes"));
        let offset = u64::from_le_bytes(payload[8..16].try_into().expect("8 bytes"));
        let data = &payload[DATA_PREFIX_LEN..];
        if seq != self.seq {
            return Err(ProtocolError::DataSequence {
                expected: self.seq,
                got: seq,
            });
        }
        if offset != self.offset {
            return Err(ProtocolError::DataOffset {
                seq,
                expected: self.offset,
                got: offset,
            });
        }
        let hash = blake3::hash(data);
        if hash.as_bytes() != &payload[16..48] {
            return Err(ProtocolError::DataChecksum { seq });
        }
        self.whole.update(hash.as_bytes());
        self.seq += 1;
        self.offset += data.len() as u64;
        Ok(data)
    }

    /// Verifies the end frame against every data frame verified so far.
    pub fn verify_end(&self, payload: &[u8]) -> Result<EndFrame, ProtocolError> {
        let end = EndFrame::from_payload(payload)?;
        if end.frame_count != self.seq {
            return Err(ProtocolError::EndFrameCount {
                expected: self.seq,
                got: end.frame_count,
            });
        }
        if end.total_len != self.offset {
            return Err(ProtocolError::EndLength {
                expected: self.offset,
                got: end.total_len,
            });
        }
        if &end.blake3 != self.whole.finalize().as_bytes() {
            return Err(ProtocolError::EndChecksum);
        }
        Ok(end)
    }

    /// Bytes verified so far.
    pub fn bytes(&self) -> u64 {
        self.offset
    }

    /// Data frames verified so far.
    pub fn frames(&self) -> u64 {
        self.seq
    }
}
