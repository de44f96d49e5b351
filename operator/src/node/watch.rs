//! One cgroup, sampled: memory, the processes in it, growth, OOM kills. The loop that drives it
//! (the local hunt, the node agent) decides what to do with each [`Sample`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::cgroup::{Cgroup, CgroupMemory, Result};
use super::growth::GrowthWindow;
use super::jvm::{JvmReading, JvmWatch};
use super::oom::{OomKill, OomWatch};
use super::procs::{read_processes, ProcessKey, ProcessMemory};
use super::threshold::Observation;

/// What one sample saw.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Seconds since the watcher started.
    pub t: f64,
    pub memory: CgroupMemory,
    pub processes: Vec<ProcessMemory>,
    /// Working-set growth in bytes per second over the window.
    pub growth_per_sec: Option<f64>,
    /// Seconds until the working set reaches the limit at that rate.
    pub seconds_to_oom: Option<f64>,
    /// The process growing fastest (or, before rates exist, the largest).
    pub grower: Option<ProcessKey>,
    /// OOM kills since the previous sample.
    pub kills: Vec<OomKill>,
    /// The JVMs among the processes, their heaps from their performance counters.
    pub jvms: Vec<(ProcessKey, JvmReading)>,
}

impl Sample {
    pub fn alive(&self) -> Vec<ProcessKey> {
        self.processes.iter().map(|p| p.key).collect()
    }

    pub fn process(&self, key: ProcessKey) -> Option<&ProcessMemory> {
        self.processes.iter().find(|p| p.key == key)
    }

    /// The heap in use and the maximum of the container's JVM (the largest, if it runs several).
    pub fn java_heap(&self) -> Option<(u64, u64)> {
        self.jvms
            .iter()
            .filter_map(|(_, j)| Some((j.stats.heap_used?, j.stats.heap_max?)))
            .max_by_key(|h| h.0)
    }

    /// The heap of process `key`, when it is a JVM.
    pub fn jvm(&self, key: ProcessKey) -> Option<&JvmReading> {
        self.jvms.iter().find(|j| j.0 == key).map(|j| &j.1)
    }

    /// What the threshold machine weighs of this sample; `alive` is [`Sample::alive`], and
    /// `process_rss` the RSS the levels are read on where there is no limit.
    pub fn observation<'a>(
        &self,
        alive: &'a [ProcessKey],
        process_rss: Option<u64>,
    ) -> Observation<'a> {
        Observation {
            now: self.t,
            working_set: self.memory.working_set(),
            limit: self.memory.limit,
            oom_killed: !self.kills.is_empty(),
            alive,
            grower: self.grower,
            process_rss,
            heap_fraction: None,
        }
    }

    /// [`Sample::observation`], with the heap of `hunted` when it is a JVM: the process the
    /// levels are read on (the grower before A, the target after).
    pub fn observation_of<'a>(
        &self,
        alive: &'a [ProcessKey],
        hunted: Option<ProcessKey>,
        process_rss: Option<u64>,
    ) -> Observation<'a> {
        Observation {
            heap_fraction: hunted
                .and_then(|k| self.jvm(k))
                .and_then(JvmReading::heap_fraction),
            ..self.observation(alive, process_rss)
        }
    }
}

/// Samples one cgroup.
pub struct CgroupWatcher {
    pub cgroup: Cgroup,
    proc_root: PathBuf,
    start: Instant,
    window_secs: f64,
    working_set: GrowthWindow,
    per_process: HashMap<ProcessKey, GrowthWindow>,
    oom: OomWatch,
    jvms: JvmWatch,
    /// Only this process and its descendants count (a `--pid` in a shared cgroup).
    scope: Option<i32>,
}

impl CgroupWatcher {
    /// `kernel_log`: normally `/dev/kmsg`; `None` or unreadable names kills from vanished PIDs.
    pub fn new(
        cgroup: Cgroup,
        proc_root: &Path,
        kernel_log: Option<&Path>,
        window_secs: f64,
    ) -> CgroupWatcher {
        let oom = OomWatch::new(&cgroup.relative, kernel_log);
        CgroupWatcher {
            cgroup,
            proc_root: proc_root.to_path_buf(),
            start: Instant::now(),
            window_secs,
            working_set: GrowthWindow::new(window_secs, 600),
            per_process: HashMap::new(),
            oom,
            jvms: JvmWatch::default(),
            scope: None,
        }
    }

    /// From now on, only `root` and its descendants are the cgroup's processes: the grower is
    /// one of them and the sample ends empty when they are gone.
    pub fn scope(&mut self, root: i32) {
        self.scope = Some(root);
    }

    pub fn reads_kernel_log(&self) -> bool {
        self.oom.reads_kernel_log()
    }

    /// Kills the kernel log named since the last sample (see [`OomWatch::logged_kills`]).
    pub fn logged_kills(&mut self) -> Vec<OomKill> {
        self.oom.logged_kills()
    }

    /// Forgets growth history (after an OOM kill the old slope means nothing).
    pub fn reset_growth(&mut self) {
        self.working_set.clear();
    }

