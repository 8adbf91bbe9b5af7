//! The worked examples of the reference document (§10), on its inventory (§10.1).

use super::*;
use crate::config;
use crate::system::inventory::{
    Dataset, Pool, Qube, QubesInventory, Snapshot, Volume, ZfsInventory,
};
use std::collections::BTreeMap;

fn vol(name: &str, pool: &str, vid: &str, save: bool) -> Volume {
    Volume {
        name: name.into(),
        pool: pool.into(),
        vid: vid.into(),
        save_on_stop: save,
        snap_on_start: !save && name == "root",
        rw: true,
        ephemeral: false,
    }
}

fn qube(name: &str, class: &str, volumes: Vec<Volume>) -> Qube {
    Qube {
        name: name.into(),
        class: class.into(),
        state: "Halted".into(),
        volumes,
    }
}

fn appvm(name: &str) -> Qube {
    let v = |n: &str, save| vol(n, "zfs-main", &format!("mainpool/qubes/{name}/{n}"), save);
    qube(
        name,
        "AppVM",
        vec![v("root", false), v("private", true), v("volatile", false)],
    )
}

/// The inventory of reference §10.1.
pub fn reference_inventory() -> Inventory {
    let mut zfs = ZfsInventory::default();
    let datasets: &[(&str, bool, Option<&str>)] = &[
        ("mainpool", false, None),
        ("mainpool/dom0", false, None),
        ("mainpool/dom0/var", false, None),
        ("mainpool/qubes", false, None),
        ("mainpool/qubes/.importing", false, None),
        ("mainpool/qubes/.importing/tmpvol", true, None),
        ("mainpool/qubes/fedora-41", false, None),
        ("mainpool/qubes/fedora-41/private", true, None),
        ("mainpool/qubes/fedora-41/root", true, None),
        ("mainpool/qubes/work", false, None),
        ("mainpool/qubes/work/private", true, None),
        ("mainpool/qubes/work/volatile", true, None),
        (
            "mainpool/qubes/work/root",
            true,
            Some("mainpool/qubes/fedora-41/root@qubes-clean-aaaa"),
        ),
        ("mainpool/qubes/vault", false, None),
        ("mainpool/qubes/vault/private", true, None),
        ("mainpool/qubes/vault/notes", false, None),
        ("mainpool/qubes/work-clone", false, None),
        (
            "mainpool/qubes/work-clone/private",
            true,
            Some("mainpool/qubes/work/private@s1"),
        ),
        ("mainpool/qubes/dev", false, None),
        (
            "mainpool/qubes/dev/private",
            true,
            Some("mainpool/qubes/work-clone/private@c1"),
        ),
        ("mainpool/qubes/sys-usb", false, None),
        ("mainpool/qubes/sys-usb/private", true, None),
        ("mainpool/qubes/sys-usb/root", true, None),
        ("mainpool/qubes/sys-usb/volatile", true, None),
        ("mainpool/qubes/disp1234", false, None),
        ("mainpool/qubes/disp1234/private", true, None),
        ("mainpool/qubes/disp1234/root", true, None),
        ("mainpool/qubes/disp1234/volatile", true, None),
        ("mainpool/qubes/games", false, None),
        ("mainpool/qubes/games/root", true, None),
        ("mainpool/shared", false, None),
        ("mainpool/shared/apps", false, None),
        ("mainpool/shared/junk", false, None),
        ("auxpool", false, None),
        ("auxpool/qubes", false, None),
        ("auxpool/qubes/games", false, None),
        ("auxpool/qubes/games/private", true, None),
        ("auxpool/media", false, None),
    ];
    for (i, (name, is_vol, origin)) in datasets.iter().enumerate() {
        zfs.datasets.insert(
            (*name).into(),
            Dataset {
                name: DatasetName::parse(name).unwrap(),
                kind: if *is_vol {
                    DatasetKind::Volume
                } else {
                    DatasetKind::Filesystem
                },
                origin: origin.map(|o| SnapshotName::parse(o).unwrap()),
                createtxg: i as u64 + 1,
                guid: 1000 + i as u64,
            },
        );
    }
    let snaps: &[(u64, &str)] = &[
        (50, "mainpool/qubes/fedora-41/root@qubes-clean-aaaa"),
        (100, "mainpool/qubes/work/private@s1"),
        (150, "auxpool/qubes/games/private@g0"),
        (201, "mainpool/qubes/work@b1"),
        (202, "mainpool/qubes/work/private@b1"),
        (203, "mainpool/dom0@b1"),
        (204, "mainpool/dom0/var@b1"),
        (205, "mainpool/qubes/vault/private@b1"),
        (206, "mainpool/qubes/vault@b1"),
        (207, "mainpool/shared@b1"),
        (208, "mainpool/shared/apps@b1"),
        (209, "mainpool/shared/junk@b1"),
        (250, "mainpool/qubes/work-clone/private@c1"),
        (
            260,
            "mainpool/qubes/work/private@qubes:stop:1700000000.000000",
        ),
        (300, "mainpool/dom0@b2"),
    ];
    for (txg, name) in snaps {
        add_snapshot(&mut zfs, *txg, name);
    }

    let mut qubes = QubesInventory {
        pools: vec![
            Pool {
                name: "zfs-main".into(),
                driver: "zfs".into(),
                container: Some(DatasetName::parse("mainpool/qubes").unwrap()),
            },
            Pool {
                name: "zfs-aux".into(),
                driver: "zfs".into(),
                container: Some(DatasetName::parse("auxpool/qubes").unwrap()),
            },
            Pool {
                name: "varlibqubes".into(),
                driver: "file-reflink".into(),
                container: None,
            },
            Pool {
                name: "linux-kernel".into(),
                driver: "linux-kernel".into(),
                container: None,
            },
        ],
        qubes: BTreeMap::new(),
    };
    let t = |n: &str, save| {
        vol(
            n,
            "zfs-main",
            &format!("mainpool/qubes/fedora-41/{n}"),
            save,
        )
    };
    let dv = |q: &str, n: &str| vol(n, "zfs-main", &format!("mainpool/qubes/{q}/{n}"), false);
    let all = vec![
        qube("dom0", "AdminVM", vec![]),
        qube(
            "fedora-41",
            "TemplateVM",
            vec![t("root", true), t("private", true), t("volatile", false)],
        ),
        appvm("work"),
        appvm("vault"),
        appvm("work-clone"),
        appvm("dev"),
        qube(
            "sys-usb",
            "DispVM",
            vec![
                dv("sys-usb", "root"),
                dv("sys-usb", "private"),
                dv("sys-usb", "volatile"),
            ],
        ),
        qube(
            "disp1234",
            "DispVM",
            vec![
                dv("disp1234", "root"),
                dv("disp1234", "private"),
                dv("disp1234", "volatile"),
            ],
        ),
        qube(
            "games",
            "StandaloneVM",
            vec![
                vol("root", "zfs-main", "mainpool/qubes/games/root", true),
                vol("private", "zfs-aux", "auxpool/qubes/games/private", true),
                vol("volatile", "varlibqubes", "games/volatile", false),
            ],
        ),
        qube(
            "legacy",
            "AppVM",
            vec![
                vol("root", "varlibqubes", "legacy/root", false),
                vol("private", "varlibqubes", "legacy/private", true),
                vol("volatile", "varlibqubes", "legacy/volatile", false),
            ],
        ),
        qube("backups-disp", "AppVM", vec![]),
    ];
    for q in all {
        qubes.qubes.insert(q.name.clone(), q);
    }
    Inventory { zfs, qubes }
}

