//! `leakhunt hunt` flags and their parsers (`160Mi`, `50%`, `1s`).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use leakhunt_analyzer::util::number_and_unit;
pub use leakhunt_analyzer::util::parse_size;

use super::{HuntOptions, Target, Until};
use crate::node::Thresholds;

#[derive(Debug, Args)]
#[command(
    about = "Watch a process under a cgroup memory limit, snapshot it at the thresholds, name what grows",
    after_help = "Examples:\n  leakhunt hunt --memory-limit 160Mi -- python3 app.py\n  leakhunt hunt --pid 4242\n\n\
Exit codes: 0 hunt complete, 1 other error, 2 usage, 3 cgroup setup (permission, controller missing, no limit),\n\
4 process exited before snapshot B, 5 capture or analysis failed, 130 interrupted."
)]
pub struct HuntArgs {
    /// Start COMMAND in a new memory cgroup with this limit (`160Mi`, `1G`, bytes).
    #[arg(long, value_parser = parse_size, requires = "command", conflicts_with = "pid")]
    pub memory_limit: Option<u64>,
    /// Watch a running process in its existing memory cgroup (which must have a limit).
    #[arg(long, conflicts_with = "command", required_unless_present = "command")]
    pub pid: Option<i32>,
    /// Snapshot A when the working set reaches this share of the limit.
    #[arg(long, default_value = "50%", value_parser = parse_percent)]
    pub baseline: f64,
    /// Snapshot B when the working set reaches this share of the limit.
    #[arg(long, default_value = "85%", value_parser = parse_percent)]
    pub near_limit: f64,
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
    /// The command to run (after `--`).
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

impl HuntArgs {
    pub fn into_options(self) -> Result<HuntOptions, String> {
        if !(0.0 < self.baseline && self.baseline < self.near_limit && self.near_limit <= 1.0) {
            return Err("need 0% < --baseline < --near-limit <= 100%".into());
        }
        if self.interval.is_zero() {
            return Err("--interval must be positive".into());
        }
        let target = match (self.pid, self.command.is_empty()) {
            (Some(pid), true) => Target::Pid(pid),
            (None, false) => Target::Command(self.command),
            _ => return Err("give either --pid PID or -- COMMAND".into()),
        };
        if matches!(target, Target::Command(_)) && self.memory_limit.is_none() {
            return Err(
                "--memory-limit is required to run a command (e.g. --memory-limit 160Mi)".into(),
            );
        }
        Ok(HuntOptions {
            target,
            memory_limit: self.memory_limit,
            thresholds: Thresholds {
                baseline: self.baseline,
                near_limit: self.near_limit,
                cooldown_secs: f64::INFINITY,
            },
            interval: self.interval,
            window: self.window,
            snapshot_dir: self.snapshot_dir,
            max_snapshot_size: self.max_snapshot_size,
            keep_snapshots: self.keep_snapshots,
            report: self.report,
            cgroup_root: self.cgroup_root,
            cgroup_parent: self.cgroup_parent,
            proc_root: PathBuf::from("/proc"),
            kernel_log: Some(PathBuf::from("/dev/kmsg")),
            until: self.until,
            duration: self.duration,
            progress: !self.quiet,
        })
    }
}

/// `50%` or `0.5`.
pub fn parse_percent(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let value = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
        None => t.parse::<f64>(),
    }
    .map_err(|_| format!("not a percentage: {text:?} (try 50%)"))?;
    if !(0.0..=1.0).contains(&value) {
        return Err(format!("percentage out of range: {text:?}"));
    }
    Ok(value)
}

/// `1s`, `500ms`, `2m`, `1h`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (value, unit) = number_and_unit(text, "a duration", "1s")?;
    let secs = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit {other:?} in {text:?} (ms, s, m, h)"
            ))
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("duration out of range: {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("160Mi"), Ok(160 << 20));
        assert_eq!(parse_size("1.5Gi"), Ok(3 << 29));
        assert_eq!(parse_size("2M"), Ok(2_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5Qi").is_err());
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn percents_and_durations() {
        assert_eq!(parse_percent("50%"), Ok(0.5));
        assert_eq!(parse_percent("0.85"), Ok(0.85));
        assert!(parse_percent("150%").is_err());
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("1y").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
