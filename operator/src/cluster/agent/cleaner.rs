//! The snapshot cleaner: deletes the files no report still needs.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::runtime::reflector::Store;
use kube::{Api, Client, ResourceExt};

use super::AgentConfig;
use crate::cluster::report_api;
use crate::crd::{LeakReport, Phase};

/// Deletes snapshot files no report still needs: every file under the snapshot directory that
/// no report on this node references while its pair is pending (Baseline, Analyzing) or retained.
/// Records of deleted files lose their path. Young unreferenced files are left a grace period:
/// their record may be on its way.
pub(super) async fn clean_snapshots(client: Client, cfg: AgentConfig, pods: Store<Pod>) {
    let mut tick = tokio::time::interval(Duration::from_secs(15));
    loop {
        tick.tick().await;
        let api: Api<LeakReport> = Api::all(client.clone());
        let Ok(list) = api.list(&ListParams::default()).await else {
            continue;
        };
        let now_ts = Timestamp::now();
        let mut needed: HashSet<String> = HashSet::new();
        let mut stale: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        for r in &list.items {
            let Some(s) = r.status.as_ref() else { continue };
            for rec in s.snapshots.iter().filter(|x| x.node == cfg.node_name) {
                let Some(path) = rec.path.clone() else {
                    continue;
                };
                let pending = matches!(s.phase, Phase::Baseline | Phase::Analyzing);
                let retained = rec.retain_until.as_ref().is_some_and(|u| u.0 > now_ts);
                if pending || retained {
                    needed.insert(path);
                } else {
                    stale
                        .entry((r.namespace().unwrap_or_default(), r.name_any()))
                        .or_default()
                        .push(path);
                }
            }
        }
        let live: HashSet<(String, String)> = pods
            .state()
            .iter()
            .map(|p| (p.namespace().unwrap_or_default(), p.name_any()))
            .collect();
        for file in snapshot_files(&cfg.snapshot_dir, &live) {
            let key = file.display().to_string();
            if needed.contains(&key) || retained_by_name(&file, now_ts.as_second()) {
                continue;
            }
            let referenced = stale.values().any(|v| v.contains(&key));
            let young = std::fs::metadata(&file)
                .and_then(|m| m.modified())
                .map(|m| m.elapsed().unwrap_or_default() < Duration::from_secs(120))
                .unwrap_or(false);
            if referenced || !young {
                match std::fs::remove_file(&file) {
                    Ok(()) => tracing::info!(file = %key, "snapshot deleted"),
                    Err(e) => tracing::warn!(error = %e, file = %key, "snapshot not deleted"),
                }
            }
        }
        for ((ns, name), paths) in stale {
            let api: Api<LeakReport> = Api::namespaced(client.clone(), &ns);
            let _ = report_api::update_status(&api, &name, |s| {
                let mut changed = false;
                for rec in s.snapshots.iter_mut() {
                    if rec.path.as_ref().is_some_and(|p| paths.contains(p))
                        && !Path::new(rec.path.as_deref().unwrap_or_default()).exists()
                    {
                        rec.path = None;
                        changed = true;
                    }
                }
                changed
            })
            .await;
        }
    }
}

/// Snapshot files two levels down (`<namespace>/<pod>/<file>.core.zst`). The empty directory of a
/// pod that is no longer on this node is removed (a live pod's may be about to receive a capture,
/// whose file has no name until it is complete).
fn snapshot_files(root: &Path, live: &HashSet<(String, String)>) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let dirs = |p: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(p)
            .map(|r| r.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    let name = |p: &Path| {
        p.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string()
    };
    for ns in dirs(root).into_iter().filter(|p| p.is_dir()) {
        for pod in dirs(&ns).into_iter().filter(|p| p.is_dir()) {
            files.extend(dirs(&pod).into_iter().filter(|f| {
                let n = name(f);
                n.ends_with(".core.zst") || n.ends_with(".core")
            }));
            if !live.contains(&(name(&ns), name(&pod))) {
                let _ = std::fs::remove_dir(&pod);
            }
        }
    }
    files
}

/// Whether a file's name says it is retained past `now` (`….keep-<unix seconds>.core.zst`).
fn retained_by_name(file: &Path, now: i64) -> bool {
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    name.split(".keep-")
        .nth(1)
        .and_then(|rest| rest.split('.').next())
        .and_then(|t| t.parse::<i64>().ok())
        .is_some_and(|until| until > now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_is_read_from_the_file_name() {
        assert!(retained_by_name(
            Path::new("/s/ns/p/app-A-1.keep-200.core.zst"),
            100
        ));
        assert!(!retained_by_name(
            Path::new("/s/ns/p/app-A-1.keep-200.core.zst"),
            300
        ));
        assert!(!retained_by_name(Path::new("/s/ns/p/app-A-1.core.zst"), 0));
        assert!(!retained_by_name(
            Path::new("/s/ns/p/app-A-1.keep-x.core.zst"),
            0
        ));
    }
}
