//! One session with the dom0 driver: hello, then requests until the driver closes its side.
//! Knows nothing about processes; `zfs` is behind the [`Zfs`] trait.
//! A receive or abort first takes the receive lock (`lock`).

use std::fmt;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use qzb_protocol::{
    decode_resume_token, expect_hello, read_frame, read_request, send_hello, truncate_text,
    write_reply, AbortRequest, ErrorClass, ErrorReply, FrameKind, InventoryRequest, ProtocolError,
    ReceiveFailure, ReceiveMode, ReceiveRequest, ReceiveResult, Reply, Request, Role,
    StreamVerifier, DATA_PREFIX_LEN, MAX_MESSAGE_LEN, MAX_ZFS_STDERR_LEN,
};

use crate::classify::classify_zfs_stderr;
use crate::lock::{acquire_lock, holder_text, AcquireError};
use crate::zfs::{ReceiveArgs, ReceiveProcess, Zfs, ZfsError};

/// Where the receive lock lives by default.
pub const DEFAULT_LOCK_PATH: &str = "/run/qubes-zfs-backup/receive.lock";

#[derive(Debug, Clone)]
pub struct Config {
    /// Exclusive lock held during a receive or abort: one at a time per qube.
    pub lock_path: PathBuf,
    /// How long to wait for another receive to finish before refusing with `Busy`.
    pub lock_wait: Duration,
    /// Pass `-o` options on resume streams too (see `zfs::receive_argv`).
    pub properties_on_resume: bool,
    /// Where the metadata filesystems holding blobs are mounted (see `blobs`); `None` refuses
    /// every blob request.
    pub meta_base: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            lock_path: PathBuf::from(DEFAULT_LOCK_PATH),
            lock_wait: Duration::from_secs(30),
            properties_on_resume: true,
            meta_base: Some(PathBuf::from(crate::blobs::DEFAULT_META_BASE)),
        }
    }
}

/// Why a session ended badly. `Display` is the message for the log.
#[derive(Debug)]
pub enum AgentError {
    /// The hello exchange or the stream of requests broke.
    Protocol(ProtocolError),
    /// A receive failed after streaming began (reported to the driver if it was still there).
    ReceiveFailed { class: ErrorClass, message: String },
    /// Storing a blob failed after its data began (reported to the driver if it was still
    /// there).
    BlobFailed { class: ErrorClass, message: String },
}

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentError::Protocol(e) => write!(f, "{e}"),
            AgentError::ReceiveFailed { class, message } => {
                write!(f, "receive failed ({class}): {message}")
            }
            AgentError::BlobFailed { class, message } => {
                write!(f, "storing a blob failed ({class}): {message}")
            }
        }
    }
}

impl std::error::Error for AgentError {}

impl From<ProtocolError> for AgentError {
    fn from(e: ProtocolError) -> Self {
        AgentError::Protocol(e)
    }
}

pub(crate) fn failure(class: ErrorClass, message: impl AsRef<str>) -> ReceiveFailure {
    ReceiveFailure {
        class,
        message: truncate_text(message.as_ref(), MAX_MESSAGE_LEN),
        zfs_stderr: String::new(),
        resume_token: None,
    }
}

pub(crate) fn error_reply(class: ErrorClass, message: impl AsRef<str>) -> Reply {
    Reply::Error(ErrorReply {
        class,
        message: truncate_text(message.as_ref(), MAX_MESSAGE_LEN),
    })
}

fn zfs_failure(context: &str, e: &ZfsError) -> ReceiveFailure {
    ReceiveFailure {
        class: classify_zfs_stderr(&e.stderr),
        message: truncate_text(&format!("{context}: {e}"), MAX_MESSAGE_LEN),
        zfs_stderr: truncate_text(&e.stderr, MAX_ZFS_STDERR_LEN),
        resume_token: None,
    }
}

