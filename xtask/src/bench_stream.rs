//! `cargo xtask bench-stream`: throughput and memory of the send pipeline against a plain
//! `cat` pipe, with real processes over real pipes.
//!
//! ```text
//! arm "cat": source ──pipe──▶ cat ──pipe──▶ sink
//! arm "qzb": source ──pipe──▶ framer ══pipes══▶ qubes-zfs-backup-receiver ──pipe──▶ sink
//! ```
//!
//! * **source** (`bench-stream source N`) writes N bytes from one reused 1 MiB buffer of
//!   pseudo-random bytes (blake3 speed does not depend on content): it stands in for
//!   `zfs send`.
//! * **sink** is the same program in both arms: `zfs receive ...` run through a stand-in
//!   `zfs` (a shell script first on PATH that execs `bench-stream zfs ...`), which drains stdin
//!   with 1 MiB reads. For the agent, the stand-in also answers the `zfs list` / `zfs get`
//!   calls the real agent makes (formats of receiver-agent/src/zfs.rs).
//! * **framer** (`bench-stream frame`) does what the dom0 driver's `send` does: spawns the
//!   agent (as `qrexec-client` would) with `QREXEC_REMOTE_DOMAIN=dom0`, hello, a `Receive`
//!   request, spawns the source (as `zfs send`), and moves its output with the driver's own
//!   data path, `dom0_driver::stream::pump::pump` (reader/framer thread + writer thread), then
//!   the end frame, then reads the result.
//! * The agent is the real `qubes-zfs-backup-receiver` binary (release build).
//! * Arms `zs` and `tap` (module [`tap`]): the same pipeline with a real zvol send stream as
//!   the source, without and with the driver's stream tap in the framer (issue 13).
//!
//! The arms alternate (cat, qzb, cat, qzb, ...) on the same stream size; the medians are
//! compared. A first, smaller run of the qzb arm checks memory at a second size. Peak RSS is
//! each process's VmHWM from /proc, read by the framer at the end of the stream (the agent
//! is still alive then, waiting for the next request). CPU time comes from /proc/self/stat
//! (children's user+system time, everything reaped below us).

use std::fs::{self, File};
use std::io::{self, BufRead, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use qzb_protocol::{
    expect_hello, read_reply, send_hello, write_request, DatasetKind, DatasetName, ReceiveMode,
    ReceiveRequest, ReceiveResult, Reply, Request, Role, SnapshotName, MAX_DATA_CHUNK,
};

mod tap;
use tap::Mode;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const DEFAULT_BYTES: u64 = 4 * GIB;
const DEFAULT_SMALL: u64 = 256 * MIB;
const DEFAULT_ROUNDS: usize = 3;
/// Targets from issue 4.
const TARGET_RATIO: f64 = 0.90;
const TARGET_RSS_KIB: u64 = 64 * 1024;

const ROOT: &str = "bench/qzb";
const DESTINATION: &str = "bench/qzb/vm";
const SNAPSHOT: &str = "bench/qzb/vm@s1";
const GUID: u64 = 0x5eed_cafe_f00d_0001;
/// `/proc/<pid>/stat` times are in clock ticks; USER_HZ is 100 on Linux.
const CLK_TCK: f64 = 100.0;

const STATE_ENV: &str = "QZB_BENCH_STATE";
const RECEIVER: &str = "qubes-zfs-backup-receiver";
/// Use this agent binary instead of building the workspace's (e.g. an experiment's build).
const AGENT_ENV: &str = "QZB_BENCH_AGENT";

pub fn run(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("source") => source(&args[1..]),
        Some("zsource") => tap::zsource(&args[1..]),
        Some("zfs") => fake_zfs(&args[1..]),
        Some("frame") => frame(&args[1..]),
        _ => orchestrate(args),
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers: sizes, /proc

fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (num, mult) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let mult = match t[i..].to_ascii_lowercase().as_str() {
                "k" | "kib" => 1 << 10,
                "m" | "mib" => MIB,
                "g" | "gib" => GIB,
                _ => return Err(format!("bad size {text:?} (use e.g. 4G, 256M, 1048576)")),
            };
            (&t[..i], mult)
        }
        None => (t, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad size {text:?} (use e.g. 4G, 256M, 1048576)"))?;
    n.checked_mul(mult)
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("bad size {text:?}"))
}

