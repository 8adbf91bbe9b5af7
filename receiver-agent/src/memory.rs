//! An in-memory [`Zfs`] for tests: datasets, snapshots and partial receive state in a map,
//! with a tiny fake stream format so that receives can complete, fail or be interrupted.
//!
//! Fake stream: `QZBFAKE1` · toguid:u64le · fromguid:u64le (0 = full) · body · `QZBFAKE-END`.
//! A receive whose bytes (after any saved partial bytes, when resuming) end with the trailer
//! creates the snapshot; one that stops earlier leaves partial state and a real-format resume
//! token, like `zfs receive -s` does.

use std::collections::BTreeMap;
use std::io::{self, Cursor, Read, Write};
use std::sync::{Arc, Mutex, MutexGuard};

use qzb_protocol::{
    encode_resume_token, DatasetInfo, DatasetKind, DatasetName, InventoryReply, ResumeToken,
    SnapshotInfo, SnapshotName,
};

use crate::zfs::{
    MountState, ReceiveArgs, ReceiveExit, ReceiveProcess, SendProcess, Zfs, ZfsError,
};

pub const FAKE_MAGIC: &[u8; 8] = b"QZBFAKE1";
pub const FAKE_TRAILER: &[u8; 11] = b"QZBFAKE-END";
const FAKE_HEADER_LEN: usize = 24;

/// Builds a fake stream.
pub fn fake_stream(toguid: u64, fromguid: u64, body: &[u8]) -> Vec<u8> {
    let mut s = FAKE_MAGIC.to_vec();
    s.extend_from_slice(&toguid.to_le_bytes());
    s.extend_from_slice(&fromguid.to_le_bytes());
    s.extend_from_slice(body);
    s.extend_from_slice(FAKE_TRAILER);
    s
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemDataset {
    pub kind: DatasetKind,
    pub guid: u64,
    /// (label, guid, createtxg), oldest first.
    pub snapshots: Vec<(String, u64, u64)>,
    pub resume_token: Option<String>,
    pub partial: Vec<u8>,
    /// Created by `create_unmountable`.
    pub unmountable: bool,
}

/// A planned failure of the next receive: `zfs receive` reads `after_bytes`, then exits with
/// `stderr`.
#[derive(Debug, Clone)]
pub struct PlannedFailure {
    pub after_bytes: usize,
    pub stderr: String,
}

#[derive(Debug, Default)]
pub struct MemState {
    pub datasets: BTreeMap<String, MemDataset>,
    pub available: u64,
    /// One line per mutating call, e.g. "create bpool/r/a", "receive receive -s -u ...".
    pub log: Vec<String>,
    pub fail_next_receive: Option<PlannedFailure>,
    /// Bytes fed to each receive, in order.
    pub received_streams: Vec<Vec<u8>>,
    /// What `zfs send` of a snapshot (by full name) writes, for read-backs.
    pub send_streams: BTreeMap<String, Vec<u8>>,
    /// The next `zfs send` writes its stream, then exits 1 with this stderr.
    pub fail_next_send: Option<String>,
    /// Filesystems made by `create_meta`: dataset → (mountpoint, mounted). Creating one makes
    /// its mountpoint directory, like a mount would (the only file I/O of `MemoryZfs`).
    pub mounts: BTreeMap<String, (String, bool)>,
    /// The pool's altroot (`zpool import -R`): filesystems are mounted at, and report, this
    /// prefix + their mountpoint property.
    pub altroot: Option<String>,
    next_txg: u64,
}

/// Shared, thread-safe in-memory ZFS.
#[derive(Debug, Clone, Default)]
pub struct MemoryZfs {
    state: Arc<Mutex<MemState>>,
}

impl MemoryZfs {
    pub fn new() -> MemoryZfs {
        MemoryZfs::default()
    }

    pub fn state(&self) -> MutexGuard<'_, MemState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn add_dataset(&self, name: &str, kind: DatasetKind, guid: u64) {
        self.state().datasets.insert(
            name.to_owned(),
            MemDataset {
                kind,
                guid,
                snapshots: Vec::new(),
                resume_token: None,
                partial: Vec::new(),
                unmountable: false,
            },
        );
    }

    pub fn add_snapshot(&self, dataset: &str, label: &str, guid: u64) {
        let mut st = self.state();
        st.next_txg += 1;
        let txg = st.next_txg;
        st.datasets
            .get_mut(dataset)
            .expect("dataset exists")
            .snapshots
            .push((label.to_owned(), guid, txg));
    }

    pub fn dataset(&self, name: &str) -> Option<MemDataset> {
        self.state().datasets.get(name).cloned()
    }
}

