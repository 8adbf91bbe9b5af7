//! The in-process tier: the driver's commands and the agent's `serve` in one process, joined by
//! pipes instead of qrexec, with the fake `zfs` on both sides (dom0's through the driver's own
//! process runner, the backup qube's through the agent's `SystemZfs`). The place for protocol
//! and hostile-receiver scenarios: no sleeps, no clocks; every wait is on an event.
//!
//! The [`liar`] is the backup qube `verify` exists for: it swallows a zvol's stream, receives
//! nothing, reports the right guid (so `verify --quick` passes) and then lies on the read-back
//! or about the stored manifests; full `verify` must fail (exit 8) naming the snapshot and the
//! first problem. Its faithful twin, which replays what it swallowed, passes: the control.

use dom0_driver::error::Error;
use dom0_driver::state::{SendState, Store};
use dom0_driver::stream::client::{Client, Peer};
use dom0_driver::stream::progress::Mode;
use dom0_driver::stream::qrexec::Connect;
use dom0_driver::system::runner::SystemRunner;
use qzb_blackbox_tests::{bin, FakeSystem, VAULT};
use qzb_protocol as proto;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::Duration;

const ROOT: &str = "backuppool/backups/mydesktop";
const DEST: &str = "backuppool/backups/mydesktop/mainpool/shared";
/// Generous: only a guard against a hang, never reached by a working test.
const TIMEOUT: Duration = Duration::from_secs(300);

/// Who may run beside whom. The driver's backup lock is a `flock` on an open file: a child
/// that another test's thread forks while the lock is held shares that open file until it
/// execs, so a test that releases the lock and takes it again at once (`send` then `send`
/// or `abort`) can find it still held: "in use by another process". Such a test runs alone
/// (it takes this for writing); every other test takes it for reading, from before its
/// first child process to its end.
static TURNS: RwLock<()> = RwLock::new(());

enum Turn {
    Beside {
        _guard: RwLockReadGuard<'static, ()>,
    },
    Alone {
        _guard: RwLockWriteGuard<'static, ()>,
    },
}

impl Turn {
    fn beside() -> Turn {
        Turn::Beside {
            _guard: TURNS.read().unwrap_or_else(PoisonError::into_inner),
        }
    }

    fn alone() -> Turn {
        Turn::Alone {
            _guard: TURNS.write().unwrap_or_else(PoisonError::into_inner),
        }
    }
}

/// A fake system with a backup imported (by the real binary), plus a second tool directory
/// whose fakes act as the backup qube.
struct World {
    sys: FakeSystem,
    agent_bin: std::path::PathBuf,
    /// The backup the tests send and verify.
    name: &'static str,
    /// Held to the end of the test (dropped after the system).
    _turn: Turn,
}

impl World {
    /// The `shared` backup: three filesystems, 4 MiB per snapshot, no key.
    fn new() -> World {
        let turn = Turn::beside();
        World::around(
            FakeSystem::with_shared_backup(4 << 20, false),
            "shared",
            turn,
        )
    }

    /// [`World::new`] for a test that takes the backup's lock more than once: no other test
    /// runs beside it (see [`TURNS`]).
    fn alone() -> World {
        let turn = Turn::alone();
        World::around(
            FakeSystem::with_shared_backup(4 << 20, false),
            "shared",
            turn,
        )
    }

    /// The `vols` backup of one zvol ([`VAULT`], 1 MiB of data: 64 blocks of 16 KiB, some of
    /// them holes), with a key: its send is authenticated, and `verify` reads it back.
    fn with_zvol() -> World {
        let turn = Turn::beside();
        let sys = FakeSystem::with_zvol_backup(1 << 20);
        sys.init_key();
        World::around(sys, "vols", turn)
    }

    fn around(sys: FakeSystem, name: &'static str, turn: Turn) -> World {
        // The backup qube's tools: the same fakes, acting on the receiver's host file.
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
        World {
            sys,
            agent_bin,
            name,
            _turn: turn,
        }
    }

    fn runner(&self) -> SystemRunner {
        SystemRunner::with_path(self.sys.path_env(), TIMEOUT)
    }

    fn store(&self) -> Store {
        Store::new(&self.sys.meta)
    }

    /// The real agent, served in memory.
    fn agent(&self) -> InMemory {
        InMemory::new(self, Agent::Real { cut_after: None })
    }

    fn send(&self, connector: &InMemory) -> Result<(), Error> {
        dom0_driver::commands::receiver::send(
            &self.store(),
            &self.runner(),
            connector,
            self.name,
            Mode::Lines,
        )
    }

    /// `verify` (`--quick`: the guid check alone).
    fn verify(&self, connector: &InMemory, quick: bool) -> Result<(), Error> {
        dom0_driver::commands::receiver::verify(
            &self.store(),
            connector,
            self.name,
            quick,
            Mode::Lines,
        )
    }

    fn states(&self) -> Vec<SendState> {
        let state = self.store().load(self.name).unwrap();
        state.targets.iter().map(|t| t.send_state).collect()
    }

