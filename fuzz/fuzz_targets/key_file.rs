//! `keyfile::WrappedKey::decode` and `unwrap` on arbitrary bytes; see
//! `qzb_fuzz::key_file::run` for the checks.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;

qzb_fuzz::install_alloc_cap!();

fuzz_target!(
    init: qzb_fuzz::alloc_cap::init(),
    |data: &[u8]| qzb_fuzz::key_file::run(data)
);
