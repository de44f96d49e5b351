//! The agent's captures: started on a blocking thread when the threshold machine asks for A or
//! B, collected on a later sample, and turned into the report's ops (or a failure, an Event and
//! a metric).

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use tokio::sync::mpsc;

use super::{sites, Agent, Capture, Tracked, Write};
use crate::cluster::policy::Policy;
use crate::crd::{human_bytes, ProcessRef, SnapshotRecord};
use crate::metrics::CaptureOutcome;
use crate::node::{ProcessKey, Sample};
use crate::sites::Tracer;
use crate::snapshot::{self, Analyzer, Snapshotter};
use crate::status::{Op, Reason, Role};
use crate::units::to_i64;

impl Agent {
    pub(super) fn start_capture(
        &self,
        id: &str,
        t: &mut Tracked,
        role: Role,
        target: ProcessKey,
        policy: &Policy,
    ) {
        let ns = t.pod.namespace().unwrap_or_default();
        let dir = self.cfg.snapshot_dir.join(&ns).join(t.pod.name_any());
        let stamp = Timestamp::now().as_millisecond();
        // A retained snapshot carries its deadline in its name: the cleaner keeps it until then even
        // when a later hunt has replaced its record.
        let keep_until = policy.keep_snapshots.map(|k| {
            Timestamp::now()
                .as_second()
                .saturating_add(k.as_secs() as i64)
        });
        let keep = keep_until.map(|u| format!(".keep-{u}")).unwrap_or_default();
        let path = dir.join(format!("{}-{role}-{stamp}{keep}.core.zst", t.container));
        let node = self.cfg.node_name.clone();
        let pod = t.pod.name_any();
        let container = t.container.clone();
        let max = policy.max_snapshot_size;
        let keep = policy.keep_snapshots;
        tracing::info!(container = %id, pod = %pod, role = %role, pid = target.pid, "capturing");
        // B asks tracemalloc for its memory first (it may wait for the target's main thread).
        let mut tracer = if role == Role::B {
            std::mem::replace(&mut t.tracer, Tracer::Off)
        } else {
            Tracer::Off
        };
        t.capturing = Some(tokio::task::spawn_blocking(move || {
            let (tracer_bytes, tracer_note) = if tracer.is_active() {
                let (bytes, note) = tracer.memory_at_b();
                (tracer.is_on().then_some(to_i64(bytes)), note)
            } else {
                (None, None)
            };
            // The snapshot is of the memory as the capture began: the timeline is read so.
            let began = Timestamp::now();
            let mut notes = super::SnapshotNotes::default();
            let result = capture_one(&dir, &path, target.pid, max).map(|w| {
                notes = w.notes;
                (
                    SnapshotRecord {
                        role: role.into(),
                        node,
                        time: Time(began),
                        size: w.size,
                        memory: Some(w.memory),
                        sha256: w.sha256,
                        path: Some(path.display().to_string()),
                        pid: i64::from(target.pid),
                        pod,
                        container,
                        retain_until: keep.map(|k| {
                            Time(Timestamp::now() + SignedDuration::try_from(k).unwrap_or_default())
                        }),
                        tracer_bytes,
                    },
                    w.took,
                )
            });
            Capture {
                role,
                target,
                result,
                tracer,
                tracer_note,
                notes,
            }
        }));
    }

