//! Harness for the sealed metadata dom0 reads back from a medium (`qzb_protocol::sets`): the
//! settings of the backed-up qubes and the set index.
//!
//! Input: one byte choosing the reader, then the bytes. Readers: `open` of each purpose under
//! a fixed key, and `decode_unverified` of each body (what `open` hands on after the MAC).
//! Checks beyond "no panic":
//! * an accepted sealed document re-seals to exactly the input (one encoding per document);
//! * an accepted body passes `validate`, and re-encodes to a body that decodes to the same
//!   value.
use qzb_protocol::sets::{open, seal, Purpose, Sealed, SetIndex, SettingsDoc};

/// The metadata key every run uses.
pub const KEY: [u8; 32] = [0x6d; 32];

pub fn run(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => sealed(Purpose::Settings, rest),
        1 => sealed(Purpose::SetIndex, rest),
        2 => {
            if let Ok(doc) = SettingsDoc::decode_unverified(rest) {
                doc.validate().expect("decode validated it");
                let again = doc.body().expect("a decoded document encodes");
                assert_eq!(SettingsDoc::decode_unverified(&again).unwrap(), doc);
            }
        }
        _ => {
            if let Ok(index) = SetIndex::decode_unverified(rest) {
                index.validate().expect("decode validated it");
                let again = index.body().expect("a decoded index encodes");
                assert_eq!(SetIndex::decode_unverified(&again).unwrap(), index);
            }
        }
    }
}

fn sealed(purpose: Purpose, bytes: &[u8]) {
    match open(purpose, bytes, &KEY) {
        Ok(body) => {
            let again = seal(purpose, body, &KEY).expect("an opened body is within the cap");
            assert_eq!(again, bytes, "open accepted what seal would not write");
            match purpose {
                Purpose::Settings => {
                    drop(SettingsDoc::open(bytes, &KEY).map_err(|e| e.to_string()))
                }
                Purpose::SetIndex => drop(SetIndex::open(bytes, &KEY).map_err(|e| e.to_string())),
            }
        }
        Err(e) => drop(e.to_string()),
    }
}

/// Seeds: a sealed settings document and index under [`KEY`], and their bodies.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use qzb_protocol::sets::{
        DeviceList, IndexEntry, IndexManifest, Property, QubeSettings, VolumeSettings,
    };
    let doc = SettingsDoc {
        captured: 1_700_000_000,
        qubes: vec![QubeSettings {
            name: "work".into(),
            class: "AppVM".into(),
            properties: vec![Property {
                name: "label".into(),
                is_default: false,
                kind: "label".into(),
                value: "blue".into(),
            }],
            features: vec![("service.cups".into(), "1".into())],
            tags: vec!["audited".into()],
            firewall: Some(vec!["action=accept".into()]),
            devices: vec![DeviceList::Unavailable {
                class: "mic".into(),
                why: "refused".into(),
            }],
            volumes: vec![VolumeSettings {
                name: "private".into(),
                pool: "zfs".into(),
                dataset: "pool/qubes/work/private".into(),
                save_on_stop: true,
                snap_on_start: false,
                rw: true,
            }],
        }],
    };
    let index = SetIndex {
        backup: "mybackup".into(),
        created: 1_700_000_100,
        key_id: "00112233aabbccdd".into(),
        complete: false,
        settings_hash: Some([1; 32]),
        entries: vec![IndexEntry {
            snapshot: "pool/qubes/work/private@b1".into(),
            guid: 7,
            volume: true,
            stream: Some((4096, [2; 32])),
            manifest: Some(IndexManifest {
                seq: 3,
                header_hash: [4; 32],
            }),
        }],
    };
    vec![
        (
            "sealed-settings",
            [&[0u8][..], &doc.seal(&KEY).unwrap()].concat(),
        ),
        (
            "sealed-index",
            [&[1u8][..], &index.seal(&KEY).unwrap()].concat(),
        ),
        (
            "body-settings",
            [&[2u8][..], &doc.body().unwrap()].concat(),
        ),
        (
            "body-index",
            [&[3u8][..], &index.body().unwrap()].concat(),
        ),
    ]
}
