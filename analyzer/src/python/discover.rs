//! Finding the interpreter in an image without symbols: the `type` type (the object whose `ob_type`
//! is itself and whose `tp_name` is "type"), the version (`_Py_DebugOffsets` on 3.13+, the
//! `sys.version` buffer, `type.__basicsize__`, the file name of libpython / the executable), and
//! the collector's generation lists (a self-describing signature inside the GC state).

use super::layout::{GcGenerations, Layout, Version};
use super::mem::{le64, plausible, u32_at, Mem};
use super::Error;
use crate::image::Mapping;

/// Chunk size for scanning regions of images that cannot lend slices (live processes).
const CHUNK: usize = 4 << 20;
/// Overlap between chunks, so patterns spanning a boundary are seen.
const OVERLAP: usize = 256;
/// Never scan more than this per region.
const MAX_REGION: u64 = 1 << 30;

/// What the discovery found.
#[derive(Debug, Clone)]
pub struct Interpreter {
    /// The version as `sys.version` begins (`3.14.8`).
    pub version_text: String,
    pub layout: Layout,
    /// Address of `PyType_Type`.
    pub type_type: u64,
    /// Addresses of GC list heads (`PyGC_Head` of each generation, every interpreter).
    pub gc_heads: Vec<u64>,
    /// `sys.modules` where `_Py_DebugOffsets` tell us (3.13+).
    pub sys_modules: Option<u64>,
    pub notes: Vec<String>,
}

/// Memory regions that can hold interpreter statics: writable mappings of ELF files and the
/// anonymous mapping right after each (its `.bss`).
pub(super) fn data_regions(maps: &[Mapping]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for (i, m) in maps.iter().enumerate() {
        if !m.perms.write || !m.perms.read || !m.is_file_backed() {
            continue;
        }
        out.push((m.start, m.end));
        if let Some(next) = maps.get(i + 1) {
            if next.start == m.end && next.is_anonymous() && next.perms.write {
                out.push((next.start, next.end));
            }
        }
    }
    out
}

/// Other writable memory (brk heap, anonymous mappings): where 3.9–3.11 allocate the interpreter.
fn heap_regions(maps: &[Mapping]) -> Vec<(u64, u64)> {
    maps.iter()
        .filter(|m| m.perms.read && m.perms.write && (m.is_heap() || m.is_anonymous()))
        .map(|m| (m.start, m.end))
        .collect()
}

/// Call `f(address, bytes)` over `[start, end)` in chunks; `f` returns `false` to stop.
fn scan(mem: Mem<'_>, start: u64, end: u64, f: &mut dyn FnMut(u64, &[u8]) -> bool) {
    let end = end.min(start.saturating_add(MAX_REGION));
    if let Some(b) = mem.img.slice(start, (end - start) as usize) {
        f(start, b);
        return;
    }
    let mut at = start;
    while at < end {
        let len = ((end - at) as usize).min(CHUNK + OVERLAP);
        let mut buf = vec![0u8; len];
        if mem.img.read(at, &mut buf).is_ok() && !f(at, &buf) {
            return;
        }
        at = at.saturating_add(CHUNK as u64);
    }
}

/// Python library or executable named in the mappings: (path, minor, free-threaded).
fn python_file(maps: &[Mapping]) -> Option<(String, u32, bool)> {
    for m in maps {
        let Some(path) = m.path.as_deref() else {
            continue;
        };
        let name = path.rsplit('/').next().unwrap_or(path);
        let rest = name
            .strip_prefix("libpython3.")
            .or_else(|| name.strip_prefix("python3."));
        let Some(rest) = rest else { continue };
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        let Ok(minor) = digits.parse::<u32>() else {
            continue;
        };
        let suffix = &rest[digits.len()..];
        let free_threaded = suffix.starts_with('t');
        return Some((path.to_string(), minor, free_threaded));
    }
    None
}

