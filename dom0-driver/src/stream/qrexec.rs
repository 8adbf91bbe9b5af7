//! The connection to the receiver agent: one qrexec call, exactly as dom0 makes it on Qubes:
//! `qrexec-client -d <qube> 'root:QUBESRPC zfsbackup.Receive dom0'`.
//!
//! The driver stays in the middle of every pipe: it reads `zfs send` and writes to the qrexec
//! client itself, so if it dies, `zfs send` gets EPIPE and the agent sees EOF without an end
//! frame (and keeps resumable partial state). Nothing that comes back is trusted: replies are
//! size-bounded and validated by the protocol crate, stderr is bounded and sanitised.

use crate::error::{Error, Result};
use crate::output::sanitize;
use crate::system::inventory::Runner;
use qzb_protocol as proto;
use std::io::{BufReader, BufWriter, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const SERVICE: &str = "zfsbackup.Receive";
/// Where dom0 keeps the qrexec client; used when it is not on PATH.
pub const QREXEC_CLIENT_FALLBACK: &str = "/usr/lib/qubes/qrexec-client";
/// How much of the qrexec client's stderr (which carries the agent's) we keep.
const MAX_STDERR: usize = 16 * 1024;

/// Finds the qrexec client: PATH first (tests put a stand-in there), then dom0's location.
pub fn qrexec_client() -> String {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("qrexec-client").is_file()))
        .unwrap_or(false);
    if on_path || !std::path::Path::new(QREXEC_CLIENT_FALLBACK).exists() {
        "qrexec-client".into()
    } else {
        QREXEC_CLIENT_FALLBACK.into()
    }
}

/// The exact argv of the call (without the program).
pub fn qrexec_args(qube: &str) -> Vec<String> {
    vec![
        "-d".into(),
        qube.into(),
        format!("root:QUBESRPC {SERVICE} dom0"),
    ]
}

/// Checks, then opens, the call to the receiver qube: the qube must be running (we do not start
/// it: its backup media must be attached and its pool imported first, which only the user can
/// do), and the qrexec policy must name it as the backup qube. dom0's own calls bypass the
/// policy daemon, so this evaluation is what keeps backups from going to any other qube.
pub fn connect(runner: &dyn Runner, qube: &str, timeout: Duration) -> Result<Session> {
    let state = crate::system::inventory::qube_state(runner, qube)?;
    match state.as_deref() {
        None => return Err(Error::Receiver(format!("the receiver qube '{qube}' does not exist"))),
        Some("Running") => {}
        Some(other) => {
            return Err(Error::Receiver(format!(
                "the receiver qube '{qube}' is not running (state {other}); start it (qvm-start {qube}), attach the backup disk and import its pool, then try again"
            )))
        }
    }
    check_policy(runner, qube)?;
    Session::open(qube, timeout)
}

/// `qrexec-policy-exec --just-evaluate @adminvm <qube> zfsbackup.Receive`: exit 0 is allow.
pub fn check_policy(runner: &dyn Runner, qube: &str) -> Result<()> {
    let args = ["--just-evaluate", "@adminvm", qube, SERVICE];
    match runner.status("qrexec-policy-exec", &args) {
        Ok(Some(0)) => Ok(()),
        Ok(Some(1)) => Err(Error::Refused(format!(
            "the qrexec policy does not allow dom0 to call {SERVICE} in '{qube}'. Mark it as the backup qube with `qvm-tags {qube} add zfs-backup-receiver` (see docs/INSTALL.md)"
        ))),
        Ok(code) => Err(Error::Receiver(format!(
            "cannot check the qrexec policy: `qrexec-policy-exec {}` ended with {code:?}",
            args.join(" ")
        ))),
        Err(e) => Err(Error::Receiver(format!("cannot check the qrexec policy: {e}"))),
    }
}

/// Turns qrexec's own exit codes into plain words.
pub fn explain_exit(code: Option<i32>, qube: &str) -> String {
    match code {
        Some(125) => format!("qrexec could not reach qube '{qube}' (is it running?)"),
        Some(126) => format!("the call to {SERVICE} in '{qube}' was refused by qrexec policy"),
        Some(127) => format!("the service {SERVICE} is not installed in '{qube}' (install the qubes-zfs-backup-receiver package in its template)"),
        Some(3) => "the receiver agent refused the caller (it only serves dom0)".into(),
        Some(c) => format!("the qrexec call ended with exit status {c}"),
        None => "the qrexec call was killed by a signal".into(),
    }
}

