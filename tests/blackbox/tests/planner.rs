//! The worked examples E1–E20 of the reference document, run through the real driver binary
//! against the fake system holding the reference inventory (§10.1), plus the command-level
//! behaviour of check, import, list, calc, status and snapshot.

use qzb_blackbox_tests::{run_with_reader_gone, FakeSystem, ReaderGone};
use serde_json::Value;

struct Cfg {
    name: &'static str,
    since: &'static str,
    progressive: bool,
    honour: bool,
    creation: bool,
    include: Vec<(&'static str, Vec<&'static str>)>,
    forgo: Vec<(&'static str, Vec<&'static str>)>,
    void: Vec<(&'static str, Vec<&'static str>)>,
}

impl Default for Cfg {
    fn default() -> Self {
        Cfg {
            name: "example",
            since: "beginning",
            progressive: false,
            honour: false,
            creation: true,
            include: vec![],
            forgo: vec![],
            void: vec![],
        }
    }
}

impl Cfg {
    fn text(&self) -> String {
        let yn = |b: bool| if b { "yes" } else { "no" };
        let since = if self.since == "beginning" {
            "beginning".to_owned()
        } else {
            format!("\"{}\"", self.since)
        };
        let mut t = format!(
            "name: {}\nscope:\n  target-snapshot: \"@b2\"\n  since: {since}\n  progressive: {}\n  honour-origins: {}\n\
             allowed-behaviours:\n  snapshot-creation: {}\n  patching: no\n\
             receiver:\n  qube: backups-disp\n  dataset: backuppool/backups/mydesktop\n",
            self.name,
            yn(self.progressive),
            yn(self.honour),
            yn(self.creation)
        );
        let mut defs = String::new();
        for (list, groups) in [
            ("include", &self.include),
            ("forgo", &self.forgo),
            ("void", &self.void),
        ] {
            t.push_str(&format!(
                "{list}-groups:{}\n",
                if groups.is_empty() { " []" } else { "" }
            ));
            for (i, (kind, members)) in groups.iter().enumerate() {
                t.push_str(&format!("  - {list}{i}\n"));
                defs.push_str(&format!("{list}{i}:\n  type: {kind}\n  members:\n"));
                for m in members {
                    defs.push_str(&format!("    - {m}\n"));
                }
            }
        }
        t + &defs
    }
}

fn short(s: &str) -> String {
    s.replace("mainpool/qubes/", "m/q/")
}

/// `check --json` targets as `snapshot <-i source` lines.
fn targets(v: &Value) -> Vec<String> {
    v["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let snap = short(t["snapshot"].as_str().unwrap());
            match t["incremental_source"].as_str() {
                None => snap,
                Some(src) => {
                    let flag = if t["progressive"].as_bool().unwrap() {
                        "-I"
                    } else {
                        "-i"
                    };
                    format!("{snap} <{flag} {}", short(src))
                }
            }
        })
        .collect()
}

fn check(sys: &FakeSystem, cfg: &Cfg) -> Value {
    let file = sys.write("c.yaml", &cfg.text());
    let run = sys.driver(&["check", "--json", &file]);
    run.expect(0);
    run.json()
}

fn reference() -> FakeSystem {
    FakeSystem::new("reference-system")
}

