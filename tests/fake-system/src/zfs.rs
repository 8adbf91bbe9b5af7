//! fake `zfs`: list, get, snapshot, create, destroy (send/receive in sendrecv.rs).

use crate::opts::getopt;
use crate::state::{self, Dataset, Kind, Snapshot, Zfs};
use std::cmp::Ordering;
use std::path::Path;

pub const DEFAULT_AVAILABLE: u64 = 1 << 40;

pub fn unsupported(tool: &str, args: &[String]) -> i32 {
    eprintln!("qzb-fake {tool}: unsupported: {}", args.join(" "));
    2
}

pub fn main(root: &Path, host: &str, args: &[String]) -> i32 {
    let all: Vec<String> = std::iter::once("zfs".to_string())
        .chain(args.iter().cloned())
        .collect();
    let r = match args.first().map(String::as_str) {
        Some("list") => list(root, host, &args[1..]),
        Some("get") => get(root, host, &args[1..]),
        Some("snapshot") | Some("snap") => snapshot(root, host, &args[1..]),
        Some("create") => create(root, host, &args[1..]),
        Some("destroy") => destroy(root, host, &args[1..]),
        Some("send") => crate::sendrecv::send(root, host, &args[1..]),
        Some("receive") | Some("recv") => crate::sendrecv::receive(root, host, &args[1..]),
        _ => Err(Unsupported),
    };
    match r {
        Ok(code) => code,
        Err(Unsupported) => unsupported("zfs", &all),
    }
}

/// Marker: the argv is outside what the fake implements.
pub struct Unsupported;

pub type Res = Result<i32, Unsupported>;

pub fn fatal(msg: impl std::fmt::Display) -> i32 {
    eprintln!("qzb-fake: {msg}");
    2
}

// ---------------------------------------------------------------- helpers

pub fn split_snap(name: &str) -> Option<(&str, &str)> {
    let (d, s) = name.split_once('@')?;
    if d.is_empty() || s.is_empty() || s.contains('@') {
        return None;
    }
    Some((d, s))
}

pub fn find_snap<'a>(z: &'a Zfs, full: &str) -> Option<(&'a Dataset, &'a Snapshot)> {
    let (d, s) = split_snap(full)?;
    let ds = z.datasets.get(d)?;
    Some((ds, ds.snapshots.iter().find(|x| x.name == s)?))
}

pub fn is_descendant(name: &str, of: &str) -> bool {
    name.len() > of.len() && name.starts_with(of) && name.as_bytes()[of.len()] == b'/'
}

pub fn depth_below(name: &str, of: &str) -> usize {
    name[of.len()..].matches('/').count()
}

pub fn parent(name: &str) -> Option<&str> {
    name.rsplit_once('/').map(|(p, _)| p)
}

pub fn nicenum(n: u64) -> String {
    if n < 1024 {
        return format!("{n}B");
    }
    let units = ["B", "K", "M", "G", "T", "P", "E"];
    let mut idx = 0;
    let mut v = n;
    while v >= 1024 && idx < 6 {
        v /= 1024;
        idx += 1;
    }
    let val = n as f64 / (1u64 << (10 * idx)) as f64;
    for prec in (0..=2).rev() {
        let s = format!("{val:.prec$}{}", units[idx]);
        if s.len() <= 5 {
            return s;
        }
    }
    format!("{val:.0}{}", units[idx])
}

pub enum Ent<'a> {
    Ds(&'a str, &'a Dataset),
    Snap(&'a str, &'a Dataset, &'a Snapshot),
}

impl Ent<'_> {
    pub fn name(&self) -> String {
        match self {
            Ent::Ds(n, _) => n.to_string(),
            Ent::Snap(n, _, s) => format!("{n}@{}", s.name),
        }
    }
    fn ds_name(&self) -> &str {
        match self {
            Ent::Ds(n, _) | Ent::Snap(n, _, _) => n,
        }
    }
    fn createtxg(&self) -> u64 {
        match self {
            Ent::Ds(_, d) => d.createtxg,
            Ent::Snap(_, _, s) => s.createtxg,
        }
    }
}

