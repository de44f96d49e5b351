//! Which pages a running process wrote since a point in time: what lets [`super::precopy`] copy
//! memory while the target runs and stop it only to copy again what changed.
//!
//! Two trackers, because kernels differ:
//! - **soft-dirty**: `/proc/PID/clear_refs` ← 4 clears the bit, `/proc/PID/pagemap` bit 55 says
//!   a page was written since (kernels built with `CONFIG_MEM_SOFT_DIRTY`, most distributions'). A
//!   kernel without it accepts the write and tracks nothing, so it is detected on ourselves.
//! - **userfaultfd write-protect, asynchronous** (Linux ≥ 6.7): the target's memory is registered
//!   with a userfaultfd that belongs to its mm (created in the target by an injected system call
//!   and taken with `pidfd_getfd`); a write clears the page's protection in the kernel, without a
//!   fault to anyone, and the `PAGEMAP_SCAN` ioctl lists the pages written. Everything is
//!   unregistered when the tracker is dropped, and its file descriptor closed: the target is left
//!   as it was.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

use super::{ptrace, Error, Result};

/// What a page holds now against what was copied of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Page {
    /// Not written since tracking began: the copy taken since is current.
    Clean,
    /// Written, or not tracked: read it again.
    Dirty,
    /// Not in memory and never written: zeros in private anonymous memory, otherwise whatever a
    /// read gives (the file behind it).
    Absent,
}

/// A run of pages in the same state, `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Run {
    pub start: u64,
    pub end: u64,
    pub page: Page,
}

pub(crate) enum Tracker {
    SoftDirty { pid: i32, pagemap: File },
    Uffd(Uffd),
}

/// Which tracker to use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrackerChoice {
    /// Soft-dirty where the kernel tracks it, else userfaultfd.
    #[default]
    Auto,
    SoftDirty,
    Userfaultfd,
}

impl Tracker {
    pub fn name(&self) -> &'static str {
        match self {
            Tracker::SoftDirty { .. } => "soft-dirty",
            Tracker::Uffd(_) => "userfaultfd write-protect",
        }
    }

    /// Start tracking writes to `ranges` of `pid` (through thread `task`), or say why it cannot
    /// be done here. Ranges the tracker could not cover are left out of the returned list.
    pub fn start(
        choice: TrackerChoice,
        pid: i32,
        task: i32,
        ranges: &[(u64, u64)],
    ) -> Result<(Tracker, Vec<(u64, u64)>), String> {
        let soft = || -> Result<Tracker, String> {
            if !soft_dirty_works() {
                return Err(
                    "this kernel does not track soft-dirty pages (CONFIG_MEM_SOFT_DIRTY)".into(),
                );
            }
            let pagemap = open_pagemap(pid)?;
            clear_soft_dirty(pid)?;
            Ok(Tracker::SoftDirty { pid, pagemap })
        };
        let uffd = || -> Result<(Tracker, Vec<(u64, u64)>), String> {
            let (u, covered) = Uffd::start(pid, task, ranges)?;
            Ok((Tracker::Uffd(u), covered))
        };
        match choice {
            TrackerChoice::SoftDirty => soft().map(|t| (t, ranges.to_vec())),
            TrackerChoice::Userfaultfd => uffd(),
            // Soft-dirty first: nothing runs in the target. A kernel without it, or a target whose
            // clear_refs we may not write (another user, no CAP_DAC_OVERRIDE): userfaultfd.
            TrackerChoice::Auto => match soft() {
                Ok(t) => Ok((t, ranges.to_vec())),
                Err(not_soft) => uffd().map_err(|not_uffd| format!("{not_soft}; {not_uffd}")),
            },
        }
    }

    /// The state of every page in `[start, end)`, in runs.
    pub fn scan(&self, start: u64, end: u64, private_anon: bool) -> Result<Vec<Run>, String> {
        match self {
            Tracker::SoftDirty { pagemap, .. } => {
                let absent = if private_anon {
                    Page::Absent
                } else {
                    Page::Dirty
                };
                scan_pagemap(pagemap, start, end, absent)
            }
            Tracker::Uffd(u) => u.scan(start, end, false),
        }
    }

    /// Bytes of `[start, end)` written since the last rearm (nothing is rearmed).
    pub fn written(&self, start: u64, end: u64) -> Result<u64, String> {
        let runs = match self {
            Tracker::SoftDirty { pagemap, .. } => scan_pagemap(pagemap, start, end, Page::Clean)?,
            Tracker::Uffd(u) => u.scan(start, end, false)?,
        };
        Ok(dirty_only(runs).iter().map(|r| r.end - r.start).sum())
    }

    /// How long starting it held (one thread of) the target.
    pub fn held(&self) -> std::time::Duration {
        match self {
            Tracker::SoftDirty { .. } => std::time::Duration::ZERO,
            Tracker::Uffd(u) => u.held,
        }
    }

    /// Whether the next round of copies can be taken while the target runs: with soft-dirty the
    /// written set is read and cleared with the target stopped (a write between the two would be
    /// lost), with userfaultfd both are one atomic step.
    pub fn rearm_needs_stop(&self) -> bool {
        matches!(self, Tracker::SoftDirty { .. })
    }

    /// The pages of `[start, end)` written since the last rearm, now tracked afresh: the caller
    /// must copy them again.
    pub fn rearm(&self, start: u64, end: u64) -> Result<Vec<Run>, String> {
        match self {
            // Pages not in memory read the same now as then, or are written (and so dirty).
            Tracker::SoftDirty { pagemap, .. } => {
                scan_pagemap(pagemap, start, end, Page::Clean).map(dirty_only)
            }
            Tracker::Uffd(u) => u.scan(start, end, true).map(dirty_only),
        }
    }

    /// After every range was rearmed (soft-dirty: clears the bits, the target still stopped).
    pub fn rearmed(&self) -> Result<(), String> {
        match self {
            Tracker::SoftDirty { pid, .. } => clear_soft_dirty(*pid),
            Tracker::Uffd(_) => Ok(()),
        }
    }
}

