//! `cargo xtask assets --out-dir DIR`: the dom0 driver's man page and shell completions,
//! generated from its clap definitions at build time (so the dom0 binary does not carry the
//! generators). scripts/build-rpms.sh packages them.

use clap::CommandFactory;
use dom0_driver::cli::Cli;
use std::path::PathBuf;

pub fn run(args: &[String]) -> Result<(), String> {
    let out = match args {
        [flag, dir] if flag == "--out-dir" => PathBuf::from(dir),
        _ => return Err("usage: cargo xtask assets --out-dir DIR".into()),
    };
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let cmd = Cli::command();
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .render(&mut page)
        .map_err(|e| e.to_string())?;
    std::fs::write(out.join("qubes-zfs-backup.1"), page).map_err(|e| e.to_string())?;
    for (shell, file) in [
        (clap_complete::Shell::Bash, "qubes-zfs-backup.bash"),
        (clap_complete::Shell::Zsh, "_qubes-zfs-backup"),
        (clap_complete::Shell::Fish, "qubes-zfs-backup.fish"),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "qubes-zfs-backup", &mut buf);
        std::fs::write(out.join(file), buf).map_err(|e| e.to_string())?;
    }
    println!("wrote the man page and completions to {}", out.display());
    Ok(())
}
