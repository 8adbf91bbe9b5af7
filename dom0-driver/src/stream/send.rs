//! `send`, `verify`, `abort` and the receiver checks of `calc`: everything that talks to the
//! receiver agent.
//!
//! One target at a time, in plan order. Before a target starts, its state is saved as
//! `partial`; after the receiver reports the snapshot with the source's guid, as `done`. So a
//! `kill -9` at any moment loses nothing: the next `send` finds either the finished snapshot
//! (same guid) or the receiver's resume token, which is decoded and checked against the plan
//! before `zfs send -t` ever sees it.

use crate::error::{Error, Result};
use crate::output::{human_bytes, sanitize, Style};
use crate::plan::Target;
use crate::state::{BackupState, SendState, Store, TargetState};
use crate::stream::qrexec::{Activity, Session};
use crate::system::inventory::{Inventory, Runner, ToolError, ZfsInventory};
use qzb_protocol as proto;
use qzb_protocol::names::{DatasetName, SnapshotName};
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Options of a send run.
pub struct SendOptions {
    pub timeout: Duration,
    pub patching: bool,
}

/// What the receiver holds under its root, indexed for lookups.
pub struct ReceiverView {
    pub available: u64,
    datasets: HashMap<String, proto::DatasetInfo>,
}

impl ReceiverView {
    pub fn from_reply(reply: proto::InventoryReply) -> Self {
        ReceiverView {
            available: reply.available,
            datasets: reply
                .datasets
                .into_iter()
                .map(|d| (d.name.as_str().to_owned(), d))
                .collect(),
        }
    }

    pub fn dataset(&self, name: &str) -> Option<&proto::DatasetInfo> {
        self.datasets.get(name)
    }

    /// Records a snapshot the receiver just reported, so later targets of the same session can
    /// build on it without listing the receiver again.
    pub fn record(
        &mut self,
        snapshot: &SnapshotName,
        guid: u64,
        kind: proto::DatasetKind,
    ) -> Result<()> {
        let ds = proto_ds(snapshot.dataset())?;
        let info = proto::SnapshotInfo {
            name: proto_snap(snapshot)?,
            guid,
            createtxg: 0,
        };
        let entry = self
            .datasets
            .entry(ds.as_str().to_owned())
            .or_insert(proto::DatasetInfo {
                name: ds,
                kind,
                guid: 0,
                receive_resume_token: None,
                snapshots: Vec::new(),
            });
        entry.receive_resume_token = None;
        entry.snapshots.push(info);
        Ok(())
    }

    /// The guid of `snapshot` on the receiver, if it is there.
    pub fn snapshot_guid(&self, snapshot: &SnapshotName) -> Option<u64> {
        self.dataset(snapshot.dataset().as_str()).and_then(|d| {
            d.snapshots
                .iter()
                .find(|s| s.name.label() == snapshot.label())
                .map(|s| s.guid)
        })
    }
}

/// A source snapshot's place on the receiver: `<root>/<dataset>@label`.
pub fn on_receiver(root: &DatasetName, snap: &SnapshotName) -> Result<SnapshotName> {
    let ds = snap
        .dataset()
        .under(root)
        .map_err(|e| Error::Refused(format!("{snap} cannot be placed under {root}: {e}")))?;
    SnapshotName::new(ds, snap.label().clone())
        .map_err(|e| Error::Refused(format!("{snap} cannot be placed under {root}: {e}")))
}

// dom0 and the wire share one set of name types: these only clone.
fn proto_ds(d: &DatasetName) -> Result<proto::DatasetName> {
    Ok(d.clone())
}

fn proto_snap(s: &SnapshotName) -> Result<proto::SnapshotName> {
    Ok(s.clone())
}

/// Asks the agent what is under the receiver root.
pub fn inventory(session: &mut Session, root: &DatasetName) -> Result<ReceiverView> {
    let req = proto::Request::Inventory(proto::InventoryRequest {
        root: proto_ds(root)?,
    });
    match session.request(&req)? {
        proto::Reply::Inventory(inv) if inv.root.as_str() == root.as_str() => {
            Ok(ReceiverView::from_reply(inv))
        }
        proto::Reply::Inventory(inv) => Err(Error::Security(format!(
            "the receiver answered an inventory of {} when asked for {root}",
            sanitize(inv.root.as_str())
        ))),
        proto::Reply::Error(e) => Err(Error::Receiver(format!(
            "the receiver cannot list {root}: {} ({})",
            sanitize(&e.message),
            e.class
        ))),
        other => Err(Error::Security(format!(
            "the receiver answered an inventory request with {}",
            reply_name(&other)
        ))),
    }
}

