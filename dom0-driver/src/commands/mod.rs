//! The bodies of the commands: each reads what it needs, decides through the pure core
//! (`config`, `plan`, `snapshot`, `stream::receiver`) and reports. The command line itself
//! (`cli`) only parses arguments and dispatches here.

pub mod backups;
pub mod calc;
pub mod check;
pub mod prune;
pub mod receiver;
pub mod report;
pub mod restore;
pub mod snapshot;

use crate::config::diag::Diagnostic;
use crate::error::{Error, Result};
use crate::output::{sanitize, Style};
use crate::state::{BackupState, SnapshotState};
use crate::system::inventory::Inventory;

pub fn print_warnings(file: &str, warnings: &[Diagnostic]) {
    let style = Style::for_stderr();
    for w in warnings {
        crate::output::stderr_line(
            style.yellow(&format!("Warning: {}", sanitize(&w.render(Some(file))))),
        );
    }
}

pub fn finished(warnings: usize) {
    if warnings > 0 {
        let style = Style::for_stderr();
        let noun = if warnings == 1 { "warning" } else { "warnings" };
        crate::output::stderr_line(format_args!(
            "Program finished successfully, but with {}.",
            style.yellow(&format!("{warnings} {noun}"))
        ));
    }
}

/// Re-reads the live system and refreshes every target's snapshot state from it (a snapshot made
/// by hand after import is picked up; backup.py's stale "would" state is a known bug).
pub fn refresh_snapshots(state: &mut BackupState, inv: &Inventory) -> Result<()> {
    for t in &mut state.targets {
        match inv.zfs.snapshot(&t.target.snapshot) {
            Some(s) => {
                if let Some(planned) = t.target.guid {
                    if planned != s.guid {
                        return Err(Error::Refused(format!(
                            "snapshot {} was replaced since import (guid {} then, {} now); its data is not what was planned. Import the config again (--replace) to plan with the new snapshot.",
                            t.target.snapshot, planned, s.guid
                        )));
                    }
                }
                t.target.guid = Some(s.guid);
                if t.snapshot_state == SnapshotState::Missing {
                    t.snapshot_state = SnapshotState::Exists;
                }
            }
            None => {
                if t.target.guid.is_some() {
                    return Err(Error::Refused(format!(
                        "snapshot {} existed at import but is gone now; it may have been rotated away. Import the config again (--replace).",
                        t.target.snapshot
                    )));
                }
                t.snapshot_state = SnapshotState::Missing;
            }
        }
    }
    Ok(())
}
