//! A heap dump of a running HotSpot JVM through its dynamic attach mechanism, as `jmap -dump:live`
//! takes one, from outside the JVM's namespaces and with no JDK tool in its image:
//!
//! 1. the trigger file `.attach_pid<nspid>` in its working directory (or its `/tmp`), then
//!    SIGQUIT: the JVM's signal thread sees the file and opens `/tmp/.java_pid<nspid>`;
//! 2. the request `1\0dumpheap\0PATH\0-all\01\0` on that socket; the JVM stops at a safepoint,
//!    writes PATH itself (gzip level 1 where it can, HotSpot 15+) and answers with a status line.
//!    `-all`, not `-live`: the collection `-live` runs first promotes the young generation into
//!    pages of the old one never touched before, which a JVM near its limit does not have (our
//!    test's was OOM-killed by it at 91 %); the analyzer leaves out what is unreachable instead;
//! 3. the file, written into a private directory of ours under the JVM's `/tmp` (reached through
//!    `/proc/PID/root`), is copied (or zstd-compressed) to the output (0600) and removed at once
//!    with its directory.
//!
//! The page cache of a file is charged to the memory cgroup of the process that writes it: a dump
//! written by a JVM near its limit would push it over (a 200 MiB dump at 91 % of a 384 MiB limit
//! did, in our test). So the JVM compresses what it writes, and while it writes a thread of ours
//! flushes the file and drops its pages from the cache, keeping what is charged to the JVM small.
//!
//! Refused before anything is sent when the JVM would not survive or answer it: attach disabled,
//! `-Xrs` or no SIGQUIT handler (SIGQUIT would kill it), a memory-backed `/tmp` (the dump would be
//! charged to the JVM's own memory limit), or too little disk. HotSpot accepts a peer of its own
//! effective uid and gid, or root.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::perf::{self, JvmStats};
use crate::util::human_bytes;

