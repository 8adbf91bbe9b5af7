//! Wire format shared by the dom0 driver and the receiver agent.
#![forbid(unsafe_code)]
