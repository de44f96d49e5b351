//! `leakhunt`: OOM-kill forensics. Subcommands: `hunt` (local, no Kubernetes), `crdgen`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    /// Print the CustomResourceDefinitions (LeakReport, LeakWatch) as YAML.
    Crdgen,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: anyhow::Result<ExitCode> = match cli.command {
        Command::Crdgen => leakhunt_operator::crd::crd_yaml()
            .map(|y| {
                print!("{y}");
                ExitCode::SUCCESS
            })
            .map_err(Into::into),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("leakhunt: {e:#}");
            ExitCode::FAILURE
        }
    }
}
