use super::*;

fn ds(s: &str) -> DatasetName {
    DatasetName::parse(s).unwrap()
}

fn label(s: &str) -> SnapLabel {
    SnapLabel::parse(s).unwrap()
}

#[test]
fn accepts_ordinary_zfs_names() {
    for ok in [
        "pool",
        "pool/a",
        "pool/a b/c:d.e_f-g",
        "p1/x",
        "tank/qubes/vm-work/private",
        "mainpool/qubes/work-email/private",
        "a/b.c/d:e",
        "p/with space",
        "mirrorpool/x",
        "logs",
        "spares",
    ] {
        assert!(DatasetName::parse(ok).is_ok(), "{ok}");
    }
    let snap = SnapshotName::parse("pool/a@qzb-2024-01-01").unwrap();
    assert_eq!(snap.dataset(), &ds("pool/a"));
    assert_eq!(snap.label().as_str(), "qzb-2024-01-01");
    assert_eq!(snap.as_str(), "pool/a@qzb-2024-01-01");
    assert!(SnapLabel::parse("qubes:before-start:1700000000").is_ok());
}

#[test]
fn rejects_hostile_dataset_names() {
    let cases: &[(&str, NameError)] = &[
        ("", NameError::Empty),
        ("/pool/a", NameError::LeadingOrTrailingSlash),
        ("pool/a/", NameError::LeadingOrTrailingSlash),
        ("pool//a", NameError::EmptyComponent),
        ("pool/../etc", NameError::DotComponent),
        ("pool/./a", NameError::DotComponent),
        ("pool/a\0b", NameError::BadChar { ch: '\0' }),
        ("pool/a\nb", NameError::BadChar { ch: '\n' }),
        ("pool/a\tb", NameError::BadChar { ch: '\t' }),
        ("pool/a@b", NameError::UnexpectedDelimiter { ch: '@' }),
        ("pool/a#b", NameError::UnexpectedDelimiter { ch: '#' }),
        ("pool/%recv", NameError::BadChar { ch: '%' }),
        ("pool/-o", NameError::LeadingDash),
        ("mainpool/-vm", NameError::LeadingDash),
        ("-pool", NameError::LeadingDash),
        ("1pool", NameError::PoolStartsWith { ch: '1' }),
        ("pool/é", NameError::BadChar { ch: 'é' }),
    ];
    for (name, want) in cases {
        assert_eq!(DatasetName::parse(name).unwrap_err(), *want, "{name:?}");
    }
    let long = format!("pool/{}", "a".repeat(251));
    assert_eq!(
        DatasetName::parse(&long).unwrap_err(),
        NameError::TooLong { len: 256, max: 255 }
    );
    assert!(DatasetName::parse(&format!("pool/{}", "a".repeat(250))).is_ok());
}

#[test]
fn pool_names_zfs_reserves_are_refused() {
    for bad in ["mirror", "raidz", "raidz2/x", "draid1:4d", "spare", "log/x"] {
        assert!(
            matches!(
                DatasetName::parse(bad),
                Err(NameError::ReservedPoolName { .. })
            ),
            "{bad}"
        );
    }
}