/// How long the JVM may take to open its socket after SIGQUIT.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);
/// Room left on the dump's filesystem beyond the dump's estimated size.
const DISK_MARGIN: u64 = 64 << 20;
/// An HPROF file is at most about this many times the heap it dumps (8-byte ids, record headers).
const HPROF_PER_HEAP_BYTE: u64 = 2;
/// The JVM's answer is a status line and a sentence; more is not read.
const MAX_ANSWER: u64 = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("process {pid} is not a HotSpot JVM (no libjvm.so mapped)")]
    NotJvm { pid: i32 },
    #[error("JVM {pid} refuses a heap dump: {why}")]
    Refused { pid: i32, why: String },
    #[error("JVM {pid}: no disk for its heap dump: {why}")]
    NoDisk { pid: i32, why: String },
    #[error("JVM {pid} did not open its attach socket within {}s of SIGQUIT (attach disabled, or a JVM that does not support it; it may have printed a thread dump to its output instead)", ATTACH_TIMEOUT.as_secs())]
    Timeout { pid: i32 },
    #[error("JVM {pid} answered the heap dump request with: {answer}")]
    Command { pid: i32, answer: String },
    #[error("JVM {pid} exited during its heap dump")]
    Exited { pid: i32 },
    #[error("the heap dump of JVM {pid} is {}, more than the limit of {}", human_bytes(*size), human_bytes(*limit))]
    TooLarge { pid: i32, size: u64, limit: u64 },
    #[error("JVM {pid}: {what}: {source}")]
    Io {
        pid: i32,
        what: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to take the dump.
#[derive(Debug, Clone)]
pub struct DumpOptions {
    /// The zstd-compressed dump goes here (mode 0600, written under a temporary name first).
    pub output: PathBuf,
    /// Refuse a dump larger than this (checked on the estimate before, and on the file after).
    pub max_bytes: Option<u64>,
    /// How long the JVM may take to write it.
    pub timeout: Duration,
}

/// What a dump took and wrote.
#[derive(Debug, Clone)]
pub struct HeapDump {
    pub path: PathBuf,
    /// The compressed file's size.
    pub file_bytes: u64,
    /// The HPROF's size, uncompressed.
    pub hprof_bytes: u64,
    /// From the request to the JVM's answer: the collection and the dump at a safepoint, an
    /// upper bound of the time the JVM's threads were stopped.
    pub pause: Duration,
    pub total: Duration,
    /// The JVM's counters just before the dump, where it keeps them.
    pub stats: Option<JvmStats>,
}

/// The JVM's counters, where it keeps them (`None` with `-XX:-UsePerfData`).
pub fn stats(pid: i32) -> Option<JvmStats> {
    let path = perf::find(pid)?;
    perf::PerfData::read(&path).ok().map(|p| p.stats())
}

/// The bytes a heap dump of `pid` may take before compression: twice the heap in use, from its
/// counters, or its resident memory when it keeps none.
pub fn estimate_size(pid: i32) -> Option<u64> {
    stats(pid)
        .and_then(|s| s.heap_used)
        .or_else(|| crate::image::process_info(pid).ok().and_then(|i| i.rss))
        .map(|b| b.saturating_mul(HPROF_PER_HEAP_BYTE))
}

/// Take a heap dump of JVM `pid` (a PID of this namespace) into `opts.output`.
pub fn heap_dump(pid: i32, opts: &DumpOptions) -> Result<HeapDump> {
    let t0 = Instant::now();
    if !perf::is_jvm(pid) {
        return Err(Error::NotJvm { pid });
    }
    let stats = stats(pid);
    let refuse = |why: &str| Error::Refused {
        pid,
        why: why.into(),
    };
    if let Some(s) = &stats {
        if s.has_flag("DisableAttachMechanism") {
            return Err(refuse("it was started with -XX:+DisableAttachMechanism"));
        }
        if s.has_flag("-Xrs") {
            return Err(refuse(
                "it was started with -Xrs, so SIGQUIT would end it instead of opening its attach socket",
            ));
        }
    }
    let ns_pid = crate::procfs::ns_pid(pid).unwrap_or(pid);
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let tmp = root.join("tmp");
    let io = |what: &str| {
        let what = what.to_owned();
        move |source| Error::Io { pid, what, source }
    };
    let estimate = stats
        .as_ref()
        .and_then(|s| s.heap_used)
        .map(|b| b.saturating_mul(HPROF_PER_HEAP_BYTE));
    if let (Some(e), Some(limit)) = (estimate, opts.max_bytes) {
        if e > limit {
            return Err(Error::TooLarge {
                pid,
                size: e,
                limit,
            });
        }
    }
    check_disk(pid, &tmp, estimate.unwrap_or(0))?;

    let socket = tmp.join(format!(".java_pid{ns_pid}"));
    if !is_socket(&socket) {
        trigger(pid, ns_pid, &root, &socket)?;
    }
    let dir = PrivateDir::create(pid, &tmp)?;
    let inside = Path::new("/tmp").join(dir.name()).join("heap.hprof");
    let dumped = dir.path.join("heap.hprof");

    let t_req = Instant::now();
    let drainer = Drainer::start(dumped.clone());
    let mut s = UnixStream::connect(&socket).map_err(io("connecting to its attach socket"))?;
    s.set_read_timeout(Some(opts.timeout))
        .map_err(io("setting the socket's timeout"))?;
    let mut req = b"1\0dumpheap\0".to_vec();
    req.extend_from_slice(inside.as_os_str().as_encoded_bytes());
    // Three arguments: the path, `-all`, gzip level 1.
    req.extend_from_slice(b"\0-all\0");
    req.extend_from_slice(b"1\0");
    s.write_all(&req).map_err(io("sending the dump request"))?;
    let mut answer = Vec::new();
    s.take(MAX_ANSWER)
        .read_to_end(&mut answer)
        .map_err(io("reading the JVM's answer"))?;
    let pause = t_req.elapsed();
    drainer.stop();
    let answer = String::from_utf8_lossy(&answer).trim().to_owned();
    // Its maps are unreadable once it has gone.
    if !perf::is_jvm(pid) {
        return Err(Error::Exited { pid });
    }
    let code = answer.lines().next().unwrap_or("").trim();
    let written = std::fs::metadata(&dumped).map(|m| m.len()).unwrap_or(0);
    if code != "0" || written == 0 {
        let text: String = answer.chars().take(400).collect();
        return Err(Error::Command {
            pid,
            answer: if text.is_empty() {
                "nothing (the connection closed)".into()
            } else {
                text.replace('\n', " ")
            },
        });
    }
    if let Some(limit) = opts.max_bytes.filter(|&l| written > l) {
        return Err(Error::TooLarge {
            pid,
            size: written,
            limit,
        });
    }
    let (file_bytes, hprof_bytes) = compress(pid, &dumped, &opts.output)?;
    drop(dir);
    Ok(HeapDump {
        path: opts.output.clone(),
        file_bytes,
        hprof_bytes,
        pause,
        total: t0.elapsed(),
        stats,
    })
}

/// Flushes the dump being written and drops its pages from the page cache, every few tens of
/// milliseconds until stopped: the cache a writer dirties is charged to the writer's cgroup.
struct Drainer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drainer {
    fn start(path: PathBuf) -> Drainer {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut file: Option<std::fs::File> = None;
            loop {
                let last = flag.load(Ordering::Acquire);
                if file.is_none() {
                    file = std::fs::File::open(&path).ok();
                }
                if let Some(f) = &file {
                    drop_cached(f);
                }
                if last {
                    break;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        });
        Drainer {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Drainer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
    }
}

/// Write back `f`'s dirty pages and drop its clean ones from the page cache.
fn drop_cached(f: &std::fs::File) {
    use std::os::fd::AsRawFd;
    let _ = f.sync_data();
    let _ = nix::fcntl::posix_fadvise(
        f.as_raw_fd(),
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    );
}

fn is_socket(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.file_type().is_socket())
}

/// The dump is written by the JVM where it runs: never on a memory-backed filesystem (charged to
/// the JVM's cgroup, the very limit it is near), and only with room for it.
fn check_disk(pid: i32, tmp: &Path, estimate: u64) -> Result<()> {
    use nix::sys::statfs::{statfs, TMPFS_MAGIC};
    // linux/magic.h; nix names no ramfs.
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    let no = |why: String| Error::NoDisk { pid, why };
    let fs = statfs(tmp).map_err(|e| no(format!("{}: {e}", tmp.display())))?;
    let t = fs.filesystem_type();
    if t == TMPFS_MAGIC || t.0 as i64 == RAMFS_MAGIC {
        return Err(no(
            "its /tmp is memory-backed (tmpfs): the dump would be charged to its own memory limit"
                .into(),
        ));
    }
    let vfs = nix::sys::statvfs::statvfs(tmp).map_err(|e| no(format!("{}: {e}", tmp.display())))?;
    let free = (vfs.blocks_available() as u64).saturating_mul(vfs.fragment_size() as u64);
    if estimate.saturating_add(DISK_MARGIN) > free {
        return Err(no(format!(
            "its /tmp has {} free, the dump needs about {} and {} to spare",
            human_bytes(free),
            human_bytes(estimate),
            human_bytes(DISK_MARGIN)
        )));
    }
    Ok(())
}

/// Ask the JVM to open its attach socket: the trigger file, SIGQUIT, a wait for the socket.
fn trigger(pid: i32, ns_pid: i32, root: &Path, socket: &Path) -> Result<()> {
    use nix::sys::signal::{kill, Signal};
    // SIGQUIT's default action ends the process: only a JVM that handles it is sent one.
    if !handles_sigquit(pid) {
        return Err(Error::Refused {
            pid,
            why: "it does not handle SIGQUIT (-Xrs?), which would end it".into(),
        });
    }
    let name = format!(".attach_pid{ns_pid}");
    let cwd = PathBuf::from(format!("/proc/{pid}/cwd")).join(&name);
    let file = [cwd, root.join("tmp").join(&name)]
        .into_iter()
        .find(|p| {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(p)
                .is_ok()
        })
        .ok_or_else(|| Error::Refused {
            pid,
            why: "its working directory and /tmp both refuse the attach trigger file".into(),
        })?;
    struct Remove(PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _remove = Remove(file);
    kill(nix::unistd::Pid::from_raw(pid), Signal::SIGQUIT).map_err(|e| Error::Io {
        pid,
        what: "sending SIGQUIT".into(),
        source: e.into(),
    })?;
    let t0 = Instant::now();
    let mut wait = Duration::from_millis(10);
    while t0.elapsed() < ATTACH_TIMEOUT {
        if is_socket(socket) {
            return Ok(());
        }
        if crate::image::process_info(pid).is_err() {
            return Err(Error::Exited { pid });
        }
        std::thread::sleep(wait);
        wait = (wait * 2).min(Duration::from_millis(200));
    }
    Err(Error::Timeout { pid })
}

/// Bit 3 (SIGQUIT) of `SigCgt` in its status: a handler is installed.
fn handles_sigquit(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let hex = s
                .lines()
                .find_map(|l| l.strip_prefix("SigCgt:"))?
                .trim()
                .to_owned();
            u64::from_str_radix(&hex, 16).ok()
        })
        .is_some_and(|mask| mask & (1 << (nix::libc::SIGQUIT - 1)) != 0)
}

