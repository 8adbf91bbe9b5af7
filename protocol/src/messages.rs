//! Control messages: bincode 2 (`config::standard()` with a decode limit) inside request and
//! reply frames. Every decoded message is also checked against the documented limits and rules
//! ([`Request::validate`], [`Reply::validate`]) before it is returned.

use std::fmt;
use std::io::{Read, Write};

use bincode::{Decode, Encode};

use crate::frame::{
    read_frame, read_frame_required, write_frame, FrameKind, ProtocolError, MAX_REPLY_PAYLOAD,
    MAX_REQUEST_PAYLOAD,
};
use crate::names::{BlobName, DatasetName, SnapshotName};

/// Longest resume token accepted anywhere (real ones are a few hundred bytes).
pub const MAX_RESUME_TOKEN_LEN: usize = 16 << 10;
/// Longest human-readable message in a reply.
pub const MAX_MESSAGE_LEN: usize = 8 << 10;
/// Longest captured `zfs` stderr text carried in a reply.
pub const MAX_ZFS_STDERR_LEN: usize = 16 << 10;
/// Most datasets in one inventory reply.
pub const MAX_INVENTORY_DATASETS: usize = 16_384;
/// Most snapshots (over all datasets) in one inventory reply.
pub const MAX_INVENTORY_SNAPSHOTS: usize = 32_768;
/// Largest blob the agent stores or hands back: 16 GiB (a fully used 2 TiB volume's manifest,
/// 49 bytes per 16 KiB block, is about 6.3 GiB).
pub const MAX_BLOB_LEN: u64 = 16 << 30;
/// Most blobs in one `Blobs` reply: 50 000 names of at most 200 bytes, with their lengths,
/// stay below the 16 MiB reply limit.
pub const MAX_BLOBS_LISTED: usize = 50_000;
/// Smallest `volblocksize` a read-back accepts.
pub const MIN_READBACK_BLOCK: u64 = 512;
/// Largest `volblocksize` a read-back accepts (a block frame's limit).
pub const MAX_READBACK_BLOCK: u64 = 1 << 20;

/// Filesystem or volume (zvol).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub enum DatasetKind {
    Filesystem,
    Volume,
}

/// One snapshot on the receiver.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct SnapshotInfo {
    pub name: SnapshotName,
    pub guid: u64,
    pub createtxg: u64,
}

/// One dataset under the receiver root.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct DatasetInfo {
    pub name: DatasetName,
    pub kind: DatasetKind,
    pub guid: u64,
    /// `receive_resume_token` if a `zfs receive -s` left partial state here.
    pub receive_resume_token: Option<String>,
    /// Sorted by `createtxg`.
    pub snapshots: Vec<SnapshotInfo>,
}

/// List everything under `root` (inclusive).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct InventoryRequest {
    pub root: DatasetName,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct InventoryReply {
    pub root: DatasetName,
    /// Free space (`available`) of the root dataset, in bytes.
    pub available: u64,
    pub datasets: Vec<DatasetInfo>,
}

/// What kind of stream the driver is about to send.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum ReceiveMode {
    /// `zfs send SNAP`: the destination must not exist yet.
    Full,
    /// `zfs send -i FROM SNAP`: `from` must exist on the receiver with guid `from_guid`.
    /// Normally `from` is a snapshot of the destination; for a clone stream it is the
    /// origin snapshot (and `origin` in the request must name it too).
    Incremental { from: SnapshotName, from_guid: u64 },
    /// `zfs send -t TOKEN`: the destination must hold exactly this `receive_resume_token`.
    Resume { token: String },
}

/// Receive one snapshot. After a `ReceiveReady` reply the driver sends data frames and an end
/// frame; the agent answers with `Reply::Receive`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ReceiveRequest {
    /// The receiver root; nothing outside it is touched.
    pub root: DatasetName,
    /// Dataset to receive into, strictly under `root`.
    pub destination: DatasetName,
    /// `destination@label`: the snapshot the stream must produce.
    pub snapshot: SnapshotName,
    /// guid of the source snapshot; the received snapshot must have the same.
    pub guid: u64,
    pub kind: DatasetKind,
    pub mode: ReceiveMode,
    /// Clone origin on the receiver (`zfs receive -o origin=...`), strictly under `root`.
    pub origin: Option<SnapshotName>,
}

/// Discard partial receive state on `dataset` (`zfs receive -A`).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct AbortRequest {
    pub root: DatasetName,
    pub dataset: DatasetName,
}

