//! fake `qvm-volume`: only `qvm-volume import --size=N QUBE:VOLUME -`, what restore uses to fill
//! a volume. The real tool (qubes-core-admin-client qvm_volume.py) calls
//! `admin.vm.volume.ImportWithSize`, whose dom0 script (qubes-core-admin
//! qubes-rpc/admin.vm.volume.Import) asks qubesd to begin (the qube must be halted), copies
//! exactly N bytes with dd, checks that no byte more follows, and reports the outcome to qubesd,
//! which keeps the new data only on success. The fake stores the data as
//! `$QZB_FAKE_ROOT/imported/<QUBE>/<VOLUME>.img` (written to a temporary file, renamed on
//! success; zero runs are left as holes) and sets that volume's size in dom0.json.

use crate::qubes::{imported_dir, qubes_of};
use crate::state::{self, Volume};
use crate::zfs::{fatal, unsupported};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

/// How qvm-volume reports a QubesException from qubesd: `parser.print_error(str(e))`, which
/// prints the bare message in 4.2 and `Error: <message>` from 4.3 on; exit 1.
fn qubesd_error(release: &str, msg: &str) -> i32 {
    if release == "4.2" {
        eprintln!("{msg}");
    } else {
        eprintln!("Error: {msg}");
    }
    1
}

/// An argument error found once qubesd is asked (`parser.error_runtime`): exit 1.
fn runtime_error(msg: &str) -> i32 {
    eprintln!("qvm-volume: error: {msg}");
    1
}

pub fn main(root: &Path, args: &[String]) -> i32 {
    let all: Vec<String> = std::iter::once("qvm-volume".to_string())
        .chain(args.iter().cloned())
        .collect();
    let unsup = || unsupported("qvm-volume", &all);
    if args.first().map(String::as_str) != Some("import") {
        return unsup();
    }
    let mut size: Option<u64> = None;
    let mut operands: Vec<&str> = Vec::new();
    let mut it = args[1..].iter();
    while let Some(a) = it.next() {
        let value = if let Some(v) = a.strip_prefix("--size=") {
            v
        } else if a == "--size" {
            match it.next() {
                Some(v) => v.as_str(),
                None => return unsup(),
            }
        } else if a.starts_with('-') && a != "-" {
            return unsup();
        } else {
            operands.push(a);
            continue;
        };
        match value.parse::<u64>() {
            Ok(n) => size = Some(n),
            Err(_) => return unsup(),
        }
    }
    let (Some(size), [target, "-"]) = (size, operands.as_slice()) else {
        return unsup();
    };
    let mut parts = target.split(':');
    let (Some(qube), Some(volume), None) = (parts.next(), parts.next(), parts.next()) else {
        return unsup();
    };
    if qube.is_empty()
        || volume.is_empty()
        || volume.starts_with('.')
        || volume.contains('/')
        || qube.contains('/')
    {
        return unsup();
    }
    let q = match qubes_of(root) {
        Ok(q) => q,
        Err(e) => return fatal(e),
    };
    let release = q.release.clone();
    // ImportBegin is refused before any data is read
    if let Err(code) = check(&q, &release, qube, volume) {
        return code;
    }
    if import_refused_at_begin(target) {
        return qubesd_error(&release, "Volume import refused: the pool is out of space");
    }
    let dir = imported_dir(root, qube);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return fatal(format!("{}: {e}", dir.display()));
    }
    let dst = dir.join(format!("{volume}.img"));
    let tmp = dir.join(format!(".{volume}.img.tmp.{}", std::process::id()));
    let copied = match copy_sparse(size, &tmp) {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return fatal(format!("{}: {e}", tmp.display()));
        }
    };
    let error = match copied {
        Copied::Short(n) => Some(format!(
            "not enough data (copied {n} bytes, expected {size} bytes)"
        )),
        Copied::More => Some(format!("too much data (expected {size} bytes)")),
        Copied::Exact if import_fault(target) => Some("error copying data".to_string()),
        Copied::Exact => None,
    };
    if let Some(error) = error {
        let _ = std::fs::remove_file(&tmp);
        return qubesd_error(&release, &format!("Data import failed: {error}"));
    }
    // ImportEnd: keep the data, under the lock, if the qube is still there and halted
    let r = (|| -> Result<Result<(), i32>, String> {
        let _lock = state::Lock::acquire(root)?;
        let mut st = state::load(root, "dom0")?;
        let Some(q) = st.qubes.as_mut() else {
            return Err("dom0.json has no \"qubes\" section".into());
        };
        if let Err(code) = check(q, &release, qube, volume) {
            return Ok(Err(code));
        }
        std::fs::rename(&tmp, &dst).map_err(|e| format!("{}: {e}", dst.display()))?;
        let vm = q.domains.get_mut(qube).expect("checked");
        match vm.volumes.iter_mut().find(|v| v.name == volume) {
            Some(v) => v.size = size,
            None => vm.volumes.push(Volume {
                name: volume.to_string(),
                pool: "imported".into(),
                vid: format!("imported/{qube}/{volume}"),
                size,
                rw: true,
                path: Some(dst.to_string_lossy().into_owned()),
                revisions_to_keep: 1,
                ..Default::default()
            }),
        }
        state::save(root, "dom0", &st)?;
        Ok(Ok(()))
    })();
    let _ = std::fs::remove_file(&tmp);
    match r {
        Ok(Ok(())) => 0,
        Ok(Err(code)) => code,
        Err(e) => fatal(e),
    }
}

