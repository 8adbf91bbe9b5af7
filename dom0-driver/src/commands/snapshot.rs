//! `snapshot`: the target snapshots of every qube that is not running, atomically per group,
//! each marked with the backup that made it (`qubes-zfs-backup:created`, what `prune` goes by).

use crate::commands::report;
use crate::commands::{finished, refresh_snapshots};
use crate::error::{Error, Result};
use crate::output::Style;
use crate::state::{SnapshotState, Store};
use crate::system::runner::{Runner, ToolError};
use crate::system::{inventory, snapshot_details};

pub fn snapshot(store: &Store, runner: &dyn Runner, name: &str) -> Result<()> {
    use crate::snapshot as snap;
    let _lock = store.lock(name)?;
    let mut state = store.load(name)?;
    let config = state.config()?;
    let inv = inventory::collect(runner)?;
    refresh_snapshots(&mut state, &inv)?;
    let targets: Vec<_> = state.targets.iter().map(|t| t.target.clone()).collect();
    if !config.snapshot_creation {
        store.save(&state)?;
        crate::out!("{}", report::snapshot_summary(&config, &targets));
        for t in state
            .targets
            .iter()
            .filter(|t| t.target.is_creatable() && t.snapshot_state == SnapshotState::Missing)
        {
            crate::outln!("missing: {}", t.target.snapshot);
        }
        return Err(Error::NothingDone(format!(
            "snapshot creation is disabled for {name} (allowed-behaviours.snapshot-creation: no), so no snapshot was taken; make the snapshots listed as missing yourself, or enable it and import the config again"
        )));
    }
    let xl = runner.run("xl", &["list", "-l"])?;
    let mut holders =
        snap::parse_xl_attachments(&String::from_utf8_lossy(&xl), &|p| snap::zvol_id(runner, p))
            .map_err(|p| {
                Error::Tool(ToolError::new(
                    "xl list -l",
                    format!("printed output we cannot read: {p}"),
                ))
            })?;
    snap::add_running_qubes(&mut holders, &inv);
    let decision = snap::decide(&state.targets, &holders);
    let mut failures = Vec::new();
    // Every snapshot made here carries the backup's name, set on the snapshot itself: the mark
    // `prune` goes by (it never destroys a snapshot without it).
    let made_by = format!("{}={}", snapshot_details::CREATED_PROPERTY, state.name);
    for group in &decision.create {
        let mut args = vec!["snapshot".to_owned(), "-o".to_owned(), made_by.clone()];
        args.extend(group.snapshots.iter().map(ToString::to_string));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        match runner.run("zfs", &argv) {
            Ok(_) => {
                for s in &group.snapshots {
                    crate::outln!("snapshotted {s}");
                }
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    // Read back what now exists, with the new snapshots' guids.
    let after = inventory::collect_zfs_only(runner)?;
    let created: std::collections::HashSet<_> = decision
        .create
        .iter()
        .flat_map(|g| g.snapshots.iter())
        .collect();
    for t in &mut state.targets {
        if let Some(s) = after.zfs.snapshot(&t.target.snapshot) {
            if t.snapshot_state == SnapshotState::Missing {
                t.snapshot_state = if created.contains(&t.target.snapshot) {
                    SnapshotState::Created
                } else {
                    SnapshotState::Exists
                };
                t.target.guid = Some(s.guid);
            }
        }
    }
    store.save(&state)?;
    let targets: Vec<_> = state.targets.iter().map(|t| t.target.clone()).collect();
    crate::out!("{}", report::snapshot_summary(&config, &targets));
    let style = Style::for_stderr();
    for (group, busy) in &decision.deferred {
        let who: Vec<String> = busy
            .iter()
            .map(|(ds, h)| format!("{ds} is in use by {}", h.join(", ")))
            .collect();
        crate::output::stderr_line(style.yellow(&format!(
            "Deferred {} ({} snapshot(s)): {}.",
            group.object,
            group.snapshots.len(),
            who.join("; ")
        )));
    }
    if !failures.is_empty() {
        return Err(Error::Tool(ToolError::new(
            "zfs snapshot",
            failures.join("; "),
        )));
    }
    if !decision.deferred.is_empty() {
        return Err(Error::Partial(format!(
            "{} group(s) deferred because their qubes run (listed above); shut them down and run `snapshot {name}` again",
            decision.deferred.len()
        )));
    }
    finished(0);
    Ok(())
}
