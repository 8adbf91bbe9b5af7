//! What is on the system: ZFS datasets and snapshots, Qubes pools, qubes and their volumes.
//!
//! It yields plain data. The parsers are pure functions of the tools' real output formats, so
//! tests feed recorded output; the tools themselves run through [`Runner`].

use crate::system::runner::{command_line, Runner, ToolError};
use qzb_protocol::names::{DatasetName, SnapLabel, SnapshotName};
use std::collections::{BTreeMap, HashMap};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetKind {
    Filesystem,
    Volume,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dataset {
    pub name: DatasetName,
    pub kind: DatasetKind,
    /// The snapshot this dataset is a clone of.
    pub origin: Option<SnapshotName>,
    pub createtxg: u64,
    pub guid: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub label: SnapLabel,
    pub createtxg: u64,
    pub guid: u64,
}

/// All filesystems, volumes and snapshots, from one `zfs list`.
#[derive(Clone, Debug, Default)]
pub struct ZfsInventory {
    /// Keyed by name; byte order keeps every dataset's descendants in one contiguous range.
    pub datasets: BTreeMap<String, Dataset>,
    /// Each dataset's snapshots, oldest first (createtxg, then name).
    pub snapshots: HashMap<String, Vec<Snapshot>>,
}

impl ZfsInventory {
    pub fn dataset(&self, name: &str) -> Option<&Dataset> {
        self.datasets.get(name)
    }

    /// The dataset's strict descendants, in byte order of their names.
    pub fn descendants<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a Dataset> + 'a {
        let start = format!("{name}/");
        // '0' is the byte after '/', so this range is exactly the names starting with `name/`.
        let end = format!("{name}0");
        self.datasets.range(start..end).map(|(_, d)| d)
    }

    pub fn snapshots_of(&self, dataset: &str) -> &[Snapshot] {
        self.snapshots
            .get(dataset)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    pub fn snapshot(&self, name: &SnapshotName) -> Option<&Snapshot> {
        self.snapshots_of(name.dataset().as_str())
            .iter()
            .find(|s| &s.label == name.label())
    }

    pub fn snapshot_count(&self) -> usize {
        self.snapshots.values().map(Vec::len).sum()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    pub name: String,
    pub driver: String,
    /// The dataset that holds the pool's volumes (ZFS driver only).
    pub container: Option<DatasetName>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    pub name: String,
    pub pool: String,
    pub vid: String,
    pub save_on_stop: bool,
    pub snap_on_start: bool,
    pub rw: bool,
    pub ephemeral: bool,
}

impl Volume {
    /// Its content survives a shutdown, so it is worth backing up.
    pub fn is_persistent(&self) -> bool {
        self.save_on_stop && !self.ephemeral
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Qube {
    pub name: String,
    pub class: String,
    pub state: String,
    pub volumes: Vec<Volume>,
}

impl Qube {
    pub fn is_running(&self) -> bool {
        !matches!(self.state.as_str(), "Halted" | "Dying" | "Crashed")
    }
}

#[derive(Clone, Debug, Default)]
pub struct QubesInventory {
    pub pools: Vec<Pool>,
    pub qubes: BTreeMap<String, Qube>,
}

impl QubesInventory {
    pub fn zfs_pools(&self) -> impl Iterator<Item = &Pool> {
        self.pools.iter().filter(|p| p.driver == "zfs")
    }

    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| p.name == name)
    }
}

#[derive(Clone, Debug, Default)]
pub struct Inventory {
    pub zfs: ZfsInventory,
    pub qubes: QubesInventory,
}

pub(crate) fn bad_output(command: &str, problem: impl Into<String>) -> ToolError {
    ToolError::new(command, problem)
}

/// The `zfs list` call that reads the whole system at once.
pub const ZFS_LIST_ARGS: [&str; 7] = [
    "list",
    "-H",
    "-p",
    "-t",
    "all",
    "-o",
    "name,type,origin,createtxg,guid",
];

/// Parses `zfs list -H -p -t all -o name,type,origin,createtxg,guid`.
pub fn parse_zfs_list(text: &str) -> Result<ZfsInventory, String> {
    let mut inv = ZfsInventory::default();
    let mut snaps: Vec<(String, Snapshot)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let at = |what: &str| format!("line {}: {what}: {}", i + 1, crate::output::outside(line));
        let fields: Vec<&str> = line.split('\t').collect();
        let [name, kind, origin, createtxg, guid] = fields[..] else {
            return Err(at("expected 5 tab-separated fields"));
        };
        let createtxg: u64 = createtxg
            .parse()
            .map_err(|_| at("createtxg is not a number"))?;
        let guid: u64 = guid.parse().map_err(|_| at("guid is not a number"))?;
        match kind {
            "filesystem" | "volume" => {
                let name =
                    DatasetName::parse(name).map_err(|e| at(&format!("bad dataset name ({e})")))?;
                let origin = match origin {
                    "-" | "" => None,
                    o => {
                        Some(SnapshotName::parse(o).map_err(|e| at(&format!("bad origin ({e})")))?)
                    }
                };
                let kind = if kind == "volume" {
                    DatasetKind::Volume
                } else {
                    DatasetKind::Filesystem
                };
                inv.datasets.insert(
                    name.as_str().to_owned(),
                    Dataset {
                        name,
                        kind,
                        origin,
                        createtxg,
                        guid,
                    },
                );
            }
            "snapshot" => {
                let snap = SnapshotName::parse(name)
                    .map_err(|e| at(&format!("bad snapshot name ({e})")))?;
                snaps.push((
                    snap.dataset().as_str().to_owned(),
                    Snapshot {
                        label: snap.label().clone(),
                        createtxg,
                        guid,
                    },
                ));
            }
            // Bookmarks are not used as send sources (yet); anything else is unexpected.
            "bookmark" => {}
            other => {
                return Err(at(&format!(
                    "unknown type '{}'",
                    crate::output::outside(other)
                )))
            }
        }
    }
    for (ds, snap) in snaps {
        if !inv.datasets.contains_key(&ds) {
            return Err(format!(
                "snapshot {ds}@{} belongs to no listed dataset",
                snap.label.as_str()
            ));
        }
        inv.snapshots.entry(ds).or_default().push(snap);
    }
    for list in inv.snapshots.values_mut() {
        list.sort_by(|a, b| {
            a.createtxg
                .cmp(&b.createtxg)
                .then_with(|| a.label.cmp(&b.label))
        });
    }
    Ok(inv)
}

/// Reads the total from `zfs send -n -v -P` output: the `size\t<bytes>` line.
pub fn parse_send_size(text: &str) -> Option<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("size\t").or_else(|| l.strip_prefix("size ")))
        .filter_map(|n| n.trim().parse().ok())
        .next_back()
}

