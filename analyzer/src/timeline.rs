//! What the memory timeline says about growth between two snapshots: the one rule the hunt and
//! the analyzer Job apply to a heap diff before they call it a leak.
//!
//! Two snapshots see only a difference. One allocation made once between them looks exactly like
//! growth; a cache caught between its clearing and its next fill does too. The working-set samples
//! taken meanwhile (and after B) tell these apart:
//! - **step**: the growth between A and B is one jump (a few samples at most) and memory has been
//!   flat for the settle time since: not a leak;
//! - **sawtooth**: memory rose and fell back several times, its lows and highs level: not a leak;
//! - **spread**: the growth is spread over the interval, or a step is followed by more growth:
//!   the heap diff's verdict stands;
//! - **pending**: a step too recent to tell from growth; the caller may wait for more samples.
//!
//! Noise is measured from the timeline itself (the median deviation of consecutive samples from
//! the typical rate), so the rule holds at a sample a second or one every ten.

use serde::{Deserialize, Serialize};

use crate::findings::{Findings, Verdict};
use crate::util::{human_bytes, human_delta};

/// One working-set reading: seconds since the Unix epoch, bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub t: f64,
    pub bytes: u64,
}

/// The shape of the working set around the snapshot pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "shape",
    rename_all = "kebab-case",
    rename_all_fields = "camelCase"
)]
pub enum Trend {
    /// Too few samples between the snapshots to say anything.
    Unknown,
    /// The working set barely moved between the snapshots.
    Flat { rise: i64 },
    /// Growth spread over the interval between the snapshots.
    Spread {
        rise: i64,
        seconds: f64,
        per_minute: f64,
        largest_rise: i64,
    },
    /// One rise, then flat for `flat_for` seconds (at least the settle time).
    Step { at: f64, by: i64, flat_for: f64 },
    /// One rise, flat for less than the settle time so far.
    Pending {
        at: f64,
        by: i64,
        flat_for: f64,
        settle: f64,
    },
    /// One rise, then more growth.
    StepThenGrowth {
        at: f64,
        by: i64,
        since: i64,
        seconds: f64,
    },
    /// One rise, then a fall (memory released, or the process restarted).
    Unsettled { at: f64, by: i64, since: i64 },
    /// Filled and emptied, `cycles` times, between `low` and `high`.
    Sawtooth {
        cycles: u32,
        low: u64,
        high: u64,
        seconds: f64,
    },
}

/// The timeline's part in a verdict, as the findings carry it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TimelineEvidence {
    #[serde(flatten)]
    pub trend: Trend,
    /// One sentence a person can read.
    pub sentence: String,
    /// What the snapshots alone concluded.
    pub heap_verdict: Verdict,
}

/// A step spans at most this many sample intervals (a sample taken mid-allocation, or a loaded
/// machine, splits one rise over two or three), and no more than STEP_SECS of them: longer,
/// a rise is growth, not one allocation. Sampled more sparsely, a step is one interval.
const STEP_INTERVALS: f64 = 3.5;
const STEP_SECS: f64 = 2.0;
/// Share of the A → B growth a step must hold to explain it.
const STEP_SHARE: f64 = 0.8;
/// Below this the working set did not move (page-cache and allocator jitter).
const MIN_RISE: u64 = 1 << 20;
/// Samples after a step before its plateau can be judged.
const PLATEAU_SAMPLES: usize = 3;

