//! Harness for the delta manifest header (`qzb_protocol::manifest::ManifestHeader`), the part
//! of a manifest dom0 will read back from the backup medium.
//!
//! Input: `mac[32] header...` (shorter inputs: all header, zero MAC). Checks beyond "no
//! panic", with a fixed key:
//! * `verify(header, mac, key)` refuses any header outside `MIN_HEADER_LEN ..=
//!   MAX_HEADER_LEN` by its length (never `BadMac`: the size is checked first), and accepts
//!   only when `mac` is the keyed blake3 of the bytes;
//! * `decode_unverified` (the parse `verify` runs after the MAC) accepts only canonical
//!   encodings: an accepted header re-encodes to the same bytes, verifies with its own MAC,
//!   and fails with a flipped MAC bit or another key; its entry count and body hash make
//!   `verify_body` accept exactly the body it describes (an empty one when `entries == 0`).
use qzb_protocol::manifest::{ManifestError, ManifestHeader, MAX_HEADER_LEN, MIN_HEADER_LEN};

/// The key every run uses (the MAC is not what is being fuzzed; the parse behind it is).
pub const KEY: [u8; 32] = [0x42; 32];

pub fn run_header(data: &[u8]) {
    let (mac, header): ([u8; 32], &[u8]) = match data.split_first_chunk::<32>() {
        Some((mac, rest)) => (*mac, rest),
        None => ([0; 32], data),
    };

    match ManifestHeader::verify(header, &mac, &KEY) {
        Ok(h) => {
            assert_eq!(mac, *blake3::keyed_hash(&KEY, header).as_bytes());
            assert_eq!(h.encode(), header);
        }
        Err(ManifestError::HeaderTooLarge { len, max }) => {
            assert!(len > max && max == MAX_HEADER_LEN && len == header.len());
        }
        Err(ManifestError::HeaderTooShort { len, min }) => {
            assert!(len < min && min == MIN_HEADER_LEN && len == header.len());
        }
        Err(e) => {
            assert!((MIN_HEADER_LEN..=MAX_HEADER_LEN).contains(&header.len()));
            let _ = e.to_string();
        }
    }

    match ManifestHeader::decode_unverified(header) {
        Ok(h) => {
            assert!((MIN_HEADER_LEN..=MAX_HEADER_LEN).contains(&header.len()));
            assert_eq!(h.encode(), header, "decoded header is not canonical");
            let own = h.mac(&KEY);
            assert_eq!(
                ManifestHeader::verify(header, &own, &KEY).expect("own MAC"),
                h
            );
            let mut flipped = own;
            flipped[usize::from(header[0]) % 32] ^= 1 << (header[1] % 8);
            assert!(matches!(
                ManifestHeader::verify(header, &flipped, &KEY),
                Err(ManifestError::BadMac)
            ));
            assert!(matches!(
                ManifestHeader::verify(header, &own, &[0x43; 32]),
                Err(ManifestError::BadMac)
            ));
            assert_eq!(h.hash(), *blake3::hash(header).as_bytes());
            if h.entries == 0 {
                let empty_ok = h.verify_body(&[][..]).is_ok();
                assert_eq!(empty_ok, h.body_hash == *blake3::hash(&[]).as_bytes());
            } else {
                assert!(h.verify_body(&[][..]).is_err());
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// Seeds: valid headers with their MAC under [`KEY`] (full and incremental, shortest and
/// longest names), and one with a wrong MAC.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let base = ManifestHeader {
        qube: "work".into(),
        volume: "private".into(),
        dataset: "pool/qubes/work/private".into(),
        snapshot_guid: 0x1111_2222_3333_4444,
        parent_guid: 0,
        seq: 0,
        prev_header_hash: [0; 32],
        volsize: 2 << 30,
        volblocksize: 16 << 10,
        created: 1_700_000_000,
        entries: 0,
        body_hash: *blake3::hash(&[]).as_bytes(),
    };
    let incremental = ManifestHeader {
        parent_guid: 0x5555_6666_7777_8888,
        seq: 7,
        prev_header_hash: [0xAB; 32],
        entries: 1234,
        body_hash: [0xCD; 32],
        ..base.clone()
    };
    let shortest = ManifestHeader {
        qube: "a".into(),
        volume: "r".into(),
        dataset: "p".into(),
        ..base.clone()
    };
    let longest = ManifestHeader {
        qube: "q".repeat(31),
        volume: "v".repeat(64),
        dataset: format!("p/{}", "d".repeat(253)),
        ..base.clone()
    };
    let with_mac = |h: &ManifestHeader| [h.mac(&KEY).to_vec(), h.encode()].concat();
    let mut wrong = with_mac(&base);
    wrong[0] ^= 1;
    vec![
        ("full", with_mac(&base)),
        ("incremental", with_mac(&incremental)),
        ("shortest", with_mac(&shortest)),
        ("longest", with_mac(&longest)),
        ("wrong-mac", wrong),
    ]
}
