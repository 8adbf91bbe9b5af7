//! `dom0_driver::snapshot::parse_xl_attachments` (`xl list -l` JSON), with a resolver that
//! knows nothing and with one that maps every non-`/dev/zvol/` path to a dataset name.
#![no_main]
#![forbid(unsafe_code)]

use dom0_driver::snapshot::parse_xl_attachments;
use libfuzzer_sys::fuzz_target;

qzb_fuzz::install_alloc_cap!();

fuzz_target!(
    init: qzb_fuzz::alloc_cap::init(),
    |data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let _ = parse_xl_attachments(text, &|_| None);
        let _ = parse_xl_attachments(text, &|path: &str| {
            Some(path.trim_start_matches('/').replace("dev/", "pool/"))
        });
    }
);