/// Judges the timeline `points` (ordered by time) around snapshots taken at `a` and `b`. A step
/// counts as one-time once memory has been flat for `settle` seconds after it.
pub fn judge(points: &[Point], a: f64, b: f64, settle: f64) -> Trend {
    let points = ordered(points);
    let Some(ia) = points.iter().rposition(|p| p.t <= a) else {
        return Trend::Unknown;
    };
    let Some(ib) = points.iter().rposition(|p| p.t <= b) else {
        return Trend::Unknown;
    };
    if ib < ia + 1 {
        return Trend::Unknown;
    }
    let v = |i: usize| points[i].bytes as i64;
    let rise = v(ib) - v(ia);
    let (_, noise) = rate_and_noise(&points);
    let significant = (MIN_RISE as f64).max(4.0 * noise);
    if (rise as f64) < significant {
        return Trend::Flat { rise };
    }
    if let Some(saw) = sawtooth(&points, ib, rise, noise) {
        return saw;
    }
    // The biggest rise within a short span (a step: one allocation, which a loaded machine may
    // spread over two or three samples), by its part between A and B; it may run on past B
    // (B taken mid-step).
    let dt = median_interval(&points);
    let span = (STEP_INTERVALS * dt).min(STEP_SECS).max(1.5 * dt);
    let inside = |s: usize, e: usize| v(e.min(ib)) - v(s.max(ia));
    let tie = (2.0 * noise).max(MIN_RISE as f64 / 8.0);
    let mut best: Option<(usize, usize)> = None;
    for e in ia + 1..points.len() {
        for s in (0..e.min(ib)).rev() {
            // One interval is a step candidate however long: the sampler may have waited for a
            // capture meanwhile. (Growth that goes on shows after it.)
            if e - s > 1 && points[e].t - points[s].t > span {
                break;
            }
            // Larger by more than the noise: otherwise the earliest, shortest window.
            if best.is_none_or(|(bs, be)| (inside(s, e) - inside(bs, be)) as f64 > tie) {
                best = Some((s, e));
            }
        }
    }
    // A step B was taken in the middle of: its rest comes in the samples after B.
    if let Some((s, e)) = best.as_mut() {
        while *e + 1 < points.len()
            && *e >= ib
            && points[*e + 1].t - points[*s].t <= span
            && (v(*e + 1) - v(*e)) as f64 >= significant / 2.0
        {
            *e += 1;
        }
    }
    let spread = || {
        let seconds = points[ib].t - points[ia].t;
        let largest = (ia + 1..=ib).map(|i| v(i) - v(i - 1)).max().unwrap_or(0);
        Trend::Spread {
            rise,
            seconds,
            per_minute: rise as f64 / seconds.max(1e-3) * 60.0,
            largest_rise: largest,
        }
    };
    let Some((start, end)) = best else {
        return spread();
    };
    // The step must explain the pair: most of its rise, and no growth of note before it.
    let before = v(start.max(ia)) - v(ia);
    if (inside(start, end) as f64) < STEP_SHARE * rise as f64 || before as f64 >= significant {
        return spread();
    }
    // The rise as far as it concerns the pair: a start-up ramp just before A is not its part.
    let by = v(end) - v(start.max(ia));
    let at = points[end].t;
    let last = points.len() - 1;
    let flat_for = points[last].t - at;
    // What came after: the level it settled at against the latest samples (their median, so
    // one reading taken while a collection ran does not decide).
    let after = &points[end..];
    let tail: Vec<i64> = after
        .iter()
        .skip(after.len() / 2)
        .map(|p| p.bytes as i64)
        .collect();
    let since = median_i64(&tail) - v(end);
    // And the slope since the step: a slow leak beside a big allocation.
    let slope = slope(after).unwrap_or(0.0);
    let grows = since as f64 >= significant || slope * flat_for.max(settle) >= significant;
    if grows {
        Trend::StepThenGrowth {
            at,
            by,
            since,
            seconds: flat_for,
        }
    } else if (since as f64) <= -significant {
        // Fell back: released, or the process restarted. Not the plateau that clears a step.
        Trend::Unsettled { at, by, since }
    } else if flat_for >= settle && after.len() > PLATEAU_SAMPLES {
        Trend::Step { at, by, flat_for }
    } else {
        Trend::Pending {
            at,
            by,
            flat_for,
            settle,
        }
    }
}

/// Samples in time order, without repeats (status lists written by several writers).
fn ordered(points: &[Point]) -> Vec<Point> {
    // Bytes capped at 2^62 so that differences never overflow.
    let mut p: Vec<Point> = points
        .iter()
        .filter(|p| p.t.is_finite())
        .map(|p| Point {
            t: p.t,
            bytes: p.bytes.min(1 << 62),
        })
        .collect();
    p.sort_by(|x, y| x.t.total_cmp(&y.t));
    p.dedup_by(|x, y| x.t == y.t);
    p
}

