//! Retention: which of a backup's own snapshots in dom0 `prune` destroys, and why every other
//! one stays. Pure: the snapshots, the grid and the protected snapshots in, a decision with a
//! reason for each snapshot out.
//!
//! The rules, in the order they are checked:
//! 1. Qubes' own revision snapshots (`@qubes:…`, `@qubes-clean-…`) are never touched.
//! 2. Only snapshots this backup made are candidates: those whose own `qubes-zfs-backup:created`
//!    property names it (`snapshot` sets it when it creates them). Snapshots made by hand, by
//!    other tools, before this version, or by another backup stay.
//! 3. A protected snapshot stays ([`protect`]: the newest snapshot each medium holds of a
//!    dataset, a target not sent yet or interrupted and its incremental source, a clone's
//!    origin).
//! 4. The newest snapshot the backup made of each dataset stays, whatever the grid says.
//! 5. The grid keeps, per dataset, the `last` newest candidates and the newest candidate of each
//!    of the `hourly`/`daily`/`weekly`/`monthly` newest periods that hold one (restic's and
//!    borg's way of counting; periods in UTC, [`calendar`]). One snapshot may fill slots of
//!    several rules.
//!
//! Everything else the backup made is destroyed.

pub mod calendar;
pub mod protect;

use crate::config::Grid;
use crate::system::snapshot_details::SnapshotDetails;
use calendar::Period;
use qzb_protocol::names::SnapshotName;
use std::collections::{BTreeMap, HashSet};

/// Why a snapshot must stay whatever the grid says.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protection {
    /// The newest snapshot of its dataset on a medium (`QUBE:DATASET`): the next incremental
    /// send to that medium starts from it.
    NewestOnMedium { medium: String, backup: String },
    /// A target of `backup` not sent yet: its next `send` sends it.
    Unsent { backup: String },
    /// A target of `backup` whose transfer was interrupted: the medium holds a partial receive
    /// that resumes from it.
    Interrupted { backup: String },
    /// The incremental source of `target`, a target of `backup` not sent yet or interrupted.
    SourceOf {
        target: SnapshotName,
        backup: String,
        interrupted: bool,
    },
    /// Between the source and the target of an interrupted `-I` transfer: its resume token may
    /// name it.
    InsideInterrupted {
        target: SnapshotName,
        backup: String,
    },
    /// The origin of a clone (ZFS would refuse to destroy it anyway).
    CloneOrigin { clone: String },
}

impl Protection {
    pub fn describe(&self) -> String {
        match self {
            Protection::NewestOnMedium { medium, backup } => format!(
                "the newest snapshot of its dataset on the medium {medium} (backup {backup}): the next incremental starts here"
            ),
            Protection::Unsent { backup } => {
                format!("a target of backup {backup} not sent yet")
            }
            Protection::Interrupted { backup } => format!(
                "a target of backup {backup} whose transfer was interrupted (resumable)"
            ),
            Protection::SourceOf {
                target,
                backup,
                interrupted,
            } => format!(
                "the incremental source of {target} (backup {backup}, {})",
                if *interrupted {
                    "interrupted, resumable"
                } else {
                    "not sent yet"
                }
            ),
            Protection::InsideInterrupted { target, backup } => format!(
                "inside the interrupted -I transfer to {target} (backup {backup})"
            ),
            Protection::CloneOrigin { clone } => format!("the origin of the clone {clone}"),
        }
    }

    /// A short word for JSON.
    pub fn kind(&self) -> &'static str {
        match self {
            Protection::NewestOnMedium { .. } => "newest-on-medium",
            Protection::Unsent { .. } => "unsent-target",
            Protection::Interrupted { .. } => "interrupted-target",
            Protection::SourceOf { .. } => "incremental-source",
            Protection::InsideInterrupted { .. } => "inside-interrupted",
            Protection::CloneOrigin { .. } => "clone-origin",
        }
    }
}

/// Every protected snapshot, with all its protections.
pub type Protected = BTreeMap<SnapshotName, Vec<Protection>>;