fn dirty_only(runs: Vec<Run>) -> Vec<Run> {
    runs.into_iter().filter(|r| r.page == Page::Dirty).collect()
}

fn open_pagemap(pid: i32) -> Result<File, String> {
    File::open(format!("/proc/{pid}/pagemap")).map_err(|e| format!("/proc/{pid}/pagemap: {e}"))
}

fn clear_soft_dirty(pid: i32) -> Result<(), String> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), b"4")
        .map_err(|e| format!("clearing soft-dirty bits of process {pid}: {e}"))
}

const PM_SOFT_DIRTY: u64 = 1 << 55;
const PM_SWAP: u64 = 1 << 62;
const PM_PRESENT: u64 = 1 << 63;

/// Whether this kernel tracks soft-dirty pages: cleared on ourselves, a page written must show
/// the bit (a kernel without `CONFIG_MEM_SOFT_DIRTY` takes the clear and never sets it).
fn soft_dirty_works() -> bool {
    static WORKS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WORKS.get_or_init(|| {
        let mut page = vec![0u8; 2 * PAGE as usize];
        if std::fs::write("/proc/self/clear_refs", b"4").is_err() {
            return false;
        }
        let at = (page.as_ptr() as u64).div_ceil(PAGE) * PAGE;
        let i = (at - page.as_ptr() as u64) as usize;
        // A volatile write: the compiler may not drop it.
        // SAFETY: `i` is within `page` (the first page boundary inside a two-page buffer).
        #[allow(unsafe_code)]
        unsafe {
            std::ptr::write_volatile(page.as_mut_ptr().add(i), 1)
        };
        let Ok(pm) = File::open("/proc/self/pagemap") else {
            return false;
        };
        let mut e = [0u8; 8];
        let ok = pm.read_exact_at(&mut e, at / PAGE * 8).is_ok()
            && u64::from_le_bytes(e) & PM_SOFT_DIRTY != 0;
        std::hint::black_box(&page);
        ok
    })
}

const PAGE: u64 = 4096;

/// Runs of `[start, end)` from the pagemap's soft-dirty, present and swapped bits; pages neither
/// present nor swapped are `absent`.
fn scan_pagemap(pm: &File, start: u64, end: u64, absent: Page) -> Result<Vec<Run>, String> {
    let mut runs: Vec<Run> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut at = start;
    while at < end {
        let pages = ((end - at) / PAGE).min(buf.len() as u64 / 8) as usize;
        let want = &mut buf[..pages * 8];
        pm.read_exact_at(want, at / PAGE * 8)
            .map_err(|e| format!("reading pagemap: {e}"))?;
        for (k, e) in want.chunks_exact(8).enumerate() {
            let e = u64::from_le_bytes(e.try_into().unwrap_or([0; 8]));
            let page = if e & (PM_PRESENT | PM_SWAP) == 0 {
                absent
            } else if e & PM_SOFT_DIRTY != 0 {
                Page::Dirty
            } else {
                Page::Clean
            };
            push(&mut runs, at + k as u64 * PAGE, PAGE, page);
        }
        at += pages as u64 * PAGE;
    }
    Ok(runs)
}

fn push(runs: &mut Vec<Run>, start: u64, len: u64, page: Page) {
    match runs.last_mut() {
        Some(r) if r.end == start && r.page == page => r.end += len,
        _ => runs.push(Run {
            start,
            end: start + len,
            page,
        }),
    }
}

