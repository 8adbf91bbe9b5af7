//! The read side of manifests: a chain of verified delta manifests merged into what the volume
//! of its last snapshot must hold, and a checker for blocks read back from the medium.
//!
//! [`check_chain`] checks that verified headers form one chain (full first, then each
//! incremental on the one before). [`ChainMerge`] walks the bodies of such a chain at once, in
//! offset order, and yields the volume as a contiguous sequence of [`Expected`] regions: a data
//! block with its tag, or a run of zeros. Memory is flat: one entry per manifest.
//! [`BlockCheck`] takes the `(offset, block)` pairs the backup qube reads back, in increasing
//! offset order with all-zero blocks optional, and checks them against that sequence: every
//! data block present with its tag, nothing else non-zero.

use super::entry::{block_tag, Entry, EntryKind, ENTRY_LEN};
use super::error::ManifestError;
use super::header::ManifestHeader;
use std::io::Read;

/// Checks that `headers` (each already MAC-verified) form one chain of one volume, oldest
/// first: the first is a full stream (`parent_guid` 0, `seq` 0, no previous header), each next
/// is an incremental from the one before it (its guid, `seq + 1`, its header hash), and all
/// name the same qube, volume and dataset and have the same volblocksize.
pub fn check_chain(headers: &[ManifestHeader]) -> Result<(), ManifestError> {
    let Some(first) = headers.first() else {
        return Err(ManifestError::ChainBroken {
            seq: 0,
            reason: "no manifest",
        });
    };
    if first.parent_guid != 0 || first.seq != 0 || first.prev_header_hash != [0; 32] {
        return Err(ManifestError::ChainBroken {
            seq: first.seq,
            reason: "the chain does not start with a full stream",
        });
    }
    for pair in headers.windows(2) {
        let (prev, next) = (&pair[0], &pair[1]);
        let broken = |reason| ManifestError::ChainBroken {
            seq: next.seq,
            reason,
        };
        if (&next.qube, &next.volume, &next.dataset) != (&prev.qube, &prev.volume, &prev.dataset) {
            return Err(broken(
                "another qube, volume or dataset than the one before",
            ));
        }
        if next.parent_guid != prev.snapshot_guid {
            return Err(broken("not an incremental from the snapshot before"));
        }
        if Some(next.seq) != prev.seq.checked_add(1) {
            return Err(broken("sequence number does not follow the one before"));
        }
        if next.prev_header_hash != prev.hash() {
            return Err(broken(
                "previous-header hash does not match the header before",
            ));
        }
        if next.volblocksize != prev.volblocksize {
            return Err(broken("volblocksize changed"));
        }
    }
    Ok(())
}

/// What the volume holds at some offsets, as the merged chain says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expected {
    /// One block of data (`volblocksize` bytes at `offset`) whose tag is `tag`.
    Data { offset: u64, tag: [u8; 32] },
    /// `len` bytes of zeros from `offset` (holes, freed ranges, never-written blocks).
    Zero { offset: u64, len: u64 },
}

impl Expected {
    pub fn offset(&self) -> u64 {
        match *self {
            Expected::Data { offset, .. } | Expected::Zero { offset, .. } => offset,
        }
    }
}

/// One manifest body being read, with the checks the builder made when it wrote it (cheap, and
/// the merge relies on them).
struct Cursor<R> {
    body: R,
    remaining: u64,
    index: u64,
    current: Option<Entry>,
    prev_end: u64,
    volblocksize: u64,
    volsize: u64,
}

impl<R: Read> Cursor<R> {
    fn advance(&mut self) -> Result<(), ManifestError> {
        self.current = None;
        if self.remaining == 0 {
            return Ok(());
        }
        let mut buf = [0u8; ENTRY_LEN];
        self.body.read_exact(&mut buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                ManifestError::BodyMismatch
            } else {
                ManifestError::Io(e)
            }
        })?;
        let entry = Entry::decode(&buf, self.index)?;
        let bad = |reason| ManifestError::BadEntry {
            index: self.index,
            reason,
        };
        let bs = self.volblocksize;
        if entry.offset < self.prev_end {
            return Err(bad("out of order"));
        }
        if !entry.offset.is_multiple_of(bs) || !entry.len.is_multiple_of(bs) {
            return Err(bad("not on block boundaries"));
        }
        if entry.kind != EntryKind::Free && entry.len != bs {
            return Err(bad("data or hole entry longer than one block"));
        }
        if entry.end() > self.volsize {
            return Err(bad("past the volume's size"));
        }
        self.prev_end = entry.end();
        self.remaining -= 1;
        self.index += 1;
        self.current = Some(entry);
        Ok(())
    }
}

/// Merges the bodies of a chain of delta manifests (see [`check_chain`]) into the content of
/// the last snapshot's volume, in offset order: a newer manifest's entry wins over an older
/// one's; offsets no manifest covers are zeros (a full stream leaves out only unallocated
/// blocks). The regions are contiguous from 0 to the last header's `volsize`.
pub struct ChainMerge<R> {
    cursors: Vec<Cursor<R>>,
    volsize: u64,
    volblocksize: u64,
    pos: u64,
}