/// A slot of the grid a snapshot fills.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Slot {
    /// The `rank`-th newest (1-based) of the `last` kept.
    Last { rank: u32, of: u32 },
    /// The newest of `period`, the `rank`-th newest period (1-based) of the `of` kept.
    Newest {
        rule: Period,
        period: String,
        rank: u32,
        of: u32,
    },
}

impl Slot {
    pub fn describe(&self) -> String {
        match self {
            Slot::Last { rank, of } => format!("last {rank}/{of}"),
            Slot::Newest {
                rule,
                period,
                rank,
                of,
            } => format!("{} {period} ({rank}/{of})", rule.key()),
        }
    }
}

/// Why a snapshot stays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeepReason {
    /// Qubes' own revision snapshot.
    QubesRevision,
    /// No `qubes-zfs-backup:created` property of its own: not made by this tool.
    NotMadeByTool,
    /// Made by another backup; its own `prune` decides.
    MadeByOtherBackup(String),
    Protected(Protection),
    /// The newest snapshot this backup made of its dataset.
    NewestOfDataset,
    Grid(Slot),
}

impl KeepReason {
    pub fn describe(&self) -> String {
        match self {
            KeepReason::QubesRevision => "Qubes' own revision snapshot".into(),
            KeepReason::NotMadeByTool => format!(
                "not made by qubes-zfs-backup (no {} property of its own)",
                crate::system::snapshot_details::CREATED_PROPERTY
            ),
            // The mark is anyone's text: one line, bounded.
            KeepReason::MadeByOtherBackup(b) => format!(
                "made by the backup {} (its own prune decides)",
                crate::output::outside(b)
            ),
            KeepReason::Protected(p) => p.describe(),
            KeepReason::NewestOfDataset => {
                "the newest snapshot this backup made of its dataset".into()
            }
            KeepReason::Grid(slot) => slot.describe(),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            KeepReason::QubesRevision => "qubes-revision",
            KeepReason::NotMadeByTool => "not-made-by-tool",
            KeepReason::MadeByOtherBackup(_) => "other-backup",
            KeepReason::Protected(p) => p.kind(),
            KeepReason::NewestOfDataset => "newest-of-dataset",
            KeepReason::Grid(Slot::Last { .. }) => "last",
            KeepReason::Grid(Slot::Newest { rule, .. }) => rule.key(),
        }
    }

