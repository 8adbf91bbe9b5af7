//! What `check` and `calc` print, for people and as JSON.

use crate::config::diag::{Diagnostic, MAX_SHOWN};
use crate::config::Config;
use crate::output::{human_bytes, Style};
use crate::plan::{Plan, Reason, Target};
use serde_json::{json, Value};

fn reason_note(t: &Target) -> &'static str {
    match t.reason {
        Reason::Target => "",
        Reason::Primer => " (first snapshot, for progressive)",
        Reason::Dependency => " (needed as an origin)",
    }
}

/// The human `check` report (stdout part). Warnings are printed separately, on stderr.
pub fn check_text(config: &Config, plan: &Plan, already_imported: bool, style: Style) -> String {
    let mut o = String::new();
    let c = &plan.coverage;
    o.push_str(&format!("Config validation {}\n", style.green("PASSED")));
    o.push_str("Analysis:\n\nIncluded datasets:\n");
    list(
        &mut o,
        c.included.iter().map(|d| d.to_string()),
        &style.green("+"),
    );
    o.push_str("\nForgone datasets; you declined their inclusion, though one may still be sent when an included clone needs it as its origin (this is also the default for datasets no group mentions):\n");
    list(
        &mut o,
        c.forgone.iter().map(|d| d.to_string()),
        &style.red("-"),
    );
    o.push_str("\nVoided (hard-excluded) datasets; these are NEVER sent directly, though data blocks they share with included datasets may be:\n");
    list(
        &mut o,
        c.voided.iter().map(|d| d.to_string()),
        &style.red("-"),
    );
    if !c.unreferenced.is_empty() {
        o.push('\n');
        o.push_str(&style.yellow(
            "Warning: The following datasets have not been referenced. Consider explicitly including or excluding them:",
        ));
        o.push('\n');
        list(&mut o, c.unreferenced.iter().map(|d| d.to_string()), "-");
    }
    o.push_str("\nAdditionally:\n");
    for (count, what) in [
        (c.auto_ignored, "datasets have been automatically ignored by the program's built-in rules (hidden datasets, disposables)."),
        (c.implicitly_ignored, "datasets have been implicitly ignored based on the user's designating groups."),
        (c.not_shown, "are not being shown because they are descendant datasets belonging to designations already shown above."),
        (c.excluded_inside_included, "datasets inside included designations are left out by built-in rules (transient volumes such as volatile and AppVM root, hidden datasets, disposables)."),
    ] {
        o.push_str(&format!("{count} {what}\n"));
    }

    o.push_str(&format!(
        "\nBackup targets, in send order ({}):\n",
        plan.targets.len()
    ));
    if plan.targets.is_empty() {
        o.push_str("(none)\n");
    }
    for t in &plan.targets {
        let state = if t.guid.is_some() {
            "exists"
        } else {
            "missing"
        };
        o.push_str(&format!(
            "  {:<8} {}  [{}]{}\n",
            state,
            t.snapshot,
            t.describe(),
            reason_note(t)
        ));
    }
    o.push('\n');
    o.push_str(&snapshot_summary(config, &plan.targets));
    o.push_str(&match &config.retention {
        Some(r) => format!(
            "Retention: `prune {}` keeps {} of the snapshots this backup makes in dom0, and what the media and transfers still need.\n",
            config.name,
            r.source.describe()
        ),
        None => "Retention: none set, so `prune` keeps every snapshot.\n".to_owned(),
    });
    if already_imported {
        o.push_str(&style.yellow(&format!(
            "Warning: A configuration named {} already exists, so importing with that name will fail (unless --replace).",
            config.name
        )));
        o.push('\n');
    } else {
        o.push_str("Configuration can be imported\n");
    }
    o
}

fn list(o: &mut String, items: impl Iterator<Item = String>, bullet: &str) {
    let mut any = false;
    for i in items {
        o.push_str(&format!("{bullet} {i}\n"));
        any = true;
    }
    if !any {
        o.push_str("(none)\n");
    }
}

