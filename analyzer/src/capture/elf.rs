//! The bytes of an ELF64 ET_CORE in the layout the kernel writes, which gdb, elfutils (pystack)
//! and our own reader understand:
//!
//! ```text
//! ELF header | program headers: PT_NOTE, one PT_LOAD per mapping | [section 0 when > 65534 segments]
//! | padding to a page | memory of each dumped mapping, in address order | notes
//! ```
//!
//! The notes come last so our own note can record how long the target was stopped, which is known
//! only after the memory was read, while the file is still written in one sequential pass
//! (needed for streaming compression).

use super::plan::Region;
use super::ptrace::ThreadRegs;

pub(crate) const EHDR_SIZE: u64 = 64;
pub(crate) const PHDR_SIZE: u64 = 56;
const SHDR_SIZE: u64 = 64;
/// Above this many program headers `e_phnum` holds PN_XNUM and section 0 holds the real count.
const PN_XNUM: u64 = 0xffff;

const ET_CORE: u16 = 4;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
pub(crate) const NT_PRSTATUS: u32 = 1;
pub(crate) const NT_PRFPREG: u32 = 2;
pub(crate) const NT_PRPSINFO: u32 = 3;
pub(crate) const NT_AUXV: u32 = 6;
pub(crate) const NT_FILE: u32 = 0x4649_4c45;

#[cfg(target_arch = "x86_64")]
const MACHINE: u16 = 62; // EM_X86_64
#[cfg(target_arch = "aarch64")]
const MACHINE: u16 = 183; // EM_AARCH64
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!(
    "capture writes x86-64 and aarch64 cores only (register layouts in capture/ptrace.rs)"
);

/// `elf_prstatus` is 112 bytes of header, the general registers, and `pr_fpvalid` padded to 8.
const PRSTATUS_HEAD: usize = 112;

/// Where everything goes in the file.
pub(crate) struct Layout {
    /// Number of program headers (PT_NOTE + one PT_LOAD per region).
    pub phnum: u64,
    /// Offset of the first byte of memory.
    pub data_offset: u64,
    /// Offset of each region's bytes (meaningful where the region is dumped).
    pub offsets: Vec<u64>,
    pub notes_offset: u64,
    pub notes_len: u64,
}

impl Layout {
    pub fn new(regions: &[Region], notes_len: u64, page_size: u64) -> Layout {
        let phnum = regions.len() as u64 + 1;
        let mut headers = EHDR_SIZE + phnum * PHDR_SIZE;
        if phnum >= PN_XNUM {
            headers += SHDR_SIZE;
        }
        let data_offset = headers.div_ceil(page_size) * page_size;
        let mut at = data_offset;
        let offsets = regions
            .iter()
            .map(|r| {
                let o = at;
                at += r.file_bytes();
                o
            })
            .collect();
        Layout {
            phnum,
            data_offset,
            offsets,
            notes_offset: at,
            notes_len,
        }
    }

    /// Total size of the file.
    pub fn file_len(&self) -> u64 {
        self.notes_offset + self.notes_len
    }

    /// ELF header, program headers (and section 0 when the count overflows), zero-padded to
    /// `data_offset`.
    pub fn headers(&self, regions: &[Region], page_size: u64) -> Vec<u8> {
        let mut b = ehdr(self.phnum, EHDR_SIZE);
        b.extend(program_headers(
            regions,
            &self.offsets,
            self.notes_offset,
            self.notes_len,
            page_size,
        ));
        b.resize(self.data_offset as usize, 0);
        b
    }
}

