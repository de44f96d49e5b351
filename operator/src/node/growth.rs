//! Growth rate over a sliding window and the time left until the limit.
//!
//! The rate is a least-squares slope, not first-to-last: one sample taken while the garbage
//! collector ran should not swing the prediction.

use std::collections::VecDeque;

/// Bytes over time, for the last `window` seconds.
#[derive(Debug, Clone)]
pub struct GrowthWindow {
    window_secs: f64,
    max_samples: usize,
    samples: VecDeque<(f64, u64)>,
}

impl GrowthWindow {
    /// A window of `window_secs` seconds holding at most `max_samples` points.
    pub fn new(window_secs: f64, max_samples: usize) -> GrowthWindow {
        GrowthWindow {
            window_secs,
            max_samples: max_samples.max(2),
            samples: VecDeque::new(),
        }
    }

    /// Adds a sample at `t` seconds (any monotonic origin). Out-of-order samples are dropped.
    pub fn push(&mut self, t: f64, bytes: u64) {
        if self.samples.back().is_some_and(|(last, _)| t <= *last) {
            return;
        }
        self.samples.push_back((t, bytes));
        while self.samples.len() > self.max_samples
            || self
                .samples
                .front()
                .is_some_and(|(first, _)| t - first > self.window_secs)
        {
            self.samples.pop_front();
        }
    }

    pub fn clear(&mut self) {
        self.samples.clear();
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    pub fn latest(&self) -> Option<u64> {
        self.samples.back().map(|(_, b)| *b)
    }

    /// Bytes per second (negative when shrinking); `None` with fewer than two samples.
    pub fn rate(&self) -> Option<f64> {
        if self.samples.len() < 2 {
            return None;
        }
        let n = self.samples.len() as f64;
        let (t0, _) = *self.samples.front()?;
        let (st, sb) = self.samples.iter().fold((0.0, 0.0), |(st, sb), (t, b)| {
            (st + (t - t0), sb + *b as f64)
        });
        let (mt, mb) = (st / n, sb / n);
        let (num, den) = self.samples.iter().fold((0.0, 0.0), |(num, den), (t, b)| {
            let dt = (t - t0) - mt;
            (num + dt * (*b as f64 - mb), den + dt * dt)
        });
        (den > 0.0).then(|| num / den)
    }

    /// Seconds until `limit` at the current rate; `None` when not growing or already past it.
    pub fn seconds_to(&self, limit: u64) -> Option<f64> {
        let rate = self.rate()?;
        let latest = self.latest()?;
        (rate > 0.0 && latest < limit).then(|| (limit - latest) as f64 / rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_growth() {
        let mut w = GrowthWindow::new(60.0, 120);
        for i in 0..10 {
            w.push(i as f64, 1_000_000 + i * 100_000);
        }
        let rate = w.rate().unwrap();
        assert!((rate - 100_000.0).abs() < 1e-6, "{rate}");
        // 1.9 MB now, 2.9 MB limit: 10 s.
        let eta = w.seconds_to(2_900_000).unwrap();
        assert!((eta - 10.0).abs() < 1e-6, "{eta}");
    }

    #[test]
    fn flat_and_shrinking_predict_nothing() {
        let mut w = GrowthWindow::new(60.0, 120);
        assert_eq!(w.rate(), None);
        w.push(0.0, 100);
        assert_eq!(w.rate(), None);
        w.push(1.0, 100);
        assert_eq!(w.rate(), Some(0.0));
        assert_eq!(w.seconds_to(1000), None);
        w.push(2.0, 50);
        assert!(w.rate().unwrap() < 0.0);
        assert_eq!(w.seconds_to(1000), None);
    }

    #[test]
    fn window_slides_and_ignores_out_of_order() {
        let mut w = GrowthWindow::new(5.0, 100);
        for i in 0..20 {
            w.push(i as f64, if i < 10 { 0 } else { (i - 10) * 10 });
        }
        assert_eq!(w.len(), 6, "samples at t=14..=19");
        assert!((w.rate().unwrap() - 10.0).abs() < 1e-9);
        w.push(3.0, 0);
        assert_eq!(w.len(), 6);
        let mut capped = GrowthWindow::new(1e9, 3);
        for i in 0..10 {
            capped.push(i as f64, i);
        }
        assert_eq!(capped.len(), 3);
    }

    #[test]
    fn one_gc_dip_does_not_flip_the_sign() {
        let mut w = GrowthWindow::new(60.0, 120);
        for i in 0..20u64 {
            let b = 1_000_000 + i * 50_000;
            w.push(i as f64, if i == 19 { b - 400_000 } else { b });
        }
        assert!(w.rate().unwrap() > 0.0);
    }
}
