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
        "check", "import", "list", "snapshot", "calc", "send", "verify", "abort", "status", "key",
        "prune",
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
    for cmd in [
        "check", "import", "snapshot", "calc", "send", "abort", "key", "prune",
    ] {
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

/// The README's exit-code table is a copy of `error::EXIT_CODES`, row for row.
#[test]
fn readme_exit_codes_match_the_one_table() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let start = readme.find("### Exit codes").expect("an exit-code section");
    let rows: Vec<(i32, String)> = readme[start..]
        .lines()
        .skip_while(|l| !l.starts_with("| code"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let (code, meaning) = l[1..].split_once('|').expect("two columns");
            let meaning = meaning.trim().trim_end_matches('|').trim();
            (
                code.trim().parse().expect("a code"),
                meaning.replace("\\|", "|"),
            )
        })
        .collect();
    let table: Vec<(i32, String)> = dom0_driver::error::EXIT_CODES
        .iter()
        .map(|(c, m)| (*c, (*m).to_owned()))
        .collect();
    assert_eq!(rows, table);
}

/// `--help` prints every row of the one table.
#[test]
fn help_prints_every_exit_code_of_the_one_table() {
    let (_, out, _) = run(&["--help"]);
    for (code, meaning) in dom0_driver::error::EXIT_CODES {
        assert!(
            out.contains(&format!("  {code}  {meaning}")),
            "{code} missing:\n{out}"
        );
    }
}
