//! Pure helpers that turn a pod spec into what a process needs: quantities, downward-API values, `$(VAR)`
//! expansion, the pod phase. No I/O, unit-tested.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, ContainerStatus, Pod};

/// Parses a Kubernetes quantity (`64Mi`, `1G`, `500m`, `1e3`, `2`) into a number in base units.
pub fn parse_quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    if let Some(exp) = suffix.strip_prefix(['e', 'E']) {
        let n: f64 = num.parse().ok()?;
        let e: i32 = exp.parse().ok()?;
        return Some(n * 10f64.powi(e));
    }
    let n: f64 = num.parse().ok()?;
    let mult = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        _ => return None,
    };
    Some(n * mult)
}

/// The memory limit of a container in bytes, if it has one.
pub fn memory_limit(c: &Container) -> Option<i64> {
    c.resources
        .as_ref()?
        .limits
        .as_ref()?
        .get("memory")
        .and_then(|q| parse_quantity(&q.0))
        .map(|b| b.ceil() as i64)
}

/// The pod-level limit: the sum of the containers' limits, or none when any container is unlimited.
pub fn pod_memory_limit(containers: &[Container]) -> Option<i64> {
    containers
        .iter()
        .map(memory_limit)
        .try_fold(0i64, |sum, l| l.map(|l| sum.saturating_add(l)))
        .filter(|_| !containers.is_empty())
}

/// `valueFrom.fieldRef.fieldPath` as the kubelet resolves it.
pub fn field_ref(pod: &Pod, path: &str, pod_ip: &str) -> Option<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let bracket = |prefix: &str, map: Option<&BTreeMap<String, String>>| {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
        "status.podIP" | "status.hostIP" | "status.podIPs" | "status.hostIPs" => {
            Some(pod_ip.to_string())
        }
        _ => bracket("metadata.labels['", meta.labels.as_ref())
            .or_else(|| bracket("metadata.annotations['", meta.annotations.as_ref())),
    }
}

/// `valueFrom.resourceFieldRef` (`limits.memory`, `requests.cpu`, ...) divided by its divisor, rounded up.
pub fn resource_field_ref(c: &Container, resource: &str, divisor: Option<&str>) -> Option<String> {
    let (kind, name) = resource.split_once('.')?;
    let res = c.resources.as_ref();
    let value = match kind {
        "limits" => res.and_then(|r| r.limits.as_ref()),
        "requests" => res.and_then(|r| r.requests.as_ref()),
        _ => return None,
    }
    .and_then(|m| m.get(name))
    .and_then(|q| parse_quantity(&q.0));
    // Unset limits default to node allocatable in the kubelet; 0 is the honest answer here.
    let value = value.unwrap_or(0.0);
    let divisor = divisor
        .and_then(parse_quantity)
        .filter(|d| *d > 0.0)
        .unwrap_or(1.0);
    Some(format!("{}", (value / divisor).ceil() as i64))
}

/// Expands `$(VAR)` references as the kubelet does for env values, command and args: known names are
/// replaced, `$$` escapes, unknown references stay as written.
pub fn expand(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        match chars.peek() {
            Some((_, '$')) => {
                chars.next();
                out.push('$');
            }
            Some((_, '(')) => {
                let rest = &s[i + 2..];
                match rest.find(')') {
                    Some(end) if vars.contains_key(&rest[..end]) => {
                        out.push_str(&vars[&rest[..end]]);
                        for _ in 0..end + 2 {
                            chars.next();
                        }
                    }
                    _ => out.push('$'),
                }
            }
            _ => out.push('$'),
        }
    }
    out
}

