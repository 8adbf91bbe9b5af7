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

/// What `restore plan` is asked.
pub struct PlanArgs {
    pub medium: Medium,
    /// The backup whose set to use (needed when the medium holds several).
    pub backup: Option<String>,
    pub choice: crate::restore::plan::Choice,
    pub passphrase: PassphraseSource,
    pub json: bool,
}

/// `restore plan`: the newest complete set of the backup (or the newest at all, said so),
/// checked, and the plan of what restoring it would do here.
/// The checked set a restore uses, and its plan.
struct Prepared {
    backup: String,
    set: FetchedSet,
    plan: crate::restore::plan::RestorePlan,
    keys: Keys,
}

fn prepare(
    metadata_dir: &Path,
    runner: &dyn crate::system::runner::Runner,
    connector: &dyn Connect,
    args: &PlanArgs,
) -> Result<Prepared> {
    use crate::restore::plan::{self, Existing};
    let existing: Vec<Existing> = crate::system::inventory::list_qubes(runner)?
        .into_iter()
        .map(|(name, class, state)| Existing {
            running: !matches!(state.as_str(), "Halted" | "Dying" | "Crashed"),
            name,
            class,
        })
        .collect();
    let mut session = connector.connect(args.medium.qube.as_str())?;
    let keys = keys_for(metadata_dir, &mut session, &args.medium, args.passphrase)?;
    let found = sets::list_all(&mut session, &args.medium.root, &keys)?;
    let _ = session.close();
    let mut sets: Vec<FetchedSet> = Vec::new();
    for (name, set) in found {
        match set {
            Ok(set) => sets.push(set),
            Err(e) => crate::output::stderr_line(format_args!(
                "warning: set {name} refused: {}",
                outside(&e.to_string())
            )),
        }
    }
    let backups: std::collections::BTreeSet<&str> =
        sets.iter().map(|s| s.index.backup.as_str()).collect();
    let backup = match (&args.backup, backups.len()) {
        (Some(b), _) if backups.contains(b.as_str()) => b.clone(),
        (Some(b), _) => {
            return Err(Error::NothingDone(format!(
                "{}:{} holds no set of {b} (it has: {})",
                args.medium.qube,
                args.medium.root,
                backups.into_iter().collect::<Vec<_>>().join(", ")
            )))
        }
        (None, 1) => backups.first().expect("one").to_string(),
        (None, 0) => {
            return Err(Error::NothingDone(format!(
                "{}:{} holds no backup set that checks out (see `restore list`)",
                args.medium.qube, args.medium.root
            )))
        }
        (None, _) => {
            return Err(Error::Refused(format!(
                "{}:{} holds sets of several backups ({}): choose one with --backup",
                args.medium.qube,
                args.medium.root,
                backups.into_iter().collect::<Vec<_>>().join(", ")
            )))
        }
    };
    let of_backup: Vec<usize> = (0..sets.len())
        .filter(|&i| sets[i].index.backup == backup)
        .collect();
    let chosen = of_backup
        .iter()
        .rev()
        .find(|&&i| sets[i].index.complete)
        .or(of_backup.last())
        .copied()
        .expect("the backup has a set");
    // While dom0's state of the backup exists, the medium's newest set must be the one it
    // stored last on this medium: an older genuine set replayed is refused. (After total loss
    // only the MAC'd dates, shown by `restore list`, tell.)
    let store = crate::state::Store::new(metadata_dir);
    if store.exists(&backup) {
        let state = store.load(&backup)?;
        let medium =
            crate::state::chains::medium_id(args.medium.qube.as_str(), args.medium.root.as_str());
        let newest = &sets[*of_backup.last().expect("the backup has a set")];
        if let Some(last) = state.last_set.as_ref().filter(|l| l.medium == medium) {
            if !newest.is(last) {
                return Err(Error::Security(format!(
                    "the newest set of {backup} on the medium (of {}) is not the one dom0 stored last (of {}): an older set was replayed or the index replaced; not restoring from it",
                    format_utc(newest.index.created),
                    format_utc(last.created)
                )));
            }
        }
    }
    let set = sets.swap_remove(chosen);
    let Some(settings) = &set.settings else {
        return Err(Error::NothingDone(format!(
            "the set of {backup} at {} has no settings (they could not be read when it was made), so its qubes cannot be recreated",
            format_utc(set.index.created)
        )));
    };
    let planned = plan::plan(settings, &set.index, &existing, &args.choice)
        .map_err(|e| Error::Refused(format!("no restore plan: {e}")))?;
    Ok(Prepared {
        backup,
        set,
        plan: planned,
        keys,
    })
}

