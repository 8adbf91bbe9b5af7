//! `qubes-zfs-backup-receiver`: the `zfsbackup.Receive` qrexec service in the backup qube.
//! Run with no arguments it serves one call on stdin/stdout.
#![forbid(unsafe_code)]

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;

use receiver_agent::{serve, Config, SystemZfs};

const NAME: &str = "qubes-zfs-backup-receiver";
/// Test hook for the lock file location; qrexec callers cannot set the service's environment.
const LOCK_ENV: &str = "QUBES_ZFS_BACKUP_RECEIVE_LOCK";
/// Where the blob filesystems are mounted (default `/run/qubes-zfs-backup/meta`); set by the
/// service's unit or, in tests, the fakes.
const META_ENV: &str = "QUBES_ZFS_BACKUP_META_BASE";

fn main() -> ExitCode {
    if std::env::args_os().len() > 1 {
        eprintln!("{NAME}: takes no arguments; it is the zfsbackup.Receive qrexec service");
        return ExitCode::from(2);
    }
    // Defence in depth: the qrexec policy should only let dom0 call us, but if it is wrong,
    // a qube must still not be able to write into the backup pool.
    match std::env::var("QREXEC_REMOTE_DOMAIN") {
        Ok(caller) if caller == "dom0" => {}
        Ok(caller) => {
            eprintln!(
                "{NAME}: refusing call from {}: only dom0 may call zfsbackup.Receive \
                 (check the qrexec policy)",
                qzb_protocol::text::quoted(&caller)
            );
            return ExitCode::from(3);
        }
        Err(_) => {
            eprintln!(
                "{NAME}: refusing to run: QREXEC_REMOTE_DOMAIN is not set, so the caller is \
                 unknown; only dom0 may call zfsbackup.Receive"
            );
            return ExitCode::from(3);
        }
    }
    let mut config = Config::default();
    if let Some(path) = std::env::var_os(LOCK_ENV) {
        config.lock_path = PathBuf::from(path);
    }
    if let Some(path) = std::env::var_os(META_ENV) {
        config.meta_base = Some(PathBuf::from(path));
    }
    // Not locked: the stream is read on its own thread (see serve::feed).
    let stdin = io::stdin();
    let stdout = io::stdout().lock();
    match serve(&config, &SystemZfs::new(), stdin, stdout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{NAME}: {e}");
            ExitCode::FAILURE
        }
    }
}
