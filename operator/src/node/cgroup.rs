//! Memory cgroups, v2 (unified) and v1 (memory controller), detected at run time under a
//! configurable root (a node's `/sys/fs/cgroup`, a test's own tree).
//!
//! Reading is split in two: pure parsers over file contents (tested on recorded files from both
//! versions) and thin file access around them.

use std::fs;
use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// cgroup v1 reports "no limit" as a page-aligned `i64::MAX`; anything this large is unlimited.
const V1_UNLIMITED: u64 = 1 << 62;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no memory cgroup controller under {root}: {detail}")]
    ControllerMissing { root: PathBuf, detail: String },
    #[error("no permission to {action} {path} (run as root, or point --cgroup-root at a delegated, writable tree)")]
    Permission {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("malformed {file}: {detail}")]
    Malformed { file: PathBuf, detail: String },
    #[error("process {pid} has no memory cgroup in /proc/{pid}/cgroup")]
    NoCgroupForProcess { pid: i32 },
    #[error("cgroup {path} still has processes after SIGKILL: {pids:?}")]
    NotEmpty { path: PathBuf, pids: Vec<i32> },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_error(action: &'static str, path: &Path, source: io::Error) -> Error {
    let path = path.to_path_buf();
    match source.kind() {
        ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem => Error::Permission {
            action,
            path,
            source,
        },
        _ if source.raw_os_error() == Some(libc::EPERM) => Error::Permission {
            action,
            path,
            source,
        },
        _ => Error::Io {
            action,
            path,
            source,
        },
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

impl std::fmt::Display for CgroupVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CgroupVersion::V1 => "v1",
            CgroupVersion::V2 => "v2",
        })
    }
}

/// The root of the hierarchy that carries the memory controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub version: CgroupVersion,
    /// `<root>` for v2, `<root>/memory` for v1.
    pub path: PathBuf,
}

impl Hierarchy {
    /// Finds the memory hierarchy under `root`: a v2 tree whose `cgroup.controllers` lists
    /// `memory`, a v1 `memory/` mount, `root` itself being a v1 memory mount, or a hybrid
    /// layout's `unified/`.
    pub fn detect(root: &Path) -> Result<Hierarchy> {
        let mut notes = Vec::new();
        for candidate in [root.to_path_buf(), root.join("unified")] {
            let controllers = candidate.join("cgroup.controllers");
            match fs::read_to_string(&controllers) {
                Ok(text) if text.split_whitespace().any(|c| c == "memory") => {
                    return Ok(Hierarchy {
                        version: CgroupVersion::V2,
                        path: candidate,
                    })
                }
                Ok(_) => notes.push(format!(
                    "{} (v2) does not list the memory controller",
                    controllers.display()
                )),
                Err(_) => {}
            }
        }
        for candidate in [root.join("memory"), root.to_path_buf()] {
            if candidate.join("memory.usage_in_bytes").is_file() {
                return Ok(Hierarchy {
                    version: CgroupVersion::V1,
                    path: candidate,
                });
            }
        }
        if notes.is_empty() {
            notes.push("neither a v2 cgroup.controllers nor a v1 memory/ hierarchy found".into());
        }
        Err(Error::ControllerMissing {
            root: root.to_path_buf(),
            detail: notes.join("; "),
        })
    }

    /// The cgroup at `relative` (a path as in `/proc/PID/cgroup`, leading `/` allowed).
    pub fn cgroup(&self, relative: &str) -> Cgroup {
        let rel = relative.trim_start_matches('/');
        Cgroup {
            version: self.version,
            dir: if rel.is_empty() {
                self.path.clone()
            } else {
                self.path.join(rel)
            },
            relative: format!("/{rel}"),
        }
    }

    /// The memory cgroup of a process, from `<proc_root>/PID/cgroup`.
    pub fn cgroup_of(&self, proc_root: &Path, pid: i32) -> Result<Cgroup> {
        let file = proc_root.join(pid.to_string()).join("cgroup");
        let text = fs::read_to_string(&file).map_err(|e| io_error("read", &file, e))?;
        let rel =
            memory_cgroup_path(&text, self.version).ok_or(Error::NoCgroupForProcess { pid })?;
        Ok(self.cgroup(&rel))
    }

    /// Creates a child cgroup at `relative` (and its parents). On v2 the memory controller is
    /// enabled in each parent's `cgroup.subtree_control` first.
    pub fn create(&self, relative: &str) -> Result<Cgroup> {
        let cg = self.cgroup(relative);
        if self.version == CgroupVersion::V2 {
            let mut dir = self.path.clone();
            for part in relative.trim_matches('/').split('/') {
                enable_memory_controller(&dir)?;
                dir = dir.join(part);
                if !dir.exists() {
                    fs::create_dir(&dir).map_err(|e| io_error("create cgroup", &dir, e))?;
                }
            }
        } else {
            fs::create_dir_all(&cg.dir).map_err(|e| io_error("create cgroup", &cg.dir, e))?;
        }
        Ok(cg)
    }
}

