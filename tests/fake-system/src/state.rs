//! The fake system's persistent state: one JSON file per host, written atomically under a lock.
//!
//! Layout of a state root (env `QZB_FAKE_ROOT`):
//! - `dom0.json`          dom0's ZFS state plus the Qubes admin data (see README.md)
//! - `qubes/<qube>.json`  the ZFS state inside a qube
//! - `calls.log`          one JSON line per invocation
//! - `.lock`              short-lived lock file (created with O_EXCL)

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

#[derive(Serialize, Deserialize, Default, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct HostFile {
    /// Free text for humans; ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default)]
    pub zfs: Zfs,
    /// Only in dom0.json.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qubes: Option<Qubes>,
}

#[derive(Serialize, Deserialize, Default, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct Zfs {
    /// Last transaction group used on this host (a host-wide counter); the next
    /// snapshot/create/receive gets `last_txg + 1`.
    #[serde(default)]
    pub last_txg: u64,
    /// Datasets (filesystems and volumes) by full name.
    #[serde(default)]
    pub datasets: BTreeMap<String, Dataset>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    #[default]
    Filesystem,
    Volume,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Filesystem => "filesystem",
            Kind::Volume => "volume",
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Serialize, Deserialize, Default, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct Dataset {
    #[serde(rename = "type", default)]
    pub kind: Kind,
    /// Clone origin `ds@snap`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    #[serde(default = "one")]
    pub createtxg: u64,
    /// Omitted: derived from the host and name (stable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guid: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used: Option<u64>,
    /// Omitted: inherited from the nearest ancestor that sets it, else 1 TiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referenced: Option<u64>,
    /// Volumes only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volsize: Option<u64>,
    /// Volumes only (default 16 KiB, `crate::vol::DEFAULT_VOLBLOCKSIZE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volblocksize: Option<u64>,
    /// Locally set properties (mountpoint, volmode, canmount, readonly, user props a:b ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub props: BTreeMap<String, String>,
    /// In creation order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<Snapshot>,
    /// Partially received state left by an interrupted `zfs receive -s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<Partial>,
    /// Created by an interrupted full receive (not yet complete).
    #[serde(default, skip_serializing_if = "is_false")]
    pub inconsistent: bool,
    /// Written to since its latest snapshot (an incremental receive without -F then fails).
    #[serde(default, skip_serializing_if = "is_false")]
    pub modified: bool,
}

fn one() -> u64 {
    1
}

#[derive(Serialize, Deserialize, Default, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// Short name (after '@').
    pub name: String,
    pub createtxg: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guid: Option<u64>,
    /// Bytes of a full send stream's content (default 307200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Bytes of an incremental stream's content ending at this snapshot (default size/4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incr_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation: Option<u64>,
    /// Volumes: what this snapshot's stream wrote, as received (written by `zfs receive`;
    /// without it the delta is generated from guid and sizes, see `crate::vol`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<crate::vol::VolDelta>,
    /// User properties set on the snapshot itself (`zfs snapshot -o a:b=v`); others are
    /// inherited from its dataset, as zfs does.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub props: BTreeMap<String, String>,
}

pub const DEFAULT_SNAP_SIZE: u64 = 307_200;

impl Snapshot {
    pub fn full_size(&self) -> u64 {
        self.size.unwrap_or(DEFAULT_SNAP_SIZE)
    }
    pub fn incremental_size(&self) -> u64 {
        self.incr_size.unwrap_or(self.full_size() / 4)
    }
}

#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Partial {
    /// Name of the snapshot on the sending side (`drr_toname`).
    pub toname: String,
    pub toguid: u64,
    #[serde(default)]
    pub fromguid: u64,
    /// Content bytes received so far.
    pub bytes: u64,
    /// Total content bytes of the stream.
    pub total: u64,
    /// Short snapshot name to create on completion.
    pub snapname: String,
    #[serde(default)]
    pub stream_type: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// Send flags that end up in the token: L e c w.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub flags: String,
    /// Volume streams: the volume byte offset of the first block not committed (the token's
    /// `offset`; `bytes` is then stream bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_offset: Option<u64>,
    /// Volume streams: what was committed so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<crate::vol::VolDelta>,
}

// ---------------------------------------------------------------- Qubes admin data

#[derive(Serialize, Deserialize, Default, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct Qubes {
    /// "4.2" (admin.vm.List without uuid) or "4.3" (with uuid=).
    #[serde(default = "default_release")]
    pub release: String,
    #[serde(default)]
    pub pools: BTreeMap<String, Pool>,
    /// Qubes by name. dom0 is added automatically (AdminVM, Running) if absent.
    #[serde(default)]
    pub domains: BTreeMap<String, Qube>,
    /// qrexec policy used by `qrexec-policy-exec --just-evaluate` (first match wins; default deny).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy: Vec<PolicyRule>,
}

fn default_release() -> String {
    "4.2".into()
}

#[derive(Serialize, Deserialize, Default, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    /// The pool's config map, printed sorted by key (name is added automatically).
    pub config: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<u64>,
}