/// The typical rate (median of per-interval rates) and the noise around it (median absolute
/// deviation of each interval's change from that rate).
fn rate_and_noise(points: &[Point]) -> (f64, f64) {
    let mut rates: Vec<f64> = points
        .windows(2)
        .filter(|w| w[1].t > w[0].t)
        .map(|w| (w[1].bytes as f64 - w[0].bytes as f64) / (w[1].t - w[0].t))
        .collect();
    if rates.is_empty() {
        return (0.0, 0.0);
    }
    let rate = median(&mut rates);
    let mut dev: Vec<f64> = points
        .windows(2)
        .map(|w| (w[1].bytes as f64 - w[0].bytes as f64 - rate * (w[1].t - w[0].t)).abs())
        .collect();
    (rate, median(&mut dev))
}

/// Least-squares slope in bytes per second; `None` with fewer than two distinct times.
fn slope(points: &[Point]) -> Option<f64> {
    let n = points.len() as f64;
    let t0 = points.first()?.t;
    let mt = points.iter().map(|p| p.t - t0).sum::<f64>() / n;
    let mb = points.iter().map(|p| p.bytes as f64).sum::<f64>() / n;
    let (num, den) = points.iter().fold((0.0, 0.0), |(num, den), p| {
        let dt = p.t - t0 - mt;
        (num + dt * (p.bytes as f64 - mb), den + dt * dt)
    });
    (den > 0.0).then(|| num / den)
}

