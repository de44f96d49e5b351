//! Pre-copy: the target's memory is copied while it runs, with a [`track::Tracker`] recording
//! which pages it writes meanwhile; then it is stopped only to copy again those pages (and what it
//! mapped since), read its registers, and go. When many pages were written during the first
//! copy, they are copied again first, still running, for up to [`MAX_ROUNDS`] rounds.
//!
//! No `fork()` of the target (its copy-on-write pages would be charged to its own memory cgroup):
//! every page is read with `process_vm_readv` and streamed to the staging file through the
//! bounded buffer pool of [`sink`]; written pages are rewritten in place.
//!
//! The file: the ELF header in page 0, the copied mappings from page 1 on, in the order they were
//! copied; mappings that appeared or changed bounds while the target ran go after them; then the
//! notes and the program headers (`e_phoff` points there: the number of mappings is known only at
//! the stop). A segment that lies within a copied range points into it; a clean part of a
//! segment whose bounds changed is copied from there once the target runs again.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::time::Instant;

use std::io::IoSliceMut;

use nix::sys::uio::{process_vm_readv, RemoteIoVec};
use nix::unistd::Pid;

use super::plan::{self, Region};
use super::sink::{self, Piece, Sink};
use super::track::{Page, Run, Tracker, TrackerChoice};
use super::{
    elf, page_size, ptrace, read_chunk, system_notes, task_maps, CaptureOptions, CaptureSummary,
    Error, Frozen, Method, Output, Result,
};
use crate::notes::{LeakhuntNote, LEAKHUNT_NOTE_NAME, NT_LEAKHUNT_INFO};

/// Copy rounds while the target runs, the first one included.
pub(crate) const MAX_ROUNDS: u32 = 4;
/// Below this many written bytes another round while running is not worth it.
const SMALL_DIRTY: u64 = 4 << 20;

/// Why pre-copy was not done: the target is untouched and nothing was written, so the caller
/// captures the old way; or an error that ends the capture.
pub(crate) enum Failure {
    Unavailable(String),
    Fatal(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::Fatal(e)
    }
}

/// A range of the target's memory copied to the file at `off`.
#[derive(Debug, Clone, Copy)]
struct Copied {
    start: u64,
    end: u64,
    off: u64,
}

/// Copies to make in the file once the target runs again, and pages to zero there.
#[derive(Default)]
struct Fixups {
    copies: Vec<(u64, u64, u64)>,
    zeros: Vec<(u64, u64)>,
}

/// What the stopped phase reads: `len` bytes at `addr` of the target to offset `at` of the file.
#[derive(Debug, Clone, Copy)]
struct Read {
    addr: u64,
    len: u64,
    at: u64,
    fresh: bool,
}

/// The tracker, started on the memory a capture writes, and the ranges it covers.
pub(crate) struct Started {
    tracker: Tracker,
    covered: Vec<(u64, u64)>,
}

/// Start tracking the writes of `pid` to the memory a capture writes; nothing is copied yet.
pub(crate) fn start(pid: i32, choice: TrackerChoice) -> std::result::Result<Started, Failure> {
    let task = ptrace::live_task(pid);
    let maps = task_maps(pid, task)?;
    let regions = plan::plan(task, &maps);
    // Shared memory is not pre-copied: another process may write it through its own page
    // tables, which neither tracker sees. It is read while the target is stopped.
    let ranges: Vec<(u64, u64)> = regions
        .iter()
        .filter(|r| r.dump && r.mapping.perms.private)
        .map(|r| (r.mapping.start, r.mapping.end))
        .collect();
    let (tracker, covered) = match Tracker::start(choice, pid, task, &ranges) {
        Ok(t) => t,
        Err(_) if !ptrace::process_alive(pid) => {
            return Err(Failure::Fatal(Error::ProcessExited { pid }))
        }
        Err(why) => return Err(Failure::Unavailable(why)),
    };
    if covered.is_empty() {
        return Err(Failure::Unavailable(format!(
            "{} covered none of its memory",
            tracker.name()
        )));
    }
    Ok(Started { tracker, covered })
}

