//! The agent's one writer task: resolves each op's workload, makes sure its report exists, and
//! applies the ops in order with the status builder, so that sampling never waits for the API
//! server.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::{Api, Client, ResourceExt};
use tokio::sync::mpsc;

use super::{Feedback, Write};
use crate::cluster::report_api::{self, new_report};
use crate::cluster::workload::{self, ApiLookup};
use crate::crd::LeakReport;
use crate::metrics::{ContainerLabels, ContainerMemory, Metrics};
use crate::status::{apply, Applied, Op};

/// The writer task: resolves the workload, makes sure its report exists, applies ops in order.
pub(super) async fn writer(
    client: Client,
    metrics: Metrics,
    mut rx: mpsc::Receiver<Write>,
    feedback: mpsc::Sender<Feedback>,
    node: String,
) {
    let lookup = ApiLookup::new(client.clone());
    let mut ensured: HashSet<String> = HashSet::new();
    while let Some(w) = rx.recv().await {
        let namespace = w.pod.namespace().unwrap_or_default();
        // A transient API error is retried a few times; a capture's op must not be lost to one.
        let mut resolved = None;
        for attempt in 0..4u64 {
            match workload::resolve(&lookup, &w.pod).await {
                Ok(wl) => {
                    resolved = Some(wl);
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, pod = %w.pod.name_any(), "owner lookup failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500 * (attempt + 1))).await;
                }
            }
        }
        let Some(wl) = resolved else {
            tracing::warn!(pod = %w.pod.name_any(), "workload unknown; op dropped");
            continue;
        };
        if let Op::Sample {
            working_set,
            limit,
            seconds_to_oom,
            ..
        } = &w.op
        {
            let labels = ContainerLabels {
                namespace: namespace.clone(),
                workload: wl.display.clone(),
                pod: w.pod.name_any(),
                container: w.container.clone(),
            };
            let memory = ContainerMemory {
                working_set: *working_set,
                limit: *limit,
                seconds_to_oom: *seconds_to_oom,
            };
            metrics.container_memory(&w.container_id, labels, memory);
        }
        let name = workload::report_name(&wl);
        let key = format!("{namespace}/{name}");
        let api: Api<LeakReport> = Api::namespaced(client.clone(), &namespace);
        let pod_name = w.pod.name_any();
        let mut outcome = Applied::Unchanged;
        let mut result = Ok(None);
        // A worker kill's op is its only record (a group kill's too: the agent says it once): an
        // API error is retried for about half a minute. (Samples come again anyway; capture ops
        // keep their order.)
        let attempts = if matches!(w.op, Op::WorkerKill { .. } | Op::GroupKill { .. }) {
            5
        } else {
            1
        };
        for attempt in 0..attempts {
            if attempt > 0 {
                ensured.remove(&key);
                tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
            }
            // Twice at most: a report deleted under us (its workload re-created under the same
            // name) is created again, once.
            for _ in 0..2 {
                if !ensured.contains(&key) {
                    match report_api::ensure(
                        &client,
                        new_report(&namespace, &wl, Some(&w.container)),
                    )
                    .await
                    {
                        Ok(_) => {
                            if ensured.len() > 10_000 {
                                ensured.clear();
                            }
                            ensured.insert(key.clone());
                        }
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    }
                }
                let mut ran = false;
                result = report_api::update_status(&api, &name, |s| {
                    ran = true;
                    outcome = apply(&w.op, s, &pod_name, &w.container, Timestamp::now());
                    outcome == Applied::Changed
                })
                .await;
                if ran || result.is_err() {
                    break;
                }
                ensured.remove(&key);
            }
            if result.is_ok() {
                break;
            }
        }
        match result {
            Err(e) => {
                tracing::warn!(error = %e, report = %key, "status write failed");
                ensured.remove(&key);
            }
            Ok(Some(_)) => {
                if let Op::SnapshotB { .. } = &w.op {
                    tracing::info!(report = %key, node = %node, "snapshot pair recorded; analysis requested");
                }
                // Its Events and alerts are the operator's (status.unannouncedKills), which
                // knows the alert routing.
                if let Op::WorkerKill { .. } = &w.op {
                    metrics.oom_kill(&namespace, &wl.display);
                }
            }
            Ok(None) => {}
        }
        if outcome == Applied::Refused {
            if let Op::SnapshotA { record, .. } = &w.op {
                tracing::info!(report = %key, pod = %pod_name, "snapshot A refused: the workload is hunted elsewhere or cooling down");
                let _ = feedback
                    .send(Feedback::Refused {
                        container_id: w.container_id.clone(),
                        pod_uid: w.pod.uid().unwrap_or_default(),
                        path: record.path.clone().map(PathBuf::from).unwrap_or_default(),
                    })
                    .await;
            }
        }
    }
}