fn enable_memory_controller(dir: &Path) -> Result<()> {
    let control = dir.join("cgroup.subtree_control");
    let current = fs::read_to_string(&control).map_err(|e| io_error("read", &control, e))?;
    if current.split_whitespace().any(|c| c == "memory") {
        return Ok(());
    }
    fs::write(&control, "+memory")
        .map_err(|e| io_error("enable the memory controller in", &control, e))
}

/// The memory cgroup path in the contents of `/proc/PID/cgroup`: v2's `0::/path`, or the v1 line
/// whose controller list holds `memory`.
pub fn memory_cgroup_path(proc_cgroup: &str, version: CgroupVersion) -> Option<String> {
    proc_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let id = parts.next()?;
        let controllers = parts.next()?;
        let path = parts.next()?;
        let matches = match version {
            CgroupVersion::V2 => id == "0" && controllers.is_empty(),
            CgroupVersion::V1 => controllers.split(',').any(|c| c == "memory"),
        };
        matches.then(|| path.to_string())
    })
}

/// One reading of a cgroup's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CgroupMemory {
    /// Bytes charged to the cgroup (v2 `memory.current`, v1 `memory.usage_in_bytes`).
    pub usage: u64,
    /// The hard limit; `None` when unlimited.
    pub limit: Option<u64>,
    /// Inactive page cache (v2 `inactive_file`, v1 `total_inactive_file`): reclaimable, so the
    /// kubelet leaves it out of the working set.
    pub inactive_file: u64,
    /// OOM kills in this cgroup since it was created (v2 `memory.events` `oom_kill`, v1
    /// `memory.oom_control` `oom_kill`).
    pub oom_kills: u64,
}

impl CgroupMemory {
    /// Working set as the kubelet computes it: usage minus inactive file, floored at zero.
    pub fn working_set(&self) -> u64 {
        self.usage.saturating_sub(self.inactive_file)
    }

    /// Working set as a fraction of the limit, when there is one.
    pub fn fraction_of_limit(&self) -> Option<f64> {
        self.limit
            .filter(|l| *l > 0)
            .map(|l| self.working_set() as f64 / l as f64)
    }

    /// Parses the four v2 files' contents.
    pub fn parse_v2(
        current: &str,
        max: &str,
        stat: &str,
        events: &str,
    ) -> Result<CgroupMemory, String> {
        Ok(CgroupMemory {
            usage: parse_u64(current).ok_or("memory.current is not a number")?,
            limit: match max.trim() {
                "max" => None,
                other => Some(parse_u64(other).ok_or("memory.max is neither a number nor max")?),
            },
            inactive_file: flat_keyed(stat, "inactive_file").unwrap_or(0),
            oom_kills: flat_keyed(events, "oom_kill").unwrap_or(0),
        })
    }

    /// Parses the four v1 files' contents.
    pub fn parse_v1(
        usage: &str,
        limit: &str,
        stat: &str,
        oom_control: &str,
    ) -> Result<CgroupMemory, String> {
        let limit = parse_u64(limit).ok_or("memory.limit_in_bytes is not a number")?;
        Ok(CgroupMemory {
            usage: parse_u64(usage).ok_or("memory.usage_in_bytes is not a number")?,
            limit: (limit < V1_UNLIMITED).then_some(limit),
            // `total_` counts the hierarchy below too, which is what usage_in_bytes charges.
            inactive_file: flat_keyed(stat, "total_inactive_file")
                .or_else(|| flat_keyed(stat, "inactive_file"))
                .unwrap_or(0),
            oom_kills: flat_keyed(oom_control, "oom_kill").unwrap_or(0),
        })
    }
}

fn parse_u64(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// The value of `key` in a flat-keyed file (`key value` per line: `memory.stat`, `memory.events`).
pub fn flat_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut it = line.split_whitespace();
        (it.next()? == key).then(|| it.next()?.parse().ok())?
    })
}

/// One memory cgroup directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    pub version: CgroupVersion,
    pub dir: PathBuf,
    /// The path as the kernel names it (`/proc/PID/cgroup`, the OOM report's `task_memcg`).
    pub relative: String,
}

impl Cgroup {
    fn read(&self, name: &str) -> Result<String> {
        let path = self.dir.join(name);
        fs::read_to_string(&path).map_err(|e| io_error("read", &path, e))
    }

