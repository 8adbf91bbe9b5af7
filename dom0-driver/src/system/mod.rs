//! The system dom0 runs on: every child process, and what `zfs`, the Admin API and `xl` report.
pub mod inventory;
pub mod snapshot;
