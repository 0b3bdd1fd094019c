//! The poshta binary: argv[0] and the subcommand pick what runs; everything else is in the
//! library.
#![forbid(unsafe_code)]

fn main() {
    std::process::exit(poshta::cli::main());
}