fn human(bytes: u64) -> String {
    if bytes.is_multiple_of(GIB) {
        format!("{} GiB", bytes / GIB)
    } else if bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= MIB {
        format!("{:.1} MiB", bytes as f64 / MIB as f64)
    } else {
        format!("{bytes} B")
    }
}

/// A `kB` field (VmHWM, VmRSS) of /proc/<pid>/status.
fn status_kib(pid: &str, field: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

/// (utime+stime, cutime+cstime) of /proc/<pid>/stat, in seconds.
fn cpu_seconds(pid: &str) -> (f64, f64) {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return (0.0, 0.0);
    };
    // Fields after the parenthesised command name, which may contain spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // rest[0] is field 3 (state): utime=14, stime=15, cutime=16, cstime=17.
    let get = |field: usize| f.get(field - 3).copied().unwrap_or(0) as f64 / CLK_TCK;
    (get(14) + get(15), get(16) + get(17))
}

/// Our own stdout/stdin as an unbuffered `File` (a dup of the descriptor): `Stdout` is
/// line-buffered and `Stdin` goes through an 8 KiB buffer.
fn stdout_file() -> Result<File, String> {
    let fd = io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("dup stdout: {e}"))?;
    Ok(File::from(fd))
}

fn stdin_file() -> Result<File, String> {
    let fd = io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("dup stdin: {e}"))?;
    Ok(File::from(fd))
}

// ---------------------------------------------------------------------------------------------
// The byte source (stands in for `zfs send`)

