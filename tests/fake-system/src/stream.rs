//! The fake send stream. Not ZFS's format, but with the same information a real
//! stream's BEGIN record carries, and deterministic content so that a receiver can
//! check every byte and a resumed stream continues exactly where the first stopped.
//!
//! ```text
//! [QZBFAKE-PACKAGE v1 count=<n>\n]                (only for -I)
//! QZBFAKE-STREAM v1 toname=<ds@snap> toguid=<u64> fromguid=<u64> type=<filesystem|volume>
//!     clone=<0|1> resume=<0|1> offset=<u64> total=<u64> flags=<-|Lecwp>\n   (one line)
//! <content bytes offset..total>                   blake3-XOF(toguid, fromguid) at that position
//! QZBFAKE-END toguid=<u64>\n
//! ```

use std::io::{Read, Write};

#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    pub toname: String,
    pub toguid: u64,
    pub fromguid: u64,
    pub kind: crate::state::Kind,
    pub clone: bool,
    pub resume: bool,
    pub offset: u64,
    pub total: u64,
    pub flags: String,
}

impl Header {
    pub fn line(&self) -> String {
        format!(
            "QZBFAKE-STREAM v1 toname={} toguid={} fromguid={} type={} clone={} resume={} offset={} total={} flags={}\n",
            self.toname,
            self.toguid,
            self.fromguid,
            self.kind.as_str(),
            u8::from(self.clone),
            u8::from(self.resume),
            self.offset,
            self.total,
            if self.flags.is_empty() { "-" } else { &self.flags }
        )
    }

    pub fn parse(line: &str) -> Option<Header> {
        let mut words = line.trim_end_matches('\n').split(' ');
        if words.next()? != "QZBFAKE-STREAM" || words.next()? != "v1" {
            return None;
        }
        let mut h = Header {
            toname: String::new(),
            toguid: 0,
            fromguid: 0,
            kind: crate::state::Kind::Filesystem,
            clone: false,
            resume: false,
            offset: 0,
            total: 0,
            flags: String::new(),
        };
        for w in words {
            let (k, v) = w.split_once('=')?;
            match k {
                "toname" => h.toname = v.to_string(),
                "toguid" => h.toguid = v.parse().ok()?,
                "fromguid" => h.fromguid = v.parse().ok()?,
                "type" => {
                    h.kind = match v {
                        "filesystem" => crate::state::Kind::Filesystem,
                        "volume" => crate::state::Kind::Volume,
                        _ => return None,
                    }
                }
                "clone" => h.clone = v == "1",
                "resume" => h.resume = v == "1",
                "offset" => h.offset = v.parse().ok()?,
                "total" => h.total = v.parse().ok()?,
                "flags" => {
                    h.flags = if v == "-" {
                        String::new()
                    } else {
                        v.to_string()
                    }
                }
                _ => return None,
            }
        }
        if h.toname.is_empty() || !h.toname.contains('@') || h.offset > h.total {
            return None;
        }
        Some(h)
    }
}

pub fn end_line(toguid: u64) -> String {
    format!("QZBFAKE-END toguid={toguid}\n")
}

/// Deterministic content of a stream at a position.
pub struct Content {
    reader: blake3::OutputReader,
}

impl Content {
    pub fn new(toguid: u64, fromguid: u64, offset: u64) -> Content {
        let mut h = blake3::Hasher::new();
        h.update(b"qzb-fake stream content v1");
        h.update(&toguid.to_le_bytes());
        h.update(&fromguid.to_le_bytes());
        let mut reader = h.finalize_xof();
        reader.set_position(offset);
        Content { reader }
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        self.reader.fill(buf);
    }
}

/// Read one '\n'-terminated line (max 4096 bytes) byte by byte; None at clean EOF.
pub fn read_line(r: &mut impl Read) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        let n = r.read(&mut b)?;
        if n == 0 {
            return if line.is_empty() {
                Ok(None)
            } else {
                Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "truncated line",
                ))
            };
        }
        line.push(b[0]);
        if b[0] == b'\n' {
            return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
        }
        if line.len() > 4096 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "line too long",
            ));
        }
    }
}

/// Write a stream's content; `limit` = max bytes of this whole write call (fault injection),
/// `delay` per 64 KiB chunk. Returns bytes written or the error.
pub fn write_content(
    out: &mut impl Write,
    h: &Header,
    budget: &mut Option<u64>,
    delay: Option<std::time::Duration>,
) -> std::io::Result<bool> {
    let mut content = Content::new(h.toguid, h.fromguid, h.offset);
    let mut left = h.total - h.offset;
    let mut buf = vec![0u8; 65536];
    // Tests wait on this file (bytes of content written and flushed so far) instead of time.
    let progress = std::env::var_os("QZB_FAKE_SEND_PROGRESS").filter(|p| !p.is_empty());
    let mut written = 0u64;
    while left > 0 {
        let mut n = left.min(buf.len() as u64) as usize;
        if let Some(b) = budget {
            if *b == 0 {
                return Ok(false);
            }
            n = n.min(*b as usize);
        }
        content.fill(&mut buf[..n]);
        out.write_all(&buf[..n])?;
        if let Some(b) = budget {
            *b -= n as u64;
        }
        left -= n as u64;
        written += n as u64;
        if let Some(d) = delay {
            out.flush()?;
            if let Some(p) = &progress {
                let _ = std::fs::write(p, written.to_string());
            }
            std::thread::sleep(d);
        }
    }
    Ok(true)
}

/// Write bytes of a header/trailer line, honouring the budget. Returns false if cut.
pub fn write_budgeted(
    out: &mut impl Write,
    data: &[u8],
    budget: &mut Option<u64>,
) -> std::io::Result<bool> {
    match budget {
        None => {
            out.write_all(data)?;
            Ok(true)
        }
        Some(b) => {
            let n = (*b).min(data.len() as u64) as usize;
            out.write_all(&data[..n])?;
            *b -= n as u64;
            Ok(n == data.len())
        }
    }
}
