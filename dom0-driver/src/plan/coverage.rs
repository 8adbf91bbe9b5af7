//! The `check` report's coverage: every dataset sorted into included, forgone, voided,
//! unreferenced, or one of the ignored/not-shown counts.

use super::designations::{DesignationGraph, RoleOf};
use super::exclusions::ExclusionRules;
use super::{Coverage, Planner};
use crate::config::Role;
use qzb_protocol::names::{cmp_components, DatasetName};
use std::collections::{HashMap, HashSet};

impl Planner<'_> {
    /// The `check` report's sorting of every dataset (reference §4.9).
    pub(super) fn coverage(
        &mut self,
        graph: &DesignationGraph,
        roles: &HashMap<String, RoleOf>,
        rules: &ExclusionRules,
    ) {
        let ignored: HashSet<&str> = self
            .plan
            .objects
            .iter()
            .flat_map(|o| o.ignore.iter().map(DatasetName::as_str))
            .collect();
        let mut names: Vec<&DatasetName> =
            self.inv.zfs.datasets.values().map(|d| &d.name).collect();
        names.sort_by(|a, b| cmp_components(a.as_str(), b.as_str()));
        let mut c = Coverage::default();
        for ds in names {
            let r = roles[ds.as_str()];
            if r.nearest == Some(Role::Include) && rules.reason(ds).is_some() {
                c.excluded_inside_included += 1;
            }
            if let Some(&obj) = graph.at.get(ds.as_str()) {
                match self.plan.objects[obj].role {
                    Role::Include => c.included.push(ds.clone()),
                    Role::Forgo => c.forgone.push(ds.clone()),
                    Role::Void => c.voided.push(ds.clone()),
                }
            } else if rules.ignored_in_report(ds) || ignored.contains(ds.as_str()) {
                c.auto_ignored += 1;
            } else if r.has_designated_ancestor {
                c.not_shown += 1;
            } else if !graph.has_below.contains(ds.as_str())
                && ds
                    .parent()
                    .is_none_or(|p| graph.has_below.contains(p.as_str()))
            {
                c.unreferenced.push(ds.clone());
            } else {
                c.implicitly_ignored += 1;
            }
        }
        self.plan.coverage = c;
    }
}