fn add_snapshot(zfs: &mut ZfsInventory, txg: u64, name: &str) {
    let s = SnapshotName::parse(name).unwrap();
    let list = zfs
        .snapshots
        .entry(s.dataset().as_str().to_owned())
        .or_default();
    list.push(Snapshot {
        label: s.label().clone(),
        createtxg: txg,
        guid: 5000 + txg,
    });
    list.sort_by_key(|x| x.createtxg);
}

struct Scenario {
    since: &'static str,
    progressive: bool,
    honour: bool,
    include: Vec<(&'static str, Vec<&'static str>)>,
    forgo: Vec<(&'static str, Vec<&'static str>)>,
    void: Vec<(&'static str, Vec<&'static str>)>,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            since: "beginning",
            progressive: false,
            honour: false,
            include: vec![],
            forgo: vec![],
            void: vec![],
        }
    }
}

/// Groups are written as (kind, members), kind "qubes" or "datasets"; names are generated.
fn config_text(s: &Scenario) -> String {
    let mut text = format!(
        "name: example\nscope:\n  target-snapshot: \"@b2\"\n  since: {}\n  progressive: {}\n  honour-origins: {}\n\
         allowed-behaviours:\n  snapshot-creation: yes\n  patching: no\n\
         receiver:\n  qube: backups-disp\n  dataset: backuppool/backups/mydesktop\n",
        if s.since == "beginning" { "beginning".to_owned() } else { format!("\"{}\"", s.since) },
        if s.progressive { "yes" } else { "no" },
        if s.honour { "yes" } else { "no" },
    );
    let mut defs = String::new();
    for (list, groups) in [
        ("include", &s.include),
        ("forgo", &s.forgo),
        ("void", &s.void),
    ] {
        text.push_str(&format!("{list}-groups:"));
        if groups.is_empty() {
            text.push_str(" []\n");
        } else {
            text.push('\n');
        }
        for (i, (kind, members)) in groups.iter().enumerate() {
            let g = format!("{list}-{i}");
            text.push_str(&format!("  - {g}\n"));
            defs.push_str(&format!("{g}:\n  type: {kind}\n  members:\n"));
            for m in members {
                defs.push_str(&format!("    - {m}\n"));
            }
        }
    }
    text + &defs
}

