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
