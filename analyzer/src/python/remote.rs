//! Where the leaking objects were allocated: leakhunt's own fixed scripts run inside a live
//! CPython 3.14+ through its remote-execution hook (PEP 768, what `sys.remote_exec` uses).
//!
//! At snapshot A, [`start_tracing`] starts `tracemalloc`; after the pair is analysed,
//! [`allocation_sites`] groups the items of the suspect container (found by its address, which
//! CPython objects keep) by the traceback `tracemalloc` recorded for each, then stops tracing;
//! [`stop_tracing`] stops it when there is nothing to ask. This runs code in the target, so it is
//! opt-in. The scripts are constants of this file, never user input: what varies (the output
//! path, an address, a frame count) is written into them by this code, as numbers or as a path
//! leakhunt chose. Their output holds file names, line numbers, function names, counts and
//! sizes — never an object's contents.
//!
//! The request, as CPython's own debugger support makes it: the script's path goes into the main
//! thread's `_PyRemoteDebuggerSupport` (offsets from `_Py_DebugOffsets.debugger_support`), its
//! `debugger_pending_call` is set, and `_PY_EVAL_PLEASE_STOP_BIT` in the thread's
//! `eval_breaker`; the thread runs the script at its next check, once it runs Python code. The
//! script lives in a directory of ours under the target's own `/tmp` (reached through
//! `/proc/PID/root`, so a container's process sees it; readable, not writable, by the target),
//! removed after. Its output goes to a memfd of the target's, taken with `pidfd_getfd`: nothing
//! is written to the target's disk, and the caller needs `CAP_SYS_PTRACE` only — no
//! `CAP_CHOWN` or `CAP_DAC_OVERRIDE` to share files with a target of another user.

use std::io::{IoSlice, IoSliceMut};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::uio::{process_vm_readv, process_vm_writev, RemoteIoVec};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::discover::{data_regions, find_debug_offsets};
use super::layout::Version;
use super::mem::{plausible, Mem};
use crate::image::{LiveProcess, MemoryImage};

/// `_PY_EVAL_PLEASE_STOP_BIT` (Include/internal/pycore_ceval.h, 3.14+).
const PLEASE_STOP_BIT: u64 = 1 << 5;
/// How long a script may take to start and finish: the main thread runs it at its next eval
/// breaker check, which a thread blocked in C (a read, a lock) reaches only when that returns.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
/// Frames `tracemalloc` keeps per allocation: the allocation site and its callers. Each frame
/// costs memory for every traced block's traceback (shared between identical ones).
pub const DEFAULT_FRAMES: u32 = 4;
/// Tracing started by leakhunt stops by itself after this long if leakhunt never stops it: a
/// slow leak's pair may be hours apart, a forgotten tracer must not run for days.
pub const TRACING_DEADLINE: Duration = Duration::from_secs(6 * 3600);

