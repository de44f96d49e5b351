//! CPython heap forensics (3.8–3.15): find the interpreter in a memory image without symbols, walk
//! every object, take a census by type, build the reference graph and its dominator tree, and name
//! the containers that accumulate by their best path from a module.
//!
//! [`load`] reads one image into a [`PyHeap`] (the image is not needed afterwards); [`compare`]
//! diffs two heaps of one process into findings.

mod compare;
mod discover;
mod integrate;
pub mod layout;
mod mem;
mod naming;
pub mod remote;
mod walk;

use rustc_hash::FxHashMap;
use serde::Serialize;

pub use self::compare::{compare, PyComparison};
pub use self::integrate::CPython;
use self::mem::Mem;
use self::walk::{Kind, Walker};
use crate::heap;
pub use crate::heap::{ContainerSummary, TypeCount};
use crate::image::MemoryImage;

/// Why a CPython heap could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Python we recognise but do not support (version, build flavour).
    #[error("unsupported {0}")]
    Unsupported(String),
    /// Signs of CPython, but the interpreter's state could not be found.
    #[error("cannot read the CPython interpreter: {0}")]
    NoInterpreter(String),
    /// Going on would take more memory than the analysis may use.
    #[error(transparent)]
    OverBudget(#[from] crate::budget::OverBudget),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Containers with at least this many items are named by path when the heap is loaded.
const NAME_MIN_ITEMS: u32 = 8;
/// Upper bound on containers named per heap (the largest first).
const MAX_NAMED: usize = 20_000;
/// Containers listed in the census.
const CENSUS_CONTAINERS: usize = 20;

/// One container (list, dict, set, deque and their subclasses) as seen in one snapshot.
#[derive(Debug, Clone)]
pub struct Container {
    pub type_name: u32,
    pub items: u64,
    pub retained: u64,
    pub named: Option<Box<Named>>,
    /// Its size passed validation; an untrusted container is never ranked or compared.
    pub trusted: bool,
}

/// The best path from a root to an object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Named {
    pub path: String,
    pub referrers: Vec<String>,
}

/// A CPython heap read from one memory image.
#[derive(Debug)]
pub struct PyHeap {
    version: String,
    notes: Vec<String>,
    /// Type display names; `Container::type_name` indexes here.
    type_names: Vec<String>,
    types: Vec<TypeCount>,
    /// Containers by address (CPython objects do not move).
    containers: FxHashMap<u64, Container>,
    objects: u64,
    bytes: u64,
    /// Native memory (brk heap + anonymous mappings) without thread stacks.
    native_bytes: u64,
    /// Resident set size when the image recorded it.
    rss: Option<u64>,
}

/// Brk heap and anonymous writable mappings, leaving out what looks like thread stacks (mappings
/// of the default 8 MiB stack size): a threaded server that starts a thread per request grows its
/// virtual size by whole stacks that are neither resident nor a leak.
fn native_bytes(image: &dyn MemoryImage) -> u64 {
    const STACK: u64 = 8 << 20;
    let mut total = 0u64;
    let mut prev_rw_file_end = None;
    for m in image.mappings() {
        let bss = prev_rw_file_end == Some(m.start);
        prev_rw_file_end = (m.is_file_backed() && m.perms.write).then_some(m.end);
        if !m.perms.write || !m.perms.read || bss || m.is_stack() {
            continue;
        }
        let thread_stack = m.is_anonymous() && (m.len() == STACK || m.len() == STACK - 4096);
        if (m.is_heap() || m.is_anonymous()) && !thread_stack {
            total = total.saturating_add(m.len());
        }
    }
    total
}

/// The census of one heap: what `analyze` prints for a Python process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PyCensus {
    pub version: String,
    pub objects: u64,
    pub bytes: u64,
    /// Largest types first.
    pub types: Vec<TypeCount>,
    /// Largest containers by retained size.
    pub containers: Vec<ContainerSummary>,
    pub notes: Vec<String>,
}

impl PyCensus {
    /// The census as `analyze` prints it: types, then the largest containers.
    pub fn write_text(&self, top: usize, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let headline = format!(
            "CPython {}: {} objects, {}",
            self.version,
            self.objects,
            crate::util::human_bytes(self.bytes)
        );
        heap::write_census(
            out,
            top,
            &headline,
            ("type", &self.types),
            ("containers", &self.containers),
            &self.notes,
        )
    }
}

impl PyHeap {
    /// CPython version, e.g. "3.11.7".
    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    pub fn object_count(&self) -> u64 {
        self.objects
    }

    pub fn total_bytes(&self) -> u64 {
        self.bytes
    }

