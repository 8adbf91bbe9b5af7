//! The backup config file (seed README, "Backup Config File Format"), checked strictly.
//!
//! Every problem is collected and reported in one run, each with its line, column and key path.
//! Unknown keys are errors (a typo must never be silently ignored); booleans accept the YAML 1.1
//! words the seed's own example uses (`yes`/`no`).
//!
//! This file holds the config types and `parse`; the checking is in `checker` (the reading
//! primitives), `sections` (the top level and its fixed sections), `groups` (group lists and
//! definitions) and `retention` (the optional grid `prune` keeps).

mod checker;
pub mod diag;
pub mod name;

pub use name::BackupName;
pub use retention::{Grid, Retention};
pub mod file;
mod groups;
pub mod retention;
mod sections;
pub mod yaml;

use crate::config::diag::Diagnostic;
use crate::config::yaml::Pos;

use checker::Checker;
use qzb_protocol::names::{DatasetName, QubeName, SnapLabel};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Include,
    Forgo,
    Void,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Include => "include",
            Role::Forgo => "forgo",
            Role::Void => "void",
        }
    }

    fn list_key(self) -> &'static str {
        match self {
            Role::Include => "include-groups",
            Role::Forgo => "forgo-groups",
            Role::Void => "void-groups",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupKind {
    Qubes,
    Datasets,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Since {
    Beginning,
    Label(SnapLabel),
}

impl Since {
    pub fn label(&self) -> Option<&SnapLabel> {
        match self {
            Since::Beginning => None,
            Since::Label(l) => Some(l),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberName {
    Qube(QubeName),
    Dataset(DatasetName),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub name: MemberName,
    /// Key path of this member, e.g. `core-qubes.members[2]`.
    pub path: String,
    pub pos: Pos,
}

impl Member {
    /// `qube:<name>` or `dataset:<name>`, the object name the reports use.
    pub fn object_name(&self) -> String {
        match &self.name {
            MemberName::Qube(q) => format!("qube:{q}"),
            MemberName::Dataset(d) => format!("dataset:{d}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub role: Role,
    pub kind: GroupKind,
    pub members: Vec<Member>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub name: BackupName,
    pub target: SnapLabel,
    /// Where `scope.target-snapshot` is, for problems found when planning.
    pub target_pos: Pos,
    pub since: Since,
    pub progressive: bool,
    pub honour_origins: bool,
    pub snapshot_creation: bool,
    pub patching: bool,
    pub receiver_qube: QubeName,
    pub receiver_qube_pos: Pos,
    pub receiver_dataset: DatasetName,
    /// Where `receiver.dataset` is, for problems found when planning.
    pub receiver_dataset_pos: Pos,
    /// Referenced groups, include then forgo then void, each in list order.
    pub groups: Vec<Group>,
    /// The optional `retention` section; None: `prune` keeps everything (and says so).
    pub retention: Option<Retention>,
}

/// Parses and checks a config. On success returns it with any warnings; otherwise every error.
pub fn parse(text: &str) -> Result<(Config, Vec<Diagnostic>), Vec<Diagnostic>> {
    let root = match yaml::parse(text) {
        Ok(root) => root,
        Err(e) => {
            let pos = (e.pos.line > 0).then_some(e.pos);
            return Err(vec![Diagnostic::error(
                "",
                pos,
                format!("YAML syntax error: {}", e.message),
            )]);
        }
    };
    let mut ck = Checker::default();
    let config = ck.config(&root);
    if ck.errors.is_empty() {
        let config = config.expect("a config is built whenever no error was recorded");
        Ok((config, ck.warnings))
    } else {
        ck.errors.sort_by_key(|d| (d.line, d.column));
        Err(ck.errors)
    }
}

#[cfg(test)]
mod tests;

/// Fixtures other modules' tests share.
#[cfg(test)]
pub mod tests_support {
    pub use super::tests::SEED_EXAMPLE;
}
