//! One error type for the whole driver, and the exit codes, defined once.
//!
//! An error's `Display` is the message the admin sees. [`EXIT_CODES`] is the one table of exit
//! codes: `--help` (and so the man page, generated from the clap definitions) prints it, and a
//! test checks the README's table against it.

use crate::config::diag::{self, Diagnostic};
use crate::system::runner::ToolError;
use std::fmt;

/// The exit codes and what they mean, in the admin's words.
pub mod exit {
    pub const OK: i32 = 0;
    pub const INVALID_CONFIG: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const OUTPUT_FAILED: i32 = 3;
    pub const CONFIG_NOT_FOUND: i32 = 4;
    pub const TOOL: i32 = 5;
    pub const STATE: i32 = 6;
    pub const RECEIVER: i32 = 7;
    pub const SEND: i32 = 8;
    pub const SECURITY: i32 = 9;
    pub const PARTIAL: i32 = 10;
    pub const NOTHING_DONE: i32 = 11;
    pub const KEY: i32 = 12;
}

/// Every exit code with its meaning: the one table the README and `--help` show.
pub const EXIT_CODES: &[(i32, &str)] = &[
    (exit::OK, "success (warnings allowed)"),
    (
        exit::INVALID_CONFIG,
        "the config is invalid (every error listed on stderr), or cannot be read",
    ),
    (exit::USAGE, "command-line usage error"),
    (
        exit::OUTPUT_FAILED,
        "the command succeeded but its output could not be written (e.g. a full disk behind `> file`; a reader that stops early, as `| head` does, is not an error)",
    ),
    (exit::CONFIG_NOT_FOUND, "the config file does not exist"),
    (
        exit::TOOL,
        "a system tool (`zfs`, `qubesd-query`, `xl`) failed, hung, or printed something unreadable",
    ),
    (
        exit::STATE,
        "state problem or refusal: not imported, already imported, locked by another run, corrupt or newer state file, snapshots missing",
    ),
    (
        exit::RECEIVER,
        "the receiver: qube missing or not running, call refused by the qrexec policy, service not installed, agent ended, misbehaved or timed out",
    ),
    (
        exit::SEND,
        "at least one target failed to send, `verify` found a problem, or a qube's restore failed",
    ),
    (
        exit::SECURITY,
        "security refusal: the backup qube sent something dom0 did not plan (a forged resume token, a wrong guid), or `restore` found a set index or settings that fail their MAC",
    ),
    (
        exit::PARTIAL,
        "partial: everything that was ready was done, some targets were not ready (listed, with why); run the command again once they are. For `verify`: no problem found, but some zvols have no manifest and were checked by guid only, or the medium has no set index yet",
    ),
    (
        exit::NOTHING_DONE,
        "nothing was done, and the command says why (e.g. `verify` before anything was sent, `snapshot` with snapshot-creation disabled)",
    ),
    (
        exit::KEY,
        "the key: none set up (`key init`), one already set up, a wrong passphrase, a passphrase refused, or a key file that is unsafe, damaged or has refused KDF parameters",
    ),
];

/// The table as `--help` shows it.
pub fn exit_codes_help() -> String {
    let mut s = String::from("Exit codes:\n");
    for (code, meaning) in EXIT_CODES {
        s.push_str(&format!("  {code}  {meaning}\n"));
    }
    s
}

