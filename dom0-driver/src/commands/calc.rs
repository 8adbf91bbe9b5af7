//! `calc`: the size of every send (`zfs send -n -v -P`) and what the receiver says of them.

use crate::commands::report;
use crate::commands::{finished, print_warnings, refresh_snapshots};
use crate::config::diag::Diagnostic;
use crate::error::Result;
use crate::output::human_bytes;
use crate::plan::send_args::send_args;
use crate::state::{SnapshotState, Store};
use crate::stream::calc::receiver_checks;
use crate::stream::estimate::stream_size;
use crate::stream::qrexec::{check_policy, Connect};
use crate::system::inventory;
use crate::system::runner::Runner;

pub fn calc(
    store: &Store,
    runner: &dyn Runner,
    connector: &dyn Connect,
    name: &str,
    json: bool,
) -> Result<()> {
    let _lock = store.lock(name)?;
    let mut state = store.load(name)?;
    // A policy that refuses the receiver makes the whole estimate moot: say so before it.
    check_policy(runner, state.config()?.receiver_qube.as_str())?;
    let inv = inventory::collect_zfs_only(runner)?;
    refresh_snapshots(&mut state, &inv)?;
    let mut warnings = Vec::new();
    let mut missing = 0usize;
    for t in &mut state.targets {
        if t.snapshot_state == SnapshotState::Missing {
            missing += 1;
            continue;
        }
        let size = stream_size(runner, &send_args(&t.target))?;
        t.size_estimate = Some(size);
    }
    store.save(&state)?;
    if missing > 0 {
        warnings.push(Diagnostic::warning(
            "",
            None,
            format!("{missing} target snapshot(s) do not exist yet, so their size is unknown; run `snapshot {name}` first"),
        ));
    }
    let rows: Vec<_> = state
        .targets
        .iter()
        .map(|t| (t.target.clone(), t.size_estimate))
        .collect();
    let total: u64 = rows.iter().filter_map(|(_, s)| *s).sum();
    // The receiver's side: free space, incremental bases, what is already there.
    let rx = receiver_checks(connector, &state, &inv, total);
    let (available, partial) = match &rx {
        Ok(r) => {
            warnings.extend(
                r.warnings
                    .iter()
                    .map(|w| Diagnostic::warning("", None, w.clone())),
            );
            (Some(r.available), r.partial)
        }
        Err(_) => (None, 0),
    };
    if json {
        let mut v = report::calc_json(name, &rows, &warnings, total);
        v["receiver_available"] = serde_json::json!(available);
        v["receiver_partial_targets"] = serde_json::json!(partial);
        crate::outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        print_warnings(name, &warnings);
        crate::outln!("Calculated size of {} objects", rows.len() - missing);
        crate::out!("{}", report::calc_text(&rows, total));
        if let Some(a) = available {
            crate::outln!("Available space on receiver: {}", human_bytes(a));
        }
        if partial > 0 {
            crate::outln!("{partial} target(s) have resumable partial state on the receiver");
        }
    }
    rx?;
    if !json {
        finished(warnings.len());
    }
    Ok(())
}