#[derive(Serialize, Deserialize, Default, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct Qube {
    pub class: String,
    #[serde(default = "halted")]
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Extra properties for admin.vm.property.Get (klass is always available).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
    /// In Qubes' order (root, private, volatile, kernel).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// Xen domain id while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domid: Option<u32>,
    /// Block devices attached in xl (only shown while state is Running).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<XlDisk>,
    /// qrexec services that are NOT installed in this qube (calls exit 127).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_services: Vec<String>,
    /// admin.vm.feature.List / Get.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub features: BTreeMap<String, String>,
    /// admin.vm.tag.List.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// admin.vm.firewall.Get, one rule per entry (default: `action=accept`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firewall: Option<Vec<String>>,
    /// admin.vm.device.<class>.Assigned: class -> lines (`dom0+00_14.0:... mode='required'`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub devices: BTreeMap<String, Vec<String>>,
}

fn halted() -> String {
    "Halted".into()
}

#[derive(Serialize, Deserialize, Default, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    pub name: String,
    pub pool: String,
    pub vid: String,
    pub size: u64,
    #[serde(default)]
    pub usage: u64,
    #[serde(default)]
    pub rw: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Default: /dev/zvol/<vid> for zfs pools, else empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default)]
    pub save_on_stop: bool,
    #[serde(default)]
    pub snap_on_start: bool,
    #[serde(default = "one_i64")]
    pub revisions_to_keep: i64,
    #[serde(default)]
    pub ephemeral: bool,
    /// Omitted -> False.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_outdated: Option<bool>,
}

fn one_i64() -> i64 {
    1
}

#[derive(Serialize, Deserialize, Default, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct XlDisk {
    pub pdev_path: String,
    pub vdev: String,
    #[serde(default)]
    pub readwrite: bool,
}

#[derive(Serialize, Deserialize, Default, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct PolicyRule {
    pub service: String,
    pub source: String,
    pub target: String,
    /// allow | deny | ask
    pub action: String,
}

// ---------------------------------------------------------------- files, lock

pub fn root() -> Result<PathBuf, String> {
    match std::env::var_os("QZB_FAKE_ROOT") {
        Some(r) if !r.is_empty() => Ok(PathBuf::from(r)),
        _ => Err("QZB_FAKE_ROOT is not set".into()),
    }
}

pub fn host_path(root: &Path, host: &str) -> Result<PathBuf, String> {
    if host.is_empty() || host.contains('/') || host.starts_with('.') {
        return Err(format!("bad host name {host:?}"));
    }
    if host == "dom0" {
        Ok(root.join("dom0.json"))
    } else {
        Ok(root.join("qubes").join(format!("{host}.json")))
    }
}

pub fn load(root: &Path, host: &str) -> Result<HostFile, String> {
    let p = host_path(root, host)?;
    let text = fs::read_to_string(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("bad state file {}: {e}", p.display()))
}

pub fn save(root: &Path, host: &str, state: &HostFile) -> Result<(), String> {
    let p = host_path(root, host)?;
    let mut text = serde_json::to_string_pretty(state).map_err(|e| e.to_string())?;
    text.push('\n');
    let tmp = p.with_extension(format!("json.tmp.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, &p)
    };
    write().map_err(|e| format!("cannot write {}: {e}", p.display()))
}

/// Exclusive lock on the whole state root, held while the guard lives.
pub struct Lock {
    path: PathBuf,
}

impl Lock {
    pub fn acquire(root: &Path) -> Result<Lock, String> {
        let path = root.join(".lock");
        let start = SystemTime::now();
        loop {
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    let _ = writeln!(f, "{}", std::process::id());
                    return Ok(Lock { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    // A holder that died leaves the file behind: break locks older than 20 s.
                    if let Ok(age) = fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .map(|m| m.elapsed().unwrap_or_default())
                    {
                        if age > Duration::from_secs(20) {
                            let _ = fs::remove_file(&path);
                            continue;
                        }
                    }
                    if start.elapsed().unwrap_or_default() > Duration::from_secs(60) {
                        return Err(format!("timed out waiting for {}", path.display()));
                    }
                    std::thread::sleep(Duration::from_millis(3));
                }
                Err(e) => return Err(format!("cannot create {}: {e}", path.display())),
            }
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Load, modify and save one host's state under the lock.
pub fn update<T>(
    root: &Path,
    host: &str,
    f: impl FnOnce(&mut HostFile) -> Result<T, String>,
) -> Result<T, String> {
    let _lock = Lock::acquire(root)?;
    let mut st = load(root, host)?;
    let out = f(&mut st)?;
    save(root, host, &st)?;
    Ok(out)
}

/// Load one host's state consistently (under the lock).
pub fn read(root: &Path, host: &str) -> Result<HostFile, String> {
    let _lock = Lock::acquire(root)?;
    load(root, host)
}

/// A stable pseudo-random 64-bit id.
pub fn stable_id(parts: &[&str]) -> u64 {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update(&[0]);
    }
    let b = h.finalize();
    let mut x = [0u8; 8];
    x.copy_from_slice(&b.as_bytes()[..8]);
    u64::from_le_bytes(x) | 1
}

impl Dataset {
    pub fn guid_for(&self, host: &str, name: &str) -> u64 {
        self.guid
            .unwrap_or_else(|| stable_id(&["dataset", host, name]))
    }
}

impl Snapshot {
    pub fn guid_for(&self, host: &str, full: &str) -> u64 {
        self.guid
            .unwrap_or_else(|| stable_id(&["snapshot", host, full, &self.createtxg.to_string()]))
    }
}
