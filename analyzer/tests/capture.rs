//! `capture` against real processes: a multi-threaded C program and a Python script, read back by
//! our `CoreFile`, gdb, pystack and compared with gdb's `gcore`.
//!
//! Needs root (ptrace of any process, mounting a tmpfs), gcc, gdb and pystack (`.ci/install`).

// Tests and their helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use leakhunt_analyzer::capture::{capture, estimate_size, CaptureOptions, Error};
use leakhunt_analyzer::{CoreFile, MemoryImage};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_leakhunt-analyzer");

/// Threads that each fill a malloc'd block with known words, a 1 MiB block in main, a marker in
/// `.data` and a string in `.rodata`; then everyone sleeps. `argv[1]` MiB of incompressible bulk.
const C_PROGRAM: &str = r#"
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/mman.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define NTHREADS 4
static pthread_barrier_t barrier;
static volatile uint64_t global_marker = 0x6c65616b68756e74ULL;
static const char banner[] = "leakhunt-rodata-banner";

static void *worker(void *arg) {
    long i = (long)arg;
    uint64_t *p = malloc(4096);
    for (int k = 0; k < 512; k++) p[k] = 0xABCD000000000000ULL | ((uint64_t)i << 32) | k;
    printf("thread%ld %p %llx %llx\n", i, (void *)p, (unsigned long long)p[0], (unsigned long long)p[511]);
    fflush(stdout);
    pthread_barrier_wait(&barrier);
    for (;;) pause();
    return NULL;
}

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? (size_t)atol(argv[1]) : 0;
    if (mib) {
        uint64_t *bulk = malloc(mib << 20);
        uint64_t x = 88172645463325252ULL;
        for (size_t k = 0; k < (mib << 20) / 8; k++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            bulk[k] = x;
        }
        printf("bulk %p %llx 0\n", (void *)bulk, (unsigned long long)bulk[0]);
    }
    if (argc > 2) {
        /* A shared writable mapping two pages long of a one-page file: the second page cannot be
           read (SIGBUS for the process, EFAULT for readers) and must come out as zeros. */
        char path[4096];
        snprintf(path, sizeof path, "%s/filemap.bin", argv[2]);
        FILE *f = fopen(path, "w");
        uint64_t page[512];
        for (int k = 0; k < 512; k++) page[k] = 0x4c48000000000000ULL | k;
        fwrite(page, sizeof page, 1, f);
        fclose(f);
        int fd = open(path, O_RDWR);
        uint64_t *m = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        printf("filemap %p %llx 0\n", (void *)m, (unsigned long long)m[0]);
    }
    pthread_barrier_init(&barrier, NULL, NTHREADS + 1);
    pthread_t t[NTHREADS];
    for (long i = 0; i < NTHREADS; i++) pthread_create(&t[i], NULL, worker, (void *)i);
    uint64_t *big = malloc(1 << 20);
    for (size_t k = 0; k < (1 << 20) / 8; k++) big[k] = 0x5eed000000000000ULL | k;
    pthread_barrier_wait(&barrier);
    printf("main %p %llx %llx\n", (void *)big, (unsigned long long)big[0], (unsigned long long)big[(1 << 17) - 1]);
    printf("global %p %llx 0\n", (void *)&global_marker, (unsigned long long)global_marker);
    printf("rodata %p 0 0\n", (void *)banner);
    printf("ready\n");
    fflush(stdout);
    for (;;) pause();
}
"#;

const PY_SCRIPT: &str = r#"
import threading, time
def worker():
    time.sleep(1000)
for _ in range(2):
    threading.Thread(target=worker, daemon=True).start()
def leakhunt_sleeping_here():
    print("ready", flush=True)
    time.sleep(1000)
leakhunt_sleeping_here()
"#;

/// `(address, first word, last word)` of each named block the C program printed.
type Blocks = HashMap<String, (u64, u64, u64)>;

/// A running target, killed when the test ends (pass or fail).
struct Target {
    child: Child,
    exe: PathBuf,
    blocks: Blocks,
}

impl Target {
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn c(dir: &Path, bulk_mib: usize) -> Target {
        let exe = compile_c(dir);
        let child = Command::new(&exe)
            .arg(bulk_mib.to_string())
            .arg(dir)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the C target");
        Target::wait_ready(child, exe)
    }

    fn python() -> Target {
        let exe = python_exe();
        let child = Command::new(&exe)
            .args(["-c", PY_SCRIPT])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the Python target");
        Target::wait_ready(child, exe)
    }