fn missing(action: String, name: &str) -> ZfsError {
    ZfsError {
        action,
        detail: "exit status: 1".into(),
        stderr: format!("cannot open '{name}': dataset does not exist\n"),
    }
}

impl Zfs for MemoryZfs {
    fn inventory(&self, root: &DatasetName) -> Result<InventoryReply, ZfsError> {
        let st = self.state();
        if !st.datasets.contains_key(root.as_str()) {
            return Err(missing(format!("zfs list -r {root}"), root.as_str()));
        }
        let mut datasets = Vec::new();
        for (name, ds) in &st.datasets {
            let name = DatasetName::parse(name).expect("valid test name");
            if name != *root && !name.is_strictly_under(root) {
                continue;
            }
            datasets.push(DatasetInfo {
                snapshots: ds
                    .snapshots
                    .iter()
                    .map(|(label, guid, txg)| SnapshotInfo {
                        name: SnapshotName::parse(&format!("{name}@{label}"))
                            .expect("valid test label"),
                        guid: *guid,
                        createtxg: *txg,
                    })
                    .collect(),
                name,
                kind: ds.kind,
                guid: ds.guid,
                receive_resume_token: ds.resume_token.clone(),
            });
        }
        Ok(InventoryReply {
            root: root.clone(),
            available: st.available,
            datasets,
        })
    }

    fn dataset_exists(&self, dataset: &DatasetName) -> Result<bool, ZfsError> {
        Ok(self.state().datasets.contains_key(dataset.as_str()))
    }

    fn create_unmountable(&self, dataset: &DatasetName) -> Result<(), ZfsError> {
        let mut st = self.state();
        if let Some(parent) = dataset.parent() {
            if !st.datasets.contains_key(parent.as_str()) {
                return Err(missing(format!("zfs create {dataset}"), parent.as_str()));
            }
        }
        st.log.push(format!("create {dataset}"));
        let guid = 1000 + st.datasets.len() as u64;
        st.datasets.insert(
            dataset.to_string(),
            MemDataset {
                kind: DatasetKind::Filesystem,
                guid,
                snapshots: Vec::new(),
                resume_token: None,
                partial: Vec::new(),
                unmountable: true,
            },
        );
        Ok(())
    }

    fn snapshot_guid(&self, snapshot: &SnapshotName) -> Result<Option<u64>, ZfsError> {
        Ok(self
            .state()
            .datasets
            .get(snapshot.dataset().as_str())
            .and_then(|ds| {
                ds.snapshots
                    .iter()
                    .find(|s| s.0 == snapshot.label().as_str())
            })
            .map(|s| s.1))
    }

    fn resume_token(&self, dataset: &DatasetName) -> Result<Option<String>, ZfsError> {
        Ok(self
            .state()
            .datasets
            .get(dataset.as_str())
            .and_then(|ds| ds.resume_token.clone()))
    }

    fn abort_receive(&self, dataset: &DatasetName) -> Result<(), ZfsError> {
        let mut st = self.state();
        st.log.push(format!("abort {dataset}"));
        let Some(ds) = st.datasets.get_mut(dataset.as_str()) else {
            return Err(missing(
                format!("zfs receive -A {dataset}"),
                dataset.as_str(),
            ));
        };
        if ds.resume_token.is_none() {
            return Err(ZfsError {
                action: format!("zfs receive -A {dataset}"),
                detail: "exit status: 1".into(),
                stderr: format!("'{dataset}' does not have any resumable receive state to abort\n"),
            });
        }
        let full_receive_in_progress = ds.snapshots.is_empty();
        ds.resume_token = None;
        ds.partial.clear();
        if full_receive_in_progress {
            st.datasets.remove(dataset.as_str());
        }
        Ok(())
    }

