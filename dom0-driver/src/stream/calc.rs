//! What `calc` asks the receiver: free space, incremental bases, existing and partial targets.

use crate::error::Result;
use crate::plan::continuity::{cannot_land_beside, full_send_reason, medium_copy};
use crate::state::{BackupState, SendState};
use crate::stream::qrexec::Connect;
use crate::stream::receiver::{inventory, on_receiver};
use crate::system::inventory::Inventory;
use qzb_protocol::names::SnapshotName;

/// What `calc` learned from the receiver.
pub struct ReceiverReport {
    pub available: u64,
    pub partial: usize,
    pub warnings: Vec<String>,
}

/// Receiver checks for `calc`: space, incremental bases, existing and partial targets.
pub fn receiver_checks(
    connector: &dyn Connect,
    state: &BackupState,
    inv: &Inventory,
    total: u64,
) -> Result<ReceiverReport> {
    let config = state.config()?;
    let root = &config.receiver_dataset;
    let mut session = connector.connect(config.receiver_qube.as_str())?;
    let rx = inventory(&mut session, root)?;
    let _ = session.close();
    let mut warnings = Vec::new();
    if rx.available > 0 && total as f64 / rx.available as f64 > 0.75 {
        warnings.push(format!(
            "Send size is {}% of available space on receiver. Pool settings (compression, record size) differ between pools, so whether it fits cannot be predicted; decide yourself.",
            (total as f64 / rx.available as f64 * 100.0).round()
        ));
    } else if rx.available == 0 {
        warnings.push("the receiver reports no available space".into());
    }
    let planned: std::collections::HashSet<&SnapshotName> =
        state.targets.iter().map(|t| &t.target.snapshot).collect();
    let mut present = 0;
    let mut partial = 0;
    for t in &state.targets {
        let dest = on_receiver(root, &t.target.snapshot)?;
        if let Some(g) = rx.snapshot_guid(&dest) {
            if Some(g) == t.target.guid {
                // Targets this backup sent itself are simply done.
                if t.send_state != SendState::Done {
                    present += 1;
                }
            } else {
                warnings.push(format!(
                    "{dest} exists on the receiver with a different guid; its target will fail"
                ));
            }
        } else if rx
            .dataset(dest.dataset().as_str())
            .and_then(|d| d.receive_resume_token.as_ref())
            .is_some()
        {
            partial += 1;
        }
        let dom0: Vec<u64> = inv
            .zfs
            .snapshots_of(t.target.snapshot.dataset().as_str())
            .iter()
            .map(|s| s.guid)
            .collect();
        let medium: Vec<u64> = rx
            .dataset(dest.dataset().as_str())
            .map(|d| d.snapshots.iter().map(|s| s.guid).collect())
            .unwrap_or_default();
        if let Some(why) = full_send_reason(&t.target, medium_copy(&dom0, &medium)) {
            warnings.push(format!(
                "{why}; {}",
                cannot_land_beside(dest.dataset().as_str())
            ));
        }
        if let Some(src) = &t.target.incremental_source {
            if !planned.contains(src) {
                let on_rx = on_receiver(root, src)?;
                let want = inv.zfs.snapshot(src).map(|s| s.guid);
                match rx.snapshot_guid(&on_rx) {
                    Some(g) if Some(g) == want => {}
                    Some(_) => warnings.push(format!("incremental base {on_rx} on the receiver is a different snapshot (guid differs); {} cannot be sent", t.target.snapshot)),
                    None => warnings.push(format!("incremental base {on_rx} is not on the receiver; {} cannot be sent", t.target.snapshot)),
                }
            }
        }
    }
    if present > 0 {
        let what = if config.patching {
            "they will be marked done"
        } else {
            "patching is disabled, so send will refuse them"
        };
        warnings.push(format!(
            "{present} target(s) are already on the receiver with the same guid; {what}"
        ));
    }
    Ok(ReceiverReport {
        available: rx.available,
        partial,
        warnings,
    })
}