    pub fn sample(&mut self) -> Result<Sample> {
        let t = self.start.elapsed().as_secs_f64();
        let memory = self.cgroup.read_memory()?;
        let pids = self.cgroup.procs()?;
        let mut processes = read_processes(&self.proc_root, &pids);
        if let Some(root) = self.scope {
            processes = within(processes, root);
        }
        let kills = self.oom.update(memory.oom_kills, &processes);
        if !kills.is_empty() {
            self.working_set.clear();
        }
        self.working_set.push(t, memory.working_set());
        let growth_per_sec = self.working_set.rate();
        let seconds_to_oom = memory.limit.and_then(|l| self.working_set.seconds_to(l));

        self.per_process
            .retain(|k, _| processes.iter().any(|p| p.key == *k));
        for p in &processes {
            let window = self.window_secs;
            self.per_process
                .entry(p.key)
                .or_insert_with(|| GrowthWindow::new(window, 600))
                .push(t, p.rss);
        }
        let grower = pick_grower(&processes, |k| {
            self.per_process.get(&k).and_then(|w| w.rate())
        });
        let jvms = self.jvms.sample(&processes);
        Ok(Sample {
            t,
            memory,
            processes,
            growth_per_sec,
            seconds_to_oom,
            grower,
            kills,
            jvms,
        })
    }
}

/// `root` and the processes descending from it (through parents in the same list).
pub fn within(processes: Vec<ProcessMemory>, root: i32) -> Vec<ProcessMemory> {
    let parent: HashMap<i32, i32> = processes.iter().map(|p| (p.key.pid, p.ppid)).collect();
    let descends = |mut pid: i32| {
        // Bounded: a PID cycle in a racy read must not hang the sampler.
        for _ in 0..64 {
            if pid == root {
                return true;
            }
            match parent.get(&pid) {
                Some(&pp) if pp != pid => pid = pp,
                _ => return false,
            }
        }
        false
    };
    processes
        .into_iter()
        .filter(|p| descends(p.key.pid))
        .collect()
}

/// The process to snapshot: the fastest positive grower; without any growth yet, the largest.
/// While a process that matters (at least a quarter of the largest) is too young for a rate, the
/// choice waits (`None`: no snapshot this sample): a worker forked a second ago may be the one
/// that grows, and its master, measured longer, is not (gunicorn's workers were twice mistaken
/// for their master so). Small newcomers (a probe, a shell) never hold it up.
pub fn pick_grower(
    processes: &[ProcessMemory],
    rate: impl Fn(ProcessKey) -> Option<f64>,
) -> Option<ProcessKey> {
    let largest = processes
        .iter()
        .filter(|p| p.rss > 0)
        .max_by_key(|p| p.rss)?;
    let live = || processes.iter().filter(|p| p.rss > 0);
    let undecided = live().count() > 1
        && live().any(|p| rate(p.key).is_none() && p.rss.saturating_mul(4) >= largest.rss);
    if undecided {
        return None;
    }
    let fastest = processes
        .iter()
        .filter_map(|p| rate(p.key).filter(|r| *r > 0.0).map(|r| (p, r)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(p, _)| p);
    Some(fastest.unwrap_or(largest).key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: i32, rss: u64) -> ProcessMemory {
        ProcessMemory {
            key: ProcessKey {
                pid,
                start_ticks: 0,
            },
            ppid: 1,
            comm: "w".into(),
            rss,
        }
    }

    #[test]
    fn scope_is_the_root_and_its_descendants() {
        let with_parent = |pid, ppid| ProcessMemory { ppid, ..p(pid, 1) };
        let procs = vec![
            with_parent(10, 1),
            with_parent(11, 10),
            with_parent(12, 11),
            with_parent(20, 1),
            with_parent(30, 30),
        ];
        let pids: Vec<i32> = within(procs.clone(), 10)
            .iter()
            .map(|p| p.key.pid)
            .collect();
        assert_eq!(pids, [10, 11, 12]);
        assert!(within(procs, 99).is_empty(), "root gone: nothing");
    }

    #[test]
    fn grower_is_fastest_not_largest() {
        let procs = [p(1, 500), p(2, 100), p(3, 200)];
        let rates = |k: ProcessKey| match k.pid {
            1 => Some(0.0),
            2 => Some(50.0),
            3 => Some(10.0),
            _ => None,
        };
        assert_eq!(pick_grower(&procs, rates).map(|k| k.pid), Some(2));
        assert_eq!(
            pick_grower(&[p(1, 500), p(2, 100)], |k| (k.pid == 1).then_some(0.0)).map(|k| k.pid),
            Some(1),
            "the largest when nothing grows and the young are small"
        );
        assert_eq!(
            pick_grower(&procs, |_| None),
            None,
            "a choice among processes that matter waits for their rates"
        );
        assert_eq!(
            pick_grower(&[p(7, 0)], |_| None),
            None,
            "kernel threads/zombies never"
        );
        assert_eq!(pick_grower(&[p(4, 10)], |_| None).map(|k| k.pid), Some(4));
        // Workers forked a moment ago, smaller than their master measured longer: wait for them.
        let young = |k: ProcessKey| (k.pid == 1).then_some(0.5);
        assert_eq!(pick_grower(&[p(1, 60), p(2, 20), p(3, 20)], young), None);
        assert_eq!(pick_grower(&[p(1, 20), p(2, 60)], young), None);
        // Then measured: the worker that grows.
        let measured = |k: ProcessKey| Some(if k.pid == 1 { 0.5 } else { 9.0 });
        assert_eq!(
            pick_grower(&[p(1, 60), p(2, 20)], measured).map(|k| k.pid),
            Some(2)
        );
        // A small newcomer (a probe) does not hold the choice up.
        assert_eq!(
            pick_grower(&[p(1, 60), p(2, 10)], young).map(|k| k.pid),
            Some(1)
        );
    }
}
