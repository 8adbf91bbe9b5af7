//! `decode_request` on arbitrary bytes; an accepted request encodes and decodes back to itself.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use qzb_protocol::{decode_request, encode_request};

qzb_fuzz::install_alloc_cap!();

fuzz_target!(
    init: qzb_fuzz::alloc_cap::init(),
    |data: &[u8]| {
        match decode_request(data) {
            Ok(request) => {
                let bytes = encode_request(&request).expect("accepted request encodes");
                let again = decode_request(&bytes).expect("re-encoded request decodes");
                assert_eq!(again, request);
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
);