/// Find `PyType_Type`: `ob_type == self` and `tp_name` → "type".
fn find_type_type(mem: Mem<'_>, regions: &[(u64, u64)]) -> Option<u64> {
    let mut found = None;
    for &(s, e) in regions {
        scan(mem, s, e, &mut |base, b| {
            let mut off = 0usize;
            while off + 40 <= b.len() {
                let addr = base + off as u64;
                if le64(&b[off + 8..]) == addr {
                    let name = le64(&b[off + 24..]);
                    if name != 0 && mem.cstr(name, 8).as_deref() == Some("type") {
                        found = Some(addr);
                        return false;
                    }
                }
                off += 8;
            }
            true
        });
        if found.is_some() {
            break;
        }
    }
    found
}

/// `_Py_DebugOffsets` (3.13+): starts `_PyRuntime` with the cookie "xdebugpy".
pub(super) struct DebugOffsets {
    pub(super) addr: u64,
    pub(super) version_hex: u64,
    pub(super) free_threaded: bool,
    pub(super) words: Vec<u64>,
}

pub(super) fn find_debug_offsets(mem: Mem<'_>, regions: &[(u64, u64)]) -> Option<DebugOffsets> {
    let mut found = None;
    for &(s, e) in regions {
        scan(mem, s, e, &mut |base, b| {
            let mut off = 0usize;
            while off + 8 <= b.len() {
                if &b[off..off + 8] == b"xdebugpy" {
                    found = Some(base + off as u64);
                    return false;
                }
                off += 8;
            }
            true
        });
        if found.is_some() {
            break;
        }
    }
    let addr = found?;
    let words = mem.words(addr, 80)?;
    Some(DebugOffsets {
        addr,
        version_hex: *words.get(1)?,
        free_threaded: words.get(2).is_some_and(|&w| w != 0),
        words,
    })
}

/// `sys.version` text ("3.11.7 (main, ...") in the static buffer `Py_GetVersion` fills.
fn find_version_text(mem: Mem<'_>, regions: &[(u64, u64)], minor: Option<u32>) -> Option<Version> {
    let mut found = None;
    for &(s, e) in regions {
        scan(mem, s, e, &mut |_, b| {
            let mut i = 0usize;
            while i + 8 < b.len() {
                if b[i] == b'3' && b[i + 1] == b'.' && (i == 0 || b[i - 1] == 0) {
                    if let Some(v) = parse_version_prefix(&b[i..(i + 32).min(b.len())]) {
                        if minor.is_none_or(|m| m == v.minor) {
                            found = Some(v);
                            return false;
                        }
                    }
                }
                i += 1;
            }
            true
        });
        if found.is_some() {
            break;
        }
    }
    found
}

/// "3.11.7 (" or "3.13.0rc1+ (" → 3.11.7.
fn parse_version_prefix(b: &[u8]) -> Option<Version> {
    let text = std::str::from_utf8(b.split(|&c| c == 0).next()?).ok()?;
    let (ver, _) = text.split_once(" (")?;
    let mut parts = ver.splitn(3, '.');
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next()?.parse().ok()?;
    let micro_text = parts.next()?;
    let digits: String = micro_text
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    let micro: u32 = digits.parse().ok()?;
    let tail = &micro_text[digits.len()..];
    if major != 3 || !(6..=20).contains(&minor) || tail.len() > 8 {
        return None;
    }
    if !tail.chars().all(|c| c.is_ascii_alphanumeric() || c == '+') {
        return None;
    }
    Some(Version {
        major,
        minor,
        micro,
    })
}

/// A `PyGC_Head` that heads a well-formed circular list (possibly empty). While a collection runs,
/// the objects of the generations it collects hold reference counts in `_gc_prev` (with the
/// PREV_MASK_COLLECTING bit, 2) instead of links, and unreachable ones carry
/// NEXT_MASK_UNREACHABLE (1) in `_gc_next`: the head's own links and the forward chain still hold,
/// and a snapshot taken then (a big heap's full collection lasts a second) must still be read.
fn valid_list_head(mem: Mem<'_>, h: u64) -> bool {
    let (Some(next), Some(prev)) = (mem.u64(h), mem.u64(h + 8)) else {
        return false;
    };
    let (next, prev) = (next & !1, prev & !3);
    if next == h || prev == h {
        return next == h && prev == h;
    }
    if !plausible(next) || !plausible(prev) {
        return false;
    }
    let back = mem.u64(next + 8);
    let first_linked = back.is_some_and(|p| p & !3 == h || p & COLLECTING != 0);
    first_linked && mem.u64(prev).map(|n| n & !1) == Some(h)
}

