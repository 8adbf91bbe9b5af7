//! The command line: parses arguments, runs one command, turns errors into exit codes.

use crate::commands;
use crate::config::BackupName;
use crate::error::{exit, exit_codes_help, Error, Result};
use crate::output::{sanitize, Style};
use crate::state::Store;
use crate::stream::progress::Mode;
use crate::stream::qrexec::Qrexec;
use crate::system::runner::SystemRunner;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_METADATA_DIR: &str = "/var/lib/qubes-zfs-backup";

#[derive(Parser, Debug)]
#[command(
    name = "qubes-zfs-backup",
    version,
    about = "Backups of Qubes OS qubes whose storage is on ZFS, sent to a backup qube.",
    long_about = "Backups of Qubes OS qubes whose storage is on ZFS, sent with zfs send through \
                  a qrexec service into a backup qube.\n\nA backup goes: check FILE, import FILE, \
                  snapshot NAME, calc NAME, send NAME."
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

    /// Seconds a local tool (zfs, qubesd-query, xl) may take before it is stopped as hung.
    #[arg(long, global = true, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub tool_timeout: u64,

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
        /// Replace an imported backup of the same name: targets it already sent (same snapshot, same
        /// guid) stay done, an interrupted one resumes; nothing on the receiver is changed.
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
    Snapshot {
        #[arg(value_parser = BackupName::parse)]
        name: BackupName,
    },
    /// Estimate the size of every send (zfs send -n -v -P).
    #[command(after_help = "Example:\n  qubes-zfs-backup calc mybackup1")]
    Calc {
        /// The backup's name (its config's `name`).
        #[arg(value_parser = BackupName::parse)]
        name: BackupName,
        #[arg(long)]
        json: bool,
    },
    /// Send every target that is not done yet to the receiver qube (resumes interrupted ones).
    #[command(
        after_help = "Interrupt at any time (Ctrl-C, or even kill -9): progress is saved after every target, and an\ninterrupted target resumes where it stopped on the next `send`.\n\nExample:\n  qubes-zfs-backup send mybackup1"
    )]
    Send {
        #[arg(value_parser = BackupName::parse)]
        name: BackupName,
        /// Print JSON events on stdout (one per line: start, progress, done, failed, deferred,
        /// summary) instead of the text, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Check that the medium holds what dom0 sent: every sent snapshot's guid, then every zvol
    /// read back by the backup qube and checked block by block against its MAC'd manifests.
    Verify {
        #[arg(value_parser = BackupName::parse)]
        name: BackupName,
        /// Only compare the guids (the receiver's word; no read-back, no key needed).
        #[arg(long)]
        quick: bool,
        /// One JSON object per line instead of text progress.
        #[arg(long)]
        json: bool,
    },
    /// Discard partial receive state (zfs receive -A) of this backup on the receiver.
    #[command(
        after_help = "Example:\n  qubes-zfs-backup abort mybackup1 backuppool/backups/mydesktop/mainpool/qubes/work/private"
    )]
    Abort {
        #[arg(value_parser = BackupName::parse)]
        name: BackupName,
        /// Only this dataset (its receiver-side or dom0-side name).
        dataset: Option<String>,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Destroy the snapshots in dom0 this backup made that its retention grid no longer keeps
    /// (a dry run unless --yes). Never one a medium, a transfer or a clone still needs, never
    /// the newest it made of a dataset, never one it did not make.
    #[command(
        after_help = "The grid is the config's `retention.source` (docs/CONFIG.md). Only snapshots whose own\nqubes-zfs-backup:created property names this backup (set by `snapshot`) are candidates.\nThe space shown is each snapshot's `used`: destroying several frees at least their sum.\nSnapshots on the backup medium are not pruned (not built yet).\n\nExample:\n  qubes-zfs-backup prune mybackup1          # what would go, and why the rest stays\n  qubes-zfs-backup prune mybackup1 --yes    # destroy them"
    )]
    Prune {
        #[arg(value_parser = BackupName::parse)]
        name: BackupName,
        /// Destroy them (default: only list what would be destroyed).
        #[arg(long)]
        yes: bool,
        /// Print one JSON object: every snapshot with its action and reasons, the totals.
        #[arg(long)]
        json: bool,
    },
    /// Show the state of every target of an imported backup.
    Status {
        #[arg(value_parser = BackupName::parse)]
        name: BackupName,
        #[arg(long)]
        json: bool,
    },
    /// Set up, check or change the backup key (a random key, wrapped by your passphrase).
    #[command(
        after_help = "Without the passphrase, nothing can be verified or restored once dom0 is lost.\n\nExample:\n  qubes-zfs-backup key init\n  qubes-zfs-backup key check"
    )]
    Key {
        #[command(subcommand)]
        action: KeyCommand,
    },
    /// Restore qubes from a backup medium: list its backup sets, plan a restore, carry it out.
    #[command(
        after_help = "On a fresh dom0 (no key in the metadata directory) the medium's wrapped key is unlocked with the passphrase.\n\nExample:\n  qubes-zfs-backup restore list --from backups:backuppool/backups/mydesktop"
    )]
    Restore {
        #[command(subcommand)]
        action: RestoreCommand,
    },
}

