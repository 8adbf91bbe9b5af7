//! The receiver agent: serves one qrexec call from dom0.
//!
//! [`serve`] runs a session over any reader/writer pair; `main` binds it to stdin/stdout.
//! All `zfs` access goes through the [`Zfs`] trait: [`SystemZfs`] runs the real command,
//! [`memory::MemoryZfs`] keeps everything in memory for tests.
#![forbid(unsafe_code)]

pub mod blobs;
pub mod classify;
mod lock;
pub mod memory;
pub mod readback;
mod serve;
pub mod zfs;

pub use classify::classify_zfs_stderr;
pub use serve::{serve, AgentError, Config, DEFAULT_LOCK_PATH};
pub use zfs::{
    create_meta_argv, read_back_send_argv, receive_argv, MountState, ReceiveArgs, ReceiveExit,
    ReceiveProcess, SendProcess, SystemZfs, Zfs, ZfsError,
};
