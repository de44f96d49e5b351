//! `leakhunt hunt` flags and their parsers (`160Mi`, `50%`, `1s`).

use std::path::PathBuf;
use std::time::Duration;

use crate::units::{parse_duration, parse_percent, parse_size, Bare};
use clap::Args;

use super::{HuntOptions, Levels, Target, Until};
use crate::node::Level;

#[derive(Debug, Args)]
#[command(
    about = "Watch a process under a cgroup memory limit, snapshot it at the thresholds, name what grows",
    after_help = "Examples:\n  leakhunt hunt --pid 4242\n  leakhunt hunt --pid 4242 --near-limit +150Mi --duration 10m\n  leakhunt hunt --memory-limit 160Mi -- python3 app.py\n\n\
Thresholds: a share of the cgroup's limit (50%), a size (200Mi), growth since A (+150Mi, --near-limit\n\
only). Without a limit the default is A now and B once the process grew by max(64Mi, 25%).\n\n\
Exit codes: 0 hunt complete, 1 other error, 2 usage, 3 setup (permission, controller missing, no limit for a share),\n\
4 process exited before snapshot B, 5 capture or analysis failed, 130 interrupted."
)]
pub struct HuntArgs {
    /// Start COMMAND in a new memory cgroup with this limit (`160Mi`, `1G`, bytes); without it
    /// the cgroup has none.
    #[arg(long, value_parser = parse_size, requires = "command", conflicts_with = "pid")]
    pub memory_limit: Option<u64>,
    /// Watch a running process (and its children) in its memory cgroup, limited or not.
    #[arg(long, conflicts_with = "command", required_unless_present = "command")]
    pub pid: Option<i32>,
    /// Snapshot A at this level: a share of the limit (`50%`, the default with a limit) or a
    /// size (`200Mi`). Without a limit the default is now.
    #[arg(long, value_parser = parse_level)]
    pub baseline: Option<Level>,
    /// Snapshot B at this level: a share of the limit (`85%`, the default with a limit), a size
    /// (`400Mi`) or growth since A (`+150Mi`). Without a limit the default is growth by
    /// max(64Mi, 25% of the size at A).
    #[arg(long, value_parser = parse_level)]
    pub near_limit: Option<Level>,
    /// Snapshot A now and B this long after it (or earlier, at --near-limit if given or under a
    /// limit).
    #[arg(long, value_parser = parse_duration)]
    pub pair_after: Option<Duration>,
    /// Time between samples.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Window the growth rate is computed over.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub window: Duration,
    /// Directory for snapshot files (created 0700; files are 0600).
    #[arg(long, default_value_os_t = std::env::temp_dir().join("leakhunt"))]
    pub snapshot_dir: PathBuf,
    /// Skip a snapshot whose estimated size exceeds this (`2Gi`).
    #[arg(long, default_value = "2Gi", value_parser = parse_size)]
    pub max_snapshot_size: u64,
    /// Keep the snapshot files after analysis (they hold the process's memory: secrets).
    #[arg(long)]
    pub keep_snapshots: bool,
    /// Write the result as a LeakReport YAML document to FILE.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Write the result as a self-contained HTML page (memory timeline, suspects, types) to FILE.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Root of the cgroup filesystem (v2 unified, or the v1 mount holding `memory/`).
    #[arg(long, default_value = "/sys/fs/cgroup")]
    pub cgroup_root: PathBuf,
    /// Parent cgroup (under the memory hierarchy) for the cgroups `hunt` creates.
    #[arg(long, default_value = "leakhunt")]
    pub cgroup_parent: String,
    /// When to stop: after the report and the next OOM kill (`oom`), right after the report
    /// (`report`), or only when the command exits (`exit`).
    #[arg(long, value_enum, default_value_t = Until::Oom)]
    pub until: Until,
    /// Stop after this long even if nothing happened; a pending snapshot B is taken then.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// No progress line on stderr.
    #[arg(long, short)]
    pub quiet: bool,
    /// CPython 3.14+: name where the leak's objects were allocated. Runs leakhunt's own fixed
    /// scripts in the target (PEP 768 remote execution): tracemalloc from snapshot A until the
    /// report, which costs the target memory and time meanwhile. Off by default.
    #[arg(long)]
    pub allocation_sites: bool,
    /// The command to run (after `--`).
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

impl HuntArgs {
    pub fn into_options(self) -> Result<HuntOptions, String> {
        let levels = Levels {
            baseline: self.baseline,
            near_limit: self.near_limit,
            pair_after: self.pair_after,
        };
        // What can be checked before the limit is known: as if there were one, and as if not.
        if let (Some(_), Some(_)) | (Some(Level::Growth { .. }), None) =
            (self.baseline, self.near_limit)
        {
            levels.resolve(Some(u64::MAX))?;
        }
        if self.pair_after.is_some_and(|d| d.is_zero()) {
            return Err("--pair-after must be positive".into());
        }
        if self.interval.is_zero() {
            return Err("--interval must be positive".into());
        }
        let target = match (self.pid, self.command.is_empty()) {
            (Some(pid), true) => Target::Pid(pid),
            (None, false) => Target::Command(self.command),
            _ => return Err("give either --pid PID or -- COMMAND".into()),
        };
        if let Some(limit) = self.memory_limit {
            levels.resolve(Some(limit))?;
        }
        Ok(HuntOptions {
            target,
            memory_limit: self.memory_limit,
            levels,
            interval: self.interval,
            window: self.window,
            snapshot_dir: self.snapshot_dir,
            max_snapshot_size: self.max_snapshot_size,
            keep_snapshots: self.keep_snapshots,
            report: self.report,
            html: self.html,
            cgroup_root: self.cgroup_root,
            cgroup_parent: self.cgroup_parent,
            proc_root: PathBuf::from("/proc"),
            kernel_log: Some(PathBuf::from("/dev/kmsg")),
            until: self.until,
            duration: self.duration,
            progress: !self.quiet,
            allocation_sites: self.allocation_sites,
        })
    }
}

/// A threshold: `50%` or `0.5` (a share of the limit), `200Mi` (a size), `+150Mi` (growth).
pub fn parse_level(text: &str) -> Result<Level, String> {
    let t = text.trim();
    if let Some(g) = t.strip_prefix('+') {
        return Ok(Level::Growth {
            bytes: parse_size(g)?,
            of_a: 0.0,
        });
    }
    let share = t.ends_with('%') || t.parse::<f64>().is_ok_and(|v| v <= 1.0);
    if share {
        let f = parse_percent(t, Bare::Share)?;
        if f <= 0.0 {
            return Err(format!("a threshold of {text:?} is always reached"));
        }
        return Ok(Level::Share(f));
    }
    parse_size(t).map(Level::Bytes).map_err(|_| {
        format!("not a threshold: {text:?} (a share 50%, a size 200Mi, growth +150Mi)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        assert_eq!(parse_level("50%"), Ok(Level::Share(0.5)));
        assert_eq!(parse_level("0.85"), Ok(Level::Share(0.85)));
        assert_eq!(parse_level("200Mi"), Ok(Level::Bytes(200 << 20)));
        assert_eq!(
            parse_level("+150Mi"),
            Ok(Level::Growth {
                bytes: 150 << 20,
                of_a: 0.0
            })
        );
        for bad in ["0%", "150%", "+", "+lots", "lots", "-5Mi"] {
            assert!(parse_level(bad).is_err(), "{bad}");
        }
    }
}