/// A userfaultfd of the target's mm, held here, with the ranges registered on it.
pub(crate) struct Uffd {
    fd: OwnedFd,
    pagemap: File,
    registered: Vec<(u64, u64)>,
    /// How long one thread of the target was held for the injected calls.
    held: std::time::Duration,
}

// The uAPI of <linux/userfaultfd.h> and <linux/fs.h> (Linux 6.7), not in the libc crate.
const UFFD_API: u64 = 0xAA;
const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
const UFFD_USER_MODE_ONLY: u64 = 1;
const UFFDIO_API: u64 = 0xC018_AA3F;
const UFFDIO_REGISTER: u64 = 0xC020_AA00;
const UFFDIO_UNREGISTER: u64 = 0x8010_AA01;
const UFFDIO_WRITEPROTECT: u64 = 0xC018_AA06;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1;
const PAGEMAP_SCAN: u64 = 0xC060_6610;
const PM_SCAN_WP_MATCHING: u64 = 1;
const PAGE_IS_WRITTEN: u64 = 1 << 1;

#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
struct UffdioWriteprotect {
    start: u64,
    len: u64,
    mode: u64,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// `ioctl(fd, req, arg)`; the errno on failure.
fn ioctl<T>(fd: i32, req: u64, arg: &mut T) -> std::io::Result<i64> {
    // SAFETY: `arg` is a live, exclusively borrowed `repr(C)` struct of the size `req` encodes;
    // the kernel reads and writes only within it (and, for PAGEMAP_SCAN, within the vector it
    // points at, which the caller keeps alive and sized as `vec_len` says).
    #[allow(unsafe_code)]
    let r = unsafe { libc::ioctl(fd, req as _, arg as *mut T) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r as i64)
    }
}

impl Uffd {
    fn start(
        pid: i32,
        task: i32,
        ranges: &[(u64, u64)],
    ) -> Result<(Uffd, Vec<(u64, u64)>), String> {
        let pagemap = open_pagemap(pid)?;
        let (fd, held) = remote_userfaultfd(pid, task).map_err(|e| e.to_string())?;
        let mut api = UffdioApi {
            api: UFFD_API,
            features: UFFD_FEATURE_WP_ASYNC,
            ioctls: 0,
        };
        ioctl(fd.as_raw_fd(), UFFDIO_API, &mut api).map_err(|e| {
            format!("this kernel has no asynchronous userfaultfd write-protect (Linux 6.7): {e}")
        })?;
        let mut me = Uffd {
            fd,
            pagemap,
            registered: Vec::new(),
            held,
        };
        // The scan ioctl exists (6.7): probed on a page not registered yet.
        if let Some(&(start, _)) = ranges.first() {
            if let Err(e) = me.scan(start, start + PAGE, false) {
                return Err(format!("this kernel has no PAGEMAP_SCAN (Linux 6.7): {e}"));
            }
        }
        let mut covered = Vec::with_capacity(ranges.len());
        for &(start, end) in ranges {
            let mut reg = UffdioRegister {
                start,
                len: end - start,
                mode: UFFDIO_REGISTER_MODE_WP,
                ioctls: 0,
            };
            // A mapping that changed since it was listed, or of a kind that cannot be
            // registered, is simply not pre-copied: it is read while the target is stopped.
            if ioctl(me.fd.as_raw_fd(), UFFDIO_REGISTER, &mut reg).is_err() {
                continue;
            }
            me.registered.push((start, end));
            let mut wp = UffdioWriteprotect {
                start,
                len: end - start,
                mode: UFFDIO_WRITEPROTECT_MODE_WP,
            };
            if ioctl(me.fd.as_raw_fd(), UFFDIO_WRITEPROTECT, &mut wp).is_ok() {
                covered.push((start, end));
            }
        }
        Ok((me, covered))
    }

    /// Page runs of `[start, end)`; with `rearm`, the written pages are write-protected again in
    /// the same step. Pages of memory not registered (mapped since) read as written.
    fn scan(&self, start: u64, end: u64, rearm: bool) -> Result<Vec<Run>, String> {
        let mut runs = Vec::new();
        let mut vec = vec![PageRegion::default(); 4096];
        let mut at = start;
        loop {
            let mut arg = PmScanArg {
                size: std::mem::size_of::<PmScanArg>() as u64,
                flags: if rearm { PM_SCAN_WP_MATCHING } else { 0 },
                start: at,
                end,
                vec: vec.as_mut_ptr() as u64,
                vec_len: vec.len() as u64,
                category_mask: if rearm { PAGE_IS_WRITTEN } else { 0 },
                return_mask: PAGE_IS_WRITTEN,
                ..Default::default()
            };
            let n = ioctl(self.pagemap.as_raw_fd(), PAGEMAP_SCAN, &mut arg)
                .map_err(|e| format!("PAGEMAP_SCAN: {e}"))?;
            for r in &vec[..(n as usize).min(vec.len())] {
                let page = if r.categories & PAGE_IS_WRITTEN != 0 {
                    Page::Dirty
                } else {
                    Page::Clean
                };
                push(&mut runs, r.start, r.end - r.start, page);
            }
            if arg.walk_end >= end || arg.walk_end <= at {
                break;
            }
            at = arg.walk_end;
        }
        Ok(runs)
    }
}