/// The typical time between samples.
fn median_interval(points: &[Point]) -> f64 {
    let mut dt: Vec<f64> = points.windows(2).map(|w| w[1].t - w[0].t).collect();
    if dt.is_empty() {
        return 0.0;
    }
    median(&mut dt)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn median_i64(v: &[i64]) -> i64 {
    let mut s = v.to_vec();
    s.sort_unstable();
    s.get(s.len() / 2).copied().unwrap_or(0)
}

/// Rises and falls of at least half the A → B growth, counted with hysteresis over the whole
/// timeline; a sawtooth when memory fell back at least twice and neither its lows nor its highs
/// (nor the level at B) climbed.
fn sawtooth(points: &[Point], ib: usize, rise: i64, noise: f64) -> Option<Trend> {
    let swing = (rise as f64 / 2.0).max(4.0 * noise).max(MIN_RISE as f64) as i64;
    let mut highs = Vec::new();
    let mut lows = Vec::new();
    let (mut hi, mut lo) = (points[0].bytes as i64, points[0].bytes as i64);
    // None: no direction yet; Some(true): rising (tracking a high); Some(false): falling.
    let mut rising: Option<bool> = None;
    let mut fell_first = false;
    for p in points {
        let x = p.bytes as i64;
        // Rising tracks only its high, falling only its low; with no direction yet, both.
        if rising != Some(false) {
            hi = hi.max(x);
        }
        if rising != Some(true) {
            lo = lo.min(x);
        }
        if rising != Some(true) && x - lo >= swing {
            lows.push(lo);
            rising = Some(true);
            hi = x;
        } else if rising != Some(false) && hi - x >= swing {
            highs.push(hi);
            fell_first |= rising.is_none();
            rising = Some(false);
            lo = x;
        }
    }
    // Only the lows that follow a fall: the first may be the start-up level.
    if !fell_first && !lows.is_empty() {
        lows.remove(0);
    }
    if highs.len() < 2 || lows.is_empty() {
        return None;
    }
    let (hmin, hmax) = (*highs.iter().min()?, *highs.iter().max()?);
    let (lmin, lmax) = (*lows.iter().min()?, *lows.iter().max()?);
    // Level means within the noise: peaks that climb a little each cycle are a leak that a
    // collector hides, and B (often the first sample over its threshold) must not top them.
    let tolerance = (4.0 * noise).max(MIN_RISE as f64) as i64;
    let at_b = points[ib].bytes as i64;
    if hmax - hmin > tolerance || lmax - lmin > tolerance || at_b > hmax + tolerance {
        return None;
    }
    Some(Trend::Sawtooth {
        cycles: highs.len() as u32,
        low: lmin.max(0) as u64,
        high: hmax.max(0) as u64,
        seconds: points[points.len() - 1].t - points[0].t,
    })
}

impl Trend {
    /// Whether it shows the growth between the snapshots was not a leak.
    pub fn clears(&self) -> bool {
        matches!(self, Trend::Step { .. } | Trend::Sawtooth { .. })
    }

    /// The sentence for the report; `None` when the timeline says nothing.
    pub fn sentence(&self) -> Option<String> {
        Some(match *self {
            Trend::Unknown => return None,
            Trend::Flat { rise } => format!(
                "the working set barely moved between the snapshots ({})",
                human_delta(rise)
            ),
            Trend::Spread {
                rise,
                seconds,
                per_minute,
                largest_rise,
            } => format!(
                "memory grew {} over the {} between the snapshots ({}/min), spread over time: its largest single rise was {}",
                human_delta(rise),
                duration(seconds),
                human_delta(per_minute as i64),
                human_delta(largest_rise)
            ),
            Trend::Step { at, by, flat_for } => format!(
                "memory rose once by {} at {} and has been flat for {} since: not a leak",
                human_bytes(by.max(0) as u64),
                clock(at),
                duration(flat_for)
            ),
            Trend::Pending {
                at,
                by,
                flat_for,
                settle,
            } => format!(
                "memory rose once by {} at {}, {} before the last sample: too soon to tell a one-time step from growth ({} flat would)",
                human_bytes(by.max(0) as u64),
                clock(at),
                duration(flat_for),
                duration(settle)
            ),
            Trend::StepThenGrowth {
                at,
                by,
                since,
                seconds,
            } => format!(
                "memory rose by {} at {} and grew {} more in the {} since: still growing",
                human_bytes(by.max(0) as u64),
                clock(at),
                human_delta(since),
                duration(seconds)
            ),
            Trend::Unsettled { at, by, since } => format!(
                "memory rose by {} at {} and has fallen {} since: not a plateau",
                human_bytes(by.max(0) as u64),
                clock(at),
                human_delta(since)
            ),
            Trend::Sawtooth {
                cycles,
                low,
                high,
                seconds,
            } => format!(
                "memory rose and fell back {cycles} times in {}, between {} and {}: it fills and is emptied, not a leak",
                duration(seconds),
                human_bytes(low),
                human_bytes(high)
            ),
        })
    }
}

/// Applies the timeline to a heap diff's findings: a step that stayed flat, or a sawtooth, makes
/// the verdict `no-leak` and says why; otherwise the verdict stands and the timeline's sentence
/// joins the notes. `Unknown` changes nothing (a plain `diff` of two files has no timeline).
pub fn apply(f: &mut Findings, trend: Trend) {
    let Some(sentence) = trend.sentence() else {
        return;
    };
    let heap_verdict = f.verdict;
    if trend.clears() && heap_verdict != Verdict::NoLeak {
        f.verdict = Verdict::NoLeak;
        f.summary = if f.summary.is_empty() {
            sentence.clone()
        } else {
            format!("{sentence} (the snapshots alone: {})", f.summary)
        };
    } else {
        f.notes.insert(0, format!("timeline: {sentence}"));
    }
    f.timeline = Some(TimelineEvidence {
        trend,
        sentence,
        heap_verdict,
    });
}

/// Keeps a timeline within `cap` points: when full, every other point of the older half goes,
/// so recent samples stay dense and the oldest still reach back to the start.
pub fn push_decimated<T>(list: &mut Vec<T>, item: T, cap: usize) {
    list.push(item);
    if list.len() <= cap.max(4) {
        return;
    }
    let old = list.len() / 2;
    let mut i = 0;
    list.retain(|_| {
        let keep = i >= old || i % 2 == 0;
        i += 1;
        keep
    });
}

/// `12:01:07 UTC` for seconds since the epoch.
fn clock(t: f64) -> String {
    let s = t.max(0.0) as u64 % 86_400;
    format!("{:02}:{:02}:{:02} UTC", s / 3600, s / 60 % 60, s % 60)
}

fn duration(secs: f64) -> String {
    if secs < 90.0 {
        format!("{secs:.0} s")
    } else if secs < 5400.0 {
        format!("{:.0} min", secs / 60.0)
    } else {
        format!("{:.1} h", secs / 3600.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: f64 = 1048576.0;

    /// A timeline sampled every `dt` seconds from `t0`, in MiB.
    fn series(t0: f64, dt: f64, mib: impl IntoIterator<Item = f64>) -> Vec<Point> {
        mib.into_iter()
            .enumerate()
            .map(|(i, m)| Point {
                t: t0 + i as f64 * dt,
                bytes: (m * MIB) as u64,
            })
            .collect()
    }

    /// Deterministic noise in [-1, 1).
    fn noise(i: usize) -> f64 {
        let x = (i as u64)
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((x >> 33) as f64 / (1u64 << 31) as f64) - 1.0
    }

    #[test]
    fn step_then_plateau_is_not_a_leak() {
        // The failing CI run: A at 33 MiB mid-fill, the rest of a 36 MiB bytes object a sample
        // later, flat after (with allocator jitter).
        let mut mib: Vec<f64> = vec![9.0; 10];
        mib.push(33.2);
        mib.extend((0..60).map(|i| 44.7 + 0.05 * noise(i)));
        let p = series(1_000_000.0, 1.0, mib);
        let (a, b) = (p[10].t, p[40].t);
        let t = judge(&p, a, b, 30.0);
        let Trend::Step { by, flat_for, at } = t else {
            panic!("{t:?}")
        };
        // The part of the rise after A: what the heap diff saw.
        assert!((by as f64 / MIB - 11.5).abs() < 0.2, "{by}");
        assert_eq!(at, p[11].t);
        assert!(flat_for >= 59.0);
        let s = t.sentence().unwrap();
        assert!(
            s.starts_with("memory rose once by 11.") && s.ends_with("not a leak"),
            "{s}"
        );

        let mut f = Findings {
            verdict: Verdict::Leak,
            summary: "__main__ (dict) grew from 8 to 9 items, retaining +36.0 MiB more".into(),
            ..Default::default()
        };
        apply(&mut f, t);
        assert_eq!(f.verdict, Verdict::NoLeak);
        assert!(
            f.summary.contains("(the snapshots alone: __main__ (dict)"),
            "{}",
            f.summary
        );
        assert_eq!(f.timeline.as_ref().unwrap().heap_verdict, Verdict::Leak);
    }

    #[test]
    fn a_step_too_recent_is_pending_then_judged() {
        let mut mib: Vec<f64> = vec![20.0; 10];
        mib.extend(vec![50.0; 5]);
        let p = series(0.0, 1.0, mib);
        // B at the first sample after the step (the step crossed the near-limit threshold).
        let t = judge(&p[..11], p[5].t, p[10].t, 30.0);
        assert!(
            matches!(t, Trend::Pending { flat_for, .. } if flat_for == 0.0),
            "{t:?}"
        );
        assert!(!t.clears());
        let t = judge(&p, p[5].t, p[10].t, 30.0);
        assert!(
            matches!(t, Trend::Pending { flat_for, .. } if flat_for == 4.0),
            "{t:?}"
        );
        let mut later = p.clone();
        later.extend(series(15.0, 1.0, vec![50.0; 30]));
        assert!(matches!(
            judge(&later, p[5].t, p[10].t, 30.0),
            Trend::Step { .. }
        ));
        // A heap leak with a pending step keeps its verdict, and says why it could not tell.
        let mut f = Findings {
            verdict: Verdict::Leak,
            ..Default::default()
        };
        apply(&mut f, t);
        assert_eq!(f.verdict, Verdict::Leak);
        assert!(f.notes[0].contains("too soon to tell"), "{:?}", f.notes);
    }

    #[test]
    fn steady_slope_is_spread() {
        let p = series(0.0, 1.0, (0..120).map(|i| 20.0 + 0.5 * i as f64));
        let t = judge(&p, p[30].t, p[90].t, 30.0);
        let Trend::Spread { per_minute, .. } = t else {
            panic!("{t:?}")
        };
        assert!((per_minute / MIB - 30.0).abs() < 0.1, "{per_minute}");
        // A sampler stalled under load (one 5 s gap) is not a jump: the rate did not change.
        let mut stalled: Vec<Point> = p
            .iter()
            .copied()
            .filter(|q| !(40.0..45.0).contains(&q.t))
            .collect();
        stalled.truncate(100);
        assert!(matches!(
            judge(&stalled, 30.0, 80.0, 30.0),
            Trend::Spread { .. }
        ));
    }

    #[test]
    fn slow_leak_under_noise_is_spread() {
        // +2 MiB/min under ±3 MiB of noise (a busy service's garbage), a sample a second.
        let p = series(
            0.0,
            1.0,
            (0..600).map(|i| 100.0 + i as f64 / 30.0 + 3.0 * noise(i)),
        );
        let t = judge(&p, p[60].t, p[540].t, 30.0);
        assert!(matches!(t, Trend::Spread { .. }), "{t:?}");
        assert!(!t.clears());
    }

    #[test]
    fn sawtooth_that_is_emptied_is_not_a_leak() {
        // A cache filling 60 → 140 MiB over 40 s and cleared, four times; A just after a clear,
        // B at the top of the next fill.
        let cycle = |i: usize| 60.0 + 2.0 * (i % 40) as f64 + 0.2 * noise(i);
        let p = series(0.0, 1.0, (0..200).map(cycle));
        let t = judge(&p, p[160].t, p[198].t, 30.0);
        let Trend::Sawtooth {
            cycles, low, high, ..
        } = t
        else {
            panic!("{t:?}")
        };
        assert!(cycles >= 3, "{cycles}");
        assert!((low as f64 / MIB - 60.0).abs() < 1.0 && (high as f64 / MIB - 138.0).abs() < 1.0);
        assert!(t.clears());
        // The same sawtooth on a floor that rises 40 MiB a cycle is a leak with a collector.
        let leaking = series(
            0.0,
            1.0,
            (0..200).map(|i| cycle(i) + (i / 40) as f64 * 40.0),
        );
        let t = judge(&leaking, leaking[160].t, leaking[198].t, 30.0);
        assert!(!t.clears(), "{t:?}");
    }

    #[test]
    fn step_then_slope_is_still_growing() {
        let mut mib: Vec<f64> = vec![20.0; 20];
        mib.extend((0..40).map(|i| 56.0 + 0.5 * i as f64));
        let p = series(0.0, 1.0, mib);
        let t = judge(&p, p[15].t, p[25].t, 30.0);
        assert!(
            matches!(t, Trend::StepThenGrowth { by, .. } if (by as f64 / MIB - 36.0).abs() < 1.0),
            "{t:?}"
        );
        assert!(t.sentence().unwrap().ends_with("still growing"));
    }

    #[test]
    fn a_step_a_loaded_machine_spread_over_samples_is_a_step() {
        // A 12 MiB allocation seen over three 250 ms samples (the loaded CI run), with churn.
        let mut mib: Vec<f64> = (0..20).map(|i| 36.5 + 0.4 * noise(i)).collect();
        mib.extend([43.7, 46.2, 48.7]);
        mib.extend((0..60).map(|i| 48.7 + 0.4 * noise(100 + i)));
        let p = series(0.0, 0.25, mib);
        let t = judge(&p, p[19].t, p[45].t, 8.0);
        assert!(matches!(t, Trend::Step { .. }), "{t:?}");
        // One allocation made while the sampler waited for snapshot A's capture (one long
        // interval), then flat.
        let mut p = series(0.0, 0.2, vec![13.0; 10]);
        p.extend(series(3.2, 0.2, (0..60).map(|i| 31.0 + 0.2 * noise(i))));
        let t = judge(&p, p[9].t, p[20].t, 8.0);
        assert!(matches!(t, Trend::Step { .. }), "{t:?}");
        // A steady leak sampled four times between A and B, then paused after B: its rise is
        // spread over the pair, not one step.
        let mut mib: Vec<f64> = vec![50.0; 5];
        mib.extend([60.0, 70.0, 80.0, 90.0]);
        mib.extend(vec![90.0; 40]);
        let p = series(0.0, 1.0, mib);
        let t = judge(&p, p[4].t, p[8].t, 30.0);
        assert!(!t.clears(), "{t:?}");
    }

    #[test]
    fn what_must_not_pass_for_one_time_growth() {
        // Fills and clears whose peaks climb 20 MiB a cycle, B the first sample above them.
        let mut mib = Vec::new();
        for (low, high) in [(10.0, 820.0), (15.0, 840.0), (20.0, 871.0)] {
            mib.extend((0..=40).map(|i| low + (high - low) * i as f64 / 40.0));
        }
        let p = series(0.0, 1.0, mib);
        let t = judge(&p, p[90].t, p[122].t, 30.0);
        assert!(!t.clears(), "{t:?}");

        // A slow leak (0.2 MiB/s) beside one 300 MiB allocation that crosses B.
        let mut mib: Vec<f64> = (0..300).map(|i| 512.0 + 0.2 * i as f64).collect();
        mib.extend((0..40).map(|i| 512.0 + 60.0 + 300.0 + 0.2 * i as f64));
        let p = series(0.0, 1.0, mib);
        let t = judge(&p, p[0].t, p[300].t, 30.0);
        assert!(!t.clears(), "{t:?}");

        // One rise, then the process restarted (memory back to its start): no plateau.
        let mut mib = vec![100.0; 20];
        mib.extend(vec![400.0; 5]);
        mib.extend(vec![30.0; 40]);
        let p = series(0.0, 1.0, mib);
        let t = judge(&p, p[10].t, p[21].t, 30.0);
        assert!(matches!(t, Trend::Unsettled { .. }), "{t:?}");

        // One sample after the step, however late, is not a plateau.
        let p = series(0.0, 1.0, vec![20.0, 20.0, 20.0, 60.0]);
        let mut late = p.clone();
        late.push(Point {
            t: 500.0,
            bytes: 60 << 20,
        });
        assert!(!judge(&late, 1.0, 3.0, 30.0).clears());
    }

    #[test]
    fn flat_and_unknown() {
        let p = series(0.0, 1.0, (0..60).map(|i| 50.0 + 0.1 * noise(i)));
        assert!(matches!(judge(&p, 10.0, 50.0, 30.0), Trend::Flat { .. }));
        // No sample at or before A, or none between A and B: nothing to say.
        assert_eq!(judge(&p, -5.0, 50.0, 30.0), Trend::Unknown);
        assert_eq!(judge(&p, 10.2, 10.5, 30.0), Trend::Unknown);
        assert_eq!(judge(&[], 0.0, 1.0, 30.0), Trend::Unknown);
        let mut f = Findings {
            verdict: Verdict::Leak,
            ..Default::default()
        };
        apply(&mut f, Trend::Unknown);
        assert_eq!(f.verdict, Verdict::Leak);
        assert!(f.notes.is_empty() && f.timeline.is_none());
    }

    #[test]
    fn hostile_timelines_do_not_panic() {
        let odd = [
            Point {
                t: f64::NAN,
                bytes: 1,
            },
            Point {
                t: 5.0,
                bytes: u64::MAX,
            },
            Point { t: 5.0, bytes: 0 },
            Point {
                t: 1.0,
                bytes: u64::MAX / 2,
            },
            Point {
                t: f64::INFINITY,
                bytes: 3,
            },
            Point { t: 9.0, bytes: 0 },
        ];
        let far = series(0.0, 1.0, [0.0, 10.0, 20.0, 30.0])
            .into_iter()
            .chain([Point {
                t: 1e30,
                bytes: 25 << 20,
            }])
            .collect::<Vec<_>>();
        let _ = judge(&far, 0.0, 1e30, 30.0);
        for (a, b) in [(0.0, 10.0), (1.0, 9.0), (9.0, 1.0), (f64::NAN, 3.0)] {
            let t = judge(&odd, a, b, 30.0);
            let _ = t.sentence();
        }
    }

    #[test]
    fn decimation_keeps_the_start_and_recent_samples() {
        let mut v = Vec::new();
        for i in 0..10_000 {
            push_decimated(&mut v, i, 120);
        }
        assert!(v.len() <= 120);
        assert_eq!(v[0], 0);
        assert_eq!(*v.last().unwrap(), 9_999);
        assert!(v.windows(2).all(|w| w[0] < w[1]));
        // The newest quarter is at full resolution.
        let n = v.len();
        assert!(
            v[n - 20..].windows(2).all(|w| w[1] - w[0] == 1),
            "{:?}",
            &v[n - 20..]
        );
    }

    #[test]
    fn clock_and_durations() {
        assert_eq!(clock(43_267.9), "12:01:07 UTC");
        assert_eq!(duration(40.2), "40 s");
        assert_eq!(duration(600.0), "10 min");
    }
}
