//! Support for black-box tests: finds the workspace's built binaries and sets up a fake system
//! (fake `zfs`, `qubesd-query`, `xl`, `qrexec-client` first on PATH) in a throwaway directory.
//!
//! The binaries are the ones `cargo test --workspace` builds into the target directory; run the
//! tests that way (or `cargo build --workspace` first).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("tests/blackbox sits two levels below the workspace root")
        .to_path_buf()
}

/// A binary built by this workspace, next to the running test in the target directory.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current test executable");
    // target/<profile>/deps/<test>-<hash> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run the tests with `cargo test --workspace` (or `cargo build --workspace` first)",
        path.display()
    );
    path
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Writes `bin/fake.env` atomically (a fake starting meanwhile reads the old or the new file).
fn write_env_file(bin: &Path, env: &BTreeMap<String, String>) {
    let text: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    let tmp = bin.join(".fake.env.tmp");
    std::fs::write(&tmp, text).expect("write fake.env");
    std::fs::rename(&tmp, bin.join("fake.env")).expect("rename fake.env");
}

/// A fake Qubes+ZFS system in a temporary directory, removed on drop.
pub struct FakeSystem {
    pub dir: PathBuf,
    pub bin: PathBuf,
    pub state: PathBuf,
    pub meta: PathBuf,
    /// What the fakes read from `bin/fake.env` (the driver clears its children's environment,
    /// so this file is how the fakes find their state and faults).
    fake_env: Mutex<BTreeMap<String, String>>,
}

impl FakeSystem {
    /// A fresh copy of `tests/fixtures/<fixture>`.
    pub fn new(fixture: &str) -> FakeSystem {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("qzb-bb-{}-{n}-{fixture}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let sys = FakeSystem {
            bin: dir.join("bin"),
            state: dir.join("state"),
            meta: dir.join("meta"),
            dir,
            fake_env: Mutex::new(BTreeMap::new()),
        };
        let fake = bin("qzb-fake");
        run_ok(Command::new(&fake).arg("install-links").arg(&sys.bin));
        run_ok(
            Command::new(&fake)
                .arg("init")
                .arg(workspace().join("tests/fixtures").join(fixture))
                .arg(&sys.state),
        );
        sys.set_fake_env("QZB_FAKE_ROOT", sys.state.display().to_string());
        sys.set_fake_env(
            "QZB_FAKE_AGENT",
            bin("qubes-zfs-backup-receiver").display().to_string(),
        );
        // The agent's receive lock, per test: tests running at once must not wait for each
        // other's receives.
        sys.set_fake_env(
            "QUBES_ZFS_BACKUP_RECEIVE_LOCK",
            sys.receive_lock().display().to_string(),
        );
        // Where the agent mounts its blob storage (the fake zfs "mounts" by making the dir).
        sys.set_fake_env(
            "QUBES_ZFS_BACKUP_META_BASE",
            sys.meta_base().display().to_string(),
        );
        sys
    }

    /// The agent's blob storage base on this system's backup qube.
    pub fn meta_base(&self) -> PathBuf {
        self.dir.join("agent-meta")
    }

    /// The passphrase [`FakeSystem::init_key`] sets.
    pub const PASSPHRASE: &'static str = "correct horse battery staple";

    /// Runs the driver with `input` on its stdin (a passphrase for `--passphrase-fd 0`).
    pub fn driver_with_input(&self, args: &[&str], input: &str) -> Run {
        let mut child = self
            .driver_command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the driver");
        let mut stdin = child.stdin.take().expect("stdin");
        // The driver may refuse before reading; a closed pipe then is fine.
        let _ = std::io::Write::write_all(&mut stdin, input.as_bytes());
        drop(stdin);
        Run::from(child.wait_with_output().expect("driver output"))
    }

    /// `key init` with [`FakeSystem::PASSPHRASE`] and the cheapest Argon2 parameters the
    /// binary accepts: from now on sends are authenticated and `verify` reads back.
    pub fn init_key(&self) {
        self.driver_with_input(
            &[
                "key",
                "init",
                "--passphrase-fd",
                "0",
                "--kdf-memory-mib",
                "8",
                "--kdf-passes",
                "1",
            ],
            &format!("{}\n", Self::PASSPHRASE),
        )
        .expect(0);
    }

    /// Where this system's receiver agent keeps its receive lock.
    pub fn receive_lock(&self) -> PathBuf {
        self.dir.join("receive.lock")
    }

