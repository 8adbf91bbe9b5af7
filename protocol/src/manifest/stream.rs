//! [`StreamManifests`]: the manifests of every snapshot in one `zfs send` stream of a zvol (one
//! for `-i` or a full send, one per sub-stream for `-I`), each chained to the one before.

use super::builder::{ManifestBuilder, ManifestParams};
use super::error::ManifestError;
use super::header::ManifestHeader;
use crate::zstream::{
    Begin, End, EndKind, Free, FreeObjects, HeaderType, Object, Redact, Sink, Spill, Write,
    WriteEmbedded,
};
use std::io::{Read, Write as IoWrite};

/// Where the stream's first snapshot joins the volume's chain of manifests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainStart {
    /// The guid the first sub-stream must start from: 0 for a full stream, else the snapshot
    /// of the last manifest on the medium.
    pub parent_guid: u64,
    /// Its sequence number: 0 for a full stream, else the last manifest's plus one.
    pub seq: u64,
    /// [`ManifestHeader::hash`] of the last manifest (zero for a full stream).
    pub prev_header_hash: [u8; 32],
}

impl ChainStart {
    /// A new chain: a full stream.
    pub fn full() -> Self {
        Self {
            parent_guid: 0,
            seq: 0,
            prev_header_hash: [0; 32],
        }
    }

    /// Continues after `last`.
    pub fn after(last: &ManifestHeader) -> Self {
        Self {
            parent_guid: last.snapshot_guid,
            seq: last.seq.saturating_add(1),
            prev_header_hash: last.hash(),
        }
    }
}

/// What does not change between the snapshots of one volume's stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    pub qube: String,
    pub volume: String,
    pub dataset: String,
    pub volblocksize: u64,
}

/// A resumed stream (`zfs send -t`) continues the partial body of its first snapshot.
pub struct Resume<R> {
    pub previous_body: R,
    /// The token's `object` and `offset`.
    pub object: u64,
    pub offset: u64,
}

/// One finished manifest: its header, the header's MAC, and the writer its body went to.
pub struct Finished<W> {
    pub header: ManifestHeader,
    pub mac: [u8; 32],
    pub body: W,
}

/// Per-snapshot facts the stream does not carry in a usable form.
pub trait SnapshotFacts {
    /// The volume size of the snapshot the sub-stream writes (`toname`, as in its BEGIN).
    fn volsize(&self, toname: &[u8]) -> Option<u64>;
    /// A writer for the body of the snapshot with this guid.
    fn body_writer(&mut self, toguid: u64) -> std::io::Result<Box<dyn IoWrite + Send>>;
}

/// A [`Sink`] that starts a [`ManifestBuilder`] at each sub-stream BEGIN, with the chain
/// position after the previous one, and finishes it at the sub-stream's END. Each sub-stream
/// must start from the snapshot before it (`fromguid`): a gap is [`ManifestError::ChainBroken`].
/// Like the builder, it keeps the first error and ignores everything after it.
pub struct StreamManifests<F> {
    volume: Volume,
    key: [u8; 32],
    created: u64,
    facts: F,
    next: ChainStart,
    resume: Option<Resume<Box<dyn Read + Send>>>,
    current: Option<ManifestBuilder<Box<dyn IoWrite + Send>>>,
    finished: Vec<Finished<Box<dyn IoWrite + Send>>>,
    error: Option<ManifestError>,
}

impl<F: SnapshotFacts> StreamManifests<F> {
    /// `created`: when the manifests are made (seconds since the epoch).
    pub fn new(
        volume: Volume,
        key: [u8; 32],
        created: u64,
        facts: F,
        start: ChainStart,
        resume: Option<Resume<Box<dyn Read + Send>>>,
    ) -> Self {
        Self {
            volume,
            key,
            created,
            facts,
            next: start,
            resume,
            current: None,
            finished: Vec::new(),
            error: None,
        }
    }

    /// The first error met so far, here or in the current snapshot's builder.
    pub fn error(&self) -> Option<&ManifestError> {
        self.error
            .as_ref()
            .or_else(|| self.current.as_ref().and_then(|b| b.error()))
    }

