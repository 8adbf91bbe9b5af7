#![forbid(unsafe_code)]

fn main() {
    std::process::exit(dom0_driver::cli::main());
}
