//! Blobs: opaque, size-bounded files the agent keeps for dom0 (manifests, set indexes) in a
//! filesystem of its own under the receiver root. The agent never interprets their contents;
//! dom0 authenticates them (MAC) before it parses anything.
//!
//! Layout: the filesystem `<root>/.qzb-meta` (no backed-up dataset can have that name: the
//! first component under the root is a pool name, which starts with a letter), created on the
//! first `PutBlob` and mounted at `<meta base>/<root>/.qzb-meta` whatever the root's own
//! mountpoint is (`none` and `legacy` included). A blob `a/b/c` is the file `a/b/c` below that
//! mountpoint. Before each use the agent checks that the filesystem is mounted exactly there
//! (and mounts it if it is not), so it never writes into the backup qube's own root instead.
//! A pool imported with an altroot mounts (and reports) it under that altroot; that is where
//! the blobs then are.
//!
//! Writes are atomic: a temporary file (`.tmp-...`, a name no blob can have) in the blob's
//! directory, fsync, rename over the blob, fsync of the directory. Symlinks are never
//! followed: directories are checked with `symlink_metadata`, files opened with `O_NOFOLLOW`
//! (and the temporary file with `O_EXCL`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use qzb_protocol::{
    read_frame, write_reply, BlobInfo, BlobName, DatasetName, ErrorClass, FrameKind,
    GetBlobRequest, ListBlobsRequest, ProtocolError, PutBlobRequest, Reply, StreamFramer,
    StreamVerifier, MAX_BLOBS_LISTED, MAX_BLOB_COMPONENTS, MAX_DATA_CHUNK,
};

use crate::classify::classify_zfs_stderr;
use crate::serve::{error_reply, AgentError, Config};
use crate::zfs::Zfs;

/// The last component of the agent's metadata filesystem under the receiver root.
pub const META_DATASET_LEAF: &str = ".qzb-meta";
/// Where the metadata filesystems are mounted by default: `<base>/<root>/.qzb-meta`.
pub const DEFAULT_META_BASE: &str = "/run/qubes-zfs-backup/meta";

/// `O_NOFOLLOW` (Linux, from `asm-generic/fcntl.h`; std has no constant and `libc` is not a
/// dependency). Other architectures rely on the `symlink_metadata` checks alone.
#[cfg(any(target_arch = "x86_64", target_arch = "x86"))]
const O_NOFOLLOW: i32 = 0o400000;
#[cfg(any(target_arch = "aarch64", target_arch = "arm"))]
const O_NOFOLLOW: i32 = 0o100000;
#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm"
)))]
const O_NOFOLLOW: i32 = 0;

/// A refusal or failure, as the reply says it.
type Refusal = (ErrorClass, String);

/// The metadata filesystem of `root`.
pub fn meta_dataset(root: &DatasetName) -> Result<DatasetName, String> {
    DatasetName::parse(&format!("{root}/{META_DATASET_LEAF}")).map_err(|e| {
        format!("the receiver root {root} is too long for the agent's metadata filesystem: {e}")
    })
}

/// Where the metadata filesystem of `root` is mounted: `<base>/<root>/.qzb-meta`. Dataset
/// names have no `.`/`..` component and no empty one, so this stays below `base` and two roots
/// never share it.
pub fn meta_mountpoint(base: &Path, meta: &DatasetName) -> PathBuf {
    base.join(meta.as_str())
}

