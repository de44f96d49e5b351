//! How much memory our own cgroup has left, on cgroup v1 or v2: the capture's buffers must fit in
//! it. The node agent runs under a memory limit, and a capture that buffers more than the limit
//! allows is OOM-killed halfway (on a cgroup v1 node it once buffered up to 1 GiB under 512 MiB).

use std::path::{Path, PathBuf};

/// Limits at or above this are "no limit" (cgroup v1 writes `PAGE_COUNTER_MAX` pages as bytes).
const UNLIMITED: u64 = 1 << 60;

/// The least `limit - usage` of our memory cgroup and its ancestors that have a limit; `None`
/// when none has one or the cgroup cannot be read.
pub(crate) fn memory_left() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    left_in(&own, Path::new("/sys/fs/cgroup"))
}

/// [`memory_left`] for a `/proc/self/cgroup` text and a cgroup filesystem mounted at `root`.
fn left_in(own: &str, root: &Path) -> Option<u64> {
    let (mount, path, files) = match memory_line_v1(own) {
        // Hybrid hosts have a `0::` line too, but memory is accounted where its controller is.
        Some(path) => (
            root.join("memory"),
            path,
            ("memory.limit_in_bytes", "memory.usage_in_bytes"),
        ),
        None => (
            root.to_path_buf(),
            own.lines().find_map(|l| l.strip_prefix("0::"))?,
            ("memory.max", "memory.current"),
        ),
    };
    let mut dir = own_dir(&mount, path);
    let mut left: Option<u64> = None;
    loop {
        if let Some(l) = dir_left(&dir, files) {
            left = Some(left.map_or(l, |m| m.min(l)));
        }
        if dir == mount || !dir.pop() || !dir.starts_with(&mount) {
            return left;
        }
    }
}

/// The path of the v1 hierarchy that has the memory controller (`4:memory:/kubepods/…`).
fn memory_line_v1(own: &str) -> Option<&str> {
    own.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == "memory")
            .then_some(path)
    })
}

/// Our cgroup's directory. In a container without a cgroup namespace `/proc/self/cgroup` names
/// the host's path while the runtime mounts our own cgroup at the root: then the root is ours.
fn own_dir(mount: &Path, path: &str) -> PathBuf {
    let dir = mount.join(path.trim_start_matches('/'));
    if dir.is_dir() {
        dir
    } else {
        mount.to_path_buf()
    }
}

/// `limit - working set`, the working set as the kubelet counts it: usage less the inactive page
/// cache, which the kernel reclaims before it OOM-kills (the snapshot just written is mostly that).
fn dir_left(dir: &Path, (limit, usage): (&str, &str)) -> Option<u64> {
    let read = |f: &str| -> Option<u64> {
        std::fs::read_to_string(dir.join(f))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    // v2 writes "max" for no limit, which does not parse.
    let limit = read(limit).filter(|&l| l < UNLIMITED)?;
    let stat = std::fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
    let stat_of = |key: &str| {
        stat.lines().find_map(|l| {
            l.strip_prefix(key)?
                .strip_prefix(' ')?
                .trim()
                .parse::<u64>()
                .ok()
        })
    };
    // v1 counts the hierarchy under `total_` (its plain counters are this cgroup's alone); v2's
    // counters are hierarchical.
    let inactive = stat_of("total_inactive_file")
        .or_else(|| stat_of("inactive_file"))
        .unwrap_or(0);
    let working_set = read(usage)?.saturating_sub(inactive);
    Some(limit.saturating_sub(working_set))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, files: &[(&str, &str)]) {
        std::fs::create_dir_all(dir).unwrap();
        for (f, v) in files {
            std::fs::write(dir.join(f), v).unwrap();
        }
    }

    #[test]
    fn v2_takes_the_tightest_ancestor() {
        let t = tempfile::tempdir().unwrap();
        let pod = t.path().join("kubepods.slice/pod1.slice");
        write(
            &pod,
            &[
                ("memory.max", "1073741824\n"),
                ("memory.current", "1000000000\n"),
            ],
        );
        let ctr = pod.join("cri-containerd-1.scope");
        write(
            &ctr,
            &[("memory.max", "max\n"), ("memory.current", "5000\n")],
        );
        let own = "0::/kubepods.slice/pod1.slice/cri-containerd-1.scope\n";
        assert_eq!(left_in(own, t.path()), Some(1073741824 - 1000000000));
        // Our own limit, when it is the tighter one.
        write(&ctr, &[("memory.max", "10000\n")]);
        assert_eq!(left_in(own, t.path()), Some(5000));
    }

    #[test]
    fn v1_reads_the_memory_hierarchy_and_ignores_the_unified_line() {
        let t = tempfile::tempdir().unwrap();
        let dir = t
            .path()
            .join("memory/leakhunt-node/kubepods/burstable/pod1/c1");
        write(
            &dir,
            &[
                ("memory.limit_in_bytes", "536870912\n"),
                ("memory.usage_in_bytes", "100000000\n"),
            ],
        );
        write(
            &t.path().join("memory"),
            &[
                ("memory.limit_in_bytes", "9223372036854771712\n"),
                ("memory.usage_in_bytes", "1\n"),
            ],
        );
        let own = "12:pids:/x\n4:cpu,memory:/leakhunt-node/kubepods/burstable/pod1/c1\n0::/x\n";
        assert_eq!(left_in(own, t.path()), Some(536870912 - 100000000));
    }

    #[test]
    fn inactive_page_cache_is_not_counted_as_used() {
        let t = tempfile::tempdir().unwrap();
        write(
            &t.path().join("memory"),
            &[
                ("memory.limit_in_bytes", "1000\n"),
                ("memory.usage_in_bytes", "900\n"),
                (
                    "memory.stat",
                    "cache 700\ninactive_file 10\ntotal_cache 700\ntotal_inactive_file 600\n",
                ),
            ],
        );
        assert_eq!(left_in("4:memory:/\n", t.path()), Some(700));
        let v2 = t.path().join("v2");
        write(
            &v2,
            &[
                ("memory.max", "1000\n"),
                ("memory.current", "900\n"),
                ("memory.stat", "anon 100\ninactive_file 500\n"),
            ],
        );
        assert_eq!(left_in("0::/\n", &v2), Some(600));
    }

    #[test]
    fn a_container_view_reads_its_own_root() {
        // The host path is not under the container's mount: the mount root is our cgroup.
        let t = tempfile::tempdir().unwrap();
        write(
            &t.path().join("memory"),
            &[
                ("memory.limit_in_bytes", "268435456\n"),
                ("memory.usage_in_bytes", "68435456\n"),
            ],
        );
        let own = "4:memory:/kubepods/burstable/pod1/c1\n";
        assert_eq!(left_in(own, t.path()), Some(200000000));
    }

    #[test]
    fn no_limit_or_nothing_readable_is_none() {
        let t = tempfile::tempdir().unwrap();
        write(
            t.path(),
            &[("memory.max", "max\n"), ("memory.current", "1\n")],
        );
        assert_eq!(left_in("0::/\n", t.path()), None);
        assert_eq!(left_in("garbage", t.path()), None);
        assert_eq!(left_in("", Path::new("/nonexistent")), None);
    }
}
