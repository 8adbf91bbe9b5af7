//! `cargo xtask demo`: the whole workflow of the seed README (key init, check, import, snapshot,
//! calc, send, verify with read-back, restore list, plan and run) with the real binaries, against the bundled fake Qubes+ZFS system
//! (tests/fixtures/demo-system) where no Qubes or ZFS exists. The fake `zfs`, `qubesd-query`,
//! `xl` and `qrexec-client` are first on PATH; the stand-in `qrexec-client` execs the real
//! receiver agent, so every byte goes through the real protocol.

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn run() -> Result<(), String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("xtask has no parent directory")?
        .to_path_buf();
    step("Building the workspace (debug)");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--workspace", "--bins", "--quiet"])
        .current_dir(&root)
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err("cargo build failed".into());
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("debug");
    let dir = std::env::temp_dir().join(format!("qubes-zfs-backup-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let demo = Demo {
        dir: dir.clone(),
        target: target.clone(),
    };
    let fake = target.join("qzb-fake");
    must(
        Command::new(&fake)
            .arg("install-links")
            .arg(dir.join("bin")),
    )?;
    must(
        Command::new(&fake)
            .arg("init")
            .arg(root.join("tests/fixtures/demo-system"))
            .arg(dir.join("state")),
    )?;
    let config = root.join("tests/fixtures/demo-system/backup1.yaml");
    let config = config.to_str().ok_or("non-UTF-8 path")?;

    println!("A fake dom0 with ZFS-backed qubes is in {}.", dir.display());
    println!("The config is the seed README's example, unchanged: {config}\n");

    demo.driver_with_input(
        "0. key init: the backup key, wrapped by a passphrase (here from stdin, with the cheapest Argon2id parameters so the demo is quick)",
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
        "correct horse battery staple\n",
    )?;
    demo.driver(
        "1. check: what would be backed up, and what was left out",
        &["check", config],
        &[],
        0,
    )?;
    demo.driver(
        "2. import: fix the plan under the backup's name",
        &["import", config],
        &[],
        0,
    )?;
    demo.driver(
        "3. snapshot: qubes that are running (work, work-email) are deferred (exit 10: partial)",
        &["snapshot", "mybackup1"],
        &[],
        10,
    )?;
    step(
        "   ... the user shuts work and work-email down (here: the fake system marks them halted)",
    );
    demo.halt(&["work", "work-email"])?;
    demo.driver(
        "   snapshot again: now everything is snapshotted",
        &["snapshot", "mybackup1"],
        &[],
        0,
    )?;
    demo.driver(
        "4. calc: size estimates, and the receiver's free space",
        &["calc", "mybackup1"],
        &[],
        0,
    )?;
    let once = dir.join("fault-fired");
    demo.driver(
        "5. send, interrupted: `zfs send` dies 300 KiB into a stream (a simulated fault)",
        &["send", "mybackup1"],
        &[
            ("QZB_FAKE_SEND_DIE_AFTER", "307200"),
            ("QZB_FAKE_SEND_MATCH", "personal-email/private"),
            ("QZB_FAKE_FAULT_ONCE", once.to_str().unwrap_or_default()),
        ],
        8,
    )?;
    demo.driver(
        "   send again: the interrupted target resumes from the receiver's token",
        &["send", "mybackup1"],
        &[],
        0,
    )?;
    demo.driver(
        "6. verify: every snapshot's guid, then every zvol read back from the medium and checked block by block against its manifest",
        &["verify", "mybackup1"],
        &[],
        0,
    )?;
    demo.driver(
        "   a compromised backup qube alters one block of every volume it reads back: verify names each (exit 8)",
        &["verify", "mybackup1"],
        &[
            ("QZB_FAKE_SEND_MATCH", "backuppool"),
            ("QZB_FAKE_SEND_FLIP_BLOCK", "2"),
        ],
        8,
    )?;
    demo.driver("   status", &["status", "mybackup1"], &[], 0)?;
    demo.driver(
        "7. restore list: the backup sets on the medium, from their MAC'd set indexes",
        &[
            "restore",
            "list",
            "--from",
            "backups-disp:backuppool/backups/mydesktop",
        ],
        &[],
        0,
    )?;
    demo.driver(
        "   restore plan: the qubes still exist here, so --rename restores them as new qubes",
        &[
            "restore",
            "plan",
            "--from",
            "backups-disp:backuppool/backups/mydesktop",
            "--rename",
            "vault",
            "work",
        ],
        &[],
        0,
    )?;
    demo.driver(
        "   restore run --verify-only: every volume of that plan read back and checked as a real run would, nothing created or imported",
        &[
            "restore",
            "run",
            "--from",
            "backups-disp:backuppool/backups/mydesktop",
            "--rename",
            "--verify-only",
            "vault",
            "work",
        ],
        &[],
        0,
    )?;
    demo.driver(
        "   restore run: vault and work come back as vault1 and work1, their settings through the Admin API and every block checked before Qubes' volume import commits it",
        &[
            "restore",
            "run",
            "--from",
            "backups-disp:backuppool/backups/mydesktop",
            "--rename",
            "vault",
            "work",
        ],
        &[],
        0,
    )?;
    demo.driver(
        "   a compromised backup qube alters a block during the restore: the qube is not created (exit 8)",
        &[
            "restore",
            "run",
            "--from",
            "backups-disp:backuppool/backups/mydesktop",
            "--rename",
            "personal-email",
        ],
        &[
            ("QZB_FAKE_SEND_MATCH", "backuppool"),
            ("QZB_FAKE_SEND_FLIP_BLOCK", "2"),
        ],
        8,
    )?;
    println!(
        "\nDemo finished. Everything it made is in {}.",
        dir.display()
    );
    Ok(())
}

