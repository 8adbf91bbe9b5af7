//! `cargo xtask assets --out-dir DIR`: the dom0 driver's man page and shell completions,
//! generated from its clap definitions at build time (so the dom0 binary does not carry the
//! generators). scripts/build-rpms.sh packages them.
//!
//! One man page, `qubes-zfs-backup(1)`, documents every command in its COMMANDS section.
//! clap_mangen's own SUBCOMMANDS section would point to `qubes-zfs-backup-check(1)` and so on,
//! pages that are not shipped; the test below keeps every `name(N)` in the page resolvable.

use dom0_driver::cli::command;
use std::path::{Path, PathBuf};

/// The man pages `assets` writes. rpm/qubes-zfs-backup.spec ships exactly these.
pub const MAN_PAGES: [&str; 1] = ["qubes-zfs-backup.1"];

pub fn run(args: &[String]) -> Result<(), String> {
    let out = match args {
        [flag, dir] if flag == "--out-dir" => PathBuf::from(dir),
        _ => return Err("usage: cargo xtask assets --out-dir DIR".into()),
    };
    write_assets(&out)?;
    println!("wrote the man page and completions to {}", out.display());
    Ok(())
}

fn write_assets(out: &Path) -> Result<(), String> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    std::fs::write(out.join(MAN_PAGES[0]), man_page()?).map_err(|e| e.to_string())?;
    for (shell, file) in [
        (clap_complete::Shell::Bash, "qubes-zfs-backup.bash"),
        (clap_complete::Shell::Zsh, "_qubes-zfs-backup"),
        (clap_complete::Shell::Fish, "qubes-zfs-backup.fish"),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut command(), "qubes-zfs-backup", &mut buf);
        std::fs::write(out.join(file), buf).map_err(|e| e.to_string())?;
    }
    Ok(())
}

type Section = fn(&clap_mangen::Man, &mut dyn std::io::Write) -> std::io::Result<()>;

/// One section of clap_mangen's rendering, as text.
fn section(man: &clap_mangen::Man, render: Section) -> Result<String, String> {
    let mut buf = Vec::new();
    render(man, &mut buf).map_err(|e| e.to_string())?;
    String::from_utf8(buf).map_err(|e| e.to_string())
}

/// The same section without its `.SH` heading, to go under a `.SS` of its own.
fn body(man: &clap_mangen::Man, render: Section) -> Result<String, String> {
    let text = section(man, render)?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with(".SH "))
        .map(|l| format!("{l}\n"))
        .collect())
}

/// The whole page: clap_mangen's sections for the program, then every command under COMMANDS
/// (its description, synopsis, options and examples), then the exit codes.
fn man_page() -> Result<String, String> {
    // The command line as the binary builds it, with the exit-code table as its after-help.
    let cmd = command();
    let man = clap_mangen::Man::new(cmd.clone());
    let mut page = String::new();
    page += &section(&man, clap_mangen::Man::render_title)?;
    page += &section(&man, clap_mangen::Man::render_name_section)?;
    page += &section(&man, clap_mangen::Man::render_synopsis_section)?;
    page += &section(&man, clap_mangen::Man::render_description_section)?;
    page += &section(&man, clap_mangen::Man::render_options_section)?;
    page += ".SH COMMANDS\n";
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = sub.get_name().to_owned();
        let sub = sub.clone().bin_name(format!("qubes-zfs-backup {name}"));
        let has_args = sub.get_arguments().any(|a| !a.is_hide_set());
        let has_examples = sub.get_after_help().is_some() || sub.get_after_long_help().is_some();
        let man = clap_mangen::Man::new(sub);
        page += &format!(".SS {name}\n");
        page += &body(&man, clap_mangen::Man::render_synopsis_section)?;
        page += ".PP\n";
        page += &body(&man, clap_mangen::Man::render_description_section)?;
        if has_args {
            page += &body(&man, clap_mangen::Man::render_options_section)?;
        }
        if has_examples {
            page += ".PP\n.nf\n";
            page += &body(&man, clap_mangen::Man::render_extra_section)?;
            page += ".fi\n";
        }
    }
    page += &section(&man, clap_mangen::Man::render_extra_section)?
        .replace(".SH EXTRA", ".SH \"EXIT STATUS\"");
    page += &section(&man, clap_mangen::Man::render_version_section)?;
    page += ".SH \"SEE ALSO\"\n\
The config format, every key with its meaning and examples, and what check reports: \
/usr/share/doc/qubes\\-zfs\\-backup/CONFIG.md. Installation: INSTALL.md in the same directory.\n";
    Ok(page)
}