fn reply_name(r: &proto::Reply) -> &'static str {
    match r {
        proto::Reply::Inventory(_) => "an inventory",
        proto::Reply::ReceiveReady => "ReceiveReady",
        proto::Reply::Receive(_) => "a receive result",
        proto::Reply::Aborted { .. } => "an abort confirmation",
        proto::Reply::Error(_) => "an error",
    }
}

/// How a target will be sent, decided from the plan and what the receiver holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// The receiver has the snapshot with the source's guid.
    AlreadyThere,
    Send {
        mode: proto::ReceiveMode,
        /// `zfs send` arguments (after `zfs`).
        args: Vec<String>,
        /// For a clone stream, the origin on the receiver (`zfs receive -o origin=`).
        origin: Option<proto::SnapshotName>,
        /// How this differs from the plan's stream, for the user.
        note: Option<String>,
    },
}

/// Decides what to do for one target. Refuses anything that does not match the plan.
pub fn decide(
    t: &TargetState,
    root: &DatasetName,
    rx: &ReceiverView,
    source: &ZfsInventory,
    patching: bool,
) -> Result<Step> {
    let source_guids = |s: &SnapshotName| source.snapshot(s).map(|x| x.guid);
    let target = &t.target;
    let guid = target.guid.ok_or_else(|| {
        Error::Refused(format!(
            "{} does not exist; run `snapshot` first",
            target.snapshot
        ))
    })?;
    let dest = on_receiver(root, &target.snapshot)?;
    let dest_ds = rx.dataset(dest.dataset().as_str());
    if let Some(have) = rx.snapshot_guid(&dest) {
        if have != guid {
            return Err(Error::Refused(format!(
                "the receiver already has {dest} but with guid {have}, not {guid}: it is a different snapshot with the same name; it is left alone"
            )));
        }
        // Ours if we started it (a run that ended between the receive and saving the state);
        // otherwise only with patching.
        if t.send_state == SendState::Partial || patching {
            return Ok(Step::AlreadyThere);
        }
        return Err(Error::Refused(format!(
            "{dest} already exists on the receiver (same guid); enable allowed-behaviours.patching to mark such targets done"
        )));
    }
    if let Some(token) = dest_ds.and_then(|d| d.receive_resume_token.as_deref()) {
        check_token(token, target, guid, &source_guids)?;
        return Ok(Step::Send {
            mode: proto::ReceiveMode::Resume {
                token: token.to_owned(),
            },
            args: vec!["send".into(), "-t".into(), token.to_owned()],
            origin: clone_origin(target, root)?,
            note: Some("resuming the interrupted receive".into()),
        });
    }
    if let Some(step) = continue_cut_package(target, dest_ds, source, root)? {
        return Ok(step);
    }
    let mode = match &target.incremental_source {
        None => proto::ReceiveMode::Full,
        Some(src) => {
            let src_guid = source_guids(src).ok_or_else(|| {
                Error::Refused(format!("incremental source {src} no longer exists in dom0"))
            })?;
            let on_rx = on_receiver(root, src)?;
            match rx.snapshot_guid(&on_rx) {
                Some(g) if g == src_guid => {}
                Some(g) => {
                    return Err(Error::Refused(format!(
                        "incremental source {on_rx} on the receiver has guid {g}, not {src_guid}: it is not the snapshot this backup builds on"
                    )))
                }
                None => {
                    return Err(Error::Refused(format!(
                        "incremental source {on_rx} is not on the receiver; it must be there before {} can be sent",
                        target.snapshot
                    )))
                }
            }
            proto::ReceiveMode::Incremental {
                from: proto_snap(&on_rx)?,
                from_guid: src_guid,
            }
        }
    };
    Ok(Step::Send {
        mode,
        args: crate::cli::send_args(target, false),
        origin: clone_origin(target, root)?,
        note: None,
    })
}

