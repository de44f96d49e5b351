//! The status's own bookkeeping, as the builder's ops use it: bounded incident and sample
//! histories, kills counted once, conditions, and findings copied in.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use leakhunt_analyzer::findings;

use super::Reason;
use crate::crd::{
    growth_label, push_bounded, set_condition, Incident, LeakReportStatus, MemorySample,
    OomKillRecord, ReportSuspect, ReportType, MAX_ALL_SAMPLES, MAX_COUNTED_KILLS, MAX_INCIDENTS,
    MAX_SAMPLES, MAX_SUSPECTS, MAX_TYPES,
};
use crate::units::to_i64;

impl LeakReportStatus {
    /// Appends an incident, dropping the oldest beyond the bound.
    pub fn push_incident(&mut self, incident: Incident) {
        push_bounded(&mut self.incidents, incident, MAX_INCIDENTS);
    }

    /// Whether this kill was counted already.
    pub fn kill_counted(&self, key: &str) -> bool {
        self.counted_kills.iter().any(|k| k == key)
    }

    /// Counts an OOM kill once: returns false (and changes nothing) when `key` was counted.
    pub fn count_kill(&mut self, key: &str, record: OomKillRecord, message: String) -> bool {
        if self.kill_counted(key) {
            return false;
        }
        push_bounded(&mut self.counted_kills, key.to_string(), MAX_COUNTED_KILLS);
        self.oom_kills = self.oom_kills.saturating_add(1);
        self.push_incident(Incident {
            time: record.time.clone(),
            reason: Reason::OomKilled.into(),
            message,
        });
        self.last_oom_kill = Some(record);
        true
    }

    /// Appends a memory sample. Beyond [`MAX_SAMPLES`] of its container, the older half of
    /// that container's samples is thinned (so they still reach back past snapshot A); beyond
    /// [`MAX_ALL_SAMPLES`], the oldest of another container goes.
    pub fn push_sample(&mut self, sample: MemorySample) {
        let same = |m: &MemorySample| m.pod == sample.pod && m.container == sample.container;
        let samples = &mut self.memory.samples;
        let (mut mine, others): (Vec<MemorySample>, Vec<MemorySample>) =
            std::mem::take(samples).into_iter().partition(same);
        leakhunt_analyzer::timeline::push_decimated(&mut mine, sample, MAX_SAMPLES);
        let mut all: Vec<MemorySample> = others.into_iter().chain(mine).collect();
        all.sort_by_key(|m| m.time.0);
        while all.len() > MAX_ALL_SAMPLES {
            let last = all.last().cloned();
            match all.iter().position(|m| {
                last.as_ref()
                    .is_some_and(|l| !(m.pod == l.pod && m.container == l.container))
            }) {
                Some(i) => {
                    all.remove(i);
                }
                None => {
                    all.remove(0);
                }
            }
        }
        *samples = all;
    }

    /// The samples of one container (empty names: the local hunt's) as a timeline, seconds
    /// since the epoch.
    pub fn timeline(&self, pod: &str, container: &str) -> Vec<leakhunt_analyzer::timeline::Point> {
        self.memory
            .samples
            .iter()
            .filter(|m| m.pod == pod && m.container == container)
            .map(|m| leakhunt_analyzer::timeline::Point {
                t: m.time.0.as_millisecond() as f64 / 1e3,
                bytes: m.working_set.max(0) as u64,
            })
            .collect()
    }

    /// Sets (or replaces) a condition of this type, keeping its transition time when the
    /// status did not change.
    pub fn set_condition(
        &mut self,
        type_: &str,
        status: bool,
        reason: &str,
        message: &str,
        now: Time,
    ) {
        set_condition(&mut self.conditions, type_, status, reason, message, now);
    }

    /// Copies the analyzer's findings in: verdict, summary, bounded suspects and types, growth.
    pub fn apply_findings(&mut self, f: &findings::Findings) {
        self.verdict = Some(f.verdict.into());
        self.summary = Some(f.summary.clone()).filter(|s| !s.is_empty());
        self.suspects = f
            .suspects
            .iter()
            .take(MAX_SUSPECTS)
            .map(|s| ReportSuspect {
                kind: match s.kind {
                    findings::SuspectKind::Container => "container",
                    findings::SuspectKind::Type => "type",
                    findings::SuspectKind::Native => "native",
                }
                .into(),
                path: s.path.clone(),
                type_name: s.type_name.clone(),
                count_before: to_i64(s.count_before),
                count_after: to_i64(s.count_after),
                retained_bytes_before: to_i64(s.retained_bytes_before),
                retained_bytes_after: to_i64(s.retained_bytes_after),
                referrers: s.referrers.clone(),
                allocation_sites: s.allocation_sites.iter().map(|a| a.to_string()).collect(),
                address: None,
            })
            .collect();
        let mut types: Vec<&findings::TypeGrowth> = f.types.iter().collect();
        types.sort_by_key(|t| std::cmp::Reverse(t.bytes_growth()));
        self.types = types
            .into_iter()
            .take(MAX_TYPES)
            .map(|t| ReportType {
                name: t.name.clone(),
                count_before: to_i64(t.count_before),
                count_after: to_i64(t.count_after),
                bytes_before: to_i64(t.bytes_before),
                bytes_after: to_i64(t.bytes_after),
            })
            .collect();
        self.growth = f
            .suspects
            .first()
            .map(|s| growth_label(s.count_growth(), s.retained_growth()));
        self.timeline = f.timeline.as_ref().map(|t| t.sentence.clone());
    }
}
