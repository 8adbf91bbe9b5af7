//! fake `zfs send` and `zfs receive`.

use crate::opts::getopt;
use crate::state::{self, Dataset, Kind, Partial, Snapshot, Zfs};
use crate::stream::{self, Header};
use crate::token;
use crate::vstream;
use crate::zfs::{fatal, find_snap, nicenum, parent, split_snap, Res, Unsupported};
use std::io::{IsTerminal, Read, Write};
use std::path::Path;

fn env_u64(k: &str) -> Option<u64> {
    std::env::var(k).ok().and_then(|v| v.parse().ok())
}

/// Fault knobs apply if QZB_FAKE_<X>_MATCH (if set) is a substring of `subject`, and
/// QZB_FAKE_FAULT_ONCE (if set) names a file that does not exist yet (it is then created).
pub(crate) fn fault_applies(prefix: &str, subject: &str) -> bool {
    if let Ok(m) = std::env::var(format!("QZB_FAKE_{prefix}_MATCH")) {
        if !subject.contains(&m) {
            return false;
        }
    }
    if let Ok(once) = std::env::var("QZB_FAKE_FAULT_ONCE") {
        if !once.is_empty() {
            return std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(once)
                .is_ok();
        }
    }
    true
}

struct Plan {
    /// (from snapshot full name or None, to snapshot full name, header without offset)
    streams: Vec<(Option<String>, Header)>,
    package: bool,
    resume_nvl: Option<token::NvList>,
}

fn snap_guid(z: &Zfs, host: &str, full: &str) -> Option<u64> {
    find_snap(z, full).map(|(_, s)| s.guid_for(host, full))
}

/// Find a snapshot anywhere on the host by guid.
fn snap_by_guid(z: &Zfs, host: &str, guid: u64) -> Option<String> {
    for (n, d) in &z.datasets {
        for s in &d.snapshots {
            let full = format!("{n}@{}", s.name);
            if s.guid_for(host, &full) == guid {
                return Some(full);
            }
        }
    }
    None
}

/// Is `from` a valid incremental source for `to` (same dataset and earlier, or in the origin chain)?
fn valid_source(z: &Zfs, from: &str, to: &str) -> bool {
    let (Some((fd, _)), Some((td, _))) = (split_snap(from), split_snap(to)) else {
        return false;
    };
    let (Some((_, fs)), Some((_, ts))) = (find_snap(z, from), find_snap(z, to)) else {
        return false;
    };
    if fd == td {
        return fs.createtxg < ts.createtxg;
    }
    let mut cur = z.datasets.get(td).and_then(|d| d.origin.clone());
    while let Some(o) = cur {
        if o == from {
            return true;
        }
        let (od, _) = split_snap(&o).unwrap_or(("", ""));
        if od == fd {
            return find_snap(z, &o).is_some_and(|(_, os)| fs.createtxg <= os.createtxg);
        }
        cur = z.datasets.get(od).and_then(|d| d.origin.clone());
    }
    false
}

