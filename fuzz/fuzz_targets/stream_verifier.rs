//! `StreamVerifier` fed a sequence of data and end frames split out of the input; see
//! `qzb_fuzz::stream::run_verifier` for the format and the checks.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;

qzb_fuzz::install_alloc_cap!();

fuzz_target!(
    init: qzb_fuzz::alloc_cap::init(),
    |data: &[u8]| qzb_fuzz::stream::run_verifier(data)
);
