//! `capture`: write a self-contained ELF core of a live process.
//!
//! By default its memory is pre-copied while it runs and it is stopped only to copy again the
//! pages it wrote meanwhile ([`precopy`]). Where no write tracker works (or with
//! `stop_the_world`), the target is stopped (ptrace seize + interrupt of every thread) while its
//! registers and all its memory are read; memory is streamed with `process_vm_readv` in big chunks to a writer thread that
//! writes a sparse file or a zstd stream. The core goes to a 0600 temporary file next to the output
//! and is renamed into place only when complete, so a failure never leaves a partial core behind.
//!
//! What goes in: every writable or anonymous mapping, and the read-only mappings of ELF objects
//! (see [`plan`]); notes NT_PRSTATUS (+ NT_PRFPREG) per thread, NT_PRPSINFO, NT_AUXV, NT_FILE and
//! our own `LEAKHUNT` note ([`crate::notes::LeakhuntNote`]).

mod auxv;
mod elf;
mod headroom;
mod plan;
mod precopy;
mod ptrace;
mod sink;
mod staging;
mod track;

pub use crate::notes::CaptureMethod as Method;
pub use track::TrackerChoice;

use std::io::IoSliceMut;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::sys::uio::{process_vm_readv, RemoteIoVec};
use nix::unistd::Pid;

use crate::image::{self, Mapping};
use crate::notes::{LeakhuntNote, LEAKHUNT_NOTE_NAME, NT_LEAKHUNT_INFO};
use crate::procfs;
use crate::util::human_bytes;
use plan::Region;

/// How to capture.
#[derive(Debug, Clone, Default)]
pub struct CaptureOptions {
    /// Where the core goes. A `.zst` extension implies `compress`.
    pub output: PathBuf,
    /// Compress with zstd (read back transparently by [`crate::CoreFile::open`]).
    pub compress: bool,
    /// Replace an existing `output`.
    pub overwrite: bool,
    /// Refuse, before stopping the target or writing anything, when the core would be larger.
    pub max_bytes: Option<u64>,
    /// Stop the target for the whole copy instead of pre-copying while it runs.
    pub stop_the_world: bool,
    /// How pre-copy tracks the pages written meanwhile.
    pub tracker: TrackerChoice,
}

/// What a capture wrote.
#[derive(Debug, Clone)]
pub struct CaptureSummary {
    pub path: PathBuf,
    /// Size of the file written (compressed size when compressed).
    pub file_bytes: u64,
    /// Bytes of process memory stored in the core.
    pub memory_bytes: u64,
    pub threads: usize,
    /// Number of mappings (PT_LOAD segments), dumped or not.
    pub mappings: usize,
    /// How long the target was stopped.
    pub stopped: Duration,
    /// Wall time of the whole capture.
    pub total: Duration,
    /// How the memory was copied.
    pub method: Method,
}

/// Why a capture failed. Each message says what to do; nothing is left at the output path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("process {pid} does not exist; check the PID (is it in another PID namespace?)")]
    NoSuchProcess { pid: i32 },
    #[error("process {pid} exited during the capture; no core was written — capture again while it runs")]
    ProcessExited { pid: i32 },
    #[error("no permission to stop and read process {pid}; run as root or with CAP_SYS_PTRACE (and check kernel.yama.ptrace_scope: 3 forbids ptrace entirely)")]
    Permission { pid: i32 },
    #[error("process {pid} is already traced by process {tracer} (a debugger or another capture); detach it, then capture again")]
    AlreadyTraced { pid: i32, tracer: i32 },
    #[error("process {pid}: thread {tid} did not stop within {seconds}s (uninterruptible sleep or a frozen cgroup?); capture again later")]
    StopTimeout { pid: i32, tid: i32, seconds: u64 },
    #[error("{} already exists; pass --force (overwrite) to replace it, or choose another output", path.display())]
    OutputExists { path: PathBuf },
    #[error("disk full writing {} (the core needs about {}, {} free there); free space, capture with --compress, or write elsewhere — no file was left behind", path.display(), human_bytes(*needed), available.map(human_bytes).unwrap_or_else(|| "unknown".into()))]
    DiskFull {
        path: PathBuf,
        needed: u64,
        available: Option<u64>,
    },
    #[error("the core of process {pid} would be about {} ({estimate} bytes), more than the limit of {} ({limit} bytes); raise the limit (--max-size) to capture it", human_bytes(*estimate), human_bytes(*limit))]
    TooLarge { pid: i32, estimate: u64, limit: u64 },
    #[error("cannot write {}: {source}", path.display())]
    Output {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("process {pid}: {what}: {source}")]
    Process {
        pid: i32,
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// Reading the process through `/proc` failed (it went away, an I/O error).
    #[error(transparent)]
    Image(image::Error),
}