/// Buffer of the session's writer: coalesces a request's frame header and payload into one
/// write. Data frames (at least 256 KiB) are larger, so `BufWriter` passes them straight
/// through instead of copying every byte of the stream into its buffer first.
pub const SESSION_WRITE_BUFFER: usize = 64 * 1024;

/// Progress of a session, for the watchdog: the last time bytes moved.
#[derive(Clone)]
pub struct Activity(Arc<Mutex<Instant>>);

impl Default for Activity {
    fn default() -> Self {
        Activity::new()
    }
}

impl Activity {
    pub fn new() -> Self {
        Activity(Arc::new(Mutex::new(Instant::now())))
    }

    pub fn touch(&self) {
        if let Ok(mut t) = self.0.lock() {
            *t = Instant::now();
        }
    }

    fn idle(&self) -> Duration {
        self.0.lock().map(|t| t.elapsed()).unwrap_or_default()
    }
}

/// A reader that records activity.
pub struct Watched<R> {
    inner: R,
    activity: Activity,
}

impl<R: Read> Read for Watched<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.activity.touch();
        Ok(n)
    }
}

/// One qrexec call to the agent.
pub struct Session {
    qube: String,
    child: Arc<Mutex<Child>>,
    pub writer: Option<BufWriter<ChildStdin>>,
    pub reader: BufReader<Watched<ChildStdout>>,
    stderr: Option<JoinHandle<String>>,
    pub activity: Activity,
    /// Since when we wait for a reply (or the hello), if we do: a peer that trickles bytes is
    /// never idle, so a whole answer must also arrive within the timeout.
    waiting: Arc<Mutex<Option<Instant>>>,
    timed_out: Arc<Mutex<bool>>,
    watchdog_stop: Arc<Mutex<bool>>,
    buf: Vec<u8>,
}