fn plan_send(
    z: &Zfs,
    host: &str,
    p: &crate::opts::Parsed,
    flags: &str,
) -> Result<Result<Plan, String>, Unsupported> {
    if let Some(tok) = p.last('t') {
        if !p.operands.is_empty() || p.has('i') || p.has('I') {
            return Err(Unsupported);
        }
        let nvl = match token::decode(&tok) {
            Ok(n) => n,
            Err(e) => return Ok(Err(format!("cannot resume send: {e}"))),
        };
        let (Some(toname), Some(toguid), Some(offset)) = (
            token::get_str(&nvl, "toname"),
            token::get_u64(&nvl, "toguid"),
            token::get_u64(&nvl, "offset"),
        ) else {
            return Ok(Err("cannot resume send: resume token is corrupt".into()));
        };
        let fromguid = token::get_u64(&nvl, "fromguid").unwrap_or(0);
        let (tod, _) = split_snap(toname).unwrap_or((toname, ""));
        let found = z.datasets.get(tod).and_then(|d| {
            d.snapshots
                .iter()
                .find(|s| s.guid_for(host, &format!("{tod}@{}", s.name)) == toguid)
                .map(|s| (d, s))
        });
        let Some((d, s)) = found else {
            let exists = find_snap(z, toname).is_some();
            return Ok(Err(if exists {
                format!("cannot resume send: '{toname}' is no longer the same snapshot used in the initial send")
            } else {
                format!("cannot resume send: '{toname}' used in the initial send no longer exists")
            }));
        };
        let to = format!("{tod}@{}", s.name);
        let from = if fromguid != 0 {
            match snap_by_guid(z, host, fromguid) {
                Some(f) => Some(f),
                None => {
                    return Ok(Err(format!(
                        "cannot resume send: incremental source {fromguid:#x} no longer exists"
                    )))
                }
            }
        } else {
            None
        };
        let total = if d.kind == Kind::Volume {
            // the token's offset is a byte offset into the volume
            crate::vol::volsize(d)
        } else if from.is_some() {
            s.incremental_size()
        } else {
            s.full_size()
        };
        if offset > total {
            return Ok(Err("cannot resume send: resume token is corrupt".into()));
        }
        let mut tflags = String::new();
        for (c, k) in [
            ('L', "largeblockok"),
            ('e', "embedok"),
            ('c', "compressok"),
            ('w', "rawok"),
        ] {
            if token::has(&nvl, k) || flags.contains(c) {
                tflags.push(c);
            }
        }
        let clone = from
            .as_ref()
            .is_some_and(|f| split_snap(f).map(|x| x.0) != Some(tod));
        let h = Header {
            toname: to.clone(),
            toguid,
            fromguid,
            kind: d.kind,
            clone,
            resume: true,
            offset,
            total,
            flags: tflags,
        };
        return Ok(Ok(Plan {
            streams: vec![(from, h)],
            package: false,
            resume_nvl: Some(nvl),
        }));
    }
    if p.operands.len() != 1 || (p.has('i') && p.has('I')) {
        return Err(Unsupported);
    }
    let to = p.operands[0].clone();
    let Some((tod, _)) = split_snap(&to) else {
        return Err(Unsupported);
    };
    let Some((d, ts)) = find_snap(z, &to) else {
        return Ok(Err(format!("cannot open '{to}': dataset does not exist")));
    };
    let toguid = ts.guid_for(host, &to);
    let expand = |f: String| {
        if f.starts_with('@') {
            format!("{tod}{f}")
        } else {
            f
        }
    };
    let mk = |from: Option<&str>, snapname: &str, s: &Snapshot| {
        let full = format!("{tod}@{snapname}");
        let fromguid = from.and_then(|f| snap_guid(z, host, f)).unwrap_or(0);
        let clone = from.is_some_and(|f| split_snap(f).map(|x| x.0) != Some(tod));
        Header {
            toname: full.clone(),
            toguid: s.guid_for(host, &full),
            fromguid,
            kind: d.kind,
            clone,
            resume: false,
            offset: 0,
            total: if from.is_some() {
                s.incremental_size()
            } else {
                s.full_size()
            },
            flags: flags.to_string(),
        }
    };
    if let Some(f) = p.last('i') {
        if f.contains('#') {
            return Err(Unsupported);
        }
        let f = expand(f);
        if find_snap(z, &f).is_none() {
            return Ok(Err(format!("cannot open '{f}': dataset does not exist")));
        }
        if !valid_source(z, &f, &to) {
            return Ok(Err(format!(
                "warning: cannot send '{to}': not an earlier snapshot from the same fs"
            )));
        }
        let mut h = mk(Some(&f), &ts.name, ts);
        h.toguid = toguid;
        return Ok(Ok(Plan {
            streams: vec![(Some(f), h)],
            package: false,
            resume_nvl: None,
        }));
    }
    if let Some(f) = p.last('I') {
        let f = expand(f);
        let Some((fd, fshort)) = split_snap(&f) else {
            return Err(Unsupported);
        };
        if fd != tod {
            // -I from a clone's origin: a clone stream from the origin to the clone's first
            // snapshot, then the clone's own snapshots up to the target.
            if d.origin.as_deref() != Some(f.as_str()) {
                return Ok(Err(format!(
                    "warning: cannot send '{to}': not an earlier snapshot from the same fs"
                )));
            }
            let mut streams = Vec::new();
            let mut prev_full = f.clone();
            let mut prev_short = f.clone();
            for s in d.snapshots.iter().filter(|s| s.createtxg <= ts.createtxg) {
                streams.push((Some(prev_short.clone()), mk(Some(&prev_full), &s.name, s)));
                prev_full = format!("{tod}@{}", s.name);
                prev_short = s.name.clone();
            }
            return Ok(Ok(Plan {
                streams,
                package: true,
                resume_nvl: None,
            }));
        }
        let Some((_, fs)) = find_snap(z, &f) else {
            return Ok(Err(format!("cannot open '{f}': dataset does not exist")));
        };
        if fs.createtxg >= ts.createtxg {
            return Ok(Err(format!(
                "WARNING: could not send {to}:\nincremental source ({f}) is not earlier than it"
            )));
        }
        let mut streams = Vec::new();
        let mut prev = fshort.to_string();
        for s in d
            .snapshots
            .iter()
            .filter(|s| s.createtxg > fs.createtxg && s.createtxg <= ts.createtxg)
        {
            let from_full = format!("{tod}@{prev}");
            streams.push((Some(prev.clone()), mk(Some(&from_full), &s.name, s)));
            prev = s.name.clone();
        }
        return Ok(Ok(Plan {
            streams,
            package: true,
            resume_nvl: None,
        }));
    }
    Ok(Ok(Plan {
        streams: vec![(None, mk(None, &ts.name, ts))],
        package: false,
        resume_nvl: None,
    }))
}

