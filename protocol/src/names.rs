//! Validated ZFS dataset and snapshot names.
//!
//! Every name that crosses the trust boundary is parsed into one of these types first, so the
//! rest of the code never sees a name that could escape the receiver root, smuggle an option
//! into a `zfs` argv, or break a line-oriented parser.

use std::fmt;
use std::str::FromStr;

/// Longest dataset or snapshot name ZFS accepts (`ZFS_MAX_DATASET_NAME_LEN` minus the NUL).
pub const MAX_NAME_LEN: usize = 255;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    Empty,
    TooLong {
        len: usize,
    },
    /// A character outside `[A-Za-z0-9_.: -]` (control characters, NUL, `%`, `/` in a label…).
    BadChar {
        ch: char,
    },
    EmptyComponent,
    LeadingOrTrailingSlash,
    /// A `.` or `..` component.
    DotComponent,
    /// The pool name (first component) must start with a letter.
    BadPoolName,
    /// `@` or `#` inside the dataset part.
    UnexpectedDelimiter {
        ch: char,
    },
    /// A snapshot name without exactly one `@`.
    NotASnapshot,
    /// Leading `-` would let a name be read as a `zfs` option.
    LeadingDash,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Empty => write!(f, "name is empty"),
            NameError::TooLong { len } => {
                write!(
                    f,
                    "name is {len} bytes long, ZFS allows at most {MAX_NAME_LEN}"
                )
            }
            NameError::BadChar { ch } => write!(f, "name contains forbidden character {ch:?}"),
            NameError::EmptyComponent => write!(f, "name has an empty component (\"//\")"),
            NameError::LeadingOrTrailingSlash => write!(f, "name starts or ends with '/'"),
            NameError::DotComponent => write!(f, "name has a '.' or '..' component"),
            NameError::BadPoolName => write!(f, "pool name must start with a letter"),
            NameError::UnexpectedDelimiter { ch } => {
                write!(f, "dataset part of the name contains {ch:?}")
            }
            NameError::NotASnapshot => write!(f, "snapshot name needs exactly one '@'"),
            NameError::LeadingDash => write!(f, "name component starts with '-'"),
        }
    }
}

impl std::error::Error for NameError {}

fn valid_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | ' ' | '-')
}

/// Checks one `/`-separated component of a dataset name, or a snapshot label.
fn check_component(component: &str) -> Result<(), NameError> {
    if component.is_empty() {
        return Err(NameError::EmptyComponent);
    }
    if component == "." || component == ".." {
        return Err(NameError::DotComponent);
    }
    if component.starts_with('-') {
        return Err(NameError::LeadingDash);
    }
    for ch in component.chars() {
        if ch == '@' || ch == '#' {
            return Err(NameError::UnexpectedDelimiter { ch });
        }
        if !valid_char(ch) {
            return Err(NameError::BadChar { ch });
        }
    }
    Ok(())
}

fn check_dataset(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong { len: name.len() });
    }
    if name.starts_with('/') || name.ends_with('/') {
        return Err(NameError::LeadingOrTrailingSlash);
    }
    for component in name.split('/') {
        check_component(component)?;
    }
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(NameError::BadPoolName);
    }
    Ok(())
}

/// A ZFS filesystem or volume name such as `pool/backups/qubes/vm-work`.
///
/// Components are made of `[A-Za-z0-9_.: -]`, no component is empty, `.` or `..`, or starts
/// with `-`; no leading or trailing `/`; the pool name starts with a letter; at most 255 bytes.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DatasetName(String);