/// `restore list|plan|run`.
#[derive(Subcommand, Debug)]
pub enum RestoreCommand {
    /// List the backup sets on a medium (from their MAC'd set indexes): when, complete or not,
    /// how many zvols and filesystems, how much was sent, which qubes' settings.
    List {
        /// The medium: the backup qube and the receiver dataset, QUBE:DATASET.
        #[arg(long, value_name = "QUBE:DATASET", value_parser = crate::commands::restore::Medium::parse)]
        from: crate::commands::restore::Medium,
        /// One JSON object per set.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        passphrase: PassphraseArgs,
    },
    /// Plan a restore of a backup's newest complete set here: which qubes come back, under
    /// which names, in which order, with their template, netvm and other references resolved.
    /// Prints the plan and changes nothing.
    #[command(
        after_help = "Example:\n  qubes-zfs-backup restore plan --from backups:backuppool/backups/mydesktop work vault --rename --map fedora-38=fedora-41"
    )]
    Plan {
        #[command(flatten)]
        opts: RestoreOpts,
    },
    /// Carry out the plan: create each qube with its saved settings, then fill each volume
    /// from the medium, every block checked against the MAC'd manifests before Qubes' volume
    /// import commits it. A qube whose restore fails is removed again.
    Run {
        #[command(flatten)]
        opts: RestoreOpts,
        /// Stop after the first qube that fails (default: go on with the others).
        #[arg(long)]
        stop_on_error: bool,
        /// Print the plan and stop (what `restore plan` prints).
        #[arg(long, conflicts_with = "verify_only")]
        dry_run: bool,
        /// Read back and check every volume of the plan against the MAC'd manifests, as a real
        /// run would, and write nothing: no qube is created, nothing imported.
        #[arg(long)]
        verify_only: bool,
    },
}

/// What to restore, and how (shared by `restore plan` and `restore run`).
#[derive(clap::Args, Debug)]
pub struct RestoreOpts {
    /// The medium: the backup qube and the receiver dataset, QUBE:DATASET.
    #[arg(long, value_name = "QUBE:DATASET", value_parser = crate::commands::restore::Medium::parse)]
    from: crate::commands::restore::Medium,
    /// The backup whose set to restore (needed when the medium holds several).
    #[arg(long)]
    backup: Option<String>,
    /// Only these qubes (default: every qube of the set).
    qubes: Vec<String>,
    /// Leave this qube out (repeatable).
    #[arg(long, value_name = "QUBE")]
    exclude: Vec<String>,
    /// A qube whose name is taken is restored as name1, name2, ... (default: skipped).
    #[arg(long, conflicts_with = "replace")]
    rename: bool,
    /// A qube whose name is taken replaces the existing one, if it is halted and of the same
    /// class (default: skipped). `restore run` does not carry this out yet.
    #[arg(long)]
    replace: bool,
    /// References to the qube OLD (template, netvm, ...) point to NEW instead (repeatable).
    #[arg(long, value_name = "OLD=NEW", value_parser = parse_map)]
    map: Vec<(String, String)>,
    /// References to qubes that are neither restored nor present are reset to the default.
    #[arg(long)]
    default_missing: bool,
    /// JSON instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    passphrase: PassphraseArgs,
}

