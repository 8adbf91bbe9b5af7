//! The one way dom0 starts a child process: `zfs`, `qubesd-query`, `xl`, `qrexec-client`,
//! `qrexec-policy-exec`, whatever the command.
//!
//! Every child gets an explicit argv (never a shell), an environment cleared down to `PATH` and
//! `LC_ALL=C` (dom0's locale, `ZFS_*` variables and whatever the admin's shell exports must not
//! change what a tool prints or does), stdin from /dev/null unless the caller pipes it, and its
//! stderr drained on a thread into one bounded buffer (a chatty child can neither deadlock us
//! nor fill memory). A tool that runs to completion has a time bound; a streaming child
//! (`zfs send`, the qrexec call) is killed when its [`Spawned`] handle is dropped, so an early
//! return or a panic never leaves one running behind the driver.

use std::ffi::OsString;
use std::fmt;
use std::io::{ErrorKind, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How much of a child's stderr is kept (the first bytes; the rest is counted).
pub const MAX_STDERR: usize = 16 * 1024;
/// How much of a failing tool's stderr is repeated to the admin.
const MAX_STDERR_SHOWN: usize = 4000;
/// The PATH children get when the driver itself has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A system tool failed, hung, or printed something we cannot read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolError {
    /// The command line, for the admin to recognise (and re-run by hand).
    pub command: String,
    /// What went wrong, completing "`command` ...".
    pub problem: String,
}