    /// Flushes the current body writer: call before forwarding a chunk of the stream, so every
    /// entry of a record the receiver may commit is on disk in dom0 before it (see "Resumed
    /// streams" in protocol/README.md).
    pub fn flush(&mut self) -> std::io::Result<()> {
        match self.current.as_mut() {
            Some(b) => b.flush_body(),
            None => Ok(()),
        }
    }

    /// Ends: the first error, or a snapshot whose END did not come, or else every finished
    /// manifest in stream order, and the facts back.
    #[allow(clippy::type_complexity)] // a list and a value, named by the doc above
    pub fn finish(self) -> Result<(Vec<Finished<Box<dyn IoWrite + Send>>>, F), ManifestError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if let Some(builder) = self.current {
            return Err(builder.error_or_incomplete());
        }
        Ok((self.finished, self.facts))
    }

    fn start(&mut self, begin: &Begin<'_>) -> Result<(), ManifestError> {
        if self.current.is_some() {
            return Err(ManifestError::MultipleSnapshots);
        }
        if begin.fromguid != self.next.parent_guid {
            return Err(ManifestError::ChainBroken {
                seq: self.next.seq,
                reason: "the stream does not start from the snapshot of the last manifest",
            });
        }
        let volsize = self
            .facts
            .volsize(begin.toname)
            .ok_or(ManifestError::InvalidParams(
                "the volume size of a snapshot in the stream is not known",
            ))?;
        let params = ManifestParams {
            qube: self.volume.qube.clone(),
            volume: self.volume.volume.clone(),
            dataset: self.volume.dataset.clone(),
            seq: self.next.seq,
            prev_header_hash: self.next.prev_header_hash,
            volsize,
            volblocksize: self.volume.volblocksize,
            created: self.created,
        };
        let out = self.facts.body_writer(begin.toguid)?;
        let mut builder = match self.resume.take() {
            Some(r) => {
                ManifestBuilder::resume(params, self.key, out, r.previous_body, r.object, r.offset)?
            }
            None => ManifestBuilder::new(params, self.key, out)?,
        };
        builder.on_begin(begin);
        self.current = Some(builder);
        Ok(())
    }

    fn end_substream(&mut self, end: &End) -> Result<(), ManifestError> {
        let mut builder = self.current.take().ok_or(ManifestError::Incomplete)?;
        builder.on_end(end);
        let (header, body) = builder.finish()?;
        let mac = header.mac(&self.key);
        self.next = ChainStart::after(&header);
        self.finished.push(Finished { header, mac, body });
        Ok(())
    }

    fn guard(&mut self, f: impl FnOnce(&mut Self) -> Result<(), ManifestError>) {
        if self.error.is_none() {
            if let Err(e) = f(self) {
                self.error = Some(e);
            }
        }
    }

    fn forward(&mut self, f: impl FnOnce(&mut ManifestBuilder<Box<dyn IoWrite + Send>>)) {
        if self.error.is_none() {
            if let Some(b) = self.current.as_mut() {
                f(b);
            }
        }
    }
}

impl<F: SnapshotFacts> Sink for StreamManifests<F> {
    fn on_begin(&mut self, begin: &Begin<'_>) {
        if begin.header_type == HeaderType::Substream {
            self.guard(|s| s.start(begin));
        }
    }
    fn on_object(&mut self, object: &Object<'_>) {
        self.forward(|b| b.on_object(object));
    }
    fn on_freeobjects(&mut self, freeobjects: &FreeObjects) {
        self.forward(|b| b.on_freeobjects(freeobjects));
    }
    fn on_write(&mut self, write: &Write<'_>) {
        self.forward(|b| b.on_write(write));
    }
    fn on_free(&mut self, free: &Free) {
        self.forward(|b| b.on_free(free));
    }
    fn on_spill(&mut self, spill: &Spill<'_>) {
        self.forward(|b| b.on_spill(spill));
    }
    fn on_write_embedded(&mut self, write: &WriteEmbedded<'_>) {
        self.forward(|b| b.on_write_embedded(write));
    }
    fn on_redact(&mut self, redact: &Redact) {
        self.forward(|b| b.on_redact(redact));
    }
    fn on_end(&mut self, end: &End) {
        if end.kind == EndKind::Substream {
            self.guard(|s| s.end_substream(end));
        }
    }
}
