//! `abort`: discards partial receive state (`zfs receive -A`) on the receiver.

use crate::error::{Error, Result};
use crate::output::outside;
use crate::state::{BackupState, SendState, Store};
use crate::stream::qrexec::Connect;
use crate::stream::receiver::{inventory, on_receiver, reply_name};
use qzb_protocol as proto;
use qzb_protocol::names::DatasetName;
use std::io::{IsTerminal, Write};

/// `abort`: discards partial receive state (`zfs receive -A`) of this backup's destinations.
pub fn abort(
    connector: &dyn Connect,
    store: &Store,
    state: &mut BackupState,
    only: Option<&str>,
    yes: bool,
) -> Result<()> {
    let config = state.config()?;
    let root = config.receiver_dataset.clone();
    let mut session = connector.connect(config.receiver_qube.as_str())?;
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
            root: root.clone(),
            dataset: d.clone(),
        });
        match session.request(&req)? {
            proto::Reply::Aborted { dataset } if dataset.as_str() == d.as_str() => {
                crate::outln!("discarded partial state of {d}")
            }
            proto::Reply::Error(e) => {
                return Err(Error::Receiver(format!(
                    "cannot discard the partial state of {d}: {}",
                    outside(&e.message)
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