    pub(super) async fn captured(
        &self,
        id: &str,
        t: &mut Tracked,
        done: Capture,
        policy: &Policy,
        writes: &mpsc::Sender<Write>,
        sample: &Sample,
    ) {
        let queue = |op: Op| Write {
            pod: t.pod.clone(),
            container: t.container.clone(),
            container_id: id.to_string(),
            op,
        };
        let role = done.role;
        if let Some(message) = done.tracer_note {
            let _ = writes.send(queue(Op::Note { message })).await;
        }
        let mut tracer = done.tracer;
        match done.result {
            Ok((record, took)) => {
                self.metrics
                    .capture(role.as_str(), took, CaptureOutcome::Ok);
                let op = if role == Role::A {
                    t.snapshot_a = record.path.clone().map(PathBuf::from);
                    let name = sample
                        .process(done.target)
                        .map(|p| p.comm.clone())
                        .unwrap_or_else(|| "?".into());
                    let container_pid =
                        crate::node::procs::container_pid(&self.cfg.proc_root, done.target.pid);
                    let message = format!(
                        "snapshot A of {name} ({}) in {}/{}: {}",
                        pid_label(done.target.pid, container_pid),
                        t.pod.name_any(),
                        t.container,
                        human_bytes(record.size.max(0) as u64)
                    );
                    Op::SnapshotA {
                        process: ProcessRef {
                            pid: i64::from(done.target.pid),
                            container_pid: container_pid.map(i64::from),
                            name,
                            command: crate::node::procs::program(
                                &self.cfg.proc_root,
                                done.target.pid,
                            ),
                        },
                        record,
                        cooldown: Duration::from_secs_f64(policy.thresholds.cooldown_secs),
                        message,
                    }
                } else {
                    t.snapshot_a = None;
                    let message = format!(
                        "snapshot B of pid {} in {}/{} near the limit: {}",
                        record.pid,
                        t.pod.name_any(),
                        t.container,
                        human_bytes(record.size.max(0) as u64)
                    );
                    if tracer.is_active() {
                        // Read once the Job has written the pair's findings.
                        tokio::spawn(sites::read_when_analysed(
                            self.client.clone(),
                            (t.pod.clone(), t.container.clone(), id.to_string()),
                            record.sha256.clone(),
                            std::mem::replace(&mut tracer, Tracer::Off),
                            writes.clone(),
                        ));
                    }
                    Op::SnapshotB {
                        record,
                        timeline: t.timeline.clone(),
                        message,
                    }
                };
                let _ = writes.send(queue(op)).await;
                let mut notes = snapshot_notes(role, &done.notes, sample.memory.limit);
                if role == Role::A {
                    t.jvm_at_a = done.notes.jvm.clone();
                } else if let (Some(a), Some(b)) = (t.jvm_at_a.take(), &done.notes.jvm) {
                    notes.extend(
                        b.growth_since(&a)
                            .map(|g| format!("JVM between the snapshots: {g}")),
                    );
                }
                // Taken for the JVM's heap ceiling rather than the container's limit: say so.
                let of_limit = sample
                    .memory
                    .limit
                    .filter(|&l| l > 0)
                    .map_or(0.0, |l| sample.memory.working_set() as f64 / l as f64);
                if let Some(f) = sample
                    .jvm(done.target)
                    .and_then(|j| j.heap_fraction())
                    .filter(|&f| f > of_limit)
                {
                    notes.push(format!(
                        "snapshot {role}: the JVM's old generation at {:.0}% of its maximum heap, nearer its ceiling than the container to its limit ({:.0}%)",
                        f * 100.0,
                        of_limit * 100.0
                    ));
                }
                for message in notes {
                    let _ = writes.send(queue(Op::Note { message })).await;
                }
                if role == Role::A && policy.allocation_sites {
                    self.start_tracer(t, done.target.pid, sample, writes, id)
                        .await;
                }
            }
            Err((skipped, message)) => {
                let outcome = if skipped {
                    CaptureOutcome::Skipped
                } else {
                    CaptureOutcome::Failed
                };
                self.metrics.capture(role.as_str(), Duration::ZERO, outcome);
                tracing::warn!(container = %id, role = %role, %message, "capture failed");
                t.machine.give_up(sample.t);
                tracer.stop_in_background();
                t.tracer.stop_in_background();
                if let Some(path) = t.snapshot_a.take() {
                    let _ = std::fs::remove_file(path);
                }
                let reason = Reason::capture(skipped);
                if t.policy.as_ref().is_some_and(|p| p.events) {
                    let ev = Event {
                        type_: EventType::Warning,
                        reason: reason.into(),
                        note: Some(format!(
                            "snapshot {role} of container {}: {message}",
                            t.container
                        )),
                        action: "Capture".into(),
                        secondary: None,
                    };
                    if let Err(e) = self.recorder.publish(&ev, &t.pod.object_ref(&())).await {
                        tracing::warn!(error = %e, "event not recorded");
                    }
                }
                let _ = writes
                    .send(queue(Op::CaptureFailed {
                        role,
                        skipped,
                        message: format!(
                            "snapshot {role} of {}/{}: {message}",
                            t.pod.name_any(),
                            t.container
                        ),
                    }))
                    .await;
            }
        }
    }
}

