//! The backup's own name: the config's `name:` and the NAME argument of the commands.
//!
//! It becomes a file name in the metadata directory (`<name>.json`, `<name>.lock`), so it is
//! validated before anything touches the file system: no `/`, no leading `.` (no `..`, no
//! hidden file), no leading `-` (never read as an option), and short enough for any file system.

use qzb_protocol::names::describe_char;
use std::fmt;
use std::ops::Deref;

/// Longest backup name: with `.json` or a temp-file suffix it stays far below `NAME_MAX`.
pub const MAX_BACKUP_NAME_LEN: usize = 64;

/// Why a backup name was refused; the text completes "… is not a valid backup name: ".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupNameError {
    Empty,
    TooLong { len: usize },
    BadChar { ch: char },
    LeadingDotOrDash { ch: char },
}

impl fmt::Display for BackupNameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackupNameError::Empty => write!(f, "it is empty"),
            BackupNameError::TooLong { len } => write!(
                f,
                "it is {len} bytes long; a backup name has at most {MAX_BACKUP_NAME_LEN}"
            ),
            BackupNameError::BadChar { ch } => write!(
                f,
                "the character {} is not allowed: use only letters, digits, '_', '-' and '.'",
                describe_char(*ch)
            ),
            BackupNameError::LeadingDotOrDash { ch } => write!(
                f,
                "it must not start with '.' or '-' (it starts with {})",
                describe_char(*ch)
            ),
        }
    }
}

impl std::error::Error for BackupNameError {}

/// A valid backup name: 1 to 64 of `[A-Za-z0-9_.-]`, not starting with `.` or `-`.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct BackupName(String);

impl BackupName {
    pub fn parse(s: &str) -> Result<Self, BackupNameError> {
        if s.is_empty() {
            return Err(BackupNameError::Empty);
        }
        if s.len() > MAX_BACKUP_NAME_LEN {
            return Err(BackupNameError::TooLong { len: s.len() });
        }
        if let Some(ch) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
        {
            return Err(BackupNameError::BadChar { ch });
        }
        if let Some(ch) = s.chars().next().filter(|c| matches!(c, '.' | '-')) {
            return Err(BackupNameError::LeadingDotOrDash { ch });
        }
        Ok(BackupName(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Read-only access as text: a name is passed wherever a `&str` is expected.
impl Deref for BackupName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BackupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for BackupName {
    type Error = BackupNameError;
    fn try_from(s: String) -> Result<Self, BackupNameError> {
        BackupName::parse(&s)
    }
}

impl From<BackupName> for String {
    fn from(n: BackupName) -> String {
        n.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_names_that_could_leave_the_metadata_dir_or_read_as_options_are_refused() {
        for ok in ["mybackup1", "a", "b.2_x-y", &"a".repeat(64)] {
            assert!(BackupName::parse(ok).is_ok(), "{ok}");
        }
        let cases: &[(&str, BackupNameError)] = &[
            ("", BackupNameError::Empty),
            ("../escape", BackupNameError::BadChar { ch: '/' }),
            ("a/b", BackupNameError::BadChar { ch: '/' }),
            ("..", BackupNameError::LeadingDotOrDash { ch: '.' }),
            (".hidden", BackupNameError::LeadingDotOrDash { ch: '.' }),
            ("-x", BackupNameError::LeadingDotOrDash { ch: '-' }),
            ("a b", BackupNameError::BadChar { ch: ' ' }),
            ("a\nb", BackupNameError::BadChar { ch: '\n' }),
        ];
        for (name, want) in cases {
            assert_eq!(BackupName::parse(name).unwrap_err(), *want, "{name:?}");
        }
        assert_eq!(
            BackupName::parse(&"a".repeat(5000)).unwrap_err(),
            BackupNameError::TooLong { len: 5000 }
        );
        let msg = BackupName::parse("a\nb").unwrap_err().to_string();
        assert!(msg.contains("U+000A"), "{msg}");
    }
}