/// Copy, copy again what was written, stop, copy what is still dirty, publish.
pub(crate) fn capture(
    pid: i32,
    opts: &CaptureOptions,
    out: Output<'_>,
    t0: Instant,
    started: Started,
) -> Result<CaptureSummary> {
    let Started { tracker, covered } = started;
    let page = page_size();
    let target = Pid::from_raw(ptrace::live_task(pid));
    let first = out.raw.as_ref().unwrap_or(&out.tmp);
    let file = first.file().try_clone().map_err(|e| out.err(e))?;
    let budget = super::buffer_budget(covered.iter().map(|&(s, e)| e - s).sum());
    let mut sink = Sink::start(file, &first.path(), false, budget).map_err(|e| out.err(e))?;

    // Round 1: everything, the target running.
    let mut copied = Vec::with_capacity(covered.len());
    let mut pos = page;
    let mut reads = Vec::new();
    for &(start, end) in &covered {
        reads.push(Read {
            addr: start,
            len: end - start,
            at: pos,
            fresh: true,
        });
        copied.push(Copied {
            start,
            end,
            off: pos,
        });
        pos += end - start;
    }
    let precopied = pos - page;
    if !read_into(pid, target, &reads, &mut sink)? {
        return Err(writer_failed(out, sink));
    }

    // Further rounds while the set written meanwhile shrinks.
    let mut rounds = 1;
    // The stop counted is every stop: one thread held for the injected calls included.
    let mut stopped_before = tracker.held();
    let mut previous = u64::MAX;
    while rounds < MAX_ROUNDS {
        let dirty = written_bytes(&tracker, &copied);
        if dirty <= SMALL_DIRTY || dirty.saturating_mul(2) > previous {
            break;
        }
        previous = dirty;
        let runs = if tracker.rearm_needs_stop() {
            let stopped = ptrace::Stopped::stop(pid)?;
            let runs = rearm(&tracker, &copied);
            let cleared = tracker.rearmed();
            stopped_before += stopped.detach();
            cleared.map_err(|e| process_error(pid, "tracking writes", e))?;
            runs
        } else {
            rearm(&tracker, &copied)
        }
        .map_err(|e| process_error(pid, "tracking writes", e))?;
        let again: Vec<Read> = runs
            .iter()
            .flat_map(|(c, r)| {
                std::iter::once(Read {
                    addr: r.start,
                    len: r.end - r.start,
                    at: c.off + (r.start - c.start),
                    fresh: false,
                })
            })
            .collect();
        if !read_into(pid, target, &again, &mut sink)? {
            return Err(writer_failed(out, sink));
        }
        rounds += 1;
    }

    // The stop: what changed, the registers, the notes' facts.
    let stopped = ptrace::Stopped::stop(pid)?;
    let frozen = Frozen::read(pid, &stopped, opts.max_bytes)?;
    let mut offsets = Vec::with_capacity(frozen.regions.len());
    let mut reads = Vec::new();
    let mut fixups = Fixups::default();
    let mut in_place = Vec::new();
    let mut prev_len = 0;
    for r in &frozen.regions {
        if !r.dump {
            // As the kernel does: where the bytes of the one before end (readers that merge
            // neighbouring segments expect it).
            offsets.push(offsets.last().copied().unwrap_or(page) + prev_len);
            prev_len = 0;
            continue;
        }
        let placed = place(r, &copied, &mut pos);
        offsets.push(placed.off);
        prev_len = r.mapping.len();
        if placed.in_place {
            in_place.push((placed.off, placed.off + r.mapping.len()));
        }
        let runs = tracker
            .scan(r.mapping.start, r.mapping.end, zero_when_absent(r))
            .unwrap_or_default();
        let runs = with_gaps_dirty(runs, r.mapping.start, r.mapping.end);
        classify(r, &placed, &runs, &copied, &mut reads, &mut fixups);
    }
    let dirty: u64 = reads.iter().map(|r| r.len).sum();
    let streamed = read_into(pid, target, &reads, &mut sink)?;
    if !stopped.intact() || !ptrace::process_alive(pid) {
        return Err(Error::ProcessExited { pid });
    }
    let stop_time = stopped.detach();
    let tracker_name = tracker.name().to_owned();
    // Unregistered, the target as it was, as soon as it runs.
    drop(tracker);
    let stopped_total = stop_time + stopped_before;
    if !streamed {
        return Err(writer_failed(out, sink));
    }

    // Notes and program headers after everything; the ELF header in page 0.
    let method = Method::PreCopy {
        tracker: tracker_name,
        rounds,
        precopied,
        dirty,
    };
    let note = LeakhuntNote {
        pid,
        captured_at: frozen.captured_at,
        rss: frozen.info.rss,
        start_time: frozen.info.start_time,
        exe: frozen.info.exe.clone(),
        stopped_seconds: stopped_total.as_secs_f64(),
        pseudo_names: super::pseudo_names(&frozen.maps),
        method: Some(method.clone()),
    };
    let mut notes = system_notes(pid, &frozen, page);
    let json = serde_json::to_vec(&note).unwrap_or_default();
    elf::note(&mut notes, LEAKHUNT_NOTE_NAME, NT_LEAKHUNT_INFO, &json);
    let notes_at = pos;
    let notes_len = notes.len() as u64;
    let phoff = (notes_at + notes_len).div_ceil(8) * 8;
    let phdrs = elf::program_headers(&frozen.regions, &offsets, notes_at, notes_len, page);
    let file_len = phoff + phdrs.len() as u64;
    let phnum = frozen.regions.len() as u64 + 1;
    let sent = sink.send_bytes_at(notes_at, notes)
        && sink.send_bytes_at(phoff, phdrs)
        && sink.send_bytes_at(0, elf::ehdr(phnum, phoff));
    if let Err(e) = sink.finish() {
        return Err(super::write_error(e, out.path, file_len, &out.dir));
    }
    if !sent {
        return Err(out.err(std::io::Error::other("the writer stopped early")));
    }
    {
        let first = out.raw.as_ref().unwrap_or(&out.tmp);
        apply(first.file(), &fixups, &copied, &in_place, file_len)
            .map_err(|e| super::write_error(e, out.path, file_len, &out.dir))?;
    }
    let memory_bytes = frozen.regions.iter().map(Region::file_bytes).sum();
    let file_bytes = out.publish(file_len)?;
    Ok(CaptureSummary {
        path: opts.output.clone(),
        file_bytes,
        memory_bytes,
        threads: frozen.regs.len(),
        mappings: frozen.regions.len(),
        stopped: stopped_total,
        total: t0.elapsed(),
        method,
    })
}

