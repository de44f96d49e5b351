//! Allocation sites (`leakhunt hunt --allocation-sites`, LeakWatch `allocationSites`):
//! tracemalloc in the target from snapshot A on (CPython 3.14+, PEP 768), and, once the pair is
//! analysed, where the top suspect's growth was allocated. The hunt and the node agent share it.
//!
//! Starting runs in a thread: the target runs the script only when its main thread next runs
//! Python code, and sampling must not wait for that. Reading the sites happens once the verdict
//! is known; tracing is stopped then in every case, so the target is left as it was.

use std::thread::JoinHandle;

use leakhunt_analyzer::findings::{AllocationSite, Findings, SuspectKind};
use leakhunt_analyzer::python::remote::{self, Remote, Tracing};

use crate::crd::human_bytes;

/// Time the target must have between snapshot B and its OOM kill for the sites to be read: the
/// analysis and the script.
const MIN_SECONDS_AFTER_B: f64 = 10.0;
/// How much faster memory grows while tracemalloc traces: 3.85× on the seed's Flask service
/// (small objects; bench/allocation-sites.sh, docs/benchmarks.md), rounded up.
const TRACED_GROWTH: f64 = 4.0;

pub enum Tracer {
    Off,
    Starting {
        pid: i32,
        handle: JoinHandle<remote::Result<(Remote, Tracing)>>,
    },
    On {
        pid: i32,
        remote: Remote,
        tracing: Tracing,
    },
}

/// Why tracing is not started at A, when it is not: growing at `growth` bytes/s, traced, the
/// target would go from the near-limit level to its limit too fast to read the sites first.
pub fn too_close(near: Option<u64>, limit: Option<u64>, growth: Option<f64>) -> Option<String> {
    let (near, limit, growth) = (near?, limit?, growth.filter(|g| *g > 0.0)?);
    let seconds = limit.saturating_sub(near) as f64 / (TRACED_GROWTH * growth);
    (seconds < MIN_SECONDS_AFTER_B).then(|| {
        format!(
            "allocation sites skipped: growing {}/s, traced (tracemalloc's own memory makes that up to 4× faster), the target would go from snapshot B to its limit in {seconds:.0} s, too soon to read them",
            human_bytes(growth as u64)
        )
    })
}

impl Tracer {
    /// Asks the target to start tracemalloc (in a thread).
    pub fn start(pid: i32) -> Tracer {
        let handle = std::thread::spawn(move || {
            let r = remote::open(pid)?;
            let t = remote::start_tracing(&r, remote::DEFAULT_FRAMES, remote::DEFAULT_TIMEOUT)?;
            Ok((r, t))
        });
        Tracer::Starting { pid, handle }
    }

    /// Takes the start's outcome once it is there (or, with `wait`, waits for it): a message for
    /// the progress line and the report's notes.
    pub fn poll(&mut self, wait: bool) -> Option<String> {
        let Tracer::Starting { handle, .. } = self else {
            return None;
        };
        if !wait && !handle.is_finished() {
            return None;
        }
        let Tracer::Starting { pid, handle } = std::mem::replace(self, Tracer::Off) else {
            return None;
        };
        match handle.join() {
            Ok(Ok((remote, tracing))) => {
                let msg = format!(
                    "allocation sites: tracemalloc {} in pid {pid} (CPython {}, {} frames)",
                    if tracing.started {
                        "started"
                    } else {
                        "was already running"
                    },
                    remote.version,
                    tracing.frames
                );
                *self = Tracer::On {
                    pid,
                    remote,
                    tracing,
                };
                Some(msg)
            }
            Ok(Err(e)) => Some(format!("allocation sites: {e}")),
            Err(_) => Some("allocation sites: the tracing thread failed".into()),
        }
    }

    /// What tracemalloc uses in the target at B, for the diff to leave out; 0 without tracing.
    pub fn memory_at_b(&mut self) -> (u64, Option<String>) {
        let said = self.poll(true);
        let Tracer::On { remote, .. } = self else {
            return (0, said);
        };
        match remote::tracer_memory(remote, remote::DEFAULT_TIMEOUT) {
            Ok(b) => (b, said),
            Err(e) => (
                0,
                Some(format!(
                    "allocation sites: tracemalloc's memory at B unknown: {e}"
                )),
            ),
        }
    }