impl fmt::Display for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` {}", self.command, self.problem)
    }
}

impl ToolError {
    pub fn new(command: impl Into<String>, problem: impl Into<String>) -> Self {
        ToolError {
            command: command.into(),
            problem: problem.into(),
        }
    }
}

/// How a child that ran to completion ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    /// Killed by a signal (no exit code).
    Signal,
}

impl From<ExitStatus> for Exit {
    fn from(s: ExitStatus) -> Self {
        s.code().map(Exit::Code).unwrap_or(Exit::Signal)
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit status {c}"),
            Exit::Signal => f.write_str("killed by a signal"),
        }
    }
}

/// Starts processes. [`SystemRunner`] is the real one; tests may put fakes first on PATH or
/// implement this trait.
pub trait Runner: Sync {
    /// Runs a tool to completion and returns its stdout; a non-zero exit is an error that
    /// carries the tool's stderr.
    fn run(&self, program: &str, args: &[&str]) -> Result<Vec<u8>, ToolError>;
    /// Runs a tool whose exit status is its answer (its output is ignored).
    fn status(&self, program: &str, args: &[&str]) -> Result<Exit, ToolError>;
    /// Starts a long-running child with piped stdout (and stdin if `stdin`): the caller streams.
    fn spawn(&self, program: &str, args: &[&str], stdin: bool) -> Result<Spawned, ToolError>;
}

/// The real thing: spawns processes found on `path`.
pub struct SystemRunner {
    path: OsString,
    /// How long a tool that runs to completion may take.
    pub tool_timeout: Duration,
}

impl SystemRunner {
    /// Children search the driver's own PATH.
    pub fn new(tool_timeout: Duration) -> Self {
        let path = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
        SystemRunner::with_path(path, tool_timeout)
    }

    /// Children search `path` (tests point it at a fake system's tools).
    pub fn with_path(path: impl Into<OsString>, tool_timeout: Duration) -> Self {
        SystemRunner {
            path: path.into(),
            tool_timeout,
        }
    }

    /// Whether `program` is found on this runner's PATH.
    pub fn on_path(&self, program: &str) -> bool {
        std::env::split_paths(&self.path).any(|d| d.join(program).is_file())
    }

    fn command(&self, program: &str, args: &[&str]) -> Command {
        tracing::debug!(command = %command_line(program, args), "running");
        let mut c = Command::new(self.resolve(program));
        // argv[0] stays the name the admin knows (`ps` shows `zfs send ...`, not a path).
        c.arg0(program)
            .args(args)
            .env_clear()
            .env("PATH", &self.path)
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        c
    }

    /// The program's path on this runner's PATH (Command would search the driver's own PATH).
    fn resolve(&self, program: &str) -> OsString {
        if program.contains('/') {
            return program.into();
        }
        std::env::split_paths(&self.path)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
            .map(Into::into)
            .unwrap_or_else(|| program.into())
    }

    fn start(&self, command: &mut Command, line: &str, program: &str) -> Result<Child, ToolError> {
        command.spawn().map_err(|e| {
            ToolError::new(
                line,
                if e.kind() == ErrorKind::NotFound {
                    format!("could not be run: '{program}' is not installed or not on PATH")
                } else {
                    format!("could not be run: {e}")
                },
            )
        })
    }

    /// Waits for `child` until the tool timeout, killing it past that.
    fn wait_bounded(
        &self,
        child: &mut Child,
        line: &str,
        started: Instant,
    ) -> Result<Exit, ToolError> {
        let mut pause = Duration::from_millis(1);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Ok(status.into()),
                Ok(None) if started.elapsed() >= self.tool_timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(ToolError::new(line, self.hung()));
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(ToolError::new(
                        line,
                        format!("could not be waited for: {e}"),
                    ))
                }
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    fn hung(&self) -> String {
        format!(
            "did not finish within {} s and was stopped (a hung system tool; the bound is --tool-timeout)",
            self.tool_timeout.as_secs()
        )
    }
}

impl Runner for SystemRunner {
    fn run(&self, program: &str, args: &[&str]) -> Result<Vec<u8>, ToolError> {
        let line = command_line(program, args);
        let started = Instant::now();
        let mut child = self.start(
            self.command(program, args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
            &line,
            program,
        )?;
        let stderr = StderrTail::drain(child.stderr.take().expect("piped stderr"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let r = read_to_end_retrying(stdout, &mut out).map(|()| out);
            let _ = tx.send(r);
        });
        let remaining = self.tool_timeout.saturating_sub(started.elapsed());
        let stdout = match rx.recv_timeout(remaining) {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ToolError::new(
                    line,
                    format!("its output could not be read: {e}"),
                ));
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ToolError::new(line, self.hung()));
            }
        };
        let exit = self.wait_bounded(&mut child, &line, started)?;
        if exit != Exit::Code(0) {
            let text = String::from_utf8_lossy(&stderr.finish()).into_owned();
            let shown =
                crate::output::one_line(&crate::output::zfs_said(text.trim()), MAX_STDERR_SHOWN);
            return Err(ToolError::new(
                line,
                if shown.is_empty() {
                    format!("failed ({exit})")
                } else {
                    format!("failed ({exit}): {shown}")
                },
            ));
        }
        Ok(stdout)
    }

    fn status(&self, program: &str, args: &[&str]) -> Result<Exit, ToolError> {
        let line = command_line(program, args);
        let started = Instant::now();
        let mut child = self.start(
            self.command(program, args)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            &line,
            program,
        )?;
        self.wait_bounded(&mut child, &line, started)
    }

    fn spawn(&self, program: &str, args: &[&str], stdin: bool) -> Result<Spawned, ToolError> {
        let line = command_line(program, args);
        let mut command = self.command(program, args);
        // Its own process group, so that ending it ends whatever it started too: a child that
        // inherited the pipes would otherwise keep them open after the kill, and a read of them
        // would wait forever.
        command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if stdin {
            command.stdin(Stdio::piped());
        }
        let mut child = self.start(&mut command, &line, program)?;
        let stderr = StderrTail::drain(child.stderr.take().expect("piped stderr"));
        Ok(Spawned {
            stdin: child.stdin.take(),
            stdout: child.stdout.take(),
            child: Some(child),
            stderr: Some(stderr),
            command: line,
            kill: self.resolve("kill"),
            path: self.path.clone(),
        })
    }
}

/// A streaming child. Dropping it kills the child (if it still runs) and reaps it.
pub struct Spawned {
    pub stdin: Option<ChildStdin>,
    pub stdout: Option<ChildStdout>,
    child: Option<Child>,
    stderr: Option<StderrTail>,
    /// The command line, for messages.
    pub command: String,
    /// The `kill` program, which can signal a whole process group (std cannot without libc).
    kill: OsString,
    path: OsString,
}

impl Spawned {
    /// Ends the child and its process group now (it is reaped by [`Spawned::wait`] or on drop).
    pub fn kill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            if matches!(c.try_wait(), Ok(None)) {
                let group = format!("-{}", c.id());
                let _ = Command::new(&self.kill)
                    .args(["-KILL", "--", &group])
                    .env_clear()
                    .env("PATH", &self.path)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
            let _ = c.kill();
        }
    }

    /// Whether the child has ended (without waiting).
    pub fn has_ended(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| !matches!(c.try_wait(), Ok(None)))
    }

    /// Waits for the child to end, at most `limit` (then kills it); returns how it ended and
    /// the start of its stderr.
    pub fn wait(&mut self, limit: Duration) -> (Option<Exit>, String) {
        self.stdin.take();
        let exit = self.child.as_mut().and_then(|c| {
            let started = Instant::now();
            let mut pause = Duration::from_millis(1);
            loop {
                match c.try_wait() {
                    Ok(Some(s)) => return Some(Exit::from(s)),
                    Ok(None) if started.elapsed() >= limit => {
                        let _ = c.kill();
                        return c.wait().ok().map(Exit::from);
                    }
                    Ok(None) => {}
                    Err(_) => return None,
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
        });
        self.child = None;
        let stderr = self
            .stderr
            .take()
            .map(StderrTail::finish)
            .unwrap_or_default();
        (exit, String::from_utf8_lossy(&stderr).into_owned())
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.kill();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }
}

/// A child's stderr, read on its own thread to EOF; the first [`MAX_STDERR`] bytes are kept.
pub struct StderrTail(JoinHandle<Vec<u8>>);

impl StderrTail {
    pub fn drain(reader: impl Read + Send + 'static) -> Self {
        StderrTail(std::thread::spawn(move || {
            qzb_protocol::read_bounded(reader, MAX_STDERR)
        }))
    }

    /// What was read (waits for EOF: call after the child ended).
    pub fn finish(self) -> Vec<u8> {
        self.0.join().unwrap_or_default()
    }
}

fn read_to_end_retrying(mut r: impl Read, out: &mut Vec<u8>) -> std::io::Result<()> {
    // read_to_end already retries EINTR.
    r.read_to_end(out).map(|_| ())
}

/// A command line as the admin would type it (arguments with spaces or quotes quoted).
pub fn command_line(program: &str, args: &[&str]) -> String {
    std::iter::once(program)
        .chain(args.iter().copied())
        .map(|a| {
            if a.is_empty() || a.contains([' ', '\'', '"']) {
                format!("'{}'", a.replace('\'', "'\\''"))
            } else {
                a.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runner() -> SystemRunner {
        SystemRunner::new(Duration::from_secs(60))
    }

    #[test]
    fn children_see_only_path_and_a_fixed_locale() {
        // The test process has plenty of variables (CARGO_*, HOME, ...); none may pass.
        let out = runner().run("env", &[]).unwrap();
        let text = String::from_utf8(out).unwrap();
        let mut names: Vec<&str> = text.lines().filter_map(|l| l.split('=').next()).collect();
        names.sort();
        assert_eq!(names, ["LC_ALL", "PATH"], "{text}");
        assert!(text.contains("LC_ALL=C\n"), "{text}");
    }

    #[test]
    fn a_failing_tool_reports_its_stderr_on_one_line() {
        let e = runner()
            .run("sh", &["-c", "echo 'first\nsecond' >&2; exit 3"])
            .unwrap_err();
        assert_eq!(e.problem, "failed (exit status 3): first\\nsecond");
        assert!(e.command.starts_with("sh -c"), "{e}");
    }

    #[test]
    fn a_missing_tool_is_named() {
        let e = runner().run("qzb-no-such-tool", &[]).unwrap_err();
        assert!(
            e.problem.contains("'qzb-no-such-tool' is not installed"),
            "{e}"
        );
    }

    #[test]
    fn a_hung_tool_is_stopped_at_the_bound_and_named() {
        let r = SystemRunner::new(Duration::from_millis(200));
        let e = r.run("sleep", &["30"]).unwrap_err();
        assert!(
            e.to_string().starts_with("`sleep 30` did not finish"),
            "{e}"
        );
        // A child that closes its stdout but keeps running is bounded too.
        let e = r.run("sh", &["-c", "exec >&-; sleep 30"]).unwrap_err();
        assert!(e.problem.contains("did not finish"), "{e}");
        assert!(
            matches!(r.status("sleep", &["30"]), Err(e) if e.problem.contains("did not finish"))
        );
    }

    #[test]
    fn stderr_is_kept_bounded_and_drained_so_a_chatty_child_cannot_block() {
        // 1 MiB on stderr would fill the pipe and block the child if nobody read it.
        let e = runner()
            .run(
                "sh",
                &["-c", "head -c 1048576 /dev/zero | tr '\\0' x >&2; exit 1"],
            )
            .unwrap_err();
        assert!(
            e.problem.len() < MAX_STDERR_SHOWN + 100,
            "{}",
            e.problem.len()
        );
    }

    #[test]
    fn a_dropped_streaming_child_is_killed() {
        let mut s = runner().spawn("sleep", &["30"], false).unwrap();
        assert!(!s.has_ended());
        s.kill();
        let (exit, _) = s.wait(Duration::from_secs(30));
        assert_eq!(exit, Some(Exit::Signal));
    }

    #[test]
    fn killing_a_streaming_child_ends_what_it_started_that_holds_its_pipes() {
        // The child starts a grandchild that inherits stdout and outlives it: only a kill of
        // the whole group lets the read below see the end of the pipe.
        let mut s = runner()
            .spawn("sh", &["-c", "sleep 300 & echo started; wait"], false)
            .unwrap();
        let mut out = s.stdout.take().unwrap();
        let mut first = [0u8; 8];
        out.read_exact(&mut first).unwrap();
        assert_eq!(&first, b"started\n");
        s.kill();
        let mut rest = Vec::new();
        out.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    }

    #[test]
    fn a_child_sees_the_bare_program_name_as_argv0() {
        // `ps` and `pkill -f '^zfs send'` see `zfs send ...`, as if a shell had started it.
        let out = runner().run("sh", &["-c", "echo $0"]).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "sh\n");
    }

    #[test]
    fn status_gives_the_exit_code() {
        assert_eq!(
            runner().status("sh", &["-c", "exit 7"]).unwrap(),
            Exit::Code(7)
        );
    }

    #[test]
    fn command_lines_quote_what_needs_quoting() {
        assert_eq!(
            command_line("zfs", &["list", "a b", "it's"]),
            "zfs list 'a b' 'it'\\''s'"
        );
    }
}
