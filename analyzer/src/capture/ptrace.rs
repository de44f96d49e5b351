//! Stopping every thread of a process with `PTRACE_SEIZE` + `PTRACE_INTERRUPT`, reading their
//! registers, and letting them go again.
//!
//! SEIZE (unlike ATTACH) sends no SIGSTOP, so the target sees no signal and its job-control state
//! is untouched; detaching resumes each thread exactly where it was. The [`Stopped`] guard detaches
//! on drop, so every error path (and a panic) lets the target run again; if this process dies the
//! kernel detaches for us.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::ptrace;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::{Error, Result};

/// How long one thread may take to reach its ptrace stop. A thread in uninterruptible sleep (D state)
/// or in a frozen cgroup does not stop; better to give up than to hang the agent.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Registers of one stopped thread, as the bytes of the kernel's `elf_gregset_t` / `elf_fpregset_t`.
pub(crate) struct ThreadRegs {
    pub tid: i32,
    pub gregs: Vec<u8>,
    pub fpregs: Option<Vec<u8>>,
}

/// The threads of one process, each in a ptrace stop until [`Stopped::detach`] or drop.
pub(crate) struct Stopped {
    pid: i32,
    /// Stopped thread → the signal it was about to receive when it stopped, re-delivered on detach.
    threads: BTreeMap<i32, Option<Signal>>,
    since: Instant,
}

impl Stopped {
    /// Seize and interrupt every thread of `pid`, listing `/proc/PID/task` until no new thread
    /// appears (a thread that is still running can create more; once all are stopped none can).
    pub fn stop(pid: i32) -> Result<Stopped> {
        let mut me = Stopped {
            pid,
            threads: BTreeMap::new(),
            since: Instant::now(),
        };
        // Every thread looked at, stopped or skipped (zombies, threads that exited meanwhile).
        let mut seen = std::collections::BTreeSet::new();
        loop {
            let new: Vec<i32> = list_tasks(pid)?
                .into_iter()
                .filter(|&t| seen.insert(t))
                .collect();
            if new.is_empty() {
                break;
            }
            for tid in new {
                me.seize(tid)?;
            }
        }
        if me.threads.is_empty() {
            return Err(Error::ProcessExited { pid });
        }
        Ok(me)
    }

    /// Seize and interrupt one thread of `pid` only: the others run on (for a syscall injected
    /// through it, see [`Stopped::syscall`]).
    pub fn stop_thread(pid: i32, tid: i32) -> Result<Stopped> {
        let mut me = Stopped {
            pid,
            threads: BTreeMap::new(),
            since: Instant::now(),
        };
        me.seize(tid)?;
        if me.threads.is_empty() {
            return Err(Error::ProcessExited { pid });
        }
        Ok(me)
    }

