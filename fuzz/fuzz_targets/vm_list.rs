//! `parse_vm_list` (admin.vm.List) and `parse_key_values` (admin.*.Info) on arbitrary text.
#![no_main]
#![forbid(unsafe_code)]

use dom0_driver::system::inventory::{parse_key_values, parse_vm_list};
use libfuzzer_sys::fuzz_target;

qzb_fuzz::install_alloc_cap!();

fuzz_target!(
    init: qzb_fuzz::alloc_cap::init(),
    |data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let _ = parse_vm_list(text);
        let _ = parse_key_values(text);
    }
);
