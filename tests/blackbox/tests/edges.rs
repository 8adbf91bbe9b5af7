//! The edges a real admin hits (issue 12): configs that are not regular files, are huge, are
//! YAML bombs or have thousands of errors; state files that are corrupt.
//!
//! Commands that could hang or eat all memory before the fixes run under `timeout` and a
//! `ulimit -v`, both far above what a correct run needs: they only turn a hang or an
//! out-of-memory kill into a failed assertion instead of a stuck test run.

use qzb_blackbox_tests::{bin, workspace, FakeSystem, Run};
use std::process::Command;

fn demo() -> FakeSystem {
    FakeSystem::new("demo-system")
}

fn seed_config() -> String {
    std::fs::read_to_string(workspace().join("tests/fixtures/demo-system/backup1.yaml"))
        .expect("demo config")
}

/// The driver under a 2 GiB address-space limit and a 120 s hang guard.
fn guarded(sys: &FakeSystem, args: &[&str]) -> Run {
    let mut c = sys.command("sh");
    c.arg("-c")
        .arg("ulimit -v 2097152 && exec timeout --kill-after=5 120 \"$0\" \"$@\"")
        .arg(bin("qubes-zfs-backup"))
        .arg("--metadata-dir")
        .arg(&sys.meta)
        .args(args);
    Run::from(c.output().expect("run the driver under sh"))
}

fn assert_config_refused(run: &Run, path: &str, what: &str) {
    run.expect(1);
    assert!(
        run.stderr
            .contains(&format!("cannot read config file {path}: it is {what}")),
        "{}",
        run.stderr
    );
}

#[test]
fn a_character_device_as_the_config_is_refused_by_its_type() {
    let sys = demo();
    for cmd in ["check", "import"] {
        let run = guarded(&sys, &[cmd, "/dev/zero"]);
        assert_config_refused(&run, "/dev/zero", "a character device");
    }
}

#[test]
fn a_fifo_as_the_config_is_refused_without_waiting_for_a_writer() {
    let sys = demo();
    let fifo = sys.dir.join("pipe.yaml");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    let path = fifo.display().to_string();
    let run = guarded(&sys, &["check", &path]);
    assert_config_refused(&run, &path, "a FIFO (named pipe)");
}

#[test]
fn a_directory_as_the_config_is_refused_by_its_type() {
    let sys = demo();
    let path = sys.dir.display().to_string();
    let run = sys.driver(&["check", &path]);
    assert_config_refused(&run, &path, "a directory");
}

#[test]
fn a_config_over_one_mib_is_refused_with_its_size_and_the_cap() {
    let sys = demo();
    // A valid config padded with a comment to 2 MiB: refused by size, not by content.
    let text = format!("{}#{}\n", seed_config(), "x".repeat(2 << 20));
    let file = sys.write("big.yaml", &text);
    let run = sys.driver(&["check", &file]);
    assert_config_refused(
        &run,
        &file,
        &format!(
            "{} bytes, larger than the 1 MiB (1048576 bytes) a config may be",
            text.len()
        ),
    );
    // Just under the cap is fine: the cap is on size, not on a valid config.
    let pad = (1 << 20) - seed_config().len() - 3;
    let file = sys.write(
        "ok.yaml",
        &format!("{}#{}\n", seed_config(), "x".repeat(pad)),
    );
    sys.driver(&["check", &file]).expect(0);
}

#[test]
fn missing_config_still_exits_4() {
    let sys = demo();
    let run = sys.driver(&["check", "/nonexistent/b.yaml"]);
    run.expect(4);
}

