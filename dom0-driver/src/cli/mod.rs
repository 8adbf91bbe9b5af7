//! The command line: parses arguments, runs one command, turns errors into exit codes.

use crate::config::diag::Diagnostic;
use crate::config::{self, Config};
use crate::error::{Error, Result};
use crate::output::report;
use crate::output::{human_bytes, sanitize, Style};
use crate::plan::{self, Plan};
use crate::state::{BackupState, SendState, SnapshotState, Store};
use crate::system::inventory::{self, Inventory, Runner, SystemRunner};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

pub const DEFAULT_METADATA_DIR: &str = "/var/lib/qubes-zfs-backup";

#[derive(Parser, Debug)]
#[command(
    name = "qubes-zfs-backup",
    version,
    about = "Backups of Qubes OS qubes whose storage is on ZFS, sent to a backup qube.",
    long_about = "Backups of Qubes OS qubes whose storage is on ZFS, sent with zfs send through \
                  a qrexec service into a backup qube.\n\nA backup goes: check FILE, import FILE, \
                  snapshot NAME, calc NAME, send NAME.",
    after_help = "Exit codes: 0 ok (warnings allowed), 1 invalid config, 2 usage, 3 output \
                  could not be written, 4 config file not found, 5 a system tool failed, 6 state \
                  or refused, 7 receiver, 8 send failed, 9 security refusal."
)]
pub struct Cli {
    /// Where imported backups are kept.
    #[arg(long, global = true, env = "QUBES_ZFS_BACKUP_METADATA_DIR", default_value = DEFAULT_METADATA_DIR)]
    pub metadata_dir: PathBuf,

    /// Show what runs (every command line) on stderr.
    #[arg(short, long, global = true)]
    pub verbose: bool,

