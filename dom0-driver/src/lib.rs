//! The dom0 driver of qubes-zfs-backup.
//!
//! Pure core: `config` (with `yaml`), `plan`, `snapshot` decisions and `report`; edges:
//! `inventory` (the only module running system tools), `state` (metadata files), `transport`
//! (the qrexec call) and `send`; `cli` ties them together.
#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod diag;
pub mod error;
pub mod inventory;
pub mod names;
pub mod output;
pub mod plan;
pub mod pump;
pub mod report;
pub mod send;
pub mod snapshot;
pub mod state;
pub mod transport;
pub mod yaml;