    fn seize(&mut self, tid: i32) -> Result<()> {
        let pid = self.pid;
        let t = Pid::from_raw(tid);
        if task_state(pid, tid).is_none_or(|s| s == 'Z' || s == 'X') {
            // A zombie thread (e.g. a leader that called pthread_exit) cannot stop and has no memory
            // of its own; the live threads are what matter.
            return Ok(());
        }
        match ptrace::seize(t, ptrace::Options::empty()) {
            Ok(()) => {}
            Err(Errno::ESRCH) => return self.gone(tid),
            Err(Errno::EPERM) | Err(Errno::EACCES) => {
                return Err(match tracer_of(pid) {
                    Some(tracer) if tracer != 0 => Error::AlreadyTraced { pid, tracer },
                    _ => Error::Permission { pid },
                })
            }
            Err(e) => return Err(Error::ptrace(pid, "PTRACE_SEIZE", e)),
        }
        // From here on the thread is ours: record it so drop detaches it whatever happens next.
        self.threads.insert(tid, None);
        match ptrace::interrupt(t) {
            Ok(()) => {}
            Err(Errno::ESRCH) => return self.gone(tid),
            Err(e) => return Err(Error::ptrace(pid, "PTRACE_INTERRUPT", e)),
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        let mut nap = Duration::from_micros(20);
        loop {
            match waitpid(t, Some(WaitPidFlag::__WALL | WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {
                    if task_state(pid, tid).is_none_or(|s| s == 'Z' || s == 'X') {
                        // Killed meanwhile. A dead leader is not reported to us until every
                        // other thread is reaped, so do not wait for its exit status.
                        return self.gone(tid);
                    }
                    if Instant::now() > deadline {
                        return Err(Error::StopTimeout {
                            pid,
                            tid,
                            seconds: STOP_TIMEOUT.as_secs(),
                        });
                    }
                    std::thread::sleep(nap);
                    nap = (nap * 2).min(Duration::from_millis(5));
                }
                // The interrupt itself (or a group stop) — nothing to give back on detach.
                Ok(WaitStatus::PtraceEvent(..)) | Ok(WaitStatus::PtraceSyscall(..)) => {
                    return Ok(())
                }
                // A signal was about to be delivered: keep it and deliver it when we detach.
                Ok(WaitStatus::Stopped(_, sig)) => {
                    self.threads.insert(tid, Some(sig));
                    return Ok(());
                }
                Ok(WaitStatus::Exited(..)) | Ok(WaitStatus::Signaled(..)) | Err(Errno::ECHILD) => {
                    self.threads.remove(&tid);
                    return self.gone(tid);
                }
                Ok(WaitStatus::Continued(_)) => continue,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(Error::ptrace(pid, "waitpid", e)),
            }
        }
    }

    /// A thread vanished while we stopped it: fine for a worker thread, the end for the process.
    fn gone(&mut self, tid: i32) -> Result<()> {
        if self.threads.remove(&tid).is_some() {
            reap(Pid::from_raw(tid));
        }
        if !process_alive(self.pid) {
            return Err(Error::ProcessExited { pid: self.pid });
        }
        Ok(())
    }

    /// Thread IDs, the main thread first (gdb takes the first NT_PRSTATUS as the current thread).
    pub fn tids(&self) -> Vec<i32> {
        let mut v: Vec<i32> = self.threads.keys().copied().collect();
        v.sort_by_key(|&t| (t != self.pid, t));
        v
    }

    /// Registers of every stopped thread, main thread first.
    pub fn registers(&self) -> Result<Vec<ThreadRegs>> {
        let mut out = Vec::with_capacity(self.threads.len());
        for tid in self.tids() {
            let t = Pid::from_raw(tid);
            let gregs = match regs::general(t) {
                Ok(r) => r,
                // A thread in ptrace-stop cannot go away on its own: the process is being killed.
                Err(Errno::ESRCH) => return Err(Error::ProcessExited { pid: self.pid }),
                Err(e) => return Err(Error::ptrace(self.pid, "reading registers", e)),
            };
            // Floating-point registers are nice to have (gdb shows them); never fail for them.
            let fpregs = regs::floating(t).ok();
            out.push(ThreadRegs { tid, gregs, fpregs });
        }
        Ok(out)
    }

    /// Every thread is still in its ptrace stop (ptrace requests fail with ESRCH on a thread that
    /// left it, which only SIGKILL can make it do).
    pub fn intact(&self) -> bool {
        !self.threads.is_empty()
            && self
                .threads
                .keys()
                .all(|&tid| ptrace::getevent(Pid::from_raw(tid)).is_ok())
    }

    /// Let every thread run again; returns how long the process was stopped.
    pub fn detach(mut self) -> Duration {
        self.release();
        self.since.elapsed()
    }

    fn release(&mut self) {
        for (tid, sig) in std::mem::take(&mut self.threads) {
            let t = Pid::from_raw(tid);
            if ptrace::detach(t, sig).is_err() {
                reap(t);
            }
        }
    }
}

impl Stopped {
    /// Make stopped thread `tid` execute one system call, `nr(args)`, and return its result (a
    /// negative errno on failure), leaving the thread's registers as they were: it goes on, once
    /// detached, exactly where it stopped (an interrupted system call is restarted as the kernel
    /// would). Nothing of the target's memory is written: the `syscall` instruction is the one
    /// the thread stopped in when it was in a system call, else `insn`, one found in its code.
    ///
    /// The call is stepped through with `PTRACE_SYSCALL`, never single-stepped: were this process
    /// killed meanwhile, a pending single-step trap would kill the target. With the thread's own
    /// instruction, it then returns to where it was, with this call's result.
    #[cfg(target_arch = "x86_64")]
    pub fn syscall(&mut self, tid: i32, insn: u64, nr: i64, args: [u64; 6]) -> Result<i64> {
        let pid = self.pid;
        let t = Pid::from_raw(tid);
        if !self.threads.contains_key(&tid) {
            return Err(Error::ProcessExited { pid });
        }
        let failed = |what: &str, e: Errno| match e {
            Errno::ESRCH => Error::ProcessExited { pid },
            e => Error::ptrace(pid, what, e),
        };
        ptrace::setoptions(t, ptrace::Options::PTRACE_O_TRACESYSGOOD)
            .map_err(|e| failed("PTRACE_SETOPTIONS", e))?;
        let saved = ptrace::getregs(t).map_err(|e| failed("reading registers", e))?;
        let own = (saved.orig_rax as i64 >= 0)
            .then(|| saved.rip.checked_sub(2))
            .flatten()
            .filter(|&at| is_syscall_insn(tid, at));
        let mut call = saved;
        call.rip = own.unwrap_or(insn);
        call.rax = nr as u64;
        // No syscall restart for the injected call: the interrupted one is restarted when the
        // saved registers come back.
        call.orig_rax = u64::MAX;
        call.rdi = args[0];
        call.rsi = args[1];
        call.rdx = args[2];
        call.r10 = args[3];
        call.r8 = args[4];
        call.r9 = args[5];
        ptrace::setregs(t, call).map_err(|e| failed("setting registers", e))?;
        let outcome = self
            .run_to_syscall_stop(t)
            .and_then(|()| self.run_to_syscall_stop(t))
            .and_then(|()| {
                ptrace::getregs(t)
                    .map(|r| r.rax as i64)
                    .map_err(|e| failed("reading registers", e))
            });
        // Whatever happened, the thread gets its own registers back before it may run again.
        let restored = ptrace::setregs(t, saved);
        let result = outcome?;
        restored.map_err(|e| failed("restoring registers", e))?;
        Ok(result)
    }

    /// Resume `t` to its next system-call entry or exit stop.
    #[cfg(target_arch = "x86_64")]
    fn run_to_syscall_stop(&mut self, t: Pid) -> Result<()> {
        let pid = self.pid;
        ptrace::syscall(t, None).map_err(|e| match e {
            Errno::ESRCH => Error::ProcessExited { pid },
            e => Error::ptrace(pid, "PTRACE_SYSCALL", e),
        })?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match waitpid(t, Some(WaitPidFlag::__WALL | WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {
                    if Instant::now() > deadline {
                        return Err(Error::StopTimeout {
                            pid,
                            tid: t.as_raw(),
                            seconds: STOP_TIMEOUT.as_secs(),
                        });
                    }
                    std::thread::sleep(Duration::from_micros(20));
                }
                Ok(WaitStatus::PtraceSyscall(_)) => return Ok(()),
                // A signal arrived first: keep it for the detach and give up the call (the
                // caller falls back to what needs no injected call).
                Ok(WaitStatus::Stopped(_, sig)) => {
                    self.threads.insert(t.as_raw(), Some(sig));
                    return Err(Error::ptrace(pid, "injected system call", Errno::EINTR));
                }
                Ok(WaitStatus::PtraceEvent(..)) => {
                    return Err(Error::ptrace(pid, "injected system call", Errno::EINTR));
                }
                Ok(WaitStatus::Exited(..)) | Ok(WaitStatus::Signaled(..)) | Err(Errno::ECHILD) => {
                    self.threads.remove(&t.as_raw());
                    return Err(Error::ProcessExited { pid });
                }
                Ok(WaitStatus::Continued(_)) | Err(Errno::EINTR) => continue,
                Err(e) => return Err(Error::ptrace(pid, "waitpid", e)),
            }
        }
    }
}

/// The two bytes at `at` in thread `tid`'s memory are a `syscall` instruction (0f 05).
#[cfg(target_arch = "x86_64")]
fn is_syscall_insn(tid: i32, at: u64) -> bool {
    let mut b = [0u8; 2];
    let remote = [nix::sys::uio::RemoteIoVec {
        base: at as usize,
        len: 2,
    }];
    matches!(
        nix::sys::uio::process_vm_readv(
            Pid::from_raw(tid),
            &mut [std::io::IoSliceMut::new(&mut b)],
            &remote
        ),
        Ok(2)
    ) && b == [0x0f, 0x05]
}

/// How long a killed thread may take to finish exiting before it is left to the kernel.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);

/// Collects the exit report of a traced thread killed while we held it. Its exit may still be in
/// progress when detach fails, and a traced zombie nobody reaps keeps its process's leader from
/// being reported to the parent: a parent waiting for it would hang (seen under load, a SIGKILL
/// landing mid-capture).
fn reap(t: Pid) {
    let deadline = Instant::now() + REAP_TIMEOUT;
    while Instant::now() < deadline {
        match waitpid(t, Some(WaitPidFlag::__WALL | WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(2)),
            Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) | Err(_) => return,
            // A stop report on the way out: let it go on exiting (no longer ours to reap).
            Ok(_) => {
                if ptrace::detach(t, None).is_ok() {
                    return;
                }
            }
        }
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        self.release();
    }
}

fn list_tasks(pid: i32) -> Result<Vec<i32>> {
    let rd = match std::fs::read_dir(format!("/proc/{pid}/task")) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::ProcessExited { pid })
        }
        Err(e) => {
            return Err(Error::Process {
                pid,
                what: "listing threads".into(),
                source: e,
            })
        }
    };
    let mut tids: Vec<i32> = rd
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    Ok(tids)
}

