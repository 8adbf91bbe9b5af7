//! Reading the config file: only a regular file, and only up to [`MAX_CONFIG_BYTES`].
//!
//! A config is a few hundred bytes to a few KiB of YAML. Whatever else the path names is refused
//! with a message saying what it is, before anything is read:
//!
//! - a FIFO (named pipe) would block `open` until a writer appears, and then could stream for
//!   ever; a character device such as `/dev/zero` or `/dev/urandom` never ends; a directory or a
//!   socket cannot be read as text;
//! - a regular file larger than the cap is refused by its size, and the read itself goes through
//!   `take(cap + 1)`, so a file that grows while we read it cannot make us read more.
//!
//! The type is checked twice: once by path without opening (so a FIFO is never opened in
//! blocking mode), and again on the opened file (the path may have been replaced in between;
//! opening with `O_NONBLOCK` means even a swapped-in FIFO does not block the `open`).

/// Why the config file could not be read (the driver's error turns it into exit 4 or 1).
#[derive(Debug)]
pub struct FileError {
    pub path: String,
    pub problem: String,
    pub not_found: bool,
}

type Result<T> = std::result::Result<T, FileError>;
use std::fs::{File, Metadata, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Largest config file we read: 1 MiB, hundreds of times any real config.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// `O_NONBLOCK` of Linux's `open(2)` on x86, x86-64, ARM, AArch64, RISC-V, PowerPC and s390x
/// (octal 04000, from the kernel's include/uapi/asm-generic/fcntl.h). Written out because the
/// driver has no libc dependency; std exposes no constant for it. dom0 is x86-64. Only the
/// architectures where the generic value applies get it; on others the flag is left out and the
/// type check before `open` is what keeps a FIFO from being opened.
const O_NONBLOCK: i32 = if cfg!(all(
    target_os = "linux",
    any(
        target_arch = "x86",
        target_arch = "x86_64",
        target_arch = "arm",
        target_arch = "aarch64",
        target_arch = "riscv64",
        target_arch = "powerpc",
        target_arch = "powerpc64",
        target_arch = "s390x"
    )
)) {
    0o4000
} else {
    0
};

/// Reads the config at `path` as UTF-8 text, refusing anything but a regular file of at most
/// [`MAX_CONFIG_BYTES`]. A missing file is `ConfigFile { not_found: true }` (exit code 4),
/// every other problem `ConfigFile { not_found: false }` (exit code 1).
pub fn read(path: impl AsRef<Path>) -> Result<String> {
    read_capped(path.as_ref(), MAX_CONFIG_BYTES)
}

fn read_capped(path: &Path, cap: u64) -> Result<String> {
    let display = path.display().to_string();
    let fail = |problem: String, not_found: bool| FileError {
        path: display.clone(),
        problem,
        not_found,
    };
    // By path, following symlinks, without opening: a FIFO is refused before any open.
    let meta = std::fs::metadata(path)
        .map_err(|e| fail(e.to_string(), e.kind() == std::io::ErrorKind::NotFound))?;
    check_regular(&meta, cap).map_err(|p| fail(p, false))?;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(O_NONBLOCK)
        .open(path)
        .map_err(|e| fail(e.to_string(), e.kind() == std::io::ErrorKind::NotFound))?;
    // Again on what was opened: the path may name something else by now.
    let meta = file.metadata().map_err(|e| fail(e.to_string(), false))?;
    check_regular(&meta, cap).map_err(|p| fail(p, false))?;
    let bytes = read_at_most(file, cap).map_err(|e| fail(e.to_string(), false))?;
    if bytes.len() as u64 > cap {
        return Err(fail(
            format!(
                "it grew past {} while being read; a config may be at most that",
                size_words(cap)
            ),
            false,
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        fail(
            format!(
                "it is not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
            false,
        )
    })
}

/// At most `cap + 1` bytes, so that "more than the cap" can be told from "exactly the cap".
fn read_at_most(file: File, cap: u64) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    file.take(cap.saturating_add(1)).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// `Ok` for a regular file within the cap; otherwise what is wrong with it, in words.
fn check_regular(meta: &Metadata, cap: u64) -> std::result::Result<(), String> {
    let t = meta.file_type();
    let what = if t.is_file() {
        None
    } else if t.is_dir() {
        Some("a directory")
    } else if t.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if t.is_char_device() {
        Some("a character device")
    } else if t.is_block_device() {
        Some("a block device")
    } else if t.is_socket() {
        Some("a socket")
    } else {
        Some("not a regular file")
    };
    if let Some(what) = what {
        return Err(format!(
            "it is {what}, not a regular file; a config must be a regular file (to use a pipe, save it to a file first)"
        ));
    }
    if meta.len() > cap {
        return Err(format!(
            "it is {} bytes, larger than the {} a config may be",
            meta.len(),
            size_words(cap)
        ));
    }
    Ok(())
}

fn size_words(cap: u64) -> String {
    if cap.is_multiple_of(1 << 20) {
        format!("{} MiB ({cap} bytes)", cap >> 20)
    } else {
        format!("{cap} bytes")
    }
}

#[cfg(test)]
mod tests;
