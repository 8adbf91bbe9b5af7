use super::*;

const KEY: [u8; 32] = [7; 32];

fn qube(name: &str) -> QubeSettings {
    QubeSettings {
        name: name.into(),
        class: "AppVM".into(),
        properties: vec![
            Property {
                name: "label".into(),
                is_default: false,
                kind: "label".into(),
                value: "red".into(),
            },
            Property {
                name: "netvm".into(),
                is_default: true,
                kind: "vm".into(),
                value: "sys-firewall".into(),
            },
        ],
        features: vec![("service.cups".into(), "1".into())],
        tags: vec!["created-by-dom0".into()],
        firewall: Some(vec!["action=accept".into()]),
        devices: vec![
            DeviceList::Assigned {
                class: "pci".into(),
                lines: vec!["dom0+00_14.0 mode='required'".into()],
            },
            DeviceList::Unavailable {
                class: "usb".into(),
                why: "QubesException".into(),
            },
        ],
        volumes: vec![VolumeSettings {
            name: "private".into(),
            pool: "zfs".into(),
            dataset: format!("pool/qubes/{name}/private"),
            save_on_stop: true,
            snap_on_start: false,
            rw: true,
        }],
    }
}

fn doc() -> SettingsDoc {
    SettingsDoc {
        captured: 1_700_000_000,
        qubes: vec![qube("personal"), qube("work")],
    }
}

fn index() -> SetIndex {
    SetIndex {
        backup: "mybackup".into(),
        created: 1_700_000_100,
        key_id: "0123456789abcdef".into(),
        complete: true,
        settings_hash: Some([3; 32]),
        entries: vec![
            IndexEntry {
                snapshot: "pool/qubes/work/private@b1".into(),
                guid: 42,
                volume: true,
                stream: Some((1 << 20, [9; 32])),
                manifest: Some(IndexManifest {
                    seq: 0,
                    header_hash: [4; 32],
                }),
            },
            IndexEntry {
                snapshot: "pool/dom0@b1".into(),
                guid: 43,
                volume: false,
                stream: None,
                manifest: None,
            },
        ],
    }
}

#[test]
fn settings_and_index_round_trip_through_their_seals() {
    let sealed = doc().seal(&KEY).unwrap();
    assert_eq!(SettingsDoc::open(&sealed, &KEY).unwrap(), doc());
    let sealed = index().seal(&KEY).unwrap();
    assert_eq!(SetIndex::open(&sealed, &KEY).unwrap(), index());
}

#[test]
fn any_flipped_byte_of_a_sealed_document_fails_its_mac_or_its_checks() {
    let sealed = index().seal(&KEY).unwrap();
    for i in 0..sealed.len() {
        let mut bad = sealed.clone();
        bad[i] ^= 0x01;
        assert_eq!(
            SetIndex::open(&bad, &KEY),
            Err(SealError::BadMac),
            "byte {i}"
        );
    }
    assert_eq!(SetIndex::open(&sealed, &[8; 32]), Err(SealError::BadMac));
}

#[test]
fn a_settings_document_is_not_accepted_as_an_index_or_the_other_way_round() {
    let settings = doc().seal(&KEY).unwrap();
    assert!(matches!(
        SetIndex::open(&settings, &KEY),
        Err(SealError::Mismatch(m)) if m.contains("not a set index")
    ));
    let idx = index().seal(&KEY).unwrap();
    assert!(matches!(
        SettingsDoc::open(&idx, &KEY),
        Err(SealError::Mismatch(_))
    ));
}

#[test]
fn sizes_are_refused_before_the_mac_is_computed() {
    assert_eq!(
        open(Purpose::SetIndex, &[0; 47], &KEY),
        Err(SealError::TooShort { len: 47 })
    );
    let huge = vec![0u8; max_sealed_len(Purpose::SetIndex) + 1];
    assert!(matches!(
        open(Purpose::SetIndex, &huge, &KEY),
        Err(SealError::TooLarge { .. })
    ));
    let mut cut = index().seal(&KEY).unwrap();
    cut.truncate(cut.len() - 1);
    assert_eq!(SetIndex::open(&cut, &KEY), Err(SealError::BadMac));
}

#[test]
fn a_macd_body_that_breaks_the_rules_is_refused() {
    // Unsorted qubes, sealed by hand (seal() itself refuses them).
    let mut d = doc();
    d.qubes.reverse();
    assert!(matches!(d.seal(&KEY), Err(SealError::Encode(_))));
    let body = bincode::encode_to_vec(&d, bincode::config::standard()).unwrap();
    let sealed = seal(Purpose::Settings, &body, &KEY).unwrap();
    assert!(matches!(
        SettingsDoc::open(&sealed, &KEY),
        Err(SealError::BadBody(m)) if m.contains("sorted")
    ));
    // A body with trailing bytes.
    let mut body = bincode::encode_to_vec(index(), bincode::config::standard()).unwrap();
    body.push(0);
    let sealed = seal(Purpose::SetIndex, &body, &KEY).unwrap();
    assert!(matches!(
        SetIndex::open(&sealed, &KEY),
        Err(SealError::BadBody(m)) if m.contains("after the end")
    ));
    // A bad qube name, a repeated snapshot, a bad key id.
    let mut d = doc();
    d.qubes[0].name = "-bad".into();
    assert!(d.validate().is_err());
    let mut i = index();
    i.entries[1].snapshot = i.entries[0].snapshot.clone();
    i.entries[1].volume = true;
    assert!(i.validate().unwrap_err().contains("twice"));
    let mut i = index();
    i.key_id = "xyz".into();
    assert!(i.validate().is_err());
}

#[test]
fn decoding_arbitrary_bytes_never_panics() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for len in 0..600 {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let _ = SettingsDoc::decode_unverified(&bytes);
        let _ = SetIndex::decode_unverified(&bytes);
    }
}
