//! Send order: the target records, their dependencies (incremental source, nearest planned
//! ancestor), and a deterministic topological order; a dependency cycle is an error.

use super::{Planner, Reason, Target};
use crate::config::diag::Diagnostic;
use crate::config::Role;
use crate::system::inventory::DatasetKind;
use qzb_protocol::names::SnapshotName;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// Send order among ready targets: include object, dataset path by component, createtxg, and the
/// planning position as the final tie-break.
type SortKey = (usize, Vec<String>, u64, usize);

impl Planner<'_> {
    /// Builds the target records, their dependencies, and a send order that respects them:
    /// config object order, then parents before children, then oldest snapshot first.
    pub(super) fn order_targets(
        &mut self,
        planned: Vec<(SnapshotName, Option<SnapshotName>, Reason)>,
    ) {
        let zfs = &self.inv.zfs;
        let max_txg = zfs
            .snapshots
            .values()
            .flat_map(|v| v.iter().map(|s| s.createtxg))
            .max()
            .unwrap_or(0);
        let objects = &self.plan.objects;
        let first_include_object = |ds: &str| -> Option<usize> {
            objects.iter().position(|o| {
                o.role == Role::Include && o.datasets.iter().any(|d| d.as_str() == ds)
            })
        };
        let mut targets = Vec::with_capacity(planned.len());
        let mut keys = Vec::with_capacity(planned.len());
        let mut pos_of: HashMap<SnapshotName, usize> = HashMap::new();
        for (i, (snap, source, reason)) in planned.into_iter().enumerate() {
            let ds = snap.dataset().as_str();
            let existing = zfs.snapshot(&snap);
            let obj = first_include_object(ds);
            // Snapshots no include object owns (a forgone origin) go after everything else that
            // is ready, which in practice is just before the clone that needs them.
            let sort_obj = obj.unwrap_or(objects.len() + 1);
            let txg = existing.map(|s| s.createtxg).unwrap_or(max_txg + 1);
            keys.push((sort_obj, snap.dataset().clone(), txg));
            pos_of.insert(snap.clone(), i);
            let clone_origin = source
                .as_ref()
                .is_some_and(|s| s.dataset() != snap.dataset());
            targets.push(Target {
                kind: zfs
                    .dataset(ds)
                    .map(|d| d.kind)
                    .unwrap_or(DatasetKind::Filesystem),
                progressive: self.config.progressive && source.is_some(),
                clone_origin,
                guid: existing.map(|s| s.guid),
                object: obj.map(|o| objects[o].name.clone()),
                snapshot: snap,
                incremental_source: source,
                reason,
                depends_on: Vec::new(),
            });
        }

        // Dependencies: the incremental source, if planned; and the nearest ancestor dataset's
        // first planned snapshot, so a parent is never replaced by a placeholder.
        let mut first_of_dataset: HashMap<&str, usize> = HashMap::new();
        for (i, t) in targets.iter().enumerate() {
            let e = first_of_dataset
                .entry(t.snapshot.dataset().as_str())
                .or_insert(i);
            if keys[i].2 < keys[*e].2 {
                *e = i;
            }
        }
        let mut deps: Vec<Vec<usize>> = vec![Vec::new(); targets.len()];
        for (i, t) in targets.iter().enumerate() {
            if let Some(&j) = t.incremental_source.as_ref().and_then(|s| pos_of.get(s)) {
                deps[i].push(j);
            }
            if let Some(&j) = t
                .snapshot
                .dataset()
                .ancestors()
                .find_map(|a| first_of_dataset.get(a))
            {
                if !deps[i].contains(&j) {
                    deps[i].push(j);
                }
            }
        }

        // Kahn's algorithm, always taking the smallest sort key among the ready targets.
        let n = targets.len();
        let mut indegree = vec![0usize; n];
        let mut users: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, d) in deps.iter().enumerate() {
            indegree[i] = d.len();
            for &j in d {
                users[j].push(i);
            }
        }
        let sort_key = |i: usize| {
            let (o, ds, txg) = &keys[i];
            (
                *o,
                ds.components().map(str::to_owned).collect::<Vec<_>>(),
                *txg,
                i,
            )
        };
        let mut ready: BinaryHeap<Reverse<SortKey>> = (0..n)
            .filter(|&i| indegree[i] == 0)
            .map(|i| Reverse(sort_key(i)))
            .collect();
        let mut order = Vec::with_capacity(n);
        while let Some(Reverse((_, _, _, i))) = ready.pop() {
            order.push(i);
            for &u in &users[i] {
                indegree[u] -= 1;
                if indegree[u] == 0 {
                    ready.push(Reverse(sort_key(u)));
                }
            }
        }
        if order.len() < n {
            let stuck: Vec<String> = (0..n)
                .filter(|&i| indegree[i] > 0)
                .map(|i| targets[i].snapshot.to_string())
                .collect();
            self.plan.errors.push(Diagnostic::error("scope.honour-origins", None, format!(
                "these snapshots depend on each other in a cycle (a dataset is a clone of a snapshot of its own descendant), so no send order exists: {}. Set honour-origins to no, or void one of the datasets.",
                stuck.join(", ")
            )));
            return;
        }
        let mut new_pos = vec![0usize; n];
        for (new, &old) in order.iter().enumerate() {
            new_pos[old] = new;
        }
        let mut slots: Vec<Option<Target>> = targets.into_iter().map(Some).collect();
        self.plan.targets = order
            .iter()
            .map(|&old| {
                let mut t = slots[old].take().expect("each target is placed once");
                t.depends_on = deps[old].iter().map(|&j| new_pos[j]).collect();
                t.depends_on.sort_unstable();
                t
            })
            .collect();
    }
}