/// `_PyGC_PREV_MASK_COLLECTING`: this object's `_gc_prev` holds its reference count while it is
/// collected.
const COLLECTING: u64 = 2;

/// Generation list heads: scan for the GC state's self-describing layout.
fn find_gc_heads(mem: Mem<'_>, regions: &[(u64, u64)], kind: GcGenerations) -> Vec<u64> {
    let mut states: Vec<u64> = Vec::new();
    for &(s, e) in regions {
        scan(mem, s, e, &mut |base, b| {
            let mut off = 0usize;
            while off + 112 <= b.len() {
                let g = base + off as u64;
                let hit = match kind {
                    // generations[3] (24 bytes each), then `generation0` == &generations[0].
                    GcGenerations::Three => le64(&b[off + 72..]) == g && plausible(le64(&b[off..])),
                    // young, old[0], old[1], permanent: thresholds young > 0, old[0] > 0.
                    GcGenerations::YoungOld => {
                        plausible(le64(&b[off..]))
                            && u32_at(b, off as u64 + 16) > 0
                            && u32_at(b, off as u64 + 16) < 1_000_000
                            && u32_at(b, off as u64 + 40) > 0
                            && u32_at(b, off as u64 + 40) < 1_000_000
                            && (le64(&b[off..]) == g || le64(&b[off + 8..]) & !3 != g)
                    }
                };
                if hit {
                    let thresholds_ok = (0..3).all(|k| {
                        let t = u32_at(b, off as u64 + 16 + 24 * k);
                        t < 10_000_000
                    });
                    if thresholds_ok
                        && (0..4).all(|k| valid_list_head(mem, g + gc_head_offset(kind, k)))
                    {
                        states.push(g);
                        if states.len() >= 16 {
                            return false;
                        }
                    }
                }
                off += 8;
            }
            true
        });
        if !states.is_empty() {
            break;
        }
    }
    let mut heads = Vec::new();
    for g in states {
        for k in 0..4 {
            heads.push(g + gc_head_offset(kind, k));
        }
    }
    heads
}

/// Offset of list head `k` (0..4) from the first generation.
fn gc_head_offset(kind: GcGenerations, k: u64) -> u64 {
    match (kind, k) {
        // permanent_generation follows the generation0 pointer.
        (GcGenerations::Three, 3) => 80,
        (_, k) => 24 * k,
    }
}

/// Find the interpreter. `Ok(None)`: this is not a CPython process.
pub fn discover(mem: Mem<'_>) -> Result<Option<Interpreter>, Error> {
    let maps = mem.img.mappings();
    let file = python_file(maps);
    let data = data_regions(maps);
    let Some(type_type) = find_type_type(mem, &data) else {
        return match file {
            Some((path, _, _)) => Err(Error::NoInterpreter(format!(
                "{path} is mapped but no `type` object was found in its data (pages missing from the core?)"
            ))),
            None => Ok(None),
        };
    };
    let mut notes = Vec::new();
    let heap_type_size = mem.u64(type_type + 32).unwrap_or(0);
    let debug = find_debug_offsets(mem, &data);
    let (version, free_threaded) = match &debug {
        Some(d) => (
            Version {
                major: ((d.version_hex >> 24) & 0xff) as u32,
                minor: ((d.version_hex >> 16) & 0xff) as u32,
                micro: ((d.version_hex >> 8) & 0xff) as u32,
            },
            d.free_threaded,
        ),
        None => (
            version_without_debug_offsets(
                mem,
                &data,
                &file,
                type_type,
                heap_type_size,
                &mut notes,
            )?,
            file.as_ref().is_some_and(|f| f.2),
        ),
    };
    let layout = Layout::for_version(version, free_threaded)?;
    cross_check(&layout, heap_type_size, version, &file, &mut notes);

    let (mut gc_heads, mut sys_modules) = (Vec::new(), None);
    if let Some(d) = &debug {
        check_debug_offsets(d, &layout, &mut notes);
        (gc_heads, sys_modules) = gc_from_debug_offsets(mem, d, &layout);
        if gc_heads.is_empty() {
            notes.push("_Py_DebugOffsets led to no valid GC lists; scanning for them".into());
        }
    }
    if gc_heads.is_empty() {
        gc_heads = find_gc_heads(mem, &data, layout.gc);
    }
    if gc_heads.is_empty() {
        gc_heads = find_gc_heads(mem, &heap_regions(maps), layout.gc);
    }
    if gc_heads.is_empty() {
        return Err(Error::NoInterpreter(format!(
            "CPython {version}: the garbage collector's generation lists were not found; the heap cannot be walked"
        )));
    }
    let version_text = version.to_string();
    Ok(Some(Interpreter {
        version_text,
        layout,
        type_type,
        gc_heads,
        sys_modules,
        notes,
    }))
}

