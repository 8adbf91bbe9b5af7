//! Blobs and read-back in process: the driver's client (`stream::blob`) against the real
//! agent's `serve` with the fake `zfs` of the backup qube (blobs land in real files below a
//! per-test directory), and against hostile agents written with the protocol crate. No sleeps,
//! no clocks: every wait is on an event.

use dom0_driver::error::Error;
use dom0_driver::stream::client::{Client, Peer};
use qzb_blackbox_tests::{bin, FakeSystem};
use qzb_protocol as proto;
use std::io::Write;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Duration;

const ROOT: &str = "backuppool/backups/mydesktop";
/// Generous: only a guard against a hang, never reached by a working test.
const TIMEOUT: Duration = Duration::from_secs(300);
const BS: u64 = 4096;
const VOLSIZE: u64 = 16 * BS;

fn root() -> proto::DatasetName {
    proto::DatasetName::parse(ROOT).unwrap()
}

fn blob(s: &str) -> proto::BlobName {
    proto::BlobName::parse(s).unwrap()
}

fn snapshot() -> proto::SnapshotName {
    proto::SnapshotName::parse(&format!("{ROOT}/mainpool/vm@b1")).unwrap()
}

/// The agent's thread, as the client's peer: the call ends when the thread does.
struct ThreadPeer(Mutex<Option<JoinHandle<Result<(), String>>>>);

impl Peer for ThreadPeer {
    fn hang_up(&self) {}

    fn end(&self) -> Option<String> {
        let handle = self.0.lock().unwrap().take()?;
        match handle.join() {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("the agent ended with: {e}")),
            Err(_) => Some("the agent panicked".into()),
        }
    }
}

/// Starts `agent` on a thread joined to a client by two pipes.
fn connect(
    agent: impl FnOnce(std::io::PipeReader, std::io::PipeWriter) -> Result<(), String> + Send + 'static,
) -> Client {
    let (from_driver, to_agent) = std::io::pipe().unwrap();
    let (from_agent, to_driver) = std::io::pipe().unwrap();
    let handle = std::thread::spawn(move || agent(from_driver, to_driver));
    let peer = std::sync::Arc::new(ThreadPeer(Mutex::new(Some(handle))));
    Client::start(Box::new(from_agent), Box::new(to_agent), peer, TIMEOUT).unwrap()
}

/// The backup qube's side of a fake system: the fakes acting on the receiver's host file.
struct World {
    sys: FakeSystem,
    agent_bin: std::path::PathBuf,
}

impl World {
    fn new() -> World {
        let sys = FakeSystem::new("reference-system");
        let agent_bin = sys.dir.join("agent-bin");
        let out = std::process::Command::new(bin("qzb-fake"))
            .arg("install-links")
            .arg(&agent_bin)
            .output()
            .unwrap();
        assert!(out.status.success());
        std::fs::write(
            agent_bin.join("fake.env"),
            format!(
                "QZB_FAKE_ROOT={}\nQZB_FAKE_HOST=backups-disp\n",
                sys.state.display()
            ),
        )
        .unwrap();
        World { sys, agent_bin }
    }

    fn meta_base(&self) -> std::path::PathBuf {
        self.sys.dir.join("meta-base")
    }

    /// A session with the real agent.
    fn agent(&self) -> Client {
        let config = receiver_agent::Config {
            lock_path: self.sys.dir.join("receive.lock"),
            meta_base: Some(self.meta_base()),
            ..Default::default()
        };
        let zfs = receiver_agent::SystemZfs::with_program(
            self.agent_bin.join("zfs").display().to_string(),
        );
        connect(move |r, w| receiver_agent::serve(&config, &zfs, r, w).map_err(|e| e.to_string()))
    }
}