/// A refusal to read `/proc/PID/maps` is one to stop the process as well: the capture's
/// permission message says what both need.
impl From<image::Error> for Error {
    fn from(e: image::Error) -> Error {
        match e {
            image::Error::Permission { pid } => Error::Permission { pid },
            e => Error::Image(e),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    fn ptrace(pid: i32, what: &str, e: Errno) -> Error {
        Error::Process {
            pid,
            what: what.into(),
            source: std::io::Error::from(e),
        }
    }
}

/// Bytes reserved after the JSON of our note for the figures known only at the end (stop time).
const NOTE_SLACK: usize = 64;

/// What [`capture`] would write for `pid` now, in bytes (before compression): for callers that
/// check size caps or free disk space first.
pub fn estimate_size(pid: i32) -> Result<u64> {
    check_exists(pid)?;
    let task = ptrace::live_task(pid);
    let maps = task_maps(pid, task)?;
    let regions = plan::plan(task, &maps);
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(1);
    Ok(estimate(&regions, threads))
}

fn estimate(regions: &[Region], threads: usize) -> u64 {
    let page = page_size();
    // Notes: registers per thread, NT_FILE (paths), auxv, prpsinfo and our note: a generous bound.
    let per_thread = elf::note_len(4, 336) + elf::note_len(4, 528);
    let files: usize = regions
        .iter()
        .filter_map(|r| r.mapping.path.as_ref())
        .map(|p| p.len() + 1 + 24 + 16)
        .sum();
    let notes = (threads * per_thread + files + 64 * 1024) as u64;
    elf::Layout::new(regions, notes, page).file_len()
}

/// Capture process `pid` into `opts.output`.
pub fn capture(pid: i32, opts: &CaptureOptions) -> Result<CaptureSummary> {
    let t0 = Instant::now();
    refuse_early(pid, opts)?;
    let out = Output::prepare(pid, opts)?;
    let (out, why) = if opts.stop_the_world {
        (out, None)
    } else if out.compress_now {
        let why = "no room next to the output to stage the uncompressed core that pre-copy updates in place";
        (out, Some(why.to_owned()))
    } else {
        match precopy::start(pid, opts.tracker) {
            Ok(started) => return precopy::capture(pid, opts, out, t0, started),
            Err(precopy::Failure::Unavailable(why)) => (out, Some(why)),
            Err(precopy::Failure::Fatal(e)) => return Err(e),
        }
    };
    let method = Method::StopTheWorld { why };

    let stopped = ptrace::Stopped::stop(pid)?;
    let frozen = Frozen::read(pid, &stopped, opts.max_bytes)?;
    let page = page_size();
    // All notes but ours are final now; ours is reserved with room for the stop time.
    let mut notes = system_notes(pid, &frozen, page);
    let mut ours = LeakhuntNote {
        pid,
        captured_at: frozen.captured_at,
        rss: frozen.info.rss,
        start_time: frozen.info.start_time,
        exe: frozen.info.exe.clone(),
        stopped_seconds: 0.0,
        pseudo_names: pseudo_names(&frozen.maps),
        method: Some(method.clone()),
    };
    let reserved = serde_json::to_vec(&ours)
        .map(|v| v.len() + NOTE_SLACK)
        .unwrap_or(NOTE_SLACK);
    let notes_len = (notes.len() + elf::note_len(LEAKHUNT_NOTE_NAME.len(), reserved)) as u64;
    let layout = elf::Layout::new(&frozen.regions, notes_len, page);

    let (mut sink, streamed) = out.stream(pid, &frozen, &layout, page)?;
    // Killed while we read: reads of a dying process can come back as zeros rather than ESRCH.
    if !stopped.intact() || !ptrace::process_alive(pid) {
        return Err(Error::ProcessExited { pid });
    }
    let stop_time = stopped.detach();

    if streamed {
        ours.stopped_seconds = stop_time.as_secs_f64();
        let mut json = serde_json::to_vec(&ours).unwrap_or_default();
        // JSON allows trailing whitespace: pad to the reserved size.
        json.truncate(reserved);
        json.resize(reserved, b' ');
        elf::note(&mut notes, LEAKHUNT_NOTE_NAME, NT_LEAKHUNT_INFO, &json);
        let _ = sink.send_bytes(notes);
    }
    let file_bytes = out.finish(sink, streamed, layout.file_len())?;
    Ok(CaptureSummary {
        path: opts.output.clone(),
        file_bytes,
        memory_bytes: frozen.regions.iter().map(Region::file_bytes).sum(),
        threads: frozen.regs.len(),
        mappings: frozen.regions.len(),
        stopped: stop_time,
        total: t0.elapsed(),
        method,
    })
}

/// Refuses, before looking further, what cannot be captured: an existing output (unless asked to
/// replace it), a PID that names no process, this process itself.
fn refuse_early(pid: i32, opts: &CaptureOptions) -> Result<()> {
    if !opts.overwrite && std::fs::symlink_metadata(&opts.output).is_ok() {
        return Err(Error::OutputExists {
            path: opts.output.clone(),
        });
    }
    check_exists(pid)?;
    if pid as u32 == std::process::id() {
        // A process cannot ptrace-stop itself; say so rather than "no permission".
        return Err(Error::Process {
            pid,
            what: "capturing".into(),
            source: std::io::Error::other(
                "a process cannot capture itself; run the capture from another process",
            ),
        });
    }
    Ok(())
}

/// The PID names a process in our PID namespace.
fn check_exists(pid: i32) -> Result<()> {
    if pid <= 0 || !Path::new(&format!("/proc/{pid}")).exists() {
        return Err(Error::NoSuchProcess { pid });
    }
    Ok(())
}

/// Where a capture writes: nameless staging files next to the output, published when complete.
struct Output<'a> {
    path: &'a Path,
    dir: PathBuf,
    overwrite: bool,
    /// The core as it is published (compressed when asked).
    tmp: staging::Staging,
    /// The uncompressed core, when it is compressed only after the target runs again.
    raw: Option<staging::Staging>,
    /// Compress while streaming (no room to stage the uncompressed core first).
    compress_now: bool,
}

impl<'a> Output<'a> {
    /// Checks the size cap and the free disk space against what the core would be now, before
    /// anything is stopped or written, then creates the staging files.
    fn prepare(pid: i32, opts: &'a CaptureOptions) -> Result<Output<'a>> {
        let output = &opts.output;
        let compress = opts.compress || output.extension().is_some_and(|e| e == "zst");
        let threads_now = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| d.count())
            .unwrap_or(1);
        let task = ptrace::live_task(pid);
        let maps = task_maps(pid, task)?;
        let first_estimate = estimate(&plan::plan(task, &maps), threads_now);
        check_limit(pid, first_estimate, opts.max_bytes)?;
        let dir = match output.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let available = crate::util::free_bytes(&dir);
        if !compress && available.is_some_and(|free| first_estimate > free) {
            return Err(Error::DiskFull {
                path: output.clone(),
                needed: first_estimate,
                available,
            });
        }
        let out_err = |source| Error::Output {
            path: output.clone(),
            source,
        };
        let name = output
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "core".into());
        // Mode 0600, nameless (or removed on drop) until complete: any early return cleans up.
        let tmp = staging::Staging::create(&dir, &name).map_err(out_err)?;
        // Compressing while the target is stopped would make it wait for the compressor. With room
        // for the uncompressed core next to the output, write that first and compress once the
        // target runs again; without, compress on the fly.
        let staged = match available {
            Some(free) if compress => free / 2 > first_estimate.saturating_add(64 << 20),
            _ => false,
        };
        let raw = if staged {
            Some(staging::Staging::create(&dir, &format!("{name}.raw")).map_err(out_err)?)
        } else {
            None
        };
        Ok(Output {
            path: output,
            dir,
            overwrite: opts.overwrite,
            tmp,
            raw,
            compress_now: compress && !staged,
        })
    }