/// The receiver-side origin of a clone target.
fn clone_origin(target: &Target, root: &DatasetName) -> Result<Option<proto::SnapshotName>> {
    match (&target.incremental_source, target.clone_origin) {
        (Some(src), true) => Ok(Some(proto_snap(&on_receiver(root, src)?)?)),
        _ => Ok(None),
    }
}

/// A `-I` package (or an earlier run) may have stopped between snapshots: the destination then
/// exists and ends at a snapshot the source also has (same guid). Continue from there instead
/// of replaying the planned stream, which the receiver would refuse.
fn continue_cut_package(
    target: &Target,
    dest_ds: Option<&proto::DatasetInfo>,
    source: &ZfsInventory,
    root: &DatasetName,
) -> Result<Option<Step>> {
    let Some(last) = dest_ds.and_then(|d| d.snapshots.last()) else {
        return Ok(None);
    };
    let ds = target.snapshot.dataset();
    let snaps = source.snapshots_of(ds.as_str());
    let Some(pos) = snaps.iter().position(|s| s.guid == last.guid) else {
        return Ok(None);
    };
    let target_pos = snaps
        .iter()
        .position(|s| &s.label == target.snapshot.label());
    if target_pos.is_none_or(|t| pos >= t) {
        return Ok(None);
    }
    let common = SnapshotName::new(ds.clone(), snaps[pos].label.clone())
        .map_err(|e| Error::Refused(format!("{ds}{}: {e}", snaps[pos].label)))?;
    // The receiver ends at the planned source itself: that is the planned stream, not a
    // continuation (the normal path sends it, and checks the source's guid).
    if target.incremental_source.as_ref() == Some(&common) {
        return Ok(None);
    }
    // Only where the plan's own source is not newer than what the receiver has.
    if let Some(planned) = &target.incremental_source {
        if planned.dataset() == ds {
            let planned_pos = snaps.iter().position(|s| &s.label == planned.label());
            if planned_pos.is_some_and(|p| p > pos) {
                return Ok(None);
            }
        }
    }
    let on_rx = on_receiver(root, &common)?;
    Ok(Some(Step::Send {
        mode: proto::ReceiveMode::Incremental {
            from: proto_snap(&on_rx)?,
            from_guid: snaps[pos].guid,
        },
        args: crate::cli::send_args_from(
            &target.snapshot,
            Some(&common),
            target.progressive,
            false,
        ),
        origin: None,
        note: Some(format!(
            "continuing from @{}, which the receiver already has",
            common.label().as_str()
        )),
    }))
}

/// A resume token comes from the backup qube: it may only continue exactly the planned stream.
fn check_token(
    token: &str,
    target: &Target,
    guid: u64,
    source_guids: &dyn Fn(&SnapshotName) -> Option<u64>,
) -> Result<()> {
    let decoded = proto::decode_resume_token(token).map_err(|e| {
        Error::Security(format!(
            "the receiver's resume token for {} cannot be decoded ({e:?}); it is not used",
            target.snapshot
        ))
    })?;
    let want_from = target.incremental_source.as_ref().and_then(source_guids);
    let problem = if decoded.toname.to_string() != target.snapshot.to_string() {
        Some(format!(
            "it names {}",
            sanitize(&decoded.toname.to_string())
        ))
    } else if decoded.toguid != guid {
        Some(format!(
            "its guid is {}, the snapshot's is {guid}",
            decoded.toguid
        ))
    } else if decoded.fromguid != want_from {
        Some(format!(
            "it continues from {:?}, the plan from {:?}",
            decoded.fromguid, want_from
        ))
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(p) => Err(Error::Security(format!(
            "the receiver's resume token for {} does not match the plan ({p}); it is refused. If the partial state is stale, discard it with `abort`",
            target.snapshot
        ))),
    }
}

/// Prints progress: a live line on a terminal, a parseable line every few seconds otherwise.
struct Progress {
    tty: bool,
    label: String,
    estimate: Option<u64>,
    start: Instant,
    last: Instant,
}

impl Progress {
    fn new(label: String, estimate: Option<u64>) -> Self {
        let now = Instant::now();
        Progress {
            tty: std::io::stderr().is_terminal(),
            label,
            estimate,
            start: now,
            last: now,
        }
    }

