//! Shared helpers for the integration tests: build test programs, drive them, take snapshots
//! with gcore, the kernel and our own capture.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// Compile `tests/programs/NAME` (C or C++) into `dir`.
pub fn compile(name: &str, dir: &Path) -> PathBuf {
    let src =
        std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo"))
            .join("tests/programs")
            .join(name);
    let out = dir.join(name.rsplit_once('.').map(|(b, _)| b).unwrap_or(name));
    let cc = if name.ends_with(".cpp") { "g++" } else { "gcc" };
    let status = Command::new(cc)
        .args(["-O1", "-g0", "-pthread", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .unwrap_or_else(|e| panic!("{cc} is needed to build test programs: {e}"));
    assert!(status.success(), "{cc} failed on {}", src.display());
    out
}

/// A running test program speaking the "command line → ok" protocol.
pub struct Workload {
    pub child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Workload {
    pub fn start(cmd: &mut Command) -> Workload {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start workload");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut w = Workload {
            child,
            stdin,
            stdout,
        };
        let line = w.read_line();
        assert!(
            line.starts_with("ready"),
            "workload said {line:?} instead of ready"
        );
        w
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn read_line(&mut self) -> String {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("read workload output");
        line.trim_end().to_owned()
    }

    /// Send a command without waiting for its reply (read it with `read_line`).
    pub fn send_nowait(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").expect("write to workload");
        self.stdin.flush().expect("flush");
    }

    /// Send a command and wait for its "ok"; returns the reply.
    pub fn send(&mut self, cmd: &str) -> String {
        writeln!(self.stdin, "{cmd}").expect("write to workload");
        self.stdin.flush().expect("flush");
        let reply = self.read_line();
        assert!(
            reply.starts_with("ok"),
            "workload answered {reply:?} to {cmd:?}"
        );
        reply
    }
}

impl Drop for Workload {
    /// SIGTERM first, so that a JVM exits in order and removes its attach socket from /tmp.
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Snapshot a live process with gdb's gcore; returns the core path.
pub fn gcore(pid: i32, dir: &Path, name: &str) -> PathBuf {
    let prefix = dir.join(name);
    let out = Command::new("gcore")
        .arg("-o")
        .arg(&prefix)
        .arg(pid.to_string())
        .output()
        .expect("gcore (from gdb) is needed");
    assert!(
        out.status.success(),
        "gcore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = PathBuf::from(format!("{}.{pid}", prefix.display()));
    assert!(path.exists(), "gcore wrote no {}", path.display());
    path
}

/// Path of the analyzer binary built for these tests.
pub fn analyzer_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_leakhunt-analyzer"))
}

/// Run the analyzer CLI; returns (exit code, stdout, stderr).
pub fn run_analyzer(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(analyzer_bin())
        .args(args)
        .output()
        .expect("run analyzer");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Snapshot a live process with our own capture; returns the core path.
pub fn capture(pid: i32, dir: &Path, name: &str) -> PathBuf {
    let output = dir.join(format!("{name}.core"));
    let opts = leakhunt_analyzer::capture::CaptureOptions {
        output: output.clone(),
        compress: false,
        overwrite: false,
        max_bytes: None,
        ..Default::default()
    };
    leakhunt_analyzer::capture::capture(pid, &opts).expect("capture");
    output
}

/// Drops every capability of the calling thread but `CAP_SYS_PTRACE`, as the node agent runs
/// (capabilities are per thread: the rest of the test keeps its own).
pub fn only_sys_ptrace() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    const SYS_PTRACE: u32 = 1 << 19;
    let header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    data[0].effective = SYS_PTRACE;
    data[0].permitted = SYS_PTRACE;
    // SAFETY: capset reads a header and two data words of the layout above, for this thread.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    assert_eq!(rc, 0, "capset: {}", std::io::Error::last_os_error());
    let caps = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    let eff = caps.lines().find(|l| l.starts_with("CapEff:")).unwrap();
    assert!(eff.ends_with("0000000000080000"), "{eff}");
}
