//! ELF core files from any producer: the kernel, gdb's `gcore`, and our own `capture`.
//!
//! The core is memory-mapped, never read whole. Every offset taken from the file is bounds-checked:
//! a malformed core is an error, never a panic or an unbounded allocation.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

mod contents;

use memmap2::Mmap;

use self::contents::{build_mappings, exe_from, program_headers, read_header, Contents};
use super::files::{build_id_from_header_page, FileBacking};
use super::{Error, Mapping, MemoryImage, ProcessInfo, ReadError, Result};

/// The core's bytes: memory-mapped from a file, or owned (tests, fuzzing).
enum Bytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// One PT_LOAD: `memsz` bytes at `vaddr`, the first `filesz` of which are stored at `offset`.
#[derive(Debug, Clone, Copy)]
struct Segment {
    vaddr: u64,
    memsz: u64,
    offset: u64,
    filesz: u64,
}

/// A parsed ELF core.
pub struct CoreFile {
    path: PathBuf,
    map: Bytes,
    /// Holds the decompressed copy of a `.zst` core alive (deleted on drop).
    _decompressed: Option<tempfile::NamedTempFile>,
    segments: Vec<Segment>,
    mappings: Vec<Mapping>,
    /// File contents for file-backed mappings the core does not contain, indexed like `mappings`.
    backing: Vec<Option<usize>>,
    files: Vec<FileBacking>,
    info: ProcessInfo,
    auxv: Vec<(u64, u64)>,
    notes: Vec<String>,
    /// The note leakhunt's capture writes, when this core has one.
    leakhunt: Option<crate::notes::LeakhuntNote>,
}

impl std::fmt::Debug for CoreFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoreFile")
            .field("path", &self.path)
            .field("segments", &self.segments.len())
            .field("info", &self.info)
            .finish()
    }
}

pub(crate) const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

impl CoreFile {
    /// Open `path`; `.zst`-compressed cores are decompressed to a private temporary file first.
    pub fn open(path: &Path, sysroot: Option<&Path>) -> Result<CoreFile> {
        let io = |source| Error::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = File::open(path).map_err(io)?;
        let mut magic = [0u8; 4];
        let n = read_up_to(&mut file, &mut magic).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        let mut decompressed = None;
        if n == 4 && magic == ZSTD_MAGIC {
            let tmp = decompress_to_temp(&mut file, path)?;
            file = tmp.reopen().map_err(io)?;
            decompressed = Some(tmp);
        }
        // SAFETY: the mapping is read-only and private to this process. A concurrent truncation of the
        // file by another process could fault; snapshots are written once, renamed into place and
        // never modified, so this does not happen to files we produce.
        #[allow(unsafe_code)]
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        Self::parse(path.to_owned(), Bytes::Mapped(map), decompressed, sysroot)
    }

    /// Parse a core held in memory (tests, fuzzing). `name` is used in messages.
    pub fn from_bytes(name: &str, data: Vec<u8>, sysroot: Option<&Path>) -> Result<CoreFile> {
        Self::parse(PathBuf::from(name), Bytes::Owned(data), None, sysroot)
    }

    fn parse(
        path: PathBuf,
        map: Bytes,
        decompressed: Option<tempfile::NamedTempFile>,
        sysroot: Option<&Path>,
    ) -> Result<CoreFile> {
        let data: &[u8] = map.as_slice();
        let header = read_header(&path, data)?;
        let mut contents = Contents::default();
        for ph in program_headers(&path, header, data)? {
            contents.add(&path, ph, data)?;
        }
        let (segments, perms) = contents.sorted_segments(&path)?;
        let mut info = contents.process_info(&path);
        let names = contents
            .leakhunt
            .as_ref()
            .map(|l| l.pseudo_names.as_slice())
            .unwrap_or(&[]);
        let mappings = build_mappings(&segments, &perms, &contents.nt_files, names);
        if info.exe.is_none() {
            info.exe = exe_from(&mappings, &contents.auxv);
        }

        let mut core = CoreFile {
            path,
            map,
            _decompressed: decompressed,
            segments,
            backing: vec![None; mappings.len()],
            mappings,
            files: Vec::new(),
            info,
            auxv: contents.auxv,
            notes: Vec::new(),
            leakhunt: contents.leakhunt,
        };
        core.attach_files(sysroot);
        Ok(core)
    }

