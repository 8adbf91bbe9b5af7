//! The data path of `send`: `zfs send` output into data frames to the receiver.
//!
//! Two threads, so that reading and hashing overlap with writing: a reader thread fills
//! buffers from the source and frames them (blake3 and header), this thread writes the framed
//! buffers to the receiver in order. A fixed pool of [`BUFFERS`] buffers circulates between
//! them, so memory is flat whatever the stream size and a slow receiver holds back the source
//! (back-pressure) instead of filling memory.
//!
//! Nothing here knows about processes: `cargo xtask bench-stream` runs this same function.

use crate::stream::client::Activity;
use qzb_protocol::{StreamFramer, DATA_FRAME_PREFIX_LEN, MAX_DATA_CHUNK};
use std::io::{self, Read, Write};
use std::sync::mpsc;

/// Buffers in flight between the reader and the writer (each [`MAX_DATA_CHUNK`]).
const BUFFERS: usize = 4;

/// Frames are cut once this much is read: large enough that hashing and framing cost nothing
/// next to the data, small enough that an interrupted stream leaves verified data behind (the
/// agent holds back only the last frame) and progress moves smoothly.
pub const MIN_FRAME: usize = 256 * 1024;

/// How pumping ended. A clean end is `read_error` and `write_error` both `None`: the source
/// reached EOF and every frame was written; only then may the caller finish the stream with
/// `framer.finish` (the end frame).
pub struct Pumped {
    /// Data bytes written to the sink.
    pub bytes: u64,
    /// The framer after the last frame made (after an error it may count frames that were
    /// made but never written).
    pub framer: StreamFramer,
    pub read_error: Option<io::Error>,
    pub write_error: Option<io::Error>,
}

/// One framed buffer on its way to the writer.
struct Framed {
    prefix: [u8; DATA_FRAME_PREFIX_LEN],
    buf: Vec<u8>,
    len: usize,
}

