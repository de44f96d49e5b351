//! Writing the core: a writer thread that takes filled buffers from the reader, so reading the
//! stopped target and writing (or compressing) overlap, with a small fixed pool of buffers so
//! memory use stays bounded whatever the size of the target.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

/// Size of one read from the target (and one write).
pub(crate) const CHUNK: usize = 8 << 20;
/// Buffers in flight: one being read, the others queued or being written.
const BUFFERS: usize = 3;
const PAGE: usize = 4096;

/// Where bytes go: a plain file (all-zero pages become holes) or a zstd stream.
enum Output {
    Sparse { file: File, hole: u64 },
    Zstd(Box<zstd::stream::write::Encoder<'static, io::BufWriter<File>>>),
}

impl Output {
    fn write(&mut self, b: &[u8]) -> io::Result<()> {
        match self {
            Output::Zstd(enc) => enc.write_all(b),
            Output::Sparse { file, hole } => {
                // Untouched memory reads as zeros; a hole costs no disk and reads back the same.
                let mut pages = b.chunks(PAGE).peekable();
                while let Some(p) = pages.next() {
                    if p.len() == PAGE && is_zero(p) {
                        *hole += PAGE as u64;
                        continue;
                    }
                    if *hole > 0 {
                        file.seek(SeekFrom::Current(*hole as i64))?;
                        *hole = 0;
                    }
                    // Gather the run of non-zero pages into one write.
                    let start = p.as_ptr() as usize - b.as_ptr() as usize;
                    let mut end = start + p.len();
                    while let Some(q) = pages.peek() {
                        if q.len() == PAGE && is_zero(q) {
                            break;
                        }
                        end += q.len();
                        pages.next();
                    }
                    file.write_all(&b[start..end])?;
                }
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
            Output::Sparse { mut file, hole } => {
                if hole > 0 {
                    let end = file.seek(SeekFrom::Current(hole as i64))?;
                    file.set_len(end)?;
                }
                file.flush()
            }
        }
    }
}

fn is_zero(p: &[u8]) -> bool {
    // Most non-zero pages differ in their first bytes; test those before the whole page.
    p.iter().take(64).all(|&b| b == 0)
        && p.chunks_exact(16).fold(0u128, |acc, c| {
            acc | u128::from_ne_bytes(c.try_into().unwrap_or([1; 16]))
        }) == 0
}

/// The reader's end of the pipeline.
pub(crate) struct Sink {
    tx: Option<SyncSender<Vec<u8>>>,
    free: Receiver<Vec<u8>>,
    writer: Option<JoinHandle<io::Result<()>>>,
}

impl Sink {
    /// Start the writer thread on `file`.
    pub fn start(file: File, compress: bool) -> io::Result<Sink> {
        let mut out = if compress {
            let mut enc =
                zstd::stream::write::Encoder::new(io::BufWriter::with_capacity(1 << 20, file), 1)?;
            // Two compression workers: they overlap with the reader; ignore where unsupported.
            let _ = enc.multithread(2);
            Output::Zstd(Box::new(enc))
        } else {
            Output::Sparse { file, hole: 0 }
        };
        let (tx, rx) = sync_channel::<Vec<u8>>(BUFFERS);
        let (free_tx, free) = sync_channel::<Vec<u8>>(BUFFERS);
        for _ in 0..BUFFERS {
            let _ = free_tx.send(Vec::with_capacity(CHUNK));
        }
        let writer = std::thread::Builder::new()
            .name("capture-writer".into())
            .spawn(move || -> io::Result<()> {
                for buf in rx {
                    out.write(&buf)?;
                    // The reader may have finished; a closed pool is fine.
                    let _ = free_tx.try_send(buf);
                }
                out.finish()
            })?;
        Ok(Sink {
            tx: Some(tx),
            free,
            writer: Some(writer),
        })
    }

    /// An empty buffer to fill (capacity [`CHUNK`]); `None` once the writer has failed.
    pub fn buffer(&mut self) -> Option<Vec<u8>> {
        let mut b = self.free.recv().ok()?;
        b.clear();
        Some(b)
    }

    /// Queue bytes for writing; `false` once the writer has failed (see [`Sink::finish`]).
    pub fn send(&mut self, buf: Vec<u8>) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.send(buf).is_ok())
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

    fn roundtrip(compress: bool) -> Vec<u8> {
        let tmp = tempfile::NamedTempFile::new().expect("temp");
        let mut sink = Sink::start(tmp.reopen().expect("reopen"), compress).expect("start");
        let mut b = sink.buffer().expect("buffer");
        b.extend_from_slice(&[7u8; 100]);
        b.resize(PAGE * 3, 0);
        b.extend_from_slice(&[9u8; PAGE]);
        assert!(sink.send(b));
        let mut b = sink.buffer().expect("buffer");
        b.resize(PAGE * 2 + 5, 0);
        b.extend_from_slice(b"end");
        assert!(sink.send(b));
        sink.finish().expect("finish");
        let mut raw = Vec::new();
        tmp.reopen()
            .expect("reopen")
            .read_to_end(&mut raw)
            .expect("read");
        if compress {
            zstd::decode_all(&raw[..]).expect("decode")
        } else {
            raw
        }
    }

    #[test]
    fn sparse_and_compressed_outputs_hold_the_same_bytes() {
        let mut want = vec![7u8; 100];
        want.resize(PAGE * 3, 0);
        want.extend_from_slice(&[9u8; PAGE]);
        want.resize(want.len() + PAGE * 2 + 5, 0);
        want.extend_from_slice(b"end");
        assert_eq!(roundtrip(false), want);
        assert_eq!(roundtrip(true), want);
    }

    #[test]
    fn detects_zero_pages() {
        let mut p = vec![0u8; PAGE];
        assert!(is_zero(&p));
        p[PAGE - 1] = 1;
        assert!(!is_zero(&p));
    }
}
