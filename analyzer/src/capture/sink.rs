//! Writing the core: a writer thread that takes filled buffers from the reader, so reading the
//! stopped target and writing (or compressing) overlap, with a small fixed pool of buffers so
//! memory use stays bounded whatever the size of the target.
//!
//! Plain cores are written with `O_DIRECT` where the filesystem supports it: the bytes go from our
//! buffer to the disk without a second copy, and a capture on a node that is short of memory (the
//! reason we capture) does not fill the page cache with gigabytes of dirty pages. All-zero pages
//! become holes.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::thread::JoinHandle;

/// Size of one read from the target (and one write).
pub(crate) const CHUNK: usize = 16 << 20;
/// Buffers in flight at least: one being read, the others queued or being written.
const MIN_BUFFERS: usize = 3;
/// Buffers start on a huge-page boundary, which also satisfies `O_DIRECT` (page alignment).
const HUGE: usize = 2 << 20;
/// Alignment `O_DIRECT` needs for offsets and lengths (the page size covers every filesystem's
/// logical block size).
const ALIGN: usize = 4096;
const PAGE: usize = 4096;
/// Rewrites smaller than this go through the page cache.
const SMALL_REWRITE: usize = 1 << 20;

/// A buffer whose bytes start at an `ALIGN`-aligned address.
pub(crate) struct Buf {
    raw: Vec<u8>,
    off: usize,
    len: usize,
}

impl Buf {
    fn new(capacity: usize) -> Buf {
        let mut raw = vec![0u8; capacity + HUGE];
        let off = raw.as_ptr().align_offset(HUGE).min(HUGE);
        advise_huge_pages(&mut raw[off..off + capacity]);
        Buf { raw, off, len: 0 }
    }

    /// The first `len` bytes (at most [`CHUNK`]), to be filled by the caller.
    pub fn filled(&mut self, len: usize) -> &mut [u8] {
        self.len = len.min(self.raw.len() - self.off);
        &mut self.raw[self.off..self.off + self.len]
    }

    fn bytes(&self) -> &[u8] {
        &self.raw[self.off..self.off + self.len]
    }
}

/// Back a fresh buffer with huge pages where the kernel allows it: a gigabyte read from the target
/// then costs hundreds, not hundreds of thousands, of page faults.
fn advise_huge_pages(b: &mut [u8]) {
    // SAFETY: `b` is memory we own for its whole length; MADV_HUGEPAGE only changes how the kernel
    // backs it, never its contents or validity. A failure (THP disabled) is harmless.
    #[allow(unsafe_code)]
    unsafe {
        libc::madvise(b.as_mut_ptr().cast(), b.len(), libc::MADV_HUGEPAGE);
    }
}

/// Where bytes go: a plain file (all-zero pages become holes) or a zstd stream.
enum Output {
    Plain {
        /// The same file opened with `O_DIRECT`, while that works.
        direct: Option<File>,
        file: File,
        /// Logical end of what was written so far (holes included).
        pos: u64,
        /// End of the furthest positioned write.
        end: u64,
    },
    Zstd(Box<zstd::stream::write::Encoder<'static, io::BufWriter<File>>>),
}

impl Output {
    fn write(&mut self, b: &[u8]) -> io::Result<()> {
        match self {
            Output::Zstd(enc) => enc.write_all(b),
            Output::Plain {
                direct, file, pos, ..
            } => {
                write_sparse(direct, file, b, *pos)?;
                *pos += b.len() as u64;
                Ok(())
            }
        }
    }

    /// Write `b` at `at`. Into a `fresh` part of the file (never written, so zeros), zero pages
    /// become holes; over earlier bytes every byte is written.
    fn write_at(&mut self, b: &[u8], at: u64, fresh: bool) -> io::Result<()> {
        match self {
            Output::Zstd(_) => Err(io::Error::other(
                "a compressed stream cannot be written out of order",
            )),
            Output::Plain {
                direct, file, end, ..
            } => {
                if fresh {
                    write_sparse(direct, file, b, at)?;
                } else if b.len() < SMALL_REWRITE {
                    // A page of a dirty set rewritten in place: one `O_DIRECT` write each would
                    // wait for the disk tens of thousands of times.
                    file.write_all_at(b, at)?;
                } else {
                    write_at(direct, file, b, at)?;
                }
                *end = (*end).max(at + b.len() as u64);
                Ok(())
            }
        }
    }

