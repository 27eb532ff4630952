//! `sdp`: the CLI of SDP and, with `sdp serve`, its reconciler.

use std::process::ExitCode;

fn main() -> ExitCode {
    sdp_reconciler::cli::main()
}
