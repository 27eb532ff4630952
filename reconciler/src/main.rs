//! `sdp`: the CLI of SDP and, with `sdp serve`, its reconciler.

mod change;
mod cli;
mod git;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