struct Demo {
    dir: PathBuf,
    target: PathBuf,
}

impl Demo {
    /// Runs the driver; any exit status but `expect` fails the demo (CI runs it as a smoke test).
    fn driver(
        &self,
        title: &str,
        args: &[&str],
        env: &[(&str, &str)],
        expect: i32,
    ) -> Result<(), String> {
        step(title);
        println!("$ qubes-zfs-backup {}", args.join(" "));
        let mut path = vec![self.dir.join("bin")];
        if let Some(p) = std::env::var_os("PATH") {
            path.extend(std::env::split_paths(&p));
        }
        // The driver gives its children only PATH and LC_ALL, so the fake tools read their
        // settings from the file beside them (tests/fake-system/README.md).
        let mut fake_env = vec![
            (
                "QZB_FAKE_ROOT".to_owned(),
                self.dir.join("state").display().to_string(),
            ),
            (
                "QZB_FAKE_AGENT".to_owned(),
                self.target
                    .join("qubes-zfs-backup-receiver")
                    .display()
                    .to_string(),
            ),
            (
                "QUBES_ZFS_BACKUP_RECEIVE_LOCK".to_owned(),
                self.dir.join("receive.lock").display().to_string(),
            ),
            (
                "QUBES_ZFS_BACKUP_META_BASE".to_owned(),
                self.dir.join("agent-meta").display().to_string(),
            ),
        ];
        fake_env.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let text: String = fake_env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        std::fs::write(self.dir.join("bin/fake.env"), text).map_err(|e| e.to_string())?;
        let mut c = Command::new(self.target.join("qubes-zfs-backup"));
        c.arg("--metadata-dir")
            .arg(self.dir.join("metadata"))
            .args(args)
            .env(
                "PATH",
                std::env::join_paths(path).map_err(|e| e.to_string())?,
            );
        let status = c
            .status()
            .map_err(|e| format!("cannot run the driver: {e}"))?;
        let code = status.code().unwrap_or(-1);
        println!("[exit status {code}]");
        if code != expect {
            return Err(format!(
                "`qubes-zfs-backup {}` exited {code}, expected {expect}",
                args.join(" ")
            ));
        }
        Ok(())
    }

    /// Runs the driver with `input` on its stdin (a passphrase for `--passphrase-fd 0`).
    fn driver_with_input(&self, title: &str, args: &[&str], input: &str) -> Result<(), String> {
        step(title);
        println!("$ qubes-zfs-backup {}", args.join(" "));
        let mut child = Command::new(self.target.join("qubes-zfs-backup"))
            .arg("--metadata-dir")
            .arg(self.dir.join("metadata"))
            .args(args)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run the driver: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            std::io::Write::write_all(&mut stdin, input.as_bytes()).map_err(|e| e.to_string())?;
        }
        let code = child
            .wait()
            .map_err(|e| e.to_string())?
            .code()
            .unwrap_or(-1);
        println!("[exit status {code}]");
        if code != 0 {
            return Err(format!(
                "`qubes-zfs-backup {}` exited {code}",
                args.join(" ")
            ));
        }
        Ok(())
    }

    /// Marks qubes halted in the fake system (what `qvm-shutdown` would do).
    fn halt(&self, qubes: &[&str]) -> Result<(), String> {
        let path = self.dir.join("state/dom0.json");
        let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
        let mut v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        for q in qubes {
            let d = &mut v["qubes"]["domains"][*q];
            d["state"] = "Halted".into();
            if let Some(obj) = d.as_object_mut() {
                obj.remove("domid");
            }
        }
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())
    }
}

fn step(title: &str) {
    println!("\n=== {title}");
}

fn must(c: &mut Command) -> Result<(), String> {
    let out = c.output().map_err(|e| format!("{c:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{c:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