/// Why a script could not run. Each says what it means for the user in one line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("process {pid}: no CPython 3.14+ found in it (allocation sites need PEP 768 remote execution, CPython 3.14+)")]
    NotCPython { pid: i32 },
    #[error("CPython {version}: allocation sites need CPython 3.14+ (PEP 768 remote execution); the snapshots are analysed without them")]
    TooOld { version: String },
    #[error("CPython {version} was started with remote debugging disabled (-X disable_remote_debug or PYTHON_DISABLE_REMOTE_DEBUG): no allocation sites")]
    Disabled { version: String },
    #[error("CPython {version} free-threaded build: allocation sites are not supported for it")]
    FreeThreaded { version: String },
    #[error("CPython {version}: the debug offsets have no remote-debugger support fields leakhunt recognises")]
    UnknownLayout { version: String },
    #[error("process {pid}: {what}")]
    Process { pid: i32, what: String },
    #[error("process {pid} did not run leakhunt's script within {seconds} s (its main thread runs no Python code: blocked in C, or busy with another debugger's script)")]
    Timeout { pid: i32, seconds: u64 },
    #[error("process {pid} ran leakhunt's script but it failed: {message}")]
    Script { pid: i32, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A live CPython's main thread, ready to be asked to run a script.
#[derive(Debug, Clone)]
pub struct Remote {
    pid: i32,
    pub version: Version,
    /// `&tstate->eval_breaker`.
    eval_breaker: u64,
    /// `&tstate->remote_debugger_support.debugger_pending_call` (an int).
    pending: u64,
    /// `&tstate->remote_debugger_support.debugger_script_path` and its size.
    script_path: u64,
    script_path_size: u64,
}

/// The offsets of `_Py_DebugOffsets.debugger_support`: eval_breaker, remote_debugger_support,
/// remote_debugging_enabled, debugger_pending_call, debugger_script_path,
/// debugger_script_path_size. Found by the last, which is `sizeof` a 512-byte path buffer in
/// every release so far, with the others checked for what they can be.
fn debugger_support(words: &[u64]) -> Option<[u64; 6]> {
    (6..words.len()).find_map(|i| {
        let f: [u64; 6] = words.get(i - 5..=i)?.try_into().ok()?;
        let [breaker, support, enabled, pending, path, size] = f;
        let ok = size == 512
            && breaker < 4096
            && support < 1 << 16
            && enabled < 1 << 20
            && pending < path
            && path < size;
        ok.then_some(f)
    })
}

/// Finds the interpreter of `pid` and its main thread; refuses what cannot run a script.
pub fn open(pid: i32) -> Result<Remote> {
    let live = LiveProcess::open(pid).map_err(|e| Error::Process {
        pid,
        what: e.to_string(),
    })?;
    let mem = Mem::new(&live);
    let data = data_regions(live.mappings());
    let d = find_debug_offsets(mem, &data).ok_or(Error::NotCPython { pid })?;
    let version = Version {
        major: ((d.version_hex >> 24) & 0xff) as u32,
        minor: ((d.version_hex >> 16) & 0xff) as u32,
        micro: ((d.version_hex >> 8) & 0xff) as u32,
    };
    let text = version.to_string();
    if version.major != 3 || version.minor < 14 {
        return Err(Error::TooOld { version: text });
    }
    if d.free_threaded {
        return Err(Error::FreeThreaded { version: text });
    }
    let words = mem.words(d.addr, 256).unwrap_or_default();
    let [breaker, support, enabled, pending, path, size] =
        debugger_support(&words).ok_or(Error::UnknownLayout {
            version: text.clone(),
        })?;
    let lost = |what: &str| Error::Process {
        pid,
        what: format!("{what} not found in CPython {text}'s runtime state"),
    };
    // runtime_state.interpreters_head, interpreter_state.threads_main (3.14 and 3.15: words 5 and 10).
    let interp = mem
        .u64(d.addr + words.get(5).copied().unwrap_or(0))
        .filter(|&p| plausible(p))
        .ok_or_else(|| lost("the main interpreter"))?;
    let tstate = mem
        .u64(interp + words.get(10).copied().unwrap_or(0))
        .filter(|&p| plausible(p))
        .ok_or_else(|| lost("the main thread"))?;
    let on = mem
        .bytes(interp + enabled, 4)
        .map(|b| super::mem::u32_at(&b, 0))
        .ok_or_else(|| lost("the remote-debugging switch"))?;
    if on != 1 {
        return Err(Error::Disabled { version: text });
    }
    Ok(Remote {
        pid,
        version,
        eval_breaker: tstate + breaker,
        pending: tstate + support + pending,
        script_path: tstate + support + path,
        script_path_size: size,
    })
}

impl Remote {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        let len = buf.len();
        process_vm_readv(
            Pid::from_raw(self.pid),
            &mut [IoSliceMut::new(buf)],
            &[RemoteIoVec {
                base: addr as usize,
                len,
            }],
        )
        .map(|_| ())
        .map_err(|e| self.gone(e))
    }

    fn write(&self, addr: u64, buf: &[u8]) -> Result<()> {
        process_vm_writev(
            Pid::from_raw(self.pid),
            &[IoSlice::new(buf)],
            &[RemoteIoVec {
                base: addr as usize,
                len: buf.len(),
            }],
        )
        .map(|_| ())
        .map_err(|e| self.gone(e))
    }

    fn gone(&self, e: nix::errno::Errno) -> Error {
        Error::Process {
            pid: self.pid,
            what: format!("writing to it: {e} (did it exit?)"),
        }
    }

    fn pending(&self) -> Result<i32> {
        let mut b = [0u8; 4];
        self.read(self.pending, &mut b)?;
        Ok(i32::from_le_bytes(b))
    }

    /// Asks the main thread to run the script at `path` (as the target sees it).
    fn request(&self, path: &str) -> Result<()> {
        if self.pending()? != 0 {
            return Err(Error::Process {
                pid: self.pid,
                what: "another debugger's script is pending in it; try again later".into(),
            });
        }
        let mut bytes = path.as_bytes().to_vec();
        bytes.push(0);
        if bytes.len() as u64 > self.script_path_size {
            return Err(Error::Process {
                pid: self.pid,
                what: format!("script path {path} is too long for CPython's buffer"),
            });
        }
        self.write(self.script_path, &bytes)?;
        self.write(self.pending, &1i32.to_le_bytes())?;
        let mut b = [0u8; 8];
        self.read(self.eval_breaker, &mut b)?;
        let breaker = u64::from_le_bytes(b) | PLEASE_STOP_BIT;
        self.write(self.eval_breaker, &breaker.to_le_bytes())
    }

    /// Runs `source` in the target: a script that defines `_run()`, whose dict [`EPILOGUE`]
    /// writes as JSON to a memfd named for this call; an exception becomes `{"error": ...}`.
    pub fn exec(&self, source: &str, timeout: Duration) -> Result<String> {
        // Held from before the request: the output is taken from this process, not from one that
        // reuses its PID after it exits.
        let pidfd = PidFd::open(self.pid).map_err(|e| Error::Process {
            pid: self.pid,
            what: format!("pidfd_open: {e}"),
        })?;
        let dir = Scratch::create(self.pid)?;
        // The output memfd is a descriptor the target opens after this.
        let mut seen = open_fds(self.pid);
        let script = dir.inside.join("script.py");
        let source = format!("{PROLOGUE}{source}{EPILOGUE}").replace("@NAME@", &py_str(&dir.name));
        dir.write("script.py", source.as_bytes())?;
        self.request(&script.to_string_lossy())?;
        let t0 = Instant::now();
        let mut out: Option<std::fs::File> = None;
        loop {
            if out.is_none() {
                out = output_fd(self.pid, &pidfd, &dir.name, &mut seen);
            }
            if let Some(text) = out
                .as_ref()
                .and_then(|f| read_output(self.pid, f).transpose())
            {
                return parse_result(self.pid, text?);
            }
            if !alive(self.pid) {
                return Err(Error::Process {
                    pid: self.pid,
                    what: "it exited before its script ran".into(),
                });
            }
            if t0.elapsed() >= timeout {
                // Withdrawn, so that a thread which comes back to Python code later does not
                // run a script that is no longer there.
                let _ = self.write(self.pending, &0i32.to_le_bytes());
                return Err(Error::Timeout {
                    pid: self.pid,
                    seconds: timeout.as_secs(),
                });
            }
            // Short: once the output is there, the target's main thread waits for our reading.
            std::thread::sleep(Duration::from_millis(if out.is_some() { 2 } else { 10 }));
        }
    }

    /// [`Remote::exec`], its output read as `T`.
    fn exec_as<T: serde::de::DeserializeOwned>(
        &self,
        source: &str,
        timeout: Duration,
    ) -> Result<T> {
        let text = self.exec(source, timeout)?;
        serde_json::from_str(&text).map_err(|e| Error::Script {
            pid: self.pid,
            message: format!("unexpected output: {e}"),
        })
    }
}

