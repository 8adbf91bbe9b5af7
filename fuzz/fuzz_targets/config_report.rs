//! The whole config path of `check` after the file is read: UTF-8 text, YAML (with the alias
//! expansion cap), the config checker, and the error report in text (`Error::InvalidConfig`)
//! and JSON (`check --json`). Checks that the report stays capped: at most
//! `config::diag::MAX_SHOWN` errors are shown, in both forms, whatever the input.
#![no_main]
#![forbid(unsafe_code)]

use dom0_driver::config::diag::MAX_SHOWN;
use dom0_driver::error::Error;
use libfuzzer_sys::fuzz_target;

qzb_fuzz::install_alloc_cap!();

fuzz_target!(
    init: qzb_fuzz::alloc_cap::init(),
    |data: &[u8]| {
        // What config::file::read accepts: at most 1 MiB of UTF-8.
        if data.len() as u64 > dom0_driver::config::file::MAX_CONFIG_BYTES {
            return;
        }
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        match dom0_driver::config::parse(text) {
            Ok((config, warnings)) => {
                let _ = format!("{config:?} {warnings:?}");
            }
            Err(errors) => {
                assert!(!errors.is_empty(), "a rejected config has at least one error");
                let json = dom0_driver::commands::report::check_json("f.yaml", None, None, &errors, &[]);
                let shown = json["errors"].as_array().map_or(0, Vec::len);
                assert_eq!(shown, errors.len().min(MAX_SHOWN));
                assert_eq!(json["error_count"], errors.len());
                let total = errors.len();
                let report = Error::InvalidConfig {
                    file: "f.yaml".into(),
                    errors,
                }
                .to_string();
                // Header, the errors shown, and the "… and K more" line.
                let lines = report.lines().count();
                let extra = usize::from(total > MAX_SHOWN);
                assert!(
                    lines <= 1 + shown + extra,
                    "{lines} lines for {shown} errors shown"
                );
            }
        }
    }
);
