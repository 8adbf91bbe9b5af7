//! `qzb-hostile-agent`: a stand-in for the receiver agent in a compromised backup qube, for the
//! adversarial black-box tests (tests/blackbox/tests/hostile.rs). The fake `qrexec-client`
//! execs it when `QZB_FAKE_AGENT` names it.
//!
//! It speaks the real protocol (`qzb_protocol`) and behaves like an agent on an empty receiver
//! (an inventory with nothing under the root; every complete, verified stream is answered with
//! the requested snapshot and guid) until the misbehaviour chosen by `QZB_HOSTILE=<mode>`.
//! `QZB_HOSTILE_ARG` is the mode's argument, with `\e`, `\0`, `\n`, `\r`, `\a` and `\\`
//! unescaped (an environment variable cannot carry a NUL). `QZB_HOSTILE_DATASET` names the
//! dataset a `token*` mode puts its resume token on.
//!
//! | mode | misbehaviour |
//! |---|---|
//! | (unset) `honest` | none |
//! | `banner` | prints a shell error instead of a hello, exits 1 |
//! | `hello-version` / `hello-role` | a hello with version 2 / with the driver's role |
//! | `hang-hello` / `hang-inventory` / `hang-stream` | stops answering before its hello / at the inventory / after `ReceiveReady` (stops reading too) |
//! | `trickle` | answers the inventory one byte every 100 ms, so it is never silent for long |
//! | `endless-data` / `endless-garbage` | answers the inventory with data frames / random bytes forever (and stderr garbage) |
//! | `oversized-frame` | a reply header claiming `ARG` bytes (default one more than the limit) |
//! | `unknown-kind` | a frame of kind 9 instead of the inventory reply |
//! | `oversized-message` | an error reply whose message is over the 8 KiB limit |
//! | `error-escapes` | an error reply (to the inventory) whose message is `ARG`; stderr too |
//! | `inventory-root` | an inventory of the root `ARG` instead of the requested one |
//! | `inventory-outside` | an inventory listing the dataset `ARG` (outside the root) |
//! | `inventory-bad-name` | an inventory listing a dataset named `ARG` (any bytes: `..`, NUL, escapes) |
//! | `token` | the inventory puts the resume token `ARG` on `QZB_HOSTILE_DATASET` |
//! | `refuse-escapes` | refuses the receive request with message and zfs stderr `ARG` |
//! | `fail-escapes` | takes the stream, then fails it with message and zfs stderr `ARG` |
//! | `ok-wrong-guid` | takes the stream, reports success with another guid |
//! | `ok-other-snapshot` | takes the stream, reports success for the snapshot `ARG` (any bytes) |
//! | `ok-despite-cut` | reports success even when the stream ended without a verified end frame |
//! | `early-ok` | reports success right after `ReceiveReady`, before any data, and exits |
#![forbid(unsafe_code)]

use qzb_protocol as proto;
use std::io::{self, Read, Write};
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let mode = std::env::var("QZB_HOSTILE").unwrap_or_else(|_| "honest".into());
    let arg = std::env::var("QZB_HOSTILE_ARG")
        .map(|a| unescape(&a))
        .unwrap_or_default();
    let dataset = std::env::var("QZB_HOSTILE_DATASET").unwrap_or_default();
    let agent = Agent { mode, arg, dataset };
    match agent.run(io::stdin(), io::stdout()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qzb-hostile-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `\e` ESC, `\0` NUL, `\n`, `\r`, `\a` BEL, `\\` backslash; anything else is kept.
fn unescape(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next() {
            Some(b'e') => out.push(0x1b),
            Some(b'0') => out.push(0),
            Some(b'n') => out.push(b'\n'),
            Some(b'r') => out.push(b'\r'),
            Some(b'a') => out.push(7),
            Some(b'\\') => out.push(b'\\'),
            Some(other) => out.extend_from_slice(&[b'\\', other]),
            None => out.push(b'\\'),
        }
    }
    out
}

fn hang() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Reads stdin to its end (the driver hanging up), then exits: a peer that misbehaved once
/// and then waits, without keeping the driver waiting for its exit.
fn wait_for_hangup() -> ! {
    let _ = io::copy(&mut io::stdin(), &mut io::sink());
    std::process::exit(0)
}

/// A valid name of `len` bytes (`pqqq…`), unlikely to occur anywhere else in a payload.
fn placeholder(len: usize) -> String {
    let mut s = String::from("p");
    s.push_str(&"q".repeat(len.saturating_sub(1)));
    s
}

