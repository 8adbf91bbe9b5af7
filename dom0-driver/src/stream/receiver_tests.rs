//! Unit tests of the receiver decisions (`decide`): plan versus what the receiver holds.
use super::*;
use crate::plan::Reason;
use crate::state::SnapshotState;
use crate::system::inventory::{DatasetKind, Snapshot};
use qzb_protocol::names::SnapLabel;

const ROOT: &str = "bpool/b";

fn sn(s: &str) -> SnapshotName {
    SnapshotName::parse(s).unwrap()
}

/// dom0 has pool/vm@a (guid 1), @b (2), @c (3).
fn source() -> ZfsInventory {
    let mut z = ZfsInventory::default();
    z.snapshots.insert(
        "pool/vm".into(),
        [("a", 1), ("b", 2), ("c", 3)]
            .iter()
            .enumerate()
            .map(|(i, (l, g))| Snapshot {
                label: SnapLabel::parse(l).unwrap(),
                createtxg: 10 + i as u64,
                guid: *g,
            })
            .collect(),
    );
    z
}

fn target(snap: &str, from: Option<&str>, state: SendState) -> TargetState {
    TargetState {
        target: Target {
            snapshot: sn(snap),
            kind: DatasetKind::Volume,
            incremental_source: from.map(sn),
            progressive: true,
            clone_origin: false,
            reason: Reason::Target,
            guid: source().snapshot(&sn(snap)).map(|s| s.guid),
            object: None,
            depends_on: vec![],
        },
        snapshot_state: SnapshotState::Exists,
        size_estimate: None,
        send_state: state,
        received_guid: None,
        last_error: None,
        sent_stream: None,
        manifest: None,
    }
}

/// A receiver holding bpool/b/pool/vm with the given snapshots and token.
fn receiver(snaps: &[(&str, u64)], token: Option<String>) -> ReceiverView {
    let name = proto::DatasetName::parse("bpool/b/pool/vm").unwrap();
    ReceiverView::from_reply(proto::InventoryReply {
        root: proto::DatasetName::parse(ROOT).unwrap(),
        available: 1 << 40,
        datasets: vec![proto::DatasetInfo {
            snapshots: snaps
                .iter()
                .enumerate()
                .map(|(i, (l, g))| proto::SnapshotInfo {
                    name: proto::SnapshotName::parse(&format!("{name}@{l}")).unwrap(),
                    guid: *g,
                    createtxg: i as u64,
                })
                .collect(),
            name,
            kind: proto::DatasetKind::Volume,
            guid: 99,
            receive_resume_token: token,
        }],
    })
}

fn empty_receiver() -> ReceiverView {
    ReceiverView::from_reply(proto::InventoryReply {
        root: proto::DatasetName::parse(ROOT).unwrap(),
        available: 1,
        datasets: vec![],
    })
}

fn root() -> DatasetName {
    DatasetName::parse(ROOT).unwrap()
}

fn token(toname: &str, toguid: u64, fromguid: Option<u64>) -> String {
    proto::encode_resume_token(&proto::ResumeToken {
        object: 1,
        offset: 4096,
        bytes: 8192,
        toguid,
        toname: proto::SnapshotName::parse(toname).unwrap(),
        fromguid,
        largeblockok: true,
        embedok: true,
        compressok: true,
        rawok: false,
        redact_snaps: None,
        book_redact_snaps: None,
    })
}

#[test]
fn a_full_send_goes_out_with_the_planned_flags() {
    let t = target("pool/vm@c", None, SendState::Pending);
    let step = decide(&t, &root(), &empty_receiver(), &source(), false).unwrap();
    let Step::Send {
        mode, args, origin, ..
    } = step
    else {
        panic!()
    };
    assert_eq!(mode, proto::ReceiveMode::Full);
    // A zvol: plain blocks for the manifest tap (no -e, -c).
    assert_eq!(args, ["send", "-L", "-p", "pool/vm@c"]);
    assert_eq!(origin, None);
}

