//! The one door to capture and analysis, for the local hunt, the node agent and the analyzer
//! Job: the snapshot directory (0700), the checks before a capture (size cap, one free-disk
//! margin), the capture, its digest, and the diff of a pair. Behind a trait so the hunt loop is
//! tested with real cgroups and a recording stand-in, and the analyzer's capture and diff are
//! called in exactly one place.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use leakhunt_analyzer::capture;
use leakhunt_analyzer::findings::Findings;
use leakhunt_analyzer::jvm::{self, attach};
use leakhunt_analyzer::util::human_bytes;

mod files;
pub use files::{free_bytes, prepare_dir, sha256_file};

/// Room a capture must leave on the snapshot filesystem: filling the disk of a node that is
/// already short of memory would make things worse.
pub const FREE_MARGIN: u64 = 256 << 20;

/// How long a JVM may take to collect and write its heap dump.
const HEAP_DUMP_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot estimate the snapshot size of pid {pid}: {message}")]
    Estimate { pid: i32, message: String },
    #[error("capture of pid {pid} failed: {message}")]
    Capture { pid: i32, message: String },
    #[error("analysis of {before} and {after} failed: {message}")]
    Diff {
        before: PathBuf,
        after: PathBuf,
        message: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A snapshot file as written.
#[derive(Debug, Clone, PartialEq)]
pub struct Captured {
    pub path: PathBuf,
    pub file_bytes: u64,
    pub memory_bytes: u64,
    /// How long the target was stopped (for a JVM's heap dump: until it answered).
    pub stopped: Duration,
    pub total: Duration,
    /// What was taken when it is not a core, or why not what was meant: one line for the report.
    pub note: Option<String>,
    /// A JVM's pools when it was taken, from its performance counters.
    pub jvm: Option<jvm::perf::JvmStats>,
}

pub trait Snapshotter {
    /// Upper bound of the snapshot file's size, before compression.
    fn estimate_size(&self, pid: i32) -> Result<u64>;
    /// Writes a snapshot of `pid` to `output`; on error no file is left behind.
    fn capture(&self, pid: i32, output: &Path, max_bytes: u64) -> Result<Captured>;
    /// Findings between two snapshots of one process.
    fn diff(&self, before: &Path, after: &Path) -> Result<Findings>;
    /// The same, where an allocation tracer started after A used `tracer_bytes` of native
    /// memory at B (left out of the native growth).
    fn diff_traced(&self, before: &Path, after: &Path, tracer_bytes: u64) -> Result<Findings> {
        let _ = tracer_bytes;
        self.diff(before, after)
    }
    /// The findings as a terminal report.
    fn write_text(&self, findings: &Findings, out: &mut dyn Write) -> io::Result<()>;
}

/// The real analyzer (`leakhunt-analyzer`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Analyzer;

impl Snapshotter for Analyzer {
    fn estimate_size(&self, pid: i32) -> Result<u64> {
        if jvm::perf::is_jvm(pid) {
            if let Some(bytes) = attach::estimate_size(pid) {
                return Ok(bytes);
            }
        }
        capture::estimate_size(pid).map_err(|e| Error::Estimate {
            pid,
            message: error_chain(&e),
        })
    }

    fn capture(&self, pid: i32, output: &Path, max_bytes: u64) -> Result<Captured> {
        // A JVM's heap is named from a heap dump; a core is what is left when it refuses one.
        let mut note = None;
        if jvm::perf::is_jvm(pid) {
            let opts = attach::DumpOptions {
                output: output.to_path_buf(),
                max_bytes: Some(max_bytes),
                timeout: HEAP_DUMP_TIMEOUT,
            };
            match attach::heap_dump(pid, &opts) {
                Ok(d) => {
                    return Ok(Captured {
                        path: d.path,
                        file_bytes: d.file_bytes,
                        memory_bytes: d.hprof_bytes,
                        stopped: d.pause,
                        total: d.total,
                        note: Some(format!(
                            "a Java heap dump through HotSpot's attach mechanism, {} of HPROF",
                            human_bytes(d.hprof_bytes)
                        )),
                        jvm: d.stats,
                    })
                }
                Err(e @ attach::Error::Exited { .. }) => {
                    return Err(Error::Capture {
                        pid,
                        message: e.to_string(),
                    })
                }
                Err(e) => {
                    note = Some(format!(
                        "{e}: a core was taken instead, which names no Java object"
                    ))
                }
            }
        }
        let opts = capture::CaptureOptions {
            output: output.to_path_buf(),
            // Snapshots are compressed on disk (docs/design.md: security model); the analyzer reads them back.
            compress: true,
            overwrite: false,
            max_bytes: Some(max_bytes),
            ..Default::default()
        };
        let s = capture::capture(pid, &opts).map_err(|e| Error::Capture {
            pid,
            message: error_chain(&e),
        })?;
        // How the memory was copied goes with the snapshot: "pre-copied 1.0 GiB, 9.3 MiB dirty".
        let method = s.method.to_string();
        Ok(Captured {
            path: s.path,
            file_bytes: s.file_bytes,
            memory_bytes: s.memory_bytes,
            stopped: s.stopped,
            total: s.total,
            note: Some(match note {
                Some(n) => format!("{n}; {method}"),
                None => method,
            }),
            jvm: None,
        })
    }

    fn diff(&self, before: &Path, after: &Path) -> Result<Findings> {
        self.diff_traced(before, after, 0)
    }

    fn diff_traced(&self, before: &Path, after: &Path, tracer_bytes: u64) -> Result<Findings> {
        leakhunt_analyzer::analysis::diff_paths_traced(before, after, None, tracer_bytes).map_err(
            |e| Error::Diff {
                before: before.to_path_buf(),
                after: after.to_path_buf(),
                message: error_chain(&e),
            },
        )
    }

    fn write_text(&self, findings: &Findings, out: &mut dyn Write) -> io::Result<()> {
        leakhunt_analyzer::report::write_text(findings, out)
    }
}

/// The size cap a capture is held to, and the name the user set it by (`--max-snapshot-size`,
/// `maxSnapshotSize`), so that a refusal names the knob.
#[derive(Debug, Clone, Copy)]
pub struct Cap {
    pub bytes: u64,
    pub name: &'static str,
}

/// Why a capture was not attempted.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("{0}")]
    Estimate(Error),
    #[error("snapshot directory {}: {source}", dir.display())]
    Directory { dir: PathBuf, source: io::Error },
    #[error("estimated size {} exceeds {} {}", human_bytes(*estimate), cap.name, human_bytes(cap.bytes))]
    TooLarge { estimate: u64, cap: Cap },
    #[error("estimated size {} does not fit the {} free in {} (a {} margin is kept)", human_bytes(*estimate), human_bytes(*free), dir.display(), human_bytes(FREE_MARGIN))]
    NoRoom {
        estimate: u64,
        free: u64,
        dir: PathBuf,
    },
}

impl Refused {
    /// A refusal by policy (size cap, disk room) rather than a fault.
    pub fn is_skip(&self) -> bool {
        matches!(self, Refused::TooLarge { .. } | Refused::NoRoom { .. })
    }
}

/// The checks before a capture of `pid` into `dir`: the directory is ours and closed, the
/// estimated size is within the cap and fits the free disk with [`FREE_MARGIN`] to spare.
/// Returns the estimate.
pub fn preflight(snap: &dyn Snapshotter, pid: i32, dir: &Path, cap: Cap) -> Result<u64, Refused> {
    let estimate = snap.estimate_size(pid).map_err(Refused::Estimate)?;
    if estimate > cap.bytes {
        return Err(Refused::TooLarge { estimate, cap });
    }
    prepare_dir(dir).map_err(|source| Refused::Directory {
        dir: dir.to_path_buf(),
        source,
    })?;
    // zstd usually shrinks a heap several times, but the raw size is the worst case.
    match free_bytes(dir) {
        Some(free) if estimate.saturating_add(FREE_MARGIN) > free => Err(Refused::NoRoom {
            estimate,
            free,
            dir: dir.to_path_buf(),
        }),
        _ => Ok(estimate),
    }
}

/// An error and its causes on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
