//! The kubelet's cgroup layouts, so the agent can go from a cgroup to (QoS class, pod UID,
//! container ID) and back.
//!
//! - cgroupfs driver: `kubepods/<qos>/pod<uid>/<container-id>`, Guaranteed pods directly under
//!   `kubepods/pod<uid>`.
//! - systemd driver: `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_with_underscores>.slice/<runtime>-<id>.scope`,
//!   Guaranteed pods as `kubepods.slice/kubepods-pod<uid>.slice`.

use std::fmt;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    /// The name in cgroup paths (`burstable`, `besteffort`); Guaranteed has none.
    fn dir_name(self) -> Option<&'static str> {
        match self {
            QosClass::Guaranteed => None,
            QosClass::Burstable => Some("burstable"),
            QosClass::BestEffort => Some("besteffort"),
        }
    }

    fn from_dir_name(name: &str) -> Option<QosClass> {
        match name {
            "burstable" => Some(QosClass::Burstable),
            "besteffort" => Some(QosClass::BestEffort),
            _ => None,
        }
    }
}

impl fmt::Display for QosClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupDriver {
    Cgroupfs,
    Systemd,
}

/// Where a pod (and, when known, one of its containers) lives in the cgroup tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodCgroup {
    pub driver: CgroupDriver,
    pub qos: QosClass,
    /// The pod UID with dashes, as in the API (`metadata.uid`).
    pub pod_uid: String,
    /// The container ID without runtime prefix (as in `containerStatuses[].containerID` after `://`).
    pub container_id: Option<String>,
    /// The systemd scope prefix (`cri-containerd`, `crio`, `docker`); `None` for cgroupfs.
    pub runtime: Option<String>,
}

impl PodCgroup {
    /// Parses any path that contains a kubelet pod cgroup (absolute, under a mount point, or as in
    /// `/proc/PID/cgroup`). Deeper components below the container are ignored.
    pub fn parse(path: &str) -> Option<PodCgroup> {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        if let Some(i) = parts.iter().position(|p| *p == "kubepods") {
            return parse_cgroupfs(parts.get(i + 1..)?);
        }
        if let Some(i) = parts.iter().position(|p| *p == "kubepods.slice") {
            return parse_systemd(parts.get(i + 1..)?);
        }
        None
    }

    /// The cgroup path relative to the hierarchy root (no leading `/`).
    pub fn path(&self) -> PathBuf {
        let mut p = PathBuf::new();
        match self.driver {
            CgroupDriver::Cgroupfs => {
                p.push("kubepods");
                if let Some(q) = self.qos.dir_name() {
                    p.push(q);
                }
                p.push(format!("pod{}", self.pod_uid));
                if let Some(id) = &self.container_id {
                    p.push(id);
                }
            }
            CgroupDriver::Systemd => {
                p.push("kubepods.slice");
                let uid = self.pod_uid.replace('-', "_");
                match self.qos.dir_name() {
                    Some(q) => {
                        p.push(format!("kubepods-{q}.slice"));
                        p.push(format!("kubepods-{q}-pod{uid}.slice"));
                    }
                    None => p.push(format!("kubepods-pod{uid}.slice")),
                }
                if let Some(id) = &self.container_id {
                    let runtime = self.runtime.as_deref().unwrap_or("cri-containerd");
                    p.push(format!("{runtime}-{id}.scope"));
                }
            }
        }
        p
    }
}

fn parse_cgroupfs(rest: &[&str]) -> Option<PodCgroup> {
    let (qos, rest) = match rest.first().and_then(|d| QosClass::from_dir_name(d)) {
        Some(q) => (q, rest.get(1..)?),
        None => (QosClass::Guaranteed, rest),
    };
    let pod_uid = rest.first()?.strip_prefix("pod")?;
    if pod_uid.is_empty() {
        return None;
    }
    Some(PodCgroup {
        driver: CgroupDriver::Cgroupfs,
        qos,
        pod_uid: pod_uid.to_string(),
        container_id: rest.get(1).filter(|c| !c.is_empty()).map(|c| c.to_string()),
        runtime: None,
    })
}

