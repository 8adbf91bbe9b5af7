//! Diagnostics: the errors and warnings `check` shows, each with where it comes from.

use crate::config::yaml::Pos;
use serde::Serialize;
use std::fmt;

/// Most errors shown of one config (text and `check --json`); the rest are counted. A config
/// with 500,000 duplicated members must not print 500,000 lines: the first few show the pattern.
pub const MAX_SHOWN: usize = 50;

/// The line that stands for the errors not shown, if any.
pub fn not_shown_line(total: usize) -> Option<String> {
    let more = total.checked_sub(MAX_SHOWN).filter(|&n| n > 0)?;
    let noun = if more == 1 { "error" } else { "errors" };
    Some(format!("… and {more} more {noun} (only the first {MAX_SHOWN} are shown; fix these and check again)"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One finding about a config or the plan. `path` is the config key path (`scope.since`,
/// `core-qubes.members[2]`), empty when the finding is about the system rather than a key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    pub message: String,
}

impl Diagnostic {
    pub fn error(path: impl Into<String>, pos: Option<Pos>, message: impl Into<String>) -> Self {
        Self::new(Severity::Error, path, pos, message)
    }

    pub fn warning(path: impl Into<String>, pos: Option<Pos>, message: impl Into<String>) -> Self {
        Self::new(Severity::Warning, path, pos, message)
    }

    fn new(
        severity: Severity,
        path: impl Into<String>,
        pos: Option<Pos>,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            severity,
            path: path.into(),
            line: pos.map(|p| p.line),
            column: pos.map(|p| p.column),
            message: message.into(),
        }
    }

    /// The one-line form: `file:line:col: path: message`. A line break or other control
    /// character inside the path or message (a group name written as a multi-line YAML scalar
    /// ends up in both) is escaped, so one diagnostic is always one line.
    pub fn render(&self, file: Option<&str>) -> String {
        let mut out = String::new();
        if let Some(file) = file {
            out.push_str(file);
            out.push(':');
            if let Some(line) = self.line {
                out.push_str(&format!("{line}:"));
                if let Some(col) = self.column {
                    out.push_str(&format!("{col}:"));
                }
            }
            out.push(' ');
        }
        if !self.path.is_empty() {
            push_one_line(&mut out, &self.path);
            out.push_str(": ");
        }
        push_one_line(&mut out, &self.message);
        out
    }
}

/// Appends `s` with line breaks and other control characters (but tabs) escaped.
fn push_one_line(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() && c != '\t' => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_diagnostic_renders_as_one_line_whatever_its_text() {
        let d = Diagnostic::error(
            "include-groups[0]",
            Some(Pos { line: 3, column: 5 }),
            "group 'a\n- b\r\u{1b}[31m' is not defined",
        );
        let text = d.render(Some("f.yaml"));
        assert_eq!(text.lines().count(), 1, "{text}");
        assert_eq!(
            text,
            "f.yaml:3:5: include-groups[0]: group 'a\\n- b\\r\\u{1b}[31m' is not defined"
        );
        let d = Diagnostic::error("a\nb", None, "x");
        assert_eq!(d.to_string(), "a\\nb: x");
    }
}
