//! The `crmvault` command: parses arguments, calls the library, prints, exits.

/// `eprintln!` that never panics. std's panics when stderr cannot be written (its reader gone:
/// `crmvault dump … 2>&1 | head -1`), which ended the run with exit 101 before its audit record
/// and its exit code; a line nobody can read is dropped instead. In scope for every module below.
macro_rules! eprintln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// `eprint!` that never panics, as [`eprintln!`] above.
macro_rules! eprint {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stderr(), $($arg)*);
    }};
}

mod cli;

// glibc's malloc keeps freed 8 MiB pack buffers in its per-thread arenas once the first one
// is freed (its mmap threshold grows): a scale-1 restore held 100 MiB of heap in 330 MiB of
// RSS. jemalloc returns them.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