impl DatasetName {
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        check_dataset(&name)?;
        Ok(DatasetName(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True if `self` is a proper descendant of `root` (not `root` itself).
    pub fn is_strictly_under(&self, root: &DatasetName) -> bool {
        self.0.len() > root.0.len()
            && self.0.starts_with(&root.0)
            && self.0.as_bytes()[root.0.len()] == b'/'
    }

    /// The containing dataset, or `None` for a pool's root dataset.
    pub fn parent(&self) -> Option<DatasetName> {
        self.0
            .rfind('/')
            .map(|at| DatasetName(self.0[..at].to_owned()))
    }

    /// The datasets strictly between `root` and `self` (exclusive at both ends), outermost
    /// first; `None` if `self` is not strictly under `root`.
    pub fn intermediates_below(&self, root: &DatasetName) -> Option<Vec<DatasetName>> {
        if !self.is_strictly_under(root) {
            return None;
        }
        let mut between = Vec::new();
        let mut current = self.parent();
        while let Some(ds) = current {
            if ds == *root {
                break;
            }
            current = ds.parent();
            between.push(ds);
        }
        between.reverse();
        Some(between)
    }

    /// `self@label` as a validated snapshot name.
    pub fn snapshot(&self, label: &str) -> Result<SnapshotName, NameError> {
        SnapshotName::new(format!("{}@{}", self.0, label))
    }
}

impl fmt::Display for DatasetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DatasetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatasetName({:?})", self.0)
    }
}

impl FromStr for DatasetName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        DatasetName::new(s)
    }
}

impl AsRef<str> for DatasetName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A snapshot name `dataset@label`; the label follows the same character rules as a dataset
/// component, and the whole name is at most 255 bytes.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnapshotName {
    full: String,
    at: usize,
}

impl SnapshotName {
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let full = name.into();
        if full.is_empty() {
            return Err(NameError::Empty);
        }
        if full.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong { len: full.len() });
        }
        let at = full.find('@').ok_or(NameError::NotASnapshot)?;
        let (dataset, label) = (&full[..at], &full[at + 1..]);
        if label.contains('@') {
            return Err(NameError::NotASnapshot);
        }
        check_dataset(dataset)?;
        check_component(label)?;
        Ok(SnapshotName { full, at })
    }

    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The dataset part (before `@`).
    pub fn dataset(&self) -> DatasetName {
        DatasetName(self.full[..self.at].to_owned())
    }

    pub fn dataset_str(&self) -> &str {
        &self.full[..self.at]
    }

    /// The part after `@`.
    pub fn label(&self) -> &str {
        &self.full[self.at + 1..]
    }

    /// True if the snapshot's dataset is strictly under `root`.
    pub fn is_strictly_under(&self, root: &DatasetName) -> bool {
        self.dataset().is_strictly_under(root)
    }
}

impl fmt::Display for SnapshotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl fmt::Debug for SnapshotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SnapshotName({:?})", self.full)
    }
}

impl FromStr for SnapshotName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        SnapshotName::new(s)
    }
}

// Names travel inside bincode messages as plain strings and are re-validated on decode, so a
// peer can never hand us an unchecked name.
impl bincode::Encode for DatasetName {
    fn encode<E: bincode::enc::Encoder>(
        &self,
        encoder: &mut E,
    ) -> Result<(), bincode::error::EncodeError> {
        self.0.encode(encoder)
    }
}

impl<Context> bincode::Decode<Context> for DatasetName {
    fn decode<D: bincode::de::Decoder<Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        let raw = String::decode(decoder)?;
        DatasetName::new(raw).map_err(|e| {
            bincode::error::DecodeError::OtherString(format!("invalid dataset name: {e}"))
        })
    }
}
bincode::impl_borrow_decode!(DatasetName);

impl bincode::Encode for SnapshotName {
    fn encode<E: bincode::enc::Encoder>(
        &self,
        encoder: &mut E,
    ) -> Result<(), bincode::error::EncodeError> {
        self.full.encode(encoder)
    }
}

impl<Context> bincode::Decode<Context> for SnapshotName {
    fn decode<D: bincode::de::Decoder<Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        let raw = String::decode(decoder)?;
        SnapshotName::new(raw).map_err(|e| {
            bincode::error::DecodeError::OtherString(format!("invalid snapshot name: {e}"))
        })
    }
}
bincode::impl_borrow_decode!(SnapshotName);

#[cfg(test)]
mod tests {
    use super::*;

    fn ds(s: &str) -> DatasetName {
        DatasetName::new(s).unwrap()
    }