fn process_error(pid: i32, what: &str, e: String) -> Error {
    if !ptrace::process_alive(pid) {
        return Error::ProcessExited { pid };
    }
    Error::Process {
        pid,
        what: what.into(),
        source: std::io::Error::other(e),
    }
}

fn writer_failed(out: Output<'_>, sink: Sink) -> Error {
    match sink.finish() {
        Err(e) => super::write_error(e, out.path, 0, &out.dir),
        Ok(()) => out.err(std::io::Error::other("the writer stopped early")),
    }
}

/// Bytes written since the last round in the copied ranges (not rearming anything).
fn written_bytes(tracker: &Tracker, copied: &[Copied]) -> u64 {
    copied
        .iter()
        .filter_map(|c| tracker.written(c.start, c.end).ok())
        .sum()
}

/// The written pages of every copied range, tracked afresh.
fn rearm(tracker: &Tracker, copied: &[Copied]) -> std::result::Result<Vec<(Copied, Run)>, String> {
    let mut out = Vec::new();
    for c in copied {
        for r in tracker.rearm(c.start, c.end)? {
            out.push((*c, r));
        }
    }
    Ok(out)
}

/// `runs` with every page of `[start, end)` they do not cover (a scan that failed or skipped a
/// mapping) added as dirty: what is not known clean is read again.
fn with_gaps_dirty(runs: Vec<Run>, start: u64, end: u64) -> Vec<Run> {
    let mut out = Vec::with_capacity(runs.len() + 1);
    let mut at = start;
    for r in runs {
        let (a, b) = (r.start.max(at), r.end.min(end));
        if a >= b {
            continue;
        }
        if a > at {
            out.push(Run {
                start: at,
                end: a,
                page: Page::Dirty,
            });
        }
        out.push(Run {
            start: a,
            end: b,
            page: r.page,
        });
        at = b;
    }
    if at < end {
        out.push(Run {
            start: at,
            end,
            page: Page::Dirty,
        });
    }
    out
}

