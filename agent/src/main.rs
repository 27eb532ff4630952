//! `sdp-agent`: git worktrees, Go builds, Docker and the gateway's config.php on one VM (issue 4).
//!
//! Not built yet: this binary only says so, so that nobody mistakes it for a working agent.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--version" || a == "-V") {
        println!(
            "sdp-agent {} (protocol {})",
            env!("CARGO_PKG_VERSION"),
            sdp_protocol::PROTOCOL_VERSION
        );
        return ExitCode::SUCCESS;
    }
    eprintln!("sdp-agent: the agent is not implemented yet in this build (see issue 4); only --version works");
    ExitCode::from(2)
}