pub fn send(root: &Path, host: &str, args: &[String]) -> Res {
    let p = getopt(args, "iIt", "nvPpLecwb").map_err(|_| Unsupported)?;
    let mut flags = String::new();
    for c in ['L', 'e', 'c', 'w', 'p'] {
        if p.has(c) {
            flags.push(c);
        }
    }
    let st = match state::read(root, host) {
        Ok(s) => s,
        Err(e) => return Ok(fatal(e)),
    };
    let plan = match plan_send(&st.zfs, host, &p, &flags)? {
        Ok(pl) => pl,
        Err(msg) => {
            eprintln!("{msg}");
            return Ok(1);
        }
    };
    let volume = plan
        .streams
        .first()
        .is_some_and(|(_, h)| h.kind == Kind::Volume);
    let mut vsubs = Vec::new();
    let mut compound = None;
    if volume {
        for (_, h) in &plan.streams {
            if let Some(d) = h
                .toname
                .split_once('@')
                .and_then(|(dn, _)| st.zfs.datasets.get(dn))
            {
                // without -L, zfs splits larger blocks into 128 KiB records: not modelled
                if crate::vol::volblocksize(d) > vstream::OLD_MAX_BLOCK && !flags.contains('L') {
                    return Err(Unsupported);
                }
            }
            match vstream::plan(&st.zfs, host, h) {
                Ok(sub) => vsubs.push(sub),
                Err(msg) => {
                    eprintln!("{msg}");
                    return Ok(1);
                }
            }
        }
        if plan.resume_nvl.is_none() && (plan.package || p.has('p')) {
            let from = plan.streams.first().and_then(|(f, _)| f.as_deref());
            let fromsnap = from.map(|f| f.rsplit_once('@').map_or(f, |x| x.1));
            let to = plan.streams.last().map(|(_, h)| h.toname.as_str());
            compound = Some(vstream::Compound::new(
                to.unwrap_or_default(),
                fromsnap,
                p.has('p'),
            ));
        }
    }
    let dry = p.has('n');
    let verbose = p.flags.iter().filter(|(c, _)| *c == 'v').count() > 0;
    let parsable = p.has('P');
    if verbose {
        let mut text = String::new();
        if let Some(nvl) = &plan.resume_nvl {
            text.push_str("resume token contents:\n");
            text.push_str(&token::print(nvl));
        }
        let mut total = compound.as_ref().map_or(0, |c| c.size());
        for (i, (from, h)) in plan.streams.iter().enumerate() {
            // volumes: the exact bytes of each sub-stream, and the package wrapper in the total
            let size = match vsubs.get(i) {
                Some(sub) => sub.size(),
                None => h.total - h.offset,
            };
            total += size;
            if parsable {
                match from {
                    Some(f) => text.push_str(&format!("incremental\t{f}\t{}\t{size}\n", h.toname)),
                    None => text.push_str(&format!("full\t{}\t{size}\n", h.toname)),
                }
            } else {
                match from {
                    Some(f) if f.contains('@') => {
                        text.push_str(&format!("send from {f} to {}", h.toname))
                    }
                    Some(f) => text.push_str(&format!("send from @{f} to {}", h.toname)),
                    None => text.push_str(&format!("full send of {}", h.toname)),
                }
                if size != 0 {
                    text.push_str(&format!(
                        " estimated size is {}",
                        nicenum(size).trim_end_matches('B')
                    ));
                }
                text.push('\n');
            }
        }
        if parsable {
            text.push_str(&format!("size\t{total}\n"));
        } else {
            text.push_str(&format!(
                "total estimated size is {}\n",
                nicenum(total).trim_end_matches('B')
            ));
        }
        if dry {
            print!("{text}");
        } else {
            eprint!("{text}");
        }
    }
    if dry {
        return Ok(0);
    }
    let to_name = plan
        .streams
        .last()
        .map(|(_, h)| h.toname.clone())
        .unwrap_or_default();
    let stdout = std::io::stdout();
    if stdout.is_terminal() {
        eprintln!(
            "Error: Stream can not be written to a terminal.\nYou must redirect standard output."
        );
        return Ok(1);
    }
    if std::env::var("QZB_FAKE_SEND_FAIL").is_ok_and(|v| !v.is_empty())
        && fault_applies("SEND", &to_name)
    {
        eprintln!("warning: cannot send '{to_name}': Input/output error");
        return Ok(1);
    }
    let mut budget = env_u64("QZB_FAKE_SEND_DIE_AFTER");
    if budget.is_some() && !fault_applies("SEND", &to_name) {
        budget = None;
    }
    let delay = env_u64("QZB_FAKE_SEND_DELAY_MS").map(std::time::Duration::from_millis);
    let mut out = std::io::BufWriter::with_capacity(65536, stdout.lock());
    let result = if volume {
        let flip = env_u64("QZB_FAKE_SEND_FLIP_BLOCK");
        let drop = env_u64("QZB_FAKE_SEND_DROP_BLOCK");
        let applies = (flip.is_some() || drop.is_some()) && fault_applies("SEND", &to_name);
        let mut faults = vstream::Faults {
            budget,
            delay,
            flip: flip.filter(|_| applies),
            drop: drop.filter(|_| applies),
        };
        vstream::write(&mut out, compound.as_ref(), &vsubs, &mut faults)
    } else {
        (|| -> std::io::Result<bool> {
            if plan.package
                && !stream::write_budgeted(
                    &mut out,
                    format!("QZBFAKE-PACKAGE v1 count={}\n", plan.streams.len()).as_bytes(),
                    &mut budget,
                )?
            {
                return Ok(false);
            }
            for (_, h) in &plan.streams {
                if !stream::write_budgeted(&mut out, h.line().as_bytes(), &mut budget)?
                    || !stream::write_content(&mut out, h, &mut budget, delay)?
                    || !stream::write_budgeted(
                        &mut out,
                        stream::end_line(h.toguid).as_bytes(),
                        &mut budget,
                    )?
                {
                    return Ok(false);
                }
            }
            out.flush()?;
            Ok(true)
        })()
    };
    match result {
        Ok(true) => Ok(0),
        Ok(false) => {
            let _ = out.flush();
            eprintln!("warning: cannot send '{to_name}': Input/output error");
            Ok(1)
        }
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            eprintln!("warning: cannot send '{to_name}': Broken pipe");
            Ok(1)
        }
        Err(e) => {
            eprintln!("warning: cannot send '{to_name}': {e}");
            Ok(1)
        }
    }
}

