//! The driver's side of the blob and read-back requests (protocol version 3): store and fetch
//! the opaque blobs the agent keeps for dom0 (manifests, set indexes), list them, and read a
//! received zvol snapshot back block by block.
//!
//! Nothing the agent sends is trusted: every frame's length was bounded before it was read,
//! blob bytes are checked frame by frame (blake3, sequence, offset) and against the announced
//! and the allowed length, and read-back blocks must have the volume's block size and lie at
//! strictly increasing, aligned offsets inside the volume. The contents are the caller's to
//! authenticate (MACs); this module only makes sure they are what the agent says they are.
//!
//! After any error here the session is out of step (frames may still be coming): drop it.

use crate::error::{Error, Result};
use crate::output::outside;
use crate::stream::client::Client;
use crate::stream::receiver::reply_name;
use qzb_protocol as proto;
use std::io::{Read, Write};

/// What a read-back delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadBackSummary {
    /// Block frames received (non-zero blocks of the volume).
    pub blocks: u64,
    /// Their bytes (`blocks × volblocksize`).
    pub bytes: u64,
}

fn agent_error(what: &str, e: &proto::ErrorReply) -> Error {
    Error::Receiver(format!("{what}: {} ({})", outside(&e.message), e.class))
}

fn unexpected(what: &str, reply: &proto::Reply) -> Error {
    Error::Security(format!(
        "the receiver answered {what} with {}",
        reply_name(reply)
    ))
}

