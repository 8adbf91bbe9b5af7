//! Carrying out a restore plan: per qube, in the plan's order, create it through the Admin API
//! with its saved settings (references rewritten to the plan's names), then fill each volume
//! from a checked read-back through Qubes' volume import. A qube whose creation or any volume
//! fails is removed again, so nothing half-restored stays behind; settings the new system
//! refuses (a device that is not there, a property this release lacks) are warnings.

use std::path::Path;

use qzb_protocol::manifest::BlockCheckSummary;
use qzb_protocol::sets::{DeviceList, QubeSettings, SettingsDoc};
use qzb_protocol::{DatasetName, SnapshotName};
use serde_json::json;

use crate::error::{Error, Result};
use crate::key::Keys;
use crate::output::{human_bytes, outside};
use crate::restore::admin::call;
use crate::restore::image::Import;
use crate::restore::plan::{PlannedQube, PlannedVolume, RestorePlan, Target};
use crate::stream::client::Client;
use crate::stream::progress::Run;
use crate::stream::qrexec::Connect;
use crate::stream::readback::{read_back_checked, Discard, Verified};
use crate::stream::receiver::on_receiver;
use crate::system::runner::Runner;

/// Properties not copied: identity and runtime state the new system assigns, and those set at
/// creation (label, template).
const NOT_COPIED: [&str; 12] = [
    "name",
    "klass",
    "qid",
    "uuid",
    "xid",
    "stubdom_xid",
    "start_time",
    "label",
    "template",
    "backup_timestamp",
    "icon",
    "updateable",
];

/// Where the volumes come from.
pub struct Source<'a> {
    pub connector: &'a dyn Connect,
    pub backup_qube: &'a str,
    pub root: &'a DatasetName,
    pub keys: &'a Keys,
    pub scratch: &'a Path,
}

/// What happened to each qube.
#[derive(Debug, Default)]
pub struct Outcome {
    pub restored: Vec<String>,
    pub failed: Vec<(String, String)>,
    pub warnings: Vec<String>,
    /// Every volume the run read back, in order: the rows of the summary table.
    pub volumes: Vec<VolumeRow>,
}

/// One volume read back (and written, unless `--verify-only`).
#[derive(Debug, Clone)]
pub struct VolumeRow {
    /// The qube's name in the plan (its new name when renamed).
    pub qube: String,
    pub volume: String,
    /// Data blocks and their bytes, once the whole volume checked out.
    pub checked: Option<(u64, u64)>,
    /// How long the read-back took.
    pub elapsed: std::time::Duration,
    /// Why it failed.
    pub error: Option<String>,
}

/// Carries out `plan`. Stops after the first failed qube if `stop_on_error`.
pub fn execute(
    runner: &dyn Runner,
    source: &Source,
    settings: &SettingsDoc,
    plan: &RestorePlan,
    stop_on_error: bool,
    run: &mut Run,
) -> Outcome {
    let mut out = Outcome::default();
    let mut session: Option<Client> = None;
    for q in &plan.qubes {
        let Some(saved) = settings.qube(&q.original) else {
            out.failed
                .push((q.name.clone(), "not in the set's settings".into()));
            continue;
        };
        let mut warnings = Vec::new();
        match restore_qube(
            runner,
            source,
            &mut session,
            saved,
            q,
            &mut warnings,
            run,
            &mut out.volumes,
        ) {
            Ok(()) => {
                run.say(
                    format_args!(
                        "restored  {}{}: {} volume(s) checked and imported{}",
                        q.name,
                        if q.name != q.original { format!(" (was {})", q.original) } else { String::new() },
                        q.volumes.len(),
                        if warnings.is_empty() { String::new() } else { format!(", {} setting(s) not applied (below)", warnings.len()) }
                    ),
                    json!({"event": "restored", "qube": q.name, "original": q.original, "volumes": q.volumes.len(), "warnings": warnings}),
                );
                out.restored.push(q.name.clone());
            }
            Err(e) => {
                // Nothing half-restored stays: the qube goes again (it was created by us).
                let removed = call(runner, "admin.vm.Remove", &q.name, None, b"");
                let why = format!(
                    "{}{}",
                    e,
                    match &removed {
                        Ok(_) => "; the qube was removed again".to_owned(),
                        Err(r) =>
                            format!("; removing it again failed too ({r}): remove it by hand"),
                    }
                );
                run.say(
                    format_args!("FAILED    {}: {}", q.name, outside(&why)),
                    json!({"event": "failed", "qube": q.name, "error": why}),
                );
                out.failed.push((q.name.clone(), why));
                // The read-back may have left the session out of step.
                if let Some(s) = session.take() {
                    s.abandon();
                }
                if stop_on_error {
                    break;
                }
            }
        }
        for w in &warnings {
            run.say(
                format_args!("  warning: {}: {}", q.name, outside(w)),
                json!({"event": "warning", "qube": q.name, "warning": w}),
            );
        }
        out.warnings
            .extend(warnings.into_iter().map(|w| format!("{}: {w}", q.name)));
    }
    if let Some(s) = session.take() {
        let _ = s.close();
    }
    out
}

