//! Designations: each object's topmost datasets, refused when two objects designate the same
//! dataset or an include/forgo designation is nested in another; then the role of every dataset
//! on the system.

use super::{Designation, Planner};
use crate::config::Role;
use qzb_protocol::names::{cmp_components, DatasetName};
use std::collections::{HashMap, HashSet};

/// Which objects designate which datasets.
pub(super) struct DesignationGraph {
    /// dataset → object index designating it (collisions were refused).
    pub(super) at: HashMap<String, usize>,
    /// datasets that have a designation somewhere strictly below them.
    pub(super) has_below: HashSet<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct RoleOf {
    pub(super) role: Role,
    pub(super) object: Option<usize>,
    pub(super) has_designated_ancestor: bool,
    /// Role of the nearest designation at or above the dataset, whether or not it covers it.
    pub(super) nearest: Option<Role>,
}

impl Planner<'_> {
    pub(super) fn register_designations(&mut self) -> DesignationGraph {
        let mut graph = DesignationGraph {
            at: HashMap::new(),
            has_below: HashSet::new(),
        };
        let mut collisions = Vec::new();
        for (i, obj) in self.plan.objects.iter().enumerate() {
            let set: HashSet<&str> = obj.datasets.iter().map(DatasetName::as_str).collect();
            // Designations are the object's topmost datasets.
            for d in obj
                .datasets
                .iter()
                .filter(|d| !d.ancestors().any(|a| set.contains(a)))
            {
                if let Some(&other) = graph.at.get(d.as_str()) {
                    let o = &self.plan.objects[other];
                    let msg = if o.name == obj.name {
                        format!(
                            "{} is listed more than once (groups '{}' and '{}')",
                            obj.name, o.group, obj.group
                        )
                    } else {
                        format!(
                            "{} and {} both designate {d}; each dataset may be designated once",
                            o.name, obj.name
                        )
                    };
                    collisions.push((i, msg));
                    continue;
                }
                graph.at.insert(d.as_str().to_owned(), i);
                for a in d.ancestors() {
                    graph.has_below.insert(a.to_owned());
                }
                self.plan.designations.push(Designation {
                    dataset: d.clone(),
                    role: obj.role,
                    object: obj.name.clone(),
                });
            }
        }
        // Include and forgo designations may not sit inside another designation.
        for d in &self.plan.designations {
            if d.role == Role::Void {
                continue;
            }
            if let Some((anc, &j)) = d
                .dataset
                .ancestors()
                .find_map(|a| graph.at.get_key_value(a))
            {
                let outer = &self.plan.objects[j];
                let inner = self
                    .plan
                    .objects
                    .iter()
                    .position(|o| o.name == d.object)
                    .unwrap_or(0);
                collisions.push((inner, format!(
                    "{} ({}) is nested in {anc}, which {} designates ({}); only void designations may be nested",
                    d.object, d.role.as_str(), outer.name, outer.role.as_str()
                )));
            }
        }
        for (i, msg) in collisions {
            let m = self.plan.objects[i].member.clone();
            self.error(Some(&m), msg);
        }
        self.plan
            .designations
            .sort_by(|a, b| cmp_components(a.dataset.as_str(), b.dataset.as_str()));
        graph
    }

    /// The role of every dataset on the system (reference §4.8).
    pub(super) fn roles(&self, graph: &DesignationGraph) -> HashMap<String, RoleOf> {
        let covers: Vec<HashSet<&str>> = self
            .plan
            .objects
            .iter()
            .map(|o| o.datasets.iter().map(DatasetName::as_str).collect())
            .collect();
        let mut roles = HashMap::with_capacity(self.inv.zfs.datasets.len());
        for (name, d) in &self.inv.zfs.datasets {
            let mut result = RoleOf {
                role: Role::Forgo,
                object: None,
                has_designated_ancestor: false,
                nearest: None,
            };
            for (depth, node) in std::iter::once(name.as_str())
                .chain(d.name.ancestors())
                .enumerate()
            {
                if let Some(&obj) = graph.at.get(node) {
                    result.nearest.get_or_insert(self.plan.objects[obj].role);
                    if depth > 0 {
                        result.has_designated_ancestor = true;
                    }
                    if covers[obj].contains(name.as_str()) {
                        result.role = self.plan.objects[obj].role;
                        result.object = Some(obj);
                        break;
                    }
                }
            }
            roles.insert(name.clone(), result);
        }
        roles
    }
}