    /// Whether the snapshot is this backup's own (its grid and protections count).
    fn is_own(&self) -> bool {
        !matches!(
            self,
            KeepReason::QubesRevision
                | KeepReason::NotMadeByTool
                | KeepReason::MadeByOtherBackup(_)
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Made by this backup, outside the grid, needed by nothing.
    Destroy,
    /// At least one reason, the strongest first.
    Keep(Vec<KeepReason>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub snapshot: SnapshotDetails,
    pub verdict: Verdict,
}

impl Decision {
    pub fn destroys(&self) -> bool {
        self.verdict == Verdict::Destroy
    }

    /// Made by the backup being pruned (kept or not).
    pub fn is_own(&self) -> bool {
        match &self.verdict {
            Verdict::Destroy => true,
            Verdict::Keep(reasons) => reasons.iter().all(KeepReason::is_own),
        }
    }
}

/// The decisions for every snapshot of every dataset the backup made a snapshot of, by dataset
/// name, oldest first. Datasets it never snapshotted are left out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub decisions: Vec<Decision>,
}

impl Plan {
    pub fn to_destroy(&self) -> impl Iterator<Item = &Decision> {
        self.decisions.iter().filter(|d| d.destroys())
    }

    /// The sum of each destroyed snapshot's own `used`: what destroying them frees at least
    /// (destroying neighbours together also frees the blocks only they share).
    pub fn frees_at_least(&self) -> u64 {
        self.to_destroy()
            .map(|d| d.snapshot.used)
            .fold(0, u64::saturating_add)
    }
}

/// A Qubes revision snapshot: `@qubes:…` (the ZFS driver's revisions) or `@qubes-clean-…`.
pub fn is_qubes_revision(name: &SnapshotName) -> bool {
    let label = name.label().as_str();
    label.starts_with("qubes:") || label.starts_with("qubes-clean-")
}

/// Decides every snapshot of the datasets `backup` made snapshots of. `snapshots` may come in
/// any order; ZFS's order (createtxg) says which is newer.
pub fn plan(
    grid: &Grid,
    backup: &str,
    snapshots: &[SnapshotDetails],
    protected: &Protected,
) -> Plan {
    let mut by_dataset: BTreeMap<&str, Vec<&SnapshotDetails>> = BTreeMap::new();
    for s in snapshots {
        by_dataset
            .entry(s.name.dataset().as_str())
            .or_default()
            .push(s);
    }
    let mut plan = Plan::default();
    for mut snaps in by_dataset.into_values() {
        let own = |s: &SnapshotDetails| {
            s.made_by.as_deref() == Some(backup) && !is_qubes_revision(&s.name)
        };
        if !snaps.iter().any(|s| own(s)) {
            continue;
        }
        snaps.sort_by(|a, b| {
            a.createtxg
                .cmp(&b.createtxg)
                .then_with(|| a.name.label().cmp(b.name.label()))
        });
        // The backup's own snapshots of the dataset, newest first: the grid's candidates.
        let candidates: Vec<&SnapshotDetails> =
            snaps.iter().rev().copied().filter(|s| own(s)).collect();
        let slots = grid_slots(grid, &candidates);
        for s in snaps {
            let verdict = if is_qubes_revision(&s.name) {
                Verdict::Keep(vec![KeepReason::QubesRevision])
            } else {
                match s.made_by.as_deref() {
                    None => Verdict::Keep(vec![KeepReason::NotMadeByTool]),
                    Some(other) if other != backup => {
                        Verdict::Keep(vec![KeepReason::MadeByOtherBackup(other.to_owned())])
                    }
                    Some(_) => {
                        let mut reasons: Vec<KeepReason> = protected
                            .get(&s.name)
                            .into_iter()
                            .flatten()
                            .cloned()
                            .map(KeepReason::Protected)
                            .collect();
                        if candidates.first().map(|c| &c.name) == Some(&s.name) {
                            reasons.push(KeepReason::NewestOfDataset);
                        }
                        reasons.extend(
                            slots
                                .get(&s.name)
                                .into_iter()
                                .flatten()
                                .cloned()
                                .map(KeepReason::Grid),
                        );
                        if reasons.is_empty() {
                            Verdict::Destroy
                        } else {
                            Verdict::Keep(reasons)
                        }
                    }
                }
            };
            plan.decisions.push(Decision {
                snapshot: s.clone(),
                verdict,
            });
        }
    }
    plan
}

/// The grid's slots among `candidates` (newest first), by snapshot.
fn grid_slots(grid: &Grid, candidates: &[&SnapshotDetails]) -> BTreeMap<SnapshotName, Vec<Slot>> {
    let mut slots: BTreeMap<SnapshotName, Vec<Slot>> = BTreeMap::new();
    for (i, s) in candidates.iter().take(grid.last as usize).enumerate() {
        slots.entry(s.name.clone()).or_default().push(Slot::Last {
            rank: i as u32 + 1,
            of: grid.last,
        });
    }
    for rule in Period::ALL {
        let of = match rule {
            Period::Hour => grid.hourly,
            Period::Day => grid.daily,
            Period::Week => grid.weekly,
            Period::Month => grid.monthly,
        };
        let mut seen: HashSet<String> = HashSet::new();
        for s in candidates {
            if seen.len() as u32 >= of {
                break;
            }
            let period = rule.of(s.creation);
            // The first candidate met in a period is its newest (candidates come newest first).
            if seen.insert(period.clone()) {
                slots.entry(s.name.clone()).or_default().push(Slot::Newest {
                    rule,
                    period,
                    rank: seen.len() as u32,
                    of,
                });
            }
        }
    }
    slots
}

#[cfg(test)]
mod tests;
