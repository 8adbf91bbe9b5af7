//! Writing a checked read-back into a qube's volume through Qubes' own volume import
//! (`qvm-volume import --size=N QUBE:VOLUME -`), which checks the size and commits only when
//! it got all of it. The last block written is held back until the whole volume has been
//! checked, so a volume that fails its check never reaches N bytes: the import is killed and
//! commits nothing.

use std::io::Write;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::stream::readback::Verified;
use crate::system::runner::{Exit, Runner, Spawned};

/// How long the import may take to commit after its last byte.
const COMMIT_LIMIT: Duration = Duration::from_secs(600);
/// How long an import that stopped reading may take to end and say why.
const GIVE_UP_WAIT: Duration = Duration::from_secs(10);

static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// A volume import fed by a checked read-back.
pub struct Import<'r> {
    runner: &'r dyn Runner,
    qube: String,
    volume: String,
    child: Option<Spawned>,
    volsize: u64,
    /// Bytes handed to the import so far.
    written: u64,
    /// The last block, held back until the check is complete.
    pending: Option<(u64, Vec<u8>)>,
}

impl<'r> Import<'r> {
    pub fn new(runner: &'r dyn Runner, qube: &str, volume: &str) -> Self {
        Import {
            runner,
            qube: qube.to_owned(),
            volume: volume.to_owned(),
            child: None,
            volsize: 0,
            written: 0,
            pending: None,
        }
    }

    fn fail(&self, what: String) -> Error {
        Error::Send(format!("importing {}:{}: {what}", self.qube, self.volume))
    }

    fn write(&mut self, data: &[u8]) -> Result<()> {
        let stdin = self
            .child
            .as_mut()
            .and_then(|c| c.stdin.as_mut())
            .ok_or_else(|| Error::Send("the volume import is not running".into()))?;
        if let Err(e) = stdin.write_all(data) {
            // The import gave up: what it said is the reason, the broken pipe only the symptom.
            let ended = self.child.take().map(|mut child| child.wait(GIVE_UP_WAIT));
            let said = match ended {
                Some((exit, stderr)) => format!(
                    "; it ended ({}){}",
                    exit.map(|e| e.to_string()).unwrap_or("did not end".into()),
                    match crate::output::one_line(stderr.trim(), 300) {
                        s if s.is_empty() => String::new(),
                        s => format!(" saying: {s}"),
                    }
                ),
                None => String::new(),
            };
            return Err(self.fail(format!("qvm-volume stopped reading ({e}){said}")));
        }
        self.written += data.len() as u64;
        Ok(())
    }

    /// Zeros up to `offset`.
    fn zeros_to(&mut self, offset: u64) -> Result<()> {
        while self.written < offset {
            let n = (offset - self.written).min(ZEROS.len() as u64) as usize;
            self.write(&ZEROS[..n])?;
        }
        Ok(())
    }

    fn flush_pending(&mut self) -> Result<()> {
        if let Some((offset, block)) = self.pending.take() {
            self.zeros_to(offset)?;
            self.write(&block)?;
        }
        Ok(())
    }
}

impl Verified for Import<'_> {
    fn begin(&mut self, volsize: u64, _volblocksize: u64) -> Result<()> {
        let size = format!("--size={volsize}");
        let target = format!("{}:{}", self.qube, self.volume);
        let child = self
            .runner
            .spawn("qvm-volume", &["import", &size, &target, "-"], true)
            .map_err(|e| self.fail(e.to_string()))?;
        self.child = Some(child);
        self.volsize = volsize;
        Ok(())
    }

    fn block(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        if offset < self.written || offset + data.len() as u64 > self.volsize {
            return Err(self.fail(format!(
                "block at offset {offset} out of order or past the end"
            )));
        }
        self.flush_pending()?;
        self.pending = Some((offset, data.to_vec()));
        Ok(())
    }

    fn end(&mut self) -> Result<()> {
        self.flush_pending()?;
        let volsize = self.volsize;
        self.zeros_to(volsize)?;
        let mut child = self.child.take().expect("begun");
        let (exit, stderr) = child.wait(COMMIT_LIMIT);
        if exit != Some(Exit::Code(0)) {
            return Err(self.fail(format!(
                "`{}` failed ({}): {}",
                child.command,
                exit.map(|e| e.to_string()).unwrap_or("did not end".into()),
                crate::output::one_line(stderr.trim(), 300)
            )));
        }
        Ok(())
    }
}

impl Drop for Import<'_> {
    fn drop(&mut self) {
        // Not ended: the check failed or the read-back broke off. Kill the import before it
        // has the whole volume, so it commits nothing.
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
    }
}
