//! Validated names: datasets, snapshot labels, snapshots, bookmarks and qubes.
//!
//! The one set of name types both sides use. Every name that reaches a `zfs` argv, a file path
//! or the wire is parsed into one of these first, so the rest of the code never sees a name that
//! ZFS or Qubes would reject, that could escape the receiver root, that could be read as an
//! option, or that could break a line-oriented parser.
//!
//! The rules (ZFS's `zfs_namecheck.c` and Qubes' `validate_name`, made stricter where a name
//! could be read as an option):
//! - a dataset is `/`-separated components of `[A-Za-z0-9_.: -]`; no component is empty, `.`
//!   or `..`, or starts with `-`; the pool (first component) starts with a letter and is not a
//!   name ZFS reserves (`mirror`, `raidz*`, `draid*`, `spare`, `log`);
//! - a snapshot label follows the component rules; a whole snapshot name `dataset@label` or
//!   bookmark name `dataset#label` is at most 255 bytes, like a dataset name;
//! - a qube name starts with a letter, continues with `[A-Za-z0-9_.-]` and is at most 31
//!   characters long.
//!
//! Names travel on the wire (bincode) and in dom0's state files (serde, with the `serde`
//! feature) as plain strings, and are validated again whenever they are read.

use std::fmt;

/// A validated name held as its text: the same derives for every kind, and (de)serialised as a
/// string that is validated again on the way in.
macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[cfg_attr(
            feature = "serde",
            derive(serde::Serialize, serde::Deserialize),
            serde(try_from = "String", into = "String")
        )]
        pub struct $name(String);
    };
}

/// Longest dataset, snapshot or bookmark name ZFS accepts (`ZFS_MAX_DATASET_NAME_LEN` minus
/// the NUL).
pub const MAX_NAME_LEN: usize = 255;
/// Longest snapshot label: the shortest dataset (`a`) and the `@` take two bytes.
pub const MAX_LABEL_LEN: usize = MAX_NAME_LEN - 2;
/// Longest qube name Qubes accepts.
pub const MAX_QUBE_NAME_LEN: usize = 31;

/// Why a name was refused. The text completes "… is not a valid <kind>: ", for an admin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    Empty,
    /// Longer than ZFS allows (`max` bytes).
    TooLong {
        len: usize,
        max: usize,
    },
    /// `dataset@label` or `dataset#label` together would be longer than ZFS allows.
    CombinedTooLong {
        len: usize,
    },
    /// A character outside `[A-Za-z0-9_.: -]` (control characters, NUL, `%`, `/` in a label…).
    BadChar {
        ch: char,
    },
    /// A doubled `/` (an empty component).
    EmptyComponent,
    LeadingOrTrailingSlash,
    /// A `.` or `..` component or label.
    DotComponent,
    /// The pool name (first component) must start with a letter.
    PoolStartsWith {
        ch: char,
    },
    /// A pool name ZFS reserves for vdev types.
    ReservedPoolName {
        pool: String,
    },
    /// `@` or `#` inside the dataset part.
    UnexpectedDelimiter {
        ch: char,
    },
    /// A snapshot name without exactly one `@`.
    NotASnapshot,
    /// A bookmark name without exactly one `#`.
    NotABookmark,
    /// A label written without its leading `@` where one is expected.
    MissingAt,
    EmptyLabel,
    /// A component or label starting with `-` could be read as an option.
    LeadingDash,
    /// A qube name must start with a letter.
    QubeStartsWith {
        ch: char,
    },
    /// A character outside `[A-Za-z0-9_.-]` in a qube name.
    BadQubeChar {
        ch: char,
    },
    QubeTooLong {
        len: usize,
    },
    /// A character outside `[a-z0-9._-]` (or `/` between components) in a blob name.
    BadBlobChar {
        ch: char,
    },
    /// A blob name component starting with `.` (hidden files, `.`/`..`, the agent's
    /// temporary files).
    BlobLeadingDot,
    /// A blob name with more than [`MAX_BLOB_COMPONENTS`] components.
    BlobTooDeep {
        components: usize,
    },
}

