//! `prune NAME [--yes] [--json]`: destroys the snapshots in dom0 that backup NAME made and its
//! retention grid no longer keeps, unless a medium, a transfer or a clone still needs them. A
//! dry run unless `--yes`. The decisions are `crate::prune`'s; this reads the system and every
//! imported backup's state, reports, and runs one `zfs destroy` per snapshot.

use crate::config::Grid;
use crate::error::{Error, Result};
use crate::output::{human_bytes, sanitize, Style};
use crate::prune::protect::{protected, BackupRecord};
use crate::prune::{self, Decision, Plan, Verdict};
use crate::state::{BackupState, Store};
use crate::system::runner::{Runner, ToolError};
use crate::system::{inventory, snapshot_details};
use qzb_protocol::names::SnapshotName;
use serde_json::json;

/// What happened to a snapshot `--yes` tried to destroy.
enum Outcome {
    Destroyed,
    Failed(String),
}

pub fn prune(store: &Store, runner: &dyn Runner, name: &str, yes: bool, json: bool) -> Result<()> {
    let _lock = store.lock(name)?;
    let state = store.load(name)?;
    let config = state.config()?;
    let Some(retention) = &config.retention else {
        return Err(Error::NothingDone(format!(
            "backup {name} has no 'retention' section in its config, so prune keeps every snapshot; add one (docs/CONFIG.md, \"retention\") and import the config again with --replace"
        )));
    };
    // Every imported backup may still need some of these snapshots: one whose state cannot be
    // read could need any of them, so nothing is pruned then.
    let mut others: Vec<BackupState> = Vec::new();
    for listed in store.list()? {
        if listed.name == name {
            continue;
        }
        match listed.state {
            Ok(s) => others.push(s),
            Err(e) => {
                return Err(Error::State(format!(
                "cannot tell which snapshots backup '{}' still needs, so nothing is pruned: {e}",
                listed.name
            )))
            }
        }
    }
    let mut records = vec![record(&state, &config)];
    let other_configs = others
        .iter()
        .map(BackupState::config)
        .collect::<Result<Vec<_>>>()?;
    records.extend(others.iter().zip(&other_configs).map(|(s, c)| record(s, c)));

    let zfs = inventory::collect_zfs(runner)?;
    let clones: Vec<(String, SnapshotName)> = zfs
        .datasets
        .values()
        .filter_map(|d| d.origin.clone().map(|o| (d.name.to_string(), o)))
        .collect();
    let snapshots = snapshot_details::collect_snapshot_details(runner)?;
    let protected = protected(&records, &snapshots, &clones);
    let plan = prune::plan(&retention.source, name, &snapshots, &protected);

    if !json {
        print_plan(name, &retention.source, &plan);
    }
    let mut outcomes: Vec<(&Decision, Outcome)> = Vec::new();
    if yes {
        for d in plan.to_destroy() {
            let snapshot = d.snapshot.name.as_str();
            let outcome = match runner.run("zfs", &["destroy", snapshot]) {
                Ok(_) => Outcome::Destroyed,
                Err(e) => Outcome::Failed(e.to_string()),
            };
            if !json {
                match &outcome {
                    Outcome::Destroyed => crate::outln!("destroyed {snapshot}"),
                    Outcome::Failed(e) => crate::output::stderr_line(
                        Style::for_stderr()
                            .red(&format!("failed to destroy {snapshot}: {}", sanitize(e))),
                    ),
                }
            }
            outcomes.push((d, outcome));
        }
    }
    let failures: Vec<String> = outcomes
        .iter()
        .filter_map(|(d, o)| match o {
            Outcome::Failed(e) => Some(format!("{}: {e}", d.snapshot.name)),
            Outcome::Destroyed => None,
        })
        .collect();
    if json {
        print_json(name, &retention.source, &plan, yes, &outcomes);
    } else {
        print_summary(name, &plan, yes, &outcomes);
    }
    if !failures.is_empty() {
        return Err(Error::Tool(ToolError::new(
            "zfs destroy",
            format!(
                "failed for {} of {} snapshot(s) (the others were destroyed): {}",
                failures.len(),
                outcomes.len(),
                failures.join("; ")
            ),
        )));
    }
    Ok(())
}

/// A backup's needs: its medium and its targets.
fn record<'a>(state: &'a BackupState, config: &crate::config::Config) -> BackupRecord<'a> {
    BackupRecord {
        name: state.name.as_str(),
        medium: format!("{}:{}", config.receiver_qube, config.receiver_dataset),
        targets: &state.targets,
    }
}