fn latest_size(d: &Dataset) -> u64 {
    d.snapshots.last().map(|s| s.full_size()).unwrap_or(0)
}

fn used_of(z: &Zfs, name: &str, d: &Dataset) -> u64 {
    if let Some(u) = d.used {
        return u;
    }
    let mut total = d.referenced.unwrap_or_else(|| latest_size(d));
    for (n, c) in &z.datasets {
        if is_descendant(n, name) {
            total += c
                .used
                .unwrap_or_else(|| c.referenced.unwrap_or_else(|| latest_size(c)));
        }
    }
    total
}

fn available_of(z: &Zfs, name: &str) -> u64 {
    let mut cur = Some(name);
    while let Some(n) = cur {
        if let Some(a) = z.datasets.get(n).and_then(|d| d.available) {
            return a;
        }
        cur = parent(n);
    }
    DEFAULT_AVAILABLE
}

/// Locally set or inherited property: (value, source).
fn inherited(z: &Zfs, name: &str, prop: &str) -> Option<(String, String, String)> {
    let mut cur = Some(name);
    while let Some(n) = cur {
        if let Some(v) = z.datasets.get(n).and_then(|d| d.props.get(prop)) {
            let src = if n == name {
                "local".to_string()
            } else {
                format!("inherited from {n}")
            };
            return Some((v.clone(), src, n.to_string()));
        }
        cur = parent(n);
    }
    None
}

fn num(v: u64, parsable: bool) -> String {
    if parsable {
        v.to_string()
    } else {
        nicenum(v)
    }
}

