use super::*;

/// The example config of the seed README, verbatim.
pub const SEED_EXAMPLE: &str = r#"name: mybackup1

scope:
  target-snapshot: "@backup-2025-04-14"
  since: beginning
  progressive: no
  honour-origins: no

allowed-behaviours:
  snapshot-creation: yes
  patching: no

receiver:
  qube: backups-disp
  dataset: backuppool/backups/mydesktop

include-groups:
  - core-qubes
  - dom0
  - misc
forgo-groups:
  - system
void-groups: []


# group definitions

core-qubes:
  type: qubes
  members:
    - social
    - personal-email
    - financial-accts
    - vault
    - work
    - work-email

misc:
  type: qubes
  members:
    - video-editing

dom0:
  type: datasets
  members:
    - mainpool/dom0

system:
  type: qubes
  members:
    - fedora-41-xfce
    - fedora-41-minimal
    - debian-12-xfce
    - default-dvm
    - default-mgmt-dvm
    - sys-firewall
    - sys-net
    - sys-usb
"#;

fn errors(text: &str) -> Vec<Diagnostic> {
    match parse(text) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => e,
    }
}

fn one_error(text: &str) -> Diagnostic {
    let e = errors(text);
    assert_eq!(e.len(), 1, "expected exactly one error, got {e:#?}");
    e.into_iter().next().unwrap()
}

fn with(replace: &str, by: &str) -> String {
    assert!(SEED_EXAMPLE.contains(replace), "{replace}");
    SEED_EXAMPLE.replacen(replace, by, 1)
}

#[test]
fn seed_example_config_parses_unchanged() {
    let (c, warnings) = parse(SEED_EXAMPLE).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(c.name.as_str(), "mybackup1");
    assert_eq!(c.target.as_str(), "backup-2025-04-14");
    assert_eq!(c.since, Since::Beginning);
    assert!(!c.progressive && !c.honour_origins && c.snapshot_creation && !c.patching);
    assert_eq!(c.receiver_qube.as_str(), "backups-disp");
    assert_eq!(c.receiver_dataset.as_str(), "backuppool/backups/mydesktop");
    let names: Vec<_> = c.groups.iter().map(|g| (g.name.as_str(), g.role)).collect();
    assert_eq!(
        names,
        [
            ("core-qubes", Role::Include),
            ("dom0", Role::Include),
            ("misc", Role::Include),
            ("system", Role::Forgo)
        ]
    );
    assert_eq!(c.groups[0].members.len(), 6);
    assert_eq!(c.groups[0].members[5].path, "core-qubes.members[5]");
    assert_eq!(c.groups[1].kind, GroupKind::Datasets);
    // No retention section: `prune` keeps everything.
    assert_eq!(c.retention, None);
}

#[test]
fn errors_name_line_column_and_key_path() {
    let e = one_error(&with("progressive: no", "progressive: maybe"));
    assert_eq!(e.path, "scope.progressive");
    assert_eq!((e.line, e.column), (Some(6), Some(16)));
    assert!(e.message.contains("expected yes or no"), "{}", e.message);
    assert!(e.message.contains("\"maybe\""), "{}", e.message);
}

#[test]
fn all_errors_are_reported_in_one_run() {
    let text = with("progressive: no", "progressive: 1")
        .replacen("patching: no", "patching: y", 1)
        .replacen("qube: backups-disp", "qube: 9lives", 1)
        .replacen(
            "dataset: backuppool/backups/mydesktop",
            "dataset: backuppool//x",
            1,
        );
    let e = errors(&text);
    let paths: Vec<_> = e.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "scope.progressive",
            "allowed-behaviours.patching",
            "receiver.qube",
            "receiver.dataset"
        ]
    );
    assert!(
        e[1].message.contains("write it unquoted"),
        "{}",
        e[1].message
    );
}

#[test]
fn unknown_keys_are_errors_with_suggestions() {
    let e = one_error(&with(
        "honour-origins: no",
        "honour-origins: no\n  honor-origin: yes",
    ));
    assert_eq!(e.path, "scope.honor-origin");
    assert!(
        e.message.contains("did you mean 'honour-origins'"),
        "{}",
        e.message
    );

    let e = one_error(&with(
        "  dataset: backuppool",
        "  compression: lz4\n  dataset: backuppool",
    ));
    assert_eq!(e.path, "receiver.compression");
    assert!(
        e.message.contains("allowed keys here: qube, dataset"),
        "{}",
        e.message
    );
}