/// Why a snapshot goes.
fn destroy_reason(backup: &str, grid: &Grid) -> String {
    format!(
        "made by backup {backup}, outside its grid ({}), needed by no medium, transfer or clone",
        grid.describe()
    )
}

fn reasons_text(backup: &str, grid: &Grid, d: &Decision) -> String {
    match &d.verdict {
        Verdict::Destroy => destroy_reason(backup, grid),
        Verdict::Keep(reasons) => reasons
            .iter()
            .map(|r| r.describe())
            .collect::<Vec<_>>()
            .join("; "),
    }
}

fn print_plan(backup: &str, grid: &Grid, plan: &Plan) {
    crate::outln!(
        "Retention of backup {backup} in dom0: {} of the snapshots it made, per dataset (periods in UTC).",
        grid.describe()
    );
    let width = plan
        .decisions
        .iter()
        .map(|d| d.snapshot.name.as_str().len())
        .max()
        .unwrap_or(0);
    for d in &plan.decisions {
        let (action, size) = if d.destroys() {
            ("destroy", human_bytes(d.snapshot.used))
        } else {
            ("keep", String::new())
        };
        crate::outln!(
            "{action:<7}  {:<width$}  {size:>10}  {}",
            d.snapshot.name.as_str(),
            sanitize(&reasons_text(backup, grid, d))
        );
    }
}

fn print_summary(backup: &str, plan: &Plan, yes: bool, outcomes: &[(&Decision, Outcome)]) {
    let destroy = plan.to_destroy().count();
    let keep = plan.decisions.len() - destroy;
    let own = plan.decisions.iter().filter(|d| d.is_own()).count();
    if own == 0 {
        crate::outln!(
            "Nothing to prune: no snapshot in dom0 carries backup {backup}'s mark ({}={backup}, set by `snapshot` since this version); snapshots made by hand or before are never pruned.",
            snapshot_details::CREATED_PROPERTY
        );
        return;
    }
    if destroy == 0 {
        crate::outln!(
            "Nothing to prune: the grid, the media and the transfers keep all {own} snapshot(s) backup {backup} made."
        );
        return;
    }
    let estimate = if destroy > 1 {
        " (the sum of each one's own `used`; destroying several also frees the space only they share, so this is an estimate and the least it frees)"
    } else {
        ""
    };
    let freeing = human_bytes(plan.frees_at_least());
    if yes {
        let destroyed = outcomes
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Destroyed))
            .map(|(d, _)| d.snapshot.used)
            .fold(0, u64::saturating_add);
        let n = outcomes
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Destroyed))
            .count();
        crate::outln!(
            "Destroyed {n} of {destroy} snapshot(s), freeing at least {}{estimate}; kept {keep}.",
            human_bytes(destroyed)
        );
    } else {
        crate::outln!(
            "Would destroy {destroy} snapshot(s), freeing at least {freeing}{estimate}; keeping {keep}."
        );
        crate::outln!(
            "Dry run: nothing was destroyed. `qubes-zfs-backup prune {backup} --yes` destroys them."
        );
    }
}