    fn receiver(&self) -> Value {
        let text = std::fs::read_to_string(self.sys.state.join("qubes/backups-disp.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// The `zfs send` argvs dom0 ran that made a stream (not the `-n` estimates).
    fn sends(&self) -> Vec<Vec<String>> {
        self.sys
            .calls()
            .into_iter()
            .filter(|c| c["host"] == "dom0" && c["argv"][0] == "zfs" && c["argv"][1] == "send")
            .filter(|c| c["argv"][2] != "-n")
            .map(|c| {
                c["argv"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap().to_owned())
                    .collect()
            })
            .collect()
    }
}

/// What answers on the other end of the pipes.
#[derive(Clone)]
enum Agent {
    /// The real `serve`; `cut_after` ends its input after that many bytes, as if the agent's
    /// process died mid-frame (its pipes close with it).
    Real { cut_after: Option<u64> },
    /// A compromised backup qube, written against the protocol crate.
    Hostile(Hostile),
    /// A compromised backup qube that keeps nothing in ZFS and lies about it (see [`liar`]);
    /// what it pretends to hold lasts across its sessions.
    Liar(Lie, Arc<Mutex<LiarMedium>>),
}

#[derive(Clone, Copy)]
enum Hostile {
    /// Reports a partial receive whose resume token names another snapshot.
    ForgedToken,
    /// Drains the stream and reports success with a guid it made up.
    LyingGuid,
    /// Answers a receive request with "waiting for the lock" again and again (a stall).
    WaitsForever,
}

/// A `Connect` that starts an agent on a thread per session, joined by two pipes.
struct InMemory {
    agent_bin: std::path::PathBuf,
    lock: std::path::PathBuf,
    meta_base: std::path::PathBuf,
    agent: Agent,
}

impl InMemory {
    fn new(world: &World, agent: Agent) -> InMemory {
        InMemory {
            agent_bin: world.agent_bin.clone(),
            lock: world.sys.dir.join("receive.lock"),
            meta_base: world.sys.meta_base(),
            agent,
        }
    }
}

/// The agent's thread, as the client's peer: the call ends when the thread does.
struct ThreadPeer {
    thread: Mutex<Option<JoinHandle<Result<(), String>>>>,
    /// A second reader of the agent's output. After the client closed its side it reads no
    /// more, and an agent in the middle of a read-back or a blob would block on a full pipe
    /// for ever; the real call's end (the qrexec client killed) is this: what it still says
    /// goes nowhere, until it sees our end of its input and stops.
    output: Mutex<Option<std::io::PipeReader>>,
}

impl Peer for ThreadPeer {
    fn hang_up(&self) {}

    fn end(&self) -> Option<String> {
        let handle = self.thread.lock().unwrap().take()?;
        if let Some(mut rest) = self.output.lock().unwrap().take() {
            // Ends when the agent's thread drops its writer, i.e. when the thread ends.
            let _ = std::io::copy(&mut rest, &mut std::io::sink());
        }
        match handle.join() {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("the agent ended with: {e}")),
            Err(_) => Some("the agent panicked".into()),
        }
    }
}

impl Connect for InMemory {
    fn connect(&self, _qube: &str) -> Result<Client, Error> {
        let (from_driver, to_agent) = std::io::pipe().unwrap();
        let (from_agent, to_driver) = std::io::pipe().unwrap();
        let output = from_agent.try_clone().unwrap();
        let agent = self.agent.clone();
        let zfs = self.agent_bin.join("zfs").display().to_string();
        let lock = self.lock.clone();
        let meta_base = self.meta_base.clone();
        let handle = std::thread::spawn(move || match agent {
            Agent::Real { cut_after } => {
                let config = receiver_agent::Config {
                    lock_path: lock,
                    meta_base: Some(meta_base),
                    ..Default::default()
                };
                let zfs = receiver_agent::SystemZfs::with_program(zfs);
                let Some(n) = cut_after else {
                    return receiver_agent::serve(&config, &zfs, from_driver, to_driver)
                        .map_err(|e| e.to_string());
                };
                let dead = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let reader = Dies {
                    inner: Some(from_driver),
                    left: n,
                    dead: dead.clone(),
                };
                let writer = Mute {
                    inner: Some(to_driver),
                    dead,
                };
                receiver_agent::serve(&config, &zfs, reader, writer).map_err(|e| e.to_string())
            }
            Agent::Hostile(mode) => hostile(mode, from_driver, to_driver),
            Agent::Liar(lie, medium) => liar(lie, &medium, from_driver, to_driver),
        });
        let peer = Arc::new(ThreadPeer {
            thread: Mutex::new(Some(handle)),
            output: Mutex::new(Some(output)),
        });
        Client::start(Box::new(from_agent), Box::new(to_agent), peer, TIMEOUT)
    }
}

/// The agent's input as its process dies after `left` bytes: both of its pipe ends close at
/// once (the driver's writes fail, its reads end) and it never says another word.
struct Dies {
    inner: Option<std::io::PipeReader>,
    left: u64,
    dead: Arc<std::sync::atomic::AtomicBool>,
}

impl Read for Dies {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some(inner) = self.inner.as_mut().filter(|_| self.left > 0) else {
            self.inner = None;
            self.dead.store(true, std::sync::atomic::Ordering::SeqCst);
            return Err(std::io::Error::other("the agent was killed"));
        };
        let max = buf.len().min(self.left as usize);
        let n = inner.read(&mut buf[..max])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// The agent's output, closed the moment [`Dies`] fires.
struct Mute {
    inner: Option<std::io::PipeWriter>,
    dead: Arc<std::sync::atomic::AtomicBool>,
}

impl Write for Mute {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.dead.load(std::sync::atomic::Ordering::SeqCst) {
            self.inner = None;
        }
        match self.inner.as_mut() {
            Some(w) => w.write(buf),
            None => Err(std::io::ErrorKind::BrokenPipe.into()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.inner.as_mut() {
            Some(w) if !self.dead.load(std::sync::atomic::Ordering::SeqCst) => w.flush(),
            _ => Err(std::io::ErrorKind::BrokenPipe.into()),
        }
    }
}

fn hostile(
    mode: Hostile,
    mut r: std::io::PipeReader,
    mut w: std::io::PipeWriter,
) -> Result<(), String> {
    let e = |e: proto::ProtocolError| e.to_string();
    proto::send_hello(&mut w, proto::Role::Receiver).map_err(e)?;
    proto::expect_hello(&mut r, proto::Role::Driver).map_err(e)?;
    let mut buf = Vec::new();
    while let Some(request) = proto::read_request(&mut r, &mut buf).map_err(e)? {
        let reply = match request {
            proto::Request::Inventory(req) => {
                let mut datasets = Vec::new();
                if let Hostile::ForgedToken = mode {
                    let token = proto::encode_resume_token(&proto::ResumeToken {
                        object: 1,
                        offset: 4096,
                        bytes: 8192,
                        toguid: 1,
                        toname: proto::SnapshotName::parse("mainpool/secret@b1").unwrap(),
                        fromguid: None,
                        largeblockok: true,
                        embedok: true,
                        compressok: true,
                        rawok: false,
                        redact_snaps: None,
                        book_redact_snaps: None,
                    });
                    datasets.push(proto::DatasetInfo {
                        name: proto::DatasetName::parse(DEST).unwrap(),
                        kind: proto::DatasetKind::Filesystem,
                        guid: 7,
                        receive_resume_token: Some(token),
                        snapshots: vec![],
                    });
                }
                proto::Reply::Inventory(proto::InventoryReply {
                    root: req.root,
                    available: 1 << 40,
                    datasets,
                })
            }
            proto::Request::Receive(_) if matches!(mode, Hostile::WaitsForever) => {
                for _ in 0..2 {
                    let waiting = proto::Reply::Waiting {
                        holder: "another session\n\x1b[2Jerror: fake".into(),
                    };
                    proto::write_reply(&mut w, &waiting).map_err(e)?;
                }
                continue;
            }
            proto::Request::Receive(req) => {
                proto::write_reply(&mut w, &proto::Reply::ReceiveReady).map_err(e)?;
                // Drain the stream to its end frame without checking anything.
                loop {
                    match proto::read_frame(&mut r, &mut buf).map_err(e)? {
                        Some(proto::FrameKind::End) | None => break,
                        Some(_) => {}
                    }
                }
                proto::Reply::Receive(proto::ReceiveResult::Ok {
                    snapshot: req.snapshot,
                    guid: req.guid ^ 0x5a5a,
                    bytes: 0,
                })
            }
            proto::Request::Abort(req) => proto::Reply::Aborted {
                dataset: req.dataset,
            },
            // Blob and read-back lies: `liar` below; blob misbehaviour: tests/blobs.rs.
            _ => proto::Reply::Error(proto::ErrorReply {
                class: proto::ErrorClass::InvalidRequest,
                message: "not supported by this hostile agent".into(),
            }),
        };
        proto::write_reply(&mut w, &reply).map_err(e)?;
        w.flush().map_err(|x| x.to_string())?;
    }
    Ok(())
}

/// How the [`liar`] lies, beyond swallowing every stream and reporting the right guid.
#[derive(Clone, Copy)]
enum Lie {
    /// No further lie: it replays, from memory, exactly the blocks of the stream it swallowed
    /// (the control: nothing on the medium, yet nothing verify could tell).
    Faithful,
    /// Reads back every data block as zeros, at the right offsets.
    Zeroes,
    /// Reads back no block at all (an empty volume).
    Nothing,
    /// Flips one byte of the n-th block read back.
    AlteredBlock(usize),
    /// Leaves out the n-th block.
    DroppedBlock(usize),
    /// Reads the n-th and the next block back at each other's offset.
    SwappedBlocks(usize),
    /// Adds a non-zero block right after the last one, where the volume holds zeros.
    ExtraBlock,
    /// Moves the first block that has a hole after it one block up, into the hole.
    MovedIntoHole,
    /// Reads back the blocks of another volume's snapshot (the first other stream it
    /// swallowed) in place of the one asked for: a swapped volume.
    OtherVolume,
    /// Flips byte `at` of the blob whose name ends with `suffix` as dom0 reads it.
    FlippedBlob { suffix: &'static str, at: usize },
    /// Lists no manifest, as if the backup had been sent without a key.
    HiddenManifests,
    /// Serves a manifest it made itself, of an empty volume (its header MAC'd with a key of
    /// its own), in place of dom0's, and reads back nothing: a lie consistent in itself.
    ForgedManifest,
}

/// What the [`liar`] pretends to hold: nothing of it in ZFS.
#[derive(Default)]
struct LiarMedium {
    /// Snapshots it claims, in the order "received": name, guid, kind.
    snapshots: Vec<(proto::SnapshotName, u64, proto::DatasetKind)>,
    /// The streams it swallowed, by snapshot name.
    streams: BTreeMap<String, Vec<u8>>,
    /// The blobs dom0 stored, by name.
    blobs: BTreeMap<String, Vec<u8>>,
}

impl LiarMedium {
    /// The non-zero blocks of object 1 in the stream it swallowed for `snapshot`: what an
    /// honest agent's read-back sends.
    fn blocks(&self, snapshot: &str, volblocksize: u64) -> Vec<(u64, Vec<u8>)> {
        let Some(stream) = self.streams.get(snapshot) else {
            return Vec::new();
        };
        let mut tap = proto::zstream::Tap::new(Blocks {
            volblocksize: volblocksize as usize,
            blocks: Vec::new(),
        });
        tap.feed(stream).unwrap();
        tap.finish().unwrap();
        tap.into_sink().blocks
    }

    /// The names of the blobs it holds that end with `suffix`.
    fn blob_names(&self, suffix: &str) -> Vec<String> {
        self.blobs
            .keys()
            .filter(|n| n.ends_with(suffix))
            .cloned()
            .collect()
    }
}

/// Collects the non-zero `volblocksize` blocks of object 1's WRITE records.
struct Blocks {
    volblocksize: usize,
    blocks: Vec<(u64, Vec<u8>)>,
}

impl proto::zstream::Sink for Blocks {
    fn on_write(&mut self, w: &proto::zstream::Write<'_>) {
        if w.object != 1 {
            return;
        }
        assert!(w.is_plain(), "dom0 sends zvols without -c");
        for (i, block) in w.payload.chunks(self.volblocksize).enumerate() {
            if block.iter().any(|&b| b != 0) {
                let offset = w.offset + (i * self.volblocksize) as u64;
                self.blocks.push((offset, block.to_vec()));
            }
        }
    }
}

/// A compromised backup qube that receives nothing into ZFS: it drains every stream (keeping
/// its bytes in memory), reports the snapshot received with the guid dom0 asked for, lists it
/// in its inventory, keeps dom0's blobs, and lies as `lie` says when dom0 reads back.
fn liar(
    lie: Lie,
    medium: &Mutex<LiarMedium>,
    mut r: std::io::PipeReader,
    mut w: std::io::PipeWriter,
) -> Result<(), String> {
    let e = |e: proto::ProtocolError| e.to_string();
    proto::send_hello(&mut w, proto::Role::Receiver).map_err(e)?;
    proto::expect_hello(&mut r, proto::Role::Driver).map_err(e)?;
    let mut buf = Vec::new();
    // The data frames of a receive or a blob, verified as the real agent does (so that what
    // it keeps is what dom0 sent); `None` when dom0 ended without an end frame.
    let mut take_stream = |r: &mut std::io::PipeReader| -> Result<Option<Vec<u8>>, String> {
        let mut verifier = proto::StreamVerifier::new();
        let mut bytes = Vec::new();
        loop {
            match proto::read_frame(r, &mut buf).map_err(e)? {
                Some(proto::FrameKind::Data) => {
                    bytes.extend_from_slice(verifier.verify_data(&buf).map_err(e)?)
                }
                Some(proto::FrameKind::End) => {
                    verifier.verify_end(&buf).map_err(e)?;
                    return Ok(Some(bytes));
                }
                Some(other) => return Err(format!("a {} frame in a stream", other.name())),
                None => return Ok(None),
            }
        }
    };
    let mut req_buf = Vec::new();
    while let Some(request) = proto::read_request(&mut r, &mut req_buf).map_err(e)? {
        let reply = match request {
            proto::Request::Inventory(req) => {
                let m = medium.lock().unwrap();
                let mut datasets: BTreeMap<String, proto::DatasetInfo> = BTreeMap::new();
                for (i, (snap, guid, kind)) in m.snapshots.iter().enumerate() {
                    let ds = snap.dataset();
                    let info =
                        datasets
                            .entry(ds.as_str().to_owned())
                            .or_insert(proto::DatasetInfo {
                                name: ds.clone(),
                                kind: *kind,
                                guid: guid ^ 1,
                                receive_resume_token: None,
                                snapshots: Vec::new(),
                            });
                    info.snapshots.push(proto::SnapshotInfo {
                        name: snap.clone(),
                        guid: *guid,
                        createtxg: i as u64 + 1,
                    });
                }
                proto::Reply::Inventory(proto::InventoryReply {
                    root: req.root,
                    available: 1 << 40,
                    datasets: datasets.into_values().collect(),
                })
            }
            proto::Request::Receive(req) => {
                proto::write_reply(&mut w, &proto::Reply::ReceiveReady).map_err(e)?;
                w.flush().map_err(|x| x.to_string())?;
                let Some(stream) = take_stream(&mut r)? else {
                    return Ok(());
                };
                let bytes = stream.len() as u64;
                let mut m = medium.lock().unwrap();
                m.streams.insert(req.snapshot.to_string(), stream);
                m.snapshots.push((req.snapshot.clone(), req.guid, req.kind));
                proto::Reply::Receive(proto::ReceiveResult::Ok {
                    snapshot: req.snapshot,
                    guid: req.guid,
                    bytes,
                })
            }
            proto::Request::PutBlob(req) => {
                proto::write_reply(&mut w, &proto::Reply::BlobReady).map_err(e)?;
                w.flush().map_err(|x| x.to_string())?;
                let Some(bytes) = take_stream(&mut r)? else {
                    return Ok(());
                };
                let len = bytes.len() as u64;
                medium
                    .lock()
                    .unwrap()
                    .blobs
                    .insert(req.name.as_str().to_owned(), bytes);
                proto::Reply::BlobStored {
                    name: req.name,
                    len,
                }
            }
            proto::Request::ListBlobs(req) => {
                let m = medium.lock().unwrap();
                let blobs = m
                    .blobs
                    .iter()
                    .filter(|(n, _)| {
                        !(matches!(lie, Lie::HiddenManifests) && n.starts_with("manifests/"))
                    })
                    .map(|(n, b)| proto::BlobInfo {
                        name: proto::BlobName::parse(n).unwrap(),
                        len: b.len() as u64,
                    })
                    .filter(|b| req.prefix.as_ref().is_none_or(|p| b.name.is_under(p)))
                    .collect();
                proto::Reply::Blobs(blobs)
            }
            proto::Request::GetBlob(req) => {
                let name = req.name.as_str();
                let stored = medium.lock().unwrap().blobs.get(name).cloned();
                let Some(mut bytes) = stored else {
                    let reply = proto::Reply::Error(proto::ErrorReply {
                        class: proto::ErrorClass::NotFound,
                        message: format!("no blob {name}"),
                    });
                    proto::write_reply(&mut w, &reply).map_err(e)?;
                    continue;
                };
                match lie {
                    Lie::FlippedBlob { suffix, at } if name.ends_with(suffix) => bytes[at] ^= 1,
                    Lie::ForgedManifest if name.ends_with(".head") => {
                        let (head, _) = bytes.split_at(bytes.len() - 32);
                        let mut forged =
                            proto::manifest::ManifestHeader::decode_unverified(head).unwrap();
                        forged.entries = 0;
                        forged.body_hash = *blake3::hash(b"").as_bytes();
                        bytes = forged.encode();
                        bytes.extend_from_slice(&forged.mac(&[0x11; 32]));
                    }
                    Lie::ForgedManifest if name.ends_with(".body") => bytes.clear(),
                    _ => {}
                }
                proto::write_reply(
                    &mut w,
                    &proto::Reply::Blob {
                        len: bytes.len() as u64,
                    },
                )
                .map_err(e)?;
                let mut framer = proto::StreamFramer::new();
                for chunk in bytes.chunks(proto::MAX_DATA_CHUNK) {
                    framer.write_data(&mut w, chunk).map_err(e)?;
                }
                framer.finish(&mut w).map_err(e)?;
                w.flush().map_err(|x| x.to_string())?;
                continue;
            }
            proto::Request::ReadBack(req) => {
                let bs = req.volblocksize;
                let m = medium.lock().unwrap();
                let mut blocks = match lie {
                    Lie::OtherVolume => {
                        let other = m
                            .streams
                            .keys()
                            .find(|k| k.as_str() != req.snapshot.as_str())
                            .expect("the liar swallowed another volume's stream")
                            .clone();
                        m.blocks(&other, bs)
                    }
                    _ => m.blocks(req.snapshot.as_str(), bs),
                };
                drop(m);
                match lie {
                    Lie::Faithful | Lie::FlippedBlob { .. } | Lie::HiddenManifests => {}
                    Lie::Zeroes => blocks.iter_mut().for_each(|(_, b)| b.fill(0)),
                    Lie::Nothing | Lie::ForgedManifest => blocks.clear(),
                    Lie::AlteredBlock(n) => blocks[n].1[100] ^= 1,
                    Lie::DroppedBlock(n) => {
                        blocks.remove(n);
                    }
                    Lie::SwappedBlocks(n) => {
                        let next = std::mem::take(&mut blocks[n + 1].1);
                        blocks[n + 1].1 = std::mem::replace(&mut blocks[n].1, next);
                    }
                    Lie::ExtraBlock => {
                        let at = blocks.last().map_or(0, |(o, _)| o + bs);
                        blocks.push((at, vec![0x5a; bs as usize]));
                    }
                    Lie::MovedIntoHole => {
                        let i = (0..blocks.len())
                            .find(|&i| blocks.get(i + 1).is_some_and(|n| n.0 > blocks[i].0 + bs))
                            .expect("a block with a hole after it");
                        blocks[i].0 += bs;
                    }
                    Lie::OtherVolume => {}
                }
                proto::write_reply(&mut w, &proto::Reply::ReadBackReady).map_err(e)?;
                for (offset, block) in &blocks {
                    proto::write_block_frame(&mut w, *offset, block).map_err(e)?;
                }
                proto::Reply::ReadBackDone {
                    blocks: blocks.len() as u64,
                    bytes: blocks.len() as u64 * bs,
                }
            }
            proto::Request::Abort(req) => proto::Reply::Aborted {
                dataset: req.dataset,
            },
        };
        proto::write_reply(&mut w, &reply).map_err(e)?;
        w.flush().map_err(|x| x.to_string())?;
    }
    Ok(())
}

#[test]
fn a_backup_runs_in_process_and_verifies() {
    let world = World::new();
    let agent = world.agent();
    world.send(&agent).unwrap();
    assert_eq!(world.states(), [SendState::Done; 3]);
    assert!(world.receiver()["zfs"]["datasets"][DEST]["snapshots"][0]["name"] == "b1");
    dom0_driver::commands::receiver::verify(&world.store(), &agent, "shared", true, Mode::Lines)
        .unwrap();
}

#[test]
fn an_interrupted_send_resumes_from_the_receivers_token() {
    let world = World::alone();
    world
        .sys
        .set_fake_env("QZB_FAKE_SEND_DIE_AFTER", (3u64 << 20).to_string());
    world.sys.set_fake_env(
        "QZB_FAKE_FAULT_ONCE",
        world.sys.dir.join("once").display().to_string(),
    );
    let agent = world.agent();
    let e = world.send(&agent).unwrap_err();
    assert!(matches!(e, Error::Send(_)), "{e}");
    assert_eq!(world.states()[0], SendState::Partial);
    assert!(!world.receiver()["zfs"]["datasets"][DEST]["partial"].is_null());

    world.send(&agent).unwrap();
    assert_eq!(world.states(), [SendState::Done; 3]);
    assert!(
        world.sends().iter().any(|argv| argv[2] == "-t"),
        "no resumed send: {:?}",
        world.sends()
    );
}

#[test]
fn a_forged_resume_token_is_refused_and_nothing_is_sent() {
    let world = World::new();
    let agent = InMemory::new(&world, Agent::Hostile(Hostile::ForgedToken));
    let e = world.send(&agent).unwrap_err();
    assert!(matches!(e, Error::Security(_)), "{e}");
    assert!(e.to_string().contains("it names mainpool/secret@b1"), "{e}");
    assert!(world.sends().is_empty(), "{:?}", world.sends());
    assert_ne!(world.states()[0], SendState::Done);
}

#[test]
fn a_receiver_lying_about_the_guid_is_a_security_refusal() {
    let world = World::new();
    let agent = InMemory::new(&world, Agent::Hostile(Hostile::LyingGuid));
    let e = world.send(&agent).unwrap_err();
    assert!(matches!(e, Error::Security(_)), "{e}");
    assert!(e.to_string().contains("but the source's is"), "{e}");
    assert!(!world.states().contains(&SendState::Done));
}

#[test]
fn a_receiver_that_keeps_saying_it_waits_is_refused_at_the_second_notice() {
    let world = World::new();
    let agent = InMemory::new(&world, Agent::Hostile(Hostile::WaitsForever));
    let e = world.send(&agent).unwrap_err();
    let state = world.store().load("shared").unwrap();
    let why = state.targets[0].last_error.clone().unwrap_or_default();
    assert!(
        why.contains("the receiver said twice that it waits for its lock"),
        "{e}: {why}"
    );
    assert!(!world.states().contains(&SendState::Done));
}

#[test]
fn abort_discards_the_partial_receive() {
    let world = World::alone();
    world
        .sys
        .set_fake_env("QZB_FAKE_SEND_DIE_AFTER", (3u64 << 20).to_string());
    world.sys.set_fake_env(
        "QZB_FAKE_FAULT_ONCE",
        world.sys.dir.join("once").display().to_string(),
    );
    let agent = world.agent();
    world.send(&agent).unwrap_err();
    assert!(!world.receiver()["zfs"]["datasets"][DEST]["partial"].is_null());
    dom0_driver::commands::receiver::abort(&world.store(), &agent, "shared", None, true).unwrap();
    assert!(world.receiver()["zfs"]["datasets"][DEST]["partial"].is_null());
    assert_eq!(world.states()[0], SendState::Pending);
}

#[test]
fn a_receiver_agent_dying_mid_frame_is_named_with_what_to_do() {
    let world = World::alone();
    // Past the hello and the first requests, inside the first data frame's payload.
    let agent = InMemory::new(
        &world,
        Agent::Real {
            cut_after: Some(700 * 1024),
        },
    );
    let e = world.send(&agent).unwrap_err();
    assert!(matches!(e, Error::Send(_)), "{e}");
    let state = world.store().load("shared").unwrap();
    let why = state.targets[0].last_error.clone().unwrap();
    assert!(
        why.contains("the receiver agent ended in the middle of the stream"),
        "{why}"
    );
    assert!(why.contains("run `send shared` again to resume"), "{why}");
    assert!(why.contains("the agent ended with: "), "{why}");
    assert_eq!(world.states()[0], SendState::Partial);
    // The next session, with a healthy agent, finishes the backup.
    world.send(&world.agent()).unwrap();
    assert_eq!(world.states(), [SendState::Done; 3]);
}

#[test]
fn the_receivers_root_is_where_the_backup_lands() {
    // A guard that the in-process tier exercises the configured receiver root, not a default.
    let world = World::new();
    world.send(&world.agent()).unwrap();
    let rx = world.receiver();
    assert!(rx["zfs"]["datasets"][ROOT].is_object(), "{rx}");
}

/// Where the `vols` backup's zvol snapshot lands on the receiver.
fn vault_on_receiver() -> String {
    format!("{ROOT}/{VAULT}@b1")
}

#[test]
fn a_zvol_backup_is_read_back_and_verified_in_process() {
    let world = World::with_zvol();
    let agent = world.agent();
    world.send(&agent).unwrap();
    assert_eq!(world.states(), [SendState::Done]);
    world.verify(&agent, false).unwrap();
}

/// A liar with `lie`, after `send vols` to it: the send went through in full, the manifests
/// are on its "medium" and the guid check passes, though nothing was received. Also returns
/// the non-zero blocks the stream carried (what an honest read-back sends) and the
/// volblocksize.
fn fooled(world: &World, lie: Lie) -> (InMemory, Vec<(u64, Vec<u8>)>, u64) {
    let medium = Arc::new(Mutex::new(LiarMedium::default()));
    let liar = InMemory::new(world, Agent::Liar(lie, medium.clone()));
    world.send(&liar).unwrap();
    assert_eq!(world.states(), [SendState::Done]);
    let rx = world.receiver();
    assert!(
        rx["zfs"]["datasets"][format!("{ROOT}/{VAULT}")].is_null(),
        "the liar received nothing into ZFS: {rx}"
    );
    world.verify(&liar, true).unwrap();
    let m = medium.lock().unwrap();
    let heads = m.blob_names(".head");
    assert_eq!((heads.len(), m.blob_names(".body").len()), (1, 1));
    let head = &m.blobs[&heads[0]];
    let header =
        proto::manifest::ManifestHeader::decode_unverified(&head[..head.len() - 32]).unwrap();
    let blocks = m.blocks(&vault_on_receiver(), header.volblocksize);
    assert!(
        blocks.len() > 8,
        "a stream with data: {} blocks",
        blocks.len()
    );
    drop(m);
    (liar, blocks, header.volblocksize)
}

/// `verify` failed as a send does (exit 8), naming the snapshot and, as the first problem,
/// `what`.
fn assert_caught(world: &World, liar: &InMemory, what: &str) {
    let e = world.verify(liar, false).unwrap_err();
    assert!(matches!(e, Error::Send(_)), "{e}");
    assert_eq!(e.exit_code(), 8, "{e}");
    let first = format!("the first: {}: ", vault_on_receiver());
    let msg = e.to_string();
    assert!(
        msg.contains(&first) && msg.contains(what),
        "expected the first problem {what:?}: {msg}"
    );
}

#[test]
fn a_liar_replaying_exactly_the_swallowed_blocks_passes_verify() {
    // The control for the lies below: the liar's bookkeeping is faithful, so what fails them
    // is the lie alone.
    let world = World::with_zvol();
    let (liar, _, _) = fooled(&world, Lie::Faithful);
    world.verify(&liar, false).unwrap();
}

#[test]
fn a_drained_stream_read_back_as_zeroes_fails_verify_at_the_first_data_block() {
    let world = World::with_zvol();
    let (liar, blocks, _) = fooled(&world, Lie::Zeroes);
    let at = blocks[0].0;
    assert_caught(
        &world,
        &liar,
        &format!("the block at offset {at} does not match its manifest tag"),
    );
}

#[test]
fn a_drained_stream_read_back_as_an_empty_volume_misses_the_first_data_block() {
    let world = World::with_zvol();
    let (liar, blocks, _) = fooled(&world, Lie::Nothing);
    let at = blocks[0].0;
    assert_caught(
        &world,
        &liar,
        &format!("the data block at offset {at} is in the manifests but was not read back"),
    );
}

#[test]
fn a_drained_stream_read_back_with_one_altered_block_fails_at_that_offset() {
    let world = World::with_zvol();
    let (liar, blocks, _) = fooled(&world, Lie::AlteredBlock(3));
    let at = blocks[3].0;
    assert_caught(
        &world,
        &liar,
        &format!("the block at offset {at} does not match its manifest tag"),
    );
}

#[test]
fn a_drained_stream_read_back_with_two_blocks_swapped_fails_at_the_first_of_them() {
    let world = World::with_zvol();
    let (liar, blocks, _) = fooled(&world, Lie::SwappedBlocks(5));
    let at = blocks[5].0;
    assert_caught(
        &world,
        &liar,
        &format!("the block at offset {at} does not match its manifest tag (altered or moved)"),
    );
}

#[test]
fn a_drained_stream_read_back_without_one_block_names_the_missing_offset() {
    let world = World::with_zvol();
    let (liar, blocks, _) = fooled(&world, Lie::DroppedBlock(5));
    let at = blocks[5].0;
    assert_caught(
        &world,
        &liar,
        &format!("the data block at offset {at} is in the manifests but was not read back"),
    );
}

#[test]
fn a_drained_stream_read_back_with_an_extra_block_where_zeros_belong_fails() {
    let world = World::with_zvol();
    let (liar, blocks, bs) = fooled(&world, Lie::ExtraBlock);
    let at = blocks.last().unwrap().0 + bs;
    assert_caught(
        &world,
        &liar,
        &format!("a non-zero block was read back at offset {at}, where the manifests say zeros"),
    );
}

#[test]
fn a_liar_flipping_a_byte_of_the_stored_manifest_header_fails_on_its_mac() {
    let world = World::with_zvol();
    let (liar, _, _) = fooled(
        &world,
        Lie::FlippedBlob {
            suffix: ".head",
            at: 30,
        },
    );
    assert_caught(
        &world,
        &liar,
        ".head: manifest header MAC does not match; it was altered, or made with another key",
    );
}

#[test]
fn a_liar_flipping_a_byte_of_the_stored_manifest_body_fails_against_its_header() {
    let world = World::with_zvol();
    let (liar, _, _) = fooled(
        &world,
        Lie::FlippedBlob {
            suffix: ".body",
            at: 20,
        },
    );
    assert_caught(
        &world,
        &liar,
        &format!("the manifest body of sequence number 0 of {VAULT}: manifest body does not match its header"),
    );
}

#[test]
fn a_liar_serving_its_own_manifest_of_an_empty_volume_fails_on_the_mac() {
    let world = World::with_zvol();
    let (liar, _, _) = fooled(&world, Lie::ForgedManifest);
    assert_caught(
        &world,
        &liar,
        "manifest header MAC does not match; it was altered, or made with another key",
    );
}

#[test]
fn a_liar_hiding_the_manifest_dom0_stored_is_a_failure_not_an_unverifiable_backup() {
    let world = World::with_zvol();
    let (liar, _, _) = fooled(&world, Lie::HiddenManifests);
    assert_caught(
        &world,
        &liar,
        "the receiver lists no manifest of it, but dom0 stored one on this medium (sequence number 0)",
    );
}

// ---------------------------------------------------------------- restore from a liar
//
// The same liar, now asked to restore: every lie of a hostile medium must be refused before
// Qubes' volume import commits anything, the qube created for it removed again, the error
// naming the qube, the volume and what failed, exit 8 (a qube's restore failed).

/// The `work` qube's private volume: the second zvol of [`World::with_two_zvols`].
const WORK: &str = "mainpool/qubes/work/private";

impl World {
    /// The `vols` backup of two zvols, [`VAULT`] and [`WORK`] (1 MiB of data each), with a
    /// key: a set with two qubes to restore, and another volume to swap in.
    fn with_two_zvols() -> World {
        let turn = Turn::beside();
        let sys = FakeSystem::new("reference-system");
        let path = sys.state.join("dom0.json");
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for ds in [VAULT, WORK] {
            for s in v["zfs"]["datasets"][ds]["snapshots"]
                .as_array_mut()
                .unwrap()
            {
                s["size"] = (1u64 << 20).into();
            }
        }
        std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
        let file = sys.write(
            "vols.yaml",
            &qzb_blackbox_tests::datasets_config("vols", "b1", "beginning", &[VAULT, WORK]),
        );
        sys.driver(&["import", &file]).expect(0);
        sys.init_key();
        World::around(sys, "vols", turn)
    }

    /// `restore run --rename` of the backup's newest set, in process.
    fn restore(&self, connector: &InMemory) -> Result<(), Error> {
        use dom0_driver::commands::restore::{run, Medium, PlanArgs, RunMode};
        use dom0_driver::restore::plan::{Choice, Conflict};
        let args = PlanArgs {
            medium: Medium::parse(&format!("backups-disp:{ROOT}")).unwrap(),
            backup: None,
            choice: Choice {
                conflict: Conflict::Rename,
                ..Choice::default()
            },
            passphrase: dom0_driver::key::PassphraseSource::Terminal,
            json: false,
        };
        run(
            &self.sys.meta,
            &self.runner(),
            connector,
            &args,
            false,
            RunMode::Restore,
        )
    }

    /// A qube in the fake system's Admin API state (`Null` if there is none).
    fn domain(&self, name: &str) -> Value {
        let text = std::fs::read_to_string(self.sys.state.join("dom0.json")).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        v["qubes"]["domains"][name].clone()
    }
}

/// A liar with `lie` after `send vols` to it (both zvols "received"), and the non-zero blocks
/// of the vault's stream (what an honest read-back of it sends).
fn fooled_twice(world: &World, lie: Lie) -> (InMemory, Vec<(u64, Vec<u8>)>, u64) {
    let medium = Arc::new(Mutex::new(LiarMedium::default()));
    let liar = InMemory::new(world, Agent::Liar(lie, medium.clone()));
    world.send(&liar).unwrap();
    assert_eq!(world.states(), [SendState::Done; 2]);
    let m = medium.lock().unwrap();
    let heads = m.blob_names(".head");
    assert_eq!(heads.len(), 2);
    let head = &m.blobs[&heads[0]];
    let header =
        proto::manifest::ManifestHeader::decode_unverified(&head[..head.len() - 32]).unwrap();
    let blocks = m.blocks(&vault_on_receiver(), header.volblocksize);
    assert!(blocks.len() > 8);
    drop(m);
    (liar, blocks, header.volblocksize)
}

/// The restore failed with exit 8, the first failure is vault1's private volume with `what`,
/// and neither qube nor any imported image stayed behind.
fn assert_refused(world: &World, liar: &InMemory, what: &str) {
    let e = world.restore(liar).unwrap_err();
    assert!(matches!(e, Error::Send(_)), "{e}");
    assert_eq!(e.exit_code(), 8, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("the restore of 2 qube(s) failed; the first, vault1: volume private: ")
            && msg.contains(what)
            && msg.contains("the qube was removed again"),
        "expected vault1's private volume refused with {what:?}: {msg}"
    );
    for q in ["vault1", "work1"] {
        assert!(world.domain(q).is_null(), "{q} stayed behind");
        assert!(
            !world
                .sys
                .state
                .join(format!("imported/{q}"))
                .join("private.img")
                .exists(),
            "{q}'s volume was imported"
        );
    }
}

#[test]
fn a_liar_replaying_exactly_the_swallowed_blocks_restores_both_qubes() {
    // The control for the lies below.
    let world = World::with_two_zvols();
    let (liar, _, _) = fooled_twice(&world, Lie::Faithful);
    world.restore(&liar).unwrap();
    for q in ["vault1", "work1"] {
        assert_eq!(world.domain(q)["class"], "AppVM");
        assert!(world
            .sys
            .state
            .join(format!("imported/{q}/private.img"))
            .exists());
    }
}

#[test]
fn a_restore_from_a_medium_that_moved_a_block_into_a_hole_commits_nothing() {
    let world = World::with_two_zvols();
    let (liar, blocks, bs) = fooled_twice(&world, Lie::MovedIntoHole);
    let i = (0..blocks.len())
        .find(|&i| blocks.get(i + 1).is_some_and(|n| n.0 > blocks[i].0 + bs))
        .unwrap();
    let at = blocks[i].0;
    assert_refused(
        &world,
        &liar,
        &format!("the data block at offset {at} is in the manifests but was not read back"),
    );
}

#[test]
fn a_restore_from_a_medium_missing_a_block_commits_nothing() {
    let world = World::with_two_zvols();
    let (liar, blocks, _) = fooled_twice(&world, Lie::DroppedBlock(5));
    let at = blocks[5].0;
    assert_refused(
        &world,
        &liar,
        &format!("the data block at offset {at} is in the manifests but was not read back"),
    );
}

#[test]
fn a_restore_from_a_medium_with_an_extra_block_commits_nothing() {
    let world = World::with_two_zvols();
    let (liar, blocks, bs) = fooled_twice(&world, Lie::ExtraBlock);
    let at = blocks.last().unwrap().0 + bs;
    assert_refused(
        &world,
        &liar,
        &format!("a non-zero block was read back at offset {at}, where the manifests say zeros"),
    );
}

#[test]
fn a_restore_from_a_medium_that_reads_back_another_volume_commits_nothing() {
    let world = World::with_two_zvols();
    let (liar, blocks, _) = fooled_twice(&world, Lie::OtherVolume);
    // The work volume's data starts at offset 0, where the vault's manifest has a hole.
    assert_ne!(blocks[0].0, 0);
    assert_refused(
        &world,
        &liar,
        "a non-zero block was read back at offset 0, where the manifests say zeros",
    );
}
