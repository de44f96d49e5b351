//! The hunt's findings as a `LeakReport` (the operator's schema), and as YAML.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::crd::{LeakReport, LeakReportSpec, LeakReportStatus, WorkloadRef};

pub fn now() -> Time {
    Time(Timestamp::now())
}

/// A report for a local process: workload kind `Process`, named after its command.
pub fn new_report(name: &str, command: &str, container: Option<String>) -> LeakReport {
    LeakReport {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        spec: LeakReportSpec {
            workload: WorkloadRef::new("", "Process", command),
            container,
        },
        status: Some(LeakReportStatus::default()),
    }
}

/// A DNS-1123 name for the report: `hunt-python3-4242`.
pub fn report_name(comm: &str, pid: i32) -> String {
    let mut clean: String = comm
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    clean.truncate(40);
    let clean = clean.trim_matches('-');
    if clean.is_empty() {
        format!("hunt-{pid}")
    } else {
        format!("hunt-{clean}-{pid}")
    }
}

/// Writes the report as YAML, atomically (a reader never sees half a document).
pub fn write_yaml(report: &LeakReport, path: &Path) -> io::Result<()> {
    let yaml = serde_yaml::to_string(report).map_err(io::Error::other)?;
    let tmp = path.with_extension("yaml.tmp");
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(yaml.as_bytes())?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)
}

/// Writes the report as an HTML page ([`crate::html`]), atomically.
pub fn write_html(report: &LeakReport, path: &Path) -> io::Result<()> {
    let page = crate::html::render(report, &crate::html::generated_by());
    let tmp = path.with_extension("html.tmp");
    fs::write(&tmp, page)?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels() {
        assert_eq!(report_name("python3", 42), "hunt-python3-42");
        assert_eq!(
            report_name("gunicorn: worker", 7),
            "hunt-gunicorn--worker-7"
        );
        assert_eq!(report_name("(((", 7), "hunt-7");
    }

    #[test]
    fn yaml_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("r.yaml");
        let mut r = new_report("hunt-x-1", "python app.py", None);
        r.status.as_mut().unwrap().oom_kills = 2;
        write_yaml(&r, &path).unwrap();
        let back: LeakReport = serde_yaml::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(back.status.unwrap().oom_kills, 2);
        assert_eq!(back.spec.workload.display, "Process/python app.py");
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("apiVersion: leakhunt.dev/v1alpha1"), "{text}");
        assert!(text.contains("kind: LeakReport"));
    }
}