/// Shows a character safely, whatever it is: `'x'` for a visible ASCII character, `U+000A`
/// otherwise.
pub fn describe_char(c: char) -> String {
    if c.is_ascii_graphic() {
        format!("'{c}'")
    } else {
        format!("U+{:04X}", c as u32)
    }
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Empty => write!(f, "the name is empty"),
            NameError::TooLong { len, max } => {
                write!(f, "it is {len} bytes long; ZFS allows at most {max}")
            }
            NameError::CombinedTooLong { len } => write!(
                f,
                "with its dataset the full name would be {len} bytes long; ZFS allows at most {MAX_NAME_LEN}"
            ),
            NameError::BadChar { ch } => write!(
                f,
                "the character {} is not allowed (ZFS names use letters, digits, '_', '-', '.', ':' and space)",
                describe_char(*ch)
            ),
            NameError::EmptyComponent => {
                write!(f, "it has an empty component (a doubled '/')")
            }
            NameError::LeadingOrTrailingSlash => write!(f, "it starts or ends with '/'"),
            NameError::DotComponent => {
                write!(f, "a component or label cannot be '.' or '..'")
            }
            NameError::PoolStartsWith { ch } => write!(
                f,
                "the pool name must start with a letter, not {}",
                describe_char(*ch)
            ),
            NameError::ReservedPoolName { pool } => write!(
                f,
                "'{pool}' cannot be a pool name: ZFS reserves mirror, raidz*, draid*, spare and log"
            ),
            NameError::UnexpectedDelimiter { ch: '@' } => {
                write!(f, "it contains '@': that names a snapshot, not a dataset")
            }
            NameError::UnexpectedDelimiter { ch: '#' } => {
                write!(f, "it contains '#': that names a bookmark, not a dataset")
            }
            NameError::UnexpectedDelimiter { ch } => {
                write!(f, "it contains {}", describe_char(*ch))
            }
            NameError::NotASnapshot => {
                write!(f, "a snapshot name is 'dataset@label', with exactly one '@'")
            }
            NameError::NotABookmark => {
                write!(f, "a bookmark name is 'dataset#label', with exactly one '#'")
            }
            NameError::MissingAt => write!(
                f,
                "a snapshot label starts with '@' (for example \"@backup-1\")"
            ),
            NameError::EmptyLabel => write!(f, "the label after '@' is empty"),
            NameError::LeadingDash => write!(
                f,
                "a component or label cannot start with '-', which would be read as an option"
            ),
            NameError::QubeStartsWith { ch } => write!(
                f,
                "a qube name starts with a letter, not {}",
                describe_char(*ch)
            ),
            NameError::BadQubeChar { ch } => write!(
                f,
                "the character {} is not allowed in a qube name (letters, digits, '_', '.' and '-')",
                describe_char(*ch)
            ),
            NameError::QubeTooLong { len } => write!(
                f,
                "it is {len} characters long; Qubes allows at most {MAX_QUBE_NAME_LEN}"
            ),
            NameError::BadBlobChar { ch } => write!(
                f,
                "the character {} is not allowed in a blob name (lower-case letters, digits, '.', '_', '-', and '/' between components)",
                describe_char(*ch)
            ),
            NameError::BlobLeadingDot => {
                write!(f, "a blob name component cannot start with '.'")
            }
            NameError::BlobTooDeep { components } => write!(
                f,
                "it has {components} components; a blob name has at most {MAX_BLOB_COMPONENTS}"
            ),
        }
    }
}

impl std::error::Error for NameError {}

fn valid_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | ' ' | '-')
}

/// Checks one `/`-separated component of a dataset name, or a snapshot/bookmark label.
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

fn check_pool(pool: &str) -> Result<(), NameError> {
    match pool.chars().next() {
        Some(ch) if !ch.is_ascii_alphabetic() => return Err(NameError::PoolStartsWith { ch }),
        _ => {}
    }
    if matches!(pool, "mirror" | "spare" | "log")
        || pool.starts_with("raidz")
        || pool.starts_with("draid")
    {
        return Err(NameError::ReservedPoolName {
            pool: pool.to_owned(),
        });
    }
    Ok(())
}

/// Not empty (`empty` otherwise) and at most `max` bytes.
fn check_size(name: &str, empty: NameError, max: usize) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(empty);
    }
    if name.len() > max {
        return Err(NameError::TooLong {
            len: name.len(),
            max,
        });
    }
    Ok(())
}

fn check_dataset(name: &str) -> Result<(), NameError> {
    check_size(name, NameError::Empty, MAX_NAME_LEN)?;
    if name.starts_with('/') || name.ends_with('/') {
        return Err(NameError::LeadingOrTrailingSlash);
    }
    for component in name.split('/') {
        check_component(component)?;
    }
    check_pool(name.split('/').next().unwrap_or(name))
}

name_type!(
    /// A ZFS filesystem or volume name such as `mainpool/qubes/work/private`.
    DatasetName
);