/// The directory holding `root`'s blobs; `None` if nothing was ever stored (and `create` is
/// false). With `create`, makes the filesystem on first use.
fn blob_dir(
    config: &Config,
    zfs: &dyn Zfs,
    root: &DatasetName,
    create: bool,
) -> Result<Option<PathBuf>, Refusal> {
    let internal = |m: String| (ErrorClass::Internal, m);
    let Some(base) = &config.meta_base else {
        return Err(internal(
            "this agent has no blob storage configured (meta base)".into(),
        ));
    };
    if !base.is_absolute() {
        return Err(internal(format!(
            "the blob storage base {} is not an absolute path",
            base.display()
        )));
    }
    let zfs_err = |e: crate::zfs::ZfsError| (classify_zfs_stderr(&e.stderr), e.to_string());
    match zfs.dataset_exists(root) {
        Ok(true) => {}
        Ok(false) => {
            return Err((
                ErrorClass::NotFound,
                format!("receiver root {root} does not exist"),
            ))
        }
        Err(e) => return Err(zfs_err(e)),
    }
    let meta = meta_dataset(root).map_err(|m| (ErrorClass::InvalidRequest, m))?;
    let expected = meta_mountpoint(base, &meta);
    let expected_text = expected
        .to_str()
        .ok_or_else(|| internal("the blob storage path is not UTF-8".into()))?
        .to_owned();
    let mut state = zfs.mount_state(&meta).map_err(zfs_err)?;
    if state.is_none() {
        if !create {
            return Ok(None);
        }
        zfs.create_meta(&meta, &expected_text).map_err(zfs_err)?;
        state = zfs.mount_state(&meta).map_err(zfs_err)?;
    }
    let Some(mut state) = state else {
        return Err(internal(format!("{meta} does not exist after zfs create")));
    };
    let Some(dir) = mount_location(&state.mountpoint, &expected_text).map(PathBuf::from) else {
        return Err(internal(format!(
            "{meta} has mountpoint {}, not {expected_text}; the agent keeps blobs only at its \
             own mountpoint (zfs set mountpoint={expected_text} {meta})",
            qzb_protocol::text::quoted(&state.mountpoint)
        )));
    };
    if !state.mounted {
        zfs.mount(&meta).map_err(zfs_err)?;
        state = zfs.mount_state(&meta).map_err(zfs_err)?.unwrap_or(state);
        if !state.mounted {
            return Err(internal(format!("{meta} is not mounted after zfs mount")));
        }
    }
    match fs::symlink_metadata(&dir) {
        Ok(m) if m.is_dir() => Ok(Some(dir)),
        Ok(_) => Err(internal(format!("{} is not a directory", dir.display()))),
        Err(e) => Err(internal(format!("cannot use {}: {e}", dir.display()))),
    }
}

/// Where the metadata filesystem really is, from its reported `mountpoint`: exactly the
/// agent's path, or that path under the pool's altroot (`zpool import -R ALTROOT`: ZFS then
/// mounts at, and reports, `ALTROOT` + the path set at create). Anything else (`none`,
/// `legacy`, a changed property) is `None`: refused rather than written through.
fn mount_location<'a>(reported: &'a str, expected: &str) -> Option<&'a str> {
    let altroot = reported.strip_suffix(expected)?;
    let is_altroot = altroot.len() > 1 && altroot.starts_with('/') && !altroot.ends_with('/');
    (altroot.is_empty() || is_altroot).then_some(reported)
}

fn io_refusal(what: String, e: &io::Error) -> Refusal {
    let class = match e.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => ErrorClass::NoSpace,
        io::ErrorKind::NotFound => ErrorClass::NotFound,
        _ => ErrorClass::Internal,
    };
    (class, format!("{what}: {e}"))
}

/// The directory of `name` below `dir`, created (mode 0700) where missing; every level must be
/// a real directory, never a symlink.
fn parent_dir(dir: &Path, name: &BlobName, create: bool) -> Result<PathBuf, Refusal> {
    let components: Vec<&str> = name.components().collect();
    let mut path = dir.to_path_buf();
    for component in &components[..components.len() - 1] {
        path.push(component);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err((
                    ErrorClass::InvalidRequest,
                    format!("blob {name}: {component} exists and is not a directory"),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&path)
                    .map_err(|e| io_refusal(format!("blob {name}: creating {component}"), &e))?;
            }
            Err(e) => return Err(io_refusal(format!("blob {name}"), &e)),
        }
    }
    Ok(path)
}

