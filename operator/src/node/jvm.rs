//! A JVM's heap, sampled with its cgroup from its performance counters (hsperfdata: no attach, no
//! pause). A JVM dies of its heap's ceiling (`-Xmx`) as surely as of its container's limit: a
//! leaking heap reaches `OutOfMemoryError` first whenever -Xmx is well under the limit, and the
//! cgroup's working set then says nothing. So "near the limit" also reads how full the old
//! generation is against its maximum.
//!
//! How full: what the old generation held just after the last collection that emptied some of it
//! (its use fell between two samples: a full collection, or G1's mixed ones), which is what
//! survives; until one is seen, its use now (Serial and Parallel collect it only once full, and a
//! leak's old generation is all live until then). Its use right now, once collections happen, is
//! no measure: it fills with garbage until the next one.

use std::collections::HashMap;
use std::path::PathBuf;

use leakhunt_analyzer::jvm::perf::{self, JvmStats, PerfData};

use super::procs::{ProcessKey, ProcessMemory};

/// Processes smaller than this are not looked at (a shell, a probe): a JVM maps more at start.
const MIN_RSS: u64 = 16 << 20;

/// One JVM's heap at one sample.
#[derive(Debug, Clone, PartialEq)]
pub struct JvmReading {
    pub stats: JvmStats,
    /// The old generation's use just after the last collection that emptied some of it.
    pub old_after_gc: Option<u64>,
}

impl JvmReading {
    /// How full the old generation is, as a share of its maximum: what survived its last
    /// collection, or its use now before any was seen.
    pub fn heap_fraction(&self) -> Option<f64> {
        let max = self.stats.old_max.filter(|&m| m > 0)?;
        let used = self.old_after_gc.or(self.stats.old_used)?;
        Some(used as f64 / max as f64)
    }
}

#[derive(Default)]
struct Old {
    last: Option<u64>,
    after_gc: Option<u64>,
}

enum Tracked {
    NotJvm,
    Jvm { perf: Option<PathBuf>, old: Old },
}

/// The JVMs among a cgroup's processes, each recognised once (`libjvm.so` mapped).
#[derive(Default)]
pub struct JvmWatch {
    procs: HashMap<ProcessKey, Tracked>,
}

impl JvmWatch {
    /// Reads every JVM among `processes`.
    pub fn sample(&mut self, processes: &[ProcessMemory]) -> Vec<(ProcessKey, JvmReading)> {
        self.procs
            .retain(|k, _| processes.iter().any(|p| p.key == *k));
        let mut out = Vec::new();
        for p in processes.iter().filter(|p| p.rss >= MIN_RSS) {
            let tracked = self.procs.entry(p.key).or_insert_with(|| {
                if perf::is_jvm(p.key.pid) {
                    Tracked::Jvm {
                        perf: None,
                        old: Old::default(),
                    }
                } else {
                    Tracked::NotJvm
                }
            });
            let Tracked::Jvm { perf, old } = tracked else {
                continue;
            };
            // The file appears once the JVM has started; looked for again until it is there.
            if perf.is_none() {
                *perf = perf::find(p.key.pid);
            }
            let Some(stats) = perf
                .as_deref()
                .and_then(|f| PerfData::read(f).ok())
                .map(|d| d.stats())
            else {
                continue;
            };
            out.push((p.key, old.observe(stats)));
        }
        out
    }
}

impl Old {
    fn observe(&mut self, stats: JvmStats) -> JvmReading {
        if let (Some(prev), Some(now)) = (self.last, stats.old_used) {
            if now < prev {
                self.after_gc = Some(now);
            }
        }
        self.last = stats.old_used.or(self.last);
        JvmReading {
            stats,
            old_after_gc: self.after_gc,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(old_used: u64) -> JvmStats {
        JvmStats {
            old_used: Some(old_used),
            old_max: Some(1000),
            ..JvmStats::default()
        }
    }

    #[test]
    fn before_any_collection_the_use_counts_after_one_what_survived() {
        let mut old = Old::default();
        // A leak in Serial's old generation: all of it live until the first full collection.
        for used in [100, 300, 500] {
            let r = old.observe(stats(used));
            assert_eq!(r.heap_fraction(), Some(used as f64 / 1000.0));
        }
        // Garbage promoted, then collected: what survived counts, not the garbage that follows.
        assert_eq!(old.observe(stats(900)).heap_fraction(), Some(0.9));
        assert_eq!(old.observe(stats(400)).heap_fraction(), Some(0.4));
        for used in [600, 800, 950] {
            assert_eq!(old.observe(stats(used)).heap_fraction(), Some(0.4));
        }
        // What survives grows: the next collection says so.
        assert_eq!(old.observe(stats(870)).heap_fraction(), Some(0.87));
    }

    #[test]
    fn a_jvm_without_an_old_generations_maximum_has_no_fraction() {
        let r = JvmReading {
            stats: JvmStats {
                old_used: Some(5),
                ..JvmStats::default()
            },
            old_after_gc: None,
        };
        assert_eq!(r.heap_fraction(), None);
    }
}
