//! Memory images: one trait that both core files and live processes implement, so every walker
//! (generic census, CPython heap) is written once.

mod core;
mod files;
mod live;

pub use self::core::CoreFile;
pub(crate) use self::core::{decompress_to_temp, decompress_to_temp_with, read_up_to, ZSTD_MAGIC};
pub(crate) use self::files::{build_id_from_header_page, open_regular};
pub use self::live::{parse_maps, process_info, read_maps, LiveProcess};

use std::fmt;
use std::path::{Path, PathBuf};

/// Errors from opening or reading a memory image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not an ELF core file ({reason}); pass a core written by `leakhunt-analyzer capture`, gcore or the kernel")]
    NotACore { path: PathBuf, reason: String },
    #[error("{path} is truncated: {detail}; the capture was probably interrupted — capture again")]
    Truncated { path: PathBuf, detail: String },
    #[error("{path} is malformed: {detail}")]
    Malformed { path: PathBuf, detail: String },
    #[error("cannot decompress {path}: {source}")]
    Decompress {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("process {pid} does not exist; check the PID (is it in another PID namespace?)")]
    NoSuchProcess { pid: i32 },
    #[error("no permission to read the memory of process {pid}; run as root or with CAP_SYS_PTRACE (kernel.yama.ptrace_scope may also forbid it)")]
    Permission { pid: i32 },
    #[error("process {pid}: {what}: {source}")]
    Process {
        pid: i32,
        what: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why bytes at an address could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// No mapping covers the address.
    #[error("address {0:#x} is not mapped")]
    Unmapped(u64),
    /// The address is mapped, but its contents are not in the image (not dumped, file missing).
    #[error("address {0:#x} is mapped but its contents are not in the image")]
    Missing(u64),
}

/// Permissions of a mapping, as in `/proc/PID/maps`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Perms {
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    /// Private (copy-on-write) rather than shared.
    pub private: bool,
}

impl Perms {
    pub fn parse(s: &str) -> Perms {
        let b = s.as_bytes();
        Perms {
            read: b.first() == Some(&b'r'),
            write: b.get(1) == Some(&b'w'),
            exec: b.get(2) == Some(&b'x'),
            private: b.get(3) != Some(&b's'),
        }
    }

    /// ELF program-header flags (PF_X = 1, PF_W = 2, PF_R = 4).
    pub fn from_elf_flags(flags: u32) -> Perms {
        Perms {
            read: flags & 4 != 0,
            write: flags & 2 != 0,
            exec: flags & 1 != 0,
            private: true,
        }
    }

    pub fn elf_flags(self) -> u32 {
        (self.read as u32) << 2 | (self.write as u32) << 1 | self.exec as u32
    }
}

impl fmt::Display for Perms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = |b: bool, ch: char| if b { ch } else { '-' };
        write!(
            f,
            "{}{}{}{}",
            c(self.read, 'r'),
            c(self.write, 'w'),
            c(self.exec, 'x'),
            if self.private { 'p' } else { 's' }
        )
    }
}

/// One virtual memory area of the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub perms: Perms,
    /// Offset into the backing file (bytes).
    pub offset: u64,
    /// Backing file, or a pseudo-name such as `[heap]`, `[stack]`; `None` for anonymous memory.
    pub path: Option<String>,
}

impl Mapping {
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }

    /// Backed by a real file (not anonymous, not `[heap]`-style pseudo names).
    pub fn is_file_backed(&self) -> bool {
        self.path.as_deref().is_some_and(|p| {
            p.starts_with('/') && !p.starts_with("/dev/") && !p.starts_with("/memfd:")
        })
    }

    pub fn is_heap(&self) -> bool {
        self.path.as_deref() == Some("[heap]")
    }

    pub fn is_anonymous(&self) -> bool {
        self.path.is_none()
    }

    pub fn is_stack(&self) -> bool {
        self.path
            .as_deref()
            .is_some_and(|p| p.starts_with("[stack"))
    }
}