/// Every `name(N)` reference in a man page (roff escapes and fonts removed).
#[cfg(test)]
fn references(page: &str) -> Vec<String> {
    let text = page
        .replace("\\-", "-")
        .replace("\\fB", "")
        .replace("\\fI", "")
        .replace("\\fR", "")
        .replace("\\fP", "");
    let bytes = text.as_bytes();
    let mut refs = Vec::new();
    for (i, w) in bytes.windows(3).enumerate() {
        if w[0] == b'(' && w[1].is_ascii_digit() && w[2] == b')' {
            let start = text[..i]
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || "-_.".contains(c)))
                .map_or(0, |p| p + 1);
            if start < i {
                refs.push(format!("{}.{}", &text[start..i], w[1] as char));
            }
        }
    }
    refs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_man_page_lists_every_exit_code_of_the_one_table() {
        let page = man_page().unwrap().replace("\\-", "-");
        assert!(page.contains(".SH \"EXIT STATUS\""), "{page}");
        for (code, _) in dom0_driver::error::EXIT_CODES {
            assert!(
                page.contains(&format!("  {code}  ")),
                "exit code {code} missing:\n{page}"
            );
        }
    }

    /// The man pages rpm/qubes-zfs-backup.spec installs (its `Source1N: NAME.N` lines).
    fn shipped() -> Vec<String> {
        let spec = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../rpm/qubes-zfs-backup.spec"),
        )
        .expect("the dom0 spec");
        spec.lines()
            .filter(|l| l.starts_with("Source"))
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|f| {
                f.rsplit_once('.')
                    .is_some_and(|(_, n)| n.len() == 1 && n.as_bytes()[0].is_ascii_digit())
            })
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn every_man_page_reference_resolves_to_a_shipped_page() {
        let out = std::env::temp_dir().join(format!("qzb-assets-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        write_assets(&out).unwrap();
        let shipped = shipped();
        assert!(!shipped.is_empty(), "the spec ships no man page");
        let mut pages = Vec::new();
        for e in std::fs::read_dir(&out).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            if name
                .rsplit_once('.')
                .is_some_and(|(_, n)| n.len() == 1 && n.as_bytes()[0].is_ascii_digit())
            {
                pages.push(name);
            }
        }
        pages.sort();
        let mut expected: Vec<String> = MAN_PAGES.iter().map(|s| s.to_string()).collect();
        expected.sort();
        assert_eq!(pages, expected);
        for p in &pages {
            assert!(
                shipped.contains(p),
                "{p} is generated but the spec does not ship it"
            );
        }
        for p in &shipped {
            assert!(
                pages.contains(p),
                "the spec ships {p} but assets does not write it"
            );
        }
        for p in &pages {
            let text = std::fs::read_to_string(out.join(p)).unwrap();
            for r in references(&text) {
                assert!(
                    shipped.contains(&r),
                    "{p} refers to {r}, which is not a shipped man page (shipped: {shipped:?})"
                );
            }
            // The page documents every command itself.
            for cmd in [
                "check", "import", "list", "snapshot", "calc", "send", "verify", "abort", "status",
            ] {
                assert!(
                    text.contains(&format!(".SS {cmd}\n")),
                    "{p} has no section for {cmd}"
                );
            }
        }
        std::fs::remove_dir_all(&out).unwrap();
    }

    #[test]
    fn references_are_found_through_roff_escapes() {
        let page = ".TP\nqubes\\-zfs\\-backup\\-check(1)\nsee \\fBzfs\\fR(8) and ls(1).\n";
        assert_eq!(
            references(page),
            ["qubes-zfs-backup-check.1", "zfs.8", "ls.1"]
        );
    }
}