    fn update(&mut self, bytes: u64, done: bool) {
        let every = if self.tty {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(10)
        };
        if !done && self.last.elapsed() < every {
            return;
        }
        self.last = Instant::now();
        let secs = self.start.elapsed().as_secs_f64().max(0.001);
        let rate = bytes as f64 / secs;
        if self.tty {
            let eta = match self.estimate {
                Some(e) if rate > 0.0 && e > bytes => {
                    let s = ((e - bytes) as f64 / rate) as u64;
                    format!(" ETA {}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
                }
                _ => String::new(),
            };
            let of = self
                .estimate
                .map(|e| format!(" / {}", human_bytes(e)))
                .unwrap_or_default();
            // Progress is best effort: a closed stderr (`send ... 2>&1 | head`) must not
            // panic the data path the way `eprint!` would.
            let _ = write!(
                std::io::stderr(),
                "\r\x1b[K{}  {}{of}  {}/s{eta}{}",
                self.label,
                human_bytes(bytes),
                human_bytes(rate as u64),
                if done { "\n" } else { "" }
            );
        } else {
            crate::output::stderr_line(format_args!(
                "progress {} {bytes} {}",
                self.label,
                self.estimate
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "-".into())
            ));
        }
    }
}

/// The outcome of one attempted target.
enum Outcome {
    Done { bytes: u64 },
    Failed { error: Error, session_usable: bool },
}

/// Streams one target into an open session.
fn stream_target(
    session: &mut Session,
    request: proto::ReceiveRequest,
    args: &[String],
    estimate: Option<u64>,
    expected_guid: u64,
) -> Outcome {
    let label = request.snapshot.as_str().to_owned();
    match session.request(&proto::Request::Receive(request)) {
        Ok(proto::Reply::ReceiveReady) => {}
        Ok(proto::Reply::Receive(proto::ReceiveResult::Err(f))) => {
            return Outcome::Failed {
                error: Error::Send(describe_failure(&f)),
                session_usable: true,
            }
        }
        Ok(proto::Reply::Error(e)) => {
            return Outcome::Failed {
                error: Error::Send(format!("{} ({})", sanitize(&e.message), e.class)),
                session_usable: true,
            }
        }
        Ok(other) => {
            return Outcome::Failed {
                error: Error::Security(format!(
                    "the receiver answered a receive request with {}",
                    reply_name(&other)
                )),
                session_usable: false,
            }
        }
        Err(e) => {
            return Outcome::Failed {
                error: e,
                session_usable: false,
            }
        }
    }

    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let command = crate::system::inventory::command_line("zfs", &argv);
    tracing::debug!(%command, "starting");
    let mut child = match Command::new("zfs")
        .args(&argv)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            return Outcome::Failed {
                error: Error::Tool(ToolError {
                    command,
                    problem: format!("could not be run: {e}"),
                }),
                session_usable: false,
            }
        }
    };
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let stderr = std::thread::spawn(move || crate::stream::qrexec::read_bounded(stderr, 16 * 1024));

    let mut progress = Progress::new(label.clone(), estimate);
    let activity: Activity = session.activity.clone();
    let w = session.writer.as_mut().expect("open writer");
    let pumped = crate::stream::pump::pump(
        stdout,
        w,
        &activity,
        // If the receiver went away, stop zfs send now rather than let it block on a full pipe.
        || {
            let _ = child.kill();
        },
        |bytes| progress.update(bytes, false),
    );
    let status = child.wait();
    let send_stderr = stderr.join().unwrap_or_default();
    let send_ok = matches!(&status, Ok(s) if s.success()) && pumped.read_error.is_none();
    let bytes = pumped.bytes;
    let mut write_error = pumped
        .write_error
        .map(|e| proto::ProtocolError::Io(e).to_string());

    if write_error.is_none() && send_ok {
        let w = session.writer.as_mut().expect("open writer");
        if let Err(e) = pumped.framer.finish(w) {
            write_error = Some(e.to_string());
        }
    } else if write_error.is_none() {
        // zfs send failed: end the session without an end frame, so the agent keeps only
        // verified data as resumable partial state and reports its token.
        session.writer.take();
    }
    progress.update(bytes, true);

    let reply = session.read_reply();
    // After a broken write we killed `zfs send` ourselves: that is not its failure.
    let send_failure = (!send_ok && write_error.is_none()).then(|| {
        format!(
            "`{command}` failed ({}){}",
            match &status {
                Ok(s) => s.to_string(),
                Err(e) => e.to_string(),
            },
            match sanitize(send_stderr.trim()).as_str() {
                "" => String::new(),
                s => format!(": {s}"),
            }
        )
    });
    match reply {
        Ok(proto::Reply::Receive(proto::ReceiveResult::Ok { snapshot, guid, .. })) => {
            if let Some(w) = write_error {
                return Outcome::Failed {
                    error: Error::Security(format!(
                        "the receiver reported success for {} although the stream to it broke ({w})",
                        sanitize(snapshot.as_str())
                    )),
                    session_usable: false,
                };
            }
            if let Some(f) = send_failure {
                return Outcome::Failed {
                    error: Error::Security(format!(
                        "the receiver reported success for {} although {f}",
                        sanitize(snapshot.as_str())
                    )),
                    session_usable: false,
                };
            }
            if snapshot.as_str() != label {
                return Outcome::Failed {
                    error: Error::Security(format!(
                        "the receiver reported receiving {} instead of {label}",
                        sanitize(snapshot.as_str())
                    )),
                    session_usable: false,
                };
            }
            if guid != expected_guid {
                return Outcome::Failed {
                    error: Error::Security(format!(
                        "the receiver reports {label} with guid {guid}, but the source's is {expected_guid}; the target is not done"
                    )),
                    session_usable: false,
                };
            }
            Outcome::Done { bytes }
        }
        Ok(proto::Reply::Receive(proto::ReceiveResult::Err(f))) => {
            let mut msg = describe_failure(&f);
            if let Some(s) = send_failure {
                msg = format!("{s}; the receiver kept the verified part: {msg}");
            }
            Outcome::Failed {
                error: Error::Send(msg),
                session_usable: false,
            }
        }
        Ok(other) => Outcome::Failed {
            error: Error::Security(format!(
                "the receiver ended a stream with {}",
                reply_name(&other)
            )),
            session_usable: false,
        },
        Err(e) => Outcome::Failed {
            error: match (send_failure, write_error) {
                (Some(s), _) => Error::Send(s),
                (None, Some(w)) => {
                    Error::Receiver(format!("the stream to the receiver broke ({w}); {e}"))
                }
                (None, None) => e,
            },
            session_usable: false,
        },
    }
}

