//! The receiver's side as dom0 sees it, and every decision on what the backup qube says:
//! what it holds (its inventory, indexed), where a dom0 snapshot lives on it, and how each
//! target is sent given that. Anything that does not match the plan is refused here: a resume
//! token is decoded and must continue exactly the planned stream, an incremental source must be
//! on the receiver with the source's guid, a snapshot of the same name with another guid is
//! never touched.

use crate::error::{Error, Result};
use crate::output::outside;
use crate::plan::continuity::{cannot_land_beside, full_send_reason, medium_copy};
use crate::plan::Target;
use crate::state::{SendState, TargetState};
use crate::stream::client::Client;
use crate::system::inventory::ZfsInventory;
use qzb_protocol as proto;
use qzb_protocol::names::{DatasetName, SnapshotName};
use std::collections::HashMap;

/// What the receiver holds under its root, indexed for lookups.
pub struct ReceiverView {
    pub available: u64,
    datasets: HashMap<String, proto::DatasetInfo>,
}

impl ReceiverView {
    pub fn from_reply(reply: proto::InventoryReply) -> Self {
        ReceiverView {
            available: reply.available,
            datasets: reply
                .datasets
                .into_iter()
                .map(|d| (d.name.as_str().to_owned(), d))
                .collect(),
        }
    }

    pub fn dataset(&self, name: &str) -> Option<&proto::DatasetInfo> {
        self.datasets.get(name)
    }

    /// Records a snapshot the receiver just reported, so later targets of the same session can
    /// build on it without listing the receiver again.
    pub fn record(
        &mut self,
        snapshot: &SnapshotName,
        guid: u64,
        kind: proto::DatasetKind,
    ) -> Result<()> {
        let ds = snapshot.dataset().clone();
        let info = proto::SnapshotInfo {
            name: snapshot.clone(),
            guid,
            createtxg: 0,
        };
        let entry = self
            .datasets
            .entry(ds.as_str().to_owned())
            .or_insert(proto::DatasetInfo {
                name: ds,
                kind,
                guid: 0,
                receive_resume_token: None,
                snapshots: Vec::new(),
            });
        entry.receive_resume_token = None;
        entry.snapshots.push(info);
        Ok(())
    }

    /// The guid of `snapshot` on the receiver, if it is there.
    pub fn snapshot_guid(&self, snapshot: &SnapshotName) -> Option<u64> {
        self.dataset(snapshot.dataset().as_str()).and_then(|d| {
            d.snapshots
                .iter()
                .find(|s| s.name.label() == snapshot.label())
                .map(|s| s.guid)
        })
    }
}

/// A source snapshot's place on the receiver: `<root>/<dataset>@label`.
pub fn on_receiver(root: &DatasetName, snap: &SnapshotName) -> Result<SnapshotName> {
    let ds = snap
        .dataset()
        .under(root)
        .map_err(|e| Error::Refused(format!("{snap} cannot be placed under {root}: {e}")))?;
    SnapshotName::new(ds, snap.label().clone())
        .map_err(|e| Error::Refused(format!("{snap} cannot be placed under {root}: {e}")))
}

/// Asks the agent what is under the receiver root.
pub fn inventory(session: &mut Client, root: &DatasetName) -> Result<ReceiverView> {
    let req = proto::Request::Inventory(proto::InventoryRequest { root: root.clone() });
    match session.request(&req)? {
        proto::Reply::Inventory(inv) if inv.root.as_str() == root.as_str() => {
            Ok(ReceiverView::from_reply(inv))
        }
        proto::Reply::Inventory(inv) => Err(Error::Security(format!(
            "the receiver answered an inventory of {} when asked for {root}",
            outside(inv.root.as_str())
        ))),
        proto::Reply::Error(e) => Err(Error::Receiver(format!(
            "the receiver cannot list {root}: {} ({})",
            outside(&e.message),
            e.class
        ))),
        other => Err(Error::Security(format!(
            "the receiver answered an inventory request with {}",
            reply_name(&other)
        ))),
    }
}

