//! The generic census, for any process: the seed's `hexdump | sort | uniq -c` + `gdb info symbol`,
//! automated. Every aligned 8-byte word of writable memory that points into the data of a mapped
//! ELF object (type objects, vtables, static data) is counted, and the targets are resolved to
//! symbols. Plus the native heap: the brk heap and anonymous mappings.

use std::collections::HashMap;
use std::path::Path;

use rustc_hash::FxHashMap;
use serde::Serialize;

use crate::image::{Mapping, MemoryImage, ProcessInfo};
use crate::symbols::{self, ObjectSymbols};

/// How many distinct symbols a census keeps (the tail is noise for a person and for diff).
const MAX_SYMBOLS_KEPT: usize = 5000;

/// One symbol (or unnamed location) that pointer words point at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PointerCount {
    /// `PyTuple_Type`, `vtable for Widget+0x10`, or `libfoo.so .data+0x40` without a symbol.
    pub name: String,
    pub object: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub section: Option<String>,
    pub count: u64,
}

/// One native-memory mapping (heap or anonymous, writable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NativeMapping {
    pub start: u64,
    pub size: u64,
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NativeMemory {
    /// Size of the brk heap (`[heap]`).
    pub heap: u64,
    /// Writable anonymous mappings (malloc arenas, mmap'd chunks, runtime arenas); stacks excluded.
    pub anonymous: u64,
    /// The largest native mappings.
    pub mappings: Vec<NativeMapping>,
}

/// A census of one snapshot.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Census {
    pub process: ProcessInfo,
    /// Resident set size in bytes (recorded at capture, or estimated from the writable memory).
    pub rss: u64,
    pub rss_estimated: bool,
    /// Bytes of writable memory scanned for pointer words.
    pub scanned_bytes: u64,
    pub pointer_words: u64,
    /// Pointer targets by symbol, most pointed-at first.
    pub pointers: Vec<PointerCount>,
    pub native: NativeMemory,
    /// Per object: where its symbols came from (file, memory, none).
    pub symbol_sources: Vec<(String, String)>,
    pub notes: Vec<String>,
}

/// A range of target addresses and the ELF object it belongs to.
#[derive(Debug, Clone, Copy)]
struct Target {
    start: u64,
    end: u64,
    object: usize,
}

/// Take the census of `image`; symbol files are looked up below `sysroot` when given.
pub fn take(image: &dyn MemoryImage, sysroot: Option<&Path>) -> Census {
    let maps = image.mappings();
    let (targets, objects) = targets(maps);
    // The stored parts of writable memory: scanned for pointers, and reported as scanned bytes.
    let ranges: Vec<(u64, u64)> = scanned_regions(maps)
        .iter()
        .flat_map(|m| image.stored_ranges(m))
        .collect();
    let counts = count_pointers(image, &targets, &ranges);
    let pointer_words = counts.values().map(|&c| c as u64).sum();

    // Resolve each distinct target through its object's symbols; aggregate per label.
    let mut tables: Vec<Option<ObjectSymbols>> = vec![None; objects.len()];
    let mut by_label: HashMap<(String, usize), (Option<String>, u64)> = HashMap::new();
    for (&value, &count) in &counts {
        let Some(t) = find_target(&targets, value) else {
            continue;
        };
        let table = tables[t.object]
            .get_or_insert_with(|| symbols::load_object(image, &objects[t.object], sysroot));
        let r = table.resolve(value);
        let e = by_label
            .entry((r.label(), t.object))
            .or_insert((r.section.clone(), 0));
        e.1 += count as u64;
    }
    let mut pointers: Vec<PointerCount> = by_label
        .into_iter()
        .map(|((name, obj), (section, count))| PointerCount {
            name,
            object: objects[obj].clone(),
            section,
            count,
        })
        .collect();
    pointers.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.name.cmp(&b.name)));
    pointers.truncate(MAX_SYMBOLS_KEPT);

    let native = native_memory(maps);
    let mut notes = image.notes();
    let (rss, rss_estimated) = match image.info().rss {
        Some(r) => (r, false),
        None => {
            notes.push("RSS estimated from the size of writable memory".into());
            (
                maps.iter()
                    .filter(|m| m.perms.write)
                    .map(Mapping::len)
                    .sum(),
                true,
            )
        }
    };
    let symbol_sources = objects
        .iter()
        .zip(&tables)
        .filter_map(|(o, t)| t.as_ref().map(|t| (o.clone(), t.source.to_owned())))
        .collect();
    Census {
        process: image.info().clone(),
        rss,
        rss_estimated,
        scanned_bytes: ranges.iter().map(|(a, b)| b - a).sum(),
        pointer_words,
        pointers,
        native,
        symbol_sources,
        notes,
    }
}

