//! Symbol tables of the ELF objects a process maps, to name the addresses pointer words point at.
//!
//! Two sources, best first: the file on disk (`.symtab` when not stripped, `.dynsym`, section names),
//! checked against the build ID the process had mapped; otherwise the dynamic symbol table read
//! from the image itself (`PT_DYNAMIC` → `DT_SYMTAB`/`DT_STRTAB`/`DT_GNU_HASH`), which any capture
//! that includes the object's read-only pages carries — the analyzer Job in a cluster has no access
//! to the container's files.

use std::path::Path;

use object::elf;
use object::read::elf::{FileHeader, ProgramHeader};
use object::{LittleEndian as LE, Object, ObjectSection, ObjectSymbol, SymbolKind};

use crate::image::{Mapping, MemoryImage};

/// Caps that keep a hostile image from making us allocate without bound.
const MAX_SYMBOLS: usize = 4_000_000;
const MAX_NAME: usize = 1024;

#[derive(Debug, Clone)]
pub struct Symbol {
    /// Absolute address in the process.
    pub addr: u64,
    pub size: u64,
    pub name: String,
    /// Section name when known (`.data`, `.data.rel.ro`, ...).
    pub section: Option<String>,
}

/// One mapped ELF object and its symbols, sorted by address.
#[derive(Debug, Clone)]
pub struct ObjectSymbols {
    pub path: String,
    pub bias: u64,
    pub symbols: Vec<Symbol>,
    /// Where the symbols came from: `file`, `memory` or `none`.
    pub source: &'static str,
    /// Section ranges (absolute) from the file, for naming addresses no symbol covers.
    pub sections: Vec<(u64, u64, String)>,
}

/// A resolved address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Resolved {
    /// Demangled symbol name, or `None` when no symbol covers the address.
    pub symbol: Option<String>,
    pub offset: u64,
    pub section: Option<String>,
    pub object: String,
}

impl Resolved {
    /// `vtable for Foo+0x10`, or `libfoo.so .data+0x1234` without a symbol.
    pub fn label(&self) -> String {
        match &self.symbol {
            Some(s) if self.offset == 0 => s.clone(),
            Some(s) => format!("{s}+{:#x}", self.offset),
            None => {
                let base = self.object.rsplit('/').next().unwrap_or(&self.object);
                format!(
                    "{base} {}+{:#x}",
                    self.section.as_deref().unwrap_or("?"),
                    self.offset
                )
            }
        }
    }
}

impl ObjectSymbols {
    pub fn resolve(&self, addr: u64) -> Resolved {
        let i = self.symbols.partition_point(|s| s.addr <= addr);
        // Prefer the closest symbol below the address that covers it (zero-size symbols cover
        // only their own address).
        let sym = i
            .checked_sub(1)
            .and_then(|j| self.symbols.get(j))
            .filter(|s| addr < s.addr.saturating_add(s.size.max(1)));
        let section = self
            .sections
            .iter()
            .find(|(a, b, _)| *a <= addr && addr < *b)
            .map(|(_, _, n)| n.clone());
        match sym {
            Some(s) => Resolved {
                symbol: Some(s.name.clone()),
                offset: addr - s.addr,
                section: s.section.clone().or(section),
                object: self.path.clone(),
            },
            None => {
                let sec_start = self
                    .sections
                    .iter()
                    .find(|(a, b, _)| *a <= addr && addr < *b)
                    .map(|(a, _, _)| *a);
                Resolved {
                    symbol: None,
                    offset: addr.wrapping_sub(sec_start.unwrap_or(self.bias)),
                    section,
                    object: self.path.clone(),
                }
            }
        }
    }
}

/// Demangle C++ (Itanium) and Rust names; others pass through.
pub fn demangle(name: &str) -> String {
    if let Ok(d) = rustc_demangle::try_demangle(name) {
        return format!("{d:#}");
    }
    if name.starts_with("_Z") {
        if let Ok(sym) = cpp_demangle::Symbol::new(name) {
            if let Ok(s) = sym.demangle(&cpp_demangle::DemangleOptions::default()) {
                return cxx_special_names(s);
            }
        }
    }
    name.to_owned()
}

