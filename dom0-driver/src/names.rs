//! Validated names: the boundary types for datasets, snapshots and qubes.
//!
//! Everything that reaches a `zfs` argv or a file path goes through one of these, so a name that
//! ZFS or Qubes would reject (or that could be mistaken for an option) is refused where it enters.

use std::fmt;

/// Longest dataset name ZFS accepts (ZFS_MAX_DATASET_NAME_LEN - 1).
pub const MAX_DATASET_NAME_LEN: usize = 255;
/// Longest qube name Qubes accepts.
pub const MAX_QUBE_NAME_LEN: usize = 31;

/// Characters ZFS allows in one component of a dataset or snapshot name.
fn is_zfs_component_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | ' ')
}

/// Why a name was refused; the text completes "… is not a valid <kind>: ".
fn component_problem(component: &str) -> Option<String> {
    if component.is_empty() {
        return Some("it has an empty component (a doubled, leading or trailing '/')".into());
    }
    if component == "." || component == ".." {
        return Some(format!("the component '{component}' is not allowed"));
    }
    if let Some(c) = component.chars().find(|c| !is_zfs_component_char(*c)) {
        return Some(format!(
            "the character {} is not allowed (ZFS names use letters, digits, '_', '-', '.', ':' and space)",
            describe_char(c)
        ));
    }
    None
}

/// Shows a character safely, whatever it is (control characters included).
pub fn describe_char(c: char) -> String {
    if c.is_ascii_graphic() {
        format!("'{c}'")
    } else {
        format!("U+{:04X}", c as u32)
    }
}

/// A ZFS filesystem or volume name such as `mainpool/qubes/work/private`.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct DatasetName(String);

impl DatasetName {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("the name is empty".into());
        }
        if s.len() > MAX_DATASET_NAME_LEN {
            return Err(format!(
                "it is {} bytes long; ZFS allows at most {MAX_DATASET_NAME_LEN}",
                s.len()
            ));
        }
        if s.starts_with('-') {
            return Err("it starts with '-', which would be read as an option".into());
        }
        if s.contains('@') {
            return Err("it contains '@': that names a snapshot, not a dataset".into());
        }
        if s.contains('#') {
            return Err("it contains '#': that names a bookmark, not a dataset".into());
        }
        for component in s.split('/') {
            if let Some(problem) = component_problem(component) {
                return Err(problem);
            }
        }
        Ok(DatasetName(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The pool this dataset lives in (its first component).
    pub fn pool(&self) -> &str {
        self.0.split('/').next().unwrap_or(&self.0)
    }

    /// The parent dataset, or None for a pool's root dataset.
    pub fn parent(&self) -> Option<DatasetName> {
        self.0
            .rsplit_once('/')
            .map(|(parent, _)| DatasetName(parent.to_owned()))
    }

    /// The last component.
    pub fn leaf(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// Proper ancestors, nearest first (`a/b/c` → `a/b`, `a`).
    pub fn ancestors(&self) -> impl Iterator<Item = &str> {
        let s = self.0.as_str();
        s.char_indices()
            .rev()
            .filter(|&(_, c)| c == '/')
            .map(move |(i, _)| &s[..i])
    }

    /// True when `self` is strictly below `ancestor` (`a/b` is below `a`, `ab` is not).
    pub fn is_strictly_under(&self, ancestor: &str) -> bool {
        self.0.len() > ancestor.len()
            && self.0.starts_with(ancestor)
            && self.0.as_bytes()[ancestor.len()] == b'/'
    }

    pub fn depth(&self) -> usize {
        self.0.split('/').count()
    }

    /// `self` placed under `root`: `root/self` (where the receiver stores a backed-up dataset).
    pub fn under(&self, root: &DatasetName) -> Result<DatasetName, String> {
        DatasetName::parse(&format!("{}/{}", root.0, self.0))
    }

    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

impl fmt::Display for DatasetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The label of a snapshot, the part after `@` (stored without the `@`).
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct SnapLabel(String);

impl SnapLabel {
    /// Parses a label written with its leading `@`, as the config file writes it.
    pub fn parse_with_at(s: &str) -> Result<Self, String> {
        match s.strip_prefix('@') {
            Some(label) => SnapLabel::parse(label),
            None => Err(format!(
                "a snapshot label starts with '@' (for example \"@{}\")",
                if s.is_empty() { "backup-1" } else { s }
            )),
        }
    }

    /// Parses a bare label (no `@`).
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("the label after '@' is empty".into());
        }
        if s.len() > MAX_DATASET_NAME_LEN {
            return Err("the label is too long".into());
        }
        if s.contains('@') || s.contains('/') {
            return Err("a label cannot contain '@' or '/'".into());
        }
        if let Some(c) = s.chars().find(|c| !is_zfs_component_char(*c)) {
            return Err(format!(
                "the character {} is not allowed in a snapshot label",
                describe_char(c)
            ));
        }
        Ok(SnapLabel(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SnapLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "@{}", self.0)
    }
}

/// A snapshot: dataset plus label.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct SnapshotName {
    pub dataset: DatasetName,
    pub label: SnapLabel,
}

impl SnapshotName {
    pub fn new(dataset: DatasetName, label: SnapLabel) -> Self {
        SnapshotName { dataset, label }
    }

    /// Parses `pool/ds@label`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (ds, label) = s
            .split_once('@')
            .ok_or_else(|| format!("'{s}' has no '@label'"))?;
        Ok(SnapshotName {
            dataset: DatasetName::parse(ds)?,
            label: SnapLabel::parse(label)?,
        })
    }
}