fn run(s: &Scenario) -> Plan {
    run_on(s, &reference_inventory())
}

fn run_on(s: &Scenario, inv: &Inventory) -> Plan {
    let text = config_text(s);
    let (cfg, _) = config::parse(&text).unwrap_or_else(|e| panic!("{text}\n{e:#?}"));
    plan(&cfg, inv)
}

fn short(s: &str) -> String {
    s.replace("mainpool/qubes/", "m/q/")
}

/// Targets as `snapshot <- source` lines in send order (`m/q` for `mainpool/qubes`).
fn lines(p: &Plan) -> Vec<String> {
    assert!(p.errors.is_empty(), "{:#?}", p.errors);
    p.targets
        .iter()
        .map(|t| {
            let flag = match (&t.incremental_source, t.progressive) {
                (None, _) => String::new(),
                (Some(src), false) => format!(" <-i {}", short(&src.to_string())),
                (Some(src), true) => format!(" <-I {}", short(&src.to_string())),
            };
            format!("{}{flag}", short(&t.snapshot.to_string()))
        })
        .collect()
}

fn warnings(p: &Plan) -> Vec<String> {
    p.warnings.iter().map(|w| w.message.clone()).collect()
}

#[test]
fn e1_one_appvm_full_send() {
    let p = run(&Scenario {
        include: vec![("qubes", vec!["work"])],
        ..Default::default()
    });
    assert_eq!(lines(&p), ["m/q/work@b2", "m/q/work/private@b2"]);
    assert!(p
        .targets
        .iter()
        .all(|t| t.guid.is_none() && t.is_creatable()));
    assert_eq!(p.targets[1].depends_on, [0]);
    let c = &p.coverage;
    assert_eq!(c.included.len(), 1);
    let unref: Vec<_> = c.unreferenced.iter().map(|d| d.as_str()).collect();
    // Intended difference: the named disposable sys-usb is recognised by its class and counted
    // as automatically ignored instead of "not referenced".
    assert_eq!(
        unref,
        [
            "auxpool",
            "mainpool/dom0",
            "mainpool/qubes/dev",
            "mainpool/qubes/fedora-41",
            "mainpool/qubes/games",
            "mainpool/qubes/vault",
            "mainpool/qubes/work-clone",
            "mainpool/shared"
        ]
    );
    assert_eq!(
        (c.auto_ignored, c.implicitly_ignored, c.not_shown),
        (4, 22, 3)
    );
    assert_eq!(c.excluded_inside_included, 2, "work/root and work/volatile");
    assert!(p.warnings.is_empty(), "{:?}", warnings(&p));
}