/// Store a blob: after `BlobReady` the driver sends exactly `len` bytes as data frames and an
/// end frame (the same framing as a receive); the agent answers `BlobStored`. The agent stores
/// it atomically (a blob of that name is replaced only when the new one is complete).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct PutBlobRequest {
    pub root: DatasetName,
    pub name: BlobName,
    pub len: u64,
}

/// Read a blob: the agent answers `Blob { len }` and then sends `len` bytes as data frames and
/// an end frame; a blob longer than `max_len` is refused before anything is sent.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct GetBlobRequest {
    pub root: DatasetName,
    pub name: BlobName,
    pub max_len: u64,
}

/// List the blobs below the directory `prefix` (all blobs if `None`).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ListBlobsRequest {
    pub root: DatasetName,
    pub prefix: Option<BlobName>,
}

/// Read a received zvol snapshot back: after `ReadBackReady` the agent sends one block frame
/// per non-zero `volblocksize` block of the snapshot, in increasing offset order, then
/// `ReadBackDone` (or an `Error` that ends the read-back).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ReadBackRequest {
    pub root: DatasetName,
    /// Strictly under `root`.
    pub snapshot: SnapshotName,
    /// A power of two in 512 ..= 1 MiB.
    pub volblocksize: u64,
}

/// One stored blob.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct BlobInfo {
    pub name: BlobName,
    pub len: u64,
}

// A request is decoded, handled and dropped one at a time, so the size of the largest variant
// costs nothing; boxing it would only add an allocation per request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Request {
    Inventory(InventoryRequest),
    Receive(ReceiveRequest),
    Abort(AbortRequest),
    /// Added in protocol version 3, like the other blob and read-back requests.
    PutBlob(PutBlobRequest),
    GetBlob(GetBlobRequest),
    ListBlobs(ListBlobsRequest),
    ReadBack(ReadBackRequest),
}

/// Why something failed. The first group comes from classifying `zfs receive` stderr, the
/// second from the agent's own checks of the stream, the third from refusing a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub enum ErrorClass {
    /// "destination ... has been modified since most recent snapshot".
    DestinationModified,
    /// Destination (or that snapshot) already exists, or newer snapshots exist on it.
    DestinationExists,
    /// "contains partially-complete state": a previous `zfs receive -s` left a token.
    PartialStatePresent,
    /// The incremental source is missing on the receiver or does not match.
    IncrementalSourceMismatch,
    /// Out of space or quota.
    NoSpace,
    /// "kernel modules must be upgraded to receive this stream": ZFS 2.1 says this when a
    /// resume stream does not match the partial state (stale or foreign token).
    StreamMismatch,
    /// `zfs` failed in a way not classified above; see the message.
    ZfsOther,

    /// A data or end frame failed its checks; partial state was kept.
    StreamCorrupt,
    /// The caller went away (EOF without end frame, broken pipe) or the stream was truncated;
    /// partial state was kept.
    StreamInterrupted,
    /// The peer broke the protocol (unexpected frame, undecodable message).
    ProtocolViolation,

    /// The request broke a rule (names outside the root, inconsistent fields…).
    InvalidRequest,
    /// A dataset or snapshot the request needs does not exist.
    NotFound,
    /// Another receive holds the lock for too long.
    Busy,
    /// Resume requested, but the destination has no partial state or a different token.
    ResumeTokenMismatch,
    /// The received snapshot's guid is not the expected one.
    GuidMismatch,
    /// Something inside the agent failed (lock file, spawning zfs…).
    Internal,
    /// A blob (or a listing) is larger than the request or the protocol allows.
    TooLarge,
    /// A read-back's stream is not what a zvol snapshot's must be (wrong objset or object
    /// type, block size, compressed or misplaced records).
    ReadBackRefused,
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            ErrorClass::DestinationModified => {
                "destination modified since its most recent snapshot"
            }
            ErrorClass::DestinationExists => "destination exists or has newer snapshots",
            ErrorClass::PartialStatePresent => "destination holds partial receive state",
            ErrorClass::IncrementalSourceMismatch => "incremental source missing or different",
            ErrorClass::NoSpace => "out of space on the receiver",
            ErrorClass::StreamMismatch => "stream does not match the receiver's partial state",
            ErrorClass::ZfsOther => "zfs failed",
            ErrorClass::StreamCorrupt => "stream corrupted in transit",
            ErrorClass::StreamInterrupted => "stream interrupted",
            ErrorClass::ProtocolViolation => "protocol violation",
            ErrorClass::InvalidRequest => "invalid request",
            ErrorClass::NotFound => "not found",
            ErrorClass::Busy => "receiver busy",
            ErrorClass::ResumeTokenMismatch => "resume token does not match the receiver",
            ErrorClass::GuidMismatch => "received snapshot has an unexpected guid",
            ErrorClass::Internal => "receiver internal error",
            ErrorClass::TooLarge => "too large",
            ErrorClass::ReadBackRefused => "the snapshot cannot be read back",
        };
        f.write_str(text)
    }
}

