//! `list` and `status`: what is imported, and the state of every target.

use crate::error::Result;
use crate::output::{human_bytes, sanitize, Style};
use crate::state::{ManifestState, SendState, SnapshotState, Store};
use crate::system::inventory::DatasetKind;

/// Every imported backup, one line (or JSON object) each. A state file that cannot be read
/// (corrupt, from a newer version, unreadable) is listed with its error instead of hiding the
/// other backups; `list` still exits 0, because listing worked, and says on stderr how many
/// could not be read. `status NAME` of such a backup fails with the full error (exit code 6).
pub fn list(store: &Store, json: bool) -> Result<()> {
    let all = store.list()?;
    let broken = all.iter().filter(|l| l.state.is_err()).count();
    if json {
        let v: Vec<_> = all
            .iter()
            .map(|l| match &l.state {
                Ok(s) => serde_json::json!({
                    "name": s.name,
                    "imported_at": s.imported_at,
                    "config_path": s.config_path,
                    "targets": s.targets.len(),
                    "done": s.targets.iter().filter(|t| t.send_state == SendState::Done).count(),
                }),
                Err(e) => serde_json::json!({
                    "name": l.name,
                    "error": e.to_string(),
                }),
            })
            .collect();
        crate::outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        if all.is_empty() {
            crate::outln!("No backups imported in {}.", store.dir().display());
        }
        for l in &all {
            match &l.state {
                Ok(s) => {
                    let done = s
                        .targets
                        .iter()
                        .filter(|t| t.send_state == SendState::Done)
                        .count();
                    crate::outln!(
                        "{}  {}  {done}/{} sent  ({})",
                        s.imported_at,
                        s.name,
                        s.targets.len(),
                        s.config_path
                    );
                }
                Err(e) => crate::outln!(
                    "{:<20}  {}  unreadable: {}",
                    "?",
                    l.name,
                    sanitize(&e.to_string())
                ),
            }
        }
    }
    if broken > 0 {
        let style = Style::for_stderr();
        let what = if broken == 1 {
            "1 backup's state file".to_owned()
        } else {
            format!("{broken} backups' state files")
        };
        crate::output::stderr_line(style.yellow(&format!(
            "Warning: {what} could not be read (marked above); `status NAME` shows why"
        )));
    }
    Ok(())
}

pub fn status(store: &Store, name: &str, json: bool) -> Result<()> {
    let state = store.load(name)?;
    if json {
        crate::outln!(
            "{}",
            serde_json::to_string_pretty(&state.targets).unwrap_or_default()
        );
        return Ok(());
    }
    crate::outln!(
        "{} (imported {}, {} targets)",
        state.name,
        state.imported_at,
        state.targets.len()
    );
    for t in &state.targets {
        let snap = match t.snapshot_state {
            SnapshotState::Exists => "exists",
            SnapshotState::Missing => "missing",
            SnapshotState::Created => "created",
        };
        let send = match t.send_state {
            SendState::Pending => "pending",
            SendState::Partial => "partial",
            SendState::Done => "done",
        };
        let size = t
            .size_estimate
            .map(human_bytes)
            .unwrap_or_else(|| "-".into());
        crate::outln!(
            "  {send:<8} {snap:<8} {size:>10}  {}  [{}]",
            t.target.snapshot,
            t.target.describe()
        );
        if t.send_state == SendState::Done && t.target.kind == DatasetKind::Volume {
            crate::outln!(
                "           manifest: {}",
                match t.manifest {
                    Some(ManifestState::Stored) => "on the medium (`verify` reads it back)",
                    Some(ManifestState::Pending) =>
                        "made, still in dom0's spool: the next send stores it on the medium",
                    Some(ManifestState::Missing) | None =>
                        "none: sent without a key or before authenticated backups, so only its guid can be checked; the next full send of it makes it verifiable",
                }
            );
        }
        if let Some(e) = &t.last_error {
            crate::outln!("           last error: {}", sanitize(e));
        }
    }
    match &state.last_set {
        Some(set) => crate::outln!(
            "  set index: the last one stored on the medium is of {} (`verify` checks it is still the newest)",
            crate::state::format_utc(set.created)
        ),
        None => crate::outln!(
            "  set index: none stored yet (the next `send` with a key stores the qubes' settings and one)"
        ),
    }
    Ok(())
}