impl Session {
    /// Starts the call and exchanges hellos. `timeout` bounds how long the agent may stay silent
    /// while we wait for it (a hung backup qube must not hang dom0 forever).
    pub fn open(qube: &str, timeout: Duration) -> Result<Session> {
        let program = qrexec_client();
        let args = qrexec_args(qube);
        tracing::debug!(command = %crate::system::inventory::command_line(&program, &args.iter().map(String::as_str).collect::<Vec<_>>()), "starting qrexec call");
        let mut child = Command::new(&program)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                Error::Receiver(format!(
                    "cannot start {program}: {e} (this must run in dom0, where qrexec-client exists)"
                ))
            })?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        // Read stderr on a thread so a chatty peer cannot deadlock us; keep a bounded tail.
        let stderr = std::thread::spawn(move || read_bounded(stderr, MAX_STDERR));
        let activity = Activity::new();
        let mut s = Session {
            qube: qube.to_owned(),
            child: Arc::new(Mutex::new(child)),
            writer: Some(BufWriter::with_capacity(SESSION_WRITE_BUFFER, stdin)),
            reader: BufReader::with_capacity(
                64 * 1024,
                Watched {
                    inner: stdout,
                    activity: activity.clone(),
                },
            ),
            stderr: Some(stderr),
            activity,
            waiting: Arc::new(Mutex::new(None)),
            timed_out: Arc::new(Mutex::new(false)),
            watchdog_stop: Arc::new(Mutex::new(false)),
            buf: Vec::new(),
        };
        s.start_watchdog(timeout);
        let hello = (|| -> std::result::Result<(), proto::ProtocolError> {
            let w = s.writer.as_mut().expect("open writer");
            let sent = proto::send_hello(w, proto::Role::Driver);
            // Read what the peer sent even if ours could not be written: a shell error or
            // another version says more than the broken pipe of a peer that already left.
            s.set_waiting(true);
            let hello = proto::expect_hello(&mut s.reader, proto::Role::Receiver);
            s.set_waiting(false);
            hello?;
            sent
        })();
        if let Err(e) = hello {
            return Err(s.fail(&format!("handshake with the receiver agent failed: {e}")));
        }
        Ok(s)
    }

    fn start_watchdog(&self, timeout: Duration) {
        let child = Arc::clone(&self.child);
        let activity = self.activity.clone();
        let waiting = Arc::clone(&self.waiting);
        let timed_out = Arc::clone(&self.timed_out);
        let stop = Arc::clone(&self.watchdog_stop);
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(200));
            if stop.lock().map(|s| *s).unwrap_or(true) {
                return;
            }
            let overdue = waiting
                .lock()
                .map(|w| w.is_some_and(|since| since.elapsed() > timeout))
                .unwrap_or(false);
            if activity.idle() > timeout || overdue {
                if let Ok(mut t) = timed_out.lock() {
                    *t = true;
                }
                if let Ok(mut c) = child.lock() {
                    let _ = c.kill();
                }
                return;
            }
        });
    }

    fn set_waiting(&self, waiting: bool) {
        if let Ok(mut w) = self.waiting.lock() {
            *w = waiting.then(Instant::now);
        }
    }

    fn timed_out(&self) -> bool {
        self.timed_out.lock().map(|t| *t).unwrap_or(false)
    }

    /// Sends a request and reads its reply.
    pub fn request(&mut self, request: &proto::Request) -> Result<proto::Reply> {
        let w = self
            .writer
            .as_mut()
            .ok_or_else(|| Error::Receiver("the session to the receiver is closed".into()))?;
        let sent = proto::write_request(w, request);
        self.activity.touch();
        if let Err(e) = sent {
            // The agent may have written a reply before going away; try to read it.
            return self.read_reply().map_err(|_| {
                Error::Receiver(format!("cannot send a request to the receiver: {e}"))
            });
        }
        self.read_reply()
    }

    /// Reads one reply (bounded and validated by the protocol crate).
    pub fn read_reply(&mut self) -> Result<proto::Reply> {
        self.set_waiting(true);
        let reply = proto::read_reply(&mut self.reader, &mut self.buf);
        self.set_waiting(false);
        match reply {
            Ok(r) => Ok(r),
            Err(e) => {
                let msg = if self.timed_out() {
                    "the receiver did not answer in time".to_owned()
                } else {
                    format!("bad reply from the receiver: {e}")
                };
                Err(Error::Receiver(msg))
            }
        }
    }

    /// Closes our side and waits for the call to end; returns a description of the end if it
    /// was not clean, with the peer's stderr.
    pub fn close(mut self) -> Option<String> {
        self.writer.take();
        self.finish()
    }

    fn finish(&mut self) -> Option<String> {
        let status = self.wait_bounded(Duration::from_secs(10));
        if let Ok(mut s) = self.watchdog_stop.lock() {
            *s = true;
        }
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        match status {
            Some(0) => None,
            code => {
                let mut msg = explain_exit(code, &self.qube);
                if self.timed_out() {
                    msg = "the receiver stopped responding (timeout); the call was ended".into();
                }
                let stderr = sanitize(stderr.trim());
                if !stderr.is_empty() {
                    msg.push_str(&format!("; it said: {stderr}"));
                }
                Some(msg)
            }
        }
    }

    /// Ends the session after a failure and builds the error, with what qrexec said.
    pub fn fail(mut self, what: &str) -> Error {
        self.writer.take();
        let detail = self.finish();
        Error::Receiver(match detail {
            Some(d) => format!("{what}: {d}"),
            None => what.to_owned(),
        })
    }

    /// Waits for the child, killing it if it does not end in time. Returns its exit code.
    fn wait_bounded(&self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Ok(mut c) = self.child.lock() {
                match c.try_wait() {
                    Ok(Some(status)) => return status.code(),
                    Ok(None) if start.elapsed() > limit => {
                        let _ = c.kill();
                        return c.wait().ok().and_then(|s| s.code());
                    }
                    Ok(None) => {}
                    Err(_) => return None,
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.stderr.is_some() {
            self.writer.take();
            let _ = self.finish();
        }
    }
}

/// Reads a stream to its end, keeping at most `max` bytes (the first ones), as text.
pub fn read_bounded(mut r: impl Read, max: usize) -> String {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = max.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

/// Writes through, counting bytes into the session's activity (for the watchdog).
pub fn write_all_watched(
    w: &mut impl Write,
    data: &[u8],
    activity: &Activity,
) -> std::io::Result<()> {
    w.write_all(data)?;
    activity.touch();
    Ok(())
}
