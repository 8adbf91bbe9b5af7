//! Config members resolved into objects: the datasets each member covers (a dataset and its
//! descendants; a qube's storage roots and persistent volumes), with warnings for what a qube
//! cannot contribute.

use super::exclusions::ExclusionRules;
use super::{Object, Planner};
use crate::config::{Member, MemberName, Role};
use crate::system::inventory::Qube;
use qzb_protocol::names::DatasetName;
use std::collections::{BTreeMap, HashSet};

impl Planner<'_> {
    pub(super) fn build_objects(&mut self, rules: &ExclusionRules) {
        let members: Vec<_> = self.members().collect();
        for (role, group, m) in members {
            let (datasets, ignore) = match &m.name {
                MemberName::Dataset(d) => {
                    let mut v = vec![d.clone()];
                    v.extend(self.inv.zfs.descendants(d.as_str()).map(|x| x.name.clone()));
                    (v, Vec::new())
                }
                MemberName::Qube(q) => {
                    let qube = &self.inv.qubes.qubes[q.as_str()];
                    self.qube_datasets(qube, role, m, rules)
                }
            };
            self.plan.objects.push(Object {
                role,
                group: group.to_owned(),
                name: m.object_name(),
                member: m.clone(),
                datasets,
                ignore,
            });
        }
    }

    /// A qube's datasets: its storage roots (`<container>/<qube>`) and persistent volumes.
    fn qube_datasets(
        &mut self,
        qube: &Qube,
        role: Role,
        m: &Member,
        rules: &ExclusionRules,
    ) -> (Vec<DatasetName>, Vec<DatasetName>) {
        let zfs_pools: HashSet<&str> = self
            .inv
            .qubes
            .zfs_pools()
            .map(|p| p.name.as_str())
            .collect();
        let mut roots: Vec<(DatasetName, bool)> = Vec::new(); // (root, persistent)
        let mut volumes = Vec::new();
        let mut known_vids = HashSet::new();
        let mut elsewhere: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for v in &qube.volumes {
            if !zfs_pools.contains(v.pool.as_str()) {
                if v.is_persistent() {
                    elsewhere.entry(&v.pool).or_default().push(&v.name);
                }
                continue;
            }
            known_vids.insert(v.vid.clone());
            let Ok(vid) = DatasetName::parse(&v.vid) else {
                self.warn(
                    &m.path,
                    Some(m.pos),
                    format!(
                        "qube '{}': volume '{}' has a vid that is not a dataset name ('{}'); it is skipped",
                        qube.name, v.name, crate::output::outside(&v.vid)
                    ),
                );
                continue;
            };
            let Some(root) = vid.parent() else { continue };
            let persistent = v.is_persistent();
            match roots.iter_mut().find(|(r, _)| *r == root) {
                Some((_, p)) => *p |= persistent,
                None => roots.push((root.clone(), persistent)),
            }
            if persistent {
                if self.inv.zfs.dataset(vid.as_str()).is_some() {
                    volumes.push(vid);
                } else {
                    self.warn(&m.path, Some(m.pos), format!("qube '{}': volume '{}' ({vid}) does not exist in ZFS, so there is nothing of it to back up", qube.name, v.name));
                }
            }
        }
        for (pool, vols) in elsewhere {
            let driver = self
                .inv
                .qubes
                .pool(pool)
                .map(|p| p.driver.as_str())
                .unwrap_or("unknown");
            self.warn(&m.path, Some(m.pos), format!("qube '{}': volume(s) {} are in pool '{pool}' (driver {driver}), not a ZFS pool; they are not part of this backup", qube.name, vols.join(", ")));
        }
        let roots: Vec<(DatasetName, bool)> = roots
            .into_iter()
            .filter(|(r, _)| self.inv.zfs.dataset(r.as_str()).is_some())
            .collect();
        let ignore: Vec<DatasetName> = roots
            .iter()
            .filter(|(_, p)| !*p)
            .map(|(r, _)| r.clone())
            .collect();

        if role == Role::Void {
            // Void is a hard exclusion: the qube's whole storage subtree.
            let mut all: Vec<DatasetName> = Vec::new();
            for (r, _) in &roots {
                all.push(r.clone());
                all.extend(self.inv.zfs.descendants(r.as_str()).map(|d| d.name.clone()));
            }
            return (all, ignore);
        }

        let mut datasets: Vec<DatasetName> = roots
            .iter()
            .filter(|(_, p)| *p)
            .map(|(r, _)| r.clone())
            .collect();
        datasets.extend(volumes);
        if datasets.is_empty() && role == Role::Include {
            let why = if qube.class == "DispVM" {
                "it is a disposable: its volumes are discarded at shutdown".to_owned()
            } else if qube.class == "AdminVM" {
                "dom0's storage is not a qube volume; list its datasets in a group of type 'datasets'".to_owned()
            } else {
                "it has no persistent volume in a ZFS pool".to_owned()
            };
            self.warn(
                &m.path,
                Some(m.pos),
                format!(
                    "qube '{}' contributes nothing to the backup: {why}",
                    qube.name
                ),
            );
        }
        // Datasets inside the qube's storage that are not its volumes are not part of it.
        for (r, _) in &roots {
            let strays: Vec<String> = self
                .inv
                .zfs
                .descendants(r.as_str())
                .filter(|d| {
                    !known_vids.contains(d.name.as_str()) && rules.reason(&d.name).is_none()
                })
                .map(|d| d.name.to_string())
                .collect();
            for s in strays {
                self.warn(&m.path, Some(m.pos), format!("{s} does not belong to qube '{}' (it is not one of its volumes), and won't be included", qube.name));
            }
        }
        (datasets, ignore)
    }
}