/// `restore plan`: the newest complete set of the backup (or the newest at all, said so),
/// checked, and the plan of what restoring it would do here.
pub fn plan(
    metadata_dir: &Path,
    runner: &dyn crate::system::runner::Runner,
    connector: &dyn Connect,
    args: &PlanArgs,
) -> Result<()> {
    let prepared = prepare(metadata_dir, runner, connector, args)?;
    print_plan(&prepared, &args.medium, args.json);
    if !args.json {
        crate::outln!(
            "This is the plan only: `restore run` with the same arguments (without --dry-run) carries it out."
        );
    }
    Ok(())
}

fn print_plan(prepared: &Prepared, medium: &Medium, json_out: bool) {
    use crate::restore::plan::{Action, Target};
    let (backup, set, planned) = (&prepared.backup, &prepared.set, &prepared.plan);
    let target = |t: &Target| match t {
        Target::Restored(n) => format!("{n} (restored)"),
        Target::Existing(n) => format!("{n} (existing)"),
        Target::Default => "the default".to_owned(),
    };
    if json_out {
        crate::outln!(
            "{}",
            json!({
                "backup": backup,
                "set": format_utc(set.index.created),
                "complete": set.index.complete,
                "qubes": planned.qubes.iter().map(|q| json!({
                    "name": q.name,
                    "original": q.original,
                    "class": q.class,
                    "action": match q.action { Action::Create => "create", Action::Replace => "replace" },
                    "references": q.references.iter().map(|r| json!({
                        "property": r.property, "original": r.original, "to": target(&r.target),
                    })).collect::<Vec<_>>(),
                    "volumes": q.volumes.iter().map(|v| json!({
                        "volume": v.volume, "snapshot": v.snapshot, "guid": v.guid,
                    })).collect::<Vec<_>>(),
                    "unrestorable": q.unrestorable,
                })).collect::<Vec<_>>(),
                "skipped": planned.skipped.iter().map(|(n, why)| json!({"qube": n, "why": why})).collect::<Vec<_>>(),
            })
        );
        return;
    }
    crate::outln!(
        "Restore plan for the set of {} at {}{} from {}:{}:",
        outside(backup),
        format_utc(set.index.created),
        if set.index.complete {
            ""
        } else {
            " (incomplete: the newest set of this backup; no complete one exists)"
        },
        medium.qube,
        medium.root
    );
    for (i, q) in planned.qubes.iter().enumerate() {
        let verb = match q.action {
            Action::Create => "create ",
            Action::Replace => "REPLACE",
        };
        let was = if q.name != q.original {
            format!(", was {}", q.original)
        } else {
            String::new()
        };
        crate::outln!("  {:>2}. {verb} {} ({}{was})", i + 1, q.name, q.class);
        for r in &q.references {
            crate::outln!(
                "        {} {} -> {}",
                r.property,
                r.original,
                target(&r.target)
            );
        }
        for v in &q.volumes {
            crate::outln!("        volume {} from {}", v.volume, v.snapshot);
        }
        for u in &q.unrestorable {
            crate::outln!("        not restored: volume {u}");
        }
    }
    for (name, why) in &planned.skipped {
        crate::outln!("  skipped {name}: {why}");
    }
}

