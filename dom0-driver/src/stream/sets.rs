//! The run's record on the medium: the settings of the backed-up qubes and the set index,
//! both sealed with the metadata key (`qzb_protocol::sets`). `send` stores them at the end of
//! each authenticated run; `verify` fetches the newest, checks both MACs, the settings' hash,
//! that it is the index dom0 last stored, and that it agrees with dom0's state.
//!
//! Blob names (`<id>` = [`name_id`] of the backup's name, `<t>` = the index's `created` as 16
//! hex digits, so names sort by time): `sets/<id>/<t>.settings` and `sets/<id>/<t>.index`. The
//! settings go first: a medium never holds an index whose settings are missing.

use crate::error::{Error, Result};
use crate::key::Keys;
use crate::output::outside;
use crate::state::chains::{name_id, Chains};
use crate::state::{BackupState, LastSet, ManifestState, SendState};
use crate::stream::client::Client;
use qzb_protocol::sets::{
    max_sealed_len, IndexEntry, IndexManifest, Purpose, Sealed, SetIndex, SettingsDoc,
};
use qzb_protocol::{BlobName, DatasetKind, DatasetName};

fn blob(name: String) -> Result<BlobName> {
    BlobName::parse(&name).map_err(|e| Error::State(format!("blob name {name}: {e}")))
}

fn dir_blob(backup: &str) -> Result<BlobName> {
    blob(format!("sets/{}", name_id(backup)))
}

fn set_blob(backup: &str, created: u64, ext: &str) -> Result<BlobName> {
    blob(format!("sets/{}/{created:016x}.{ext}", name_id(backup)))
}

/// The index of `state` as it is after this run: every done target, with its stream's hash
/// and, for a zvol whose manifest is on the medium, the manifest header's hash.
pub fn build_index(
    state: &BackupState,
    keys: &Keys,
    medium: &str,
    chains: &Chains,
    settings_hash: Option<[u8; 32]>,
    created: u64,
) -> Result<SetIndex> {
    let mut entries = Vec::new();
    for t in &state.targets {
        if t.send_state != SendState::Done {
            continue;
        }
        let Some(guid) = t.received_guid.or(t.target.guid) else {
            continue;
        };
        let volume = t.target.kind == crate::system::inventory::DatasetKind::Volume;
        let stream = match &t.sent_stream {
            Some(s) => Some((
                s.bytes,
                *blake3::Hash::from_hex(&s.blake3)
                    .map_err(|e| Error::State(format!("{}: stream hash: {e}", t.target.snapshot)))?
                    .as_bytes(),
            )),
            None => None,
        };
        let manifest = if volume && t.manifest == Some(ManifestState::Stored) {
            chains
                .last(medium, t.target.snapshot.dataset().as_str(), &keys.manifest)?
                .filter(|h| h.snapshot_guid == guid)
                .map(|h| IndexManifest {
                    seq: h.seq,
                    header_hash: h.hash(),
                })
        } else {
            None
        };
        entries.push(IndexEntry {
            snapshot: t.target.snapshot.to_string(),
            guid,
            volume,
            stream,
            manifest,
        });
    }
    Ok(SetIndex {
        backup: state.name.to_string(),
        created,
        key_id: keys.key_id.clone(),
        complete: state
            .targets
            .iter()
            .all(|t| t.send_state == SendState::Done),
        settings_hash,
        entries,
    })
}

/// Stores the settings (if captured) and the index of this run; returns what dom0 records.
pub fn store_set(
    session: &mut Client,
    root: &DatasetName,
    medium: &str,
    index: &SetIndex,
    sealed_settings: Option<&[u8]>,
    keys: &Keys,
) -> Result<LastSet> {
    let seal_err = |what: &str, e: qzb_protocol::sets::SealError| {
        Error::State(format!("cannot seal the {what}: {e}"))
    };
    if let Some(bytes) = sealed_settings {
        let name = set_blob(&index.backup, index.created, "settings")?;
        session.put_blob(root, &name, &mut &bytes[..], bytes.len() as u64)?;
    }
    let sealed = index
        .seal(&keys.metadata)
        .map_err(|e| seal_err("set index", e))?;
    let name = set_blob(&index.backup, index.created, "index")?;
    session.put_blob(root, &name, &mut sealed.as_slice(), sealed.len() as u64)?;
    Ok(LastSet {
        medium: medium.to_owned(),
        created: index.created,
        blake3: blake3::hash(&sealed).to_hex().to_string(),
    })
}

/// The newest set of a backup on the medium, checked.
pub struct FetchedSet {
    pub index: SetIndex,
    pub settings: Option<SettingsDoc>,
    /// blake3 of the sealed index, hex: what dom0 records as [`LastSet::blake3`].
    pub sealed_hash: String,
}

impl FetchedSet {
    /// Whether this is the set dom0 recorded storing last.
    pub fn is(&self, last: &LastSet) -> bool {
        self.index.created == last.created && self.sealed_hash == last.blake3
    }
}

fn fetch(
    session: &mut Client,
    root: &DatasetName,
    name: &BlobName,
    purpose: Purpose,
) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    session.get_blob(root, name, max_sealed_len(purpose) as u64, &mut bytes)?;
    Ok(bytes)
}

