//! `decode_reply` on arbitrary bytes; an accepted reply encodes and decodes back to itself.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use qzb_protocol::{decode_reply, encode_reply};

qzb_fuzz::install_alloc_cap!();

fuzz_target!(
    init: qzb_fuzz::alloc_cap::init(),
    |data: &[u8]| {
        match decode_reply(data) {
            Ok(reply) => {
                let bytes = encode_reply(&reply).expect("accepted reply encodes");
                let again = decode_reply(&bytes).expect("re-encoded reply decodes");
                assert_eq!(again, reply);
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
);