/// The version of an interpreter without `_Py_DebugOffsets` (before 3.13): its version string in
/// memory, looked for with the minor that `type.__basicsize__` or the library's name suggests;
/// failing that, that minor alone, with a note.
fn version_without_debug_offsets(
    mem: Mem<'_>,
    data: &[(u64, u64)],
    file: &Option<(String, u32, bool)>,
    type_type: u64,
    heap_type_size: u64,
    notes: &mut Vec<String>,
) -> Result<Version, Error> {
    let size_hint = Layout::minor_from_heap_type_size(heap_type_size);
    let file_minor = file.as_ref().map(|f| f.1);
    let hinted = match size_hint {
        Some([m]) => Some(*m),
        _ => file_minor,
    };
    let text = find_version_text(mem, data, hinted).or_else(|| find_version_text(mem, data, None));
    match (text, hinted) {
        (Some(v), _) => Ok(v),
        (None, Some(minor)) => {
            notes.push(format!(
                "the exact CPython version was not found in memory; assuming 3.{minor}.x from {}",
                if size_hint.is_some() { "type.__basicsize__" } else { "the library file name" }
            ));
            Ok(Version {
                major: 3,
                minor,
                micro: 0,
            })
        }
        (None, None) => Err(Error::NoInterpreter(format!(
            "found the `type` object at {type_type:#x} but cannot tell the CPython version (type.__basicsize__ = {heap_type_size})"
        ))),
    }
}

/// Cross-checks of the layout table against the interpreter itself; a mismatch is a note.
fn cross_check(
    layout: &Layout,
    heap_type_size: u64,
    version: Version,
    file: &Option<(String, u32, bool)>,
    notes: &mut Vec<String>,
) {
    if layout.heap_type_size != 0 && heap_type_size != layout.heap_type_size {
        notes.push(format!(
            "type.__basicsize__ is {heap_type_size}, the table for {version} says {}: results may be wrong",
            layout.heap_type_size
        ));
    }
    if let Some((path, minor, _)) = file {
        if *minor != version.minor {
            notes.push(format!(
                "{path} names 3.{minor} but the interpreter reports {version}"
            ));
        }
    }
}

