//! OOM kills as the kubelet reports them in a pod's container statuses, each with a key that
//! names one kill for good: the same kill seen in `state` and then in `lastState`, or again after
//! an operator restart, has the same key and is counted once.

use k8s_openapi::api::core::v1::{ContainerStateTerminated, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::crd::OomKillRecord;

/// One OOM-killed container instance.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerKill {
    /// `<pod uid>/<container>/<container ID, or finish time, or restart count>`.
    pub key: String,
    pub pod: String,
    pub container: String,
    pub exit_code: i32,
    pub finished: Option<Time>,
    pub restart_count: i32,
}

impl ContainerKill {
    pub fn record(&self, fallback_time: Time) -> OomKillRecord {
        OomKillRecord {
            pod: self.pod.clone(),
            container: self.container.clone(),
            process: format!("container {} (exit {})", self.container, self.exit_code),
            time: self.finished.clone().unwrap_or(fallback_time),
        }
    }

    /// The incident line: what `kubectl describe` shows under Incidents.
    pub fn message(&self) -> String {
        format!(
            "container {} of pod {} was OOM-killed (exit {}, restart count {})",
            self.container, self.pod, self.exit_code, self.restart_count
        )
    }
}

/// An OOM kill of the container itself. containerd marks a container `OOMKilled` when any of its
/// processes was OOM-killed, even when its main process later exits by itself (kubernetes issue
/// 104454): such a status with a normal exit code (0–127, no signal) is a worker's kill, which the
/// node agent counts from the cgroup's counter, and counting it here too would count it twice.
fn is_oom(t: &ContainerStateTerminated) -> bool {
    t.reason.as_deref() == Some("OOMKilled") && !(0..128).contains(&t.exit_code)
}

/// Every OOM kill a pod's status shows (current and last state of every container, init
/// containers included), deduplicated by key.
pub fn container_kills(pod: &Pod) -> Vec<ContainerKill> {
    let Some(status) = pod.status.as_ref() else {
        return Vec::new();
    };
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let mut kills: Vec<ContainerKill> = Vec::new();
    let all = status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten());
    for cs in all {
        let states = [
            cs.state.as_ref().and_then(|s| s.terminated.as_ref()),
            cs.last_state.as_ref().and_then(|s| s.terminated.as_ref()),
        ];
        for t in states.into_iter().flatten().filter(|t| is_oom(t)) {
            // The container ID names the instance; without one (some runtimes clear it) the
            // finish time does, and the restart count is the last resort.
            let instance = t
                .container_id
                .clone()
                .filter(|id| !id.is_empty())
                .or_else(|| t.finished_at.as_ref().map(|f| f.0.to_string()))
                .unwrap_or_else(|| format!("restart-{}", cs.restart_count));
            let key = format!("{uid}/{}/{instance}", cs.name);
            if kills.iter().any(|k| k.key == key) {
                continue;
            }
            kills.push(ContainerKill {
                key,
                pod: pod_name.clone(),
                container: cs.name.clone(),
                exit_code: t.exit_code,
                finished: t.finished_at.clone(),
                restart_count: cs.restart_count,
            });
        }
    }
    kills
}

/// The memory limit of a container from the pod spec, in bytes.
pub fn memory_limit(pod: &Pod, container: &str) -> Option<i64> {
    let c = pod
        .spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == container)?;
    let q = c.resources.as_ref()?.limits.as_ref()?.get("memory")?;
    crate::units::parse_quantity(&q.0).and_then(|b| i64::try_from(b).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerState, ContainerStatus, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn terminated(reason: &str, id: &str, secs: i64) -> ContainerState {
        exited(reason, 137, id, secs)
    }

    fn exited(reason: &str, exit_code: i32, id: &str, secs: i64) -> ContainerState {
        ContainerState {
            terminated: Some(ContainerStateTerminated {
                reason: Some(reason.into()),
                exit_code,
                container_id: Some(id.into()),
                finished_at: Some(Time(
                    k8s_openapi::jiff::Timestamp::from_second(secs).unwrap(),
                )),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn pod(statuses: Vec<ContainerStatus>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web-1".into()),
                uid: Some("u1".into()),
                ..Default::default()
            },
            status: Some(PodStatus {
                container_statuses: Some(statuses),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn status(
        state: Option<ContainerState>,
        last: Option<ContainerState>,
        restarts: i32,
    ) -> ContainerStatus {
        ContainerStatus {
            name: "app".into(),
            state,
            last_state: last,
            restart_count: restarts,
            ..Default::default()
        }
    }

    #[test]
    fn one_kill_seen_in_state_then_last_state_has_one_key() {
        let dying = pod(vec![status(
            Some(terminated("OOMKilled", "sim://a", 10)),
            None,
            0,
        )]);
        let restarted = pod(vec![status(
            None,
            Some(terminated("OOMKilled", "sim://a", 10)),
            1,
        )]);
        let (a, b) = (container_kills(&dying), container_kills(&restarted));
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].key, b[0].key);
        assert_eq!(a[0].key, "u1/app/sim://a");
        // A second kill is a new container instance.
        let again = pod(vec![status(
            Some(terminated("OOMKilled", "sim://b", 30)),
            Some(terminated("OOMKilled", "sim://a", 10)),
            1,
        )]);
        let keys: Vec<String> = container_kills(&again).into_iter().map(|k| k.key).collect();
        assert_eq!(keys, ["u1/app/sim://b", "u1/app/sim://a"]);
    }

    #[test]
    fn other_terminations_are_not_kills() {
        let p = pod(vec![status(
            Some(terminated("Error", "sim://a", 10)),
            Some(terminated("Completed", "sim://0", 5)),
            1,
        )]);
        assert!(container_kills(&p).is_empty());
        assert!(container_kills(&Pod::default()).is_empty());
    }

    #[test]
    fn oom_killed_with_a_normal_exit_was_a_workers_kill() {
        // A worker was OOM-killed, then the main process exited 0 or 1: containerd still says
        // OOMKilled. The agent counted the worker; the container's own exit is no kill.
        for code in [0, 1, 127] {
            let p = pod(vec![status(
                None,
                Some(exited("OOMKilled", code, "sim://a", 10)),
                1,
            )]);
            assert!(container_kills(&p).is_empty(), "exit {code}");
        }
        // Killed by a signal (137 = SIGKILL; -1 from runtimes that do not know) is the container's.
        for code in [137, 143, -1] {
            let p = pod(vec![status(
                None,
                Some(exited("OOMKilled", code, "sim://a", 10)),
                1,
            )]);
            assert_eq!(container_kills(&p).len(), 1, "exit {code}");
        }
    }

    #[test]
    fn key_without_container_id_uses_finish_time() {
        let p = pod(vec![status(None, Some(terminated("OOMKilled", "", 10)), 3)]);
        let k = &container_kills(&p)[0];
        assert_eq!(k.key, "u1/app/1970-01-01T00:00:10Z");
        assert_eq!(k.restart_count, 3);
        assert!(k.message().contains("restart count 3"));
    }
}
