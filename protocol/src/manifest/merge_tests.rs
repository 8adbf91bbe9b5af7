//! The chain merge and the read-back check, against a model volume: random chains of deltas
//! applied to an in-memory image, their manifests, and the image's blocks read back.

use super::*;

const BS: u64 = 512;
const BLOCKS: u64 = 24;
const KEY: [u8; 32] = [3; 32];

/// Manifests (header and body) of a chain, oldest first.
type Chain = Vec<(ManifestHeader, Vec<u8>)>;
/// A volume image, block by block.
type Image = Vec<Vec<u8>>;
/// A header mutation and its name.
type Mutation = (&'static str, fn(&mut ManifestHeader));

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
            None if *len == BS && seq.is_multiple_of(2) => Entry {
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
fn random_chain(seed: u64, len: u64) -> (Chain, Image) {
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

    let mutations: [Mutation; 6] = [
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

mod whole_streams {
    //! `StreamManifests` over real record streams (`-I` packages, resumed streams), then the
    //! merge and the read-back check over what it made.
    use super::*;
    use crate::manifest::{
        ChainStart, Resume, SnapshotFacts, StreamManifests, Volume, OBJECT_TYPE_ZVOL,
        OBJSET_TYPE_ZVOL,
    };
    use crate::zstream::writer::StreamWriter;
    use crate::zstream::{feature, Begin, Free, HeaderType, Object, Tap, Write};
    use std::sync::{Arc, Mutex};

    const VOLSIZE: u64 = BLOCKS * BS;

    type Body = Arc<Mutex<Vec<u8>>>;
    #[derive(Clone, Default)]
    struct Bodies(Arc<Mutex<Vec<(u64, Body)>>>);

    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl SnapshotFacts for Bodies {
        fn volsize(&self, toname: &[u8]) -> Option<u64> {
            toname
                .starts_with(b"pool/qubes/work/private@")
                .then_some(VOLSIZE)
        }
        fn body_writer(&mut self, toguid: u64) -> std::io::Result<Box<dyn std::io::Write + Send>> {
            let body = Arc::new(Mutex::new(Vec::new()));
            self.0.lock().unwrap().push((toguid, body.clone()));
            Ok(Box::new(Shared(body)))
        }
    }

    fn volume() -> Volume {
        Volume {
            qube: "work".into(),
            volume: "private".into(),
            dataset: "pool/qubes/work/private".into(),
            volblocksize: BS,
        }
    }

    /// One snapshot's sub-stream: blocks `writes` (index, seed or 0 for zeros), frees.
    #[allow(clippy::too_many_arguments)] // a record stream's knobs, spelled out at each call
    fn substream(
        w: &mut StreamWriter,
        name: &[u8],
        toguid: u64,
        fromguid: u64,
        writes: &[(u64, u64)],
        frees: &[(u64, u64)],
        features: u64,
        payload: &[u8],
    ) {
        w.begin(&Begin {
            header_type: HeaderType::Substream,
            featureflags: features,
            creation_time: 1_700_000_000,
            objset_type: OBJSET_TYPE_ZVOL,
            flags: 0,
            toguid,
            fromguid,
            toname: name,
            payload,
        });
        w.object(&Object {
            object: 1,
            object_type: OBJECT_TYPE_ZVOL,
            bonus_type: 0,
            blksz: BS as u32,
            bonuslen: 0,
            checksum_type: 0,
            compress: 0,
            dn_slots: 1,
            flags: 0,
            raw_bonuslen: 0,
            indblkshift: 17,
            nlevels: 1,
            nblkptr: 1,
            maxblkid: BLOCKS - 1,
            bonus: &[],
        });
        let mut items: Vec<(u64, Option<u64>, u64)> = writes
            .iter()
            .map(|&(b, seed)| (b, Some(seed), 1))
            .chain(frees.iter().map(|&(b, n)| (b, None, n)))
            .collect();
        items.sort();
        for (b, seed, n) in items {
            match seed {
                Some(seed) => {
                    let data = if seed == 0 {
                        vec![0; BS as usize]
                    } else {
                        block_bytes(seed)
                    };
                    w.write(&Write {
                        object: 1,
                        object_type: OBJECT_TYPE_ZVOL,
                        offset: b * BS,
                        logical_size: BS,
                        checksum_type: 7,
                        flags: 0,
                        compression: 0,
                        compressed_size: 0,
                        payload: &data,
                    });
                }
                None => w.free(&Free {
                    object: 1,
                    offset: b * BS,
                    length: n * BS,
                }),
            }
        }
        w.end(toguid);
    }

    /// Blocks written (index, seed) and ranges freed (index, count) by one snapshot.
    type Step<'a> = (&'a [(u64, u64)], &'a [(u64, u64)]);

    fn image_after(steps: &[Step<'_>]) -> Vec<Vec<u8>> {
        let mut image = vec![vec![0u8; BS as usize]; BLOCKS as usize];
        for (writes, frees) in steps {
            for &(b, seed) in *writes {
                image[b as usize] = if seed == 0 {
                    vec![0; BS as usize]
                } else {
                    block_bytes(seed)
                };
            }
            for &(b, n) in *frees {
                for x in b..b + n {
                    image[x as usize] = vec![0; BS as usize];
                }
            }
        }
        image
    }

    fn run(
        stream: &[u8],
        start: ChainStart,
        resume: Option<Resume<Box<dyn std::io::Read + Send>>>,
        bodies: &Bodies,
    ) -> Result<Vec<ManifestHeader>, ManifestError> {
        let sink =
            StreamManifests::new(volume(), KEY, 1_700_000_100, bodies.clone(), start, resume);
        let mut tap = Tap::new(sink);
        for chunk in stream.chunks(333) {
            tap.feed(chunk).expect("stream parses");
            tap.sink_mut().flush().unwrap();
        }
        tap.finish().expect("stream ends");
        Ok(tap
            .into_sink()
            .finish()?
            .0
            .into_iter()
            .map(|f| {
                assert_eq!(f.mac, f.header.mac(&KEY));
                f.header
            })
            .collect())
    }

    const S1: &[(u64, u64)] = &[(0, 11), (1, 12), (2, 0), (5, 13), (9, 14)];
    const S2: &[(u64, u64)] = &[(1, 21), (7, 22)];
    const S2_FREE: &[(u64, u64)] = &[(5, 2)];
    const S3: &[(u64, u64)] = &[(0, 31), (20, 32)];

    fn i_package(w: &mut StreamWriter) {
        w.begin(&Begin {
            header_type: HeaderType::Compound,
            featureflags: 0,
            creation_time: 1_700_000_000,
            objset_type: OBJSET_TYPE_ZVOL,
            flags: 0,
            toguid: 0,
            fromguid: 0,
            toname: b"pool/qubes/work/private@s3",
            payload: &[],
        });
        w.compound_end();
        substream(w, b"pool/qubes/work/private@s2", 2, 1, S2, S2_FREE, 0, &[]);
        substream(w, b"pool/qubes/work/private@s3", 3, 2, S3, &[], 0, &[]);
        w.package_end();
    }

    #[test]
    fn full_then_i_package_chain_merges_to_the_last_snapshot() {
        let bodies = Bodies::default();
        let mut w = StreamWriter::new();
        substream(&mut w, b"pool/qubes/work/private@s1", 1, 0, S1, &[], 0, &[]);
        let full = run(&w.into_bytes(), ChainStart::full(), None, &bodies).unwrap();
        assert_eq!(full.len(), 1);
        let mut w = StreamWriter::new();
        i_package(&mut w);
        let incr = run(&w.into_bytes(), ChainStart::after(&full[0]), None, &bodies).unwrap();
        assert_eq!(incr.iter().map(|h| h.seq).collect::<Vec<_>>(), [1, 2]);
        let headers: Vec<ManifestHeader> = full.into_iter().chain(incr).collect();
        check_chain(&headers).unwrap();

        let bodies = bodies.0.lock().unwrap();
        let chain: Vec<(ManifestHeader, Vec<u8>)> = headers
            .iter()
            .zip(bodies.iter())
            .map(|(h, (guid, body))| {
                assert_eq!(*guid, h.snapshot_guid);
                let body = body.lock().unwrap().clone();
                h.verify_body(body.as_slice()).unwrap();
                (h.clone(), body)
            })
            .collect();
        let image = image_after(&[(S1, &[]), (S2, S2_FREE), (S3, &[])]);
        let summary = read_back(&chain, non_zero_blocks(&image)).unwrap();
        assert_eq!(
            summary.data_blocks, 5,
            "blocks 0, 1, 7, 9 and 20 (5 was freed)"
        );
    }

    #[test]
    fn a_stream_that_does_not_start_at_the_last_manifest_is_refused() {
        let bodies = Bodies::default();
        let mut w = StreamWriter::new();
        i_package(&mut w);
        let stale = ChainStart {
            parent_guid: 99,
            seq: 4,
            prev_header_hash: [1; 32],
        };
        assert!(matches!(
            run(&w.into_bytes(), stale, None, &bodies),
            Err(ManifestError::ChainBroken { seq: 4, .. })
        ));
        let mut w = StreamWriter::new();
        substream(&mut w, b"pool/qubes/work/private@s2", 2, 1, S2, &[], 0, &[]);
        assert!(
            run(&w.into_bytes(), ChainStart::full(), None, &bodies).is_err(),
            "an incremental where a full stream was planned"
        );
    }

    #[test]
    fn resumed_full_stream_gives_the_same_manifest_as_an_uninterrupted_one() {
        let bodies = Bodies::default();
        let mut w = StreamWriter::new();
        substream(&mut w, b"pool/qubes/work/private@s1", 1, 0, S1, &[], 0, &[]);
        let whole = run(&w.into_bytes(), ChainStart::full(), None, &bodies).unwrap();
        let whole_body = bodies.0.lock().unwrap()[0].1.lock().unwrap().clone();

        // The receiver kept blocks before 5: the resumed stream starts there.
        let resumed_writes: Vec<(u64, u64)> = S1.iter().copied().filter(|(b, _)| *b >= 5).collect();
        let mut w = StreamWriter::new();
        substream(
            &mut w,
            b"pool/qubes/work/private@s1",
            1,
            0,
            &resumed_writes,
            &[],
            feature::RESUMING,
            &[0; 8],
        );
        let bodies = Bodies::default();
        let resume = Resume {
            previous_body: Box::new(std::io::Cursor::new(whole_body.clone()))
                as Box<dyn std::io::Read + Send>,
            object: 1,
            offset: 5 * BS,
        };
        let again = run(&w.into_bytes(), ChainStart::full(), Some(resume), &bodies).unwrap();
        assert_eq!(again, whole);
        assert_eq!(*bodies.0.lock().unwrap()[0].1.lock().unwrap(), whole_body);
    }
}