impl Drop for Uffd {
    fn drop(&mut self) {
        // Closing the last reference unregisters everything as well; unregistering first clears
        // the protection of each range right away, whoever else may hold the file.
        for &(start, end) in &self.registered {
            let mut r = UffdioRange {
                start,
                len: end - start,
            };
            let _ = ioctl(self.fd.as_raw_fd(), UFFDIO_UNREGISTER, &mut r);
        }
    }
}

/// A userfaultfd created in `pid`'s mm by a system call injected into thread `task`, taken with
/// `pidfd_getfd`, and closed in the target again: only our copy remains.
#[cfg(target_arch = "x86_64")]
fn remote_userfaultfd(pid: i32, task: i32) -> Result<(OwnedFd, std::time::Duration)> {
    let insn = find_syscall_insn(pid, task)?;
    let mut stopped = ptrace::Stopped::stop_thread(pid, task)?;
    let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64 | UFFD_USER_MODE_ONLY;
    let remote = stopped.syscall(task, insn, libc::SYS_userfaultfd, [flags, 0, 0, 0, 0, 0])?;
    if remote < 0 {
        return Err(Error::Process {
            pid,
            what: "userfaultfd() in the target".into(),
            source: std::io::Error::from_raw_os_error(-remote as i32),
        });
    }
    let ours = take_fd(pid, remote as i32);
    // Closed in the target whatever happened to our copy.
    let closed = stopped.syscall(task, insn, libc::SYS_close, [remote as u64, 0, 0, 0, 0, 0]);
    let held = stopped.detach();
    let ours = ours?;
    closed?;
    Ok((ours, held))
}

#[cfg(not(target_arch = "x86_64"))]
fn remote_userfaultfd(pid: i32, _task: i32) -> Result<(OwnedFd, std::time::Duration)> {
    Err(Error::Process {
        pid,
        what: "userfaultfd in the target".into(),
        source: std::io::Error::other("system call injection is implemented for x86-64 only"),
    })
}

/// `pidfd_getfd(pidfd_open(pid), fd)`.
fn take_fd(pid: i32, fd: i32) -> Result<OwnedFd> {
    let err = |what: &str| Error::Process {
        pid,
        what: what.into(),
        source: std::io::Error::last_os_error(),
    };
    // SAFETY: plain system calls with integer arguments; the returned descriptors are owned here.
    #[allow(unsafe_code)]
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0);
        if pidfd < 0 {
            return Err(err("pidfd_open"));
        }
        let pidfd = OwnedFd::from_raw_fd(pidfd as i32);
        let got = libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0);
        if got < 0 {
            return Err(err("pidfd_getfd"));
        }
        Ok(OwnedFd::from_raw_fd(got as i32))
    }
}

/// The address of a `syscall` instruction (0f 05) in the target's executable memory: the vDSO
/// first, then its other code. The bytes need not start an instruction of the code around them.
#[cfg(target_arch = "x86_64")]
fn find_syscall_insn(pid: i32, task: i32) -> Result<u64> {
    let maps = super::task_maps(pid, task)?;
    let mut code: Vec<_> = maps
        .iter()
        .filter(|m| m.perms.exec && m.perms.read && !m.is_empty())
        .collect();
    code.sort_by_key(|m| m.path.as_deref() != Some("[vdso]"));
    let target = nix::unistd::Pid::from_raw(task);
    let mut buf = vec![0u8; 64 * 1024];
    for m in code {
        let mut at = m.start;
        while at < m.end {
            let len = ((m.end - at) as usize).min(buf.len());
            let remote = [nix::sys::uio::RemoteIoVec {
                base: at as usize,
                len,
            }];
            let n = match nix::sys::uio::process_vm_readv(
                target,
                &mut [std::io::IoSliceMut::new(&mut buf[..len])],
                &remote,
            ) {
                Ok(n) if n > 0 => n,
                _ => break,
            };
            if let Some(i) = buf[..n].windows(2).position(|w| w == [0x0f, 0x05]) {
                return Ok(at + i as u64);
            }
            // An instruction split across reads: step back one byte.
            at += (n as u64).saturating_sub(1).max(1);
        }
    }
    Err(Error::Process {
        pid,
        what: "looking for a syscall instruction".into(),
        source: std::io::Error::other("none in the process's executable memory"),
    })
}
