//! Reading what a peer or a child process writes without trusting its length.

use std::io::{ErrorKind, Read};

/// Reads `r` to its end, keeping the first `max` bytes and discarding the rest (so a writer
/// never blocks on a full pipe). Interrupted reads are retried; any other error ends the
/// reading, and what was kept is returned.
pub fn read_bounded(mut r: impl Read, max: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let room = max.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails once with EINTR, then yields its bytes.
    struct Interrupted<'a> {
        interrupted: bool,
        data: &'a [u8],
    }

    impl Read for Interrupted<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if !self.interrupted {
                self.interrupted = true;
                return Err(ErrorKind::Interrupted.into());
            }
            let n = buf.len().min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn keeps_the_first_bytes_drains_the_rest_and_retries_interrupted_reads() {
        let data = vec![7u8; 100_000];
        let r = Interrupted {
            interrupted: false,
            data: &data,
        };
        assert_eq!(read_bounded(r, 10), vec![7u8; 10]);
        assert_eq!(read_bounded(&b"short"[..], 10), b"short");
    }
}
