//! `prune`: the retention of the snapshots a backup made in dom0, on the fake system.
//!
//! The scene (`scene()`): the backup `daily` of `mainpool/dom0/var` ran five times (`@r1` …
//! `@r5`, one a day, each snapshotted by the driver and sent incrementally), the fifth send was
//! cut mid-stream (partial, resumable from `@r4`); the backup `offsite` sent `@r2` to another
//! medium; `@manual` was made by hand and `@b1` came with the system. The grid keeps the last
//! snapshot and one a day for one day. So `prune daily` may destroy `@r1` and `@r3` only:
//! `@r2` is offsite's newest base, `@r4` the interrupted transfer's source, `@r5` the newest
//! (and the interrupted target), `@b1` and `@manual` are not the tool's.

use qzb_blackbox_tests::{FakeSystem, Run};
use serde_json::Value;

const DS: &str = "mainpool/dom0/var";
/// 2026-12-03T00:00:00Z.
const T0: u64 = 1_796_256_000;
const DAY: u64 = 86_400;
const MIB: u64 = 1 << 20;

fn daily_config(label: &str, since: &str, retention: bool) -> String {
    let mut text = format!(
        r#"name: daily
scope:
  target-snapshot: "@{label}"
  since: {since}
  progressive: no
  honour-origins: no
allowed-behaviours:
  snapshot-creation: yes
  patching: no
receiver:
  qube: backups-disp
  dataset: backuppool/backups/mydesktop
include-groups: [var]
forgo-groups: []
void-groups: []
var:
  type: datasets
  members: [{DS}]
"#
    );
    if retention {
        text.push_str("retention:\n  source:\n    last: 1\n    daily: 1\n");
    }
    text
}

const OFFSITE_CONFIG: &str = r#"name: offsite
scope:
  target-snapshot: "@r2"
  since: beginning
  progressive: no
  honour-origins: no
allowed-behaviours:
  snapshot-creation: no
  patching: no
receiver:
  qube: backups-disp
  dataset: backuppool/backups/offsite
include-groups: [var]
forgo-groups: []
void-groups: []
var:
  type: datasets
  members: [mainpool/dom0/var]
"#;

fn dom0(sys: &FakeSystem) -> Value {
    let text = std::fs::read_to_string(sys.state.join("dom0.json")).expect("dom0.json");
    serde_json::from_str(&text).expect("dom0.json is JSON")
}

fn write_dom0(sys: &FakeSystem, v: &Value) {
    std::fs::write(
        sys.state.join("dom0.json"),
        serde_json::to_string_pretty(v).expect("JSON"),
    )
    .expect("write dom0.json");
}

/// The labels of the dataset's snapshots, oldest first.
fn labels(sys: &FakeSystem) -> Vec<String> {
    dom0(sys)["zfs"]["datasets"][DS]["snapshots"]
        .as_array()
        .expect("snapshots")
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Sets the creation time and `used` of the dataset's snapshots, by label.
fn set_times(sys: &FakeSystem, times: &[(&str, u64, u64)]) {
    let mut v = dom0(sys);
    for s in v["zfs"]["datasets"][DS]["snapshots"]
        .as_array_mut()
        .expect("snapshots")
    {
        let label = s["name"].as_str().unwrap().to_owned();
        let (_, creation, used) = times
            .iter()
            .find(|(l, _, _)| *l == label)
            .unwrap_or_else(|| panic!("no time for @{label}"));
        s["creation"] = (*creation).into();
        s["used"] = (*used).into();
    }
    write_dom0(sys, &v);
}

/// One run of `daily`: import the config of `label`, snapshot, send.
fn run_daily(sys: &FakeSystem, label: &str, since: &str) -> Run {
    let file = sys.write(
        &format!("daily-{label}.yaml"),
        &daily_config(label, since, true),
    );
    let mut import = vec!["import", file.as_str()];
    if since != "beginning" {
        import.push("--replace");
    }
    sys.driver(&import).expect(0);
    let snap = sys.driver(&["snapshot", "daily"]);
    snap.expect(0);
    assert!(
        snap.stdout.contains(&format!("snapshotted {DS}@{label}")),
        "{}",
        snap.stdout
    );
    sys.driver(&["send", "daily"])
}

fn send_state(sys: &FakeSystem, backup: &str) -> Vec<String> {
    let run = sys.driver(&["status", "--json", backup]);
    run.expect(0);
    run.json()
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["send_state"].as_str().unwrap().to_owned())
        .collect()
}

