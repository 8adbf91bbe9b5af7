//! The manifests on the medium: stored by `send` after a snapshot is received, fetched by
//! `verify` (and later restore). The agent keeps them as opaque blobs; dom0 checks every MAC
//! before it reads a byte of content, and every body against its verified header.
//!
//! Blob names, per volume dataset (`<id>` = [`name_id`] of the source dataset):
//! `manifests/<id>/<seq as 16 hex>-<guid as 16 hex>.head` (the header's encoding, then its
//! 32-byte MAC) and `.body` (the entries).

use crate::error::{Error, Result};
use crate::output::outside;
use crate::state::chains::{name_id, Chains};
use crate::stream::client::Client;
use crate::stream::tap::{split_head, Spool};
use qzb_protocol::manifest::{ManifestHeader, ENTRY_LEN, MAX_HEADER_LEN};
use qzb_protocol::{BlobName, DatasetName};
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

/// Longest chain `verify` follows back to its full stream.
const MAX_CHAIN: usize = 100_000;

fn blob(name: String) -> Result<BlobName> {
    BlobName::parse(&name).map_err(|e| Error::State(format!("blob name {name}: {e}")))
}

fn dir_blob(dataset: &str) -> Result<BlobName> {
    blob(format!("manifests/{}", name_id(dataset)))
}

fn head_blob(dataset: &str, seq: u64, guid: u64) -> Result<BlobName> {
    blob(format!(
        "manifests/{}/{seq:016x}-{guid:016x}.head",
        name_id(dataset)
    ))
}

fn body_blob(dataset: &str, seq: u64, guid: u64) -> Result<BlobName> {
    blob(format!(
        "manifests/{}/{seq:016x}-{guid:016x}.body",
        name_id(dataset)
    ))
}

/// Verifies a stored head (encoding ‖ MAC) with the key; names `what` in the error.
pub fn verify_head(bytes: &[u8], key: &[u8; 32], what: &str) -> Result<ManifestHeader> {
    let (head, mac) = split_head(bytes)
        .ok_or_else(|| Error::Security(format!("{what}: manifest header too short")))?;
    ManifestHeader::verify(head, &mac, key).map_err(|e| {
        Error::Security(format!(
            "{what}: {e}; it was altered, or made with another key"
        ))
    })
}

/// Stores every finished manifest of `dataset` waiting in the spool on the medium, in chain
/// order, and records each as the volume's last header on this medium. Returns the headers
/// stored. A body goes before its head, so a medium never holds a head without its body.
pub fn store_spooled(
    session: &mut Client,
    root: &DatasetName,
    medium: &str,
    chains: &Chains,
    spool: &Spool,
    dataset: &str,
    key: &[u8; 32],
) -> Result<Vec<ManifestHeader>> {
    let io = |what: &str, p: &Path, e: std::io::Error| {
        Error::State(format!("cannot {what} {}: {e}", p.display()))
    };
    let mut pending = Vec::new();
    for (guid, path) in spool
        .finished()
        .map_err(|e| io("list", Path::new("spool"), e))?
    {
        let bytes = fs::read(&path).map_err(|e| io("read", &path, e))?;
        let header = verify_head(&bytes, key, &path.display().to_string())?;
        if header.snapshot_guid != guid || header.dataset != dataset {
            return Err(Error::State(format!(
                "{} holds the manifest of another snapshot",
                path.display()
            )));
        }
        pending.push((header, bytes));
    }
    pending.sort_by_key(|(h, _)| h.seq);
    let mut stored = Vec::new();
    for (header, head_bytes) in pending {
        let guid = header.snapshot_guid;
        let body_path = spool.body_path(guid);
        let len = header.entries * ENTRY_LEN as u64;
        let file = File::open(&body_path).map_err(|e| io("open", &body_path, e))?;
        header
            .verify_body(BufReader::new(&file))
            .map_err(|e| Error::State(format!("{}: {e}", body_path.display())))?;
        let mut body =
            BufReader::new(File::open(&body_path).map_err(|e| io("open", &body_path, e))?);
        session.put_blob(root, &body_blob(dataset, header.seq, guid)?, &mut body, len)?;
        session.put_blob(
            root,
            &head_blob(dataset, header.seq, guid)?,
            &mut head_bytes.as_slice(),
            head_bytes.len() as u64,
        )?;
        let (_, mac) = split_head(&head_bytes).expect("verified above");
        chains.record(medium, &header, &mac)?;
        spool
            .remove(guid)
            .map_err(|e| io("remove", &body_path, e))?;
        stored.push(header);
    }
    Ok(stored)
}

