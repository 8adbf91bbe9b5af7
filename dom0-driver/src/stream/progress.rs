//! Progress of a stream: a live line on a terminal, a parseable line every few seconds
//! otherwise.

use crate::output::human_bytes;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Prints progress: a live line on a terminal, a parseable line every few seconds otherwise.
pub struct Progress {
    tty: bool,
    label: String,
    estimate: Option<u64>,
    start: Instant,
    last: Instant,
}

impl Progress {
    pub fn new(label: String, estimate: Option<u64>) -> Self {
        let now = Instant::now();
        Progress {
            tty: std::io::stderr().is_terminal(),
            label,
            estimate,
            start: now,
            last: now,
        }
    }

    pub fn update(&mut self, bytes: u64, done: bool) {
        let every = if self.tty {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(10)
        };
        if !done && self.last.elapsed() < every {
            return;
        }
        self.last = Instant::now();
        let secs = self.start.elapsed().as_secs_f64().max(0.001);
        let rate = bytes as f64 / secs;
        if self.tty {
            let eta = match self.estimate {
                Some(e) if rate > 0.0 && e > bytes => {
                    let s = ((e - bytes) as f64 / rate) as u64;
                    format!(" ETA {}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
                }
                _ => String::new(),
            };
            let of = self
                .estimate
                .map(|e| format!(" / {}", human_bytes(e)))
                .unwrap_or_default();
            // Progress is best effort: a closed stderr (`send ... 2>&1 | head`) must not
            // panic the data path the way `eprint!` would.
            let _ = write!(
                std::io::stderr(),
                "\r\x1b[K{}  {}{of}  {}/s{eta}{}",
                self.label,
                human_bytes(bytes),
                human_bytes(rate as u64),
                if done { "\n" } else { "" }
            );
        } else {
            crate::output::stderr_line(format_args!(
                "progress {} {bytes} {}",
                self.label,
                self.estimate
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "-".into())
            ));
        }
    }
}