fn scene() -> FakeSystem {
    let sys = FakeSystem::new("reference-system");
    // Snapshots of 16 MiB (incrementals of 4 MiB), so a send can be cut mid-stream.
    let mut v = dom0(&sys);
    v["zfs"]["datasets"][DS]["snapshots"][0]["size"] = (16 * MIB).into();
    write_dom0(&sys, &v);
    sys.zfs("backups-disp", &["create", "backuppool/backups/offsite"])
        .expect(0);

    run_daily(&sys, "r1", "beginning").expect(0);
    sys.zfs("dom0", &["snapshot", &format!("{DS}@manual")])
        .expect(0);
    run_daily(&sys, "r2", "\"@r1\"").expect(0);
    let file = sys.write("offsite.yaml", OFFSITE_CONFIG);
    sys.driver(&["import", &file]).expect(0);
    sys.driver(&["send", "offsite"]).expect(0);
    run_daily(&sys, "r3", "\"@r2\"").expect(0);
    run_daily(&sys, "r4", "\"@r3\"").expect(0);
    // The fifth send dies after 3 MiB of its 4: a resumable partial receive.
    sys.set_fake_env("QZB_FAKE_SEND_DIE_AFTER", (3 * MIB).to_string());
    sys.set_fake_env(
        "QZB_FAKE_FAULT_ONCE",
        sys.dir.join("fault-once").display().to_string(),
    );
    run_daily(&sys, "r5", "\"@r4\"").expect(8);
    sys.reset_fake_env();
    assert_eq!(send_state(&sys, "daily"), ["partial"]);

    // One a day from 2026-12-03; the hand-made one half a day after @r1.
    set_times(
        &sys,
        &[
            ("b1", T0 - 30 * DAY, 0),
            ("r1", T0, MIB),
            ("manual", T0 + DAY / 2, 5 * MIB),
            ("r2", T0 + DAY, 2 * MIB),
            ("r3", T0 + 2 * DAY, 3 * MIB),
            ("r4", T0 + 3 * DAY, 4 * MIB),
            ("r5", T0 + 4 * DAY, 0),
        ],
    );
    assert_eq!(labels(&sys), ["b1", "r1", "manual", "r2", "r3", "r4", "r5"]);
    sys
}

fn destroy_calls(sys: &FakeSystem) -> Vec<Value> {
    sys.calls()
        .into_iter()
        .filter(|c| c["host"] == "dom0" && c["argv"][1] == "destroy")
        .map(|c| c["argv"].clone())
        .collect()
}

/// The line of the dataset's snapshot `label` in a plan printed as text (`action name ...`).
fn line<'a>(stdout: &'a str, label: &str) -> &'a str {
    let name = format!("{DS}@{label}");
    stdout
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(name.as_str()))
        .unwrap_or_else(|| panic!("no line for @{label}:\n{stdout}"))
}

#[test]
fn a_dry_run_lists_what_goes_with_its_space_and_why_the_rest_stays_and_changes_nothing() {
    let sys = scene();
    let before = dom0(&sys);
    let run = sys.driver(&["prune", "daily"]);
    run.expect(0);
    let out = &run.stdout;
    assert!(
        out.contains("Retention of backup daily in dom0: last 1, daily 1"),
        "{out}"
    );
    for (label, size) in [("r1", "1.0 MiB"), ("r3", "3.0 MiB")] {
        let l = line(out, label);
        assert!(l.starts_with("destroy"), "{l}");
        assert!(l.contains(size), "{l}");
        assert!(l.contains("made by backup daily, outside its grid"), "{l}");
    }
    let kept = [
        ("b1", "not made by qubes-zfs-backup"),
        ("manual", "not made by qubes-zfs-backup"),
        (
            "r2",
            "the newest snapshot of its dataset on the medium backups-disp:backuppool/backups/offsite (backup offsite)",
        ),
        (
            "r4",
            "the incremental source of mainpool/dom0/var@r5 (backup daily, interrupted, resumable)",
        ),
        (
            "r5",
            "a target of backup daily whose transfer was interrupted (resumable); the newest snapshot this backup made of its dataset; last 1/1; daily 2026-12-07 (1/1)",
        ),
    ];
    for (label, why) in kept {
        let l = line(out, label);
        assert!(l.starts_with("keep"), "{l}");
        assert!(l.contains(why), "@{label}: {l}");
    }
    assert!(
        out.contains("Would destroy 2 snapshot(s), freeing at least 4.0 MiB (the sum of each one's own `used`"),
        "{out}"
    );
    assert!(out.contains("keeping 5."), "{out}");
    assert!(
        out.contains(
            "Dry run: nothing was destroyed. `qubes-zfs-backup prune daily --yes` destroys them."
        ),
        "{out}"
    );
    // Nothing changed, and no destroy was even tried.
    assert_eq!(dom0(&sys), before);
    assert!(destroy_calls(&sys).is_empty());

    // The same as one JSON object.
    let run = sys.driver(&["prune", "daily", "--json"]);
    run.expect(0);
    let v = run.json();
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["grid"]["last"], 1);
    assert_eq!(v["grid"]["daily"], 1);
    assert_eq!(v["destroy"], 2);
    assert_eq!(v["keep"], 5);
    assert_eq!(v["frees_at_least"], 4 * MIB);
    assert_eq!(v["frees_is_estimate"], true);
    let actions: Vec<(String, String, Value)> = v["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["snapshot"].as_str().unwrap().to_owned(),
                s["action"].as_str().unwrap().to_owned(),
                s["made_by"].clone(),
            )
        })
        .collect();
    let expect = |l: &str, a: &str, by: Value| (format!("{DS}@{l}"), a.to_owned(), by);
    // `snapshot` marked what it made with the backup's name; nothing else carries a mark.
    assert_eq!(
        actions,
        [
            expect("b1", "keep", Value::Null),
            expect("r1", "destroy", "daily".into()),
            expect("manual", "keep", Value::Null),
            expect("r2", "keep", "daily".into()),
            expect("r3", "destroy", "daily".into()),
            expect("r4", "keep", "daily".into()),
            expect("r5", "keep", "daily".into()),
        ]
    );
    assert_eq!(v["snapshots"][3]["reasons"][0]["kind"], "newest-on-medium");
    assert_eq!(
        v["snapshots"][5]["reasons"][0]["kind"],
        "incremental-source"
    );
    assert_eq!(dom0(&sys), before);
}