#[test]
fn a_yaml_alias_bomb_fails_fast_at_the_alias() {
    let sys = demo();
    // 1.2 KB; fully expanded it would be 9^11 copies of "lol".
    let mut text = String::from("a0: &a0 [\"lol\"]\n");
    for i in 1..12 {
        let refs = vec![format!("*a{}", i - 1); 9].join(", ");
        text.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    assert!(text.len() < 1300, "{}", text.len());
    let file = sys.write("bomb.yaml", &text);
    for args in [vec!["check", &file], vec!["check", "--json", &file]] {
        let run = guarded(&sys, &args);
        run.expect(1);
        assert!(
            run.stderr.contains(&format!("{file}:6:")),
            "the error is at the alias that crosses the cap: {}",
            run.stderr
        );
        assert!(
            run.stderr
                .contains("would expand to more than 100000 nodes"),
            "{}",
            run.stderr
        );
    }
}

#[test]
fn thousands_of_errors_are_capped_in_text_and_json() {
    let sys = demo();
    let n = 150_000;
    let dups = vec!["work"; n].join(", ");
    let text = seed_config().replace(
        "misc:\n  type: qubes\n  members:\n    - video-editing",
        &format!("misc:\n  type: qubes\n  members: [{dups}]"),
    );
    assert!(text.len() < 1 << 20);
    let file = sys.write("dups.yaml", &text);
    let run = sys.driver(&["check", &file]);
    run.expect(1);
    let expected_errors = n - 1;
    assert!(
        run.stderr
            .contains(&format!("config is invalid, {expected_errors} error(s)")),
        "{}",
        &run.stderr[..run.stderr.len().min(2000)]
    );
    assert!(
        run.stderr.lines().count() <= 60,
        "{} lines",
        run.stderr.lines().count()
    );
    assert!(
        run.stderr
            .contains(&format!("… and {} more errors", expected_errors - 50)),
        "{}",
        &run.stderr[..run.stderr.len().min(2000)]
    );

    let run = sys.driver(&["check", "--json", &file]);
    run.expect(1);
    let v = run.json();
    assert_eq!(v["valid"], false);
    assert_eq!(v["errors"].as_array().unwrap().len(), 50);
    assert_eq!(v["error_count"], expected_errors);
    assert_eq!(v["errors_not_shown"], expected_errors - 50);
}

#[test]
fn an_unknown_top_level_key_names_the_known_keys_and_the_closest() {
    let sys = demo();
    let text = format!("{}reciever: backups-disp\n", seed_config());
    let file = sys.write("typo.yaml", &text);
    let run = sys.driver(&["check", &file]);
    run.expect(1);
    assert!(
        run.stderr.contains("unknown top-level key \"reciever\""),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("did you mean 'receiver'?"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(
            "name, scope, allowed-behaviours, receiver, include-groups, forgo-groups, void-groups"
        ),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("expected a group definition"),
        "{}",
        run.stderr
    );
}

/// Imports the demo config under `name`.
fn import_as(sys: &FakeSystem, name: &str) {
    let text = seed_config().replace("name: mybackup1", &format!("name: {name}"));
    let file = sys.write(&format!("{name}.yaml"), &text);
    sys.driver(&["import", &file]).expect(0);
}

#[test]
fn a_corrupt_state_file_only_affects_its_own_backup() {
    let sys = demo();
    for name in ["alpha", "bravo", "charlie"] {
        import_as(&sys, name);
    }
    std::fs::write(sys.meta.join("bravo.json"), b"{ \"format\": \"qubes-zfs-b").unwrap();

    let run = sys.driver(&["list"]);
    run.expect(0);
    assert!(run.stdout.contains("alpha"), "{}", run.stdout);
    assert!(run.stdout.contains("charlie"), "{}", run.stdout);
    let bravo: Vec<&str> = run.stdout.lines().filter(|l| l.contains("bravo")).collect();
    assert_eq!(bravo.len(), 1, "{}", run.stdout);
    assert!(bravo[0].contains("unreadable"), "{}", run.stdout);
    assert!(bravo[0].contains("corrupt"), "{}", run.stdout);

    let run = sys.driver(&["list", "--json"]);
    run.expect(0);
    let v = run.json();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 3, "{v:#}");
    assert_eq!(rows[0]["name"], "alpha");
    assert!(rows[0].get("error").is_none(), "{v:#}");
    assert_eq!(rows[1]["name"], "bravo");
    assert!(
        rows[1]["error"].as_str().unwrap().contains("corrupt"),
        "{v:#}"
    );
    assert_eq!(rows[2]["name"], "charlie");
    assert_eq!(rows[2]["targets"], rows[0]["targets"]);

    let run = sys.driver(&["status", "bravo"]);
    run.expect(6);
    assert!(
        run.stderr.contains("bravo.json is corrupt"),
        "{}",
        run.stderr
    );
    sys.driver(&["status", "charlie"]).expect(0);
}

#[test]
fn a_failed_state_write_leaves_no_temporary_file() {
    let sys = demo();
    import_as(&sys, "alpha");
    let before = std::fs::read(sys.meta.join("alpha.json")).unwrap();
    // A real write failure after the temporary file was created, as on a full disk, without
    // root: a file size limit of 0 blocks makes every write to a regular file fail with EFBIG
    // (SIGXFSZ ignored, which exec keeps). Pipes are not files, and the fakes ignore a failed
    // write of their call log, so only the state write fails.
    let mut c = sys.command("sh");
    c.arg("-c")
        .arg("trap '' XFSZ && ulimit -f 0 && exec \"$0\" \"$@\"")
        .arg(bin("qubes-zfs-backup"))
        .arg("--metadata-dir")
        .arg(&sys.meta)
        .args(["calc", "alpha"]);
    let run = Run::from(c.output().unwrap());
    run.expect(6);
    assert!(run.stderr.contains("cannot write"), "{}", run.stderr);
    assert!(run.stderr.contains("File too large"), "{}", run.stderr);
    let leftovers: Vec<_> = std::fs::read_dir(&sys.meta)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(std::fs::read(sys.meta.join("alpha.json")).unwrap(), before);
    // Once the disk has room again, the same command works.
    sys.driver(&["calc", "alpha"]).expect(0);
}
