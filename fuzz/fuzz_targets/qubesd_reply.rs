//! `parse_qubesd_reply` on raw bytes; an accepted payload goes on to the parsers that read
//! qubesd payloads (`parse_vm_list`, `parse_key_values`), as the driver does.
#![no_main]
#![forbid(unsafe_code)]

use dom0_driver::system::inventory::{parse_key_values, parse_qubesd_reply, parse_vm_list};
use libfuzzer_sys::fuzz_target;

qzb_fuzz::install_alloc_cap!();

fuzz_target!(
    init: qzb_fuzz::alloc_cap::init(),
    |data: &[u8]| {
        match parse_qubesd_reply(data) {
            Ok(payload) => {
                let _ = parse_vm_list(&payload);
                let _ = parse_key_values(&payload);
            }
            Err(e) => {
                assert!(!e.is_empty());
            }
        }
    }
);
