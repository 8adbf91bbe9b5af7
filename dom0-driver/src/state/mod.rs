//! The imported backups: one JSON state file per backup in the metadata directory.
//!
//! Written atomically (temp file, fsync, rename, directory fsync) after every change, so a
//! `kill -9` at any moment leaves either the old or the new file, never a torn one. The raw config
//! text is kept and re-checked on load, so the state never disagrees with the rules of the binary
//! reading it.

use crate::config::{self, BackupName, Config};
use crate::error::{Error, Result};
use crate::plan::Target;
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

pub mod chains;

pub const FORMAT: &str = "qubes-zfs-backup-state";
pub const VERSION: u32 = 1;
/// A state file larger than this is refused rather than read (a plan of 100,000 targets is
/// about 60 MiB).
const MAX_STATE_BYTES: u64 = 256 * 1024 * 1024;

/// Where a target's snapshot stands on the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotState {
    /// It existed when checked.
    Exists,
    /// It does not exist yet; `snapshot` may create it.
    Missing,
    /// Created by `snapshot`.
    Created,
}

/// Where a target's send stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SendState {
    Pending,
    /// Interrupted: the receiver may hold a resumable partial receive.
    Partial,
    Done,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetState {
    #[serde(flatten)]
    pub target: Target,
    pub snapshot_state: SnapshotState,
    pub size_estimate: Option<u64>,
    pub send_state: SendState,
    /// The guid the receiver reported for the received snapshot.
    pub received_guid: Option<u64>,
    pub last_error: Option<String>,
    /// The last stream sent for this target (what a set index records for a filesystem).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_stream: Option<SentStream>,
    /// For a zvol sent by this version: whether its manifest is on the medium.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<ManifestState>,
}

/// Where a sent zvol snapshot's manifest is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ManifestState {
    /// On the medium: `verify` can read the snapshot back and check it.
    Stored,
    /// Made, but still in dom0's spool (storing it failed): the next send stores it.
    Pending,
    /// None: sent without a key, or as an incremental whose base has no manifest.
    Missing,
}

/// What one successful stream carried: its length and the end frame's stream hash (hex).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentStream {
    pub bytes: u64,
    pub blake3: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackupState {
    pub format: String,
    pub version: u32,
    pub name: BackupName,
    pub imported_at: String,
    pub config_path: String,
    pub raw_config: String,
    pub targets: Vec<TargetState>,
    /// The set index the last authenticated `send` stored: `verify` requires the newest
    /// index on the medium to be this one (a receiver cannot roll the set back unseen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_set: Option<LastSet>,
}

/// A set index stored on the medium.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastSet {
    /// The medium's id (receiver qube and root).
    pub medium: String,
    /// The index's `created` (seconds since the epoch; also in its blob name).
    pub created: u64,
    /// blake3 of the sealed index, hex.
    pub blake3: String,
}

impl BackupState {
    pub fn new(config: &Config, config_path: &str, raw_config: &str, targets: Vec<Target>) -> Self {
        BackupState {
            format: FORMAT.into(),
            version: VERSION,
            name: config.name.clone(),
            imported_at: utc_now(),
            config_path: config_path.into(),
            raw_config: raw_config.into(),
            targets: targets
                .into_iter()
                .map(|t| TargetState {
                    snapshot_state: if t.guid.is_some() {
                        SnapshotState::Exists
                    } else {
                        SnapshotState::Missing
                    },
                    target: t,
                    size_estimate: None,
                    send_state: SendState::Pending,
                    received_guid: None,
                    last_error: None,
                    sent_stream: None,
                    manifest: None,
                })
                .collect(),
            last_set: None,
        }
    }