/// cpp_demangle prints special names as `{vtable(Foo)}`; c++filt and gdb say `vtable for Foo`,
/// which is what people search for.
fn cxx_special_names(s: String) -> String {
    let Some(inner) = s.strip_prefix('{').and_then(|r| r.strip_suffix(")}")) else {
        return s;
    };
    let Some((kind, ty)) = inner.split_once('(') else {
        return s;
    };
    let kind = match kind {
        "vtable" => "vtable",
        "typeinfo" => "typeinfo",
        "typeinfo name" | "typeinfo_name" => "typeinfo name",
        "vtt" | "VTT" => "VTT",
        "construction vtable" => "construction vtable",
        _ => return s,
    };
    format!("{kind} for {ty}")
}

/// Load symbols for the ELF object mapped from `path` (mappings of it are in `maps`).
pub fn load_object(image: &dyn MemoryImage, path: &str, sysroot: Option<&Path>) -> ObjectSymbols {
    let maps: Vec<&Mapping> = image
        .mappings()
        .iter()
        .filter(|m| m.path.as_deref() == Some(path))
        .collect();
    let Some(first) = maps.iter().find(|m| m.offset == 0).or(maps.first()) else {
        return empty(path, 0);
    };
    let header_addr = first.start - first.offset.min(first.start);
    let mut page = vec![0u8; 4096.min(first.len() as usize)];
    let header_page = image.read(header_addr, &mut page).ok().map(|_| page);
    let mapped_build_id = header_page
        .as_deref()
        .and_then(crate::image::build_id_from_header_page);
    let min_vaddr = header_page.as_deref().and_then(lowest_load_vaddr);

    let on_disk = match sysroot {
        Some(root) => root.join(path.trim_start_matches('/')),
        None => Path::new(path).to_owned(),
    };
    if let Some(syms) = from_file(
        &on_disk,
        path,
        header_addr,
        min_vaddr,
        mapped_build_id.as_deref(),
    ) {
        return syms;
    }
    if let Some(min) = min_vaddr {
        let bias = header_addr.wrapping_sub(min & !0xfff);
        if let Some(syms) = from_memory(image, path, header_addr, bias) {
            return syms;
        }
        return empty(path, bias);
    }
    empty(path, header_addr)
}

fn empty(path: &str, bias: u64) -> ObjectSymbols {
    ObjectSymbols {
        path: path.to_owned(),
        bias,
        symbols: Vec::new(),
        source: "none",
        sections: Vec::new(),
    }
}

fn lowest_load_vaddr(page: &[u8]) -> Option<u64> {
    let header = elf::FileHeader64::<LE>::parse(page).ok()?;
    let phdrs = header.program_headers(LE, page).ok()?;
    phdrs
        .iter()
        .filter(|p| p.p_type(LE) == elf::PT_LOAD)
        .map(|p| p.p_vaddr(LE))
        .min()
}