    fn err(&self, source: std::io::Error) -> Error {
        Error::Output {
            path: self.path.to_owned(),
            source,
        }
    }

    /// Streams the headers and the memory of the stopped target to the first staging file. The
    /// bool is false when the writer failed (its error comes from [`Output::finish`]).
    fn stream(
        &self,
        pid: i32,
        frozen: &Frozen,
        layout: &elf::Layout,
        page: u64,
    ) -> Result<(sink::Sink, bool)> {
        let first = self.raw.as_ref().unwrap_or(&self.tmp);
        let file = first.file().try_clone().map_err(|e| self.err(e))?;
        let budget = buffer_budget(layout.file_len());
        let mut sink = sink::Sink::start(file, &first.path(), self.compress_now, budget)
            .map_err(|e| self.err(e))?;
        let headers = layout.headers(&frozen.regions, page);
        let streamed = sink.send_bytes(headers)
            && stream_memory(pid, frozen.task, &frozen.regions, &mut sink)?;
        Ok((sink, streamed))
    }

    /// Waits for the writer, compresses a staged core and publishes the result at the output
    /// path; returns the size of the file written.
    fn finish(self, sink: sink::Sink, streamed: bool, core_len: u64) -> Result<u64> {
        if let Err(e) = sink.finish() {
            return Err(write_error(e, self.path, core_len, &self.dir));
        }
        if !streamed {
            return Err(self.err(std::io::Error::other("the writer stopped early")));
        }
        self.publish(core_len)
    }