    fn write(&self, name: &str, value: &str) -> Result<()> {
        let path = self.dir.join(name);
        fs::write(&path, value).map_err(|e| io_error("write", &path, e))
    }

    pub fn exists(&self) -> bool {
        self.dir.is_dir()
    }

    pub fn read_memory(&self) -> Result<CgroupMemory> {
        let parsed = match self.version {
            CgroupVersion::V2 => CgroupMemory::parse_v2(
                &self.read("memory.current")?,
                &self.read("memory.max")?,
                &self.read("memory.stat")?,
                &self.read("memory.events")?,
            ),
            CgroupVersion::V1 => CgroupMemory::parse_v1(
                &self.read("memory.usage_in_bytes")?,
                &self.read("memory.limit_in_bytes")?,
                &self.read("memory.stat")?,
                &self.read("memory.oom_control")?,
            ),
        };
        parsed.map_err(|detail| Error::Malformed {
            file: self.dir.clone(),
            detail,
        })
    }

    /// Sets the hard memory limit.
    pub fn set_limit(&self, bytes: u64) -> Result<()> {
        match self.version {
            CgroupVersion::V2 => {
                self.write("memory.max", &bytes.to_string())?;
                // Without swap accounting a v2 child could swap instead of being OOM-killed.
                let _ = self.write("memory.swap.max", "0");
                Ok(())
            }
            CgroupVersion::V1 => self.write("memory.limit_in_bytes", &bytes.to_string()),
        }
    }

    /// Moves a process (all its threads) into this cgroup.
    pub fn add_process(&self, pid: i32) -> Result<()> {
        self.write("cgroup.procs", &pid.to_string())
    }

    /// The processes in this cgroup (not its children).
    pub fn procs(&self) -> Result<Vec<i32>> {
        Ok(self
            .read("cgroup.procs")?
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect())
    }