fn print_json(
    backup: &str,
    grid: &Grid,
    plan: &Plan,
    yes: bool,
    outcomes: &[(&Decision, Outcome)],
) {
    let outcome_of = |d: &Decision| {
        outcomes
            .iter()
            .find(|(x, _)| x.snapshot.name == d.snapshot.name)
            .map(|(_, o)| o)
    };
    let snapshots: Vec<_> = plan
        .decisions
        .iter()
        .map(|d| {
            let reasons: Vec<_> = match &d.verdict {
                Verdict::Destroy => {
                    vec![json!({"kind": "outside-grid", "text": destroy_reason(backup, grid)})]
                }
                Verdict::Keep(r) => r
                    .iter()
                    .map(|r| json!({"kind": r.kind(), "text": r.describe()}))
                    .collect(),
            };
            let mut v = json!({
                "snapshot": d.snapshot.name.as_str(),
                "action": if d.destroys() { "destroy" } else { "keep" },
                "used": d.snapshot.used,
                "createtxg": d.snapshot.createtxg,
                "creation": d.snapshot.creation,
                "made_by": d.snapshot.made_by,
                "reasons": reasons,
            });
            match outcome_of(d) {
                Some(Outcome::Destroyed) => v["result"] = json!("destroyed"),
                Some(Outcome::Failed(e)) => {
                    v["result"] = json!("failed");
                    v["error"] = json!(e);
                }
                None => {}
            }
            v
        })
        .collect();
    let destroy = plan.to_destroy().count();
    let v = json!({
        "backup": backup,
        "dry_run": !yes,
        "grid": grid,
        "snapshots": snapshots,
        "destroy": destroy,
        "keep": plan.decisions.len() - destroy,
        "frees_at_least": plan.frees_at_least(),
        "frees_is_estimate": destroy > 1,
        "destroyed": outcomes.iter().filter(|(_, o)| matches!(o, Outcome::Destroyed)).count(),
        "failed": outcomes.iter().filter(|(_, o)| matches!(o, Outcome::Failed(_))).count(),
    });
    crate::outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::runner::{Exit, Spawned};
    use std::sync::Mutex;

    /// `zfs` as a canned system: three marked snapshots of `p/a`; destroying `@r2` fails.
    struct Canned {
        calls: Mutex<Vec<Vec<String>>>,
    }

    impl Runner for Canned {
        fn run(&self, program: &str, args: &[&str]) -> std::result::Result<Vec<u8>, ToolError> {
            assert_eq!(program, "zfs");
            self.calls
                .lock()
                .unwrap()
                .push(args.iter().map(|a| a.to_string()).collect());
            let out = match args {
                a if a == inventory::ZFS_LIST_ARGS => {
                    "p\tfilesystem\t-\t1\t10\np/a\tfilesystem\t-\t2\t11\n"
                }
                a if a == snapshot_details::SNAPSHOT_DETAILS_ARGS => {
                    "p/a@r1\t3\t1796256000\t12\t100\np/a@r2\t4\t1796342400\t13\t200\np/a@r3\t5\t1796428800\t14\t300\n"
                }
                a if a == snapshot_details::CREATED_BY_ARGS => "p/a@r1\tb\np/a@r2\tb\np/a@r3\tb\n",
                ["destroy", "p/a@r2"] => {
                    return Err(ToolError::new(
                        "zfs destroy p/a@r2",
                        "failed (exit status 1): cannot destroy snapshot p/a@r2: dataset is busy",
                    ))
                }
                ["destroy", _] => "",
                other => panic!("unexpected zfs {other:?}"),
            };
            Ok(out.as_bytes().to_vec())
        }

        fn status(&self, _: &str, _: &[&str]) -> std::result::Result<Exit, ToolError> {
            unreachable!("prune only runs tools to completion")
        }

        fn spawn(&self, _: &str, _: &[&str], _: bool) -> std::result::Result<Spawned, ToolError> {
            unreachable!("prune streams nothing")
        }
    }

    const CONFIG: &str = "name: b\nscope:\n  target-snapshot: \"@r3\"\n  since: \"@r2\"\n  progressive: no\n  honour-origins: no\nallowed-behaviours:\n  snapshot-creation: yes\n  patching: no\nreceiver:\n  qube: backups\n  dataset: pool/b\ninclude-groups: [d]\nforgo-groups: []\nvoid-groups: []\nd:\n  type: datasets\n  members: [p/a]\nretention:\n  source: {last: 1}\n";

    #[test]
    fn a_destroy_that_fails_is_named_and_the_others_still_go() {
        let dir = std::env::temp_dir().join(format!("qzb-prune-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::new(&dir);
        let (config, _) = crate::config::parse(CONFIG).unwrap();
        store
            .save(&BackupState::new(
                &config,
                "/tmp/b.yaml",
                CONFIG,
                Vec::new(),
            ))
            .unwrap();
        let runner = Canned {
            calls: Mutex::new(Vec::new()),
        };
        let e = prune(&store, &runner, "b", true, false).unwrap_err();
        assert_eq!(e.exit_code(), crate::error::exit::TOOL);
        let text = e.to_string();
        assert!(
            text.contains("failed for 1 of 2 snapshot(s) (the others were destroyed): p/a@r2:"),
            "{text}"
        );
        assert!(text.contains("dataset is busy"), "{text}");
        let destroys: Vec<Vec<String>> = runner
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c[0] == "destroy")
            .cloned()
            .collect();
        assert_eq!(destroys, [["destroy", "p/a@r1"], ["destroy", "p/a@r2"]]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
