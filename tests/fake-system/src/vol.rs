//! The content model of fake volumes: deterministic, so that a receiver can check every block
//! it is sent and its own `zfs send` of what it received gives back exactly the same blocks.
//!
//! A volume's content at a snapshot is its base (the previous snapshot of the dataset, else the
//! clone origin's content, else all zeros) overlaid with the snapshot's **delta**: a sorted
//! list of block ranges, each written by a generator guid (`g != 0`) or zeroed (`g == 0`).
//! - A block of generator `g` at byte offset `o` is all zeros when `is_zero(g, o)` (one block in
//!   eight, for holes); otherwise it is [`block`]: `g` (8 bytes, little-endian), then the
//!   blake3 XOF of (`g`, `o`). So every data block names its generator and can be checked alone.
//! - Without a stored delta (dom0's fixtures) a snapshot's delta is generated: the first
//!   snapshot of a dataset that is not a clone writes `ceil(size / volblocksize)` blocks from
//!   block 0; any other snapshot writes `ceil(incr_size / volblocksize)` blocks from a block
//!   derived from its guid, and one in four also zeroes (frees) 1-4 blocks next to that run.
//!   The generator is the snapshot's guid.
//! - `zfs receive` stores the delta it actually applied (`Snapshot::delta`), so a receiver's
//!   volume is whatever it was sent, dropped or altered blocks included.
//!
//! `tail` is the end (in blocks) of the highest block ever written (`dn_maxblkid + 1`): a
//! stream's FREE right after the OBJECT record starts there.

use crate::state::{Dataset, Kind, Snapshot, Zfs};
use serde::{Deserialize, Serialize};

pub const DEFAULT_VOLBLOCKSIZE: u64 = 16 << 10;
const DEFAULT_VOLSIZE: u64 = 10 << 30;

/// One range of blocks `[start, end)` and its generator (`0`: zeros).
pub type Ext = [u64; 3];

/// What one snapshot's stream changed (see the module doc).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VolDelta {
    /// Blocks below this were ever written (`dn_maxblkid + 1`).
    pub tail: u64,
    /// `[start, end, generator]` in blocks, sorted, not overlapping.
    pub ext: Vec<Ext>,
}

impl VolDelta {
    /// Appends a range (merged with the previous one when adjacent with the same generator).
    /// Ranges must come in increasing order.
    pub fn push(&mut self, start: u64, end: u64, g: u64) {
        if start >= end {
            return;
        }
        if let Some(last) = self.ext.last_mut() {
            if last[1] == start && last[2] == g {
                last[1] = end;
                return;
            }
        }
        self.ext.push([start, end, g]);
    }
}

fn h64(parts: &[&[u8]]) -> u64 {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(p);
    }
    let mut x = [0u8; 8];
    x.copy_from_slice(&h.finalize().as_bytes()[..8]);
    u64::from_le_bytes(x)
}

/// Whether the block of generator `g` at byte offset `off` is all zeros (a hole).
pub fn is_zero(g: u64, off: u64) -> bool {
    g == 0 || h64(&[b"qzb-fake zvol zero", &g.to_le_bytes(), &off.to_le_bytes()]).is_multiple_of(8)
}

/// The data block of generator `g` at byte offset `off` (not all zeros: see [`is_zero`]).
pub fn block(g: u64, off: u64, buf: &mut [u8]) {
    let n = buf.len().min(8);
    buf[..n].copy_from_slice(&g.to_le_bytes()[..n]);
    let mut h = blake3::Hasher::new();
    h.update(b"qzb-fake zvol block v1");
    h.update(&g.to_le_bytes());
    h.update(&off.to_le_bytes());
    h.finalize_xof().fill(&mut buf[n..]);
}

/// The generator of a received block, if the block is exactly what the model says for it.
pub fn check_block(data: &[u8], off: u64) -> Option<u64> {
    if data.len() < 16 {
        return None;
    }
    let mut g = [0u8; 8];
    g.copy_from_slice(&data[..8]);
    let g = u64::from_le_bytes(g);
    if g == 0 {
        return None;
    }
    let mut exp = vec![0u8; data.len()];
    block(g, off, &mut exp);
    (exp == data).then_some(g)
}

pub fn volblocksize(d: &Dataset) -> u64 {
    d.volblocksize.unwrap_or(DEFAULT_VOLBLOCKSIZE)
}

pub fn volsize(d: &Dataset) -> u64 {
    d.volsize.unwrap_or(DEFAULT_VOLSIZE)
}

/// A volume's content: the ranges ever written (sorted), and the tail.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Content {
    pub tail: u64,
    pub ext: Vec<Ext>,
}

