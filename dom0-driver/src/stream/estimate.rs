//! How many bytes a stream will be: `zfs send -n -v -P` with the stream's own argv, so the
//! estimate always describes exactly the stream that will run (a resume included).

use crate::system::inventory::parse_send_size;
use crate::system::runner::{command_line, Runner, ToolError};

/// The dry run of `args` (a `zfs send` argv without the program): `-n -v -P` after `send`.
pub fn dry_run_args(args: &[String]) -> Vec<String> {
    let mut a = args.to_vec();
    let at = a.iter().position(|x| x == "send").map_or(0, |p| p + 1);
    for (i, flag) in ["-n", "-v", "-P"].iter().enumerate() {
        a.insert(at + i, (*flag).to_owned());
    }
    a
}

/// The size `zfs send -n -v -P` reports for the stream `args` would make.
pub fn stream_size(runner: &dyn Runner, args: &[String]) -> Result<u64, ToolError> {
    let dry = dry_run_args(args);
    let argv: Vec<&str> = dry.iter().map(String::as_str).collect();
    let out = runner.run("zfs", &argv)?;
    parse_send_size(&String::from_utf8_lossy(&out))
        .ok_or_else(|| ToolError::new(command_line("zfs", &argv), "printed no 'size' line"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dry_run_is_the_streams_own_argv_with_n_v_p() {
        let args: Vec<String> = ["send", "-t", "1-ab-cd"].map(String::from).to_vec();
        assert_eq!(
            dry_run_args(&args),
            ["send", "-n", "-v", "-P", "-t", "1-ab-cd"]
        );
        let args: Vec<String> = ["send", "-L", "-e", "-c", "-p", "-I", "p/d@a", "p/d@b"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            dry_run_args(&args),
            ["send", "-n", "-v", "-P", "-L", "-e", "-c", "-p", "-I", "p/d@a", "p/d@b"]
        );
    }
}
