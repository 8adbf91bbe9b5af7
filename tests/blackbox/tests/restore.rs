//! `restore run` end to end through the real binaries and the fake system: a qube backed up
//! with a key comes back under a new name with its settings, its volume filled from the
//! medium through the (fake) `qvm-volume import`, byte for byte the source snapshot; a block
//! the backup qube alters aborts that qube's restore and removes it again.

use qzb_blackbox_tests::{bin, datasets_config, FakeSystem, Run, VAULT};
use serde_json::Value;

const ROOT: &str = "backuppool/backups/mydesktop";

/// The reference system with the vault qube's settings made distinctive, a key, and the
/// backup `vols` of vault's private volume sent.
fn sent() -> FakeSystem {
    let sys = FakeSystem::new("reference-system");
    let path = sys.state.join("dom0.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for s in v["zfs"]["datasets"][VAULT]["snapshots"]
        .as_array_mut()
        .unwrap()
    {
        s["size"] = (1u64 << 20).into();
    }
    let vault = &mut v["qubes"]["domains"]["vault"];
    vault["features"] = serde_json::json!({"service.cups": "1"});
    vault["tags"] = serde_json::json!(["audited"]);
    vault["firewall"] = serde_json::json!(["action=drop"]);
    vault["properties"]["label"] = "black".into();
    vault["properties"]["memory"] = "600".into();
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    let file = sys.write(
        "vols.yaml",
        &datasets_config("vols", "b1", "beginning", &[VAULT]),
    );
    sys.driver(&["import", &file]).expect(0);
    sys.init_key();
    sys.driver(&["send", "vols"]).expect(0);
    sys
}

fn restore(sys: &FakeSystem, extra: &[&str]) -> Run {
    let from = format!("backups-disp:{ROOT}");
    let mut args = vec!["restore", "run", "--from", &from];
    args.extend_from_slice(extra);
    sys.driver(&args)
}

fn domain(sys: &FakeSystem, name: &str) -> Value {
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(sys.state.join("dom0.json")).unwrap())
            .unwrap();
    v["qubes"]["domains"][name].clone()
}

