//! Reading passphrases: on the terminal without echo, or from a file descriptor for scripted
//! set-up (`--passphrase-fd N`).
//!
//! From a descriptor, everything up to end of file is read (at most 4 KiB), one passphrase
//! per line (a final newline is optional): one line for `init` and `check`, two for `change`
//! (the current passphrase, then the new one). Any other number of lines is refused, so a
//! script cannot silently pass the wrong one.

use crate::error::{Error, Result};
use std::collections::VecDeque;
use std::io::{IsTerminal, Read};

/// Longest passphrase accepted, in bytes.
pub const MAX_PASSPHRASE_LEN: usize = 1024;
/// A new passphrase needs at least this many characters (an existing one is taken as it is).
pub const MIN_NEW_PASSPHRASE_CHARS: usize = 12;
/// Most bytes read from a passphrase descriptor.
const MAX_FD_INPUT: usize = 4096;

/// Where passphrases come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassphraseSource {
    /// Asked on the terminal without echo (a new one twice).
    Terminal,
    /// Read from this open file descriptor (through `/proc/self/fd/N`).
    Fd(u32),
}

impl PassphraseSource {
    /// `--passphrase-fd N` if given, else the terminal.
    pub fn from_fd(fd: Option<u32>) -> Self {
        fd.map_or(PassphraseSource::Terminal, PassphraseSource::Fd)
    }
}

/// A passphrase's bytes; overwritten with zeros when dropped (best effort: earlier copies
/// made by the terminal library or the allocator are not).
pub struct Passphrase(Vec<u8>);

impl Passphrase {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    fn checked(bytes: Vec<u8>, what: &str) -> Result<Passphrase> {
        let p = Passphrase(bytes);
        if p.0.is_empty() {
            return Err(Error::Key(format!("{what} is empty")));
        }
        if p.0.len() > MAX_PASSPHRASE_LEN {
            return Err(Error::Key(format!(
                "{what} is longer than {MAX_PASSPHRASE_LEN} bytes"
            )));
        }
        Ok(p)
    }

    fn check_new(&self) -> Result<()> {
        let chars = String::from_utf8_lossy(&self.0).chars().count();
        if chars < MIN_NEW_PASSPHRASE_CHARS {
            return Err(Error::Key(format!(
                "the new passphrase has {chars} characters; use at least {MIN_NEW_PASSPHRASE_CHARS} \
                 (it is all that protects the backups' key once a backup medium is in other hands)"
            )));
        }
        Ok(())
    }
}

impl Drop for Passphrase {
    fn drop(&mut self) {
        self.0.fill(0);
        std::hint::black_box(&mut self.0);
    }
}

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(..)")
    }
}

/// Reads the passphrases one command needs, in order.
pub struct PassphraseReader {
    source: PassphraseSource,
    /// The descriptor's lines, read at the first request.
    lines: Option<VecDeque<Passphrase>>,
    /// How many passphrases were taken.
    taken: usize,
}

impl PassphraseReader {
    pub fn new(source: PassphraseSource) -> Self {
        PassphraseReader {
            source,
            lines: None,
            taken: 0,
        }
    }

    /// The passphrase of an existing key: asked once, taken as it is (not empty, ≤ 1 KiB).
    pub fn current(&mut self, prompt: &str) -> Result<Passphrase> {
        match self.source {
            PassphraseSource::Terminal => {
                Passphrase::checked(ask(prompt)?.into_bytes(), "the passphrase")
            }
            PassphraseSource::Fd(fd) => self.next_line(fd),
        }
    }

    /// A new passphrase: on a terminal asked twice (they must agree); at least 12 characters.
    pub fn new_passphrase(&mut self, prompt: &str) -> Result<Passphrase> {
        let p = match self.source {
            PassphraseSource::Terminal => {
                let p = Passphrase::checked(ask(prompt)?.into_bytes(), "the new passphrase")?;
                p.check_new()?;
                let again = Passphrase(ask("Same passphrase again: ")?.into_bytes());
                if again.0 != p.0 {
                    return Err(Error::Key(
                        "the two passphrases differ; nothing was changed".into(),
                    ));
                }
                p
            }
            PassphraseSource::Fd(fd) => self.next_line(fd)?,
        };
        p.check_new()?;
        Ok(p)
    }