fn leaf(name: &BlobName) -> &str {
    name.components().last().unwrap_or(name.as_str())
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A temporary file being filled; removed on drop unless it was renamed into place.
struct TmpFile {
    path: PathBuf,
    file: Option<BufWriter<File>>,
}

impl Drop for TmpFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Handles `PutBlob`. A refusal before `BlobReady` leaves the session usable; a failure after
/// it ends the session (the rest of the stream cannot be told from requests).
pub(crate) fn put_blob<R: Read, W: Write>(
    config: &Config,
    zfs: &dyn Zfs,
    req: &PutBlobRequest,
    reader: &mut R,
    writer: &mut W,
) -> Result<(), AgentError> {
    let prepared = blob_dir(config, zfs, &req.root, true).and_then(|dir| {
        let dir = dir.expect("created");
        let parent = parent_dir(&dir, &req.name, true)?;
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = parent.join(format!(
            ".tmp-{}-{}-{n}",
            leaf(&req.name),
            std::process::id()
        ));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(O_NOFOLLOW)
            .open(&path)
            .map_err(|e| io_refusal(format!("blob {}: creating a temporary file", req.name), &e))?;
        Ok((
            parent,
            TmpFile {
                path,
                file: Some(BufWriter::with_capacity(256 << 10, file)),
            },
        ))
    });
    let (parent, mut tmp) = match prepared {
        Ok(p) => p,
        Err((class, message)) => {
            write_reply(writer, &error_reply(class, message))?;
            return Ok(());
        }
    };
    write_reply(writer, &Reply::BlobReady)?;

    let stored = receive_blob(req, reader, &mut tmp).and_then(|()| {
        let final_path = parent.join(leaf(&req.name));
        let file = tmp.file.as_mut().expect("open until renamed");
        let synced = file
            .flush()
            .and_then(|()| file.get_ref().sync_all())
            .and_then(|()| fs::rename(&tmp.path, &final_path))
            .and_then(|()| File::open(&parent).and_then(|d| d.sync_all()));
        synced.map_err(|e| io_refusal(format!("blob {}: storing", req.name), &e))?;
        tmp.file = None;
        Ok(())
    });
    drop(tmp);
    match stored {
        Ok(()) => {
            write_reply(
                writer,
                &Reply::BlobStored {
                    name: req.name.clone(),
                    len: req.len,
                },
            )?;
            Ok(())
        }
        Err((class, message)) => {
            let _ = write_reply(writer, &error_reply(class, &message));
            Err(AgentError::BlobFailed { class, message })
        }
    }
}

/// Reads the blob's data frames into `tmp`: exactly `req.len` bytes, then a verified end frame.
fn receive_blob<R: Read>(
    req: &PutBlobRequest,
    reader: &mut R,
    tmp: &mut TmpFile,
) -> Result<(), Refusal> {
    let stream = |e: ProtocolError| {
        let class = match e {
            ProtocolError::Io(_) | ProtocolError::Truncated { .. } => ErrorClass::StreamInterrupted,
            _ => ErrorClass::StreamCorrupt,
        };
        (class, format!("blob {}: {e}", req.name))
    };
    let mut verifier = StreamVerifier::new();
    let mut buf = Vec::new();
    let file = tmp.file.as_mut().expect("open");
    loop {
        match read_frame(reader, &mut buf).map_err(stream)? {
            Some(FrameKind::Data) => {
                let data = verifier.verify_data(&buf).map_err(stream)?;
                if verifier.bytes() > req.len {
                    return Err((
                        ErrorClass::StreamCorrupt,
                        format!(
                            "blob {}: more than the announced {} bytes arrived",
                            req.name, req.len
                        ),
                    ));
                }
                file.write_all(data)
                    .map_err(|e| io_refusal(format!("blob {}: writing", req.name), &e))?;
            }
            Some(FrameKind::End) => {
                verifier.verify_end(&buf).map_err(stream)?;
                if verifier.bytes() != req.len {
                    return Err((
                        ErrorClass::StreamCorrupt,
                        format!(
                            "blob {}: {} bytes arrived, {} were announced",
                            req.name,
                            verifier.bytes(),
                            req.len
                        ),
                    ));
                }
                return Ok(());
            }
            Some(other) => {
                return Err((
                    ErrorClass::ProtocolViolation,
                    format!("unexpected {} frame inside a blob", other.name()),
                ))
            }
            None => {
                return Err((
                    ErrorClass::StreamInterrupted,
                    format!(
                        "blob {}: the caller closed the stream before the end frame",
                        req.name
                    ),
                ))
            }
        }
    }
}

/// Opens a blob for reading without following a symlink; it must be a regular file.
fn open_blob(dir: &Path, name: &BlobName) -> Result<(File, u64), Refusal> {
    let parent = parent_dir(dir, name, false).map_err(|(class, m)| match class {
        ErrorClass::NotFound => (ErrorClass::NotFound, format!("no blob {name}")),
        _ => (class, m),
    })?;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(O_NOFOLLOW)
        .open(parent.join(leaf(name)))
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => (ErrorClass::NotFound, format!("no blob {name}")),
            _ => io_refusal(format!("blob {name}"), &e),
        })?;
    let meta = file
        .metadata()
        .map_err(|e| io_refusal(format!("blob {name}"), &e))?;
    if !meta.is_file() {
        return Err((ErrorClass::NotFound, format!("no blob {name} (not a file)")));
    }
    Ok((file, meta.len()))
}

