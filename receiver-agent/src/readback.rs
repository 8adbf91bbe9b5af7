//! Read-back: the agent reads a received zvol snapshot with its own `zfs send -L` (no `-c`,
//! `-e` or `-w`, so every WRITE payload is the plain logical block), parses the stream with the
//! protocol crate's tap (checksums verified), and sends every non-zero `volblocksize` block of
//! the volume's data (object 1) as a block frame, in increasing offset order. dom0 checks the
//! blocks against its MAC'd manifests; this side only has to be faithful and bounded.
//!
//! Memory is flat: one read buffer, the tap's header (and a payload only if it straddles two
//! reads), a buffered writer; no per-block state.

use std::io::{self, BufWriter, Write};

use qzb_protocol::manifest::{OBJECT_TYPE_ZVOL, OBJSET_TYPE_ZVOL, ZVOL_DATA_OBJECT};
use qzb_protocol::zstream::{
    feature, Begin, End, EndKind, FreeObjects, HeaderType, Object, Redact, Sink, Spill, Tap,
    Write as WriteRecord, WriteEmbedded,
};
use qzb_protocol::{
    truncate_text, write_block_frame, write_reply, ErrorClass, ProtocolError, ReadBackRequest,
    Reply, MAX_ZFS_STDERR_LEN,
};

use crate::classify::classify_zfs_stderr;
use crate::serve::{error_reply, AgentError};
use crate::zfs::Zfs;

/// How much of `zfs send`'s output is read at once.
const READ_CHUNK: usize = 1 << 20;
/// Buffer between the block frames and the driver.
const WRITE_BUFFER: usize = 1 << 20;

/// Where the stream is with respect to object 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Object1 {
    NotSeen,
    Current,
    Done,
}

/// Why the sink stopped.
#[derive(Debug)]
pub enum SinkError {
    /// The stream is not what a zvol snapshot's full stream must be.
    Refused(String),
    /// Writing a block frame failed: the driver is gone.
    Io(io::Error),
}

/// A tap sink that sends object 1's non-zero blocks as block frames. The first error is kept
/// and everything after it ignored (the `Sink` methods cannot return one).
pub struct BlockSink<W> {
    volblocksize: u64,
    out: W,
    object1: Object1,
    begun: bool,
    ended: bool,
    /// The lowest offset the next block may have.
    next: u64,
    blocks: u64,
    bytes: u64,
    error: Option<SinkError>,
}

impl<W: Write> BlockSink<W> {
    /// `volblocksize` must already be checked (a power of two in 512 ..= 1 MiB).
    pub fn new(volblocksize: u64, out: W) -> Self {
        BlockSink {
            volblocksize,
            out,
            object1: Object1::NotSeen,
            begun: false,
            ended: false,
            next: 0,
            blocks: 0,
            bytes: 0,
            error: None,
        }
    }

    pub fn error(&self) -> Option<&SinkError> {
        self.error.as_ref()
    }

    /// Block frames sent, and their bytes.
    pub fn sent(&self) -> (u64, u64) {
        (self.blocks, self.bytes)
    }

    fn refuse(&mut self, message: String) {
        if self.error.is_none() {
            self.error = Some(SinkError::Refused(message));
        }
    }

    /// A record of `object`: a later object than 1 closes object 1.
    fn other_object(&mut self, object: u64) {
        if object > ZVOL_DATA_OBJECT && self.object1 == Object1::Current {
            self.object1 = Object1::Done;
        }
    }

    /// After the stream: the writer, or an error unless it was one complete sub-stream
    /// carrying object 1. After an error the writer is flushed (best effort) before it is
    /// dropped, so the frames already made stay in order before the reply.
    pub fn finish(mut self) -> Result<W, SinkError> {
        if let Some(e) = self.error.take() {
            let _ = self.out.flush();
            return Err(e);
        }
        let refused = if !self.ended {
            Some("the stream ended without its END record")
        } else if self.object1 == Object1::NotSeen {
            Some("the stream has no zvol data object (object 1)")
        } else {
            None
        };
        if let Some(m) = refused {
            let _ = self.out.flush();
            return Err(SinkError::Refused(m.into()));
        }
        Ok(self.out)
    }
}