/// A directory of ours under the JVM's `/tmp`, owned by the JVM's user so that it can write the
/// dump there and nobody else can read it; removed with whatever it holds when dropped.
struct PrivateDir {
    path: PathBuf,
}

impl PrivateDir {
    fn create(pid: i32, tmp: &Path) -> Result<PrivateDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = tmp.join(format!(".leakhunt-{}-{nanos:08x}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|source| Error::Io {
                pid,
                what: format!("creating {}", path.display()),
                source,
            })?;
        let dir = PrivateDir { path };
        let (uid, gid) = owner(pid);
        let chowned = std::os::unix::fs::chown(&dir.path, uid, gid);
        if chowned.is_err() {
            // Without CAP_CHOWN: writable by all, listable by none, its name unguessed.
            std::fs::set_permissions(&dir.path, std::fs::Permissions::from_mode(0o733)).map_err(
                |source| Error::Io {
                    pid,
                    what: format!("opening {} to the JVM", dir.path.display()),
                    source,
                },
            )?;
        }
        Ok(dir)
    }

    fn name(&self) -> &std::ffi::OsStr {
        self.path.file_name().unwrap_or_default()
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The effective uid and gid of `pid` (the second of `Uid:` and `Gid:` in its status).
fn owner(pid: i32) -> (Option<u32>, Option<u32>) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    (field("Uid:"), field("Gid:"))
}

