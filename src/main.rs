//! The `crmvault` command: parses arguments, calls the library, prints, exits.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