#[derive(Debug)]
pub enum Error {
    /// The config file could not be read.
    ConfigFile {
        path: String,
        problem: String,
        not_found: bool,
    },
    /// The config, or the plan made from it, has errors (all of them are listed).
    InvalidConfig {
        file: String,
        errors: Vec<Diagnostic>,
    },
    /// A system tool failed.
    Tool(ToolError),
    /// The metadata directory or a state file is unusable.
    State(String),
    /// An operation was refused because of the backup's state (not imported, already imported,
    /// locked, incomplete phases).
    Refused(String),
    /// The qrexec policy does not let dom0 call the service in that qube.
    PolicyRefused(String),
    /// The backup qube or its agent failed or misbehaved.
    Receiver(String),
    /// One or more targets failed to send.
    Send(String),
    /// Something from the backup qube tried to make dom0 do what was not planned.
    Security(String),
    /// The command did all it could, but some of its work was not ready (the message lists it).
    Partial(String),
    /// The command had nothing to do (the message says why).
    NothingDone(String),
    /// The key: missing, wrong passphrase, unsafe or damaged key file (the message says which).
    Key(String),
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::InvalidConfig { .. } => exit::INVALID_CONFIG,
            Error::ConfigFile {
                not_found: true, ..
            } => exit::CONFIG_NOT_FOUND,
            Error::ConfigFile { .. } => exit::INVALID_CONFIG,
            Error::Tool(_) => exit::TOOL,
            Error::State(_) | Error::Refused(_) => exit::STATE,
            Error::PolicyRefused(_) | Error::Receiver(_) => exit::RECEIVER,
            Error::Send(_) => exit::SEND,
            Error::Security(_) => exit::SECURITY,
            Error::Partial(_) => exit::PARTIAL,
            Error::NothingDone(_) => exit::NOTHING_DONE,
            Error::Key(_) => exit::KEY,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::ConfigFile { path, problem, .. } => {
                write!(f, "cannot read config file {path}: {problem}")
            }
            Error::InvalidConfig { file, errors } => {
                writeln!(f, "{file}: config is invalid, {} error(s):", errors.len())?;
                for (i, e) in errors.iter().take(diag::MAX_SHOWN).enumerate() {
                    if i > 0 {
                        writeln!(f)?;
                    }
                    write!(f, "  {}", e.render(Some(file)))?;
                }
                if let Some(line) = diag::not_shown_line(errors.len()) {
                    write!(f, "\n  {line}")?;
                }
                Ok(())
            }
            Error::Tool(e) => write!(f, "{e}"),
            Error::State(m)
            | Error::Refused(m)
            | Error::PolicyRefused(m)
            | Error::Receiver(m)
            | Error::Send(m)
            | Error::Partial(m)
            | Error::NothingDone(m)
            | Error::Key(m) => f.write_str(m),
            Error::Security(m) => write!(f, "security: {m}"),
        }
    }
}

impl From<crate::config::file::FileError> for Error {
    fn from(e: crate::config::file::FileError) -> Self {
        Error::ConfigFile {
            path: e.path,
            problem: e.problem,
            not_found: e.not_found,
        }
    }
}

impl From<ToolError> for Error {
    fn from(e: ToolError) -> Self {
        Error::Tool(e)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_exit_code_an_error_can_have_is_in_the_table() {
        let errors = [
            Error::InvalidConfig {
                file: "f".into(),
                errors: vec![],
            },
            Error::ConfigFile {
                path: "f".into(),
                problem: "p".into(),
                not_found: true,
            },
            Error::Tool(ToolError::new("zfs", "failed")),
            Error::State("s".into()),
            Error::Refused("r".into()),
            Error::PolicyRefused("p".into()),
            Error::Receiver("r".into()),
            Error::Send("s".into()),
            Error::Security("s".into()),
            Error::Partial("p".into()),
            Error::NothingDone("n".into()),
            Error::Key("k".into()),
        ];
        for e in errors {
            assert!(EXIT_CODES.iter().any(|(c, _)| *c == e.exit_code()), "{e:?}");
        }
        let codes: Vec<i32> = EXIT_CODES.iter().map(|(c, _)| *c).collect();
        assert_eq!(codes, (0..=12).collect::<Vec<_>>());
    }

    #[test]
    fn a_policy_refusal_is_a_receiver_problem() {
        assert_eq!(Error::PolicyRefused("x".into()).exit_code(), exit::RECEIVER);
    }

    fn invalid(n: usize) -> Error {
        Error::InvalidConfig {
            file: "b.yaml".into(),
            errors: (0..n)
                .map(|i| Diagnostic::error(format!("g.members[{i}]"), None, "listed twice"))
                .collect(),
        }
    }

    #[test]
    fn invalid_config_shows_the_first_errors_and_counts_the_rest() {
        let text = invalid(500_001).to_string();
        assert!(
            text.starts_with("b.yaml: config is invalid, 500001 error(s):"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 1 + diag::MAX_SHOWN + 1, "{text}");
        assert!(text.contains("g.members[49]") && !text.contains("g.members[50]"));
        assert!(
            text.ends_with(&format!(
                "… and {} more errors (only the first 50 are shown; fix these and check again)",
                500_001 - 50
            )),
            "{text}"
        );
    }

    #[test]
    fn a_few_errors_are_all_shown_without_a_summary_line() {
        let text = invalid(diag::MAX_SHOWN).to_string();
        assert_eq!(text.lines().count(), 1 + diag::MAX_SHOWN);
        assert!(!text.contains("more error"));
        assert!(invalid(diag::MAX_SHOWN + 1).to_string().ends_with(
            "… and 1 more error (only the first 50 are shown; fix these and check again)"
        ));
    }
}