    /// Sets a variable for every fake tool the driver runs from now on (fault injection:
    /// `QZB_FAKE_SEND_DIE_AFTER`, `QZB_HOSTILE`, ...), until it is removed.
    pub fn set_fake_env(&self, name: &str, value: impl Into<String>) {
        let mut env = self.fake_env.lock().expect("fake env");
        env.insert(name.to_owned(), value.into());
        write_env_file(&self.bin, &env);
    }

    /// Back to the fakes' plain settings: no faults, the real receiver agent.
    pub fn reset_fake_env(&self) {
        let mut env = self.fake_env.lock().expect("fake env");
        env.retain(|k, _| {
            matches!(
                k.as_str(),
                "QZB_FAKE_ROOT" | "QUBES_ZFS_BACKUP_RECEIVE_LOCK" | "QUBES_ZFS_BACKUP_META_BASE"
            )
        });
        env.insert(
            "QZB_FAKE_AGENT".into(),
            bin("qubes-zfs-backup-receiver").display().to_string(),
        );
        write_env_file(&self.bin, &env);
    }

    /// Removes a variable set with [`FakeSystem::set_fake_env`].
    pub fn remove_fake_env(&self, name: &str) {
        let mut env = self.fake_env.lock().expect("fake env");
        env.remove(name);
        write_env_file(&self.bin, &env);
    }

    /// PATH with the fakes first; the rest of the system's PATH follows for `sh` and friends.
    pub fn path_env(&self) -> std::ffi::OsString {
        let mut paths = vec![self.bin.clone()];
        if let Some(p) = std::env::var_os("PATH") {
            paths.extend(std::env::split_paths(&p));
        }
        std::env::join_paths(paths).expect("PATH")
    }

