//! `check` and `import`: a config read, checked against the live system, planned, reported.

use crate::commands::report;
use crate::commands::{finished, print_warnings};
use crate::config::diag::Diagnostic;
use crate::config::{self, Config};
use crate::error::{Error, Result};
use crate::output::{sanitize, Style};
use crate::plan::{self, Plan};
use crate::state::{BackupState, Store};
use crate::system::inventory;
use crate::system::runner::Runner;
use std::path::PathBuf;

fn read_config(file: &PathBuf) -> Result<String> {
    Ok(config::file::read(file)?)
}

/// Reads, checks and plans a config against the live system.
struct Checked {
    text: String,
    config: Config,
    plan: Plan,
    warnings: Vec<Diagnostic>,
}

/// A config that failed its checks: what was parsed of it, its errors and warnings.
type Rejected = (Option<Config>, Vec<Diagnostic>, Vec<Diagnostic>);

fn check_config(
    runner: &dyn Runner,
    file: &PathBuf,
) -> Result<std::result::Result<Checked, Rejected>> {
    let text = read_config(file)?;
    let (config, mut warnings) = match config::parse(&text) {
        Ok(ok) => ok,
        Err(errors) => return Ok(Err((None, errors, Vec::new()))),
    };
    let inv = inventory::collect(runner)?;
    let plan = plan::plan(&config, &inv);
    warnings.extend(plan.warnings.iter().cloned());
    if !plan.errors.is_empty() {
        let errors = plan.errors.clone();
        return Ok(Err((Some(config), errors, warnings)));
    }
    Ok(Ok(Checked {
        text,
        config,
        plan,
        warnings,
    }))
}

pub fn check(store: &Store, runner: &dyn Runner, file: &PathBuf, json: bool) -> Result<()> {
    let display = file.display().to_string();
    match check_config(runner, file)? {
        Ok(c) => {
            let imported = store.exists(&c.config.name);
            if json {
                let v =
                    report::check_json(&display, Some(&c.config), Some(&c.plan), &[], &c.warnings);
                crate::outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                return Ok(());
            }
            print_warnings(&display, &c.warnings);
            crate::out!(
                "{}",
                report::check_text(&c.config, &c.plan, imported, Style::for_stdout())
            );
            let unreferenced = c.plan.coverage.unreferenced.len();
            finished(c.warnings.len() + unreferenced);
            Ok(())
        }
        Err((config, errors, warnings)) => {
            if json {
                let v = report::check_json(&display, config.as_ref(), None, &errors, &warnings);
                crate::outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                print_warnings(&display, &warnings);
            }
            Err(Error::InvalidConfig {
                file: display,
                errors,
            })
        }
    }
}

pub fn import(store: &Store, runner: &dyn Runner, file: &PathBuf, replace: bool) -> Result<()> {
    let display = file.display().to_string();
    // Refuse an existing name before any system query: the name is known from the file alone.
    let text = read_config(file)?;
    if let Ok((cfg, _)) = config::parse(&text) {
        if store.exists(&cfg.name) && !replace {
            return Err(Error::Refused(format!(
                "a backup named '{}' is already imported; choose another name, or pass --replace to discard its progress",
                cfg.name
            )));
        }
    }
    let c = match check_config(runner, file)? {
        Ok(c) => c,
        Err((_, errors, warnings)) => {
            print_warnings(&display, &warnings);
            return Err(Error::InvalidConfig {
                file: display,
                errors,
            });
        }
    };
    print_warnings(&display, &c.warnings);
    let _lock = store.lock(&c.config.name)?;
    let path = std::fs::canonicalize(file).unwrap_or_else(|_| file.clone());
    let mut state = BackupState::new(
        &c.config,
        &path.display().to_string(),
        &c.text,
        c.plan.targets,
    );
    // Replacing keeps what the old import achieved: what it sent is on the receiver.
    let carried = if !store.exists(&c.config.name) {
        None
    } else {
        match store.load(&c.config.name) {
            Ok(old) => Some(state.carry_over(&old)),
            Err(e) => {
                crate::output::stderr_line(Style::for_stderr().yellow(&format!(
                    "Warning: the import being replaced cannot be read ({}); every target starts afresh",
                    sanitize(&e.to_string())
                )));
                None
            }
        }
    };
    store.save(&state)?;
    crate::outln!("Config validation {}", Style::for_stdout().green("PASSED"));
    if let Some((done, resuming)) = carried {
        crate::outln!(
            "Replaced the earlier import of {}: {done} target(s) it sent stay done (same snapshot, same guid), {resuming} interrupted one(s) resume; nothing on the receiver was changed",
            state.name
        );
    }
    crate::outln!(
        "Imported {} ({} targets) into {}",
        state.name,
        state.targets.len(),
        store.dir().display()
    );
    finished(c.warnings.len());
    Ok(())
}
