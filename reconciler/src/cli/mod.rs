//! The command line: one module per family of commands.

pub mod client;
mod gitops;
mod login;
mod new;
mod pins;
mod plan;
mod schema;
mod serve;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::edit::SpecEdit;

#[derive(Parser)]
#[command(
    name = "sdp",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("SDP_COMMIT"), ")"),
    about = "SDP, the Sandbox Deployment Platform: sandboxes as YAML in a git config repo"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    server: client::Server,
}

#[derive(Subcommand)]
enum Command {
    /// Check manifests: a config repo root (cross-file checks included) or single files. Exit 1 on any problem.
    Validate {
        /// Config repo roots or manifest files.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Write the JSON Schema of each kind into DIR.
    Schema {
        #[arg(long, default_value = "schemas")]
        out: PathBuf,
    },
    /// Create a manifest from a template by copying its file (comments included).
    New {
        #[command(subcommand)]
        what: NewWhat,
    },
    /// Show how FILE differs from what the config repo's HEAD holds. Exit 0: no difference, 1: differences.
    Diff {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[arg(long, default_value = ".")]
        repo: PathBuf,
    },
    /// Validate the repo with FILE in place, show the diff, write FILE's objects to their places and commit.
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[command(flatten)]
        commit: CommitArgs,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Run SDP on this host with the examples: a reconciler, both agents, demo services and gateway.
    Demo {
        /// Remove everything the demo made (its sandboxes' containers and networks, the OCP stand-in, the dir).
        #[arg(long)]
        down: bool,
        /// Where the demo keeps its repos and data (default: ~/.local/share/sdp-demo).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long, default_value_t = 3452)]
        port: u16,
    },
    /// Replace a sandbox's containers (or one service's) by committing a restart stamp into its manifest.
    Restart {
        /// SANDBOX or SANDBOX/SERVICE (SERVICE may be `gateway`).
        target: String,
        #[command(flatten)]
        commit: CommitArgs,
    },
    /// Stop a sandbox's containers, keeping its ports and configuration, by committing `suspend: true`.
    Suspend {
        sandbox: String,
        #[command(flatten)]
        commit: CommitArgs,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Start a suspended sandbox again by committing `suspend: false`.
    Resume {
        sandbox: String,
        #[command(flatten)]
        commit: CommitArgs,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Send a service, through the sandbox's gateway, to the sandbox's own container, to OCP or to a URL, by
    /// committing its `routes:` entry.
    Route {
        sandbox: String,
        #[arg(required = true, value_name = "SERVICE=sandbox|ocp|URL")]
        routes: Vec<String>,
        #[command(flatten)]
        commit: CommitArgs,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Move services (or the gateway: SERVICE `gateway`) to other branches by committing their `branch:`.
    Branch {
        sandbox: String,
        #[arg(required = true, value_name = "SERVICE=BRANCH")]
        branches: Vec<String>,
        #[command(flatten)]
        commit: CommitArgs,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// What a config repo would make the reconciler do (a PR check): validate it, compile it as the reconciler
    /// does and plan it against what the reconciler at --server sees (else an empty world). Exit 0: nothing would
    /// change, 2: something would, 1: invalid input or no plan could be made.
    Plan {
        /// The config repo's root (its working tree, as checked out).
        #[arg(default_value = ".")]
        path: PathBuf,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Show what a running reconciler knows: sandboxes, one sandbox, deployments, nodes.
    Get {
        #[command(subcommand)]
        what: client::GetWhat,
    },
    /// Print a container's recent output: SANDBOX/SERVICE (SERVICE may be `gateway`).
    Logs {
        target: String,
        /// Keep printing new lines as they come.
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Log in to a reconciler that needs one, with your Bitbucket username and password; `get`, `logs` and
    /// `apply --wait` then use the session (12 h).
    Login {
        #[arg(long)]
        username: Option<String>,
        /// Read the password from stdin (for scripts) instead of asking on the terminal.
        #[arg(long)]
        password_stdin: bool,
    },
    /// End the session that `sdp login` opened with this server.
    Logout,
    /// Run the reconciler: read the config repo, accept agents, reconcile, serve the API and dashboard.
    Serve(serve::ServeArgs),
    /// Pin SERVICE (or `gateway`) of SANDBOX to COMMIT, or without `=COMMIT` to the commit it runs now (from
    /// --server): pushes to its branch then no longer move it.
    Pin {
        sandbox: String,
        /// SERVICE or SERVICE=COMMIT (a full 40-hex commit id).
        target: String,
        #[command(flatten)]
        commit: CommitArgs,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Remove the pin of SERVICE (or `gateway`) of SANDBOX: it follows its branch's head again.
    Unpin {
        sandbox: String,
        service: String,
        #[command(flatten)]
        commit: CommitArgs,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Commit templates/NAME.yaml: SANDBOX with every container pinned to the commit it runs now (from --server).
    Snapshot {
        sandbox: String,
        name: String,
        #[command(flatten)]
        commit: CommitArgs,
    },
    /// Write a snapshot's branches and pins into SANDBOX's own file (only those bytes change) and commit it.
    Rollback {
        sandbox: String,
        /// The snapshot (a template) to go back to.
        #[arg(long)]
        to: String,
        #[command(flatten)]
        commit: CommitArgs,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Commit sandboxes/DST.yaml, a copy of SRC with the same branches, pins, environments, env and routes and
    /// new ports (explicit ports dropped).
    Clone {
        src: String,
        dst: String,
        #[command(flatten)]
        commit: CommitArgs,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Remove an object from the config repo and commit the removal.
    Delete {
        #[arg(value_enum)]
        kind: KindArg,
        name: String,
        #[command(flatten)]
        commit: CommitArgs,
    },
}

/// Where and how `apply` and `delete` commit.
#[derive(Args)]
struct CommitArgs {
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    /// Commit message (default: "apply <kind> <name>" or "delete <kind> <name>").
    #[arg(short = 'm', long)]
    message: Option<String>,
    /// Push the commit to the upstream with your own git credentials.
    #[arg(long)]
    push: bool,
}

/// `--wait` for the commands that change a sandbox.
#[derive(Args)]
struct WaitArgs {
    /// After the commit, follow the reconciler (--server) until the sandbox is synced, with its progress.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits, in seconds.
    #[arg(long, default_value_t = 600)]
    wait_secs: u64,
}

impl WaitArgs {
    fn with<'a>(&self, server: &'a client::Server) -> pins::Wait<'a> {
        self.wait
            .then_some((server, std::time::Duration::from_secs(self.wait_secs)))
    }
}

/// `SERVICE=VALUE` arguments as pairs.
fn pairs(args: &[String], what: &str) -> anyhow::Result<Vec<(String, String)>> {
    args.iter()
        .map(|a| match a.split_once('=') {
            Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => anyhow::bail!("`{a}`: write it as SERVICE={what}"),
        })
        .collect()
}

#[derive(Subcommand)]
enum NewWhat {
    /// Write sandboxes/NAME.yaml from a template, with kind and name changed and everything else kept.
    Sandbox {
        name: String,
        #[arg(long = "from-template")]
        from_template: String,
        #[arg(long, default_value = ".")]
        repo: PathBuf,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum KindArg {
    Sandbox,
    Template,
    Environment,
}

impl KindArg {
    fn kind(self) -> sdp_manifest::Kind {
        match self {
            KindArg::Sandbox => sdp_manifest::Kind::Sandbox,
            KindArg::Template => sdp_manifest::Kind::SandboxTemplate,
            KindArg::Environment => sdp_manifest::Kind::Environment,
        }
    }
}

pub fn main() -> ExitCode {
    // git runs `sdp` as its askpass while `sdp serve` checks a login.
    if let Some(code) = crate::auth::askpass_main() {
        return code;
    }
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    // `sdp plan` plans against an empty world unless a server is named (flag or SDP_SERVER), not the default.
    let server_given = !matches!(
        matches.value_source("server"),
        None | Some(clap::parser::ValueSource::DefaultValue)
    );
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let result = match cli.command {
        Command::Validate { paths, format } => validate::run(&paths, format == Format::Json),
        Command::Schema { out } => schema::run(&out),
        Command::New {
            what:
                NewWhat::Sandbox {
                    name,
                    from_template,
                    repo,
                },
        } => new::run(&repo, &name, &from_template),
        Command::Diff { file, repo } => gitops::diff(&repo, &file),
        Command::Apply { file, commit, wait } => gitops::apply(&file, &commit, wait.with(&cli.server)),
        Command::Suspend { sandbox, commit, wait } => gitops::edit(
            &sandbox,
            &[SpecEdit::Suspend(true)],
            "suspend",
            &commit,
            wait.with(&cli.server),
        ),
        Command::Resume { sandbox, commit, wait } => gitops::edit(
            &sandbox,
            &[SpecEdit::Suspend(false)],
            "resume",
            &commit,
            wait.with(&cli.server),
        ),
        Command::Route {
            sandbox,
            routes,
            commit,
            wait,
        } => pairs(&routes, "sandbox|ocp|URL").and_then(|routes| {
            let edits: Vec<SpecEdit> = routes
                .into_iter()
                .map(|(service, target)| SpecEdit::Route { service, target })
                .collect();
            gitops::edit(&sandbox, &edits, "route", &commit, wait.with(&cli.server))
        }),
        Command::Branch {
            sandbox,
            branches,
            commit,
            wait,
        } => pairs(&branches, "BRANCH").and_then(|branches| {
            let edits: Vec<SpecEdit> = branches
                .into_iter()
                .map(|(service, branch)| SpecEdit::Branch { service, branch })
                .collect();
            gitops::edit(&sandbox, &edits, "branch", &commit, wait.with(&cli.server))
        }),
        Command::Plan { path, format } => {
            let server = server_given.then_some(&cli.server);
            plan::run(&path, server, format == Format::Json)
        }
        Command::Delete { kind, name, commit } => gitops::delete(kind.kind(), &name, &commit),
        Command::Serve(args) => serve::run(args),
        Command::Restart { target, commit } => gitops::restart(&target, &commit),
        Command::Pin {
            sandbox,
            target,
            commit,
            wait,
        } => pins::pin(&cli.server, &sandbox, &target, &commit, wait.with(&cli.server)),
        Command::Unpin {
            sandbox,
            service,
            commit,
            wait,
        } => pins::unpin(&sandbox, &service, &commit, wait.with(&cli.server)),
        Command::Snapshot { sandbox, name, commit } => pins::snapshot(&cli.server, &sandbox, &name, &commit),
        Command::Rollback {
            sandbox,
            to,
            commit,
            wait,
        } => pins::rollback(&sandbox, &to, &commit, wait.with(&cli.server)),
        Command::Clone { src, dst, commit, wait } => pins::clone(&src, &dst, &commit, wait.with(&cli.server)),
        Command::Demo { down, dir, port } => {
            let dir = dir.unwrap_or_else(|| {
                let base = std::env::var_os("XDG_DATA_HOME")
                    .map(PathBuf::from)
                    .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
                    .unwrap_or_else(|| PathBuf::from("."));
                base.join("sdp-demo")
            });
            if down {
                crate::demo::down(&dir)
            } else {
                crate::demo::up(&dir, port)
            }
        }
        Command::Get { what } => client::run_get(&cli.server, what),
        Command::Logs { target, follow } => client::run_logs(&cli.server, &target, follow),
        Command::Login {
            username,
            password_stdin,
        } => login::run_login(&cli.server, username, password_stdin),
        Command::Logout => login::run_logout(&cli.server),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Prints problems the way compilers do, one per entry, hint below.
fn print_problems(problems: &[sdp_manifest::Problem]) {
    for p in problems {
        eprintln!("{p}");
    }
}

/// Logs to stderr, `info` unless `RUST_LOG` says otherwise.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
