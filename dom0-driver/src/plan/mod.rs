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

pub mod send_args;

use crate::config::diag::Diagnostic;
use crate::config::yaml::Pos;
use crate::config::{Config, Member, MemberName, Role};
use crate::system::inventory::{DatasetKind, Inventory, Qube};
use qzb_protocol::names::{cmp_components, DatasetName, SnapLabel, SnapshotName, MAX_NAME_LEN};
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};

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

/// `dataset@label` for a snapshot the inventory lists: ZFS has it, so its name is valid.
fn existing_snapshot(dataset: &DatasetName, label: &SnapLabel) -> SnapshotName {
    SnapshotName::new(dataset.clone(), label.clone())
        .expect("a snapshot listed by ZFS has a name within ZFS's limits")
}

/// Send order among ready targets: include object, dataset path by component, createtxg, and the
/// planning position as the final tie-break.
type SortKey = (usize, Vec<String>, u64, usize);

/// Qube classes a backup may be written into.
const RECEIVER_CLASSES: [&str; 3] = ["AppVM", "DispVM", "StandaloneVM"];

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

/// Built-in rules for datasets that are never backed up.
struct ExclusionRules {
    /// Dataset names of transient volumes (save_on_stop off, or ephemeral) of every qube.
    transient: HashSet<String>,
    /// Storage roots of disposables (`<container>/<dispvm>`), excluded with their subtree.
    disposable_roots: HashSet<String>,
    containers: Vec<String>,
}

impl ExclusionRules {
    fn new(inv: &Inventory) -> Self {
        let containers: Vec<String> = inv
            .qubes
            .zfs_pools()
            .filter_map(|p| p.container.as_ref().map(|c| c.as_str().to_owned()))
            .collect();
        let zfs_pools: HashSet<&str> = inv.qubes.zfs_pools().map(|p| p.name.as_str()).collect();
        let mut transient = HashSet::new();
        let mut disposable_roots = HashSet::new();
        for qube in inv.qubes.qubes.values() {
            for v in &qube.volumes {
                if zfs_pools.contains(v.pool.as_str()) && !v.is_persistent() {
                    transient.insert(v.vid.clone());
                }
            }
            if qube.class == "DispVM" {
                for c in &containers {
                    disposable_roots.insert(format!("{c}/{}", qube.name));
                }
            }
        }
        ExclusionRules {
            transient,
            disposable_roots,
            containers,
        }
    }

    /// Why `ds` is never backed up, if it is not.
    fn reason(&self, ds: &DatasetName) -> Option<&'static str> {
        if ds.components().any(|c| c.starts_with('.')) {
            return Some("hidden dataset");
        }
        if self.transient.contains(ds.as_str()) {
            return Some("transient volume");
        }
        let candidates = std::iter::once(ds.as_str()).chain(ds.ancestors());
        for d in candidates {
            if self.disposable_roots.contains(d) || self.is_disposable_pattern(d) {
                return Some("disposable qube");
            }
        }
        None
    }

    /// `<container>/dispNNNN`: storage of a disposable, even one no longer listed by Qubes.
    fn is_disposable_pattern(&self, ds: &str) -> bool {
        self.containers.iter().any(|c| {
            ds.strip_prefix(c.as_str())
                .and_then(|rest| rest.strip_prefix("/disp"))
                .is_some_and(|n| {
                    (1..=4).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_digit())
                })
        })
    }

    /// The report's "automatically ignored" flag (backup.py's rule plus disposables by class).
    fn ignored_in_report(&self, ds: &DatasetName) -> bool {
        ds.components().any(|c| c.starts_with('.'))
            || self.disposable_roots.contains(ds.as_str())
            || self.is_disposable_pattern(ds.as_str())
    }
}

/// Which objects designate which datasets.
struct DesignationGraph {
    /// dataset → object index designating it (collisions were refused).
    at: HashMap<String, usize>,
    /// datasets that have a designation somewhere strictly below them.
    has_below: HashSet<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RoleOf {
    role: Role,
    object: Option<usize>,
    has_designated_ancestor: bool,
    /// Role of the nearest designation at or above the dataset, whether or not it covers it.
    nearest: Option<Role>,
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

    /// Pass 2 of validation: everything named in the config exists on the system.
    fn check_existence(&mut self) {
        let qube = &self.config.receiver_qube;
        match self.inv.qubes.qubes.get(qube.as_str()) {
            None => self.plan.errors.push(Diagnostic::error(
                "receiver.qube",
                Some(self.config.receiver_qube_pos),
                format!("qube '{qube}' does not exist"),
            )),
            Some(q) if !RECEIVER_CLASSES.contains(&q.class.as_str()) => {
                self.plan.errors.push(Diagnostic::error(
                    "receiver.qube",
                    Some(self.config.receiver_qube_pos),
                    format!(
                    "qube '{qube}' is a {}; the backup must go to an AppVM, DispVM or StandaloneVM",
                    q.class
                ),
                ))
            }
            Some(_) => {}
        }
        let members: Vec<_> = self.members().collect();
        for (_, _, m) in members {
            let missing = match &m.name {
                MemberName::Qube(q) => (!self.inv.qubes.qubes.contains_key(q.as_str()))
                    .then(|| format!("qube '{q}' does not exist")),
                MemberName::Dataset(d) => self
                    .inv
                    .zfs
                    .dataset(d.as_str())
                    .is_none()
                    .then(|| format!("dataset '{d}' does not exist")),
            };
            if let Some(msg) = missing {
                self.error(Some(m), msg);
            }
        }
    }

    fn build_objects(&mut self, rules: &ExclusionRules) {
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

    fn register_designations(&mut self) -> DesignationGraph {
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
    fn roles(&self, graph: &DesignationGraph) -> HashMap<String, RoleOf> {
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

    /// The `check` report's sorting of every dataset (reference §4.9).
    fn coverage(
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

    fn targets(&mut self, roles: &HashMap<String, RoleOf>, rules: &ExclusionRules) {
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

    /// Builds the target records, their dependencies, and a send order that respects them:
    /// config object order, then parents before children, then oldest snapshot first.
    fn order_targets(&mut self, planned: Vec<(SnapshotName, Option<SnapshotName>, Reason)>) {
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

#[cfg(test)]
mod tests;

#[cfg(test)]
mod names_agree;
