//! Maps `zfs receive` stderr to an [`ErrorClass`]. The original text always travels with the
//! class, so an unclassified message loses nothing.

use qzb_protocol::ErrorClass;

/// Classifies `zfs` stderr (printed with `LC_ALL=C`). Line breaks inside libzfs messages vary
/// between versions, so whitespace is normalised before matching.
pub fn classify_zfs_stderr(stderr: &str) -> ErrorClass {
    let text = stderr
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_ascii_lowercase();
    let has = |needle: &str| text.contains(needle);
    if has("contains partially-complete state") {
        ErrorClass::PartialStatePresent
    } else if has("kernel modules must be upgraded") {
        ErrorClass::StreamMismatch
    } else if has("out of space") || has("no space left") || has("quota exceeded") {
        ErrorClass::NoSpace
    } else if has("has been modified since most recent snapshot") {
        ErrorClass::DestinationModified
    } else if has("does not match incremental source")
        || has("local origin for clone")
        || (has("incremental") && has("does not exist"))
    {
        ErrorClass::IncrementalSourceMismatch
    } else if has("destination already exists")
        || has("destination has snapshots")
        || has("must specify -f to overwrite")
        || has("snapshot already exists")
    {
        ErrorClass::DestinationExists
    } else {
        ErrorClass::ZfsOther
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_libzfs_messages() {
        let cases = [
            (
                "cannot receive new filesystem stream: destination bpool/r/a contains partially-complete state from \"zfs receive -s\".\n",
                ErrorClass::PartialStatePresent,
            ),
            (
                "cannot receive resume stream: kernel modules must be upgraded to receive this stream.\n",
                ErrorClass::StreamMismatch,
            ),
            (
                "cannot receive incremental stream: destination bpool/r/a has been modified\nsince most recent snapshot\n",
                ErrorClass::DestinationModified,
            ),
            (
                "cannot receive incremental stream: most recent snapshot of bpool/r/a does not\nmatch incremental source\n",
                ErrorClass::IncrementalSourceMismatch,
            ),
            (
                "cannot receive incremental stream: destination 'bpool/r/a' does not exist\n",
                ErrorClass::IncrementalSourceMismatch,
            ),
            (
                "cannot receive new filesystem stream: destination 'bpool/r/a' exists\nmust specify -F to overwrite it\n",
                ErrorClass::DestinationExists,
            ),
            (
                "cannot restore to bpool/r/a@s1: destination already exists\n",
                ErrorClass::DestinationExists,
            ),
            (
                "cannot receive new filesystem stream: out of space\n",
                ErrorClass::NoSpace,
            ),
            ("cannot receive: failed to read from stream\n", ErrorClass::ZfsOther),
            ("", ErrorClass::ZfsOther),
        ];
        for (stderr, want) in cases {
            assert_eq!(classify_zfs_stderr(stderr), want, "{stderr:?}");
        }
    }
}