/// (value, source) of a property, None if the fake does not model it.
pub fn prop(z: &Zfs, host: &str, e: &Ent, p: &str, parsable: bool) -> Option<(String, String)> {
    let none = || ("-".to_string(), "-".to_string());
    let stat = |v: String| (v, "-".to_string());
    Some(match (e, p) {
        (_, "name") => stat(e.name()),
        (Ent::Ds(_, d), "type") => stat(d.kind.as_str().into()),
        (Ent::Snap(..), "type") => stat("snapshot".into()),
        (Ent::Ds(_, d), "origin") => stat(d.origin.clone().unwrap_or_else(|| "-".into())),
        (Ent::Snap(..), "origin") => none(),
        (_, "createtxg") => stat(e.createtxg().to_string()),
        (Ent::Ds(n, d), "guid") => stat(d.guid_for(host, n).to_string()),
        (Ent::Snap(n, _, s), "guid") => {
            stat(s.guid_for(host, &format!("{n}@{}", s.name)).to_string())
        }
        (Ent::Ds(n, d), "used") => stat(num(used_of(z, n, d), parsable)),
        (Ent::Snap(_, _, s), "used") => stat(num(s.used.unwrap_or(0), parsable)),
        (Ent::Ds(n, _), "available" | "avail") => stat(num(available_of(z, n), parsable)),
        (Ent::Snap(..), "available" | "avail") => none(),
        (Ent::Ds(_, d), "referenced" | "refer") => stat(num(
            d.referenced.unwrap_or_else(|| latest_size(d)),
            parsable,
        )),
        (Ent::Snap(_, _, s), "referenced" | "refer") => stat(num(s.full_size(), parsable)),
        (Ent::Ds(_, d), "receive_resume_token") => match &d.partial {
            Some(p) => stat(crate::token::encode(&crate::token::for_partial(p))),
            None => none(),
        },
        (Ent::Snap(..), "receive_resume_token") => none(),
        (Ent::Ds(_, d), "volsize") if d.kind == Kind::Volume => {
            (num(d.volsize.unwrap_or(10 << 30), parsable), "local".into())
        }
        (Ent::Snap(_, d, _), "volsize") if d.kind == Kind::Volume => {
            stat(num(d.volsize.unwrap_or(10 << 30), parsable))
        }
        (_, "volsize") => none(),
        // OpenZFS 2.1 prints `-` for a snapshot's volblocksize (seen in the test VM).
        (Ent::Ds(_, d), "volblocksize") if d.kind == Kind::Volume => (
            num(crate::vol::volblocksize(d), parsable),
            if d.volblocksize.is_some() {
                "-"
            } else {
                "default"
            }
            .into(),
        ),
        (_, "volblocksize") => none(),
        (Ent::Ds(_, d), "inconsistent") => stat(if d.inconsistent { "1" } else { "0" }.into()),
        (Ent::Ds(n, _), "creation") | (Ent::Snap(n, _, _), "creation") => {
            let c = match e {
                Ent::Snap(_, _, s) => s.creation,
                _ => None,
            }
            .unwrap_or(1_700_000_000 + e.createtxg() * 60);
            let _ = n;
            if !parsable {
                return None;
            }
            stat(c.to_string())
        }
        (Ent::Snap(..), "volmode" | "mountpoint" | "canmount" | "readonly" | "mounted") => none(),
        (Ent::Ds(_, d), "mounted") if d.kind == Kind::Volume => none(),
        // The fake mounts nothing but the filesystems `zfs create` gave an explicit
        // mountpoint path (it makes their directory, see `create`).
        (Ent::Ds(_, d), "mounted") => {
            let mounted = d
                .props
                .get("mountpoint")
                .is_some_and(|m| m.starts_with('/'))
                && !matches!(
                    d.props.get("canmount").map(String::as_str),
                    Some("off" | "noauto")
                );
            stat(if mounted { "yes" } else { "no" }.into())
        }
        (Ent::Ds(_, d), "mountpoint") if d.kind == Kind::Volume => none(),
        (Ent::Ds(n, _), "mountpoint") => match inherited(z, n, "mountpoint") {
            Some((v, src, from)) => {
                if v.starts_with('/') && from != *n {
                    let suffix = &n[from.len()..];
                    let base = v.trim_end_matches('/');
                    (format!("{base}{suffix}"), src)
                } else {
                    (v, src)
                }
            }
            None => (format!("/{n}"), "default".into()),
        },
        (Ent::Ds(n, _), "volmode" | "canmount" | "readonly" | "compression") => {
            match inherited(z, n, p) {
                Some((v, src, _)) if p != "canmount" || src == "local" => (v, src),
                _ => {
                    let dflt = match p {
                        "volmode" => "default",
                        "canmount" => "on",
                        _ => "off",
                    };
                    (dflt.to_string(), "default".into())
                }
            }
        }
        (Ent::Ds(n, _), user) if user.contains(':') => match inherited(z, n, user) {
            Some((v, src, _)) => (v, src),
            None => none(),
        },
        (Ent::Snap(n, _, s), user) if user.contains(':') => match s.props.get(user) {
            Some(v) => (v.clone(), "local".into()),
            None => match inherited(z, n, user) {
                Some((v, _, from)) => (v, format!("inherited from {from}")),
                None => none(),
            },
        },
        _ => return None,
    })
}

/// zfs' name ordering: by dataset part (strcmp), a dataset before its snapshots,
/// snapshots of one dataset by createtxg.
fn name_cmp(a: &Ent, b: &Ent) -> Ordering {
    a.ds_name().cmp(b.ds_name()).then_with(|| match (a, b) {
        (Ent::Ds(..), Ent::Ds(..)) => Ordering::Equal,
        (Ent::Ds(..), Ent::Snap(..)) => Ordering::Less,
        (Ent::Snap(..), Ent::Ds(..)) => Ordering::Greater,
        (Ent::Snap(..), Ent::Snap(..)) => a.createtxg().cmp(&b.createtxg()),
    })
}

#[derive(Clone, Copy)]
pub struct Types {
    pub fs: bool,
    pub vol: bool,
    pub snap: bool,
    pub bookmark: bool,
}

