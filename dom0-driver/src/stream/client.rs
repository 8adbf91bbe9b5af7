//! The driver's side of the protocol over any reader and writer: the mirror of the agent's
//! `serve(reader, writer)`. It knows nothing of processes; [`crate::stream::qrexec`] is one way
//! to get the pair (the real qrexec call), tests connect it to the agent in memory.
//!
//! Nothing that comes back is trusted: replies are size-bounded and validated by the protocol
//! crate before anything here looks at them. A watchdog ends the call through its [`Peer`] when
//! the receiver stays silent longer than the timeout, so a hung backup qube cannot hang dom0.

use crate::error::{Error, Result};
use qzb_protocol as proto;
use std::io::{BufReader, BufWriter, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// Buffer of the request writer: coalesces a request's frame header and payload into one
/// write. Data frames (at least 256 KiB) are larger, so `BufWriter` passes them straight
/// through instead of copying every byte of the stream into its buffer first.
pub const SESSION_WRITE_BUFFER: usize = 64 * 1024;
/// How often the watchdog looks at the clock.
const WATCHDOG_TICK: Duration = Duration::from_millis(200);

/// The other end of the call, as far as the client needs it.
pub trait Peer: Send + Sync {
    /// Ends the call from outside: afterwards blocked reads and writes return.
    fn hang_up(&self);
    /// After our writer is closed, waits (bounded) for the call to end. `None` when it ended
    /// cleanly, otherwise what happened, in the admin's words (with what the peer said).
    fn end(&self) -> Option<String>;
}

/// The last time bytes moved, for the watchdog (the data pump touches it too).
#[derive(Clone)]
pub struct Activity(Arc<Mutex<Instant>>);

impl Default for Activity {
    fn default() -> Self {
        Activity::new()
    }
}

impl Activity {
    pub fn new() -> Self {
        Activity(Arc::new(Mutex::new(Instant::now())))
    }

    pub fn touch(&self) {
        if let Ok(mut t) = self.0.lock() {
            *t = Instant::now();
        }
    }

    fn idle(&self) -> Duration {
        self.0.lock().map(|t| t.elapsed()).unwrap_or_default()
    }
}

/// A reader that records activity.
struct Watched<R> {
    inner: R,
    activity: Activity,
}

impl<R: Read> Read for Watched<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.activity.touch();
        Ok(n)
    }
}

/// What the watchdog and the client share.
struct Watch {
    activity: Activity,
    /// Since when we wait for a reply, if we do: a peer that trickles bytes is never idle, so a
    /// whole answer must also arrive within the timeout.
    waiting: Mutex<Option<Instant>>,
    timed_out: AtomicBool,
}

type BoxRead = Box<dyn Read + Send>;
type BoxWrite = Box<dyn Write + Send>;

/// One session with the receiver agent.
pub struct Client {
    writer: Option<BufWriter<BoxWrite>>,
    reader: BufReader<Watched<BoxRead>>,
    peer: Arc<dyn Peer>,
    watch: Arc<Watch>,
    /// Dropping it stops the watchdog.
    _watchdog: mpsc::Sender<()>,
    buf: Vec<u8>,
    ended: bool,
}

impl Client {
    /// Exchanges hellos over `reader`/`writer`. `timeout` bounds how long the agent may stay
    /// silent while we wait for it, or not read what we send.
    pub fn start(
        reader: BoxRead,
        writer: BoxWrite,
        peer: Arc<dyn Peer>,
        timeout: Duration,
    ) -> Result<Client> {
        let activity = Activity::new();
        let watch = Arc::new(Watch {
            activity: activity.clone(),
            waiting: Mutex::new(None),
            timed_out: AtomicBool::new(false),
        });
        let (stop, stopped) = mpsc::channel();
        start_watchdog(Arc::clone(&watch), Arc::clone(&peer), stopped, timeout);
        let mut c = Client {
            writer: Some(BufWriter::with_capacity(SESSION_WRITE_BUFFER, writer)),
            reader: BufReader::with_capacity(
                64 * 1024,
                Watched {
                    inner: reader,
                    activity,
                },
            ),
            peer,
            watch,
            _watchdog: stop,
            buf: Vec::new(),
            ended: false,
        };
        let hello = (|| -> std::result::Result<(), proto::ProtocolError> {
            let w = c.writer.as_mut().expect("open writer");
            let sent = proto::send_hello(w, proto::Role::Driver);
            // Read what the peer sent even if ours could not be written: a shell error or
            // another version says more than the broken pipe of a peer that already left.
            c.set_waiting(true);
            let hello = proto::expect_hello(&mut c.reader, proto::Role::Receiver);
            c.set_waiting(false);
            hello?;
            sent
        })();
        if let Err(e) = hello {
            return Err(c.fail(&format!(
                "the handshake with the receiver agent failed: {e}"
            )));
        }
        Ok(c)
    }

    fn set_waiting(&self, waiting: bool) {
        if let Ok(mut w) = self.watch.waiting.lock() {
            *w = waiting.then(Instant::now);
        }
    }

    /// Whether the watchdog ended the call.
    pub fn timed_out(&self) -> bool {
        self.watch.timed_out.load(Ordering::SeqCst)
    }

