//! `leakhunt`: OOM-kill forensics. Subcommands: `operator` (the controller Deployment), `agent`
//! (the node DaemonSet), `analyze-job` (the analyzer Job), `hunt` (local, no Kubernetes), `report`
//! (a LeakReport as an HTML page), `crdgen`.

mod cluster_cli;
mod report_cli;

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use leakhunt_operator::hunt::{self, cli::HuntArgs};
use leakhunt_operator::node::cgroup;
use leakhunt_operator::snapshot::{self, Analyzer};

#[derive(Parser)]
#[command(
    name = "leakhunt",
    version,
    about = "OOM-kill forensics: find what grows before the kernel kills it"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Hunt a memory leak on this host: run a command under a memory limit (or watch a PID),
    /// snapshot it near the limit, and name what grows.
    Hunt(Box<HuntArgs>),
    /// Render a LeakReport (a file, or `-n NAMESPACE NAME` from the cluster) as one
    /// self-contained HTML page: memory timeline, suspects, types, incidents.
    Report(Box<report_cli::ReportArgs>),
    /// Print the CustomResourceDefinitions (LeakReport, LeakWatch) as YAML.
    Crdgen,
    /// Run the controller: OOM kills into LeakReports, analyzer Jobs, alerts (a Deployment).
    Operator(Box<cluster_cli::OperatorArgs>),
    /// Run the node agent: sample pod cgroups, capture snapshot pairs (a DaemonSet, hostPID).
    Agent(Box<cluster_cli::AgentArgs>),
    /// Diff a snapshot pair and write the findings into its LeakReport (the analyzer Job).
    AnalyzeJob(Box<cluster_cli::AnalyzeJobArgs>),
}

// Counts what an analysis holds, for the analyzer Job's --memory-budget.
#[global_allocator]
static ALLOC: leakhunt_analyzer::budget::CountingAllocator =
    leakhunt_analyzer::budget::CountingAllocator;

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Crdgen => match leakhunt_operator::crd::crd_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("leakhunt crdgen: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Hunt(args) => run_hunt(*args),
        Command::Report(args) => report_cli::report(*args),
        Command::Operator(args) => cluster_cli::operator(*args),
        Command::Agent(args) => cluster_cli::agent(*args),
        Command::AnalyzeJob(args) => cluster_cli::analyze_job(*args),
    }
}

fn run_hunt(args: HuntArgs) -> ExitCode {
    let opts = match args.into_options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("leakhunt hunt: {e}");
            return ExitCode::from(2);
        }
    };
    // Ctrl-C and SIGTERM end the hunt cleanly: the cgroup and its processes are removed.
    let cancel = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(signal, Arc::clone(&cancel)) {
            eprintln!("leakhunt hunt: cannot handle signal {signal}: {e}");
        }
    }
    let mut stdout = std::io::stdout();
    match hunt::run(&opts, &Analyzer, &mut stdout, &cancel) {
        Ok(outcome) => match outcome.failure {
            None => ExitCode::SUCCESS,
            Some(f) => {
                eprintln!("leakhunt hunt: {f}");
                ExitCode::from(f.exit_code())
            }
        },
        Err(e) => {
            eprintln!("leakhunt hunt: {}", snapshot::error_chain(&e));
            ExitCode::from(match e {
                hunt::Error::Cgroup(
                    cgroup::Error::Permission { .. } | cgroup::Error::ControllerMissing { .. },
                )
                | hunt::Error::NoLimit { .. }
                | hunt::Error::NotPermitted { .. } => 3,
                hunt::Error::Thresholds(_) => 2,
                _ => 1,
            })
        }
    }
}