impl RestoreOpts {
    fn args(&self) -> commands::restore::PlanArgs {
        use crate::restore::plan::{Choice, Conflict};
        commands::restore::PlanArgs {
            medium: self.from.clone(),
            backup: self.backup.clone(),
            choice: Choice {
                only: self.qubes.clone(),
                exclude: self.exclude.clone(),
                conflict: match (self.rename, self.replace) {
                    (true, _) => Conflict::Rename,
                    (_, true) => Conflict::Replace,
                    _ => Conflict::Skip,
                },
                map: self.map.iter().cloned().collect(),
                default_missing: self.default_missing,
            },
            passphrase: crate::key::PassphraseSource::from_fd(self.passphrase.passphrase_fd),
            json: self.json,
        }
    }
}

fn parse_map(text: &str) -> std::result::Result<(String, String), String> {
    let (old, new) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not OLD=NEW"))?;
    for name in [old, new] {
        qzb_protocol::QubeName::parse(name).map_err(|e| format!("{name:?}: {e}"))?;
    }
    Ok((old.to_owned(), new.to_owned()))
}

/// `key init|check|change`.
#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Create the key: a new random master key, wrapped by a new passphrase (asked twice).
    /// Refuses if a key exists.
    Init {
        #[command(flatten)]
        passphrase: PassphraseArgs,
        #[command(flatten)]
        kdf: KdfArgs,
    },
    /// Ask the passphrase and say whether it unlocks the key; show the key id and the KDF
    /// parameters; write the key file for unattended runs again if it is missing.
    Check {
        #[command(flatten)]
        passphrase: PassphraseArgs,
    },
    /// Change the passphrase: the current one, then a new one twice. The key stays the same,
    /// so everything backed up with it still verifies.
    Change {
        #[command(flatten)]
        passphrase: PassphraseArgs,
        #[command(flatten)]
        kdf: KdfArgs,
    },
}

/// Where passphrases come from.
#[derive(clap::Args, Debug)]
pub struct PassphraseArgs {
    /// Read the passphrase from this open file descriptor instead of the terminal, up to end of
    /// file, one a line (`key change` reads two lines: the current passphrase, then the new one).
    #[arg(long, value_name = "N")]
    pub passphrase_fd: Option<u32>,
}

/// Argon2id cost for a new wrapping (hidden: the defaults are meant; tests and the demo use
/// the minimum to run fast).
#[derive(clap::Args, Debug)]
pub struct KdfArgs {
    /// Argon2id memory in MiB.
    #[arg(long, hide = true, default_value_t = 256, value_parser = clap::value_parser!(u32).range(8..=1024))]
    pub kdf_memory_mib: u32,
    /// Argon2id passes.
    #[arg(long, hide = true, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub kdf_passes: u32,
}

impl KdfArgs {
    fn params(&self) -> crate::key::KdfParams {
        crate::key::KdfParams {
            memory_kib: self.kdf_memory_mib * 1024,
            passes: self.kdf_passes,
            lanes: 1,
        }
    }
}

/// The command line's definition, with the exit-code table from [`crate::error::EXIT_CODES`].
pub fn command() -> clap::Command {
    Cli::command().after_help(exit_codes_help())
}