    fn wait_ready(mut child: Child, exe: PathBuf) -> Target {
        let out: ChildStdout = child.stdout.take().expect("stdout");
        let mut blocks = Blocks::new();
        for line in BufReader::new(out).lines() {
            let line = line.expect("read target output");
            if line == "ready" {
                return Target { child, exe, blocks };
            }
            let f: Vec<&str> = line.split_whitespace().collect();
            let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).expect("hex");
            blocks.insert(f[0].to_owned(), (hex(f[1]), hex(f[2]), hex(f[3])));
        }
        let _ = child.kill();
        panic!("target exited before it was ready");
    }

    fn tids(&self) -> Vec<i32> {
        let mut t: Vec<i32> = std::fs::read_dir(format!("/proc/{}/task", self.pid()))
            .expect("task dir")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        t.sort();
        t
    }

    /// Field 3 of /proc/PID/stat for every thread; `None` once the process is gone.
    fn states(&self) -> Vec<char> {
        self.tids()
            .iter()
            .filter_map(|t| {
                let s =
                    std::fs::read_to_string(format!("/proc/{}/task/{t}/stat", self.pid())).ok()?;
                s[s.rfind(')')? + 1..].trim_start().chars().next()
            })
            .collect()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn compile_c(dir: &Path) -> PathBuf {
    compile(dir, "gcc", "target.c", "leakhunt-target", C_PROGRAM)
}

/// Build `source` (written to `dir/name`) into `dir/exe` with `compiler` (gcc or g++), with
/// symbols.
fn compile(dir: &Path, compiler: &str, name: &str, exe: &str, source: &str) -> PathBuf {
    let src = dir.join(name);
    let exe = dir.join(exe);
    std::fs::write(&src, source).expect("write source");
    let st = Command::new(compiler)
        .args(["-O1", "-g", "-pthread", "-o"])
        .arg(&exe)
        .arg(&src)
        .status()
        .unwrap_or_else(|e| panic!("run {compiler} (install it: .ci/install): {e}"));
    assert!(st.success(), "{compiler} failed");
    exe
}

/// The real interpreter (not a pyenv shim script), so the PID we capture is Python's.
fn python_exe() -> PathBuf {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn opts(output: PathBuf) -> CaptureOptions {
    CaptureOptions {
        output,
        ..Default::default()
    }
}

fn assert_running(t: &Target) {
    let states = t.states();
    assert!(!states.is_empty(), "target died");
    assert!(
        states.iter().all(|s| !matches!(s, 't' | 'T' | 'Z' | 'X')),
        "target left stopped or dead: {states:?}"
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", t.pid())).expect("status");
    assert!(status.contains("TracerPid:\t0\n"), "still traced");
}

/// The values the C program printed are read back from `core` at their addresses.
fn assert_blocks(core: &CoreFile, blocks: &Blocks) {
    for (name, &(addr, first, last)) in blocks {
        match name.as_str() {
            "rodata" => {
                assert_eq!(
                    core.read_cstr(addr, 64).as_deref(),
                    Ok("leakhunt-rodata-banner"),
                    "rodata string"
                );
            }
            "global" | "bulk" | "filemap" => assert_eq!(core.read_u64(addr), Ok(first), "{name}"),
            _ => {
                let span = if name == "main" { 1 << 20 } else { 4096 };
                assert_eq!(core.read_u64(addr), Ok(first), "{name} first word");
                assert_eq!(core.read_u64(addr + span - 8), Ok(last), "{name} last word");
            }
        }
    }
}

#[test]
fn captures_threads_memory_and_files_of_a_c_program() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = Target::c(dir.path(), 0);
    let out = dir.path().join("c.core");
    let estimate = estimate_size(t.pid()).expect("estimate");
    let s = capture(t.pid(), &opts(out.clone())).expect("capture");
    assert_running(&t);

    assert_eq!(s.threads, 5);
    assert!(s.stopped <= s.total);
    assert!(
        s.memory_bytes > 1 << 20 && s.file_bytes <= estimate,
        "{s:?} vs {estimate}"
    );
    let mode = std::fs::metadata(&out)
        .expect("stat core")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "core file mode");

    let core = CoreFile::open(&out, None).expect("open our core");
    assert_eq!(core.info().pid, t.pid());
    assert_eq!(core.info().threads, 5);
    assert!(core.info().rss.is_some_and(|r| r > 1 << 20));
    assert!(core.info().start_time.is_some());
    assert_eq!(
        core.info().exe.as_deref(),
        Some(t.exe.to_str().expect("utf-8 path"))
    );
    assert!(
        core.notes().iter().all(|n| !n.contains("pages missing")),
        "{:?}",
        core.notes()
    );
    assert_blocks(&core, &t.blocks);
    // The page past the end of the mapped file cannot be read: it is zeros, the rest is intact.
    let (filemap, _, _) = t.blocks["filemap"];
    assert_eq!(core.read_u64(filemap + 4096), Ok(0));
    assert_eq!(core.read_u64(filemap + 4096 - 8), Ok(0x4c48_0000_0000_01ff));
    // Mappings carry the paths and pseudo-names of /proc/PID/maps.
    let maps = core.mappings();
    let exe = t.exe.to_str().expect("utf-8");
    assert!(maps
        .iter()
        .any(|m| m.path.as_deref() == Some(exe) && m.perms.exec));
    assert!(maps
        .iter()
        .any(|m| m.path.as_deref().is_some_and(|p| p.ends_with("/libc.so.6"))));
    assert!(maps.iter().any(|m| m.is_heap()));
    assert!(maps.iter().any(|m| m.is_stack()));
    let live = leakhunt_analyzer::image::read_maps(t.pid()).expect("maps");
    for m in &live {
        assert!(
            maps.iter().any(|c| c.start == m.start && c.end == m.end),
            "mapping {m:?} missing from the core"
        );
    }
}

#[test]
fn gdb_lists_every_thread_and_libc() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = Target::c(dir.path(), 0);
    let out = dir.path().join("gdb.core");
    capture(t.pid(), &opts(out.clone())).expect("capture");
    let o = Command::new("gdb")
        .args([
            "-nx",
            "-batch",
            "-ex",
            "info threads",
            "-ex",
            "info sharedlibrary",
        ])
        .arg(&t.exe)
        .arg(&out)
        .output()
        .expect("run gdb (install it: .ci/install)");
    let text = String::from_utf8_lossy(&o.stdout);
    for tid in t.tids() {
        assert!(
            text.contains(&format!("LWP {tid})")),
            "thread {tid} missing:\n{text}"
        );
    }
    assert!(text.contains("libc.so.6"), "libc missing:\n{text}");
    // gdb unwinds each worker into our function (symbols from the executable).
    assert!(text.contains("pause") || text.contains("worker"), "{text}");
}

