//! What a run tells the admin while it streams: which target of how many, bytes against the
//! estimate, rate and ETA, for the target and for the whole run. Three forms: a live line on a
//! terminal, a parseable line every few seconds when stderr is not a terminal, and JSON events
//! on stdout (`--json`) for scripts.
//!
//! Totals come from `zfs send -n -v -P` (the same argv as the stream), so no `calc` is needed
//! first. An estimate is only an estimate: when a stream turns out longer, the total shown
//! grows with it, so the bytes shown never exceed it.

use crate::output::human_bytes;
use serde_json::{json, Value};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A live line on stderr, redrawn.
    Terminal,
    /// A `progress ...` line on stderr every few seconds (and at each target's end).
    Lines,
    /// JSON events on stdout, one per line, instead of the text.
    Json,
}

impl Mode {
    pub fn detect(json: bool) -> Mode {
        if json {
            Mode::Json
        } else if std::io::stderr().is_terminal() {
            Mode::Terminal
        } else {
            Mode::Lines
        }
    }

    fn every(self) -> Duration {
        match self {
            Mode::Terminal => Duration::from_millis(200),
            Mode::Lines => Duration::from_secs(5),
            Mode::Json => Duration::from_secs(1),
        }
    }
}

/// The whole run: targets to send, and bytes against the estimated total.
pub struct Run {
    mode: Mode,
    /// Targets this run will try (1-based `index` of the current one).
    count: usize,
    index: usize,
    /// The sum of the targets' estimates, if every one is known.
    total: Option<u64>,
    /// Bytes of the targets finished (or failed) in this run.
    finished_bytes: u64,
    start: Instant,
}

impl Run {
    pub fn new(mode: Mode, count: usize, total: Option<u64>) -> Self {
        Run {
            mode,
            count,
            index: 0,
            total,
            finished_bytes: 0,
            start: Instant::now(),
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// A line for people on stdout, or the event for scripts.
    pub fn say(&self, text: impl std::fmt::Display, event: Value) {
        if self.mode == Mode::Json {
            crate::outln!("{event}");
        } else {
            crate::outln!("{text}");
        }
    }

    /// The next target starts streaming.
    pub fn target(&mut self, label: String, estimate: Option<u64>) -> Target<'_> {
        self.index += 1;
        let now = Instant::now();
        Target {
            run: self,
            label,
            estimate,
            start: now,
            last: None,
        }
    }

    /// `(index, count)` of the current target.
    pub fn position(&self) -> (usize, usize) {
        (self.index, self.count)
    }
}

/// One target's stream.
pub struct Target<'r> {
    run: &'r mut Run,
    /// dom0's snapshot name: every line names what the admin knows.
    label: String,
    estimate: Option<u64>,
    start: Instant,
    last: Option<Instant>,
}

impl Target<'_> {
    /// Bytes streamed so far; `done` at the end (always shown).
    pub fn update(&mut self, bytes: u64, done: bool) {
        let due = self
            .last
            .is_none_or(|l| l.elapsed() >= self.run.mode.every());
        if !done && !due {
            return;
        }
        self.last = Some(Instant::now());
        let view = View {
            index: self.run.index,
            count: self.run.count,
            bytes,
            estimate: self.estimate,
            rate: rate(bytes, self.start.elapsed()),
            run_bytes: self.run.finished_bytes + bytes,
            run_total: self.run.total,
            run_rate: rate(self.run.finished_bytes + bytes, self.run.start.elapsed()),
        };
        match self.run.mode {
            Mode::Terminal => {
                // Best effort: a closed stderr (`send ... 2>&1 | head`) must not panic the data
                // path the way `eprint!` would.
                let _ = write!(
                    std::io::stderr(),
                    "\r\x1b[K{}{}",
                    view.terminal_line(&self.label),
                    if done { "\n" } else { "" }
                );
            }
            Mode::Lines => crate::output::stderr_line(view.plain_line(&self.label)),
            Mode::Json => crate::outln!("{}", view.event(&self.label, done)),
        }
        if done {
            self.run.finished_bytes += bytes;
        }
    }
}

fn rate(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64().max(0.001)
}

/// One moment of the run, formatted by pure functions (tested without a clock).
#[derive(Debug, Clone, Copy)]
struct View {
    index: usize,
    count: usize,
    bytes: u64,
    estimate: Option<u64>,
    /// Bytes per second of this target.
    rate: f64,
    run_bytes: u64,
    run_total: Option<u64>,
    run_rate: f64,
}

/// The total to show: the estimate, grown to what was really streamed when that is more.
fn shown_total(bytes: u64, estimate: Option<u64>) -> Option<u64> {
    estimate.map(|e| e.max(bytes))
}

