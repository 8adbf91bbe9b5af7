//! The `snapshot` command's decisions: which target snapshots to create, in which atomic groups,
//! and which to defer because a running qube writes to the volume.
//!
//! A volume attached read-write to a running domain is never snapshotted: its content is not
//! consistent. We learn attachments from two sources and trust either: `xl list -l` (what Xen
//! really has attached) and the Admin API (running qubes' read-write volumes).

use crate::state::{SnapshotState, TargetState};
use crate::system::inventory::Inventory;
use crate::system::runner::{Runner, ToolError};
use qzb_protocol::names::SnapshotName;
use std::collections::{BTreeMap, BTreeSet};

/// Who holds a dataset read-write.
pub type Holders = BTreeMap<String, BTreeSet<String>>;

/// Parses `xl list -l` JSON: the datasets of zvols attached read-write, with the domains holding
/// them. Disks are named by their `pdev_path`; the Qubes ZFS driver uses `/dev/zvol/<dataset>`.
/// Other paths are mapped through `resolve` (the real one asks `zvol_id`).
pub fn parse_xl_attachments(
    json: &str,
    resolve: &dyn Fn(&str) -> Option<String>,
) -> Result<Holders, String> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("not the JSON `xl list -l` prints: {e}"))?;
    let domains = v.as_array().ok_or("expected a JSON list of domains")?;
    let mut holders = Holders::new();
    for d in domains {
        let domid = d.get("domid").and_then(|x| x.as_u64());
        let config = d.get("config");
        let name = config
            .and_then(|c| c.get("c_info"))
            .and_then(|c| c.get("name"))
            .and_then(|n| n.as_str())
            .unwrap_or("?");
        // dom0's own disks are not qube volumes.
        if domid == Some(0) {
            continue;
        }
        let disks = config
            .and_then(|c| c.get("disks"))
            .and_then(|d| d.as_array())
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        for disk in disks {
            let Some(path) = disk.get("pdev_path").and_then(|p| p.as_str()) else {
                continue;
            };
            let rw = match disk.get("readwrite") {
                Some(serde_json::Value::Bool(b)) => *b,
                Some(serde_json::Value::Number(n)) => n.as_u64() != Some(0),
                _ => false,
            };
            if !rw {
                continue;
            }
            let dataset = match path.strip_prefix("/dev/zvol/") {
                Some(ds) => Some(strip_partition(ds).to_owned()),
                None if path.starts_with("/dev/") => resolve(path),
                None => None,
            };
            if let Some(ds) = dataset {
                holders.entry(ds).or_default().insert(name.to_owned());
            }
        }
    }
    Ok(holders)
}