/// What every script starts with, and what ends it: its `_run()` result (or the error it
/// raised) as JSON in a memfd named `NAME`: the length (8 bytes, little-endian) at 0, written
/// last; a byte at 8 that leakhunt sets once it has read; the JSON from 16. The script waits up
/// to 2 s for that byte, then closes the memfd: nothing of leakhunt's stays in the target.
const PROLOGUE: &str = r#"import json, os, time, tracemalloc
NAME = @NAME@
def _stop():
    _t = tracemalloc.__dict__.pop("_leakhunt_deadline", None)
    if _t is not None:
        _t.cancel()
    tracemalloc.stop()
"#;
const EPILOGUE: &str = r#"
try:
    _r = _run()
except Exception as _e:
    _r = {"error": type(_e).__name__ + ": " + str(_e)[:200]}
_b = json.dumps(_r).encode()
_fd = os.memfd_create(NAME)
try:
    os.pwrite(_fd, _b, 16)
    os.pwrite(_fd, len(_b).to_bytes(8, "little"), 0)
    _t = time.monotonic() + 2
    while os.pread(_fd, 1, 8) != b"\x01" and time.monotonic() < _t:
        time.sleep(0.001)
finally:
    os.close(_fd)
"#;

/// Most a script's output may be.
const MAX_OUTPUT: u64 = 1 << 20;