pub(crate) fn reply_name(r: &proto::Reply) -> &'static str {
    match r {
        proto::Reply::Inventory(_) => "an inventory",
        proto::Reply::ReceiveReady => "ReceiveReady",
        proto::Reply::Receive(_) => "a receive result",
        proto::Reply::Aborted { .. } => "an abort confirmation",
        proto::Reply::Error(_) => "an error",
        proto::Reply::Waiting { .. } => "a lock notice",
        proto::Reply::BlobReady => "BlobReady",
        proto::Reply::BlobStored { .. } => "a blob confirmation",
        proto::Reply::Blob { .. } => "a blob",
        proto::Reply::Blobs(_) => "a blob list",
        proto::Reply::ReadBackReady => "ReadBackReady",
        proto::Reply::ReadBackDone { .. } => "a read-back summary",
    }
}

/// How a target will be sent, decided from the plan and what the receiver holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// The receiver has the snapshot with the source's guid.
    AlreadyThere,
    Send {
        mode: proto::ReceiveMode,
        /// `zfs send` arguments (after `zfs`).
        args: Vec<String>,
        /// For a clone stream, the origin on the receiver (`zfs receive -o origin=`).
        origin: Option<proto::SnapshotName>,
        /// How this differs from the plan's stream, for the user.
        note: Option<String>,
    },
}

/// Decides what to do for one target. Refuses anything that does not match the plan.
pub fn decide(
    t: &TargetState,
    root: &DatasetName,
    rx: &ReceiverView,
    source: &ZfsInventory,
    patching: bool,
) -> Result<Step> {
    let source_guids = |s: &SnapshotName| source.snapshot(s).map(|x| x.guid);
    let target = &t.target;
    let guid = target.guid.ok_or_else(|| {
        Error::Refused(format!(
            "{} does not exist; run `snapshot` first",
            target.snapshot
        ))
    })?;
    let dest = on_receiver(root, &target.snapshot)?;
    let dest_ds = rx.dataset(dest.dataset().as_str());
    if let Some(have) = rx.snapshot_guid(&dest) {
        if have != guid {
            return Err(Error::Refused(format!(
                "the receiver already has {dest} but with guid {have}, not {guid}: it is a different snapshot with the same name; it is left alone"
            )));
        }
        // Ours if we started it (a run that ended between the receive and saving the state);
        // otherwise only with patching.
        if t.send_state == SendState::Partial || patching {
            return Ok(Step::AlreadyThere);
        }
        return Err(Error::Refused(format!(
            "{dest} already exists on the receiver (same guid); enable allowed-behaviours.patching to mark such targets done"
        )));
    }
    if let Some(token) = dest_ds.and_then(|d| d.receive_resume_token.as_deref()) {
        check_token(token, target, guid, &source_guids)?;
        return Ok(Step::Send {
            mode: proto::ReceiveMode::Resume {
                token: token.to_owned(),
            },
            args: vec!["send".into(), "-t".into(), token.to_owned()],
            origin: clone_origin(target, root)?,
            note: Some("resuming the interrupted receive".into()),
        });
    }
    if let Some(step) = continue_cut_package(target, dest_ds, source, root)? {
        return Ok(step);
    }
    let mode = match &target.incremental_source {
        None => {
            let dom0: Vec<u64> = source
                .snapshots_of(target.snapshot.dataset().as_str())
                .iter()
                .map(|s| s.guid)
                .collect();
            let medium: Vec<u64> = dest_ds
                .map(|d| d.snapshots.iter().map(|s| s.guid).collect())
                .unwrap_or_default();
            if let Some(why) = full_send_reason(target, medium_copy(&dom0, &medium)) {
                return Err(Error::Refused(format!(
                    "{why}; {}",
                    cannot_land_beside(dest.dataset().as_str())
                )));
            }
            proto::ReceiveMode::Full
        }
        Some(src) => {
            let src_guid = source_guids(src).ok_or_else(|| {
                Error::Refused(format!("incremental source {src} no longer exists in dom0"))
            })?;
            let on_rx = on_receiver(root, src)?;
            match rx.snapshot_guid(&on_rx) {
                Some(g) if g == src_guid => {}
                Some(g) => {
                    return Err(Error::Refused(format!(
                        "incremental source {on_rx} on the receiver has guid {g}, not {src_guid}: it is not the snapshot this backup builds on"
                    )))
                }
                None => {
                    return Err(Error::Refused(format!(
                        "incremental source {on_rx} is not on the receiver; it must be there before {} can be sent",
                        target.snapshot
                    )))
                }
            }
            proto::ReceiveMode::Incremental {
                from: on_rx.clone(),
                from_guid: src_guid,
            }
        }
    };
    Ok(Step::Send {
        mode,
        args: crate::plan::send_args::send_args(target),
        origin: clone_origin(target, root)?,
        note: None,
    })
}