#[test]
fn blobs_round_trip_through_the_real_agent_and_the_fake_zfs() {
    let world = World::new();
    let mut client = world.agent();
    assert!(client.list_blobs(&root(), None).unwrap().is_empty());

    let manifest: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let index = b"set index".to_vec();
    client
        .put_blob(
            &root(),
            &blob("manifests/vm/000001"),
            &mut &manifest[..],
            manifest.len() as u64,
        )
        .unwrap();
    client
        .put_blob(
            &root(),
            &blob("sets/1"),
            &mut &index[..],
            index.len() as u64,
        )
        .unwrap();

    let mut got = Vec::new();
    let len = client
        .get_blob(&root(), &blob("manifests/vm/000001"), 4 << 20, &mut got)
        .unwrap();
    assert_eq!(len, manifest.len() as u64);
    assert_eq!(got, manifest);

    let listed = client.list_blobs(&root(), None).unwrap();
    let names: Vec<(&str, u64)> = listed.iter().map(|b| (b.name.as_str(), b.len)).collect();
    assert_eq!(
        names,
        [
            ("manifests/vm/000001", manifest.len() as u64),
            ("sets/1", index.len() as u64)
        ]
    );
    let sets = client.list_blobs(&root(), Some(&blob("sets"))).unwrap();
    assert_eq!(sets.len(), 1);

    // A blob larger than the caller allows is refused before any byte moves.
    let e = client
        .get_blob(&root(), &blob("manifests/vm/000001"), 1000, &mut Vec::new())
        .unwrap_err();
    assert!(e.to_string().contains("too large"), "{e}");
    let e = client
        .get_blob(&root(), &blob("sets/2"), 1000, &mut Vec::new())
        .unwrap_err();
    assert!(e.to_string().contains("not found"), "{e}");
    assert!(client.close().is_none());

    // The agent made its own filesystem under the root, mounted at its own mountpoint.
    let meta = format!("{ROOT}/.qzb-meta");
    let mountpoint = world.meta_base().join(&meta);
    let run = world.sys.zfs(
        "backups-disp",
        &["get", "-H", "-o", "value", "mounted,mountpoint", &meta],
    );
    assert_eq!(run.stdout, format!("yes\n{}\n", mountpoint.display()));
    assert_eq!(std::fs::read(mountpoint.join("sets/1")).unwrap(), index);
}

