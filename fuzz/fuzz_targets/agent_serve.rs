//! A hostile caller against `receiver_agent::serve` over `MemoryZfs`; see
//! `qzb_fuzz::agent::run_agent` for the input format and the checks.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;

qzb_fuzz::install_alloc_cap!();

fuzz_target!(
    init: qzb_fuzz::alloc_cap::init(),
    |data: &[u8]| qzb_fuzz::agent::run_agent(data)
);
