//! The seam between the agent's logic and the `zfs` command.
//!
//! [`SystemZfs`] runs `zfs` (resolved from PATH) with a fixed argv built from validated names,
//! never through a shell, with stdin and stdout of every child detached from the agent's own
//! (those carry the protocol), `LC_ALL=C` so stderr can be classified, and stderr read on a
//! thread with a bound so a chatty child can never deadlock us.

use qzb_protocol::text::quoted;
use std::fmt;
use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread::{self, JoinHandle};

use qzb_protocol::{
    DatasetInfo, DatasetKind, DatasetName, InventoryReply, SnapshotInfo, SnapshotName,
};

/// How much of a child's stderr is kept (the rest is read and dropped).
pub const MAX_STDERR_CAPTURE: usize = 64 << 10;
/// Largest `zfs list` output accepted.
const MAX_LIST_OUTPUT: usize = 64 << 20;

/// A `zfs` command failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZfsError {
    /// What we tried, e.g. "zfs create -u -o canmount=off pool/a".
    pub action: String,
    /// Exit status or spawn error.
    pub detail: String,
    /// Captured stderr, as printed.
    pub stderr: String,
}

impl fmt::Display for ZfsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed ({})", self.action, self.detail)?;
        if !self.stderr.trim().is_empty() {
            write!(f, ": {}", self.stderr.trim())?;
        }
        Ok(())
    }
}

impl std::error::Error for ZfsError {}

/// What `zfs receive` should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiveArgs {
    /// `destination@label`.
    pub target: SnapshotName,
    pub kind: DatasetKind,
    pub origin: Option<SnapshotName>,
    /// The stream is a `zfs send -t` resume stream.
    pub resuming: bool,
    /// Pass the `-o` options on resume streams too (see [`receive_argv`]).
    pub properties_on_resume: bool,
}

/// The argv (after `zfs`) for a receive.
///
/// `-s` keeps resumable state on interruption, `-u` never mounts. Filesystems get
/// `canmount=noauto` so a received dataset can never be mounted over a system path in the
/// backup qube; volumes get `volmode=none` so udev does not grab zvols mid-receive; clone
/// streams get `origin=`. On resume streams libzfs treats a given origin like the original
/// receive did and sets `-o` properties as usual (read from `zfs_receive_one`, not yet
/// verified on every ZFS version), so by default the same options are passed; with
/// `properties_on_resume = false` they are left out.
pub fn receive_argv(args: &ReceiveArgs) -> Vec<String> {
    let mut argv: Vec<String> = vec!["receive".into(), "-s".into(), "-u".into()];
    if !args.resuming || args.properties_on_resume {
        argv.push("-o".into());
        argv.push(match args.kind {
            DatasetKind::Filesystem => "canmount=noauto".into(),
            DatasetKind::Volume => "volmode=none".into(),
        });
        if let Some(origin) = &args.origin {
            argv.push("-o".into());
            argv.push(format!("origin={origin}"));
        }
    }
    // The destination dataset, never `dataset@snap`: zfs refuses a snapshot name for a
    // multi-snapshot (-I) stream, and the stream names its snapshots itself. The agent checks
    // the expected snapshot's guid afterwards.
    argv.push(args.target.dataset().as_str().to_owned());
    argv
}

/// How a receive ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiveExit {
    pub success: bool,
    /// Exit status in words ("exit status 1", "signal 9").
    pub status: String,
    pub stderr: String,
}

/// A running `zfs send` (the agent's own, for a read-back).
pub trait SendProcess {
    /// The stream.
    fn stdout(&mut self) -> &mut dyn Read;
    /// Stops it (after the read-back failed); `finish` still reaps it.
    fn kill(&mut self);
    /// Waits for it to exit.
    fn finish(self: Box<Self>) -> ReceiveExit;
}

/// Where a filesystem is mounted, as `zfs get mounted,mountpoint` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountState {
    pub mounted: bool,
    /// The `mountpoint` property (a path, `none` or `legacy`).
    pub mountpoint: String,
}