/// Serves one qrexec call. Returns `Ok` when the driver ended the session cleanly.
pub fn serve<R: Read + Send, W: Write>(
    config: &Config,
    zfs: &dyn Zfs,
    mut reader: R,
    mut writer: W,
) -> Result<(), AgentError> {
    send_hello(&mut writer, Role::Receiver)?;
    expect_hello(&mut reader, Role::Driver)?;
    let mut buf = Vec::new();
    loop {
        let request = match read_request(&mut reader, &mut buf) {
            Ok(None) => return Ok(()),
            Ok(Some(request)) => request,
            // The frame was read whole, so the session is still in step: refuse and go on.
            Err(e @ (ProtocolError::Decode(_) | ProtocolError::InvalidMessage(_))) => {
                write_reply(
                    &mut writer,
                    &error_reply(ErrorClass::InvalidRequest, e.to_string()),
                )?;
                continue;
            }
            Err(e) => {
                // Best effort: the peer may be gone already.
                let _ = write_reply(
                    &mut writer,
                    &error_reply(ErrorClass::ProtocolViolation, e.to_string()),
                );
                return Err(e.into());
            }
        };
        match request {
            Request::Inventory(req) => write_reply(&mut writer, &inventory(zfs, &req))?,
            Request::Abort(req) => {
                let reply = abort(config, zfs, &req, &mut writer)?;
                write_reply(&mut writer, &reply)?
            }
            Request::Receive(req) => {
                receive(config, zfs, &req, &mut reader, &mut writer)?;
            }
            Request::PutBlob(req) => {
                crate::blobs::put_blob(config, zfs, &req, &mut reader, &mut writer)?
            }
            Request::GetBlob(req) => crate::blobs::get_blob(config, zfs, &req, &mut writer)?,
            Request::ListBlobs(req) => {
                write_reply(&mut writer, &crate::blobs::list_blobs(config, zfs, &req))?
            }
            Request::ReadBack(req) => crate::readback::read_back(zfs, &req, &mut writer)?,
        }
    }
}

fn inventory(zfs: &dyn Zfs, req: &InventoryRequest) -> Reply {
    match zfs.dataset_exists(&req.root) {
        Ok(true) => {}
        Ok(false) => {
            return error_reply(
                ErrorClass::NotFound,
                format!("receiver root {} does not exist", req.root),
            )
        }
        Err(e) => return error_reply(ErrorClass::ZfsOther, e.to_string()),
    }
    match zfs.inventory(&req.root) {
        Ok(inv) => {
            let reply = Reply::Inventory(inv);
            match reply.validate() {
                Ok(()) => reply,
                Err(e) => error_reply(ErrorClass::Internal, format!("inventory unusable: {e}")),
            }
        }
        Err(e) => error_reply(classify_zfs_stderr(&e.stderr), e.to_string()),
    }
}

fn abort<W: Write>(
    config: &Config,
    zfs: &dyn Zfs,
    req: &AbortRequest,
    writer: &mut W,
) -> Result<Reply, AgentError> {
    let what = holder_text("a partial-state abort of", req.dataset.as_str());
    let mut tell = |holder: String| write_reply(writer, &Reply::Waiting { holder });
    let _lock = match acquire_lock(config, &what, &mut tell) {
        Ok(lock) => lock,
        Err(AcquireError::Refused(f)) => return Ok(error_reply(f.class, f.message)),
        Err(AcquireError::Gone(e)) => return Err(e.into()),
    };
    Ok(abort_locked(zfs, req))
}

fn abort_locked(zfs: &dyn Zfs, req: &AbortRequest) -> Reply {
    match zfs.resume_token(&req.dataset) {
        Ok(Some(_)) => {}
        Ok(None) => {
            return error_reply(
                ErrorClass::NotFound,
                format!("{} has no partial receive state to abort", req.dataset),
            )
        }
        Err(e) => return error_reply(classify_zfs_stderr(&e.stderr), e.to_string()),
    }
    match zfs.abort_receive(&req.dataset) {
        Ok(()) => Reply::Aborted {
            dataset: req.dataset.clone(),
        },
        Err(e) => error_reply(classify_zfs_stderr(&e.stderr), e.to_string()),
    }
}

/// Full and clone streams create the destination; incremental and resume streams need it.
fn creates_new_dataset(req: &ReceiveRequest) -> bool {
    match req.mode {
        ReceiveMode::Full => true,
        ReceiveMode::Incremental { .. } => req.origin.is_some(),
        ReceiveMode::Resume { .. } => false,
    }
}

/// The destination holds an interrupted receive: the driver must resume it (its token goes
/// back) or abort it, never start another stream over it.
fn partial_state_present(req: &ReceiveRequest, token: String) -> ReceiveFailure {
    ReceiveFailure {
        resume_token: Some(token),
        ..failure(
            ErrorClass::PartialStatePresent,
            format!(
                "{} holds partial state of an interrupted receive: resume or abort it",
                req.destination
            ),
        )
    }
}