#[test]
fn misspelt_top_level_key_is_not_taken_for_a_group() {
    let e = errors(&with("forgo-groups:", "forgo-group:"));
    assert!(
        e.iter()
            .any(|d| d.path == "forgo-group" && d.message.contains("did you mean 'forgo-groups'")),
        "{e:#?}"
    );
    assert!(e
        .iter()
        .any(|d| d.path == "forgo-groups" && d.message.contains("missing required key")));
}

#[test]
fn unknown_top_level_keys_name_the_known_keys_and_the_closest() {
    // A misspelt reserved key: the suggestion and the list of keys, not "a group definition".
    let e = one_error(&format!("{SEED_EXAMPLE}\nreciever: backups-disp\n"));
    assert_eq!(e.path, "reciever");
    assert!(
        e.message
            .contains("unknown top-level key \"reciever\"; did you mean 'receiver'?"),
        "{}",
        e.message
    );
    assert!(
        e.message.contains(
            "name, scope, allowed-behaviours, receiver, include-groups, forgo-groups, void-groups"
        ),
        "{}",
        e.message
    );
    assert!(
        !e.message.contains("expected a group definition"),
        "{}",
        e.message
    );
    // Nothing close: still the list of keys, and no talk of a group definition.
    for extra in ["compression: lz4", "options:\n  level: 3"] {
        let e = one_error(&format!("{SEED_EXAMPLE}\n{extra}\n"));
        assert!(
            e.message.starts_with("unknown top-level key"),
            "{}",
            e.message
        );
        assert!(!e.message.contains("did you mean"), "{}", e.message);
        assert!(
            e.message.contains("The top-level keys are name, scope"),
            "{}",
            e.message
        );
    }
    // A spare group (it has 'type'/'members') stays a warning, a broken spare one an error about
    // the group.
    let e = one_error(&format!(
        "{SEED_EXAMPLE}\nspare:\n  type: qubs\n  members: [x]\n"
    ));
    assert!(e.message.contains("did you mean 'qubes'"), "{}", e.message);
}

#[test]
fn missing_keys_are_reported_where_they_belong() {
    let e = one_error(&with("  patching: no\n", ""));
    assert_eq!(e.path, "allowed-behaviours.patching");
    assert!(e.message.contains("missing required key 'patching'"));
    assert_eq!(e.line, Some(10));

    let e = one_error(&with("name: mybackup1\n", ""));
    assert_eq!(e.path, "name");
}

#[test]
fn unquoted_snapshot_label_is_a_yaml_error_with_a_hint() {
    let e = one_error(&with("\"@backup-2025-04-14\"", "@backup-2025-04-14"));
    assert_eq!(e.line, Some(4));
    assert!(e.message.contains("YAML syntax error"), "{}", e.message);
    assert!(e.message.contains("must be quoted"), "{}", e.message);
}

#[test]
fn snapshot_labels_are_checked() {
    let e = one_error(&with("\"@backup-2025-04-14\"", "\"backup-2025-04-14\""));
    assert!(e.message.contains("starts with '@'"), "{}", e.message);
    let e = one_error(&with("\"@backup-2025-04-14\"", "beginning"));
    assert!(
        e.message.contains("only valid for 'since'"),
        "{}",
        e.message
    );
    let e = one_error(&with("since: beginning", "since: \"@b 1/x\""));
    assert_eq!(e.path, "scope.since");
    let e = one_error(&with("since: beginning", "since: 2025-04-14"));
    assert!(
        e.message.contains("found the date 2025-04-14"),
        "{}",
        e.message
    );
}

#[test]
fn since_equal_to_target_is_refused_fixing_backup_py_self_incremental_bug() {
    let e = one_error(&with("since: beginning", "since: \"@backup-2025-04-14\""));
    assert_eq!(e.path, "scope.since");
    assert!(e.message.contains("same snapshot"), "{}", e.message);
}

#[test]
fn group_references_must_be_defined_and_unique() {
    let e = one_error(&with("  - misc\n", "  - misc\n  - core-qube\n"));
    assert_eq!(e.path, "include-groups[3]");
    assert!(e.message.contains("not defined"), "{}", e.message);
    assert!(
        e.message.contains("did you mean 'core-qubes'"),
        "{}",
        e.message
    );

    let e = one_error(&with("  - system\n", "  - system\n  - misc\n"));
    assert_eq!(e.path, "forgo-groups[1]");
    assert!(
        e.message
            .contains("in both 'include-groups' and 'forgo-groups'"),
        "{}",
        e.message
    );

    let e = one_error(&with("  - misc\n", "  - misc\n  - dom0\n"));
    assert!(
        e.message.contains("twice in the same list"),
        "{}",
        e.message
    );
}