/// The receiver-side origin of a clone target.
fn clone_origin(target: &Target, root: &DatasetName) -> Result<Option<proto::SnapshotName>> {
    match (&target.incremental_source, target.clone_origin) {
        (Some(src), true) => Ok(Some(on_receiver(root, src)?)),
        _ => Ok(None),
    }
}

/// A `-I` package (or an earlier run) may have stopped between snapshots: the destination then
/// exists and ends at a snapshot the source also has (same guid). Continue from there instead
/// of replaying the planned stream, which the receiver would refuse.
fn continue_cut_package(
    target: &Target,
    dest_ds: Option<&proto::DatasetInfo>,
    source: &ZfsInventory,
    root: &DatasetName,
) -> Result<Option<Step>> {
    let Some(last) = dest_ds.and_then(|d| d.snapshots.last()) else {
        return Ok(None);
    };
    let ds = target.snapshot.dataset();
    let snaps = source.snapshots_of(ds.as_str());
    let Some(pos) = snaps.iter().position(|s| s.guid == last.guid) else {
        return Ok(None);
    };
    let target_pos = snaps
        .iter()
        .position(|s| &s.label == target.snapshot.label());
    if target_pos.is_none_or(|t| pos >= t) {
        return Ok(None);
    }
    let common = SnapshotName::new(ds.clone(), snaps[pos].label.clone())
        .map_err(|e| Error::Refused(format!("{ds}{}: {e}", snaps[pos].label)))?;
    // The receiver ends at the planned source itself: that is the planned stream, not a
    // continuation (the normal path sends it, and checks the source's guid).
    if target.incremental_source.as_ref() == Some(&common) {
        return Ok(None);
    }
    // Only where the plan's own source is not newer than what the receiver has.
    if let Some(planned) = &target.incremental_source {
        if planned.dataset() == ds {
            let planned_pos = snaps.iter().position(|s| &s.label == planned.label());
            if planned_pos.is_some_and(|p| p > pos) {
                return Ok(None);
            }
        }
    }
    let on_rx = on_receiver(root, &common)?;
    Ok(Some(Step::Send {
        mode: proto::ReceiveMode::Incremental {
            from: on_rx.clone(),
            from_guid: snaps[pos].guid,
        },
        args: crate::plan::send_args::send_args_from(
            &target.snapshot,
            target.kind,
            Some(&common),
            target.progressive,
        ),
        origin: None,
        note: Some(format!(
            "continuing from @{}, which the receiver already has",
            common.label().as_str()
        )),
    }))
}

/// A resume token comes from the backup qube: it may only continue exactly the planned stream.
fn check_token(
    token: &str,
    target: &Target,
    guid: u64,
    source_guids: &dyn Fn(&SnapshotName) -> Option<u64>,
) -> Result<()> {
    let decoded = proto::decode_resume_token(token).map_err(|e| {
        Error::Security(format!(
            "the receiver's resume token for {} cannot be decoded ({e}); it is not used",
            target.snapshot
        ))
    })?;
    let want_from = target.incremental_source.as_ref().and_then(source_guids);
    let problem = if decoded.toname.to_string() != target.snapshot.to_string() {
        Some(format!("it names {}", outside(&decoded.toname.to_string())))
    } else if decoded.toguid != guid {
        Some(format!(
            "its guid is {}, the snapshot's is {guid}",
            decoded.toguid
        ))
    } else if decoded.fromguid != want_from {
        let base = |g: Option<u64>| match g {
            Some(g) => format!("the snapshot with guid {g}"),
            None => "nothing (a full stream)".to_owned(),
        };
        Some(format!(
            "it continues from {}, the plan from {}",
            base(decoded.fromguid),
            base(want_from)
        ))
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(p) => Err(Error::Security(format!(
            "the receiver's resume token for {} does not match the plan ({p}); it is refused. If the partial state is stale, discard it with `abort`",
            target.snapshot
        ))),
    }
}

#[cfg(test)]
#[path = "receiver_tests.rs"]
mod tests;