    pub fn types(&self) -> &[TypeCount] {
        &self.types
    }

    pub(crate) fn type_name(&self, i: u32) -> &str {
        self.type_names
            .get(i as usize)
            .map(String::as_str)
            .unwrap_or("?")
    }

    pub(crate) fn containers(&self) -> &FxHashMap<u64, Container> {
        &self.containers
    }

    pub fn census(&self) -> PyCensus {
        let mut top: Vec<(&u64, &Container)> =
            self.containers.iter().filter(|(_, c)| c.trusted).collect();
        top.sort_by(|a, b| b.1.retained.cmp(&a.1.retained).then(a.0.cmp(b.0)));
        let containers =
            top.into_iter()
                .take(CENSUS_CONTAINERS)
                .map(|(addr, c)| ContainerSummary {
                    path: c.named.as_ref().map(|n| n.path.clone()).unwrap_or_else(|| {
                        format!("<{} at {addr:#x}>", self.type_name(c.type_name))
                    }),
                    type_name: self.type_name(c.type_name).to_string(),
                    items: c.items,
                    retained_bytes: c.retained,
                })
                .collect();
        PyCensus {
            version: self.version.clone(),
            objects: self.objects,
            bytes: self.bytes,
            types: self.types.clone(),
            containers,
            notes: self.notes.clone(),
        }
    }
}

/// Read the CPython heap of `image`. `Ok(None)`: not a CPython process.
pub fn load(image: &dyn MemoryImage) -> Result<Option<PyHeap>> {
    let mem = Mem::new(image);
    let Some(interp) = discover::discover(mem)? else {
        return Ok(None);
    };
    let mut notes = interp.notes.clone();
    let extra: Vec<u64> = interp.sys_modules.into_iter().collect();
    let walk = Walker::new(mem, interp.layout, interp.type_type).run(&interp.gc_heads, &extra)?;
    notes.extend(damage_notes(&walk.damage));

    let modules = module_roots(mem, &interp.layout, &walk);
    let module_idx: Vec<u32> = modules.iter().map(|m| m.1).collect();
    let n = walk.objs.len();
    let (retained, roots) = heap::graph::retained_sizes(&walk.graph, &walk.objs, &module_idx)?;
    let (types, total) = census_by_type(&walk);
    let type_names: Vec<String> = walk.types.iter().map(|t| t.name.clone()).collect();
    let (mut containers, to_name) = collect_containers(&walk, &retained);
    drop(retained);
    let tree = heap::graph::bfs(&walk.graph, n, &roots, module_idx.len());
    let mut namer = naming::Namer::new(mem, &interp.layout, &walk, &tree, &modules);
    for (_, i) in to_name {
        let named = namer.name(i);
        if let Some(c) = walk.objs.addr(i).and_then(|a| containers.get_mut(&a)) {
            c.named = Some(Box::new(named));
        }
    }
    Ok(Some(PyHeap {
        version: interp.version_text,
        notes,
        type_names,
        types,
        containers,
        objects: n as u64,
        bytes: total,
        native_bytes: native_bytes(image),
        rss: image.info().rss,
    }))
}

/// The roots for naming and retained sizes: the modules with their names, `__main__` first, then
/// by name.
fn module_roots(mem: Mem<'_>, layout: &layout::Layout, walk: &walk::Walk) -> Vec<(String, u32)> {
    let mut modules: Vec<(String, u32)> = (0..walk.objs.len() as u32)
        .filter(|&i| walk.kind(i) == Kind::Module)
        .map(|i| {
            let addr = walk.objs.addr(i).unwrap_or(0);
            (
                naming::module_name(mem, layout, addr).unwrap_or_default(),
                i,
            )
        })
        .collect();
    modules.sort_by(|a, b| {
        (a.0 != "__main__", a.0.is_empty(), a.0.len(), &a.0).cmp(&(
            b.0 != "__main__",
            b.0.is_empty(),
            b.0.len(),
            &b.0,
        ))
    });
    modules
}

/// The census by type, merged by name, and the total bytes (an untrusted object counts with the
/// size its type guarantees).
fn census_by_type(walk: &walk::Walk) -> (Vec<TypeCount>, u64) {
    let mut types: Vec<TypeCount> = walk
        .types
        .iter()
        .map(|t| TypeCount {
            name: t.name.clone(),
            count: 0,
            bytes: 0,
        })
        .collect();
    let mut total = 0u64;
    for i in 0..walk.objs.len() as u32 {
        let size = walk.objs.size(i);
        if let Some(t) = walk.objs.ty(i).and_then(|t| types.get_mut(t as usize)) {
            t.count += 1;
            t.bytes += size;
        }
        total += size;
    }
    (merge_types(types), total)
}