impl Content {
    /// `self` overlaid with `d` (the delta's ranges win).
    pub fn overlay(&self, d: &VolDelta) -> Content {
        let mut out: Vec<Ext> = Vec::with_capacity(self.ext.len() + d.ext.len());
        let mut first = 0;
        for &[s, e, g] in &self.ext {
            while first < d.ext.len() && d.ext[first][1] <= s {
                first += 1;
            }
            // what of [s, e) no delta range covers
            let mut cur = s;
            for &[ds, de, _] in d.ext[first..].iter().take_while(|x| x[0] < e) {
                if ds > cur {
                    out.push([cur, ds, g]);
                }
                cur = cur.max(de);
            }
            if cur < e {
                out.push([cur, e, g]);
            }
        }
        out.extend_from_slice(&d.ext);
        out.sort_by_key(|x| x[0]);
        Content {
            tail: self.tail.max(d.tail),
            ext: out,
        }
    }

    /// The generator of block `b` (0: zeros or never written).
    #[cfg(test)]
    pub fn gen_at(&self, b: u64) -> u64 {
        let i = self.ext.partition_point(|x| x[1] <= b);
        match self.ext.get(i) {
            Some(&[s, _, g]) if s <= b => g,
            _ => 0,
        }
    }
}

/// The generated delta of snapshot `idx` of a dataset (see the module doc).
fn generated(d: &Dataset, idx: usize, guid: u64, base_tail: u64) -> VolDelta {
    let s = &d.snapshots[idx];
    let bs = volblocksize(d);
    let nvol = (volsize(d) / bs).max(1);
    let mut delta = VolDelta::default();
    if idx == 0 && d.origin.is_none() {
        let n = s.full_size().div_ceil(bs).min(nvol);
        delta.push(0, n, guid);
        delta.tail = n;
    } else {
        let n = s.incremental_size().div_ceil(bs).min(nvol);
        let start = h64(&[b"qzb-fake zvol start", &guid.to_le_bytes()]) % (nvol - n + 1);
        let f = h64(&[b"qzb-fake zvol free", &guid.to_le_bytes()]);
        let m = if f.is_multiple_of(4) {
            1 + (f >> 8) % 4
        } else {
            0
        };
        if m > 0 && start >= m {
            delta.push(start - m, start, 0);
            delta.push(start, start + n, guid);
        } else {
            delta.push(start, start + n, guid);
            delta.push(start + n, (start + n + m).min(nvol), 0);
        }
        delta.tail = start + n;
    }
    delta.tail = delta.tail.max(base_tail);
    delta
}

/// One step of a chain: a snapshot's guid and its delta.
pub struct Step {
    pub guid: u64,
    pub delta: VolDelta,
}

/// The chain of deltas that makes snapshot `full` (`ds@snap`), oldest first: the clone
/// origin's chain, then the dataset's snapshots up to it.
pub fn chain(z: &Zfs, host: &str, full: &str) -> Option<Vec<Step>> {
    let (dn, sn) = full.split_once('@')?;
    let d = z.datasets.get(dn)?;
    if d.kind != Kind::Volume {
        return None;
    }
    let idx = d.snapshots.iter().position(|s| s.name == sn)?;
    let mut steps = match &d.origin {
        Some(o) if o != full => chain(z, host, o)?,
        _ => Vec::new(),
    };
    let mut tail = steps.last().map_or(0, |s: &Step| s.delta.tail);
    for (i, s) in d.snapshots.iter().enumerate().take(idx + 1) {
        let guid = s.guid_for(host, &format!("{dn}@{}", s.name));
        let delta = match &s.delta {
            Some(x) => x.clone(),
            None => generated(d, i, guid, tail),
        };
        tail = tail.max(delta.tail);
        steps.push(Step { guid, delta });
    }
    Some(steps)
}

/// The content after a chain's steps.
pub fn content(steps: &[Step]) -> Content {
    steps
        .iter()
        .fold(Content::default(), |c, s| c.overlay(&s.delta))
}

/// The blocks an incremental stream after `from_guid` must cover: the union of the ranges of
/// every step after it (None: `from_guid` is not in the chain).
pub fn touched_after(steps: &[Step], from_guid: u64) -> Option<Vec<[u64; 2]>> {
    let at = steps.iter().position(|s| s.guid == from_guid)?;
    let mut r: Vec<[u64; 2]> = steps[at + 1..]
        .iter()
        .flat_map(|s| s.delta.ext.iter().map(|e| [e[0], e[1]]))
        .collect();
    r.sort();
    let mut out: Vec<[u64; 2]> = Vec::new();
    for [s, e] in r {
        match out.last_mut() {
            Some(last) if s <= last[1] => last[1] = last[1].max(e),
            _ => out.push([s, e]),
        }
    }
    Some(out)
}

