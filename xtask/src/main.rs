//! Project tasks. `cargo xtask <task>`; see `cargo xtask help`.
#![forbid(unsafe_code)]

mod assets;
mod audit_deps;
mod bench_plan;
mod bench_stream;
mod demo;
mod golden_check;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => demo::run(),
        Some("assets") => assets::run(&args[1..]),
        Some("audit-deps") => audit_deps::run(),
        Some("bench-plan") => bench_plan::run(),
        Some("bench-stream") => bench_stream::run(&args[1..]),
        Some("golden-check") => golden_check::run(&args[1..]),
        _ => {
            eprintln!("usage: cargo xtask <task>\n\ntasks:\n  demo         the whole workflow against the bundled fake Qubes+ZFS system\n  assets       man page and shell completions: assets --out-dir DIR\n  audit-deps   dependency sources, licenses, and the dom0 tree against docs/dependencies.md\n  bench-plan   check + planning on a synthetic 1,000-qube system (run with --release)\n  bench-stream pipeline throughput vs cat and memory (builds and runs itself in release)\n  golden-check real zfs send streams against their volumes and the manifest code: golden-check DIR [--trace]");
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("xtask: {e}");
        std::process::exit(1);
    }
}
