//! When to take the snapshot pair: a pure state machine fed one observation per sample, so the
//! local hunt and the node agent decide alike and the decisions are unit-tested without cgroups.
//!
//! ```text
//! Idle ──ws ≥ baseline──▶ Baseline{target} ──ws ≥ near-limit──▶ Done{analysed}
//!  ▲                        │ target gone / OOM kill                │ cooldown elapsed
//!  └────────────────────────┴───────────────────────────────────────┘
//! ```
//! A failed capture also ends in `Done` (not analysed), so a capture that cannot succeed is not
//! retried every second.
//!
//! Levels are read on the cgroup's working set when the cgroup has a limit (it is what the kernel
//! OOM-kills on), else on the RSS of the process hunted (the grower before A, the target after).

use super::procs::ProcessKey;
use crate::crd::human_bytes;

/// A memory level a snapshot is taken at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Level {
    /// This share of the memory limit (0 < share ≤ 1); needs a limit.
    Share(f64),
    /// This many bytes.
    Bytes(u64),
    /// Grown since snapshot A by `bytes` and by `of_a` × the level at A, whichever is more (B only).
    Growth { bytes: u64, of_a: f64 },
}

impl Level {
    /// Snapshot A at the first sample.
    pub const NOW: Level = Level::Bytes(0);
    /// B once the process grew by max(64 MiB, 25 % of its size at A): the default without a limit.
    pub const GROWN: Level = Level::Growth {
        bytes: 64 << 20,
        of_a: 0.25,
    };

    pub fn needs_limit(self) -> bool {
        matches!(self, Level::Share(_))
    }

    /// The level in bytes under `limit` (`at_a`: the level at snapshot A); a share needs a
    /// limit.
    pub fn bytes(self, limit: Option<u64>, at_a: u64) -> Option<u64> {
        match self {
            Level::Share(f) => limit.map(|l| (l as f64 * f) as u64),
            Level::Bytes(b) => Some(b),
            Level::Growth { bytes, of_a } => {
                Some(at_a.saturating_add(bytes.max((of_a * at_a as f64) as u64)))
            }
        }
    }

    /// Whether `measured` has reached this level (`at_a`: the level at snapshot A).
    fn reached(self, measured: Option<u64>, fraction: Option<f64>, at_a: u64) -> bool {
        match self {
            // A share is judged on the cgroup's own fraction, not on bytes of a limit.
            Level::Share(f) => fraction.is_some_and(|x| x >= f),
            _ => matches!((measured, self.bytes(None, at_a)), (Some(m), Some(level)) if m >= level),
        }
    }

    /// `50% of the limit`, `200 MiB`, `+150 MiB`, `max(+64 MiB, +25% of its size at A)`.
    pub fn describe(self) -> String {
        match self {
            Level::Share(f) => format!("{:.0}% of the limit", f * 100.0),
            Level::Bytes(0) => "now".into(),
            Level::Bytes(b) => human_bytes(b),
            Level::Growth { bytes, of_a } if of_a > 0.0 => format!(
                "once grown by max({}, {:.0}% of its size at A)",
                human_bytes(bytes),
                of_a * 100.0
            ),
            Level::Growth { bytes, .. } => format!("once grown by {}", human_bytes(bytes)),
        }
    }
}

/// When to take A and B.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Snapshot A at this level (default 50 % of the limit).
    pub baseline: Level,
    /// Snapshot B at this level (default 85 % of the limit); `None`: by time only.
    pub near_limit: Option<Level>,
    /// Snapshot B this many seconds after A at the latest.
    pub pair_after: Option<f64>,
    /// Seconds after a completed (or failed) hunt before a new one may start.
    pub cooldown_secs: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds::shares(0.5, 0.85, 600.0)
    }
}

impl Thresholds {
    /// A and B at shares of the limit: the agent's thresholds.
    pub fn shares(baseline: f64, near_limit: f64, cooldown_secs: f64) -> Thresholds {
        Thresholds {
            baseline: Level::Share(baseline),
            near_limit: Some(Level::Share(near_limit)),
            pair_after: None,
            cooldown_secs,
        }
    }

    pub fn needs_limit(&self) -> bool {
        self.baseline.needs_limit() || self.near_limit.is_some_and(Level::needs_limit)
    }