/// A chain fetched from the medium: verified headers, oldest first, with their bodies in
/// temporary files (verified against the headers); the files go when this is dropped.
pub struct FetchedChain {
    pub headers: Vec<ManifestHeader>,
    pub bodies: Vec<PathBuf>,
    dir: PathBuf,
}

impl Drop for FetchedChain {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Why a volume's chain cannot be had from the medium.
pub enum NoChain {
    /// No manifest of the snapshot is on the medium: it was sent before authenticated backups
    /// or without a key.
    NoManifest,
}

/// Fetches the manifests of `dataset` that lead to the snapshot with `guid`: its head, then
/// each parent's, back to a full stream; every head MAC-checked before its fields are used,
/// every body checked against its header. `tmp` is a scratch directory (removed afterwards).
pub fn fetch_chain(
    session: &mut Client,
    root: &DatasetName,
    dataset: &str,
    guid: u64,
    key: &[u8; 32],
    tmp: &Path,
) -> Result<std::result::Result<FetchedChain, NoChain>> {
    let listed = session.list_blobs(root, Some(&dir_blob(dataset)?))?;
    // Only the names are used to find heads; nothing in them is trusted: each head's MAC and
    // fields are checked once fetched.
    let head_of = |want: u64| {
        listed.iter().find(|b| {
            b.name
                .as_str()
                .rsplit('/')
                .next()
                .and_then(|n| n.strip_suffix(".head"))
                .and_then(|n| n.split_once('-'))
                .and_then(|(_, g)| u64::from_str_radix(g, 16).ok())
                == Some(want)
        })
    };
    let mut headers = Vec::new();
    let mut want = guid;
    loop {
        let Some(found) = head_of(want) else {
            if headers.is_empty() {
                return Ok(Err(NoChain::NoManifest));
            }
            return Err(Error::Security(format!(
                "the manifest of the parent (guid {want}) of sequence number {} of {} is missing on the medium",
                headers.last().map_or(0, |h: &ManifestHeader| h.seq),
                outside(dataset)
            )));
        };
        let mut bytes = Vec::new();
        session.get_blob(root, &found.name, (MAX_HEADER_LEN + 32) as u64, &mut bytes)?;
        let header = verify_head(&bytes, key, found.name.as_str())?;
        if header.snapshot_guid != want || header.dataset != dataset {
            return Err(Error::Security(format!(
                "{} holds the manifest of another snapshot or volume",
                found.name
            )));
        }
        want = header.parent_guid;
        headers.push(header);
        if want == 0 {
            break;
        }
        if headers.len() >= MAX_CHAIN {
            return Err(Error::Security(format!(
                "the manifest chain of {} is longer than {MAX_CHAIN}",
                outside(dataset)
            )));
        }
    }
    headers.reverse();
    qzb_protocol::manifest::check_chain(&headers)
        .map_err(|e| Error::Security(format!("{}: {e}", outside(dataset))))?;

    let dir = tmp.join(name_id(dataset));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)
        .map_err(|e| Error::State(format!("cannot create {}: {e}", dir.display())))?;
    let mut chain = FetchedChain {
        headers: Vec::new(),
        bodies: Vec::new(),
        dir: dir.clone(),
    };
    for header in &headers {
        let path = dir.join(format!("{:016x}.body", header.snapshot_guid));
        let io = |e: std::io::Error| Error::State(format!("cannot write {}: {e}", path.display()));
        let len = header.entries * ENTRY_LEN as u64;
        let mut out = BufWriter::new(File::create(&path).map_err(io)?);
        session.get_blob(
            root,
            &body_blob(dataset, header.seq, header.snapshot_guid)?,
            len,
            &mut out,
        )?;
        out.flush().map_err(io)?;
        drop(out);
        let file = File::open(&path).map_err(io)?;
        header.verify_body(BufReader::new(file)).map_err(|e| {
            Error::Security(format!(
                "the manifest body of sequence number {} of {}: {e}",
                header.seq,
                outside(dataset)
            ))
        })?;
        chain.bodies.push(path);
    }
    chain.headers = headers;
    Ok(Ok(chain))
}