impl<W: Write> Sink for BlockSink<W> {
    fn on_begin(&mut self, begin: &Begin<'_>) {
        if self.error.is_some() {
            return;
        }
        if begin.header_type == HeaderType::Compound {
            return self.refuse("a compound stream, not one snapshot's".into());
        }
        if self.begun {
            return self.refuse("more than one sub-stream".into());
        }
        self.begun = true;
        if begin.objset_type != OBJSET_TYPE_ZVOL {
            return self.refuse(format!(
                "not a zvol's stream (objset type {}, a zvol's is {OBJSET_TYPE_ZVOL})",
                begin.objset_type
            ));
        }
        if begin.featureflags & feature::RAW != 0 {
            return self.refuse("a raw (encrypted) stream".into());
        }
        if begin.featureflags & feature::RESUMING != 0 || begin.fromguid != 0 {
            self.refuse("not a full stream".into());
        }
    }

    fn on_object(&mut self, o: &Object<'_>) {
        if self.error.is_some() {
            return;
        }
        if o.object != ZVOL_DATA_OBJECT {
            return self.other_object(o.object);
        }
        if self.object1 != Object1::NotSeen {
            return self.refuse("object 1 described twice".into());
        }
        if o.object_type != OBJECT_TYPE_ZVOL {
            return self.refuse(format!(
                "object 1 has type {}, a zvol's data has {OBJECT_TYPE_ZVOL}",
                o.object_type
            ));
        }
        if u64::from(o.blksz) != self.volblocksize {
            return self.refuse(format!(
                "the volume's block size is {}, not the {} asked for",
                o.blksz, self.volblocksize
            ));
        }
        self.object1 = Object1::Current;
    }

    fn on_freeobjects(&mut self, f: &FreeObjects) {
        let covers_1 = f.firstobj <= ZVOL_DATA_OBJECT
            && f.firstobj.saturating_add(f.numobjs) > ZVOL_DATA_OBJECT;
        if covers_1 && self.object1 != Object1::NotSeen {
            self.refuse("object 1 freed after its description".into());
        } else if f.firstobj > ZVOL_DATA_OBJECT {
            self.other_object(f.firstobj);
        }
    }

    fn on_write(&mut self, w: &WriteRecord<'_>) {
        if self.error.is_some() {
            return;
        }
        if w.object != ZVOL_DATA_OBJECT {
            return self.other_object(w.object);
        }
        if self.object1 != Object1::Current {
            return self.refuse(format!(
                "a WRITE of object 1 at {} outside its description",
                w.offset
            ));
        }
        if !w.is_plain() {
            return self.refuse("a compressed WRITE (zfs send -c)".into());
        }
        let bs = self.volblocksize;
        if w.payload.len() as u64 != w.logical_size
            || !w.logical_size.is_multiple_of(bs)
            || !w.offset.is_multiple_of(bs)
        {
            return self.refuse(format!(
                "a WRITE of {} bytes at {} is not whole {bs}-byte blocks",
                w.logical_size, w.offset
            ));
        }
        if w.offset < self.next {
            return self.refuse(format!(
                "a WRITE at {} comes after data up to {}: out of order",
                w.offset, self.next
            ));
        }
        let mut offset = w.offset;
        for block in w.payload.chunks(bs as usize) {
            if block.iter().any(|&b| b != 0) {
                if let Err(e) = write_block_frame(&mut self.out, offset, block) {
                    self.error = Some(SinkError::Io(match e {
                        ProtocolError::Io(e) => e,
                        other => io::Error::other(other.to_string()),
                    }));
                    return;
                }
                self.blocks += 1;
                self.bytes += bs;
            }
            offset = offset.saturating_add(bs);
        }
        self.next = offset;
    }

    fn on_spill(&mut self, s: &Spill<'_>) {
        if s.object == ZVOL_DATA_OBJECT {
            self.refuse("a SPILL record for object 1".into());
        } else {
            self.other_object(s.object);
        }
    }

    fn on_write_embedded(&mut self, w: &WriteEmbedded<'_>) {
        if w.object == ZVOL_DATA_OBJECT {
            self.refuse("an embedded WRITE for object 1 (zfs send -e)".into());
        } else {
            self.other_object(w.object);
        }
    }

    fn on_redact(&mut self, r: &Redact) {
        if r.object == ZVOL_DATA_OBJECT {
            self.refuse("a REDACT record for object 1".into());
        } else {
            self.other_object(r.object);
        }
    }

    fn on_free(&mut self, f: &qzb_protocol::zstream::Free) {
        self.other_object(f.object);
    }

    fn on_end(&mut self, end: &End) {
        if end.kind == EndKind::Substream {
            self.ended = true;
            if self.object1 == Object1::Current {
                self.object1 = Object1::Done;
            }
        }
    }
}

/// Why streaming the blocks stopped.
enum Streamed {
    /// The driver is gone (writing failed).
    Gone(io::Error),
    /// The stream was refused or could not be read: the reply to send.
    Failed(ErrorClass, String),
}

