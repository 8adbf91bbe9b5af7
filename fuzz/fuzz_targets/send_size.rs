//! `dom0_driver::system::inventory::parse_send_size` (`zfs send -n -v -P` output).
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;

qzb_fuzz::install_alloc_cap!();

fuzz_target!(
    init: qzb_fuzz::alloc_cap::init(),
    |data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let _ = dom0_driver::system::inventory::parse_send_size(text);
    }
);