#[test]
fn pystack_shows_the_running_python_function() {
    let t = Target::python();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("py.core");
    let s = capture(t.pid(), &opts(out.clone())).expect("capture");
    assert_eq!(s.threads, 3);
    let o = Command::new(python_exe())
        .args(["-m", "pystack", "core"])
        .arg(&out)
        .output()
        .expect("run pystack");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && text.contains("leakhunt_sleeping_here"),
        "pystack (install it: .ci/install) did not show the function: {}\n{text}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(text.matches("Traceback for thread").count(), 3, "{text}");
    assert_running(&t);
}

#[test]
fn zst_core_reads_back_identically() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = Target::c(dir.path(), 8);
    // A running thread's memory changes even in pause(): the kernel rewrites its rseq CPU id when it
    // migrates. Job-stop the target so both captures see the same bytes; capture must keep it stopped.
    signal(&t, nix::sys::signal::Signal::SIGSTOP);
    let plain = dir.path().join("same.core");
    let packed = dir.path().join("same.core.zst");
    let a = capture(t.pid(), &opts(plain.clone())).expect("capture plain");
    let b = capture(t.pid(), &opts(packed.clone())).expect("capture zst");
    // Detached threads are briefly runnable before they stop again; one whose job stop was
    // lost would settle in pause() (S) instead.
    wait_until(|| t.states().iter().all(|&s| s == 'T' || s == 'S'));
    assert!(
        t.states().iter().all(|&s| s == 'T'),
        "job stop lost: {:?}",
        t.states()
    );
    signal(&t, nix::sys::signal::Signal::SIGCONT);
    wait_until(|| t.states().iter().all(|&s| s == 'S'));
    assert_running(&t);
    assert_eq!(a.memory_bytes, b.memory_bytes);
    let mut head = [0u8; 4];
    std::io::Read::read_exact(&mut std::fs::File::open(&packed).expect("open"), &mut head)
        .expect("read");
    assert_eq!(head, [0x28, 0xb5, 0x2f, 0xfd], "zstd magic");
    let (a, b) = (
        CoreFile::open(&plain, None).expect("open plain"),
        CoreFile::open(&packed, None).expect("open zst"),
    );
    assert_eq!(a.mappings(), b.mappings());
    let sa: Vec<(u64, &[u8])> = a.stored_segments().collect();
    let sb: Vec<(u64, &[u8])> = b.stored_segments().collect();
    assert_eq!(sa.len(), sb.len());
    for ((va, da), (vb, db)) in sa.iter().zip(&sb) {
        assert_eq!(va, vb);
        assert!(da == db, "segment {va:#x} differs");
    }
    assert_blocks(&b, &t.blocks);
}

fn signal(t: &Target, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(t.pid()), sig).expect("signal target");
    let want = if sig == nix::sys::signal::Signal::SIGSTOP {
        'T'
    } else {
        'S'
    };
    wait_until(|| t.states().iter().all(|&s| s == want));
}