#[test]
fn rejects_hostile_snapshot_names() {
    for bad in [
        "pool/a",
        "pool/a@",
        "pool/a@b@c",
        "@b",
        "pool/a@b/c",
        "pool/a@b\n",
        "pool/a@-b",
        "pool/a@-x",
        "pool/a@..",
        "pool/a@b#c",
        "/pool@x",
        "1pool@x",
    ] {
        assert!(SnapshotName::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn snapshot_and_bookmark_names_are_at_most_255_bytes_in_all() {
    let dataset = ds(&format!("pool/{}", "d".repeat(200)));
    let long_label = label(&"l".repeat(240));
    assert_eq!(
        SnapshotName::new(dataset.clone(), long_label.clone()).unwrap_err(),
        NameError::CombinedTooLong { len: 205 + 1 + 240 }
    );
    assert_eq!(
        BookmarkName::new(dataset.clone(), long_label).unwrap_err(),
        NameError::CombinedTooLong { len: 205 + 1 + 240 }
    );
    let fits = label(&"l".repeat(255 - 206));
    assert_eq!(
        SnapshotName::new(dataset.clone(), fits.clone())
            .unwrap()
            .as_str()
            .len(),
        255
    );
    let too_long = label(&"l".repeat(255 - 205));
    assert!(SnapshotName::new(dataset, too_long).is_err());
    assert!(SnapLabel::parse(&"l".repeat(254)).is_err());
    assert!(SnapshotName::parse(&format!("p@{}", "l".repeat(253))).is_ok());
}

#[test]
fn bookmark_names_parse_like_snapshot_names() {
    let b = BookmarkName::parse("pool/a#bm-1").unwrap();
    assert_eq!(b.dataset(), &ds("pool/a"));
    assert_eq!(b.label().as_str(), "bm-1");
    assert_eq!(b.to_string(), "pool/a#bm-1");
    for bad in ["pool/a", "pool/a#", "pool/a#b#c", "pool/a@b", "pool/a#-x"] {
        assert!(BookmarkName::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn labels_need_their_at_sign_where_the_config_writes_them() {
    assert_eq!(SnapLabel::parse_with_at("@b-1").unwrap().as_str(), "b-1");
    assert_eq!(
        SnapLabel::parse_with_at("b-1").unwrap_err(),
        NameError::MissingAt
    );
    assert_eq!(
        SnapLabel::parse_with_at("@").unwrap_err(),
        NameError::EmptyLabel
    );
    assert!(SnapLabel::parse_with_at("@a@b").is_err());
    assert_eq!(
        SnapLabel::parse_with_at("@-x").unwrap_err(),
        NameError::LeadingDash
    );
    assert_eq!(label("b-1").to_string(), "@b-1");
}

#[test]
fn strictly_under_requires_a_component_boundary() {
    let root = ds("pool/backup");
    assert!(ds("pool/backup/a").is_strictly_under(&root));
    assert!(ds("pool/backup/a/b").is_strictly_under(&root));
    assert!(!ds("pool/backup").is_strictly_under(&root));
    assert!(!ds("pool/backupx/a").is_strictly_under(&root));
    assert!(!ds("pool/back").is_strictly_under(&root));
    assert!(!ds("other/backup/a").is_strictly_under(&root));
    assert!(ds("pool/backup/a").is_strictly_under("pool"));
    assert!(SnapshotName::parse("pool/backup/a@s")
        .unwrap()
        .is_strictly_under(&root));
    assert!(!SnapshotName::parse("pool/backup@s")
        .unwrap()
        .is_strictly_under(&root));
    let d = ds("pool/ab/c");
    assert_eq!(d.ancestors().collect::<Vec<_>>(), ["pool/ab", "pool"]);
    assert_eq!(d.parent().unwrap().as_str(), "pool/ab");
    assert_eq!(d.leaf(), "c");
    assert_eq!(d.pool(), "pool");
    assert_eq!(d.depth(), 3);
    assert_eq!(d.under(&ds("b/r")).unwrap(), ds("b/r/pool/ab/c"));
}

#[test]
fn intermediates_lists_missing_parents_outermost_first() {
    let root = ds("pool/r");
    assert_eq!(
        ds("pool/r/a/b/c").intermediates_below(&root).unwrap(),
        vec![ds("pool/r/a"), ds("pool/r/a/b")]
    );
    assert!(ds("pool/r/a")
        .intermediates_below(&root)
        .unwrap()
        .is_empty());
    assert!(ds("pool/x/a").intermediates_below(&root).is_none());
}

#[test]
fn qube_names_follow_qubes_rules() {
    for ok in ["work", "sys-usb", "fedora-41.xfce", "a_b"] {
        assert!(QubeName::parse(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        "1work",
        "-work",
        "wo rk",
        "work/x",
        "a".repeat(32).as_str(),
    ] {
        assert!(QubeName::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn error_messages_show_characters_for_an_admin_not_as_rust_escapes() {
    let msg = DatasetName::parse("pool/a\nb").unwrap_err().to_string();
    assert!(msg.contains("U+000A"), "{msg}");
    assert!(!msg.contains("\\n"), "{msg}");
    let msg = DatasetName::parse("pool/a%b").unwrap_err().to_string();
    assert!(msg.contains("'%'"), "{msg}");
    let msg = QubeName::parse("wo rk").unwrap_err().to_string();
    assert!(msg.contains("U+0020"), "{msg}");
}

#[test]
fn component_order_puts_children_before_siblings_with_longer_names() {
    let mut v = vec!["a-b", "a/b", "a"];
    v.sort_by(|x, y| cmp_components(x, y));
    assert_eq!(v, ["a", "a/b", "a-b"]);
}

#[test]
fn names_refuse_invalid_strings_when_decoded_from_bincode() {
    let config = bincode::config::standard();
    let bytes = bincode::encode_to_vec("pool/../x".to_string(), config).unwrap();
    let err = bincode::decode_from_slice::<DatasetName, _>(&bytes, config).unwrap_err();
    assert!(err.to_string().contains("invalid dataset name"), "{err}");
    let bytes = bincode::encode_to_vec(ds("pool/a"), config).unwrap();
    let (back, _) = bincode::decode_from_slice::<DatasetName, _>(&bytes, config).unwrap();
    assert_eq!(back, ds("pool/a"));
}

#[test]
fn names_are_encoded_on_the_wire_exactly_as_their_strings() {
    let config = bincode::config::standard();
    let snap = SnapshotName::parse("pool/a@s1").unwrap();
    assert_eq!(
        bincode::encode_to_vec(&snap, config).unwrap(),
        bincode::encode_to_vec("pool/a@s1".to_string(), config).unwrap()
    );
    assert_eq!(
        bincode::encode_to_vec(ds("pool/a"), config).unwrap(),
        bincode::encode_to_vec("pool/a".to_string(), config).unwrap()
    );
}

#[test]
fn blob_names_are_relative_paths_that_cannot_leave_their_directory() {
    for ok in [
        "a",
        "manifests/mainpool/qubes/work/private/000001.hdr",
        "sets/2024-01-01_12.00.00",
        "x-y_z.0",
        "a/b/c/d/e/f/g/h",
    ] {
        assert_eq!(BlobName::parse(ok).unwrap().as_str(), ok);
    }
    let cases: &[(&str, NameError)] = &[
        ("", NameError::Empty),
        ("/etc/passwd", NameError::LeadingOrTrailingSlash),
        ("a/", NameError::LeadingOrTrailingSlash),
        ("a//b", NameError::EmptyComponent),
        ("..", NameError::BlobLeadingDot),
        ("a/../b", NameError::BlobLeadingDot),
        ("a/.", NameError::BlobLeadingDot),
        (".hidden", NameError::BlobLeadingDot),
        ("a/.tmp-1", NameError::BlobLeadingDot),
        ("A", NameError::BadBlobChar { ch: 'A' }),
        ("a b", NameError::BadBlobChar { ch: ' ' }),
        ("a:b", NameError::BadBlobChar { ch: ':' }),
        ("a\\b", NameError::BadBlobChar { ch: '\\' }),
        ("a\0", NameError::BadBlobChar { ch: '\0' }),
        ("é", NameError::BadBlobChar { ch: 'é' }),
        (
            "a/b/c/d/e/f/g/h/i",
            NameError::BlobTooDeep { components: 9 },
        ),
    ];
    for (name, want) in cases {
        assert_eq!(BlobName::parse(name).unwrap_err(), *want, "{name:?}");
    }
    let long = "a".repeat(MAX_BLOB_NAME_LEN + 1);
    assert_eq!(
        BlobName::parse(&long).unwrap_err(),
        NameError::TooLong {
            len: MAX_BLOB_NAME_LEN + 1,
            max: MAX_BLOB_NAME_LEN
        }
    );
    assert!(BlobName::parse(&"a".repeat(MAX_BLOB_NAME_LEN)).is_ok());
}

#[test]
fn a_blob_is_under_a_directory_prefix_only_at_a_component_boundary() {
    let b = |s: &str| BlobName::parse(s).unwrap();
    assert!(b("m/a/1").is_under(&b("m")));
    assert!(b("m/a/1").is_under(&b("m/a")));
    assert!(!b("ma/1").is_under(&b("m")));
    assert!(!b("m").is_under(&b("m")));
}