impl DatasetName {
    pub fn parse(name: &str) -> Result<Self, NameError> {
        check_dataset(name)?;
        Ok(DatasetName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The pool this dataset lives in (its first component).
    pub fn pool(&self) -> &str {
        self.0.split('/').next().unwrap_or(&self.0)
    }

    /// The containing dataset, or `None` for a pool's root dataset.
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

    /// True if `self` is a proper descendant of `ancestor` (`a/b` is under `a`, `ab` is not,
    /// nor is `a` itself).
    pub fn is_strictly_under(&self, ancestor: impl AsRef<str>) -> bool {
        let ancestor = ancestor.as_ref();
        self.0.len() > ancestor.len()
            && self.0.starts_with(ancestor)
            && self.0.as_bytes()[ancestor.len()] == b'/'
    }

    /// Number of components (a pool's root dataset has depth 1).
    pub fn depth(&self) -> usize {
        self.0.split('/').count()
    }

    /// `self` placed under `root`: `root/self` (where the receiver stores a backed-up dataset).
    pub fn under(&self, root: &DatasetName) -> Result<DatasetName, NameError> {
        DatasetName::parse(&format!("{}/{}", root.0, self.0))
    }

    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
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
}

impl fmt::Display for DatasetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for DatasetName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

name_type!(
    /// The label of a snapshot or bookmark, the part after `@` or `#` (stored without it).
    /// Displayed with its `@`, the way the config writes it.
    SnapLabel
);

impl SnapLabel {
    /// Parses a bare label (no `@`).
    pub fn parse(label: &str) -> Result<Self, NameError> {
        check_size(label, NameError::EmptyLabel, MAX_LABEL_LEN)?;
        match check_component(label) {
            Err(NameError::UnexpectedDelimiter { ch: '@' }) => Err(NameError::NotASnapshot),
            Err(NameError::UnexpectedDelimiter { ch }) => Err(NameError::BadChar { ch }),
            Err(e) => Err(e),
            Ok(()) => Ok(SnapLabel(label.to_owned())),
        }
    }

    /// Parses a label written with its leading `@`, as the config file writes it.
    pub fn parse_with_at(s: &str) -> Result<Self, NameError> {
        match s.strip_prefix('@') {
            Some(label) => SnapLabel::parse(label),
            None => Err(NameError::MissingAt),
        }
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

fn check_combined(dataset: &DatasetName, label: &SnapLabel) -> Result<(), NameError> {
    let len = dataset.0.len() + 1 + label.0.len();
    if len > MAX_NAME_LEN {
        return Err(NameError::CombinedTooLong { len });
    }
    Ok(())
}

/// `dataset<SEP>label`: a snapshot (`@`) or a bookmark (`#`) of a dataset, at most 255 bytes
/// in all. One type for both, so they cannot drift apart.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(try_from = "String", into = "String")
)]
pub struct PointName<const SEP: char> {
    dataset: DatasetName,
    label: SnapLabel,
    full: String,
}

/// A snapshot name `dataset@label`.
pub type SnapshotName = PointName<'@'>;
/// A bookmark name `dataset#label`.
pub type BookmarkName = PointName<'#'>;

impl<const SEP: char> PointName<SEP> {
    /// `dataset@label` (or `#`), refused if the whole name would be longer than ZFS allows.
    pub fn new(dataset: DatasetName, label: SnapLabel) -> Result<Self, NameError> {
        check_combined(&dataset, &label)?;
        let full = format!("{}{SEP}{}", dataset.0, label.0);
        Ok(PointName {
            dataset,
            label,
            full,
        })
    }

    /// Parses `pool/ds@label` (or `pool/ds#label`).
    pub fn parse(name: &str) -> Result<Self, NameError> {
        let wrong_kind = if SEP == '@' {
            NameError::NotASnapshot
        } else {
            NameError::NotABookmark
        };
        check_size(name, NameError::Empty, MAX_NAME_LEN)?;
        let (dataset, label) = name.split_once(SEP).ok_or(wrong_kind.clone())?;
        let dataset = DatasetName::parse(dataset)?;
        let label = match SnapLabel::parse(label) {
            Err(NameError::BadChar { ch }) if ch == SEP => return Err(wrong_kind),
            other => other?,
        };
        PointName::new(dataset, label)
    }

    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The dataset part (before the separator).
    pub fn dataset(&self) -> &DatasetName {
        &self.dataset
    }

    /// The part after the separator.
    pub fn label(&self) -> &SnapLabel {
        &self.label
    }

    /// True if the dataset is strictly under `root`.
    pub fn is_strictly_under(&self, root: impl AsRef<str>) -> bool {
        self.dataset.is_strictly_under(root)
    }
}

impl<const SEP: char> fmt::Display for PointName<SEP> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl<const SEP: char> TryFrom<String> for PointName<SEP> {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        PointName::parse(&s)
    }
}

impl<const SEP: char> From<PointName<SEP>> for String {
    fn from(n: PointName<SEP>) -> String {
        n.full
    }
}

name_type!(
    /// A qube name, by Qubes' own rule: a letter, then letters, digits, `_`, `.` or `-`; at most 31
    /// characters.
    QubeName
);

impl QubeName {
    pub fn parse(name: &str) -> Result<Self, NameError> {
        let mut chars = name.chars();
        match chars.next() {
            None => return Err(NameError::Empty),
            Some(ch) if !ch.is_ascii_alphabetic() => return Err(NameError::QubeStartsWith { ch }),
            _ => {}
        }
        if let Some(ch) =
            chars.find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
        {
            return Err(NameError::BadQubeChar { ch });
        }
        if name.len() > MAX_QUBE_NAME_LEN {
            return Err(NameError::QubeTooLong { len: name.len() });
        }
        Ok(QubeName(name.to_owned()))
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

/// Longest blob name, in bytes.
pub const MAX_BLOB_NAME_LEN: usize = 200;
/// Most `/`-separated components in a blob name.
pub const MAX_BLOB_COMPONENTS: usize = 8;

name_type!(
    /// The name of a blob the receiver agent stores for dom0 (a manifest, a set index…):
    /// `/`-separated components of `[a-z0-9._-]`, none empty or starting with `.`, at most
    /// [`MAX_BLOB_COMPONENTS`] components and [`MAX_BLOB_NAME_LEN`] bytes. It is a relative
    /// path below the agent's blob directory that can never leave it (no `..`, no absolute
    /// path) nor collide with the agent's own dot-files.
    BlobName
);

impl BlobName {
    pub fn parse(name: &str) -> Result<Self, NameError> {
        check_size(name, NameError::Empty, MAX_BLOB_NAME_LEN)?;
        if name.starts_with('/') || name.ends_with('/') {
            return Err(NameError::LeadingOrTrailingSlash);
        }
        let mut components = 0;
        for component in name.split('/') {
            components += 1;
            if component.is_empty() {
                return Err(NameError::EmptyComponent);
            }
            if component.starts_with('.') {
                return Err(NameError::BlobLeadingDot);
            }
            if let Some(ch) = component.chars().find(|c| {
                !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
            }) {
                return Err(NameError::BadBlobChar { ch });
            }
        }
        if components > MAX_BLOB_COMPONENTS {
            return Err(NameError::BlobTooDeep { components });
        }
        Ok(BlobName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// True if `self` lies below the directory `prefix` (`a/b` is under `a`; `ab` is not, nor
    /// is `a` itself).
    pub fn is_under(&self, prefix: &BlobName) -> bool {
        self.0.len() > prefix.0.len()
            && self.0.starts_with(&prefix.0)
            && self.0.as_bytes()[prefix.0.len()] == b'/'
    }
}

impl fmt::Display for BlobName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Compares dataset names component by component (`a/b` sorts before `a-b`), the order the
/// coverage report and the send order use.
pub fn cmp_components(a: &str, b: &str) -> std::cmp::Ordering {
    a.split('/').cmp(b.split('/'))
}

// String conversions: serde (the state files) goes through these, and the wire through the
// bincode impls below; both validate on the way in.
macro_rules! string_conversions {
    ($($ty:ident => $into:expr),* $(,)?) => {$(
        impl TryFrom<String> for $ty {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                $ty::parse(&s)
            }
        }
        impl From<$ty> for String {
            fn from(n: $ty) -> String {
                let into: fn($ty) -> String = $into;
                into(n)
            }
        }
    )*};
}

string_conversions!(
    DatasetName => |n| n.0,
    SnapLabel => |n| n.0,
    QubeName => |n| n.0,
    BlobName => |n| n.0,
);

// Names travel inside bincode messages as plain strings and are re-validated on decode, so a
// peer can never hand us an unchecked name.
macro_rules! bincode_as_string {
    ($($ty:ident: $what:literal),* $(,)?) => {$(
        impl bincode::Encode for $ty {
            fn encode<E: bincode::enc::Encoder>(
                &self,
                encoder: &mut E,
            ) -> Result<(), bincode::error::EncodeError> {
                let s: &str = self.as_str();
                s.encode(encoder)
            }
        }

        impl<Context> bincode::Decode<Context> for $ty {
            fn decode<D: bincode::de::Decoder<Context = Context>>(
                decoder: &mut D,
            ) -> Result<Self, bincode::error::DecodeError> {
                let raw = String::decode(decoder)?;
                $ty::parse(&raw).map_err(|e| {
                    bincode::error::DecodeError::OtherString(format!(
                        concat!("invalid ", $what, ": {}"),
                        e
                    ))
                })
            }
        }
        bincode::impl_borrow_decode!($ty);
    )*};
}

bincode_as_string!(
    DatasetName: "dataset name",
    SnapLabel: "snapshot label",
    SnapshotName: "snapshot name",
    BookmarkName: "bookmark name",
    QubeName: "qube name",
    BlobName: "blob name",
);

#[cfg(test)]
mod tests;
