//! The planner: (config, inventory) → objects → designations → backup targets, in send order.
//!
//! Pure: no I/O. It follows backup.py's rules (reference §4–§5) and fixes its listed bugs where
//! the intent is clear; each fix is pinned by a test named after it:
//! - designation collisions are reported as errors, never a crash;
//! - hidden datasets, disposables and transient volumes are really excluded from targets, even
//!   inside an included dataset, not only from the report;
//! - a void qube voids its whole storage subtree;
//! - a clone origin older than `since` on a dataset that has `since` is not used (it could never
//!   be received there), so the clone is sent in full, with a warning;
//! - dependency cycles are found here, at `check`, not at send time;
//! - everything is ordered deterministically.
//!
//! This file holds the plan's types and `plan`, which runs the phases in order, each in its own
//! file: `existence` (everything named exists), `exclusions` (what is never backed up),
//! `objects` (members resolved to datasets), `designations` (designations and every dataset's
//! role), `coverage` (the `check` report), `targets` (the snapshots to send and their sources),
//! `ordering` (dependencies and send order). `send_args` is the `zfs send` argv of a target.

pub mod continuity;
mod coverage;
mod designations;
mod exclusions;
mod existence;
mod objects;
mod ordering;
pub mod send_args;
mod targets;

use crate::config::diag::Diagnostic;
use crate::config::yaml::Pos;
use crate::config::{Config, Member, Role};
use crate::system::inventory::{DatasetKind, Inventory};
use exclusions::ExclusionRules;
use qzb_protocol::names::{DatasetName, SnapshotName};
use serde::{Deserialize, Serialize};

/// A config member resolved against the system.
#[derive(Clone, Debug)]
pub struct Object {
    pub role: Role,
    pub group: String,
    pub name: String,
    pub member: Member,
    /// Every dataset this object covers.
    pub datasets: Vec<DatasetName>,
    /// Datasets that belong to the object but are never backed up (a disposable's storage).
    pub ignore: Vec<DatasetName>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Designation {
    pub dataset: DatasetName,
    #[serde(rename = "type")]
    pub role: Role,
    pub object: String,
}

/// Why a snapshot is in the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// The target snapshot of an included dataset.
    Target,
    /// The oldest snapshot of a dataset, sent in full so `progressive` can follow it.
    Primer,
    /// Needed on the receiver as the origin of a clone (honour-origins), or as a step of a chain.
    Dependency,
}

/// One snapshot to send.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub snapshot: SnapshotName,
    pub kind: DatasetKind,
    /// Send incrementally from this snapshot (`-i`/`-I`); None for a full send.
    pub incremental_source: Option<SnapshotName>,
    /// `-I`: include the intermediate snapshots.
    pub progressive: bool,
    /// The source is on another dataset: this is a clone, received with `-o origin=`.
    pub clone_origin: bool,
    pub reason: Reason,
    /// Whether the snapshot existed when planned, with its guid then.
    pub guid: Option<u64>,
    /// The include object this target belongs to (for reports), if any.
    pub object: Option<String>,
    /// Indices (in the plan's target list) of targets that must be on the receiver first.
    pub depends_on: Vec<usize>,
}

impl Target {
    /// How it is sent, in a few words: `full`, `-I from @b1`, `-i from @b1`, `clone of ...`.
    pub fn describe(&self) -> String {
        match (
            &self.incremental_source,
            self.clone_origin,
            self.progressive,
        ) {
            (None, _, _) => "full".into(),
            (Some(src), true, _) => format!("clone of {src}"),
            (Some(src), false, true) => format!("-I from @{}", src.label().as_str()),
            (Some(src), false, false) => format!("-i from @{}", src.label().as_str()),
        }
    }

    /// The target snapshot label is created by `snapshot` when missing; others must exist.
    pub fn is_creatable(&self) -> bool {
        self.reason == Reason::Target
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Coverage {
    pub included: Vec<DatasetName>,
    pub forgone: Vec<DatasetName>,
    pub voided: Vec<DatasetName>,
    /// Tops of subtrees no group mentions: the user should decide about them.
    pub unreferenced: Vec<DatasetName>,
    pub auto_ignored: usize,
    pub implicitly_ignored: usize,
    pub not_shown: usize,
    /// Datasets inside included designations that built-in rules keep out of the backup
    /// (transient volumes, hidden datasets, disposables).
    pub excluded_inside_included: usize,
}

#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub objects: Vec<Object>,
    pub designations: Vec<Designation>,
    pub coverage: Coverage,
    /// In send order: every target comes after the targets it depends on.
    pub targets: Vec<Target>,
    pub warnings: Vec<Diagnostic>,
    pub errors: Vec<Diagnostic>,
}

impl Plan {
    pub fn is_valid(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Builds the plan. Problems end up in `plan.errors`; targets are only computed without errors.
pub fn plan(config: &Config, inv: &Inventory) -> Plan {
    let mut p = Planner {
        config,
        inv,
        plan: Plan::default(),
    };
    p.check_existence();
    if !p.plan.errors.is_empty() {
        return p.plan;
    }
    let rules = ExclusionRules::new(inv);
    p.build_objects(&rules);
    let graph = p.register_designations();
    if !p.plan.errors.is_empty() {
        return p.plan;
    }
    let roles = p.roles(&graph);
    p.coverage(&graph, &roles, &rules);
    p.targets(&roles, &rules);
    p.plan
}

struct Planner<'a> {
    config: &'a Config,
    inv: &'a Inventory,
    plan: Plan,
}

impl<'a> Planner<'a> {
    fn error(&mut self, member: Option<&Member>, message: String) {
        let (path, pos) = member
            .map(|m| (m.path.clone(), Some(m.pos)))
            .unwrap_or_default();
        self.plan.errors.push(Diagnostic::error(path, pos, message));
    }

    fn warn(&mut self, path: &str, pos: Option<Pos>, message: String) {
        self.plan
            .warnings
            .push(Diagnostic::warning(path, pos, message));
    }

    fn members(&self) -> impl Iterator<Item = (Role, &'a str, &'a Member)> + 'a {
        self.config
            .groups
            .iter()
            .flat_map(|g| g.members.iter().map(move |m| (g.role, g.name.as_str(), m)))
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod names_agree;