/// A failed receive. `resume_token` is set when partial state was left that `zfs send -t`
/// can continue (after the driver has decoded and checked it).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ReceiveFailure {
    pub class: ErrorClass,
    /// The agent's description (bounded by [`MAX_MESSAGE_LEN`]).
    pub message: String,
    /// `zfs receive` stderr as printed, if it ran (bounded by [`MAX_ZFS_STDERR_LEN`]).
    pub zfs_stderr: String,
    pub resume_token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum ReceiveResult {
    /// The snapshot exists on the receiver; `guid` was read back with `zfs get guid`.
    Ok {
        snapshot: SnapshotName,
        guid: u64,
        /// Stream bytes received in this call.
        bytes: u64,
    },
    Err(ReceiveFailure),
}

/// A refusal or failure outside a receive.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ErrorReply {
    pub class: ErrorClass,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Reply {
    Inventory(InventoryReply),
    /// `zfs receive` is running: start sending data frames.
    ReceiveReady,
    Receive(ReceiveResult),
    Aborted {
        dataset: DatasetName,
    },
    Error(ErrorReply),
    /// The receive lock is held by another session: the agent waits for it (bounded), and the
    /// reply to the request follows. `holder` is what the holder wrote into the lock file.
    Waiting {
        holder: String,
    },
    /// The agent is ready for a blob's data frames.
    BlobReady,
    /// The blob is stored (`len` bytes, complete and synced).
    BlobStored {
        name: BlobName,
        len: u64,
    },
    /// The blob exists with `len` bytes; its data frames and end frame follow.
    Blob {
        len: u64,
    },
    /// The blobs below the requested prefix, sorted by name.
    Blobs(Vec<BlobInfo>),
    /// `zfs send` of the snapshot is running: block frames follow.
    ReadBackReady,
    /// The read-back ended: `blocks` block frames of `bytes` bytes in all were sent.
    ReadBackDone {
        blocks: u64,
        bytes: u64,
    },
}

fn check_len(what: &str, text: &str, max: usize) -> Result<(), String> {
    if text.len() > max {
        return Err(format!("{what} is {} bytes, limit {max}", text.len()));
    }
    Ok(())
}

fn check_token_text(token: &str) -> Result<(), String> {
    check_len("resume token", token, MAX_RESUME_TOKEN_LEN)?;
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return Err("resume token must be non-empty hex digits and '-'".into());
    }
    Ok(())
}

impl Request {
    /// Checks the rules a decoded request must follow (beyond valid names).
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Request::Inventory(_) => Ok(()),
            Request::Abort(a) => {
                if !a.dataset.is_strictly_under(&a.root) {
                    return Err(format!(
                        "dataset {} is not strictly under the receiver root {}",
                        a.dataset, a.root
                    ));
                }
                Ok(())
            }
            Request::Receive(r) => r.validate(),
            Request::PutBlob(r) => check_blob_len("blob length", r.len),
            Request::GetBlob(r) => check_blob_len("largest blob length", r.max_len),
            Request::ListBlobs(_) => Ok(()),
            Request::ReadBack(r) => {
                if !r.snapshot.is_strictly_under(&r.root) {
                    return Err(format!(
                        "snapshot {} is not strictly under the receiver root {}",
                        r.snapshot, r.root
                    ));
                }
                check_volblocksize(r.volblocksize)
            }
        }
    }
}

fn check_blob_len(what: &str, len: u64) -> Result<(), String> {
    if len > MAX_BLOB_LEN {
        return Err(format!(
            "{what} {len} is over the limit of {MAX_BLOB_LEN} bytes"
        ));
    }
    Ok(())
}

/// A read-back's block size: a power of two in 512 ..= 1 MiB.
pub fn check_volblocksize(volblocksize: u64) -> Result<(), String> {
    if !volblocksize.is_power_of_two()
        || !(MIN_READBACK_BLOCK..=MAX_READBACK_BLOCK).contains(&volblocksize)
    {
        return Err(format!(
            "volblocksize {volblocksize} is not a power of two in {MIN_READBACK_BLOCK} ..= {MAX_READBACK_BLOCK}"
        ));
    }
    Ok(())
}