impl Agent {
    /// At snapshot A (LeakWatch `allocationSites`): tracemalloc started in the target, unless
    /// traced growth would take it from B to its limit too fast to read the sites.
    async fn start_tracer(
        &self,
        t: &mut Tracked,
        pid: i32,
        sample: &Sample,
        writes: &mpsc::Sender<Write>,
        id: &str,
    ) {
        let limit = sample.memory.limit;
        let near = t
            .machine
            .thresholds
            .near_limit
            .and_then(|l| l.bytes(limit, sample.memory.working_set()));
        match crate::sites::too_close(near, limit, sample.growth_per_sec) {
            Some(message) => {
                let _ = writes
                    .send(super::write_of(id, t, Op::Note { message }))
                    .await;
            }
            None => t.tracer = Tracer::start(pid),
        }
    }
}

/// `pid 1 in the container, 4242 on the node`, or `pid 4242` where the two are one.
fn pid_label(node_pid: i32, container_pid: Option<i32>) -> String {
    match container_pid {
        Some(c) => format!("pid {c} in the container, {node_pid} on the node"),
        None => format!("pid {node_pid}"),
    }
}

/// A snapshot file as the agent records it.
struct Written {
    size: i64,
    /// Process memory it holds, uncompressed.
    memory: i64,
    sha256: String,
    took: Duration,
    notes: super::SnapshotNotes,
}

/// The report's notes for a snapshot: how it was taken when not as a core, a JVM's pools, and
/// at A whether the JVM's heap ceiling can fit the container's limit at all.
fn snapshot_notes(role: Role, n: &super::SnapshotNotes, limit: Option<u64>) -> Vec<String> {
    let mut out: Vec<String> = n
        .taken
        .iter()
        .map(|t| format!("snapshot {role}: {t}"))
        .collect();
    if let Some(j) = &n.jvm {
        out.push(format!("JVM at snapshot {role}: {}", j.pools()));
        if role == Role::A {
            out.extend(limit.and_then(|l| j.misconfigured(l)));
        }
    }
    out
}

/// Captures `pid` into `path` (0600, zstd, in a 0700 directory). `Err((skipped, message))`:
/// skipped when over the size cap or the free disk.
fn capture_one(dir: &Path, path: &Path, pid: i32, max: u64) -> Result<Written, (bool, String)> {
    let analyzer = Analyzer;
    let cap = snapshot::Cap {
        bytes: max,
        name: "maxSnapshotSize",
    };
    snapshot::preflight(&analyzer, pid, dir, cap).map_err(|r| (r.is_skip(), r.to_string()))?;
    let captured = analyzer
        .capture(pid, path, max)
        .map_err(|e| (false, e.to_string()))?;
    let sha = snapshot::sha256_file(&captured.path)
        .map_err(|e| (false, format!("hashing {}: {e}", path.display())))?;
    Ok(Written {
        size: to_i64(captured.file_bytes),
        memory: to_i64(captured.memory_bytes),
        sha256: sha,
        took: captured.total,
        notes: super::SnapshotNotes {
            // "process stopped 9 ms (pre-copied 1.0 GiB, 2.9 MiB dirty; …)"
            taken: captured
                .note
                .map(|n| format!("process stopped {} ms ({n})", captured.stopped.as_millis())),
            jvm: captured.jvm,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use leakhunt_analyzer::jvm::perf::JvmStats;

    #[test]
    fn a_jvm_snapshot_notes_its_pools_and_at_a_a_heap_ceiling_over_the_limit() {
        let notes = super::super::SnapshotNotes {
            taken: Some("a heap dump of the JVM (HPROF)".into()),
            jvm: Some(JvmStats {
                heap_used: Some(100 << 20),
                heap_committed: Some(200 << 20),
                heap_max: Some(1 << 30),
                threads: Some(10),
                ..JvmStats::default()
            }),
        };
        let a = snapshot_notes(Role::A, &notes, Some(512 << 20));
        assert_eq!(a.len(), 3, "{a:?}");
        assert!(a[0].starts_with("snapshot A: a heap dump"), "{a:?}");
        assert!(
            a[1].starts_with("JVM at snapshot A: heap 100 MiB used"),
            "{a:?}"
        );
        assert!(a[2].contains("misconfiguration"), "{a:?}");
        // At B the pools only; under a limit the ceiling fits, no misconfiguration.
        assert_eq!(snapshot_notes(Role::B, &notes, Some(512 << 20)).len(), 2);
        assert_eq!(snapshot_notes(Role::A, &notes, Some(4 << 30)).len(), 2);
        let core = super::super::SnapshotNotes::default();
        assert!(snapshot_notes(Role::A, &core, Some(512 << 20)).is_empty());
    }
}