fn parse_systemd(rest: &[&str]) -> Option<PodCgroup> {
    let first = rest
        .first()?
        .strip_suffix(".slice")?
        .strip_prefix("kubepods-")?;
    let (qos, pod_slice, rest) = match QosClass::from_dir_name(first) {
        Some(q) => {
            let pod = rest.get(1)?.strip_suffix(".slice")?;
            let pod = pod
                .strip_prefix("kubepods-")?
                .strip_prefix(first)?
                .strip_prefix('-')?;
            (q, pod, rest.get(2..).unwrap_or_default())
        }
        None => (
            QosClass::Guaranteed,
            first,
            rest.get(1..).unwrap_or_default(),
        ),
    };
    let uid = pod_slice.strip_prefix("pod")?;
    if uid.is_empty() {
        return None;
    }
    let (runtime, container_id) = match rest.first().and_then(|s| s.strip_suffix(".scope")) {
        Some(scope) => {
            let (runtime, id) = scope.rsplit_once('-')?;
            (Some(runtime.to_string()), Some(id.to_string()))
        }
        None => (None, None),
    };
    Some(PodCgroup {
        driver: CgroupDriver::Systemd,
        qos,
        pod_uid: uid.replace('_', "-"),
        container_id,
        runtime,
    })
}

/// How deep below the hierarchy root `kubepods` may sit: at the top on most nodes, below the
/// kubelet's `cgroupRoot` (one or two levels) where one is set.
const ROOT_DEPTH: usize = 3;

/// The cgroups where the kubelet's pods start (`kubepods`, `kubepods.slice`) under a memory
/// hierarchy, relative to it, found by a shallow search: the top, or below a kubelet
/// `cgroupRoot` — which the agent need not be told.
pub fn pod_roots(hierarchy: &super::cgroup::Hierarchy) -> Vec<String> {
    let mut roots = Vec::new();
    let mut level = vec![String::new()];
    for _ in 0..ROOT_DEPTH {
        let mut next = Vec::new();
        for rel in level {
            let Ok(entries) = std::fs::read_dir(hierarchy.path.join(&rel)) else {
                continue;
            };
            for entry in entries.flatten() {
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                let child = if rel.is_empty() {
                    name.clone()
                } else {
                    format!("{rel}/{name}")
                };
                match name.as_str() {
                    "kubepods" | "kubepods.slice" => roots.push(child),
                    _ => next.push(child),
                }
            }
        }
        level = next;
    }
    roots.sort();
    roots
}

/// The kubelet's pod cgroups under a memory hierarchy, for the agent's sampling loop. The roots
/// are searched again now and then: the kubelet may create them after the agent starts, and a
/// search every pass would list every cgroup near the top each second.
#[derive(Debug)]
pub struct PodCgroups {
    pub hierarchy: super::cgroup::Hierarchy,
    roots: Vec<String>,
    searched: Option<std::time::Instant>,
    every: std::time::Duration,
}

impl PodCgroups {
    pub fn new(hierarchy: super::cgroup::Hierarchy, every: std::time::Duration) -> PodCgroups {
        PodCgroups {
            hierarchy,
            roots: Vec::new(),
            searched: None,
            every,
        }
    }

    /// Every container cgroup under the roots, searching for the roots first when none is known
    /// or the last search is older than `every`.
    pub fn discover(&mut self) -> Vec<(PodCgroup, super::cgroup::Cgroup)> {
        if self.roots.is_empty() || self.searched.is_none_or(|t| t.elapsed() >= self.every) {
            let roots = pod_roots(&self.hierarchy);
            if roots != self.roots || self.searched.is_none() {
                let hierarchy = self.hierarchy.path.display();
                if roots.is_empty() {
                    tracing::warn!(%hierarchy, "no kubelet pod cgroups (kubepods, kubepods.slice) under the cgroup root yet");
                } else {
                    tracing::info!(%hierarchy, ?roots, "kubelet pod cgroups found");
                }
            }
            self.roots = roots;
            self.searched = Some(std::time::Instant::now());
        }
        discover_under(&self.hierarchy, &self.roots)
    }
}

