//! The chain merge and the read-back check, against a model volume: random chains of deltas
//! applied to an in-memory image, their manifests, and the image's blocks read back.

use super::*;

const BS: u64 = 512;
const BLOCKS: u64 = 24;
const KEY: [u8; 32] = [3; 32];

/// A tiny deterministic generator (xorshift), so every failing case can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn block_bytes(seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(BS as usize);
    let mut x = seed | 1;
    while out.len() < BS as usize {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.push((x >> 33) as u8 | 1);
    }
    out
}

/// One delta: what a stream of one snapshot wrote and freed, in offset order.
fn random_delta(rng: &mut Rng, full: bool) -> Vec<(u64, Option<Vec<u8>>, u64)> {
    // (offset, Some(block) | None for zeros, len)
    let mut out = Vec::new();
    let mut at = 0;
    while at < BLOCKS {
        match rng.below(if full { 3 } else { 5 }) {
            0 => {
                out.push((at * BS, Some(block_bytes(rng.next())), BS));
                at += 1;
            }
            1 => {
                let n = 1 + rng.below(3).min(BLOCKS - at - 1);
                out.push((at * BS, None, n * BS));
                at += n;
            }
            _ => at += 1 + rng.below(2),
        }
    }
    out
}

fn manifest(
    delta: &[(u64, Option<Vec<u8>>, u64)],
    seq: u64,
    prev: Option<&ManifestHeader>,
) -> (ManifestHeader, Vec<u8>) {
    let mut body = Vec::new();
    for (offset, block, len) in delta {
        let entry = match block {
            Some(b) => Entry {
                kind: EntryKind::Data,
                offset: *offset,
                len: *len,
                tag: block_tag(&KEY, *offset, b),
            },
            None if *len == BS && seq % 2 == 0 => Entry {
                kind: EntryKind::Hole,
                offset: *offset,
                len: BS,
                tag: [0; 32],
            },
            None => Entry {
                kind: EntryKind::Free,
                offset: *offset,
                len: *len,
                tag: [0; 32],
            },
        };
        body.extend_from_slice(&entry.encode());
    }
    let header = ManifestHeader {
        qube: "work".into(),
        volume: "private".into(),
        dataset: "pool/qubes/work/private".into(),
        snapshot_guid: 1000 + seq,
        parent_guid: prev.map_or(0, |p| p.snapshot_guid),
        seq,
        prev_header_hash: prev.map_or([0; 32], |p| p.hash()),
        volsize: BLOCKS * BS,
        volblocksize: BS,
        created: 1_700_000_000 + seq,
        entries: (body.len() / ENTRY_LEN) as u64,
        body_hash: *blake3::hash(&body).as_bytes(),
    };
    (header, body)
}

/// A random chain and the image its last snapshot holds.
fn random_chain(seed: u64, len: u64) -> (Vec<(ManifestHeader, Vec<u8>)>, Vec<Vec<u8>>) {
    let mut rng = Rng(seed);
    let mut image = vec![vec![0u8; BS as usize]; BLOCKS as usize];
    let mut chain: Vec<(ManifestHeader, Vec<u8>)> = Vec::new();
    for seq in 0..len {
        let delta = random_delta(&mut rng, seq == 0);
        for (offset, block, len) in &delta {
            for b in offset / BS..(offset + len) / BS {
                image[b as usize] = block.clone().unwrap_or_else(|| vec![0; BS as usize]);
            }
        }
        let m = manifest(&delta, seq, chain.last().map(|(h, _)| h));
        chain.push(m);
    }
    (chain, image)
}

fn merge(chain: &[(ManifestHeader, Vec<u8>)]) -> ChainMerge<&[u8]> {
    ChainMerge::new(
        chain
            .iter()
            .map(|(h, b)| (h.clone(), b.as_slice()))
            .collect(),
    )
    .unwrap()
}

fn read_back(
    chain: &[(ManifestHeader, Vec<u8>)],
    blocks: impl IntoIterator<Item = (u64, Vec<u8>)>,
) -> Result<BlockCheckSummary, ManifestError> {
    let mut check = BlockCheck::new(merge(chain), KEY);
    for (offset, data) in blocks {
        check.block(offset, &data)?;
    }
    check.finish()
}

fn non_zero_blocks(image: &[Vec<u8>]) -> Vec<(u64, Vec<u8>)> {
    image
        .iter()
        .enumerate()
        .filter(|(_, b)| b.iter().any(|&x| x != 0))
        .map(|(i, b)| (i as u64 * BS, b.clone()))
        .collect()
}

#[test]
fn merged_regions_are_contiguous_and_match_the_model_image() {
    for seed in 1..200 {
        let (chain, image) = random_chain(seed, 1 + seed % 6);
        let mut merged = merge(&chain);
        let mut pos = 0;
        while let Some(region) = merged.next_region().unwrap() {
            assert_eq!(region.offset(), pos, "seed {seed}");
            match region {
                Expected::Data { offset, tag } => {
                    assert_eq!(tag, block_tag(&KEY, offset, &image[(offset / BS) as usize]));
                    pos += BS;
                }
                Expected::Zero { offset, len } => {
                    assert!(len > 0);
                    for b in offset / BS..(offset + len) / BS {
                        assert!(image[b as usize].iter().all(|&x| x == 0), "seed {seed}");
                    }
                    pos += len;
                }
            }
        }
        assert_eq!(pos, BLOCKS * BS);
    }
}