/// Reads one `qubesd-query` reply: `0\0<payload>` on success, `2\0<type>\0<traceback>\0<message>\0`
/// when qubesd raised an exception.
pub fn parse_qubesd_reply(raw: &[u8]) -> Result<String, String> {
    match raw {
        [b'0', 0, payload @ ..] => String::from_utf8(payload.to_vec())
            .map_err(|_| "the reply is not valid UTF-8".to_owned()),
        [b'2', 0, rest @ ..] => {
            let parts: Vec<String> = rest
                .split(|b| *b == 0)
                .map(|p| crate::output::outside(&String::from_utf8_lossy(p)))
                .collect();
            let kind = parts.first().map(String::as_str).unwrap_or("error");
            let message = parts.get(2).map(String::as_str).unwrap_or("");
            Err(format!("qubesd refused: {kind}: {message}"))
        }
        _ => Err(format!(
            "the reply does not start with a qubesd status byte (it starts with '{}')",
            crate::output::one_line(&String::from_utf8_lossy(&raw[..raw.len().min(16)]), 16)
        )),
    }
}

/// Parses `key=value` lines (admin.*.Info replies).
pub fn parse_key_values(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Parses `admin.vm.List`: `<name> class=<Class> state=<State>` per line.
pub fn parse_vm_list(text: &str) -> Result<Vec<(String, String, String)>, String> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut parts = line.split(' ');
        let name = parts.next().unwrap_or_default().to_owned();
        let props = parse_key_values(&parts.collect::<Vec<_>>().join("\n"));
        let class = props
            .get("class")
            .cloned()
            .ok_or_else(|| format!("no class in the line '{}'", crate::output::outside(line)))?;
        let state = props
            .get("state")
            .cloned()
            .unwrap_or_else(|| "Halted".into());
        out.push((name, class, state));
    }
    Ok(out)
}