    /// SIGKILLs every process in the cgroup and in the cgroups below it, waits until they are
    /// gone, then removes the directories, deepest first.
    pub fn kill_and_remove(&self, timeout: Duration) -> Result<()> {
        if !self.exists() {
            return Ok(());
        }
        let mut dirs = Vec::new();
        collect_dirs(&self.dir, &mut dirs);
        // Deepest first so every rmdir sees an empty, childless cgroup.
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for dir in dirs {
            let cg = Cgroup {
                version: self.version,
                dir,
                relative: String::new(),
            };
            cg.kill_all(timeout)?;
            let deadline = Instant::now() + timeout;
            loop {
                match fs::remove_dir(&cg.dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == ErrorKind::NotFound => break,
                    // EBUSY while the kernel finishes tearing down exited tasks.
                    Err(e) if Instant::now() < deadline => {
                        let _ = e;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => return Err(io_error("remove cgroup", &cg.dir, e)),
                }
            }
        }
        Ok(())
    }

    fn kill_all(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let pids = match self.procs() {
                Ok(p) => p,
                Err(_) if !self.exists() => return Ok(()),
                Err(e) => return Err(e),
            };
            if pids.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::NotEmpty {
                    path: self.dir.clone(),
                    pids,
                });
            }
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect_dirs(&entry.path(), out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Recorded from a v2 kubepods container (kernel 6.x) and trimmed.
    const V2_STAT: &str = "anon 93265920\nfile 20971520\nkernel 1597440\nsock 0\nshmem 0\n\
file_mapped 4096000\nactive_anon 93184000\ninactive_anon 0\nactive_file 8388608\n\
inactive_file 12582912\nunevictable 0\n";
    const V2_EVENTS: &str = "low 0\nhigh 0\nmax 41\noom 3\noom_kill 2\noom_group_kill 0\n";

    // Recorded from this machine's v1 memory controller.
    const V1_STAT: &str = "cache 704512\nrss 1703936\ninactive_file 458752\nactive_file 245760\n\
hierarchical_memory_limit 9223372036854771712\ntotal_cache 704512\ntotal_rss 1703936\n\
total_inactive_file 507904\ntotal_active_file 245760\n";
    const V1_OOM: &str = "oom_kill_disable 0\nunder_oom 0\noom_kill 4\n";

    #[test]
    fn parses_v2() {
        let m = CgroupMemory::parse_v2("115343360\n", "167772160\n", V2_STAT, V2_EVENTS).unwrap();
        assert_eq!(m.usage, 115343360);
        assert_eq!(m.limit, Some(167772160));
        assert_eq!(m.inactive_file, 12582912);
        assert_eq!(m.working_set(), 115343360 - 12582912);
        assert_eq!(m.oom_kills, 2);
        let unlimited = CgroupMemory::parse_v2("1\n", "max\n", "", "").unwrap();
        assert_eq!(unlimited.limit, None);
        assert_eq!(unlimited.fraction_of_limit(), None);
        assert!(CgroupMemory::parse_v2("x", "max", "", "").is_err());
        assert!(CgroupMemory::parse_v2("1", "lots", "", "").is_err());
    }

    #[test]
    fn parses_v1_with_hierarchical_inactive_file() {
        let m = CgroupMemory::parse_v1("3690496\n", "167772160\n", V1_STAT, V1_OOM).unwrap();
        assert_eq!(m.inactive_file, 507904, "total_ (hierarchical) value wins");
        assert_eq!(m.oom_kills, 4);
        assert_eq!(m.limit, Some(167772160));
        let unlimited = CgroupMemory::parse_v1("1", "9223372036854771712", "", V1_OOM).unwrap();
        assert_eq!(unlimited.limit, None);
    }

    #[test]
    fn working_set_never_negative() {
        let m = CgroupMemory {
            usage: 10,
            inactive_file: 20,
            ..Default::default()
        };
        assert_eq!(m.working_set(), 0);
    }

    #[test]
    fn finds_memory_cgroup_in_proc_cgroup() {
        let v1 = "9:name=systemd:/\n4:memory:/process_api/031f\n3:cpuset:/\n0::/\n";
        assert_eq!(
            memory_cgroup_path(v1, CgroupVersion::V1).as_deref(),
            Some("/process_api/031f")
        );
        let v1_joined = "5:cpu,memory:/kubepods/pod1\n";
        assert_eq!(
            memory_cgroup_path(v1_joined, CgroupVersion::V1).as_deref(),
            Some("/kubepods/pod1")
        );
        let v2 = "0::/kubepods.slice/x.scope\n";
        assert_eq!(
            memory_cgroup_path(v2, CgroupVersion::V2).as_deref(),
            Some("/kubepods.slice/x.scope")
        );
        assert_eq!(memory_cgroup_path("4:cpu:/a\n", CgroupVersion::V1), None);
    }

    #[test]
    fn detects_recorded_layouts() {
        let tmp = tempfile::tempdir().unwrap();
        let v2 = tmp.path().join("v2");
        fs::create_dir_all(&v2).unwrap();
        fs::write(v2.join("cgroup.controllers"), "cpuset cpu io memory pids\n").unwrap();
        assert_eq!(Hierarchy::detect(&v2).unwrap().version, CgroupVersion::V2);

        let hybrid = tmp.path().join("hybrid");
        fs::create_dir_all(hybrid.join("unified")).unwrap();
        fs::create_dir_all(hybrid.join("memory")).unwrap();
        fs::write(hybrid.join("unified/cgroup.controllers"), "hugetlb\n").unwrap();
        fs::write(hybrid.join("memory/memory.usage_in_bytes"), "0\n").unwrap();
        let h = Hierarchy::detect(&hybrid).unwrap();
        assert_eq!(
            (h.version, h.path),
            (CgroupVersion::V1, hybrid.join("memory"))
        );

        let none = tmp.path().join("none");
        fs::create_dir_all(none.join("unified")).unwrap();
        fs::write(none.join("unified/cgroup.controllers"), "hugetlb\n").unwrap();
        let err = Hierarchy::detect(&none).unwrap_err().to_string();
        assert!(err.contains("does not list the memory controller"), "{err}");
    }

    #[test]
    fn reads_v2_files_from_a_recorded_tree() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("cgroup.controllers"), "memory pids\n").unwrap();
        let h = Hierarchy::detect(tmp.path()).unwrap();
        let cg = h.cgroup("/kubepods.slice/a.scope");
        fs::create_dir_all(&cg.dir).unwrap();
        for (name, text) in [
            ("memory.current", "115343360\n"),
            ("memory.max", "167772160\n"),
            ("memory.stat", V2_STAT),
            ("memory.events", V2_EVENTS),
            ("cgroup.procs", "12\n34\n"),
        ] {
            fs::write(cg.dir.join(name), text).unwrap();
        }
        let m = cg.read_memory().unwrap();
        assert_eq!((m.working_set(), m.oom_kills), (115343360 - 12582912, 2));
        assert_eq!(cg.procs().unwrap(), vec![12, 34]);
    }

    /// The real v1 controller of this machine, where there is one.
    #[test]
    fn reads_real_v1_root_when_present() {
        let Ok(h) = Hierarchy::detect(Path::new("/sys/fs/cgroup")) else {
            return;
        };
        let cg = h.cgroup("/");
        let m = cg.read_memory().unwrap();
        assert!(m.usage > 0);
        assert!(!cg.procs().unwrap_or_default().is_empty() || h.version == CgroupVersion::V2);
    }
}