/// The ELF header of a core with `phnum` program headers at `phoff` (section 0 right after them
/// when the count overflows `e_phnum`).
pub(crate) fn ehdr(phnum: u64, phoff: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(EHDR_SIZE as usize);
    let xnum = phnum >= PN_XNUM;
    let shoff = phoff + phnum * PHDR_SIZE;
    // e_ident: magic, 64-bit, little-endian, version 1, System V ABI.
    b.extend_from_slice(b"\x7fELF\x02\x01\x01\x00");
    b.extend_from_slice(&[0u8; 8]);
    put16(&mut b, ET_CORE);
    put16(&mut b, MACHINE);
    put32(&mut b, 1); // e_version
    put64(&mut b, 0); // e_entry
    put64(&mut b, phoff); // e_phoff
    put64(&mut b, if xnum { shoff } else { 0 }); // e_shoff
    put32(&mut b, 0); // e_flags
    put16(&mut b, EHDR_SIZE as u16);
    put16(&mut b, PHDR_SIZE as u16);
    put16(&mut b, if xnum { PN_XNUM } else { phnum } as u16);
    put16(&mut b, if xnum { SHDR_SIZE as u16 } else { 0 });
    put16(&mut b, u16::from(xnum)); // e_shnum
    put16(&mut b, 0); // e_shstrndx
    b
}

/// PT_NOTE, then one PT_LOAD per region at `offsets` (and section 0 when the count overflows).
pub(crate) fn program_headers(
    regions: &[Region],
    offsets: &[u64],
    notes_offset: u64,
    notes_len: u64,
    page_size: u64,
) -> Vec<u8> {
    let phnum = regions.len() as u64 + 1;
    let mut b = Vec::with_capacity((phnum * PHDR_SIZE + SHDR_SIZE) as usize);
    // PT_NOTE first, as the kernel does.
    phdr(&mut b, PT_NOTE, 0, notes_offset, 0, notes_len, 0, 4);
    for (r, &off) in regions.iter().zip(offsets) {
        let m = &r.mapping;
        phdr(
            &mut b,
            PT_LOAD,
            m.perms.elf_flags(),
            off,
            m.start,
            r.file_bytes(),
            m.len(),
            page_size,
        );
    }
    if phnum >= PN_XNUM {
        // Section 0 (SHT_NULL) carries the real program header count in sh_info.
        let mut sh = [0u8; SHDR_SIZE as usize];
        sh[44..48].copy_from_slice(&(phnum as u32).to_le_bytes());
        b.extend_from_slice(&sh);
    }
    b
}

#[allow(clippy::too_many_arguments)]
fn phdr(
    b: &mut Vec<u8>,
    p_type: u32,
    flags: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
    memsz: u64,
    align: u64,
) {
    put32(b, p_type);
    put32(b, flags);
    put64(b, offset);
    put64(b, vaddr);
    put64(b, 0); // p_paddr
    put64(b, filesz);
    put64(b, memsz);
    put64(b, align);
}

/// Append one ELF note: header, NUL-terminated owner name and descriptor, each padded to 4 bytes.
pub(crate) fn note(b: &mut Vec<u8>, name: &[u8], n_type: u32, desc: &[u8]) {
    put32(b, name.len() as u32 + 1);
    put32(b, desc.len() as u32);
    put32(b, n_type);
    b.extend_from_slice(name);
    b.push(0);
    pad4(b);
    b.extend_from_slice(desc);
    pad4(b);
}

/// Size of a note as [`note`] writes it.
pub(crate) fn note_len(name_len: usize, desc_len: usize) -> usize {
    12 + (name_len + 1).div_ceil(4) * 4 + desc_len.div_ceil(4) * 4
}

fn pad4(b: &mut Vec<u8>) {
    while b.len() % 4 != 0 {
        b.push(0);
    }
}

/// Process-wide facts that go into NT_PRSTATUS / NT_PRPSINFO.
#[derive(Debug, Clone, Default)]
pub(crate) struct ProcStat {
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub sid: i32,
    pub flags: u64,
    pub nice: i8,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    pub args: Vec<u8>,
}

/// Per-thread facts for NT_PRSTATUS beyond the registers.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ThreadStat {
    pub utime_ticks: u64,
    pub stime_ticks: u64,
    pub sigpend: u64,
    pub sighold: u64,
}