    /// Compresses a staged core and publishes the result at the output path; returns the size of
    /// the file written.
    fn publish(self, core_len: u64) -> Result<u64> {
        let Output {
            path: output,
            dir,
            overwrite,
            tmp,
            raw,
            ..
        } = self;
        let out_err = |source| Error::Output {
            path: output.to_owned(),
            source,
        };
        if let Some(raw) = &raw {
            compress_file(&raw.path(), tmp.file())
                .map_err(|e| write_error(e, output, core_len, &dir))?;
        }
        drop(raw);
        let file_bytes = tmp.file().metadata().map_err(out_err)?.len();
        // Never replaces an existing output unless asked, even one created while we captured.
        tmp.publish(output, overwrite).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::OutputExists {
                    path: output.to_owned(),
                }
            } else {
                out_err(e)
            }
        })?;
        Ok(file_bytes)
    }
}

/// What is read from the target while it is stopped: the plan that is written, the registers
/// and what `/proc` says.
struct Frozen {
    captured_at: f64,
    /// The thread through which memory is read (see [`ptrace::live_task`]).
    task: i32,
    maps: Vec<Mapping>,
    regions: Vec<Region>,
    regs: Vec<ptrace::ThreadRegs>,
    info: image::ProcessInfo,
    proc_stat: elf::ProcStat,
    auxv: Vec<u8>,
}