/// Parses the agent's own `zfs send` and writes the block frames (buffered, flushed at the
/// end, also after a failure so that the frames before it arrive in order before the reply).
fn stream_blocks<W: Write>(
    req: &ReadBackRequest,
    process: &mut dyn crate::zfs::SendProcess,
    writer: &mut W,
) -> Result<(u64, u64), Streamed> {
    let mut tap = Tap::new(BlockSink::new(
        req.volblocksize,
        BufWriter::with_capacity(WRITE_BUFFER, writer),
    ));
    let mut buf = vec![0u8; READ_CHUNK];
    let unusable = |e: qzb_protocol::zstream::StreamError| {
        Streamed::Failed(
            ErrorClass::ReadBackRefused,
            format!("the stream of {} is unusable: {e}", req.snapshot),
        )
    };
    let mut failure: Option<Streamed> = None;
    loop {
        let n = match process.stdout().read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                failure = Some(Streamed::Failed(
                    ErrorClass::ZfsOther,
                    format!("reading zfs send of {}: {e}", req.snapshot),
                ));
                break;
            }
        };
        if let Err(e) = tap.feed(&buf[..n]) {
            failure = Some(unusable(e));
            break;
        }
        if tap.sink().error().is_some() {
            break;
        }
    }
    if failure.is_none() && tap.sink().error().is_none() {
        if let Err(e) = tap.finish() {
            failure = Some(unusable(e));
        }
    }
    let sink = tap.into_sink();
    let (blocks, bytes) = sink.sent();
    let result = match sink.finish() {
        Err(SinkError::Io(e)) => return Err(Streamed::Gone(e)),
        Err(SinkError::Refused(m)) => Err(failure.unwrap_or_else(|| {
            Streamed::Failed(
                ErrorClass::ReadBackRefused,
                format!("{} cannot be read back: {m}", req.snapshot),
            )
        })),
        Ok(mut out) => {
            out.flush().map_err(Streamed::Gone)?;
            match failure {
                Some(f) => Err(f),
                None => Ok((blocks, bytes)),
            }
        }
    };
    result
}

/// Handles `ReadBack`. A refusal before `ReadBackReady` and an `Error` reply after it both
/// leave the session usable (the agent ends the block frames with a reply either way); only a
/// broken connection ends it.
pub(crate) fn read_back<W: Write>(
    zfs: &dyn Zfs,
    req: &ReadBackRequest,
    writer: &mut W,
) -> Result<(), AgentError> {
    match zfs.snapshot_guid(&req.snapshot) {
        Ok(Some(_)) => {}
        Ok(None) => {
            let reply = error_reply(
                ErrorClass::NotFound,
                format!("snapshot {} does not exist on the receiver", req.snapshot),
            );
            write_reply(writer, &reply)?;
            return Ok(());
        }
        Err(e) => {
            write_reply(
                writer,
                &error_reply(classify_zfs_stderr(&e.stderr), e.to_string()),
            )?;
            return Ok(());
        }
    }
    let mut process = match zfs.start_send(&req.snapshot) {
        Ok(p) => p,
        Err(e) => {
            write_reply(
                writer,
                &error_reply(classify_zfs_stderr(&e.stderr), e.to_string()),
            )?;
            return Ok(());
        }
    };
    if let Err(e) = write_reply(writer, &Reply::ReadBackReady) {
        process.kill();
        let _ = process.finish();
        return Err(e.into());
    }

    let streamed = stream_blocks(req, process.as_mut(), &mut *writer);
    let (blocks, bytes) = match streamed {
        Ok(sent) => sent,
        Err(Streamed::Gone(e)) => {
            process.kill();
            let _ = process.finish();
            return Err(ProtocolError::Io(e).into());
        }
        Err(Streamed::Failed(class, mut message)) => {
            process.kill();
            // A stream cut short is often zfs send's own failure: say what it said.
            let exit = process.finish();
            if !exit.stderr.trim().is_empty() {
                message = format!("{message}; zfs send said: {}", exit.stderr.trim());
            }
            write_reply(writer, &error_reply(class, message))?;
            return Ok(());
        }
    };
    let exit = process.finish();
    if !exit.success {
        let stderr = truncate_text(exit.stderr.trim(), MAX_ZFS_STDERR_LEN);
        write_reply(
            writer,
            &error_reply(
                classify_zfs_stderr(&exit.stderr),
                format!(
                    "zfs send of {} failed ({}): {stderr}",
                    req.snapshot, exit.status
                ),
            ),
        )?;
        return Ok(());
    }
    write_reply(writer, &Reply::ReadBackDone { blocks, bytes })?;
    Ok(())
}