fn describe_failure(f: &proto::ReceiveFailure) -> String {
    let mut msg = format!("{}: {}", f.class, sanitize(&f.message));
    let stderr = sanitize(f.zfs_stderr.trim());
    if !stderr.is_empty() && !msg.contains(&stderr) {
        msg.push_str(&format!(" (zfs said: {stderr})"));
    }
    if f.resume_token.is_some() {
        msg.push_str("; the partial receive is kept and the next `send` resumes it");
    }
    msg
}

/// Reports a failed target, keeps its error in the state, and remembers the first security
/// refusal (it decides the exit status).
fn record_failure(
    store: &Store,
    state: &mut BackupState,
    i: usize,
    error: &Error,
    security: &mut Option<Error>,
) -> Result<()> {
    crate::output::stderr_line(format_args!(
        "{} {}: {}",
        Style::for_stderr().red("failed"),
        state.targets[i].target.snapshot,
        sanitize(&error.to_string())
    ));
    if matches!(error, Error::Security(_)) {
        security.get_or_insert(Error::Security(error.to_string()));
    }
    state.targets[i].last_error = Some(error.to_string());
    store.save(state)
}

/// Runs `send`: every target that is not done, in plan order.
pub fn send(
    runner: &dyn Runner,
    store: &Store,
    state: &mut BackupState,
    inv: &Inventory,
    opts: &SendOptions,
) -> Result<()> {
    let config = state.config()?;
    let root = config.receiver_dataset.clone();
    let missing: Vec<String> = state
        .targets
        .iter()
        .filter(|t| t.target.guid.is_none())
        .map(|t| t.target.snapshot.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(Error::Refused(format!(
            "{} target snapshot(s) do not exist yet (run `snapshot {}` first): {}",
            missing.len(),
            state.name,
            missing.join(", ")
        )));
    }
    let style = Style::for_stdout();
    let qube = config.receiver_qube.as_str().to_owned();
    let mut session: Option<Session> = None;
    let mut rx: Option<ReceiverView> = None;
    let mut failed: Vec<usize> = Vec::new();
    let mut security: Option<Error> = None;
    let mut sent_bytes = 0u64;
    let total = state.targets.len();

    for i in 0..total {
        if state.targets[i].send_state == SendState::Done {
            continue;
        }
        let snapshot = state.targets[i].target.snapshot.clone();
        if let Some(&dep) = state.targets[i]
            .target
            .depends_on
            .iter()
            .find(|&&d| state.targets[d].send_state != SendState::Done)
        {
            crate::outln!(
                "skipping {snapshot}: it needs {} first",
                state.targets[dep].target.snapshot
            );
            continue;
        }
        if session.is_none() {
            let mut s = crate::stream::qrexec::connect(runner, &qube, opts.timeout)?;
            rx = Some(inventory(&mut s, &root)?);
            session = Some(s);
        }
        let view = rx.as_ref().expect("inventory with the session");
        let step = decide(&state.targets[i], &root, view, &inv.zfs, opts.patching);
        let step = match step {
            Ok(s) => s,
            Err(e) => {
                record_failure(store, state, i, &e, &mut security)?;
                failed.push(i);
                continue;
            }
        };
        match step {
            Step::AlreadyThere => {
                crate::outln!(
                    "{snapshot} is already on the receiver with the same guid; marking it done"
                );
                let guid = state.targets[i].target.guid;
                let t = &mut state.targets[i];
                t.send_state = SendState::Done;
                t.received_guid = guid;
                t.last_error = None;
                store.save(state)?;
            }
            Step::Send {
                mode,
                args,
                origin,
                note,
            } => {
                let t = &state.targets[i];
                let guid = t.target.guid.expect("checked in decide");
                let dest = on_receiver(&root, &t.target.snapshot)?;
                let request = proto::ReceiveRequest {
                    root: proto_ds(&root)?,
                    destination: proto_ds(dest.dataset())?,
                    snapshot: proto_snap(&dest)?,
                    guid,
                    kind: match t.target.kind {
                        crate::system::inventory::DatasetKind::Filesystem => {
                            proto::DatasetKind::Filesystem
                        }
                        crate::system::inventory::DatasetKind::Volume => proto::DatasetKind::Volume,
                    },
                    mode,
                    origin,
                };
                let estimate = t.size_estimate;
                let kind = request.kind;
                crate::outln!(
                    "sending {snapshot} ({}){}",
                    crate::output::report::describe_send(&t.target),
                    note.map(|n| format!(", {n}")).unwrap_or_default()
                );
                // Saved before the first byte moves: a crash from here on resumes, not restarts.
                state.targets[i].send_state = SendState::Partial;
                store.save(state)?;
                let s = session.as_mut().expect("open session");
                match stream_target(s, request, &args, estimate, guid) {
                    Outcome::Done { bytes } => {
                        sent_bytes += bytes;
                        if let Some(view) = rx.as_mut() {
                            view.record(&dest, guid, kind)?;
                        }
                        let t = &mut state.targets[i];
                        t.send_state = SendState::Done;
                        t.received_guid = Some(guid);
                        t.last_error = None;
                        store.save(state)?;
                        crate::outln!(
                            "{} {snapshot} ({})",
                            style.green("sent"),
                            human_bytes(bytes)
                        );
                    }
                    Outcome::Failed {
                        error,
                        session_usable,
                    } => {
                        record_failure(store, state, i, &error, &mut security)?;
                        failed.push(i);
                        if !session_usable {
                            if let Some(s) = session.take() {
                                if let Some(detail) = s.close() {
                                    tracing::debug!(%detail, "session ended");
                                }
                            }
                            rx = None;
                        }
                    }
                }
            }
        }
    }
    if let Some(s) = session.take() {
        let _ = s.close();
    }
    let done = state
        .targets
        .iter()
        .filter(|t| t.send_state == SendState::Done)
        .count();
    crate::outln!(
        "sent {} in this run; {done}/{total} targets done",
        human_bytes(sent_bytes)
    );
    if let Some(e) = security {
        return Err(e);
    }
    if !failed.is_empty() {
        return Err(Error::Send(format!(
            "send failed for {} target(s); fix the cause above and run `send {}` again (finished targets are kept, interrupted ones resume)",
            failed.len(),
            state.name
        )));
    }
    if done < total {
        return Err(Error::Send(format!(
            "{} target(s) were skipped",
            total - done
        )));
    }
    crate::outln!("{}", style.green("send completed successfully!"));
    Ok(())
}