/// Field 3 of `/proc/PID/task/TID/stat`.
fn task_state(pid: i32, tid: i32) -> Option<char> {
    crate::procfs::read_stat(std::path::Path::new("/proc"), pid, Some(tid))
        .ok()?
        .state
}

/// A thread through which the process's memory can be read: the main thread, unless it has
/// exited (`pthread_exit` in `main`) while other threads run on; then its `/proc` maps are empty
/// and reads through its ID fail.
pub(crate) fn live_task(pid: i32) -> i32 {
    if task_state(pid, pid).is_some_and(|s| s != 'Z' && s != 'X') {
        return pid;
    }
    list_tasks(pid)
        .ok()
        .and_then(|t| {
            t.into_iter()
                .find(|&tid| task_state(pid, tid).is_some_and(|s| s != 'Z' && s != 'X'))
        })
        .unwrap_or(pid)
}

/// The process exists and is not a zombie.
pub(crate) fn process_alive(pid: i32) -> bool {
    task_state(pid, pid).is_some_and(|s| s != 'Z' && s != 'X')
        || list_tasks(pid).is_ok_and(|t| {
            t.iter()
                .any(|&tid| task_state(pid, tid).is_some_and(|s| s != 'Z' && s != 'X'))
        })
}

/// `TracerPid:` of `/proc/PID/status`.
fn tracer_of(pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Register sets serialised field by field into the layout of the kernel's core-dump notes
/// (`elf_gregset_t` is `user_regs_struct`, `elf_fpregset_t` is `user_fpregs_struct`/`user_fpsimd_struct`).
#[cfg(target_arch = "x86_64")]
mod regs {
    use super::*;

    pub fn general(t: Pid) -> nix::Result<Vec<u8>> {
        let r = ptrace::getregs(t)?;
        let words = [
            r.r15, r.r14, r.r13, r.r12, r.rbp, r.rbx, r.r11, r.r10, r.r9, r.r8, r.rax, r.rcx,
            r.rdx, r.rsi, r.rdi, r.orig_rax, r.rip, r.cs, r.eflags, r.rsp, r.ss, r.fs_base,
            r.gs_base, r.ds, r.es, r.fs, r.gs,
        ];
        Ok(words.iter().flat_map(|w| w.to_le_bytes()).collect())
    }

    pub fn floating(t: Pid) -> nix::Result<Vec<u8>> {
        let f = ptrace::getregset::<ptrace::regset::NT_PRFPREG>(t)?;
        let mut b = Vec::with_capacity(512);
        for h in [f.cwd, f.swd, f.ftw, f.fop] {
            b.extend_from_slice(&h.to_le_bytes());
        }
        b.extend_from_slice(&f.rip.to_le_bytes());
        b.extend_from_slice(&f.rdp.to_le_bytes());
        b.extend_from_slice(&f.mxcsr.to_le_bytes());
        b.extend_from_slice(&f.mxcr_mask.to_le_bytes());
        for w in f.st_space.iter().chain(f.xmm_space.iter()) {
            b.extend_from_slice(&w.to_le_bytes());
        }
        b.resize(512, 0);
        Ok(b)
    }
}

#[cfg(target_arch = "aarch64")]
mod regs {
    use super::*;

    pub fn general(t: Pid) -> nix::Result<Vec<u8>> {
        let r = ptrace::getregs(t)?;
        let mut b: Vec<u8> = r.regs.iter().flat_map(|w| w.to_le_bytes()).collect();
        for w in [r.sp, r.pc, r.pstate] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        Ok(b)
    }

    pub fn floating(t: Pid) -> nix::Result<Vec<u8>> {
        let f = ptrace::getregset::<ptrace::regset::NT_PRFPREG>(t)?;
        let mut b: Vec<u8> = f.vregs.iter().flat_map(|v| v.to_le_bytes()).collect();
        b.extend_from_slice(&f.fpsr.to_le_bytes());
        b.extend_from_slice(&f.fpcr.to_le_bytes());
        b.resize(528, 0);
        Ok(b)
    }
}
