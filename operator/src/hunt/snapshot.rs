//! The hunt's only door to the analyzer: capture a snapshot, estimate its size, diff a pair,
//! print findings. Behind a trait so the hunt loop is tested with real cgroups and a recording
//! stand-in, and the analyzer's capture and diff are called in exactly one place.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use leakhunt_analyzer::capture;
use leakhunt_analyzer::findings::Findings;

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    pub path: PathBuf,
    pub file_bytes: u64,
    pub memory_bytes: u64,
    /// How long the target was stopped.
    pub stopped: Duration,
    pub total: Duration,
}

pub trait Snapshotter {
    /// Upper bound of the snapshot file's size, before compression.
    fn estimate_size(&self, pid: i32) -> Result<u64>;
    /// Writes a snapshot of `pid` to `output`; on error no file is left behind.
    fn capture(&self, pid: i32, output: &Path, max_bytes: u64) -> Result<Captured>;
    /// Findings between two snapshots of one process.
    fn diff(&self, before: &Path, after: &Path) -> Result<Findings>;
    /// The findings as a terminal report.
    fn write_text(&self, findings: &Findings, out: &mut dyn Write) -> io::Result<()>;
}

/// The real analyzer (`leakhunt-analyzer`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Analyzer;

impl Snapshotter for Analyzer {
    fn estimate_size(&self, pid: i32) -> Result<u64> {
        capture::estimate_size(pid).map_err(|e| Error::Estimate {
            pid,
            message: error_chain(&e),
        })
    }

    fn capture(&self, pid: i32, output: &Path, max_bytes: u64) -> Result<Captured> {
        let opts = capture::CaptureOptions {
            output: output.to_path_buf(),
            // Snapshots are compressed on disk (DESIGN: security model); the analyzer reads them back.
            compress: true,
            overwrite: false,
            max_bytes: Some(max_bytes),
        };
        let s = capture::capture(pid, &opts).map_err(|e| Error::Capture {
            pid,
            message: error_chain(&e),
        })?;
        Ok(Captured {
            path: s.path,
            file_bytes: s.file_bytes,
            memory_bytes: s.memory_bytes,
            stopped: s.stopped,
            total: s.total,
        })
    }

    fn diff(&self, before: &Path, after: &Path) -> Result<Findings> {
        leakhunt_analyzer::analysis::diff_paths(before, after, None).map_err(|e| Error::Diff {
            before: before.to_path_buf(),
            after: after.to_path_buf(),
            message: error_chain(&e),
        })
    }

    fn write_text(&self, findings: &Findings, out: &mut dyn Write) -> io::Result<()> {
        leakhunt_analyzer::report::write_text(findings, out)
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
