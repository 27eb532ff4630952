//! `sdp`: the CLI of SDP and, with `sdp serve`, its reconciler.

use std::process::ExitCode;

/// mimalloc: compile and plan allocate many small strings; it halves their cost against glibc's malloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    sdp_reconciler::cli::main()
}