#[test]
fn put_blob_refuses_a_reader_shorter_than_the_length() {
    let world = World::new();
    let mut client = world.agent();
    let e = client
        .put_blob(&root(), &blob("sets/1"), &mut &b"short"[..], 10)
        .unwrap_err();
    assert!(e.to_string().contains("only 5 of its 10 bytes"), "{e}");
    // The agent got no end frame and stored nothing (once its session has ended).
    let ended = client.close().unwrap_or_default();
    assert!(ended.contains("before the end frame"), "{ended}");
    let blob_dir = world.meta_base().join(format!("{ROOT}/.qzb-meta/sets"));
    let left: Vec<_> = std::fs::read_dir(&blob_dir).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

// ---------------------------------------------------------------- hostile agents

/// A hostile agent: answers the hello, then the first request with `answer`.
fn hostile(
    answer: impl FnOnce(&proto::Request, &mut std::io::PipeWriter) -> Result<(), String>
        + Send
        + 'static,
) -> Client {
    connect(move |mut r, mut w| {
        let e = |e: proto::ProtocolError| e.to_string();
        proto::send_hello(&mut w, proto::Role::Receiver).map_err(e)?;
        proto::expect_hello(&mut r, proto::Role::Driver).map_err(e)?;
        let mut buf = Vec::new();
        if let Some(request) = proto::read_request(&mut r, &mut buf).map_err(e)? {
            answer(&request, &mut w)?;
            w.flush().map_err(|x| x.to_string())?;
        }
        // Wait for the driver to hang up.
        while proto::read_frame(&mut r, &mut buf).is_ok_and(|f| f.is_some()) {}
        Ok(())
    })
}

fn reply(w: &mut std::io::PipeWriter, r: proto::Reply) -> Result<(), String> {
    proto::write_reply(w, &r).map_err(|e| e.to_string())
}

#[test]
fn a_blob_longer_than_announced_is_refused() {
    let mut client = hostile(|_, w| {
        reply(w, proto::Reply::Blob { len: 4 })?;
        let mut framer = proto::StreamFramer::new();
        framer.write_data(w, b"longer").map_err(|e| e.to_string())?;
        framer.finish(w).map_err(|e| e.to_string())?;
        Ok(())
    });
    let mut out = Vec::new();
    let e = client
        .get_blob(&root(), &blob("a"), 100, &mut out)
        .unwrap_err();
    assert!(matches!(e, Error::Security(_)), "{e}");
    assert!(
        e.to_string().contains("more than the announced 4 bytes"),
        "{e}"
    );
}

#[test]
fn a_blob_announced_larger_than_asked_for_is_refused() {
    let mut client = hostile(|_, w| reply(w, proto::Reply::Blob { len: 101 }));
    let e = client
        .get_blob(&root(), &blob("a"), 100, &mut Vec::new())
        .unwrap_err();
    assert!(matches!(e, Error::Security(_)), "{e}");
}

#[test]
fn a_blob_with_a_corrupted_frame_is_refused() {
    let mut client = hostile(|_, w| {
        reply(w, proto::Reply::Blob { len: 6 })?;
        let mut wire = Vec::new();
        let mut framer = proto::StreamFramer::new();
        framer.write_data(&mut wire, b"secret").unwrap();
        framer.finish(&mut wire).unwrap();
        wire[proto::DATA_FRAME_PREFIX_LEN] ^= 1;
        w.write_all(&wire).map_err(|e| e.to_string())
    });
    let e = client
        .get_blob(&root(), &blob("a"), 100, &mut Vec::new())
        .unwrap_err();
    assert!(e.to_string().contains("failed its blake3 check"), "{e}");
}

#[test]
fn a_blob_list_outside_the_prefix_is_refused() {
    let mut client = hostile(|_, w| {
        reply(
            w,
            proto::Reply::Blobs(vec![proto::BlobInfo {
                name: blob("other/x"),
                len: 1,
            }]),
        )
    });
    let e = client.list_blobs(&root(), Some(&blob("sets"))).unwrap_err();
    assert!(matches!(e, Error::Security(_)), "{e}");
}

/// A hostile read-back: `ReadBackReady`, these block frames, then `ReadBackDone` (counting
/// them).
fn read_back_with(blocks: Vec<(u64, Vec<u8>)>) -> Result<Vec<u64>, Error> {
    let mut client = hostile(move |_, w| {
        reply(w, proto::Reply::ReadBackReady)?;
        let bytes = blocks.iter().map(|b| b.1.len() as u64).sum();
        for (offset, data) in &blocks {
            proto::write_block_frame(w, *offset, data).map_err(|e| e.to_string())?;
        }
        reply(
            w,
            proto::Reply::ReadBackDone {
                blocks: blocks.len() as u64,
                bytes,
            },
        )
    });
    let mut seen = Vec::new();
    client
        .read_back(&root(), &snapshot(), BS, VOLSIZE, &mut |offset, _| {
            seen.push(offset);
            Ok(())
        })
        .map(|_| seen)
}

fn block(seed: u8) -> Vec<u8> {
    vec![seed; BS as usize]
}

#[test]
fn a_well_formed_read_back_delivers_every_block() {
    let seen = read_back_with(vec![(0, block(1)), (5 * BS, block(2)), (15 * BS, block(3))]);
    assert_eq!(seen.unwrap(), [0, 5 * BS, 15 * BS]);
}

#[test]
fn read_back_blocks_out_of_order_are_refused() {
    let e = read_back_with(vec![(2 * BS, block(1)), (BS, block(2))]).unwrap_err();
    assert!(matches!(e, Error::Security(_)), "{e}");
    assert!(e.to_string().contains("out of order"), "{e}");
    let e = read_back_with(vec![(BS, block(1)), (BS, block(2))]).unwrap_err();
    assert!(e.to_string().contains("out of order"), "{e}");
}

#[test]
fn read_back_blocks_of_the_wrong_size_or_misaligned_are_refused() {
    let e = read_back_with(vec![(0, vec![1; 2 * BS as usize])]).unwrap_err();
    assert!(e.to_string().contains("a block of 8192 bytes"), "{e}");
    let e = read_back_with(vec![(512, block(1))]).unwrap_err();
    assert!(e.to_string().contains("not a multiple of 4096"), "{e}");
}

#[test]
fn read_back_blocks_beyond_the_volume_are_refused() {
    let e = read_back_with(vec![(VOLSIZE, block(1))]).unwrap_err();
    assert!(matches!(e, Error::Security(_)), "{e}");
    assert!(e.to_string().contains("beyond the volume"), "{e}");
}

#[test]
fn a_read_back_summary_that_does_not_match_the_blocks_is_refused() {
    let mut client = hostile(|_, w| {
        reply(w, proto::Reply::ReadBackReady)?;
        proto::write_block_frame(w, 0, &block(1)).map_err(|e| e.to_string())?;
        reply(
            w,
            proto::Reply::ReadBackDone {
                blocks: 2,
                bytes: 2 * BS,
            },
        )
    });
    let e = client
        .read_back(&root(), &snapshot(), BS, VOLSIZE, &mut |_, _| Ok(()))
        .unwrap_err();
    assert!(e.to_string().contains("says it sent 2 blocks"), "{e}");
}