/// A region not in memory reads as zeros: private and anonymous (no file behind it).
fn zero_when_absent(r: &Region) -> bool {
    let m = &r.mapping;
    m.perms.private && m.path.as_deref().is_none_or(|p| p.starts_with('['))
}

/// The copied range holding `addr` (`copied` is in address order, the ranges disjoint).
fn containing(copied: &[Copied], addr: u64) -> Option<&Copied> {
    let i = copied.partition_point(|c| c.start <= addr);
    copied[..i].last().filter(|c| addr < c.end)
}

/// Where a region's bytes go in the file.
struct Placed {
    off: u64,
    /// Within one copied range: its bytes are already there, at `off`.
    in_place: bool,
}

fn place(r: &Region, copied: &[Copied], pos: &mut u64) -> Placed {
    let (start, end) = (r.mapping.start, r.mapping.end);
    if let Some(c) = containing(copied, start).filter(|c| end <= c.end) {
        return Placed {
            off: c.off + (start - c.start),
            in_place: true,
        };
    }
    let off = *pos;
    *pos += end - start;
    Placed {
        off,
        in_place: false,
    }
}

/// For each run of a region's pages: nothing to do (clean, in place), a copy within the file
/// after the stop (clean, copied elsewhere), zeros, or a read now.
fn classify(
    r: &Region,
    placed: &Placed,
    runs: &[Run],
    copied: &[Copied],
    reads: &mut Vec<Read>,
    fix: &mut Fixups,
) {
    let start = r.mapping.start;
    let dst = |addr: u64| placed.off + (addr - start);
    for run in runs {
        let (a, b) = (run.start.max(start), run.end.min(r.mapping.end));
        if a >= b {
            continue;
        }
        match run.page {
            Page::Dirty => reads.push(Read {
                addr: a,
                len: b - a,
                at: dst(a),
                fresh: !placed.in_place,
            }),
            Page::Absent => {
                if placed.in_place {
                    fix.zeros.push((dst(a), b - a));
                }
            }
            Page::Clean => {
                // Split by the copied ranges: what lies in one was copied, the rest is read now.
                let mut at = a;
                while at < b {
                    match containing(copied, at) {
                        Some(c) => {
                            let to = b.min(c.end);
                            if !placed.in_place {
                                fix.copies.push((c.off + (at - c.start), dst(at), to - at));
                            }
                            at = to;
                        }
                        None => {
                            let next = copied.partition_point(|c| c.start <= at);
                            let to = copied.get(next).map_or(b, |c| c.start.min(b));
                            reads.push(Read {
                                addr: at,
                                len: to - at,
                                at: dst(at),
                                fresh: !placed.in_place,
                            });
                            at = to;
                        }
                    }
                }
            }
        }
    }
}