/// What is known about the process an image came from.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessInfo {
    pub pid: i32,
    /// Executable path (from NT_FILE / `/proc/PID/exe`).
    pub exe: Option<String>,
    /// Command name (NT_PRPSINFO `pr_fname`, `/proc/PID/comm`).
    pub comm: Option<String>,
    /// Seconds since the Unix epoch when the image was taken, where known.
    pub captured_at: Option<f64>,
    /// Resident set size in bytes at capture time, where known.
    pub rss: Option<u64>,
    /// Process start time in clock ticks since boot (`/proc/PID/stat` field 22), where known:
    /// together with the PID it identifies one process across snapshots.
    pub start_time: Option<u64>,
    /// Number of threads.
    pub threads: usize,
}

/// A read-only view of a process's address space.
pub trait MemoryImage: Send + Sync {
    /// Mappings in ascending address order, non-overlapping.
    fn mappings(&self) -> &[Mapping];

    /// Fill `buf` from `addr`. Fails unless every byte is available.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError>;

    /// Borrow `len` bytes at `addr` without copying, when the image keeps them in memory
    /// (core files are memory-mapped). `None` when not available this way; use [`read`] then.
    ///
    /// [`read`]: MemoryImage::read
    fn slice(&self, _addr: u64, _len: usize) -> Option<&[u8]> {
        None
    }

    fn info(&self) -> &ProcessInfo;

    /// Hint that `len` bytes at `addr` will not be read again soon, so a streaming scan of a
    /// memory-mapped core does not keep the whole core resident.
    fn release(&self, _addr: u64, _len: usize) {}

    /// The parts of mapping `m` whose bytes the image holds, as `[start, end)` ranges. Scans
    /// iterate these rather than the mapping's nominal size, which a malformed core may inflate.
    fn stored_ranges(&self, m: &Mapping) -> Vec<(u64, u64)> {
        vec![(m.start, m.end)]
    }

    /// Human-readable notes about the image (missing pages, substituted files, ...).
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }

    fn read_u64(&self, addr: u64) -> Result<u64, ReadError> {
        if let Some(s) = self.slice(addr, 8) {
            let mut b = [0u8; 8];
            b.copy_from_slice(s);
            return Ok(u64::from_le_bytes(b));
        }
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn read_u32(&self, addr: u64) -> Result<u32, ReadError> {
        let mut b = [0u8; 4];
        self.read(addr, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// A NUL-terminated string of at most `max` bytes (lossy UTF-8). Errors when no NUL is found.
    fn read_cstr(&self, addr: u64, max: usize) -> Result<String, ReadError> {
        let mut out = Vec::new();
        let mut chunk = [0u8; 64];
        let mut at = addr;
        while out.len() < max {
            // Read up to the next 64-byte boundary so a string near the end of a mapping still reads.
            let n = (64 - (at % 64) as usize).min(max - out.len());
            self.read(at, &mut chunk[..n])?;
            if let Some(z) = chunk[..n].iter().position(|&c| c == 0) {
                out.extend_from_slice(&chunk[..z]);
                return Ok(String::from_utf8_lossy(&out).into_owned());
            }
            out.extend_from_slice(&chunk[..n]);
            at = at.wrapping_add(n as u64);
        }
        Err(ReadError::Missing(addr))
    }

    /// The mapping containing `addr`.
    fn mapping_at(&self, addr: u64) -> Option<&Mapping> {
        let maps = self.mappings();
        let i = maps.partition_point(|m| m.end <= addr);
        maps.get(i).filter(|m| m.contains(addr))
    }
}

/// Open a snapshot: an ELF core file (optionally `.zst`-compressed). File-backed pages missing from
/// the core are read from the files it names, below `sysroot` when given.
pub fn open_snapshot(path: &Path, sysroot: Option<&Path>) -> Result<CoreFile> {
    CoreFile::open(path, sysroot)
}