    /// [`Tracer::stop`] on a thread of its own: a target that runs no Python code must not stall
    /// the caller's sampling.
    pub fn stop_in_background(&mut self) {
        if self.is_active() {
            let mut tracer = std::mem::replace(self, Tracer::Off);
            std::thread::spawn(move || tracer.stop());
        }
    }

    /// Stops tracing (the hunt's A is void, or it ends without a verdict).
    pub fn stop(&mut self) {
        let _ = self.poll(true);
        if let Tracer::On {
            remote, tracing, ..
        } = std::mem::replace(self, Tracer::Off)
        {
            // The target may be gone: nothing to undo then.
            let _ = remote::stop_tracing(&remote, &tracing, remote::DEFAULT_TIMEOUT);
        }
    }

    /// Adds to the top container suspect where its growth was allocated, and stops tracing.
    /// Returns what to say (also added to the findings' notes).
    pub fn finish(&mut self, findings: &mut Findings) -> Vec<String> {
        // The first container suspect: the one a person reads first among those that hold objects.
        let top = findings
            .suspects
            .iter_mut()
            .find(|s| s.kind == SuspectKind::Container && s.address.is_some())
            .and_then(|s| s.address.map(|a| (s, a)));
        let Some((suspect, address)) = top else {
            let mut said: Vec<String> = self.poll(true).into_iter().collect();
            if self.is_on() {
                self.stop();
                said.push(
                    "allocation sites: no container suspect to look for; tracemalloc stopped"
                        .into(),
                );
            }
            return said;
        };
        let growth = suspect.count_growth().max(1) as u64;
        let (sites, said) = self.read(address, &suspect.path, growth);
        suspect.allocation_sites = sites;
        said
    }

    /// Tracing is on in the target.
    pub fn is_on(&self) -> bool {
        matches!(self, Tracer::On { .. })
    }

    /// Tracing was asked for (starting or on).
    pub fn is_active(&self) -> bool {
        !matches!(self, Tracer::Off)
    }

    /// Where the items of the container at `address` (`path`, grown by `growth` items) were
    /// allocated, and what to say; tracing is stopped after in every case.
    pub fn read(
        &mut self,
        address: u64,
        path: &str,
        growth: u64,
    ) -> (Vec<AllocationSite>, Vec<String>) {
        let mut said = Vec::new();
        said.extend(self.poll(true));
        let Tracer::On {
            pid,
            remote,
            tracing,
        } = std::mem::replace(self, Tracer::Off)
        else {
            return (Vec::new(), said);
        };
        match remote::allocation_sites(&remote, address, tracing.started, remote::DEFAULT_TIMEOUT) {
            Ok(sites) => {
                let growth = growth.max(1);
                let found = sites
                    .sites
                    .iter()
                    .map(|s| AllocationSite {
                        frames: s.frames.clone(),
                        count: s.count,
                        bytes: s.bytes,
                        percent_of_growth: (s.count.saturating_mul(100) / growth).min(100) as u32,
                    })
                    .collect();
                said.push(format!(
                    "allocation sites: {} of {path}'s {} items allocated while tracing; tracemalloc used {} of pid {pid}'s memory ({} frames per traceback)",
                    sites.traced,
                    sites.items,
                    human_bytes(sites.tracemalloc_memory),
                    tracing.frames
                ));
                (found, said)
            }
            Err(e) => {
                if tracing.started {
                    let _ = remote::stop_tracing(&remote, &tracing, remote::DEFAULT_TIMEOUT);
                }
                said.push(format!("allocation sites: {e}"));
                (Vec::new(), said)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracing_is_skipped_only_when_b_would_be_too_close_to_the_kill() {
        let mib = 1u64 << 20;
        // 96Mi, B at 85 %: 14.4 MiB between B and the kill; at 3 MiB/s (12 traced) that is 1 s.
        let near = Some(96 * mib * 85 / 100);
        assert!(too_close(near, Some(96 * mib), Some(3.0 * mib as f64)).is_some());
        // At 0.25 MiB/s (1 traced): 14 s, enough.
        assert!(too_close(near, Some(96 * mib), Some(0.25 * mib as f64)).is_none());
        // No limit, no growth: nothing to reckon with.
        assert!(too_close(near, None, Some(1e9)).is_none());
        assert!(too_close(near, Some(96 * mib), None).is_none());
        assert!(too_close(near, Some(96 * mib), Some(-1.0)).is_none());
    }
}