/// The GC list heads of every interpreter and the first `sys.modules`, followed from
/// `_Py_DebugOffsets`.
fn gc_from_debug_offsets(
    mem: Mem<'_>,
    d: &DebugOffsets,
    layout: &Layout,
) -> (Vec<u64>, Option<u64>) {
    let (mut gc_heads, mut sys_modules) = (Vec::new(), None);
    // runtime_state.interpreters_head, interpreter_state.next / gc / imports_modules. 3.13 has
    // `gc` at index 10, 3.14 at 11, and later releases may insert fields before it: the index is
    // the first that leads to GC lists, and `imports_modules` after it counts only if it is a dict.
    let interp_head = d.words.get(5).copied().unwrap_or(0);
    let next_off = d.words.get(8).copied().unwrap_or(0);
    let first = mem.u64(d.addr + interp_head).unwrap_or(0);
    let gc_index = (10usize..24).find(|&i| {
        let off = d.words.get(i).copied().unwrap_or(0);
        plausible(first)
            && off < (1 << 24)
            && (0..4).all(|k| {
                valid_list_head(
                    mem,
                    first + off + layout.gc_generations + gc_head_offset(layout.gc, k),
                )
            })
    });
    let Some(gi) = gc_index else {
        return (gc_heads, sys_modules);
    };
    let gc_off = d.words.get(gi).copied().unwrap_or(0);
    let modules_off = d.words.get(gi + 1).copied().unwrap_or(0);
    let mut interp = first;
    let mut n = 0;
    while plausible(interp) && n < 64 {
        let gens = interp + gc_off + layout.gc_generations;
        for k in 0..4 {
            let h = gens + gc_head_offset(layout.gc, k);
            if valid_list_head(mem, h) {
                gc_heads.push(h);
            }
        }
        if sys_modules.is_none() {
            sys_modules = mem
                .u64(interp + modules_off)
                .filter(|&p| plausible(p) && type_name(mem, p, layout).as_deref() == Some("dict"));
        }
        interp = mem.u64(interp + next_off).unwrap_or(0);
        n += 1;
    }
    (gc_heads, sys_modules)
}

/// The `tp_name` of the object at `o`'s type.
fn type_name(mem: Mem<'_>, o: u64, layout: &Layout) -> Option<String> {
    let t = mem.u64(o + 8).filter(|&t| plausible(t))?;
    mem.cstr(mem.u64(t + layout.tp_name)?, 64)
}

/// Compare what `_Py_DebugOffsets` says with our table; a mismatch is a note, not a failure.
fn check_debug_offsets(d: &DebugOffsets, l: &Layout, notes: &mut Vec<String>) {
    // Indices of u64 fields: pyobject.ob_type = 45, type_object.tp_name = 47, tp_flags = 49,
    // list_object.ob_item = 54, dict_object.ma_keys = 57, ma_values = 58, unicode asciiobject_size = 70.
    if d.version_hex >> 16 != 0x030d {
        return; // later releases add fields; the indices below are 3.13's
    }
    let checks: [(usize, u64, &str); 6] = [
        (45, 8, "ob_type"),
        (47, l.tp_name, "tp_name"),
        (49, l.tp_flags, "tp_flags"),
        (54, 24, "list ob_item"),
        (57, 32, "dict ma_keys"),
        (70, l.unicode_ascii_size, "sizeof(PyASCIIObject)"),
    ];
    for (i, want, what) in checks {
        match d.words.get(i) {
            Some(&got) if got == want => {}
            Some(&got) => notes.push(format!(
                "_Py_DebugOffsets gives {what} = {got}, the layout table {want}"
            )),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_prefixes() {
        let v = parse_version_prefix(b"3.11.7 (main, Jan  1 2024, 00:00:00) [GCC 12.2.0]\0junk");
        assert_eq!(
            v,
            Some(Version {
                major: 3,
                minor: 11,
                micro: 7
            })
        );
        let rc = parse_version_prefix(b"3.13.0rc1+ (heads/3.13:abc, ...)").expect("rc");
        assert_eq!((rc.minor, rc.micro), (13, 0));
        assert_eq!(parse_version_prefix(b"3.11.7"), None);
        assert_eq!(parse_version_prefix(b"3.x.7 ("), None);
        assert_eq!(parse_version_prefix(b"2.7.18 ("), None);
    }

    #[test]
    fn python_file_names() {
        let m = |p: &str| Mapping {
            start: 0,
            end: 0x1000,
            perms: crate::image::Perms::parse("r--p"),
            offset: 0,
            path: Some(p.into()),
        };
        assert_eq!(
            python_file(&[m("/usr/lib/libpython3.11.so.1.0")]),
            Some(("/usr/lib/libpython3.11.so.1.0".into(), 11, false))
        );
        assert_eq!(
            python_file(&[m("/usr/bin/python3.13t")]).map(|f| (f.1, f.2)),
            Some((13, true))
        );
        assert_eq!(python_file(&[m("/usr/bin/sleep")]), None);
    }
}