#[test]
fn an_incremental_needs_its_source_on_the_receiver_with_the_same_guid() {
    let t = target("pool/vm@c", Some("pool/vm@a"), SendState::Pending);
    let e = decide(&t, &root(), &empty_receiver(), &source(), false).unwrap_err();
    assert!(e.to_string().contains("is not on the receiver"), "{e}");
    let e = decide(&t, &root(), &receiver(&[("a", 77)], None), &source(), false).unwrap_err();
    assert!(e.to_string().contains("guid 77, not 1"), "{e}");
    let step = decide(&t, &root(), &receiver(&[("a", 1)], None), &source(), false).unwrap();
    let Step::Send {
        mode, args, note, ..
    } = step
    else {
        panic!()
    };
    // The planned stream, not a "continuation" of an interrupted package (found on real
    // ZFS: every incremental said "continuing from @a, which the receiver already has").
    assert_eq!(note, None);
    assert!(matches!(
        mode,
        proto::ReceiveMode::Incremental { from_guid: 1, .. }
    ));
    assert_eq!(args, ["send", "-L", "-p", "-I", "pool/vm@a", "pool/vm@c"]);
}

#[test]
fn a_matching_resume_token_resumes_with_send_t() {
    let tok = token("pool/vm@c", 3, Some(1));
    let t = target("pool/vm@c", Some("pool/vm@a"), SendState::Partial);
    let step = decide(
        &t,
        &root(),
        &receiver(&[("a", 1)], Some(tok.clone())),
        &source(),
        false,
    )
    .unwrap();
    let Step::Send { mode, args, .. } = step else {
        panic!()
    };
    assert_eq!(mode, proto::ReceiveMode::Resume { token: tok.clone() });
    assert_eq!(args, ["send", "-t", tok.as_str()]);
}

#[test]
fn a_forged_resume_token_is_a_security_refusal() {
    let t = target("pool/vm@c", Some("pool/vm@a"), SendState::Partial);
    for (tok, why) in [
        (token("pool/secret@c", 3, Some(1)), "it names pool/secret@c"),
        (token("pool/vm@c", 4, Some(1)), "its guid is 4"),
        (
            token("pool/vm@c", 3, None),
            "continues from nothing (a full stream)",
        ),
        ("1-garbage-00-zz".to_owned(), "cannot be decoded"),
    ] {
        let e = decide(
            &t,
            &root(),
            &receiver(&[("a", 1)], Some(tok)),
            &source(),
            false,
        )
        .unwrap_err();
        assert!(matches!(e, Error::Security(_)), "{e}");
        assert!(e.to_string().contains(why), "{e}");
    }
}

#[test]
fn same_name_with_another_guid_is_never_touched() {
    let t = target("pool/vm@c", Some("pool/vm@a"), SendState::Pending);
    let e = decide(
        &t,
        &root(),
        &receiver(&[("a", 1), ("c", 42)], None),
        &source(),
        true,
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("different snapshot with the same name"),
        "{e}"
    );
}

#[test]
fn present_target_needs_patching_unless_this_backup_started_it() {
    let rx = receiver(&[("a", 1), ("c", 3)], None);
    let pending = target("pool/vm@c", Some("pool/vm@a"), SendState::Pending);
    let e = decide(&pending, &root(), &rx, &source(), false).unwrap_err();
    assert!(e.to_string().contains("patching"), "{e}");
    assert_eq!(
        decide(&pending, &root(), &rx, &source(), true).unwrap(),
        Step::AlreadyThere
    );
    let ours = target("pool/vm@c", Some("pool/vm@a"), SendState::Partial);
    assert_eq!(
        decide(&ours, &root(), &rx, &source(), false).unwrap(),
        Step::AlreadyThere
    );
}

#[test]
fn a_package_cut_between_snapshots_continues_from_the_newest_common_one() {
    let t = target("pool/vm@c", Some("pool/vm@a"), SendState::Partial);
    let step = decide(
        &t,
        &root(),
        &receiver(&[("a", 1), ("b", 2)], None),
        &source(),
        false,
    )
    .unwrap();
    let Step::Send { mode, args, .. } = step else {
        panic!()
    };
    assert_eq!(args, ["send", "-L", "-p", "-I", "pool/vm@b", "pool/vm@c"]);
    assert!(matches!(
        mode,
        proto::ReceiveMode::Incremental { from_guid: 2, .. }
    ));
}

#[test]
fn a_missing_source_snapshot_is_refused_before_anything_runs() {
    let mut t = target("pool/vm@c", None, SendState::Pending);
    t.target.guid = None;
    let e = decide(&t, &root(), &empty_receiver(), &source(), false).unwrap_err();
    assert!(e.to_string().contains("run `snapshot` first"), "{e}");
}