impl ReceiveRequest {
    pub fn validate(&self) -> Result<(), String> {
        if !self.destination.is_strictly_under(&self.root) {
            return Err(format!(
                "destination {} is not strictly under the receiver root {}",
                self.destination, self.root
            ));
        }
        if *self.snapshot.dataset() != self.destination {
            return Err(format!(
                "snapshot {} is not on the destination {}",
                self.snapshot, self.destination
            ));
        }
        if let Some(origin) = &self.origin {
            if !origin.is_strictly_under(&self.root) {
                return Err(format!(
                    "clone origin {origin} is not strictly under the receiver root {}",
                    self.root
                ));
            }
            if *origin.dataset() == self.destination {
                return Err(format!(
                    "clone origin {origin} is on the destination itself"
                ));
            }
        }
        match &self.mode {
            ReceiveMode::Full => {
                if self.origin.is_some() {
                    return Err("a clone origin needs an incremental (clone) stream".into());
                }
            }
            ReceiveMode::Incremental { from, .. } => match &self.origin {
                None if *from.dataset() != self.destination => {
                    return Err(format!(
                        "incremental source {from} is not on the destination {}",
                        self.destination
                    ));
                }
                Some(origin) if origin != from => {
                    return Err(format!(
                        "clone stream source {from} differs from the clone origin {origin}"
                    ));
                }
                _ => {
                    if *from == self.snapshot {
                        return Err("incremental source equals the target snapshot".into());
                    }
                }
            },
            ReceiveMode::Resume { token } => check_token_text(token)?,
        }
        Ok(())
    }
}