#[test]
fn e2_progressive_from_the_beginning_sends_a_primer_first() {
    let p = run(&Scenario {
        progressive: true,
        include: vec![("qubes", vec!["work"])],
        ..Default::default()
    });
    assert_eq!(
        lines(&p),
        [
            "m/q/work@b1",
            "m/q/work@b2 <-I m/q/work@b1",
            "m/q/work/private@s1",
            "m/q/work/private@b2 <-I m/q/work/private@s1"
        ]
    );
    assert_eq!(p.targets[0].reason, Reason::Primer);
    assert!(!p.targets[0].is_creatable());
    // both private targets hang under the parent's oldest target
    assert_eq!(p.targets[2].depends_on, [0]);
}

#[test]
fn e3_incremental_with_since_follows_object_order() {
    let p = run(&Scenario {
        since: "@b1",
        include: vec![
            ("qubes", vec!["work", "vault"]),
            ("datasets", vec!["mainpool/dom0"]),
        ],
        ..Default::default()
    });
    assert_eq!(
        lines(&p),
        [
            "m/q/work@b2 <-i m/q/work@b1",
            "m/q/work/private@b2 <-i m/q/work/private@b1",
            "m/q/vault@b2 <-i m/q/vault@b1",
            "m/q/vault/private@b2 <-i m/q/vault/private@b1",
            "mainpool/dom0@b2 <-i mainpool/dom0@b1",
            "mainpool/dom0/var@b2 <-i mainpool/dom0/var@b1"
        ]
    );
    assert_eq!(p.targets[4].guid, Some(5300), "dom0@b2 already exists");
    assert_eq!(
        warnings(&p),
        ["mainpool/qubes/vault/notes does not belong to qube 'vault' (it is not one of its volumes), and won't be included"]
    );
}

#[test]
fn e4_missing_since_gives_one_warning_listing_full_sends() {
    let p = run(&Scenario {
        since: "@b1",
        include: vec![("qubes", vec!["work", "work-clone"])],
        ..Default::default()
    });
    assert_eq!(
        lines(&p),
        [
            "m/q/work@b2 <-i m/q/work@b1",
            "m/q/work/private@b2 <-i m/q/work/private@b1",
            "m/q/work-clone@b2",
            "m/q/work-clone/private@b2"
        ]
    );
    assert_eq!(warnings(&p), ["2 dataset(s) have no @b1 snapshot, so they will be sent in full: mainpool/qubes/work-clone, mainpool/qubes/work-clone/private"]);
}

#[test]
fn e5_forgone_origin_is_sent_just_before_its_clone() {
    let p = run(&Scenario {
        honour: true,
        include: vec![("qubes", vec!["work-clone"])],
        forgo: vec![("qubes", vec!["work"])],
        ..Default::default()
    });
    assert_eq!(
        lines(&p),
        [
            "m/q/work-clone@b2",
            "m/q/work/private@s1",
            "m/q/work-clone/private@b2 <-i m/q/work/private@s1"
        ]
    );
    assert!(p.targets[2].clone_origin);
    assert_eq!(p.targets[1].reason, Reason::Dependency);
    assert_eq!(p.targets[1].object, None);
}

#[test]
fn e6_void_origin_is_not_used() {
    let p = run(&Scenario {
        honour: true,
        include: vec![("qubes", vec!["work-clone"])],
        void: vec![("qubes", vec!["work"])],
        ..Default::default()
    });
    assert_eq!(
        lines(&p),
        ["m/q/work-clone@b2", "m/q/work-clone/private@b2"]
    );
}