/// `verify`: every done target's guid on both sides.
pub fn verify(runner: &dyn Runner, state: &BackupState, timeout: Duration) -> Result<()> {
    let config = state.config()?;
    let root = &config.receiver_dataset;
    let mut session =
        crate::stream::qrexec::connect(runner, config.receiver_qube.as_str(), timeout)?;
    let rx = inventory(&mut session, root)?;
    let _ = session.close();
    let mut bad = 0;
    let mut checked = 0;
    for t in state
        .targets
        .iter()
        .filter(|t| t.send_state == SendState::Done)
    {
        checked += 1;
        let dest = on_receiver(root, &t.target.snapshot)?;
        match (rx.snapshot_guid(&dest), t.target.guid) {
            (Some(r), Some(s)) if r == s => crate::outln!("ok        {dest}"),
            (Some(r), s) => {
                bad += 1;
                crate::outln!(
                    "MISMATCH  {dest}: receiver guid {r}, source {}",
                    s.map(|g| g.to_string()).unwrap_or("-".into())
                );
            }
            (None, _) => {
                bad += 1;
                crate::outln!("MISSING   {dest}");
            }
        }
    }
    let pending = state.targets.len() - checked;
    crate::outln!(
        "{checked} done target(s) checked, {bad} problem(s); {pending} target(s) not sent yet"
    );
    if bad > 0 {
        return Err(Error::Send(format!(
            "verify found {bad} problem(s) on the receiver"
        )));
    }
    Ok(())
}