/// Every container by address, and the ones to name by path, `(retained, object)`, in the order
/// they are named.
fn collect_containers(
    walk: &walk::Walk,
    retained: &heap::graph::Retained,
) -> (FxHashMap<u64, Container>, Vec<(u64, u32)>) {
    let mut containers: FxHashMap<u64, Container> = FxHashMap::default();
    let mut to_name: Vec<(u64, u32)> = Vec::new();
    let mut by_retained: Vec<(u64, u32)> = Vec::new();
    for i in 0..walk.objs.len() as u32 {
        if !walk.kind(i).is_container() {
            continue;
        }
        let (Some(addr), Some(ty)) = (walk.objs.addr(i), walk.objs.ty(i)) else {
            continue;
        };
        let trusted = walk.objs.trusted(i);
        let r = retained.of(i, &walk.objs);
        let items = walk.objs.items(i);
        containers.insert(
            addr,
            Container {
                type_name: ty,
                items,
                retained: r,
                named: None,
                trusted,
            },
        );
        if trusted {
            by_retained.push((r, i));
            if items >= u64::from(NAME_MIN_ITEMS) {
                to_name.push((r, i));
            }
        }
    }
    // The largest containers by retained size are named whatever their length (the census lists
    // them), then the longer ones, largest first.
    let largest_first = |v: &mut Vec<(u64, u32)>, keep: usize| {
        v.sort_unstable_by(|a, b| b.cmp(a));
        v.truncate(keep);
    };
    largest_first(&mut by_retained, CENSUS_CONTAINERS);
    largest_first(&mut to_name, MAX_NAMED);
    to_name.extend(by_retained);
    (containers, to_name)
}

/// Sizes of single objects, for the tests that hold them against CPython's own `sys.getsizeof`.
#[doc(hidden)]
#[derive(Debug)]
pub struct SizeProbe {
    /// Per requested address: (bytes, trusted), or `None` when the walk did not find it.
    pub sizes: Vec<Option<(u64, bool)>>,
    /// The census total.
    pub total: u64,
}

#[doc(hidden)]
pub fn probe_sizes(image: &dyn MemoryImage, addrs: &[u64]) -> Result<Option<SizeProbe>> {
    let mem = Mem::new(image);
    let Some(interp) = discover::discover(mem)? else {
        return Ok(None);
    };
    let extra: Vec<u64> = interp.sys_modules.into_iter().collect();
    let walk = Walker::new(mem, interp.layout, interp.type_type).run(&interp.gc_heads, &extra)?;
    let wanted: FxHashMap<u64, usize> = addrs.iter().enumerate().map(|(k, &a)| (a, k)).collect();
    let mut sizes = vec![None; addrs.len()];
    let mut total = 0;
    for i in 0..walk.objs.len() as u32 {
        total += walk.objs.size(i);
        if let Some(&k) = walk.objs.addr(i).and_then(|a| wanted.get(&a)) {
            sizes[k] = Some((walk.objs.size(i), walk.objs.trusted(i)));
        }
    }
    Ok(Some(SizeProbe { sizes, total }))
}

fn damage_notes(d: &walk::Damage) -> Vec<String> {
    let counted: [(u64, &str); 5] = [
        (d.gc_broken_lists, "GC list(s) were broken (corrupt or missing memory); the rest was recovered backwards"),
        (d.gc_bad_objects, "GC-tracked objects had an unreadable or invalid type and were skipped"),
        (d.bad_contents, "containers had unreadable or implausible contents and were read partially"),
        (d.dangling, "references pointed to memory that is not a valid object"),
        (d.untrusted_sizes, "objects had a size their type or memory cannot hold (a stale or damaged object): counted at their fixed size, left out of retained sizes and never ranked"),
    ];
    let mut notes: Vec<String> = counted
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
    if d.capped {
        notes.push("object limit reached; the census is partial".into());
    }
    notes
}

/// Merge types of equal name (e.g. the same class name from two imports) for the table, largest
/// first.
fn merge_types(types: Vec<TypeCount>) -> Vec<TypeCount> {
    let mut merged: FxHashMap<String, TypeCount> = FxHashMap::default();
    for t in types {
        if t.count == 0 {
            continue;
        }
        let e = merged.entry(t.name.clone()).or_insert_with(|| TypeCount {
            name: t.name.clone(),
            ..TypeCount::default()
        });
        e.count += t.count;
        e.bytes += t.bytes;
    }
    let mut types: Vec<TypeCount> = merged.into_values().collect();
    types.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.name.cmp(&b.name)));
    types
}