#[test]
fn e7_origin_label_equal_to_since_is_assumed_on_the_receiver() {
    let p = run(&Scenario {
        since: "@c1",
        honour: true,
        include: vec![("qubes", vec!["dev"])],
        void: vec![("qubes", vec!["work-clone"])],
        ..Default::default()
    });
    assert_eq!(
        lines(&p),
        [
            "m/q/dev@b2",
            "m/q/dev/private@b2 <-i m/q/work-clone/private@c1"
        ]
    );
    assert!(p.targets[1].clone_origin);
    assert_eq!(
        p.targets[1].depends_on,
        [0],
        "only the parent, not the origin"
    );
}

#[test]
fn e8_chain_of_clones_is_followed() {
    let p = run(&Scenario {
        honour: true,
        include: vec![("qubes", vec!["dev"])],
        ..Default::default()
    });
    assert_eq!(
        lines(&p),
        [
            "m/q/dev@b2",
            "m/q/work/private@s1",
            "m/q/work-clone/private@c1 <-i m/q/work/private@s1",
            "m/q/dev/private@b2 <-i m/q/work-clone/private@c1"
        ]
    );
}

#[test]
fn e9_void_inside_an_included_dataset_is_left_out() {
    let p = run(&Scenario {
        since: "@b1",
        include: vec![("datasets", vec!["mainpool/shared"])],
        void: vec![("datasets", vec!["mainpool/shared/junk"])],
        ..Default::default()
    });
    assert_eq!(
        lines(&p),
        [
            "mainpool/shared@b2 <-i mainpool/shared@b1",
            "mainpool/shared/apps@b2 <-i mainpool/shared/apps@b1"
        ]
    );
    assert_eq!(p.coverage.voided[0].as_str(), "mainpool/shared/junk");
}

#[test]
fn e10_void_qube_in_included_container_voids_its_whole_storage_and_transient_volumes_are_excluded()
{
    // backup.py sends 25 targets here, including work/root, work/volatile, disposables and
    // hidden datasets (its bugs 7 and 8). We send only persistent data.
    let p = run(&Scenario {
        include: vec![("datasets", vec!["mainpool/qubes"])],
        void: vec![("qubes", vec!["work"])],
        ..Default::default()
    });
    assert_eq!(
        lines(&p),
        [
            "mainpool/qubes@b2",
            "m/q/dev@b2",
            "m/q/dev/private@b2",
            "m/q/fedora-41@b2",
            "m/q/fedora-41/private@b2",
            "m/q/fedora-41/root@b2",
            "m/q/games@b2",
            "m/q/games/root@b2",
            "m/q/vault@b2",
            "m/q/vault/notes@b2",
            "m/q/vault/private@b2",
            "m/q/work-clone@b2",
            "m/q/work-clone/private@b2"
        ]
    );
    assert_eq!(
        p.coverage
            .voided
            .iter()
            .map(|d| d.as_str())
            .collect::<Vec<_>>(),
        ["mainpool/qubes/work"]
    );
}

#[test]
fn e11_disposable_non_zfs_and_multi_pool_qubes() {
    let p = run(&Scenario {
        include: vec![("qubes", vec!["sys-usb", "legacy", "games"])],
        ..Default::default()
    });
    assert_eq!(
        lines(&p),
        [
            "auxpool/qubes/games@b2",
            "auxpool/qubes/games/private@b2",
            "m/q/games@b2",
            "m/q/games/root@b2"
        ]
    );
    let w = warnings(&p);
    assert_eq!(w.len(), 3, "{w:#?}");
    assert!(w[0].contains("'sys-usb' contributes nothing") && w[0].contains("disposable"));
    assert!(w[1].contains("'legacy': volume(s) private are in pool 'varlibqubes'"));
    assert!(w[2].contains("'legacy' contributes nothing"));
    let inc: Vec<_> = p.designations.iter().map(|d| d.dataset.as_str()).collect();
    assert_eq!(inc, ["auxpool/qubes/games", "mainpool/qubes/games"]);
}