#[test]
fn e1_to_e11_and_e15_e16_targets_through_the_real_binary() {
    let sys = reference();
    let cases: Vec<(&str, Cfg, Vec<&str>)> = vec![
        (
            "E1",
            Cfg {
                include: vec![("qubes", vec!["work"])],
                ..Default::default()
            },
            vec!["m/q/work@b2", "m/q/work/private@b2"],
        ),
        (
            "E2",
            Cfg {
                progressive: true,
                include: vec![("qubes", vec!["work"])],
                ..Default::default()
            },
            vec![
                "m/q/work@b1",
                "m/q/work@b2 <-I m/q/work@b1",
                "m/q/work/private@s1",
                "m/q/work/private@b2 <-I m/q/work/private@s1",
            ],
        ),
        (
            "E3",
            Cfg {
                since: "@b1",
                include: vec![
                    ("qubes", vec!["work", "vault"]),
                    ("datasets", vec!["mainpool/dom0"]),
                ],
                ..Default::default()
            },
            vec![
                "m/q/work@b2 <-i m/q/work@b1",
                "m/q/work/private@b2 <-i m/q/work/private@b1",
                "m/q/vault@b2 <-i m/q/vault@b1",
                "m/q/vault/private@b2 <-i m/q/vault/private@b1",
                "mainpool/dom0@b2 <-i mainpool/dom0@b1",
                "mainpool/dom0/var@b2 <-i mainpool/dom0/var@b1",
            ],
        ),
        (
            "E4",
            Cfg {
                since: "@b1",
                include: vec![("qubes", vec!["work", "work-clone"])],
                ..Default::default()
            },
            vec![
                "m/q/work@b2 <-i m/q/work@b1",
                "m/q/work/private@b2 <-i m/q/work/private@b1",
                "m/q/work-clone@b2",
                "m/q/work-clone/private@b2",
            ],
        ),
        (
            "E5",
            Cfg {
                honour: true,
                include: vec![("qubes", vec!["work-clone"])],
                forgo: vec![("qubes", vec!["work"])],
                ..Default::default()
            },
            vec![
                "m/q/work-clone@b2",
                "m/q/work/private@s1",
                "m/q/work-clone/private@b2 <-i m/q/work/private@s1",
            ],
        ),
        (
            "E6",
            Cfg {
                honour: true,
                include: vec![("qubes", vec!["work-clone"])],
                void: vec![("qubes", vec!["work"])],
                ..Default::default()
            },
            vec!["m/q/work-clone@b2", "m/q/work-clone/private@b2"],
        ),
        (
            "E7",
            Cfg {
                since: "@c1",
                honour: true,
                include: vec![("qubes", vec!["dev"])],
                void: vec![("qubes", vec!["work-clone"])],
                ..Default::default()
            },
            vec![
                "m/q/dev@b2",
                "m/q/dev/private@b2 <-i m/q/work-clone/private@c1",
            ],
        ),
        (
            "E8",
            Cfg {
                honour: true,
                include: vec![("qubes", vec!["dev"])],
                ..Default::default()
            },
            vec![
                "m/q/dev@b2",
                "m/q/work/private@s1",
                "m/q/work-clone/private@c1 <-i m/q/work/private@s1",
                "m/q/dev/private@b2 <-i m/q/work-clone/private@c1",
            ],
        ),
        (
            "E9",
            Cfg {
                since: "@b1",
                include: vec![("datasets", vec!["mainpool/shared"])],
                void: vec![("datasets", vec!["mainpool/shared/junk"])],
                ..Default::default()
            },
            vec![
                "mainpool/shared@b2 <-i mainpool/shared@b1",
                "mainpool/shared/apps@b2 <-i mainpool/shared/apps@b1",
            ],
        ),
        // E10, intended: backup.py sends 25 targets including the voided qube's root and
        // volatile, disposables and hidden datasets; only persistent data is sent here.
        (
            "E10",
            Cfg {
                include: vec![("datasets", vec!["mainpool/qubes"])],
                void: vec![("qubes", vec!["work"])],
                ..Default::default()
            },
            vec![
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
                "m/q/work-clone/private@b2",
            ],
        ),
        (
            "E11",
            Cfg {
                include: vec![("qubes", vec!["sys-usb", "legacy", "games"])],
                ..Default::default()
            },
            vec![
                "auxpool/qubes/games@b2",
                "auxpool/qubes/games/private@b2",
                "m/q/games@b2",
                "m/q/games/root@b2",
            ],
        ),
        (
            "E15",
            Cfg {
                progressive: true,
                honour: true,
                include: vec![
                    ("datasets", vec!["mainpool/dom0"]),
                    ("qubes", vec!["vault", "work", "work-clone"]),
                ],
                forgo: vec![("qubes", vec!["fedora-41"])],
                ..Default::default()
            },
            vec![
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
                "m/q/work-clone/private@b2 <-I m/q/work/private@s1",
            ],
        ),
        // E16, intended: the origin s1 predates since (b1), so it cannot be received into the
        // receiver's work/private; the clone is sent without it instead of failing.
        (
            "E16",
            Cfg {
                since: "@b1",
                progressive: true,
                honour: true,
                include: vec![("qubes", vec!["work", "work-clone"])],
                forgo: vec![("qubes", vec!["fedora-41"])],
                ..Default::default()
            },
            vec![
                "m/q/work@b2 <-I m/q/work@b1",
                "m/q/work/private@b2 <-I m/q/work/private@b1",
                "m/q/work-clone@b2",
                "m/q/work-clone/private@c1",
                "m/q/work-clone/private@b2 <-I m/q/work-clone/private@c1",
            ],
        ),
    ];
    for (name, cfg, expected) in cases {
        let v = check(&sys, &cfg);
        assert_eq!(targets(&v), expected, "{name}");
    }
}