/// What `restore run` does after printing the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunMode {
    /// Create and fill each qube.
    Restore,
    /// `--dry-run`: print the plan and stop, as `restore plan` does.
    DryRun,
    /// `--verify-only`: read back and check every volume of the plan as a real run would,
    /// and write nothing.
    VerifyOnly,
}

/// `restore run`: the plan, then each qube created and filled (see `restore::execute`), or
/// only the plan (`--dry-run`), or only the checked read-back (`--verify-only`).
pub fn run(
    metadata_dir: &Path,
    runner: &dyn crate::system::runner::Runner,
    connector: &dyn Connect,
    args: &PlanArgs,
    stop_on_error: bool,
    mode: RunMode,
) -> Result<()> {
    use crate::restore::execute::{execute, summary_table, verify_only, Source};
    if mode == RunMode::DryRun {
        return plan(metadata_dir, runner, connector, args);
    }
    let prepared = prepare(metadata_dir, runner, connector, args)?;
    print_plan(&prepared, &args.medium, args.json);
    if prepared.plan.qubes.is_empty() {
        return Err(Error::NothingDone(
            "the plan restores no qube (see why above)".into(),
        ));
    }
    let settings = prepared
        .set
        .settings
        .as_ref()
        .expect("prepare requires settings");
    let scratch = metadata_dir.join("restore-scratch");
    let source = Source {
        connector,
        backup_qube: args.medium.qube.as_str(),
        root: &args.medium.root,
        keys: &prepared.keys,
        scratch: &scratch,
    };
    let mut progress = crate::stream::progress::Run::new(
        crate::stream::progress::Mode::detect(args.json),
        prepared.plan.qubes.iter().map(|q| q.volumes.len()).sum(),
        None,
    );
    let outcome = match mode {
        RunMode::VerifyOnly => verify_only(&source, &prepared.plan, stop_on_error, &mut progress),
        _ => execute(
            runner,
            &source,
            settings,
            &prepared.plan,
            stop_on_error,
            &mut progress,
        ),
    };
    let _ = std::fs::remove_dir_all(&scratch);
    let verb = match mode {
        RunMode::VerifyOnly => "verified",
        _ => "restored",
    };
    if !args.json {
        crate::outln!("Summary:");
        for line in summary_table(&prepared.plan, &outcome, verb) {
            crate::outln!("{line}");
        }
    }
    let volumes = outcome.volumes.len();
    let bad_volumes = outcome.volumes.iter().filter(|r| r.error.is_some()).count();
    if mode == RunMode::VerifyOnly {
        progress.say(
            format_args!(
                "{} volume(s) of {} qube(s) read back and checked: {} match their manifests, {bad_volumes} failed; nothing was created or imported (--verify-only)",
                volumes,
                outcome.restored.len() + outcome.failed.len(),
                volumes - bad_volumes,
            ),
            json!({"event": "summary", "volumes": volumes, "failed_volumes": bad_volumes, "qubes_ok": outcome.restored, "qubes_failed": outcome.failed.iter().map(|(n, _)| n).collect::<Vec<_>>()}),
        );
    } else {
        progress.say(
            format_args!(
                "{} qube(s) restored, {} failed, {} setting(s) not applied",
                outcome.restored.len(),
                outcome.failed.len(),
                outcome.warnings.len()
            ),
            json!({"event": "summary", "restored": outcome.restored, "failed": outcome.failed.iter().map(|(n, _)| n).collect::<Vec<_>>(), "warnings": outcome.warnings.len()}),
        );
    }
    if let Some((name, why)) = outcome.failed.first() {
        let what = match mode {
            RunMode::VerifyOnly => "the check",
            _ => "the restore",
        };
        return Err(Error::Send(format!(
            "{what} of {} qube(s) failed; the first, {name}: {why}",
            outcome.failed.len()
        )));
    }
    Ok(())
}