/// The argv (after `zfs`) that creates the agent's metadata filesystem: mounted at
/// `mountpoint` whatever the root's own mountpoint is (`none` and `legacy` included), and no
/// programs, setuid files or device nodes honoured on it.
pub fn create_meta_argv(dataset: &DatasetName, mountpoint: &str) -> Vec<String> {
    strings(&[
        "create",
        "-o",
        &format!("mountpoint={mountpoint}"),
        "-o",
        "canmount=on",
        "-o",
        "exec=off",
        "-o",
        "setuid=off",
        "-o",
        "devices=off",
        dataset.as_str(),
    ])
}

/// The argv (after `zfs`) of a read-back's stream: a full stream of the snapshot with large
/// blocks kept whole (`-L`), and without `-c`/`-e`/`-w`, so every WRITE payload is the plain
/// logical block.
pub fn read_back_send_argv(snapshot: &SnapshotName) -> Vec<String> {
    strings(&["send", "-L", snapshot.as_str()])
}

/// A running `zfs receive`.
pub trait ReceiveProcess {
    /// Where the verified stream goes.
    fn stdin(&mut self) -> &mut dyn Write;
    /// Closes stdin (so an incomplete stream becomes resumable partial state) and waits.
    fn finish(self: Box<Self>) -> ReceiveExit;
}

/// Everything the agent needs from ZFS.
pub trait Zfs {
    /// Datasets and snapshots under `root` (inclusive) and `root`'s free space.
    fn inventory(&self, root: &DatasetName) -> Result<InventoryReply, ZfsError>;
    fn dataset_exists(&self, dataset: &DatasetName) -> Result<bool, ZfsError>;
    /// `zfs create -u -o canmount=off DATASET` (one level; the caller walks down).
    fn create_unmountable(&self, dataset: &DatasetName) -> Result<(), ZfsError>;
    /// `zfs get guid`; `None` if the snapshot does not exist.
    fn snapshot_guid(&self, snapshot: &SnapshotName) -> Result<Option<u64>, ZfsError>;
    /// `receive_resume_token`; `None` if there is no partial state (or no dataset).
    fn resume_token(&self, dataset: &DatasetName) -> Result<Option<String>, ZfsError>;
    /// `zfs receive -A DATASET`.
    fn abort_receive(&self, dataset: &DatasetName) -> Result<(), ZfsError>;
    fn start_receive(&self, args: &ReceiveArgs) -> Result<Box<dyn ReceiveProcess>, ZfsError>;
    /// `zfs create` of the agent's metadata filesystem ([`create_meta_argv`]).
    fn create_meta(&self, dataset: &DatasetName, mountpoint: &str) -> Result<(), ZfsError>;
    /// `zfs get mounted,mountpoint`; `None` if the dataset does not exist.
    fn mount_state(&self, dataset: &DatasetName) -> Result<Option<MountState>, ZfsError>;
    /// `zfs mount DATASET`.
    fn mount(&self, dataset: &DatasetName) -> Result<(), ZfsError>;
    /// Starts `zfs send` of a snapshot for a read-back ([`read_back_send_argv`]).
    fn start_send(&self, snapshot: &SnapshotName) -> Result<Box<dyn SendProcess>, ZfsError>;
}

/// Reads `reader` to the end on a thread, keeping at most `cap` bytes; the rest is drained so
/// the writer never blocks on a full pipe.
pub fn capture_bounded<R: Read + Send + 'static>(reader: R, cap: usize) -> JoinHandle<String> {
    thread::spawn(move || {
        String::from_utf8_lossy(&qzb_protocol::read_bounded(reader, cap)).into_owned()
    })
}

/// Runs the real `zfs`.
#[derive(Debug, Clone)]
pub struct SystemZfs {
    program: String,
}

impl Default for SystemZfs {
    fn default() -> Self {
        SystemZfs {
            program: "zfs".into(),
        }
    }
}

struct Output {
    success: bool,
    status: String,
    stdout: String,
    stderr: String,
}