impl Client {
    /// Stores `len` bytes read from `data` as the blob `name` under `root`. The reader must
    /// give exactly `len` bytes; the agent replaces an existing blob of that name only once the
    /// new one is complete and synced.
    pub fn put_blob(
        &mut self,
        root: &proto::DatasetName,
        name: &proto::BlobName,
        data: &mut dyn Read,
        len: u64,
    ) -> Result<()> {
        if len > proto::MAX_BLOB_LEN {
            return Err(Error::Send(format!(
                "blob {name} has {len} bytes, more than the {} a blob may have",
                proto::MAX_BLOB_LEN
            )));
        }
        let what = format!("storing blob {name}");
        let request = proto::Request::PutBlob(proto::PutBlobRequest {
            root: root.clone(),
            name: name.clone(),
            len,
        });
        match self.request(&request)? {
            proto::Reply::BlobReady => {}
            proto::Reply::Error(e) => return Err(agent_error(&what, &e)),
            other => return Err(unexpected("a blob store request", &other)),
        }
        let mut framer = proto::StreamFramer::new();
        let mut chunk = vec![0u8; proto::MAX_DATA_CHUNK];
        let mut source = data.take(len);
        let mut write_error = None;
        loop {
            let n = match source.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.close_writer();
                    return Err(Error::Send(format!("{what}: reading it failed: {e}")));
                }
            };
            self.activity().touch();
            let sink = self
                .data_sink()
                .ok_or_else(|| Error::Receiver("the session to the receiver is closed".into()))?;
            if let Err(e) = framer.write_data(sink, &chunk[..n]) {
                write_error = Some(e.to_string());
                break;
            }
        }
        if write_error.is_none() {
            if framer.bytes() != len {
                // Without an end frame the agent discards what it got.
                self.close_writer();
                return Err(Error::Send(format!(
                    "{what}: only {} of its {len} bytes could be read",
                    framer.bytes()
                )));
            }
            let sink = self
                .data_sink()
                .ok_or_else(|| Error::Receiver("the session to the receiver is closed".into()))?;
            if let Err(e) = framer.finish(sink) {
                write_error = Some(e.to_string());
            }
        }
        // Read the answer even after a broken write: the agent may have said why.
        match self.read_reply() {
            Ok(proto::Reply::BlobStored {
                name: stored,
                len: l,
            }) => {
                if let Some(w) = write_error {
                    return Err(Error::Security(format!(
                        "the receiver reported storing blob {name} although the stream to it broke ({w})"
                    )));
                }
                if stored != *name || l != len {
                    return Err(Error::Security(format!(
                        "the receiver reported storing blob {} of {l} bytes instead of {name} of {len}",
                        outside(stored.as_str())
                    )));
                }
                Ok(())
            }
            Ok(proto::Reply::Error(e)) => Err(agent_error(&what, &e)),
            Ok(other) => Err(unexpected("a blob's data", &other)),
            Err(e) => Err(match write_error {
                Some(w) => Error::Receiver(format!("{what}: the stream broke ({w}); {e}")),
                None => e,
            }),
        }
    }

    /// Fetches the blob `name` under `root` into `out`: at most `max_len` bytes, exactly the
    /// length the agent announced, every frame verified. Returns the length. A missing blob is
    /// an `Error::Receiver` naming the agent's "not found".
    pub fn get_blob(
        &mut self,
        root: &proto::DatasetName,
        name: &proto::BlobName,
        max_len: u64,
        out: &mut dyn Write,
    ) -> Result<u64> {
        let what = format!("reading blob {name}");
        let request = proto::Request::GetBlob(proto::GetBlobRequest {
            root: root.clone(),
            name: name.clone(),
            max_len: max_len.min(proto::MAX_BLOB_LEN),
        });
        let len = match self.request(&request)? {
            proto::Reply::Blob { len } => len,
            proto::Reply::Error(e) => return Err(agent_error(&what, &e)),
            other => return Err(unexpected("a blob read request", &other)),
        };
        if len > max_len {
            return Err(Error::Security(format!(
                "the receiver announced blob {name} with {len} bytes, more than the {max_len} asked for"
            )));
        }
        let mut verifier = proto::StreamVerifier::new();
        loop {
            let (kind, payload) = self.read_stream_frame("blob data frame")?;
            match kind {
                proto::FrameKind::Data => {
                    let data = verifier
                        .verify_data(payload)
                        .map_err(|e| Error::Receiver(format!("{what}: {e}")))?;
                    if verifier.bytes() > len {
                        return Err(Error::Security(format!(
                            "the receiver sent more than the announced {len} bytes of blob {name}"
                        )));
                    }
                    out.write_all(data)
                        .map_err(|e| Error::State(format!("{what}: writing it failed: {e}")))?;
                }
                proto::FrameKind::End => {
                    verifier
                        .verify_end(payload)
                        .map_err(|e| Error::Receiver(format!("{what}: {e}")))?;
                    if verifier.bytes() != len {
                        return Err(Error::Receiver(format!(
                            "{what}: {} bytes arrived, the receiver announced {len}",
                            verifier.bytes()
                        )));
                    }
                    return Ok(len);
                }
                proto::FrameKind::Reply => {
                    return Err(match proto::decode_reply(payload) {
                        Ok(proto::Reply::Error(e)) => agent_error(&what, &e),
                        Ok(other) => unexpected("inside a blob's data", &other),
                        Err(e) => Error::Receiver(format!("{what}: bad reply: {e}")),
                    })
                }
                other => {
                    return Err(Error::Receiver(format!(
                        "{what}: unexpected {} frame",
                        other.name()
                    )))
                }
            }
        }
    }

    /// Lists the blobs under `root` below the directory `prefix` (all without one). The list
    /// is bounded, sorted and validated by the protocol crate; here every name must also lie
    /// below the prefix.
    pub fn list_blobs(
        &mut self,
        root: &proto::DatasetName,
        prefix: Option<&proto::BlobName>,
    ) -> Result<Vec<proto::BlobInfo>> {
        let request = proto::Request::ListBlobs(proto::ListBlobsRequest {
            root: root.clone(),
            prefix: prefix.cloned(),
        });
        let blobs = match self.request(&request)? {
            proto::Reply::Blobs(blobs) => blobs,
            proto::Reply::Error(e) => return Err(agent_error("listing blobs", &e)),
            other => return Err(unexpected("a blob list request", &other)),
        };
        if let Some(prefix) = prefix {
            if let Some(b) = blobs.iter().find(|b| !b.name.is_under(prefix)) {
                return Err(Error::Security(format!(
                    "the receiver listed blob {} when asked for those below {prefix}",
                    outside(b.name.as_str())
                )));
            }
        }
        Ok(blobs)
    }

    /// Reads the received zvol snapshot `snapshot` back: `on_block(offset, block)` is called
    /// for every non-zero block, each exactly `volblocksize` bytes, at strictly increasing
    /// multiples of `volblocksize` below `volsize`. An error from `on_block` stops the
    /// read-back (and leaves the session out of step).
    pub fn read_back(
        &mut self,
        root: &proto::DatasetName,
        snapshot: &proto::SnapshotName,
        volblocksize: u64,
        volsize: u64,
        on_block: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
    ) -> Result<ReadBackSummary> {
        let what = format!("reading back {snapshot}");
        proto::check_volblocksize(volblocksize)
            .map_err(|e| Error::State(format!("{what}: {e}")))?;
        if volsize == 0 || !volsize.is_multiple_of(volblocksize) {
            return Err(Error::State(format!(
                "{what}: volsize {volsize} is not a non-zero multiple of volblocksize {volblocksize}"
            )));
        }
        let request = proto::Request::ReadBack(proto::ReadBackRequest {
            root: root.clone(),
            snapshot: snapshot.clone(),
            volblocksize,
        });
        match self.request(&request)? {
            proto::Reply::ReadBackReady => {}
            proto::Reply::Error(e) => return Err(agent_error(&what, &e)),
            other => return Err(unexpected("a read-back request", &other)),
        }
        let mut blocks = 0u64;
        // The lowest offset the next block may have.
        let mut next = 0u64;
        loop {
            let (kind, payload) = self.read_stream_frame("block frame")?;
            match kind {
                proto::FrameKind::Block => {
                    let (offset, data) = proto::parse_block_frame(payload)
                        .map_err(|e| Error::Receiver(format!("{what}: {e}")))?;
                    if data.len() as u64 != volblocksize {
                        return Err(Error::Security(format!(
                            "{what}: the receiver sent a block of {} bytes, the volume's are {volblocksize}",
                            data.len()
                        )));
                    }
                    if !offset.is_multiple_of(volblocksize) {
                        return Err(Error::Security(format!(
                            "{what}: the receiver sent a block at offset {offset}, not a multiple of {volblocksize}"
                        )));
                    }
                    if offset < next {
                        return Err(Error::Security(format!(
                            "{what}: the receiver sent the block at offset {offset} after the one at {}: out of order",
                            next - volblocksize
                        )));
                    }
                    if offset >= volsize {
                        return Err(Error::Security(format!(
                            "{what}: the receiver sent a block at offset {offset}, beyond the volume's {volsize} bytes"
                        )));
                    }
                    next = offset + volblocksize;
                    blocks += 1;
                    on_block(offset, data)?;
                }
                proto::FrameKind::Reply => {
                    let reply = proto::decode_reply(payload)
                        .map_err(|e| Error::Receiver(format!("{what}: bad reply: {e}")))?;
                    return match reply {
                        proto::Reply::ReadBackDone { blocks: b, bytes } => {
                            if b != blocks || bytes != blocks * volblocksize {
                                return Err(Error::Security(format!(
                                    "{what}: the receiver says it sent {b} blocks ({bytes} bytes), {blocks} arrived"
                                )));
                            }
                            Ok(ReadBackSummary { blocks, bytes })
                        }
                        proto::Reply::Error(e) => Err(agent_error(&what, &e)),
                        other => Err(unexpected("inside a read-back", &other)),
                    };
                }
                other => {
                    return Err(Error::Receiver(format!(
                        "{what}: unexpected {} frame",
                        other.name()
                    )))
                }
            }
        }
    }
}