impl fmt::Display for SnapshotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.dataset, self.label.0)
    }
}

/// A qube name, by Qubes' own rule: a letter, then letters, digits, `_`, `.` or `-`.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct QubeName(String);

impl QubeName {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut chars = s.chars();
        match chars.next() {
            None => return Err("the name is empty".into()),
            Some(c) if !c.is_ascii_alphabetic() => {
                return Err(format!(
                    "a qube name starts with a letter, not {}",
                    describe_char(c)
                ))
            }
            _ => {}
        }
        if let Some(c) =
            chars.find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
        {
            return Err(format!(
                "the character {} is not allowed in a qube name",
                describe_char(c)
            ));
        }
        if s.len() > MAX_QUBE_NAME_LEN {
            return Err(format!(
                "it is {} characters long; Qubes allows at most {MAX_QUBE_NAME_LEN}",
                s.len()
            ));
        }
        Ok(QubeName(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for QubeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! string_conversions {
    ($($ty:ident => $parse:path),*) => {$(
        impl TryFrom<String> for $ty {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                $parse(&s).map_err(|e| format!("{s:?} is not a valid name: {e}"))
            }
        }
        impl From<$ty> for String {
            fn from(n: $ty) -> String {
                n.to_string()
            }
        }
    )*};
}

string_conversions!(
    DatasetName => DatasetName::parse,
    SnapshotName => SnapshotName::parse,
    QubeName => QubeName::parse
);

// A label travels without its '@' (Display adds it for people).
impl TryFrom<String> for SnapLabel {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        SnapLabel::parse(&s).map_err(|e| format!("{s:?} is not a valid snapshot label: {e}"))
    }
}

impl From<SnapLabel> for String {
    fn from(l: SnapLabel) -> String {
        l.0
    }
}

/// Compares dataset names component by component (`a/b` sorts before `a-b`), the order the
/// coverage report and the send order use.
pub fn cmp_components(a: &str, b: &str) -> std::cmp::Ordering {
    a.split('/').cmp(b.split('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataset_names_follow_zfs_rules() {
        for ok in [
            "pool",
            "mainpool/qubes/work-email/private",
            "a/b.c/d:e",
            "p/with space",
        ] {
            assert!(DatasetName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/pool",
            "pool/",
            "pool//x",
            "-pool",
            "pool/..",
            "pool/.",
            "pool@snap",
            "p#b",
            "pool/x\ny",
            "pool/x\0",
            "pool/é",
        ] {
            assert!(DatasetName::parse(bad).is_err(), "{bad:?}");
        }
        assert!(DatasetName::parse(&"a/".repeat(128)).is_err());
    }

    #[test]
    fn strictly_under_respects_component_boundaries() {
        let d = DatasetName::parse("pool/ab/c").unwrap();
        assert!(d.is_strictly_under("pool/ab"));
        assert!(d.is_strictly_under("pool"));
        assert!(!d.is_strictly_under("pool/a"));
        assert!(!d.is_strictly_under("pool/ab/c"));
        assert_eq!(d.ancestors().collect::<Vec<_>>(), ["pool/ab", "pool"]);
        assert_eq!(d.parent().unwrap().as_str(), "pool/ab");
    }

    #[test]
    fn labels_need_their_at_sign() {
        assert_eq!(SnapLabel::parse_with_at("@b-1").unwrap().as_str(), "b-1");
        assert!(SnapLabel::parse_with_at("b-1")
            .unwrap_err()
            .contains("starts with '@'"));
        assert!(SnapLabel::parse_with_at("@").is_err());
        assert!(SnapLabel::parse_with_at("@a@b").is_err());
        assert!(SnapLabel::parse("qubes:before-start:1700000000").is_ok());
    }

    #[test]
    fn qube_names_follow_qubes_rules() {
        for ok in ["work", "sys-usb", "fedora-41.xfce", "a_b"] {
            assert!(QubeName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1work",
            "-work",
            "wo rk",
            "work/x",
            "a".repeat(32).as_str(),
        ] {
            assert!(QubeName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn component_order_puts_children_before_siblings_with_longer_names() {
        let mut v = vec!["a-b", "a/b", "a"];
        v.sort_by(|x, y| cmp_components(x, y));
        assert_eq!(v, ["a", "a/b", "a-b"]);
    }
}