fn wait_until(mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn gcore_core_of_the_same_process_reads_the_same_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = Target::c(dir.path(), 0);
    let ours = dir.path().join("ours.core");
    capture(t.pid(), &opts(ours.clone())).expect("capture");
    let prefix = dir.path().join("gcore");
    let st = Command::new("gcore")
        .arg("-o")
        .arg(&prefix)
        .arg(t.pid().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run gcore");
    assert!(st.success(), "gcore failed");
    let theirs = PathBuf::from(format!("{}.{}", prefix.display(), t.pid()));
    let g = CoreFile::open(&theirs, None).expect("open gcore core");
    // .rodata is not in gcore's core: it is read from the executable named in NT_FILE.
    assert_blocks(&g, &t.blocks);
    let o = CoreFile::open(&ours, None).expect("open ours");
    assert_blocks(&o, &t.blocks);
    assert_eq!(g.info().threads, o.info().threads);
    assert_running(&t);
}

#[test]
fn refuses_a_missing_pid_an_existing_output_and_a_size_cap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("x.core");
    let e = capture(999_999_999, &opts(out.clone())).expect_err("no such pid");
    assert!(matches!(e, Error::NoSuchProcess { .. }), "{e}");
    assert!(e.to_string().contains("does not exist"));

    let t = Target::c(dir.path(), 0);
    std::fs::write(&out, b"keep me").expect("write");
    let e = capture(t.pid(), &opts(out.clone())).expect_err("exists");
    assert!(matches!(e, Error::OutputExists { .. }), "{e}");
    assert!(e.to_string().contains("--force"), "{e}");
    assert_eq!(std::fs::read(&out).expect("read"), b"keep me");
    let mut o = opts(out.clone());
    o.overwrite = true;
    capture(t.pid(), &o).expect("overwrite");
    CoreFile::open(&out, None).expect("overwritten core");

    let e = capture(t.pid(), &opts(dir.path().join("no/such/dir/x.core"))).expect_err("no dir");
    assert!(matches!(e, Error::Output { .. }), "{e}");
    assert!(!e.to_string().contains(".partial"), "{e}");

    let capped = dir.path().join("capped.core");
    let mut o = opts(capped.clone());
    o.max_bytes = Some(1 << 20);
    let e = capture(t.pid(), &o).expect_err("cap");
    assert!(matches!(e, Error::TooLarge { .. }), "{e}");
    assert!(!capped.exists());
    assert_running(&t);
    assert_eq!(
        leftovers(dir.path()),
        ["filemap.bin", "leakhunt-target", "target.c", "x.core"]
    );
}

/// Files in `dir`, sorted (temporary `.partial` files would show here).
fn leftovers(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| Some(e.ok()?.file_name().to_str()?.to_owned()))
        .collect();
    v.sort();
    v
}

#[test]
fn process_killed_mid_capture_is_reported_and_leaves_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = Target::c(dir.path(), 512);
    let pid = t.pid();
    // Kill the target as soon as the capture has it stopped (TracerPid set): reading 512 MiB takes
    // far longer than the poll, so the kill lands mid-capture.
    let killer = std::thread::spawn(move || {
        let traced = wait_traced(pid);
        if traced {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        traced
    });
    let out = dir.path().join("dead.core");
    let r = capture(pid, &opts(out.clone()));
    assert!(
        killer.join().expect("killer"),
        "capture never stopped the target"
    );
    let e = r.expect_err("the target died mid-capture");
    assert!(matches!(e, Error::ProcessExited { .. }), "{e}");
    assert!(e.to_string().contains("exited during the capture"), "{e}");
    assert!(!out.exists());
    assert_eq!(
        leftovers(dir.path()),
        ["filemap.bin", "leakhunt-target", "target.c"]
    );
}

/// A 1 MiB tmpfs, unmounted however the test ends.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(at: PathBuf) -> SmallDisk {
        std::fs::create_dir_all(&at).expect("mkdir");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "leakhunt-test"])
            .arg(&at)
            .status()
            .expect("run mount");
        assert!(st.success(), "mount tmpfs failed (needs root)");
        SmallDisk(at)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn full_disk_is_reported_and_leaves_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = Target::c(dir.path(), 4);
    let disk = SmallDisk::mount(dir.path().join("small"));
    // Uncompressed: refused up front, the estimate exceeds the free space.
    let e = capture(t.pid(), &opts(disk.0.join("a.core"))).expect_err("too big");
    assert!(matches!(e, Error::DiskFull { .. }), "{e}");
    assert!(e.to_string().contains("disk full"), "{e}");
    assert!(leftovers(&disk.0).is_empty());
    // Compressed: 4 MiB of random bytes do not compress, the disk fills while writing.
    let e = capture(t.pid(), &opts(disk.0.join("b.core.zst"))).expect_err("disk full");
    assert!(matches!(e, Error::DiskFull { .. }), "{e}");
    assert!(leftovers(&disk.0).is_empty(), "{:?}", leftovers(&disk.0));
    assert_running(&t);
}

