//! Whether a full target starts over beside a copy the medium already holds of its dataset.
//!
//! A volume restored (or destroyed and made again) is a new dataset with new guids: Qubes'
//! volume import destroys the old volume with its snapshots and renames the imported one into
//! place. None of its snapshots is on the medium, so its next backup cannot continue the
//! medium's copy: it is a full send. This module says so in the admin's words, from guids
//! alone (the caller brings dom0's and the medium's), so every case is a unit test.

use crate::plan::Target;

/// The medium's copy of a target's dataset, as far as continuing it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediumCopy {
    /// The medium holds no snapshot of the dataset.
    None,
    /// It holds at least one snapshot that dom0's dataset also has (same guid).
    Shared,
    /// It holds `held` snapshots, none of which dom0's dataset has any more.
    NoCommonSnapshot { held: usize },
}

/// Compares the guids of dom0's snapshots of a dataset with those of the medium's copy.
pub fn medium_copy(dom0: &[u64], medium: &[u64]) -> MediumCopy {
    if medium.is_empty() {
        MediumCopy::None
    } else if medium.iter().any(|g| dom0.contains(g)) {
        MediumCopy::Shared
    } else {
        MediumCopy::NoCommonSnapshot { held: medium.len() }
    }
}

/// Why `target` is a full send when the medium's copy of its dataset shares no snapshot with
/// dom0's; `None` for any other case (an incremental target, a first copy, a shared one).
pub fn full_send_reason(target: &Target, copy: MediumCopy) -> Option<String> {
    let MediumCopy::NoCommonSnapshot { held } = copy else {
        return None;
    };
    if target.incremental_source.is_some() {
        return None;
    }
    let ds = target.snapshot.dataset();
    Some(format!(
        "{}: no common snapshot with the medium: full send. The medium's copy of {ds} holds {held} snapshot(s), none of which dom0's {ds} has any more: the volume was replaced (a restore does that: Qubes' volume import makes a new dataset with new guids)",
        target.snapshot
    ))
}

/// What stops such a full send today, and what to do: the medium's dataset for it is taken by
/// the old copy (which the sets made before the restore need), and a full stream is only
/// received into a new dataset.
pub fn cannot_land_beside(on_medium: &str) -> String {
    format!(
        "a full stream cannot be received beside the old copy {on_medium} yet (it keeps the sets made before the restore): send this backup to a new receiver dataset (create it in the backup qube, set receiver.dataset in the config, then `import --replace`)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Reason;
    use crate::system::inventory::DatasetKind;
    use qzb_protocol::names::SnapshotName;

    fn target(incremental_from: Option<&str>) -> Target {
        Target {
            snapshot: SnapshotName::parse("pool/qubes/vault/private@b2").unwrap(),
            kind: DatasetKind::Volume,
            incremental_source: incremental_from.map(|s| SnapshotName::parse(s).unwrap()),
            progressive: false,
            clone_origin: false,
            reason: Reason::Target,
            guid: Some(7),
            object: None,
            depends_on: vec![],
        }
    }

    #[test]
    fn a_restored_volume_shares_no_snapshot_with_the_medium_and_is_sent_in_full_saying_why() {
        // The medium holds @b1 (guid 11) of the old volume; the restored one has new guids.
        let copy = medium_copy(&[21, 22], &[11]);
        assert_eq!(copy, MediumCopy::NoCommonSnapshot { held: 1 });
        assert_eq!(
            full_send_reason(&target(None), copy).unwrap(),
            "pool/qubes/vault/private@b2: no common snapshot with the medium: full send. The medium's copy of pool/qubes/vault/private holds 1 snapshot(s), none of which dom0's pool/qubes/vault/private has any more: the volume was replaced (a restore does that: Qubes' volume import makes a new dataset with new guids)"
        );
    }

    #[test]
    fn a_first_copy_or_a_shared_snapshot_needs_no_explanation() {
        assert_eq!(medium_copy(&[21], &[]), MediumCopy::None);
        assert_eq!(medium_copy(&[11, 21], &[11]), MediumCopy::Shared);
        assert_eq!(full_send_reason(&target(None), MediumCopy::None), None);
        assert_eq!(full_send_reason(&target(None), MediumCopy::Shared), None);
        // An incremental target is refused elsewhere if its base is not on the medium.
        assert_eq!(
            full_send_reason(
                &target(Some("pool/qubes/vault/private@b1")),
                MediumCopy::NoCommonSnapshot { held: 1 }
            ),
            None
        );
    }
}