#[test]
fn yes_destroys_exactly_the_planned_snapshots_one_zfs_destroy_each() {
    let sys = scene();
    let run = sys.driver(&["prune", "daily", "--yes"]);
    run.expect(0);
    assert!(
        run.stdout
            .contains(&format!("destroyed {DS}@r1\ndestroyed {DS}@r3\n")),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("Destroyed 2 of 2 snapshot(s), freeing at least 4.0 MiB"),
        "{}",
        run.stdout
    );
    assert_eq!(
        destroy_calls(&sys),
        [
            serde_json::json!(["zfs", "destroy", format!("{DS}@r1")]),
            serde_json::json!(["zfs", "destroy", format!("{DS}@r3")]),
        ]
    );
    // Offsite's base, the interrupted transfer's snapshots and the ones not made by the tool
    // survive; the transfer still resumes.
    assert_eq!(labels(&sys), ["b1", "manual", "r2", "r4", "r5"]);
    let send = sys.driver(&["send", "daily"]);
    send.expect(0);
    assert!(
        send.stdout.contains("resuming the interrupted receive"),
        "{}",
        send.stdout
    );

    // With the transfer done, its source is needed no more: @r5 is now the medium's base.
    let run = sys.driver(&["prune", "daily", "--json"]);
    run.expect(0);
    let v = run.json();
    let destroy: Vec<&str> = v["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["action"] == "destroy")
        .map(|s| s["snapshot"].as_str().unwrap())
        .collect();
    assert_eq!(destroy, [format!("{DS}@r4")]);
    assert_eq!(v["frees_is_estimate"], false);
    let r5 = &v["snapshots"][4];
    assert_eq!(r5["snapshot"], format!("{DS}@r5"));
    assert_eq!(r5["reasons"][0]["kind"], "newest-on-medium");
    sys.driver(&["prune", "daily", "--yes"]).expect(0);
    assert_eq!(labels(&sys), ["b1", "manual", "r2", "r5"]);
    // Nothing left to prune says so.
    let run = sys.driver(&["prune", "daily"]);
    run.expect(0);
    assert!(
        run.stdout
            .contains("Nothing to prune: the grid, the media and the transfers keep all 2 snapshot(s) backup daily made."),
        "{}",
        run.stdout
    );
}

#[test]
fn check_shows_the_retention_grid_prune_will_apply() {
    let sys = FakeSystem::new("reference-system");
    let file = sys.write("daily.yaml", &daily_config("r1", "beginning", true));
    let run = sys.driver(&["check", &file]);
    run.expect(0);
    assert!(
        run.stdout.contains(
            "Retention: `prune daily` keeps last 1, daily 1 of the snapshots this backup makes in dom0, and what the media and transfers still need."
        ),
        "{}",
        run.stdout
    );
}

#[test]
fn without_a_retention_section_prune_keeps_everything_and_says_so() {
    let sys = FakeSystem::new("reference-system");
    let file = sys.write("daily.yaml", &daily_config("r1", "beginning", false));
    sys.driver(&["import", &file]).expect(0);
    sys.driver(&["snapshot", "daily"]).expect(0);
    for args in [&["prune", "daily"][..], &["prune", "daily", "--yes"][..]] {
        let run = sys.driver(args);
        run.expect(11);
        assert!(
            run.stderr
                .contains("backup daily has no 'retention' section in its config, so prune keeps every snapshot"),
            "{}",
            run.stderr
        );
    }
    assert!(destroy_calls(&sys).is_empty());
    assert_eq!(labels(&sys), ["b1", "r1"]);
}

#[test]
fn an_unreadable_state_of_another_backup_stops_prune_before_anything_is_destroyed() {
    let sys = FakeSystem::new("reference-system");
    let file = sys.write("daily.yaml", &daily_config("r1", "beginning", true));
    sys.driver(&["import", &file]).expect(0);
    sys.driver(&["snapshot", "daily"]).expect(0);
    std::fs::write(sys.meta.join("other.json"), "{ not json").unwrap();
    let run = sys.driver(&["prune", "daily", "--yes"]);
    run.expect(6);
    assert!(
        run.stderr.contains(
            "cannot tell which snapshots backup 'other' still needs, so nothing is pruned"
        ),
        "{}",
        run.stderr
    );
    assert!(destroy_calls(&sys).is_empty());
}
