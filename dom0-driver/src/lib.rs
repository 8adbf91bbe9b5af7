//! The dom0 driver of qubes-zfs-backup.
#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod diag;
pub mod error;
pub mod inventory;
pub mod names;
pub mod output;
pub mod plan;
pub mod report;
pub mod snapshot;
pub mod state;
pub mod yaml;
