//! Authenticated backups of zvols, end to end through the real binaries and the fake system
//! (whose `zfs send` of a volume writes real OpenZFS records): `send` taps each zvol stream
//! into MAC'd manifests stored on the medium; `verify` has the backup qube read its snapshots
//! back and checks every block. A backup qube that returns altered, missing or extra blocks, or
//! a medium whose stored manifests were changed, fails `verify` with a clear message.

use qzb_blackbox_tests::{datasets_config as config, FakeSystem, Run, VAULT};

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
        status.stdout.contains("manifest: on the medium"),
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