fn target_name(t: &Target) -> Option<&str> {
    match t {
        Target::Restored(n) | Target::Existing(n) => Some(n),
        Target::Default => None,
    }
}

#[allow(clippy::too_many_arguments)]
fn restore_qube(
    runner: &dyn Runner,
    source: &Source,
    session: &mut Option<Client>,
    saved: &QubeSettings,
    q: &PlannedQube,
    warnings: &mut Vec<String>,
    run: &mut Run,
    rows: &mut Vec<VolumeRow>,
) -> std::result::Result<(), String> {
    if q.action != crate::restore::plan::Action::Create {
        return Err(
            "replacing an existing qube is not built yet (restore it with --rename)".into(),
        );
    }
    let label = saved
        .property("label")
        .map(|p| p.value.as_str())
        .filter(|l| !l.is_empty())
        .unwrap_or("red");
    let template = q
        .references
        .iter()
        .find(|r| r.property == "template")
        .and_then(|r| target_name(&r.target));
    call(
        runner,
        &format!("admin.vm.Create.{}", q.class),
        "dom0",
        template,
        format!("name={} label={label}", q.name).as_bytes(),
    )
    .map_err(|e| format!("creating it failed: {e}"))?;

    let mut apply = |method: &str, arg: Option<&str>, payload: &[u8]| {
        if let Err(e) = call(runner, method, &q.name, arg, payload) {
            warnings.push(e);
        }
    };
    for p in &saved.properties {
        if p.is_default || p.kind == "vm" || NOT_COPIED.contains(&p.name.as_str()) {
            continue;
        }
        apply("admin.vm.property.Set", Some(&p.name), p.value.as_bytes());
    }
    for r in q.references.iter().filter(|r| r.property != "template") {
        match target_name(&r.target) {
            Some(name) => apply("admin.vm.property.Set", Some(&r.property), name.as_bytes()),
            None => apply("admin.vm.property.Reset", Some(&r.property), b""),
        }
    }
    for (name, value) in &saved.features {
        apply("admin.vm.feature.Set", Some(name), value.as_bytes());
    }
    for tag in &saved.tags {
        apply("admin.vm.tag.Set", Some(tag), b"");
    }
    if let Some(rules) = saved.firewall.as_ref().filter(|r| !r.is_empty()) {
        let payload: String = rules.iter().map(|r| format!("{r}\n")).collect();
        apply("admin.vm.firewall.Set", None, payload.as_bytes());
    }
    for d in &saved.devices {
        match d {
            DeviceList::Assigned { class, lines } => {
                for line in lines {
                    let (device, options) = line.split_once(' ').unwrap_or((line, ""));
                    apply(
                        &format!("admin.vm.device.{class}.Assign"),
                        Some(device),
                        options.as_bytes(),
                    );
                }
            }
            DeviceList::Unavailable { .. } => {}
        }
    }
    for d in &saved.devices {
        if let DeviceList::Unavailable { class, why } = d {
            warnings.push(format!(
                "its {class} device assignments were not readable when the backup was made ({why})"
            ));
        }
    }
    for u in &q.unrestorable {
        warnings.push(format!("volume {u}"));
    }

    for v in &q.volumes {
        let mut import = Import::new(runner, &q.name, &v.volume);
        check_volume(source, session, q, v, run, rows, &mut import)
            .map_err(|e| format!("volume {}: {e}", v.volume))?;
    }
    Ok(())
}

/// Reads one planned volume back from the medium, checked against its chain of manifests,
/// into `sink` (the volume import, or nothing for `--verify-only`), and records its row.
fn check_volume(
    source: &Source,
    session: &mut Option<Client>,
    q: &PlannedQube,
    v: &PlannedVolume,
    run: &mut Run,
    rows: &mut Vec<VolumeRow>,
    sink: &mut dyn Verified,
) -> Result<()> {
    let start = std::time::Instant::now();
    let result = read_volume(source, session, v, run, sink);
    rows.push(VolumeRow {
        qube: q.name.clone(),
        volume: v.volume.clone(),
        checked: result.as_ref().ok().map(|s| (s.data_blocks, s.bytes)),
        elapsed: start.elapsed(),
        error: result.as_ref().err().map(|e| e.to_string()),
    });
    result.map(|_| ())
}

fn read_volume(
    source: &Source,
    session: &mut Option<Client>,
    v: &PlannedVolume,
    run: &mut Run,
    sink: &mut dyn Verified,
) -> Result<BlockCheckSummary> {
    let snapshot = SnapshotName::parse(&v.snapshot)
        .map_err(|e| Error::State(format!("{}: {e}", v.snapshot)))?;
    let dest = on_receiver(source.root, &snapshot)?;
    let s = match session.as_mut() {
        Some(s) => s,
        None => session.insert(source.connector.connect(source.backup_qube)?),
    };
    let checked = read_back_checked(
        s,
        source.root,
        snapshot.dataset().as_str(),
        &dest,
        v.guid,
        None,
        &source.keys.manifest,
        source.scratch,
        run,
        sink,
    )?;
    checked.ok_or_else(|| {
        Error::Security(format!(
            "the medium holds no manifest of {dest}, though the set index names one"
        ))
    })
}