/// The pod phase from its containers' statuses and restart policy.
pub fn pod_phase(
    restart_policy: &str,
    init_done: bool,
    statuses: &[ContainerStatus],
    init_failed: bool,
) -> &'static str {
    if init_failed {
        return "Failed";
    }
    if !init_done || statuses.is_empty() {
        return "Pending";
    }
    let state = |s: &ContainerStatus| s.state.clone().unwrap_or_default();
    let running = statuses.iter().any(|s| state(s).running.is_some());
    let all_terminated = statuses.iter().all(|s| state(s).terminated.is_some());
    let all_succeeded = all_terminated
        && statuses
            .iter()
            .all(|s| state(s).terminated.map(|t| t.exit_code) == Some(0));
    match restart_policy {
        "Never" if all_terminated => {
            if all_succeeded {
                "Succeeded"
            } else {
                "Failed"
            }
        }
        "OnFailure" if all_succeeded => "Succeeded",
        _ if running => "Running",
        _ => {
            // Restarting containers (waiting in back-off after having run) keep the pod Running.
            if statuses.iter().any(|s| {
                s.restart_count > 0
                    || s.last_state
                        .as_ref()
                        .and_then(|l| l.terminated.as_ref())
                        .is_some()
            }) {
                "Running"
            } else {
                "Pending"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateTerminated, ResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("64Mi"), Some(67108864.0));
        assert_eq!(parse_quantity("1G"), Some(1e9));
        assert_eq!(parse_quantity("500m"), Some(0.5));
        assert_eq!(parse_quantity("1e3"), Some(1000.0));
        assert_eq!(parse_quantity("2"), Some(2.0));
        assert_eq!(parse_quantity("1.5Gi"), Some(1.5 * 1073741824.0));
        assert_eq!(parse_quantity("12Qi"), None);
    }

    fn with_limit(mem: Option<&str>) -> Container {
        Container {
            name: "c".into(),
            resources: mem.map(|m| ResourceRequirements {
                limits: Some([("memory".to_string(), Quantity(m.into()))].into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn pod_limit_is_sum_or_unlimited() {
        let a = with_limit(Some("64Mi"));
        let b = with_limit(Some("32Mi"));
        assert_eq!(pod_memory_limit(&[a.clone(), b]), Some(96 << 20));
        assert_eq!(pod_memory_limit(&[a, with_limit(None)]), None);
        assert_eq!(
            resource_field_ref(&with_limit(Some("64Mi")), "limits.memory", Some("1Mi")),
            Some("64".into())
        );
    }

    #[test]
    fn expands_like_kubelet() {
        let vars: BTreeMap<_, _> = [("A".to_string(), "x".to_string())].into();
        assert_eq!(expand("$(A)/$(B)/$$(A)", &vars), "x/$(B)/$(A)");
    }

    #[test]
    fn downward_api_fields() {
        let mut pod = Pod::default();
        pod.metadata.name = Some("p".into());
        pod.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
        assert_eq!(
            field_ref(&pod, "metadata.name", "127.0.0.1").as_deref(),
            Some("p")
        );
        assert_eq!(
            field_ref(&pod, "status.podIP", "127.0.0.1").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(
            field_ref(&pod, "metadata.labels['app']", "").as_deref(),
            Some("web")
        );
        assert_eq!(
            field_ref(&pod, "metadata.labels['x']", "").as_deref(),
            Some("")
        );
        assert_eq!(field_ref(&pod, "spec.bogus", ""), None);
    }

    fn status(running: bool, exit: Option<i32>, restarts: i32) -> ContainerStatus {
        ContainerStatus {
            restart_count: restarts,
            state: Some(ContainerState {
                running: running.then(ContainerStateRunning::default),
                terminated: exit.map(|e| ContainerStateTerminated {
                    exit_code: e,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn phases() {
        assert_eq!(
            pod_phase("Always", true, &[status(true, None, 0)], false),
            "Running"
        );
        assert_eq!(
            pod_phase("Never", true, &[status(false, Some(0), 0)], false),
            "Succeeded"
        );
        assert_eq!(
            pod_phase("Never", true, &[status(false, Some(1), 0)], false),
            "Failed"
        );
        assert_eq!(
            pod_phase("OnFailure", true, &[status(false, Some(0), 0)], false),
            "Succeeded"
        );
        assert_eq!(
            pod_phase("Always", true, &[status(false, None, 2)], false),
            "Running"
        );
        assert_eq!(
            pod_phase("Always", false, &[status(false, None, 0)], false),
            "Pending"
        );
        assert_eq!(pod_phase("Never", false, &[], true), "Failed");
    }
}
