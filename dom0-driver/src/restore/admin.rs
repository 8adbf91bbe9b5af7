//! Writes through the Qubes Admin API (`qubesd-query` with the payload on stdin): create a
//! qube, set its properties, features, tags, firewall and device assignments, remove it again
//! when its restore fails.

use std::io::{Read, Write};
use std::time::Duration;

use crate::system::inventory::parse_qubesd_reply;
use crate::system::runner::{command_line, Runner};

/// How long one Admin API call may take.
const CALL_LIMIT: Duration = Duration::from_secs(120);

/// One call: `qubesd-query dom0 METHOD DEST [ARG]` with `payload` on stdin. `Err` says what
/// failed, for the report.
pub fn call(
    runner: &dyn Runner,
    method: &str,
    dest: &str,
    arg: Option<&str>,
    payload: &[u8],
) -> Result<String, String> {
    let mut args = vec!["dom0", method, dest];
    args.extend(arg);
    let line = command_line("qubesd-query", &args);
    let mut child = runner
        .spawn("qubesd-query", &args, true)
        .map_err(|e| e.to_string())?;
    if let Some(mut stdin) = child.stdin.take() {
        // The payloads are small, and qubesd-query reads all of it before it answers.
        stdin
            .write_all(payload)
            .map_err(|e| format!("`{line}`: writing its payload failed: {e}"))?;
    }
    let mut reply = Vec::new();
    if let Some(out) = child.stdout.as_mut() {
        out.take(1 << 20)
            .read_to_end(&mut reply)
            .map_err(|e| format!("`{line}`: reading its reply failed: {e}"))?;
    }
    let (exit, stderr) = child.wait(CALL_LIMIT);
    if exit != Some(crate::system::runner::Exit::Code(0)) {
        return Err(format!(
            "`{line}` failed ({}): {}",
            exit.map(|e| e.to_string()).unwrap_or("did not end".into()),
            crate::output::one_line(stderr.trim(), 300)
        ));
    }
    parse_qubesd_reply(&reply).map_err(|e| format!("`{line}`: {e}"))
}