fn from_file(
    on_disk: &Path,
    path: &str,
    header_addr: u64,
    mapped_min_vaddr: Option<u64>,
    build_id: Option<&[u8]>,
) -> Option<ObjectSymbols> {
    let file = crate::image::open_regular(on_disk)?;
    // SAFETY: read-only private mapping of a binary or library (replaced by rename, not rewritten).
    #[allow(unsafe_code)]
    let map = unsafe { memmap2::Mmap::map(&file) }.ok()?;
    let obj = object::File::parse(&*map).ok()?;
    if let (Some(want), Ok(Some(have))) = (build_id, obj.build_id()) {
        if want != have {
            return None;
        }
    }
    let min_vaddr = mapped_min_vaddr.or_else(|| {
        obj.segments()
            .map(|s| object::ObjectSegment::address(&s))
            .min()
    })?;
    let bias = header_addr.wrapping_sub(min_vaddr & !0xfff);
    let sections: Vec<(u64, u64, String)> = obj
        .sections()
        .filter(|s| s.address() != 0 && s.size() != 0)
        .filter_map(|s| {
            Some((
                s.address().wrapping_add(bias),
                s.address().wrapping_add(bias).wrapping_add(s.size()),
                s.name().ok()?.to_owned(),
            ))
        })
        .collect();
    let section_name = |idx: Option<object::SectionIndex>| -> Option<String> {
        obj.section_by_index(idx?)
            .ok()?
            .name()
            .ok()
            .map(str::to_owned)
    };
    let mut symbols = Vec::new();
    for sym in obj.symbols().chain(obj.dynamic_symbols()) {
        if symbols.len() >= MAX_SYMBOLS {
            break;
        }
        if !matches!(
            sym.kind(),
            SymbolKind::Data | SymbolKind::Text | SymbolKind::Unknown
        ) || sym.address() == 0
        {
            continue;
        }
        let Ok(name) = sym.name() else { continue };
        if name.is_empty() || name.len() > MAX_NAME {
            continue;
        }
        symbols.push(Symbol {
            addr: sym.address().wrapping_add(bias),
            size: sym.size(),
            name: demangle(name),
            section: section_name(sym.section_index()),
        });
    }
    finish(&mut symbols);
    Some(ObjectSymbols {
        path: path.to_owned(),
        bias,
        symbols,
        source: "file",
        sections,
    })
}

/// Sort, and drop duplicates the `.symtab` + `.dynsym` union produces.
fn finish(symbols: &mut Vec<Symbol>) {
    // Among symbols at one address prefer the sized one, then the shorter (unversioned) name.
    symbols.sort_by(|a, b| {
        a.addr
            .cmp(&b.addr)
            .then(b.size.cmp(&a.size))
            .then(a.name.len().cmp(&b.name.len()))
    });
    symbols.dedup_by(|b, a| a.addr == b.addr);
}

/// The dynamic symbol table as loaded in the process.
fn from_memory(
    image: &dyn MemoryImage,
    path: &str,
    header_addr: u64,
    bias: u64,
) -> Option<ObjectSymbols> {
    let mut hdr = [0u8; 64];
    image.read(header_addr, &mut hdr).ok()?;
    let phoff = u64::from_le_bytes(hdr.get(32..40)?.try_into().ok()?);
    let phnum = u16::from_le_bytes(hdr.get(56..58)?.try_into().ok()?) as u64;
    let mut dynamic = None;
    for i in 0..phnum.min(64) {
        let mut ph = [0u8; 56];
        image
            .read(
                header_addr.checked_add(phoff)?.checked_add(i * 56)?,
                &mut ph,
            )
            .ok()?;
        if u32::from_le_bytes(ph.get(0..4)?.try_into().ok()?) == elf::PT_DYNAMIC {
            let vaddr = u64::from_le_bytes(ph.get(16..24)?.try_into().ok()?);
            let memsz = u64::from_le_bytes(ph.get(40..48)?.try_into().ok()?);
            dynamic = Some((vaddr.wrapping_add(bias), memsz.min(64 * 1024)));
        }
    }
    let (dyn_addr, dyn_size) = dynamic?;
    let (mut symtab, mut strtab, mut strsz, mut gnu_hash, mut hash) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    for i in 0..dyn_size / 16 {
        let tag = image.read_u64(dyn_addr.wrapping_add(i * 16)).ok()?;
        let val = image.read_u64(dyn_addr.wrapping_add(i * 16 + 8)).ok()?;
        // glibc relocates these pointers in place on most architectures; others keep link-time values.
        let abs = |v: u64| if v < bias { v.wrapping_add(bias) } else { v };
        match tag as u32 {
            0 if tag == 0 => break,
            elf::DT_SYMTAB => symtab = abs(val),
            elf::DT_STRTAB => strtab = abs(val),
            elf::DT_STRSZ => strsz = val,
            elf::DT_GNU_HASH => gnu_hash = abs(val),
            elf::DT_HASH => hash = abs(val),
            _ => {}
        }
    }
    if symtab == 0 || strtab == 0 {
        return None;
    }
    let count = if hash != 0 {
        image.read_u32(hash.wrapping_add(4)).ok()? as u64
    } else if gnu_hash != 0 {
        gnu_hash_count(image, gnu_hash)?
    } else {
        // Without a hash table the table ends where the string table starts, in every linker's layout.
        strtab.checked_sub(symtab)? / 24
    };
    let count = count.min(MAX_SYMBOLS as u64);
    let mut symbols = Vec::new();
    for i in 0..count {
        let mut ent = [0u8; 24];
        if image.read(symtab.wrapping_add(i * 24), &mut ent).is_err() {
            break;
        }
        let name_off = u32::from_le_bytes(ent[0..4].try_into().ok()?) as u64;
        let info = ent[4];
        let shndx = u16::from_le_bytes(ent[6..8].try_into().ok()?);
        let value = u64::from_le_bytes(ent[8..16].try_into().ok()?);
        let size = u64::from_le_bytes(ent[16..24].try_into().ok()?);
        let kind = info & 0xf;
        if shndx == 0 || value == 0 || !(kind == elf::STT_OBJECT || kind == elf::STT_FUNC) {
            continue;
        }
        if strsz != 0 && name_off >= strsz {
            continue;
        }
        let Ok(name) = image.read_cstr(strtab.wrapping_add(name_off), MAX_NAME) else {
            continue;
        };
        if name.is_empty() {
            continue;
        }
        symbols.push(Symbol {
            addr: value.wrapping_add(bias),
            size,
            name: demangle(&name),
            section: None,
        });
    }
    finish(&mut symbols);
    Some(ObjectSymbols {
        path: path.to_owned(),
        bias,
        symbols,
        source: "memory",
        sections: Vec::new(),
    })
}