/// What `calc` learned from the receiver.
pub struct ReceiverReport {
    pub available: u64,
    pub partial: usize,
    pub warnings: Vec<String>,
}

/// Receiver checks for `calc`: space, incremental bases, existing and partial targets.
pub fn receiver_checks(
    runner: &dyn Runner,
    state: &BackupState,
    inv: &Inventory,
    total: u64,
    timeout: Duration,
) -> Result<ReceiverReport> {
    let config = state.config()?;
    let root = &config.receiver_dataset;
    let mut session =
        crate::stream::qrexec::connect(runner, config.receiver_qube.as_str(), timeout)?;
    let rx = inventory(&mut session, root)?;
    let _ = session.close();
    let mut warnings = Vec::new();
    if rx.available > 0 && total as f64 / rx.available as f64 > 0.75 {
        warnings.push(format!(
            "Send size is {}% of available space on receiver. Pool settings (compression, record size) differ between pools, so whether it fits cannot be predicted; decide yourself.",
            (total as f64 / rx.available as f64 * 100.0).round()
        ));
    } else if rx.available == 0 {
        warnings.push("the receiver reports no available space".into());
    }
    let planned: std::collections::HashSet<&SnapshotName> =
        state.targets.iter().map(|t| &t.target.snapshot).collect();
    let mut present = 0;
    let mut partial = 0;
    for t in &state.targets {
        let dest = on_receiver(root, &t.target.snapshot)?;
        if let Some(g) = rx.snapshot_guid(&dest) {
            if Some(g) == t.target.guid {
                // Targets this backup sent itself are simply done.
                if t.send_state != SendState::Done {
                    present += 1;
                }
            } else {
                warnings.push(format!(
                    "{dest} exists on the receiver with a different guid; its target will fail"
                ));
            }
        } else if rx
            .dataset(dest.dataset().as_str())
            .and_then(|d| d.receive_resume_token.as_ref())
            .is_some()
        {
            partial += 1;
        }
        if let Some(src) = &t.target.incremental_source {
            if !planned.contains(src) {
                let on_rx = on_receiver(root, src)?;
                let want = inv.zfs.snapshot(src).map(|s| s.guid);
                match rx.snapshot_guid(&on_rx) {
                    Some(g) if Some(g) == want => {}
                    Some(_) => warnings.push(format!("incremental base {on_rx} on the receiver is a different snapshot (guid differs); {} cannot be sent", t.target.snapshot)),
                    None => warnings.push(format!("incremental base {on_rx} is not on the receiver; {} cannot be sent", t.target.snapshot)),
                }
            }
        }
    }
    if present > 0 {
        let what = if config.patching {
            "they will be marked done"
        } else {
            "patching is disabled, so send will refuse them"
        };
        warnings.push(format!(
            "{present} target(s) are already on the receiver with the same guid; {what}"
        ));
    }
    Ok(ReceiverReport {
        available: rx.available,
        partial,
        warnings,
    })
}

