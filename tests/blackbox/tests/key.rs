//! `key init|check|change` of the real binary, passphrases through `--passphrase-fd 0` (a pipe
//! on stdin), with the cheapest Argon2 parameters the binary accepts.

use qzb_blackbox_tests::{FakeSystem, Run};
use std::os::unix::fs::{MetadataExt, PermissionsExt};

const FAST: [&str; 4] = ["--kdf-memory-mib", "8", "--kdf-passes", "1"];

/// Runs the driver with `input` on stdin (the passphrase descriptor 0).
fn with_input(sys: &FakeSystem, args: &[&str], input: &str) -> Run {
    sys.driver_with_input(args, input)
}

fn init(sys: &FakeSystem, passphrase: &str) -> Run {
    let mut args = vec!["key", "init", "--passphrase-fd", "0"];
    args.extend(FAST);
    with_input(sys, &args, &format!("{passphrase}\n"))
}

fn check(sys: &FakeSystem, passphrase: &str) -> Run {
    with_input(
        sys,
        &["key", "check", "--passphrase-fd", "0"],
        &format!("{passphrase}\n"),
    )
}

/// The 16-hex-digit key id in "Key <id> ..." output.
fn key_id(run: &Run) -> String {
    let id = run
        .stdout
        .split_whitespace()
        .skip_while(|w| *w != "Key")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    assert!(
        id.len() == 16 && id.chars().all(|c| c.is_ascii_hexdigit()),
        "no key id in:\n{}",
        run.stdout
    );
    id
}

fn assert_key_error(run: &Run, what: &str) {
    assert_eq!(
        run.code, 12,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    assert!(
        run.stderr.contains(what),
        "{what:?} not in:\n{}",
        run.stderr
    );
}

#[test]
fn key_init_from_a_descriptor_then_check_accepts_only_that_passphrase() {
    let sys = FakeSystem::new("demo-system");
    let run = init(&sys, "correct horse battery staple");
    assert_eq!(run.code, 0, "{}", run.stderr);
    let id = key_id(&run);
    assert!(run.stdout.contains("nothing can be verified or restored"));

    let ok = check(&sys, "correct horse battery staple");
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    assert_eq!(key_id(&ok), id);
    assert!(
        ok.stdout.contains("Argon2id, 8 MiB, 1 pass, 1 lane"),
        "{}",
        ok.stdout
    );
    assert!(ok
        .stdout
        .contains(&format!("The passphrase unlocks key {id}")));

    let wrong = check(&sys, "correct horse battery stapler");
    assert_key_error(&wrong, "the passphrase does not unlock");
}

#[test]
fn the_key_file_is_created_0600_and_the_wrapped_key_is_128_bytes() {
    let sys = FakeSystem::new("demo-system");
    assert_eq!(init(&sys, "correct horse battery staple").code, 0);
    let key = std::fs::metadata(sys.meta.join("key")).expect("key file");
    assert_eq!(key.mode() & 0o777, 0o600);
    assert_eq!(key.uid(), std::fs::metadata("/proc/self").unwrap().uid());
    let wrapped = std::fs::read(sys.meta.join("key.wrapped")).expect("key.wrapped");
    assert_eq!(wrapped.len(), 128);
    assert_eq!(&wrapped[..8], b"QZBWKEY\0");
}

#[test]
fn key_change_keeps_the_key_and_only_the_new_passphrase_unlocks_it() {
    let sys = FakeSystem::new("demo-system");
    let id = key_id(&init(&sys, "the first passphrase"));
    let key_before = std::fs::read(sys.meta.join("key")).unwrap();
    let wrapped_before = std::fs::read(sys.meta.join("key.wrapped")).unwrap();

    let mut args = vec!["key", "change", "--passphrase-fd", "0"];
    args.extend(FAST);
    let wrong_old = with_input(
        &sys,
        &args,
        "not the first passphrase\nthe second passphrase\n",
    );
    assert_key_error(&wrong_old, "nothing was changed");
    assert_eq!(
        std::fs::read(sys.meta.join("key.wrapped")).unwrap(),
        wrapped_before
    );

    let run = with_input(&sys, &args, "the first passphrase\nthe second passphrase\n");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("still verifies"), "{}", run.stdout);
    assert_ne!(
        std::fs::read(sys.meta.join("key.wrapped")).unwrap(),
        wrapped_before
    );
    assert_eq!(std::fs::read(sys.meta.join("key")).unwrap(), key_before);

    let ok = check(&sys, "the second passphrase");
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    assert_eq!(key_id(&ok), id);
    assert!(ok.stdout.contains("matches"), "{}", ok.stdout);
    assert_key_error(&check(&sys, "the first passphrase"), "does not unlock");
}

#[test]
fn a_group_readable_key_file_is_refused() {
    let sys = FakeSystem::new("demo-system");
    assert_eq!(init(&sys, "correct horse battery staple").code, 0);
    let key = sys.meta.join("key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let run = check(&sys, "correct horse battery staple");
    assert_key_error(&run, "must be 0600");
    assert!(run.stderr.contains("0640"), "{}", run.stderr);
}

#[test]
fn a_second_init_is_refused_and_points_to_key_change() {
    let sys = FakeSystem::new("demo-system");
    let id = key_id(&init(&sys, "correct horse battery staple"));
    let before = std::fs::read(sys.meta.join("key.wrapped")).unwrap();
    let again = init(&sys, "another long passphrase");
    assert_key_error(&again, "key change");
    assert!(again.stderr.contains(&id), "{}", again.stderr);
    assert_eq!(std::fs::read(sys.meta.join("key.wrapped")).unwrap(), before);
}

#[test]
fn weak_or_missing_passphrases_are_refused_before_anything_is_written() {
    let sys = FakeSystem::new("demo-system");
    assert_key_error(&init(&sys, "short"), "at least 12");
    assert_key_error(&init(&sys, ""), "is empty");
    let no_terminal = sys.driver(&["key", "init", "--kdf-memory-mib", "8"]);
    assert_key_error(&no_terminal, "--passphrase-fd");
    assert!(!sys.meta.join("key").exists() && !sys.meta.join("key.wrapped").exists());
    assert_key_error(&check(&sys, "whatever it is"), "key init");
}

#[test]
fn kdf_options_below_the_minimum_are_usage_errors() {
    let sys = FakeSystem::new("demo-system");
    for args in [
        ["key", "init", "--kdf-memory-mib", "4"],
        ["key", "init", "--kdf-passes", "0"],
    ] {
        let run = sys.driver(&args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
    }
}