    /// Refuses passphrase lines nobody asked for (a descriptor with too many lines).
    pub fn finish(self) -> Result<()> {
        match (&self.source, &self.lines) {
            (PassphraseSource::Fd(fd), Some(lines)) if !lines.is_empty() => {
                Err(Error::Key(format!(
                    "file descriptor {fd} holds {} passphrase lines, this command reads {}",
                    self.taken + lines.len(),
                    self.taken
                )))
            }
            _ => Ok(()),
        }
    }

    fn next_line(&mut self, fd: u32) -> Result<Passphrase> {
        if self.lines.is_none() {
            self.lines = Some(parse_lines(&read_fd(fd)?, fd)?);
        }
        let next = self.lines.as_mut().and_then(VecDeque::pop_front);
        self.taken += 1;
        next.ok_or_else(|| {
            Error::Key(format!(
                "file descriptor {fd} holds {} passphrase line(s), this command needs more \
                 (`key change` reads two: the current passphrase, then the new one)",
                self.taken - 1
            ))
        })
    }
}

/// One passphrase, for callers that need just one: a new one (`confirm`: asked twice on a
/// terminal, at least 12 characters) or an existing one.
pub fn read_passphrase(source: PassphraseSource, confirm: bool) -> Result<Passphrase> {
    let mut reader = PassphraseReader::new(source);
    let p = if confirm {
        reader.new_passphrase("New passphrase: ")?
    } else {
        reader.current("Passphrase: ")?
    };
    reader.finish()?;
    Ok(p)
}

fn ask(prompt: &str) -> Result<String> {
    if !std::io::stdin().is_terminal() {
        return Err(Error::Key(
            "no terminal to ask for the passphrase on; give it with --passphrase-fd N".into(),
        ));
    }
    rpassword::prompt_password(prompt)
        .map_err(|e| Error::Key(format!("cannot read the passphrase from the terminal: {e}")))
}

/// Everything readable on descriptor `fd`, at most [`MAX_FD_INPUT`] bytes.
fn read_fd(fd: u32) -> Result<Passphrase> {
    let file = std::fs::File::open(format!("/proc/self/fd/{fd}"))
        .or_else(|_| std::fs::File::open(format!("/dev/fd/{fd}")))
        .map_err(|e| {
            Error::Key(format!(
                "cannot read the passphrase from file descriptor {fd}: {e}"
            ))
        })?;
    let mut bytes = Vec::new();
    file.take(MAX_FD_INPUT as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| {
            Error::Key(format!(
                "cannot read the passphrase from file descriptor {fd}: {e}"
            ))
        })?;
    let input = Passphrase(bytes);
    if input.0.len() > MAX_FD_INPUT {
        return Err(Error::Key(format!(
            "file descriptor {fd} holds more than {MAX_FD_INPUT} bytes; expected passphrases, one a line"
        )));
    }
    Ok(input)
}

/// The passphrases in a descriptor's bytes: one a line, a final newline optional, none empty.
fn parse_lines(input: &Passphrase, fd: u32) -> Result<VecDeque<Passphrase>> {
    let body = input.0.strip_suffix(b"\n").unwrap_or(&input.0);
    body.split(|b| *b == b'\n')
        .enumerate()
        .map(|(i, line)| {
            Passphrase::checked(
                line.to_vec(),
                &format!("passphrase line {} of file descriptor {fd}", i + 1),
            )
        })
        .collect()
}

#[cfg(test)]
pub(super) fn parse_lines_for_test(bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
    Ok(parse_lines(&Passphrase(bytes.to_vec()), 9)?
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect())
}
