//! The send-stream tap (`qzb_protocol::zstream::Tap`) on arbitrary bytes in arbitrary
//! chunkings; see `qzb_fuzz::zstream::run_tap` for the input format and the checks.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;

qzb_fuzz::install_alloc_cap!();

fuzz_target!(
    init: qzb_fuzz::alloc_cap::init(),
    |data: &[u8]| qzb_fuzz::zstream::run_tap(data)
);