/// Memory we scan for pointer words: everything writable except device mappings.
fn scanned_regions(maps: &[Mapping]) -> Vec<Mapping> {
    maps.iter()
        .filter(|m| {
            m.perms.write
                && m.perms.read
                && !m.path.as_deref().is_some_and(|p| p.starts_with("/dev/"))
        })
        .cloned()
        .collect()
}

/// Non-executable mappings of ELF objects (data, rodata, relro), and the `.bss` that directly
/// follows an object's writable data as an anonymous mapping.
fn targets(maps: &[Mapping]) -> (Vec<Target>, Vec<String>) {
    let mut objects: Vec<String> = Vec::new();
    let mut out: Vec<Target> = Vec::new();
    let mut prev: Option<(usize, &Mapping)> = None;
    for m in maps {
        if m.is_file_backed() {
            let path = m.path.clone().unwrap_or_default();
            let obj = match objects.iter().position(|o| *o == path) {
                Some(i) => i,
                None => {
                    objects.push(path);
                    objects.len() - 1
                }
            };
            if !m.perms.exec {
                out.push(Target {
                    start: m.start,
                    end: m.end,
                    object: obj,
                });
            }
            prev = Some((obj, m));
        } else {
            if let Some((obj, p)) = prev {
                if m.is_anonymous() && m.perms.write && p.perms.write && p.end == m.start {
                    out.push(Target {
                        start: m.start,
                        end: m.end,
                        object: obj,
                    });
                }
            }
            prev = None;
        }
    }
    out.sort_by_key(|t| t.start);
    (out, objects)
}

fn find_target(targets: &[Target], v: u64) -> Option<&Target> {
    let i = targets.partition_point(|t| t.end <= v);
    targets.get(i).filter(|t| t.start <= v)
}

/// Count pointer words per target value, over all writable memory, on every core.
fn count_pointers(
    image: &dyn MemoryImage,
    targets: &[Target],
    ranges: &[(u64, u64)],
) -> FxHashMap<u64, u32> {
    if targets.is_empty() || ranges.is_empty() {
        return FxHashMap::default();
    }
    // Split the work into chunks and let each thread take chunks in turn.
    const CHUNK: u64 = 8 << 20;
    let mut chunks: Vec<(u64, u64)> = Vec::new();
    for &(start, end) in ranges {
        let mut at = start;
        while at < end {
            let next = end.min(at.saturating_add(CHUNK));
            chunks.push((at, next));
            at = next;
        }
    }
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(chunks.len())
        .max(1);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let partials: Vec<FxHashMap<u64, u32>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut counts = FxHashMap::default();
                    let mut buf = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&(start, end)) = chunks.get(i) else {
                            break;
                        };
                        scan_chunk(image, targets, start, end, &mut buf, &mut counts);
                    }
                    counts
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    let mut total = FxHashMap::default();
    for p in partials {
        if total.is_empty() {
            total = p;
            continue;
        }
        for (k, v) in p {
            let e = total.entry(k).or_insert(0u32);
            *e = e.saturating_add(v);
        }
    }
    total
}

fn scan_chunk(
    image: &dyn MemoryImage,
    targets: &[Target],
    start: u64,
    end: u64,
    buf: &mut Vec<u8>,
    counts: &mut FxHashMap<u64, u32>,
) {
    let len = (end - start) as usize;
    let bytes: &[u8] = match image.slice(start, len) {
        Some(s) => {
            scan_words(s, targets, counts);
            image.release(start, len);
            return;
        }
        None => {
            buf.resize(len, 0);
            if image.read(start, buf).is_err() {
                // Parts of the region are missing: scan page by page what is there.
                for page in (start..end).step_by(4096) {
                    let n = (end - page).min(4096) as usize;
                    let mut p = [0u8; 4096];
                    if image.read(page, &mut p[..n]).is_ok() {
                        scan_words(&p[..n], targets, counts);
                    }
                }
                return;
            }
            buf
        }
    };
    scan_words(bytes, targets, counts);
}