#[test]
fn cli_prints_a_summary_and_uses_exit_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = Target::c(dir.path(), 0);
    let out = dir.path().join("cli.core.zst");
    let o = Command::new(BIN)
        .args(["capture", "--pid", &t.pid().to_string(), "--output"])
        .arg(&out)
        .output()
        .expect("run cli");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        text.contains("5 threads") && text.contains("stopped"),
        "{text}"
    );
    CoreFile::open(&out, None).expect("open cli core");

    // Exists without --force: one-line error, exit 1.
    let o = Command::new(BIN)
        .args(["capture", "--pid", &t.pid().to_string(), "--output"])
        .arg(&out)
        .output()
        .expect("run cli");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err.contains("already exists") && err.lines().count() == 1,
        "{err}"
    );
    let o = Command::new(BIN)
        .args([
            "capture",
            "--pid",
            &t.pid().to_string(),
            "--force",
            "--compress",
            "--output",
        ])
        .arg(&out)
        .output()
        .expect("run cli");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // Usage errors: exit 2.
    let o = Command::new(BIN)
        .args(["capture", "--pid", "notanumber"])
        .output()
        .expect("run cli");
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn no_permission_says_what_to_do() {
    // An unprivileged user cannot ptrace a root process; run the CLI as nobody.
    if Command::new("setpriv").arg("--version").output().is_err() {
        panic!("setpriv (util-linux) is needed for this test");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let t = Target::c(dir.path(), 0);
    let bin = dir.path().join("leakhunt-analyzer");
    std::fs::copy(BIN, &bin).expect("copy binary");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .args(["capture", "--pid", &t.pid().to_string(), "--output"])
        .arg(dir.path().join("nope.core"))
        .output()
        .expect("run setpriv");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("CAP_SYS_PTRACE") && err.contains("ptrace_scope"),
        "{err}"
    );
    assert!(!dir.path().join("nope.core").exists());
    assert_running(&t);
}

/// Wait until `pid` has a tracer (the capture has it stopped); false after 20 s.
fn wait_traced(pid: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        if status
            .lines()
            .any(|l| l.starts_with("TracerPid:") && l != "TracerPid:\t0")
        {
            return true;
        }
    }
    false
}

#[test]
fn killed_capture_leaves_no_file_and_the_target_running() {
    // The agent itself may be OOM-killed mid-capture: the kernel detaches the target, and the
    // nameless (O_TMPFILE) core being written disappears with the process.
    let dir = tempfile::tempdir().expect("tempdir");
    let t = Target::c(dir.path(), 256);
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).expect("mkdir");
    let mut cli = Command::new(BIN)
        .args(["capture", "--pid", &t.pid().to_string(), "--output"])
        .arg(out_dir.join("killed.core"))
        .stdout(Stdio::null())
        .spawn()
        .expect("run cli");
    assert!(wait_traced(t.pid()), "capture never stopped the target");
    cli.kill().expect("kill the capture");
    let st = cli.wait().expect("wait");
    assert!(!st.success());
    wait_until(|| {
        std::fs::read_to_string(format!("/proc/{}/status", t.pid()))
            .is_ok_and(|s| s.contains("TracerPid:\t0\n"))
    });
    wait_until(|| t.states().iter().all(|&s| s == 'S'));
    assert_running(&t);
    assert!(leftovers(&out_dir).is_empty(), "{:?}", leftovers(&out_dir));
}

#[test]
fn a_process_under_a_debugger_is_refused_and_left_to_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = Target::c(dir.path(), 0);
    // gdb attaches, then holds the process until its shell command reads a line: as long as the
    // test needs, however slowly it runs.
    let mut gdb = Command::new("gdb")
        .args([
            "-nx",
            "-batch",
            "-p",
            &t.pid().to_string(),
            "-ex",
            "shell head -n1",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run gdb");
    let attached = wait_traced(t.pid());
    let e = capture(t.pid(), &opts(dir.path().join("traced.core")));
    // Let gdb go in every case (dropping its stdin ends `head` too), then judge.
    drop(gdb.stdin.take());
    let _ = gdb.wait();
    assert!(attached, "gdb never attached");
    let e = e.expect_err("traced");
    assert!(matches!(e, Error::AlreadyTraced { .. }), "{e}");
    assert!(e.to_string().contains("already traced"), "{e}");
    assert!(!dir.path().join("traced.core").exists());
    wait_until(|| t.states().iter().all(|&s| s == 'S'));
    assert_running(&t);
}

/// `main` returns through `pthread_exit` while a worker runs on: the leader is a zombie.
const EXITED_MAIN: &str = r#"
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
static void *worker(void *arg) {
    (void)arg;
    uint64_t *p = malloc(4096);
    for (int k = 0; k < 512; k++) p[k] = 0x7721000000000000ULL | k;
    printf("%p\n", (void *)p);
    fflush(stdout);
    for (;;) pause();
    return NULL;
}
int main(void) {
    pthread_t t;
    pthread_create(&t, NULL, worker, NULL);
    pthread_exit(NULL);
}
"#;

#[test]
fn captures_a_process_whose_main_thread_has_exited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = compile(dir.path(), "gcc", "exited.c", "exited-main", EXITED_MAIN);
    let mut child = Command::new(&exe)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    let addr = u64::from_str_radix(line.trim().trim_start_matches("0x"), 16).expect("hex");
    let pid = child.id() as i32;
    let state = |tid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat"))
            .ok()
            .and_then(|s| s[s.rfind(')')? + 1..].trim_start().chars().next())
    };
    wait_until(|| state(pid) == Some('Z'));
    let out = dir.path().join("exited.core");
    let r = capture(pid, &opts(out.clone()));
    let _ = child.kill();
    let _ = child.wait();
    let s = r.expect("capture with a zombie main thread");
    assert_eq!(s.threads, 1);
    let core = CoreFile::open(&out, None).expect("open");
    assert_eq!(core.read_u64(addr), Ok(0x7721_0000_0000_0000));
    assert_eq!(core.read_u64(addr + 4088), Ok(0x7721_0000_0000_01ff));
}