pub fn parse_types(s: &str) -> Option<Types> {
    let mut t = Types {
        fs: false,
        vol: false,
        snap: false,
        bookmark: false,
    };
    for w in s.split(',') {
        match w {
            "all" => {
                t = Types {
                    fs: true,
                    vol: true,
                    snap: true,
                    bookmark: true,
                }
            }
            "filesystem" => t.fs = true,
            "volume" => t.vol = true,
            "snapshot" | "snap" => t.snap = true,
            "bookmark" => t.bookmark = true,
            _ => return None,
        }
    }
    Some(t)
}

/// Select entities like zfs_for_each. Prints "cannot open" errors; returns (ents, had_error).
fn select<'a>(
    z: &'a Zfs,
    operands: &[String],
    types: Types,
    recurse: bool,
    depth: Option<usize>,
) -> (Vec<Ent<'a>>, bool) {
    let mut out: Vec<Ent> = Vec::new();
    let mut err = false;
    let ds_ok = |d: &Dataset| match d.kind {
        Kind::Filesystem => types.fs,
        Kind::Volume => types.vol,
    };
    let add_tree = |out: &mut Vec<Ent<'a>>, top: &str, limit: Option<usize>| {
        for (n, d) in z.datasets.range(top.to_string()..) {
            if n != top && !is_descendant(n, top) {
                if !n.starts_with(top) {
                    break;
                }
                continue;
            }
            let dep = depth_below(n, top);
            if limit.is_some_and(|l| dep > l) {
                continue;
            }
            if ds_ok(d) {
                out.push(Ent::Ds(n, d));
            }
            if types.snap && limit.is_none_or(|l| dep < l) {
                for s in &d.snapshots {
                    out.push(Ent::Snap(n, d, s));
                }
            }
        }
    };
    if operands.is_empty() {
        let roots: Vec<&String> = z.datasets.keys().filter(|n| !n.contains('/')).collect();
        for r in roots {
            add_tree(
                &mut out,
                r,
                if recurse || depth.is_some() {
                    depth
                } else {
                    None
                },
            );
        }
    }
    for op in operands {
        if op.contains('@') {
            match find_snap(z, op) {
                Some((d, s)) => {
                    let (dn, _) = split_snap(op).unwrap_or((op, ""));
                    if let Some((key, _)) = z.datasets.get_key_value(dn) {
                        out.push(Ent::Snap(key, d, s));
                    }
                }
                None => {
                    eprintln!("cannot open '{op}': dataset does not exist");
                    err = true;
                }
            }
            continue;
        }
        let Some((key, d)) = z.datasets.get_key_value(op.as_str()) else {
            eprintln!("cannot open '{op}': dataset does not exist");
            err = true;
            continue;
        };
        if recurse || depth.is_some() {
            add_tree(&mut out, key, depth);
        } else if types.snap && !types.fs && !types.vol {
            // `zfs list -t snapshot <fs>` implies -d 1
            add_tree(&mut out, key, Some(1));
        } else if ds_ok(d) {
            out.push(Ent::Ds(key, d));
        }
    }
    // dedupe
    out.sort_by(name_cmp);
    out.dedup_by(|a, b| a.name() == b.name());
    (out, err)
}

const NUMERIC: &[&str] = &[
    "createtxg",
    "guid",
    "used",
    "available",
    "avail",
    "referenced",
    "refer",
    "volsize",
    "volblocksize",
    "creation",
];