/// `/dev/zvol/pool/vol-part1` names a partition of `pool/vol`.
fn strip_partition(ds: &str) -> &str {
    match ds.rsplit_once("-part") {
        Some((base, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => ds,
    }
}

/// Adds the read-write volumes of running qubes, as the Admin API reports them.
pub fn add_running_qubes(holders: &mut Holders, inv: &Inventory) {
    for q in inv
        .qubes
        .qubes
        .values()
        .filter(|q| q.is_running() && q.class != "AdminVM")
    {
        for v in q.volumes.iter().filter(|v| v.rw) {
            holders
                .entry(v.vid.clone())
                .or_default()
                .insert(q.name.clone());
        }
    }
}

/// One `zfs snapshot` call: all of an object's missing snapshots in one pool, taken at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub object: String,
    pub snapshots: Vec<SnapshotName>,
}

/// A dataset in use, and the domains that hold it.
pub type Busy = (String, Vec<String>);

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decision {
    pub create: Vec<Group>,
    /// Deferred groups, with the datasets in use and who holds them.
    pub deferred: Vec<(Group, Vec<Busy>)>,
    pub already: usize,
}

/// Decides what to create. Only target snapshots (not primers or origins) are ever created, and a
/// whole group is deferred if any dataset in it is in use, so a qube's volumes are always taken
/// at the same instant.
pub fn decide(targets: &[TargetState], holders: &Holders) -> Decision {
    let mut d = Decision::default();
    let mut groups: BTreeMap<(String, String), Vec<SnapshotName>> = BTreeMap::new();
    for t in targets.iter().filter(|t| t.target.is_creatable()) {
        if t.snapshot_state != SnapshotState::Missing {
            d.already += 1;
            continue;
        }
        let object = t.target.object.clone().unwrap_or_default();
        let pool = t.target.snapshot.dataset().pool().to_owned();
        groups
            .entry((object, pool))
            .or_default()
            .push(t.target.snapshot.clone());
    }
    for ((object, _), snapshots) in groups {
        let busy: Vec<Busy> = snapshots
            .iter()
            .filter_map(|s| {
                holders
                    .get(s.dataset().as_str())
                    .map(|h| (s.dataset().to_string(), h.iter().cloned().collect()))
            })
            .collect();
        let group = Group { object, snapshots };
        if busy.is_empty() {
            d.create.push(group);
        } else {
            d.deferred.push((group, busy));
        }
    }
    d
}

/// Maps a block device to its zvol through `zvol_id`, as udev does.
pub fn zvol_id(runner: &dyn Runner, path: &str) -> Option<String> {
    let real = std::fs::canonicalize(path).ok()?;
    let real = real.to_str()?;
    let out = runner
        .run("zvol_id", &[real])
        .or_else(|_: ToolError| runner.run("/lib/udev/zvol_id", &[real]))
        .ok()?;
    let name = String::from_utf8(out).ok()?.trim().to_owned();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Reason, Target};
    use crate::system::inventory::DatasetKind;

    const XL: &str = r#"[
      {"domid": 0, "config": {"c_info": {"name": "Domain-0"}, "disks": [{"pdev_path": "/dev/zvol/mainpool/dom0swap", "readwrite": 1}]}},
      {"domid": 3, "config": {"c_info": {"name": "work"}, "disks": [
        {"pdev_path": "/dev/zvol/mainpool/qubes/work/root", "vdev": "xvda", "readwrite": 1},
        {"pdev_path": "/dev/zvol/mainpool/qubes/work/private", "vdev": "xvdb", "readwrite": 1},
        {"pdev_path": "/var/lib/qubes/vm-kernels/6.1/modules.img", "vdev": "xvdd", "readwrite": 0}]}},
      {"domid": 7, "config": {"c_info": {"name": "disp1234"}, "disks": [
        {"pdev_path": "/dev/zvol/mainpool/qubes/fedora-41/root-part3", "readwrite": 0},
        {"pdev_path": "/dev/zd16", "readwrite": 1}]}}
    ]"#;

    #[test]
    fn xl_attachments_map_read_write_zvols_to_their_domains() {
        let h = parse_xl_attachments(XL, &|p| {
            (p == "/dev/zd16").then(|| "mainpool/qubes/disp1234/private".to_owned())
        })
        .unwrap();
        let keys: Vec<_> = h.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "mainpool/qubes/disp1234/private",
                "mainpool/qubes/work/private",
                "mainpool/qubes/work/root"
            ]
        );
        assert!(h["mainpool/qubes/work/private"].contains("work"));
    }

    #[test]
    fn read_only_attachments_and_dom0_do_not_count() {
        let h = parse_xl_attachments(XL, &|_| None).unwrap();
        assert!(!h.contains_key("mainpool/qubes/fedora-41/root"));
        assert!(!h.contains_key("mainpool/dom0swap"));
    }

    #[test]
    fn garbage_xl_output_is_an_error() {
        assert!(parse_xl_attachments("not json", &|_| None).is_err());
        assert!(parse_xl_attachments("{}", &|_| None).is_err());
        assert!(parse_xl_attachments("[{}]", &|_| None).unwrap().is_empty());
    }

    fn target(snap: &str, object: &str, state: SnapshotState) -> TargetState {
        TargetState {
            target: Target {
                snapshot: SnapshotName::parse(snap).unwrap(),
                kind: DatasetKind::Volume,
                incremental_source: None,
                progressive: false,
                clone_origin: false,
                reason: Reason::Target,
                guid: None,
                object: Some(object.into()),
                depends_on: vec![],
            },
            snapshot_state: state,
            size_estimate: None,
            send_state: crate::state::SendState::Pending,
            received_guid: None,
            last_error: None,
            sent_stream: None,
            manifest: None,
        }
    }

    #[test]
    fn a_qube_in_use_is_deferred_whole_and_others_are_grouped_per_pool() {
        let targets = vec![
            target("m/q/work@b2", "qube:work", SnapshotState::Missing),
            target("m/q/work/private@b2", "qube:work", SnapshotState::Missing),
            target("m/q/vault@b2", "qube:vault", SnapshotState::Missing),
            target("m/q/vault/private@b2", "qube:vault", SnapshotState::Missing),
            target("m/q/games@b2", "qube:games", SnapshotState::Missing),
            target(
                "aux/q/games/private@b2",
                "qube:games",
                SnapshotState::Missing,
            ),
            target("m/dom0@b2", "dataset:m/dom0", SnapshotState::Exists),
        ];
        let mut holders = Holders::new();
        holders
            .entry("m/q/work/private".into())
            .or_default()
            .insert("work".into());
        let d = decide(&targets, &holders);
        assert_eq!(d.already, 1);
        let created: Vec<Vec<String>> = d
            .create
            .iter()
            .map(|g| g.snapshots.iter().map(|s| s.to_string()).collect())
            .collect();
        assert_eq!(
            created,
            [
                vec!["aux/q/games/private@b2".to_owned()],
                vec!["m/q/games@b2".to_owned()],
                vec!["m/q/vault@b2".to_owned(), "m/q/vault/private@b2".to_owned()],
            ]
        );
        assert_eq!(d.deferred.len(), 1);
        assert_eq!(d.deferred[0].0.object, "qube:work");
        assert_eq!(
            d.deferred[0].1,
            [("m/q/work/private".to_owned(), vec!["work".to_owned()])]
        );
    }
}