// ---------------------------------------------------------------- receive

struct RecvOpts {
    resumable: bool,
    force: bool,
    origin: Option<String>,
    props: Vec<(String, String)>,
}

#[derive(Debug)]
struct Check {
    destsnap: String,
    d: String,
    newfs: bool,
    origin: Option<String>,
    errbuf: &'static str,
    /// The snapshot already exists with this guid: consume the stream, change nothing.
    skip: bool,
    /// Incremental with -F: roll back to this many snapshots.
    keep_snaps: Option<usize>,
}

fn check(z: &Zfs, host: &str, h: &Header, dest_arg: &str, o: &RecvOpts) -> Result<Check, String> {
    let (_, snapname) = split_snap(&h.toname).ok_or("cannot receive: invalid stream")?;
    let destsnap = if dest_arg.contains('@') {
        dest_arg.to_string()
    } else {
        format!("{dest_arg}@{snapname}")
    };
    let (d, dsnap) = split_snap(&destsnap)
        .ok_or_else(|| format!("cannot receive: invalid name '{destsnap}'"))?;
    let d = d.to_string();
    let resuming = h.resume;
    // `-o origin=` concerns the stream that creates the clone; later streams of a -I package
    // are plain incrementals into the dataset it created.
    let origin_applies = h.fromguid == 0 || h.clone;
    let newish = origin_applies;
    let wants_newfs = newish && !resuming;
    let resuming_newfs = newish && resuming;
    let mut origin = None;
    if let Some(os) = o.origin.as_ref().filter(|_| origin_applies) {
        match find_snap(z, os) {
            Some((_, s)) if s.guid_for(host, os) == h.fromguid || h.fromguid == 0 => origin = Some(os.clone()),
            Some(_) => {
                return Err(format!(
                    "cannot receive new filesystem stream: most recent snapshot of {d} does not\nmatch incremental source"
                ))
            }
            None => return Err(format!("cannot open '{os}': dataset does not exist")),
        }
    } else if h.clone {
        match snap_by_guid(z, host, h.fromguid) {
            Some(f) => origin = Some(f),
            None => {
                return Err(format!(
                    "cannot receive: local origin for clone {destsnap} does not exist"
                ))
            }
        }
    }
    let errbuf = if wants_newfs {
        "cannot receive new filesystem stream"
    } else if resuming {
        "cannot receive resume stream"
    } else {
        "cannot receive incremental stream"
    };
    let mut c = Check {
        destsnap: destsnap.clone(),
        d: d.clone(),
        newfs: false,
        origin,
        errbuf,
        skip: false,
        keep_snaps: None,
    };
    if let Some(ds) = z.datasets.get(&d) {
        if wants_newfs {
            if !o.force {
                return Err(format!(
                    "{errbuf}: destination '{d}' exists\nmust specify -F to overwrite it"
                ));
            }
            if let Some(s) = ds.snapshots.first() {
                return Err(format!(
                    "{errbuf}: destination has snapshots (eg. {d}@{})\nmust destroy them to overwrite it",
                    s.name
                ));
            }
        }
        if resuming_newfs && !ds.inconsistent && !o.force {
            return Err(format!("{errbuf}: Resuming recv on existing destination '{d}'\nmust specify -F to overwrite it"));
        }
        if wants_newfs && ds.origin.is_some() {
            return Err(format!(
                "{errbuf}: destination '{d}' is a clone\nmust destroy it to overwrite it"
            ));
        }
        if resuming {
            match &ds.partial {
                Some(p)
                    if p.toguid == h.toguid
                        && p.fromguid == h.fromguid
                        && p.resume_offset.unwrap_or(p.bytes) == h.offset =>
                {
                    c.newfs = ds.inconsistent;
                    if c.origin.is_none() {
                        c.origin = p.origin.clone();
                    }
                }
                _ => {
                    return Err(if o.resumable {
                        format!("{errbuf}: kernel modules must be upgraded to receive this stream.")
                    } else {
                        format!("{errbuf}: invalid backup stream")
                    })
                }
            }
        } else if ds.partial.is_some() {
            return Err(format!("{errbuf}: destination {d} contains partially-complete state from \"zfs receive -s\"."));
        } else if wants_newfs {
            c.newfs = true;
        } else {
            let existing = ds.snapshots.iter().find(|s| s.name == dsnap);
            let same_guid = ds
                .snapshots
                .iter()
                .any(|s| s.guid_for(host, &format!("{d}@{}", s.name)) == h.toguid);
            if same_guid {
                c.skip = true;
                return Ok(c);
            }
            if existing.is_some() {
                return Err(format!(
                    "cannot restore to {destsnap}: destination already exists"
                ));
            }
            let base = ds
                .snapshots
                .iter()
                .position(|s| s.guid_for(host, &format!("{d}@{}", s.name)) == h.fromguid);
            let Some(base) = base else {
                return Err(format!(
                    "{errbuf}: most recent snapshot of {d} does not\nmatch incremental source"
                ));
            };
            if o.force {
                c.keep_snaps = Some(base + 1);
            } else if base + 1 != ds.snapshots.len() || ds.modified {
                return Err(format!(
                    "{errbuf}: destination {d} has been modified\nsince most recent snapshot"
                ));
            }
        }
    } else {
        if !wants_newfs {
            return Err(format!("{errbuf}: destination '{d}' does not exist"));
        }
        let Some(par) = parent(&d) else {
            return Err(format!("{errbuf}: destination '{d}' does not exist"));
        };
        match z.datasets.get(par) {
            None => {
                return Err(format!(
                    "cannot open '{par}': dataset does not exist\n{errbuf}: unable to restore to destination"
                ))
            }
            Some(pd) if pd.kind != Kind::Filesystem => {
                return Err(format!("{errbuf}: parent '{par}' is not a filesystem"))
            }
            _ => {}
        }
        c.newfs = true;
    }
    Ok(c)
}