/// `(backup id, created)` of a listed blob named `sets/<id>/<16 hex>.index`.
fn index_name(name: &BlobName) -> Option<(String, u64)> {
    let mut parts = name.as_str().split('/');
    let (Some("sets"), Some(id), Some(leaf), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let hex = leaf.strip_suffix(".index")?;
    let created = (hex.len() == 16)
        .then(|| u64::from_str_radix(hex, 16).ok())
        .flatten()?;
    Some((id.to_owned(), created))
}

/// Fetches and checks the set `sets/<id>/<created>.index` and its settings. The blob's name
/// only says where to look: the index must name the same backup (by id) and time, and dom0's
/// key. Every problem is an `Error::Security` naming the blob.
fn open_set(
    session: &mut Client,
    root: &DatasetName,
    id: &str,
    created: u64,
    keys: &Keys,
) -> Result<FetchedSet> {
    let name = blob(format!("sets/{id}/{created:016x}.index"))?;
    let sealed = fetch(session, root, &name, Purpose::SetIndex)?;
    let index = SetIndex::open(&sealed, &keys.metadata)
        .map_err(|e| Error::Security(format!("set index {name}: {e}")))?;
    if index.created != created || name_id(&index.backup) != id {
        return Err(Error::Security(format!(
            "set index {name} holds the index of {} at {}: it was moved or renamed",
            outside(&index.backup),
            index.created
        )));
    }
    if index.key_id != keys.key_id {
        return Err(Error::Security(format!(
            "set index {name} names key {} but the key in use is {}",
            index.key_id, keys.key_id
        )));
    }
    let settings = match index.settings_hash {
        None => None,
        Some(expected) => {
            let name = blob(format!("sets/{id}/{created:016x}.settings"))?;
            let sealed = fetch(session, root, &name, Purpose::Settings)?;
            if blake3::hash(&sealed) != blake3::Hash::from_bytes(expected) {
                return Err(Error::Security(format!(
                    "settings {name} are not the ones the set index names"
                )));
            }
            Some(
                SettingsDoc::open(&sealed, &keys.metadata)
                    .map_err(|e| Error::Security(format!("settings {name}: {e}")))?,
            )
        }
    };
    Ok(FetchedSet {
        index,
        settings,
        sealed_hash: blake3::hash(&sealed).to_hex().to_string(),
    })
}

/// Fetches and checks the newest set index of `state`'s backup and its settings: `Ok(None)`
/// when the medium has none. The newest must be the one dom0 stored last, if it stored one.
pub fn fetch_newest(
    session: &mut Client,
    root: &DatasetName,
    state: &BackupState,
    keys: &Keys,
) -> Result<Option<FetchedSet>> {
    let backup = state.name.to_string();
    let id = name_id(&backup);
    let listed = session.list_blobs(root, Some(&dir_blob(&backup)?))?;
    let newest = listed
        .iter()
        .filter_map(|b| index_name(&b.name))
        .filter(|(i, _)| *i == id)
        .map(|(_, created)| created)
        .max();
    let Some(created) = newest else {
        return Ok(None);
    };
    let set = open_set(session, root, &id, created, keys)?;
    if let Some(last) = state.last_set.as_ref().filter(|last| !set.is(last)) {
        return Err(Error::Security(format!(
            "the newest set index on the medium ({}) is not the one dom0 stored last (at {}): the receiver rolled the backup back or replaced the index",
            set_blob(&backup, created, "index")?,
            crate::state::format_utc(last.created)
        )));
    }
    Ok(Some(set))
}

/// Every set on the medium, oldest first per backup: each checked (MACs, name, key), or why
/// it was refused, with its blob name. A failure of the session itself ends the listing.
pub fn list_all(
    session: &mut Client,
    root: &DatasetName,
    keys: &Keys,
) -> Result<Vec<(String, Result<FetchedSet>)>> {
    let prefix = blob("sets".into())?;
    let mut found: Vec<(String, u64)> = session
        .list_blobs(root, Some(&prefix))?
        .iter()
        .filter_map(|b| index_name(&b.name))
        .collect();
    found.sort();
    let mut out = Vec::with_capacity(found.len());
    for (id, created) in found {
        let name = format!("sets/{id}/{created:016x}.index");
        match open_set(session, root, &id, created, keys) {
            Ok(set) => out.push((name, Ok(set))),
            Err(e @ Error::Security(_)) => out.push((name, Err(e))),
            // The session itself failed: nothing more can be read through it.
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Where the set index and dom0's state disagree about a done target: one line each.
pub fn disagreements(index: &SetIndex, state: &BackupState) -> Vec<String> {
    let mut out = Vec::new();
    for t in &state.targets {
        if t.send_state != SendState::Done {
            continue;
        }
        let snapshot = t.target.snapshot.to_string();
        match index.entries.iter().find(|e| e.snapshot == snapshot) {
            None => out.push(format!(
                "{snapshot} is done in dom0 but not in the set index"
            )),
            Some(e) => {
                let guid = t.received_guid.or(t.target.guid);
                if Some(e.guid) != guid {
                    out.push(format!(
                        "{snapshot}: the set index has guid {}, dom0 {}",
                        e.guid,
                        guid.map(|g| g.to_string()).unwrap_or_default()
                    ));
                }
                let kind = if e.volume {
                    DatasetKind::Volume
                } else {
                    DatasetKind::Filesystem
                };
                let ours = match t.target.kind {
                    crate::system::inventory::DatasetKind::Volume => DatasetKind::Volume,
                    crate::system::inventory::DatasetKind::Filesystem => DatasetKind::Filesystem,
                };
                if kind != ours {
                    out.push(format!(
                        "{snapshot}: the set index has another dataset kind"
                    ));
                }
            }
        }
    }
    out
}