impl Frozen {
    /// Reads the stopped target's mappings, registers and `/proc` facts, and checks the size cap
    /// against the plan that is written.
    fn read(pid: i32, stopped: &ptrace::Stopped, max_bytes: Option<u64>) -> Result<Frozen> {
        let captured_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        // The address space cannot change any more: this is the plan that is written.
        let task = ptrace::live_task(pid);
        let maps = task_maps(pid, task).map_err(|e| exited_or(pid, e))?;
        let regions = plan::plan(task, &maps);
        let regs = stopped.registers()?;
        check_limit(pid, estimate(&regions, regs.len()), max_bytes)?;
        let info = image::process_info(pid).map_err(|e| exited_or(pid, e.into()))?;
        let proc_stat = read_proc_stat(pid);
        let auxv = auxv::read(pid, task).map_err(|e| {
            exited_or(
                pid,
                Error::Process {
                    pid,
                    what: "reading auxv".into(),
                    source: e,
                },
            )
        })?;
        Ok(Frozen {
            captured_at,
            task,
            maps,
            regions,
            regs,
            info,
            proc_stat,
            auxv,
        })
    }
}

/// The notes a kernel core has: NT_PRSTATUS (+ NT_PRFPREG) per thread, NT_PRPSINFO, NT_AUXV and
/// NT_FILE.
fn system_notes(pid: i32, f: &Frozen, page: u64) -> Vec<u8> {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    let mut notes = Vec::new();
    for r in &f.regs {
        let ts = read_thread_stat(pid, r.tid);
        elf::note(
            &mut notes,
            b"CORE",
            elf::NT_PRSTATUS,
            &elf::prstatus(r, &f.proc_stat, &ts, ticks),
        );
        if let Some(fp) = &r.fpregs {
            elf::note(&mut notes, b"CORE", elf::NT_PRFPREG, fp);
        }
    }
    elf::note(
        &mut notes,
        b"CORE",
        elf::NT_PRPSINFO,
        &elf::prpsinfo(pid, &f.proc_stat),
    );
    elf::note(&mut notes, b"CORE", elf::NT_AUXV, &f.auxv);
    elf::note(
        &mut notes,
        b"CORE",
        elf::NT_FILE,
        &elf::nt_file(&f.regions, page),
    );
    notes
}

/// How much memory the capture may use to buffer the target's memory ahead of the disk (the
/// target is released as soon as everything is read): at most the core's size and 1 GiB, an
/// eighth of the machine's available memory, a quarter of what our memory cgroup (or an ancestor
/// of it, v1 or v2) has left.
fn buffer_budget(core_bytes: u64) -> usize {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let available = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .unwrap_or(0);
    let mut budget = core_bytes.min(1 << 30).min(available / 8);
    if let Some(left) = headroom::memory_left() {
        budget = budget.min(left / 4);
    }
    usize::try_from(budget).unwrap_or(0)
}

/// zstd-compress the file at `from` into `to`.
fn compress_file(from: &Path, to: &std::fs::File) -> std::io::Result<()> {
    let mut input = std::io::BufReader::with_capacity(4 << 20, std::fs::File::open(from)?);
    let out = std::io::BufWriter::with_capacity(1 << 20, to.try_clone()?);
    let mut enc = zstd::stream::write::Encoder::new(out, 1)?;
    // Both cores: the target runs again and the capture is only waiting for this.
    let _ = enc.multithread(2);
    std::io::copy(&mut input, &mut enc)?;
    let mut out = enc.finish()?;
    std::io::Write::flush(&mut out)
}

fn check_limit(pid: i32, estimate: u64, limit: Option<u64>) -> Result<()> {
    match limit {
        Some(limit) if estimate > limit => Err(Error::TooLarge {
            pid,
            estimate,
            limit,
        }),
        _ => Ok(()),
    }
}