enum Outcome {
    Complete,
    /// Stream ended early (or bad data) after this many content bytes (absolute offset).
    Truncated(u64),
}

fn read_content(
    input: &mut impl Read,
    h: &Header,
    die_after: &mut Option<u64>,
) -> std::io::Result<Outcome> {
    let mut expected = stream::Content::new(h.toguid, h.fromguid, h.offset);
    let mut pos = h.offset;
    let mut buf = vec![0u8; 65536];
    let mut exp = vec![0u8; 65536];
    while pos < h.total {
        let mut want = ((h.total - pos) as usize).min(buf.len());
        if let Some(b) = die_after {
            if *b == 0 {
                return Ok(Outcome::Truncated(pos));
            }
            want = want.min(*b as usize);
        }
        let n = input.read(&mut buf[..want])?;
        if n == 0 {
            return Ok(Outcome::Truncated(pos));
        }
        expected.fill(&mut exp[..n]);
        if let Some(bad) = (0..n).find(|&i| buf[i] != exp[i]) {
            return Ok(Outcome::Truncated(pos + bad as u64));
        }
        pos += n as u64;
        if let Some(b) = die_after {
            *b -= n as u64;
        }
    }
    let end = stream::read_line(input);
    match end {
        Ok(Some(l)) if l == stream::end_line(h.toguid) => Ok(Outcome::Complete),
        _ => Ok(Outcome::Truncated(pos)),
    }
}

fn commit(z: &mut Zfs, host: &str, h: &Header, c: &Check, o: &RecvOpts) {
    let (_, snapname) = split_snap(&c.destsnap).unwrap_or(("", ""));
    z.last_txg += 1;
    let txg = z.last_txg;
    let base_size = c
        .origin
        .as_deref()
        .and_then(|o| find_snap(z, o))
        .map(|(_, s)| s.full_size())
        .or_else(|| {
            z.datasets
                .get(&c.d)
                .and_then(|d| d.snapshots.last())
                .map(|s| s.full_size())
        });
    let ds = z.datasets.entry(c.d.clone()).or_insert_with(|| Dataset {
        kind: h.kind,
        createtxg: txg,
        guid: Some(state::stable_id(&[
            "received dataset",
            host,
            &c.d,
            &txg.to_string(),
        ])),
        ..Default::default()
    });
    if c.newfs && !ds.inconsistent && ds.partial.is_none() && ds.snapshots.is_empty() {
        // new or overwritten (-F) filesystem
        ds.kind = h.kind;
        ds.origin = c.origin.clone();
    }
    if c.newfs {
        ds.origin = c.origin.clone();
        for (k, v) in &o.props {
            if k != "origin" {
                ds.props.insert(k.clone(), v.clone());
            }
        }
    }
    if let Some(keep) = c.keep_snaps {
        ds.snapshots.truncate(keep);
    }
    let full_stream = h.fromguid == 0;
    ds.snapshots.push(Snapshot {
        name: snapname.to_string(),
        createtxg: txg,
        guid: Some(h.toguid),
        size: Some(if full_stream {
            h.total
        } else {
            base_size.unwrap_or(state::DEFAULT_SNAP_SIZE)
        }),
        incr_size: if full_stream { None } else { Some(h.total) },
        used: None,
        creation: None,
        delta: None,
        props: Default::default(),
    });
    ds.partial = None;
    ds.inconsistent = false;
    ds.modified = false;
}

