//! `cargo xtask golden-check <dir> [--trace]`: the checks of
//! `qzb_protocol::manifest::golden` on a directory of real `zfs send` streams (the fixtures in
//! `protocol/tests/golden/zfs-<version>/`, or what `tests/vm/cases/06-golden-streams.sh` just
//! recorded in the VM). `--trace` also lists each stream's records (for documenting them).

use qzb_protocol::manifest::golden;
use std::path::PathBuf;

pub fn run(args: &[String]) -> Result<(), String> {
    let mut dir = None;
    let mut trace = false;
    for a in args {
        match a.as_str() {
            "--trace" => trace = true,
            _ if dir.is_none() => dir = Some(PathBuf::from(a)),
            _ => return Err(format!("golden-check: unexpected argument {a:?}")),
        }
    }
    let dir = dir.ok_or("usage: cargo xtask golden-check <dir> [--trace]")?;
    if trace {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "zstream"))
            .collect();
        names.sort();
        for path in names {
            let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            println!("== {}", path.display());
            print!("{}", golden::trace(&bytes));
        }
    }
    let mut read = |name: &str| std::fs::read(dir.join(name));
    let reports = golden::check_dir(&mut read)?;
    for r in &reports {
        println!("{r}");
    }
    println!(
        "golden-check: {} chains in {} passed",
        reports.len(),
        dir.display()
    );
    Ok(())
}
