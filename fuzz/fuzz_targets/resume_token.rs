//! `decode_resume_token` on arbitrary text; an accepted token re-encodes (native and XDR) to
//! tokens that decode to the same value.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use qzb_protocol::{decode_resume_token, encode_resume_token_with, NvEncoding};

qzb_fuzz::install_alloc_cap!();

fuzz_target!(
    init: qzb_fuzz::alloc_cap::init(),
    |data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        match decode_resume_token(text) {
            Ok(token) => {
                for encoding in [NvEncoding::NativeLittle, NvEncoding::Xdr] {
                    let again = encode_resume_token_with(&token, encoding);
                    let decoded = decode_resume_token(&again)
                        .unwrap_or_else(|e| panic!("{encoding:?} re-encoding refused: {e}"));
                    assert_eq!(decoded, token, "{encoding:?} round trip");
                }
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
);