    fn finish(self) -> io::Result<()> {
        match self {
            Output::Zstd(enc) => {
                let mut w = enc.finish()?;
                w.flush()
            }
            // Sets the length a trailing hole leaves short.
            Output::Plain { file, pos, end, .. } => file.set_len(pos.max(end)),
        }
    }
}

/// Write `b` at `at`, leaving holes where it has whole pages of zeros (untouched memory reads as
/// zeros; a hole costs no disk and reads back the same).
fn write_sparse(direct: &mut Option<File>, file: &File, b: &[u8], at: u64) -> io::Result<()> {
    let mut i = 0usize;
    while i < b.len() {
        let run_start = i;
        let zero = is_zero_page(&b[i..]);
        while i < b.len() && is_zero_page(&b[i..]) == zero {
            i = (i + PAGE).min(b.len());
        }
        if !zero {
            write_at(direct, file, &b[run_start..i], at + run_start as u64)?;
        }
    }
    Ok(())
}

/// `pwrite` through `O_DIRECT` when the run is aligned, else (or when the filesystem refuses)
/// through the page cache.
fn write_at(direct: &mut Option<File>, file: &File, run: &[u8], at: u64) -> io::Result<()> {
    let aligned =
        run.as_ptr() as usize % ALIGN == 0 && run.len() % ALIGN == 0 && at % ALIGN as u64 == 0;
    if let (Some(d), true) = (direct.as_ref(), aligned) {
        match d.write_all_at(run, at) {
            Ok(()) => return Ok(()),
            // Not supported here after all: fall back for good.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => *direct = None,
            Err(e) => return Err(e),
        }
    }
    file.write_all_at(run, at)
}

/// The page at the start of `b` is a whole page of zeros.
fn is_zero_page(b: &[u8]) -> bool {
    let Some(p) = b.get(..PAGE) else {
        return false;
    };
    // Most non-zero pages differ in their first bytes; test those before the whole page.
    p.iter().take(64).all(|&x| x == 0)
        && p.chunks_exact(16).fold(0u128, |acc, c| {
            acc | u128::from_ne_bytes(c.try_into().unwrap_or([1; 16]))
        }) == 0
}

enum Msg {
    Memory(Buf),
    Bytes(Vec<u8>),
    /// Parts of a buffer, each to its own place in the file.
    Scatter(Buf, Vec<Piece>),
    BytesAt(u64, Vec<u8>),
}

/// `len` bytes from `from` in a buffer go to offset `at` of the file; `fresh` when nothing was
/// written there before (see [`Output::write_at`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Piece {
    pub at: u64,
    pub from: usize,
    pub len: usize,
    pub fresh: bool,
}

/// The reader's end of the pipeline.
pub(crate) struct Sink {
    tx: Option<SyncSender<Msg>>,
    free: Receiver<Buf>,
    /// Buffers allocated so far, and the most we may: the reader runs ahead of a slow disk by up to
    /// `max_buffers` chunks, so the target is released sooner.
    allocated: usize,
    max_buffers: usize,
    writer: Option<JoinHandle<io::Result<()>>>,
}

impl Sink {
    /// Start the writer thread on `file` (whose path is `path`, reopened for `O_DIRECT`), with up to
    /// `budget` bytes of buffers.
    pub fn start(file: File, path: &Path, compress: bool, budget: usize) -> io::Result<Sink> {
        let mut out = if compress {
            let mut enc =
                zstd::stream::write::Encoder::new(io::BufWriter::with_capacity(1 << 20, file), 1)?;
            // Two compression workers: they overlap with the reader; ignore where unsupported.
            let _ = enc.multithread(2);
            Output::Zstd(Box::new(enc))
        } else {
            let direct = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(path)
                .ok();
            Output::Plain {
                direct,
                file,
                pos: 0,
                end: 0,
            }
        };
        let max_buffers = (budget / CHUNK).max(MIN_BUFFERS);
        // Both channels hold every buffer there may be, so neither side blocks on a full channel.
        let (tx, rx) = sync_channel::<Msg>(max_buffers + 2);
        let (free_tx, free) = sync_channel::<Buf>(max_buffers);
        let writer = std::thread::Builder::new()
            .name("capture-writer".into())
            .spawn(move || -> io::Result<()> {
                for msg in rx {
                    match msg {
                        Msg::Memory(buf) => {
                            out.write(buf.bytes())?;
                            // The reader may have finished; a closed pool is fine.
                            let _ = free_tx.try_send(buf);
                        }
                        Msg::Bytes(b) => out.write(&b)?,
                        Msg::Scatter(buf, pieces) => {
                            for p in pieces {
                                let b =
                                    buf.bytes().get(p.from..p.from + p.len).ok_or_else(|| {
                                        io::Error::other("a piece outside its buffer")
                                    })?;
                                out.write_at(b, p.at, p.fresh)?;
                            }
                            let _ = free_tx.try_send(buf);
                        }
                        Msg::BytesAt(at, b) => out.write_at(&b, at, false)?,
                    }
                }
                out.finish()
            })?;
        Ok(Sink {
            tx: Some(tx),
            free,
            allocated: 0,
            max_buffers,
            writer: Some(writer),
        })
    }