/// A memory cgroup of our own under `leakhunt-test/` (v1, or v2 where the memory controller is
/// delegated to it), removed however the test ends; `None` on a host that has neither.
struct MemoryCgroup(PathBuf);

impl MemoryCgroup {
    fn new(name: &str, limit: u64) -> Option<MemoryCgroup> {
        let v1 = Path::new("/sys/fs/cgroup/memory");
        let (root, limit_file) = if v1.join("memory.limit_in_bytes").exists() {
            (v1.to_path_buf(), "memory.limit_in_bytes")
        } else {
            let v2 = Path::new("/sys/fs/cgroup");
            let ctl = std::fs::read_to_string(v2.join("cgroup.subtree_control")).ok()?;
            ctl.split_whitespace()
                .any(|c| c == "memory")
                .then_some(())?;
            (v2.to_path_buf(), "memory.max")
        };
        let parent = root.join("leakhunt-test");
        std::fs::create_dir_all(&parent).ok()?;
        if limit_file == "memory.max" {
            std::fs::write(parent.join("cgroup.subtree_control"), "+memory").ok()?;
        }
        let dir = parent.join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        let cg = MemoryCgroup(dir);
        std::fs::write(cg.0.join(limit_file), limit.to_string()).ok()?;
        Some(cg)
    }

    /// Kernel OOM kills in this cgroup so far.
    fn oom_kills(&self) -> u64 {
        ["memory.oom_control", "memory.events"]
            .iter()
            .filter_map(|f| std::fs::read_to_string(self.0.join(f)).ok())
            .flat_map(|t| t.lines().map(str::to_owned).collect::<Vec<_>>())
            .find_map(|l| {
                l.strip_prefix("oom_kill ")
                    .and_then(|n| n.trim().parse().ok())
            })
            .unwrap_or(0)
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
        // Shared by tests running in parallel: goes with the last one.
        let _ = self.0.parent().map(std::fs::remove_dir);
    }
}