/// One open descriptor of the target and the file it is (mount and inode, where the kernel's
/// fdinfo says), from `/proc/PID/fdinfo`: unlike `/proc/PID/fd`, which only the target's own
/// user (or `CAP_DAC_OVERRIDE`) may list, ptrace access lets us read it.
type Fd = (i32, Option<(u64, u64)>);

fn open_fds(pid: i32) -> std::collections::HashSet<Fd> {
    let dir = format!("/proc/{pid}/fdinfo");
    let field = |text: &str, key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.trim().parse::<u64>().ok())
    };
    std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let fd: i32 = e.file_name().to_str()?.parse().ok()?;
            let info = std::fs::read_to_string(e.path()).unwrap_or_default();
            let file = field(&info, "mnt_id:").zip(field(&info, "ino:"));
            Some((fd, file))
        })
        .collect()
}

/// The memfd `name` once the script has made it: of the target's descriptors not `seen` (a new
/// number, or a number now of another file), the one that, taken, is that memfd. The others
/// taken are closed again (our copies only) and not taken again.
fn output_fd(
    pid: i32,
    pidfd: &PidFd,
    name: &str,
    seen: &mut std::collections::HashSet<Fd>,
) -> Option<std::fs::File> {
    use std::os::fd::AsRawFd;
    let want = format!("/memfd:{name} (deleted)");
    let mut fresh: Vec<Fd> = open_fds(pid).difference(seen).copied().collect();
    fresh.sort_unstable();
    for key in fresh {
        let Ok(f) = pidfd.getfd(key.0) else {
            continue;
        };
        let link = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd()));
        if link.is_ok_and(|l| l.as_os_str() == want.as_str()) {
            return Some(f);
        }
        // Without the file's identity (an old kernel) a number is looked at again next time.
        if key.1.is_some() {
            seen.insert(key);
        }
    }
    None
}

/// The output in `f` once complete (`None` before), at most [`MAX_OUTPUT`]; then tells the
/// script it was read.
fn read_output(pid: i32, f: &std::fs::File) -> Result<Option<String>> {
    use std::os::unix::fs::FileExt;
    let err = |what: String| Error::Script { pid, message: what };
    let mut len = [0u8; 8];
    if f.read_exact_at(&mut len, 0).is_err() {
        return Ok(None);
    }
    let len = u64::from_le_bytes(len);
    if len == 0 {
        return Ok(None);
    }
    if len > MAX_OUTPUT {
        return Err(err(format!(
            "output of {len} bytes, more than {MAX_OUTPUT}"
        )));
    }
    let mut text = vec![0u8; len as usize];
    f.read_exact_at(&mut text, 16)
        .map_err(|e| err(format!("reading its output: {e}")))?;
    let _ = f.write_all_at(&[1], 8);
    String::from_utf8(text)
        .map(Some)
        .map_err(|_| err("output is not UTF-8".into()))
}

