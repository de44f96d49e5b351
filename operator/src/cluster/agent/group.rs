//! Whole-container OOM kills (`memory.oom.group`, the kubelet's default on cgroup v2): the kernel
//! kills every process of the container when one grows past the limit, so the pod status says only
//! `OOMKilled`. The agent knows which process it was: the kernel's victim is the largest, named from
//! the kernel log when readable, else the largest of the last sample.
//!
//! The container's cgroup is removed within milliseconds of such a kill, often before a sample
//! reads its counter again: a container that vanishes is a candidate until the pod status says
//! whether that instance was OOM-killed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;

use super::Write;
use crate::node::{OomKill, ProcessMemory};

/// How long a vanished container waits for the kubelet to report how it ended.
pub(super) const WAIT: Duration = Duration::from_secs(60);

/// A container gone with several processes in it: its `GroupKill` op, written once the pod status
/// confirms the kill, dropped at `until`.
pub(super) struct Candidate {
    pub(super) write: Write,
    pub(super) until: Instant,
}

/// The process a group kill was for, as the report names it: `python3 (pid 41), 180MiB when last
/// sampled`. `None` when the container held one process (its kill is simply the container's) or
/// none can be named.
pub(super) fn victim(
    named: Option<&OomKill>,
    largest: Option<&ProcessMemory>,
    listed_before: usize,
) -> Option<String> {
    if listed_before < 2 {
        return None;
    }
    let (label, rss) = match named.filter(|k| k.pid.is_some()) {
        Some(k) => (k.process_label(), k.last_rss),
        None => {
            let p = largest?;
            (format!("{} (pid {})", p.comm, p.key.pid), Some(p.rss))
        }
    };
    Some(match rss {
        Some(rss) => format!(
            "{label}, {} when last sampled",
            crate::crd::human_bytes(rss)
        ),
        None => label,
    })
}

/// Whether the pod status shows container instance `id` terminated as `OOMKilled`.
pub(super) fn oom_killed(pods: &[Arc<Pod>], id: &str) -> bool {
    pods.iter()
        .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref())
        .flatten()
        .flat_map(|cs| {
            [
                cs.state.as_ref().and_then(|s| s.terminated.as_ref()),
                cs.last_state.as_ref().and_then(|s| s.terminated.as_ref()),
            ]
        })
        .flatten()
        .any(|t| {
            t.reason.as_deref() == Some("OOMKilled")
                && t.container_id
                    .as_deref()
                    .is_some_and(|c| c.rsplit("://").next() == Some(id))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{KillSource, ProcessKey};
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStatus, PodStatus,
    };

    fn process(pid: i32, rss: u64) -> ProcessMemory {
        ProcessMemory {
            key: ProcessKey {
                pid,
                start_ticks: 1,
            },
            ppid: 1,
            comm: "gunicorn".into(),
            rss,
        }
    }

    #[test]
    fn the_victim_is_the_kernels_or_the_largest_and_only_among_several() {
        let named = OomKill {
            pid: Some(41),
            comm: Some("python3".into()),
            kernel_usec: Some(1),
            last_rss: Some(180 << 20),
            source: KillSource::KernelLog,
        };
        let largest = process(42, 150 << 20);
        assert_eq!(
            victim(Some(&named), Some(&largest), 3).as_deref(),
            Some("python3 (pid 41), 180MiB when last sampled")
        );
        let unknown = OomKill {
            pid: None,
            comm: None,
            kernel_usec: None,
            last_rss: None,
            source: KillSource::Unknown,
        };
        assert_eq!(
            victim(Some(&unknown), Some(&largest), 3).as_deref(),
            Some("gunicorn (pid 42), 150MiB when last sampled")
        );
        assert_eq!(victim(None, Some(&largest), 1), None, "one process alone");
        assert_eq!(victim(None, None, 3), None);
    }

    #[test]
    fn only_an_oom_killed_instance_confirms() {
        let pod = |reason: &str, id: &str| {
            Arc::new(Pod {
                status: Some(PodStatus {
                    container_statuses: Some(vec![ContainerStatus {
                        name: "app".into(),
                        last_state: Some(ContainerState {
                            terminated: Some(ContainerStateTerminated {
                                reason: Some(reason.into()),
                                exit_code: 137,
                                container_id: Some(format!("containerd://{id}")),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            })
        };
        assert!(oom_killed(&[pod("OOMKilled", "abc")], "abc"));
        assert!(!oom_killed(&[pod("OOMKilled", "abc")], "abd"));
        assert!(!oom_killed(&[pod("Error", "abc")], "abc"));
    }
}
