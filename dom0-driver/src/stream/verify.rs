//! `verify`: that the medium holds what dom0 sent.
//!
//! First the quick check (`--quick` stops there): every done target's snapshot is on the
//! receiver with the source's guid. Then, for every done zvol target, the read-back: the agent
//! reads its own received snapshot and streams the non-zero blocks; dom0 fetches the volume's
//! chain of manifests from the medium (every header MAC-checked, every body checked against
//! its header), merges it into what the volume must hold, and checks every block's tag and that
//! exactly the manifests' data blocks came. Nothing is written anywhere but dom0's scratch
//! directory for the manifest bodies. A receiver that drained a stream and reported the right
//! guid fails here, and so does one that hides a manifest dom0 recorded storing on it (it
//! would otherwise pass as an old, unverifiable backup). The final error names the first
//! problem in full: a log or a mail from a timer may keep nothing else. Last, the backup's
//! newest set index and its settings (`sets.rs`): both MACs, that it is the index dom0 stored
//! last, and that it agrees with dom0's state.

use crate::error::{Error, Result};
use crate::key::Keys;
use crate::output::{human_bytes, outside};
use crate::state::chains::{medium_id, Chains};
use crate::state::{BackupState, SendState};
use crate::stream::client::Client;
use crate::stream::progress::{Mode, Run};
use crate::stream::qrexec::Connect;
use crate::stream::readback::{read_back_checked, Discard};
use crate::stream::receiver::{inventory, on_receiver};
use crate::stream::sets;
use crate::system::inventory::DatasetKind;
use serde_json::json;
use std::path::Path;

/// Options of a verify run.
pub struct VerifyOptions {
    /// Only the guid check.
    pub quick: bool,
    pub progress: Mode,
}

/// `verify`. `keys` is `None` when dom0 has no key (then only `--quick` can run).
pub fn verify(
    connector: &dyn Connect,
    state: &BackupState,
    metadata_dir: &Path,
    keys: Option<&Keys>,
    opts: &VerifyOptions,
) -> Result<()> {
    let config = state.config()?;
    let done: Vec<_> = state
        .targets
        .iter()
        .filter(|t| t.send_state == SendState::Done)
        .collect();
    if done.is_empty() {
        return Err(Error::NothingDone(format!(
            "no target of {} has been sent yet, so there is nothing to verify; run `send {}` first",
            state.name, state.name
        )));
    }
    let keys = match (opts.quick, keys) {
        (true, _) => None,
        (false, Some(k)) => Some(k),
        (false, None) => {
            return Err(Error::Key(
                "dom0 has no key, and reading the backup back needs it to check the manifests: run `key init` once (then the next full send of each zvol makes it verifiable), or `verify --quick` for the guid check alone".into(),
            ))
        }
    };
    let root = &config.receiver_dataset;
    let qube = config.receiver_qube.as_str();
    let mut session = connector.connect(qube)?;
    let rx = inventory(&mut session, root)?;

    // The quick check: every done target's snapshot, by guid.
    let mut problems = Problems::default();
    for t in &done {
        let dest = on_receiver(root, &t.target.snapshot)?;
        match (rx.snapshot_guid(&dest), t.target.guid) {
            (Some(r), Some(s)) if r == s => crate::outln!("ok        {dest} (guid)"),
            (Some(r), s) => {
                let what = format!(
                    "{dest}: receiver guid {r}, source {}",
                    s.map(|g| g.to_string()).unwrap_or("-".into())
                );
                crate::outln!("MISMATCH  {what}");
                problems.add(what);
            }
            (None, _) => {
                crate::outln!("MISSING   {dest}");
                problems.add(format!("{dest} is missing on the receiver"));
            }
        }
    }
    let pending = state.targets.len() - done.len();
    let Some(keys) = keys else {
        let _ = session.close();
        crate::outln!(
            "{} done target(s) checked by guid, {} problem(s); {pending} target(s) not sent yet",
            done.len(),
            problems.count
        );
        return verdict(&problems, 0, &state.name);
    };

    // The read-back of every done zvol target.
    let volumes: Vec<_> = done
        .iter()
        .filter(|t| t.target.kind == DatasetKind::Volume)
        .collect();
    let mut run = Run::new(opts.progress, volumes.len(), None);
    let scratch = metadata_dir.join("verify-scratch");
    let mut unverifiable = Vec::new();
    let mut verified = 0;
    let key = &keys.manifest;
    let mut session = Some(session);
    for t in volumes {
        let dest = on_receiver(root, &t.target.snapshot)?;
        let dataset = t.target.snapshot.dataset().as_str().to_owned();
        let Some(guid) = t.target.guid else { continue };
        let s = match session.as_mut() {
            Some(s) => s,
            None => session.insert(connector.connect(qube)?),
        };
        let stored = stored_here(metadata_dir, qube, root, &dataset, guid, key);
        match read_back_checked(
            s,
            root,
            &dataset,
            &dest,
            guid,
            stored,
            key,
            &scratch,
            &mut run,
            &mut Discard,
        ) {
            Ok(Some(summary)) => {
                verified += 1;
                run.say(
                    format_args!(
                        "verified  {dest}: {} data blocks ({}) match their manifests",
                        summary.data_blocks,
                        human_bytes(summary.bytes)
                    ),
                    json!({"event": "verified", "snapshot": dest.to_string(), "data_blocks": summary.data_blocks, "bytes": summary.bytes}),
                );
            }
            Ok(None) => {
                unverifiable.push(dest.to_string());
                run.say(
                    format_args!(
                        "UNVERIFIABLE {dest}: the medium holds no manifest of it (it was sent before authenticated backups, or without a key); the next full send of {dataset} makes it verifiable"
                    ),
                    json!({"event": "unverifiable", "snapshot": dest.to_string()}),
                );
            }
            Err(e) => {
                let what = format!("{dest}: {}", outside(&e.to_string()));
                run.say(
                    format_args!("FAILED    {what}"),
                    json!({"event": "failed", "snapshot": dest.to_string(), "error": e.to_string()}),
                );
                problems.add(what);
                // The session may be out of step after a refused read-back: start afresh.
                if let Some(s) = session.take() {
                    s.abandon();
                }
            }
        }
    }
    let s = match session.as_mut() {
        Some(s) => s,
        None => session.insert(connector.connect(qube)?),
    };
    match check_set(s, root, state, keys) {
        Ok(SetCheck::Ok(line)) => crate::outln!("ok        {line}"),
        Ok(SetCheck::None) => {
            unverifiable.push("the set index".into());
            crate::outln!(
                "UNVERIFIABLE the medium holds no set index of {name} (it was sent before set indexes, or without a key); the next `send {name}` stores one",
                name = state.name
            );
        }
        Err(e) => {
            let what = format!("set index: {}", outside(&e.to_string()));
            crate::outln!("FAILED    {what}");
            problems.add(what);
        }
    }
    if let Some(s) = session.take() {
        let _ = s.close();
    }
    crate::outln!(
        "{} done target(s) checked by guid, {verified} zvol(s) read back and verified, {} unverifiable, {} problem(s); {pending} target(s) not sent yet",
        done.len(),
        unverifiable.len(),
        problems.count
    );
    verdict(&problems, unverifiable.len(), &state.name)
}

