//! The real way to reach the receiver agent: one qrexec call, exactly as dom0 makes it on
//! Qubes, `qrexec-client -d <qube> 'root:QUBESRPC zfsbackup.Receive dom0'`, started through
//! the one process runner.
//!
//! The driver stays in the middle of every pipe: it reads `zfs send` and writes to the qrexec
//! client itself, so if it dies, `zfs send` gets EPIPE and the agent sees EOF without an end
//! frame (and keeps resumable partial state).

use crate::error::{Error, Result};
use crate::output::outside;
use crate::stream::client::{Client, Peer};
use crate::system::inventory;
use crate::system::runner::{Exit, Runner, Spawned};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const SERVICE: &str = "zfsbackup.Receive";
/// Where dom0 keeps the qrexec client; used when it is not on PATH.
pub const QREXEC_CLIENT_FALLBACK: &str = "/usr/lib/qubes/qrexec-client";
/// How long the call may take to end after we closed our side.
const END_WAIT: Duration = Duration::from_secs(10);

/// How the driver reaches a receiver agent: the qrexec call in dom0, the agent in memory in
/// tests.
pub trait Connect {
    /// Opens a session (hellos exchanged) to the receiver agent in `qube`.
    fn connect(&self, qube: &str) -> Result<Client>;
}

/// The qrexec call, after checking the qube runs and the policy names it.
pub struct Qrexec<'r> {
    pub runner: &'r dyn Runner,
    /// How long the agent may stay silent.
    pub timeout: Duration,
    /// The qrexec client's program: on PATH (tests put a stand-in there), or dom0's location.
    pub client: String,
}

impl<'r> Qrexec<'r> {
    pub fn new(runner: &'r dyn Runner, timeout: Duration, client_on_path: bool) -> Self {
        let client = if client_on_path || !std::path::Path::new(QREXEC_CLIENT_FALLBACK).exists() {
            "qrexec-client".into()
        } else {
            QREXEC_CLIENT_FALLBACK.into()
        };
        Qrexec {
            runner,
            timeout,
            client,
        }
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

impl Connect for Qrexec<'_> {
    /// Checks, then opens, the call: the qube must be running (we do not start it: its backup
    /// media must be attached and its pool imported first, which only the admin can do), and
    /// the qrexec policy must name it as the backup qube. dom0's own calls bypass the policy
    /// daemon, so this evaluation is what keeps backups from going to any other qube.
    fn connect(&self, qube: &str) -> Result<Client> {
        check_receiver(self.runner, qube)?;
        let args = qrexec_args(qube);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut spawned = self
            .runner
            .spawn(&self.client, &argv, true)
            .map_err(|e| {
                Error::Receiver(format!(
                    "cannot start the qrexec call: {e} (this must run in dom0, where qrexec-client exists)"
                ))
            })?;
        let stdin = spawned.stdin.take().expect("piped stdin");
        let stdout = spawned.stdout.take().expect("piped stdout");
        let peer = Arc::new(QrexecPeer {
            call: Mutex::new(spawned),
            qube: qube.to_owned(),
        });
        Client::start(Box::new(stdout), Box::new(stdin), peer, self.timeout)
    }
}

/// Everything that must hold before dom0 calls `qube`: it exists, runs, and the policy names it.
fn check_receiver(runner: &dyn Runner, qube: &str) -> Result<()> {
    let state = inventory::qube_state(runner, qube)?;
    match state.as_deref() {
        None => {
            return Err(Error::Receiver(format!(
                "the receiver qube '{qube}' does not exist"
            )))
        }
        Some("Running") => {}
        Some(other) => {
            return Err(Error::Receiver(format!(
                "the receiver qube '{qube}' is not running (state {other}); start it (qvm-start {qube}), attach the backup disk and import its pool, then try again"
            )))
        }
    }
    check_policy(runner, qube)
}

/// `qrexec-policy-exec --just-evaluate @adminvm <qube> zfsbackup.Receive`: exit 0 is allow.
pub fn check_policy(runner: &dyn Runner, qube: &str) -> Result<()> {
    let args = ["--just-evaluate", "@adminvm", qube, SERVICE];
    match runner.status("qrexec-policy-exec", &args) {
        Ok(Exit::Code(0)) => Ok(()),
        Ok(Exit::Code(1)) => Err(Error::PolicyRefused(format!(
            "the qrexec policy does not allow dom0 to call {SERVICE} in '{qube}'. Mark it as the backup qube with `qvm-tags {qube} add zfs-backup-receiver` (see docs/INSTALL.md)"
        ))),
        Ok(exit) => Err(Error::Receiver(format!(
            "cannot check the qrexec policy: `qrexec-policy-exec {}` ended with {exit}",
            args.join(" ")
        ))),
        Err(e) => Err(Error::Receiver(format!("cannot check the qrexec policy: {e}"))),
    }
}

/// Turns qrexec's own exit codes into plain words.
pub fn explain_exit(exit: Option<Exit>, qube: &str) -> String {
    match exit {
        Some(Exit::Code(125)) => format!("qrexec could not reach qube '{qube}' (is it running?)"),
        Some(Exit::Code(126)) => {
            format!("the call to {SERVICE} in '{qube}' was refused by qrexec policy")
        }
        Some(Exit::Code(127)) => format!(
            "the service {SERVICE} is not installed in '{qube}' (install the qubes-zfs-backup-receiver package in its template)"
        ),
        Some(Exit::Code(3)) => "the receiver agent refused the caller (it only serves dom0)".into(),
        Some(Exit::Code(c)) => format!("the qrexec call ended with exit status {c}"),
        Some(Exit::Signal) => "the qrexec call was ended by a signal".into(),
        None => "the qrexec call could not be waited for".into(),
    }
}

/// The running `qrexec-client`.
struct QrexecPeer {
    call: Mutex<Spawned>,
    qube: String,
}

impl Peer for QrexecPeer {
    fn hang_up(&self) {
        if let Ok(mut c) = self.call.lock() {
            c.kill();
        }
    }

    fn end(&self) -> Option<String> {
        let Ok(mut call) = self.call.lock() else {
            return Some("the qrexec call's state is lost".into());
        };
        let (exit, stderr) = call.wait(END_WAIT);
        if exit == Some(Exit::Code(0)) {
            return None;
        }
        let mut msg = explain_exit(exit, &self.qube);
        let said = outside(&stderr);
        if !said.is_empty() {
            msg.push_str(&format!("; it said: {said}"));
        }
        Some(msg)
    }
}
