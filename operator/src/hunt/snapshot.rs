//! The hunt's only door to the analyzer: capture a snapshot, estimate its size, diff a pair,
//! print findings. Behind a trait so the hunt loop is tested with real cgroups and a recording
//! stand-in, and the analyzer's capture and diff are called in exactly one place.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

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
        // Until the analyzer's capture lands: the writable mappings, which dominate a core.
        let maps =
            std::fs::read_to_string(format!("/proc/{pid}/maps")).map_err(|e| Error::Estimate {
                pid,
                message: e.to_string(),
            })?;
        Ok(maps
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let (start, end) = f.next()?.split_once('-')?;
                let writable = f.next()?.contains('w');
                let len = u64::from_str_radix(end, 16)
                    .ok()?
                    .checked_sub(u64::from_str_radix(start, 16).ok()?)?;
                writable.then_some(len)
            })
            .sum())
    }

    fn capture(&self, pid: i32, _output: &Path, _max_bytes: u64) -> Result<Captured> {
        Err(Error::Capture {
            pid,
            message: "this build has no capture (leakhunt_analyzer::capture is not merged yet)"
                .into(),
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
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
