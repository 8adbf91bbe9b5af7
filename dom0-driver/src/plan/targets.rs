//! The snapshots to send: each included dataset's target snapshot, with its incremental source
//! (`since`, a clone's origin, or the previous planned snapshot of the same dataset), primers for
//! `progressive`, origins pulled in as dependencies; and the names ZFS would refuse, reported at
//! `check`.

use super::designations::RoleOf;
use super::exclusions::ExclusionRules;
use super::{Planner, Reason};
use crate::config::diag::Diagnostic;
use crate::config::yaml::Pos;
use crate::config::Role;
use qzb_protocol::names::{cmp_components, DatasetName, SnapLabel, SnapshotName, MAX_NAME_LEN};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

/// `dataset@label` for a snapshot the inventory lists: ZFS has it, so its name is valid.
fn existing_snapshot(dataset: &DatasetName, label: &SnapLabel) -> SnapshotName {
    SnapshotName::new(dataset.clone(), label.clone())
        .expect("a snapshot listed by ZFS has a name within ZFS's limits")
}

impl Planner<'_> {
    pub(super) fn targets(&mut self, roles: &HashMap<String, RoleOf>, rules: &ExclusionRules) {
        let cfg = self.config;
        let zfs = &self.inv.zfs;
        let target_label = &cfg.target;
        let since = cfg.since.label();

        let mut included: Vec<&DatasetName> = zfs
            .datasets
            .values()
            .map(|d| &d.name)
            .filter(|d| roles[d.as_str()].role == Role::Include && rules.reason(d).is_none())
            .collect();
        included.sort_by(|a, b| cmp_components(a.as_str(), b.as_str()));

        // A target name ZFS would refuse is reported here, at `check`, not at `snapshot`.
        let mut name_errors: Vec<(&'static str, Pos, String)> = Vec::new();
        let mut work: VecDeque<SnapshotName> = VecDeque::new();
        for d in &included {
            match SnapshotName::new((*d).clone(), target_label.clone()) {
                Ok(s) => work.push_back(s),
                Err(e) => name_errors.push((
                    "scope.target-snapshot",
                    cfg.target_pos,
                    format!(
                        "the target snapshot of the included dataset {d} cannot be named {d}{target_label}: {e}; use a shorter label"
                    ),
                )),
            }
        }
        let creatable: HashSet<SnapshotName> = work.iter().cloned().collect();
        // Insertion-ordered map of planned snapshot → incremental source.
        let mut planned: Vec<(SnapshotName, Option<SnapshotName>, Reason)> = Vec::new();
        let mut index: HashMap<SnapshotName, usize> = HashMap::new();
        let mut processed: HashSet<SnapshotName> = HashSet::new();
        let mut full_for_since: BTreeSet<String> = BTreeSet::new();
        let mut stale_origins: Vec<String> = Vec::new();

        let mut put = |planned: &mut Vec<(SnapshotName, Option<SnapshotName>, Reason)>,
                       key: SnapshotName,
                       src: Option<SnapshotName>,
                       reason: Reason| {
            match index.get(&key) {
                Some(&i) => {
                    planned[i].1 = src;
                    if reason == Reason::Target {
                        planned[i].2 = reason;
                    }
                }
                None => {
                    index.insert(key.clone(), planned.len());
                    planned.push((key, src, reason));
                }
            }
        };

        while let Some(key) = work.pop_front() {
            if !processed.insert(key.clone()) {
                continue;
            }
            let ds = key.dataset().as_str();
            let snaps = zfs.snapshots_of(ds);
            let prefix: &[_] = match snaps.iter().position(|s| &s.label == key.label()) {
                Some(i) => &snaps[..=i],
                None => snaps,
            };
            let reason = if creatable.contains(&key) {
                Reason::Target
            } else {
                Reason::Dependency
            };
            let mut source = None;
            if let Some(s) = since {
                if prefix.iter().any(|x| &x.label == s) {
                    source = Some(existing_snapshot(key.dataset(), s));
                }
            }
            if source.is_none() && cfg.honour_origins {
                if let Some(origin) = zfs.dataset(ds).and_then(|d| d.origin.clone()) {
                    match self.usable_origin(&origin, roles, rules) {
                        Ok(()) => source = Some(origin),
                        Err(Some(why)) => stale_origins.push(format!("{ds}: {why}")),
                        Err(None) => {}
                    }
                }
            }
            let source_label_is_since = source.as_ref().is_some_and(|s| Some(s.label()) == since);
            put(&mut planned, key.clone(), source.clone(), reason);
            if source.is_none() {
                if since.is_some() {
                    full_for_since.insert(ds.to_owned());
                }
                if cfg.progressive {
                    if let Some(first) = prefix.first() {
                        let primer = existing_snapshot(key.dataset(), &first.label);
                        if primer != key {
                            put(&mut planned, primer.clone(), None, Reason::Primer);
                            processed.insert(primer);
                        }
                    }
                }
            }
            if let Some(src) = source {
                if !source_label_is_since {
                    // The origin must reach the receiver too; resolve it the same way.
                    work.push_back(src);
                }
            }
        }

        // Same-dataset chaining: each planned snapshot of a dataset follows the previous one.
        let mut by_dataset: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, (k, _, _)) in planned.iter().enumerate() {
            by_dataset
                .entry(k.dataset().as_str().to_owned())
                .or_default()
                .push(i);
        }
        for (ds, mut idxs) in by_dataset {
            let order = |label: &SnapLabel| {
                zfs.snapshots_of(&ds)
                    .iter()
                    .position(|s| &s.label == label)
                    .unwrap_or(usize::MAX)
            };
            idxs.sort_by_key(|&i| order(planned[i].0.label()));
            for w in idxs.windows(2) {
                let earlier = planned[w[0]].0.clone();
                planned[w[1]].1 = Some(earlier);
            }
        }

        if !full_for_since.is_empty() {
            let s = since.map(ToString::to_string).unwrap_or_default();
            let list: Vec<&str> = full_for_since.iter().map(String::as_str).collect();
            self.warn(
                "scope.since",
                None,
                format!(
                    "{} dataset(s) have no {s} snapshot, so they will be sent in full: {}",
                    list.len(),
                    list.join(", ")
                ),
            );
        }
        for w in stale_origins {
            self.warn("scope.honour-origins", None, w);
        }

        // Every planned snapshot must also have a valid name on the receiver.
        let root = &cfg.receiver_dataset;
        let too_long: Vec<&SnapshotName> = planned
            .iter()
            .map(|(snap, _, _)| snap)
            .filter(|snap| {
                snap.dataset()
                    .under(root)
                    .and_then(|d| SnapshotName::new(d, snap.label().clone()))
                    .is_err()
            })
            .collect();
        const SHOWN: usize = 5;
        for snap in too_long.iter().take(SHOWN) {
            let len = root.as_str().len() + 1 + snap.as_str().len();
            name_errors.push((
                "receiver.dataset",
                cfg.receiver_dataset_pos,
                format!(
                    "{snap} would be received as {root}/{snap}, which is {len} bytes long; ZFS allows at most {MAX_NAME_LEN}: use a shorter receiver dataset or target label"
                ),
            ));
        }
        if too_long.len() > SHOWN {
            name_errors.push((
                "receiver.dataset",
                cfg.receiver_dataset_pos,
                format!(
                    "and {} more snapshot(s) whose names on the receiver would be too long",
                    too_long.len() - SHOWN
                ),
            ));
        }
        if !name_errors.is_empty() {
            for (path, pos, msg) in name_errors {
                self.plan
                    .errors
                    .push(Diagnostic::error(path, Some(pos), msg));
            }
            return;
        }

        self.order_targets(planned);
    }

    /// Whether a clone's origin can be planned as its incremental source. `Err(Some(why))`
    /// is worth a warning; `Err(None)` is a silent no (a void origin, as backup.py does).
    fn usable_origin(
        &self,
        origin: &SnapshotName,
        roles: &HashMap<String, RoleOf>,
        rules: &ExclusionRules,
    ) -> Result<(), Option<String>> {
        let since = self.config.since.label();
        let od = origin.dataset().as_str();
        if Some(origin.label()) == since {
            return Ok(()); // assumed to be on the receiver from the previous backup
        }
        if roles.get(od).is_none_or(|r| r.role == Role::Void) {
            return Err(None);
        }
        if let Some(reason) = rules.reason(origin.dataset()) {
            return Err(Some(format!(
                "its origin {origin} is a {reason}, which is never backed up; it will be sent in full"
            )));
        }
        if let Some(s) = since {
            let snaps = self.inv.zfs.snapshots_of(od);
            let since_txg = snaps.iter().find(|x| &x.label == s).map(|x| x.createtxg);
            let origin_txg = snaps
                .iter()
                .find(|x| &x.label == origin.label())
                .map(|x| x.createtxg);
            if let (Some(st), Some(ot)) = (since_txg, origin_txg) {
                if ot < st {
                    return Err(Some(format!(
                        "its origin {origin} is older than {od}@{}, which the receiver already has from the previous backup; an older snapshot cannot be added after a newer one, so the clone will be sent in full",
                        s.as_str()
                    )));
                }
            }
        }
        Ok(())
    }
}