fn source_image(sys: &FakeSystem) -> Vec<u8> {
    let out = sys
        .command(bin("qzb-fake"))
        .args(["volume-image"])
        .arg(&sys.state)
        .args(["dom0", &format!("{VAULT}@b1")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn a_qube_comes_back_renamed_with_its_settings_and_its_volume_byte_for_byte() {
    let sys = sent();
    let run = restore(&sys, &["--rename"]);
    run.expect(0);
    assert!(
        run.stdout
            .contains("restored  vault1 (was vault): 1 volume(s) checked and imported"),
        "{}",
        run.stdout
    );
    let q = domain(&sys, "vault1");
    assert_eq!(q["class"], "AppVM");
    assert_eq!(q["properties"]["label"], "black");
    assert_eq!(q["properties"]["memory"], "600");
    assert_eq!(
        q["properties"]["template"],
        domain(&sys, "vault")["properties"]["template"]
    );
    assert_eq!(q["features"]["service.cups"], "1");
    // (Qubes itself adds `created-by-dom0` to a qube made through the Admin API.)
    assert!(
        q["tags"].as_array().unwrap().contains(&"audited".into()),
        "{}",
        q["tags"]
    );
    assert_eq!(q["firewall"], serde_json::json!(["action=drop"]));
    let image = std::fs::read(sys.state.join("imported/vault1/private.img")).unwrap();
    let source = source_image(&sys);
    assert_eq!(image.len(), source.len());
    assert!(
        image == source,
        "the restored volume differs from the source snapshot"
    );
}

#[test]
fn an_altered_block_aborts_the_qubes_restore_and_removes_it_again() {
    let sys = sent();
    sys.set_fake_env("QZB_FAKE_SEND_MATCH", "backuppool");
    sys.set_fake_env("QZB_FAKE_SEND_FLIP_BLOCK", "3");
    let run = restore(&sys, &["--rename"]);
    run.expect(8);
    assert!(
        run.stdout.contains("FAILED    vault1: volume private: ")
            && run.stdout.contains("does not match its manifest tag")
            && run.stdout.contains("the qube was removed again"),
        "{}",
        run.stdout
    );
    assert!(
        domain(&sys, "vault1").is_null(),
        "vault1 must not stay behind"
    );
    assert!(!sys.state.join("imported/vault1/private.img").exists());
}

#[test]
fn an_import_refused_before_it_reads_is_reported_with_what_qubes_said() {
    let sys = sent();
    sys.set_fake_env("QZB_FAKE_IMPORT_FAIL", "begin");
    let run = restore(&sys, &["--rename"]);
    run.expect(8);
    assert!(
        run.stdout.contains("FAILED    vault1: volume private: ")
            && run.stdout.contains("qvm-volume stopped reading")
            && run.stdout.contains("the pool is out of space")
            && run.stdout.contains("the qube was removed again"),
        "{}",
        run.stdout
    );
    assert!(domain(&sys, "vault1").is_null());
    assert!(!sys.state.join("imported/vault1/private.img").exists());
}

#[test]
fn a_qube_whose_name_is_taken_is_skipped_and_nothing_is_restored() {
    let sys = sent();
    let run = restore(&sys, &[]);
    run.expect(11);
    assert!(
        run.stdout
            .contains("skipped vault: a qube of that name exists"),
        "{}",
        run.stdout
    );
}

#[test]
fn an_older_genuine_set_replayed_as_the_newest_is_refused_while_dom0_knows_better() {
    let sys = FakeSystem::new("reference-system");
    let file = sys.write(
        "vols.yaml",
        &datasets_config("vols", "b1", "beginning", &[VAULT]),
    );
    sys.driver(&["import", &file]).expect(0);
    sys.init_key();
    // A first run that fails mid-stream stores an (incomplete) set; the second a complete one.
    sys.set_fake_env("QZB_FAKE_SEND_DIE_AFTER", "100000");
    sys.set_fake_env("QZB_FAKE_SEND_MATCH", "vault/private");
    sys.driver(&["send", "vols"]).expect(8);
    sys.set_fake_env("QZB_FAKE_SEND_DIE_AFTER", "");
    sys.set_fake_env("QZB_FAKE_SEND_MATCH", "");
    // (Set times are strictly increasing per backup, even within one second.)
    sys.driver(&["send", "vols"]).expect(0);
    let mut indexes: Vec<std::path::PathBuf> = Vec::new();
    let mut dirs = vec![sys.meta_base()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "index") {
                indexes.push(p);
            }
        }
    }
    indexes.sort();
    assert_eq!(indexes.len(), 2, "{indexes:?}");
    // The backup qube hides the newest set: the older genuine one looks newest.
    std::fs::remove_file(&indexes[1]).unwrap();
    let _ = std::fs::remove_file(indexes[1].with_extension("settings"));
    let run = restore(&sys, &["--rename"]);
    run.expect(9);
    assert!(
        run.stderr.contains("is not the one dom0 stored last")
            && run.stderr.contains("an older set was replayed"),
        "{}",
        run.stderr
    );
    assert!(domain(&sys, "vault1").is_null());
}

/// The calls of the fakes since `from` (an index into [`FakeSystem::calls`]) that change the
/// system: an Admin API write or a volume import.
fn writes_since(sys: &FakeSystem, from: usize) -> Vec<Value> {
    sys.calls()
        .into_iter()
        .skip(from)
        .filter(|c| {
            let argv = &c["argv"];
            argv[0] == "qvm-volume"
                || (argv[0] == "qubesd-query"
                    && argv
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter_map(Value::as_str)
                        .any(|a| {
                            a.starts_with("admin.vm.Create.")
                                || a == "admin.vm.Remove"
                                || a.ends_with(".Set")
                                || a.ends_with(".Reset")
                                || a.ends_with(".Assign")
                        }))
        })
        .collect()
}

#[test]
fn verify_only_reads_every_volume_back_checked_and_creates_nothing() {
    let sys = sent();
    let before = sys.calls().len();
    let run = restore(&sys, &["--rename", "--verify-only"]);
    run.expect(0);
    assert!(
        run.stdout.contains(&format!(
            "verified  vault1:private from {VAULT}@b1: "
        )) && run.stdout.contains("54 data blocks (864 KiB) match their manifests")
            && run.stdout.contains(
                "1 volume(s) of 1 qube(s) read back and checked: 1 match their manifests, 0 failed; nothing was created or imported (--verify-only)"
            ),
        "{}",
        run.stdout
    );
    // The agent really read the snapshot back: its `zfs send` ran in the backup qube.
    assert!(
        sys.calls()
            .iter()
            .skip(before)
            .any(|c| c["host"] == "backups-disp"
                && c["argv"][0] == "zfs"
                && c["argv"][1] == "send"),
        "no read-back ran"
    );
    assert_eq!(writes_since(&sys, before), Vec::<Value>::new());
    assert!(domain(&sys, "vault1").is_null());
    assert!(!sys.state.join("imported").exists());
}

#[test]
fn verify_only_refuses_an_altered_block_with_the_exit_code_of_a_failed_restore() {
    let sys = sent();
    sys.set_fake_env("QZB_FAKE_SEND_MATCH", "backuppool");
    sys.set_fake_env("QZB_FAKE_SEND_FLIP_BLOCK", "3");
    let before = sys.calls().len();
    let run = restore(&sys, &["--rename", "--verify-only"]);
    run.expect(8);
    assert!(
        run.stdout.contains("FAILED    vault1:private: ")
            && run.stdout.contains("does not match its manifest tag")
            && run.stdout.contains("0 match their manifests, 1 failed"),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr
            .contains("the check of 1 qube(s) failed; the first, vault1: volume private: "),
        "{}",
        run.stderr
    );
    assert_eq!(writes_since(&sys, before), Vec::<Value>::new());
    assert!(domain(&sys, "vault1").is_null());
}

#[test]
fn dry_run_prints_what_restore_plan_prints_and_reads_nothing_back() {
    let sys = sent();
    let from = format!("backups-disp:{ROOT}");
    let plan = sys.driver(&["restore", "plan", "--from", &from, "--rename"]);
    plan.expect(0);
    let before = sys.calls().len();
    let run = restore(&sys, &["--rename", "--dry-run"]);
    run.expect(0);
    assert_eq!(run.stdout, plan.stdout);
    assert!(
        run.stdout.contains("create  vault1 (AppVM, was vault)"),
        "{}",
        run.stdout
    );
    assert!(
        !sys.calls()
            .iter()
            .skip(before)
            .any(|c| c["host"] == "backups-disp"
                && c["argv"][0] == "zfs"
                && c["argv"][1] == "send"),
        "--dry-run read a volume back"
    );
    assert_eq!(writes_since(&sys, before), Vec::<Value>::new());
    assert!(domain(&sys, "vault1").is_null());
}

#[test]
fn restore_run_shows_each_volumes_progress_and_ends_with_a_summary_table() {
    let sys = sent();
    let run = restore(&sys, &["--rename"]);
    run.expect(0);
    // Not a terminal: a `progress` line at the volume's start and end (bytes, total, i/n).
    let dest = format!("{ROOT}/{VAULT}@b1");
    let ends: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with(&format!("progress {dest} ")))
        .collect();
    assert!(ends.len() >= 2, "{}", run.stderr);
    let last: Vec<&str> = ends.last().unwrap().split(' ').collect();
    assert_eq!(last[2], last[3], "the volume ends at its total: {ends:?}");
    assert_eq!(last[4], "1/1");
    let table: Vec<&str> = run
        .stdout
        .lines()
        .skip_while(|l| *l != "Summary:")
        .collect();
    assert!(table.len() >= 3, "{}", run.stdout);
    let cols = |l: &str| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(
        cols(table[1]),
        ["QUBE", "VOLUME", "DATA", "TIME", "RATE", "RESULT"]
    );
    let row = cols(table[2]);
    // 54 data blocks of 16 KiB; the rest of the 1 MiB volume are holes.
    assert_eq!(&row[..4], ["vault1", "private", "864", "KiB"]);
    assert_eq!(row.last().unwrap(), "restored");
}

