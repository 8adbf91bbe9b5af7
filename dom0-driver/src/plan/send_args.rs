//! The `zfs send` argv of a target. The estimate (`stream::estimate`) runs this same argv as a
//! dry run, so both always describe the same stream.

use crate::plan::Target;
use qzb_protocol::names::SnapshotName;

/// Arguments of `zfs send` for a target (without the `zfs` itself). Used for the estimate and the
/// real send, so both always agree.
pub fn send_args(t: &Target) -> Vec<String> {
    send_args_from(&t.snapshot, t.incremental_source.as_ref(), t.progressive)
}

/// `zfs send` arguments for `snapshot`, incremental from `source` if given.
pub fn send_args_from(
    snapshot: &SnapshotName,
    source: Option<&SnapshotName>,
    progressive: bool,
) -> Vec<String> {
    let mut a = vec!["send".to_owned()];
    // -L large blocks, -e embedded data, -c compressed blocks as stored: fewer bytes, same data.
    // -p carries the dataset's properties so a restore is faithful.
    a.extend(["-L", "-e", "-c", "-p"].map(String::from));
    if let Some(src) = source {
        a.push(if progressive { "-I" } else { "-i" }.to_owned());
        a.push(src.to_string());
    }
    a.push(snapshot.to_string());
    a
}
