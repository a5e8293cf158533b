//! The `crmvault` command: parses arguments, calls the library, prints, exits.

mod cli;

// glibc's malloc keeps freed 8 MiB pack buffers in its per-thread arenas once the first one
// is freed (its mmap threshold grows): a scale-1 restore held 100 MiB of heap in 330 MiB of
// RSS. jemalloc returns them.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
