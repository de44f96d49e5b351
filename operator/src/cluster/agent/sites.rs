//! Allocation sites on the node (LeakWatch `allocationSites`): tracing starts in the target at
//! snapshot A; after B a task owns the tracer, waits for the analyzer Job to write the pair's
//! findings, reads where the top suspect's items were allocated at the address the Job kept, and
//! writes that into the report. Whatever happens to the pair (re-hunted, failed, never analysed)
//! tracing is stopped, so the target is left as it was.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client, ResourceExt};
use tokio::sync::mpsc;

use super::Write;
use crate::cluster::workload::{self, ApiLookup};
use crate::crd::{LeakReport, Phase};
use crate::sites::Tracer;
use crate::status::{Op, Role};

/// How long after B the analysis may take before tracing is given up.
const WAIT_FOR_ANALYSIS: Duration = Duration::from_secs(15 * 60);
/// How often the report is read meanwhile.
const POLL: Duration = Duration::from_secs(2);

/// Where the pair stands for the tracer.
#[derive(Debug, PartialEq)]
enum Next {
    Wait,
    /// Read the sites of the container at `address`, `path`, grown by `growth` items.
    Read {
        address: u64,
        path: String,
        growth: u64,
    },
    /// Stop tracing, saying why (the report no longer holds this pair when `None`).
    Stop(Option<String>),
}

/// What the report says about the pair whose B has `b_sha256`.
fn next(report: Option<&LeakReport>, b_sha256: &str) -> Next {
    let Some(s) = report.and_then(|r| r.status.as_ref()) else {
        return Next::Stop(None);
    };
    if s.snapshot(Role::B).is_none_or(|b| b.sha256 != b_sha256) {
        return Next::Stop(None);
    }
    match s.phase {
        Phase::Analysed => match s.suspects.iter().find_map(|x| {
            let a = x.address.as_deref()?.strip_prefix("0x")?;
            Some((u64::from_str_radix(a, 16).ok()?, x))
        }) {
            Some((address, x)) => Next::Read {
                address,
                path: x.path.clone(),
                growth: x.count_after.saturating_sub(x.count_before).max(0) as u64,
            },
            None => Next::Stop(Some(
                "allocation sites: the analysis found no container suspect to look for; tracemalloc stopped".into(),
            )),
        },
        Phase::Failed => Next::Stop(Some(
            "allocation sites: the analysis failed; tracemalloc stopped".into(),
        )),
        _ => Next::Wait,
    }
}

/// After snapshot B: waits for the pair's findings, reads the sites, writes them, and in every
/// case leaves tracing stopped.
pub(super) async fn read_when_analysed(
    client: Client,
    (pod, container, container_id): (Arc<Pod>, String, String),
    b_sha256: String,
    mut tracer: Tracer,
    writes: mpsc::Sender<Write>,
) {
    let namespace = pod.namespace().unwrap_or_default();
    let api: Api<LeakReport> = Api::namespaced(client.clone(), &namespace);
    let lookup = ApiLookup::new(client);
    let deadline = Instant::now() + WAIT_FOR_ANALYSIS;
    let mut name = None;
    let step = loop {
        tokio::time::sleep(POLL).await;
        if Instant::now() >= deadline {
            break Next::Stop(Some(format!(
                "allocation sites: the pair was not analysed within {} min of snapshot B; tracemalloc stopped",
                WAIT_FOR_ANALYSIS.as_secs() / 60
            )));
        }
        if name.is_none() {
            name = workload::resolve(&lookup, &pod)
                .await
                .ok()
                .map(|w| workload::report_name(&w));
        }
        let Some(name) = name.as_deref() else {
            continue;
        };
        match api.get_opt(name).await {
            Ok(report) => match next(report.as_ref(), &b_sha256) {
                Next::Wait => {}
                n => break n,
            },
            // The API server away for a while: the deadline decides.
            Err(e) => tracing::debug!(error = %e, "allocation sites: report read"),
        }
    };
    let op = tokio::task::spawn_blocking(move || match step {
        Next::Read {
            address,
            path,
            growth,
        } => {
            let (sites, notes) = tracer.read(address, &path, growth);
            Some(Op::AllocationSites {
                b_sha256,
                sites: sites.iter().map(|s| s.to_string()).collect(),
                notes,
            })
        }
        Next::Stop(why) => {
            tracer.stop();
            why.map(|n| Op::AllocationSites {
                b_sha256,
                sites: Vec::new(),
                notes: vec![n],
            })
        }
        Next::Wait => None,
    })
    .await
    .ok()
    .flatten();
    if let Some(op) = op {
        tracing::info!(pod = %pod.name_any(), "allocation sites read");
        let _ = writes
            .send(Write {
                pod,
                container,
                container_id,
                op,
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{LeakReportSpec, LeakReportStatus, ReportSuspect, SnapshotRecord};

    fn report(phase: Phase, b_sha: &str, address: Option<&str>) -> LeakReport {
        let rec = |role: &str, sha: &str| SnapshotRecord {
            role: role.into(),
            sha256: sha.into(),
            ..serde_json::from_value(serde_json::json!({
                "role": "A", "node": "n", "time": "2026-12-04T00:00:00Z", "size": 1,
                "sha256": "", "pid": 1
            }))
            .unwrap()
        };
        let suspect = ReportSuspect {
            address: address.map(String::from),
            ..serde_json::from_value(serde_json::json!({
                "kind": "container", "path": "__main__.data", "type": "list",
                "countBefore": 100, "countAfter": 400, "retainedBytesBefore": 0,
                "retainedBytesAfter": 0
            }))
            .unwrap()
        };
        let mut r = LeakReport::new("deployment-x", LeakReportSpec::default());
        r.status = Some(LeakReportStatus {
            phase,
            snapshots: vec![rec("A", "a"), rec("B", b_sha)],
            suspects: vec![suspect],
            ..Default::default()
        });
        r
    }

    #[test]
    fn reads_once_this_pair_is_analysed_and_stops_otherwise() {
        assert_eq!(
            next(Some(&report(Phase::Analyzing, "b", None)), "b"),
            Next::Wait
        );
        assert_eq!(
            next(Some(&report(Phase::Analysed, "b", Some("0x7f00"))), "b"),
            Next::Read {
                address: 0x7f00,
                path: "__main__.data".into(),
                growth: 300
            }
        );
        // Analysed without an address: no container to ask about.
        assert!(matches!(
            next(Some(&report(Phase::Analysed, "b", None)), "b"),
            Next::Stop(Some(_))
        ));
        assert!(matches!(
            next(Some(&report(Phase::Failed, "b", None)), "b"),
            Next::Stop(Some(_))
        ));
        // Another pair, or no report: stopped without a word for a report that is not ours.
        assert_eq!(
            next(Some(&report(Phase::Analysed, "other", Some("0x1"))), "b"),
            Next::Stop(None)
        );
        assert_eq!(next(None, "b"), Next::Stop(None));
    }
}