/// `restore run --verify-only`: every volume of the plan read back and checked exactly as a
/// real run reads it, the blocks dropped. Nothing is created, set or imported: no Admin API
/// write, no `qvm-volume`. A qube counts as failed when any of its volumes does.
pub fn verify_only(
    source: &Source,
    plan: &RestorePlan,
    stop_on_error: bool,
    run: &mut Run,
) -> Outcome {
    let mut out = Outcome::default();
    let mut session: Option<Client> = None;
    'qubes: for q in &plan.qubes {
        for v in &q.volumes {
            let label = format!("{}:{}", q.name, v.volume);
            match check_volume(
                source,
                &mut session,
                q,
                v,
                run,
                &mut out.volumes,
                &mut Discard,
            ) {
                Ok(()) => {
                    let (blocks, bytes) = out
                        .volumes
                        .last()
                        .and_then(|r| r.checked)
                        .unwrap_or_default();
                    run.say(
                        format_args!(
                            "verified  {label} from {}: {blocks} data blocks ({}) match their manifests",
                            v.snapshot,
                            human_bytes(bytes)
                        ),
                        json!({"event": "verified", "qube": q.name, "volume": v.volume, "snapshot": v.snapshot, "data_blocks": blocks, "bytes": bytes}),
                    );
                }
                Err(e) => {
                    let why = format!("volume {}: {e}", v.volume);
                    run.say(
                        format_args!("FAILED    {label}: {}", outside(&e.to_string())),
                        json!({"event": "failed", "qube": q.name, "volume": v.volume, "error": e.to_string()}),
                    );
                    out.failed.push((q.name.clone(), why));
                    if let Some(s) = session.take() {
                        let _ = s.close();
                    }
                    if stop_on_error {
                        break 'qubes;
                    }
                    continue 'qubes;
                }
            }
        }
        for u in &q.unrestorable {
            out.warnings.push(format!("{}: volume {u}", q.name));
        }
        out.restored.push(q.name.clone());
    }
    if let Some(s) = session.take() {
        let _ = s.close();
    }
    out
}

/// The summary table at the end of `restore run` (and `--verify-only`): one row per volume
/// read back, and one per qube that failed before any volume. `verb` is what success is
/// called ("restored", "verified"). Pure, so its layout is tested without a clock.
pub fn summary_table(plan: &RestorePlan, outcome: &Outcome, verb: &str) -> Vec<String> {
    let failed = |name: &str| outcome.failed.iter().find(|(n, _)| n == name);
    let mut rows: Vec<[String; 6]> = vec![[
        "QUBE".into(),
        "VOLUME".into(),
        "DATA".into(),
        "TIME".into(),
        "RATE".into(),
        "RESULT".into(),
    ]];
    let dash = || "-".to_owned();
    for q in &plan.qubes {
        let mine: Vec<&VolumeRow> = outcome
            .volumes
            .iter()
            .filter(|r| r.qube == q.name)
            .collect();
        let qube_failed = failed(&q.name).is_some();
        let attempted = qube_failed || outcome.restored.contains(&q.name);
        if !attempted {
            rows.push([
                q.name.clone(),
                dash(),
                dash(),
                dash(),
                dash(),
                "not attempted".into(),
            ]);
            continue;
        }
        if mine.is_empty() {
            let result = if qube_failed {
                "FAILED".to_owned()
            } else {
                format!("{verb} (no volume)")
            };
            rows.push([q.name.clone(), dash(), dash(), dash(), dash(), result]);
            continue;
        }
        for r in mine {
            let secs = r.elapsed.as_secs();
            let time = format!("{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
            let (data, rate, result) = match (r.checked, &r.error) {
                (Some((_, bytes)), _) => (
                    human_bytes(bytes),
                    format!(
                        "{}/s",
                        human_bytes((bytes as f64 / r.elapsed.as_secs_f64().max(0.001)) as u64)
                    ),
                    if qube_failed {
                        "checked; the qube failed".to_owned()
                    } else {
                        verb.to_owned()
                    },
                ),
                (None, _) => (dash(), dash(), "FAILED".to_owned()),
            };
            rows.push([q.name.clone(), r.volume.clone(), data, time, rate, result]);
        }
    }
    let mut widths = [0usize; 6];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    rows.iter()
        .map(|row| {
            let mut line = String::from(" ");
            for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
                line.push(' ');
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<w$}"));
                }
                if i + 1 < row.len() {
                    line.push(' ');
                }
            }
            line.trim_end().to_owned()
        })
        .collect()
}