impl Reply {
    /// Checks the documented limits and rules of a decoded reply. The driver must still
    /// compare the content with what it asked for.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Reply::Inventory(inv) => {
                if inv.datasets.len() > MAX_INVENTORY_DATASETS {
                    return Err(format!(
                        "inventory lists {} datasets, limit {MAX_INVENTORY_DATASETS}",
                        inv.datasets.len()
                    ));
                }
                let mut snapshots = 0usize;
                for ds in &inv.datasets {
                    if ds.name != inv.root && !ds.name.is_strictly_under(&inv.root) {
                        return Err(format!(
                            "inventory dataset {} is outside the root {}",
                            ds.name, inv.root
                        ));
                    }
                    if let Some(token) = &ds.receive_resume_token {
                        check_token_text(token)?;
                    }
                    snapshots += ds.snapshots.len();
                    if snapshots > MAX_INVENTORY_SNAPSHOTS {
                        return Err(format!(
                            "inventory lists more than {MAX_INVENTORY_SNAPSHOTS} snapshots"
                        ));
                    }
                    for snap in &ds.snapshots {
                        if snap.name.dataset() != &ds.name {
                            return Err(format!(
                                "snapshot {} listed under dataset {}",
                                snap.name, ds.name
                            ));
                        }
                    }
                }
                Ok(())
            }
            Reply::ReceiveReady | Reply::Aborted { .. } => Ok(()),
            Reply::Receive(ReceiveResult::Ok { .. }) => Ok(()),
            Reply::Receive(ReceiveResult::Err(failure)) => {
                check_len("message", &failure.message, MAX_MESSAGE_LEN)?;
                check_len("zfs stderr", &failure.zfs_stderr, MAX_ZFS_STDERR_LEN)?;
                if let Some(token) = &failure.resume_token {
                    check_token_text(token)?;
                }
                Ok(())
            }
            Reply::Error(e) => check_len("message", &e.message, MAX_MESSAGE_LEN),
            Reply::Waiting { holder } => check_len("lock holder", holder, MAX_MESSAGE_LEN),
            Reply::BlobReady | Reply::ReadBackReady | Reply::ReadBackDone { .. } => Ok(()),
            Reply::BlobStored { len, .. } | Reply::Blob { len } => {
                check_blob_len("blob length", *len)
            }
            Reply::Blobs(blobs) => {
                if blobs.len() > MAX_BLOBS_LISTED {
                    return Err(format!(
                        "blob list has {} entries, limit {MAX_BLOBS_LISTED}",
                        blobs.len()
                    ));
                }
                for pair in blobs.windows(2) {
                    if pair[0].name >= pair[1].name {
                        return Err(format!(
                            "blob list is not sorted by name ({} before {})",
                            pair[0].name, pair[1].name
                        ));
                    }
                }
                blobs
                    .iter()
                    .try_for_each(|b| check_blob_len("blob length", b.len))
            }
        }
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary, marking the cut.
pub fn truncate_text(text: &str, max: usize) -> String {
    const MARK: &str = "\n[truncated]";
    if text.len() <= max {
        return text.to_owned();
    }
    let mut cut = max.saturating_sub(MARK.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{MARK}", &text[..cut])
}

fn encode<T: Encode>(value: &T, limit: usize) -> Result<Vec<u8>, ProtocolError> {
    let bytes = bincode::encode_to_vec(value, bincode::config::standard())
        .map_err(|e| ProtocolError::Encode(e.to_string()))?;
    if bytes.len() > limit {
        return Err(ProtocolError::Encode(format!(
            "message is {} bytes, limit {limit}",
            bytes.len()
        )));
    }
    Ok(bytes)
}

pub fn encode_request(request: &Request) -> Result<Vec<u8>, ProtocolError> {
    encode(request, MAX_REQUEST_PAYLOAD)
}

pub fn encode_reply(reply: &Reply) -> Result<Vec<u8>, ProtocolError> {
    encode(reply, MAX_REPLY_PAYLOAD)
}

/// A message that checks its own rules after decoding.
trait Validated: Sized {
    /// What it is, for the trailing-bytes message.
    const WHAT: &'static str;
    fn validate(&self) -> Result<(), String>;
}

impl Validated for Request {
    const WHAT: &'static str = "request";
    fn validate(&self) -> Result<(), String> {
        Request::validate(self)
    }
}

impl Validated for Reply {
    const WHAT: &'static str = "reply";
    fn validate(&self) -> Result<(), String> {
        Reply::validate(self)
    }
}

/// Decodes (at most `LIMIT` bytes' worth) and validates a message; trailing bytes are an error.
fn decode_checked<T: Validated + bincode::Decode<()>, const LIMIT: usize>(
    bytes: &[u8],
) -> Result<T, ProtocolError> {
    let config = bincode::config::standard().with_limit::<LIMIT>();
    let (message, used): (T, usize) = bincode::decode_from_slice(bytes, config)
        .map_err(|e| ProtocolError::Decode(e.to_string()))?;
    if used != bytes.len() {
        return Err(ProtocolError::Decode(format!(
            "{} trailing bytes after the {}",
            bytes.len() - used,
            T::WHAT
        )));
    }
    message.validate().map_err(ProtocolError::InvalidMessage)?;
    Ok(message)
}

/// Decodes and validates a request payload; trailing bytes are an error.
pub fn decode_request(bytes: &[u8]) -> Result<Request, ProtocolError> {
    decode_checked::<Request, { MAX_REQUEST_PAYLOAD }>(bytes)
}

/// Decodes and validates a reply payload; trailing bytes are an error.
pub fn decode_reply(bytes: &[u8]) -> Result<Reply, ProtocolError> {
    decode_checked::<Reply, { MAX_REPLY_PAYLOAD }>(bytes)
}

pub fn write_request<W: Write + ?Sized>(
    writer: &mut W,
    request: &Request,
) -> Result<(), ProtocolError> {
    write_frame(writer, FrameKind::Request, &encode_request(request)?)?;
    writer.flush()?;
    Ok(())
}

pub fn write_reply<W: Write + ?Sized>(writer: &mut W, reply: &Reply) -> Result<(), ProtocolError> {
    write_frame(writer, FrameKind::Reply, &encode_reply(reply)?)?;
    writer.flush()?;
    Ok(())
}

/// Reads the next request; `Ok(None)` when the peer ended the session cleanly.
pub fn read_request<R: Read + ?Sized>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> Result<Option<Request>, ProtocolError> {
    match read_frame(reader, buf)? {
        None => Ok(None),
        Some(FrameKind::Request) => decode_request(buf).map(Some),
        Some(other) => Err(ProtocolError::UnexpectedFrame {
            expected: "a request frame",
            got: other,
        }),
    }
}

/// Reads the next reply; end of stream is an error.
pub fn read_reply<R: Read + ?Sized>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> Result<Reply, ProtocolError> {
    match read_frame_required(reader, buf, "reply frame")? {
        FrameKind::Reply => decode_reply(buf),
        other => Err(ProtocolError::UnexpectedFrame {
            expected: "a reply frame",
            got: other,
        }),
    }
}