#[test]
fn every_property_feature_tag_firewall_rule_and_device_comes_back_with_references_renamed() {
    const TEMPLATE: &str = "mainpool/qubes/fedora-41/private";
    const WORK: &str = "mainpool/qubes/work/private";
    let sys = FakeSystem::new("reference-system");
    let path = sys.state.join("dom0.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    // The template's private volume gets a snapshot too, so the template is restored and
    // the references to it must follow its new name.
    v["zfs"]["datasets"][TEMPLATE]["snapshots"] =
        serde_json::json!([{"name": "b1", "createtxg": 150}]);
    for ds in [TEMPLATE, WORK, VAULT] {
        for s in v["zfs"]["datasets"][ds]["snapshots"]
            .as_array_mut()
            .unwrap()
        {
            s["size"] = (256u64 << 10).into();
        }
    }
    let d = &mut v["qubes"]["domains"];
    d["fedora-41"]["properties"] = serde_json::json!({"label": "black", "kernelopts": "nopat"});
    d["fedora-41"]["features"] = serde_json::json!({"os": "Linux", "qrexec": "1"});
    d["fedora-41"]["tags"] = serde_json::json!(["template-tag"]);
    d["work"]["properties"] = serde_json::json!({
        "template": "fedora-41", "label": "green", "provides_network": "True",
        "memory": "800", "maxmem": "2000", "vcpus": "1",
    });
    d["work"]["features"] = serde_json::json!({"service.network-manager": "1"});
    d["work"]["tags"] = serde_json::json!(["net"]);
    d["work"]["firewall"] = serde_json::json!(["action=accept"]);
    d["vault"]["properties"] = serde_json::json!({
        "template": "fedora-41", "netvm": "work", "default_dispvm": "work",
        "management_dispvm": "work", "audiovm": "work",
        "label": "purple", "memory": "600", "maxmem": "4000", "vcpus": "3",
        "qrexec_timeout": "90", "kernelopts": "nopat swiotlb=2048", "include_in_backups": "True",
    });
    d["vault"]["features"] = serde_json::json!({"service.cups": "1", "gui-allow-fullscreen": "1"});
    d["vault"]["tags"] = serde_json::json!(["audited", "secret_stuff"]);
    d["vault"]["firewall"] = serde_json::json!([
        "action=accept dsthost=example.com proto=tcp dstports=443-443",
        "action=accept specialtarget=dns",
        "action=drop",
    ]);
    d["vault"]["devices"] = serde_json::json!({
        "block": ["sys-usb+sda1 mode='required' read-only='yes'"],
        "usb": ["sys-usb+2-1 mode='auto-attach'"],
    });
    let original = d.clone();
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    let file = sys.write(
        "vols.yaml",
        &datasets_config("vols", "b1", "beginning", &[TEMPLATE, WORK, VAULT]),
    );
    sys.driver(&["import", &file]).expect(0);
    sys.init_key();
    sys.driver(&["send", "vols"]).expect(0);

    let run = restore(&sys, &["--rename"]);
    run.expect(0);
    let renamed = |n: &str| match n {
        "fedora-41" => "fedora-411",
        "work" => "work1",
        "vault" => "vault1",
        other => panic!("unexpected reference to {other}"),
    };
    for old in ["fedora-41", "work", "vault"] {
        let new = domain(&sys, renamed(old));
        let was = &original[old];
        assert_eq!(new["class"], was["class"], "{old}");
        for (k, value) in was["properties"].as_object().unwrap() {
            let want = match k.as_str() {
                "template" | "netvm" | "default_dispvm" | "management_dispvm" | "audiovm" => {
                    renamed(value.as_str().unwrap())
                }
                _ => value.as_str().unwrap(),
            };
            assert_eq!(
                new["properties"][k],
                want,
                "{old} -> {}: property {k}",
                renamed(old)
            );
        }
        assert_eq!(new["features"], was["features"], "{old}: features");
        let mut tags: Vec<&str> = new["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .filter(|t| *t != "created-by-dom0")
            .collect();
        tags.sort();
        let mut want_tags: Vec<&str> = was["tags"]
            .as_array()
            .map(|a| a.iter().map(|t| t.as_str().unwrap()).collect())
            .unwrap_or_default();
        want_tags.sort();
        assert_eq!(tags, want_tags, "{old}: tags");
        // (A qube without rules reads back as `action=accept`: restored as such.)
        if !was["firewall"].is_null() {
            assert_eq!(new["firewall"], was["firewall"], "{old}: firewall");
        }
        assert_eq!(new["devices"], was["devices"], "{old}: device assignments");
    }
    assert!(
        !run.stdout.contains("warning: vault1"),
        "every setting of vault applied: {}",
        run.stdout
    );
}
