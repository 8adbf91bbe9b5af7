//! `send`: every target that is not done, in plan order, into one session.
//!
//! Before a target starts, its state is saved as `partial`; after the receiver reports the
//! snapshot with the source's guid, as `done`. So a `kill -9` at any moment loses nothing: the
//! next `send` finds either the finished snapshot (same guid) or the receiver's resume token,
//! which `receiver::decide` checks against the plan before `zfs send -t` ever sees it.

use crate::error::{Error, Result};
use crate::key::Keys;
use crate::output::{human_bytes, outside, sanitize, zfs_said, Style};
use crate::plan::send_args::send_args;
use crate::state::chains::{medium_id, Chains};
use crate::state::{BackupState, ManifestState, SendState, SentStream, Store};
use crate::stream::client::Client;
use crate::stream::estimate::stream_size;
use crate::stream::medium::store_spooled;
use crate::stream::progress::{Mode, Run, Target as ProgressTarget};
use crate::stream::qrexec::Connect;
use crate::stream::receiver::{decide, inventory, on_receiver, reply_name, ReceiverView, Step};
use crate::stream::sets;
use crate::stream::tap::{chain_start, Spool, VolumeTap};
use crate::system::inventory::{volume_geometry, DatasetKind, Inventory};
use crate::system::runner::{Exit, Runner};
use crate::system::settings;
use qzb_protocol as proto;
use qzb_protocol::sets::Sealed;
use serde_json::json;
use std::time::Duration;

/// Options of a send run.
pub struct SendOptions {
    pub patching: bool,
    /// How progress (and, with JSON, every message) is shown.
    pub progress: Mode,
}

/// The outcome of one attempted target.
enum Outcome {
    /// `stream_hash`: the end frame's hash of the stream sent (for a resumed send, of the
    /// resumed part).
    Done {
        bytes: u64,
        stream_hash: [u8; 32],
    },
    Failed {
        error: Error,
        session_usable: bool,
    },
}

/// How long `zfs send` may take to exit after its output ended.
const SEND_EXIT_WAIT: Duration = Duration::from_secs(60);

/// One target to stream: the request for the agent and the local `zfs send` argv.
struct Transfer<'a> {
    request: proto::ReceiveRequest,
    /// `zfs send` arguments (after `zfs`).
    args: &'a [String],
    expected_guid: u64,
    /// The backup's name, for the instruction in messages.
    backup: &'a str,
    /// The manifest tap of a zvol stream, when dom0 has a key.
    tap: Option<&'a mut VolumeTap>,
}

