//! Names through the real binary: whatever ZFS, Qubes or the wire would refuse is refused by
//! `check`, at its config line; a backup's own name is checked before any file is touched.

use qzb_blackbox_tests::FakeSystem;

/// A config for the reference system including the datasets `members`, with this target label
/// and receiver dataset. Lines: 1 name, 3 target-snapshot, 11 receiver dataset, 16 first member.
fn config(label: &str, receiver_dataset: &str, members: &[&str]) -> String {
    let mut t = format!(
        "name: names\n\
         scope:\n  target-snapshot: \"{label}\"\n  since: beginning\n  progressive: no\n  honour-origins: no\n\
         allowed-behaviours:\n  snapshot-creation: yes\n  patching: no\n\
         receiver:\n  qube: backups-disp\n  dataset: {receiver_dataset}\n\
         include-groups: [data]\nforgo-groups: []\nvoid-groups: []\n\
         data:\n  type: datasets\n  members:\n"
    );
    for m in members {
        t.push_str(&format!("    - {m}\n"));
    }
    t
}

const RECEIVER: &str = "backuppool/backups/mydesktop";

/// Runs `check` on `text` and returns its stderr, after checking it refused the config.
fn refused(sys: &FakeSystem, text: &str) -> String {
    let file = sys.write("c.yaml", text);
    let run = sys.driver(&["check", &file]);
    run.expect(1);
    run.stderr.clone()
}

fn assert_has(stderr: &str, needle: &str) {
    assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
}

#[test]
fn check_refuses_a_dataset_component_starting_with_a_dash_at_its_line() {
    let sys = FakeSystem::new("reference-system");
    let err = refused(&sys, &config("@b2", RECEIVER, &["mainpool/-vm"]));
    assert_has(
        &err,
        ":19:7: data.members[0]: \"mainpool/-vm\" is not a valid ZFS dataset name: a component or label cannot start with '-'",
    );
}

#[test]
fn check_refuses_a_pool_name_not_starting_with_a_letter_at_its_line() {
    let sys = FakeSystem::new("reference-system");
    let err = refused(&sys, &config("@b2", RECEIVER, &["1pool/vm"]));
    assert_has(
        &err,
        ":19:7: data.members[0]: \"1pool/vm\" is not a valid ZFS dataset name: the pool name must start with a letter, not '1'",
    );
    let err = refused(&sys, &config("@b2", "1pool/backups", &["mainpool/dom0"]));
    assert_has(
        &err,
        ":12:12: receiver.dataset: \"1pool/backups\" is not a valid ZFS dataset name",
    );
}

#[test]
fn check_refuses_a_label_starting_with_a_dash_at_its_line() {
    let sys = FakeSystem::new("reference-system");
    let err = refused(&sys, &config("@-x", RECEIVER, &["mainpool/dom0"]));
    assert_has(
        &err,
        ":3:20: scope.target-snapshot: \"@-x\" is not a snapshot label: a component or label cannot start with '-'",
    );
}

#[test]
fn check_refuses_a_240_character_label_no_snapshot_could_carry_on_the_receiver() {
    let sys = FakeSystem::new("reference-system");
    let label = format!("@{}", "l".repeat(240));
    let err = refused(&sys, &config(&label, RECEIVER, &["mainpool/dom0"]));
    assert_has(&err, ":3:20: scope.target-snapshot: the label @lll");
    assert_has(&err, "is 240 bytes long");
    assert_has(&err, "ZFS allows at most 255");
}

#[test]
fn check_refuses_a_receiver_dataset_that_makes_a_target_name_too_long_at_its_line() {
    let sys = FakeSystem::new("reference-system");
    let receiver = format!("backuppool/{}", "r".repeat(189));
    assert_eq!(receiver.len(), 200);
    // 200 + '/' + 13 + '@' + 50 = 265 bytes on the receiver; 64 bytes on dom0.
    let label = format!("weekly-{}", "x".repeat(43));
    let err = refused(
        &sys,
        &config(&format!("@{label}"), &receiver, &["mainpool/dom0"]),
    );
    assert_has(
        &err,
        &format!(
            ":12:12: receiver.dataset: mainpool/dom0@{label} would be received as {receiver}/mainpool/dom0@{label}, which is 265 bytes long; ZFS allows at most 255"
        ),
    );
    // A label that fits alone but not with the included dataset on the receiver.
    let label = format!("@{}", "l".repeat(215));
    let err = refused(&sys, &config(&label, RECEIVER, &["mainpool/dom0"]));
    assert_has(&err, ":12:12: receiver.dataset: mainpool/dom0@lll");
    assert_has(&err, "which is 258 bytes long; ZFS allows at most 255");
}

#[test]
fn send_refuses_a_backup_name_that_is_a_path_before_creating_any_file() {
    let sys = FakeSystem::new("reference-system");
    let before = listing(&sys.dir);
    let run = sys.driver(&["send", "../escape"]);
    run.expect(2);
    assert_has(
        &run.stderr,
        "the character '/' is not allowed: use only letters, digits, '_', '-' and '.'",
    );
    assert!(!sys.dir.join("escape.lock").exists());
    assert!(!sys.meta.exists(), "the metadata directory was created");
    assert_eq!(listing(&sys.dir), before, "a file was created");
}

#[test]
fn backup_names_too_long_or_read_as_options_are_usage_errors_for_every_command() {
    let sys = FakeSystem::new("reference-system");
    let long = "a".repeat(5000);
    for cmd in [
        "send", "status", "snapshot", "calc", "verify", "abort", "prune",
    ] {
        let run = sys.driver(&[cmd, &long]);
        run.expect(2);
        assert_has(
            &run.stderr,
            "it is 5000 bytes long; a backup name has at most 64",
        );
        assert!(!run.stderr.contains("File name too long"), "{}", run.stderr);
        let run = sys.driver(&[cmd, "--", "-x"]);
        run.expect(2);
        assert_has(&run.stderr, "it must not start with '.' or '-'");
    }
    assert!(!sys.meta.exists(), "the metadata directory was created");
}

#[test]
fn a_config_whose_name_is_a_path_is_refused_at_its_line() {
    let sys = FakeSystem::new("reference-system");
    let text = config("@b2", RECEIVER, &["mainpool/dom0"]).replace("name: names", "name: ../x");
    let err = refused(&sys, &text);
    assert_has(
        &err,
        ":1:7: name: \"../x\" is not a valid backup name: the character '/' is not allowed",
    );
}

fn listing(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.push(p.display().to_string());
        }
    }
    out.sort();
    out
}