fn does_not_exist(stderr: &str) -> bool {
    stderr.contains("does not exist")
}

impl SystemZfs {
    pub fn new() -> SystemZfs {
        SystemZfs::default()
    }

    /// Runs `program` instead of the `zfs` on PATH (tests run a fake by its path).
    pub fn with_program(program: impl Into<String>) -> SystemZfs {
        SystemZfs {
            program: program.into(),
        }
    }

    fn command(&self, args: &[String]) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(args)
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    }

    fn action(args: &[String]) -> String {
        format!("zfs {}", args.join(" "))
    }

    fn run(&self, args: &[String]) -> Result<Output, ZfsError> {
        let mut child = self
            .command(args)
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| ZfsError {
                action: Self::action(args),
                detail: format!("cannot run zfs: {e}"),
                stderr: String::new(),
            })?;
        let stderr = capture_bounded(child.stderr.take().expect("piped"), MAX_STDERR_CAPTURE);
        let mut stdout = Vec::new();
        let read = child
            .stdout
            .take()
            .expect("piped")
            .take(MAX_LIST_OUTPUT as u64 + 1)
            .read_to_end(&mut stdout);
        let too_big = stdout.len() > MAX_LIST_OUTPUT;
        if too_big {
            let _ = child.kill();
        }
        let status = child.wait();
        let stderr = stderr.join().unwrap_or_default();
        let fail = |detail: String| ZfsError {
            action: Self::action(args),
            detail,
            stderr: stderr.clone(),
        };
        read.map_err(|e| fail(format!("reading output: {e}")))?;
        if too_big {
            return Err(fail(format!("output larger than {MAX_LIST_OUTPUT} bytes")));
        }
        let status = status.map_err(|e| fail(format!("waiting: {e}")))?;
        Ok(Output {
            success: status.success(),
            status: status.to_string(),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr,
        })
    }

    fn run_ok(&self, args: &[String]) -> Result<Output, ZfsError> {
        let out = self.run(args)?;
        if !out.success {
            return Err(ZfsError {
                action: Self::action(args),
                detail: out.status,
                stderr: out.stderr,
            });
        }
        Ok(out)
    }

    /// `zfs get -H -p -o value PROP NAME`: `None` if the dataset does not exist.
    fn get_value(&self, prop: &str, name: &str) -> Result<Option<String>, ZfsError> {
        let args = strings(&["get", "-H", "-p", "-o", "value", prop, name]);
        let out = self.run(&args)?;
        if !out.success {
            if does_not_exist(&out.stderr) {
                return Ok(None);
            }
            return Err(ZfsError {
                action: Self::action(&args),
                detail: out.status,
                stderr: out.stderr,
            });
        }
        Ok(Some(out.stdout.trim_end_matches('\n').to_owned()))
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

fn parse_u64(field: &str, what: &str, line: &str) -> Result<u64, String> {
    field.parse().map_err(|_| {
        format!(
            "bad {what} {} in zfs output line {}",
            quoted(field),
            quoted(line)
        )
    })
}

/// Parses `zfs list -H -p -o name,type,guid,receive_resume_token,available` and
/// `zfs list -H -p -t snapshot -o name,guid,createtxg` output. Names that are not valid (they
/// A name on the pool that our name rules refuse (e.g. a component starting with '-') is left
/// out of the inventory, with a line in the agent's log, rather than failing the whole list.
fn skip_unusable(what: &str, name: &str) {
    eprintln!(
        "qubes-zfs-backup-receiver: skipping {what} with unusable name {}",
        quoted(name)
    );
}

/// cannot be backup targets anyway) are skipped with a warning on stderr.
pub fn parse_inventory(
    root: &DatasetName,
    datasets_out: &str,
    snapshots_out: &str,
) -> Result<InventoryReply, String> {
    let mut reply = InventoryReply {
        root: root.clone(),
        available: 0,
        datasets: Vec::new(),
    };
    let mut found_root = false;
    for line in datasets_out.lines().filter(|l| !l.is_empty()) {
        let fields: Vec<&str> = line.split('\t').collect();
        let [name, kind, guid, token, available] = fields[..] else {
            return Err(format!("unexpected zfs list line {}", quoted(line)));
        };
        let Ok(name) = DatasetName::parse(name) else {
            skip_unusable("dataset", name);
            continue;
        };
        let kind = match kind {
            "filesystem" => DatasetKind::Filesystem,
            "volume" => DatasetKind::Volume,
            _ => return Err(format!("unexpected dataset type in {}", quoted(line))),
        };
        if name == *root {
            found_root = true;
            reply.available = parse_u64(available, "available", line)?;
        } else if !name.is_strictly_under(root) {
            return Err(format!("zfs listed {name} outside {root}"));
        }
        reply.datasets.push(DatasetInfo {
            name,
            kind,
            guid: parse_u64(guid, "guid", line)?,
            receive_resume_token: (token != "-" && !token.is_empty()).then(|| token.to_owned()),
            snapshots: Vec::new(),
        });
    }
    if !found_root {
        return Err(format!("zfs list did not list the root {root}"));
    }
    for line in snapshots_out.lines().filter(|l| !l.is_empty()) {
        let fields: Vec<&str> = line.split('\t').collect();
        let [name, guid, createtxg] = fields[..] else {
            return Err(format!("unexpected zfs list line {}", quoted(line)));
        };
        let Ok(name) = SnapshotName::parse(name) else {
            skip_unusable("snapshot", name);
            continue;
        };
        let info = SnapshotInfo {
            guid: parse_u64(guid, "guid", line)?,
            createtxg: parse_u64(createtxg, "createtxg", line)?,
            name,
        };
        if let Some(ds) = reply
            .datasets
            .iter_mut()
            .find(|d| d.name.as_str() == info.name.dataset().as_str())
        {
            ds.snapshots.push(info);
        }
    }
    for ds in &mut reply.datasets {
        ds.snapshots.sort_by_key(|s| s.createtxg);
    }
    Ok(reply)
}

impl Zfs for SystemZfs {
    fn inventory(&self, root: &DatasetName) -> Result<InventoryReply, ZfsError> {
        let datasets = self.run_ok(&strings(&[
            "list",
            "-H",
            "-p",
            "-r",
            "-t",
            "filesystem,volume",
            "-o",
            "name,type,guid,receive_resume_token,available",
            root.as_str(),
        ]))?;
        let snapshots = self.run_ok(&strings(&[
            "list",
            "-H",
            "-p",
            "-r",
            "-t",
            "snapshot",
            "-o",
            "name,guid,createtxg",
            root.as_str(),
        ]))?;
        parse_inventory(root, &datasets.stdout, &snapshots.stdout).map_err(|e| ZfsError {
            action: format!("zfs list -r {root}"),
            detail: e,
            stderr: String::new(),
        })
    }

    fn dataset_exists(&self, dataset: &DatasetName) -> Result<bool, ZfsError> {
        let args = strings(&["list", "-H", "-o", "name", dataset.as_str()]);
        let out = self.run(&args)?;
        if out.success {
            return Ok(true);
        }
        if does_not_exist(&out.stderr) {
            return Ok(false);
        }
        Err(ZfsError {
            action: Self::action(&args),
            detail: out.status,
            stderr: out.stderr,
        })
    }

    fn create_unmountable(&self, dataset: &DatasetName) -> Result<(), ZfsError> {
        self.run_ok(&strings(&[
            "create",
            "-u",
            "-o",
            "canmount=off",
            dataset.as_str(),
        ]))
        .map(|_| ())
    }

    fn snapshot_guid(&self, snapshot: &SnapshotName) -> Result<Option<u64>, ZfsError> {
        match self.get_value("guid", snapshot.as_str())? {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| ZfsError {
                action: format!("zfs get guid {snapshot}"),
                detail: format!("unexpected value {}", quoted(&v)),
                stderr: String::new(),
            }),
        }
    }

    fn resume_token(&self, dataset: &DatasetName) -> Result<Option<String>, ZfsError> {
        Ok(self
            .get_value("receive_resume_token", dataset.as_str())?
            .filter(|v| v != "-" && !v.is_empty()))
    }

    fn abort_receive(&self, dataset: &DatasetName) -> Result<(), ZfsError> {
        self.run_ok(&strings(&["receive", "-A", dataset.as_str()]))
            .map(|_| ())
    }

    fn start_receive(&self, args: &ReceiveArgs) -> Result<Box<dyn ReceiveProcess>, ZfsError> {
        let argv = receive_argv(args);
        let mut child = self
            .command(&argv)
            .stdin(Stdio::piped())
            .spawn()
            .map_err(|e| ZfsError {
                action: Self::action(&argv),
                detail: format!("cannot run zfs: {e}"),
                stderr: String::new(),
            })?;
        let stderr = capture_bounded(child.stderr.take().expect("piped"), MAX_STDERR_CAPTURE);
        let stdin = child.stdin.take().expect("piped");
        Ok(Box::new(SystemReceive {
            child,
            stdin: Some(stdin),
            stderr,
        }))
    }

    fn create_meta(&self, dataset: &DatasetName, mountpoint: &str) -> Result<(), ZfsError> {
        self.run_ok(&create_meta_argv(dataset, mountpoint))
            .map(|_| ())
    }

    fn mount_state(&self, dataset: &DatasetName) -> Result<Option<MountState>, ZfsError> {
        let Some(value) = self.get_value("mounted,mountpoint", dataset.as_str())? else {
            return Ok(None);
        };
        let mut lines = value.lines();
        match (lines.next(), lines.next(), lines.next()) {
            (Some(mounted @ ("yes" | "no")), Some(mountpoint), None) => Ok(Some(MountState {
                mounted: mounted == "yes",
                mountpoint: mountpoint.to_owned(),
            })),
            _ => Err(ZfsError {
                action: format!("zfs get mounted,mountpoint {dataset}"),
                detail: format!("unexpected output {}", quoted(&value)),
                stderr: String::new(),
            }),
        }
    }

    fn mount(&self, dataset: &DatasetName) -> Result<(), ZfsError> {
        self.run_ok(&strings(&["mount", dataset.as_str()]))
            .map(|_| ())
    }

    fn start_send(&self, snapshot: &SnapshotName) -> Result<Box<dyn SendProcess>, ZfsError> {
        let argv = read_back_send_argv(snapshot);
        let mut child = self
            .command(&argv)
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| ZfsError {
                action: Self::action(&argv),
                detail: format!("cannot run zfs: {e}"),
                stderr: String::new(),
            })?;
        let stderr = capture_bounded(child.stderr.take().expect("piped"), MAX_STDERR_CAPTURE);
        let stdout = child.stdout.take().expect("piped");
        Ok(Box::new(SystemSend {
            child,
            stdout,
            stderr,
        }))
    }
}

