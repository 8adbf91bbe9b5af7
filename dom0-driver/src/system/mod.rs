//! The system dom0 runs on: every child process (`runner`, the only place that starts one),
//! what `zfs`, the Admin API and `xl` report (`inventory`), and which snapshots can be taken
//! now (`snapshot`), and what `prune` reads of every snapshot (`snapshot_details`).
pub mod inventory;
pub mod runner;
pub mod settings;
pub mod snapshot_details;
