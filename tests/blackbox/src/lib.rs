//! Support for black-box tests: finds the workspace's built binaries and sets up a fake system.
#![forbid(unsafe_code)]