impl<R: Read> ChainMerge<R> {
    /// `chain` pairs each header (oldest first, checked with [`check_chain`] here) with a
    /// reader of its body (already checked with [`ManifestHeader::verify_body`]).
    pub fn new(chain: Vec<(ManifestHeader, R)>) -> Result<Self, ManifestError> {
        let headers: Vec<ManifestHeader> = chain.iter().map(|(h, _)| h.clone()).collect();
        check_chain(&headers)?;
        let last = headers.last().expect("check_chain refuses an empty chain");
        let (volsize, volblocksize) = (last.volsize, last.volblocksize);
        let mut cursors = Vec::with_capacity(chain.len());
        for (header, body) in chain {
            let mut cursor = Cursor {
                body,
                remaining: header.entries,
                index: 0,
                current: None,
                prev_end: 0,
                volblocksize,
                volsize: header.volsize,
            };
            cursor.advance()?;
            cursors.push(cursor);
        }
        Ok(Self {
            cursors,
            volsize,
            volblocksize,
            pos: 0,
        })
    }

    pub fn volsize(&self) -> u64 {
        self.volsize
    }

    pub fn volblocksize(&self) -> u64 {
        self.volblocksize
    }

    /// The next region, or `None` at the end of the volume.
    pub fn next_region(&mut self) -> Result<Option<Expected>, ManifestError> {
        let pos = self.pos;
        if pos >= self.volsize {
            return Ok(None);
        }
        for cursor in &mut self.cursors {
            while cursor.current.is_some_and(|e| e.end() <= pos) {
                cursor.advance()?;
            }
        }
        // From the newest manifest back: the first entry that covers `pos` decides, up to
        // where a newer manifest's next entry starts.
        let mut limit = self.volsize;
        for cursor in self.cursors.iter().rev() {
            let Some(entry) = cursor.current else {
                continue;
            };
            if entry.offset > pos {
                limit = limit.min(entry.offset);
                continue;
            }
            let end = entry.end().min(limit);
            self.pos = end;
            return Ok(Some(match entry.kind {
                EntryKind::Data => Expected::Data {
                    offset: pos,
                    tag: entry.tag,
                },
                EntryKind::Hole | EntryKind::Free => Expected::Zero {
                    offset: pos,
                    len: end - pos,
                },
            }));
        }
        self.pos = limit;
        Ok(Some(Expected::Zero {
            offset: pos,
            len: limit - pos,
        }))
    }
}

/// What [`BlockCheck`] counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockCheckSummary {
    /// Data blocks read back whose tag matched.
    pub data_blocks: u64,
    /// All-zero blocks the reader sent where zeros were expected.
    pub zero_blocks: u64,
    /// Bytes of all blocks read back.
    pub bytes: u64,
}

/// Checks the blocks read back from the medium against a merged chain. Blocks come in strictly
/// increasing offset order, each exactly `volblocksize` bytes; all-zero blocks may be left out.
/// Errors name the offset: an altered block (tag mismatch, which also catches a block moved
/// from another offset), a missing data block, a non-zero block where zeros belong.
pub struct BlockCheck<R> {
    merge: ChainMerge<R>,
    key: [u8; 32],
    pending: Option<Expected>,
    next_offset: u64,
    summary: BlockCheckSummary,
}

impl<R: Read> BlockCheck<R> {
    pub fn new(merge: ChainMerge<R>, key: [u8; 32]) -> Self {
        Self {
            merge,
            key,
            pending: None,
            next_offset: 0,
            summary: BlockCheckSummary::default(),
        }
    }

    fn next_expected(&mut self) -> Result<Option<Expected>, ManifestError> {
        match self.pending.take() {
            Some(e) => Ok(Some(e)),
            None => self.merge.next_region(),
        }
    }

    /// One block read back.
    pub fn block(&mut self, offset: u64, data: &[u8]) -> Result<(), ManifestError> {
        let bs = self.merge.volblocksize;
        if data.len() as u64 != bs {
            return Err(ManifestError::ReadBackBlockSize {
                offset,
                len: data.len() as u64,
                block: bs,
            });
        }
        if !offset.is_multiple_of(bs) || offset < self.next_offset {
            return Err(ManifestError::ReadBackOrder {
                offset,
                next: self.next_offset,
            });
        }
        if offset >= self.merge.volsize {
            return Err(ManifestError::BeyondVolume {
                offset,
                volsize: self.merge.volsize,
            });
        }
        self.next_offset = offset + bs;
        self.summary.bytes += bs;
        loop {
            let Some(expected) = self.next_expected()? else {
                unreachable!("regions cover the volume and the offset is inside it")
            };
            match expected {
                Expected::Data { offset: at, .. } if at < offset => {
                    return Err(ManifestError::ReadBackMissing { offset: at });
                }
                Expected::Data { offset: at, tag } if at == offset => {
                    if block_tag(&self.key, offset, data) != tag {
                        return Err(ManifestError::ReadBackAltered { offset });
                    }
                    self.summary.data_blocks += 1;
                    return Ok(());
                }
                Expected::Data { .. } => {
                    // The next data block is further on: this one must be zeros.
                    self.pending = Some(expected);
                    return self.zero_block(offset, data);
                }
                Expected::Zero { offset: at, len } => {
                    if at + len <= offset {
                        continue;
                    }
                    self.pending = Some(expected);
                    return self.zero_block(offset, data);
                }
            }
        }
    }

    fn zero_block(&mut self, offset: u64, data: &[u8]) -> Result<(), ManifestError> {
        if data.iter().any(|&b| b != 0) {
            return Err(ManifestError::ReadBackUnexpected { offset });
        }
        self.summary.zero_blocks += 1;
        Ok(())
    }

    /// After the last block: every data block of the chain must have come.
    pub fn finish(mut self) -> Result<BlockCheckSummary, ManifestError> {
        while let Some(expected) = self.next_expected()? {
            // Every data region still to come lies past the last block read back.
            if let Expected::Data { offset, .. } = expected {
                return Err(ManifestError::ReadBackMissing { offset });
            }
        }
        Ok(self.summary)
    }
}
