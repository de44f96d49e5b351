//! Entry points for the fuzz targets (`analyzer/fuzz`) and their regression tests: parse untrusted
//! bytes as a core and run every reader over it. Must never panic, hang or allocate without bound.

use std::path::Path;

use object::read::elf::{ElfFile64, ProgramHeader};

use crate::image::{CoreFile, MemoryImage};

/// A sysroot that does not exist, so fuzz inputs never make us open the host's files.
const NO_SYSROOT: &str = "/nonexistent/leakhunt-fuzz-sysroot";

/// Parse `data` as a core and, if it parses, take the census and read every mapping's first bytes.
pub fn core_reader(data: &[u8]) {
    let Ok(core) = CoreFile::from_bytes("fuzz-input", data.to_vec(), Some(Path::new(NO_SYSROOT)))
    else {
        return;
    };
    for m in core.mappings().iter().take(1000) {
        let mut buf = [0u8; 64];
        let _ = core.read(m.start, &mut buf);
        let _ = core.read_cstr(m.start, 256);
        let _ = core.read(m.end.saturating_sub(8), &mut buf[..16]);
    }
    let _ = crate::census::take(&core, Some(Path::new(NO_SYSROOT)));
    if let Ok(Some(heap)) = crate::python::load(&core) {
        let _ = heap.census();
    }
}

/// One patch of [`python_heap`]'s input: a 4-byte position and the 8-byte word written there.
const PATCH: usize = 12;
/// Patches applied from one input (longer inputs are cut): enough to break many objects at once.
const MAX_PATCHES: usize = 256;

/// The file ranges of `core`'s memory segments that a patch may hit: where a real heap's objects
/// lie, so that mutations land in objects, not in ELF headers the core reader refuses early.
pub fn memory_ranges(core: &[u8]) -> Vec<(usize, usize)> {
    let Ok(elf) = ElfFile64::<object::Endianness>::parse(core) else {
        return Vec::new();
    };
    let endian = elf.endian();
    elf.elf_program_headers()
        .iter()
        .filter(|ph| ph.p_type(endian) == object::elf::PT_LOAD && ph.p_flags(endian) & 2 != 0)
        .filter_map(|ph| {
            let off = usize::try_from(ph.p_offset(endian)).ok()?;
            let size = usize::try_from(ph.p_filesz(endian)).ok()?;
            (size >= 8 && off.checked_add(size)? <= core.len()).then_some((off, size))
        })
        .collect()
}

/// A real CPython core to patch, with its writable memory's file ranges and its intact heap.
pub struct PythonSeed {
    data: Vec<u8>,
    ranges: Vec<(usize, usize)>,
    heap: crate::python::PyHeap,
}

impl PythonSeed {
    /// `None` unless `data` is a core of a CPython process whose heap loads.
    pub fn new(data: Vec<u8>) -> Option<PythonSeed> {
        let ranges = memory_ranges(&data);
        let core =
            CoreFile::from_bytes("fuzz-seed", data.clone(), Some(Path::new(NO_SYSROOT))).ok()?;
        let heap = crate::python::load(&core).ok()??;
        Some(PythonSeed { data, ranges, heap })
    }
}

/// `patches` read as 8-byte words written over the seed core, each at an 8-aligned place in its
/// writable memory chosen by the patch's first 4 bytes; then the heap is walked, censused and
/// compared with the intact seed's. The fuzzer so mutates objects deep in a real heap: counts,
/// type pointers, dict keys, frame pointers. Must never panic, hang or allocate without bound.
pub fn python_heap(seed: &PythonSeed, patches: &[u8]) {
    let total: usize = seed.ranges.iter().map(|r| r.1 / 8).sum();
    if total == 0 {
        return;
    }
    let mut data = seed.data.clone();
    for p in patches.chunks_exact(PATCH).take(MAX_PATCHES) {
        let (at, word) = p.split_at(4);
        let mut k = u32::from_le_bytes([at[0], at[1], at[2], at[3]]) as usize % total;
        for &(off, size) in &seed.ranges {
            if k < size / 8 {
                if let Some(w) = data.get_mut(off + k * 8..off + k * 8 + 8) {
                    w.copy_from_slice(word);
                }
                break;
            }
            k -= size / 8;
        }
    }
    let Ok(core) = CoreFile::from_bytes("fuzz-input", data, Some(Path::new(NO_SYSROOT))) else {
        return;
    };
    if let Ok(Some(after)) = crate::python::load(&core) {
        let _ = after.census();
        let native = crate::findings::NativeGrowth::default();
        let _ = crate::python::compare(&seed.heap, &after, &native);
    }
}

/// A real HPROF dump to patch, with its intact heap.
pub struct HprofSeed {
    data: Vec<u8>,
    heap: crate::jvm::JvmHeap,
}

impl HprofSeed {
    /// `None` unless `data` is an HPROF dump whose heap loads.
    pub fn new(data: Vec<u8>) -> Option<HprofSeed> {
        let heap = crate::jvm::load(&data).ok()?;
        Some(HprofSeed { data, heap })
    }
}

/// One patch of [`hprof`]'s input: a 4-byte position and the 4-byte big-endian word written there
/// (HPROF's lengths, counts and 4-byte ids are such words).
const HPROF_PATCH: usize = 8;

/// `input` read as an optional cut (its first 4 bytes, when their top bit is set: the file is
/// truncated there) and 8-byte patches written anywhere in the seed dump; then the dump is read,
/// censused and compared with the intact seed's. Record lengths, array lengths, field counts,
/// class ids and tags all get hit. Must never panic, hang or allocate without bound.
pub fn hprof(seed: &HprofSeed, input: &[u8]) {
    let mut data = seed.data.clone();
    let mut rest = input;
    if let Some(cut) = input.get(..4) {
        let cut = u32::from_be_bytes([cut[0], cut[1], cut[2], cut[3]]);
        if cut & 0x8000_0000 != 0 {
            data.truncate((cut & 0x7fff_ffff) as usize % data.len().max(1));
            rest = input.get(4..).unwrap_or(&[]);
        }
    }
    let len = data.len();
    if len > 0 {
        for p in rest.chunks_exact(HPROF_PATCH).take(MAX_PATCHES) {
            let at = u32::from_le_bytes([p[0], p[1], p[2], p[3]]) as usize % len;
            for (k, &b) in p[4..].iter().enumerate() {
                if let Some(d) = data.get_mut(at + k) {
                    *d = b;
                }
            }
        }
    }
    if let Ok(after) = crate::jvm::load(&data) {
        let _ = after.census();
        let _ = crate::jvm::compare(&seed.heap, &after);
    }
}
