//! The restore plan: from a set's settings and index and the qubes that exist now, which qubes
//! are created (or replace a halted one), under which names, in which order, and what each of
//! their references to other qubes (template, netvm, default_dispvm, ...) points to. Pure: no
//! I/O, so every rule is a unit test.
//!
//! The rules follow what users know from `qvm-backup-restore`:
//! - a qube whose name is taken is skipped, or renamed (`--rename`: `name1`, `name2`, ... cut to
//!   fit 31 characters), or replaces the existing one (`--replace`: only a halted qube);
//! - a referenced qube that is neither restored nor present is an error for that qube unless it
//!   is mapped (`--map OLD=NEW`) or reset to the system default (`--default-missing`);
//! - templates first, then every qube after the qubes it references (netvm chains included).

use std::collections::{BTreeMap, BTreeSet};

use qzb_protocol::sets::{QubeSettings, SetIndex, SettingsDoc};

/// Longest qube name Qubes accepts.
pub const MAX_QUBE_NAME: usize = 31;

/// A qube on this system now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Existing {
    pub name: String,
    pub class: String,
    pub running: bool,
}

/// What to do with a qube whose name is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conflict {
    Skip,
    Rename,
    Replace,
}

/// The admin's choices.
#[derive(Clone, Debug)]
pub struct Choice {
    /// Only these qubes (original names); empty: every qube of the set.
    pub only: Vec<String>,
    pub exclude: Vec<String>,
    pub conflict: Conflict,
    /// A reference to OLD points to NEW instead (an existing qube, or one restored).
    pub map: BTreeMap<String, String>,
    /// A reference to a qube that is neither restored nor present is reset to the default.
    pub default_missing: bool,
}

impl Default for Choice {
    fn default() -> Self {
        Choice {
            only: Vec::new(),
            exclude: Vec::new(),
            conflict: Conflict::Skip,
            map: BTreeMap::new(),
            default_missing: false,
        }
    }
}

/// Where a reference of a restored qube points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A qube restored by this plan, by its new name.
    Restored(String),
    /// A qube that exists on this system.
    Existing(String),
    /// The system's default for the property.
    Default,
}

/// One property of a restored qube that names another qube.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    pub property: String,
    /// The qube it named in the backup.
    pub original: String,
    pub target: Target,
}

/// One volume to fill from the medium.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedVolume {
    pub volume: String,
    /// The source snapshot in the set (dom0's name).
    pub snapshot: String,
    pub guid: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Create,
    /// The existing (halted) qube of the same name is removed first.
    Replace,
}

/// One qube the plan restores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedQube {
    /// The name it gets.
    pub name: String,
    /// Its name in the backup.
    pub original: String,
    pub class: String,
    pub action: Action,
    pub references: Vec<Reference>,
    pub volumes: Vec<PlannedVolume>,
    /// Persistent volumes the set has no manifest of (they cannot be checked, so they are not
    /// restored), or no snapshot of at all.
    pub unrestorable: Vec<String>,
}

/// The plan: qubes in creation order, and every qube of the set left out, with why.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestorePlan {
    pub qubes: Vec<PlannedQube>,
    pub skipped: Vec<(String, String)>,
}

/// Why no plan can be made: every problem, each naming the qube and what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanErrors(pub Vec<String>);

impl std::fmt::Display for PlanErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0.join("; "))
    }
}

/// The first free name for a renamed qube: `name1`, `name2`, ... (the base cut so the name
/// fits 31 characters), as qvm-backup-restore does; `None` after `name99`.
pub fn free_name(name: &str, taken: &dyn Fn(&str) -> bool) -> Option<String> {
    for n in 1..100u32 {
        let suffix = n.to_string();
        let mut base = name.to_owned();
        base.truncate(MAX_QUBE_NAME - suffix.len());
        let candidate = format!("{base}{suffix}");
        if !taken(&candidate) {
            return Some(candidate);
        }
    }
    None
}

/// Properties that name another qube: every `type=vm` property set on the qube (a default
/// follows the new system's default, so it is not a reference to restore).
fn vm_references(q: &QubeSettings) -> impl Iterator<Item = (&str, &str)> {
    q.properties
        .iter()
        .filter(|p| p.kind == "vm" && !p.is_default && !p.value.is_empty())
        .map(|p| (p.name.as_str(), p.value.as_str()))
}