/// Replaces the first occurrence of `from` in `payload` with `to` (same length: bincode's
/// length prefixes stay right). This is how names no honest encoder produces get on the wire.
fn substitute(payload: &mut [u8], from: &[u8], to: &[u8]) {
    assert_eq!(from.len(), to.len(), "substitution keeps the length");
    if let Some(at) = payload.windows(from.len()).position(|w| w == from) {
        payload[at..at + to.len()].copy_from_slice(to);
    }
}

fn write_raw_reply(w: &mut impl Write, payload: &[u8]) -> io::Result<()> {
    proto::write_frame(w, proto::FrameKind::Reply, payload).map_err(io::Error::other)?;
    w.flush()
}

fn write_reply(w: &mut impl Write, reply: &proto::Reply) -> io::Result<()> {
    let payload = proto::encode_reply(reply).map_err(io::Error::other)?;
    write_raw_reply(w, &payload)
}

fn header(kind: u32, len: u32) -> [u8; 8] {
    let mut h = [0u8; 8];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[4..8].copy_from_slice(&len.to_le_bytes());
    h
}

/// Garbage with escape sequences on stderr, forever (a thread).
fn spam_stderr() {
    std::thread::spawn(|| {
        let mut e = io::stderr();
        while e.write_all(b"\x1b[2J\x1b]0;owned\x07garbage\r\n").is_ok() {}
    });
}

/// Where a receive stream ended.
enum Stream {
    Complete { bytes: u64 },
    Cut { bytes: u64, why: String },
}

struct Agent {
    mode: String,
    arg: Vec<u8>,
    dataset: String,
}

impl Agent {
    fn arg_text(&self) -> String {
        String::from_utf8_lossy(&self.arg).into_owned()
    }

    fn run(&self, mut r: impl Read, mut w: impl Write) -> io::Result<()> {
        match self.mode.as_str() {
            "banner" => {
                w.write_all(b"/etc/qubes-rpc/zfsbackup.Receive: line 2: exec: qubes-zfs-backup-receiver: not found\n")?;
                w.flush()?;
                eprintln!("bash: qubes-zfs-backup-receiver: command not found\x1b[2J");
                std::process::exit(1);
            }
            "hang-hello" => hang(),
            "hello-version" | "hello-role" => {
                let hello = proto::Hello {
                    version: if self.mode == "hello-version" {
                        proto::PROTOCOL_VERSION + 1
                    } else {
                        proto::PROTOCOL_VERSION
                    },
                    role: if self.mode == "hello-role" {
                        proto::Role::Driver
                    } else {
                        proto::Role::Receiver
                    },
                };
                proto::write_frame(&mut w, proto::FrameKind::Hello, &hello.to_payload())
                    .map_err(io::Error::other)?;
                w.flush()?;
                // Like a newer agent: read the driver's hello, then wait for it to hang up.
                wait_for_hangup()
            }
            _ => {}
        }
        proto::send_hello(&mut w, proto::Role::Receiver).map_err(io::Error::other)?;
        proto::expect_hello(&mut r, proto::Role::Driver).map_err(io::Error::other)?;
        let mut buf = Vec::new();
        loop {
            let request = match proto::read_request(&mut r, &mut buf) {
                Ok(None) => return Ok(()),
                Ok(Some(req)) => req,
                Err(e) => return Err(io::Error::other(e)),
            };
            match request {
                proto::Request::Inventory(req) => self.inventory(&req, &mut w)?,
                proto::Request::Receive(req) => self.receive(&req, &mut r, &mut w, &mut buf)?,
                proto::Request::Abort(req) => write_reply(
                    &mut w,
                    &proto::Reply::Aborted {
                        dataset: req.dataset,
                    },
                )?,
                // Blob and read-back misbehaviour is exercised in process
                // (tests/blackbox/tests/blobs.rs); here they are simply refused.
                proto::Request::PutBlob(_)
                | proto::Request::GetBlob(_)
                | proto::Request::ListBlobs(_)
                | proto::Request::ReadBack(_) => write_reply(
                    &mut w,
                    &proto::Reply::Error(proto::ErrorReply {
                        class: proto::ErrorClass::InvalidRequest,
                        message: "not supported by the hostile agent".into(),
                    }),
                )?,
            }
        }
    }

