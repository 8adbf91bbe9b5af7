//! The in-process tier: the driver's commands and the agent's `serve` in one process, joined by
//! pipes instead of qrexec, with the fake `zfs` on both sides (dom0's through the driver's own
//! process runner, the backup qube's through the agent's `SystemZfs`). The place for protocol
//! and hostile-receiver scenarios: no sleeps, no clocks; every wait is on an event.

use dom0_driver::error::Error;
use dom0_driver::state::{SendState, Store};
use dom0_driver::stream::client::{Client, Peer};
use dom0_driver::stream::progress::Mode;
use dom0_driver::stream::qrexec::Connect;
use dom0_driver::system::runner::SystemRunner;
use qzb_blackbox_tests::{bin, FakeSystem};
use qzb_protocol as proto;
use serde_json::Value;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

const ROOT: &str = "backuppool/backups/mydesktop";
const DEST: &str = "backuppool/backups/mydesktop/mainpool/shared";
/// Generous: only a guard against a hang, never reached by a working test.
const TIMEOUT: Duration = Duration::from_secs(300);

/// A fake system with a backup imported (by the real binary), plus a second tool directory
/// whose fakes act as the backup qube.
struct World {
    sys: FakeSystem,
    agent_bin: std::path::PathBuf,
    /// The backup the tests send and verify.
    name: &'static str,
}

impl World {
    /// The `shared` backup: three filesystems, 4 MiB per snapshot, no key.
    fn new() -> World {
        World::around(FakeSystem::with_shared_backup(4 << 20, false), "shared")
    }

    /// The `vols` backup of one zvol ([`VAULT`], 1 MiB of data: 64 blocks of 16 KiB, some of
    /// them holes), with a key: its send is authenticated, and `verify` reads it back.
    fn with_zvol() -> World {
        let sys = FakeSystem::with_zvol_backup(1 << 20);
        sys.init_key();
        World::around(sys, "vols")
    }

    fn around(sys: FakeSystem, name: &'static str) -> World {
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
            // Blob and read-back misbehaviour: tests/blobs.rs.
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
    let world = World::new();
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
    let world = World::new();
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
    let world = World::new();
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

#[test]
fn a_zvol_backup_is_read_back_and_verified_in_process() {
    let world = World::with_zvol();
    let agent = world.agent();
    world.send(&agent).unwrap();
    assert_eq!(world.states(), [SendState::Done]);
    world.verify(&agent, false).unwrap();
}