fn parse_bool(map: &HashMap<String, String>, key: &str) -> bool {
    map.get(key).map(|v| v == "True").unwrap_or(false)
}

/// Asks qubesd through `qubesd-query -e dom0 <call> <dest> [<arg>]`.
pub fn qubesd_query(
    runner: &dyn Runner,
    call: &str,
    dest: &str,
    arg: Option<&str>,
) -> Result<String, ToolError> {
    let mut args = vec!["-e", "dom0", call, dest];
    args.extend(arg);
    let raw = runner.run("qubesd-query", &args)?;
    parse_qubesd_reply(&raw).map_err(|p| bad_output(&command_line("qubesd-query", &args), p))
}

/// Every qube: `(name, class, state)` from `admin.vm.List`.
pub fn list_qubes(runner: &dyn Runner) -> Result<Vec<(String, String, String)>, ToolError> {
    let list = qubesd_query(runner, "admin.vm.List", "dom0", None)?;
    parse_vm_list(&list).map_err(|p| bad_output("qubesd-query -e dom0 admin.vm.List dom0", p))
}

/// The state of one qube (`Running`, `Halted`, ...) from `admin.vm.List`, or None if it does not
/// exist.
pub fn qube_state(runner: &dyn Runner, name: &str) -> Result<Option<String>, ToolError> {
    let vms = list_qubes(runner)?;
    Ok(vms
        .into_iter()
        .find(|(n, _, _)| n == name)
        .map(|(_, _, s)| s))
}

/// The inventory with ZFS only (what every command after `import` needs).
pub fn collect_zfs_only(runner: &dyn Runner) -> Result<Inventory, ToolError> {
    Ok(Inventory {
        zfs: collect_zfs(runner)?,
        ..Default::default()
    })
}

pub fn collect_zfs(runner: &dyn Runner) -> Result<ZfsInventory, ToolError> {
    let raw = runner.run("zfs", &ZFS_LIST_ARGS)?;
    let text = String::from_utf8(raw).map_err(|_| {
        bad_output(
            &command_line("zfs", &ZFS_LIST_ARGS),
            "printed non-UTF-8 output",
        )
    })?;
    parse_zfs_list(&text).map_err(|p| {
        bad_output(
            &command_line("zfs", &ZFS_LIST_ARGS),
            format!("printed output we cannot read: {p}"),
        )
    })
}

/// How many Admin API calls run at once when reading volumes (each is a process).
const QUERY_WORKERS: usize = 4;