    /// For file-backed mappings whose pages the core lacks (kernel and gcore cores skip read-only
    /// file pages), use the file the core names, if its build ID matches.
    fn attach_files(&mut self, sysroot: Option<&Path>) {
        let mut missing: Vec<(String, u64, &'static str)> = Vec::new();
        for i in 0..self.mappings.len() {
            let m = &self.mappings[i];
            if !m.is_file_backed() || self.fully_present(m.start, m.end) {
                continue;
            }
            let Some(path) = m.path.clone() else { continue };
            let fi = match self.files.iter().position(|f| f.name == path) {
                Some(fi) => Some(fi),
                None => {
                    let expected = self.expected_build_id(&path);
                    match FileBacking::open(&path, sysroot, expected.as_deref()) {
                        Ok(f) => {
                            if let Some(n) = f.note() {
                                self.notes.push(n);
                            }
                            self.files.push(f);
                            Some(self.files.len() - 1)
                        }
                        Err(why) => {
                            missing.push((path.clone(), self.mappings[i].len(), why));
                            None
                        }
                    }
                }
            };
            self.backing[i] = fi;
        }
        // One line per file, so a user can see at once what to fetch for --sysroot.
        let mut by_file: Vec<(String, u64, &'static str)> = Vec::new();
        for (p, len, why) in missing {
            match by_file.iter_mut().find(|(q, _, _)| *q == p) {
                Some(e) => e.1 += len,
                None => by_file.push((p, len, why)),
            }
        }
        for (p, len, why) in by_file {
            self.notes.push(format!(
                "pages missing: {} KiB of {p} are not in the core and the file {why}; pass --sysroot DIR holding the process's files",
                len / 1024
            ));
        }
    }

    /// The build ID of `path` as the process had it mapped: from the ELF header page in the core.
    fn expected_build_id(&self, path: &str) -> Option<Vec<u8>> {
        let m = self
            .mappings
            .iter()
            .find(|m| m.path.as_deref() == Some(path) && m.offset == 0)?;
        let page = self.slice_core(m.start, 4096.min(m.len() as usize))?;
        build_id_from_header_page(page)
    }

    fn fully_present(&self, start: u64, end: u64) -> bool {
        let mut at = start;
        while at < end {
            match self.segment_at(at) {
                Some(s) if at < s.vaddr + s.filesz => at = s.vaddr + s.filesz,
                _ => return false,
            }
        }
        true
    }

    fn segment_at(&self, addr: u64) -> Option<&Segment> {
        let i = self.segments.partition_point(|s| s.vaddr + s.memsz <= addr);
        self.segments.get(i).filter(|s| s.vaddr <= addr)
    }

    /// Bytes stored in the core itself (not substituted from files).
    fn slice_core(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let s = self.segment_at(addr)?;
        let rel = addr - s.vaddr;
        if rel.checked_add(len as u64)? > s.filesz {
            return None;
        }
        let off = usize::try_from(s.offset + rel).ok()?;
        self.map.as_slice().get(off..off.checked_add(len)?)
    }

    fn slice_file(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let mi = self.mappings.partition_point(|m| m.end <= addr);
        let m = self.mappings.get(mi).filter(|m| m.contains(addr))?;
        if addr.checked_add(len as u64)? > m.end {
            return None;
        }
        let f = &self.files[(*self.backing.get(mi)?)?];
        f.bytes(m.offset.checked_add(addr - m.start)?, len)
    }

    /// Memory segments stored in the core, for streaming scans: `(vaddr, bytes)`.
    pub fn stored_segments(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.segments.iter().filter_map(|s| {
            let off = usize::try_from(s.offset).ok()?;
            let len = usize::try_from(s.filesz).ok()?;
            Some((
                s.vaddr,
                self.map.as_slice().get(off..off.checked_add(len)?)?,
            ))
        })
    }

    /// What leakhunt's capture recorded: capture time, stop time, how memory was copied.
    pub fn leakhunt_note(&self) -> Option<&crate::notes::LeakhuntNote> {
        self.leakhunt.as_ref()
    }

    pub fn auxv(&self) -> &[(u64, u64)] {
        &self.auxv
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl MemoryImage for CoreFile {
    fn mappings(&self) -> &[Mapping] {
        &self.mappings
    }

    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = addr
                .checked_add(done as u64)
                .ok_or(ReadError::Unmapped(addr))?;
            // The run of bytes with one source: a segment, or a mapping the core has no segment for.
            let extent_end = match self.segment_at(at) {
                Some(seg) => seg.vaddr + seg.memsz,
                None => self.mapping_at(at).ok_or(ReadError::Unmapped(at))?.end,
            };
            let want = (buf.len() - done).min((extent_end - at) as usize);
            let dst = &mut buf[done..done + want];
            if let Some(src) = self
                .slice_core(at, want)
                .or_else(|| self.slice_file(at, want))
            {
                dst.copy_from_slice(src);
            } else {
                // Part stored, part substituted (kernel cores keep the first page of each ELF mapping).
                for (k, b) in dst.iter_mut().enumerate() {
                    let a = at + k as u64;
                    *b = *self
                        .slice_core(a, 1)
                        .or_else(|| self.slice_file(a, 1))
                        .and_then(|s| s.first())
                        .ok_or(ReadError::Missing(a))?;
                }
            }
            done += want;
        }
        Ok(())
    }

    fn slice(&self, addr: u64, len: usize) -> Option<&[u8]> {
        self.slice_core(addr, len)
            .or_else(|| self.slice_file(addr, len))
    }

    fn release(&self, addr: u64, len: usize) {
        let Bytes::Mapped(map) = &self.map else {
            return;
        };
        let Some(s) = self.segment_at(addr) else {
            return;
        };
        let rel = addr - s.vaddr;
        let end = rel.saturating_add(len as u64).min(s.filesz);
        // madvise works on whole pages; segment data need not be page-aligned in the file.
        let (start, stop) = (
            (s.offset + rel).next_multiple_of(4096),
            (s.offset + end) & !4095,
        );
        if start < stop {
            // SAFETY: the mapping is a private read-only file mapping: dropping its pages only makes
            // the next access fault them in again from the file, with the same contents.
            #[allow(unsafe_code)]
            let _ = unsafe {
                map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    start as usize,
                    (stop - start) as usize,
                )
            };
        }
    }

    fn stored_ranges(&self, m: &Mapping) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let i = self
            .segments
            .partition_point(|s| s.vaddr + s.memsz <= m.start);
        for s in self.segments[i..].iter().take_while(|s| s.vaddr < m.end) {
            let (a, b) = (s.vaddr.max(m.start), (s.vaddr + s.filesz).min(m.end));
            if a < b {
                out.push((a, b));
            }
        }
        out
    }

