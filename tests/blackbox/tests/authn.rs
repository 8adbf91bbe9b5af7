//! Authenticated backups of zvols, end to end through the real binaries and the fake system
//! (whose `zfs send` of a volume writes real OpenZFS records): `send` taps each zvol stream
//! into MAC'd manifests stored on the medium; `verify` has the backup qube read its snapshots
//! back and checks every block. A backup qube that returns altered, missing or extra blocks, or
//! a medium whose stored manifests were changed, fails `verify` with a clear message.

use qzb_blackbox_tests::{datasets_config as config, FakeSystem, Run, VAULT};
use serde_json::Value;

const WORK: &str = "mainpool/qubes/work/private";
const ROOT: &str = "backuppool/backups/mydesktop";

fn keyed(size: u64) -> FakeSystem {
    let sys = FakeSystem::with_zvol_backup(size);
    sys.init_key();
    sys
}

/// The files of the agent's blob storage whose names end with `suffix`.
fn blobs(sys: &FakeSystem, suffix: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![sys.meta_base()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.to_string_lossy().ends_with(suffix) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn verify(sys: &FakeSystem, name: &str) -> Run {
    sys.driver(&["verify", name])
}

fn assert_failed(run: &Run, what: &str) {
    run.expect(8);
    assert!(
        run.stdout.contains(&format!("FAILED    {ROOT}/{VAULT}@b1")) && run.stdout.contains(what),
        "expected FAILED with {what:?}:\n{}",
        run.stdout
    );
    // The final error repeats the first problem: a log may keep nothing else.
    assert!(
        run.stderr
            .contains(&format!("the first: {ROOT}/{VAULT}@b1: "))
            && run.stderr.contains(what),
        "expected the first problem {what:?} in the error:\n{}",
        run.stderr
    );
}

#[test]
fn a_zvol_sent_with_a_key_is_read_back_and_verified_block_by_block() {
    let sys = keyed(1 << 20);
    sys.driver(&["send", "vols"]).expect(0);
    assert_eq!(blobs(&sys, ".head").len(), 1, "one manifest header");
    assert_eq!(blobs(&sys, ".body").len(), 1, "one manifest body");
    assert_eq!(blobs(&sys, "key/wrapped").len(), 1, "the wrapped key");
    let status = sys.driver(&["status", "vols"]);
    assert!(
        status.stdout.contains("manifest: on the medium")
            && status
                .stdout
                .contains("set index: the last one stored on the medium is of "),
        "{}",
        status.stdout
    );
    let run = verify(&sys, "vols");
    run.expect(0);
    assert!(
        run.stdout
            .contains(&format!("verified  {ROOT}/{VAULT}@b1: ")),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("1 zvol(s) read back and verified"),
        "{}",
        run.stdout
    );
    // The quick check needs no key and reads nothing back.
    let run = sys.driver(&["verify", "vols", "--quick"]);
    run.expect(0);
    assert!(!run.stdout.contains("verified  "), "{}", run.stdout);
}

#[test]
fn a_backup_qube_returning_an_altered_block_fails_verify() {
    let sys = keyed(1 << 20);
    sys.driver(&["send", "vols"]).expect(0);
    // The backup qube's own `zfs send` (its read-back) returns one block with a byte flipped,
    // in an otherwise valid stream: what a lying agent or silent corruption would show.
    sys.set_fake_env("QZB_FAKE_SEND_MATCH", "backuppool");
    sys.set_fake_env("QZB_FAKE_SEND_FLIP_BLOCK", "3");
    assert_failed(&verify(&sys, "vols"), "does not match its manifest tag");
}

#[test]
fn a_backup_qube_withholding_a_block_fails_verify() {
    let sys = keyed(1 << 20);
    sys.driver(&["send", "vols"]).expect(0);
    sys.set_fake_env("QZB_FAKE_SEND_MATCH", "backuppool");
    sys.set_fake_env("QZB_FAKE_SEND_DROP_BLOCK", "5");
    assert_failed(&verify(&sys, "vols"), "was not read back");
}

#[test]
fn a_flipped_byte_in_a_stored_manifest_header_or_body_fails_verify() {
    let sys = keyed(1 << 20);
    sys.driver(&["send", "vols"]).expect(0);
    let head = blobs(&sys, ".head").remove(0);
    let good = std::fs::read(&head).unwrap();
    let mut bad = good.clone();
    bad[30] ^= 1;
    std::fs::write(&head, &bad).unwrap();
    assert_failed(&verify(&sys, "vols"), "MAC does not match");
    std::fs::write(&head, &good).unwrap();

    let body = blobs(&sys, ".body").remove(0);
    let mut bytes = std::fs::read(&body).unwrap();
    bytes[20] ^= 1;
    std::fs::write(&body, &bytes).unwrap();
    assert_failed(&verify(&sys, "vols"), "body does not match its header");
}

#[test]
fn a_backup_sent_without_a_key_is_reported_unverifiable_not_verified() {
    let sys = FakeSystem::with_zvol_backup(1 << 20);
    let run = sys.driver(&["send", "vols"]);
    run.expect(0);
    assert!(run.stdout.contains("not authenticated"), "{}", run.stdout);
    let status = sys.driver(&["status", "vols"]);
    assert!(
        status.stdout.contains("manifest: none") && status.stdout.contains("next full send"),
        "{}",
        status.stdout
    );
    let run = verify(&sys, "vols");
    run.expect(12);
    assert!(run.stderr.contains("`key init`"), "{}", run.stderr);
    sys.init_key();
    let run = verify(&sys, "vols");
    run.expect(10);
    assert!(
        run.stdout
            .contains(&format!("UNVERIFIABLE {ROOT}/{VAULT}@b1"))
            && run.stdout.contains("the next full send"),
        "{}",
        run.stdout
    );
}

#[test]
fn an_interrupted_zvol_send_resumes_its_manifest_and_verifies() {
    let sys = keyed(4 << 20);
    sys.set_fake_env("QZB_FAKE_SEND_DIE_AFTER", (1u64 << 20).to_string());
    sys.set_fake_env("QZB_FAKE_SEND_MATCH", "vault");
    sys.set_fake_env(
        "QZB_FAKE_FAULT_ONCE",
        sys.dir.join("once").display().to_string(),
    );
    sys.driver(&["send", "vols"]).expect(8);
    assert!(
        blobs(&sys, ".head").is_empty(),
        "no manifest for a partial send"
    );
    sys.reset_fake_env();
    let run = sys.driver(&["send", "vols"]);
    run.expect(0);
    assert!(!run.stdout.contains("without a manifest"), "{}", run.stdout);
    verify(&sys, "vols").expect(0);
}

#[test]
fn an_incremental_chains_to_the_full_and_verify_merges_the_chain() {
    let sys = FakeSystem::new("reference-system");
    sys.init_key();
    let full = sys.write("full.yaml", &config("full", "s1", "beginning", &[WORK]));
    let incr = sys.write("incr.yaml", &config("incr", "b1", "\"@s1\"", &[WORK]));
    sys.driver(&["import", &full]).expect(0);
    sys.driver(&["send", "full"]).expect(0);
    sys.driver(&["import", &incr]).expect(0);
    let run = sys.driver(&["send", "incr"]);
    run.expect(0);
    assert!(!run.stdout.contains("without a manifest"), "{}", run.stdout);
    assert_eq!(blobs(&sys, ".head").len(), 2, "full and incremental");
    let run = verify(&sys, "incr");
    run.expect(0);
    assert!(
        run.stdout.contains(&format!("verified  {ROOT}/{WORK}@b1")),
        "{}",
        run.stdout
    );
}

/// The sealed settings and index of the newest set on the medium.
fn newest_set(sys: &FakeSystem) -> (std::path::PathBuf, std::path::PathBuf) {
    let index = blobs(sys, ".index")
        .pop()
        .expect("a set index on the medium");
    let settings = index.with_extension("settings");
    (settings, index)
}

#[test]
fn a_send_stores_the_qubes_settings_and_a_set_index_that_verify_checks() {
    let sys = keyed(1 << 20);
    let path = sys.state.join("dom0.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let vault = &mut v["qubes"]["domains"]["vault"];
    vault["features"] =
        serde_json::json!({"service.cups": "1", "menu-items": "a.desktop b.desktop"});
    vault["tags"] = serde_json::json!(["offline", "audited"]);
    vault["firewall"] = serde_json::json!(["action=drop"]);
    vault["devices"] = serde_json::json!({"usb": ["sys-usb+2-1:0000:0000::p0 mode='required'"]});
    vault["properties"]["label"] = "black".into();
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();

    let run = sys.driver(&["send", "vols"]);
    run.expect(0);
    assert!(
        run.stdout
            .contains("stored the set index (1 snapshot(s)) and the settings of 1 qube(s)"),
        "{}",
        run.stdout
    );
    let (settings, index) = newest_set(&sys);
    let keys = dom0_driver::key::load(&sys.meta).unwrap().unwrap();
    let doc =
        qzb_protocol::sets::SettingsDoc::open(&std::fs::read(&settings).unwrap(), &keys.metadata)
            .unwrap();
    let names: Vec<&str> = doc.qubes.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(names, ["vault"], "only the qube whose volume is backed up");
    let q = &doc.qubes[0];
    assert_eq!(q.property("label").unwrap().value, "black");
    assert_eq!(q.property("klass").unwrap().value, q.class);
    assert_eq!(
        q.features,
        [
            ("menu-items".to_owned(), "a.desktop b.desktop".to_owned()),
            ("service.cups".to_owned(), "1".to_owned())
        ]
    );
    assert_eq!(q.tags, ["audited", "offline"]);
    assert!(
        q.volumes
            .iter()
            .any(|v| v.name == "private" && v.dataset == VAULT),
        "{:?}",
        q.volumes
    );
    assert_eq!(q.firewall.as_deref(), Some(&["action=drop".to_owned()][..]));
    assert!(q
        .devices
        .contains(&qzb_protocol::sets::DeviceList::Assigned {
            class: "usb".into(),
            lines: vec!["sys-usb+2-1:0000:0000::p0 mode='required'".into()]
        }));
    let idx = qzb_protocol::sets::SetIndex::open(&std::fs::read(&index).unwrap(), &keys.metadata)
        .unwrap();
    assert!(idx.complete);
    assert_eq!(idx.backup, "vols");
    assert_eq!(idx.key_id, keys.key_id);
    assert_eq!(idx.entries.len(), 1);
    assert_eq!(idx.entries[0].snapshot, format!("{VAULT}@b1"));
    assert!(idx.entries[0].manifest.is_some() && idx.entries[0].stream.is_some());
    assert_eq!(
        idx.settings_hash,
        Some(*blake3::hash(&std::fs::read(&settings).unwrap()).as_bytes())
    );

    let run = verify(&sys, "vols");
    run.expect(0);
    assert!(
        run.stdout.contains("ok        set index of ")
            && run
                .stdout
                .contains("(1 snapshot(s), settings of 1 qube(s)): MACs match"),
        "{}",
        run.stdout
    );
}

#[test]
fn a_flipped_byte_in_the_stored_set_index_or_settings_fails_verify() {
    let sys = keyed(1 << 20);
    sys.driver(&["send", "vols"]).expect(0);
    let (settings, index) = newest_set(&sys);
    for (file, what) in [
        (&index, "MAC does not match"),
        (&settings, "are not the ones the set index names"),
    ] {
        let good = std::fs::read(file).unwrap();
        let mut bad = good.clone();
        bad[good.len() / 2] ^= 0x10;
        std::fs::write(file, &bad).unwrap();
        let run = verify(&sys, "vols");
        std::fs::write(file, &good).unwrap();
        run.expect(8);
        assert!(
            run.stdout.contains("FAILED    set index: ") && run.stdout.contains(what),
            "{what}:\n{}",
            run.stdout
        );
    }
    verify(&sys, "vols").expect(0);
}

#[test]
fn a_removed_or_renamed_set_index_fails_verify() {
    let sys = keyed(1 << 20);
    sys.driver(&["send", "vols"]).expect(0);
    let (_, index) = newest_set(&sys);
    // Renamed to a later time: the name no longer matches the MAC'd content.
    let leaf = index.file_name().unwrap().to_str().unwrap().to_owned();
    let later = index.with_file_name(format!(
        "{:016x}.index",
        u64::from_str_radix(&leaf[..16], 16).unwrap() + 1
    ));
    std::fs::rename(&index, &later).unwrap();
    let run = verify(&sys, "vols");
    run.expect(8);
    assert!(
        run.stdout.contains("it was moved or renamed"),
        "{}",
        run.stdout
    );
    // Removed: dom0 remembers storing it.
    std::fs::remove_file(&later).unwrap();
    let run = verify(&sys, "vols");
    run.expect(8);
    assert!(
        run.stdout
            .contains("but the medium has none: it was removed"),
        "{}",
        run.stdout
    );
}

/// `restore list --from` the test medium, with `metadata_dir` and `input` on stdin.
fn restore_list(sys: &FakeSystem, metadata_dir: &std::path::Path, input: &str, json: bool) -> Run {
    use std::io::Write;
    let from = format!("backups-disp:{ROOT}");
    let mut args = vec!["restore", "list", "--from", &from, "--passphrase-fd", "0"];
    if json {
        args.push("--json");
    }
    let mut child = sys
        .command(qzb_blackbox_tests::bin("qubes-zfs-backup"))
        .arg("--metadata-dir")
        .arg(metadata_dir)
        .args(&args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
    Run::from(child.wait_with_output().unwrap())
}

#[test]
fn restore_list_shows_the_sets_on_the_medium() {
    let sys = keyed(1 << 20);
    sys.driver(&["send", "vols"]).expect(0);
    let run = restore_list(&sys, &sys.meta, "", false);
    run.expect(0);
    assert!(
        run.stdout.contains("  vols  ")
            && run.stdout.contains("complete")
            && run.stdout.contains("1 zvol(s), 0 filesystem(s)")
            && run.stdout.contains("qubes: vault"),
        "{}",
        run.stdout
    );
    let run = restore_list(&sys, &sys.meta, "", true);
    run.expect(0);
    let set: Value = serde_json::from_str(run.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(set["backup"], "vols");
    assert_eq!(set["qubes"], serde_json::json!(["vault"]));
    assert_eq!(set["snapshots"][0]["snapshot"], format!("{VAULT}@b1"));
    assert_eq!(set["snapshots"][0]["manifest"], true);
}

#[test]
fn a_fresh_dom0_lists_the_sets_with_the_passphrase_alone() {
    let sys = keyed(1 << 20);
    sys.driver(&["send", "vols"]).expect(0);
    let fresh = sys.dir.join("fresh-dom0");
    let run = restore_list(
        &sys,
        &fresh,
        &format!("{}\n", FakeSystem::PASSPHRASE),
        false,
    );
    run.expect(0);
    assert!(run.stdout.contains("qubes: vault"), "{}", run.stdout);
    let run = restore_list(&sys, &fresh, "not the passphrase at all\n", false);
    run.expect(12);
    // A medium without anything sent with a key has no wrapped key to unlock.
    let other = keyed(1 << 20);
    let run = restore_list(
        &other,
        &fresh,
        &format!("{}\n", FakeSystem::PASSPHRASE),
        false,
    );
    run.expect(12);
    assert!(
        run.stderr.contains("wrapped key could not be read"),
        "{}",
        run.stderr
    );
}

#[test]
fn restore_list_refuses_a_tampered_set_index() {
    let sys = keyed(1 << 20);
    sys.driver(&["send", "vols"]).expect(0);
    let (_, index) = newest_set(&sys);
    let mut bytes = std::fs::read(&index).unwrap();
    bytes[30] ^= 1;
    std::fs::write(&index, bytes).unwrap();
    let run = restore_list(&sys, &sys.meta, "", false);
    run.expect(9);
    assert!(
        run.stdout.contains("REFUSED sets/") && run.stdout.contains("MAC does not match"),
        "{}",
        run.stdout
    );
}

#[test]
fn restore_plan_renames_a_taken_qube_and_resolves_its_references() {
    let sys = keyed(1 << 20);
    sys.driver(&["send", "vols"]).expect(0);
    let from = format!("backups-disp:{ROOT}");
    // vault still exists here: skipped by default, with what to do about it.
    let run = sys.driver(&["restore", "plan", "--from", &from]);
    run.expect(0);
    assert!(
        run.stdout
            .contains("skipped vault: a qube of that name exists"),
        "{}",
        run.stdout
    );
    let run = sys.driver(&["restore", "plan", "--from", &from, "--rename"]);
    run.expect(0);
    assert!(
        run.stdout.contains("create  vault1 (AppVM, was vault)")
            && run
                .stdout
                .contains(&format!("volume private from {VAULT}@b1")),
        "{}",
        run.stdout
    );
    let run = sys.driver(&["restore", "plan", "--from", &from, "--rename", "--json"]);
    run.expect(0);
    let plan: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(plan["qubes"][0]["name"], "vault1");
    assert_eq!(plan["qubes"][0]["original"], "vault");
    // A qube not in the set is named as such.
    let run = sys.driver(&["restore", "plan", "--from", &from, "nosuch"]);
    run.expect(6);
    assert!(
        run.stderr
            .contains("nosuch is not in this backup set (it has: vault)"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_hostile_kdf_parameter_set_on_the_medium_is_refused_before_use() {
    let sys = keyed(1 << 20);
    sys.driver(&["send", "vols"]).expect(0);
    let wrapped = blobs(&sys, "key/wrapped").pop().unwrap();
    let good = std::fs::read(&wrapped).unwrap();
    let fresh = sys.dir.join("fresh-dom0");
    // memory (offset 12) of 4 TiB, then 1000 passes (offset 16): each would cost hours.
    for (at, value) in [(12usize, u32::MAX), (16, 1000)] {
        let mut bad = good.clone();
        bad[at..at + 4].copy_from_slice(&value.to_le_bytes());
        std::fs::write(&wrapped, &bad).unwrap();
        let run = restore_list(
            &sys,
            &fresh,
            &format!("{}\n", FakeSystem::PASSPHRASE),
            false,
        );
        run.expect(12);
        assert!(
            run.stderr.contains("refused KDF parameters"),
            "{}",
            run.stderr
        );
    }
}
