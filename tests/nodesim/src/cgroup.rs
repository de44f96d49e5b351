//! Memory cgroups laid out as the kubelet's cgroupfs driver does:
//! `ROOT/kubepods/pod<uid>/<container-id>` for Guaranteed pods and
//! `ROOT/kubepods/{burstable,besteffort}/pod<uid>/<container-id>` for the other QoS classes.
//!
//! Both hierarchies are supported: cgroup v1 (a `memory` controller mount; limit in
//! `memory.limit_in_bytes`, OOM kills counted in `memory.oom_control`) and cgroup v2 (the unified mount;
//! limit in `memory.max`, OOM kills counted in `memory.events`). Which one applies is decided by what the
//! root directory looks like, so the same code runs on either kind of host.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("cgroup {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{0} is neither in a cgroup v1 memory hierarchy nor in a cgroup v2 hierarchy with the memory controller"
    )]
    NoMemoryController(PathBuf),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hierarchy {
    V1,
    V2,
}

/// The QoS class directory a pod's cgroup sits in (`status.qosClass`).
pub fn qos_dir(qos_class: Option<&str>) -> Option<&'static str> {
    match qos_class {
        Some("Guaranteed") => None,
        Some("BestEffort") => Some("besteffort"),
        _ => Some("burstable"),
    }
}

/// One memory cgroup directory.
#[derive(Debug, Clone)]
pub struct CgroupMemory {
    pub path: PathBuf,
    pub hierarchy: Hierarchy,
}

impl CgroupMemory {
    /// Opens (creating if needed) the node's cgroup root and works out which hierarchy it is in.
    pub fn root(path: &Path) -> Result<Self> {
        fs::create_dir_all(path).map_err(io_err(path))?;
        let hierarchy = if path.join("memory.limit_in_bytes").exists() {
            Hierarchy::V1
        } else if path.join("cgroup.controllers").exists() {
            Hierarchy::V2
        } else {
            return Err(Error::NoMemoryController(path.to_path_buf()));
        };
        let root = Self {
            path: path.to_path_buf(),
            hierarchy,
        };
        if hierarchy == Hierarchy::V2 {
            // Children only get memory.* files when the parent delegates the controller; the parent of the
            // root must delegate it to the root too.
            if let Some(parent) = path.parent() {
                let _ = fs::write(parent.join("cgroup.subtree_control"), "+memory");
            }
            if !path.join("memory.max").exists() {
                return Err(Error::NoMemoryController(path.to_path_buf()));
            }
        } else {
            // Hierarchical accounting is what makes a pod-level limit cover its containers. Always on in
            // recent kernels; the write fails harmlessly where it is fixed.
            let _ = fs::write(path.join("memory.use_hierarchy"), "1");
        }
        Ok(root)
    }

    /// Creates (or reuses) a child cgroup.
    pub fn child(&self, name: &str) -> Result<Self> {
        let path = self.path.join(name);
        if self.hierarchy == Hierarchy::V2 {
            let _ = fs::write(self.path.join("cgroup.subtree_control"), "+memory");
        }
        match fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
        Ok(Self {
            path,
            hierarchy: self.hierarchy,
        })
    }

    /// Sets the memory limit in bytes; `None` means unlimited.
    pub fn set_limit(&self, bytes: Option<i64>) -> Result<()> {
        let (file, value) = match (self.hierarchy, bytes) {
            (Hierarchy::V1, Some(b)) => ("memory.limit_in_bytes", b.to_string()),
            (Hierarchy::V1, None) => ("memory.limit_in_bytes", "-1".to_string()),
            (Hierarchy::V2, Some(b)) => ("memory.max", b.to_string()),
            (Hierarchy::V2, None) => ("memory.max", "max".to_string()),
        };
        let path = self.path.join(file);
        fs::write(&path, value).map_err(io_err(&path))?;
        if self.hierarchy == Hierarchy::V1 {
            // Without swap accounting limits the swap too, so the limit is a hard one as in a cluster.
            let _ = fs::write(
                self.path.join("memory.memsw.limit_in_bytes"),
                bytes.map_or("-1".to_string(), |b| b.to_string()),
            );
        }
        Ok(())
    }

    /// The file a process writes `0` to in order to move itself into this cgroup.
    pub fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// How many times the kernel's OOM killer has killed a process in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let file = match self.hierarchy {
            Hierarchy::V1 => "memory.oom_control",
            Hierarchy::V2 => "memory.events",
        };
        fs::read_to_string(self.path.join(file))
            .ok()
            .and_then(|text| parse_counter(&text, "oom_kill"))
            .unwrap_or(0)
    }

    /// Kills every process left in this cgroup and its children, then removes the directories.
    pub async fn destroy(&self) {
        destroy_tree(&self.path).await;
    }
}

/// Reads `key N` from a flat-keyed cgroup file.
pub fn parse_counter(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next() == Some(key))
            .then(|| words.next())
            .flatten()
            .and_then(|n| n.parse().ok())
    })
}

/// Depth-first: SIGKILL whatever is inside, wait for the cgroup to empty, rmdir.
pub async fn destroy_tree(path: &Path) {
    let Ok(entries) = fs::read_dir(path) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            Box::pin(destroy_tree(&entry.path())).await;
        }
    }
    for _ in 0..50 {
        let pids: Vec<i32> = fs::read_to_string(path.join("cgroup.procs"))
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default();
        for pid in &pids {
            // SAFETY-free: plain syscall wrapper; a stale pid just yields ESRCH.
            unsafe_kill(*pid, libc::SIGKILL);
        }
        if fs::remove_dir(path).is_ok() || !path.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tracing::warn!(path = %path.display(), "could not remove cgroup");
}

#[allow(unsafe_code)]
pub fn unsafe_kill(pid: i32, signal: i32) {
    if pid > 0 {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_oom_kill_counters() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(parse_counter(v1, "oom_kill"), Some(3));
        let v2 = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(parse_counter(v2, "oom_kill"), Some(2));
        assert_eq!(parse_counter("oom_kill_disable 0\n", "oom_kill"), None);
    }

    #[test]
    fn qos_layout_matches_kubelet() {
        assert_eq!(qos_dir(Some("Guaranteed")), None);
        assert_eq!(qos_dir(Some("Burstable")), Some("burstable"));
        assert_eq!(qos_dir(Some("BestEffort")), Some("besteffort"));
    }
}