fn errors(p: &Plan) -> Vec<(String, String)> {
    p.errors
        .iter()
        .map(|e| (e.path.clone(), e.message.clone()))
        .collect()
}

#[test]
fn e12_collisions_are_errors_not_crashes() {
    let p = run(&Scenario {
        include: vec![("datasets", vec!["mainpool/shared"])],
        forgo: vec![("datasets", vec!["mainpool/shared/apps"])],
        ..Default::default()
    });
    assert_eq!(
        errors(&p),
        [(
            "forgo-0.members[0]".to_owned(),
            "dataset:mainpool/shared/apps (forgo) is nested in mainpool/shared, which dataset:mainpool/shared designates (include); only void designations may be nested".to_owned()
        )]
    );

    let p = run(&Scenario {
        include: vec![
            ("datasets", vec!["mainpool/qubes"]),
            ("qubes", vec!["work"]),
        ],
        ..Default::default()
    });
    assert_eq!(p.errors.len(), 1);
    assert!(p.errors[0]
        .message
        .starts_with("qube:work (include) is nested in mainpool/qubes"));
    assert_eq!(p.errors[0].path, "include-1.members[0]");

    let p = run(&Scenario {
        include: vec![("qubes", vec!["work", "vault"]), ("qubes", vec!["work"])],
        ..Default::default()
    });
    assert_eq!(
        errors(&p),
        [(
            "include-1.members[0]".to_owned(),
            "qube:work is listed more than once (groups 'include-0' and 'include-1')".to_owned()
        )]
    );

    let p = run(&Scenario {
        include: vec![
            ("qubes", vec!["work"]),
            ("datasets", vec!["mainpool/qubes/work"]),
        ],
        ..Default::default()
    });
    assert_eq!(
        errors(&p)[0].1,
        "qube:work and dataset:mainpool/qubes/work both designate mainpool/qubes/work; each dataset may be designated once"
    );
}

#[test]
fn e14_missing_members_are_named_correctly() {
    let p = run(&Scenario {
        include: vec![
            ("qubes", vec!["work", "vault"]),
            ("datasets", vec!["mainpool/nope", "mainpool/dom0"]),
        ],
        ..Default::default()
    });
    assert_eq!(
        errors(&p),
        [(
            "include-1.members[0]".to_owned(),
            "dataset 'mainpool/nope' does not exist".to_owned()
        )]
    );
    let p = run(&Scenario {
        include: vec![("datasets", vec!["mainpool/nope"])],
        forgo: vec![("qubes", vec!["ghost"])],
        ..Default::default()
    });
    assert_eq!(p.errors.len(), 2);
    assert_eq!(p.errors[1].message, "qube 'ghost' does not exist");
}

#[test]
fn e15_full_workflow_order() {
    let p = run(&Scenario {
        progressive: true,
        honour: true,
        include: vec![
            ("datasets", vec!["mainpool/dom0"]),
            ("qubes", vec!["vault", "work", "work-clone"]),
        ],
        forgo: vec![("qubes", vec!["fedora-41"])],
        ..Default::default()
    });
    assert_eq!(
        lines(&p),
        [
            "mainpool/dom0@b1",
            "mainpool/dom0@b2 <-I mainpool/dom0@b1",
            "mainpool/dom0/var@b1",
            "mainpool/dom0/var@b2 <-I mainpool/dom0/var@b1",
            "m/q/vault@b1",
            "m/q/vault@b2 <-I m/q/vault@b1",
            "m/q/vault/private@b1",
            "m/q/vault/private@b2 <-I m/q/vault/private@b1",
            "m/q/work@b1",
            "m/q/work@b2 <-I m/q/work@b1",
            "m/q/work/private@s1",
            "m/q/work/private@b2 <-I m/q/work/private@s1",
            "m/q/work-clone@b2",
            "m/q/work-clone/private@b2 <-I m/q/work/private@s1"
        ]
    );
    // 8 target snapshots, of which dom0@b2 exists already; primers and origins exist too.
    assert_eq!(p.targets.iter().filter(|t| t.is_creatable()).count(), 8);
    assert_eq!(p.targets.iter().filter(|t| t.guid.is_some()).count(), 7);
}

