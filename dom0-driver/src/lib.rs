//! The dom0 driver of qubes-zfs-backup.
#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod error;
pub mod output;
pub mod plan;
pub mod state;
pub mod stream;
pub mod system;
