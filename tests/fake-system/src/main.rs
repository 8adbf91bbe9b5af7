//! `qzb-fake`: one multi-call binary standing in for `zfs`, `qubesd-query`, `xl`,
//! `qrexec-client`, `qrexec-policy-exec` and `qvm-volume`, acting by the basename of argv[0].
//! State lives under `$QZB_FAKE_ROOT` (see README.md). Anything outside the modelled
//! argv prints `qzb-fake <tool>: unsupported: <argv>` and exits 2.
#![forbid(unsafe_code)]

mod opts;
mod qadmin;
mod qubes;
mod qvm_volume;
mod sendrecv;
mod state;
mod stream;
mod token;
mod vol;
mod vstream;
mod zfs;

use std::io::Write;
use std::path::Path;

pub const TOOLS: [&str; 6] = [
    "zfs",
    "qubesd-query",
    "xl",
    "qrexec-client",
    "qrexec-policy-exec",
    "qvm-volume",
];

fn log_call(root: &Path, host: &str, tool: &str, args: &[String]) {
    let mut argv = vec![tool.to_string()];
    argv.extend(args.iter().cloned());
    let mut line = serde_json::json!({"host": host, "argv": argv});
    if let Ok(cwd) = std::env::current_dir() {
        line["cwd"] = cwd.to_string_lossy().into_owned().into();
    }
    let text = format!("{line}\n");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(root.join("calls.log"))
    {
        let _ = f.write_all(text.as_bytes());
    }
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let dst = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &dst)?;
        } else {
            std::fs::copy(e.path(), dst)?;
        }
    }
    Ok(())
}

fn admin(args: &[String]) -> i32 {
    match args.first().map(String::as_str) {
        Some("install-links") if args.len() == 2 => {
            let dir = Path::new(&args[1]);
            let exe = match std::env::current_exe().and_then(|e| e.canonicalize()) {
                Ok(e) => e,
                Err(e) => return zfs::fatal(e),
            };
            if let Err(e) = std::fs::create_dir_all(dir) {
                return zfs::fatal(e);
            }
            for t in TOOLS {
                let link = dir.join(t);
                let _ = std::fs::remove_file(&link);
                if let Err(e) = std::os::unix::fs::symlink(&exe, &link) {
                    return zfs::fatal(format!("{}: {e}", link.display()));
                }
            }
            0
        }
        Some("init") if args.len() == 3 => {
            let (fixture, dest) = (Path::new(&args[1]), Path::new(&args[2]));
            if !fixture.join("dom0.json").is_file() {
                return zfs::fatal(format!("{} has no dom0.json", fixture.display()));
            }
            let r = (|| -> std::io::Result<()> {
                std::fs::create_dir_all(dest.join("qubes"))?;
                std::fs::copy(fixture.join("dom0.json"), dest.join("dom0.json"))?;
                if fixture.join("qubes").is_dir() {
                    copy_dir(&fixture.join("qubes"), &dest.join("qubes"))?;
                }
                Ok(())
            })();
            match r {
                Ok(()) => 0,
                Err(e) => zfs::fatal(e),
            }
        }
        Some("token-decode") if args.len() == 2 => match token::decode(&args[1]) {
            Ok(nvl) => {
                print!("{}", token::print(&nvl));
                0
            }
            Err(e) => {
                eprintln!("{e}");
                1
            }
        },
        Some("volume-image") if args.len() == 4 => {
            let r = state::read(Path::new(&args[1]), &args[2]).and_then(|st| {
                let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
                vol::write_image(&st.zfs, &args[2], &args[3], &mut out)
            });
            match r {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("{e}");
                    1
                }
            }
        }
        _ => {
            eprintln!(
                "usage: qzb-fake install-links <bindir>\n       qzb-fake init <fixture-dir> <state-dir>\n       qzb-fake token-decode <token>\n       qzb-fake volume-image <state-dir> <host> <volume@snapshot>\n       (or run through a symlink named one of: {})",
                TOOLS.join(", ")
            );
            2
        }
    }
}

/// The file beside the tool links that stands in for the environment: the driver runs every
/// tool with an environment cleared down to PATH and LC_ALL, so the fakes find their state
/// root and fault settings through the directory PATH led to, not through variables.
pub const ENV_FILE: &str = "fake.env";

/// Sets every `NAME=value` line of `<bindir>/fake.env` that the environment does not set
/// already (a variable given directly, as tests running a fake by hand do, wins). `bindir` is
/// the directory of argv[0], or the first PATH entry holding `tool` when argv[0] is a bare name.
fn load_env_file(argv0: &str, tool: &str) {
    let dir = if argv0.contains('/') {
        Path::new(argv0).parent().map(Path::to_path_buf)
    } else {
        std::env::var_os("PATH")
            .and_then(|p| std::env::split_paths(&p).find(|d| d.join(tool).exists()))
    };
    let Some(text) = dir.and_then(|d| std::fs::read_to_string(d.join(ENV_FILE)).ok()) else {
        return;
    };
    for line in text.lines() {
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        if !name.is_empty() && !name.starts_with('#') && std::env::var_os(name).is_none() {
            // Single-threaded at this point: nothing else reads the environment yet.
            std::env::set_var(name, value);
        }
    }
}

fn main() {
    let argv: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let tool = argv
        .first()
        .map(|a| {
            Path::new(a)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .unwrap_or_default();
    let args = if argv.is_empty() { &[][..] } else { &argv[1..] };
    if !TOOLS.contains(&tool.as_str()) {
        std::process::exit(admin(args));
    }
    if let Some(first) = argv.first() {
        load_env_file(first, &tool);
    }
    let root = match state::root() {
        Ok(r) => r,
        Err(e) => std::process::exit(zfs::fatal(e)),
    };
    let host = if tool == "zfs" {
        std::env::var("QZB_FAKE_HOST")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "dom0".into())
    } else {
        "dom0".to_string()
    };
    log_call(&root, &host, &tool, args);
    let code = match tool.as_str() {
        "zfs" => zfs::main(&root, &host, args),
        "qubesd-query" => qubes::qubesd_query(&root, args),
        "xl" => qubes::xl(&root, args),
        "qrexec-client" => qubes::qrexec_client(&root, args),
        "qvm-volume" => qvm_volume::main(&root, args),
        _ => qubes::qrexec_policy_exec(&root, args),
    };
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}
