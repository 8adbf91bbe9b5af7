use super::plan::*;
use qzb_protocol::sets::{
    IndexEntry, IndexManifest, Property, QubeSettings, SetIndex, SettingsDoc, VolumeSettings,
};

fn prop(name: &str, kind: &str, value: &str) -> Property {
    Property {
        name: name.into(),
        is_default: false,
        kind: kind.into(),
        value: value.into(),
    }
}

fn qube(name: &str, class: &str, refs: &[(&str, &str)]) -> QubeSettings {
    let mut properties: Vec<Property> = refs.iter().map(|(p, v)| prop(p, "vm", v)).collect();
    properties.push(prop("label", "label", "red"));
    properties.sort_by(|a, b| a.name.cmp(&b.name));
    QubeSettings {
        name: name.into(),
        class: class.into(),
        properties,
        features: vec![],
        tags: vec![],
        firewall: Some(vec![]),
        devices: vec![],
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

fn set(qubes: Vec<QubeSettings>) -> (SettingsDoc, SetIndex) {
    let entries = qubes
        .iter()
        .enumerate()
        .map(|(i, q)| IndexEntry {
            snapshot: format!("pool/qubes/{}/private@b1", q.name),
            guid: 100 + i as u64,
            volume: true,
            stream: None,
            manifest: Some(IndexManifest {
                seq: 0,
                header_hash: [0; 32],
            }),
        })
        .collect();
    let mut qubes = qubes;
    qubes.sort_by(|a, b| a.name.cmp(&b.name));
    (
        SettingsDoc { captured: 1, qubes },
        SetIndex {
            backup: "b".into(),
            created: 2,
            key_id: "0011223344556677".into(),
            complete: true,
            settings_hash: None,
            entries,
        },
    )
}

fn existing(names: &[(&str, &str, bool)]) -> Vec<Existing> {
    names
        .iter()
        .map(|(n, c, r)| Existing {
            name: n.to_string(),
            class: c.to_string(),
            running: *r,
        })
        .collect()
}

fn order(p: &RestorePlan) -> Vec<&str> {
    p.qubes.iter().map(|q| q.name.as_str()).collect()
}

#[test]
fn templates_and_referenced_qubes_come_before_the_qubes_that_use_them() {
    let (s, i) = set(vec![
        qube(
            "work",
            "AppVM",
            &[("template", "fedora"), ("netvm", "sys-fw")],
        ),
        qube(
            "sys-fw",
            "AppVM",
            &[("template", "fedora"), ("netvm", "sys-net")],
        ),
        qube("sys-net", "AppVM", &[("template", "fedora")]),
        qube("fedora", "TemplateVM", &[]),
    ]);
    let p = plan(&s, &i, &[], &Choice::default()).unwrap();
    assert_eq!(order(&p), ["fedora", "sys-net", "sys-fw", "work"]);
    let work = &p.qubes[3];
    assert!(work.references.contains(&Reference {
        property: "netvm".into(),
        original: "sys-fw".into(),
        target: Target::Restored("sys-fw".into())
    }));
    assert_eq!(work.volumes[0].snapshot, "pool/qubes/work/private@b1");
}

#[test]
fn a_missing_template_is_an_error_unless_mapped_or_reset_to_the_default() {
    let (s, i) = set(vec![qube("work", "AppVM", &[("template", "fedora-38")])]);
    let err = plan(&s, &i, &[], &Choice::default()).unwrap_err();
    assert!(
        err.0[0].contains("work: its template fedora-38 is neither restored nor on this system")
            && err.0[0].contains("--map fedora-38=QUBE"),
        "{err}"
    );
    let here = existing(&[("fedora-41", "TemplateVM", false)]);
    let mut choice = Choice::default();
    choice.map.insert("fedora-38".into(), "fedora-41".into());
    let p = plan(&s, &i, &here, &choice).unwrap();
    assert_eq!(
        p.qubes[0].references[0].target,
        Target::Existing("fedora-41".into())
    );
    let choice = Choice {
        default_missing: true,
        ..Choice::default()
    };
    let p = plan(&s, &i, &here, &choice).unwrap();
    assert_eq!(p.qubes[0].references[0].target, Target::Default);
    // A mapping to a qube that is nowhere is an error too.
    let mut choice = Choice::default();
    choice.map.insert("fedora-38".into(), "nowhere".into());
    assert!(plan(&s, &i, &here, &choice).unwrap_err().0[0].contains("--map fedora-38=nowhere"));
}

#[test]
fn a_taken_name_is_skipped_renamed_or_replaced_and_references_follow_the_new_name() {
    let (s, i) = set(vec![
        qube("sys-fw", "AppVM", &[]),
        qube("work", "AppVM", &[("netvm", "sys-fw")]),
    ]);
    let here = existing(&[("sys-fw", "AppVM", false), ("sys-fw1", "AppVM", false)]);
    // Skip (the default): work uses the existing sys-fw.
    let p = plan(&s, &i, &here, &Choice::default()).unwrap();
    assert_eq!(order(&p), ["work"]);
    assert_eq!(p.skipped[0].0, "sys-fw");
    assert_eq!(
        p.qubes[0].references[0].target,
        Target::Existing("sys-fw".into())
    );
    // Rename: sys-fw1 is taken too, so sys-fw2; work points to it.
    let choice = Choice {
        conflict: Conflict::Rename,
        ..Choice::default()
    };
    let p = plan(&s, &i, &here, &choice).unwrap();
    assert_eq!(order(&p), ["sys-fw2", "work"]);
    assert_eq!(p.qubes[0].original, "sys-fw");
    assert_eq!(
        p.qubes[1].references[0].target,
        Target::Restored("sys-fw2".into())
    );
    // Replace: only a halted qube of the same class.
    let choice = Choice {
        conflict: Conflict::Replace,
        ..Choice::default()
    };
    let p = plan(&s, &i, &here, &choice).unwrap();
    assert_eq!(p.qubes[0].action, Action::Replace);
    let running = existing(&[("sys-fw", "AppVM", true)]);
    let p = plan(&s, &i, &running, &choice).unwrap();
    assert_eq!(order(&p), ["work"]);
    assert!(p.skipped[0].1.contains("running"));
    let other = existing(&[("sys-fw", "StandaloneVM", false)]);
    assert!(plan(&s, &i, &other, &choice).unwrap_err().0[0].contains("same class"));
}

#[test]
fn renamed_names_fit_31_characters_and_avoid_every_taken_name() {
    let long = "a".repeat(31);
    let taken = |n: &str| n == format!("{}1", &long[..30]);
    assert_eq!(
        free_name(&long, &taken).unwrap(),
        format!("{}2", &long[..30])
    );
    assert_eq!(free_name("w", &|_| true), None);
}

#[test]
fn selection_and_exclusion_name_qubes_of_the_set_only() {
    let (s, i) = set(vec![qube("a", "AppVM", &[]), qube("b", "AppVM", &[])]);
    let choice = Choice {
        only: vec!["a".into()],
        ..Choice::default()
    };
    let p = plan(&s, &i, &[], &choice).unwrap();
    assert_eq!(order(&p), ["a"]);
    assert_eq!(p.skipped, [("b".to_owned(), "not selected".to_owned())]);
    let choice = Choice {
        exclude: vec!["zzz".into()],
        ..Choice::default()
    };
    assert!(plan(&s, &i, &[], &choice).unwrap_err().0[0].contains("zzz is not in this backup set"));
}

#[test]
fn a_volume_without_a_manifest_is_not_restored_and_says_why() {
    let (s, mut i) = set(vec![qube("a", "AppVM", &[])]);
    i.entries[0].manifest = None;
    let p = plan(&s, &i, &[], &Choice::default()).unwrap();
    assert!(p.qubes[0].volumes.is_empty());
    assert!(p.qubes[0].unrestorable[0].contains("no manifest"));
}

#[test]
fn a_reference_cycle_is_refused() {
    let (s, i) = set(vec![
        qube("a", "AppVM", &[("netvm", "b")]),
        qube("b", "AppVM", &[("netvm", "a")]),
    ]);
    let err = plan(&s, &i, &[], &Choice::default()).unwrap_err();
    assert!(err.0[0].contains("cycle"), "{err}");
}

#[test]
fn the_summary_table_has_a_row_per_volume_and_one_per_qube_that_failed_before_its_volumes() {
    use super::execute::{summary_table, Outcome, VolumeRow};
    use std::time::Duration;
    let planned = |name: &str, original: &str| PlannedQube {
        name: name.into(),
        original: original.into(),
        class: "AppVM".into(),
        action: Action::Create,
        references: vec![],
        volumes: vec![PlannedVolume {
            volume: "private".into(),
            snapshot: format!("pool/qubes/{original}/private@b1"),
            guid: 1,
        }],
        unrestorable: vec![],
    };
    let plan = RestorePlan {
        qubes: vec![
            planned("vault1", "vault"),
            planned("work1", "work"),
            planned("dev", "dev"),
            planned("mail", "mail"),
        ],
        skipped: vec![],
    };
    let outcome = Outcome {
        restored: vec!["vault1".into()],
        failed: vec![
            ("work1".into(), "creating it failed: no".into()),
            ("dev".into(), "volume private: altered".into()),
        ],
        warnings: vec![],
        volumes: vec![
            VolumeRow {
                qube: "vault1".into(),
                volume: "private".into(),
                checked: Some((64, 1 << 20)),
                elapsed: Duration::from_secs(2),
                error: None,
            },
            VolumeRow {
                qube: "dev".into(),
                volume: "private".into(),
                checked: None,
                elapsed: Duration::from_secs(61),
                error: Some("altered".into()),
            },
        ],
    };
    assert_eq!(
        summary_table(&plan, &outcome, "restored"),
        [
            "  QUBE    VOLUME   DATA     TIME     RATE       RESULT",
            "  vault1  private  1.0 MiB  0:00:02  512 KiB/s  restored",
            "  work1   -        -        -        -          FAILED",
            "  dev     private  -        0:01:01  -          FAILED",
            "  mail    -        -        -        -          not attempted",
        ]
    );
}
