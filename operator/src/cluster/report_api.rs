//! Reading and writing LeakReports. Three writers share a report's status (operator, agent,
//! analyzer Job), so every status write is read-modify-write with the resourceVersion, retried
//! on conflict: no writer overwrites what another just added.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::{Api, Client};

use super::workload::{owner_reference, report_name};
use crate::crd::{LeakReport, LeakReportSpec, LeakReportStatus, WorkloadRef};

/// Labels on every report: which workload kind and name it is about (selectable with `-l`).
pub const LABEL_WORKLOAD_KIND: &str = "leakhunt.dev/workload-kind";
pub const LABEL_WORKLOAD_NAME: &str = "leakhunt.dev/workload-name";

/// Conflicts retried before giving up on one status write (each retry re-reads the report).
const CONFLICT_RETRIES: usize = 8;

/// A new report object for a workload (not yet created).
pub fn new_report(namespace: &str, workload: &WorkloadRef, container: Option<&str>) -> LeakReport {
    let mut labels = BTreeMap::new();
    labels.insert(LABEL_WORKLOAD_KIND.to_string(), workload.kind.clone());
    // Label values are at most 63 characters; longer names are simply not labelled.
    if workload.name.len() <= 63 {
        labels.insert(LABEL_WORKLOAD_NAME.to_string(), workload.name.clone());
    }
    labels.insert("app.kubernetes.io/managed-by".into(), "leakhunt".into());
    LeakReport {
        metadata: ObjectMeta {
            name: Some(report_name(workload)),
            namespace: Some(namespace.to_string()),
            labels: Some(labels),
            owner_references: owner_reference(workload).map(|o| vec![o]),
            ..Default::default()
        },
        spec: LeakReportSpec {
            workload: workload.clone(),
            container: container.map(str::to_string),
        },
        status: None,
    }
}

/// The workload's report, created when missing. Creation races (operator and agent at once)
/// end in one report: the loser reads the winner's.
pub async fn ensure(client: &Client, report: LeakReport) -> Result<LeakReport, kube::Error> {
    let namespace = report.metadata.namespace.clone().unwrap_or_default();
    let name = report.metadata.name.clone().unwrap_or_default();
    let api: Api<LeakReport> = Api::namespaced(client.clone(), &namespace);
    if let Some(existing) = api.get_opt(&name).await? {
        return Ok(existing);
    }
    match api.create(&PostParams::default(), &report).await {
        Ok(created) => Ok(created),
        Err(e) if is_status(&e, 409) => api.get(&name).await,
        Err(e) => Err(e),
    }
}

/// Changes a report's status with `change` and writes it; `change` returns false when there is
/// nothing to write. Retries on conflict with a fresh read, so `change` must be a function of the
/// status it is given (it may run several times). Returns the report as written, or `None` when
/// the report does not exist (its workload was deleted) or nothing changed.
pub async fn update_status<F>(
    api: &Api<LeakReport>,
    name: &str,
    mut change: F,
) -> Result<Option<LeakReport>, kube::Error>
where
    F: FnMut(&mut LeakReportStatus) -> bool,
{
    for attempt in 0..CONFLICT_RETRIES {
        // The status subresource: the analyzer Job may read and write only that.
        let Some(mut report) = get_status_opt(api, name).await? else {
            return Ok(None);
        };
        let mut status = report.status.take().unwrap_or_default();
        if !change(&mut status) {
            return Ok(None);
        }
        report.status = Some(status);
        match api
            .replace_status(name, &PostParams::default(), &report)
            .await
        {
            Ok(written) => return Ok(Some(written)),
            Err(e) if is_status(&e, 409) => {
                tokio::time::sleep(Duration::from_millis(20 * (attempt as u64 + 1))).await;
            }
            Err(e) if is_status(&e, 404) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Err(kube::Error::Api(
        kube::core::Status::failure(
            &format!("status of LeakReport {name} kept changing under {CONFLICT_RETRIES} writes"),
            "Conflict",
        )
        .with_code(409)
        .boxed(),
    ))
}

/// A report with its status, or `None` when it does not exist.
pub async fn get_status_opt(
    api: &Api<LeakReport>,
    name: &str,
) -> Result<Option<LeakReport>, kube::Error> {
    match api.get_status(name).await {
        Ok(r) => Ok(Some(r)),
        Err(e) if is_status(&e, 404) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether an error is the API server answering with this HTTP status.
pub fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// Now, as the API's time type.
pub fn now() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now())
}