    fn start_receive(&self, args: &ReceiveArgs) -> Result<Box<dyn ReceiveProcess>, ZfsError> {
        let mut st = self.state();
        st.log.push(crate::zfs::receive_argv(args).join(" "));
        let failure = st.fail_next_receive.take();
        Ok(Box::new(MemReceive {
            zfs: self.clone(),
            args: args.clone(),
            bytes: Vec::new(),
            failure,
        }))
    }

    fn create_meta(&self, dataset: &DatasetName, mountpoint: &str) -> Result<(), ZfsError> {
        let mut st = self.state();
        let action = crate::zfs::create_meta_argv(dataset, mountpoint).join(" ");
        if let Some(parent) = dataset.parent() {
            if !st.datasets.contains_key(parent.as_str()) {
                return Err(missing(format!("zfs {action}"), parent.as_str()));
            }
        }
        if st.datasets.contains_key(dataset.as_str()) {
            return Err(ZfsError {
                action: format!("zfs {action}"),
                detail: "exit status: 1".into(),
                stderr: format!("cannot create '{dataset}': dataset already exists\n"),
            });
        }
        let mountpoint = format!("{}{mountpoint}", st.altroot.as_deref().unwrap_or(""));
        let mountpoint = mountpoint.as_str();
        std::fs::create_dir_all(mountpoint).map_err(|e| ZfsError {
            action: format!("zfs {action}"),
            detail: "exit status: 1".into(),
            stderr: format!("cannot mount '{mountpoint}': {e}\n"),
        })?;
        st.log.push(format!("create-meta {dataset} {mountpoint}"));
        let guid = 1000 + st.datasets.len() as u64;
        st.datasets.insert(
            dataset.to_string(),
            MemDataset {
                kind: DatasetKind::Filesystem,
                guid,
                snapshots: Vec::new(),
                resume_token: None,
                partial: Vec::new(),
                unmountable: false,
            },
        );
        st.mounts
            .insert(dataset.to_string(), (mountpoint.to_owned(), true));
        Ok(())
    }

    fn mount_state(&self, dataset: &DatasetName) -> Result<Option<MountState>, ZfsError> {
        let st = self.state();
        if !st.datasets.contains_key(dataset.as_str()) {
            return Ok(None);
        }
        Ok(Some(match st.mounts.get(dataset.as_str()) {
            Some((mountpoint, mounted)) => MountState {
                mounted: *mounted,
                mountpoint: mountpoint.clone(),
            },
            None => MountState {
                mounted: false,
                mountpoint: "none".into(),
            },
        }))
    }

    fn mount(&self, dataset: &DatasetName) -> Result<(), ZfsError> {
        let mut st = self.state();
        st.log.push(format!("mount {dataset}"));
        match st.mounts.get_mut(dataset.as_str()) {
            Some((_, mounted)) => {
                *mounted = true;
                Ok(())
            }
            None => Err(ZfsError {
                action: format!("zfs mount {dataset}"),
                detail: "exit status: 1".into(),
                stderr: format!("cannot mount '{dataset}': no mountpoint set\n"),
            }),
        }
    }

    fn start_send(&self, snapshot: &SnapshotName) -> Result<Box<dyn SendProcess>, ZfsError> {
        let mut st = self.state();
        st.log
            .push(crate::zfs::read_back_send_argv(snapshot).join(" "));
        let Some(stream) = st.send_streams.get(snapshot.as_str()).cloned() else {
            return Err(missing(
                format!("zfs send -L {snapshot}"),
                snapshot.as_str(),
            ));
        };
        let failure = st.fail_next_send.take();
        Ok(Box::new(MemSend {
            stream: Cursor::new(stream),
            failure,
            killed: false,
        }))
    }
}

struct MemSend {
    stream: Cursor<Vec<u8>>,
    failure: Option<String>,
    killed: bool,
}

impl SendProcess for MemSend {
    fn stdout(&mut self) -> &mut dyn Read {
        &mut self.stream
    }

    fn kill(&mut self) {
        self.killed = true;
    }

    fn finish(self: Box<Self>) -> ReceiveExit {
        match (self.killed, self.failure) {
            (true, _) => ReceiveExit {
                success: false,
                status: "signal: 9 (SIGKILL)".into(),
                stderr: String::new(),
            },
            (false, Some(stderr)) => fail(stderr),
            (false, None) => ReceiveExit {
                success: true,
                status: "exit status: 0".into(),
                stderr: String::new(),
            },
        }
    }
}

