//! `leakhunt-analyzer`: capture, analyze and diff process memory snapshots.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use leakhunt_analyzer::capture::{self, CaptureOptions};
use leakhunt_analyzer::util::{human_bytes, parse_size};
use leakhunt_analyzer::{analysis, budget, report, LiveProcess};

// Counts what the analysis holds, for --memory-budget and --stats.
#[global_allocator]
static ALLOC: budget::CountingAllocator = budget::CountingAllocator;

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
    /// Write a self-contained ELF core of a running process: its memory is copied while it runs,
    /// and it is stopped only to copy again the pages it wrote meanwhile.
    Capture {
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
        /// Stop the process for the whole copy (no pre-copy while it runs).
        #[arg(long)]
        stop_the_world: bool,
        /// How pre-copy finds the pages written while it copies: soft-dirty bits where the kernel
        /// has them, else a userfaultfd write-protect in the target (Linux 6.7).
        #[arg(long, value_parser = ["auto", "soft-dirty", "userfaultfd"], default_value = "auto")]
        tracker: String,
    },
    /// Take a heap dump of a running HotSpot JVM through its attach mechanism (as `jmap
    /// -dump:live`, with no JDK tool), zstd-compressed, mode 0600.
    HeapDump {
        /// The JVM's process.
        #[arg(long)]
        pid: i32,
        /// The compressed HPROF file to write.
        #[arg(long, short)]
        output: PathBuf,
        /// Refuse a dump larger than this many bytes (uncompressed).
        #[arg(long, value_name = "BYTES")]
        max_size: Option<u64>,
        /// Seconds the JVM may take to write it.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// A running JVM's heap, metaspace, threads and collections, from its performance counters
    /// (no attach, no pause).
    JvmStats {
        #[arg(long)]
        pid: i32,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Census of one snapshot (an ELF core or an HPROF heap dump, optionally .zst) or of a live process.
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
        #[command(flatten)]
        limits: Limits,
    },
    /// What grew between two snapshots of one process (two cores, or two HPROF dumps of one JVM).
    Diff {
        before: PathBuf,
        after: PathBuf,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        #[arg(long)]
        sysroot: Option<PathBuf>,
        #[command(flatten)]
        limits: Limits,
    },
}

#[derive(clap::Args)]
struct Limits {
    /// Refuse, with an error, rather than hold more than this much memory (e.g. 512Mi, 2G):
    /// under a memory limit, a clear failure instead of an OOM kill.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    memory_budget: Option<u64>,
    /// Print the analysis's peak memory (allocations, not the mapped snapshot) and time to stderr.
    #[arg(long)]
    stats: bool,
}

impl Limits {
    fn apply(&self) -> Stats {
        budget::set_budget(self.memory_budget);
        Stats {
            on: self.stats,
            start: std::time::Instant::now(),
        }
    }
}

struct Stats {
    on: bool,
    start: std::time::Instant,
}

impl Drop for Stats {
    fn drop(&mut self) {
        if self.on {
            eprintln!(
                "leakhunt-analyzer: peak memory {} ({} bytes) in {:.2} s",
                human_bytes(budget::peak() as u64),
                budget::peak(),
                self.start.elapsed().as_secs_f64()
            );
        }
    }
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
        Command::Capture {
            pid,
            output,
            compress,
            force,
            max_size,
            stop_the_world,
            tracker,
        } => {
            let opts = CaptureOptions {
                output,
                compress,
                overwrite: force,
                max_bytes: max_size,
                stop_the_world,
                tracker: match tracker.as_str() {
                    "soft-dirty" => capture::TrackerChoice::SoftDirty,
                    "userfaultfd" => capture::TrackerChoice::Userfaultfd,
                    _ => capture::TrackerChoice::Auto,
                },
            };
            let s = capture::capture(pid, &opts)
                .with_context(|| format!("capture of process {pid} failed"))?;
            writeln!(
                out,
                "captured process {pid} to {}: {} file ({} of memory, {} mappings), {} threads, stopped {:.1} ms ({}), total {:.1} ms",
                s.path.display(),
                human_bytes(s.file_bytes),
                human_bytes(s.memory_bytes),
                s.mappings,
                s.threads,
                s.stopped.as_secs_f64() * 1e3,
                s.method,
                s.total.as_secs_f64() * 1e3,
            )?;
        }
        Command::HeapDump {
            pid,
            output,
            max_size,
            timeout,
        } => {
            let opts = leakhunt_analyzer::jvm::attach::DumpOptions {
                output,
                max_bytes: max_size,
                timeout: std::time::Duration::from_secs(timeout),
            };
            let d = leakhunt_analyzer::jvm::attach::heap_dump(pid, &opts)
                .with_context(|| format!("heap dump of JVM {pid} failed"))?;
            writeln!(
                out,
                "heap dump of JVM {pid} in {}: {} file ({} HPROF), JVM paused at most {:.1} ms, total {:.1} ms",
                d.path.display(),
                human_bytes(d.file_bytes),
                human_bytes(d.hprof_bytes),
                d.pause.as_secs_f64() * 1e3,
                d.total.as_secs_f64() * 1e3,
            )?;
        }
        Command::JvmStats { pid, format } => {
            if !leakhunt_analyzer::jvm::perf::is_jvm(pid) {
                anyhow::bail!("process {pid} is not a HotSpot JVM (no libjvm.so mapped)");
            }
            let Some(s) = leakhunt_analyzer::jvm::attach::stats(pid) else {
                anyhow::bail!("JVM {pid} keeps no performance counters (-XX:-UsePerfData or -XX:+PerfDisableSharedMem)");
            };
            match format {
                Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(&s)?)?,
                Format::Text => s.write_text(&mut out)?,
            }
        }
        Command::Analyze {
            snapshot,
            pid,
            format,
            sysroot,
            top,
            limits,
        } => {
            let _stats = limits.apply();
            let a = match (snapshot, pid) {
                (_, Some(pid)) => {
                    analysis::analyze_image(&LiveProcess::open(pid)?, sysroot.as_deref())?
                }
                (Some(path), None) => {
                    if let Some(j) = analysis::analyze_hprof_path(&path)? {
                        match format {
                            Format::Text => j.jvm.write_text(top, &mut out)?,
                            Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(&j)?)?,
                        }
                        out.flush()?;
                        return Ok(());
                    }
                    analysis::analyze_path(&path, sysroot.as_deref())?
                }
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
            limits,
        } => {
            let _stats = limits.apply();
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
