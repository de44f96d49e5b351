//! OOM kills in one cgroup: the counter says *that* (and how many), the kernel log says *who*.
//!
//! The cgroup's `oom_kill` counter is authoritative; it also counts workers killed inside a
//! container whose main process survives. For each kill the killed process is named from the
//! kernel log (`/dev/kmsg`, when readable):
//!
//! ```text
//! oom-kill:constraint=CONSTRAINT_MEMCG,...,oom_memcg=/pod/ctr,task_memcg=/pod/ctr,task=python3,pid=20199,uid=0
//! Memory cgroup out of memory: Killed process 20199 (python3) total-vm:30956kB, anon-rss:20224kB, ...
//! ```
//! and otherwise from the process that disappeared from the cgroup since the previous sample.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::procs::{ProcessKey, ProcessMemory};

/// How a killed process was named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillSource {
    /// From the kernel's OOM report.
    KernelLog,
    /// The counter rose and this process vanished from the cgroup at the same time.
    Disappeared,
    /// The counter rose but no process could be named.
    Unknown,
}

/// One OOM kill in the watched cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OomKill {
    pub pid: Option<i32>,
    pub comm: Option<String>,
    /// Microseconds since boot from the kernel log record, when named from there.
    pub kernel_usec: Option<u64>,
    /// RSS before the kill as last sampled, when the process was known.
    pub last_rss: Option<u64>,
    pub source: KillSource,
}

impl OomKill {
    /// `python3 (pid 4242)`, or what is known of it.
    pub fn process_label(&self) -> String {
        match (&self.comm, self.pid) {
            (Some(c), Some(p)) => format!("{c} (pid {p})"),
            (None, Some(p)) => format!("pid {p}"),
            (Some(c), None) => c.clone(),
            (None, None) => "unknown process".into(),
        }
    }
}

/// A `/dev/kmsg` record: (microseconds since boot, message).
pub fn parse_kmsg_record(record: &str) -> Option<(u64, &str)> {
    let (prefix, message) = record.split_once(';')?;
    let mut fields = prefix.split(',');
    let _priority = fields.next()?;
    let _sequence = fields.next()?;
    let usec = fields.next()?.parse().ok()?;
    // Continuation lines (" KEY=value") follow the first newline; the message is the first line.
    Some((usec, message.lines().next().unwrap_or("")))
}

/// The `oom-kill:` summary line: (task_memcg, pid, task).
pub fn parse_oom_kill_line(message: &str) -> Option<(String, i32, String)> {
    let fields = message.trim().strip_prefix("oom-kill:")?;
    let mut memcg = None;
    let mut pid = None;
    let mut task = None;
    for kv in fields.split(',') {
        match kv.split_once('=') {
            Some(("task_memcg", v)) => memcg = Some(v.to_string()),
            Some(("pid", v)) => pid = v.parse().ok(),
            Some(("task", v)) => task = Some(v.to_string()),
            _ => {}
        }
    }
    Some((memcg?, pid?, task?))
}

/// The `Killed process PID (comm)` line of any OOM report: (pid, comm).
pub fn parse_killed_process(message: &str) -> Option<(i32, String)> {
    let rest = &message[message.find("Killed process ")? + "Killed process ".len()..];
    let (pid, rest) = rest.split_once(' ')?;
    let rest = rest.strip_prefix('(')?;
    // comm may hold ')' itself; the report continues with ") total-vm:".
    let end = rest.find(") total-vm").or_else(|| rest.rfind(')'))?;
    Some((pid.parse().ok()?, rest.get(..end)?.to_string()))
}

/// Whether a kernel-named memcg is `cgroup` or below it.
fn memcg_within(memcg: &str, cgroup: &str) -> bool {
    let cgroup = cgroup.trim_end_matches('/');
    memcg == cgroup
        || cgroup.is_empty()
        || memcg
            .strip_prefix(cgroup)
            .is_some_and(|r| r.starts_with('/'))
}

/// Reads new records from `/dev/kmsg`, without blocking.
pub struct KernelLog {
    file: File,
}

impl KernelLog {
    /// Opens the kernel log positioned at its end: only messages from now on are read.
    pub fn open(path: &Path) -> std::io::Result<KernelLog> {
        let mut file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)?;
        file.seek(SeekFrom::End(0))?;
        Ok(KernelLog { file })
    }

    /// Every record logged since the last call (bounded, so a log storm cannot stall sampling).
    pub fn drain(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 8192];
        for _ in 0..10_000 {
            match self.file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    out.push(String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned())
                }
                // EPIPE: records were overwritten before we read them; the next read resumes.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        out
    }
}