/// A pidfd of the target: its descriptors can be taken (`pidfd_getfd`, which needs the same
/// ptrace access as reading its memory) and it names that process only.
struct PidFd(std::os::fd::OwnedFd);

impl PidFd {
    fn open(pid: i32) -> std::io::Result<PidFd> {
        use std::os::fd::FromRawFd;
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; the
        // descriptor is owned from here on.
        #[allow(unsafe_code)]
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a descriptor the kernel just gave us, closed by OwnedFd only.
        #[allow(unsafe_code)]
        Ok(PidFd(unsafe {
            std::os::fd::OwnedFd::from_raw_fd(fd as i32)
        }))
    }

    /// A duplicate of the target's descriptor `fd`, close-on-exec.
    fn getfd(&self, fd: i32) -> std::io::Result<std::fs::File> {
        use std::os::fd::{AsRawFd, FromRawFd};
        // SAFETY: pidfd_getfd takes our pidfd, a descriptor number of the target and flags, and
        // returns a new descriptor of ours or -1.
        #[allow(unsafe_code)]
        let got = unsafe { libc::syscall(libc::SYS_pidfd_getfd, self.0.as_raw_fd(), fd, 0) };
        if got < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: as in `open`.
        #[allow(unsafe_code)]
        Ok(unsafe { std::fs::File::from_raw_fd(got as i32) })
    }
}

/// The process still runs (not gone, not a zombie waiting for its parent).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_owned))
        })
        .is_some_and(|state| state != "Z" && state != "X")
}

/// A script's output: its result, or the error it caught.
fn parse_result(pid: i32, text: String) -> Result<String> {
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Script {
        pid,
        message: format!("unreadable output: {e}"),
    })?;
    match v.get("error").and_then(|e| e.as_str()) {
        Some(e) => Err(Error::Script {
            pid,
            message: e.chars().take(300).collect(),
        }),
        None => Ok(text),
    }
}

/// A Python string literal of `s` (a path leakhunt chose: no quotes or backslashes in it).
fn py_str(s: &str) -> String {
    format!("{s:?}")
}

/// The script's directory under the target's `/tmp`: ours, 0755 (the target reads the script,
/// nobody else writes there), removed on drop.
///
/// The target owns its `/tmp`, and an absolute symlink met below `/proc/PID/root` resolves against
/// *this* process's root: every step is therefore taken through a directory descriptor opened with
/// `O_NOFOLLOW` (`/proc/self/fd/N/name`), and the script is created exclusively.
struct Scratch {
    pid: i32,
    /// The target's `/tmp`, and this directory in it.
    tmp: std::fs::File,
    dir: std::fs::File,
    /// `leakhunt-<random>`: the directory's and the output memfd's name.
    name: String,
    /// As the target sees it.
    inside: PathBuf,
}

fn at(dir: &std::fs::File, name: &str) -> PathBuf {
    use std::os::fd::AsRawFd;
    PathBuf::from(format!("/proc/self/fd/{}/{name}", dir.as_raw_fd()))
}

fn open_dir(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)
}

