//! Per-process memory inside a cgroup: which of a master's workers grows.

use std::fs;
use std::path::Path;

/// A process identity that survives PID reuse: the PID plus its start time (clock ticks since
/// boot, `/proc/PID/stat` field 22). A respawned worker with a recycled PID is a new process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcessKey {
    pub pid: i32,
    pub start_ticks: u64,
}

/// One reading of one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessMemory {
    pub key: ProcessKey,
    pub ppid: i32,
    /// `Name:` from status (the kernel's `comm`, at most 15 bytes).
    pub comm: String,
    /// Resident set size in bytes (`VmRSS`); 0 for kernel threads and zombies.
    pub rss: u64,
}

/// Parses `/proc/PID/status` and `/proc/PID/stat` contents. `None` when either is malformed
/// (the process may have exited between the two reads).
pub fn parse_process(pid: i32, status: &str, stat: &str) -> Option<ProcessMemory> {
    let mut comm = None;
    let mut ppid = None;
    let mut rss = 0;
    for line in status.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "Name" => comm = Some(value.to_string()),
            "PPid" => ppid = value.parse().ok(),
            "VmRSS" => {
                rss = value
                    .strip_suffix("kB")
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(|kb| kb * 1024)?
            }
            _ => {}
        }
    }
    let start_ticks = leakhunt_analyzer::procfs::parse_stat(stat).start_time?;
    Some(ProcessMemory {
        key: ProcessKey { pid, start_ticks },
        ppid: ppid?,
        comm: comm?,
        rss,
    })
}

/// The PID a process has in its own PID namespace (the innermost of `NSpid:` in its status),
/// when that is not the PID it has where it is read from: a container's process seen by a node
/// agent with the host PID namespace.
pub fn parse_container_pid(status: &str) -> Option<i32> {
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    let pids: Vec<i32> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    match pids.as_slice() {
        [outer, .., inner] if outer != inner => Some(*inner),
        _ => None,
    }
}

/// [`parse_container_pid`] of a process under `proc_root`; `None` if it is gone or shares the
/// reader's PID namespace.
pub fn container_pid(proc_root: &Path, pid: i32) -> Option<i32> {
    let status = fs::read_to_string(proc_root.join(pid.to_string()).join("status")).ok()?;
    parse_container_pid(&status)
}

/// Reads one process under `proc_root` (normally `/proc`); `None` if it is gone.
pub fn read_process(proc_root: &Path, pid: i32) -> Option<ProcessMemory> {
    let dir = proc_root.join(pid.to_string());
    let status = fs::read_to_string(dir.join("status")).ok()?;
    let stat = fs::read_to_string(dir.join("stat")).ok()?;
    parse_process(pid, &status, &stat)
}

/// The command line of a process, arguments joined by spaces, for reports.
pub fn cmdline(proc_root: &Path, pid: i32) -> Option<String> {
    let raw = fs::read(proc_root.join(pid.to_string()).join("cmdline")).ok()?;
    let text: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    (!text.is_empty()).then(|| text.join(" "))
}

/// The program a process runs (its argv[0], at most 256 characters), as a report records it:
/// arguments may hold secrets (passwords, DSNs), and a report is readable by whoever may list
/// reports.
pub fn program(proc_root: &Path, pid: i32) -> Option<String> {
    let raw = fs::read(proc_root.join(pid.to_string()).join("cmdline")).ok()?;
    let first = raw.split(|b| *b == 0).next().filter(|a| !a.is_empty())?;
    Some(String::from_utf8_lossy(first).chars().take(256).collect())
}

/// Reads every listed process that still exists.
pub fn read_processes(proc_root: &Path, pids: &[i32]) -> Vec<ProcessMemory> {
    pids.iter()
        .filter_map(|pid| read_process(proc_root, *pid))
        .collect()
}

/// A process as the tests list it: parent 1, started at tick 1.
#[cfg(test)]
impl ProcessMemory {
    pub(crate) fn listed(pid: i32, comm: &str, rss: u64) -> ProcessMemory {
        ProcessMemory {
            key: ProcessKey {
                pid,
                start_ticks: 1,
            },
            ppid: 1,
            comm: comm.into(),
            rss,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_pid_is_the_innermost_namespace_pid() {
        let status =
            |nspid: &str| format!("Name:\tpython3\nPid:\t4242\nNSpid:\t{nspid}\nPPid:\t1\n");
        assert_eq!(parse_container_pid(&status("4242\t1")), Some(1));
        assert_eq!(parse_container_pid(&status("4242\t310\t7")), Some(7));
        assert_eq!(parse_container_pid(&status("4242")), None, "same namespace");
        assert_eq!(parse_container_pid(&status("4242\tx")), None);
        assert_eq!(
            parse_container_pid("Name:\tpython3\n"),
            None,
            "kernel without NSpid"
        );
        let me = std::process::id() as i32;
        assert_eq!(container_pid(Path::new("/proc"), me), None);
    }

    #[test]
    fn program_is_argv0_only() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("42");
        fs::create_dir(&dir).unwrap();
        fs::write(
            dir.join("cmdline"),
            b"/usr/bin/python3\0app.py\0--password=hunter2\0",
        )
        .unwrap();
        assert_eq!(
            program(root.path(), 42).as_deref(),
            Some("/usr/bin/python3")
        );
        assert_eq!(
            cmdline(root.path(), 42).as_deref(),
            Some("/usr/bin/python3 app.py --password=hunter2")
        );
        fs::write(dir.join("cmdline"), b"").unwrap();
        assert_eq!(program(root.path(), 42), None, "a kernel thread has none");
        assert_eq!(program(root.path(), 43), None);
    }

    const STATUS: &str =
        "Name:\tgunicorn\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4242\nPid:\t4242\n\
PPid:\t4200\nVmPeak:\t  123456 kB\nVmRSS:\t   81920 kB\nThreads:\t1\n";
    const STAT: &str = "4242 (gunicorn: worker (x)) S 4200 4200 4200 0 -1 4194560 100 0 0 0 5 1 0 0 20 0 1 0 987654 125000000 20480 18446744073709551615";

    #[test]
    fn parses_status_and_stat() {
        let p = parse_process(4242, STATUS, STAT).unwrap();
        assert_eq!(p.comm, "gunicorn");
        assert_eq!(p.ppid, 4200);
        assert_eq!(p.rss, 81920 * 1024);
        assert_eq!(
            p.key,
            ProcessKey {
                pid: 4242,
                start_ticks: 987654
            }
        );
    }

    #[test]
    fn kernel_threads_have_no_rss() {
        let status = "Name:\tkthreadd\nPPid:\t0\n";
        assert_eq!(parse_process(2, status, STAT).unwrap().rss, 0);
    }

    #[test]
    fn malformed_is_none() {
        assert_eq!(parse_process(1, STATUS, "1 (x) S 0"), None);
        assert_eq!(parse_process(1, "Name:\tx\n", STAT), None, "no PPid");
        assert_eq!(
            parse_process(1, "Name:\tx\nPPid:\t1\nVmRSS:\tlots\n", STAT),
            None
        );
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id() as i32;
        let p = read_process(Path::new("/proc"), me).unwrap();
        assert!(p.rss > 0);
        assert_eq!(p.key.pid, me);
        assert!(cmdline(Path::new("/proc"), me).is_some());
    }
}