#[test]
fn honest_read_back_passes_with_or_without_zero_blocks() {
    for seed in 1..200 {
        let (chain, image) = random_chain(seed, 1 + seed % 6);
        let blocks = non_zero_blocks(&image);
        let summary = read_back(&chain, blocks.clone()).unwrap();
        assert_eq!(summary.data_blocks, blocks.len() as u64);
        let all: Vec<_> = image
            .iter()
            .enumerate()
            .map(|(i, b)| (i as u64 * BS, b.clone()))
            .collect();
        let summary = read_back(&chain, all).unwrap();
        assert_eq!(summary.zero_blocks, BLOCKS - blocks.len() as u64);
    }
}

#[test]
fn altered_moved_missing_and_extra_blocks_fail_with_their_offset() {
    let mut tested = 0;
    for seed in 1..100 {
        let (chain, image) = random_chain(seed, 1 + seed % 6);
        let blocks = non_zero_blocks(&image);
        if blocks.len() < 2 {
            continue;
        }
        tested += 1;
        let mut altered = blocks.clone();
        altered[1].1[7] ^= 0x40;
        assert!(matches!(
            read_back(&chain, altered),
            Err(ManifestError::ReadBackAltered { offset }) if offset == blocks[1].0
        ));

        let mut moved = blocks.clone();
        let (a, b) = (moved[0].1.clone(), moved[1].1.clone());
        moved[0].1 = b;
        moved[1].1 = a;
        assert!(matches!(
            read_back(&chain, moved),
            Err(ManifestError::ReadBackAltered { offset }) if offset == blocks[0].0
        ));

        for drop in [0, blocks.len() - 1] {
            let mut missing = blocks.clone();
            missing.remove(drop);
            assert!(matches!(
                read_back(&chain, missing),
                Err(ManifestError::ReadBackMissing { offset }) if offset == blocks[drop].0
            ));
        }

        if let Some(hole) = (0..BLOCKS).find(|b| image[*b as usize].iter().all(|&x| x == 0)) {
            let mut extra = blocks.clone();
            extra.push((hole * BS, block_bytes(99)));
            extra.sort_by_key(|(o, _)| *o);
            assert!(matches!(
                read_back(&chain, extra),
                Err(ManifestError::ReadBackUnexpected { offset }) if offset == hole * BS
            ));
        }
    }
    assert!(tested > 50);
}

#[test]
fn blocks_out_of_order_short_or_past_the_volume_are_refused() {
    let (chain, image) = random_chain(7, 3);
    let blocks = non_zero_blocks(&image);
    let mut check = BlockCheck::new(merge(&chain), KEY);
    check.block(blocks[0].0, &blocks[0].1).unwrap();
    assert!(matches!(
        check.block(blocks[0].0, &blocks[0].1),
        Err(ManifestError::ReadBackOrder { .. })
    ));
    let mut check = BlockCheck::new(merge(&chain), KEY);
    assert!(matches!(
        check.block(BS + 1, &blocks[0].1),
        Err(ManifestError::ReadBackOrder { .. })
    ));
    let mut check = BlockCheck::new(merge(&chain), KEY);
    assert!(matches!(
        check.block(0, &blocks[0].1[..100]),
        Err(ManifestError::ReadBackBlockSize { .. })
    ));
    let mut check = BlockCheck::new(merge(&chain), KEY);
    assert!(matches!(
        check.block(BLOCKS * BS, &blocks[0].1),
        Err(ManifestError::BeyondVolume { .. })
    ));
}

#[test]
fn a_chain_must_start_full_and_link_each_delta_to_the_one_before() {
    let (chain, _) = random_chain(11, 3);
    let headers: Vec<ManifestHeader> = chain.iter().map(|(h, _)| h.clone()).collect();
    check_chain(&headers).unwrap();
    assert!(check_chain(&[]).is_err());
    assert!(
        check_chain(&headers[1..]).is_err(),
        "starts with an incremental"
    );

    let mutations: [(&str, fn(&mut ManifestHeader)); 6] = [
        ("parent", |h| h.parent_guid ^= 1),
        ("seq", |h| h.seq += 1),
        ("prev hash", |h| h.prev_header_hash[0] ^= 1),
        ("qube", |h| h.qube = "other".into()),
        ("volume", |h| h.volume = "root".into()),
        ("volblocksize", |h| h.volblocksize *= 2),
    ];
    for (what, mutate) in mutations {
        let mut spliced = headers.clone();
        mutate(&mut spliced[2]);
        assert!(
            matches!(check_chain(&spliced), Err(ManifestError::ChainBroken { seq, .. }) if seq == spliced[2].seq),
            "{what}"
        );
    }
    // Deltas in the wrong order.
    let mut swapped = headers.clone();
    swapped.swap(1, 2);
    assert!(check_chain(&swapped).is_err());
}

#[test]
fn a_body_shorter_than_its_header_says_fails_the_merge() {
    let (mut chain, image) = random_chain(5, 2);
    let cut = chain[1].1.len() - ENTRY_LEN;
    chain[1].1.truncate(cut);
    let blocks = non_zero_blocks(&image);
    let result = ChainMerge::new(
        chain
            .iter()
            .map(|(h, b)| (h.clone(), b.as_slice()))
            .collect(),
    )
    .and_then(|m| {
        let mut check = BlockCheck::new(m, KEY);
        for (o, d) in &blocks {
            check.block(*o, d)?;
        }
        check.finish()
    });
    assert!(result.is_err());
}
