//! `restore list --from QUBE:DATASET`: the backup sets a medium holds, from their MAC'd set
//! indexes and settings. Works on a fresh dom0: without a key in the metadata directory, the
//! medium's wrapped key (`key/wrapped`) is unlocked with the passphrase (its Argon2id
//! parameters capped before use).

use crate::error::{Error, Result};
use crate::key::{self, Keys, PassphraseSource};
use crate::output::{human_bytes, outside};
use crate::state::format_utc;
use crate::stream::client::Client;
use crate::stream::qrexec::Connect;
use crate::stream::sets::{self, FetchedSet};
use qzb_protocol::{BlobName, DatasetName, QubeName};
use serde_json::json;
use std::path::Path;

/// A backup medium: the backup qube and the receiver root dataset in it.
#[derive(Clone, Debug)]
pub struct Medium {
    pub qube: QubeName,
    pub root: DatasetName,
}

impl Medium {
    /// Parses `QUBE:DATASET`.
    pub fn parse(text: &str) -> std::result::Result<Medium, String> {
        let (qube, root) = text.split_once(':').ok_or_else(|| {
            format!("{text:?} is not QUBE:DATASET (e.g. backups:backuppool/backups/mydesktop)")
        })?;
        Ok(Medium {
            qube: QubeName::parse(qube).map_err(|e| format!("backup qube {qube:?}: {e}"))?,
            root: DatasetName::parse(root).map_err(|e| format!("dataset {root:?}: {e}"))?,
        })
    }
}

/// The keys to read `medium` with: dom0's own, or the medium's wrapped key unlocked with the
/// passphrase when dom0 has none (a fresh install).
fn keys_for(
    metadata_dir: &Path,
    session: &mut Client,
    medium: &Medium,
    passphrase: PassphraseSource,
) -> Result<Keys> {
    if let Some(keys) = key::load(metadata_dir)? {
        return Ok(keys);
    }
    let name = BlobName::parse("key/wrapped").expect("a valid blob name");
    let mut wrapped = Vec::new();
    session
        .get_blob(
            &medium.root,
            &name,
            qzb_protocol::keyfile::LEN as u64,
            &mut wrapped,
        )
        .map_err(|e| {
            Error::Key(format!(
                "dom0 has no key, and the medium's wrapped key could not be read ({e}); was anything sent to {}:{} with a key?",
                medium.qube, medium.root
            ))
        })?;
    let passphrase = key::read_passphrase(passphrase, false)?;
    key::unlock(&wrapped, passphrase.as_bytes())
}

/// `restore list`.
pub fn list(
    metadata_dir: &Path,
    connector: &dyn Connect,
    medium: &Medium,
    passphrase: PassphraseSource,
    json_out: bool,
) -> Result<()> {
    let mut session = connector.connect(medium.qube.as_str())?;
    let keys = keys_for(metadata_dir, &mut session, medium, passphrase)?;
    let found = sets::list_all(&mut session, &medium.root, &keys)?;
    let _ = session.close();
    if !json_out {
        crate::outln!(
            "Backup sets on {}:{} (key {}):",
            medium.qube,
            medium.root,
            keys.key_id
        );
    }
    let mut refused = 0;
    for (name, set) in &found {
        match set {
            Ok(set) if json_out => crate::outln!("{}", set_json(set)),
            Ok(set) => crate::outln!("{}", set_line(set)),
            Err(e) => {
                refused += 1;
                if json_out {
                    crate::outln!("{}", json!({"blob": name, "refused": e.to_string()}));
                } else {
                    crate::outln!("  REFUSED {name}: {}", outside(&e.to_string()));
                }
            }
        }
    }
    if found.is_empty() {
        return Err(Error::NothingDone(format!(
            "{}:{} holds no backup set (nothing was sent to it with a key by this version)",
            medium.qube, medium.root
        )));
    }
    if refused > 0 {
        return Err(Error::Security(format!(
            "{refused} set index(es) on the medium were refused (listed above): altered, or not made with this key"
        )));
    }
    Ok(())
}

struct Totals {
    volumes: usize,
    filesystems: usize,
    bytes: u64,
}

fn totals(set: &FetchedSet) -> Totals {
    let e = &set.index.entries;
    Totals {
        volumes: e.iter().filter(|e| e.volume).count(),
        filesystems: e.iter().filter(|e| !e.volume).count(),
        bytes: e.iter().filter_map(|e| e.stream.map(|(b, _)| b)).sum(),
    }
}

fn qubes(set: &FetchedSet) -> Vec<&str> {
    set.settings
        .as_ref()
        .map(|d| d.qubes.iter().map(|q| q.name.as_str()).collect())
        .unwrap_or_default()
}

fn set_line(set: &FetchedSet) -> String {
    let t = totals(set);
    let qubes = qubes(set);
    format!(
        "  {}  {}  {}  {} zvol(s), {} filesystem(s), {} sent  qubes: {}",
        outside(&set.index.backup),
        format_utc(set.index.created),
        if set.index.complete {
            "complete  "
        } else {
            "incomplete"
        },
        t.volumes,
        t.filesystems,
        human_bytes(t.bytes),
        if set.settings.is_none() {
            "(no settings captured)".to_owned()
        } else if qubes.is_empty() {
            "-".to_owned()
        } else {
            qubes.join(", ")
        }
    )
}

fn set_json(set: &FetchedSet) -> serde_json::Value {
    let t = totals(set);
    json!({
        "backup": set.index.backup,
        "created": format_utc(set.index.created),
        "complete": set.index.complete,
        "key_id": set.index.key_id,
        "zvols": t.volumes,
        "filesystems": t.filesystems,
        "sent_bytes": t.bytes,
        "settings": set.settings.is_some(),
        "qubes": qubes(set),
        "snapshots": set.index.entries.iter().map(|e| json!({
            "snapshot": e.snapshot,
            "guid": e.guid,
            "zvol": e.volume,
            "manifest": e.manifest.is_some(),
        })).collect::<Vec<_>>(),
    })
}