#[test]
fn group_definitions_are_strict() {
    let e = one_error(&with(
        "  type: qubes\n  members:\n    - video-editing",
        "  type: qube\n  members:\n    - video-editing",
    ));
    assert_eq!(e.path, "misc.type");
    assert!(e.message.contains("did you mean 'qubes'"), "{}", e.message);

    let e = one_error(&with("    - video-editing\n", ""));
    assert_eq!(e.path, "misc.members");
    assert!(e.message.contains("no members"), "{}", e.message);

    let e = one_error(&with(
        "    - video-editing\n",
        "    - video-editing\n    - video-editing\n",
    ));
    assert!(e.message.contains("listed twice"), "{}", e.message);

    let e = one_error(&with("    - mainpool/dom0", "    - mainpool/dom0/"));
    assert_eq!(e.path, "dom0.members[0]");

    let e = one_error(&with("    - video-editing", "    - mainpool/qubes/x"));
    assert!(e.message.contains("type 'datasets'"), "{}", e.message);
}

#[test]
fn group_with_unknown_and_missing_key_reports_both() {
    let e = errors(&with(
        "  type: qubes\n  members:\n    - video-editing",
        "  type: qubes\n  member:\n    - video-editing",
    ));
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(e
        .iter()
        .any(|d| d.path == "misc.member" && d.message.contains("did you mean 'members'")));
    assert!(e
        .iter()
        .any(|d| d.path == "misc.members" && d.message.contains("missing")));
}

#[test]
fn unreferenced_groups_are_warnings_but_broken_ones_are_errors() {
    let text = format!("{SEED_EXAMPLE}\nspare:\n  type: qubes\n  members: [x]\n");
    let (_, warnings) = parse(&text).unwrap();
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0].message.contains("not listed"),
        "{:?}",
        warnings[0]
    );

    let text = format!("{SEED_EXAMPLE}\nspare: [x]\n");
    let e = one_error(&text);
    assert_eq!(e.path, "spare");
}

#[test]
fn duplicate_keys_are_errors() {
    let e = one_error(&with(
        "  patching: no\n",
        "  patching: no\n  patching: yes\n",
    ));
    assert!(e.message.contains("appears twice"), "{}", e.message);
    assert_eq!(e.line, Some(12));
}

#[test]
fn reserved_names_cannot_be_groups() {
    let e = one_error(&with("  - misc\n", "  - misc\n  - scope\n"));
    assert!(e.message.contains("reserved"), "{}", e.message);
}

#[test]
fn receiver_cannot_be_dom0_and_qube_names_may_contain_dots() {
    let e = one_error(&with("qube: backups-disp", "qube: dom0"));
    assert!(e.message.contains("cannot be dom0"), "{}", e.message);
    assert!(parse(&with("qube: backups-disp", "qube: backups.disp")).is_ok());
}

#[test]
fn empty_include_list_is_an_error() {
    let text = with(
        "include-groups:\n  - core-qubes\n  - dom0\n  - misc\n",
        "include-groups: []\n",
    );
    let e = errors(&text);
    assert!(e.iter().any(|d| d.path == "include-groups" && d.message.contains("nothing would be backed up")), "{e:#?}");
}

#[test]
fn wrong_shapes_are_errors_not_crashes() {
    for (replace, by, path) in [
        (
            "scope:\n  target-snapshot",
            "scope: 5\nx:\n  target-snapshot",
            "scope",
        ),
        (
            "include-groups:\n  - core-qubes",
            "include-groups: core-qubes\nx:\n  - core-qubes",
            "include-groups",
        ),
        ("void-groups: []", "void-groups:", "void-groups"),
        ("name: mybackup1", "name: [a]", "name"),
        ("name: mybackup1", "name: my backup", "name"),
        ("name: mybackup1", "name: yes", "name"),
        ("  - misc\n", "  - {a: b}\n", "include-groups[2]"),
        ("  - misc\n", "  - 12\n", "include-groups[2]"),
    ] {
        let e = errors(&with(replace, by));
        assert!(e.iter().any(|d| d.path == path), "{path}: {e:#?}");
    }
}

#[test]
fn top_level_must_be_a_mapping() {
    for text in ["- a\n- b\n", "just text\n", "~\n", "42\n"] {
        let e = one_error(text);
        assert!(
            e.message.contains("expected the config to be a mapping"),
            "{}",
            e.message
        );
    }
    assert!(one_error("").message.contains("empty"));
}

