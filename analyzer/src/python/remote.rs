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
//! script and its output live in a 0700 directory under the target's own `/tmp` (reached through
//! `/proc/PID/root`, so a container's process sees it), owned by the target's user, removed after.

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
    /// writes as JSON to `OUT` (a path chosen here) and renames into place when complete; an
    /// exception becomes `{"error": ...}`.
    pub fn exec(&self, source: &str, timeout: Duration) -> Result<String> {
        let dir = Scratch::create(self.pid)?;
        let out = dir.inside.join("out.json");
        let script = dir.inside.join("script.py");
        let source = format!("{PROLOGUE}{source}{EPILOGUE}")
            .replace("@OUT@", &py_str(&out.to_string_lossy()));
        dir.write("script.py", source.as_bytes())?;
        self.request(&script.to_string_lossy())?;
        let t0 = Instant::now();
        loop {
            if let Some(text) = dir.read("out.json") {
                return parse_result(self.pid, text);
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
            std::thread::sleep(Duration::from_millis(20));
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
/// raised) written where leakhunt reads it.
const PROLOGUE: &str = "import json, os, tracemalloc\nOUT = @OUT@\n";
const EPILOGUE: &str = r#"
try:
    _r = _run()
except Exception as _e:
    _r = {"error": type(_e).__name__ + ": " + str(_e)[:200]}
with open(OUT + ".tmp", "w") as _f:
    json.dump(_r, _f)
os.replace(OUT + ".tmp", OUT)
"#;

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

/// The script's directory under the target's `/tmp`: 0700, the target's user's, removed on drop.
///
/// The target owns its `/tmp` and what is in this directory, and an absolute symlink met below
/// `/proc/PID/root` resolves against *this* process's root: every step is therefore taken through
/// a directory descriptor opened with `O_NOFOLLOW` (`/proc/self/fd/N/name`), and files are created
/// exclusively and read without following links, at most 1 MiB.
struct Scratch {
    pid: i32,
    /// The target's `/tmp`, and this directory in it.
    tmp: std::fs::File,
    dir: std::fs::File,
    name: String,
    /// As the target sees it.
    inside: PathBuf,
    uid: u32,
    gid: u32,
}

/// Most a script's output may be.
const MAX_OUTPUT: u64 = 1 << 20;

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
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(|e| err(format!("reading its status: {e}")))?;
        // Effective ids (second field): the user the interpreter opens the script as.
        let id = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u32>().ok())
        };
        let (uid, gid) = (id("Uid:").unwrap_or(0), id("Gid:").unwrap_or(0));
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
            .mode(0o700)
            .create(at(&tmp, &name))
            .map_err(|e| err(format!("creating {}: {e}", inside.display())))?;
        let dir = match open_dir(&at(&tmp, &name)) {
            Ok(d) => d,
            Err(e) => {
                let _ = std::fs::remove_dir(at(&tmp, &name));
                return Err(err(format!("opening {}: {e}", inside.display())));
            }
        };
        let scratch = Scratch {
            pid,
            tmp,
            dir,
            name,
            inside,
            uid,
            gid,
        };
        std::os::unix::fs::fchown(&scratch.dir, Some(uid), Some(gid)).map_err(|e| {
            err(format!(
                "giving {} to uid {uid}: {e}",
                scratch.inside.display()
            ))
        })?;
        Ok(scratch)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> Result<()> {
        use std::io::Write;
        let err = |e: std::io::Error| Error::Process {
            pid: self.pid,
            what: format!("writing {}/{name}: {e}", self.inside.display()),
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(at(&self.dir, name))
            .map_err(err)?;
        f.write_all(bytes).map_err(err)?;
        std::os::unix::fs::fchown(&f, Some(self.uid), Some(self.gid)).map_err(err)
    }

    /// The file `name` once it is there (not a link), at most [`MAX_OUTPUT`] bytes of it.
    fn read(&self, name: &str) -> Option<String> {
        use std::io::Read;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(at(&self.dir, name))
            .ok()?;
        let mut text = String::new();
        f.take(MAX_OUTPUT).read_to_string(&mut text).ok()?;
        Some(text)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for f in ["script.py", "out.json", "out.json.tmp"] {
            let _ = std::fs::remove_file(at(&self.dir, f));
        }
        // Anything else the target put there stays with it (the directory is then its to remove).
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

const START: &str = r#"
def _run():
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start(@FRAMES@)
    return {"started": started, "frames": tracemalloc.get_traceback_limit(),
            "tracemallocMemory": tracemalloc.get_tracemalloc_memory()}
"#;

/// Starts `tracemalloc` in the target with `frames` frames per traceback.
pub fn start_tracing(remote: &Remote, frames: u32, timeout: Duration) -> Result<Tracing> {
    let src = START.replace("@FRAMES@", &frames.clamp(1, 64).to_string());
    remote.exec_as(&src, timeout)
}

/// What tracemalloc uses now; with `STOP`, it is stopped after.
const MEMORY: &str = r#"
STOP = @STOP@
def _run():
    r = {"tracemallocMemory": tracemalloc.get_tracemalloc_memory() if tracemalloc.is_tracing() else 0}
    if STOP:
        tracemalloc.stop()
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
            tracemalloc.stop()
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
    fn a_linked_directory_or_output_is_not_followed() {
        // What a hostile target could plant in its /tmp: a link to a directory of this host, and
        // an output that is a link to a file of this host.
        let host = tempfile::tempdir().unwrap();
        let theirs = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("secret"), b"{\"tracemallocMemory\": 1}").unwrap();
        std::os::unix::fs::symlink(host.path(), theirs.path().join("tmp")).unwrap();
        assert!(open_dir(&theirs.path().join("tmp")).is_err());
        let dir = open_dir(theirs.path()).unwrap();
        std::os::unix::fs::symlink(host.path().join("secret"), theirs.path().join("out.json"))
            .unwrap();
        let scratch = Scratch {
            pid: 0,
            tmp: open_dir(theirs.path()).unwrap(),
            dir,
            name: "unused".into(),
            inside: PathBuf::from("/tmp/unused"),
            uid: 0,
            gid: 0,
        };
        assert_eq!(scratch.read("out.json"), None, "followed a link");
        // Nor is a script written through one.
        std::os::unix::fs::symlink(host.path().join("planted"), theirs.path().join("script.py"))
            .unwrap();
        assert!(scratch.write("script.py", b"x").is_err());
        assert!(!host.path().join("planted").exists());
    }

    #[test]
    fn scripts_take_only_numbers_and_paths() {
        assert!(START.contains("@FRAMES@") && PROLOGUE.contains("@OUT@"));
        assert_eq!(
            py_str("/tmp/leakhunt-00ff/out.json"),
            "\"/tmp/leakhunt-00ff/out.json\""
        );
        for s in [PROLOGUE, EPILOGUE, START, SITES, MEMORY] {
            // Output only: never evaluates what it reads.
            assert!(!s.contains("eval(") && !s.contains("exec("));
        }
    }
}