    #[test]
    fn accepts_ordinary_zfs_names() {
        for ok in [
            "pool",
            "pool/a",
            "pool/a b/c:d.e_f-g",
            "p1/x",
            "tank/qubes/vm-work/private",
        ] {
            assert!(DatasetName::new(ok).is_ok(), "{ok}");
        }
        let snap = SnapshotName::new("pool/a@qzb-2024-01-01").unwrap();
        assert_eq!(snap.dataset(), ds("pool/a"));
        assert_eq!(snap.label(), "qzb-2024-01-01");
    }

    #[test]
    fn rejects_hostile_dataset_names() {
        let cases: &[(&str, NameError)] = &[
            ("", NameError::Empty),
            ("/pool/a", NameError::LeadingOrTrailingSlash),
            ("pool/a/", NameError::LeadingOrTrailingSlash),
            ("pool//a", NameError::EmptyComponent),
            ("pool/../etc", NameError::DotComponent),
            ("pool/./a", NameError::DotComponent),
            ("pool/a\0b", NameError::BadChar { ch: '\0' }),
            ("pool/a\nb", NameError::BadChar { ch: '\n' }),
            ("pool/a\tb", NameError::BadChar { ch: '\t' }),
            ("pool/a@b", NameError::UnexpectedDelimiter { ch: '@' }),
            ("pool/a#b", NameError::UnexpectedDelimiter { ch: '#' }),
            ("pool/%recv", NameError::BadChar { ch: '%' }),
            ("pool/-o", NameError::LeadingDash),
            ("-pool", NameError::LeadingDash),
            ("1pool", NameError::BadPoolName),
            ("pool/é", NameError::BadChar { ch: 'é' }),
        ];
        for (name, want) in cases {
            assert_eq!(DatasetName::new(*name).unwrap_err(), *want, "{name:?}");
        }
        let long = format!("pool/{}", "a".repeat(251));
        assert_eq!(
            DatasetName::new(long).unwrap_err(),
            NameError::TooLong { len: 256 }
        );
        assert!(DatasetName::new(format!("pool/{}", "a".repeat(250))).is_ok());
    }

    #[test]
    fn rejects_hostile_snapshot_names() {
        for bad in [
            "pool/a",
            "pool/a@",
            "pool/a@b@c",
            "@b",
            "pool/a@b/c",
            "pool/a@b\n",
            "pool/a@-b",
            "pool/a@..",
            "pool/a@b#c",
            "/pool@x",
        ] {
            assert!(SnapshotName::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn strictly_under_requires_a_component_boundary() {
        let root = ds("pool/backup");
        assert!(ds("pool/backup/a").is_strictly_under(&root));
        assert!(ds("pool/backup/a/b").is_strictly_under(&root));
        assert!(!ds("pool/backup").is_strictly_under(&root));
        assert!(!ds("pool/backupx/a").is_strictly_under(&root));
        assert!(!ds("pool/back").is_strictly_under(&root));
        assert!(!ds("other/backup/a").is_strictly_under(&root));
        assert!(SnapshotName::new("pool/backup/a@s")
            .unwrap()
            .is_strictly_under(&root));
        assert!(!SnapshotName::new("pool/backup@s")
            .unwrap()
            .is_strictly_under(&root));
    }

    #[test]
    fn intermediates_lists_missing_parents_outermost_first() {
        let root = ds("pool/r");
        assert_eq!(
            ds("pool/r/a/b/c").intermediates_below(&root).unwrap(),
            vec![ds("pool/r/a"), ds("pool/r/a/b")]
        );
        assert!(ds("pool/r/a")
            .intermediates_below(&root)
            .unwrap()
            .is_empty());
        assert!(ds("pool/x/a").intermediates_below(&root).is_none());
    }

    #[test]
    fn names_refuse_invalid_strings_when_decoded_from_bincode() {
        let config = bincode::config::standard();
        let bytes = bincode::encode_to_vec("pool/../x".to_string(), config).unwrap();
        let err = bincode::decode_from_slice::<DatasetName, _>(&bytes, config).unwrap_err();
        assert!(err.to_string().contains("invalid dataset name"), "{err}");
        let bytes = bincode::encode_to_vec(ds("pool/a"), config).unwrap();
        let (back, _) = bincode::decode_from_slice::<DatasetName, _>(&bytes, config).unwrap();
        assert_eq!(back, ds("pool/a"));
    }
}