/// Checks everything that can be checked before `zfs receive` starts, so the common mistakes
/// get a precise answer instead of a libzfs message.
fn precheck(zfs: &dyn Zfs, req: &ReceiveRequest) -> Result<(), ReceiveFailure> {
    let zfs_err = |e: ZfsError| zfs_failure("checking the receiver", &e);
    if !zfs.dataset_exists(&req.root).map_err(zfs_err)? {
        return Err(failure(
            ErrorClass::NotFound,
            format!("receiver root {} does not exist", req.root),
        ));
    }
    if let Some(guid) = zfs.snapshot_guid(&req.snapshot).map_err(zfs_err)? {
        return Err(failure(
            ErrorClass::DestinationExists,
            format!(
                "{} already exists on the receiver (guid {guid})",
                req.snapshot
            ),
        ));
    }
    if creates_new_dataset(req) && zfs.dataset_exists(&req.destination).map_err(zfs_err)? {
        let partial = zfs.resume_token(&req.destination).map_err(zfs_err)?;
        return Err(match partial {
            Some(token) => partial_state_present(req, token),
            None => failure(
                ErrorClass::DestinationExists,
                format!("{} already exists on the receiver", req.destination),
            ),
        });
    }
    if let ReceiveMode::Incremental { from, from_guid } = &req.mode {
        match zfs.snapshot_guid(from).map_err(zfs_err)? {
            None => {
                return Err(failure(
                    ErrorClass::IncrementalSourceMismatch,
                    format!("incremental source {from} does not exist on the receiver"),
                ))
            }
            Some(guid) if guid != *from_guid => {
                return Err(failure(
                    ErrorClass::IncrementalSourceMismatch,
                    format!(
                        "incremental source {from} has guid {guid} on the receiver, expected {from_guid}"
                    ),
                ))
            }
            Some(_) => {}
        }
        if req.origin.is_none() {
            let inv = zfs.inventory(&req.destination).map_err(zfs_err)?;
            let dest = inv.datasets.iter().find(|d| d.name == req.destination);
            if let Some(token) = dest.and_then(|d| d.receive_resume_token.clone()) {
                return Err(partial_state_present(req, token));
            }
            let newest = dest.and_then(|d| d.snapshots.last());
            if let Some(newest) = newest.filter(|s| s.name != *from) {
                return Err(failure(
                    ErrorClass::DestinationExists,
                    format!(
                        "newer snapshots exist on the receiver after {from} (newest: {})",
                        newest.name
                    ),
                ));
            }
        }
    }
    if let ReceiveMode::Resume { token } = &req.mode {
        let current = zfs.resume_token(&req.destination).map_err(zfs_err)?;
        match current {
            None => {
                return Err(failure(
                    ErrorClass::ResumeTokenMismatch,
                    format!("{} has no partial receive state to resume", req.destination),
                ))
            }
            Some(current) if current != *token => {
                return Err(ReceiveFailure {
                    resume_token: Some(current),
                    ..failure(
                        ErrorClass::ResumeTokenMismatch,
                        format!(
                            "{} holds a different resume token than the one sent",
                            req.destination
                        ),
                    )
                })
            }
            Some(_) => {}
        }
        match decode_resume_token(token) {
            Ok(decoded) if decoded.toguid == req.guid => {}
            Ok(decoded) => {
                return Err(failure(
                    ErrorClass::ResumeTokenMismatch,
                    format!(
                        "resume token continues guid {}, request expects guid {}",
                        decoded.toguid, req.guid
                    ),
                ))
            }
            Err(e) => return Err(failure(ErrorClass::ResumeTokenMismatch, e.to_string())),
        }
    }
    Ok(())
}

/// Creates the datasets between the root and the destination that do not exist yet, one level
/// at a time, unmountable and unmounted. (`zfs create -p` would mount the ancestors it
/// creates and ignore `-o` for them.)
fn create_parents(zfs: &dyn Zfs, req: &ReceiveRequest) -> Result<(), ReceiveFailure> {
    let parents = req
        .destination
        .intermediates_below(&req.root)
        .unwrap_or_default();
    for parent in parents {
        let exists = zfs
            .dataset_exists(&parent)
            .map_err(|e| zfs_failure("checking parent", &e))?;
        if !exists {
            zfs.create_unmountable(&parent)
                .map_err(|e| zfs_failure(&format!("creating parent {parent}"), &e))?;
        }
    }
    Ok(())
}

/// How feeding the stream ended.
enum Fed {
    /// End frame verified and every byte written.
    Complete { bytes: u64 },
    /// We stopped: the stream failed a check, or the caller went away.
    Stopped { class: ErrorClass, message: String },
    /// `zfs receive` stopped reading (it exited); its stderr says why.
    ZfsStopped { message: String },
}

fn stream_error_class(e: &ProtocolError) -> ErrorClass {
    match e {
        ProtocolError::Io(_) | ProtocolError::Truncated { .. } => ErrorClass::StreamInterrupted,
        ProtocolError::UnexpectedFrame { .. } => ErrorClass::ProtocolViolation,
        _ => ErrorClass::StreamCorrupt,
    }
}