/// The hot loop: most words are small integers or heap pointers, rejected by the two bounds.
fn scan_words(bytes: &[u8], targets: &[Target], counts: &mut FxHashMap<u64, u32>) {
    let (Some(lo), Some(hi)) = (
        targets.first().map(|t| t.start),
        targets.last().map(|t| t.end),
    ) else {
        return;
    };
    // Remember the last target hit: pointers into one object cluster.
    let mut last = targets[0];
    for w in bytes.chunks_exact(8) {
        let v = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        if v < lo || v >= hi {
            continue;
        }
        if !(last.start <= v && v < last.end) {
            match find_target(targets, v) {
                Some(t) => last = *t,
                None => continue,
            }
        }
        let c = counts.entry(v).or_insert(0);
        *c = c.saturating_add(1);
    }
}

fn native_memory(maps: &[Mapping]) -> NativeMemory {
    let mut heap = 0;
    let mut anonymous = 0;
    let mut mappings = Vec::new();
    let mut prev_file_rw_end = None;
    for m in maps {
        let is_bss = prev_file_rw_end == Some(m.start);
        prev_file_rw_end = (m.is_file_backed() && m.perms.write).then_some(m.end);
        if !m.perms.write || !m.perms.read {
            continue;
        }
        if m.is_heap() {
            heap += m.len();
            mappings.push(NativeMapping {
                start: m.start,
                size: m.len(),
                name: "[heap]".into(),
            });
        } else if m.is_anonymous() && !is_bss {
            anonymous += m.len();
            mappings.push(NativeMapping {
                start: m.start,
                size: m.len(),
                name: "anonymous".into(),
            });
        }
    }
    mappings.sort_by_key(|m| std::cmp::Reverse(m.size));
    mappings.truncate(20);
    NativeMemory {
        heap,
        anonymous,
        mappings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::Perms;

    fn m(start: u64, end: u64, perms: &str, path: Option<&str>) -> Mapping {
        Mapping {
            start,
            end,
            perms: Perms::parse(perms),
            offset: 0,
            path: path.map(Into::into),
        }
    }

    #[test]
    fn targets_are_object_data_and_bss() {
        let maps = vec![
            m(0x1000, 0x2000, "r--p", Some("/bin/x")),
            m(0x2000, 0x3000, "r-xp", Some("/bin/x")),
            m(0x3000, 0x4000, "rw-p", Some("/bin/x")),
            m(0x4000, 0x5000, "rw-p", None),
            m(0x9000, 0xa000, "rw-p", None),
        ];
        let (t, objs) = targets(&maps);
        assert_eq!(objs, vec!["/bin/x".to_string()]);
        let ranges: Vec<(u64, u64)> = t.iter().map(|t| (t.start, t.end)).collect();
        assert_eq!(
            ranges,
            vec![(0x1000, 0x2000), (0x3000, 0x4000), (0x4000, 0x5000)]
        );
        let n = native_memory(&maps);
        assert_eq!(n.anonymous, 0x1000, "bss is not native heap");
    }

    #[test]
    fn scan_counts_only_target_words() {
        let targets = vec![
            Target {
                start: 0x1000,
                end: 0x2000,
                object: 0,
            },
            Target {
                start: 0x5000,
                end: 0x6000,
                object: 0,
            },
        ];
        let words: Vec<u64> = vec![0, 0x1000, 0x1000, 0x3000, 0x5008, 0x2000, u64::MAX, 0x1fff];
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let mut counts = FxHashMap::default();
        scan_words(&bytes, &targets, &mut counts);
        assert_eq!(counts.get(&0x1000), Some(&2));
        assert_eq!(counts.get(&0x5008), Some(&1));
        assert_eq!(counts.get(&0x1fff), Some(&1));
        assert_eq!(counts.get(&0x3000), None);
        assert_eq!(counts.get(&0x2000), None);
    }
}
