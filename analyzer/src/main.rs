//! `leakhunt-analyzer`: the command line over the library. Exit codes: 0 ok, 1 error, 2 usage.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use leakhunt_analyzer::capture::{self, CaptureOptions};
use leakhunt_analyzer::util::human_bytes;

#[derive(Debug, Parser)]
#[command(
    name = "leakhunt-analyzer",
    version,
    about = "OOM-kill forensics: capture, census and diff process memory"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a self-contained ELF core of a running process (stopped only while its memory is read).
    Capture(CaptureArgs),
}

#[derive(Debug, clap::Args)]
struct CaptureArgs {
    /// Process to capture.
    #[arg(long)]
    pid: i32,
    /// Core file to write (mode 0600); a `.zst` name implies --compress.
    #[arg(long, short)]
    output: PathBuf,
    /// Compress with zstd.
    #[arg(long)]
    compress: bool,
    /// Overwrite an existing output file.
    #[arg(long)]
    force: bool,
    /// Refuse, before stopping the process, when the core would exceed this many bytes.
    #[arg(long, value_name = "BYTES")]
    max_size: Option<u64>,
}

fn run_capture(a: CaptureArgs) -> anyhow::Result<()> {
    let opts = CaptureOptions {
        output: a.output,
        compress: a.compress,
        overwrite: a.force,
        max_bytes: a.max_size,
    };
    let s = capture::capture(a.pid, &opts)
        .with_context(|| format!("capture of process {} failed", a.pid))?;
    println!(
        "captured process {} to {}: {} file ({} of memory, {} mappings), {} threads, stopped {:.1} ms, total {:.1} ms",
        a.pid,
        s.path.display(),
        human_bytes(s.file_bytes),
        human_bytes(s.memory_bytes),
        s.mappings,
        s.threads,
        s.stopped.as_secs_f64() * 1e3,
        s.total.as_secs_f64() * 1e3,
    );
    Ok(())
}

fn main() -> ExitCode {
    // clap exits with 2 on usage errors and 0 for --help/--version.
    let args = Args::parse();
    let result = match args.command {
        Command::Capture(a) => run_capture(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the context, then the cause that says what to do.
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