/// `vol`: for a volume stream, the volume offset of the first block not committed and the
/// delta committed so far (`bytes` is then stream bytes).
fn save_partial(
    z: &mut Zfs,
    h: &Header,
    c: &Check,
    bytes: u64,
    vol: Option<(u64, crate::vol::VolDelta)>,
) -> String {
    let (_, snapname) = split_snap(&c.destsnap).unwrap_or(("", ""));
    let exists = z.datasets.contains_key(&c.d);
    if !exists {
        z.last_txg += 1;
        let txg = z.last_txg;
        z.datasets.insert(
            c.d.clone(),
            Dataset {
                kind: h.kind,
                createtxg: txg,
                inconsistent: true,
                origin: c.origin.clone(),
                ..Default::default()
            },
        );
    }
    let ds = z.datasets.get_mut(&c.d).expect("just ensured");
    let p = Partial {
        toname: h.toname.clone(),
        toguid: h.toguid,
        fromguid: h.fromguid,
        bytes,
        total: h.total,
        snapname: snapname.to_string(),
        stream_type: h.kind,
        origin: c.origin.clone(),
        flags: h.flags.chars().filter(|c| "Lecw".contains(*c)).collect(),
        resume_offset: vol.as_ref().map(|v| v.0),
        delta: vol.map(|v| v.1),
    };
    let tok = token::encode(&token::for_partial(&p));
    ds.partial = Some(p);
    tok
}

pub fn receive(root: &Path, host: &str, args: &[String]) -> Res {
    let p = getopt(args, "ox", "suFA").map_err(|_| Unsupported)?;
    if p.operands.len() != 1 {
        return Err(Unsupported);
    }
    let dest = p.operands[0].clone();
    if p.has('A') {
        if p.flags.len() != 1 {
            return Err(Unsupported);
        }
        let r = state::update(root, host, |st| {
            let z = &mut st.zfs;
            let Some(ds) = z.datasets.get_mut(&dest) else {
                return Ok(Err(format!("cannot open '{dest}': dataset does not exist")));
            };
            if ds.partial.is_none() {
                return Ok(Err(format!(
                    "'{dest}' does not have any resumable receive state to abort"
                )));
            }
            if ds.inconsistent {
                z.datasets.remove(&dest);
            } else {
                ds.partial = None;
            }
            Ok(Ok(()))
        });
        return Ok(match r {
            Ok(Ok(())) => 0,
            Ok(Err(e)) => {
                eprintln!("{e}");
                1
            }
            Err(e) => fatal(e),
        });
    }
    let mut o = RecvOpts {
        resumable: p.has('s'),
        force: p.has('F'),
        origin: None,
        props: Vec::new(),
    };
    for kv in p.values('o') {
        let (k, v) = kv.split_once('=').ok_or(Unsupported)?;
        if k == "origin" {
            o.origin = Some(v.to_string());
        } else {
            o.props.push((k.to_string(), v.to_string()));
        }
    }
    let stdin = std::io::stdin();
    let mut input = std::io::BufReader::with_capacity(65536, stdin.lock());
    // A real stream starts with DRR_BEGIN (type 0); the fake's own format with a text line.
    let real = matches!(std::io::BufRead::fill_buf(&mut input), Ok(b) if b.first() == Some(&0));
    if real {
        let mut die_after = env_u64("QZB_FAKE_RECV_DIE_AFTER");
        if die_after.is_some() && !fault_applies("RECV", &dest) {
            die_after = None;
        }
        return Ok(receive_real(root, host, &dest, &o, &mut input, die_after));
    }
    let first = match stream::read_line(&mut input) {
        Ok(Some(l)) => l,
        _ => {
            eprintln!("cannot receive: failed to read from stream");
            return Ok(1);
        }
    };
    let mut count = 1usize;
    let mut line = Some(first.clone());
    if let Some(rest) = first.strip_prefix("QZBFAKE-PACKAGE v1 count=") {
        count = rest.trim_end().parse().unwrap_or(0);
        line = None;
        if dest.contains('@') {
            eprintln!("cannot receive: cannot specify snapshot name for multi-snapshot stream");
            return Ok(1);
        }
    }
    let mut die_after = env_u64("QZB_FAKE_RECV_DIE_AFTER");
    if die_after.is_some() && !fault_applies("RECV", &dest) {
        die_after = None;
    }
    for _ in 0..count {
        let l = match line.take() {
            Some(l) => l,
            None => match stream::read_line(&mut input) {
                Ok(Some(l)) => l,
                _ => {
                    eprintln!("cannot receive: failed to read from stream");
                    return Ok(1);
                }
            },
        };
        let Some(h) = Header::parse(&l) else {
            eprintln!("cannot receive: invalid stream (bad magic number)");
            return Ok(1);
        };
        let st = match state::read(root, host) {
            Ok(s) => s,
            Err(e) => return Ok(fatal(e)),
        };
        let c = match check(&st.zfs, host, &h, &dest, &o) {
            Ok(c) => c,
            Err(msg) => {
                eprintln!("{msg}");
                return Ok(1);
            }
        };
        let outcome = match read_content(&mut input, &h, &mut die_after) {
            Ok(x) => x,
            Err(_) => Outcome::Truncated(h.offset),
        };
        if c.skip {
            if let Outcome::Truncated(_) = outcome {
                eprintln!("{}: checksum mismatch or incomplete stream", c.errbuf);
                return Ok(1);
            }
            continue;
        }
        let resumable = o.resumable;
        let r = state::update(root, host, |st| {
            // the world may have changed while the data streamed
            let c2 = match check(&st.zfs, host, &h, &dest, &o) {
                Ok(c2) => c2,
                Err(msg) => return Ok(Err(msg)),
            };
            match outcome {
                Outcome::Complete => {
                    commit(&mut st.zfs, host, &h, &c2, &o);
                    Ok(Ok(()))
                }
                Outcome::Truncated(bytes) => {
                    if !resumable {
                        return Ok(Err(format!(
                            "{}: checksum mismatch or incomplete stream",
                            c2.errbuf
                        )));
                    }
                    let tok = save_partial(&mut st.zfs, &h, &c2, bytes, None);
                    Ok(Err(format!(
                        "{}: checksum mismatch or incomplete stream.\nPartially received snapshot is saved.\nA resuming stream can be generated on the sending system by running:\n    zfs send -t {tok}",
                        c2.errbuf
                    )))
                }
            }
        });
        match r {
            Ok(Ok(())) => {}
            Ok(Err(msg)) => {
                eprintln!("{msg}");
                return Ok(1);
            }
            Err(e) => return Ok(fatal(e)),
        }
    }
    Ok(0)
}