    /// Takes over from the import this one replaces what is still true: a target the old import
    /// sent (the same snapshot, by name and guid) is on the receiver, so it stays done; one it
    /// was sending when interrupted resumes, if the stream is still the same (same incremental
    /// source and flavour). Everything else starts afresh. Returns (done, resuming) counts.
    pub fn carry_over(&mut self, old: &BackupState) -> (usize, usize) {
        // The medium still holds the old import's newest index.
        self.last_set = old.last_set.clone();
        let (mut done, mut resuming) = (0, 0);
        for t in &mut self.targets {
            let Some(before) = old.targets.iter().find(|o| {
                o.target.snapshot == t.target.snapshot
                    && o.target.guid.is_some()
                    && o.target.guid == t.target.guid
            }) else {
                continue;
            };
            match before.send_state {
                SendState::Done => {
                    t.send_state = SendState::Done;
                    t.received_guid = before.received_guid;
                    t.sent_stream = before.sent_stream.clone();
                    t.manifest = before.manifest;
                    done += 1;
                }
                SendState::Partial
                    if before.target.incremental_source == t.target.incremental_source
                        && before.target.progressive == t.target.progressive =>
                {
                    t.send_state = SendState::Partial;
                    resuming += 1;
                }
                _ => {}
            }
            t.size_estimate = t.size_estimate.or(before.size_estimate);
        }
        (done, resuming)
    }

    /// The config this backup was imported from, checked again by today's rules.
    pub fn config(&self) -> Result<Config> {
        config::parse(&self.raw_config)
            .map(|(c, _)| c)
            .map_err(|errors| {
                Error::State(format!(
                    "the stored config of backup '{}' no longer passes the checks: {}",
                    self.name,
                    errors.first().map(|e| e.to_string()).unwrap_or_default()
                ))
            })
    }
}

/// The metadata directory.
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Store { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    pub fn exists(&self, name: &str) -> bool {
        BackupName::parse(name).is_ok() && self.path(name).exists()
    }

    /// Creates the directory (mode 0700) if it is missing.
    pub fn ensure_dir(&self) -> Result<()> {
        if self.dir.is_dir() {
            return Ok(());
        }
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(&self.dir).map_err(|e| {
            Error::State(format!(
                "cannot create metadata directory {}: {e}",
                self.dir.display()
            ))
        })
    }

    pub fn load(&self, name: &str) -> Result<BackupState> {
        let name = checked_name(name)?;
        let path = self.path(&name);
        let file = File::open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::Refused(format!(
                    "no backup named '{name}' is imported (looked for {}); import a config first, or see `list`",
                    path.display()
                ))
            } else {
                Error::State(format!("cannot open {}: {e}", path.display()))
            }
        })?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len > MAX_STATE_BYTES {
            return Err(Error::State(format!(
                "{} is {len} bytes, larger than any state file we write; refusing to read it",
                path.display()
            )));
        }
        let value: serde_json::Value = serde_json::from_reader(std::io::BufReader::new(file))
            .map_err(|e| Error::State(format!("{} is corrupt (not valid JSON: {e}); restore it from a copy or import the config again with --replace", path.display())))?;
        let format = value.get("format").and_then(|v| v.as_str());
        let version = value.get("version").and_then(|v| v.as_u64());
        if format != Some(FORMAT) {
            return Err(Error::State(format!(
                "{} is not a qubes-zfs-backup state file",
                path.display()
            )));
        }
        match version {
            Some(v) if v == u64::from(VERSION) => {}
            Some(v) if v > u64::from(VERSION) => {
                return Err(Error::State(format!(
                    "{} was written by a newer qubes-zfs-backup (state format {v}; this one reads {VERSION}); upgrade before using it",
                    path.display()
                )))
            }
            _ => return Err(Error::State(format!("{} has an unknown state format version", path.display()))),
        }
        serde_json::from_value(value)
            .map_err(|e| Error::State(format!("{} is corrupt: {e}", path.display())))
    }

    /// Writes the state atomically.
    pub fn save(&self, state: &BackupState) -> Result<()> {
        self.ensure_dir()?;
        let path = self.path(&state.name);
        let text = serde_json::to_vec_pretty(state)
            .map_err(|e| Error::State(format!("cannot encode state: {e}")))?;
        write_atomic(&path, &text, 0o600)
            .map_err(|e| Error::State(format!("cannot write {}: {e}", path.display())))
    }

    /// Every imported backup, by name. A state file that cannot be read is listed with its error
    /// (it concerns only its own backup); only an unreadable directory is an error of the list.
    pub fn list(&self) -> Result<Vec<Listed>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(Error::State(format!(
                    "cannot read {}: {e}",
                    self.dir.display()
                )))
            }
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".json"))
                    .map(str::to_owned)
            })
            .filter(|n| BackupName::parse(n).is_ok())
            .collect();
        names.sort();
        Ok(names
            .into_iter()
            .map(|name| Listed {
                state: self.load(&name),
                name,
            })
            .collect())
    }

    /// Takes the backup's lock for the life of the returned guard; a second holder is refused.
    pub fn lock(&self, name: &str) -> Result<StateLock> {
        let name = checked_name(name)?;
        self.ensure_dir()?;
        let path = self.dir.join(format!("{name}.lock"));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::State(format!("cannot open lock file {}: {e}", path.display())))?;
        match file.try_lock() {
            Ok(()) => Ok(StateLock { _file: file }),
            Err(fs::TryLockError::WouldBlock) => Err(Error::Refused(format!(
                "backup '{name}' is in use by another qubes-zfs-backup process (lock {}); wait for it to finish",
                path.display()
            ))),
            Err(fs::TryLockError::Error(e)) => Err(Error::State(format!("cannot lock {}: {e}", path.display()))),
        }
    }
}