/// `struct elf_prstatus` for one thread: `pr_pid` is the thread ID, which is how gdb and elfutils
/// tell threads apart.
pub(crate) fn prstatus(
    regs: &ThreadRegs,
    p: &ProcStat,
    t: &ThreadStat,
    ticks_per_sec: u64,
) -> Vec<u8> {
    let mut b = Vec::with_capacity(PRSTATUS_HEAD + regs.gregs.len() + 8);
    b.extend_from_slice(&[0u8; 12]); // pr_info: si_signo, si_code, si_errno
    put16(&mut b, 0); // pr_cursig
    put16(&mut b, 0); // padding
    put64(&mut b, t.sigpend);
    put64(&mut b, t.sighold);
    for v in [regs.tid, p.ppid, p.pgrp, p.sid] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    let tv = |ticks: u64| {
        let hz = ticks_per_sec.max(1);
        (ticks / hz, (ticks % hz) * 1_000_000 / hz)
    };
    for (s, us) in [tv(t.utime_ticks), tv(t.stime_ticks), (0, 0), (0, 0)] {
        put64(&mut b, s);
        put64(&mut b, us);
    }
    debug_assert_eq!(b.len(), PRSTATUS_HEAD);
    b.extend_from_slice(&regs.gregs);
    put32(&mut b, u32::from(regs.fpregs.is_some())); // pr_fpvalid
    pad_to(&mut b, 8);
    b
}

/// `struct elf_prpsinfo`: state, IDs, command name and the start of the command line.
pub(crate) fn prpsinfo(pid: i32, p: &ProcStat) -> Vec<u8> {
    let mut b = Vec::with_capacity(136);
    let sname = if p.state.is_ascii() {
        p.state as u8
    } else {
        b'R'
    };
    let state = b"RSDTZW".iter().position(|&c| c == sname).unwrap_or(0) as u8;
    b.push(state);
    b.push(sname);
    b.push(u8::from(sname == b'Z'));
    b.push(p.nice as u8);
    put32(&mut b, 0); // padding
    put64(&mut b, p.flags);
    put32(&mut b, p.uid);
    put32(&mut b, p.gid);
    for v in [pid, p.ppid, p.pgrp, p.sid] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    let mut fname = [0u8; 16];
    let comm = p.comm.as_bytes();
    let n = comm.len().min(15);
    fname[..n].copy_from_slice(&comm[..n]);
    b.extend_from_slice(&fname);
    let mut args = [0u8; 80];
    let a: Vec<u8> = p
        .args
        .iter()
        .map(|&c| if c == 0 { b' ' } else { c })
        .collect();
    let a = a.trim_ascii_end();
    let n = a.len().min(79);
    args[..n].copy_from_slice(&a[..n]);
    b.extend_from_slice(&args);
    b
}

/// NT_FILE: every file-backed mapping (name, range and page offset), dumped or not.
pub(crate) fn nt_file(regions: &[Region], page_size: u64) -> Vec<u8> {
    let files: Vec<&Region> = regions
        .iter()
        .filter(|r| {
            r.mapping
                .path
                .as_deref()
                .is_some_and(|p| p.starts_with('/'))
        })
        .collect();
    let mut b = Vec::new();
    put64(&mut b, files.len() as u64);
    put64(&mut b, page_size);
    for r in &files {
        put64(&mut b, r.mapping.start);
        put64(&mut b, r.mapping.end);
        put64(&mut b, r.mapping.offset / page_size);
    }
    for r in &files {
        b.extend_from_slice(r.mapping.path.as_deref().unwrap_or("").as_bytes());
        b.push(0);
    }
    b
}

fn pad_to(b: &mut Vec<u8>, align: usize) {
    while b.len() % align != 0 {
        b.push(0);
    }
}

fn put16(b: &mut Vec<u8>, v: u16) {
    b.extend_from_slice(&v.to_le_bytes());
}

fn put32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}