/// The sub-stream being received from a real-format stream.
struct Current {
    h: Header,
    c: Check,
    applied: vstream::Applied,
    /// Stream bytes of earlier runs (a resumed receive continues the token's count).
    bytes_base: u64,
    /// Stream offset of this sub-stream's BEGIN, and of the end of its last committed record.
    start: u64,
    committed: u64,
}

enum Step {
    Continue,
    Done,
    /// An error message (printed, exit 1).
    Fail(String),
    /// The stream cannot go on here (corrupt block, out of order): as if it was cut.
    Cut,
}

struct RealReceive<'a> {
    root: &'a Path,
    host: &'a str,
    dest: &'a str,
    o: &'a RecvOpts,
    cur: Option<Current>,
    compound: bool,
}

impl RealReceive<'_> {
    /// Handles one verified record that spans stream bytes `start..end`.
    fn handle(&mut self, ev: vstream::Ev, start: u64, end: u64) -> Step {
        use qzb_protocol::zstream::EndKind;
        use vstream::Ev;
        match ev {
            Ev::Begin { compound: true, .. } => {
                self.compound = true;
                if self.dest.contains('@') {
                    return Step::Fail(
                        "cannot receive: cannot specify snapshot name for multi-snapshot stream"
                            .into(),
                    );
                }
                Step::Continue
            }
            Ev::Begin {
                features,
                objset,
                flags,
                toguid,
                fromguid,
                toname,
                resume_offset,
                ..
            } => {
                if objset != vstream::OBJSET_ZVOL {
                    return Step::Fail(
                        "qzb-fake zfs: unsupported: a real-format stream of a filesystem".into(),
                    );
                }
                let resume = features & qzb_protocol::zstream::feature::RESUMING != 0;
                let h = Header {
                    toname,
                    toguid,
                    fromguid,
                    kind: Kind::Volume,
                    clone: vstream::is_clone(flags),
                    resume,
                    offset: resume_offset.unwrap_or(0),
                    total: 0,
                    flags: vstream::token_flags(features),
                };
                let st = match state::read(self.root, self.host) {
                    Ok(s) => s,
                    Err(e) => return Step::Fail(e),
                };
                let c = match check(&st.zfs, self.host, &h, self.dest, self.o) {
                    Ok(c) => c,
                    Err(msg) => return Step::Fail(msg),
                };
                let partial = st.zfs.datasets.get(&c.d).and_then(|d| d.partial.as_ref());
                let (delta, bytes_base) = match partial {
                    Some(p) if resume => (p.delta.clone().unwrap_or_default(), p.bytes),
                    _ => (Default::default(), 0),
                };
                self.cur = Some(Current {
                    applied: vstream::Applied::new(delta, h.offset),
                    h,
                    c,
                    bytes_base,
                    start,
                    committed: end,
                });
                Step::Continue
            }
            Ev::End(EndKind::CompoundHeader) => Step::Continue,
            Ev::End(EndKind::Package) => Step::Done,
            Ev::End(EndKind::Substream) => {
                let Some(x) = self.cur.take() else {
                    return Step::Fail("cannot receive: invalid stream".into());
                };
                if !x.c.skip {
                    if let Err(msg) = self.commit(&x) {
                        return Step::Fail(msg);
                    }
                }
                if self.compound {
                    Step::Continue
                } else {
                    Step::Done
                }
            }
            ev => match self.cur.as_mut() {
                Some(x) => {
                    if x.applied.apply(&ev).is_err() {
                        return Step::Cut;
                    }
                    x.committed = end;
                    Step::Continue
                }
                None => Step::Fail("cannot receive: invalid stream".into()),
            },
        }
    }

    fn commit(&self, x: &Current) -> Result<(), String> {
        let (host, dest, o) = (self.host, self.dest, self.o);
        let r = state::update(self.root, host, |st| {
            let c2 = match check(&st.zfs, host, &x.h, dest, o) {
                Ok(c2) => c2,
                Err(msg) => return Ok(Err(msg)),
            };
            commit(&mut st.zfs, host, &x.h, &c2, o);
            let a = &x.applied;
            if let Some(ds) = st.zfs.datasets.get_mut(&c2.d) {
                ds.kind = Kind::Volume;
                if a.vbs != 0 {
                    ds.volblocksize = Some(a.vbs);
                }
                if let Some(v) = a.volsize {
                    ds.volsize = Some(v);
                }
                if let Some(s) = ds.snapshots.last_mut() {
                    let bytes = a.data_bytes();
                    if x.h.fromguid == 0 {
                        s.size = Some(bytes);
                    } else {
                        s.incr_size = Some(bytes);
                    }
                    s.delta = Some(a.delta.clone());
                }
            }
            Ok(Ok(()))
        });
        match r {
            Ok(r) => r,
            Err(e) => Err(e),
        }
    }

    /// The stream ended (or went bad) before the current sub-stream's END.
    fn cut(&mut self) -> i32 {
        let Some(x) = self.cur.take() else {
            eprintln!("cannot receive: failed to read from stream");
            return 1;
        };
        if x.c.skip {
            eprintln!("{}: checksum mismatch or incomplete stream", x.c.errbuf);
            return 1;
        }
        let resumable = self.o.resumable;
        let (host, dest, o) = (self.host, self.dest, self.o);
        let bytes = x.bytes_base + (x.committed - x.start);
        let r = state::update(self.root, host, |st| {
            let c2 = match check(&st.zfs, host, &x.h, dest, o) {
                Ok(c2) => c2,
                Err(msg) => return Ok(msg),
            };
            if !resumable {
                return Ok(format!(
                    "{}: checksum mismatch or incomplete stream",
                    c2.errbuf
                ));
            }
            let vol = Some((x.applied.next, x.applied.delta.clone()));
            let tok = save_partial(&mut st.zfs, &x.h, &c2, bytes, vol);
            Ok(format!(
                "{}: checksum mismatch or incomplete stream.\nPartially received snapshot is saved.\nA resuming stream can be generated on the sending system by running:\n    zfs send -t {tok}",
                c2.errbuf
            ))
        });
        match r {
            Ok(msg) => {
                eprintln!("{msg}");
                1
            }
            Err(e) => fatal(e),
        }
    }
}