/// Frame buffers circulating between the reading and the writing thread of [`feed`]: one
/// being read and verified, one held back (written once the next one verified), the rest
/// queued. Each holds at most `MAX_DATA_PAYLOAD`, so the agent's memory is flat whatever the
/// stream size.
const FEED_BUFFERS: usize = 4;

/// What the reading thread of [`feed`] hands to the writing one.
enum Checked {
    /// A verified data frame payload (the data starts at `DATA_PREFIX_LEN`).
    Data(Vec<u8>),
    /// The end frame verified: every data frame has been handed over.
    End {
        bytes: u64,
    },
    Stopped {
        class: ErrorClass,
        message: String,
    },
}

/// Reads frames and verifies them, in order; stops after the end frame or the first problem.
fn read_and_verify<R: Read>(
    reader: &mut R,
    free: &mpsc::Receiver<Vec<u8>>,
    checked: &mpsc::SyncSender<Checked>,
) {
    let mut verifier = StreamVerifier::new();
    // The writer gone (it hit an error) ends the loop at the next hand-over.
    while let Ok(mut buf) = free.recv() {
        let message = match read_frame(reader, &mut buf) {
            Ok(Some(FrameKind::Data)) => match verifier.verify_data(&buf) {
                Ok(_) => Checked::Data(buf),
                Err(e) => Checked::Stopped {
                    class: stream_error_class(&e),
                    message: e.to_string(),
                },
            },
            Ok(Some(FrameKind::End)) => match verifier.verify_end(&buf) {
                Ok(_) => Checked::End {
                    bytes: verifier.bytes(),
                },
                Err(e) => Checked::Stopped {
                    class: stream_error_class(&e),
                    message: e.to_string(),
                },
            },
            Ok(Some(other)) => Checked::Stopped {
                class: ErrorClass::ProtocolViolation,
                message: format!("unexpected {} frame inside a data stream", other.name()),
            },
            Ok(None) => Checked::Stopped {
                class: ErrorClass::StreamInterrupted,
                message: format!(
                    "the caller closed the stream before the end frame, after {} bytes",
                    verifier.bytes()
                ),
            },
            Err(e) => Checked::Stopped {
                class: stream_error_class(&e),
                message: format!("{e} (after {} verified bytes)", verifier.bytes()),
            },
        };
        let last = !matches!(message, Checked::Data(_));
        if checked.send(message).is_err() || last {
            return;
        }
    }
}

/// Feeds verified data to `zfs receive`. A reading thread reads and verifies frames while
/// this thread writes, so hashing overlaps with `zfs receive`. The most recent verified data
/// frame is held back until the next frame verified, and the last one is written only after
/// the end frame verified, so `zfs receive` never reads the stream's final record (which
/// commits the snapshot) before the whole stream checked out.
fn feed<R: Read + Send>(reader: &mut R, process: &mut dyn ReceiveProcess) -> Fed {
    let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
    let (checked_tx, checked_rx) = mpsc::sync_channel::<Checked>(FEED_BUFFERS);
    for _ in 0..FEED_BUFFERS {
        free_tx.send(Vec::new()).expect("receiver alive");
    }
    thread::scope(|scope| {
        scope.spawn(move || read_and_verify(reader, &free_rx, &checked_tx));
        let mut held: Option<Vec<u8>> = None;
        let fed = loop {
            let Ok(message) = checked_rx.recv() else {
                // Only a panic in the reading thread ends it without a last message; the
                // scope re-raises it.
                break Fed::Stopped {
                    class: ErrorClass::ProtocolViolation,
                    message: "the stream reader stopped unexpectedly".into(),
                };
            };
            let (next, end) = match message {
                Checked::Data(buf) => (Some(buf), None),
                Checked::End { bytes } => (None, Some(bytes)),
                Checked::Stopped { class, message } => break Fed::Stopped { class, message },
            };
            if let Some(data) = held.take() {
                if let Err(e) = process.stdin().write_all(&data[DATA_PREFIX_LEN..]) {
                    break Fed::ZfsStopped {
                        message: format!("zfs receive stopped reading: {e}"),
                    };
                }
                let _ = free_tx.send(data);
            }
            held = next;
            if let Some(bytes) = end {
                if let Err(e) = process.stdin().flush() {
                    break Fed::ZfsStopped {
                        message: format!("zfs receive stopped reading: {e}"),
                    };
                }
                break Fed::Complete { bytes };
            }
        };
        // Unblock the reading thread if it waits for a buffer or for room in the queue. If
        // it is inside a read, the scope waits until that frame arrives: after `zfs receive`
        // stopped, the reply (and the lock's release) waits for the driver's next bytes or
        // EOF. The driver cannot tell the difference: it learns of the failure at its next
        // write either way (it reads no replies while it streams).
        drop(checked_rx);
        drop(free_tx);
        fed
    })
}

