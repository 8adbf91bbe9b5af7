//! `verify`: every sent target's guid, on both sides.

use crate::error::{Error, Result};
use crate::state::{BackupState, SendState};
use crate::stream::qrexec::Connect;
use crate::stream::receiver::{inventory, on_receiver};

/// `verify`: every done target's guid on both sides.
pub fn verify(connector: &dyn Connect, state: &BackupState) -> Result<()> {
    let config = state.config()?;
    if !state
        .targets
        .iter()
        .any(|t| t.send_state == SendState::Done)
    {
        return Err(Error::NothingDone(format!(
            "no target of {} has been sent yet, so there is nothing to verify; run `send {}` first",
            state.name, state.name
        )));
    }
    let root = &config.receiver_dataset;
    let mut session = connector.connect(config.receiver_qube.as_str())?;
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