/// Follows one cgroup's OOM kills across samples.
pub struct OomWatch {
    /// The cgroup as the kernel names it (`/leakhunt/hunt-1`).
    cgroup: String,
    last_count: Option<u64>,
    kernel_log: Option<KernelLog>,
    /// Kills the log named that the counter has not shown yet (the two race by a few µs).
    named: Vec<OomKill>,
    /// (pid, comm, usec) of an `oom-kill:` line waiting for its `Killed process` line.
    pending_summary: Option<(i32, String, u64)>,
    previous: Vec<ProcessMemory>,
}

impl OomWatch {
    /// `kernel_log`: `/dev/kmsg`, or `None` to name kills only from vanished processes.
    pub fn new(cgroup: &str, kernel_log: Option<&Path>) -> OomWatch {
        OomWatch {
            cgroup: cgroup.to_string(),
            last_count: None,
            kernel_log: kernel_log.and_then(|p| KernelLog::open(p).ok()),
            named: Vec::new(),
            pending_summary: None,
            previous: Vec::new(),
        }
    }

    /// Whether kills can be named from the kernel log.
    pub fn reads_kernel_log(&self) -> bool {
        self.kernel_log.is_some()
    }

    /// Feeds the kernel-log records directly (tests; an agent with its own log reader).
    pub fn feed_kernel_records(&mut self, records: &[String]) {
        for record in records {
            let Some((usec, message)) = parse_kmsg_record(record) else {
                continue;
            };
            if let Some((memcg, pid, task)) = parse_oom_kill_line(message) {
                self.pending_summary =
                    memcg_within(&memcg, &self.cgroup).then_some((pid, task, usec));
            } else if let Some((pid, comm)) = parse_killed_process(message) {
                if let Some((spid, _, usec)) = self.pending_summary.take() {
                    if spid == pid {
                        self.named.push(OomKill {
                            pid: Some(pid),
                            comm: Some(comm),
                            kernel_usec: Some(usec),
                            last_rss: None,
                            source: KillSource::KernelLog,
                        });
                    }
                }
            }
        }
    }

    /// The kills the kernel log has named since the last sample, with their RSS as last sampled:
    /// for a cgroup that is gone before a sample could see its counter rise (a whole-container
    /// kill removes it within milliseconds).
    pub fn logged_kills(&mut self) -> Vec<OomKill> {
        if let Some(log) = self.kernel_log.as_mut() {
            let records = log.drain();
            self.feed_kernel_records(&records);
        }
        let mut kills = std::mem::take(&mut self.named);
        for k in &mut kills {
            k.last_rss = self
                .previous
                .iter()
                .find(|p| Some(p.key.pid) == k.pid)
                .map(|p| p.rss);
        }
        kills
    }

