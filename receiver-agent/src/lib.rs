//! The receiver agent: serves one qrexec call from dom0.
#![forbid(unsafe_code)]