#[test]
fn e1_check_report_lists_designations_coverage_and_snapshot_counts() {
    let sys = reference();
    let cfg = Cfg {
        include: vec![("qubes", vec!["work"])],
        ..Default::default()
    };
    let file = sys.write("c.yaml", &cfg.text());
    let run = sys.driver(&["check", &file]);
    run.expect(0);
    let out = &run.stdout;
    for line in [
        "Config validation PASSED",
        "Included datasets:\n+ mainpool/qubes/work\n",
        "Warning: The following datasets have not been referenced. Consider explicitly including or excluding them:\n- auxpool\n- mainpool/dom0\n",
        "4 datasets have been automatically ignored",
        "22 datasets have been implicitly ignored",
        "3 are not being shown",
        "2 datasets inside included designations are left out",
        "0/2 required snapshots currently exist.",
        "2 snapshots are able to be automatically created.",
        "Retention: none set, so `prune` keeps every snapshot.",
        "Configuration can be imported",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    assert!(
        run.stderr
            .contains("Program finished successfully, but with 8 warnings."),
        "{}",
        run.stderr
    );
    // No colour codes when stdout is not a terminal.
    assert!(!out.contains('\x1b'));
    let v = check(&sys, &cfg);
    assert_eq!(
        v["designations"],
        serde_json::json!([{"dataset": "mainpool/qubes/work", "type": "include", "object": "qube:work"}])
    );
    assert_eq!(v["valid"], true);
}

#[test]
fn e12_collisions_are_reported_with_positions_and_exit_1() {
    let sys = reference();
    let cfg = Cfg {
        include: vec![
            ("datasets", vec!["mainpool/shared"]),
            ("qubes", vec!["work", "work"]),
        ],
        forgo: vec![("datasets", vec!["mainpool/shared/apps"])],
        ..Default::default()
    };
    let file = sys.write("c.yaml", &cfg.text());
    let run = sys.driver(&["check", &file]);
    run.expect(1);
    assert!(
        run.stderr.contains("listed twice in group 'include1'"),
        "{}",
        run.stderr
    );

    let cfg = Cfg {
        include: vec![("datasets", vec!["mainpool/shared"])],
        forgo: vec![("datasets", vec!["mainpool/shared/apps"])],
        ..Default::default()
    };
    let file = sys.write("c.yaml", &cfg.text());
    let run = sys.driver(&["check", &file]);
    run.expect(1);
    assert!(
        run.stderr.contains(":25:7: forgo0.members[0]: dataset:mainpool/shared/apps (forgo) is nested in mainpool/shared"),
        "{}",
        run.stderr
    );
    let run = sys.driver(&["check", "--json", &file]);
    run.expect(1);
    let v = run.json();
    assert_eq!(v["valid"], false);
    assert_eq!(v["errors"][0]["line"], 25);
    assert_eq!(v["errors"][0]["path"], "forgo0.members[0]");
}

#[test]
fn e13_structure_errors_are_all_reported_in_one_run() {
    let sys = reference();
    let text = "name: my backup\nscope: {target-snapshot: \"beginning\", since: \"@b1.0/x\", progressive: y, honour-origins: off}\n\
                allowed-behaviours: {snapshot-creation: 1}\nreceiver: {qube: backups-disp, dataset: \"backuppool//x\"}\n\
                include-groups: [core, missing]\nforgo-groups: [sys, core]\nvoid-groups: []\n\
                core: {type: qube, members: work}\nsys: {type: qubes, members: }\n";
    let file = sys.write("c.yaml", text);
    let run = sys.driver(&["check", &file]);
    run.expect(1);
    for needle in [
        "1:7: name:",
        "scope.target-snapshot: 'beginning' is only valid for 'since'",
        "scope.since:",
        "scope.progressive: expected yes or no, found the text \"y\" (write it unquoted: yes or no)",
        "allowed-behaviours.snapshot-creation: expected yes or no, found the number 1",
        "allowed-behaviours.patching: missing required key 'patching'",
        "receiver.dataset:",
        "include-groups[1]: group 'missing' is not defined",
        "forgo-groups[1]: group 'core' is listed in both 'include-groups' and 'forgo-groups'",
        "core.type: expected 'qubes' or 'datasets', found the text \"qube\"; did you mean 'qubes'?",
        "core.members: expected a list of members",
        "sys.members: group 'sys' has no members",
    ] {
        assert!(run.stderr.contains(needle), "missing {needle:?} in:\n{}", run.stderr);
    }
    assert!(
        run.stderr.contains("config is invalid, 12 error(s)"),
        "{}",
        run.stderr
    );
}

#[test]
fn e14_missing_dataset_is_named_by_its_own_key() {
    let sys = reference();
    let cfg = Cfg {
        include: vec![
            ("qubes", vec!["work", "vault"]),
            ("datasets", vec!["mainpool/nope", "mainpool/dom0"]),
        ],
        ..Default::default()
    };
    let file = sys.write("c.yaml", &cfg.text());
    let run = sys.driver(&["check", &file]);
    run.expect(1);
    assert!(
        run.stderr
            .contains("include1.members[0]: dataset 'mainpool/nope' does not exist"),
        "{}",
        run.stderr
    );
}

#[test]
fn e19_dependency_cycle_is_refused_at_check() {
    let sys = reference();
    // mainpool/x is a clone of its own child's snapshot mainpool/x/c@s, as in E19.
    let path = sys.state.join("dom0.json");
    let mut state: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let datasets = state["zfs"]["datasets"].as_object_mut().unwrap();
    datasets.insert(
        "mainpool/x".into(),
        serde_json::json!({"createtxg": 400, "origin": "mainpool/x/c@s"}),
    );
    datasets.insert(
        "mainpool/x/c".into(),
        serde_json::json!({"createtxg": 401, "snapshots": [{"name": "s", "createtxg": 500}]}),
    );
    std::fs::write(&path, serde_json::to_string(&state).unwrap()).unwrap();
    let cfg = Cfg {
        honour: true,
        include: vec![("datasets", vec!["mainpool/x"])],
        ..Default::default()
    };
    let file = sys.write("c.yaml", &cfg.text());
    let run = sys.driver(&["check", &file]);
    run.expect(1);
    assert!(
        run.stderr.contains("depend on each other in a cycle"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("mainpool/x@b2"), "{}", run.stderr);
}

#[test]
fn e20_since_equal_to_target_is_refused_and_no_snapshots_is_fine() {
    let sys = reference();
    let cfg = Cfg {
        since: "@b2",
        include: vec![("qubes", vec!["work"])],
        ..Default::default()
    };
    let file = sys.write("c.yaml", &cfg.text());
    let run = sys.driver(&["check", &file]);
    run.expect(1);
    assert!(
        run.stderr
            .contains("scope.since: 'since' is the same snapshot as 'target-snapshot'"),
        "{}",
        run.stderr
    );

    let text = Cfg {
        include: vec![("qubes", vec!["work"])],
        ..Default::default()
    }
    .text()
    .replace(
        "  dataset: backuppool",
        "  compression: lz4\n  dataset: backuppool",
    );
    let file = sys.write("c2.yaml", &text);
    let run = sys.driver(&["check", &file]);
    run.expect(1);
    assert!(
        run.stderr.contains("receiver.compression: unknown key"),
        "{}",
        run.stderr
    );

    let text = format!(
        "{}created: 2025-04-14\n",
        Cfg {
            include: vec![("qubes", vec!["work"])],
            ..Default::default()
        }
        .text()
    );
    let file = sys.write("c3.yaml", &text);
    let run = sys.driver(&["check", &file]);
    run.expect(1);
    assert!(run.stderr.contains("created"), "{}", run.stderr);
}

#[test]
fn missing_config_file_exits_4_and_unquoted_label_is_a_positioned_yaml_error() {
    let sys = reference();
    let run = sys.driver(&["check", "/nonexistent/backup.yaml"]);
    run.expect(4);
    assert!(
        run.stderr
            .contains("cannot read config file /nonexistent/backup.yaml"),
        "{}",
        run.stderr
    );

    let text = Cfg {
        include: vec![("qubes", vec!["work"])],
        ..Default::default()
    }
    .text()
    .replace("\"@b2\"", "@b2");
    let file = sys.write("c.yaml", &text);
    let run = sys.driver(&["check", &file]);
    run.expect(1);
    assert!(run.stderr.contains("c.yaml:3:"), "{}", run.stderr);
    assert!(run.stderr.contains("must be quoted"), "{}", run.stderr);
}

#[test]
fn import_refuses_an_existing_name_before_querying_and_replace_overrides() {
    let sys = reference();
    let cfg = Cfg {
        include: vec![("qubes", vec!["work"])],
        ..Default::default()
    };
    let file = sys.write("c.yaml", &cfg.text());
    sys.driver(&["import", &file]).expect(0);
    let calls_before = sys.calls().len();
    let run = sys.driver(&["import", &file]);
    run.expect(6);
    assert!(run.stderr.contains("already imported"), "{}", run.stderr);
    assert_eq!(
        sys.calls().len(),
        calls_before,
        "no system query before refusing"
    );
    sys.driver(&["import", "--replace", &file]).expect(0);
    let list = sys.driver(&["list", "--json"]);
    list.expect(0);
    assert_eq!(list.json()[0]["name"], "example");
    assert_eq!(list.json()[0]["targets"], 2);
    let check = sys.driver(&["check", &file]);
    assert!(
        check
            .stdout
            .contains("already exists, so importing with that name will fail"),
        "{}",
        check.stdout
    );
}

#[test]
fn commands_on_an_unknown_backup_say_so() {
    let sys = reference();
    for cmd in ["calc", "status", "snapshot"] {
        let run = sys.driver(&[cmd, "nosuch"]);
        run.expect(6);
        assert!(
            run.stderr.contains("no backup named 'nosuch' is imported"),
            "{cmd}: {}",
            run.stderr
        );
    }
}

#[test]
fn e18_snapshot_defers_running_qubes_and_picks_up_snapshots_made_by_hand() {
    let sys = reference();
    // In the reference system's running variant, `work` has its volumes attached read-write.
    let cfg = Cfg {
        include: vec![("qubes", vec!["work", "vault"])],
        ..Default::default()
    };
    let file = sys.write("c.yaml", &cfg.text());
    sys.driver(&["import", &file]).expect(0);
    let run = sys.driver(&["snapshot", "example"]);
    // Partial: what could be taken was, a running qube's snapshots wait (exit 10).
    run.expect(10);
    assert!(
        run.stdout.contains(
            "snapshotted mainpool/qubes/vault@b2\nsnapshotted mainpool/qubes/vault/private@b2\n"
        ),
        "{}",
        run.stdout
    );
    assert!(
        !run.stdout.contains("snapshotted mainpool/qubes/work"),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr.contains(
            "Deferred qube:work (2 snapshot(s)): mainpool/qubes/work/private is in use by work"
        ),
        "{}",
        run.stderr
    );
    assert!(
        run.stdout
            .contains("2/4 required snapshots currently exist."),
        "{}",
        run.stdout
    );

    // vault's two snapshots were taken in one atomic call, marked with the backup that made
    // them; nothing of work was touched.
    let snaps: Vec<Value> = sys
        .calls()
        .into_iter()
        .filter(|c| c["argv"][1] == "snapshot")
        .collect();
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert_eq!(
        snaps[0]["argv"],
        serde_json::json!([
            "zfs",
            "snapshot",
            "-o",
            "qubes-zfs-backup:created=example",
            "mainpool/qubes/vault@b2",
            "mainpool/qubes/vault/private@b2"
        ])
    );

    // The user snapshots `work` by hand; the next run picks it up instead of crashing.
    sys.zfs(
        "dom0",
        &[
            "snapshot",
            "mainpool/qubes/work@b2",
            "mainpool/qubes/work/private@b2",
        ],
    )
    .expect(0);
    let run = sys.driver(&["snapshot", "example"]);
    run.expect(0);
    assert!(
        run.stdout
            .contains("4/4 required snapshots currently exist."),
        "{}",
        run.stdout
    );
    let status = sys.driver(&["status", "--json", "example"]);
    let states: Vec<String> = status
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["snapshot_state"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(states, ["exists", "exists", "created", "created"]);
}

#[test]
fn snapshot_with_creation_disabled_only_reports() {
    let sys = reference();
    let cfg = Cfg {
        creation: false,
        include: vec![("qubes", vec!["vault"])],
        ..Default::default()
    };
    let file = sys.write("c.yaml", &cfg.text());
    sys.driver(&["import", &file]).expect(0);
    let run = sys.driver(&["snapshot", "example"]);
    // Nothing was done, and it says so (exit 11 in the one table).
    run.expect(11);
    assert!(
        run.stdout.contains("snapshot-creation is disabled"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("missing: mainpool/qubes/vault@b2"),
        "{}",
        run.stdout
    );
    assert!(!sys.calls().iter().any(|c| c["argv"][1] == "snapshot"));
}

#[test]
fn calc_estimates_every_existing_target_with_the_send_flags() {
    let sys = reference();
    let cfg = Cfg {
        since: "@b1",
        include: vec![("datasets", vec!["mainpool/dom0"])],
        ..Default::default()
    };
    let file = sys.write("c.yaml", &cfg.text());
    sys.driver(&["import", &file]).expect(0);
    let run = sys.driver(&["calc", "--json", "example"]);
    run.expect(0);
    let v = run.json();
    assert_eq!(v["targets"][0]["snapshot"], "mainpool/dom0@b2");
    assert!(v["targets"][0]["size_estimate"].as_u64().unwrap() > 0);
    assert_eq!(
        v["targets"][1]["size_estimate"],
        Value::Null,
        "dom0/var@b2 does not exist yet"
    );
    assert_eq!(v["complete"], false);
    let sends: Vec<Value> = sys
        .calls()
        .into_iter()
        .filter(|c| c["argv"][1] == "send")
        .collect();
    assert_eq!(
        sends[0]["argv"],
        serde_json::json!([
            "zfs",
            "send",
            "-n",
            "-v",
            "-P",
            "-L",
            "-e",
            "-c",
            "-p",
            "-i",
            "mainpool/dom0@b1",
            "mainpool/dom0@b2"
        ])
    );
    let status = sys.driver(&["status", "example"]);
    status.expect(0);
    assert!(
        status.stdout.contains("pending  exists"),
        "{}",
        status.stdout
    );
}

#[test]
fn seed_example_config_passes_check_on_the_demo_system() {
    let sys = FakeSystem::new("demo-system");
    let file = qzb_blackbox_tests::workspace().join("tests/fixtures/demo-system/backup1.yaml");
    let run = sys.driver(&["check", file.to_str().unwrap()]);
    run.expect(0);
    assert!(
        run.stdout.contains("+ mainpool/qubes/work-email\n"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("- mainpool/qubes/sys-net\n"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("Configuration can be imported"),
        "{}",
        run.stdout
    );
}

#[test]
fn output_that_cannot_be_written_is_exit_3_but_a_reader_that_stops_early_is_not_an_error() {
    let sys = reference();
    let cfg = Cfg {
        include: vec![("qubes", vec!["work"])],
        ..Default::default()
    };
    let file = sys.write("c.yaml", &cfg.text());

    // A full disk behind `> file`: the report is lost, so success would be a lie.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = sys
        .driver_command(&["check", &file])
        .stdout(full)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("the output could not be written: No space left on device"),
        "{stderr}"
    );

    // `check c.yaml | head -1`: the reader goes away; the check itself still decides.
    let run = run_with_reader_gone(sys.driver_command(&["check", &file]), ReaderGone::Stdout);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
}