/// Makes the plan.
pub fn plan(
    settings: &SettingsDoc,
    index: &SetIndex,
    existing: &[Existing],
    choice: &Choice,
) -> Result<RestorePlan, PlanErrors> {
    let mut errors = Vec::new();
    let in_set: BTreeSet<&str> = settings.qubes.iter().map(|q| q.name.as_str()).collect();
    for name in choice.only.iter().chain(&choice.exclude) {
        if !in_set.contains(name.as_str()) {
            errors.push(format!(
                "{name} is not in this backup set (it has: {})",
                in_set.iter().copied().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    let present: BTreeMap<&str, &Existing> =
        existing.iter().map(|e| (e.name.as_str(), e)).collect();
    let mut out = RestorePlan::default();

    // Which qubes, and their names.
    let mut chosen: Vec<&QubeSettings> = Vec::new();
    for q in &settings.qubes {
        let wanted = (choice.only.is_empty() || choice.only.contains(&q.name))
            && !choice.exclude.contains(&q.name);
        if !wanted {
            out.skipped.push((q.name.clone(), "not selected".into()));
        } else if q.name == "dom0" || q.class == "AdminVM" {
            out.skipped.push((
                q.name.clone(),
                "dom0 is not restored (its datasets' restore is out of scope)".into(),
            ));
        } else {
            chosen.push(q);
        }
    }
    let mut names: BTreeMap<&str, (String, Action)> = BTreeMap::new();
    let mut taken: BTreeSet<String> = present.keys().map(|s| s.to_string()).collect();
    for q in &chosen {
        taken.insert(q.name.clone());
    }
    for q in &chosen {
        let Some(there) = present.get(q.name.as_str()) else {
            names.insert(&q.name, (q.name.clone(), Action::Create));
            continue;
        };
        match choice.conflict {
            Conflict::Skip => out.skipped.push((
                q.name.clone(),
                "a qube of that name exists (restore it with --rename, or --replace a halted one)"
                    .into(),
            )),
            Conflict::Rename => match free_name(&q.name, &|n| taken.contains(n)) {
                Some(new) => {
                    taken.insert(new.clone());
                    names.insert(&q.name, (new, Action::Create));
                }
                None => errors.push(format!("{}: no free name up to {}99", q.name, q.name)),
            },
            Conflict::Replace if there.running => out.skipped.push((
                q.name.clone(),
                "a qube of that name exists and is running: shut it down to replace it".into(),
            )),
            Conflict::Replace if there.class != q.class => errors.push(format!(
                "{}: the existing qube is a {}, the backup's a {}; --replace only replaces a qube of the same class (use --rename)",
                q.name, there.class, q.class
            )),
            Conflict::Replace => {
                names.insert(&q.name, (q.name.clone(), Action::Replace));
            }
        }
    }

    // References, volumes.
    let entries: BTreeMap<&str, &qzb_protocol::sets::IndexEntry> = index
        .entries
        .iter()
        .filter_map(|e| Some((e.snapshot.split_once('@')?.0, e)))
        .collect();
    let mut planned: BTreeMap<&str, PlannedQube> = BTreeMap::new();
    for q in chosen
        .iter()
        .filter(|q| names.contains_key(q.name.as_str()))
    {
        let (name, action) = names[q.name.as_str()].clone();
        let mut references = Vec::new();
        for (property, original) in vm_references(q) {
            let resolve = |target: &str| -> Option<Target> {
                if let Some((new, _)) = names.get(target) {
                    Some(Target::Restored(new.clone()))
                } else if present.contains_key(target) {
                    Some(Target::Existing(target.to_owned()))
                } else {
                    None
                }
            };
            let target = match choice.map.get(original) {
                Some(to) => resolve(to).or_else(|| {
                    errors.push(format!(
                        "--map {original}={to}: {to} is neither restored nor on this system"
                    ));
                    None
                }),
                None => resolve(original).or_else(|| {
                    if choice.default_missing {
                        Some(Target::Default)
                    } else {
                        errors.push(format!(
                            "{}: its {property} {original} is neither restored nor on this system: restore it too, map it (--map {original}=QUBE), or reset such references to the default (--default-missing)",
                            q.name
                        ));
                        None
                    }
                }),
            };
            if let Some(target) = target {
                references.push(Reference {
                    property: property.to_owned(),
                    original: original.to_owned(),
                    target,
                });
            }
        }
        let mut volumes = Vec::new();
        let mut unrestorable = Vec::new();
        for v in &q.volumes {
            match entries.get(v.dataset.as_str()) {
                Some(e) if e.volume && e.manifest.is_some() => volumes.push(PlannedVolume {
                    volume: v.name.clone(),
                    snapshot: e.snapshot.clone(),
                    guid: e.guid,
                }),
                Some(_) => unrestorable.push(format!(
                    "{}: no manifest in this set (sent without a key), so it cannot be checked",
                    v.name
                )),
                None if v.save_on_stop => unrestorable.push(format!(
                    "{}: not in this set (its dataset {} was not backed up)",
                    v.name, v.dataset
                )),
                None => {}
            }
        }
        planned.insert(
            &q.name,
            PlannedQube {
                name,
                original: q.name.clone(),
                class: q.class.clone(),
                action,
                references,
                volumes,
                unrestorable,
            },
        );
    }
    if !errors.is_empty() {
        return Err(PlanErrors(errors));
    }
    out.qubes = order(planned).map_err(|cycle| {
        PlanErrors(vec![format!(
            "the qubes {} reference each other in a cycle; restore them with one reference mapped (--map)",
            cycle.join(", ")
        )])
    })?;
    Ok(out)
}

/// Creation order: every qube after the restored qubes it references; among the ready ones,
/// templates first, then by name. `Err` with the qubes left in a cycle.
fn order(mut left: BTreeMap<&str, PlannedQube>) -> Result<Vec<PlannedQube>, Vec<String>> {
    let mut out: Vec<PlannedQube> = Vec::new();
    while !left.is_empty() {
        let done: BTreeSet<&str> = out.iter().map(|q| q.name.as_str()).collect();
        let ready = |q: &PlannedQube| {
            q.references.iter().all(|r| match &r.target {
                Target::Restored(n) => done.contains(n.as_str()) || *n == q.name,
                _ => true,
            })
        };
        let next = left
            .iter()
            .filter(|(_, q)| ready(q))
            .min_by_key(|(_, q)| (q.class != "TemplateVM", q.name.clone()))
            .map(|(k, _)| *k);
        let Some(key) = next else {
            return Err(left.values().map(|q| q.original.clone()).collect());
        };
        out.push(left.remove(key).expect("listed"));
    }
    Ok(out)
}