pub fn collect_qubes(runner: &dyn Runner) -> Result<QubesInventory, ToolError> {
    let mut inv = QubesInventory::default();
    let pool_names = qubesd_query(runner, "admin.pool.List", "dom0", None)?;
    for pool in pool_names.lines().filter(|l| !l.is_empty()) {
        let info = parse_key_values(&qubesd_query(
            runner,
            "admin.pool.Info",
            "dom0",
            Some(pool),
        )?);
        let driver = info.get("driver").cloned().unwrap_or_default();
        let container = match (driver.as_str(), info.get("container")) {
            ("zfs", Some(c)) => Some(DatasetName::parse(c).map_err(|e| {
                bad_output(
                    "qubesd-query -e dom0 admin.pool.Info dom0",
                    format!(
                        "pool {pool} has an invalid container '{}': {e}",
                        crate::output::outside(c)
                    ),
                )
            })?),
            ("zfs", None) => {
                return Err(bad_output(
                    &format!("qubesd-query -e dom0 admin.pool.Info dom0 {pool}"),
                    "reports a zfs pool without a 'container'",
                ))
            }
            _ => None,
        };
        inv.pools.push(Pool {
            name: pool.to_owned(),
            driver,
            container,
        });
    }
    let vms = parse_vm_list(&qubesd_query(runner, "admin.vm.List", "dom0", None)?)
        .map_err(|p| bad_output("qubesd-query -e dom0 admin.vm.List dom0", p))?;
    let results: Vec<Result<Qube, ToolError>> = std::thread::scope(|scope| {
        let chunk = vms.len().div_ceil(QUERY_WORKERS).max(1);
        let handles: Vec<_> = vms
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|(n, c, s)| read_qube(runner, n, c, s))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    for qube in results {
        let qube = qube?;
        inv.qubes.insert(qube.name.clone(), qube);
    }
    Ok(inv)
}

fn read_qube(runner: &dyn Runner, name: &str, class: &str, state: &str) -> Result<Qube, ToolError> {
    let mut volumes = Vec::new();
    // dom0's storage is not managed through the Admin API's volume calls.
    if class != "AdminVM" {
        let names = qubesd_query(runner, "admin.vm.volume.List", name, None)?;
        for vol in names.lines().filter(|l| !l.is_empty()) {
            // The kernel volume is a read-only file from dom0's kernel pool, never backed up.
            if vol == "kernel" {
                continue;
            }
            let info = parse_key_values(&qubesd_query(
                runner,
                "admin.vm.volume.Info",
                name,
                Some(vol),
            )?);
            volumes.push(Volume {
                name: vol.to_owned(),
                pool: info.get("pool").cloned().unwrap_or_default(),
                vid: info.get("vid").cloned().unwrap_or_default(),
                save_on_stop: parse_bool(&info, "save_on_stop"),
                snap_on_start: parse_bool(&info, "snap_on_start"),
                rw: parse_bool(&info, "rw"),
                ephemeral: parse_bool(&info, "ephemeral"),
            });
        }
    }
    Ok(Qube {
        name: name.to_owned(),
        class: class.to_owned(),
        state: state.to_owned(),
        volumes,
    })
}

pub fn collect(runner: &dyn Runner) -> Result<Inventory, ToolError> {
    Ok(Inventory {
        zfs: collect_zfs(runner)?,
        qubes: collect_qubes(runner)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = "mainpool\tfilesystem\t-\t1\t111\n\
mainpool/qubes\tfilesystem\t-\t5\t112\n\
mainpool/qubes/work\tfilesystem\t-\t20\t113\n\
mainpool/qubes/work/private\tvolume\t-\t21\t114\n\
mainpool/qubes/work/root\tvolume\tmainpool/qubes/fedora-41/root@qubes-clean-aaaa\t22\t115\n\
mainpool/qubes/work-clone\tfilesystem\t-\t23\t116\n\
mainpool/qubes/work/private@b2\tsnapshot\t-\t300\t900\n\
mainpool/qubes/work/private@b1\tsnapshot\t-\t202\t901\n\
mainpool/qubes/work/private#bm\tbookmark\t-\t202\t901\n\
mainpool/qubes/fedora-41\tfilesystem\t-\t6\t117\n\
mainpool/qubes/fedora-41/root\tvolume\t-\t7\t118\n\
mainpool/qubes/fedora-41/root@qubes-clean-aaaa\tsnapshot\t-\t50\t902\n";

    #[test]
    fn zfs_list_is_parsed_with_origins_and_ordered_snapshots() {
        let inv = parse_zfs_list(LIST).unwrap();
        assert_eq!(inv.datasets.len(), 8);
        let root = inv.dataset("mainpool/qubes/work/root").unwrap();
        assert_eq!(root.kind, DatasetKind::Volume);
        assert_eq!(
            root.origin.as_ref().unwrap().to_string(),
            "mainpool/qubes/fedora-41/root@qubes-clean-aaaa"
        );
        let labels: Vec<_> = inv
            .snapshots_of("mainpool/qubes/work/private")
            .iter()
            .map(|s| s.label.as_str())
            .collect();
        assert_eq!(labels, ["b1", "b2"]);
    }

    #[test]
    fn descendants_stop_at_component_boundaries() {
        let inv = parse_zfs_list(LIST).unwrap();
        let d: Vec<_> = inv
            .descendants("mainpool/qubes/work")
            .map(|d| d.name.as_str())
            .collect();
        assert_eq!(
            d,
            ["mainpool/qubes/work/private", "mainpool/qubes/work/root"]
        );
    }

    #[test]
    fn malformed_zfs_output_is_an_error_naming_the_line() {
        assert!(parse_zfs_list("a\tfilesystem\t-\t1\n")
            .unwrap_err()
            .contains("line 1"));
        assert!(parse_zfs_list("a\tfilesystem\t-\tx\t1\n")
            .unwrap_err()
            .contains("createtxg"));
        assert!(parse_zfs_list("a\tweird\t-\t1\t1\n")
            .unwrap_err()
            .contains("unknown type"));
        assert!(parse_zfs_list("a@s\tsnapshot\t-\t1\t1\n")
            .unwrap_err()
            .contains("no listed dataset"));
        assert!(parse_zfs_list("-a\tfilesystem\t-\t1\t1\n").is_err());
    }

    #[test]
    fn qubesd_replies_are_decoded() {
        assert_eq!(parse_qubesd_reply(b"0\0a\nb\n").unwrap(), "a\nb\n");
        let e =
            parse_qubesd_reply(b"2\0QubesVMNotFoundError\0\0No such domain: 'x'\0").unwrap_err();
        assert!(
            e.contains("QubesVMNotFoundError") && e.contains("No such domain"),
            "{e}"
        );
        assert!(parse_qubesd_reply(b"garbage").is_err());
        assert!(parse_qubesd_reply(b"").is_err());
    }

    #[test]
    fn vm_list_lines_give_name_class_and_state() {
        let v = parse_vm_list("dom0 class=AdminVM state=Running\nwork class=AppVM state=Halted\n")
            .unwrap();
        assert_eq!(v[1], ("work".into(), "AppVM".into(), "Halted".into()));
    }
}

/// A zvol's block size and the volume size of the volume and each of its snapshots, by full
/// name: what the manifests of its snapshots record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VolumeGeometry {
    pub volblocksize: u64,
    pub volsizes: BTreeMap<String, u64>,
}

/// Parses `zfs list -Hp -o name,volsize,volblocksize -t volume,snapshot -r <zvol>`.
pub fn parse_volume_geometry(text: &str, dataset: &str) -> Result<VolumeGeometry, String> {
    let mut geometry = VolumeGeometry::default();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let fields: Vec<&str> = line.split('\t').collect();
        let [name, volsize, volblocksize] = fields[..] else {
            return Err(format!("expected 3 tab-separated fields: {line:?}"));
        };
        let number = |what: &str, v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{what} of {name} is not a number: {v:?}"))
        };
        let volsize = number("volsize", volsize)?;
        // Real ZFS (2.1) prints `-` for a snapshot's volblocksize: only the volume's counts
        // (a zvol's block size cannot change).
        if name == dataset {
            geometry.volblocksize = number("volblocksize", volblocksize)?;
        } else if !name.starts_with(&format!("{dataset}@")) {
            continue;
        }
        geometry.volsizes.insert(name.to_owned(), volsize);
    }
    if geometry.volblocksize == 0 {
        return Err(format!("{dataset} is not listed as a volume"));
    }
    Ok(geometry)
}

