//! Terminal output: colour only on a terminal, and nothing unprintable from outside ever
//! reaches the terminal.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;

/// The first error writing to stdout, other than a reader that went away.
static STDOUT_ERROR: Mutex<Option<String>> = Mutex::new(None);

/// Writes to stdout; `print!`/`println!` without the panic. A reader that went away
/// (`send NAME | head -1`: broken pipe) is ignored, so the command carries on, a send finishes
/// its backup, and the exit status is the command's own. Any other error (a full disk behind
/// `> file`) is remembered for [`stdout_error`], so the command cannot report success for
/// output that was lost.
pub fn stdout_write(args: std::fmt::Arguments) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            if let Ok(mut first) = STDOUT_ERROR.lock() {
                first.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

/// Why some output could not be written, if it could not (see [`stdout_write`]).
pub fn stdout_error() -> Option<String> {
    STDOUT_ERROR.lock().ok().and_then(|e| e.clone())
}

/// `print!` that never panics: see [`stdout_write`].
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::stdout_write(format_args!($($arg)*))
    };
}

/// `println!` that never panics: see [`stdout_write`].
#[macro_export]
macro_rules! outln {
    () => {
        $crate::output::stdout_write(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::stdout_write(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// Replaces control characters (terminal escapes included) in text that came from a tool or
/// from the backup qube, so it cannot rewrite the dom0 terminal.
pub fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                '?'
            } else {
                c
            }
        })
        .collect()
}

/// How many characters of outside text (a tool's stderr, anything the backup qube says) one
/// message shows.
pub const OUTSIDE_TEXT_MAX: usize = 1000;

pub use qzb_protocol::text::one_line;

/// What `zfs` printed, with the advice that is wrong here taken out: zfs tells the admin to
/// "run `zfs send -t <token>`", but with this tool the next `send NAME` resumes by itself (and
/// checks the token first). Resume tokens that remain are shortened: they run to hundreds of
/// characters and say nothing to a person.
pub fn zfs_said(text: &str) -> String {
    let mut kept: Vec<String> = Vec::new();
    let mut skip_command = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("A resuming stream can be generated on the sending system") {
            skip_command = true;
            continue;
        }
        if skip_command && trimmed.starts_with("zfs send -t") {
            skip_command = false;
            continue;
        }
        skip_command = false;
        kept.push(
            trimmed
                .split(' ')
                .map(shorten_token)
                .collect::<Vec<_>>()
                .join(" "),
        );
    }
    kept.join("\n")
}

/// A resume token (`1-<hex>-<hex>-<hex...>`) as its first characters and its length.
pub fn shorten_token(word: &str) -> String {
    const SHOWN: usize = 16;
    let is_token = word.len() > 40
        && word.starts_with("1-")
        && word.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    if is_token {
        format!("{}…({} characters)", &word[..SHOWN], word.len())
    } else {
        word.to_owned()
    }
}

/// [`one_line`] with the usual bound, surrounding white space trimmed.
pub fn outside(s: &str) -> String {
    one_line(s.trim(), OUTSIDE_TEXT_MAX)
}

#[derive(Clone, Copy)]
pub struct Style {
    colour: bool,
}

impl Style {
    pub fn for_stdout() -> Self {
        Style {
            colour: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        }
    }

    pub fn for_stderr() -> Self {
        Style {
            colour: std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        }
    }

    pub fn plain() -> Self {
        Style { colour: false }
    }

    fn paint(&self, code: &str, s: &str) -> String {
        if self.colour {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_owned()
        }
    }

    pub fn green(&self, s: &str) -> String {
        self.paint("32", s)
    }

    pub fn red(&self, s: &str) -> String {
        self.paint("31", s)
    }

    pub fn yellow(&self, s: &str) -> String {
        self.paint("93", s)
    }

    pub fn bold(&self, s: &str) -> String {
        self.paint("1", s)
    }
}

/// Writes one diagnostic line to stderr. Unlike `eprintln!`, a closed stderr (`... 2>&1 |
/// head`) is ignored instead of panicking: a backup must not die, or lose its exit status,
/// because nobody reads its messages.
pub fn stderr_line(line: impl std::fmt::Display) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Formats a byte count for people: `1.5 GiB`, `320 MiB`, `12 KiB`, `512 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else if value < 10.0 {
        format!("{value:.1} {}", UNITS[unit])
    } else {
        format!("{value:.0} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_neutralised() {
        assert_eq!(sanitize("a\x1b[2Jb\rc\0d\ne"), "a?[2Jb?c?d\ne");
    }

    #[test]
    fn outside_trims_and_bounds() {
        assert_eq!(outside("  spaced\n"), "spaced");
        assert_eq!(
            outside(&"y".repeat(5000)).chars().count(),
            OUTSIDE_TEXT_MAX + 1
        );
    }

    #[test]
    fn zfs_advice_to_run_zfs_send_t_is_dropped_and_tokens_shortened() {
        let said = "cannot receive new filesystem stream: checksum mismatch or incomplete stream.\nPartially received snapshot is saved.\nA resuming stream can be generated on the sending system by running:\n    zfs send -t 1-1576b1fc22-118-789c6dce4b0ec2201006e071e323c69d0b97dea0f5061ec12b4099d65ae810c085b7f082aedc1a6f\n";
        assert_eq!(
            zfs_said(said),
            "cannot receive new filesystem stream: checksum mismatch or incomplete stream.\nPartially received snapshot is saved."
        );
        let token = format!("1-abc-118-{}", "7".repeat(300));
        assert_eq!(
            zfs_said(&format!("token {token} here")),
            format!("token 1-abc-118-777777…({} characters) here", token.len())
        );
    }

    #[test]
    fn bytes_are_human_readable() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5_000_000_000_000), "4.5 TiB");
        assert_eq!(human_bytes(300 * 1024 * 1024), "300 MiB");
    }
}
