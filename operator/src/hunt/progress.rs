//! What the hunt tells the terminal while it runs.

use std::io::{self, Write};

use super::Hunt;
use crate::crd::{human_bytes, signed_bytes};
use crate::node::threshold::State;
use crate::node::Sample;

/// Stderr progress: one rewritten line on a terminal, plain lines otherwise.
pub(super) struct Progress {
    pub enabled: bool,
    pub tty: bool,
    pub pending: bool,
}

impl Progress {
    pub fn line(&mut self, text: &str) {
        if !self.enabled {
            return;
        }
        let mut err = io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{text}");
            self.pending = true;
        } else {
            let _ = writeln!(err, "{text}");
        }
        let _ = err.flush();
    }

    pub fn event(&mut self, text: &str) {
        let mut err = io::stderr().lock();
        if self.pending {
            let _ = write!(err, "\r\x1b[2K");
            self.pending = false;
        }
        let _ = writeln!(err, "leakhunt: {text}");
    }
}

impl Hunt<'_> {
    /// The rewritten status line: level, growth rate, predicted OOM, who grows, which snapshots.
    pub(super) fn show_progress(&mut self, sample: &Sample, state: State) {
        if !self.progress.enabled {
            return;
        }
        let ws = self.level(sample);
        let rate = sample
            .growth_per_sec
            .filter(|_| self.limit.is_some())
            .map(|r| format!("{}/s", signed_bytes(r as i64)))
            .unwrap_or_else(|| "  ?".into());
        let eta = sample
            .seconds_to_oom
            .map(|s| format!("OOM in ~{:.0}s", s))
            .unwrap_or_else(|| "no OOM predicted".into());
        let top = sample
            .grower
            .and_then(|k| sample.process(k))
            .map(|p| format!("{} (pid {}) {}", p.comm, p.key.pid, human_bytes(p.rss)))
            .unwrap_or_default();
        let phase = match state {
            State::Idle => "",
            State::Baseline { .. } => " [A]",
            State::Done { analysed: true, .. } => " [A,B]",
            State::Done { .. } => " [stopped]",
        };
        let level = self.of_limit(ws);
        self.progress.line(&format!(
            "[{:5.0}s] {level}  {rate}  {eta}  grows: {top}{phase}",
            sample.t
        ));
    }
}
