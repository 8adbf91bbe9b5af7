//! Built-in exclusions: datasets that are never backed up whatever the config says (hidden
//! datasets, transient volumes, disposables), and the report's "automatically ignored" flag.

use crate::system::inventory::Inventory;
use qzb_protocol::names::DatasetName;
use std::collections::HashSet;

/// Built-in rules for datasets that are never backed up.
pub(super) struct ExclusionRules {
    /// Dataset names of transient volumes (save_on_stop off, or ephemeral) of every qube.
    transient: HashSet<String>,
    /// Storage roots of disposables (`<container>/<dispvm>`), excluded with their subtree.
    disposable_roots: HashSet<String>,
    containers: Vec<String>,
}

impl ExclusionRules {
    pub(super) fn new(inv: &Inventory) -> Self {
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
    pub(super) fn reason(&self, ds: &DatasetName) -> Option<&'static str> {
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
    pub(super) fn ignored_in_report(&self, ds: &DatasetName) -> bool {
        ds.components().any(|c| c.starts_with('.'))
            || self.disposable_roots.contains(ds.as_str())
            || self.is_disposable_pattern(ds.as_str())
    }
}