/// Read each range of the target into buffers and queue them to their places. `Ok(false)` when
/// the writer failed.
fn read_into(pid: i32, target: Pid, reads: &[Read], sink: &mut Sink) -> Result<bool> {
    let mut buf = None;
    let mut filled = 0usize;
    // Pieces of the current buffer and the target's addresses they are read from.
    let mut pieces: Vec<Piece> = Vec::new();
    let mut addrs: Vec<u64> = Vec::new();
    for r in reads {
        let mut done = 0u64;
        while done < r.len {
            if buf.is_none() {
                match sink.buffer() {
                    Some(b) => buf = Some(b),
                    None => return Ok(false),
                }
                filled = 0;
            }
            let want = ((r.len - done) as usize).min(sink::CHUNK - filled);
            pieces.push(Piece {
                at: r.at + done,
                from: filled,
                len: want,
                fresh: r.fresh,
            });
            addrs.push(r.addr + done);
            filled += want;
            done += want as u64;
            if filled == sink::CHUNK {
                if let Some(mut b) = buf.take() {
                    fill(pid, target, b.filled(filled), &pieces, &addrs)?;
                    addrs.clear();
                    if !sink.send_scattered(b, std::mem::take(&mut pieces)) {
                        return Ok(false);
                    }
                }
            }
        }
    }
    if let Some(mut b) = buf.take() {
        if !pieces.is_empty() {
            fill(pid, target, b.filled(filled), &pieces, &addrs)?;
            if !sink.send_scattered(b, pieces) {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Read every piece of a buffer from the target: many at a time with one `process_vm_readv` (a
/// dirty set is thousands of scattered pages), each on its own from the first that fails (see
/// [`read_chunk`] for what an unreadable page becomes).
fn fill(pid: i32, target: Pid, buf: &mut [u8], pieces: &[Piece], addrs: &[u64]) -> Result<()> {
    // The kernel takes at most IOV_MAX remote ranges a call.
    const BATCH: usize = 1024;
    let mut i = 0;
    while i < pieces.len() {
        let batch = &pieces[i..(i + BATCH).min(pieces.len())];
        let start = batch[0].from;
        let end = batch.last().map_or(start, |p| p.from + p.len);
        let remote: Vec<RemoteIoVec> = batch
            .iter()
            .zip(&addrs[i..])
            .map(|(p, &a)| RemoteIoVec {
                base: a as usize,
                len: p.len,
            })
            .collect();
        let got = process_vm_readv(
            target,
            &mut [IoSliceMut::new(&mut buf[start..end])],
            &remote,
        )
        .unwrap_or(0);
        if got == end - start {
            i += batch.len();
            continue;
        }
        // Short: the pieces read whole stand; from the one that stopped it on, one at a time.
        let whole = batch
            .iter()
            .take_while(|p| p.from + p.len <= start + got)
            .count();
        for (p, &a) in batch[whole..].iter().zip(&addrs[i + whole..]) {
            read_chunk(pid, target, a, &mut buf[p.from..p.from + p.len])?;
        }
        i += batch.len();
    }
    Ok(())
}

/// After the stop: the copies within the file, zeros over what became empty, holes over the
/// copied bytes no segment uses any more, and the file's length.
fn apply(
    file: &File,
    fix: &Fixups,
    copied: &[Copied],
    in_place: &[(u64, u64)],
    file_len: u64,
) -> std::io::Result<()> {
    file.set_len(file_len)?;
    for &(from, to, len) in &fix.copies {
        copy_within(file, from, to, len)?;
    }
    for &(at, len) in &fix.zeros {
        zero(file, at, len)?;
    }
    // What was copied but lies in no segment now (unmapped, or moved out to new bounds).
    let mut used: Vec<(u64, u64)> = in_place.to_vec();
    used.sort_unstable();
    for c in copied {
        let (start, end) = (c.off, c.off + (c.end - c.start));
        let mut at = start;
        for &(u0, u1) in used.iter().filter(|&&(u0, u1)| u1 > start && u0 < end) {
            if u0 > at {
                let _ = punch(file, at, u0 - at);
            }
            at = at.max(u1);
        }
        if at < end {
            let _ = punch(file, at, end - at);
        }
    }
    Ok(())
}

fn copy_within(file: &File, mut from: u64, mut to: u64, mut len: u64) -> std::io::Result<()> {
    let fd = file.as_raw_fd();
    while len > 0 {
        let mut off_in = from as i64;
        let mut off_out = to as i64;
        // SAFETY: both offsets are locals the call updates; the descriptor is open.
        #[allow(unsafe_code)]
        let n =
            unsafe { libc::copy_file_range(fd, &mut off_in, fd, &mut off_out, len as usize, 0) };
        if n <= 0 {
            // Not supported here (or nothing copied): through a buffer.
            return copy_buffered(file, from, to, len);
        }
        from += n as u64;
        to += n as u64;
        len -= n as u64;
    }
    Ok(())
}

fn copy_buffered(file: &File, mut from: u64, mut to: u64, mut len: u64) -> std::io::Result<()> {
    let mut buf = vec![0u8; (len as usize).min(1 << 20)];
    while len > 0 {
        let n = (len as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], from)?;
        file.write_all_at(&buf[..n], to)?;
        from += n as u64;
        to += n as u64;
        len -= n as u64;
    }
    Ok(())
}

/// Zeros over `[at, at + len)`: a hole where the filesystem makes them.
fn zero(file: &File, at: u64, len: u64) -> std::io::Result<()> {
    if punch(file, at, len).is_ok() {
        return Ok(());
    }
    let buf = vec![0u8; (len as usize).min(1 << 20)];
    let mut done = 0;
    while done < len {
        let n = ((len - done) as usize).min(buf.len());
        file.write_all_at(&buf[..n], at + done)?;
        done += n as u64;
    }
    Ok(())
}

fn punch(file: &File, at: u64, len: u64) -> std::io::Result<()> {
    // SAFETY: fallocate on an open descriptor with plain integer arguments.
    #[allow(unsafe_code)]
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            at as i64,
            len as i64,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::parse_maps;

    fn region(line: &str) -> Region {
        Region {
            mapping: parse_maps(line).remove(0),
            dump: true,
        }
    }

    fn run(start: u64, end: u64, page: Page) -> Run {
        Run { start, end, page }
    }

    #[test]
    fn what_a_scan_does_not_cover_is_dirty() {
        let runs = with_gaps_dirty(
            vec![
                run(0x2000, 0x3000, Page::Clean),
                run(0x5000, 0x9000, Page::Absent),
            ],
            0x1000,
            0x6000,
        );
        assert_eq!(
            runs,
            [
                run(0x1000, 0x2000, Page::Dirty),
                run(0x2000, 0x3000, Page::Clean),
                run(0x3000, 0x5000, Page::Dirty),
                run(0x5000, 0x6000, Page::Absent),
            ]
        );
    }

    #[test]
    fn in_place_only_dirty_pages_are_read_and_absent_ones_zeroed() {
        let copied = [Copied {
            start: 0x10000,
            end: 0x20000,
            off: 0x1000,
        }];
        let r = region("10000-18000 rw-p 00000000 00:00 0\n");
        let mut pos = 0x11000;
        let placed = place(&r, &copied, &mut pos);
        assert!(placed.in_place);
        assert_eq!((placed.off, pos), (0x1000, 0x11000));
        let runs = [
            run(0x10000, 0x12000, Page::Clean),
            run(0x12000, 0x13000, Page::Dirty),
            run(0x13000, 0x15000, Page::Absent),
            run(0x15000, 0x18000, Page::Clean),
        ];
        let (mut reads, mut fix) = (Vec::new(), Fixups::default());
        classify(&r, &placed, &runs, &copied, &mut reads, &mut fix);
        assert_eq!(reads.len(), 1);
        assert_eq!(
            (reads[0].addr, reads[0].len, reads[0].at, reads[0].fresh),
            (0x12000, 0x1000, 0x3000, false)
        );
        assert_eq!(fix.zeros, [(0x4000, 0x2000)]);
        assert!(fix.copies.is_empty());
    }

    #[test]
    fn a_region_that_grew_is_appended_its_clean_copied_part_copied_within_the_file() {
        // Copied [0x10000, 0x14000) at 0x1000; the mapping now reaches 0x16000.
        let copied = [Copied {
            start: 0x10000,
            end: 0x14000,
            off: 0x1000,
        }];
        let r = region("10000-16000 rw-p 00000000 00:00 0\n");
        let mut pos = 0x5000;
        let placed = place(&r, &copied, &mut pos);
        assert!(!placed.in_place);
        assert_eq!((placed.off, pos), (0x5000, 0xb000));
        let runs = [
            run(0x10000, 0x11000, Page::Dirty),
            run(0x11000, 0x16000, Page::Clean),
        ];
        let (mut reads, mut fix) = (Vec::new(), Fixups::default());
        classify(&r, &placed, &runs, &copied, &mut reads, &mut fix);
        // The dirty page and the part never copied are read, into fresh space.
        let got: Vec<_> = reads
            .iter()
            .map(|r| (r.addr, r.len, r.at, r.fresh))
            .collect();
        assert_eq!(
            got,
            [
                (0x10000, 0x1000, 0x5000, true),
                (0x14000, 0x2000, 0x9000, true)
            ]
        );
        // The clean copied part moves from where it was copied to the region's new place.
        assert_eq!(fix.copies, [(0x2000, 0x6000, 0x3000)]);
    }
}