    fn inventory(&self, req: &proto::InventoryRequest, w: &mut impl Write) -> io::Result<()> {
        let mut inv = proto::InventoryReply {
            root: req.root.clone(),
            available: 5_000_000_000_000,
            datasets: vec![proto::DatasetInfo {
                name: req.root.clone(),
                kind: proto::DatasetKind::Filesystem,
                guid: 7,
                receive_resume_token: None,
                snapshots: Vec::new(),
            }],
        };
        let dataset = |name: &str, token: Option<String>| -> io::Result<proto::DatasetInfo> {
            let name = proto::DatasetName::parse(name).map_err(io::Error::other)?;
            Ok(proto::DatasetInfo {
                snapshots: vec![proto::SnapshotInfo {
                    name: proto::SnapshotName::parse(&format!("{name}@b1"))
                        .map_err(io::Error::other)?,
                    guid: 12345,
                    createtxg: 20,
                }],
                name,
                kind: proto::DatasetKind::Volume,
                guid: 8,
                receive_resume_token: token,
            })
        };
        match self.mode.as_str() {
            "hang-inventory" => hang(),
            "hang-with-child" => {
                // A child that inherits stdin and stdout and outlives the agent: killing the
                // agent alone leaves the driver's pipes open.
                let _child = std::process::Command::new("sleep").arg("3600").spawn()?;
                hang()
            }
            "endless-data" => {
                spam_stderr();
                let mut framer = proto::StreamFramer::new();
                let chunk = vec![0x1bu8; proto::MAX_DATA_CHUNK];
                loop {
                    framer.write_data(w, &chunk).map_err(io::Error::other)?;
                }
            }
            "endless-garbage" => {
                spam_stderr();
                let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
                let mut block = vec![0u8; 64 * 1024];
                loop {
                    for b in block.iter_mut() {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        *b = x as u8;
                    }
                    w.write_all(&block)?;
                }
            }
            "oversized-frame" => {
                let len = self
                    .arg_text()
                    .parse()
                    .unwrap_or(proto::MAX_REPLY_PAYLOAD as u32 + 1);
                w.write_all(&header(proto::FrameKind::Reply as u32, len))?;
                // Some of the promised payload, then nothing more until the driver hangs up.
                w.write_all(&[0u8; 1024])?;
                w.flush()?;
                wait_for_hangup()
            }
            "trickle" => {
                // A whole (large) reply, one byte at a time, never silent for long.
                let mut payload =
                    proto::encode_reply(&proto::Reply::Inventory(inv)).map_err(io::Error::other)?;
                payload.resize(proto::MAX_REPLY_PAYLOAD, 0);
                let mut frame =
                    header(proto::FrameKind::Reply as u32, payload.len() as u32).to_vec();
                frame.extend_from_slice(&payload);
                for b in frame {
                    w.write_all(&[b])?;
                    w.flush()?;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Ok(())
            }
            "unknown-kind" => {
                w.write_all(&header(9, 16))?;
                w.write_all(&[0u8; 16])?;
                w.flush()?;
                wait_for_hangup()
            }
            "oversized-message" => write_reply(
                w,
                &proto::Reply::Error(proto::ErrorReply {
                    class: proto::ErrorClass::ZfsOther,
                    message: "x".repeat(proto::MAX_MESSAGE_LEN + 1000),
                }),
            ),
            "error-escapes" => {
                eprintln!("{}", self.arg_text());
                write_reply(
                    w,
                    &proto::Reply::Error(proto::ErrorReply {
                        class: proto::ErrorClass::ZfsOther,
                        message: self.arg_text(),
                    }),
                )
            }
            "inventory-root" => {
                inv.root = proto::DatasetName::parse(&self.arg_text()).map_err(io::Error::other)?;
                inv.datasets[0].name = inv.root.clone();
                write_reply(w, &proto::Reply::Inventory(inv))
            }
            "inventory-outside" => {
                inv.datasets.push(dataset(&self.arg_text(), None)?);
                write_reply(w, &proto::Reply::Inventory(inv))
            }
            "inventory-bad-name" => {
                let stand_in = placeholder(self.arg.len());
                inv.datasets.push(proto::DatasetInfo {
                    name: proto::DatasetName::parse(stand_in.as_str()).map_err(io::Error::other)?,
                    kind: proto::DatasetKind::Filesystem,
                    guid: 9,
                    receive_resume_token: None,
                    snapshots: Vec::new(),
                });
                let mut payload =
                    proto::encode_reply(&proto::Reply::Inventory(inv)).map_err(io::Error::other)?;
                substitute(&mut payload, stand_in.as_bytes(), &self.arg);
                write_raw_reply(w, &payload)
            }
            "token" => {
                let token = Some(self.arg_text());
                match inv
                    .datasets
                    .iter_mut()
                    .find(|d| d.name.as_str() == self.dataset)
                {
                    Some(d) => d.receive_resume_token = token,
                    None => {
                        let mut d = dataset(&self.dataset, token)?;
                        d.snapshots.clear();
                        inv.datasets.push(d);
                    }
                }
                write_reply(w, &proto::Reply::Inventory(inv))
            }
            _ => write_reply(w, &proto::Reply::Inventory(inv)),
        }
    }

    /// Reads data frames until a verified end frame (complete) or anything else (cut).
    fn take_stream(&self, r: &mut impl Read, buf: &mut Vec<u8>) -> Stream {
        let mut v = proto::StreamVerifier::new();
        loop {
            let cut = |why: String, v: &proto::StreamVerifier| Stream::Cut {
                bytes: v.bytes(),
                why,
            };
            match proto::read_frame(r, buf) {
                Ok(Some(proto::FrameKind::Data)) => {
                    if let Err(e) = v.verify_data(buf) {
                        return cut(e.to_string(), &v);
                    }
                }
                Ok(Some(proto::FrameKind::End)) => {
                    return match v.verify_end(buf) {
                        Ok(_) => Stream::Complete { bytes: v.bytes() },
                        Err(e) => cut(e.to_string(), &v),
                    }
                }
                Ok(Some(other)) => return cut(format!("unexpected {other:?} frame"), &v),
                Ok(None) => return cut("end of stream before the end frame".into(), &v),
                Err(e) => return cut(e.to_string(), &v),
            }
        }
    }

    fn receive(
        &self,
        req: &proto::ReceiveRequest,
        r: &mut impl Read,
        w: &mut impl Write,
        buf: &mut Vec<u8>,
    ) -> io::Result<()> {
        let failure = |class, message: String, zfs_stderr: String| {
            proto::Reply::Receive(proto::ReceiveResult::Err(proto::ReceiveFailure {
                class,
                message,
                zfs_stderr,
                resume_token: None,
            }))
        };
        let ok = |snapshot: proto::SnapshotName, guid, bytes| {
            proto::Reply::Receive(proto::ReceiveResult::Ok {
                snapshot,
                guid,
                bytes,
            })
        };
        if self.mode == "refuse-escapes" {
            eprintln!("{}", self.arg_text());
            return write_reply(
                w,
                &failure(
                    proto::ErrorClass::ZfsOther,
                    self.arg_text(),
                    self.arg_text(),
                ),
            );
        }
        write_reply(w, &proto::Reply::ReceiveReady)?;
        match self.mode.as_str() {
            "hang-stream" => hang(),
            "early-ok" => {
                write_reply(w, &ok(req.snapshot.clone(), req.guid, 0))?;
                std::process::exit(0);
            }
            _ => {}
        }
        let stream = self.take_stream(r, buf);
        let reply = match (self.mode.as_str(), stream) {
            ("fail-escapes", _) => {
                eprintln!("{}", self.arg_text());
                failure(
                    proto::ErrorClass::ZfsOther,
                    self.arg_text(),
                    self.arg_text(),
                )
            }
            ("ok-wrong-guid", Stream::Complete { bytes }) => {
                ok(req.snapshot.clone(), req.guid ^ 0x5a5a, bytes)
            }
            ("ok-other-snapshot", Stream::Complete { bytes }) => {
                let stand_in = format!("{}@{}", placeholder(self.arg.len() - 3), "b1");
                let snapshot =
                    proto::SnapshotName::parse(stand_in.as_str()).map_err(io::Error::other)?;
                let mut payload = proto::encode_reply(&ok(snapshot, req.guid, bytes))
                    .map_err(io::Error::other)?;
                substitute(&mut payload, stand_in.as_bytes(), &self.arg);
                return write_raw_reply(w, &payload);
            }
            ("ok-despite-cut", Stream::Complete { bytes } | Stream::Cut { bytes, .. }) => {
                ok(req.snapshot.clone(), req.guid, bytes)
            }
            (_, Stream::Complete { bytes }) => ok(req.snapshot.clone(), req.guid, bytes),
            (_, Stream::Cut { why, .. }) => {
                write_reply(
                    w,
                    &failure(proto::ErrorClass::StreamInterrupted, why, String::new()),
                )?;
                return Err(io::Error::other("the stream was cut"));
            }
        };
        write_reply(w, &reply)
    }
}