#[test]
fn e16_origin_older_than_since_is_not_used_fixing_backup_py_chaining_bug() {
    // backup.py plans work/private@s1 as a full send (which fails: the receiver has
    // work/private from the previous backup) and makes work/private@b2 incremental from s1.
    let p = run(&Scenario {
        since: "@b1",
        progressive: true,
        honour: true,
        include: vec![("qubes", vec!["work", "work-clone"])],
        forgo: vec![("qubes", vec!["fedora-41"])],
        ..Default::default()
    });
    assert_eq!(
        lines(&p),
        [
            "m/q/work@b2 <-I m/q/work@b1",
            "m/q/work/private@b2 <-I m/q/work/private@b1",
            "m/q/work-clone@b2",
            // progressive: with no usable source, the clone's oldest snapshot primes it
            "m/q/work-clone/private@c1",
            "m/q/work-clone/private@b2 <-I m/q/work-clone/private@c1"
        ]
    );
    let w = warnings(&p);
    assert!(
        w.iter().any(|m| m.contains("its origin mainpool/qubes/work/private@s1 is older than mainpool/qubes/work/private@b1")),
        "{w:#?}"
    );
}

#[test]
fn e19_dependency_cycle_is_reported_at_check_not_at_send() {
    let mut inv = reference_inventory();
    for (name, origin) in [
        ("mainpool/x", Some("mainpool/x/c@s")),
        ("mainpool/x/c", None),
    ] {
        inv.zfs.datasets.insert(
            name.into(),
            Dataset {
                name: DatasetName::parse(name).unwrap(),
                kind: DatasetKind::Filesystem,
                origin: origin.map(|o| SnapshotName::parse(o).unwrap()),
                createtxg: 400,
                guid: 77,
            },
        );
    }
    add_snapshot(&mut inv.zfs, 500, "mainpool/x/c@s");
    let p = run_on(
        &Scenario {
            honour: true,
            include: vec![("datasets", vec!["mainpool/x"])],
            ..Default::default()
        },
        &inv,
    );
    assert_eq!(p.errors.len(), 1, "{:#?}", p.errors);
    assert!(p.errors[0].message.contains("cycle"));
    assert!(p.errors[0].message.contains("mainpool/x@b2"));
}

#[test]
fn e20_system_without_snapshots_plans_full_sends() {
    let mut inv = reference_inventory();
    inv.zfs.snapshots.clear();
    let p = run_on(
        &Scenario {
            progressive: true,
            include: vec![("qubes", vec!["work"])],
            ..Default::default()
        },
        &inv,
    );
    assert_eq!(lines(&p), ["m/q/work@b2", "m/q/work/private@b2"]);
}

#[test]
fn hidden_and_disposable_datasets_inside_an_included_dataset_are_not_sent() {
    let p = run(&Scenario {
        include: vec![("datasets", vec!["mainpool/qubes"])],
        ..Default::default()
    });
    let l = lines(&p);
    assert!(!l.iter().any(|t| t.contains("/.importing")), "{l:#?}");
    assert!(!l
        .iter()
        .any(|t| t.contains("disp1234") || t.contains("sys-usb")));
    assert!(!l
        .iter()
        .any(|t| t.contains("volatile") || t.contains("work/root")));
    assert!(
        l.contains(&"m/q/fedora-41/root@b2".to_owned()),
        "template roots persist"
    );
}