/// `<n>/<m> required snapshots currently exist.` and what can be done about the rest.
pub fn snapshot_summary(config: &Config, targets: &[Target]) -> String {
    let creatable: Vec<&Target> = targets.iter().filter(|t| t.is_creatable()).collect();
    let existing = creatable.iter().filter(|t| t.guid.is_some()).count();
    let missing = creatable.len() - existing;
    let mut o = format!(
        "{existing}/{} required snapshots currently exist.\n",
        creatable.len()
    );
    if config.snapshot_creation {
        o.push_str(&format!(
            "{missing} snapshots are able to be automatically created.\n"
        ));
    } else if missing > 0 {
        o.push_str("allowed-behaviours.snapshot-creation is disabled and so snapshots must be created manually.\n");
    }
    o
}

fn target_json(t: &Target, size: Option<u64>) -> Value {
    json!({
        "snapshot": t.snapshot.to_string(),
        "incremental_source": t.incremental_source.as_ref().map(|s| s.to_string()),
        "origin": t.clone_origin.then(|| t.incremental_source.as_ref().map(|s| s.to_string())).flatten(),
        "progressive": t.progressive,
        "kind": t.kind,
        "reason": t.reason,
        "exists": t.guid.is_some(),
        "guid": t.guid.map(|g| g.to_string()),
        "object": t.object,
        "size_estimate": size,
    })
}

fn diag_json(d: &[Diagnostic]) -> Vec<Value> {
    d.iter()
        .map(|d| serde_json::to_value(d).unwrap_or(Value::Null))
        .collect()
}

/// `check --json`: one object; `errors` is non-empty exactly when the config is invalid.
pub fn check_json(
    file: &str,
    config: Option<&Config>,
    plan: Option<&Plan>,
    errors: &[Diagnostic],
    warnings: &[Diagnostic],
) -> Value {
    let mut v = json!({
        "file": file,
        "valid": errors.is_empty(),
        "errors": diag_json(&errors[..errors.len().min(MAX_SHOWN)]),
        "error_count": errors.len(),
        "errors_not_shown": errors.len().saturating_sub(MAX_SHOWN),
        "warnings": diag_json(warnings),
        "designations": [],
        "targets": [],
    });
    if let Some(c) = config {
        v["name"] = json!(c.name);
    }
    if let Some(p) = plan {
        v["designations"] = serde_json::to_value(&p.designations).unwrap_or_default();
        v["targets"] = p.targets.iter().map(|t| target_json(t, None)).collect();
        let c = &p.coverage;
        v["coverage"] = json!({
            "included": c.included.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
            "forgone": c.forgone.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
            "voided": c.voided.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
            "unreferenced": c.unreferenced.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
            "automatically_ignored": c.auto_ignored,
            "implicitly_ignored": c.implicitly_ignored,
            "not_shown": c.not_shown,
            "excluded_inside_included": c.excluded_inside_included,
        });
    }
    v
}

/// `calc --json`.
pub fn calc_json(
    name: &str,
    rows: &[(Target, Option<u64>)],
    warnings: &[Diagnostic],
    total: u64,
) -> Value {
    json!({
        "name": name,
        "errors": [],
        "warnings": diag_json(warnings),
        "designations": [],
        "targets": rows.iter().map(|(t, s)| target_json(t, *s)).collect::<Vec<_>>(),
        "total_size_estimate": total,
        "complete": rows.iter().all(|(_, s)| s.is_some()),
    })
}

/// The `calc` table.
pub fn calc_text(rows: &[(Target, Option<u64>)], total: u64) -> String {
    let mut o = String::from("send size (estimate):\n");
    for (t, size) in rows {
        let size = size.map(human_bytes).unwrap_or_else(|| "missing".into());
        o.push_str(&format!("{size:>12}  {}  [{}]\n", t.snapshot, t.describe()));
    }
    o.push_str(&format!("{:>12}  (total)\n", human_bytes(total)));
    o
}
