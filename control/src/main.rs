//! The one binary: `pacific daemon | lab | get | apply | delete | exec | netexec | rpc`.

fn main() -> std::process::ExitCode {
    pacific_control::cli::main()
}
