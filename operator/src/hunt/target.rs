//! The hunted process: a command started in a fresh memory cgroup, or a running `--pid` in its
//! own; what is left of either is cleaned up however the hunt ends.

use std::fs;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{Error, HuntOptions, Target};
use crate::node::cgroup::{Cgroup, Hierarchy};
use crate::node::procs::cmdline;
use crate::node::{CgroupWatcher, Sample};

/// The process hunted and what the hunt must undo.
pub(super) struct Launched {
    pub cgroup: Cgroup,
    pub main_pid: i32,
    pub command_line: String,
    /// The command, killed if it still runs when the hunt ends (none for `--pid`). Before the
    /// cgroup: fields drop in order.
    pub child: ChildGuard,
    /// The command's cgroup, removed when the hunt ends (none for `--pid`).
    pub _cgroup: CgroupGuard,
}

impl Launched {
    /// The command's first line, at most 200 characters: a `python -c` script has many.
    pub fn shown(&self) -> String {
        match self.command_line.split_once('\n') {
            Some((first, _)) => format!("{first} …"),
            None => self.command_line.clone(),
        }
        .chars()
        .take(200)
        .collect()
    }

    /// The watcher of the hunted cgroup; for `--pid`, of the process and its children.
    pub fn watcher(&self, opts: &HuntOptions) -> CgroupWatcher {
        let mut watcher = CgroupWatcher::new(
            self.cgroup.clone(),
            &opts.proc_root,
            opts.kernel_log.as_deref(),
            opts.window.as_secs_f64(),
        );
        if matches!(opts.target, Target::Pid(_)) {
            // Not whatever else shares its cgroup (a session's, the root's): the process and
            // its children are who the snapshots are of.
            watcher.scope(self.main_pid);
        }
        watcher
    }
}

/// Starts the command in a new cgroup under `--cgroup-parent`, or finds the cgroup of `--pid`.
pub(super) fn launch(opts: &HuntOptions, hierarchy: &Hierarchy) -> Result<Launched, Error> {
    match &opts.target {
        Target::Command(argv) => {
            let name = format!(
                "{}/hunt-{}",
                opts.cgroup_parent.trim_matches('/'),
                std::process::id()
            );
            let cg = hierarchy.create(&name)?;
            let cgroup_guard = CgroupGuard(Some(cg.clone()));
            if let Some(limit) = opts.memory_limit {
                cg.set_limit(limit)?;
            }
            let command_line = argv.join(" ");
            // The child moves itself into the cgroup before exec, so everything the command
            // allocates is charged there. Its own process group keeps Ctrl-C for us.
            let child = Command::new("/bin/sh")
                .arg("-c")
                .arg(r#"echo $$ > "$0" && exec "$@""#)
                .arg(cg.dir.join("cgroup.procs"))
                .args(argv)
                .stdin(Stdio::null())
                .process_group(0)
                .spawn()
                .map_err(|source| Error::Spawn {
                    command: command_line.clone(),
                    source,
                })?;
            Ok(Launched {
                cgroup: cg,
                main_pid: child.id() as i32,
                command_line,
                _cgroup: cgroup_guard,
                child: ChildGuard(Some(child)),
            })
        }
        Target::Pid(pid) => {
            if !opts.proc_root.join(pid.to_string()).exists() {
                return Err(Error::NoSuchProcess { pid: *pid });
            }
            check_permitted(&opts.proc_root, *pid)?;
            Ok(Launched {
                cgroup: hierarchy.cgroup_of(&opts.proc_root, *pid)?,
                main_pid: *pid,
                command_line: cmdline(&opts.proc_root, *pid)
                    .unwrap_or_else(|| format!("pid {pid}")),
                _cgroup: CgroupGuard(None),
                child: ChildGuard(None),
            })
        }
    }
}

/// Removes the cgroup (SIGKILLing what is left in it) when the hunt ends, however it ends.
/// The parent goes too when no other hunt uses it.
pub(super) struct CgroupGuard(Option<Cgroup>);

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        if let Some(cg) = self.0.take() {
            if let Err(e) = cg.kill_and_remove(Duration::from_secs(5)) {
                eprintln!("leakhunt: cleaning up cgroup {}: {e}", cg.dir.display());
            }
            if let Some(parent) = cg.dir.parent() {
                let _ = fs::remove_dir(parent);
            }
        }
    }
}

/// Kills and reaps the command if it is still running when the hunt ends.
pub(super) struct ChildGuard(pub Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The command's exit status if it ends within `wait`.
pub(super) fn reap_within(child: &mut Child, wait: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + wait;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => return None,
        }
    }
}

/// The first sample once the command is in its cgroup (or at once for `--pid`).
pub(super) fn wait_for_first_sample(
    watcher: &mut CgroupWatcher,
    child: &mut ChildGuard,
    main_pid: i32,
) -> Result<Sample, Error> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let sample = watcher.sample()?;
        let inside = sample.processes.iter().any(|p| p.key.pid == main_pid);
        let exited = child
            .0
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
        if inside || exited || Instant::now() >= deadline {
            return Ok(sample);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Refuses a process of another user unless we may read its memory (root or CAP_SYS_PTRACE):
/// said at the start rather than as a failed capture at 50 %.
fn check_permitted(proc_root: &Path, pid: i32) -> Result<(), Error> {
    let field = |path: PathBuf, key: &str| -> Option<String> {
        fs::read_to_string(path)
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
    };
    let Some(uid) = field(proc_root.join(format!("{pid}/status")), "Uid:")
        .and_then(|v| v.split_whitespace().next()?.parse::<u32>().ok())
    else {
        return Ok(());
    };
    let me = nix::unistd::geteuid().as_raw();
    // CAP_SYS_PTRACE is bit 19 of the effective set.
    let ptrace = field(PathBuf::from("/proc/self/status"), "CapEff:")
        .and_then(|v| u64::from_str_radix(&v, 16).ok())
        .is_some_and(|caps| caps & (1 << 19) != 0);
    if me == 0 || me == uid || ptrace {
        Ok(())
    } else {
        Err(Error::NotPermitted { pid, uid })
    }
}

pub(super) fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (_, Some(9)) => "was killed (SIGKILL)".into(),
        (_, Some(s)) => format!("was killed by signal {s}"),
        _ => "ended".into(),
    }
}

pub(super) fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}
