//! The `shmbus` command: see the crate's library (`shmbus_cli`) for what it does.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    shmbus_cli::main()
}
