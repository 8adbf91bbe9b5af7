//! The built binary's command line (this file also makes `cargo test --workspace` build the real
//! `qubes-zfs-backup` binary, which the black-box tests in tests/blackbox run).

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_qubes-zfs-backup");

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("run the driver");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn version_names_the_program_and_its_version() {
    let (code, out, _) = run(&["--version"]);
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        format!("qubes-zfs-backup {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn help_lists_every_command_and_the_exit_codes() {
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for cmd in [
        "check", "import", "list", "snapshot", "calc", "send", "verify", "abort", "status",
    ] {
        assert!(
            out.contains(&format!("  {cmd} ")),
            "{cmd} missing from:\n{out}"
        );
    }
    assert!(out.contains("Exit codes:"), "{out}");
}

#[test]
fn command_help_has_an_example() {
    for cmd in ["check", "import", "snapshot", "calc", "send", "abort"] {
        let (code, out, _) = run(&["help", cmd]);
        assert_eq!(code, 0, "{cmd}");
        assert!(out.contains("Example"), "{cmd}:\n{out}");
    }
}

#[test]
fn usage_errors_exit_2_with_a_suggestion() {
    let (code, _, err) = run(&["chek", "x.yaml"]);
    assert_eq!(code, 2);
    assert!(err.contains("check"), "{err}");
    let (code, _, err) = run(&["send"]);
    assert_eq!(code, 2);
    assert!(err.contains("<NAME>"), "{err}");
    let (code, _, _) = run(&["--timeout", "0", "list"]);
    assert_eq!(code, 2, "a zero timeout is refused");
}
