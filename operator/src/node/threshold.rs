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

use super::procs::ProcessKey;

/// Thresholds as fractions of the limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Snapshot A when the working set reaches this fraction of the limit (default 0.5).
    pub baseline: f64,
    /// Snapshot B at this fraction (default 0.85).
    pub near_limit: f64,
    /// Seconds after a completed (or failed) hunt before a new one may start.
    pub cooldown_secs: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            baseline: 0.5,
            near_limit: 0.85,
            cooldown_secs: 600.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum State {
    Idle,
    /// Snapshot A was taken of `target` at `at`.
    Baseline {
        target: ProcessKey,
        at: f64,
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
        let fraction = obs
            .limit
            .filter(|l| *l > 0)
            .map(|l| obs.working_set as f64 / l as f64);
        match self.state {
            State::Done { at, .. } => {
                if obs.now - at >= self.thresholds.cooldown_secs {
                    self.state = State::Idle;
                }
                None
            }
            State::Idle => {
                let target = obs.grower?;
                if fraction? >= self.thresholds.baseline {
                    self.state = State::Baseline {
                        target,
                        at: obs.now,
                    };
                    Some(Action::SnapshotA { target })
                } else {
                    None
                }
            }
            State::Baseline { target, .. } => {
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
                if fraction? >= self.thresholds.near_limit {
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
        };
        assert_eq!(m.observe(&obs), None);
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
}