    /// The activity record the data pump touches.
    pub fn activity(&self) -> &Activity {
        &self.watch.activity
    }

    /// Sends a request and reads its reply.
    pub fn request(&mut self, request: &proto::Request) -> Result<proto::Reply> {
        let w = self
            .writer
            .as_mut()
            .ok_or_else(|| Error::Receiver("the session to the receiver is closed".into()))?;
        let sent = proto::write_request(w, request);
        self.watch.activity.touch();
        if let Err(e) = sent {
            // The agent may have written a reply before going away; try to read it.
            return self.read_reply().map_err(|_| {
                Error::Receiver(format!("cannot send a request to the receiver: {e}"))
            });
        }
        self.read_reply()
    }

    /// Reads one reply (bounded and validated by the protocol crate). A notice that the agent
    /// waits for another session's lock is shown at once, and the real reply read after it.
    pub fn read_reply(&mut self) -> Result<proto::Reply> {
        let mut notices = 0;
        loop {
            self.set_waiting(true);
            let reply = proto::read_reply(&mut self.reader, &mut self.buf);
            self.set_waiting(false);
            match reply {
                // One notice per request: a second would be a peer stalling on purpose.
                Ok(proto::Reply::Waiting { holder }) if notices == 0 => {
                    notices += 1;
                    crate::output::stderr_line(format_args!(
                        "the backup qube is busy with {}",
                        crate::output::outside(&holder)
                    ));
                }
                Ok(proto::Reply::Waiting { .. }) => {
                    return Err(Error::Receiver(
                        "the receiver said twice that it waits for its lock".into(),
                    ))
                }
                Ok(r) => return Ok(r),
                Err(e) => {
                    return Err(Error::Receiver(if self.timed_out() {
                        "the receiver did not answer in time".to_owned()
                    } else {
                        format!("bad reply from the receiver: {e}")
                    }))
                }
            }
        }
    }

    /// Reads one frame of a stream the agent sends (a blob's data frames, a read-back's block
    /// frames, the reply that ends them). The frame's length was checked against its kind's
    /// bounds before the buffer was sized; the watchdog bounds the agent's silence.
    pub(crate) fn read_stream_frame(
        &mut self,
        expected: &'static str,
    ) -> Result<(proto::FrameKind, &[u8])> {
        match proto::read_frame_required(&mut self.reader, &mut self.buf, expected) {
            Ok(kind) => Ok((kind, &self.buf)),
            Err(_) if self.timed_out() => Err(Error::Receiver(
                "the receiver did not answer in time".to_owned(),
            )),
            Err(e) => Err(Error::Receiver(format!(
                "bad {expected} from the receiver: {e}"
            ))),
        }
    }

    /// Where data frames go (the pump writes them directly, bypassing the request buffer's
    /// copy for large frames); `None` once our side is closed.
    pub fn data_sink(&mut self) -> Option<&mut BufWriter<BoxWrite>> {
        self.writer.as_mut()
    }

    /// Closes our side without a word: the agent sees the stream end (without an end frame, it
    /// keeps only verified data as resumable state) and answers what it made of it.
    pub fn close_writer(&mut self) {
        self.writer.take();
    }

    /// Closes our side and waits for the call to end; returns a description of the end if it
    /// was not clean.
    pub fn close(mut self) -> Option<String> {
        self.finish()
    }

    /// Ends a session whose stream is out of step (a read-back refused mid-stream): hangs up
    /// at once. The agent may still be writing a stream nobody reads, so waiting for a clean
    /// end would only run out the end timeout; a read-back changes nothing on the medium, so
    /// cutting it short loses nothing.
    pub fn abandon(mut self) {
        self.writer.take();
        self.ended = true;
        self.peer.hang_up();
        let _ = self.peer.end();
    }

    fn finish(&mut self) -> Option<String> {
        self.writer.take();
        self.ended = true;
        let end = self.peer.end();
        if self.timed_out() {
            return Some(
                "the receiver stopped responding within the timeout (--timeout); the call was ended"
                    .into(),
            );
        }
        end
    }

    /// Ends the session after a failure and builds the error, with how the call ended.
    pub fn fail(mut self, what: &str) -> Error {
        let detail = self.finish();
        Error::Receiver(match detail {
            Some(d) => format!("{what}: {d}"),
            None => what.to_owned(),
        })
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if !self.ended {
            let _ = self.finish();
        }
    }
}

/// Hangs up on the peer when nothing moved for `timeout`, or a reply takes longer than that.
fn start_watchdog(
    watch: Arc<Watch>,
    peer: Arc<dyn Peer>,
    stopped: mpsc::Receiver<()>,
    timeout: Duration,
) {
    std::thread::spawn(move || loop {
        match stopped.recv_timeout(WATCHDOG_TICK) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // The client is gone (its sender dropped) or asked us to stop.
            _ => return,
        }
        let overdue = watch
            .waiting
            .lock()
            .map(|w| w.is_some_and(|since| since.elapsed() > timeout))
            .unwrap_or(false);
        if watch.activity.idle() > timeout || overdue {
            watch.timed_out.store(true, Ordering::SeqCst);
            peer.hang_up();
            return;
        }
    });
}
