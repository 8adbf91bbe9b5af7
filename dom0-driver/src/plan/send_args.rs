//! The `zfs send` argv of a target. The estimate (`stream::estimate`) runs this same argv as a
//! dry run, so both always describe the same stream.

use crate::plan::Target;
use crate::system::inventory::DatasetKind;
use qzb_protocol::names::SnapshotName;

/// Arguments of `zfs send` for a target (without the `zfs` itself). Used for the estimate and the
/// real send, so both always agree.
pub fn send_args(t: &Target) -> Vec<String> {
    send_args_from(
        &t.snapshot,
        t.kind,
        t.incremental_source.as_ref(),
        t.progressive,
    )
}

/// `zfs send` arguments for `snapshot` of a dataset of `kind`, incremental from `source` if
/// given.
pub fn send_args_from(
    snapshot: &SnapshotName,
    kind: DatasetKind,
    source: Option<&SnapshotName>,
    progressive: bool,
) -> Vec<String> {
    // -L large blocks; -p carries the dataset's properties so a restore is faithful.
    let mut a = vec!["send".to_owned(), "-L".to_owned()];
    // Filesystems: -e embedded data, -c compressed blocks as stored: fewer bytes, same data.
    // Zvols go without them, so every WRITE carries the plain logical block that dom0's stream
    // tap tags for the manifest (the receiving kernel compresses again; docs/benchmarks.md has
    // what it costs on the wire).
    if kind == DatasetKind::Filesystem {
        a.extend(["-e", "-c"].map(String::from));
    }
    a.push("-p".to_owned());
    if let Some(src) = source {
        a.push(if progressive { "-I" } else { "-i" }.to_owned());
        a.push(src.to_string());
    }
    a.push(snapshot.to_string());
    a
}
