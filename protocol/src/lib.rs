//! Wire format shared by the dom0 driver and the receiver agent.
//!
//! See `protocol/README.md` for the full description. In short: one qrexec call carries a
//! hello each way, then requests (bincode) answered by replies (bincode); a receive request is
//! followed by data frames (each with sequence number, stream offset and blake3) and an end
//! frame (total length, frame count, blake3 of the whole stream). Every frame has a
//! little-endian `kind, length` header whose length is checked before anything is allocated.
//!
//! The crate does no process or file I/O; it only reads and writes `std::io` streams.
#![forbid(unsafe_code)]

pub mod bounded;
pub mod frame;
pub mod keyfile;
pub mod manifest;
pub mod messages;
pub mod names;
pub mod sets;
pub mod text;
pub mod token;
pub mod zstream;

pub use bounded::read_bounded;
pub use frame::{
    expect_hello, parse_block_frame, read_frame, read_frame_required, send_hello,
    write_block_frame, write_frame, EndFrame, FrameKind, Hello, ProtocolError, Role, StreamFramer,
    StreamVerifier, BLOCK_PREFIX_LEN, DATA_FRAME_PREFIX_LEN, DATA_PREFIX_LEN, END_PAYLOAD_LEN,
    FRAME_HEADER_LEN, HELLO_PAYLOAD_LEN, MAGIC, MAX_BLOCK_DATA, MAX_DATA_CHUNK, MAX_DATA_PAYLOAD,
    MAX_REPLY_PAYLOAD, MAX_REQUEST_PAYLOAD, MIN_BLOCK_DATA, PROTOCOL_VERSION,
};
pub use messages::{
    check_volblocksize, decode_reply, decode_request, encode_reply, encode_request, read_reply,
    read_request, truncate_text, write_reply, write_request, AbortRequest, BlobInfo, DatasetInfo,
    DatasetKind, ErrorClass, ErrorReply, GetBlobRequest, InventoryReply, InventoryRequest,
    ListBlobsRequest, PutBlobRequest, ReadBackRequest, ReceiveFailure, ReceiveMode, ReceiveRequest,
    ReceiveResult, Reply, Request, SnapshotInfo, MAX_BLOBS_LISTED, MAX_BLOB_LEN,
    MAX_INVENTORY_DATASETS, MAX_INVENTORY_SNAPSHOTS, MAX_MESSAGE_LEN, MAX_READBACK_BLOCK,
    MAX_RESUME_TOKEN_LEN, MAX_ZFS_STDERR_LEN, MIN_READBACK_BLOCK,
};
pub use names::{
    BlobName, BookmarkName, DatasetName, NameError, QubeName, SnapLabel, SnapshotName,
    MAX_BLOB_COMPONENTS, MAX_BLOB_NAME_LEN, MAX_NAME_LEN,
};
pub use token::{
    decode_resume_token, encode_resume_token, encode_resume_token_with, NvEncoding, ResumeToken,
    TokenError,
};