    /// Seconds the receiver may stay silent before the call is ended.
    #[arg(long, global = true, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check a config against this system and show exactly what it would back up.
    #[command(
        after_help = "Example:\n  qubes-zfs-backup check backup1.yaml\n  qubes-zfs-backup check --json backup1.yaml | jq .targets"
    )]
    Check {
        /// The YAML backup config.
        file: PathBuf,
        /// Print one JSON object instead of the report.
        #[arg(long)]
        json: bool,
    },
    /// Import a config: fix its plan and store it under its name.
    #[command(after_help = "Example:\n  qubes-zfs-backup import backup1.yaml")]
    Import {
        file: PathBuf,
        /// Replace an imported backup of the same name (its progress is lost).
        #[arg(long)]
        replace: bool,
    },
    /// List imported backups.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Create the target snapshots of qubes that are not running (re-run until none is deferred).
    #[command(
        after_help = "Each qube's (or dataset group's) snapshots are taken in one atomic `zfs snapshot` call per pool.\nA volume attached read-write to a running qube is never snapshotted: its qube is deferred.\n\nExample, to snapshot `work` with as little downtime as possible:\n  qvm-shutdown --wait work && qubes-zfs-backup snapshot mybackup1; qvm-start work"
    )]
    Snapshot { name: String },
    /// Estimate the size of every send (zfs send -n -v -P).
    #[command(after_help = "Example:\n  qubes-zfs-backup calc mybackup1")]
    Calc {
        /// The backup's name (its config's `name`).
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Send every target that is not done yet to the receiver qube (resumes interrupted ones).
    #[command(
        after_help = "Interrupt at any time (Ctrl-C, or even kill -9): progress is saved after every target, and an\ninterrupted target resumes where it stopped on the next `send`.\n\nExample:\n  qubes-zfs-backup send mybackup1"
    )]
    Send { name: String },
    /// Compare every sent target's snapshot guid on the receiver with the source's.
    Verify { name: String },
    /// Discard partial receive state (zfs receive -A) of this backup on the receiver.
    #[command(
        after_help = "Example:\n  qubes-zfs-backup abort mybackup1 backuppool/backups/mydesktop/mainpool/qubes/work/private"
    )]
    Abort {
        name: String,
        /// Only this dataset (its receiver-side or dom0-side name).
        dataset: Option<String>,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Show the state of every target of an imported backup.
    Status {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

/// Exit status when the command itself succeeded but its output could not be written.
const OUTPUT_FAILED: i32 = 3;

/// Entry point used by `main`: returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    init_tracing(cli.verbose);
    match run(&cli, &SystemRunner) {
        Ok(()) => match crate::output::stdout_error() {
            None => 0,
            Some(e) => {
                crate::output::stderr_line(format_args!(
                    "{} the output could not be written: {e}",
                    Style::for_stderr().red("error:")
                ));
                OUTPUT_FAILED
            }
        },
        Err(e) => {
            let style = Style::for_stderr();
            crate::output::stderr_line(format_args!(
                "{} {}",
                style.red("error:"),
                sanitize(&e.to_string())
            ));
            e.exit_code()
        }
    }
}

fn init_tracing(verbose: bool) {
    let level = if verbose {
        tracing::Level::DEBUG
    } else {
        tracing::Level::WARN
    };
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .try_init();
}

pub fn run(cli: &Cli, runner: &dyn Runner) -> Result<()> {
    let store = Store::new(&cli.metadata_dir);
    match &cli.command {
        Command::Check { file, json } => check(&store, runner, file, *json),
        Command::Import { file, replace } => import(&store, runner, file, *replace),
        Command::List { json } => list(&store, *json),
        Command::Snapshot { name } => snapshot(&store, runner, name),
        Command::Calc { name, json } => calc(&store, runner, name, *json, timeout(cli)),
        Command::Status { name, json } => status(&store, name, *json),
        Command::Send { name } => {
            let _lock = store.lock(name)?;
            let mut state = store.load(name)?;
            let config = state.config()?;
            let inv = Inventory {
                zfs: inventory::collect_zfs(runner)?,
                ..Default::default()
            };
            refresh_snapshots(&mut state, &inv)?;
            store.save(&state)?;
            let opts = crate::stream::send::SendOptions {
                timeout: timeout(cli),
                patching: config.patching,
            };
            crate::stream::send::send(runner, &store, &mut state, &inv, &opts)
        }
        Command::Verify { name } => {
            let state = store.load(name)?;
            crate::stream::send::verify(runner, &state, timeout(cli))
        }
        Command::Abort { name, dataset, yes } => {
            let _lock = store.lock(name)?;
            let mut state = store.load(name)?;
            crate::stream::send::abort(
                runner,
                &store,
                &mut state,
                dataset.as_deref(),
                *yes,
                timeout(cli),
            )
        }
    }
}

fn timeout(cli: &Cli) -> std::time::Duration {
    std::time::Duration::from_secs(cli.timeout)
}

fn read_config(file: &PathBuf) -> Result<String> {
    config::file::read(file)
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

fn print_warnings(file: &str, warnings: &[Diagnostic]) {
    let style = Style::for_stderr();
    for w in warnings {
        crate::output::stderr_line(
            style.yellow(&format!("Warning: {}", sanitize(&w.render(Some(file))))),
        );
    }
}

fn finished(warnings: usize) {
    if warnings > 0 {
        let style = Style::for_stderr();
        let noun = if warnings == 1 { "warning" } else { "warnings" };
        crate::output::stderr_line(format_args!(
            "Program finished successfully, but with {}.",
            style.yellow(&format!("{warnings} {noun}"))
        ));
    }
}

fn check(store: &Store, runner: &dyn Runner, file: &PathBuf, json: bool) -> Result<()> {
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

fn import(store: &Store, runner: &dyn Runner, file: &PathBuf, replace: bool) -> Result<()> {
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
    let state = BackupState::new(
        &c.config,
        &path.display().to_string(),
        &c.text,
        c.plan.targets,
    );
    store.save(&state)?;
    crate::outln!("Config validation {}", Style::for_stdout().green("PASSED"));
    crate::outln!(
        "Imported {} ({} targets) into {}",
        state.name,
        state.targets.len(),
        store.dir().display()
    );
    finished(c.warnings.len());
    Ok(())
}

fn list(store: &Store, json: bool) -> Result<()> {
    crate::output::list::list(store, json)
}

/// Arguments of `zfs send` for a target (without the `zfs` itself). Used for the estimate and the
/// real send, so both always agree.
pub fn send_args(t: &crate::plan::Target, dry_run: bool) -> Vec<String> {
    send_args_from(
        &t.snapshot,
        t.incremental_source.as_ref(),
        t.progressive,
        dry_run,
    )
}

/// `zfs send` arguments for `snapshot`, incremental from `source` if given.
pub fn send_args_from(
    snapshot: &crate::names::SnapshotName,
    source: Option<&crate::names::SnapshotName>,
    progressive: bool,
    dry_run: bool,
) -> Vec<String> {
    let mut a = vec!["send".to_owned()];
    if dry_run {
        a.extend(["-n", "-v", "-P"].map(String::from));
    }
    // -L large blocks, -e embedded data, -c compressed blocks as stored: fewer bytes, same data.
    // -p carries the dataset's properties so a restore is faithful.
    a.extend(["-L", "-e", "-c", "-p"].map(String::from));
    if let Some(src) = source {
        a.push(if progressive { "-I" } else { "-i" }.to_owned());
        a.push(src.to_string());
    }
    a.push(snapshot.to_string());
    a
}

/// Reads the total from `zfs send -n -v -P` output: the `size\t<bytes>` line.
pub fn parse_send_size(text: &str) -> Option<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("size\t").or_else(|| l.strip_prefix("size ")))
        .filter_map(|n| n.trim().parse().ok())
        .next_back()
}

/// Re-reads the live system and refreshes every target's snapshot state from it (a snapshot made
/// by hand after import is picked up; backup.py's stale "would" state is a known bug).
fn refresh_snapshots(state: &mut BackupState, inv: &Inventory) -> Result<()> {
    for t in &mut state.targets {
        match inv.zfs.snapshot(&t.target.snapshot) {
            Some(s) => {
                if let Some(planned) = t.target.guid {
                    if planned != s.guid {
                        return Err(Error::Refused(format!(
                            "snapshot {} was replaced since import (guid {} then, {} now); its data is not what was planned. Import the config again (--replace) to plan with the new snapshot.",
                            t.target.snapshot, planned, s.guid
                        )));
                    }
                }
                t.target.guid = Some(s.guid);
                if t.snapshot_state == SnapshotState::Missing {
                    t.snapshot_state = SnapshotState::Exists;
                }
            }
            None => {
                if t.target.guid.is_some() {
                    return Err(Error::Refused(format!(
                        "snapshot {} existed at import but is gone now; it may have been rotated away. Import the config again (--replace).",
                        t.target.snapshot
                    )));
                }
                t.snapshot_state = SnapshotState::Missing;
            }
        }
    }
    Ok(())
}

fn calc(
    store: &Store,
    runner: &dyn Runner,
    name: &str,
    json: bool,
    timeout: std::time::Duration,
) -> Result<()> {
    let _lock = store.lock(name)?;
    let mut state = store.load(name)?;
    let inv = Inventory {
        zfs: inventory::collect_zfs(runner)?,
        ..Default::default()
    };
    refresh_snapshots(&mut state, &inv)?;
    let mut warnings = Vec::new();
    let mut missing = 0usize;
    for t in &mut state.targets {
        if t.snapshot_state == SnapshotState::Missing {
            missing += 1;
            continue;
        }
        let args = send_args(&t.target, true);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = runner.run("zfs", &argv)?;
        let text = String::from_utf8_lossy(&out);
        let size = parse_send_size(&text).ok_or_else(|| {
            Error::Tool(inventory::ToolError {
                command: inventory::command_line("zfs", &argv),
                problem: "printed no 'size' line".into(),
            })
        })?;
        t.size_estimate = Some(size);
    }
    store.save(&state)?;
    if missing > 0 {
        warnings.push(Diagnostic::warning(
            "",
            None,
            format!("{missing} target snapshot(s) do not exist yet, so their size is unknown; run `snapshot {name}` first"),
        ));
    }
    let rows: Vec<_> = state
        .targets
        .iter()
        .map(|t| (t.target.clone(), t.size_estimate))
        .collect();
    let total: u64 = rows.iter().filter_map(|(_, s)| *s).sum();
    // The receiver's side: free space, incremental bases, what is already there.
    let rx = crate::stream::send::receiver_checks(runner, &state, &inv, total, timeout);
    let (available, partial) = match &rx {
        Ok(r) => {
            warnings.extend(
                r.warnings
                    .iter()
                    .map(|w| Diagnostic::warning("", None, w.clone())),
            );
            (Some(r.available), r.partial)
        }
        Err(_) => (None, 0),
    };
    if json {
        let mut v = report::calc_json(name, &rows, &warnings, total);
        v["receiver_available"] = serde_json::json!(available);
        v["receiver_partial_targets"] = serde_json::json!(partial);
        crate::outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        print_warnings(name, &warnings);
        crate::outln!("Calculated size of {} objects", rows.len() - missing);
        crate::out!("{}", report::calc_text(&rows, total));
        if let Some(a) = available {
            crate::outln!("Available space on receiver: {}", human_bytes(a));
        }
        if partial > 0 {
            crate::outln!("{partial} target(s) have resumable partial state on the receiver");
        }
    }
    rx?;
    if !json {
        finished(warnings.len());
    }
    Ok(())
}

fn snapshot(store: &Store, runner: &dyn Runner, name: &str) -> Result<()> {
    use crate::system::snapshot as snap;
    let _lock = store.lock(name)?;
    let mut state = store.load(name)?;
    let config = state.config()?;
    let inv = inventory::collect(runner)?;
    refresh_snapshots(&mut state, &inv)?;
    let targets: Vec<_> = state.targets.iter().map(|t| t.target.clone()).collect();
    if !config.snapshot_creation {
        store.save(&state)?;
        crate::out!("{}", report::snapshot_summary(&config, &targets));
        for t in state
            .targets
            .iter()
            .filter(|t| t.target.is_creatable() && t.snapshot_state == SnapshotState::Missing)
        {
            crate::outln!("missing: {}", t.target.snapshot);
        }
        return Ok(());
    }
    let xl = runner.run("xl", &["list", "-l"])?;
    let mut holders =
        snap::parse_xl_attachments(&String::from_utf8_lossy(&xl), &|p| snap::zvol_id(runner, p))
            .map_err(|p| {
                Error::Tool(inventory::ToolError {
                    command: "xl list -l".into(),
                    problem: format!("printed output we cannot read: {p}"),
                })
            })?;
    snap::add_running_qubes(&mut holders, &inv);
    let decision = snap::decide(&state.targets, &holders);
    let mut failures = Vec::new();
    for group in &decision.create {
        let mut args = vec!["snapshot".to_owned()];
        args.extend(group.snapshots.iter().map(ToString::to_string));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        match runner.run("zfs", &argv) {
            Ok(_) => {
                for s in &group.snapshots {
                    crate::outln!("snapshotted {s}");
                }
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    // Read back what now exists, with the new snapshots' guids.
    let after = Inventory {
        zfs: inventory::collect_zfs(runner)?,
        ..Default::default()
    };
    let created: std::collections::HashSet<_> = decision
        .create
        .iter()
        .flat_map(|g| g.snapshots.iter())
        .collect();
    for t in &mut state.targets {
        if let Some(s) = after.zfs.snapshot(&t.target.snapshot) {
            if t.snapshot_state == SnapshotState::Missing {
                t.snapshot_state = if created.contains(&t.target.snapshot) {
                    SnapshotState::Created
                } else {
                    SnapshotState::Exists
                };
                t.target.guid = Some(s.guid);
            }
        }
    }
    store.save(&state)?;
    let targets: Vec<_> = state.targets.iter().map(|t| t.target.clone()).collect();
    crate::out!("{}", report::snapshot_summary(&config, &targets));
    let style = Style::for_stderr();
    for (group, busy) in &decision.deferred {
        let who: Vec<String> = busy
            .iter()
            .map(|(ds, h)| format!("{ds} is in use by {}", h.join(", ")))
            .collect();
        crate::output::stderr_line(style.yellow(&format!(
            "Deferred {} ({} snapshot(s)): {}.",
            group.object,
            group.snapshots.len(),
            who.join("; ")
        )));
    }
    if !decision.deferred.is_empty() {
        crate::output::stderr_line(style.yellow(&format!(
            "{} deferred group(s). Shut the qubes down and re-run `snapshot {name}`.",
            decision.deferred.len()
        )));
    }
    if !failures.is_empty() {
        return Err(Error::Tool(inventory::ToolError {
            command: "zfs snapshot".into(),
            problem: failures.join("; "),
        }));
    }
    finished(decision.deferred.len());
    Ok(())
}

fn status(store: &Store, name: &str, json: bool) -> Result<()> {
    let state = store.load(name)?;
    if json {
        crate::outln!(
            "{}",
            serde_json::to_string_pretty(&state.targets).unwrap_or_default()
        );
        return Ok(());
    }
    crate::outln!(
        "{} (imported {}, {} targets)",
        state.name,
        state.imported_at,
        state.targets.len()
    );
    for t in &state.targets {
        let snap = match t.snapshot_state {
            SnapshotState::Exists => "exists",
            SnapshotState::Missing => "missing",
            SnapshotState::Created => "created",
        };
        let send = match t.send_state {
            SendState::Pending => "pending",
            SendState::Partial => "partial",
            SendState::Done => "done",
        };
        let size = t
            .size_estimate
            .map(human_bytes)
            .unwrap_or_else(|| "-".into());
        crate::outln!(
            "  {send:<8} {snap:<8} {size:>10}  {}  [{}]",
            t.target.snapshot,
            report::describe_send(&t.target)
        );
        if let Some(e) = &t.last_error {
            crate::outln!("           last error: {}", sanitize(e));
        }
    }
    Ok(())
}