impl Scratch {
    fn create(pid: i32) -> Result<Scratch> {
        let err = |what: String| Error::Process { pid, what };
        let tmp = open_dir(&PathBuf::from(format!("/proc/{pid}/root/tmp"))).map_err(|e| {
            err(format!(
                "its /tmp (a directory, not a link) cannot be opened: {e}"
            ))
        })?;
        let mut nonce = [0u8; 8];
        getrandom(&mut nonce);
        let name = format!("leakhunt-{}", hex(&nonce));
        let inside = PathBuf::from("/tmp").join(&name);
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(at(&tmp, &name))
            .map_err(|e| err(format!("creating {}: {e}", inside.display())))?;
        let dir = match open_dir(&at(&tmp, &name)) {
            Ok(d) => d,
            Err(e) => {
                let _ = std::fs::remove_dir(at(&tmp, &name));
                return Err(err(format!("opening {}: {e}", inside.display())));
            }
        };
        // The umask may have taken read or search from others: the target needs both.
        use std::os::unix::fs::PermissionsExt;
        let _ = dir.set_permissions(std::fs::Permissions::from_mode(0o755));
        Ok(Scratch {
            pid,
            tmp,
            dir,
            name,
            inside,
        })
    }

    fn write(&self, name: &str, bytes: &[u8]) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::PermissionsExt;
        let err = |e: std::io::Error| Error::Process {
            pid: self.pid,
            what: format!("writing {}/{name}: {e}", self.inside.display()),
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(at(&self.dir, name))
            .map_err(err)?;
        f.write_all(bytes).map_err(err)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(err)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(at(&self.dir, "script.py"));
        let _ = std::fs::remove_dir(at(&self.tmp, &self.name));
    }
}

fn getrandom(buf: &mut [u8]) {
    use std::io::Read;
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(buf);
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `tracemalloc` started (or found running) in the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tracing {
    /// False when something else had started it: then it is left running at the end.
    pub started: bool,
    pub frames: u32,
    /// Bytes `tracemalloc` itself used when it started.
    pub tracemalloc_memory: u64,
}

// The timer stops tracing if leakhunt never comes back to (its node agent restarted, say): a
// daemon thread that sleeps until then, cancelled by leakhunt's own stop.
const START: &str = r#"
import threading
def _run():
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start(@FRAMES@)
        _t = threading.Timer(@DEADLINE@, tracemalloc.stop)
        _t.daemon = True
        _t.name = "leakhunt-tracemalloc-deadline"
        _t.start()
        tracemalloc._leakhunt_deadline = _t
    return {"started": started, "frames": tracemalloc.get_traceback_limit(),
            "tracemallocMemory": tracemalloc.get_tracemalloc_memory()}
"#;

/// Starts `tracemalloc` in the target with `frames` frames per traceback.
pub fn start_tracing(remote: &Remote, frames: u32, timeout: Duration) -> Result<Tracing> {
    let src = START
        .replace("@FRAMES@", &frames.clamp(1, 64).to_string())
        .replace("@DEADLINE@", &TRACING_DEADLINE.as_secs().to_string());
    remote.exec_as(&src, timeout)
}

/// What tracemalloc uses now; with `STOP`, it is stopped after.
const MEMORY: &str = r#"
STOP = @STOP@
def _run():
    r = {"tracemallocMemory": tracemalloc.get_tracemalloc_memory() if tracemalloc.is_tracing() else 0}
    if STOP:
        _stop()
    return r
"#;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Memory {
    tracemalloc_memory: u64,
}

fn py_bool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

/// Stops `tracemalloc` (when leakhunt started it), leaving the target as it was.
pub fn stop_tracing(remote: &Remote, tracing: &Tracing, timeout: Duration) -> Result<()> {
    if !tracing.started {
        return Ok(());
    }
    remote
        .exec_as::<Memory>(&MEMORY.replace("@STOP@", py_bool(true)), timeout)
        .map(|_| ())
}

/// Bytes `tracemalloc` uses in the target now (0 when it is not tracing): its traces are native
/// memory that a diff must not blame on the process.
pub fn tracer_memory(remote: &Remote, timeout: Duration) -> Result<u64> {
    remote
        .exec_as::<Memory>(&MEMORY.replace("@STOP@", py_bool(false)), timeout)
        .map(|m| m.tracemalloc_memory)
}

/// Where one group of the suspect's items was allocated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Site {
    /// Most recent frame first: `app.py:12 in Profiler.end`.
    pub frames: Vec<String>,
    pub count: u64,
    pub bytes: u64,
}