/// One entry of [`Store::list`]: a backup's name and its state, or why it cannot be read.
pub struct Listed {
    pub name: String,
    pub state: Result<BackupState>,
}

/// Removes a temporary file when dropped, unless [`TempFile::keep`] was called.
/// Writes `bytes` to `path` atomically and durably: a temporary file beside it (mode `mode`),
/// fsync, rename, fsync of the directory. A `kill -9` or a full disk at any moment leaves the old
/// file or the new one, never a torn one, and no temporary file after an error.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut opts = OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, mode);
    let written = opts.open(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|()| fs::rename(&tmp, path)) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    // The rename is durable only once the directory entry is.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Holds a backup's lock until dropped.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

/// A backup name checked before it becomes a path (the command line checks it first; this keeps
/// every other caller from touching a file outside the metadata directory).
fn checked_name(name: &str) -> Result<BackupName> {
    BackupName::parse(name)
        .map_err(|e| Error::Refused(format!("'{name}' is not a valid backup name: {e}")))
}

/// Now, as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format_utc(secs)
}

/// Formats seconds since the epoch as a UTC timestamp (civil-from-days, proleptic Gregorian).
pub fn format_utc(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formatting_matches_known_dates() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
    }

    fn sample() -> BackupState {
        let text = crate::config::tests_support::SEED_EXAMPLE;
        let (cfg, _) = config::parse(text).unwrap();
        BackupState::new(&cfg, "/tmp/b.yaml", text, Vec::new())
    }

    fn target(snap: &str, from: Option<&str>, guid: u64) -> Target {
        let name = |s: &str| qzb_protocol::names::SnapshotName::parse(s).unwrap();
        Target {
            snapshot: name(snap),
            kind: crate::system::inventory::DatasetKind::Volume,
            incremental_source: from.map(name),
            progressive: true,
            clone_origin: false,
            reason: crate::plan::Reason::Target,
            guid: Some(guid),
            object: None,
            depends_on: vec![],
        }
    }

    fn with_targets(targets: Vec<Target>, states: &[SendState]) -> BackupState {
        let mut s = sample();
        s.targets =
            BackupState::new(&s.config().unwrap(), "/tmp/b.yaml", &s.raw_config, targets).targets;
        for (t, st) in s.targets.iter_mut().zip(states) {
            t.send_state = *st;
        }
        s
    }

    #[test]
    fn a_replacing_import_keeps_what_was_sent_and_resumes_only_the_same_stream() {
        let old = with_targets(
            vec![
                target("p/a@s2", None, 1),
                target("p/b@s2", Some("p/b@s1"), 2),
                target("p/c@s2", Some("p/c@s1"), 3),
                target("p/d@s2", None, 4),
            ],
            &[
                SendState::Done,
                SendState::Partial,
                SendState::Partial,
                SendState::Done,
            ],
        );
        let mut new = with_targets(
            vec![
                target("p/a@s2", None, 1),
                // Same snapshot, same stream: the receiver's token still fits.
                target("p/b@s2", Some("p/b@s1"), 2),
                // Same snapshot, another stream: starts afresh.
                target("p/c@s2", None, 3),
                // Same name, but the snapshot was replaced (another guid): not what was sent.
                target("p/d@s2", None, 40),
            ],
            &[],
        );
        assert_eq!(new.carry_over(&old), (1, 1));
        let states: Vec<_> = new.targets.iter().map(|t| t.send_state).collect();
        assert_eq!(
            states,
            [
                SendState::Done,
                SendState::Partial,
                SendState::Pending,
                SendState::Pending
            ]
        );
    }

    #[test]
    fn state_round_trips_and_is_written_atomically() {
        let dir = std::env::temp_dir().join(format!("qzb-state-{}", std::process::id()));
        let store = Store::new(&dir);
        let s = sample();
        store.save(&s).unwrap();
        let back = store.load("mybackup1").unwrap();
        assert_eq!(back.raw_config, s.raw_config);
        assert_eq!(back.config().unwrap().name.as_str(), "mybackup1");
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("tmp"))
            .collect();
        assert!(leftovers.is_empty());
        assert_eq!(store.list().unwrap().len(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    fn tmp_files(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp-"))
            .collect()
    }

    #[test]
    fn a_failed_rename_removes_the_temporary_file() {
        // The rename fails when the state's name is taken by a non-empty directory; the write
        // and fsync before it succeeded, so a temporary file existed and must be gone.
        let dir = std::env::temp_dir().join(format!("qzb-state-rename-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let store = Store::new(&dir);
        fs::create_dir_all(dir.join("mybackup1.json/x")).unwrap();
        let e = store.save(&sample()).unwrap_err().to_string();
        assert!(
            e.contains("cannot write") && e.contains("mybackup1.json"),
            "{e}"
        );
        assert_eq!(tmp_files(&dir), Vec::<String>::new());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_state_file_is_listed_with_its_error_between_the_others() {
        let dir = std::env::temp_dir().join(format!("qzb-state-list-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let store = Store::new(&dir);
        store.save(&sample()).unwrap();
        fs::write(dir.join("broken.json"), b"{ trunc").unwrap();
        let all = store.list().unwrap();
        let names: Vec<_> = all.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["broken", "mybackup1"]);
        let err = all[0].state.as_ref().err().unwrap().to_string();
        assert!(err.contains("broken.json is corrupt"), "{err}");
        assert_eq!(all[1].state.as_ref().unwrap().name.as_str(), "mybackup1");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_write_killed_midway_leaves_the_previous_state_readable() {
        let dir = std::env::temp_dir().join(format!("qzb-state-crash-{}", std::process::id()));
        let store = Store::new(&dir);
        let s = sample();
        store.save(&s).unwrap();
        // A writer killed before its rename leaves only its temp file, possibly torn.
        let full = serde_json::to_vec_pretty(&s).unwrap();
        for cut in [0, 1, full.len() / 2, full.len() - 1] {
            fs::write(dir.join(".mybackup1.json.tmp-424242"), &full[..cut]).unwrap();
            let back = store.load("mybackup1").unwrap();
            assert_eq!(back.raw_config, s.raw_config);
            assert_eq!(store.list().unwrap().len(), 1, "temp files are not backups");
        }
        // The next save replaces the state whole.
        store.save(&s).unwrap();
        assert!(store.load("mybackup1").is_ok());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_or_newer_state_is_refused_clearly() {
        let dir = std::env::temp_dir().join(format!("qzb-state-bad-{}", std::process::id()));
        let store = Store::new(&dir);
        store.ensure_dir().unwrap();
        fs::write(dir.join("a.json"), b"{ truncated").unwrap();
        assert!(store.load("a").unwrap_err().to_string().contains("corrupt"));
        fs::write(
            dir.join("b.json"),
            br#"{"format":"qubes-zfs-backup-state","version":99}"#,
        )
        .unwrap();
        assert!(store.load("b").unwrap_err().to_string().contains("newer"));
        fs::write(dir.join("c.json"), br#"{"hello":1}"#).unwrap();
        assert!(store
            .load("c")
            .unwrap_err()
            .to_string()
            .contains("not a qubes-zfs-backup state file"));
        assert!(store
            .load("nope")
            .unwrap_err()
            .to_string()
            .contains("no backup named 'nope'"));
        assert!(store.load("../etc/passwd").is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn second_lock_holder_is_refused() {
        let dir = std::env::temp_dir().join(format!("qzb-state-lock-{}", std::process::id()));
        let store = Store::new(&dir);
        let first = store.lock("x").unwrap();
        assert!(store.lock("x").unwrap_err().to_string().contains("in use"));
        drop(first);
        assert!(store.lock("x").is_ok());
        fs::remove_dir_all(&dir).unwrap();
    }
}
