//! `sdp`: the CLI of SDP and, with `sdp serve`, its reconciler.

use std::process::ExitCode;

sdp_reconciler::global_allocator!();

fn main() -> ExitCode {
    sdp_reconciler::cli::main()
}
