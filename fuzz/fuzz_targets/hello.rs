//! `Hello::from_payload` on arbitrary bytes; an accepted hello re-encodes to one that parses
//! the same.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use qzb_protocol::Hello;

qzb_fuzz::install_alloc_cap!();

fuzz_target!(
    init: qzb_fuzz::alloc_cap::init(),
    |data: &[u8]| {
        match Hello::from_payload(data) {
            Ok(hello) => {
                let again = Hello::from_payload(&hello.to_payload()).expect("own hello parses");
                assert_eq!(again, hello);
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
);