/// Number of dynamic symbols from a `DT_GNU_HASH` table: one past the last symbol of the longest chain.
fn gnu_hash_count(image: &dyn MemoryImage, table: u64) -> Option<u64> {
    let nbuckets = image.read_u32(table).ok()? as u64;
    let symoffset = image.read_u32(table.wrapping_add(4)).ok()? as u64;
    let bloom_size = image.read_u32(table.wrapping_add(8)).ok()? as u64;
    if nbuckets > 1 << 24 || bloom_size > 1 << 24 {
        return None;
    }
    let buckets = table.wrapping_add(16 + bloom_size * 8);
    let mut last = 0u64;
    for b in 0..nbuckets {
        last = last.max(image.read_u32(buckets.wrapping_add(b * 4)).ok()? as u64);
    }
    if last < symoffset {
        return Some(symoffset);
    }
    let chains = buckets.wrapping_add(nbuckets * 4);
    let mut i = last;
    // Walk the last chain to its end marker (low bit set); bounded by the symbol cap.
    while i < MAX_SYMBOLS as u64 {
        let h = image
            .read_u32(chains.wrapping_add((i - symoffset) * 4))
            .ok()?;
        if h & 1 == 1 {
            return Some(i + 1);
        }
        i += 1;
    }
    Some(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demangles_cpp_and_rust() {
        assert_eq!(demangle("_ZTV6Widget"), "vtable for Widget");
        assert_eq!(demangle("PyTuple_Type"), "PyTuple_Type");
        assert_eq!(
            demangle("_ZN4core3fmt5write17h0123456789abcdefE"),
            "core::fmt::write"
        );
    }

    #[test]
    fn resolves_inside_and_outside_symbols() {
        let o = ObjectSymbols {
            path: "/lib/libx.so".into(),
            bias: 0x1000,
            symbols: vec![Symbol {
                addr: 0x2000,
                size: 0x20,
                name: "vtable for W".into(),
                section: Some(".data.rel.ro".into()),
            }],
            source: "file",
            sections: vec![(0x1800, 0x3000, ".data.rel.ro".into())],
        };
        assert_eq!(o.resolve(0x2010).label(), "vtable for W+0x10");
        assert_eq!(o.resolve(0x2000).label(), "vtable for W");
        let r = o.resolve(0x2800);
        assert_eq!(r.symbol, None);
        assert_eq!(r.label(), "libx.so .data.rel.ro+0x1000");
    }
}
