//! The stream tap of `send`: dom0 parses its own `zfs send` of a zvol as it frames it and
//! writes the delta manifest of every snapshot in the stream into the spool, a directory of the
//! metadata dir, before the chunk goes to the receiver. The records, the manifest format and
//! their rules live in the protocol crate (`zstream`, `manifest`); this file gives them files.
//!
//! Spool layout, per volume dataset (`<spool>/<dataset-id>/`): `<guid>.body` (entries, flushed
//! before each chunk is forwarded, so a resumed send can continue it) and `<guid>.head` (the
//! header's encoding followed by its 32-byte MAC, written when the snapshot's END passed). A
//! finished pair stays until it is stored on the medium.

use crate::state::chains::name_id;
use crate::state::write_atomic;
use qzb_protocol::manifest::{
    ChainStart, Finished, ManifestHeader, Resume, SnapshotFacts, StreamManifests, Volume,
};
use qzb_protocol::zstream::Tap;
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// The spool of one volume dataset.
#[derive(Clone, Debug)]
pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    pub fn new(spool_root: &Path, dataset: &str) -> Self {
        Spool {
            dir: spool_root.join(name_id(dataset)),
        }
    }

    pub fn body_path(&self, guid: u64) -> PathBuf {
        self.dir.join(format!("{guid:016x}.body"))
    }

    pub fn head_path(&self, guid: u64) -> PathBuf {
        self.dir.join(format!("{guid:016x}.head"))
    }

    /// Finished manifests waiting to be stored on the medium: (header bytes + MAC) files, in
    /// chain order (by sequence number, read from the unverified header only to sort; the
    /// caller verifies each before use).
    pub fn finished(&self) -> io::Result<Vec<(u64, PathBuf)>> {
        let mut out = Vec::new();
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        for e in entries {
            let path = e?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(hex) = name.strip_suffix(".head") else {
                continue;
            };
            if let Ok(guid) = u64::from_str_radix(hex, 16) {
                out.push((guid, path));
            }
        }
        Ok(out)
    }

    /// Removes a stored manifest's files.
    pub fn remove(&self, guid: u64) -> io::Result<()> {
        for p in [self.head_path(guid), self.body_path(guid)] {
            match fs::remove_file(p) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }
}

/// Writes a finished header (encoding ‖ MAC) to its spool file, durably.
pub fn write_head(path: &Path, header: &ManifestHeader, mac: &[u8; 32]) -> io::Result<()> {
    let mut bytes = header.encode();
    bytes.extend_from_slice(mac);
    write_atomic(path, &bytes, 0o600)
}

/// Splits a stored head into the header's encoding and its MAC (no parsing: the caller
/// verifies).
pub fn split_head(bytes: &[u8]) -> Option<(&[u8], [u8; 32])> {
    let at = bytes.len().checked_sub(32)?;
    let (header, mac) = bytes.split_at(at);
    Some((header, mac.try_into().ok()?))
}

/// The facts `StreamManifests` needs: each snapshot's volsize, and a body file per snapshot.
struct Facts {
    spool: Spool,
    volsizes: BTreeMap<String, u64>,
    /// Guids whose body this stream writes.
    guids: Vec<u64>,
}

impl SnapshotFacts for Facts {
    fn volsize(&self, toname: &[u8]) -> Option<u64> {
        let name = std::str::from_utf8(toname).ok()?;
        self.volsizes.get(name).copied()
    }

    /// A body from an earlier attempt (a resumed stream reads it through a handle opened
    /// before) moves aside to `.old`, so the new body, which starts with the part of the old
    /// one the resume keeps, is always the one to continue after another interruption.
    fn body_writer(&mut self, toguid: u64) -> io::Result<Box<dyn Write + Send>> {
        fs::create_dir_all(&self.spool.dir)?;
        let path = self.spool.body_path(toguid);
        match fs::rename(&path, old_body(&path)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        self.guids.push(toguid);
        Ok(Box::new(BufWriter::with_capacity(256 * 1024, file)))
    }
}

fn old_body(body: &Path) -> PathBuf {
    body.with_extension("body.old")
}

/// Where a resumed stream continues: the snapshot whose partial manifest body to continue, and
/// the token's object and offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResumeAt {
    pub guid: u64,
    pub object: u64,
    pub offset: u64,
}

/// The tap of one zvol target's stream.
pub struct VolumeTap {
    tap: Tap<StreamManifests<Facts>>,
}

