//! Reading a zvol snapshot back from the medium, checked block by block against its chain of
//! manifests: what `verify` does (dropping the blocks) and what restore does (writing them).

use crate::error::{Error, Result};
use crate::output::outside;
use crate::stream::client::Client;
use crate::stream::medium::{fetch_chain, NoChain};
use crate::stream::progress::Run;
use qzb_protocol::manifest::{BlockCheck, ChainMerge, Expected};
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

/// Where the blocks of a checked read-back go.
pub trait Verified {
    /// Once the chain is known, before any block: the volume's size and block size.
    fn begin(&mut self, volsize: u64, volblocksize: u64) -> Result<()>;
    /// A block whose tag matched (or an all-zero block where zeros were expected), in
    /// increasing offset order. Blocks not sent are zeros.
    fn block(&mut self, offset: u64, data: &[u8]) -> Result<()>;
    /// The whole volume checked: every block came and matched. Only now may a writer commit.
    fn end(&mut self) -> Result<()>;
}

/// For `verify`: nothing is kept.
pub struct Discard;

impl Verified for Discard {
    fn begin(&mut self, _: u64, _: u64) -> Result<()> {
        Ok(())
    }
    fn block(&mut self, _: u64, _: &[u8]) -> Result<()> {
        Ok(())
    }
    fn end(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Reads one zvol snapshot back and checks it against its chain. `Ok(None)`: no manifest
/// (an error if dom0 recorded storing it there: `stored`, see [`stored_here`]).
#[allow(clippy::too_many_arguments)]
pub fn read_back_checked(
    session: &mut Client,
    root: &qzb_protocol::DatasetName,
    dataset: &str,
    dest: &qzb_protocol::SnapshotName,
    guid: u64,
    stored: Option<u64>,
    key: &[u8; 32],
    scratch: &Path,
    run: &mut Run,
    sink: &mut dyn Verified,
) -> Result<Option<qzb_protocol::manifest::BlockCheckSummary>> {
    let chain = match fetch_chain(session, root, dataset, guid, key, scratch)? {
        Ok(chain) => chain,
        Err(NoChain::NoManifest) => {
            return match stored {
                Some(seq) => Err(Error::Security(format!(
                    "the receiver lists no manifest of it, but dom0 stored one on this medium (sequence number {seq}): it was removed, or the receiver hides it"
                ))),
                None => Ok(None),
            }
        }
    };
    let open =
        |chain: &crate::stream::medium::FetchedChain| -> Result<ChainMerge<BufReader<File>>> {
            let mut parts = Vec::new();
            for (h, p) in chain.headers.iter().zip(&chain.bodies) {
                let f = File::open(p)
                    .map_err(|e| Error::State(format!("cannot open {}: {e}", p.display())))?;
                parts.push((h.clone(), BufReader::new(f)));
            }
            ChainMerge::new(parts)
                .map_err(|e| Error::Security(format!("{}: {e}", outside(dataset))))
        };
    // A first pass over the merged manifests counts the data to expect, for progress.
    let mut merge = open(&chain)?;
    let (volsize, volblocksize) = (merge.volsize(), merge.volblocksize());
    let mut expected = 0u64;
    while let Some(region) = merge
        .next_region()
        .map_err(|e| Error::Security(format!("{}: {e}", outside(dataset))))?
    {
        if let Expected::Data { .. } = region {
            expected += volblocksize;
        }
    }
    sink.begin(volsize, volblocksize)?;
    let mut check = BlockCheck::new(open(&chain)?, *key);
    let mut progress = run.target(dest.to_string(), Some(expected));
    let mut seen = 0u64;
    session.read_back(root, dest, volblocksize, volsize, &mut |offset, block| {
        seen += block.len() as u64;
        progress.update(seen, false);
        check
            .block(offset, block)
            .map_err(|e| Error::Security(e.to_string()))?;
        sink.block(offset, block)
    })?;
    progress.update(seen, true);
    let summary = check.finish().map_err(|e| Error::Security(e.to_string()))?;
    sink.end()?;
    Ok(Some(summary))
}
