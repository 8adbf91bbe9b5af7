//! The dom0 driver of qubes-zfs-backup.
#![forbid(unsafe_code)]

pub mod config;
pub mod diag;
pub mod inventory;
pub mod names;
pub mod output;
pub mod plan;
pub mod yaml;
