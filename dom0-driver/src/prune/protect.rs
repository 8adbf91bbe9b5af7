//! What the imported backups still need of dom0's snapshots: `prune`'s protected set, from every
//! backup's state (not only the one pruned: another backup may send the same snapshots to
//! another medium) and from the clones on the system.

use super::{Protected, Protection};
use crate::state::{SendState, TargetState};
use crate::system::snapshot_details::SnapshotDetails;
use qzb_protocol::names::SnapshotName;
use std::collections::{BTreeMap, HashMap};

/// One imported backup, as far as its needs go.
pub struct BackupRecord<'a> {
    pub name: &'a str,
    /// The medium it sends to, `QUBE:DATASET` (its receiver).
    pub medium: String,
    pub targets: &'a [TargetState],
}

/// The protected snapshots:
/// - per medium and dataset, the newest snapshot (by createtxg, among those that still exist)
///   a backup sending to that medium has sent: the base of the next incremental;
/// - every target not sent yet, and its incremental source;
/// - every interrupted target, its incremental source and, for a `-I` transfer, every snapshot
///   between the two (the resume token may name any of them);
/// - the origin of every clone (`(clone, origin)` pairs).
pub fn protected(
    backups: &[BackupRecord<'_>],
    snapshots: &[SnapshotDetails],
    clones: &[(String, SnapshotName)],
) -> Protected {
    let by_name: HashMap<&SnapshotName, &SnapshotDetails> =
        snapshots.iter().map(|s| (&s.name, s)).collect();
    let mut out = Protected::new();
    // (medium, dataset) → (createtxg, snapshot, backup) of the newest sent.
    let mut newest: BTreeMap<(&str, &str), (u64, &SnapshotName, &str)> = BTreeMap::new();
    for b in backups {
        for t in b.targets {
            let target = &t.target.snapshot;
            let source = t.target.incremental_source.as_ref();
            let interrupted = match t.send_state {
                SendState::Done => {
                    if let Some(s) = by_name.get(target) {
                        let key = (b.medium.as_str(), target.dataset().as_str());
                        let better = newest.get(&key).is_none_or(|(txg, ..)| s.createtxg > *txg);
                        if better {
                            newest.insert(key, (s.createtxg, target, b.name));
                        }
                    }
                    continue;
                }
                SendState::Pending => false,
                SendState::Partial => true,
            };
            let backup = b.name.to_owned();
            let why = if interrupted {
                Protection::Interrupted {
                    backup: backup.clone(),
                }
            } else {
                Protection::Unsent {
                    backup: backup.clone(),
                }
            };
            add(&mut out, target, why);
            let Some(source) = source else { continue };
            add(
                &mut out,
                source,
                Protection::SourceOf {
                    target: target.clone(),
                    backup: backup.clone(),
                    interrupted,
                },
            );
            if interrupted && t.target.progressive && source.dataset() == target.dataset() {
                let (Some(from), Some(to)) = (by_name.get(source), by_name.get(target)) else {
                    continue;
                };
                for s in snapshots.iter().filter(|s| {
                    s.name.dataset() == target.dataset()
                        && s.createtxg > from.createtxg
                        && s.createtxg < to.createtxg
                }) {
                    add(
                        &mut out,
                        &s.name,
                        Protection::InsideInterrupted {
                            target: target.clone(),
                            backup: backup.clone(),
                        },
                    );
                }
            }
        }
    }
    for ((medium, _), (_, snapshot, backup)) in newest {
        add(
            &mut out,
            snapshot,
            Protection::NewestOnMedium {
                medium: medium.to_owned(),
                backup: backup.to_owned(),
            },
        );
    }
    for (clone, origin) in clones {
        add(
            &mut out,
            origin,
            Protection::CloneOrigin {
                clone: clone.clone(),
            },
        );
    }
    out
}

/// Adds a protection, once.
fn add(out: &mut Protected, name: &SnapshotName, p: Protection) {
    let list = out.entry(name.clone()).or_default();
    if !list.contains(&p) {
        list.push(p);
    }
}
