//! Everything that talks to the receiver agent, in the order of the pipeline: how to reach it
//! (`qrexec`, or any reader/writer pair for `client`), what it holds and what dom0 decides from
//! that (`receiver`), the data path (`pump`, `progress`), and the commands that use a session
//! (`send`, `verify`, `abort`, `calc`'s receiver checks).
pub mod abort;
pub mod blob;
pub mod calc;
pub mod client;
pub mod estimate;
pub mod medium;
pub mod progress;
pub mod pump;
pub mod qrexec;
pub mod readback;
pub mod receiver;
pub mod send;
pub mod sets;
pub mod tap;
pub mod verify;