/// `zfs receive` of a real-format stream (volumes; see vstream.rs). A record is applied only
/// once the next record's header checksum (which covers its payload) has been verified, as
/// zfs does; an END verifies everything before it.
fn receive_real(
    root: &Path,
    host: &str,
    dest: &str,
    o: &RecvOpts,
    input: &mut impl Read,
    mut die_after: Option<u64>,
) -> i32 {
    use qzb_protocol::zstream::Tap;
    let mut tap = Tap::new(vstream::RxSink::default());
    let mut rx = RealReceive {
        root,
        host,
        dest,
        o,
        cur: None,
        compound: false,
    };
    let mut pending: Option<(vstream::Ev, u64, u64)> = None;
    let mut buf = vec![0u8; 65536];
    loop {
        let mut want = buf.len();
        if let Some(b) = die_after {
            want = want.min(b as usize);
        }
        let n = if want == 0 {
            0
        } else {
            match input.read(&mut buf[..want]) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => 0,
            }
        };
        if let Some(b) = die_after.as_mut() {
            *b -= n as u64;
        }
        let fed = if n == 0 {
            Err(())
        } else {
            tap.feed(&buf[..n]).map_err(|_| ())
        };
        // Records the tap completed are verified up to the last one; an END verifies itself.
        let events: Vec<_> = tap.sink_mut().events.drain(..).collect();
        for (ev, start, end) in events {
            let verifies_itself = matches!(ev, vstream::Ev::End(_));
            if let Some((p, ps, pe)) = pending.take() {
                match rx.handle(p, ps, pe) {
                    Step::Continue => {}
                    Step::Done => return 0,
                    Step::Fail(msg) => {
                        eprintln!("{msg}");
                        return 1;
                    }
                    Step::Cut => return rx.cut(),
                }
            }
            if verifies_itself {
                match rx.handle(ev, start, end) {
                    Step::Continue => {}
                    Step::Done => return 0,
                    Step::Fail(msg) => {
                        eprintln!("{msg}");
                        return 1;
                    }
                    Step::Cut => return rx.cut(),
                }
            } else {
                pending = Some((ev, start, end));
            }
        }
        if fed.is_err() {
            return rx.cut();
        }
    }
}