fn source(args: &[String]) -> Result<(), String> {
    let total = parse_size(args.first().ok_or("source: missing byte count")?)?;
    let mut block = vec![0u8; MIB as usize];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in block.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let mut out = stdout_file()?;
    let mut left = total;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        out.write_all(&block[..n])
            .map_err(|e| format!("source: write: {e}"))?;
        left -= n as u64;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The `zfs` stand-in: sink for `zfs receive`, answers for the agent's `zfs list` / `zfs get`

fn does_not_exist(name: &str) -> Result<(), String> {
    eprintln!("cannot open '{name}': dataset does not exist");
    std::process::exit(1);
}

fn fake_zfs(args: &[String]) -> Result<(), String> {
    let state = PathBuf::from(std::env::var_os(STATE_ENV).ok_or("zfs stand-in: no state dir")?);
    let received = state.join("received");
    let received_name = fs::read_to_string(&received).unwrap_or_default();
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let target = *argv.last().unwrap_or(&"");
    match argv.as_slice() {
        ["receive", .., _] if argv.contains(&"-s") && !argv.contains(&"-A") => {
            // `zfs receive` takes the snapshot or just the dataset (the snapshot name then
            // comes from the stream, which here is always SNAPSHOT).
            if target != SNAPSHOT && target != DESTINATION {
                eprintln!("zfs stand-in: unexpected receive target {target:?}");
                std::process::exit(2);
            }
            let mut input = stdin_file()?;
            let mut buf = vec![0u8; MIB as usize];
            let mut total: u64 = 0;
            loop {
                match input.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => total += n as u64,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(format!("zfs stand-in: read: {e}")),
                }
            }
            fs::write(state.join("bytes"), total.to_string()).map_err(|e| e.to_string())?;
            fs::write(&received, SNAPSHOT).map_err(|e| e.to_string())?;
            Ok(())
        }
        // `zfs list -H -o name NAME`: existence.
        ["list", "-H", "-o", "name", name] => {
            let exists = *name == ROOT
                || (!received_name.is_empty() && received_name.starts_with(&format!("{name}@")));
            if exists {
                println!("{name}");
                Ok(())
            } else {
                does_not_exist(name)
            }
        }
        // Inventory of the root (not used by a full receive, answered for completeness).
        ["list", "-H", "-p", "-r", "-t", "filesystem,volume", ..] => {
            println!("{ROOT}\tfilesystem\t1\t-\t1099511627776");
            Ok(())
        }
        ["list", "-H", "-p", "-r", "-t", "snapshot", ..] => Ok(()),
        ["get", "-H", "-p", "-o", "value", "guid", name] => {
            if *name == received_name {
                println!("{GUID}");
                Ok(())
            } else {
                does_not_exist(name)
            }
        }
        ["get", "-H", "-p", "-o", "value", "receive_resume_token", name] => {
            if *name == ROOT || *name == DESTINATION {
                println!("-");
                Ok(())
            } else {
                does_not_exist(name)
            }
        }
        _ => {
            eprintln!("zfs stand-in: unsupported call: zfs {}", args.join(" "));
            std::process::exit(2);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The framing side (what the driver's `send` does)

/// What the framer reports on its stdout, one `key=value` per line.
#[derive(Debug, Default, Clone)]
struct FrameReport {
    bytes: u64,
    stream_secs: f64,
    framer_hwm_kib: u64,
    agent_hwm_kib: u64,
    framer_cpu: f64,
    agent_cpu: f64,
}

fn frame(args: &[String]) -> Result<(), String> {
    let (bytes, agent, xtask, mode, spool) = match args {
        [bytes, agent, xtask] => (bytes, agent, xtask, Mode::Plain, None),
        [bytes, agent, xtask, mode, spool] => (
            bytes,
            agent,
            xtask,
            Mode::parse(mode)?,
            Some(Path::new(spool)),
        ),
        _ => return Err("frame: usage: frame BYTES AGENT XTASK [MODE SPOOL]".into()),
    };
    let bytes = parse_size(bytes)?;
    let mut observer = tap::Observer::new(mode, bytes, spool.unwrap_or(Path::new(".")))?;
    let expected = mode.stream_bytes(bytes);
    let mut agent = Command::new(agent)
        .env("QREXEC_REMOTE_DOMAIN", "dom0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("frame: cannot run the agent: {e}"))?;
    let agent_pid = agent.id().to_string();
    let mut to_agent = agent.stdin.take().expect("piped");
    let mut from_agent = agent.stdout.take().expect("piped");
    let perr = |what: &str, e: qzb_protocol::ProtocolError| format!("frame: {what}: {e}");

    send_hello(&mut to_agent, Role::Driver).map_err(|e| perr("hello", e))?;
    expect_hello(&mut from_agent, Role::Receiver).map_err(|e| perr("agent hello", e))?;
    let name = |s: &str| DatasetName::parse(s).map_err(|e| format!("{s}: {e:?}"));
    let request = Request::Receive(ReceiveRequest {
        root: name(ROOT)?,
        destination: name(DESTINATION)?,
        snapshot: SnapshotName::parse(SNAPSHOT).map_err(|e| format!("{SNAPSHOT}: {e:?}"))?,
        guid: GUID,
        kind: DatasetKind::Volume,
        mode: ReceiveMode::Full,
        origin: None,
    });
    write_request(&mut to_agent, &request).map_err(|e| perr("request", e))?;
    let mut reply_buf = Vec::new();
    match read_reply(&mut from_agent, &mut reply_buf).map_err(|e| perr("reply", e))? {
        Reply::ReceiveReady => {}
        other => {
            return Err(format!(
                "frame: agent did not accept the receive: {other:?}"
            ))
        }
    }

    let started = Instant::now();
    let mut source = Command::new(xtask)
        .args(["bench-stream", mode.source(), &bytes.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("frame: cannot run the source: {e}"))?;
    let from_source = source.stdout.take().expect("piped");
    // The driver's own data path (dom0-driver/src/pump.rs), as `send` runs it.
    let activity = dom0_driver::stream::client::Activity::new();
    let mut to_agent =
        io::BufWriter::with_capacity(dom0_driver::stream::client::SESSION_WRITE_BUFFER, to_agent);
    let pumped = dom0_driver::stream::pump::pump(
        from_source,
        &mut to_agent,
        &activity,
        &mut |chunk| observer.observe(chunk),
        || {},
        |_| {},
    );
    if let Some(e) = pumped.read_error {
        return Err(format!("frame: reading the source: {e}"));
    }
    if let Some(e) = pumped.write_error {
        return Err(format!("frame: writing to the agent: {e}"));
    }
    let source_status = source.wait().map_err(|e| e.to_string())?;
    if !source_status.success() {
        return Err(format!("frame: source {source_status}"));
    }
    observer.finish()?;
    pumped
        .framer
        .finish(&mut to_agent)
        .map_err(|e| perr("end", e))?;
    let result = read_reply(&mut from_agent, &mut reply_buf).map_err(|e| perr("result", e))?;
    let stream_secs = started.elapsed().as_secs_f64();
    let received = match result {
        Reply::Receive(ReceiveResult::Ok { bytes, guid, .. }) if guid == GUID => bytes,
        other => return Err(format!("frame: receive failed: {other:?}")),
    };
    if received != expected {
        return Err(format!(
            "frame: agent received {received} of {expected} bytes"
        ));
    }
    // The agent is alive, waiting for the next request: its VmHWM is its peak so far.
    let report = FrameReport {
        bytes: received,
        stream_secs,
        framer_hwm_kib: status_kib("self", "VmHWM:"),
        agent_hwm_kib: status_kib(&agent_pid, "VmHWM:"),
        framer_cpu: cpu_seconds("self").0,
        agent_cpu: cpu_seconds(&agent_pid).0,
    };
    drop(to_agent);
    let status = agent.wait().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("frame: agent {status}"));
    }
    println!("bytes={}", report.bytes);
    println!("stream_secs={}", report.stream_secs);
    println!("framer_hwm_kib={}", report.framer_hwm_kib);
    println!("agent_hwm_kib={}", report.agent_hwm_kib);
    println!("framer_cpu={}", report.framer_cpu);
    println!("agent_cpu={}", report.agent_cpu);
    Ok(())
}

fn parse_report(out: &[u8]) -> Result<FrameReport, String> {
    let mut r = FrameReport::default();
    for line in out.lines() {
        let line = line.map_err(|e| e.to_string())?;
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let f = || v.parse::<f64>().map_err(|e| format!("{k}: {e}"));
        let u = || v.parse::<u64>().map_err(|e| format!("{k}: {e}"));
        match k {
            "bytes" => r.bytes = u()?,
            "stream_secs" => r.stream_secs = f()?,
            "framer_hwm_kib" => r.framer_hwm_kib = u()?,
            "agent_hwm_kib" => r.agent_hwm_kib = u()?,
            "framer_cpu" => r.framer_cpu = f()?,
            "agent_cpu" => r.agent_cpu = f()?,
            _ => {}
        }
    }
    Ok(r)
}

// ---------------------------------------------------------------------------------------------
// The orchestrator

struct Setup {
    xtask: PathBuf,
    agent: PathBuf,
    dir: PathBuf,
    bin: PathBuf,
    path: String,
}

impl Setup {
    fn fresh_state(&self, name: &str) -> Result<PathBuf, String> {
        let state = self.dir.join(name);
        let _ = fs::remove_dir_all(&state);
        fs::create_dir_all(&state).map_err(|e| format!("{}: {e}", state.display()))?;
        Ok(state)
    }

    fn sink_bytes(state: &Path) -> Result<u64, String> {
        fs::read_to_string(state.join("bytes"))
            .map_err(|e| format!("sink did not report: {e}"))?
            .trim()
            .parse()
            .map_err(|e| format!("sink report: {e}"))
    }
}

struct Measure {
    arm: &'static str,
    bytes: u64,
    secs: f64,
    /// user+system seconds of every process of the arm.
    cpu: f64,
    report: Option<FrameReport>,
}

impl Measure {
    fn mib_s(&self) -> f64 {
        self.bytes as f64 / MIB as f64 / self.secs
    }
}

fn children_cpu() -> f64 {
    cpu_seconds("self").1
}

fn wait_ok(child: &mut Child, what: &str) -> Result<(), String> {
    let status = child.wait().map_err(|e| format!("{what}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} {status}"))
    }
}

/// `source | cat [| cat] | sink`: `stages` cats in the middle. Two cats have the qzb arm's
/// topology (two processes between source and sink), so that ratio isolates what framing and
/// hashing cost over plain copying.
fn run_cat(setup: &Setup, bytes: u64, stages: usize) -> Result<Measure, String> {
    let state = setup.fresh_state("cat")?;
    let cpu0 = children_cpu();
    let started = Instant::now();
    let mut source = Command::new(&setup.xtask)
        .args(["bench-stream", "source", &bytes.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("source: {e}"))?;
    let mut input: Stdio = source.stdout.take().expect("piped").into();
    let mut cats = Vec::new();
    for _ in 0..stages {
        let mut cat = Command::new("cat")
            .stdin(input)
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cat: {e}"))?;
        input = cat.stdout.take().expect("piped").into();
        cats.push(cat);
    }
    let mut sink = Command::new(setup.bin.join("zfs"))
        .args(["receive", "-s", "-u", "-o", "volmode=none", SNAPSHOT])
        .env(STATE_ENV, &state)
        .stdin(input)
        .spawn()
        .map_err(|e| format!("sink: {e}"))?;
    wait_ok(&mut source, "source")?;
    for cat in &mut cats {
        wait_ok(cat, "cat")?;
    }
    wait_ok(&mut sink, "sink")?;
    let secs = started.elapsed().as_secs_f64();
    let cpu = children_cpu() - cpu0;
    let got = Setup::sink_bytes(&state)?;
    if got != bytes {
        return Err(format!("cat arm: sink got {got} of {bytes} bytes"));
    }
    Ok(Measure {
        arm: if stages == 1 { "cat" } else { "cat|cat" },
        bytes,
        secs,
        cpu,
        report: None,
    })
}

/// The framer's arms: `mode` says which source and whether the tap observes the stream.
fn run_qzb(setup: &Setup, bytes: u64, mode: Mode) -> Result<Measure, String> {
    let state = setup.fresh_state(mode.arm())?;
    let mut framer = Command::new(&setup.xtask);
    framer
        .args(["bench-stream", "frame", &bytes.to_string()])
        .arg(&setup.agent)
        .arg(&setup.xtask);
    if mode != Mode::Plain {
        framer.arg(mode.arm()).arg(state.join("spool"));
    }
    let cpu0 = children_cpu();
    let started = Instant::now();
    let out = framer
        .env("PATH", &setup.path)
        .env(STATE_ENV, &state)
        .env(
            "QUBES_ZFS_BACKUP_RECEIVE_LOCK",
            setup.dir.join("receive.lock"),
        )
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("framer: {e}"))?;
    let secs = started.elapsed().as_secs_f64();
    let cpu = children_cpu() - cpu0;
    let arm = mode.arm();
    if !out.status.success() {
        return Err(format!("{arm} arm: framer {}", out.status));
    }
    let report = parse_report(&out.stdout)?;
    let got = Setup::sink_bytes(&state)?;
    let bytes = mode.stream_bytes(bytes);
    if got != bytes || report.bytes != bytes {
        return Err(format!(
            "{arm} arm: sink got {got}, agent reported {}, of {bytes} bytes",
            report.bytes
        ));
    }
    Ok(Measure {
        arm,
        bytes,
        secs,
        cpu,
        report: Some(report),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return 0.0;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn print_row(m: &Measure, cat_mib_s: Option<f64>) {
    let ratio = cat_mib_s.map_or("".to_string(), |c| {
        format!("{:.1} %", 100.0 * m.mib_s() / c)
    });
    let (framer, agent, split) = match &m.report {
        Some(r) => (
            mib(r.framer_hwm_kib),
            mib(r.agent_hwm_kib),
            format!(" (framer {:.2}, agent {:.2})", r.framer_cpu, r.agent_cpu),
        ),
        None => ("-".into(), "-".into(), String::new()),
    };
    println!(
        "{:<5} {:>9} {:>8.2} {:>9.0} {:>8} {:>6.2} {:>5.2}  {:>10} {:>10}{}",
        m.arm,
        human(m.bytes),
        m.secs,
        m.mib_s(),
        ratio,
        m.cpu,
        m.cpu / m.secs,
        framer,
        agent,
        split
    );
}

fn header() {
    println!(
        "{:<5} {:>9} {:>8} {:>9} {:>8} {:>6} {:>5}  {:>10} {:>10}",
        "arm", "bytes", "seconds", "MiB/s", "vs cat", "CPU s", "cores", "framer HWM", "agent HWM"
    );
}

/// Single-thread blake3 speed in this process: shows whether the SIMD backend is in use
/// (portable code is around 1 GiB/s; AVX2/AVX-512 several GiB/s).
fn blake3_speed() -> f64 {
    let data = vec![0x5au8; MAX_DATA_CHUNK];
    let mut n = 0u64;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(300) {
        std::hint::black_box(blake3::hash(std::hint::black_box(&data)));
        n += 1;
    }
    (n * MAX_DATA_CHUNK as u64) as f64 / MIB as f64 / started.elapsed().as_secs_f64()
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Builds the agent in release mode (unless `QZB_BENCH_AGENT` names one), and re-runs this
/// task from a release build if we are a debug build (`cargo xtask` builds xtask in debug).
fn release_binaries(args: &[String]) -> Result<(PathBuf, PathBuf), String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let profile_dir = exe.parent().ok_or("current_exe has no parent")?;
    let release_dir = profile_dir
        .parent()
        .ok_or("current_exe is not in a target dir")?
        .join("release");
    let debug = cfg!(debug_assertions);
    if let (false, Some(agent)) = (debug, std::env::var_os(AGENT_ENV)) {
        return Ok((exe, PathBuf::from(agent)));
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(&cargo);
    build.args(["build", "--release", "--quiet", "-p", RECEIVER]);
    if debug {
        build.args(["-p", "xtask"]);
    }
    let status = build
        .status()
        .map_err(|e| format!("cannot run {cargo}: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build --release failed: {status}"));
    }
    if debug {
        eprintln!("bench-stream: re-running from the release build");
        let status = Command::new(release_dir.join("xtask"))
            .arg("bench-stream")
            .args(args)
            .status()
            .map_err(|e| format!("release xtask: {e}"))?;
        std::process::exit(status.code().unwrap_or(1));
    }
    Ok((exe.clone(), release_dir.join(RECEIVER)))
}

struct Options {
    bytes: u64,
    small: u64,
    rounds: usize,
}

fn options(args: &[String]) -> Result<Options, String> {
    let env = |k: &str| std::env::var(k).ok();
    let mut o = Options {
        bytes: env("QZB_BENCH_BYTES")
            .map(|s| parse_size(&s))
            .transpose()?
            .unwrap_or(DEFAULT_BYTES),
        small: DEFAULT_SMALL,
        rounds: env("QZB_BENCH_ROUNDS")
            .map(|s| s.parse().map_err(|e| format!("QZB_BENCH_ROUNDS: {e}")))
            .transpose()?
            .unwrap_or(DEFAULT_ROUNDS),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--bytes" => o.bytes = parse_size(val()?)?,
            "--small" => o.small = parse_size(val()?)?,
            "--rounds" => o.rounds = val()?.parse().map_err(|e| format!("--rounds: {e}"))?,
            "-h" | "--help" => {
                println!(
                    "usage: cargo xtask bench-stream [--bytes 4G] [--small 256M] [--rounds 3]\n  env: QZB_BENCH_BYTES, QZB_BENCH_ROUNDS, QZB_BENCH_AGENT (agent binary to use)"
                );
                std::process::exit(0);
            }
            other => return Err(format!("bench-stream: unknown argument {other:?}")),
        }
    }
    if o.rounds == 0 {
        return Err("--rounds must be at least 1".into());
    }
    Ok(o)
}

fn orchestrate(args: &[String]) -> Result<(), String> {
    let opts = options(args)?;
    let (xtask, agent) = release_binaries(args)?;
    let dir = std::env::temp_dir().join(format!("qzb-bench-stream-{}", std::process::id()));
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).map_err(|e| format!("{}: {e}", bin.display()))?;
    let script = format!(
        "#!/bin/sh\nexec '{}' bench-stream zfs \"$@\"\n",
        xtask.display().to_string().replace('\'', "'\\''")
    );
    let zfs = bin.join("zfs");
    fs::write(&zfs, script).map_err(|e| format!("{}: {e}", zfs.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&zfs, fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
    }
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let setup = Setup {
        xtask,
        agent,
        dir: dir.clone(),
        bin,
        path,
    };
    let result = bench(&setup, &opts);
    let _ = fs::remove_dir_all(&dir);
    result
}

fn bench(setup: &Setup, opts: &Options) -> Result<(), String> {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let blake3_mib_s = blake3_speed();
    println!(
        "bench-stream: source → framer → agent → sink vs source → cat → sink (and → cat → cat →)"
    );
    println!(
        "machine: {cores} cores; load average before: {}; blake3 single-thread: {:.0} MiB/s \
         (avx2 {}, avx512f {})",
        loadavg(),
        blake3_mib_s,
        std::arch::is_x86_feature_detected!("avx2"),
        std::arch::is_x86_feature_detected!("avx512f"),
    );
    println!(
        "stream: {} per run, {} rounds per arm alternating; memory also at {}",
        human(opts.bytes),
        opts.rounds,
        human(opts.small),
    );
    println!("agent: {}", setup.agent.display());
    println!();
    header();

    // Memory at the small size first (also warms the page cache and binaries).
    let small = run_qzb(setup, opts.small, Mode::Plain)?;
    print_row(&small, None);

    let mut cats = Vec::new();
    let mut cat2s = Vec::new();
    let mut qzbs = Vec::new();
    let mut zss = Vec::new();
    let mut taps = Vec::new();
    for _ in 0..opts.rounds {
        let c = run_cat(setup, opts.bytes, 1)?;
        print_row(&c, None);
        let c2 = run_cat(setup, opts.bytes, 2)?;
        print_row(&c2, None);
        let q = run_qzb(setup, opts.bytes, Mode::Plain)?;
        print_row(&q, Some(c.mib_s()));
        let z = run_qzb(setup, opts.bytes, Mode::ZStream)?;
        print_row(&z, Some(c.mib_s()));
        let t = run_qzb(setup, opts.bytes, Mode::Tap)?;
        print_row(&t, Some(c.mib_s()));
        cats.push(c);
        cat2s.push(c2);
        qzbs.push(q);
        zss.push(z);
        taps.push(t);
    }
    let cat_med = median(cats.iter().map(Measure::mib_s).collect());
    let cat2_med = median(cat2s.iter().map(Measure::mib_s).collect());
    let qzb_med = median(qzbs.iter().map(Measure::mib_s).collect());
    let ratio = qzb_med / cat_med;
    let rss = |f: fn(&FrameReport) -> u64, ms: &[&Measure]| {
        ms.iter()
            .filter_map(|m| m.report.as_ref().map(f))
            .max()
            .unwrap_or(0)
    };
    let large: Vec<&Measure> = qzbs.iter().collect();
    let (fs_small, as_small) = (
        rss(|r| r.framer_hwm_kib, &[&small]),
        rss(|r| r.agent_hwm_kib, &[&small]),
    );
    let (fs_large, as_large) = (
        rss(|r| r.framer_hwm_kib, &large),
        rss(|r| r.agent_hwm_kib, &large),
    );
    let cpu_per_s = |ms: &[Measure]| median(ms.iter().map(|m| m.cpu / m.secs).collect());
    println!();
    println!(
        "median: cat {cat_med:.0} MiB/s, qzb {qzb_med:.0} MiB/s: qzb = {:.1} % of cat \
         (target ≥ {:.0} %)",
        100.0 * ratio,
        100.0 * TARGET_RATIO
    );
    println!(
        "same topology (source | cat | cat | sink): {cat2_med:.0} MiB/s: qzb = {:.1} % of it",
        100.0 * qzb_med / cat2_med
    );
    println!(
        "cores busy (CPU s / wall s, median): cat arm {:.2}, qzb arm {:.2}",
        cpu_per_s(&cats),
        cpu_per_s(&qzbs)
    );
    let gib = opts.bytes as f64 / GIB as f64;
    let per_gib = |f: fn(&Measure) -> f64, ms: &[Measure]| median(ms.iter().map(f).collect()) / gib;
    println!(
        "CPU s per GiB (median; less load-sensitive than wall time): cat arm {:.3}; qzb arm {:.3} \
         (framer {:.3}, agent {:.3})",
        per_gib(|m| m.cpu, &cats),
        per_gib(|m| m.cpu, &qzbs),
        per_gib(|m| m.report.as_ref().map_or(0.0, |r| r.framer_cpu), &qzbs),
        per_gib(|m| m.report.as_ref().map_or(0.0, |r| r.agent_cpu), &qzbs),
    );
    // The best any implementation of this pipeline could do here. It has cat|cat's topology
    // (two processes between source and sink, so at least cat|cat's copying) plus one blake3
    // pass per side; with every core busy and nothing else added, it would move
    // cores / that CPU per GiB.
    let cat2_cpu_per_gib = per_gib(|m| m.cpu, &cat2s);
    let blake3_cpu_per_gib = 1024.0 / blake3_mib_s;
    let floor_cpu_per_gib = cat2_cpu_per_gib + 2.0 * blake3_cpu_per_gib;
    let ceiling_mib_s = cores as f64 / floor_cpu_per_gib * 1024.0;
    let ceiling_ratio = ceiling_mib_s / cat_med;
    println!(
        "ceiling here: cat|cat copying {cat2_cpu_per_gib:.3} + blake3 2 × {blake3_cpu_per_gib:.3} \
         = {floor_cpu_per_gib:.3} CPU s per GiB at least; on {cores} fully busy cores that is \
         ≤ {ceiling_mib_s:.0} MiB/s = {:.1} % of cat; qzb reaches {:.1} % of that ceiling",
        100.0 * ceiling_ratio,
        100.0 * qzb_med / ceiling_mib_s,
    );
    println!(
        "peak RSS (VmHWM): framer {} at {}, {} at {}; agent {} at {}, {} at {} (limit {})",
        mib(fs_small),
        human(opts.small),
        mib(fs_large),
        human(opts.bytes),
        mib(as_small),
        human(opts.small),
        mib(as_large),
        human(opts.bytes),
        mib(TARGET_RSS_KIB)
    );
    let micro = tap::micro(&setup.dir, opts.small, 4)?;
    let tap_ok = tap::report(&zss, &taps, &micro);
    println!("load average after: {}", loadavg());
    let fast = ratio >= TARGET_RATIO;
    let flat = fs_large.max(as_large).max(fs_small).max(as_small) < TARGET_RSS_KIB;
    println!(
        "{}: throughput {} ({:.1} % of cat, target ≥ 90 %), memory {} (max {}, target < 64 MiB), \
         tap {} (target ≤ {:.2} CPU s per GiB)",
        if fast && flat && tap_ok {
            "PASS"
        } else {
            "FAIL"
        },
        if fast { "ok" } else { "below target" },
        100.0 * ratio,
        if flat { "ok" } else { "over limit" },
        mib(fs_large.max(as_large).max(fs_small).max(as_small)),
        if tap_ok { "ok" } else { "over target" },
        tap::TARGET_CPU_PER_GIB,
    );
    if !fast && ceiling_ratio < TARGET_RATIO {
        println!(
            "note: the target is above this machine's ceiling ({:.1} %): with {cores} cores, \
             hashing both sides and a second pipe hop cannot fit in the time cat takes",
            100.0 * ceiling_ratio
        );
    }
    Ok(())
}