    /// `snapshot A at 50% of the limit, B at 85% of the limit`, for the first line and the report.
    pub fn describe(&self) -> String {
        let a = match self.baseline {
            Level::Bytes(0) => "snapshot A now".to_string(),
            l => format!("snapshot A at {}", l.describe()),
        };
        let b = match (self.near_limit, self.pair_after) {
            (Some(l @ Level::Growth { .. }), None) => format!("B {}", l.describe()),
            (Some(l), None) => format!("B at {}", l.describe()),
            (None, Some(s)) => format!("B {s:.0} s after A"),
            (Some(l @ Level::Growth { .. }), Some(s)) => {
                format!(
                    "B {} or {s:.0} s after A, whichever comes first",
                    l.describe()
                )
            }
            (Some(l), Some(s)) => format!(
                "B at {} or {s:.0} s after A, whichever comes first",
                l.describe()
            ),
            (None, None) => "B never (no level, no time)".into(),
        };
        format!("{a}, {b}")
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum State {
    Idle,
    /// Snapshot A was taken of `target` at `at`, when the level read `level`.
    Baseline {
        target: ProcessKey,
        at: f64,
        level: u64,
    },
    /// The hunt ended at `at`: analysed, or given up after a failed capture.
    Done {
        at: f64,
        analysed: bool,
    },
}

/// What one sample shows.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    /// Seconds on a monotonic clock.
    pub now: f64,
    pub working_set: u64,
    /// `None`: no limit, nothing to be near.
    pub limit: Option<u64>,
    /// The cgroup's OOM-kill counter went up since the previous sample.
    pub oom_killed: bool,
    /// Processes alive in the cgroup now.
    pub alive: &'a [ProcessKey],
    /// The process to snapshot: the one growing fastest (the caller's choice).
    pub grower: Option<ProcessKey>,
    /// RSS of the process the levels are read on without a limit: the grower before A, the
    /// target after.
    pub process_rss: Option<u64>,
    /// When that process is a JVM: its old generation's floor as a share of its maximum. A share
    /// of the limit is reached by whichever of the two is nearer its ceiling.
    pub heap_fraction: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    /// The snapshotted process was OOM-killed or exited (a worker respawned).
    TargetGone,
    /// An OOM kill in the cgroup: memory before and after it does not compare.
    OomKill,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    SnapshotA {
        target: ProcessKey,
    },
    SnapshotB {
        target: ProcessKey,
    },
    /// The baseline snapshot is void; hunting starts over.
    Reset {
        target: ProcessKey,
        reason: ResetReason,
    },
}

#[derive(Debug, Clone)]
pub struct ThresholdMachine {
    pub thresholds: Thresholds,
    state: State,
}

impl ThresholdMachine {
    pub fn new(thresholds: Thresholds) -> ThresholdMachine {
        ThresholdMachine {
            thresholds,
            state: State::Idle,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Feeds one sample; returns what to do now.
    pub fn observe(&mut self, obs: &Observation<'_>) -> Option<Action> {
        let limit = obs.limit.filter(|l| *l > 0);
        let fraction = limit.map(|l| obs.working_set as f64 / l as f64);
        let fraction = match (fraction, obs.heap_fraction) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let measured = match limit {
            Some(_) => Some(obs.working_set),
            None => obs.process_rss,
        };
        match self.state {
            State::Done { at, .. } => {
                if obs.now - at >= self.thresholds.cooldown_secs {
                    self.state = State::Idle;
                }
                None
            }
            State::Idle => {
                let target = obs.grower?;
                if self.thresholds.baseline.reached(measured, fraction, 0) {
                    self.state = State::Baseline {
                        target,
                        at: obs.now,
                        level: measured.unwrap_or(0),
                    };
                    Some(Action::SnapshotA { target })
                } else {
                    None
                }
            }
            State::Baseline { target, at, level } => {
                let gone = !obs.alive.contains(&target);
                if gone || obs.oom_killed {
                    self.state = State::Idle;
                    let reason = if gone {
                        ResetReason::TargetGone
                    } else {
                        ResetReason::OomKill
                    };
                    return Some(Action::Reset { target, reason });
                }
                let t = &self.thresholds;
                let by_level = t
                    .near_limit
                    .is_some_and(|l| l.reached(measured, fraction, level));
                let by_time = t.pair_after.is_some_and(|d| obs.now - at >= d);
                if by_level || by_time {
                    self.state = State::Done {
                        at: obs.now,
                        analysed: true,
                    };
                    Some(Action::SnapshotB { target })
                } else {
                    None
                }
            }
        }
    }

    /// Snapshot B was taken outside the thresholds (the end of a watch): the pair is complete.
    pub fn paired(&mut self, now: f64) {
        self.state = State::Done {
            at: now,
            analysed: true,
        };
    }

    /// A capture failed or was skipped: stop this hunt until the cooldown has passed.
    pub fn give_up(&mut self, now: f64) {
        self.state = State::Done {
            at: now,
            analysed: false,
        };
    }

    /// Starts over at once (an A whose B can no longer come, a process restart seen elsewhere).
    pub fn reset(&mut self) {
        self.state = State::Idle;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: u64 = 1000;
    fn key(pid: i32) -> ProcessKey {
        ProcessKey {
            pid,
            start_ticks: pid as u64 * 10,
        }
    }

    struct Run {
        m: ThresholdMachine,
        t: f64,
    }

    impl Run {
        fn new() -> Run {
            Run {
                m: ThresholdMachine::new(Thresholds {
                    cooldown_secs: 30.0,
                    ..Default::default()
                }),
                t: 0.0,
            }
        }
        fn step(
            &mut self,
            ws: u64,
            oom: bool,
            alive: &[ProcessKey],
            grower: Option<ProcessKey>,
        ) -> Option<Action> {
            self.t += 1.0;
            self.m.observe(&Observation {
                now: self.t,
                working_set: ws,
                limit: Some(LIMIT),
                oom_killed: oom,
                alive,
                grower,
                process_rss: None,
                heap_fraction: None,
            })
        }
    }

    #[test]
    fn a_then_b_then_cooldown() {
        let mut r = Run::new();
        let alive = [key(1), key(2)];
        assert_eq!(r.step(100, false, &alive, Some(key(2))), None);
        assert_eq!(r.step(499, false, &alive, Some(key(2))), None);
        assert_eq!(
            r.step(500, false, &alive, Some(key(2))),
            Some(Action::SnapshotA { target: key(2) })
        );
        // The grower changing after A does not move the target.
        assert_eq!(r.step(700, false, &alive, Some(key(1))), None);
        assert_eq!(
            r.step(850, false, &alive, Some(key(1))),
            Some(Action::SnapshotB { target: key(2) })
        );
        assert!(matches!(r.m.state(), State::Done { analysed: true, .. }));
        // Cooldown: nothing for 30 s even above the thresholds.
        for _ in 0..29 {
            assert_eq!(r.step(900, false, &alive, Some(key(1))), None);
        }
        assert_eq!(
            r.step(900, false, &alive, Some(key(1))),
            None,
            "cooldown ends: Idle"
        );
        assert_eq!(
            r.step(900, false, &alive, Some(key(1))),
            Some(Action::SnapshotA { target: key(1) })
        );
    }

    #[test]
    fn worker_killed_between_a_and_b_restarts_on_the_new_worker() {
        let mut r = Run::new();
        assert_eq!(
            r.step(600, false, &[key(1), key(2)], Some(key(2))),
            Some(Action::SnapshotA { target: key(2) })
        );
        // Worker 2 OOM-killed; master 1 respawns worker 3 (same PID reused would differ in start time).
        let respawned = ProcessKey {
            pid: 2,
            start_ticks: 999,
        };
        assert_eq!(
            r.step(200, true, &[key(1), respawned], Some(respawned)),
            Some(Action::Reset {
                target: key(2),
                reason: ResetReason::TargetGone
            })
        );
        assert_eq!(r.m.state(), State::Idle);
        assert_eq!(
            r.step(300, false, &[key(1), respawned], Some(respawned)),
            None
        );
        assert_eq!(
            r.step(520, false, &[key(1), respawned], Some(respawned)),
            Some(Action::SnapshotA { target: respawned })
        );
        assert_eq!(
            r.step(860, false, &[key(1), respawned], Some(respawned)),
            Some(Action::SnapshotB { target: respawned })
        );
    }

    #[test]
    fn oom_kill_of_another_process_voids_the_baseline() {
        let mut r = Run::new();
        r.step(600, false, &[key(1), key(2)], Some(key(2)));
        assert_eq!(
            r.step(400, true, &[key(1), key(2)], Some(key(2))),
            Some(Action::Reset {
                target: key(2),
                reason: ResetReason::OomKill
            })
        );
    }

    #[test]
    fn a_jvm_near_its_heap_ceiling_is_near_the_limit() {
        // Working set at 20 % of the limit all along; the JVM's old generation floor climbs to
        // its -Xmx: A at half of it, B at 85 %.
        let mut m = ThresholdMachine::new(Thresholds::default());
        let alive = [key(1)];
        let obs = |t: f64, heap: f64| Observation {
            now: t,
            working_set: LIMIT / 5,
            limit: Some(LIMIT),
            oom_killed: false,
            alive: &alive,
            grower: Some(key(1)),
            process_rss: None,
            heap_fraction: Some(heap),
        };
        assert_eq!(m.observe(&obs(1.0, 0.3)), None);
        assert_eq!(
            m.observe(&obs(2.0, 0.5)),
            Some(Action::SnapshotA { target: key(1) })
        );
        assert_eq!(m.observe(&obs(3.0, 0.8)), None);
        assert_eq!(
            m.observe(&obs(4.0, 0.86)),
            Some(Action::SnapshotB { target: key(1) })
        );
    }

    #[test]
    fn no_limit_or_no_grower_does_nothing() {
        let mut m = ThresholdMachine::new(Thresholds::default());
        let alive = [key(1)];
        let obs = Observation {
            now: 1.0,
            working_set: u64::MAX,
            limit: None,
            oom_killed: false,
            alive: &alive,
            grower: Some(key(1)),
            process_rss: Some(u64::MAX),
            heap_fraction: None,
        };
        assert_eq!(m.observe(&obs), None, "shares need a limit");
        assert_eq!(
            m.observe(&Observation {
                limit: Some(10),
                grower: None,
                ..obs
            }),
            None
        );
        assert_eq!(m.state(), State::Idle);
    }

    #[test]
    fn jump_past_both_thresholds_takes_a_then_b() {
        let mut r = Run::new();
        let alive = [key(1)];
        assert_eq!(
            r.step(900, false, &alive, Some(key(1))),
            Some(Action::SnapshotA { target: key(1) })
        );
        assert_eq!(
            r.step(910, false, &alive, Some(key(1))),
            Some(Action::SnapshotB { target: key(1) })
        );
    }

    #[test]
    fn give_up_waits_for_cooldown() {
        let mut r = Run::new();
        let alive = [key(1)];
        r.step(600, false, &alive, Some(key(1)));
        r.m.give_up(r.t);
        assert!(matches!(
            r.m.state(),
            State::Done {
                analysed: false,
                ..
            }
        ));
        assert_eq!(r.step(900, false, &alive, Some(key(1))), None);
    }

    /// A machine without a limit, fed the process's RSS.
    fn unlimited(t: Thresholds) -> impl FnMut(f64, u64) -> Option<Action> {
        let mut m = ThresholdMachine::new(t);
        let alive = [key(1)];
        move |now, rss| {
            m.observe(&Observation {
                now,
                working_set: 0,
                limit: None,
                oom_killed: false,
                alive: &alive,
                grower: Some(key(1)),
                process_rss: Some(rss),
                heap_fraction: None,
            })
        }
    }

    #[test]
    fn sizes_growth_and_time_need_no_limit() {
        const M: u64 = 1 << 20;
        let sizes = Thresholds {
            baseline: Level::Bytes(200 * M),
            near_limit: Some(Level::Bytes(400 * M)),
            pair_after: None,
            cooldown_secs: f64::INFINITY,
        };
        let mut step = unlimited(sizes);
        assert_eq!(step(1.0, 100 * M), None);
        assert!(matches!(step(2.0, 200 * M), Some(Action::SnapshotA { .. })));
        assert_eq!(step(3.0, 399 * M), None);
        assert!(matches!(step(4.0, 400 * M), Some(Action::SnapshotB { .. })));

        // The default without a limit: A now, B after max(64 MiB, 25 %) of growth.
        let grown = Thresholds {
            baseline: Level::NOW,
            near_limit: Some(Level::GROWN),
            pair_after: None,
            cooldown_secs: f64::INFINITY,
        };
        let mut step = unlimited(grown);
        assert!(matches!(step(1.0, 400 * M), Some(Action::SnapshotA { .. })));
        assert_eq!(step(2.0, 499 * M), None, "25% of 400 MiB is 100 MiB");
        assert!(matches!(step(3.0, 500 * M), Some(Action::SnapshotB { .. })));
        let mut step = unlimited(grown);
        step(1.0, 20 * M);
        assert_eq!(step(2.0, 83 * M), None, "at least 64 MiB");
        assert!(matches!(step(3.0, 84 * M), Some(Action::SnapshotB { .. })));

        // Time mode: B after 60 s whatever the level; or earlier at the level.
        let timed = Thresholds {
            baseline: Level::NOW,
            near_limit: None,
            pair_after: Some(60.0),
            cooldown_secs: f64::INFINITY,
        };
        let mut step = unlimited(timed);
        assert!(matches!(step(10.0, M), Some(Action::SnapshotA { .. })));
        assert_eq!(step(69.0, 10 * M), None);
        assert!(matches!(step(70.0, M), Some(Action::SnapshotB { .. })));
        assert!(!timed.needs_limit() && Thresholds::default().needs_limit());
    }

    #[test]
    fn thresholds_say_what_they_are() {
        assert_eq!(
            Thresholds::default().describe(),
            "snapshot A at 50% of the limit, B at 85% of the limit"
        );
        let t = Thresholds {
            baseline: Level::NOW,
            near_limit: Some(Level::GROWN),
            pair_after: None,
            cooldown_secs: 0.0,
        };
        assert_eq!(
            t.describe(),
            "snapshot A now, B once grown by max(64MiB, 25% of its size at A)"
        );
        let t = Thresholds {
            near_limit: Some(Level::Growth {
                bytes: 150 << 20,
                of_a: 0.0,
            }),
            pair_after: Some(60.0),
            ..t
        };
        assert_eq!(
            t.describe(),
            "snapshot A now, B once grown by 150MiB or 60 s after A, whichever comes first"
        );
    }
}