/// Every container cgroup of the kubelet's pods below `roots` (both drivers). Pod-level cgroups and
/// the pause/sandbox layout are returned only when they hold a container directory below them.
fn discover_under(
    hierarchy: &super::cgroup::Hierarchy,
    roots: &[String],
) -> Vec<(PodCgroup, super::cgroup::Cgroup)> {
    let mut found = Vec::new();
    for top in roots {
        walk(&hierarchy.path.join(top), top, 0, hierarchy, &mut found);
    }
    found.sort_by(|a, b| a.1.relative.cmp(&b.1.relative));
    found
}

fn walk(
    dir: &std::path::Path,
    relative: &str,
    depth: usize,
    hierarchy: &super::cgroup::Hierarchy,
    found: &mut Vec<(PodCgroup, super::cgroup::Cgroup)>,
) {
    // kubepods / qos / pod / container: nothing of interest lies deeper.
    if depth > 3 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            continue;
        }
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let child = format!("{relative}/{name}");
        match PodCgroup::parse(&child) {
            Some(pod) if pod.container_id.is_some() => found.push((pod, hierarchy.cgroup(&child))),
            _ => walk(&entry.path(), &child, depth + 1, hierarchy, found),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
    const CID: &str = "3b1f5f9c2e8e4a1c9d7b6a5f4e3d2c1b0a9f8e7d6c5b4a392817161514131211";

    #[test]
    fn parses_cgroupfs_layouts() {
        let p = PodCgroup::parse(&format!(
            "/sys/fs/cgroup/memory/kubepods/burstable/pod{UID}/{CID}"
        ))
        .unwrap();
        assert_eq!(p.driver, CgroupDriver::Cgroupfs);
        assert_eq!(p.qos, QosClass::Burstable);
        assert_eq!(p.pod_uid, UID);
        assert_eq!(p.container_id.as_deref(), Some(CID));

        let g = PodCgroup::parse(&format!("/kubepods/pod{UID}")).unwrap();
        assert_eq!((g.qos, g.container_id), (QosClass::Guaranteed, None));
        let be = PodCgroup::parse(&format!("kubepods/besteffort/pod{UID}/{CID}/child")).unwrap();
        assert_eq!(be.qos, QosClass::BestEffort);
        assert_eq!(be.container_id.as_deref(), Some(CID));
    }

    #[test]
    fn parses_systemd_layouts() {
        let u = UID.replace('-', "_");
        let p = PodCgroup::parse(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{CID}.scope"
        ))
        .unwrap();
        assert_eq!(p.driver, CgroupDriver::Systemd);
        assert_eq!(p.qos, QosClass::Burstable);
        assert_eq!(p.pod_uid, UID, "underscores turn back into dashes");
        assert_eq!(p.container_id.as_deref(), Some(CID));
        assert_eq!(p.runtime.as_deref(), Some("cri-containerd"));

        let g = PodCgroup::parse(&format!(
            "/kubepods.slice/kubepods-pod{u}.slice/crio-{CID}.scope"
        ))
        .unwrap();
        assert_eq!(g.qos, QosClass::Guaranteed);
        assert_eq!(g.runtime.as_deref(), Some("crio"));
        let be = PodCgroup::parse(&format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice"
        ))
        .unwrap();
        assert_eq!((be.qos, be.container_id), (QosClass::BestEffort, None));
    }

    #[test]
    fn rejects_non_pod_paths() {
        for p in [
            "/",
            "/system.slice/sshd.service",
            "/kubepods",
            "/kubepods/burstable",
            "/kubepods/burstable/notapod",
            "/kubepods.slice/kubepods-burstable.slice",
            "/kubepods.slice/kubepods-burstable.slice/kubepods-besteffort-podx.slice",
            "/kubepods.slice/kubepods-pod.slice",
        ] {
            assert_eq!(PodCgroup::parse(p), None, "{p}");
        }
    }

    #[test]
    fn build_and_parse_round_trip() {
        for driver in [CgroupDriver::Cgroupfs, CgroupDriver::Systemd] {
            for qos in [
                QosClass::Guaranteed,
                QosClass::Burstable,
                QosClass::BestEffort,
            ] {
                for container_id in [None, Some(CID.to_string())] {
                    let pod = PodCgroup {
                        driver,
                        qos,
                        pod_uid: UID.into(),
                        runtime: (driver == CgroupDriver::Systemd && container_id.is_some())
                            .then(|| "cri-containerd".to_string()),
                        container_id,
                    };
                    let path = pod.path();
                    assert_eq!(
                        PodCgroup::parse(&path.to_string_lossy()).as_ref(),
                        Some(&pod),
                        "{path:?}"
                    );
                }
            }
        }
        let p = PodCgroup {
            driver: CgroupDriver::Systemd,
            qos: QosClass::Burstable,
            pod_uid: UID.into(),
            container_id: Some(CID.into()),
            runtime: None,
        };
        assert_eq!(
            p.path().to_string_lossy(),
            format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{CID}.scope",
                UID.replace('-', "_")
            )
        );
    }

    #[test]
    fn finds_pods_below_a_kubelet_cgroup_root() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("cgroup.controllers"), "memory\n").unwrap();
        let h = crate::node::cgroup::Hierarchy::detect(tmp.path()).unwrap();
        for dir in [
            format!("node-a/kubepods/burstable/pod{UID}/{CID}"),
            format!("nodes/b/kubepods/pod{UID}/abc"),
            // Too deep to be a kubelet's.
            format!("a/b/c/kubepods/pod{UID}/deep"),
            format!("kubepods/pod{UID}/top"),
            "system.slice/sshd.service".to_string(),
        ] {
            std::fs::create_dir_all(tmp.path().join(dir)).unwrap();
        }
        assert_eq!(
            pod_roots(&h),
            ["kubepods", "node-a/kubepods", "nodes/b/kubepods"]
        );
        let mut pods = PodCgroups::new(h, std::time::Duration::from_secs(3600));
        let ids: Vec<String> = pods
            .discover()
            .iter()
            .map(|(p, cg)| {
                format!(
                    "{} {}",
                    p.container_id.as_deref().unwrap_or("-"),
                    cg.relative
                )
            })
            .collect();
        assert_eq!(
            ids,
            [
                format!("top /kubepods/pod{UID}/top"),
                format!("{CID} /node-a/kubepods/burstable/pod{UID}/{CID}"),
                format!("abc /nodes/b/kubepods/pod{UID}/abc"),
            ]
        );
        // A kubelet that starts later is found although the last search is recent: none was known.
        let late = tempfile::tempdir().unwrap();
        std::fs::write(late.path().join("cgroup.controllers"), "memory\n").unwrap();
        let h = crate::node::cgroup::Hierarchy::detect(late.path()).unwrap();
        let mut pods = PodCgroups::new(h, std::time::Duration::from_secs(3600));
        assert!(pods.discover().is_empty());
        std::fs::create_dir_all(late.path().join(format!("kubepods/pod{UID}/abc"))).unwrap();
        assert_eq!(pods.discover().len(), 1);
    }

    #[test]
    fn discovers_containers_of_both_drivers() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("cgroup.controllers"), "memory\n").unwrap();
        let h = crate::node::cgroup::Hierarchy::detect(tmp.path()).unwrap();
        let u = UID.replace('-', "_");
        for dir in [
            format!("kubepods/burstable/pod{UID}/{CID}"),
            format!("kubepods/pod{UID}/abc"),
            format!("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/cri-containerd-{CID}.scope"),
            format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice"),
            "system.slice/sshd.service".to_string(),
        ] {
            std::fs::create_dir_all(tmp.path().join(dir)).unwrap();
        }
        let found = PodCgroups::new(h.clone(), std::time::Duration::from_secs(3600)).discover();
        let ids: Vec<(QosClass, Option<&str>)> = found
            .iter()
            .map(|(p, _)| (p.qos, p.container_id.as_deref()))
            .collect();
        assert_eq!(
            ids,
            [
                (QosClass::BestEffort, Some(CID)),
                (QosClass::Burstable, Some(CID)),
                (QosClass::Guaranteed, Some("abc")),
            ],
            "sorted by path; the pod slice without a container is not listed"
        );
        assert!(found.iter().all(|(p, cg)| cg.dir.ends_with(p.path())));
    }
}
