//! The dom0 driver of qubes-zfs-backup.
#![forbid(unsafe_code)]
