//! `dom0_driver::config::parse`: the YAML config checker. Every diagnostic must render.
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
        match dom0_driver::config::parse(text) {
            Ok((config, warnings)) => {
                let _ = format!("{config:?} {warnings:?}");
            }
            Err(errors) => {
                let _ = format!("{errors:?}");
            }
        }
    }
);