/// The suspect's items grouped by allocation site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sites {
    /// Items of the container when asked.
    pub items: u64,
    /// Of them, allocated while tracing (after snapshot A): the growth.
    pub traced: u64,
    /// Largest groups first, at most five.
    pub sites: Vec<Site>,
    /// What `tracemalloc` itself used at the end, charged to the target.
    pub tracemalloc_memory: u64,
    /// How the container was found: `address` (checked against the target's own maps), or
    /// `gc` (a scan of every object, where the target has no `/proc`).
    #[serde(default)]
    pub found_by: String,
}

// Runs near the target's memory limit, so it allocates little: the container is found at its
// address (checked to be mapped and to hold an object of a container type first; `gc.get_objects()`
// — a list of every object — only where `/proc` is missing), its items are walked in place, and
// function names come from the source's syntax tree, parsed for the few frames shown.
const SITES: &str = r#"
import ast, collections, ctypes, gc, struct, sys
ADDR = @ADDR@
STOP = @STOP@
_KINDS = (list, dict, set, frozenset, collections.deque)
def _subtypes():
    seen, todo = set(), list(_KINDS)
    while todo:
        t = todo.pop()
        if id(t) not in seen:
            seen.add(id(t))
            todo.extend(type.__subclasses__(t))
    return seen
def _mapped(addr, size):
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if lo <= addr and addr + size <= hi:
                return parts[1].startswith("r")
    return False
def _find():
    try:
        mapped = _mapped(ADDR, 16)
    except OSError:
        mapped = None
    if mapped is None:
        for o in gc.get_objects():
            if id(o) == ADDR:
                return o, "gc"
        return None, "gc"
    if not mapped:
        return None, "address"
    refcnt, typ = struct.unpack("qQ", ctypes.string_at(ADDR, 16))
    if refcnt == 0 or typ not in _subtypes():
        return None, "address"
    return ctypes.cast(ADDR, ctypes.py_object).value, "address"
_defs = {}
def _qualname(filename, lineno):
    if filename not in _defs:
        found = []
        try:
            with open(filename, "rb") as f:
                tree = ast.parse(f.read())
            def walk(node, prefix):
                for child in ast.iter_child_nodes(node):
                    if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                        name = prefix + child.name
                        if not isinstance(child, ast.ClassDef):
                            found.append((child.lineno, child.end_lineno or child.lineno, name))
                        walk(child, name + ("." if isinstance(child, ast.ClassDef) else ".<locals>."))
                    else:
                        walk(child, prefix)
            walk(tree, "")
        except (OSError, SyntaxError, ValueError):
            pass
        _defs[filename] = found
    best = None
    for lo, hi, name in _defs[filename]:
        if lo <= lineno <= hi and (best is None or lo >= best[0]):
            best = (lo, name)
    return best[1] if best else None
def _where(frames):
    out = []
    for fr in reversed(frames):
        name = _qualname(fr.filename, fr.lineno)
        out.append("%s:%d%s" % (os.path.basename(fr.filename), fr.lineno, " in " + name if name else ""))
    return out
def _run():
    try:
        return _sites()
    finally:
        if STOP:
            _stop()
def _sites():
    if not tracemalloc.is_tracing():
        return {"error": "tracemalloc is not running (stopped since snapshot A?)"}
    target, how = _find()
    if target is None:
        return {"error": "the suspect is gone (no container at its address any more)"}
    if not isinstance(target, _KINDS):
        return {"error": "the suspect is a %s, not a container" % type(target).__name__}
    items = target.values() if isinstance(target, dict) else target
    groups = {}
    n = traced = 0
    try:
        for it in items:
            n += 1
            tb = tracemalloc.get_object_traceback(it)
            if tb is None:
                continue
            traced += 1
            key = tuple((f.filename, f.lineno) for f in tb)
            g = groups.get(key)
            if g is None:
                g = groups[key] = [tb, 0, 0]
            g[1] += 1
            g[2] += sys.getsizeof(it)
    except RuntimeError:
        pass  # another thread changed its size: what was counted stands
    top = sorted(groups.values(), key=lambda g: -g[1])[:5]
    memory = tracemalloc.get_tracemalloc_memory()
    return {"items": n, "traced": traced, "tracemallocMemory": memory, "foundBy": how,
            "sites": [{"frames": _where(tb), "count": c, "bytes": b} for tb, c, b in top]}
