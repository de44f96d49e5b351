//! `leakhunt-analyzer`: capture, analyze and diff process memory snapshots.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use leakhunt_analyzer::{analysis, report, LiveProcess};

#[derive(Parser)]
#[command(
    name = "leakhunt-analyzer",
    version,
    about = "Capture, analyze and diff process memory snapshots"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Census of one snapshot (an ELF core, optionally .zst) or of a live process.
    Analyze {
        /// The snapshot file.
        #[arg(required_unless_present = "pid")]
        snapshot: Option<PathBuf>,
        /// Read a live process instead of a snapshot (not stopped: the view may be inconsistent).
        #[arg(long, conflicts_with = "snapshot")]
        pid: Option<i32>,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        /// Directory holding the process's files, for pages a core lacks (kernel and gcore cores).
        #[arg(long)]
        sysroot: Option<PathBuf>,
        /// How many pointer targets to print.
        #[arg(long, default_value_t = 25)]
        top: usize,
    },
    /// What grew between two snapshots of one process.
    Diff {
        before: PathBuf,
        after: PathBuf,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        #[arg(long)]
        sysroot: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let chain: Vec<String> = e.chain().map(ToString::to_string).collect();
            eprintln!("leakhunt-analyzer: {}", dedup_chain(&chain));
            ExitCode::from(1)
        }
    }
}

/// `thiserror` messages often already include their source; print each part once.
fn dedup_chain(chain: &[String]) -> String {
    let mut out = String::new();
    for part in chain {
        if !out.contains(part.as_str()) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(part);
        }
    }
    out
}

fn run(args: Args) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match args.command {
        Command::Analyze {
            snapshot,
            pid,
            format,
            sysroot,
            top,
        } => {
            let a = match (snapshot, pid) {
                (_, Some(pid)) => {
                    analysis::analyze_image(&LiveProcess::open(pid)?, sysroot.as_deref())
                }
                (Some(path), None) => analysis::analyze_path(&path, sysroot.as_deref())?,
                (None, None) => unreachable!("clap requires one of them"),
            };
            match format {
                Format::Text => report::write_census(&a, top, &mut out)?,
                Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(&a)?)?,
            }
        }
        Command::Diff {
            before,
            after,
            format,
            sysroot,
        } => {
            let f = analysis::diff_paths(&before, &after, sysroot.as_deref())?;
            match format {
                Format::Text => report::write_text(&f, &mut out)?,
                Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(&f)?)?,
            }
        }
    }
    out.flush()?;
    Ok(())
}