impl VolumeTap {
    /// `volsizes`: the volume size of every snapshot the stream may carry, by full name.
    /// `resume`: for a resumed stream, the guid whose partial body to continue and the token's
    /// object and offset.
    pub fn new(
        spool: Spool,
        volume: Volume,
        key: [u8; 32],
        start: ChainStart,
        volsizes: BTreeMap<String, u64>,
        resume: Option<ResumeAt>,
    ) -> io::Result<Self> {
        let resume = match resume {
            Some(at) => {
                let previous = File::open(spool.body_path(at.guid))?;
                Some(Resume {
                    previous_body: Box::new(io::BufReader::new(previous))
                        as Box<dyn io::Read + Send>,
                    object: at.object,
                    offset: at.offset,
                })
            }
            None => None,
        };
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let facts = Facts {
            spool,
            volsizes,
            guids: Vec::new(),
        };
        Ok(VolumeTap {
            tap: Tap::new(StreamManifests::new(
                volume, key, created, facts, start, resume,
            )),
        })
    }

    /// One chunk of the stream, before it is forwarded: parsed, and every entry it completed
    /// flushed to the spool.
    pub fn observe(&mut self, chunk: &[u8]) -> io::Result<()> {
        self.tap.feed(chunk).map_err(|e| {
            io::Error::other(format!("the stream tap refused dom0's own zfs send: {e}"))
        })?;
        if let Some(e) = self.tap.sink().error() {
            return Err(io::Error::other(format!(
                "the manifest of the stream cannot be built: {e}"
            )));
        }
        self.tap.sink_mut().flush()
    }

    /// After the whole stream went out: every snapshot's header and MAC, in stream order, with
    /// its body and head durable in the spool.
    pub fn finish(self) -> io::Result<Vec<(ManifestHeader, [u8; 32])>> {
        self.tap
            .finish()
            .map_err(|e| io::Error::other(format!("the stream tap: {e}")))?;
        let (finished, facts): (Vec<Finished<Box<dyn Write + Send>>>, Facts) = self
            .tap
            .into_sink()
            .finish()
            .map_err(|e| io::Error::other(format!("the manifest: {e}")))?;
        let mut manifests = Vec::with_capacity(finished.len());
        for f in finished {
            drop(f.body);
            let guid = f.header.snapshot_guid;
            let body = facts.spool.body_path(guid);
            File::open(&body)?.sync_all()?;
            write_head(&facts.spool.head_path(guid), &f.header, &f.mac)?;
            let _ = fs::remove_file(old_body(&body));
            manifests.push((f.header, f.mac));
        }
        if let Ok(d) = File::open(&facts.spool.dir) {
            let _ = d.sync_all();
        }
        Ok(manifests)
    }
}

/// Where a zvol stream's manifests join the volume's chain on this medium, or why the stream
/// cannot have manifests (it is sent anyway, unauthenticated, and `verify` says so).
pub fn chain_start(
    mode: &qzb_protocol::ReceiveMode,
    last: Option<&ManifestHeader>,
    spool: &Spool,
) -> std::result::Result<(ChainStart, Option<ResumeAt>), String> {
    use qzb_protocol::ReceiveMode;
    let after = |parent: u64| {
        match last {
        Some(h) if h.snapshot_guid == parent => Ok(ChainStart::after(h)),
        Some(_) | None => Err(
            "its incremental source has no manifest on this medium (it was sent before authenticated backups, without a key, or another medium holds the chain); the next full send of the volume makes it verifiable"
                .to_owned(),
        ),
    }
    };
    match mode {
        ReceiveMode::Full => Ok((ChainStart::full(), None)),
        ReceiveMode::Incremental { from_guid, .. } => Ok((after(*from_guid)?, None)),
        ReceiveMode::Resume { token } => {
            let t = qzb_protocol::token::decode_resume_token(token)
                .map_err(|e| format!("its resume token cannot be read: {e}"))?;
            let start = match t.fromguid {
                None => ChainStart::full(),
                Some(parent) => after(parent)?,
            };
            if !spool.body_path(t.toguid).is_file() {
                return Err("the interrupted send's partial manifest is not in dom0's spool (it was interrupted before authenticated backups, or without a key)".to_owned());
            }
            Ok((
                start,
                Some(ResumeAt {
                    guid: t.toguid,
                    object: t.object,
                    offset: t.offset,
                }),
            ))
        }
    }
}
