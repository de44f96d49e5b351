//! What a core holds: its ELF header and program headers, the memory segments they list, the
//! notes (threads, process, auxv, mapped files, ours) and the mappings they describe together.

use std::path::Path;

use object::elf;
use object::read::elf::{FileHeader, ProgramHeader};
use object::LittleEndian as LE;

use super::Segment;
use crate::image::{Error, Mapping, Perms, ProcessInfo, Result};
use crate::notes::{self, LeakhuntNote};

/// Upper bound on PT_LOAD segments we accept; real processes have a few thousand at most
/// (the kernel's default `vm.max_map_count` is 65530).
const MAX_SEGMENTS: usize = 1 << 20;
/// Upper bound on the size of the notes we parse (NT_FILE of a huge process is a few MB).
const MAX_NOTE_BYTES: u64 = 256 << 20;

fn not_core(path: &Path, reason: &str) -> Error {
    Error::NotACore {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn malformed(path: &Path, detail: String) -> Error {
    Error::Malformed {
        path: path.to_owned(),
        detail,
    }
}

/// The ELF header, if it is that of a 64-bit little-endian core of a machine we support.
pub(super) fn read_header<'d>(path: &Path, data: &'d [u8]) -> Result<&'d elf::FileHeader64<LE>> {
    if data.len() < 4 || &data[..4] != b"\x7fELF" {
        return Err(not_core(path, "no ELF magic"));
    }
    let header = elf::FileHeader64::<LE>::parse(data)
        .map_err(|e| not_core(path, &format!("not a 64-bit little-endian ELF file: {e}")))?;
    if header.e_type.get(LE) != elf::ET_CORE {
        return Err(not_core(
            path,
            &format!(
                "ELF type {} is not ET_CORE (4); this is a program or library",
                header.e_type.get(LE)
            ),
        ));
    }
    let machine = header.e_machine.get(LE);
    if machine != elf::EM_X86_64 && machine != elf::EM_AARCH64 {
        return Err(not_core(
            path,
            &format!("unsupported machine {machine}; x86-64 and aarch64 are supported"),
        ));
    }
    Ok(header)
}

/// The program header table, within the file and of a plausible length.
pub(super) fn program_headers<'d>(
    path: &Path,
    header: &elf::FileHeader64<LE>,
    data: &'d [u8],
) -> Result<&'d [elf::ProgramHeader64<LE>]> {
    let phdrs = header.program_headers(LE, data).map_err(|e| {
        if phdr_table_end(header, data).is_some_and(|end| end > data.len() as u64) {
            Error::Truncated {
                path: path.to_owned(),
                detail: "the program header table ends past the end of the file".into(),
            }
        } else {
            malformed(path, format!("bad program header table: {e}"))
        }
    })?;
    if phdrs.len() > MAX_SEGMENTS {
        return Err(malformed(
            path,
            format!(
                "{} program headers is more than any process has",
                phdrs.len()
            ),
        ));
    }
    Ok(phdrs)
}

/// What the program headers of a core hold: its memory segments and what its notes say.
#[derive(Default)]
pub(super) struct Contents {
    segments: Vec<Segment>,
    perms: Vec<Perms>,
    /// Segments whose stored bytes end past the end of the file.
    truncated_segments: usize,
    comm: Option<String>,
    pub(super) nt_files: Vec<NtFileEntry>,
    pub(super) auxv: Vec<(u64, u64)>,
    pub(super) leakhunt: Option<LeakhuntNote>,
    threads: usize,
    prpsinfo_pid: Option<i32>,
    first_prstatus_pid: Option<i32>,
}

impl Contents {
    /// Takes in one program header: a PT_LOAD segment or the notes of a PT_NOTE.
    pub(super) fn add(
        &mut self,
        path: &Path,
        ph: &elf::ProgramHeader64<LE>,
        data: &[u8],
    ) -> Result<()> {
        match ph.p_type(LE) {
            elf::PT_LOAD => self.add_segment(path, ph, data.len() as u64),
            elf::PT_NOTE => self.add_notes(path, ph, data),
            _ => Ok(()),
        }
    }

    /// A PT_LOAD with sizes that can be; one whose bytes the file lacks is counted.
    fn add_segment(
        &mut self,
        path: &Path,
        ph: &elf::ProgramHeader64<LE>,
        file_len: u64,
    ) -> Result<()> {
        let seg = Segment {
            vaddr: ph.p_vaddr(LE),
            memsz: ph.p_memsz(LE),
            offset: ph.p_offset(LE),
            filesz: ph.p_filesz(LE),
        };
        if seg.vaddr.checked_add(seg.memsz).is_none() || seg.filesz > seg.memsz {
            return Err(malformed(
                path,
                format!("PT_LOAD at {:#x} has impossible sizes", seg.vaddr),
            ));
        }
        if seg
            .offset
            .checked_add(seg.filesz)
            .is_none_or(|end| end > file_len)
        {
            self.truncated_segments += 1;
        }
        self.segments.push(seg);
        self.perms.push(Perms::from_elf_flags(ph.p_flags(LE)));
        Ok(())
    }

