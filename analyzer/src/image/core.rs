//! ELF core files from any producer: the kernel, gdb's `gcore`, and our own `capture`.
//!
//! The core is memory-mapped, never read whole. Every offset taken from the file is bounds-checked:
//! a malformed core is an error, never a panic or an unbounded allocation.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use object::elf;
use object::read::elf::{FileHeader, ProgramHeader};
use object::LittleEndian as LE;

use super::files::{build_id_from_header_page, FileBacking};
use super::{Error, Mapping, MemoryImage, Perms, ProcessInfo, ReadError, Result};
use crate::notes::{self, LeakhuntNote};

/// Upper bound on PT_LOAD segments we accept; real processes have a few thousand at most
/// (the kernel's default `vm.max_map_count` is 65530).
const MAX_SEGMENTS: usize = 1 << 20;
/// Upper bound on the size of the notes we parse (NT_FILE of a huge process is a few MB).
const MAX_NOTE_BYTES: u64 = 256 << 20;

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

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

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
        let not_core = |reason: &str| Error::NotACore {
            path: path.clone(),
            reason: reason.into(),
        };
        let malformed = |detail: String| Error::Malformed {
            path: path.clone(),
            detail,
        };
        let data: &[u8] = map.as_slice();
        if data.len() < 4 || &data[..4] != b"\x7fELF" {
            return Err(not_core("no ELF magic"));
        }
        let header = elf::FileHeader64::<LE>::parse(data)
            .map_err(|e| not_core(&format!("not a 64-bit little-endian ELF file: {e}")))?;
        let endian = LE;
        if header.e_type.get(endian) != elf::ET_CORE {
            return Err(not_core(&format!(
                "ELF type {} is not ET_CORE (4); this is a program or library",
                header.e_type.get(endian)
            )));
        }
        let machine = header.e_machine.get(endian);
        if machine != elf::EM_X86_64 && machine != elf::EM_AARCH64 {
            return Err(not_core(&format!(
                "unsupported machine {machine}; x86-64 and aarch64 are supported"
            )));
        }
        let phdrs = header.program_headers(endian, data).map_err(|e| {
            if phdr_table_end(header, data).is_some_and(|end| end > data.len() as u64) {
                Error::Truncated {
                    path: path.clone(),
                    detail: "the program header table ends past the end of the file".into(),
                }
            } else {
                malformed(format!("bad program header table: {e}"))
            }
        })?;
        if phdrs.len() > MAX_SEGMENTS {
            return Err(malformed(format!(
                "{} program headers is more than any process has",
                phdrs.len()
            )));
        }

        let file_len = data.len() as u64;
        let mut segments = Vec::with_capacity(phdrs.len());
        let mut perms = Vec::with_capacity(phdrs.len());
        let mut info = ProcessInfo::default();
        let mut nt_files: Vec<NtFileEntry> = Vec::new();
        let mut auxv = Vec::new();
        let mut leakhunt: Option<LeakhuntNote> = None;
        let mut truncated_segments = 0usize;
        let mut threads = 0usize;
        let mut prpsinfo_pid = None;
        let mut first_prstatus_pid = None;

        for ph in phdrs {
            match ph.p_type(endian) {
                elf::PT_LOAD => {
                    let seg = Segment {
                        vaddr: ph.p_vaddr(endian),
                        memsz: ph.p_memsz(endian),
                        offset: ph.p_offset(endian),
                        filesz: ph.p_filesz(endian),
                    };
                    if seg.vaddr.checked_add(seg.memsz).is_none() || seg.filesz > seg.memsz {
                        return Err(malformed(format!(
                            "PT_LOAD at {:#x} has impossible sizes",
                            seg.vaddr
                        )));
                    }
                    if seg
                        .offset
                        .checked_add(seg.filesz)
                        .is_none_or(|end| end > file_len)
                    {
                        truncated_segments += 1;
                    }
                    segments.push(seg);
                    perms.push(Perms::from_elf_flags(ph.p_flags(endian)));
                }
                elf::PT_NOTE => {
                    let (off, size) = (ph.p_offset(endian), ph.p_filesz(endian));
                    if size > MAX_NOTE_BYTES {
                        return Err(malformed(format!(
                            "PT_NOTE of {size} bytes is larger than any real core's"
                        )));
                    }
                    if off.checked_add(size).is_none_or(|end| end > file_len) {
                        return Err(Error::Truncated {
                            path: path.clone(),
                            detail:
                                "the notes (threads, mapped files) end past the end of the file"
                                    .into(),
                        });
                    }
                    let notes = ph
                        .notes(endian, data)
                        .map_err(|e| malformed(format!("bad PT_NOTE: {e}")))?
                        .ok_or_else(|| malformed("PT_NOTE without notes".into()))?;
                    let mut notes = notes;
                    loop {
                        let note = match notes.next() {
                            Ok(Some(n)) => n,
                            Ok(None) => break,
                            Err(e) => return Err(malformed(format!("bad note: {e}"))),
                        };
                        let desc = note.desc();
                        match (note.name(), note.n_type(endian)) {
                            (b"CORE", elf::NT_PRSTATUS) => {
                                threads += 1;
                                if first_prstatus_pid.is_none() {
                                    first_prstatus_pid = le_i32(desc, 32);
                                }
                            }
                            (b"CORE", elf::NT_PRPSINFO) => {
                                prpsinfo_pid = le_i32(desc, 24);
                                if let Some(fname) = desc.get(40..56) {
                                    let end =
                                        fname.iter().position(|&c| c == 0).unwrap_or(fname.len());
                                    let s = String::from_utf8_lossy(&fname[..end]).into_owned();
                                    if !s.is_empty() {
                                        info.comm = Some(s);
                                    }
                                }
                            }
                            (b"CORE", elf::NT_AUXV) => {
                                auxv = desc
                                    .chunks_exact(16)
                                    .map(|c| (le_u64(c, 0).unwrap_or(0), le_u64(c, 8).unwrap_or(0)))
                                    .take_while(|&(k, _)| k != 0)
                                    .collect();
                            }
                            (b"CORE", elf::NT_FILE) => {
                                nt_files = parse_nt_file(desc)
                                    .map_err(|d| malformed(format!("bad NT_FILE note: {d}")))?;
                            }
                            (notes::LEAKHUNT_NOTE_NAME, notes::NT_LEAKHUNT_INFO) => {
                                leakhunt = serde_json::from_slice(desc).ok();
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if segments.is_empty() {
            return Err(not_core("no PT_LOAD segments: the core holds no memory"));
        }
        if truncated_segments > 0 {
            return Err(Error::Truncated {
                path: path.clone(),
                detail: format!(
                    "{truncated_segments} memory segment(s) end past the end of the file"
                ),
            });
        }
        // Keep segments sorted by address and drop overlaps, so lookups can binary-search.
        let mut order: Vec<usize> = (0..segments.len()).collect();
        order.sort_by_key(|&i| segments[i].vaddr);
        let mut sorted: Vec<Segment> = Vec::with_capacity(segments.len());
        let mut sorted_perms = Vec::with_capacity(segments.len());
        for i in order {
            let s = segments[i];
            if s.memsz == 0 {
                continue;
            }
            if let Some(prev) = sorted.last() {
                if s.vaddr < prev.vaddr + prev.memsz {
                    return Err(malformed(format!(
                        "overlapping PT_LOAD segments at {:#x}",
                        s.vaddr
                    )));
                }
            }
            sorted.push(s);
            sorted_perms.push(perms[i]);
        }

        info.threads = threads;
        info.pid = prpsinfo_pid.or(first_prstatus_pid).unwrap_or(0);
        if let Some(l) = &leakhunt {
            info.captured_at = Some(l.captured_at);
            info.rss = l.rss;
            info.start_time = l.start_time;
            if info.pid == 0 {
                info.pid = l.pid;
            }
            if l.exe.is_some() {
                info.exe = l.exe.clone();
            }
        }
        if info.captured_at.is_none() {
            // Kernel and gcore cores carry no timestamp: the file's modification time is when it was written.
            info.captured_at = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs_f64());
        }

        let names = leakhunt
            .as_ref()
            .map(|l| l.pseudo_names.as_slice())
            .unwrap_or(&[]);
        let mappings = build_mappings(&sorted, &sorted_perms, &nt_files, names);
        if info.exe.is_none() {
            info.exe = exe_from(&mappings, &auxv);
        }

        let mut core = CoreFile {
            path,
            map,
            _decompressed: decompressed,
            segments: sorted,
            backing: vec![None; mappings.len()],
            mappings,
            files: Vec::new(),
            info,
            auxv,
            notes: Vec::new(),
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

fn phdr_table_end(header: &elf::FileHeader64<LE>, _data: &[u8]) -> Option<u64> {
    let off = header.e_phoff.get(LE);
    let n = u64::from(header.e_phnum.get(LE));
    let size = u64::from(header.e_phentsize.get(LE));
    off.checked_add(n.checked_mul(size)?)
}

/// One entry of NT_FILE: `[start, end)` maps `path` at byte offset `offset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NtFileEntry {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    pub path: String,
}

/// NT_FILE: count, page size, `count` × (start, end, page offset), then `count` NUL-terminated names.
pub(crate) fn parse_nt_file(desc: &[u8]) -> std::result::Result<Vec<NtFileEntry>, String> {
    let count = le_u64(desc, 0).ok_or("too short")?;
    let page_size = le_u64(desc, 8).ok_or("too short")?;
    let table_len = count
        .checked_mul(24)
        .and_then(|n| n.checked_add(16))
        .ok_or("count overflows")?;
    if table_len > desc.len() as u64 {
        return Err(format!(
            "{count} entries do not fit in {} bytes",
            desc.len()
        ));
    }
    let mut names = desc[table_len as usize..].split(|&c| c == 0);
    let mut out = Vec::with_capacity(count as usize);
    for i in 0..count as usize {
        let at = 16 + i * 24;
        let (start, end, pgoff) = (
            le_u64(desc, at),
            le_u64(desc, at + 8),
            le_u64(desc, at + 16),
        );
        let (Some(start), Some(end), Some(pgoff)) = (start, end, pgoff) else {
            return Err("entry table cut short".into());
        };
        let name = names.next().ok_or("fewer names than entries")?;
        out.push(NtFileEntry {
            start,
            end,
            offset: pgoff.saturating_mul(page_size),
            path: String::from_utf8_lossy(name).into_owned(),
        });
    }
    Ok(out)
}

/// Mappings from PT_LOADs, named from NT_FILE (and from our own note's pseudo-names such as `[heap]`).
fn build_mappings(
    segments: &[Segment],
    perms: &[Perms],
    files: &[NtFileEntry],
    pseudo: &[(u64, String)],
) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = segments
        .iter()
        .zip(perms)
        .map(|(s, p)| Mapping {
            start: s.vaddr,
            end: s.vaddr + s.memsz,
            perms: *p,
            offset: 0,
            path: None,
        })
        .collect();
    for f in files {
        // NT_FILE entries match PT_LOADs one-to-one in every producer we know; tolerate splits.
        let i = out.partition_point(|m| m.end <= f.start);
        for m in out.iter_mut().skip(i).take_while(|m| m.start < f.end) {
            if m.start >= f.start {
                m.offset = f.offset.saturating_add(m.start - f.start);
                m.path = Some(f.path.clone());
            }
        }
    }
    // gcore leaves out the mappings it does not dump (code); NT_FILE still names them, and their
    // bytes can come from the files. Permissions are unknown: treat them as read-only code.
    let mut extra = Vec::new();
    for f in files {
        let i = out.partition_point(|m| m.end <= f.start);
        let covered = out.get(i).is_some_and(|m| m.start < f.end);
        if !covered && f.start < f.end {
            extra.push(Mapping {
                start: f.start,
                end: f.end,
                perms: Perms {
                    read: true,
                    write: false,
                    exec: true,
                    private: true,
                },
                offset: f.offset,
                path: Some(f.path.clone()),
            });
        }
    }
    if !extra.is_empty() {
        out.extend(extra);
        out.sort_by_key(|m| m.start);
    }
    for (start, name) in pseudo {
        if let Some(m) = out
            .iter_mut()
            .find(|m| m.start == *start && m.path.is_none())
        {
            m.path = Some(name.clone());
        }
    }
    if pseudo.is_empty() {
        guess_heap(&mut out);
    }
    out
}

/// Kernel and gcore cores do not name `[heap]`: it is the first anonymous writable mapping that
/// starts within the kernel's brk randomisation range after the executable's last mapping (1 GiB
/// on x86-64 since Linux 6.x, 32 MiB before) and is not the executable's `.bss` right behind it.
fn guess_heap(maps: &mut [Mapping]) {
    let Some(exe) = maps
        .iter()
        .find(|m| m.is_file_backed())
        .and_then(|m| m.path.clone())
    else {
        return;
    };
    let Some(exe_end) = maps
        .iter()
        .filter(|m| m.path.as_deref() == Some(exe.as_str()))
        .map(|m| m.end)
        .max()
    else {
        return;
    };
    if let Some(m) = maps.iter_mut().find(|m| {
        m.path.is_none()
            && m.perms.write
            && m.start > exe_end
            && m.start - exe_end <= (1 << 30) + (32 << 20)
    }) {
        m.path = Some("[heap]".into());
    }
}

/// The executable: AT_ENTRY lies inside one of its mappings.
fn exe_from(maps: &[Mapping], auxv: &[(u64, u64)]) -> Option<String> {
    const AT_ENTRY: u64 = 9;
    let entry = auxv.iter().find(|(k, _)| *k == AT_ENTRY).map(|(_, v)| *v)?;
    maps.iter()
        .find(|m| m.contains(entry))
        .and_then(|m| m.path.clone())
}

pub(crate) fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(s.try_into().ok()?))
}

pub(crate) fn le_i32(b: &[u8], at: usize) -> Option<i32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(i32::from_le_bytes(s.try_into().ok()?))
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
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
fn decompress_to_temp(file: &mut File, path: &Path) -> Result<tempfile::NamedTempFile> {
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
    let mut dec = zstd::stream::read::Decoder::new(&mut *file).map_err(err)?;
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
