//! A hostile caller against `receiver_agent::serve` over the in-memory `MemoryZfs`.
//!
//! Input: `flags:u8` then wire bytes.
//! - flags bits 0-1: the receiver's starting state ([`memory_zfs`]);
//! - bit 2: raw: do not put a valid driver hello in front (the input brings its own);
//! - bit 3: fix up data and end frames ([`crate::stream::fix_up_frames`]) so streams pass the
//!   blake3/sequence checks and reach `zfs receive`;
//! - bit 4: `properties_on_resume = false`.
//!
//! Work per input is bounded by the input: `serve` returns at end of input, the receive lock is
//! private to this process and never waited for, and `MemoryZfs` does no I/O.

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use qzb_protocol::{
    decode_reply, encode_resume_token, read_frame, DatasetKind, DatasetName, FrameKind, Hello,
    ResumeToken, Role, SnapshotName,
};
use receiver_agent::memory::{fake_stream, MemDataset, MemoryZfs, PlannedFailure};
use receiver_agent::{serve, Config};

pub const POOL: &str = "bpool";
pub const ROOT: &str = "bpool/r";
/// Guid of the snapshot the partial receive on `bpool/r/b` (states 2 and 3) would produce.
pub const PARTIAL_TOGUID: u64 = 21;

/// The resume token held by `bpool/r/b` in states 2 and 3.
pub fn partial_token() -> String {
    encode_resume_token(&ResumeToken {
        object: 1,
        offset: 30,
        bytes: 30,
        ..ResumeToken::new(
            SnapshotName::parse(&format!("{ROOT}/b@s1")).expect("valid name"),
            PARTIAL_TOGUID,
        )
    })
}

/// Receiver states: 0 = just the root; 1 = plus volume `bpool/r/a` with snapshots `s1`
/// (guid 11) and `s2` (guid 12); 2 = plus `bpool/r/b` holding partial state of a full receive
/// ([`partial_token`]); 3 = like 2, and the next `zfs receive` fails after 20 bytes (no space).
pub fn memory_zfs(state: u8) -> MemoryZfs {
    let zfs = MemoryZfs::new();
    zfs.add_dataset(POOL, DatasetKind::Filesystem, 1);
    zfs.add_dataset(ROOT, DatasetKind::Filesystem, 2);
    zfs.state().available = 1 << 40;
    if state >= 1 {
        let a = format!("{ROOT}/a");
        zfs.add_dataset(&a, DatasetKind::Volume, 3);
        zfs.add_snapshot(&a, "s1", 11);
        zfs.add_snapshot(&a, "s2", 12);
    }
    if state >= 2 {
        let partial = fake_stream(PARTIAL_TOGUID, 0, b"partial body")[..30].to_vec();
        zfs.state().datasets.insert(
            format!("{ROOT}/b"),
            MemDataset {
                kind: DatasetKind::Filesystem,
                guid: 4,
                snapshots: Vec::new(),
                resume_token: Some(partial_token()),
                partial,
                unmountable: false,
            },
        );
    }
    if state >= 3 {
        zfs.state().fail_next_receive = Some(PlannedFailure {
            after_bytes: 20,
            stderr: "cannot receive new filesystem stream: out of space\n".into(),
        });
    }
    zfs
}

fn lock_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir()
            .join(format!("qzb-fuzz-agent-{}", std::process::id()))
            .join("receive.lock")
    })
    .clone()
}

/// Runs one session. Besides "no panic", checks that the agent answers with its hello and that
/// every reply it writes is one the driver accepts (decodes and validates), and that the
/// in-memory pool holds only valid dataset names afterwards.
pub fn run_agent(input: &[u8]) {
    let Some((&flags, rest)) = input.split_first() else {
        return;
    };
    let zfs = memory_zfs(flags & 3);
    let mut wire = Vec::with_capacity(input.len() + 64);
    if flags & 4 == 0 {
        wire.extend_from_slice(&crate::frame(1, &Hello::ours(Role::Driver).to_payload()));
    }
    if flags & 8 != 0 {
        wire.extend_from_slice(&crate::stream::fix_up_frames(rest));
    } else {
        wire.extend_from_slice(rest);
    }
    let config = Config {
        lock_path: lock_path(),
        lock_wait: Duration::ZERO,
        properties_on_resume: flags & 16 == 0,
        // No blob storage: the harness does no file I/O (blob requests are refused).
        meta_base: None,
    };
    let mut out = Vec::new();
    let result = serve(&config, &zfs, Cursor::new(&wire), &mut out);
    if let Err(e) = result {
        let _ = e.to_string();
    }

    let mut reader = Cursor::new(&out);
    let mut payload = Vec::new();
    let first = read_frame(&mut reader, &mut payload).expect("agent output is framed");
    assert_eq!(first, Some(FrameKind::Hello), "agent starts with its hello");
    let hello = Hello::from_payload(&payload).expect("agent hello parses");
    assert_eq!(hello.role, Role::Receiver);
    while let Some(kind) = read_frame(&mut reader, &mut payload).expect("agent output is framed") {
        assert_eq!(
            kind,
            FrameKind::Reply,
            "agent only sends replies after its hello"
        );
        if let Err(e) = decode_reply(&payload) {
            panic!("agent sent a reply the driver must refuse: {e}");
        }
    }

    for name in zfs.state().datasets.keys() {
        assert!(
            DatasetName::parse(name).is_ok(),
            "invalid dataset name in pool: {name:?}"
        );
    }
}