/// Handles `GetBlob`: `Blob { len }`, then the bytes as data frames and an end frame.
pub(crate) fn get_blob<W: Write>(
    config: &Config,
    zfs: &dyn Zfs,
    req: &GetBlobRequest,
    writer: &mut W,
) -> Result<(), AgentError> {
    let opened = blob_dir(config, zfs, &req.root, false).and_then(|dir| {
        let dir = dir.ok_or_else(|| (ErrorClass::NotFound, format!("no blob {}", req.name)))?;
        let (file, len) = open_blob(&dir, &req.name)?;
        if len > req.max_len {
            return Err((
                ErrorClass::TooLarge,
                format!(
                    "blob {} has {len} bytes, more than the {} asked for",
                    req.name, req.max_len
                ),
            ));
        }
        Ok((file, len))
    });
    let (file, len) = match opened {
        Ok(o) => o,
        Err((class, message)) => {
            write_reply(writer, &error_reply(class, message))?;
            return Ok(());
        }
    };
    write_reply(writer, &Reply::Blob { len })?;
    // Stream the file as it is read, never more than one chunk in memory. If it shrank
    // meanwhile, the end frame says so (its length differs from the announced one).
    let mut framer = StreamFramer::new();
    let mut source = file.take(len);
    let mut chunk = vec![0u8; MAX_DATA_CHUNK];
    loop {
        let n = match source.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // The driver notices the missing bytes at the end frame.
            Err(_) => break,
        };
        framer.write_data(writer, &chunk[..n])?;
    }
    framer.finish(writer)?;
    Ok(())
}

/// Handles `ListBlobs`: every blob below the prefix (all of them without one), sorted.
pub(crate) fn list_blobs(config: &Config, zfs: &dyn Zfs, req: &ListBlobsRequest) -> Reply {
    let listed = blob_dir(config, zfs, &req.root, false).and_then(|dir| {
        let Some(dir) = dir else {
            return Ok(Vec::new());
        };
        let mut blobs = Vec::new();
        let (start, rel) = match &req.prefix {
            None => (dir, String::new()),
            Some(prefix) => {
                let mut path = dir;
                for c in prefix.components() {
                    path.push(c);
                    match fs::symlink_metadata(&path) {
                        Ok(m) if m.is_dir() => {}
                        _ => return Ok(Vec::new()),
                    }
                }
                (path, format!("{prefix}/"))
            }
        };
        let depth = req.prefix.as_ref().map_or(0, |p| p.components().count());
        walk(&start, &rel, depth, &mut blobs)?;
        blobs.sort_by(|a: &BlobInfo, b| a.name.cmp(&b.name));
        Ok(blobs)
    });
    match listed {
        Ok(blobs) => Reply::Blobs(blobs),
        Err((class, message)) => error_reply(class, message),
    }
}

/// Collects the blobs below `dir` (whose name prefix is `rel`); skips anything that is not a
/// blob: dot files (temporary files), names a blob cannot have, symlinks, special files.
fn walk(dir: &Path, rel: &str, depth: usize, out: &mut Vec<BlobInfo>) -> Result<(), Refusal> {
    let entries =
        fs::read_dir(dir).map_err(|e| io_refusal(format!("listing {}", dir.display()), &e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_refusal(format!("listing {}", dir.display()), &e))?;
        let Some(file_name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let Ok(name) = BlobName::parse(&format!("{rel}{file_name}")) else {
            continue;
        };
        let Ok(meta) = fs::symlink_metadata(entry.path()) else {
            continue;
        };
        if meta.is_file() {
            if out.len() >= MAX_BLOBS_LISTED {
                return Err((
                    ErrorClass::TooLarge,
                    format!(
                        "more than {MAX_BLOBS_LISTED} blobs to list; ask for a narrower prefix"
                    ),
                ));
            }
            out.push(BlobInfo {
                name,
                len: meta.len(),
            });
        } else if meta.is_dir() && depth + 1 < MAX_BLOB_COMPONENTS {
            walk(&entry.path(), &format!("{name}/"), depth + 1, out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::mount_location;

    const EXPECTED: &str = "/run/qubes-zfs-backup/meta/bpool/r/.qzb-meta";

    #[test]
    fn the_metadata_filesystem_is_used_at_its_path_or_under_the_pool_altroot() {
        assert_eq!(mount_location(EXPECTED, EXPECTED), Some(EXPECTED));
        let under = format!("/mnt/backup{EXPECTED}");
        assert_eq!(mount_location(&under, EXPECTED), Some(under.as_str()));
    }

    #[test]
    fn any_other_mountpoint_of_the_metadata_filesystem_is_refused() {
        for reported in [
            "none",
            "legacy",
            "/etc",
            "/run/qubes-zfs-backup/meta/bpool/r",
            "relative/run/qubes-zfs-backup/meta/bpool/r/.qzb-meta",
            "/mnt//run/qubes-zfs-backup/meta/bpool/r/.qzb-meta",
            "/run/qubes-zfs-backup/meta/bpool/r/.qzb-meta/x",
        ] {
            assert_eq!(mount_location(reported, EXPECTED), None, "{reported}");
        }
    }
}