/// A failure while the target is stopped is, more often than not, the target going away.
fn exited_or(pid: i32, e: Error) -> Error {
    if ptrace::process_alive(pid) {
        e
    } else {
        Error::ProcessExited { pid }
    }
}

fn write_error(e: std::io::Error, output: &Path, needed: u64, dir: &Path) -> Error {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => Error::DiskFull {
            path: output.to_owned(),
            needed,
            available: crate::util::free_bytes(dir),
        },
        _ => Error::Output {
            path: output.to_owned(),
            source: e,
        },
    }
}

/// Read every dumped region into the sink. `Ok(false)` when the writer failed (its error comes
/// from [`sink::Sink::finish`]); pages that cannot be read are written as zeros.
fn stream_memory(pid: i32, task: i32, regions: &[Region], sink: &mut sink::Sink) -> Result<bool> {
    let target = Pid::from_raw(task);
    for r in regions.iter().filter(|r| r.dump) {
        let Mapping { start, end, .. } = r.mapping;
        let mut at = start;
        while at < end {
            let Some(mut buf) = sink.buffer() else {
                return Ok(false);
            };
            let want = (end - at).min(sink::CHUNK as u64) as usize;
            read_chunk(pid, target, at, buf.filled(want))?;
            if !sink.send(buf) {
                return Ok(false);
            }
            at += want as u64;
        }
    }
    Ok(true)
}

/// Fill `buf` from `addr`; pages that fail to read (EFAULT/EIO: e.g. a file mapping past the end of
/// its file) become zeros so the core keeps its layout.
fn read_chunk(pid: i32, target: Pid, addr: u64, buf: &mut [u8]) -> Result<()> {
    let page = page_size() as usize;
    let mut done = 0usize;
    while done < buf.len() {
        let rest = &mut buf[done..];
        let len = rest.len();
        let remote = [RemoteIoVec {
            base: (addr + done as u64) as usize,
            len,
        }];
        match process_vm_readv(target, &mut [IoSliceMut::new(rest)], &remote) {
            Ok(n) if n > 0 => done += n,
            Ok(_) | Err(Errno::EFAULT) | Err(Errno::EIO) | Err(Errno::ENOMEM) => {
                // Skip to the next page boundary; the buffer already holds zeros there.
                let at = addr as usize + done;
                let next = (at / page + 1) * page;
                let skip = (next - at).min(buf.len() - done);
                buf[done..done + skip].fill(0);
                done += skip;
            }
            Err(Errno::EINTR) => continue,
            Err(Errno::ESRCH) => return Err(Error::ProcessExited { pid }),
            Err(Errno::EPERM) => return Err(Error::Permission { pid }),
            Err(e) => return Err(Error::ptrace(pid, "reading memory", e)),
        }
    }
    Ok(())
}

/// `/proc/PID/maps` as seen through thread `task` (see [`ptrace::live_task`]).
fn task_maps(pid: i32, task: i32) -> Result<Vec<Mapping>> {
    if task == pid {
        return Ok(image::read_maps(pid)?);
    }
    match std::fs::read_to_string(format!("/proc/{pid}/task/{task}/maps")) {
        Ok(text) => Ok(image::parse_maps(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::ProcessExited { pid }),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            Err(Error::Permission { pid })
        }
        Err(e) => Err(Error::Process {
            pid,
            what: "reading maps".into(),
            source: e,
        }),
    }
}

/// `(start, name)` of mappings whose name is not a file path: `[heap]`, `[stack]`, `[anon:...]`.
fn pseudo_names(maps: &[Mapping]) -> Vec<(u64, String)> {
    maps.iter()
        .filter_map(|m| {
            let p = m.path.as_deref()?;
            (!p.starts_with('/')).then(|| (m.start, p.to_owned()))
        })
        .collect()
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64
}

