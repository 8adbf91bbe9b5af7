//! `qzb_protocol::sets`: sealed settings and set indexes, and their bodies, on arbitrary
//! bytes; see `qzb_fuzz::sealed::run` for the checks.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;

qzb_fuzz::install_alloc_cap!();

fuzz_target!(
    init: qzb_fuzz::alloc_cap::init(),
    |data: &[u8]| qzb_fuzz::sealed::run(data)
);
