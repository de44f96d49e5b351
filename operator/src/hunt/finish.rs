//! The end of a hunt: the verdict of a hunt without a diff, the snapshots removed, the summary.

use std::fs;
use std::io::Write;
use std::process::ExitStatus;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::{Failure, Hunt};
use crate::crd::{signed_bytes, Phase, Verdict};
use crate::node::threshold::{State, ThresholdMachine};
use crate::status;

impl Hunt<'_> {
    /// Says what a hunt that ended without a diff found, and why it is incomplete if it is.
    pub(super) fn finish(&mut self, machine: &ThresholdMachine, exit_status: Option<ExitStatus>) {
        let peak = self.peak_working_set;
        let limit = self.limit;
        let peak_text = format!(
            "{} peaked at {}",
            if limit.is_some() {
                "working set"
            } else {
                "memory"
            },
            self.of_limit(peak)
        );
        if self.findings.is_none() && self.failure.is_none() {
            let ended = exit_status.is_some() || !self.kills.is_empty() || self.target_gone;
            match (self.baseline.is_some(), ended) {
                (true, true) => {
                    self.failure = Some(Failure::ExitedBeforeB(format!(
                        "snapshot A was taken, {peak_text}, before B ({})",
                        self.thresholds.describe()
                    )))
                }
                (false, true)
                    if self.kills.iter().any(|k| k.kill.pid.is_some())
                        || exit_status.is_some_and(|s| !s.success()) =>
                {
                    self.failure = Some(Failure::ExitedBeforeB(format!(
                        "no snapshot was taken, {peak_text}"
                    )))
                }
                _ => {}
            }
        }
        let state = machine.state();
        let interrupted = self.failure == Some(Failure::Interrupted);
        let failure = self.failure.clone();
        // Start-up allocation is not growth: judge the second half of the watch (by time: the
        // older samples are thinned).
        let growth = {
            let mut w = crate::node::GrowthWindow::new(f64::INFINITY, usize::MAX);
            let (t0, t1) = (
                self.history.first().map_or(0.0, |p| p.t),
                self.history.last().map_or(0.0, |p| p.t),
            );
            for p in self.history.iter().filter(|p| p.t >= (t0 + t1) / 2.0) {
                w.push(p.t, p.bytes);
            }
            w.rate().map(|r| (r * 60.0) as i64).unwrap_or(0)
        };
        let analysed = self.findings.is_some();
        // Flat: at this rate the limit is more than an hour away; without a limit, under
        // max(1 MiB, 1 % of the peak) a minute.
        let flat = match limit {
            Some(l) => {
                let headroom = l.saturating_sub(self.history.last().map_or(0, |p| p.bytes));
                (growth as f64) < headroom as f64 / 60.0
            }
            None => (growth as f64) < (1u64 << 20).max(peak / 100) as f64,
        };
        let captured = match (&self.baseline, &self.after) {
            (Some(a), None) => {
                format!("snapshot A of pid {} only; snapshot B was not taken", a.pid)
            }
            (None, None) => "no snapshot was taken".into(),
            _ => "snapshots taken but not analysed".into(),
        };
        let status = self.status();
        if !analysed {
            // No analysis: judge from the working set alone, and say what was captured.
            status.notes.push(format!("{captured}: {peak_text}"));
            status.verdict = Some(
                if failure.is_none() && flat && !interrupted && status.oom_kills == 0 {
                    Verdict::NoLeak
                } else {
                    Verdict::Inconclusive
                },
            );
            status.summary = Some(match &failure {
                Some(f) => format!("{f}; {peak_text}"),
                None if flat => format!("no growth: {peak_text}, {}/min", signed_bytes(growth)),
                None => format!(
                    "growing {}/min but no snapshot pair: {peak_text}",
                    signed_bytes(growth)
                ),
            });
            if status.phase != Phase::Failed {
                status.phase = if failure.is_some() {
                    Phase::Failed
                } else {
                    Phase::Watching
                };
            }
            if matches!(state, State::Baseline { .. }) {
                status.phase = if failure.is_some() {
                    Phase::Failed
                } else {
                    Phase::Baseline
                };
            }
        }
        if let Some(f) = &failure {
            let now = Time(Timestamp::now());
            status.set_condition(
                status::ANALYSED,
                false,
                "HuntIncomplete",
                &f.to_string(),
                now,
            );
        }
    }

    pub(super) fn remove_snapshots(&mut self) {
        if self.opts.keep_snapshots {
            return;
        }
        for s in &self.outcome_snapshots {
            let _ = fs::remove_file(&s.path);
        }
        if let Some(status) = self.report.status.as_mut() {
            for s in &mut status.snapshots {
                s.path = None;
            }
        }
    }

    pub(super) fn write_summary(&mut self, out: &mut dyn Write) {
        let status = self.report.status.clone().unwrap_or_default();
        let verdict = status
            .verdict
            .map(|v| format!("{v:?}"))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(out, "verdict:   {verdict}");
        if let Some(s) = &status.summary {
            let _ = writeln!(out, "summary:   {s}");
        }
        if let Some(p) = &status.process {
            let _ = writeln!(out, "process:   {} (pid {})", p.name, p.pid);
        }
        let _ = writeln!(out, "OOM kills: {}", status.oom_kills);
        for k in &self.kills {
            let _ = writeln!(
                out,
                "  OOMKilled {} at {}{}",
                k.kill.process_label(),
                k.time.strftime("%H:%M:%S UTC"),
                if k.was_target {
                    " (the snapshotted process)"
                } else {
                    ""
                }
            );
        }
        for n in &status.notes {
            let _ = writeln!(out, "note:      {n}");
        }
        if let Some(f) = &self.failure {
            let _ = writeln!(out, "incomplete: {f}");
        }
        let _ = out.flush();
    }
}