/// `h:mm:ss` until `total` at `rate`, if both are known.
fn eta(bytes: u64, total: Option<u64>, rate: f64) -> Option<String> {
    let total = total?;
    if rate <= 0.0 || total <= bytes {
        return None;
    }
    let s = ((total - bytes) as f64 / rate) as u64;
    Some(format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60))
}

impl View {
    fn terminal_line(&self, label: &str) -> String {
        let total = shown_total(self.bytes, self.estimate);
        let of = total
            .map(|t| format!(" of ~{}", human_bytes(t)))
            .unwrap_or_default();
        let eta_target = eta(self.bytes, total, self.rate)
            .map(|e| format!(" ETA {e}"))
            .unwrap_or_default();
        let run_total = shown_total(self.run_bytes, self.run_total);
        let all = match run_total {
            Some(t) => format!(
                "  | all {} of ~{}{}",
                human_bytes(self.run_bytes),
                human_bytes(t),
                eta(self.run_bytes, run_total, self.run_rate)
                    .map(|e| format!(" ETA {e}"))
                    .unwrap_or_default()
            ),
            None => format!("  | all {}", human_bytes(self.run_bytes)),
        };
        format!(
            "[{}/{}] {label}  {}{of}  {}/s{eta_target}{all}",
            self.index,
            self.count,
            human_bytes(self.bytes),
            human_bytes(self.rate as u64),
        )
    }

    /// `progress <snapshot> <bytes> <total|-> <i>/<n> <run bytes> <run total|->`: the first
    /// four fields as before, so scripts reading them keep working.
    fn plain_line(&self, label: &str) -> String {
        let num = |n: Option<u64>| n.map(|n| n.to_string()).unwrap_or_else(|| "-".into());
        format!(
            "progress {label} {} {} {}/{} {} {}",
            self.bytes,
            num(shown_total(self.bytes, self.estimate)),
            self.index,
            self.count,
            self.run_bytes,
            num(shown_total(self.run_bytes, self.run_total)),
        )
    }

    fn event(&self, label: &str, done: bool) -> Value {
        json!({
            "event": if done { "streamed" } else { "progress" },
            "snapshot": label,
            "index": self.index,
            "count": self.count,
            "bytes": self.bytes,
            "total": shown_total(self.bytes, self.estimate),
            "total_is_estimate": self.estimate.is_some(),
            "bytes_per_second": self.rate as u64,
            "eta": eta(self.bytes, shown_total(self.bytes, self.estimate), self.rate),
            "run_bytes": self.run_bytes,
            "run_total": shown_total(self.run_bytes, self.run_total),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(bytes: u64, estimate: Option<u64>) -> View {
        View {
            index: 2,
            count: 5,
            bytes,
            estimate,
            rate: 1024.0 * 1024.0,
            run_bytes: 10 << 20,
            run_total: Some(40 << 20),
            run_rate: 1024.0 * 1024.0,
        }
    }

    #[test]
    fn bytes_never_exceed_the_total_shown() {
        // The stream turned out longer than its estimate (307408 of 307200 before).
        let v = view(307_408, Some(307_200));
        assert_eq!(
            v.plain_line("pool/vm@b1"),
            "progress pool/vm@b1 307408 307408 2/5 10485760 41943040"
        );
        assert_eq!(shown_total(10, Some(5)), Some(10));
        assert_eq!(shown_total(10, None), None);
    }

    #[test]
    fn the_terminal_line_names_dom0s_snapshot_and_the_runs_position_totals_and_eta() {
        let v = view(5 << 20, Some(10 << 20));
        assert_eq!(
            v.terminal_line("mainpool/qubes/work/private@b1"),
            "[2/5] mainpool/qubes/work/private@b1  5.0 MiB of ~10 MiB  1.0 MiB/s ETA 0:00:05  | all 10 MiB of ~40 MiB ETA 0:00:30"
        );
    }

    #[test]
    fn unknown_estimates_show_no_total_and_no_eta() {
        let mut v = view(5 << 20, None);
        v.run_total = None;
        assert_eq!(
            v.terminal_line("p/d@l"),
            "[2/5] p/d@l  5.0 MiB  1.0 MiB/s  | all 10 MiB"
        );
        assert_eq!(
            v.plain_line("p/d@l"),
            "progress p/d@l 5242880 - 2/5 10485760 -"
        );
    }

    #[test]
    fn json_events_carry_the_same_numbers() {
        let e = view(5 << 20, Some(10 << 20)).event("p/d@l", false);
        assert_eq!(e["event"], "progress");
        assert_eq!(e["snapshot"], "p/d@l");
        assert_eq!(e["total"], 10 << 20);
        assert_eq!(e["eta"], "0:00:05");
        assert_eq!(e["run_total"], 40 << 20);
        assert_eq!(view(1, Some(1)).event("x@y", true)["event"], "streamed");
    }
}