    /// An empty buffer to fill: a written one, a new one while within budget, else the next one
    /// the writer gives back. `None` once the writer has failed.
    pub fn buffer(&mut self) -> Option<Buf> {
        match self.free.try_recv() {
            Ok(b) => Some(b),
            Err(TryRecvError::Empty) if self.allocated < self.max_buffers => {
                self.allocated += 1;
                Some(Buf::new(CHUNK))
            }
            Err(TryRecvError::Empty) => self.free.recv().ok(),
            Err(TryRecvError::Disconnected) => None,
        }
    }

    /// Queue a filled buffer; `false` once the writer has failed (see [`Sink::finish`]).
    pub fn send(&mut self, buf: Buf) -> bool {
        self.send_msg(Msg::Memory(buf))
    }

    /// Queue a filled buffer whose parts go to the places `pieces` say.
    pub fn send_scattered(&mut self, buf: Buf, pieces: Vec<Piece>) -> bool {
        self.send_msg(Msg::Scatter(buf, pieces))
    }

    /// Queue bytes to be written at `at`.
    pub fn send_bytes_at(&mut self, at: u64, b: Vec<u8>) -> bool {
        self.send_msg(Msg::BytesAt(at, b))
    }

    /// Queue bytes (headers, notes).
    pub fn send_bytes(&mut self, b: Vec<u8>) -> bool {
        self.send_msg(Msg::Bytes(b))
    }

    fn send_msg(&mut self, m: Msg) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.send(m).is_ok())
    }

    /// Wait for everything to be written; the writer's error if it failed.
    pub fn finish(mut self) -> io::Result<()> {
        self.join()
    }

    fn join(&mut self) -> io::Result<()> {
        drop(self.tx.take());
        match self.writer.take() {
            Some(h) => h
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the writer thread panicked"))),
            None => Ok(()),
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn roundtrip(compress: bool) -> (Vec<u8>, u64) {
        let tmp = tempfile::NamedTempFile::new().expect("temp");
        let mut sink =
            Sink::start(tmp.reopen().expect("reopen"), tmp.path(), compress, 0).expect("start");
        assert!(sink.send_bytes(vec![1u8; PAGE]));
        let mut b = sink.buffer().expect("buffer");
        let s = b.filled(PAGE * 4);
        s.fill(0);
        s[..100].fill(7);
        s[PAGE * 3..].fill(9);
        assert!(sink.send(b));
        let mut b = sink.buffer().expect("buffer");
        b.filled(PAGE * 2).fill(0);
        assert!(sink.send(b));
        assert!(sink.send_bytes(b"end".to_vec()));
        sink.finish().expect("finish");
        let mut raw = Vec::new();
        tmp.reopen()
            .expect("reopen")
            .read_to_end(&mut raw)
            .expect("read");
        let blocks = nix::sys::stat::stat(tmp.path()).expect("stat").st_blocks as u64;
        if compress {
            (zstd::decode_all(&raw[..]).expect("decode"), blocks)
        } else {
            (raw, blocks)
        }
    }

    #[test]
    fn plain_and_compressed_outputs_hold_the_same_bytes() {
        let mut want = vec![1u8; PAGE];
        want.extend_from_slice(&[7u8; 100]);
        want.resize(PAGE * 4, 0);
        want.extend_from_slice(&[9u8; PAGE]);
        want.resize(want.len() + PAGE * 2, 0);
        want.extend_from_slice(b"end");
        let (plain, blocks) = roundtrip(false);
        assert_eq!(plain, want);
        // Four pages of zeros are holes (on filesystems with holes; tmpfs and ext4 have them).
        assert!(blocks * 512 <= (want.len() - 3 * PAGE) as u64, "{blocks}");
        assert_eq!(roundtrip(true).0, want);
    }

    #[test]
    fn detects_zero_pages() {
        let mut p = vec![0u8; PAGE + 1];
        assert!(is_zero_page(&p));
        p[PAGE - 1] = 1;
        assert!(!is_zero_page(&p));
        assert!(!is_zero_page(&p[..PAGE - 1]));
        let mut b = Buf::new(PAGE);
        assert_eq!(b.filled(PAGE).as_ptr() as usize % HUGE, 0);
    }
}