/// `abort`: discards partial receive state (`zfs receive -A`) of this backup's destinations.
pub fn abort(
    runner: &dyn Runner,
    store: &Store,
    state: &mut BackupState,
    only: Option<&str>,
    yes: bool,
    timeout: Duration,
) -> Result<()> {
    let config = state.config()?;
    let root = config.receiver_dataset.clone();
    let mut session =
        crate::stream::qrexec::connect(runner, config.receiver_qube.as_str(), timeout)?;
    let rx = inventory(&mut session, &root)?;
    let mut dests: Vec<DatasetName> = Vec::new();
    for t in &state.targets {
        let d = on_receiver(&root, &t.target.snapshot)?.dataset().clone();
        let has_token = rx
            .dataset(d.as_str())
            .and_then(|x| x.receive_resume_token.as_ref())
            .is_some();
        let wanted =
            only.is_none_or(|o| o == d.as_str() || o == t.target.snapshot.dataset().as_str());
        if has_token && wanted && !dests.contains(&d) {
            dests.push(d);
        }
    }
    if let Some(o) = only {
        if dests.is_empty() {
            let _ = session.close();
            return Err(Error::Refused(format!(
                "no partial receive state of this backup on {o}"
            )));
        }
    }
    if dests.is_empty() {
        let _ = session.close();
        crate::outln!("No partial receive state to discard.");
        return Ok(());
    }
    crate::outln!(
        "Partial receive state that will be discarded (the data received so far is lost):"
    );
    for d in &dests {
        crate::outln!("  {d}");
    }
    if !yes {
        if !std::io::stdin().is_terminal() {
            let _ = session.close();
            return Err(Error::Refused(
                "confirmation needed: run on a terminal, or pass --yes".into(),
            ));
        }
        crate::out!("Type 'yes' to discard: ");
        let _ = std::io::stdout().flush();
        let mut answer = String::new();
        let _ = std::io::stdin().read_line(&mut answer);
        if answer.trim() != "yes" {
            let _ = session.close();
            return Err(Error::Refused(
                "not confirmed; nothing was discarded".into(),
            ));
        }
    }
    for d in &dests {
        let req = proto::Request::Abort(proto::AbortRequest {
            root: proto_ds(&root)?,
            dataset: proto_ds(d)?,
        });
        match session.request(&req)? {
            proto::Reply::Aborted { dataset } if dataset.as_str() == d.as_str() => {
                crate::outln!("discarded partial state of {d}")
            }
            proto::Reply::Error(e) => {
                return Err(Error::Receiver(format!(
                    "cannot discard the partial state of {d}: {}",
                    sanitize(&e.message)
                )))
            }
            other => {
                return Err(Error::Security(format!(
                    "the receiver answered an abort with {}",
                    reply_name(&other)
                )))
            }
        }
        for t in &mut state.targets {
            if t.send_state == SendState::Partial
                && t.target.snapshot.dataset().under(&root).ok().as_ref() == Some(d)
            {
                t.send_state = SendState::Pending;
            }
        }
        store.save(state)?;
    }
    let _ = session.close();
    Ok(())
}

#[cfg(test)]
mod tests {
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
        assert_eq!(args, ["send", "-L", "-e", "-c", "-p", "pool/vm@c"]);
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
        assert_eq!(
            args,
            [
                "send",
                "-L",
                "-e",
                "-c",
                "-p",
                "-I",
                "pool/vm@a",
                "pool/vm@c"
            ]
        );
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
            (token("pool/vm@c", 3, None), "continues from None"),
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
        assert_eq!(
            args,
            [
                "send",
                "-L",
                "-e",
                "-c",
                "-p",
                "-I",
                "pool/vm@b",
                "pool/vm@c"
            ]
        );
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
}
