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
    // With a key, the manifests name each zvol's qube and volume: that needs the Admin API.
    let inv = if crate::key::load(store.dir())?.is_some() {
        inventory::collect(runner)?
    } else {
        inventory::collect_zfs_only(runner)?
    };
    refresh_snapshots(&mut state, &inv)?;
    store.save(&state)?;
    let opts = stream::send::SendOptions {
        patching: config.patching,
        progress,
    };
    stream::send::send(runner, connector, store, &mut state, &inv, &opts)
}

/// `verify NAME [--quick]`.
pub fn verify(
    store: &Store,
    connector: &dyn Connect,
    name: &str,
    quick: bool,
    progress: Mode,
) -> Result<()> {
    let state = store.load(name)?;
    let keys = if quick {
        None
    } else {
        crate::key::load(store.dir())?
    };
    let opts = stream::verify::VerifyOptions { quick, progress };
    stream::verify::verify(connector, &state, store.dir(), keys.as_ref(), &opts)
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