struct MemReceive {
    zfs: MemoryZfs,
    args: ReceiveArgs,
    bytes: Vec<u8>,
    failure: Option<PlannedFailure>,
}

impl Write for MemReceive {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(f) = &self.failure {
            if self.bytes.len() >= f.after_bytes {
                return Err(io::Error::from(io::ErrorKind::BrokenPipe));
            }
            let room = f.after_bytes - self.bytes.len();
            self.bytes.extend_from_slice(&buf[..buf.len().min(room)]);
            return Ok(buf.len().min(room));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn fail(stderr: impl Into<String>) -> ReceiveExit {
    ReceiveExit {
        success: false,
        status: "exit status: 1".into(),
        stderr: stderr.into(),
    }
}

impl ReceiveProcess for MemReceive {
    fn stdin(&mut self) -> &mut dyn Write {
        self
    }

    fn finish(self: Box<Self>) -> ReceiveExit {
        let MemReceive {
            zfs,
            args,
            bytes,
            failure,
        } = *self;
        let mut st = zfs.state();
        st.received_streams.push(bytes.clone());
        if let Some(f) = failure {
            return fail(f.stderr);
        }
        let dest = args.target.dataset().as_str().to_owned();
        let label = args.target.label().as_str().to_owned();
        let existing = st.datasets.get(&dest).cloned();
        let mut stream = bytes;
        if args.resuming {
            match &existing {
                Some(ds) if ds.resume_token.is_some() => {
                    let mut all = ds.partial.clone();
                    all.extend_from_slice(&stream);
                    stream = all;
                }
                _ => {
                    return fail(
                        "cannot receive resume stream: kernel modules must be upgraded to receive this stream.\n",
                    )
                }
            }
        }
        if stream.len() < FAKE_HEADER_LEN || &stream[..8] != FAKE_MAGIC {
            return fail("cannot receive: invalid stream (bad magic number)\n");
        }
        let toguid = u64::from_le_bytes(stream[8..16].try_into().expect("8 bytes"));
        let fromguid = u64::from_le_bytes(stream[16..24].try_into().expect("8 bytes"));
        if !args.resuming {
            match (&existing, fromguid) {
                (Some(ds), _) if ds.resume_token.is_some() => {
                    return fail(format!(
                        "cannot receive: destination {dest} contains partially-complete state from \"zfs receive -s\".\n"
                    ))
                }
                (Some(_), 0) => {
                    return fail(format!(
                        "cannot receive new filesystem stream: destination '{dest}' exists\nmust specify -F to overwrite it\n"
                    ))
                }
                (Some(ds), from)
                    if args.origin.is_none() && ds.snapshots.last().map(|s| s.1) != Some(from) =>
                {
                    return fail(format!(
                        "cannot receive incremental stream: most recent snapshot of {dest} does not\nmatch incremental source\n"
                    ));
                }
                (None, from) if from != 0 && args.origin.is_none() => {
                    return fail(format!(
                        "cannot receive incremental stream: destination '{dest}' does not exist\n"
                    ))
                }
                _ => {}
            }
        }
        let complete = stream.ends_with(FAKE_TRAILER);
        st.next_txg += 1;
        let txg = st.next_txg;
        let ds = st.datasets.entry(dest.clone()).or_insert(MemDataset {
            kind: args.kind,
            guid: toguid ^ 0x5a5a,
            snapshots: Vec::new(),
            resume_token: None,
            partial: Vec::new(),
            unmountable: false,
        });
        if complete {
            ds.snapshots.push((label, toguid, txg));
            ds.resume_token = None;
            ds.partial.clear();
            return ReceiveExit {
                success: true,
                status: "exit status: 0".into(),
                stderr: String::new(),
            };
        }
        let token = encode_resume_token(&ResumeToken {
            object: 1,
            offset: stream.len() as u64,
            bytes: stream.len() as u64,
            fromguid: (fromguid != 0).then_some(fromguid),
            ..ResumeToken::new(args.target.clone(), toguid)
        });
        ds.resume_token = Some(token.clone());
        ds.partial = stream;
        fail(format!(
            "cannot receive new filesystem stream: checksum mismatch or incomplete stream.\nPartially received snapshot is saved.\nA resuming stream can be generated on the sending system by running:\n    zfs send -t {token}\n"
        ))
    }
}