/// zstd-compress `src` (plain HPROF, or gzip as HotSpot 15+ writes it) into `out` through a 0600
/// temporary file renamed when complete; returns the file's size and the HPROF's.
fn compress(pid: i32, src: &Path, out: &Path) -> Result<(u64, u64)> {
    let io = |what: String| move |source| Error::Io { pid, what, source };
    let dir = out
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut input = std::fs::File::open(src).map_err(io(format!("opening {}", src.display())))?;
    let tmp = tempfile::Builder::new()
        .prefix(".leakhunt-dump-")
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(io(format!("creating a file in {}", dir.display())))?;
    let mut magic = [0u8; 2];
    let gzip = input.read_exact(&mut magic).is_ok() && magic == super::GZIP_MAGIC;
    std::io::Seek::rewind(&mut input).map_err(io(format!("reading {}", src.display())))?;
    let mut reader: Box<dyn Read> = if gzip {
        Box::new(flate2::read::MultiGzDecoder::new(&input))
    } else {
        Box::new(&input)
    };
    let mut enc =
        zstd::stream::write::Encoder::new(tmp.as_file(), 3).map_err(io("starting zstd".into()))?;
    let hprof_bytes =
        std::io::copy(&mut reader, &mut enc).map_err(io(format!("writing {}", out.display())))?;
    enc.finish()
        .map_err(io(format!("writing {}", out.display())))?;
    drop(reader);
    drop_cached(&input);
    let file_bytes = tmp.as_file().metadata().map(|m| m.len()).unwrap_or(0);
    tmp.persist_noclobber(out)
        .map_err(|e| io(format!("renaming into {}", out.display()))(e.error))?;
    Ok((file_bytes, hprof_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_that_is_no_jvm_is_never_signalled() {
        let me = std::process::id() as i32;
        let opts = DumpOptions {
            output: std::env::temp_dir().join("leakhunt-never-written.hprof.zst"),
            max_bytes: None,
            timeout: Duration::from_secs(1),
        };
        assert!(matches!(heap_dump(me, &opts), Err(Error::NotJvm { .. })));
        assert!(!opts.output.exists());
    }
}