/// Writes the raw image of the volume snapshot `full` (`ds@snap`) of `z`: `volsize` bytes, each
/// block as [`block`] makes it from the generator the content model gives it, zeros for holes and
/// blocks never written. It is what the blocks of a full `zfs send` of that snapshot make.
pub fn write_image(
    z: &Zfs,
    host: &str,
    full: &str,
    out: &mut impl std::io::Write,
) -> Result<(), String> {
    let missing = || format!("cannot open '{full}': dataset does not exist");
    let (dn, sn) = full.split_once('@').ok_or_else(missing)?;
    let d = z.datasets.get(dn).ok_or_else(missing)?;
    if !d.snapshots.iter().any(|s| s.name == sn) {
        return Err(missing());
    }
    if d.kind != Kind::Volume {
        return Err(format!("'{dn}' is not a volume"));
    }
    let steps = chain(z, host, full).ok_or_else(missing)?;
    let c = content(&steps);
    let (bs, size) = (volblocksize(d), volsize(d));
    let nblk = size.div_ceil(bs);
    let zeros = vec![0u8; bs as usize];
    let mut buf = vec![0u8; bs as usize];
    let io = |e: std::io::Error| format!("write: {e}");
    let mut b = 0u64;
    let mut put = |b: u64, g: u64, out: &mut dyn std::io::Write| -> Result<(), String> {
        let off = b * bs;
        let len = bs.min(size - off) as usize;
        if g != 0 && !is_zero(g, off) {
            block(g, off, &mut buf);
            out.write_all(&buf[..len]).map_err(io)
        } else {
            out.write_all(&zeros[..len]).map_err(io)
        }
    };
    for &[s, e, g] in &c.ext {
        let (s, e) = (s.clamp(b, nblk), e.min(nblk));
        while b < s {
            put(b, 0, out)?;
            b += 1;
        }
        while b < e {
            put(b, g, out)?;
            b += 1;
        }
    }
    while b < nblk {
        put(b, 0, out)?;
        b += 1;
    }
    out.flush().map_err(io)
}

/// A snapshot's guid as this host names it.
pub fn guid_of(s: &Snapshot, dataset: &str, host: &str) -> u64 {
    s.guid_for(host, &format!("{dataset}@{}", s.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(tail: u64, ext: &[Ext]) -> VolDelta {
        VolDelta {
            tail,
            ext: ext.to_vec(),
        }
    }

    #[test]
    fn overlay_replaces_covered_blocks_and_keeps_the_rest() {
        let base = Content {
            tail: 10,
            ext: vec![[0, 10, 7]],
        };
        let c = base.overlay(&delta(4, &[[2, 4, 9], [6, 7, 0]]));
        assert_eq!(
            c.ext,
            vec![[0, 2, 7], [2, 4, 9], [4, 6, 7], [6, 7, 0], [7, 10, 7]]
        );
        assert_eq!(c.tail, 10);
        let c2 = c.overlay(&delta(20, &[[1, 8, 5], [15, 20, 5]]));
        assert_eq!(c2.ext, vec![[0, 1, 7], [1, 8, 5], [8, 10, 7], [15, 20, 5]]);
        assert_eq!(c2.tail, 20);
        assert_eq!(c2.gen_at(0), 7);
        assert_eq!(c2.gen_at(12), 0);
        assert_eq!(c2.gen_at(19), 5);
    }

    #[test]
    fn blocks_check_alone_and_a_flipped_byte_fails() {
        let mut b = vec![0u8; 16384];
        block(42, 16384 * 3, &mut b);
        assert_eq!(check_block(&b, 16384 * 3), Some(42));
        assert_eq!(check_block(&b, 16384 * 4), None);
        b[100] ^= 1;
        assert_eq!(check_block(&b, 16384 * 3), None);
        assert_eq!(check_block(&[0u8; 512], 0), None);
    }

    #[test]
    fn about_one_block_in_eight_is_a_hole() {
        let zeros = (0..8000u64).filter(|b| is_zero(99, b * 16384)).count();
        assert!((800..1200).contains(&zeros), "{zeros}");
    }

    #[test]
    fn touched_after_is_the_union_of_later_steps() {
        let steps = vec![
            Step {
                guid: 1,
                delta: delta(10, &[[0, 10, 1]]),
            },
            Step {
                guid: 2,
                delta: delta(10, &[[3, 5, 2]]),
            },
            Step {
                guid: 3,
                delta: delta(12, &[[4, 7, 3], [9, 12, 0]]),
            },
        ];
        assert_eq!(touched_after(&steps, 1), Some(vec![[3, 7], [9, 12]]));
        assert_eq!(touched_after(&steps, 3), Some(vec![]));
        assert_eq!(touched_after(&steps, 8), None);
        assert_eq!(content(&steps).gen_at(4), 3);
    }
}
