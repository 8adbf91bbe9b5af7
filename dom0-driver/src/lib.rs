//! The dom0 driver of qubes-zfs-backup.
//!
//! The pipeline, room by room (each a directory, each depending only on the ones before it;
//! `output`, safe terminal output, is below them all):
//! - `config`: the YAML config, read strictly (`yaml`), checked with positions (`diag`), from a
//!   bounded file (`file`); the backup's own name (`BackupName`);
//! - `system`: the one process runner, and what `zfs`, the Admin API and `xl` report;
//! - `plan`: pure: config + inventory → targets in send order, and their `zfs send` argv;
//! - `state`: the metadata directory: one state file per imported backup, locks;
//! - `key`: the backup key: a random master key wrapped by a passphrase (Argon2id), the keys
//!   derived from it for manifests and metadata, `key init|check|change`, and the passphrase
//!   prompt; its files live in the metadata directory too (`key.wrapped`, `key`);
//! - `snapshot`: pure: which target snapshots can be taken now, which wait for a running qube;
//! - `prune`: pure: which of a backup's own snapshots its retention grid lets go, and what every
//!   imported backup still needs (`protect`);
//! - `stream`: everything that talks to the receiver agent: the protocol client over any
//!   reader/writer, the qrexec call, the decisions on what the backup qube reports, the data
//!   pump, and the send/verify/abort commands;
//! - `commands`: the bodies of check, import, list, status, snapshot, calc, prune, the entry
//!   points of send/verify/abort, and the check/calc reports (`report`);
//! - `cli`: clap definitions and dispatch only.
//!
//! Restore (issue 10) will be a sibling of `stream::send` reading through the same client.
//! `error` (one error enum, the exit-code table) serves the rooms from `state` on.
#![forbid(unsafe_code)]

pub mod cli;
pub mod commands;
pub mod config;
pub mod error;
pub mod key;
pub mod output;
pub mod plan;
pub mod prune;
pub mod restore;
pub mod snapshot;
pub mod state;
pub mod stream;
pub mod system;
