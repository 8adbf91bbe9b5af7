//! After a restore: the restored volume is a new dataset with new guids (Qubes' volume import
//! destroys the old volume with its snapshots and renames the imported one into place), so
//! its next backup cannot continue the medium's copy. `check`, `calc` and `send` must plan a
//! full send and say why, in plain words.

use qzb_blackbox_tests::{datasets_config, FakeSystem, VAULT};
use serde_json::Value;

const ROOT: &str = "backuppool/backups/mydesktop";

fn edit(sys: &FakeSystem, f: impl FnOnce(&mut Value)) {
    let path = sys.state.join("dom0.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// The `vols` backup of the vault's private volume sent with a key; then the disaster (the
/// vault qube is gone) and `restore run`; then the volume as Qubes' ZFS driver leaves it
/// after the import (the fake's `qvm-volume import` writes an image file and does not model
/// this): a new dataset, new guids, none of the old snapshots, plus the next backup's @b2.
fn restored() -> FakeSystem {
    let sys = FakeSystem::new("reference-system");
    edit(&sys, |v| {
        for s in v["zfs"]["datasets"][VAULT]["snapshots"]
            .as_array_mut()
            .unwrap()
        {
            s["size"] = (256u64 << 10).into();
        }
    });
    let file = sys.write(
        "vols.yaml",
        &datasets_config("vols", "b1", "beginning", &[VAULT]),
    );
    sys.driver(&["import", &file]).expect(0);
    sys.init_key();
    sys.driver(&["send", "vols"]).expect(0);
    edit(&sys, |v| {
        v["qubes"]["domains"]
            .as_object_mut()
            .unwrap()
            .remove("vault");
    });
    let from = format!("backups-disp:{ROOT}");
    let run = sys.driver(&["restore", "run", "--from", &from]);
    run.expect(0);
    assert!(
        run.stdout.contains("restored  vault: 1 volume(s)"),
        "{}",
        run.stdout
    );
    edit(&sys, |v| {
        let ds = &mut v["zfs"]["datasets"][VAULT];
        ds["createtxg"] = 400.into();
        ds["snapshots"] = serde_json::json!([
            {"name": "qubes:after-import-data:1800000000.000000", "createtxg": 401, "size": 262144},
            {"name": "b2", "createtxg": 410, "size": 262144},
        ]);
    });
    sys
}

const WHY: &str = "mainpool/qubes/vault/private@b2: no common snapshot with the medium: full send. The medium's copy of mainpool/qubes/vault/private holds 1 snapshot(s), none of which dom0's mainpool/qubes/vault/private has any more: the volume was replaced (a restore does that: Qubes' volume import makes a new dataset with new guids)";

#[test]
fn the_next_backup_of_a_restored_volume_is_planned_as_a_full_send_and_says_why() {
    let sys = restored();
    // The next backup continues from @b1, which the restored volume does not have.
    let file = sys.write(
        "vols2.yaml",
        &datasets_config("vols", "b2", "\"@b1\"", &[VAULT]),
    );
    let check = sys.driver(&["check", &file]);
    check.expect(0);
    assert!(
        check
            .stdout
            .contains("exists   mainpool/qubes/vault/private@b2  [full]")
            && check.stderr.contains(
                "1 dataset(s) have no @b1 snapshot, so they will be sent in full: mainpool/qubes/vault/private"
            ),
        "{}\n{}",
        check.stdout,
        check.stderr
    );
    sys.driver(&["import", "--replace", &file]).expect(0);
    let calc = sys.driver(&["calc", "vols"]);
    calc.expect(0);
    assert!(
        calc.stdout
            .contains("mainpool/qubes/vault/private@b2  [full]"),
        "{}",
        calc.stdout
    );
    let all = format!("{}{}", calc.stdout, calc.stderr);
    assert!(all.contains(WHY), "{all}");
    // Send refuses it up front, saying the same and what to do, instead of the agent's
    // "already exists on the receiver".
    let send = sys.driver(&["send", "vols"]);
    send.expect(8);
    assert!(
        send.stderr.contains(WHY)
            && send
                .stderr
                .contains("send this backup to a new receiver dataset")
            && !send.stderr.contains("already exists on the receiver"),
        "{}",
        send.stderr
    );
    // What it says works: the same backup to a new receiver dataset is a full send that
    // completes and verifies.
    let moved = datasets_config("vols", "b2", "\"@b1\"", &[VAULT])
        .replace(ROOT, "backuppool/backups/mydesktop-2");
    sys.zfs(
        "backups-disp",
        &["create", "backuppool/backups/mydesktop-2"],
    )
    .expect(0);
    let file = sys.write("vols3.yaml", &moved);
    sys.driver(&["import", "--replace", &file]).expect(0);
    let send = sys.driver(&["send", "vols"]);
    send.expect(0);
    assert!(
        send.stdout
            .contains("sending mainpool/qubes/vault/private@b2 (full)"),
        "{}",
        send.stdout
    );
    sys.driver(&["verify", "vols"]).expect(0);
}