fn put64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{Mapping, Perms};

    fn region(start: u64, end: u64, dump: bool, path: Option<&str>) -> Region {
        Region {
            mapping: Mapping {
                start,
                end,
                perms: Perms::parse("rw-p"),
                offset: 0x2000,
                path: path.map(str::to_owned),
            },
            dump,
        }
    }

    #[test]
    fn notes_are_padded() {
        let mut b = Vec::new();
        note(&mut b, b"CORE", NT_AUXV, &[1, 2, 3]);
        assert_eq!(b.len(), note_len(4, 3));
        assert_eq!(b.len(), 12 + 8 + 4);
        assert_eq!(&b[12..17], b"CORE\0");
    }

    #[test]
    fn layout_places_dumped_regions_back_to_back() {
        let regions = [
            region(0x1000, 0x3000, true, None),
            region(0x3000, 0x4000, false, Some("/dev/dri/card0")),
            region(0x5000, 0x6000, true, Some("/lib/x.so")),
        ];
        let l = Layout::new(&regions, 100, 4096);
        assert_eq!(l.data_offset, 4096);
        assert_eq!(l.offsets, [4096, 4096 + 0x2000, 4096 + 0x2000]);
        assert_eq!(l.notes_offset, 4096 + 0x3000);
        assert_eq!(l.file_len(), 4096 + 0x3000 + 100);
        let h = l.headers(&regions, 4096);
        assert_eq!(h.len(), 4096);
        // e_phnum, then the second PT_LOAD's p_filesz is 0.
        assert_eq!(u16::from_le_bytes([h[56], h[57]]), 4);
        let ph = 64 + 2 * 56;
        assert_eq!(&h[ph + 32..ph + 40], &0u64.to_le_bytes());
        let files = nt_file(&regions, 4096);
        assert_eq!(u64::from_le_bytes(files[..8].try_into().unwrap()), 2);
        assert_eq!(&files[16 + 24 + 16..16 + 24 + 24], &2u64.to_le_bytes());
        assert!(files.ends_with(b"/dev/dri/card0\0/lib/x.so\0"));
    }

    #[test]
    fn our_reader_opens_a_core_with_more_than_65535_segments() {
        use crate::image::{CoreFile, MemoryImage};
        use std::io::Write;
        // 70,000 guard-page-sized mappings, one of them dumped with known bytes.
        let mut regions: Vec<Region> = (0..70_000u64)
            .map(|i| region(0x10_0000 + i * 0x2000, 0x10_1000 + i * 0x2000, false, None))
            .collect();
        regions[12_345].dump = true;
        let mut notes = Vec::new();
        note(&mut notes, b"CORE", NT_AUXV, &[0u8; 16]);
        let l = Layout::new(&regions, notes.len() as u64, 4096);
        let mut f = tempfile::NamedTempFile::new().expect("temp");
        f.write_all(&l.headers(&regions, 4096)).expect("headers");
        f.write_all(&[0x5a; 4096]).expect("memory");
        f.write_all(&notes).expect("notes");
        f.flush().expect("flush");
        let core = CoreFile::open(f.path(), None).expect("open a PN_XNUM core");
        assert_eq!(core.mappings().len(), 70_000);
        let at = regions[12_345].mapping.start;
        assert_eq!(core.read_u64(at + 8), Ok(0x5a5a_5a5a_5a5a_5a5a));
    }

    #[test]
    fn many_segments_use_pn_xnum() {
        let regions: Vec<Region> = (0..70_000u64)
            .map(|i| region(i * 0x1000, i * 0x1000 + 0x1000, false, None))
            .collect();
        let l = Layout::new(&regions, 0, 4096);
        let h = l.headers(&regions, 4096);
        assert_eq!(u16::from_le_bytes([h[56], h[57]]), 0xffff);
        let shoff = u64::from_le_bytes(h[40..48].try_into().unwrap()) as usize;
        assert_eq!(shoff as u64, 64 + 70_001 * 56);
        let info = u32::from_le_bytes(h[shoff + 44..shoff + 48].try_into().unwrap());
        assert_eq!(info, 70_001);
    }
}