/// Handles a receive request. Refusals before `ReceiveReady` leave the session usable; a
/// failure after it ends the session with `AgentError::ReceiveFailed`.
fn receive<R: Read + Send, W: Write>(
    config: &Config,
    zfs: &dyn Zfs,
    req: &ReceiveRequest,
    reader: &mut R,
    writer: &mut W,
) -> Result<(), AgentError> {
    let what = holder_text("a receive of", req.snapshot.as_str());
    let mut tell = |holder: String| write_reply(writer, &Reply::Waiting { holder });
    let lock = match acquire_lock(config, &what, &mut tell) {
        Ok(lock) => lock,
        Err(AcquireError::Refused(f)) => {
            write_reply(writer, &Reply::Receive(ReceiveResult::Err(f)))?;
            return Ok(());
        }
        Err(AcquireError::Gone(e)) => return Err(e.into()),
    };
    let started = precheck(zfs, req)
        .and_then(|()| {
            if creates_new_dataset(req) {
                create_parents(zfs, req)?;
            }
            Ok(())
        })
        .and_then(|()| {
            zfs.start_receive(&ReceiveArgs {
                target: req.snapshot.clone(),
                kind: req.kind,
                origin: req.origin.clone(),
                resuming: matches!(req.mode, ReceiveMode::Resume { .. }),
                properties_on_resume: config.properties_on_resume,
            })
            .map_err(|e| zfs_failure("starting zfs receive", &e))
        });
    let mut process = match started {
        Ok(process) => process,
        Err(f) => {
            write_reply(writer, &Reply::Receive(ReceiveResult::Err(f)))?;
            return Ok(());
        }
    };
    if let Err(e) = write_reply(writer, &Reply::ReceiveReady) {
        // Nothing was fed: zfs receive sees an empty stream and leaves no new state.
        let _ = process.finish();
        return Err(e.into());
    }

    let fed = feed(reader, process.as_mut());
    let exit = process.finish();
    let result = match fed {
        Fed::Complete { bytes } if exit.success => match zfs.snapshot_guid(&req.snapshot) {
            Ok(Some(guid)) if guid == req.guid => ReceiveResult::Ok {
                snapshot: req.snapshot.clone(),
                guid,
                bytes,
            },
            Ok(Some(guid)) => ReceiveResult::Err(failure(
                ErrorClass::GuidMismatch,
                format!(
                    "{} was received with guid {guid}, expected {}",
                    req.snapshot, req.guid
                ),
            )),
            Ok(None) => ReceiveResult::Err(failure(
                ErrorClass::ZfsOther,
                format!(
                    "zfs receive succeeded but {} does not exist afterwards",
                    req.snapshot
                ),
            )),
            Err(e) => ReceiveResult::Err(zfs_failure("reading the received guid", &e)),
        },
        Fed::Complete { .. } | Fed::ZfsStopped { .. } => {
            let message = match &fed {
                Fed::ZfsStopped { message } => format!("{message}; zfs receive {}", exit.status),
                _ => format!("zfs receive {}", exit.status),
            };
            ReceiveResult::Err(ReceiveFailure {
                class: classify_zfs_stderr(&exit.stderr),
                message: truncate_text(&message, MAX_MESSAGE_LEN),
                zfs_stderr: truncate_text(&exit.stderr, MAX_ZFS_STDERR_LEN),
                resume_token: None,
            })
        }
        Fed::Stopped { class, message } => ReceiveResult::Err(ReceiveFailure {
            class,
            message: truncate_text(
                &format!("{message}; stopped feeding zfs receive, partial state kept"),
                MAX_MESSAGE_LEN,
            ),
            zfs_stderr: truncate_text(&exit.stderr, MAX_ZFS_STDERR_LEN),
            resume_token: None,
        }),
    };
    let result = match result {
        ok @ ReceiveResult::Ok { .. } => ok,
        ReceiveResult::Err(mut f) => {
            f.resume_token = zfs.resume_token(&req.destination).ok().flatten();
            ReceiveResult::Err(f)
        }
    };
    drop(lock);
    let reply = Reply::Receive(result.clone());
    let written = write_reply(writer, &reply);
    match result {
        ReceiveResult::Ok { .. } => written.map_err(AgentError::from),
        ReceiveResult::Err(f) => Err(AgentError::ReceiveFailed {
            class: f.class,
            message: f.message,
        }),
    }
}
