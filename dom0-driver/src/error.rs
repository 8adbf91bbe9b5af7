//! One error type for the whole driver. Its Display is the message the user sees; its exit code
//! is documented in the README.

use crate::config::diag::{self, Diagnostic};
use crate::system::inventory::ToolError;
use std::fmt;

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
    /// The backup qube or its agent failed or misbehaved.
    Receiver(String),
    /// One or more targets failed to send.
    Send(String),
    /// Something from the backup qube tried to make dom0 do what was not planned.
    Security(String),
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::InvalidConfig { .. } => 1,
            Error::ConfigFile {
                not_found: true, ..
            } => 4,
            Error::ConfigFile { .. } => 1,
            Error::Tool(_) => 5,
            Error::State(_) => 6,
            Error::Refused(_) => 6,
            Error::Receiver(_) => 7,
            Error::Send(_) => 8,
            Error::Security(_) => 9,
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
            Error::State(m) | Error::Refused(m) | Error::Receiver(m) | Error::Send(m) => {
                f.write_str(m)
            }
            Error::Security(m) => write!(f, "security: {m}"),
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