"#;

/// The items of the container at `address` grouped by where `tracemalloc` saw them allocated;
/// `stop`: stop tracing afterwards (leakhunt started it).
pub fn allocation_sites(
    remote: &Remote,
    address: u64,
    stop: bool,
    timeout: Duration,
) -> Result<Sites> {
    let src = SITES
        .replace("@ADDR@", &address.to_string())
        .replace("@STOP@", py_bool(stop));
    remote.exec_as(&src, timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_debugger_support_offsets() {
        // Words of 3.14.8's _Py_DebugOffsets around the struct (read from Debian's build).
        let mut w = vec![0u64; 100];
        w[86..95].copy_from_slice(&[67, 0, 8, 24, 304, 8076, 0, 4, 512]);
        assert_eq!(debugger_support(&w), Some([24, 304, 8076, 0, 4, 512]));
        // A 512 that is something else (a size among offsets) is not taken.
        let mut other = vec![0u64; 100];
        other[40] = 512;
        assert_eq!(debugger_support(&other), None);
    }

    #[test]
    fn a_linked_directory_or_script_is_not_followed() {
        // What a hostile target could plant in its /tmp: a link to a directory of this host, and
        // a link where the script goes.
        let host = tempfile::tempdir().unwrap();
        let theirs = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(host.path(), theirs.path().join("tmp")).unwrap();
        assert!(open_dir(&theirs.path().join("tmp")).is_err());
        let scratch = Scratch {
            pid: 0,
            tmp: open_dir(theirs.path()).unwrap(),
            dir: open_dir(theirs.path()).unwrap(),
            name: "unused".into(),
            inside: PathBuf::from("/tmp/unused"),
        };
        std::os::unix::fs::symlink(host.path().join("planted"), theirs.path().join("script.py"))
            .unwrap();
        assert!(scratch.write("script.py", b"x").is_err());
        assert!(!host.path().join("planted").exists());
    }

    #[test]
    fn output_is_read_once_complete_and_bounded() {
        use std::os::unix::fs::FileExt;
        let f = tempfile::tempfile().unwrap();
        // Nothing yet, then the JSON without its length: not complete.
        assert!(matches!(read_output(1, &f), Ok(None)));
        f.write_all_at(b"{\"a\": 1}", 16).unwrap();
        f.write_all_at(&[0; 9], 0).unwrap();
        assert!(matches!(read_output(1, &f), Ok(None)));
        f.write_all_at(&8u64.to_le_bytes(), 0).unwrap();
        assert_eq!(read_output(1, &f).unwrap().as_deref(), Some("{\"a\": 1}"));
        let mut ack = [0u8];
        f.read_exact_at(&mut ack, 8).unwrap();
        assert_eq!(ack, [1], "the script is told it was read");
        // A length beyond the cap is refused, not allocated.
        f.write_all_at(&u64::MAX.to_le_bytes(), 0).unwrap();
        assert!(read_output(1, &f).is_err());
    }

    #[test]
    fn scripts_take_only_numbers_and_paths() {
        assert!(START.contains("@FRAMES@") && PROLOGUE.contains("@NAME@"));
        assert_eq!(py_str("leakhunt-00ff"), "\"leakhunt-00ff\"");
        for s in [PROLOGUE, EPILOGUE, START, SITES, MEMORY] {
            // Output only: never evaluates what it reads.
            assert!(!s.contains("eval(") && !s.contains("exec("));
        }
    }
}