#[test]
fn a_capture_under_a_small_memory_limit_buffers_within_it() {
    // The agent captures under its own memory limit. Buffering a fast read of the target ahead of
    // a slower compressor must stay within what the cgroup has left, or the capture is
    // OOM-killed: here 600 MiB of incompressible memory, captured compressed under 160 MiB.
    let Some(cg) = MemoryCgroup::new("capture", 160 << 20) else {
        eprintln!("no memory cgroup of our own can be made here: skipped");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let t = Target::c(dir.path(), 600);
    let out = dir.path().join("limited.core.zst");
    let o = Command::new("/bin/sh")
        .arg("-c")
        .arg(r#"echo $$ > "$0" && exec "$@""#)
        .arg(cg.0.join("cgroup.procs"))
        .args([BIN, "capture", "--pid", &t.pid().to_string(), "--output"])
        .arg(&out)
        .output()
        .expect("run cli");
    let kills = cg.oom_kills();
    assert!(
        o.status.success() && kills == 0,
        "capture under 160 MiB: {:?}, {kills} OOM kills; {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    let core = CoreFile::open(&out, None).expect("open the core");
    let (addr, first, _) = t.blocks["bulk"];
    assert_eq!(core.read_u64(addr), Ok(first));
    assert_running(&t);
}

#[test]
fn a_target_of_another_user_is_captured_with_cap_sys_ptrace_alone() {
    // As a node agent captures a container that runs as another user: CAP_SYS_PTRACE and no other
    // capability. The target's /proc/PID/auxv is its own user's alone (0400); the vector comes
    // from its initial stack instead, the same bytes.
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = compile_c(dir.path());
    let child = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&exe)
        .arg("1")
        .stdout(Stdio::piped())
        .spawn()
        .expect("setpriv (util-linux)");
    let t = Target::wait_ready(child, exe);
    let pid = t.pid();
    let expected = std::fs::read(format!("/proc/{pid}/auxv")).expect("auxv, read as root");
    let out = dir.path().join("other-user.core");
    let o = out.clone();
    let captured = std::thread::spawn(move || {
        common::only_sys_ptrace();
        // Not readable as the agent: the fallback is what is under test.
        assert!(std::fs::read(format!("/proc/{pid}/auxv")).is_err());
        capture(pid, &opts(o))
    })
    .join()
    .expect("capture thread");
    let summary = captured.expect("captured with CAP_SYS_PTRACE alone");
    assert!(summary.threads >= 5, "{summary:?}");
    let core = CoreFile::open(&out, None).expect("open");
    let words: Vec<(u64, u64)> = expected
        .chunks_exact(16)
        .map(|c| {
            (
                u64::from_ne_bytes(c[..8].try_into().unwrap()),
                u64::from_ne_bytes(c[8..].try_into().unwrap()),
            )
        })
        .filter(|(k, _)| *k != 0)
        .collect();
    let got: Vec<(u64, u64)> = core
        .auxv()
        .iter()
        .copied()
        .filter(|(k, _)| *k != 0)
        .collect();
    assert!(words.len() > 10, "{words:?}");
    assert_eq!(got, words);
    assert_running(&t);
}

/// A C++ program whose writer thread sweeps a buffer page by page at `argv[2]` MiB/s, writing
/// generation `gen` into every word of a page before it moves the cursor past it: at any instant,
/// pages before `g_cursor` hold `gen`, pages after it `gen - 1`, and the page at the cursor a
/// mix of the two, the new words first. A core taken at one instant shows exactly that.
const CXX_SWEEPER: &str = r#"
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

std::atomic<uint64_t> g_gen{0}, g_cursor{0};
std::vector<uint64_t> *g_buf;

int main(int argc, char **argv) {
    size_t pages = (size_t)atol(argv[1]) * 256;
    double rate = atof(argv[2]) * 1048576.0;
    g_buf = new std::vector<uint64_t>(pages * 512, 0);
    std::thread writer([pages, rate] {
        auto t0 = std::chrono::steady_clock::now();
        uint64_t done = 0;
        for (uint64_t gen = 1;; gen++) {
            g_cursor.store(0, std::memory_order_release);
            g_gen.store(gen, std::memory_order_release);
            for (size_t p = 0; p < pages; p++) {
                volatile uint64_t *w = g_buf->data() + p * 512;
                for (int k = 0; k < 512; k++) w[k] = (gen << 32) | p;
                g_cursor.store(p + 1, std::memory_order_release);
                done += 4096;
                if (rate > 0 && done % (64 * 4096) == 0) {
                    auto due = t0 + std::chrono::duration<double>(done / rate);
                    std::this_thread::sleep_until(due);
                }
            }
        }
    });
    printf("buf %p 0 0\ngen %p 0 0\ncursor %p 0 0\nready\n", (void *)g_buf->data(),
           (void *)&g_gen, (void *)&g_cursor);
    fflush(stdout);
    writer.join();
}
"#;

/// Every page of the sweeper's buffer in `core` as one instant has it; returns `(gen, cursor)`.
fn assert_one_instant(core: &CoreFile, t: &Target, pages: u64) -> (u64, u64) {
    let (buf, gen_at, cursor_at) = (t.blocks["buf"].0, t.blocks["gen"].0, t.blocks["cursor"].0);
    let gen = core.read_u64(gen_at).expect("g_gen");
    let cursor = core.read_u64(cursor_at).expect("g_cursor");
    assert!(gen >= 1 && cursor <= pages, "gen {gen} cursor {cursor}");
    let mut page = vec![0u8; 4096];
    for p in 0..pages {
        core.read(buf + p * 4096, &mut page).expect("page");
        let words: Vec<u64> = page
            .chunks_exact(8)
            .map(|w| u64::from_le_bytes(w.try_into().unwrap()))
            .collect();
        let new = (gen << 32) | p;
        let old = if gen == 1 { 0 } else { ((gen - 1) << 32) | p };
        if p < cursor {
            assert!(
                words.iter().all(|&w| w == new),
                "page {p} < cursor {cursor}: not gen {gen}"
            );
        } else if p > cursor {
            assert!(
                words.iter().all(|&w| w == old),
                "page {p} > cursor {cursor}: not gen {}",
                gen - 1
            );
        } else {
            let split = words.iter().position(|&w| w != new).unwrap_or(512);
            assert!(
                words[split..].iter().all(|&w| w == old),
                "page {p} at the cursor: not new words then old"
            );
        }
    }
    (gen, cursor)
}

/// The target is left as it was: no userfaultfd descriptor, no write-protected mapping.
fn assert_untouched(pid: i32) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("fd dir");
    for fd in fds.flatten() {
        let link = std::fs::read_link(fd.path()).unwrap_or_default();
        assert!(
            !link.to_string_lossy().contains("userfaultfd"),
            "a userfaultfd left in the target"
        );
    }
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("smaps");
    assert!(
        !smaps
            .lines()
            .any(|l| l.starts_with("VmFlags:") && l.split_whitespace().any(|f| f == "uw")),
        "a mapping left registered for write-protect"
    );
}

#[test]
fn precopy_under_writes_is_one_instant_and_gdb_reads_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = compile(dir.path(), "g++", "sweeper.cpp", "sweeper", CXX_SWEEPER);
    let mib = 64u64;
    let child = Command::new(&exe)
        .args([mib.to_string().as_str(), "200"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the C++ target");
    let t = Target::wait_ready(child, exe.clone());
    std::thread::sleep(Duration::from_millis(300));
    let pages = mib * 256;

    let out = dir.path().join("pre.core");
    let s = capture(t.pid(), &opts(out.clone())).expect("pre-copy capture");
    let leakhunt_analyzer::capture::Method::PreCopy {
        precopied, dirty, ..
    } = &s.method
    else {
        panic!("not pre-copied: {}", s.method);
    };
    assert!(*precopied >= mib << 20, "{}", s.method);
    // The writer kept writing: some pages were copied again at the stop.
    assert!(*dirty > 0, "{}", s.method);
    let core = CoreFile::open(&out, None).expect("open");
    let (gen, cursor) = assert_one_instant(&core, &t, pages);
    let note = core.leakhunt_note().expect("our note");
    assert_eq!(note.method.as_ref(), Some(&s.method));
    assert_untouched(t.pid());
    assert_running(&t);

    // gdb reads the same instant through the symbols.
    let gdb = Command::new("gdb")
        .args([
            "-batch",
            "-nx",
            "-ex",
            "print g_gen._M_i",
            "-ex",
            "print g_cursor._M_i",
        ])
        .arg(&exe)
        .arg(&out)
        .output()
        .expect("gdb");
    let text = String::from_utf8_lossy(&gdb.stdout);
    assert!(
        text.contains(&format!("$1 = {gen}")) && text.contains(&format!("$2 = {cursor}")),
        "gdb: {text}"
    );

    // The same check holds for a core taken the old way: the check itself is sound.
    let old = dir.path().join("stw.core");
    let s = capture(
        t.pid(),
        &CaptureOptions {
            stop_the_world: true,
            ..opts(old.clone())
        },
    )
    .expect("stop-the-world capture");
    assert_eq!(
        s.method,
        leakhunt_analyzer::capture::Method::StopTheWorld { why: None }
    );
    assert_one_instant(&CoreFile::open(&old, None).expect("open"), &t, pages);
}

#[test]
fn a_tracker_the_kernel_lacks_falls_back_and_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = Target::c(dir.path(), 8);
    let out = dir.path().join("sd.core");
    let s = capture(
        t.pid(),
        &CaptureOptions {
            tracker: leakhunt_analyzer::capture::TrackerChoice::SoftDirty,
            ..opts(out.clone())
        },
    )
    .expect("capture");
    // Pre-copied on a kernel with soft-dirty bits, else captured the old way, saying why.
    match &s.method {
        leakhunt_analyzer::capture::Method::StopTheWorld { why: Some(why) } => {
            assert!(why.contains("soft-dirty"), "{why}")
        }
        leakhunt_analyzer::capture::Method::PreCopy { tracker, .. } => {
            assert_eq!(tracker, "soft-dirty")
        }
        m => panic!("{m}"),
    }
    let core = CoreFile::open(&out, None).expect("open");
    assert_blocks(&core, &t.blocks);
    assert_eq!(
        core.leakhunt_note().and_then(|n| n.method.clone()),
        Some(s.method.clone())
    );
    assert_running(&t);
}

/// A parent and a child sharing 8 MiB (`MAP_SHARED`): the child stamps every page with the number
/// of its sweep, a sweep a millisecond, through its own page tables, where no tracker of the
/// parent sees it. The parent also holds 256 MiB of its own, so that copying it while it runs takes
/// long enough for a copy of the shared pages taken then to be hundreds of sweeps old at the stop.
const C_SHARED: &str = r#"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
int main(void) {
    char *own = malloc(256 << 20);
    memset(own, 7, 256 << 20);
    size_t pages = 2048;
    volatile uint64_t *m = mmap(NULL, pages * 4096, PROT_READ | PROT_WRITE,
                                MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    for (size_t p = 0; p < pages; p++) m[p * 512] = 1;
    if (fork() == 0) {
        for (uint64_t sweep = 2;; sweep++) {
            for (size_t p = 0; p < pages; p++) m[p * 512] = sweep;
            usleep(1000);
        }
    }
    printf("shared %p 0 0\nready\n", (void *)m);
    fflush(stdout);
    for (;;) pause();
}
"#;

#[test]
fn shared_memory_another_process_writes_is_read_at_the_stop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = compile(dir.path(), "gcc", "shared.c", "shared", C_SHARED);
    let child = Command::new(&exe)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start");
    let t = Target::wait_ready(child, exe);
    // Kill the writer (the parent's child) with the test, whatever happens.
    struct Reap(i32);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = Command::new("pkill")
                .args(["-KILL", "-P", &self.0.to_string()])
                .status();
        }
    }
    let _reap = Reap(t.pid());
    std::thread::sleep(Duration::from_millis(200));
    let out = dir.path().join("shared.core");
    let s = capture(t.pid(), &opts(out.clone())).expect("capture");
    let core = CoreFile::open(&out, None).expect("open");
    let at = t.blocks["shared"].0;
    let sweeps: Vec<u64> = (0..2048)
        .map(|p| core.read_u64(at + p * 4096).expect("page"))
        .collect();
    let (lo, hi) = (sweeps.iter().min().unwrap(), sweeps.iter().max().unwrap());
    // Read at the stop, the pages are a few sweeps apart at most (the child runs on while they are
    // read); a copy from before the stop would be hundreds behind.
    assert!(hi - lo <= 30, "sweeps {lo}..{hi} ({})", s.method);
}
