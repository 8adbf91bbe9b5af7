//! The receive lock: one receive or abort at a time per qube. A session that finds it held
//! reads who holds it from the lock file, tells the driver, and waits up to `lock_wait`; the
//! holder writes what it is doing into the file for the next one.

use std::fs::{File, TryLockError};
use std::io::{Read, Write};
use std::thread;
use std::time::{Duration, Instant};

use qzb_protocol::{truncate_text, ErrorClass, ProtocolError, ReceiveFailure, MAX_MESSAGE_LEN};

use crate::serve::{failure, Config};

/// Holds the receive lock until dropped.
pub(crate) struct ReceiveLock(#[allow(dead_code)] File);

/// How much of the lock file a waiting session reads to say who holds the lock.
const MAX_HOLDER_TEXT: u64 = 512;

/// Takes the receive lock, waiting up to `config.lock_wait` for another session to finish.
/// Before it waits, `waiting` is told who holds the lock (what the holder wrote into the lock
/// file), so the driver can say at once why nothing moves. The holder then writes `what` into
/// the file for the next one.
pub(crate) fn acquire_lock(
    config: &Config,
    what: &str,
    waiting: &mut dyn FnMut(String) -> Result<(), ProtocolError>,
) -> Result<ReceiveLock, AcquireError> {
    let internal = |e: std::io::Error| {
        AcquireError::Refused(failure(
            ErrorClass::Internal,
            format!("cannot open lock file {}: {e}", config.lock_path.display()),
        ))
    };
    if let Some(dir) = config.lock_path.parent() {
        std::fs::create_dir_all(dir).map_err(internal)?;
    }
    let mut file = File::options()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&config.lock_path)
        .map_err(internal)?;
    let deadline = Instant::now() + config.lock_wait;
    let mut told = false;
    loop {
        match file.try_lock() {
            Ok(()) => {
                // Best effort: who holds it now, for a session that has to wait.
                let _ = file.set_len(0).and_then(|()| {
                    use std::io::{Seek, SeekFrom};
                    file.seek(SeekFrom::Start(0))?;
                    file.write_all(what.as_bytes())
                });
                return Ok(ReceiveLock(file));
            }
            Err(TryLockError::WouldBlock) => {
                if !told {
                    told = true;
                    let mut holder = String::new();
                    let _ = (&file).take(MAX_HOLDER_TEXT).read_to_string(&mut holder);
                    let holder = if holder.trim().is_empty() {
                        "another session".to_owned()
                    } else {
                        truncate_text(holder.trim(), MAX_MESSAGE_LEN)
                    };
                    waiting(format!(
                        "{holder}; waiting up to {} s for it to finish",
                        config.lock_wait.as_secs()
                    ))
                    .map_err(AcquireError::Gone)?;
                }
                let now = Instant::now();
                if now >= deadline {
                    return Err(AcquireError::Refused(failure(
                        ErrorClass::Busy,
                        format!(
                            "another receive is still running in this qube (waited {} s for {}); \
                             try again when it has finished",
                            config.lock_wait.as_secs(),
                            config.lock_path.display()
                        ),
                    )));
                }
                thread::sleep((deadline - now).min(Duration::from_millis(50)));
            }
            Err(TryLockError::Error(e)) => return Err(internal(e)),
        }
    }
}

/// Why the lock was not taken.
pub(crate) enum AcquireError {
    /// An answer for the driver.
    Refused(ReceiveFailure),
    /// The driver could not be told (it is gone).
    Gone(ProtocolError),
}

/// What a session writes into the lock file while it holds it.
pub(crate) fn holder_text(action: &str, dataset: &str) -> String {
    format!(
        "{action} {dataset} (agent pid {}, since {} s after the epoch)",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    )
}