    fn info(&self) -> &ProcessInfo {
        &self.info
    }

    fn notes(&self) -> Vec<String> {
        self.notes.clone()
    }
}

pub(crate) fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Decompress a `.zst` core into an unlinked-on-drop temporary file (mode 0600: cores hold secrets),
/// refusing to fill the disk.
pub(crate) fn decompress_to_temp(file: &mut File, path: &Path) -> Result<tempfile::NamedTempFile> {
    decompress_to_temp_with(file, path, |f| {
        Ok(Box::new(zstd::stream::read::Decoder::new(f)?))
    })
}

/// [`decompress_to_temp`] with the decoder `decoder` makes of the file.
pub(crate) fn decompress_to_temp_with<'f>(
    file: &'f mut File,
    path: &Path,
    decoder: impl FnOnce(&'f mut File) -> std::io::Result<Box<dyn Read + 'f>>,
) -> Result<tempfile::NamedTempFile> {
    let dir = std::env::temp_dir();
    let err = |source| Error::Decompress {
        path: path.to_owned(),
        source,
    };
    let tmp = tempfile::Builder::new()
        .prefix(".leakhunt-core-")
        .tempfile_in(&dir)
        .map_err(err)?;
    let limit = crate::util::free_bytes(&dir)
        .unwrap_or(u64::MAX)
        .saturating_sub(256 << 20);
    let mut dec = decoder(file).map_err(err)?;
    let mut out = std::io::BufWriter::new(tmp.as_file());
    let copied =
        std::io::copy(&mut (&mut dec).take(limit.saturating_add(1)), &mut out).map_err(err)?;
    if copied > limit {
        return Err(err(std::io::Error::other(format!(
            "decompressed size exceeds the free space in {} ({} MiB)",
            dir.display(),
            limit >> 20
        ))));
    }
    std::io::Write::flush(&mut out).map_err(err)?;
    drop(out);
    Ok(tmp)
}