fn list(root: &Path, host: &str, args: &[String]) -> Res {
    let p = getopt(args, "dotsS", "Hpr").map_err(|_| Unsupported)?;
    let scripted = p.has('H');
    let parsable = p.has('p');
    let types = match p.last('t') {
        Some(t) => parse_types(&t).ok_or(Unsupported)?,
        None => Types {
            fs: true,
            vol: true,
            snap: false,
            bookmark: false,
        },
    };
    let depth = match p.last('d') {
        Some(d) => Some(d.parse::<usize>().map_err(|_| Unsupported)?),
        None => None,
    };
    let cols: Vec<String> = p
        .last('o')
        .unwrap_or_else(|| "name,used,avail,refer,mountpoint".into())
        .split(',')
        .map(String::from)
        .collect();
    let mut sorts: Vec<(String, bool)> = Vec::new();
    for (c, v) in &p.flags {
        if *c == 's' || *c == 'S' {
            sorts.push((v.clone().unwrap_or_default(), *c == 'S'));
        }
    }
    let st = match state::read(root, host) {
        Ok(s) => s,
        Err(e) => return Ok(fatal(e)),
    };
    let z = &st.zfs;
    let (mut ents, err) = select(z, &p.operands, types, p.has('r'), depth);
    // validate columns before printing anything
    let probe_ds = Dataset::default();
    let probe = Ent::Ds("probe", &probe_ds);
    for c in cols.iter().chain(sorts.iter().map(|(c, _)| c)) {
        if prop(z, host, &probe, c, true).is_none() {
            return Err(Unsupported);
        }
    }
    if !sorts.is_empty() {
        ents.sort_by(|a, b| {
            for (key, desc) in &sorts {
                let va = prop(z, host, a, key, true).map(|x| x.0).unwrap_or_default();
                let vb = prop(z, host, b, key, true).map(|x| x.0).unwrap_or_default();
                let o = if key == "name" {
                    name_cmp(a, b)
                } else if NUMERIC.contains(&key.as_str()) {
                    va.parse::<u64>()
                        .unwrap_or(0)
                        .cmp(&vb.parse::<u64>().unwrap_or(0))
                } else {
                    va.cmp(&vb)
                };
                let o = if *desc { o.reverse() } else { o };
                if o != Ordering::Equal {
                    return o;
                }
            }
            name_cmp(a, b)
        });
    }
    let rows: Vec<Vec<String>> = ents
        .iter()
        .map(|e| {
            cols.iter()
                .map(|c| {
                    prop(z, host, e, c, parsable)
                        .map(|x| x.0)
                        .unwrap_or_else(|| "-".into())
                })
                .collect()
        })
        .collect();
    let mut out = String::new();
    if scripted {
        for row in &rows {
            out.push_str(&row.join("\t"));
            out.push('\n');
        }
    } else if !rows.is_empty() {
        // zfs_main.c print_header/print_dataset: two spaces between columns, numbers
        // right-aligned, the last column unpadded; "no datasets available" when empty.
        let heads: Vec<String> = cols.iter().map(|c| c.to_uppercase()).collect();
        let widths: Vec<usize> = (0..cols.len())
            .map(|i| {
                rows.iter()
                    .map(|r| r[i].len())
                    .chain([heads[i].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let right = |c: &str| NUMERIC.contains(&c) && c != "name";
        for row in std::iter::once(&heads).chain(rows.iter()) {
            let mut line = String::new();
            for (i, v) in row.iter().enumerate() {
                let last = i + 1 == row.len();
                if right(&cols[i]) {
                    line.push_str(&format!("{v:>w$}", w = widths[i]));
                } else if last {
                    line.push_str(v);
                } else {
                    line.push_str(&format!("{v:<w$}", w = widths[i]));
                }
                if !last {
                    line.push_str("  ");
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
    } else if !err {
        eprintln!("no datasets available");
    }
    print!("{out}");
    Ok(if err { 1 } else { 0 })
}

fn get(root: &Path, host: &str, args: &[String]) -> Res {
    let p = getopt(args, "dots", "Hpr").map_err(|_| Unsupported)?;
    if !p.has('H') || p.operands.is_empty() {
        return Err(Unsupported);
    }
    // `-s local,inherited,...`: only rows whose source is one of these.
    let sources: Option<Vec<String>> = match p.last('s') {
        Some(list) => {
            let list: Vec<String> = list.split(',').map(String::from).collect();
            if list.iter().any(|x| {
                ![
                    "local",
                    "default",
                    "inherited",
                    "temporary",
                    "received",
                    "none",
                ]
                .contains(&x.as_str())
            }) {
                return Err(Unsupported);
            }
            Some(list)
        }
        None => None,
    };
    let wanted = |src: &str| match &sources {
        None => true,
        Some(list) => list.iter().any(|w| match w.as_str() {
            "local" => src == "local",
            "default" => src == "default",
            "inherited" => src.starts_with("inherited"),
            "none" => src == "-",
            // The fake has no temporary or received values.
            _ => false,
        }),
    };
    let parsable = p.has('p');
    let fields: Vec<String> = p
        .last('o')
        .unwrap_or_else(|| "name,property,value,source".into())
        .split(',')
        .map(String::from)
        .collect();
    if fields
        .iter()
        .any(|f| !["name", "property", "value", "source", "received"].contains(&f.as_str()))
        || fields.iter().any(|f| f == "received")
    {
        return Err(Unsupported);
    }
    let props: Vec<String> = p.operands[0].split(',').map(String::from).collect();
    if props.iter().any(|x| x == "all") {
        return Err(Unsupported);
    }
    let types = match p.last('t') {
        Some(t) => parse_types(&t).ok_or(Unsupported)?,
        None => Types {
            fs: true,
            vol: true,
            snap: true,
            bookmark: true,
        },
    };
    let depth = match p.last('d') {
        Some(d) => Some(d.parse::<usize>().map_err(|_| Unsupported)?),
        None => None,
    };
    let st = match state::read(root, host) {
        Ok(s) => s,
        Err(e) => return Ok(fatal(e)),
    };
    let z = &st.zfs;
    let probe_ds = Dataset::default();
    for pr in &props {
        if prop(z, host, &Ent::Ds("probe", &probe_ds), pr, true).is_none() {
            return Err(Unsupported);
        }
    }
    let ops = &p.operands[1..];
    let (ents, err) = if ops.is_empty() {
        select(z, &[], types, true, None)
    } else {
        select(z, ops, types, p.has('r'), depth)
    };
    let mut out = String::new();
    for e in &ents {
        for pr in &props {
            let (v, src) =
                prop(z, host, e, pr, parsable).unwrap_or_else(|| ("-".into(), "-".into()));
            if !wanted(&src) {
                continue;
            }
            let row: Vec<String> = fields
                .iter()
                .map(|f| match f.as_str() {
                    "name" => e.name(),
                    "property" => pr.clone(),
                    "value" => v.clone(),
                    _ => src.clone(),
                })
                .collect();
            out.push_str(&row.join("\t"));
            out.push('\n');
        }
    }
    print!("{out}");
    Ok(if err { 1 } else { 0 })
}

fn snapshot(root: &Path, host: &str, args: &[String]) -> Res {
    let p = getopt(args, "o", "r").map_err(|_| Unsupported)?;
    if p.operands.is_empty() {
        return Err(Unsupported);
    }
    // `-o prop=value`: user properties only (zfs also allows a few native ones; we need none).
    let mut props = std::collections::BTreeMap::new();
    for o in p.values('o') {
        let (k, v) = o.split_once('=').ok_or(Unsupported)?;
        if !k.contains(':') {
            return Err(Unsupported);
        }
        props.insert(k.to_string(), v.to_string());
    }
    let recursive = p.has('r');
    let names = p.operands.clone();
    let r = state::update(root, host, |st| {
        let z = &mut st.zfs;
        let mut targets: Vec<(String, String)> = Vec::new();
        let mut errors: Vec<String> = Vec::new();
        for n in &names {
            let Some((d, s)) = split_snap(n) else {
                errors.push(format!(
                    "cannot create snapshot '{n}': missing '@' delimiter in snapshot name"
                ));
                continue;
            };
            if !z.datasets.contains_key(d) {
                errors.push(format!(
                    "cannot create snapshot '{n}': dataset does not exist"
                ));
                continue;
            }
            targets.push((d.to_string(), s.to_string()));
            if recursive {
                for k in z.datasets.keys() {
                    if is_descendant(k, d) {
                        targets.push((k.clone(), s.to_string()));
                    }
                }
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for (d, s) in &targets {
            if !seen.insert(d.clone()) {
                errors.push(format!(
                    "cannot create snapshot '{d}@{s}': multiple snapshots of same fs not allowed"
                ));
            } else if z.datasets[d].snapshots.iter().any(|x| &x.name == s) {
                errors.push(format!(
                    "cannot create snapshot '{d}@{s}': dataset already exists"
                ));
            }
        }
        if !errors.is_empty() {
            return Ok(Err(errors));
        }
        let txg = z.last_txg + 1;
        z.last_txg = txg;
        for (d, s) in &targets {
            let full = format!("{d}@{s}");
            let ds = z.datasets.get_mut(d).expect("checked");
            let prev = ds.snapshots.last();
            let snap = Snapshot {
                name: s.clone(),
                createtxg: txg,
                guid: Some(state::stable_id(&[
                    "new snapshot",
                    host,
                    &full,
                    &txg.to_string(),
                ])),
                size: prev.and_then(|x| x.size),
                incr_size: prev.and_then(|x| x.incr_size),
                used: None,
                delta: None,
                creation: None,
                props: props.clone(),
            };
            ds.snapshots.push(snap);
            ds.modified = false;
        }
        Ok(Ok(()))
    });
    Ok(match r {
        Ok(Ok(())) => 0,
        Ok(Err(errors)) => {
            for e in errors {
                eprintln!("{e}");
            }
            1
        }
        Err(e) => fatal(e),
    })
}

fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (digits, mult) = match s.chars().last()? {
        'K' | 'k' => (&s[..s.len() - 1], 1u64 << 10),
        'M' | 'm' => (&s[..s.len() - 1], 1 << 20),
        'G' | 'g' => (&s[..s.len() - 1], 1 << 30),
        'T' | 't' => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    digits.parse::<u64>().ok().map(|d| d * mult)
}

fn create(root: &Path, host: &str, args: &[String]) -> Res {
    let p = getopt(args, "oV", "pus").map_err(|_| Unsupported)?;
    if p.operands.len() != 1 {
        return Err(Unsupported);
    }
    let name = p.operands[0].clone();
    let mut props = std::collections::BTreeMap::new();
    for o in p.values('o') {
        let (k, v) = o.split_once('=').ok_or(Unsupported)?;
        props.insert(k.to_string(), v.to_string());
    }
    let volsize = match p.last('V') {
        Some(v) => Some(parse_size(&v).ok_or(Unsupported)?),
        None => None,
    };
    let with_parents = p.has('p');
    let no_mount = p.has('u');
    let r = state::update(root, host, |st| {
        let z = &mut st.zfs;
        if z.datasets.contains_key(&name) {
            return Ok(if with_parents {
                Ok(())
            } else {
                Err(format!("cannot create '{name}': dataset already exists"))
            });
        }
        let Some(par) = parent(&name) else {
            return Ok(Err(format!("cannot create '{name}': missing dataset name")));
        };
        let mut missing: Vec<String> = Vec::new();
        let mut cur = Some(par);
        while let Some(c) = cur {
            if z.datasets.contains_key(c) {
                break;
            }
            missing.push(c.to_string());
            cur = parent(c);
        }
        if cur.is_none() {
            return Ok(Err(format!(
                "cannot create '{name}': no such pool '{}'",
                name.split('/').next().unwrap_or("")
            )));
        }
        if !missing.is_empty() && !with_parents {
            return Ok(Err(format!(
                "cannot create '{name}': parent does not exist"
            )));
        }
        if let Some(pd) = cur.and_then(|c| z.datasets.get(c)) {
            if pd.kind == Kind::Volume {
                return Ok(Err(format!(
                    "cannot create '{name}': parent is not a filesystem"
                )));
            }
        }
        for m in missing.iter().rev() {
            z.last_txg += 1;
            z.datasets.insert(
                m.clone(),
                Dataset {
                    createtxg: z.last_txg,
                    ..Default::default()
                },
            );
        }
        z.last_txg += 1;
        let ds = Dataset {
            kind: if volsize.is_some() {
                Kind::Volume
            } else {
                Kind::Filesystem
            },
            createtxg: z.last_txg,
            volsize,
            props: props.clone(),
            guid: Some(state::stable_id(&[
                "new dataset",
                host,
                &name,
                &z.last_txg.to_string(),
            ])),
            ..Default::default()
        };
        z.datasets.insert(name.clone(), ds);
        // "Mount" a filesystem created with an explicit mountpoint path: make its directory.
        if volsize.is_none() && !no_mount {
            if let Some(dir) = props.get("mountpoint").filter(|m| m.starts_with('/')) {
                if let Err(e) = std::fs::create_dir_all(dir) {
                    return Ok(Err(format!("cannot mount '{name}': {e}")));
                }
            }
        }
        Ok(Ok(()))
    });
    Ok(match r {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            eprintln!("{e}");
            1
        }
        Err(e) => fatal(e),
    })
}

fn destroy(root: &Path, host: &str, args: &[String]) -> Res {
    let p = getopt(args, "", "rf").map_err(|_| Unsupported)?;
    if p.operands.len() != 1 || p.operands[0].contains(',') || p.operands[0].contains('%') {
        return Err(Unsupported);
    }
    let target = p.operands[0].clone();
    let recursive = p.has('r');
    let r = state::update(root, host, |st| {
        let z = &mut st.zfs;
        if let Some((d, s)) = split_snap(&target) {
            let mut victims: Vec<String> = vec![d.to_string()];
            if recursive {
                victims.extend(z.datasets.keys().filter(|k| is_descendant(k, d)).cloned());
            }
            let victims: Vec<String> = victims
                .into_iter()
                .filter(|v| {
                    z.datasets
                        .get(v)
                        .is_some_and(|x| x.snapshots.iter().any(|y| y.name == s))
                })
                .collect();
            if victims.is_empty() {
                return Ok(Err(
                    "could not find any snapshots to destroy; check snapshot names.".to_string(),
                ));
            }
            for v in &victims {
                let full = format!("{v}@{s}");
                let clones: Vec<String> = z
                    .datasets
                    .iter()
                    .filter(|(_, x)| x.origin.as_deref() == Some(&full))
                    .map(|(k, _)| k.clone())
                    .collect();
                if !clones.is_empty() {
                    return Ok(Err(format!(
                        "cannot destroy '{full}': snapshot has dependent clones\nuse '-R' to destroy the following datasets:\n{}",
                        clones.join("\n")
                    )));
                }
            }
            for v in victims {
                if let Some(x) = z.datasets.get_mut(&v) {
                    x.snapshots.retain(|y| y.name != s);
                }
            }
            return Ok(Ok(()));
        }
        let Some(ds) = z.datasets.get(&target) else {
            return Ok(Err(format!(
                "cannot open '{target}': dataset does not exist"
            )));
        };
        let mut subtree: Vec<String> = z
            .datasets
            .keys()
            .filter(|k| *k == &target || is_descendant(k, &target))
            .cloned()
            .collect();
        if !recursive {
            let mut children: Vec<String> =
                subtree.iter().filter(|k| **k != target).cloned().collect();
            children.extend(ds.snapshots.iter().map(|s| format!("{target}@{}", s.name)));
            if !children.is_empty() {
                let what = if ds.kind == Kind::Volume {
                    "volume"
                } else {
                    "filesystem"
                };
                return Ok(Err(format!(
                    "cannot destroy '{target}': {what} has children\nuse '-r' to destroy the following datasets:\n{}",
                    children.join("\n")
                )));
            }
        }
        let mut outside_clones = Vec::new();
        for (k, x) in &z.datasets {
            if let Some(o) = &x.origin {
                let od = o.split('@').next().unwrap_or("");
                if subtree.iter().any(|s| s == od) && !subtree.contains(k) {
                    outside_clones.push(k.clone());
                }
            }
        }
        if !outside_clones.is_empty() {
            return Ok(Err(format!(
                "cannot destroy '{target}': filesystem has dependent clones\nuse '-R' to destroy the following datasets:\n{}",
                outside_clones.join("\n")
            )));
        }
        subtree.sort();
        for k in subtree {
            z.datasets.remove(&k);
        }
        Ok(Ok(()))
    });
    Ok(match r {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            eprintln!("{e}");
            1
        }
        Err(e) => fatal(e),
    })
}