    /// Every note of a PT_NOTE: threads, process, auxv, mapped files and ours.
    fn add_notes(&mut self, path: &Path, ph: &elf::ProgramHeader64<LE>, data: &[u8]) -> Result<()> {
        let (off, size) = (ph.p_offset(LE), ph.p_filesz(LE));
        if size > MAX_NOTE_BYTES {
            return Err(malformed(
                path,
                format!("PT_NOTE of {size} bytes is larger than any real core's"),
            ));
        }
        if off
            .checked_add(size)
            .is_none_or(|end| end > data.len() as u64)
        {
            return Err(Error::Truncated {
                path: path.to_owned(),
                detail: "the notes (threads, mapped files) end past the end of the file".into(),
            });
        }
        let mut notes = ph
            .notes(LE, data)
            .map_err(|e| malformed(path, format!("bad PT_NOTE: {e}")))?
            .ok_or_else(|| malformed(path, "PT_NOTE without notes".into()))?;
        loop {
            let note = match notes.next() {
                Ok(Some(n)) => n,
                Ok(None) => return Ok(()),
                Err(e) => return Err(malformed(path, format!("bad note: {e}"))),
            };
            let desc = note.desc();
            match (note.name(), note.n_type(LE)) {
                (b"CORE", elf::NT_PRSTATUS) => {
                    self.threads += 1;
                    if self.first_prstatus_pid.is_none() {
                        self.first_prstatus_pid = le_i32(desc, 32);
                    }
                }
                (b"CORE", elf::NT_PRPSINFO) => {
                    self.prpsinfo_pid = le_i32(desc, 24);
                    if let Some(fname) = desc.get(40..56) {
                        let end = fname.iter().position(|&c| c == 0).unwrap_or(fname.len());
                        let s = String::from_utf8_lossy(&fname[..end]).into_owned();
                        if !s.is_empty() {
                            self.comm = Some(s);
                        }
                    }
                }
                (b"CORE", elf::NT_AUXV) => {
                    self.auxv = desc
                        .chunks_exact(16)
                        .map(|c| (le_u64(c, 0).unwrap_or(0), le_u64(c, 8).unwrap_or(0)))
                        .take_while(|&(k, _)| k != 0)
                        .collect();
                }
                (b"CORE", elf::NT_FILE) => {
                    self.nt_files = parse_nt_file(desc)
                        .map_err(|d| malformed(path, format!("bad NT_FILE note: {d}")))?;
                }
                (notes::LEAKHUNT_NOTE_NAME, notes::NT_LEAKHUNT_INFO) => {
                    self.leakhunt = serde_json::from_slice(desc).ok();
                }
                _ => {}
            }
        }
    }

    /// The non-empty segments sorted by address, so lookups can binary-search; a core without
    /// memory, with truncated or with overlapping segments is an error.
    pub(super) fn sorted_segments(&self, path: &Path) -> Result<(Vec<Segment>, Vec<Perms>)> {
        let segments = &self.segments;
        if segments.is_empty() {
            return Err(not_core(
                path,
                "no PT_LOAD segments: the core holds no memory",
            ));
        }
        if self.truncated_segments > 0 {
            return Err(Error::Truncated {
                path: path.to_owned(),
                detail: format!(
                    "{} memory segment(s) end past the end of the file",
                    self.truncated_segments
                ),
            });
        }
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
                    return Err(malformed(
                        path,
                        format!("overlapping PT_LOAD segments at {:#x}", s.vaddr),
                    ));
                }
            }
            sorted.push(s);
            sorted_perms.push(self.perms[i]);
        }
        Ok((sorted, sorted_perms))
    }

    /// The process as the notes describe it (ours first), the executable still to be found.
    pub(super) fn process_info(&self, path: &Path) -> ProcessInfo {
        let mut info = ProcessInfo {
            comm: self.comm.clone(),
            threads: self.threads,
            pid: self.prpsinfo_pid.or(self.first_prstatus_pid).unwrap_or(0),
            ..ProcessInfo::default()
        };
        if let Some(l) = &self.leakhunt {
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
            // Kernel and gcore cores carry no timestamp: the file's modification time is when it
            // was written.
            info.captured_at = std::fs::metadata(path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs_f64());
        }
        info
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
pub(super) fn build_mappings(
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
pub(super) fn exe_from(maps: &[Mapping], auxv: &[(u64, u64)]) -> Option<String> {
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