#[test]
fn receiver_must_exist_and_be_a_suitable_qube() {
    let mut inv = reference_inventory();
    inv.qubes.qubes.remove("backups-disp");
    let p = run_on(
        &Scenario {
            include: vec![("qubes", vec!["work"])],
            ..Default::default()
        },
        &inv,
    );
    assert_eq!(
        errors(&p),
        [(
            "receiver.qube".to_owned(),
            "qube 'backups-disp' does not exist".to_owned()
        )]
    );
    let mut inv = reference_inventory();
    inv.qubes.qubes.insert(
        "backups-disp".into(),
        qube("backups-disp", "TemplateVM", vec![]),
    );
    let p = run_on(
        &Scenario {
            include: vec![("qubes", vec!["work"])],
            ..Default::default()
        },
        &inv,
    );
    assert!(p.errors[0].message.contains("is a TemplateVM"));
}

#[test]
fn send_order_puts_every_dependency_first() {
    let p = run(&Scenario {
        progressive: true,
        honour: true,
        include: vec![(
            "datasets",
            vec!["mainpool/qubes", "mainpool/dom0", "mainpool/shared"],
        )],
        ..Default::default()
    });
    assert!(p.errors.is_empty(), "{:#?}", p.errors);
    for (i, t) in p.targets.iter().enumerate() {
        for &d in &t.depends_on {
            assert!(
                d < i,
                "{} depends on later {}",
                t.snapshot,
                p.targets[d].snapshot
            );
        }
        if let Some(src) = &t.incremental_source {
            if let Some(j) = p.targets.iter().position(|x| &x.snapshot == src) {
                assert!(j < i);
            }
        }
    }
}

#[test]
fn a_dom0_dataset_too_long_for_its_target_snapshot_is_refused_at_the_target_label() {
    let mut inv = reference_inventory();
    // 253 bytes: valid as a dataset, but `…@b2` would be 256.
    let long = format!(
        "mainpool/shared/{}",
        "l".repeat(253 - "mainpool/shared/".len())
    );
    inv.zfs.datasets.insert(
        long.clone(),
        Dataset {
            name: DatasetName::parse(&long).unwrap(),
            kind: DatasetKind::Filesystem,
            origin: None,
            createtxg: 900,
            guid: 9000,
        },
    );
    let p = run_on(
        &Scenario {
            include: vec![("datasets", vec!["mainpool/shared"])],
            ..Default::default()
        },
        &inv,
    );
    let e = p
        .errors
        .iter()
        .find(|e| e.path == "scope.target-snapshot")
        .unwrap_or_else(|| panic!("{:#?}", p.errors));
    assert_eq!(e.line, Some(3));
    assert!(
        e.message.contains(&format!(
            "the target snapshot of the included dataset {long} cannot be named {long}@b2: with its dataset the full name would be 256 bytes long; ZFS allows at most 255"
        )),
        "{}",
        e.message
    );
    assert!(p.targets.is_empty());
}

#[test]
fn a_target_too_long_on_the_receiver_is_refused_at_the_receiver_dataset() {
    let mut inv = reference_inventory();
    // Fits on dom0 (230 + 3 bytes), not under backuppool/backups/mydesktop (+ 29 bytes).
    let long = format!(
        "mainpool/shared/{}",
        "l".repeat(230 - "mainpool/shared/".len())
    );
    inv.zfs.datasets.insert(
        long.clone(),
        Dataset {
            name: DatasetName::parse(&long).unwrap(),
            kind: DatasetKind::Filesystem,
            origin: None,
            createtxg: 900,
            guid: 9000,
        },
    );
    let p = run_on(
        &Scenario {
            include: vec![("datasets", vec!["mainpool/shared"])],
            ..Default::default()
        },
        &inv,
    );
    assert_eq!(p.errors.len(), 1, "{:#?}", p.errors);
    let e = &p.errors[0];
    assert_eq!(e.path, "receiver.dataset");
    assert_eq!(e.line, Some(12));
    assert!(
        e.message.contains(&format!(
            "{long}@b2 would be received as backuppool/backups/mydesktop/{long}@b2, which is 262 bytes long; ZFS allows at most 255"
        )),
        "{}",
        e.message
    );
}
