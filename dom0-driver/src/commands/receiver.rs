//! `send`, `verify` and `abort`: the commands that open a session to the receiver agent. Each
//! takes the way to reach it (`Connect`), so tests run them against the agent in memory.

use crate::commands::refresh_snapshots;
use crate::error::Result;
use crate::state::Store;
use crate::stream;
use crate::stream::progress::Mode;
use crate::stream::qrexec::Connect;
use crate::system::inventory;
use crate::system::runner::Runner;

/// `send NAME`: every target that is not done, resuming interrupted ones.
pub fn send(
    store: &Store,
    runner: &dyn Runner,
    connector: &dyn Connect,
    name: &str,
    progress: Mode,
) -> Result<()> {
    let _lock = store.lock(name)?;
    let mut state = store.load(name)?;
    let config = state.config()?;
    let inv = inventory::collect_zfs_only(runner)?;
    refresh_snapshots(&mut state, &inv)?;
    store.save(&state)?;
    let opts = stream::send::SendOptions {
        patching: config.patching,
        progress,
    };
    stream::send::send(runner, connector, store, &mut state, &inv, &opts)
}

/// `verify NAME`.
pub fn verify(store: &Store, connector: &dyn Connect, name: &str) -> Result<()> {
    let state = store.load(name)?;
    stream::verify::verify(connector, &state)
}

/// `abort NAME [DATASET]`.
pub fn abort(
    store: &Store,
    connector: &dyn Connect,
    name: &str,
    dataset: Option<&str>,
    yes: bool,
) -> Result<()> {
    let _lock = store.lock(name)?;
    let mut state = store.load(name)?;
    stream::abort::abort(connector, store, &mut state, dataset, yes)
}