/// Entry point used by `main`: returns the process exit code.
pub fn main() -> i32 {
    let cli = match command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m))
    {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
        }
    };
    init_tracing(cli.verbose);
    let runner = SystemRunner::new(Duration::from_secs(cli.tool_timeout));
    match run(&cli, &runner) {
        Ok(()) => match crate::output::stdout_error() {
            None => exit::OK,
            Some(e) => {
                crate::output::stderr_line(format_args!(
                    "{} the output could not be written: {e}",
                    Style::for_stderr().red("error:")
                ));
                exit::OUTPUT_FAILED
            }
        },
        Err(e) => {
            let style = Style::for_stderr();
            let label = match &e {
                Error::Partial(_) => style.yellow("not finished:"),
                Error::NothingDone(_) => style.yellow("nothing done:"),
                _ => style.red("error:"),
            };
            crate::output::stderr_line(format_args!("{label} {}", sanitize(&e.to_string())));
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

/// Runs one command with the system's runner.
pub fn run(cli: &Cli, runner: &SystemRunner) -> Result<()> {
    let store = Store::new(&cli.metadata_dir);
    let qrexec = Qrexec::new(runner, timeout(cli), runner.on_path("qrexec-client"));
    match &cli.command {
        Command::Check { file, json } => commands::check::check(&store, runner, file, *json),
        Command::Import { file, replace } => {
            commands::check::import(&store, runner, file, *replace)
        }
        Command::List { json } => commands::backups::list(&store, *json),
        Command::Snapshot { name } => commands::snapshot::snapshot(&store, runner, name),
        Command::Calc { name, json } => commands::calc::calc(&store, runner, &qrexec, name, *json),
        Command::Status { name, json } => commands::backups::status(&store, name, *json),
        Command::Prune { name, yes, json } => {
            commands::prune::prune(&store, runner, name, *yes, *json)
        }
        Command::Send { name, json } => {
            commands::receiver::send(&store, runner, &qrexec, name, Mode::detect(*json))
        }
        Command::Verify { name, quick, json } => {
            commands::receiver::verify(&store, &qrexec, name, *quick, Mode::detect(*json))
        }
        Command::Abort { name, dataset, yes } => {
            commands::receiver::abort(&store, &qrexec, name, dataset.as_deref(), *yes)
        }
        Command::Key { action } => run_key(&cli.metadata_dir, action),
        Command::Restore {
            action:
                RestoreCommand::List {
                    from,
                    json,
                    passphrase,
                },
        } => commands::restore::list(
            &cli.metadata_dir,
            &qrexec,
            from,
            crate::key::PassphraseSource::from_fd(passphrase.passphrase_fd),
            *json,
        ),
        Command::Restore {
            action: RestoreCommand::Plan { opts },
        } => commands::restore::plan(&cli.metadata_dir, runner, &qrexec, &opts.args()),
        Command::Restore {
            action:
                RestoreCommand::Run {
                    opts,
                    stop_on_error,
                    dry_run,
                    verify_only,
                },
        } => commands::restore::run(
            &cli.metadata_dir,
            runner,
            &qrexec,
            &opts.args(),
            *stop_on_error,
            match (dry_run, verify_only) {
                (true, _) => commands::restore::RunMode::DryRun,
                (_, true) => commands::restore::RunMode::VerifyOnly,
                _ => commands::restore::RunMode::Restore,
            },
        ),
    }
}

fn run_key(dir: &std::path::Path, action: &KeyCommand) -> Result<()> {
    use crate::key::{self, PassphraseSource};
    match action {
        KeyCommand::Init { passphrase, kdf } => key::init(
            dir,
            PassphraseSource::from_fd(passphrase.passphrase_fd),
            kdf.params(),
        ),
        KeyCommand::Check { passphrase } => {
            key::check(dir, PassphraseSource::from_fd(passphrase.passphrase_fd))
        }
        KeyCommand::Change { passphrase, kdf } => key::change(
            dir,
            PassphraseSource::from_fd(passphrase.passphrase_fd),
            kdf.params(),
        ),
    }
}

fn timeout(cli: &Cli) -> Duration {
    Duration::from_secs(cli.timeout)
}
