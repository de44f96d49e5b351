//! The hunt's steps: a sample recorded, kills counted, snapshots taken or voided, the pair
//! diffed and its verdict weighed against the timeline.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use leakhunt_analyzer::findings::Verdict as FindingsVerdict;
use leakhunt_analyzer::timeline::{self, Point, Trend};

use super::{
    output, Failure, Hunt, Judging, KillEvent, SnapshotTaken, HISTORY_POINTS, SETTLE_SLACK,
};
use crate::crd::{human_bytes, Incident, MemorySample, Phase, ProcessRef, SnapshotRecord};
use crate::node::procs::ProcessKey;
use crate::node::threshold::{ResetReason, State, ThresholdMachine};
use crate::node::{KillSource, Sample};
use crate::sites;
use crate::snapshot;
use crate::status::{self, Op, Reason, Role};
use crate::units::to_i64;

impl Hunt<'_> {
    pub(super) fn record_sample(&mut self, sample: &Sample) {
        // The command execs (sh → env → python): name the report after what finally runs.
        if let Some(p) = sample.processes.iter().find(|p| p.key.pid == self.main_pid) {
            if self.main_comm.as_deref() != Some(p.comm.as_str()) {
                self.main_comm = Some(p.comm.clone());
                self.report.metadata.name = Some(output::report_name(&p.comm, self.main_pid));
                self.report.spec.workload.display =
                    format!("Process/{} (pid {})", p.comm, self.main_pid);
            }
        }
        let ws = self.level(sample);
        self.peak_working_set = self.peak_working_set.max(ws);
        let now = Timestamp::now();
        let point = Point {
            t: self.clock0 + sample.t,
            bytes: ws,
        };
        timeline::push_decimated(&mut self.history, point, HISTORY_POINTS);
        let growth = sample.growth_per_sec;
        let eta = sample.seconds_to_oom;
        let status = self.status();
        let java_heap = sample.java_heap();
        status.push_sample(MemorySample {
            time: Time(now),
            working_set: to_i64(ws),
            pod: String::new(),
            container: String::new(),
            java_heap: java_heap.map(|h| to_i64(h.0)),
            java_heap_max: java_heap.map(|h| to_i64(h.1)),
        });
        status.memory.growth_per_minute = growth.map(|g| (g * 60.0) as i64);
        status.memory.predicted_oom_time = eta
            .and_then(|s| SignedDuration::try_from_secs_f64(s).ok())
            .and_then(|d| now.checked_add(d).ok())
            .map(Time);
    }

    pub(super) fn handle_kills(&mut self, sample: &Sample, state: State) {
        let target = match state {
            State::Baseline { target, .. } => Some(target.pid),
            _ => self
                .after
                .as_ref()
                .or(self.baseline.as_ref())
                .map(|s| s.pid),
        };
        for kill in &sample.kills {
            let time = Timestamp::now();
            let label = kill.process_label();
            let how = match kill.source {
                KillSource::KernelLog => "named by the kernel log",
                KillSource::Disappeared => "the process that vanished from the cgroup",
                KillSource::Unknown => "the counter rose; no process could be named",
            };
            let rss = kill
                .last_rss
                .map(|r| format!(", last RSS {}", human_bytes(r)))
                .unwrap_or_default();
            let message = format!(
                "OOMKilled: {label} at {}{rss} ({how})",
                time.strftime("%H:%M:%S UTC")
            );
            self.progress.event(&message);
            let was_target = kill.pid.is_some() && kill.pid == target;
            if self.analysed_at.is_some() {
                self.kill_after_analysis = true;
            }
            self.kills.push(KillEvent {
                kill: kill.clone(),
                time,
                was_target,
            });
            let status = self.status();
            status.oom_kills += 1;
            status.last_oom_kill = Some(crate::crd::OomKillRecord {
                pod: String::new(),
                container: String::new(),
                process: label.clone(),
                time: Time(time),
            });
            status.push_incident(Incident {
                time: Time(time),
                reason: Reason::OomKilled.into(),
                message,
            });
        }
        if !sample.kills.is_empty() {
            self.write_report();
        }
    }

    /// Takes snapshot A or B of `target`; false if it was skipped or failed.
    pub(super) fn snapshot(&mut self, role: Role, target: ProcessKey, sample: &Sample) -> bool {
        let pid = target.pid;
        let comm = sample
            .process(target)
            .map(|p| p.comm.clone())
            .unwrap_or_default();
        let ws = self.level(sample);
        let mut at = self.of_limit(ws);
        if let Some(f) = sample.jvm(target).and_then(|j| j.heap_fraction()) {
            at.push_str(&format!(
                ", its old generation at {:.0}% of the Java heap's maximum",
                f * 100.0
            ));
        }
        let cap = snapshot::Cap {
            bytes: self.opts.max_snapshot_size,
            name: "--max-snapshot-size",
        };
        let why_skip = snapshot::preflight(self.snap, pid, &self.opts.snapshot_dir, cap)
            .err()
            .map(|r| r.to_string());
        if let Some(reason) = why_skip {
            let message = format!("snapshot {role} of {comm} (pid {pid}) skipped: {reason}");
            self.progress.event(&message);
            self.apply(&Op::CaptureFailed {
                role,
                skipped: true,
                message: message.clone(),
            });
            self.failure.get_or_insert(Failure::Capture(message));
            self.status().phase = Phase::Failed;
            self.write_report();
            return false;
        }
        let path = self.opts.snapshot_dir.join(format!(
            "leakhunt-{}-{pid}-{role}.core.zst",
            std::process::id()
        ));
        let result = self.snap.capture(pid, &path, self.opts.max_snapshot_size);
        let captured = match result {
            Ok(c) => c,
            Err(e) => {
                // Never leave a partial file behind.
                let _ = fs::remove_file(&path);
                let message = format!("snapshot {role} of {comm} (pid {pid}) at {at} failed: {e}");
                self.progress.event(&message);
                self.apply(&Op::CaptureFailed {
                    role,
                    skipped: false,
                    message,
                });
                self.failure.get_or_insert(Failure::Capture(e.to_string()));
                self.status().phase = Phase::Failed;
                self.write_report();
                return false;
            }
        };
        let _ = fs::set_permissions(&captured.path, fs::Permissions::from_mode(0o600));
        let sha256 = snapshot::sha256_file(&captured.path).unwrap_or_default();
        let mut message = format!(
            "snapshot {role} of {comm} (pid {pid}) at {at}: {} file, {} of memory, process stopped {}",
            human_bytes(captured.file_bytes),
            human_bytes(captured.memory_bytes),
            human_duration(captured.stopped)
        );
        if let Some(note) = &captured.note {
            message.push_str(&format!(" ({note})"));
        }
        self.progress.event(&message);
        if let Some(n) = &captured.note {
            // In the report as the agent's has it: how long the process stopped, how it was copied.
            self.apply(&Op::Note {
                message: format!(
                    "snapshot {role}: process stopped {} ({n})",
                    human_duration(captured.stopped)
                ),
            });
        }
        if let Some(j) = &captured.jvm {
            // The pools at each snapshot, and at A whether the heap's ceiling fits the limit.
            let mut notes = vec![format!("JVM at snapshot {role}: {}", j.pools())];
            if role == Role::A {
                notes.extend(self.limit.and_then(|l| j.misconfigured(l)));
                self.jvm_at_a = Some(j.clone());
            } else if let Some(g) = self.jvm_at_a.take().and_then(|a| j.growth_since(&a)) {
                notes.push(format!("JVM between the snapshots: {g}"));
            }
            for n in notes {
                self.progress.event(&n);
                self.apply(&Op::Note { message: n });
            }
        }
        let taken = SnapshotTaken {
            role,
            pid,
            comm: comm.clone(),
            path: captured.path.clone(),
            file_bytes: captured.file_bytes,
            working_set: ws,
            at: self.history.last().map_or(0.0, |p| p.t),
        };
        self.outcome_snapshots.push(taken.clone());
        let record = SnapshotRecord {
            role: role.into(),
            node: self.node.clone(),
            time: Time(Timestamp::now()),
            size: to_i64(captured.file_bytes),
            memory: Some(to_i64(captured.memory_bytes)),
            sha256,
            path: Some(captured.path.display().to_string()),
            pid: pid as i64,
            pod: String::new(),
            container: String::new(),
            retain_until: None,
            tracer_bytes: None,
        };
        let process = ProcessRef {
            pid: pid as i64,
            container_pid: crate::node::procs::container_pid(&self.opts.proc_root, pid)
                .map(i64::from),
            name: comm,
            command: crate::node::procs::program(&self.opts.proc_root, pid),
        };
        // The agent's ops: the hunt's report is built as the cluster's is.
        let op = match role {
            Role::A => Op::SnapshotA {
                record,
                process,
                cooldown: Duration::ZERO,
                message,
            },
            Role::B => Op::SnapshotB {
                record,
                timeline: Vec::new(),
                message,
            },
        };
        self.apply(&op);
        if role == Role::A && self.opts.allocation_sites {
            self.start_tracer(pid, sample, ws);
        }
        if role == Role::A {
            self.baseline = Some(taken);
        } else {
            self.after = Some(taken);
        }
        self.write_report();
        true
    }

    pub(super) fn analyse(&mut self, out: &mut dyn Write, crossed: Instant) {
        let (Some(a), Some(b)) = (self.baseline.clone(), self.after.clone()) else {
            return;
        };
        let (tracer_bytes, said) = self.tracer.memory_at_b();
        if let Some(m) = said {
            self.site_note(m);
        }
        match self.snap.diff_traced(&a.path, &b.path, tracer_bytes) {
            Ok(findings) => {
                self.judging = Some(Judging {
                    findings,
                    crossed,
                    a,
                    b,
                    announced: false,
                });
                self.conclude(out, false);
            }
            Err(e) => {
                let message = e.to_string();
                self.progress.event(&message);
                status::analysis_failed(self.status(), &message, Time(Timestamp::now()));
                self.failure.get_or_insert(Failure::Analysis(message));
                self.analysed_at = Some(Instant::now());
                self.write_report();
            }
        }
    }

    /// Weighs the diff waiting in `judging` against the timeline and reports it. A step too
    /// recent to tell from growth waits for more samples, unless this is the `last` chance.
    pub(super) fn conclude(&mut self, out: &mut dyn Write, last: bool) {
        let Some(j) = self.judging.as_mut() else {
            return;
        };
        let settle = self.opts.window.as_secs_f64();
        let trend = timeline::judge(&self.history, j.a.at, j.b.at, settle);
        // Nothing to clear in a no-leak; and samples that never come do not hold the report.
        let wait = j.findings.verdict != FindingsVerdict::NoLeak
            && j.crossed.elapsed() < self.opts.window + SETTLE_SLACK;
        if matches!(trend, Trend::Pending { .. }) && !last && wait {
            if !j.announced {
                j.announced = true;
                if let Some(s) = trend.sentence() {
                    self.progress.event(&format!(
                        "{s}; watching up to {settle:.0} s more before the verdict"
                    ));
                }
            }
            return;
        }
        let Some(Judging {
            mut findings,
            crossed,
            a,
            b,
            ..
        }) = self.judging.take()
        else {
            return;
        };
        timeline::apply(&mut findings, trend);
        let said = self.tracer.finish(&mut findings);
        for m in &said {
            self.progress.event(m);
        }
        findings.notes.extend(self.site_notes.drain(..).chain(said));
        let _ = writeln!(
            out,
            "\nleakhunt report: {} (pid {}), snapshot A at {} and B at {}",
            b.comm,
            b.pid,
            self.of_limit(a.working_set),
            self.of_limit(b.working_set),
        );
        let _ = self.snap.write_text(&findings, out);
        let _ = out.flush();
        self.b_to_report = Some(crossed.elapsed());
        self.analysed_at = Some(Instant::now());
        status::analysed(self.status(), &findings, Time(Timestamp::now()));
        self.findings = Some(findings);
        self.progress.event(&format!(
            "analysed in {:.1}s after the near-limit crossing",
            self.b_to_report.unwrap_or_default().as_secs_f64()
        ));
        self.write_report();
    }

    /// `--allocation-sites` at snapshot A: tracemalloc started in the target, unless it would
    /// reach B too soon for that to be safe.
    fn start_tracer(&mut self, pid: i32, sample: &Sample, ws: u64) {
        let near = self
            .thresholds
            .near_limit
            .and_then(|l| l.bytes(self.limit, ws));
        match sites::too_close(near, self.limit, sample.growth_per_sec) {
            Some(why) => self.site_note(why),
            None => self.tracer = sites::Tracer::start(pid),
        }
    }

    /// What starting tracemalloc came to, once it is known.
    pub(super) fn poll_tracer(&mut self) {
        if let Some(m) = self.tracer.poll(false) {
            self.site_note(m);
        }
    }

    /// An allocation-sites message: shown now, and a note of the report when it is written.
    fn site_note(&mut self, m: String) {
        self.progress.event(&m);
        self.site_notes.push(m);
    }

    pub(super) fn void_baseline(&mut self, target: ProcessKey, reason: ResetReason) {
        let why = match reason {
            ResetReason::TargetGone => "the process is gone (killed or restarted)",
            ResetReason::OomKill => "an OOM kill in the cgroup",
        };
        let message = format!(
            "snapshot A of pid {} is void: {why}; hunting again in the process that grows",
            target.pid
        );
        self.progress.event(&message);
        if let Some(a) = self.baseline.take() {
            let _ = fs::remove_file(&a.path);
        }
        self.tracer.stop_in_background();
        self.apply(&Op::Reset { message });
        // A capture failure earlier in this hunt no longer stands in the way of a verdict.
        if matches!(self.failure, Some(Failure::Capture(_))) {
            self.failure = None;
        }
        self.write_report();
    }

    /// `--duration` ran out: a pending B is taken now, whatever the level.
    pub(super) fn end_of_watch(
        &mut self,
        machine: &mut ThresholdMachine,
        sample: &Sample,
        out: &mut dyn Write,
    ) {
        if let State::Baseline { target, .. } = machine.state() {
            if sample.alive().contains(&target) {
                self.progress
                    .event("taking snapshot B at the end of the watch");
                let crossed = Instant::now();
                // The pair is complete: the machine must not reset or take B again while the
                // verdict waits for its samples.
                machine.paired(sample.t);
                if self.snapshot(Role::B, target, sample) {
                    self.analyse(out, crossed);
                }
            }
        }
    }
}

/// "12 ms" under ten seconds, "12.3 s" above.
fn human_duration(d: std::time::Duration) -> String {
    if d.as_secs() < 10 {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}