    /// One sample: the counter now and the processes now. Returns the kills since the last call.
    pub fn update(&mut self, count: u64, now: &[ProcessMemory]) -> Vec<OomKill> {
        if let Some(log) = self.kernel_log.as_mut() {
            let records = log.drain();
            self.feed_kernel_records(&records);
        }
        let delta = match self.last_count {
            Some(last) => count.saturating_sub(last),
            None => 0,
        };
        self.last_count = Some(count);
        // The counter rises a moment before the kernel logs the victim: look once more.
        if delta as usize > self.named.len() {
            if let Some(log) = self.kernel_log.as_mut() {
                let records = log.drain();
                self.feed_kernel_records(&records);
            }
        }
        let previous = std::mem::replace(&mut self.previous, now.to_vec());
        if delta == 0 {
            // Names without a count yet stay for the next sample, but not forever.
            if self.named.len() > 64 {
                self.named.drain(..self.named.len() - 64);
            }
            return Vec::new();
        }
        let alive: Vec<ProcessKey> = now.iter().map(|p| p.key).collect();
        let mut vanished: Vec<&ProcessMemory> = previous
            .iter()
            .filter(|p| !alive.contains(&p.key))
            .collect();
        // The OOM killer picks the largest; so do we when guessing.
        vanished.sort_by_key(|p| std::cmp::Reverse(p.rss));
        let mut kills = Vec::new();
        for _ in 0..delta {
            let kill = if !self.named.is_empty() {
                let mut k = self.named.remove(0);
                k.last_rss = previous
                    .iter()
                    .find(|p| Some(p.key.pid) == k.pid)
                    .map(|p| p.rss);
                vanished.retain(|p| Some(p.key.pid) != k.pid);
                k
            } else if !vanished.is_empty() {
                let p = vanished.remove(0);
                OomKill {
                    pid: Some(p.key.pid),
                    comm: Some(p.comm.clone()),
                    kernel_usec: None,
                    last_rss: Some(p.rss),
                    source: KillSource::Disappeared,
                }
            } else {
                OomKill {
                    pid: None,
                    comm: None,
                    kernel_usec: None,
                    last_rss: None,
                    source: KillSource::Unknown,
                }
            };
            kills.push(kill);
        }
        kills
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Recorded on this machine (kernel 6.18, cgroup v1), as /dev/kmsg records.
    const SUMMARY: &str = "6,2001,821027353,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/lh/hunt-1,task_memcg=/lh/hunt-1,task=python3,pid=20199,uid=0";
    const KILLED: &str = "3,2002,821027367,-;Memory cgroup out of memory: Killed process 20199 (python3) total-vm:30956kB, anon-rss:20224kB, file-rss:6636kB, shmem-rss:0kB, UID:0 pgtables:100kB oom_score_adj:0";

    #[test]
    fn parses_kernel_lines() {
        let (usec, msg) = parse_kmsg_record(SUMMARY).unwrap();
        assert_eq!(usec, 821027353);
        assert_eq!(
            parse_oom_kill_line(msg),
            Some(("/lh/hunt-1".into(), 20199, "python3".into()))
        );
        let (_, msg) = parse_kmsg_record(KILLED).unwrap();
        assert_eq!(parse_killed_process(msg), Some((20199, "python3".into())));
        // dmesg text form, and a comm with a parenthesis.
        assert_eq!(
            parse_killed_process(
                "[  821.027367] Out of memory: Killed process 7 (a) b) total-vm:1kB"
            ),
            Some((7, "a) b".into()))
        );
        assert_eq!(parse_killed_process("Killed process x (y)"), None);
        assert_eq!(parse_oom_kill_line("oom-kill:task=x"), None);
        assert_eq!(parse_kmsg_record("garbage"), None);
    }

    #[test]
    fn memcg_matching() {
        assert!(memcg_within("/lh/hunt-1", "/lh/hunt-1"));
        assert!(memcg_within("/lh/hunt-1/worker", "/lh/hunt-1"));
        assert!(!memcg_within("/lh/hunt-10", "/lh/hunt-1"));
        assert!(memcg_within("/anything", "/"));
    }

    #[test]
    fn names_kill_from_kernel_log() {
        let mut w = OomWatch::new("/lh/hunt-1", None);
        let before = [
            ProcessMemory::listed(10, "gunicorn", 10),
            ProcessMemory::listed(20199, "python3", 90),
        ];
        assert!(w.update(0, &before).is_empty());
        w.feed_kernel_records(&[SUMMARY.into(), KILLED.into()]);
        let kills = w.update(1, &before[..1]);
        assert_eq!(kills.len(), 1);
        assert_eq!(kills[0].pid, Some(20199));
        assert_eq!(kills[0].source, KillSource::KernelLog);
        assert_eq!(kills[0].last_rss, Some(90));
        assert_eq!(kills[0].process_label(), "python3 (pid 20199)");
    }

    #[test]
    fn a_kill_the_counter_never_showed_is_named_from_the_log() {
        // A group kill: the cgroup is gone before a sample reads its counter again.
        let mut w = OomWatch::new("/lh/hunt-1", None);
        let before = [
            ProcessMemory::listed(10, "gunicorn", 10),
            ProcessMemory::listed(20199, "python3", 90),
        ];
        w.update(0, &before);
        // The other victims of a group kill have their own "Killed process" line, no summary.
        let other = KILLED.replace("20199 (python3)", "10 (gunicorn)");
        w.feed_kernel_records(&[SUMMARY.into(), KILLED.into(), other]);
        let kills = w.logged_kills();
        assert_eq!(kills.len(), 1);
        assert_eq!((kills[0].pid, kills[0].last_rss), (Some(20199), Some(90)));
        assert!(w.logged_kills().is_empty(), "named once");
    }

    #[test]
    fn ignores_other_cgroups_and_falls_back_to_vanished() {
        let mut w = OomWatch::new("/lh/other", None);
        let before = [
            ProcessMemory::listed(1, "master", 10),
            ProcessMemory::listed(2, "worker", 80),
            ProcessMemory::listed(3, "worker", 70),
        ];
        w.update(5, &before);
        w.feed_kernel_records(&[SUMMARY.into(), KILLED.into()]);
        let kills = w.update(6, &before[..2]);
        assert_eq!(kills.len(), 1);
        assert_eq!(
            (kills[0].pid, kills[0].source),
            (Some(3), KillSource::Disappeared)
        );
        // Counter up, nobody vanished (killed and respawned between samples with a new PID is
        // still "vanished"; here nothing changed at all).
        let kills = w.update(7, &before[..2]);
        assert_eq!(kills[0].source, KillSource::Unknown);
        assert_eq!(kills[0].process_label(), "unknown process");
    }

    #[test]
    fn no_kills_reported_on_first_sample_or_counter_reset() {
        let mut w = OomWatch::new("/x", None);
        assert!(
            w.update(3, &[]).is_empty(),
            "kills before we watched are not ours"
        );
        assert!(w.update(0, &[]).is_empty());
    }
}