/// Process-wide fields of NT_PRPSINFO / NT_PRSTATUS from `/proc/PID/{stat,status,comm,cmdline}`.
/// Best effort: a missing field is zero, never an error.
fn read_proc_stat(pid: i32) -> elf::ProcStat {
    let mut p = elf::ProcStat::default();
    if let Ok(stat) = procfs::read_stat(Path::new("/proc"), pid, None) {
        p.state = stat.state.unwrap_or('R');
        p.ppid = stat.ppid.unwrap_or(0);
        p.pgrp = stat.pgrp.unwrap_or(0);
        p.sid = stat.session.unwrap_or(0);
        p.flags = stat.flags.unwrap_or(0);
        p.nice = stat.nice.unwrap_or(0) as i8;
    }
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        let first = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        p.uid = first("Uid:");
        p.gid = first("Gid:");
    }
    p.comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end_matches('\n').to_owned())
        .unwrap_or_default();
    p.args = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    p.args.truncate(80);
    p
}

/// Per-thread CPU times and signal masks for NT_PRSTATUS.
fn read_thread_stat(pid: i32, tid: i32) -> elf::ThreadStat {
    let mut t = elf::ThreadStat::default();
    if let Ok(stat) = procfs::read_stat(Path::new("/proc"), pid, Some(tid)) {
        t.utime_ticks = stat.utime.unwrap_or(0);
        t.stime_ticks = stat.stime.unwrap_or(0);
    }
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")) {
        let hex = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                .unwrap_or(0)
        };
        t.sigpend = hex("SigPnd:");
        t.sighold = hex("SigBlk:");
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudo_names_are_the_non_file_names() {
        let maps = image::parse_maps(
            "\
1000-2000 rw-p 00000000 00:00 0 [heap]
2000-3000 rw-p 00000000 00:00 0
3000-4000 r--p 00000000 fd:01 7 /usr/lib/libc.so.6
4000-5000 rw-p 00000000 00:00 0 [anon:python arena]
",
        );
        assert_eq!(
            pseudo_names(&maps),
            [
                (0x1000, "[heap]".to_owned()),
                (0x4000, "[anon:python arena]".to_owned())
            ]
        );
    }

    #[test]
    fn stat_fields_survive_parentheses_in_the_command_name() {
        let f = procfs::parse_stat("42 (a) b (c)) S 1 42 42 0 -1");
        assert_eq!(f.state, Some('S'));
        assert_eq!(f.ppid, Some(1));
    }

    #[test]
    fn estimate_covers_headers_memory_and_notes() {
        // A process whose memory stands still (this one's changes as other tests run beside it).
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .expect("start sleep");
        let pid = child.id() as i32;
        // Settled: exec'd and asleep (not loading libraries).
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
            let stat = procfs::read_stat(Path::new("/proc"), pid, None).unwrap_or_default();
            if exe.ends_with("sleep") && stat.state == Some('S') {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let est = estimate_size(pid).map_err(|e| e.to_string());
        let memory = image::read_maps(pid)
            .map(|maps| {
                plan::plan(pid, &maps)
                    .iter()
                    .map(Region::file_bytes)
                    .sum::<u64>()
            })
            .map_err(|e| e.to_string());
        let _ = child.kill();
        let _ = child.wait();
        let (est, memory) = (est.expect("estimate"), memory.expect("maps"));
        assert!(
            est > memory && est < memory + (16 << 20),
            "{est} vs {memory}"
        );
        assert!(matches!(
            estimate_size(-1),
            Err(Error::NoSuchProcess { .. } | Error::Process { .. })
        ));
    }

    #[test]
    fn refuses_to_capture_itself() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = capture(
            std::process::id() as i32,
            &CaptureOptions {
                output: dir.path().join("self.core"),
                ..Default::default()
            },
        )
        .expect_err("self");
        assert!(e.to_string().contains("cannot capture itself"), "{e}");
    }
}