/// Streams one target into an open session: asks the agent to receive, pumps `zfs send` into
/// data frames, ends the stream, and judges the agent's answer against the plan.
fn stream_target(
    runner: &dyn Runner,
    session: &mut Client,
    mut t: Transfer<'_>,
    mut progress: ProgressTarget<'_>,
) -> Outcome {
    let label = t.request.snapshot.as_str().to_owned();
    match session.request(&proto::Request::Receive(t.request)) {
        Ok(proto::Reply::ReceiveReady) => {}
        Ok(proto::Reply::Receive(proto::ReceiveResult::Err(f))) => {
            return Outcome::Failed {
                error: Error::Send(describe_failure(&f)),
                session_usable: true,
            }
        }
        Ok(proto::Reply::Error(e)) => {
            return Outcome::Failed {
                error: Error::Send(format!("{} ({})", outside(&e.message), e.class)),
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

    let argv: Vec<&str> = t.args.iter().map(String::as_str).collect();
    let mut zfs_send = match runner.spawn("zfs", &argv, false) {
        Ok(c) => c,
        Err(e) => {
            return Outcome::Failed {
                error: Error::Tool(e),
                session_usable: false,
            }
        }
    };
    let stdout = zfs_send.stdout.take().expect("piped stdout");
    let command = zfs_send.command.clone();

    let activity = session.activity().clone();
    let sink = session.data_sink().expect("open session");
    let pumped = crate::stream::pump::pump(
        stdout,
        sink,
        &activity,
        &mut |chunk| match t.tap.as_deref_mut() {
            Some(tap) => tap.observe(chunk),
            None => Ok(()),
        },
        // If the receiver went away, stop zfs send now rather than let it block on a full pipe.
        || zfs_send.kill(),
        |bytes| progress.update(bytes, false),
    );
    let (exit, send_stderr) = zfs_send.wait(SEND_EXIT_WAIT);
    let send_ok = exit == Some(Exit::Code(0)) && pumped.read_error.is_none();
    let bytes = pumped.bytes;
    let mut write_error = pumped.write_error.map(|e| e.to_string());
    let mut stream_hash = [0u8; 32];

    if write_error.is_none() && send_ok {
        let sink = session.data_sink().expect("open session");
        match pumped.framer.finish(sink) {
            Ok(end) => stream_hash = end.blake3,
            Err(e) => write_error = Some(e.to_string()),
        }
    } else if write_error.is_none() {
        // zfs send failed: end the session without an end frame, so the agent keeps only
        // verified data as resumable partial state and reports its token.
        session.close_writer();
    }
    progress.update(bytes, true);

    let reply = session.read_reply();
    // After a broken write we killed `zfs send` ourselves: that is not its failure.
    let send_failure = (!send_ok && write_error.is_none()).then(|| {
        let how = match (&pumped.read_error, exit) {
            (Some(e), _) => format!("its output could not be read: {e}"),
            (None, Some(exit)) => exit.to_string(),
            (None, None) => "it could not be waited for".to_owned(),
        };
        match outside(&zfs_said(&send_stderr)).as_str() {
            "" => format!("`{command}` failed ({how})"),
            said => format!("`{command}` failed ({how}): {said}"),
        }
    });
    match reply {
        Ok(proto::Reply::Receive(proto::ReceiveResult::Ok { snapshot, guid, .. })) => {
            if let Some(w) = write_error {
                return Outcome::Failed {
                    error: Error::Security(format!(
                        "the receiver reported success for {} although the stream to it broke ({w})",
                        outside(snapshot.as_str())
                    )),
                    session_usable: false,
                };
            }
            if let Some(f) = send_failure {
                return Outcome::Failed {
                    error: Error::Security(format!(
                        "the receiver reported success for {} although {f}",
                        outside(snapshot.as_str())
                    )),
                    session_usable: false,
                };
            }
            if snapshot.as_str() != label {
                return Outcome::Failed {
                    error: Error::Security(format!(
                        "the receiver reported receiving {} instead of {label}",
                        outside(snapshot.as_str())
                    )),
                    session_usable: false,
                };
            }
            if guid != t.expected_guid {
                return Outcome::Failed {
                    error: Error::Security(format!(
                        "the receiver reports {label} with guid {guid}, but the source's is {}; the target is not done",
                        t.expected_guid
                    )),
                    session_usable: false,
                };
            }
            Outcome::Done { bytes, stream_hash }
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
                (None, Some(_)) if session.timed_out() => Error::Receiver(format!(
                    "the receiver stopped taking the stream, so the call was ended after the timeout (--timeout); what it verified is kept as resumable state: check the backup qube, then run `send {}` again to resume",
                    t.backup
                )),
                // The agent is gone in the middle of the stream (its end of the call closed):
                // say so, and what to do, rather than the bare "Broken pipe" of our write.
                (None, Some(w)) => Error::Receiver(format!(
                    "the receiver agent ended in the middle of the stream ({w}); it keeps what it verified as resumable state: check the backup qube (its disk, its pool, `journalctl` there), then run `send {}` again to resume",
                    t.backup
                )),
                (None, None) => e,
            },
            session_usable: false,
        },
    }
}

fn describe_failure(f: &proto::ReceiveFailure) -> String {
    let mut msg = format!("{}: {}", f.class, outside(&zfs_said(&f.message)));
    let stderr = outside(&zfs_said(&f.zfs_stderr));
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
    run: &Run,
) -> Result<()> {
    let snapshot = state.targets[i].target.snapshot.to_string();
    if run.mode() == Mode::Json {
        run.say(
            "",
            json!({"event": "failed", "snapshot": snapshot, "error": error.to_string()}),
        );
    } else {
        crate::output::stderr_line(format_args!(
            "{} {snapshot}: {}",
            Style::for_stderr().red("failed"),
            sanitize(&error.to_string())
        ));
    }
    if let Error::Security(m) = error {
        security.get_or_insert(Error::Security(m.clone()));
    }
    state.targets[i].last_error = Some(error.to_string());
    store.save(state)
}

/// Fills in the size estimate of every target this run will send that has none (from `calc`
/// or an earlier run), so progress has totals without `calc` first. An estimate that cannot be
/// had is left out: progress then shows no total, the send itself is unaffected.
fn estimate_missing(runner: &dyn Runner, store: &Store, state: &mut BackupState) -> Result<()> {
    let mut changed = false;
    for t in state.targets.iter_mut().filter(|t| {
        t.send_state != SendState::Done && t.target.guid.is_some() && t.size_estimate.is_none()
    }) {
        match stream_size(runner, &send_args(&t.target)) {
            Ok(size) => {
                t.size_estimate = Some(size);
                changed = true;
            }
            Err(e) => tracing::debug!(error = %e, "no estimate"),
        }
    }
    if changed {
        store.save(state)?;
    }
    Ok(())
}

/// Runs `send`: every target that is not done, in plan order.
pub fn send(
    runner: &dyn Runner,
    connector: &dyn Connect,
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
    let to_send: Vec<usize> = (0..state.targets.len())
        .filter(|&i| state.targets[i].send_state != SendState::Done)
        .collect();
    if !to_send.is_empty() && missing.len() == to_send.len() {
        return Err(Error::Refused(format!(
            "none of the {} target snapshot(s) left to send exist yet (run `snapshot {}` first): {}",
            missing.len(),
            state.name,
            missing.join(", ")
        )));
    }
    estimate_missing(runner, store, state)?;
    let ready: Vec<usize> = to_send
        .iter()
        .copied()
        .filter(|&i| state.targets[i].target.guid.is_some())
        .collect();
    let run_total = ready
        .iter()
        .map(|&i| state.targets[i].size_estimate)
        .sum::<Option<u64>>();
    let mut run = Run::new(opts.progress, ready.len(), run_total);
    let keys = crate::key::load(store.dir())?;
    let auth = keys.as_ref().map(|keys| Auth {
        keys,
        medium: medium_id(config.receiver_qube.as_str(), root.as_str()),
        chains: Chains::new(store.dir()),
        spool_root: store.dir().join("spool"),
    });
    if auth.is_none() && !ready.is_empty() {
        run.say(
            "note: dom0 has no key, so this backup is not authenticated: `verify` can only compare guids and restore cannot check it. Run `key init` once; the next full send of each volume makes it verifiable",
            json!({"event": "note", "unauthenticated": true}),
        );
    }

    // Targets whose snapshot does not exist yet (their qube was running at `snapshot`) wait;
    // everything that is ready goes now.
    let mut not_ready: Vec<String> = Vec::new();
    let style = Style::for_stdout();
    let qube = config.receiver_qube.as_str().to_owned();
    let mut session: Option<Client> = None;
    let mut rx: Option<ReceiverView> = None;
    let mut failed: Vec<usize> = Vec::new();
    // Where the run stopped early because the receiver went silent.
    let mut stopped_at: Option<usize> = None;
    let mut security: Option<Error> = None;
    let mut sent_bytes = 0u64;
    let mut opened_session = false;
    let total = state.targets.len();

    for i in to_send {
        let snapshot = state.targets[i].target.snapshot.clone();
        if state.targets[i].target.guid.is_none() {
            run.say(
                format_args!(
                    "deferred {snapshot}: its snapshot does not exist yet (its qube was running when `snapshot {}` ran, or it has not run)",
                    state.name
                ),
                json!({"event": "deferred", "snapshot": snapshot.to_string(), "why": "its snapshot does not exist yet"}),
            );
            not_ready.push(snapshot.to_string());
            continue;
        }
        if let Some(&dep) = state.targets[i]
            .target
            .depends_on
            .iter()
            .find(|&&d| state.targets[d].send_state != SendState::Done)
        {
            let needs = state.targets[dep].target.snapshot.to_string();
            run.say(
                format_args!("skipping {snapshot}: it needs {needs} first"),
                json!({"event": "skipped", "snapshot": snapshot.to_string(), "needs": needs}),
            );
            continue;
        }
        if session.is_none() {
            opened_session = true;
            let mut s = connector.connect(&qube)?;
            rx = Some(inventory(&mut s, &root)?);
            if auth.is_some() {
                store_wrapped_key(&mut s, &root, store.dir())?;
            }
            session = Some(s);
        }
        let view = rx.as_ref().expect("inventory with the session");
        let step = decide(&state.targets[i], &root, view, &inv.zfs, opts.patching);
        let step = match step {
            Ok(s) => s,
            Err(e) => {
                record_failure(store, state, i, &e, &mut security, &run)?;
                failed.push(i);
                continue;
            }
        };
        match step {
            Step::AlreadyThere => {
                if let (Some(a), DatasetKind::Volume) = (&auth, state.targets[i].target.kind) {
                    let s = session.as_mut().expect("open session");
                    let _ = a.store_pending(s, &root, snapshot.dataset().as_str(), &run);
                }
                run.say(
                    format_args!(
                        "{snapshot} is already on the receiver with the same guid; marking it done"
                    ),
                    json!({"event": "done", "snapshot": snapshot.to_string(), "bytes": 0, "already_there": true}),
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
                // A resumed stream is what is left of the target: estimate that.
                let estimate = match mode {
                    proto::ReceiveMode::Resume { .. } => stream_size(runner, &args).ok(),
                    _ => t.size_estimate,
                };
                let request = proto::ReceiveRequest {
                    root: root.clone(),
                    destination: dest.dataset().clone(),
                    snapshot: dest.clone(),
                    guid,
                    kind: match t.target.kind {
                        DatasetKind::Filesystem => proto::DatasetKind::Filesystem,
                        DatasetKind::Volume => proto::DatasetKind::Volume,
                    },
                    mode,
                    origin,
                };
                let kind = request.kind;
                let how = t.target.describe();
                let mut tap = match (&auth, kind) {
                    (Some(a), proto::DatasetKind::Volume) => {
                        let s = session.as_mut().expect("open session");
                        a.prepare(runner, s, &root, inv, &snapshot, &request.mode, &run)
                    }
                    _ => None,
                };
                run.say(
                    format_args!(
                        "sending {snapshot} ({how}){}",
                        note.as_ref().map(|n| format!(", {n}")).unwrap_or_default()
                    ),
                    json!({"event": "start", "snapshot": snapshot.to_string(), "how": how, "note": note, "estimate": estimate}),
                );
                // Saved before the first byte moves: a crash from here on resumes, not restarts.
                state.targets[i].send_state = SendState::Partial;
                store.save(state)?;
                let s = session.as_mut().expect("open session");
                let transfer = Transfer {
                    request,
                    args: &args,
                    expected_guid: guid,
                    backup: &state.name,
                    tap: tap.as_mut(),
                };
                let progress = run.target(snapshot.to_string(), estimate);
                match stream_target(runner, s, transfer, progress) {
                    Outcome::Done { bytes, stream_hash } => {
                        sent_bytes += bytes;
                        let manifest = match (&auth, tap) {
                            (Some(a), Some(tap)) => {
                                let s = session.as_mut().expect("open session");
                                Some(a.finish(tap, s, &root, snapshot.dataset().as_str(), &run))
                            }
                            _ => (kind == proto::DatasetKind::Volume)
                                .then_some(ManifestState::Missing),
                        };
                        if let Some(view) = rx.as_mut() {
                            view.record(&dest, guid, kind)?;
                        }
                        let t = &mut state.targets[i];
                        t.send_state = SendState::Done;
                        t.received_guid = Some(guid);
                        t.last_error = None;
                        t.sent_stream = Some(SentStream {
                            bytes,
                            blake3: blake3::Hash::from_bytes(stream_hash).to_hex().to_string(),
                        });
                        t.manifest = manifest;
                        store.save(state)?;
                        run.say(
                            format_args!(
                                "{} {snapshot} ({})",
                                style.green("sent"),
                                human_bytes(bytes)
                            ),
                            json!({"event": "done", "snapshot": snapshot.to_string(), "bytes": bytes}),
                        );
                    }
                    Outcome::Failed {
                        mut error,
                        session_usable,
                    } => {
                        let silent = session.as_ref().is_some_and(Client::timed_out);
                        if !session_usable {
                            // How the call ended says why (the agent's exit, what it printed).
                            let ended = session.take().and_then(Client::close);
                            if let (Error::Receiver(m), Some(how)) = (&mut error, ended) {
                                m.push_str(&format!(" (the call: {how})"));
                            }
                            rx = None;
                        }
                        record_failure(store, state, i, &error, &mut security, &run)?;
                        failed.push(i);
                        if silent {
                            // A receiver that went silent once would cost the timeout again
                            // for every target left: end the run here instead.
                            stopped_at = Some(i + 1);
                            break;
                        }
                    }
                }
            }
        }
    }
    if let Some(a) = &auth {
        // The run's record: after anything was attempted, or once for a backup without one.
        if (opened_session || state.last_set.is_none()) && stopped_at.is_none() {
            if session.is_none() {
                session = connector.connect(&qube).ok();
            }
            if let Some(s) = session.as_mut() {
                a.store_set(runner, s, &root, inv, store, state, &run)?;
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
    run.say(
        format_args!(
            "sent {} in this run; {done}/{total} targets done",
            human_bytes(sent_bytes)
        ),
        json!({"event": "summary", "bytes": sent_bytes, "done": done, "targets": total, "failed": failed.len(), "not_ready": not_ready}),
    );
    if let Some(from) = stopped_at {
        let left: Vec<String> = state.targets[from..]
            .iter()
            .filter(|t| t.send_state != SendState::Done)
            .map(|t| t.target.snapshot.to_string())
            .collect();
        if !left.is_empty() {
            crate::output::stderr_line(format_args!(
                "not attempted, because the receiver stopped responding: {}",
                left.join(", ")
            ));
        }
        return Err(Error::Receiver(format!(
            "the receiver stopped responding, so the run ended after one timeout; {} target(s) were not attempted. Check the backup qube (is it busy, or hung?), then run `send {}` again: finished targets are kept, the interrupted one resumes",
            left.len(),
            state.name
        )));
    }
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
    if !not_ready.is_empty() {
        return Err(Error::Partial(format!(
            "every ready target was sent, but {} were not ready (their snapshots do not exist yet): {}. Shut their qubes down, run `snapshot {name}`, then `send {name}` again",
            total - done,
            not_ready.join(", "),
            name = state.name
        )));
    }
    if done < total {
        return Err(Error::Send(format!(
            "{} target(s) were skipped",
            total - done
        )));
    }
    run.say(
        style.green("send completed successfully!"),
        json!({"event": "completed"}),
    );
    Ok(())
}

/// What `send` needs to authenticate zvol streams: the keys, this medium's id, the chain
/// store and the spool.
struct Auth<'k> {
    keys: &'k Keys,
    medium: String,
    chains: Chains,
    spool_root: std::path::PathBuf,
}

impl Auth<'_> {
    /// Stores manifests of `dataset` left in the spool by an earlier run (whose upload failed
    /// or was interrupted). A failure is a warning: the data is on the medium, the manifest
    /// waits for the next run.
    fn store_pending(
        &self,
        s: &mut Client,
        root: &proto::DatasetName,
        dataset: &str,
        run: &Run,
    ) -> bool {
        let spool = Spool::new(&self.spool_root, dataset);
        let stored = store_spooled(
            s,
            root,
            &self.medium,
            &self.chains,
            &spool,
            dataset,
            &self.keys.manifest,
        );
        if let Err(e) = &stored {
            run.say(
                format_args!("warning: the manifests of {dataset} stay in dom0's spool, not yet on the medium ({e}); the next send stores them"),
                json!({"event": "warning", "dataset": dataset, "manifest_pending": true, "error": e.to_string()}),
            );
        }
        stored.is_ok()
    }

    /// The tap of a zvol target's stream, or `None` (said why) when this stream cannot have
    /// manifests.
    #[allow(clippy::too_many_arguments)]
    fn prepare(
        &self,
        runner: &dyn Runner,
        s: &mut Client,
        root: &proto::DatasetName,
        inv: &Inventory,
        snapshot: &proto::SnapshotName,
        mode: &proto::ReceiveMode,
        run: &Run,
    ) -> Option<VolumeTap> {
        let dataset = snapshot.dataset().as_str();
        let _ = self.store_pending(s, root, dataset, run);
        let spool = Spool::new(&self.spool_root, dataset);
        let untapped = |why: String| {
            run.say(
                format_args!("note: {snapshot} is sent without a manifest: {why}"),
                json!({"event": "note", "snapshot": snapshot.to_string(), "unauthenticated": true, "why": why}),
            );
            None
        };
        let last = match self.chains.last(&self.medium, dataset, &self.keys.manifest) {
            Ok(last) => last,
            Err(e) => return untapped(e.to_string()),
        };
        let (start, resume) = match chain_start(mode, last.as_ref(), &spool) {
            Ok(x) => x,
            Err(why) => return untapped(why),
        };
        let geometry = match volume_geometry(runner, dataset) {
            Ok(g) => g,
            Err(e) => return untapped(format!("its volume size could not be read: {e}")),
        };
        let (qube, volume) = volume_identity(inv, dataset);
        let volume = qzb_protocol::manifest::Volume {
            qube,
            volume,
            dataset: dataset.to_owned(),
            volblocksize: geometry.volblocksize,
        };
        match VolumeTap::new(
            spool,
            volume,
            self.keys.manifest,
            start,
            geometry.volsizes,
            resume,
        ) {
            Ok(tap) => Some(tap),
            Err(e) => untapped(format!("its manifest could not be started: {e}")),
        }
    }

    /// Captures the settings of the backed-up qubes and stores them with the run's set
    /// index. Failing to capture settings or to store the set is a warning: the data is on
    /// the medium, and the next run stores a new set.
    #[allow(clippy::too_many_arguments)]
    fn store_set(
        &self,
        runner: &dyn Runner,
        s: &mut Client,
        root: &proto::DatasetName,
        inv: &Inventory,
        store: &Store,
        state: &mut BackupState,
        run: &Run,
    ) -> Result<()> {
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        // Set times name the blobs and order the sets: strictly increasing per backup, even
        // for two runs in one second (or a clock set back), so no set replaces another.
        let now = match &state.last_set {
            Some(last) if last.created >= clock => last.created + 1,
            _ => clock,
        };
        let datasets: Vec<String> = state
            .targets
            .iter()
            .filter(|t| t.send_state == SendState::Done)
            .map(|t| t.target.snapshot.dataset().to_string())
            .collect();
        let qubes = settings::qubes_of_datasets(inv, datasets.iter().map(String::as_str));
        let sealed = settings::capture(runner, inv, &qubes, now)
            .map_err(|e| e.to_string())
            .and_then(|doc| doc.seal(&self.keys.metadata).map_err(|e| e.to_string()));
        let sealed = match sealed {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                run.say(
                    format_args!("warning: the settings of the backed-up qubes were not captured ({e}); this run's set index has none, so a restore would recreate these qubes without their settings"),
                    json!({"event": "warning", "settings": false, "error": e}),
                );
                None
            }
        };
        let settings_hash = sealed.as_ref().map(|b| *blake3::hash(b).as_bytes());
        let stored = sets::build_index(
            state,
            self.keys,
            &self.medium,
            &self.chains,
            settings_hash,
            now,
        )
        .and_then(|index| {
            sets::store_set(s, root, &self.medium, &index, sealed.as_deref(), self.keys)
                .map(|last| (last, index))
        });
        match stored {
            Ok((last, index)) => {
                run.say(
                    format_args!(
                        "stored the set index ({} snapshot(s){}) and the settings of {} qube(s) on the medium",
                        index.entries.len(),
                        if index.complete { "" } else { ", incomplete" },
                        if sealed.is_some() { qubes.len() } else { 0 }
                    ),
                    json!({"event": "set", "entries": index.entries.len(), "complete": index.complete, "qubes": qubes, "settings": sealed.is_some()}),
                );
                state.last_set = Some(last);
                store.save(state)
            }
            Err(e) => {
                run.say(
                    format_args!("warning: this run's set index was not stored on the medium ({e}); the next send stores one"),
                    json!({"event": "warning", "set": false, "error": e.to_string()}),
                );
                Ok(())
            }
        }
    }

    /// After a zvol stream was received: its manifests into the spool, then onto the medium.
    fn finish(
        &self,
        tap: VolumeTap,
        s: &mut Client,
        root: &proto::DatasetName,
        dataset: &str,
        run: &Run,
    ) -> ManifestState {
        match tap.finish() {
            Ok(_) if self.store_pending(s, root, dataset, run) => ManifestState::Stored,
            Ok(_) => ManifestState::Pending,
            Err(e) => {
                run.say(
                    format_args!("warning: no manifest for the snapshot of {dataset} just sent ({e}); `verify` will report it unverifiable until the next full send"),
                    json!({"event": "warning", "dataset": dataset, "error": e.to_string()}),
                );
                ManifestState::Missing
            }
        }
    }
}

/// The qube and volume name a zvol belongs to (from the Admin API's volume list), or `dom0`
/// and a name made from the dataset's last component for a zvol of no qube.
fn volume_identity(inv: &Inventory, dataset: &str) -> (String, String) {
    for q in inv.qubes.qubes.values() {
        if let Some(v) = q.volumes.iter().find(|v| v.vid == dataset) {
            if qzb_protocol::manifest::check_volume_name(&v.name).is_ok()
                && qzb_protocol::names::QubeName::parse(&q.name).is_ok()
            {
                return (q.name.clone(), v.name.clone());
            }
        }
    }
    let last = dataset.rsplit('/').next().unwrap_or("zvol");
    let mut volume: String = last
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(qzb_protocol::manifest::MAX_VOLUME_LEN)
        .collect();
    if !volume.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        volume.insert(0, 'v');
        volume.truncate(qzb_protocol::manifest::MAX_VOLUME_LEN);
    }
    ("dom0".to_owned(), volume)
}

/// Stores dom0's wrapped key on the medium (at every session: it is small, and a changed
/// passphrase reaches each medium at its next send), so a fresh dom0 can unlock the key from
/// the medium and the passphrase alone.
fn store_wrapped_key(
    s: &mut Client,
    root: &proto::DatasetName,
    metadata_dir: &std::path::Path,
) -> Result<()> {
    let Some(bytes) = crate::key::wrapped_bytes(metadata_dir)? else {
        return Ok(());
    };
    let name = proto::BlobName::parse("key/wrapped").expect("a valid blob name");
    s.put_blob(root, &name, &mut bytes.as_slice(), bytes.len() as u64)
}