/// The geometry of the zvol `dataset` (one `zfs list`).
pub fn volume_geometry(runner: &dyn Runner, dataset: &str) -> Result<VolumeGeometry, ToolError> {
    let args = [
        "list",
        "-H",
        "-p",
        "-o",
        "name,volsize,volblocksize",
        "-t",
        "volume,snapshot",
        "-r",
        dataset,
    ];
    let raw = runner.run("zfs", &args)?;
    parse_volume_geometry(&String::from_utf8_lossy(&raw), dataset).map_err(|p| {
        bad_output(
            &command_line("zfs", &args),
            format!("printed output we cannot read: {p}"),
        )
    })
}

#[cfg(test)]
mod geometry_tests {
    use super::*;

    #[test]
    fn geometry_lists_the_volume_and_its_snapshots_volsizes() {
        // As OpenZFS 2.1 prints it: `-` for a snapshot's volblocksize.
        let text = "pool/v\t2097152\t16384\npool/v@a\t1048576\t-\npool/v@b\t2097152\t-\n";
        let g = parse_volume_geometry(text, "pool/v").unwrap();
        assert_eq!(g.volblocksize, 16384);
        assert_eq!(g.volsizes["pool/v@a"], 1 << 20);
        assert_eq!(g.volsizes.len(), 3);
        assert!(parse_volume_geometry("pool/v\t-\t16384\n", "pool/v").is_err());
        assert!(parse_volume_geometry("pool/v\t1\t-\n", "pool/v").is_err());
        assert!(parse_volume_geometry("pool/v\t1\t512\npool/v@a\t-\t-\n", "pool/v").is_err());
        assert!(parse_volume_geometry("pool/w@a\t1\t512\n", "pool/v").is_err());
    }
}
