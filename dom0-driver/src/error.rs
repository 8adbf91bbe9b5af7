//! One error type for the whole driver. Its Display is the message the user sees; its exit code
//! is documented in the README.

use crate::config::diag::Diagnostic;
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
                for (i, e) in errors.iter().enumerate() {
                    if i > 0 {
                        writeln!(f)?;
                    }
                    write!(f, "  {}", e.render(Some(file)))?;
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