struct SystemSend {
    child: Child,
    stdout: std::process::ChildStdout,
    stderr: JoinHandle<String>,
}

impl SendProcess for SystemSend {
    fn stdout(&mut self) -> &mut dyn Read {
        &mut self.stdout
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
    }

    fn finish(mut self: Box<Self>) -> ReceiveExit {
        let status = self.child.wait();
        let stderr = self.stderr.join().unwrap_or_default();
        match status {
            Ok(status) => ReceiveExit {
                success: status.success(),
                status: status.to_string(),
                stderr,
            },
            Err(e) => ReceiveExit {
                success: false,
                status: format!("cannot wait for zfs send: {e}"),
                stderr,
            },
        }
    }
}

struct SystemReceive {
    child: Child,
    stdin: Option<ChildStdin>,
    stderr: JoinHandle<String>,
}

impl ReceiveProcess for SystemReceive {
    fn stdin(&mut self) -> &mut dyn Write {
        self.stdin.as_mut().expect("stdin is open until finish")
    }

    fn finish(mut self: Box<Self>) -> ReceiveExit {
        drop(self.stdin.take());
        let status = self.child.wait();
        let stderr = self.stderr.join().unwrap_or_default();
        match status {
            Ok(status) => ReceiveExit {
                success: status.success(),
                status: status.to_string(),
                stderr,
            },
            Err(e) => ReceiveExit {
                success: false,
                status: format!("cannot wait for zfs receive: {e}"),
                stderr,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(s: &str) -> SnapshotName {
        SnapshotName::parse(s).unwrap()
    }

    fn args(kind: DatasetKind, resuming: bool, on_resume: bool) -> ReceiveArgs {
        ReceiveArgs {
            target: snap("bpool/r/vm@s2"),
            kind,
            origin: None,
            resuming,
            properties_on_resume: on_resume,
        }
    }

    #[test]
    fn receive_argv_never_mounts_and_tames_each_kind() {
        assert_eq!(
            receive_argv(&args(DatasetKind::Filesystem, false, true)),
            ["receive", "-s", "-u", "-o", "canmount=noauto", "bpool/r/vm"]
        );
        assert_eq!(
            receive_argv(&args(DatasetKind::Volume, false, true)),
            ["receive", "-s", "-u", "-o", "volmode=none", "bpool/r/vm"]
        );
        let clone = ReceiveArgs {
            origin: Some(snap("bpool/r/tpl@s1")),
            ..args(DatasetKind::Volume, false, true)
        };
        assert_eq!(
            receive_argv(&clone),
            [
                "receive",
                "-s",
                "-u",
                "-o",
                "volmode=none",
                "-o",
                "origin=bpool/r/tpl@s1",
                "bpool/r/vm"
            ]
        );
    }

    #[test]
    fn receive_argv_on_resume_follows_the_configuration() {
        assert_eq!(
            receive_argv(&args(DatasetKind::Volume, true, true)),
            ["receive", "-s", "-u", "-o", "volmode=none", "bpool/r/vm"]
        );
        assert_eq!(
            receive_argv(&args(DatasetKind::Volume, true, false)),
            ["receive", "-s", "-u", "bpool/r/vm"]
        );
    }

    #[test]
    fn parses_real_format_zfs_list_output() {
        let root = DatasetName::parse("bpool/qzb").unwrap();
        let datasets = "bpool/qzb\tfilesystem\t111\t-\t5368709120\n\
                        bpool/qzb/vm-a\tvolume\t222\t1-abc-10-00\t5368709120\n\
                        bpool/qzb/bad%recv\tfilesystem\t9\t-\t1\n";
        let snapshots = "bpool/qzb/vm-a@s2\t4\t20\nbpool/qzb/vm-a@s1\t3\t10\n";
        let inv = parse_inventory(&root, datasets, snapshots).unwrap();
        assert_eq!(inv.available, 5_368_709_120);
        assert_eq!(inv.datasets.len(), 2);
        let vm = &inv.datasets[1];
        assert_eq!(vm.kind, DatasetKind::Volume);
        assert_eq!(vm.receive_resume_token.as_deref(), Some("1-abc-10-00"));
        let labels: Vec<_> = vm
            .snapshots
            .iter()
            .map(|s| s.name.label().as_str())
            .collect();
        assert_eq!(labels, ["s1", "s2"]);
    }

    #[test]
    fn inventory_parser_refuses_malformed_output() {
        let root = DatasetName::parse("bpool/qzb").unwrap();
        assert!(parse_inventory(&root, "bpool/qzb\tfilesystem\t1\t-\n", "").is_err());
        assert!(parse_inventory(&root, "bpool/qzb\tfilesystem\tx\t-\t1\n", "").is_err());
        assert!(parse_inventory(&root, "bpool/other\tfilesystem\t1\t-\t1\n", "").is_err());
        assert!(parse_inventory(&root, "", "").is_err());
    }

    #[test]
    fn bounded_capture_keeps_the_limit_and_drains_the_rest() {
        let data = vec![b'x'; 100_000];
        let kept = capture_bounded(std::io::Cursor::new(data), 1000)
            .join()
            .unwrap();
        assert_eq!(kept.len(), 1000);
    }
}