/// What qvm-volume's argument parsing and ImportBegin refuse: an unknown qube, a qube without
/// volumes (dom0), a qube not halted.
fn check(q: &state::Qubes, release: &str, qube: &str, volume: &str) -> Result<(), i32> {
    let Some(vm) = q.domains.get(qube) else {
        return Err(runtime_error(&format!("no vm '{qube}'")));
    };
    if vm.class == "AdminVM" || qube == "dom0" {
        return Err(runtime_error(&format!(
            "vm '{qube}' has no volume '{volume}'"
        )));
    }
    if vm.state != "Halted" {
        return Err(qubesd_error(
            release,
            &format!("Domain is not powered off: '{qube}'"),
        ));
    }
    Ok(())
}

/// `QZB_FAKE_IMPORT_FAIL` (with `QZB_FAKE_IMPORT_MATCH` on `QUBE:VOLUME`, and
/// `QZB_FAKE_FAULT_ONCE`): the import fails after all the data was read.
fn import_fault(target: &str) -> bool {
    std::env::var("QZB_FAKE_IMPORT_FAIL").is_ok_and(|v| !v.is_empty())
        && crate::sendrecv::fault_applies("IMPORT", target)
}

/// `QZB_FAKE_IMPORT_FAIL=begin` (same match variables): qubesd refuses the import before it
/// reads a byte, so the caller's writes meet a closed pipe.
fn import_refused_at_begin(target: &str) -> bool {
    std::env::var("QZB_FAKE_IMPORT_FAIL").is_ok_and(|v| v == "begin")
        && crate::sendrecv::fault_applies("IMPORT", target)
}

enum Copied {
    Exact,
    /// Stdin ended after this many bytes.
    Short(u64),
    /// At least one byte more than the size followed.
    More,
}

/// Copies `size` bytes of stdin to `path` (all-zero chunks left as holes), then reads one byte
/// more, as the import script's `dd ... count=1` does.
fn copy_sparse(size: u64, path: &Path) -> std::io::Result<Copied> {
    let mut f = std::fs::File::create(path)?;
    let mut stdin = std::io::stdin().lock();
    let mut buf = vec![0u8; 1 << 16];
    let mut done = 0u64;
    while done < size {
        let want = buf.len().min((size - done) as usize);
        let n = match stdin.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf[..n].iter().all(|&b| b == 0) {
            f.seek(SeekFrom::Current(n as i64))?;
        } else {
            f.write_all(&buf[..n])?;
        }
        done += n as u64;
    }
    f.set_len(done)?;
    if done < size {
        return Ok(Copied::Short(done));
    }
    let mut one = [0u8; 1];
    loop {
        match stdin.read(&mut one) {
            Ok(0) => return Ok(Copied::Exact),
            Ok(_) => return Ok(Copied::More),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}