#[test]
fn malformed_inputs_never_panic() {
    // Every prefix of the example, and every single-line deletion, must give a result or errors.
    for cut in 0..SEED_EXAMPLE.len() {
        if SEED_EXAMPLE.is_char_boundary(cut) {
            let _ = parse(&SEED_EXAMPLE[..cut]);
        }
    }
    let lines: Vec<&str> = SEED_EXAMPLE.lines().collect();
    for skip in 0..lines.len() {
        let text: Vec<&str> = lines
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != skip)
            .map(|(_, l)| *l)
            .collect();
        let _ = parse(&text.join("\n"));
    }
    // Byte-level mutations with a fixed-seed generator.
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    let bytes = SEED_EXAMPLE.as_bytes();
    for _ in 0..3000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut b = bytes.to_vec();
        let i = (seed as usize) % b.len();
        let noise = b"@:-[]{}!&*#|>'\"\n\t x%";
        b[i] = noise[(seed >> 32) as usize % noise.len()];
        if let Ok(text) = String::from_utf8(b) {
            let _ = parse(&text);
        }
    }
}

/// The seed example with `retention:` appended (the section's lines start at line 67).
fn with_retention(section: &str) -> String {
    format!("{SEED_EXAMPLE}retention:\n{section}")
}

#[test]
fn retention_grid_is_read_with_left_out_counts_as_zero() {
    let text = with_retention("  source: {last: 3, daily: 7, weekly: 4, monthly: 6}\n");
    let (c, warnings) = parse(&text).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let r = c.retention.expect("a retention section");
    assert_eq!(
        r.source,
        Grid {
            last: 3,
            hourly: 0,
            daily: 7,
            weekly: 4,
            monthly: 6
        }
    );
    assert_eq!(r.source.describe(), "last 3, daily 7, weekly 4, monthly 6");
    assert_eq!(r.source_pos.line, SEED_EXAMPLE.lines().count() + 2);
    // Block style, one count.
    let (c, _) = parse(&with_retention("  source:\n    hourly: 24\n")).unwrap();
    assert_eq!(c.retention.unwrap().source.hourly, 24);
}

#[test]
fn retention_mistakes_are_errors_naming_the_key_and_what_is_wrong() {
    let line = SEED_EXAMPLE.lines().count() + 2;
    let cases: [(&str, &str, &str); 12] = [
        (
            "  source: {daily: -1}\n",
            "retention.source.daily",
            "-1 is negative",
        ),
        (
            "  source: {dayly: 7}\n",
            "retention.source.dayly",
            "did you mean 'daily'?",
        ),
        (
            "  source: {yearly: 2}\n",
            "retention.source.yearly",
            "allowed keys here: last, hourly, daily, weekly, monthly",
        ),
        (
            "  source: {daily: 1.5}\n",
            "retention.source.daily",
            "expected a whole number of snapshots, found 1.5",
        ),
        (
            "  source: {daily: seven}\n",
            "retention.source.daily",
            "expected a number of snapshots, found the text \"seven\"",
        ),
        (
            "  source: {daily: \"7\"}\n",
            "retention.source.daily",
            "expected a number of snapshots, found the text \"7\"",
        ),
        (
            "  source: {daily: 010}\n",
            "retention.source.daily",
            "not a plain decimal number",
        ),
        (
            "  source: {daily: 5000000}\n",
            "retention.source.daily",
            "more than 1000000",
        ),
        (
            "  source: {daily: 0, last: 0}\n",
            "retention.source",
            "this grid keeps nothing",
        ),
        (
            "  source: {}\n",
            "retention.source",
            "this grid keeps nothing",
        ),
        (
            "  source: {last: 1}\n  medium: {last: 1}\n",
            "retention.medium",
            "not built yet",
        ),
        (
            "  sorce: {last: 1}\n",
            "retention.source",
            "missing required key 'source'",
        ),
    ];
    for (section, path, message) in cases {
        let errors = errors(&with_retention(section));
        let e = errors
            .iter()
            .find(|e| e.path == path)
            .unwrap_or_else(|| panic!("no error at {path} for {section:?}: {errors:#?}"));
        assert!(e.message.contains(message), "{section:?}: {}", e.message);
        assert!(
            e.line == Some(line) || e.line == Some(line + 1) || e.line == Some(line - 1),
            "{section:?}: {e:?}"
        );
        assert!(e.column.is_some(), "{e:?}");
    }
    // Not a mapping at all.
    let e = one_error(&with_retention("  - last\n"));
    assert_eq!(e.path, "retention");
    assert!(
        e.message.contains("expected 'retention' to hold 'source'"),
        "{}",
        e.message
    );
    // `retention` is no group, and no group may be called so.
    let e = one_error(&with("  - misc\n", "  - misc\n  - retention\n"));
    assert!(e.message.contains("reserved key"), "{}", e.message);
}
