//! The poshta binary: argv[0] and the subcommand pick what runs; everything else is in the
//! library.
#![forbid(unsafe_code)]

/// The static (musl) build uses dlmalloc rather than musl's malloc: see Cargo.toml.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

fn main() {
    std::process::exit(poshta::cli::main());
}