/// Reads `source` to EOF and writes it to `sink` as data frames.
///
/// `observe` sees every chunk on the reader thread before the chunk is framed and forwarded
/// (the stream tap that builds manifests): an error from it ends the pump like a read error,
/// and the chunk is not forwarded, so the receiver never holds data the tap has not seen.
///
/// `stop_source` runs if writing fails, before this function waits for the reader thread: it
/// must make a blocked read of `source` return (the driver kills `zfs send`). `progress` is
/// called with the bytes written so far after each frame. `activity` is touched whenever
/// bytes move, for the watchdog.
pub fn pump<R: Read + Send>(
    source: R,
    sink: &mut (impl Write + ?Sized),
    activity: &Activity,
    observe: &mut (dyn FnMut(&[u8]) -> io::Result<()> + Send),
    stop_source: impl FnOnce(),
    mut progress: impl FnMut(u64),
) -> Pumped {
    let (full_tx, full_rx) = mpsc::sync_channel::<io::Result<Framed>>(BUFFERS);
    let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
    for _ in 0..BUFFERS {
        free_tx
            .send(vec![0u8; MAX_DATA_CHUNK])
            .expect("receiver alive");
    }
    std::thread::scope(|scope| {
        let reader = scope.spawn(move || {
            let mut source = source;
            let mut framer = StreamFramer::new();
            while let Ok(mut buf) = free_rx.recv() {
                let message = match read_chunk(&mut source, &mut buf) {
                    Ok(0) => break,
                    Ok(len) => observe(&buf[..len]).map(|()| Framed {
                        prefix: framer.frame_prefix(&buf[..len]),
                        buf,
                        len,
                    }),
                    Err(e) => Err(e),
                };
                let failed = message.is_err();
                if full_tx.send(message).is_err() || failed {
                    break;
                }
            }
            framer
        });

        let mut bytes = 0u64;
        let mut read_error = None;
        let mut write_error = None;
        for message in full_rx.iter() {
            activity.touch();
            let framed = match message {
                Ok(framed) => framed,
                Err(e) => {
                    read_error = Some(e);
                    break;
                }
            };
            let data = &framed.buf[..framed.len];
            if let Err(e) = write_all_vectored(sink, &framed.prefix, data) {
                write_error = Some(e);
                break;
            }
            bytes += data.len() as u64;
            activity.touch();
            progress(bytes);
            // The reader may be gone (it stopped after EOF); the buffer is then dropped.
            let _ = free_tx.send(framed.buf);
        }
        if write_error.is_some() {
            stop_source();
        }
        // Unblock the reader wherever it waits: for a free buffer or for room in the queue.
        drop(full_rx);
        drop(free_tx);
        let framer = match reader.join() {
            Ok(framer) => framer,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        Pumped {
            bytes,
            framer,
            read_error,
            write_error,
        }
    })
}

/// Writes `prefix` then `data` with as few `writev` calls as the sink takes (one per pipe
/// buffer's worth, as for `write_all`, but no separate call for the 56-byte prefix).
fn write_all_vectored(
    sink: &mut (impl Write + ?Sized),
    prefix: &[u8],
    data: &[u8],
) -> io::Result<()> {
    let mut slices = [io::IoSlice::new(prefix), io::IoSlice::new(data)];
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        match sink.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => io::IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads at least [`MIN_FRAME`] bytes (or up to EOF) into `buf`. A read error after some
/// bytes arrived frames those bytes first; the error shows up on the next call.
fn read_chunk(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < MIN_FRAME.min(buf.len()) {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if filled > 0 => {
                tracing::debug!(error = %e, "read error after {filled} bytes");
                break;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use qzb_protocol::{read_frame, FrameKind, StreamVerifier, DATA_PREFIX_LEN};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// Pseudo-random bytes, so a misplaced or repeated chunk changes the result.
    fn pattern(len: usize) -> Vec<u8> {
        let mut x: u32 = 0x1234_5678;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    /// Hands out at most `step` bytes per read, like a pipe.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
        then_error: bool,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.data.is_empty() && self.then_error {
                return Err(io::Error::other("source failed"));
            }
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    /// Decodes a framed stream: the data, the data frame sizes, whether the end verified.
    fn unframe(mut wire: &[u8]) -> (Vec<u8>, Vec<usize>, bool) {
        let mut verifier = StreamVerifier::new();
        let (mut data, mut sizes, mut buf) = (Vec::new(), Vec::new(), Vec::new());
        while let Some(kind) = read_frame(&mut wire, &mut buf).unwrap() {
            match kind {
                FrameKind::Data => {
                    data.extend_from_slice(verifier.verify_data(&buf).unwrap());
                    sizes.push(buf.len() - DATA_PREFIX_LEN);
                }
                FrameKind::End => {
                    verifier.verify_end(&buf).unwrap();
                    return (data, sizes, true);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        (data, sizes, false)
    }

    #[test]
    fn every_byte_arrives_in_order_in_verifiable_frames_of_at_least_min_frame() {
        let source = pattern(5 * MAX_DATA_CHUNK + 12_345);
        let mut wire = Vec::new();
        let mut reported = Vec::new();
        let mut observed = Vec::new();
        let pumped = pump(
            Trickle {
                data: &source,
                step: 64 * 1024,
                then_error: false,
            },
            &mut wire,
            &Activity::new(),
            &mut |chunk| {
                observed.extend_from_slice(chunk);
                Ok(())
            },
            || panic!("nothing failed, nothing to stop"),
            |bytes| reported.push(bytes),
        );
        assert_eq!(observed, source, "the observer saw every byte, in order");
        assert!(pumped.read_error.is_none() && pumped.write_error.is_none());
        assert_eq!(pumped.bytes, source.len() as u64);
        pumped.framer.finish(&mut wire).unwrap();
        let (data, sizes, ended) = unframe(&wire);
        assert!(ended);
        assert_eq!(data, source);
        let (last, rest) = sizes.split_last().unwrap();
        assert!(
            rest.iter()
                .all(|&n| (MIN_FRAME..=MAX_DATA_CHUNK).contains(&n)),
            "{sizes:?}"
        );
        assert!(*last > 0);
        assert_eq!(reported.last(), Some(&(source.len() as u64)));
        assert!(reported.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn an_empty_source_makes_no_data_frames() {
        let mut wire = Vec::new();
        let pumped = pump(
            io::empty(),
            &mut wire,
            &Activity::new(),
            &mut |_| Ok(()),
            || {},
            |_| {},
        );
        assert_eq!(pumped.bytes, 0);
        assert!(wire.is_empty());
        pumped.framer.finish(&mut wire).unwrap();
        assert_eq!(unframe(&wire), (Vec::new(), Vec::new(), true));
    }

    #[test]
    fn a_read_error_after_some_bytes_frames_those_bytes_then_reports_the_error() {
        let source = pattern(300_000);
        let mut wire = Vec::new();
        let pumped = pump(
            Trickle {
                data: &source,
                step: 100_000,
                then_error: true,
            },
            &mut wire,
            &Activity::new(),
            &mut |_| Ok(()),
            || {},
            |_| {},
        );
        assert_eq!(pumped.read_error.unwrap().to_string(), "source failed");
        assert!(pumped.write_error.is_none());
        assert_eq!(pumped.bytes, source.len() as u64);
        let (data, _, ended) = unframe(&wire);
        assert_eq!(data, source);
        assert!(!ended, "no end frame is written after a read error");
    }

    /// Accepts `room` bytes, then fails like a closed pipe.
    struct Closing {
        wire: Vec<u8>,
        room: usize,
    }

    impl Write for Closing {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.wire.len() >= self.room {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            let n = buf.len().min(self.room - self.wire.len());
            self.wire.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// An endless source that ends (EOF) once told to stop, like `zfs send` being killed.
    struct Endless {
        stopped: Arc<AtomicBool>,
    }

    impl Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.stopped.load(Ordering::SeqCst) {
                return Ok(0);
            }
            let n = buf.len().min(64 * 1024);
            buf[..n].fill(0xa5);
            Ok(n)
        }
    }

    #[test]
    fn a_broken_sink_stops_the_source_and_counts_only_whole_frames_written() {
        let stopped = Arc::new(AtomicBool::new(false));
        let mut sink = Closing {
            wire: Vec::new(),
            room: 3 * MAX_DATA_CHUNK,
        };
        let stop = stopped.clone();
        let pumped = pump(
            Endless {
                stopped: stopped.clone(),
            },
            &mut sink,
            &Activity::new(),
            &mut |_| Ok(()),
            move || stop.store(true, Ordering::SeqCst),
            |_| {},
        );
        assert!(
            stopped.load(Ordering::SeqCst),
            "the source was told to stop"
        );
        assert_eq!(
            pumped.write_error.unwrap().kind(),
            io::ErrorKind::BrokenPipe
        );
        assert!(pumped.read_error.is_none());
        let (data, sizes) = unframe_whole_frames(&sink.wire);
        assert_eq!(pumped.bytes, data.len() as u64);
        assert_eq!(pumped.bytes, sizes.iter().sum::<usize>() as u64);
    }

    /// The data of the whole data frames in `wire`; a truncated last frame is ignored.
    fn unframe_whole_frames(wire: &[u8]) -> (Vec<u8>, Vec<usize>) {
        let mut verifier = StreamVerifier::new();
        let (mut data, mut sizes, mut buf) = (Vec::new(), Vec::new(), Vec::new());
        let mut rest = wire;
        while let Ok(Some(FrameKind::Data)) = read_frame(&mut rest, &mut buf) {
            data.extend_from_slice(verifier.verify_data(&buf).unwrap());
            sizes.push(buf.len() - DATA_PREFIX_LEN);
        }
        (data, sizes)
    }

    #[test]
    fn an_observer_error_ends_the_pump_before_that_chunk_is_forwarded() {
        let source = pattern(3 * MIN_FRAME);
        let mut wire = Vec::new();
        let mut chunks = 0;
        let pumped = pump(
            Trickle {
                data: &source,
                step: MIN_FRAME,
                then_error: false,
            },
            &mut wire,
            &Activity::new(),
            &mut |_| {
                chunks += 1;
                if chunks == 2 {
                    Err(io::Error::other("the tap refused the stream"))
                } else {
                    Ok(())
                }
            },
            || {},
            |_| {},
        );
        assert_eq!(
            pumped.read_error.unwrap().to_string(),
            "the tap refused the stream"
        );
        assert_eq!(
            pumped.bytes, MIN_FRAME as u64,
            "only the first chunk went out"
        );
        let (data, _, ended) = unframe(&wire);
        assert_eq!(data, source[..MIN_FRAME]);
        assert!(!ended);
    }
}