enum SetCheck {
    /// What was checked, for the `ok` line.
    Ok(String),
    /// The medium has no set index of this backup, and dom0 stored none.
    None,
}

/// The newest set index and its settings: MACs, dom0's record of it, and agreement with
/// dom0's state.
fn check_set(
    session: &mut Client,
    root: &qzb_protocol::DatasetName,
    state: &BackupState,
    keys: &Keys,
) -> Result<SetCheck> {
    let Some(set) = sets::fetch_newest(session, root, state, keys)? else {
        return match &state.last_set {
            Some(last) => Err(Error::Security(format!(
                "dom0 stored a set index of {} at {}, but the medium has none: it was removed",
                state.name,
                crate::state::format_utc(last.created)
            ))),
            None => Ok(SetCheck::None),
        };
    };
    let problems = sets::disagreements(&set.index, state);
    if !problems.is_empty() {
        return Err(Error::Security(format!(
            "the set index of {} disagrees with dom0: {}",
            crate::state::format_utc(set.index.created),
            problems.join("; ")
        )));
    }
    let settings = match &set.settings {
        Some(doc) => format!("settings of {} qube(s)", doc.qubes.len()),
        None => "no settings".into(),
    };
    Ok(SetCheck::Ok(format!(
        "set index of {} ({} snapshot(s){}, {settings}): MACs match, and it is the one dom0 stored last",
        crate::state::format_utc(set.index.created),
        set.index.entries.len(),
        if set.index.complete { "" } else { ", incomplete" },
    )))
}

/// The problems verify found: how many, and the first in full, for the final error (which is
/// all that a log or a mail from a timer may keep).
#[derive(Default)]
struct Problems {
    count: usize,
    first: Option<String>,
}

impl Problems {
    fn add(&mut self, what: String) {
        self.count += 1;
        self.first.get_or_insert(what);
    }
}

fn verdict(problems: &Problems, unverifiable: usize, name: &str) -> Result<()> {
    if let Some(first) = &problems.first {
        return Err(Error::Send(format!(
            "verify found {} problem(s), the medium does not hold what dom0 sent; the first: {first} (all listed above)",
            problems.count
        )));
    }
    if unverifiable > 0 {
        return Err(Error::Partial(format!(
            "{unverifiable} item(s) could not be proved (listed above as UNVERIFIABLE): a zvol snapshot without a manifest was only checked by guid (a full send makes it verifiable: a new backup of it, or `send {name}` after `import --replace` with full sends); a missing set index is stored by the next `send {name}`"
        )));
    }
    Ok(())
}

/// The sequence number of the manifest of `dataset`'s snapshot `guid` if dom0 recorded that
/// it stored it on this medium (its last header there is that snapshot's): then the medium
/// must hold it, and listing none is a lie or a loss, not an old unauthenticated backup.
fn stored_here(
    metadata_dir: &Path,
    qube: &str,
    root: &qzb_protocol::DatasetName,
    dataset: &str,
    guid: u64,
    key: &[u8; 32],
) -> Option<u64> {
    let medium = medium_id(qube, root.as_str());
    // A record that does not verify is `send`'s to report; here it proves nothing.
    let last = Chains::new(metadata_dir)
        .last(&medium, dataset, key)
        .ok()
        .flatten()?;
    (last.snapshot_guid == guid).then_some(last.seq)
}
