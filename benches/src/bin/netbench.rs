//! `netbench`: Pacific against the kernel router, end to end, in network namespaces.
//!
//! `cargo run --release -p pacific-benches --bin netbench -- [--quick] [--json FILE]` (as root).
//! Everything lives in [`pacific_benches::netbench`]; this is the front door.

fn main() -> std::process::ExitCode {
    pacific_benches::netbench::main()
}
