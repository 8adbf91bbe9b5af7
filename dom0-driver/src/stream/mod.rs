//! Everything that talks to the receiver agent.
pub mod pump;
pub mod qrexec;
pub mod send;