    /// A command for a program with the fake system's environment.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env("PATH", self.path_env())
            .env("QZB_FAKE_ROOT", &self.state)
            .env("QZB_FAKE_AGENT", bin("qubes-zfs-backup-receiver"))
            .env_remove("QZB_FAKE_HOST")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        c
    }

    /// The driver with the given arguments, not started yet (faults go through
    /// [`FakeSystem::set_fake_env`]): `.output()` or `.spawn()`.
    pub fn driver_command(&self, args: &[&str]) -> Command {
        let mut c = self.command(bin("qubes-zfs-backup"));
        c.arg("--metadata-dir").arg(&self.meta).args(args);
        c
    }

    /// Runs the driver with the given arguments.
    pub fn driver(&self, args: &[&str]) -> Run {
        Run::from(
            self.driver_command(args)
                .output()
                .expect("run qubes-zfs-backup"),
        )
    }

    /// Runs the fake `zfs` directly, as a host would (to change the system mid-test).
    pub fn zfs(&self, host: &str, args: &[&str]) -> Run {
        let mut c = self.command(self.bin.join("zfs"));
        c.env("QZB_FAKE_HOST", host).args(args);
        Run::from(c.output().expect("run fake zfs"))
    }

    /// Writes a file into the test directory and returns its path as text.
    pub fn write(&self, name: &str, text: &str) -> String {
        let p = self.dir.join(name);
        std::fs::write(&p, text).expect("write test file");
        p.display().to_string()
    }

    /// Every call the fakes recorded, one JSON object each.
    pub fn calls(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.state.join("calls.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for FakeSystem {
    fn drop(&mut self) {
        if std::env::var_os("QZB_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn run_ok(c: &mut Command) {
    let out = c.output().expect("run helper");
    assert!(
        out.status.success(),
        "{c:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `shared` backup most send tests use: full sends of `mainpool/shared@b1` and its two
/// children into `backuppool/backups/mydesktop` on `backups-disp`; snapshot creation off.
pub fn shared_config(patching: bool) -> String {
    SHARED_CONFIG.replace("PATCHING", if patching { "yes" } else { "no" })
}

const SHARED_CONFIG: &str = r#"name: shared
scope:
  target-snapshot: "@b1"
  since: beginning
  progressive: no
  honour-origins: no
allowed-behaviours:
  snapshot-creation: no
  patching: PATCHING
receiver:
  qube: backups-disp
  dataset: backuppool/backups/mydesktop
include-groups: [data]
forgo-groups: []
void-groups: []
data:
  type: datasets
  members: [mainpool/shared]
"#;

impl FakeSystem {
    /// The reference system with mainpool/shared's snapshots made `size` bytes each (bigger
    /// than pipes and buffers, so a receiver that stops or goes away is met mid-stream), and
    /// the `shared` backup imported by the real binary.
    pub fn with_shared_backup(size: u64, patching: bool) -> FakeSystem {
        let sys = FakeSystem::new("reference-system");
        let path = sys.state.join("dom0.json");
        let text = std::fs::read_to_string(&path).expect("dom0.json");
        let mut v: serde_json::Value = serde_json::from_str(&text).expect("dom0.json is JSON");
        for (name, ds) in v["zfs"]["datasets"].as_object_mut().expect("datasets") {
            if name.starts_with("mainpool/shared") {
                for s in ds["snapshots"].as_array_mut().expect("snapshots") {
                    s["size"] = size.into();
                }
            }
        }
        std::fs::write(&path, serde_json::to_string_pretty(&v).expect("JSON")).expect("write");
        let file = sys.write("shared.yaml", &shared_config(patching));
        sys.driver(&["import", &file]).expect(0);
        sys
    }
}

/// A backup `name` of the datasets `members` (group `vols`), target `@target`, from `since`
/// (`beginning` or a quoted `"@snap"`), into `backuppool/backups/mydesktop` on `backups-disp`;
/// no snapshot creation, no patching, no progressive sends, origins not honoured.
pub fn datasets_config(name: &str, target: &str, since: &str, members: &[&str]) -> String {
    format!(
        r#"name: {name}
scope:
  target-snapshot: "@{target}"
  since: {since}
  progressive: no
  honour-origins: no
allowed-behaviours:
  snapshot-creation: no
  patching: no
receiver:
  qube: backups-disp
  dataset: backuppool/backups/mydesktop
include-groups: [vols]
forgo-groups: []
void-groups: []
vols:
  type: datasets
  members: [{}]
"#,
        members.join(", ")
    )
}

/// The zvol the `vols` backup of [`FakeSystem::with_zvol_backup`] holds.
pub const VAULT: &str = "mainpool/qubes/vault/private";

impl FakeSystem {
    /// The reference system with the vault's private volume ([`VAULT`]) at `size` bytes of
    /// data, and the backup `vols` of it (target @b1, a full send) imported.
    pub fn with_zvol_backup(size: u64) -> FakeSystem {
        let sys = FakeSystem::new("reference-system");
        let path = sys.state.join("dom0.json");
        let text = std::fs::read_to_string(&path).expect("dom0.json");
        let mut v: serde_json::Value = serde_json::from_str(&text).expect("dom0.json is JSON");
        for s in v["zfs"]["datasets"][VAULT]["snapshots"]
            .as_array_mut()
            .expect("the vault's snapshots")
        {
            s["size"] = size.into();
        }
        std::fs::write(&path, serde_json::to_string_pretty(&v).expect("JSON")).expect("write");
        let file = sys.write(
            "vols.yaml",
            &datasets_config("vols", "b1", "beginning", &[VAULT]),
        );
        sys.driver(&["import", &file]).expect(0);
        sys
    }
}

/// A finished run: exit code and text output.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// How long a command may run before a test calls it hung. Only a guard against hangs: far
/// above any bound the command itself is asked to keep, so a loaded machine cannot fail it.
pub const HANG_GUARD: Duration = Duration::from_secs(300);

/// Runs `command` to its end, capturing its output; fails the test if it runs longer than
/// [`HANG_GUARD`] (it is killed then).
pub fn output_guarded(mut command: Command) -> Run {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stderr, &mut v);
        v
    });
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if started.elapsed() > HANG_GUARD {
            let _ = child.kill();
            panic!("{command:?} hung (still running after {HANG_GUARD:?})");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run::from(Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    })
}

/// Which output stream of a child has no reader any more.
pub enum ReaderGone {
    /// `cmd | head -1`
    Stdout,
    /// `cmd 2>&1 | head -1`
    Stderr,
}

/// Runs `command` with the read end of one of its output pipes closed before it writes, so
/// every write there fails with a broken pipe; the other stream is captured.
pub fn run_with_reader_gone(mut command: Command, gone: ReaderGone) -> Run {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    match gone {
        ReaderGone::Stdout => drop(child.stdout.take()),
        ReaderGone::Stderr => drop(child.stderr.take()),
    }
    Run::from(child.wait_with_output().expect("wait"))
}

impl Run {
    /// Asserts the exit code, showing the output if it differs.
    pub fn expect(&self, code: i32) -> &Run {
        assert_eq!(
            self.code, code,
            "unexpected exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\n{}",
                self.stdout, self.stderr
            )
        })
    }
}
