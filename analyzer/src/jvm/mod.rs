//! JVM heap forensics from HPROF dumps: the object graph of a dump, its dominator tree and
//! retained sizes, collections counted by their logical size (a `HashMap`'s entries, an
//! `ArrayList`'s size), each named by its path from a GC root as a Java engineer names it
//! (`com.shop.PriceService.QUOTE_CACHE`), and the diff of two dumps of one JVM.
//!
//! Java objects move at every collection, so unlike CPython's the containers of two dumps are
//! matched by path, not by address.

pub mod attach;
mod compare;
pub mod hprof;
pub mod perf;

use rustc_hash::FxHashMap;
use serde::Serialize;

pub use self::compare::{compare, JvmComparison};
use self::hprof::{Dump, ObjKind, RootKind, T_INT, T_LONG, T_OBJECT};
use crate::budget;
use crate::heap::graph::{self, NONE};
use crate::heap::table::{pack, EdgeKind, Graph, Objects, Rows, MAX_EDGES};
pub use crate::heap::TypeCount;

pub use self::hprof::{is_hprof, Error};
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Containers with at least this many items are named by path.
const NAME_MIN_ITEMS: u64 = 8;
/// Upper bound on containers named per heap (the largest first).
const MAX_NAMED: usize = 20_000;
/// Containers listed in the census.
const CENSUS_CONTAINERS: usize = 20;
/// Steps of a path printed before the rest is elided.
const MAX_STEPS: usize = 24;

/// One collection or object array as seen in one dump.
#[derive(Debug, Clone)]
pub struct Container {
    pub type_name: String,
    pub items: u64,
    pub retained: u64,
    /// The chain from its GC root, outermost first (`class com.shop.PriceService`, …).
    pub referrers: Vec<String>,
    /// Reached from a class (a static field), not only from a thread's stack or a JNI handle.
    pub from_class: bool,
    /// Native memory of the direct buffers it retains (outside the Java heap).
    pub native: u64,
}

/// What a JVM holds outside its Java heap, as far as its heap dump shows: the classes metaspace
/// holds and their loaders, the threads (each with a stack), and direct and mapped buffers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Footprint {
    /// Classes defined by the bootstrap loader and by live loaders.
    pub classes: u64,
    /// Live class loaders by their class, the most classes first.
    pub loaders: Vec<LoaderGroup>,
    /// Live threads by their class (`count`; `bytes` unused).
    pub threads: Vec<TypeCount>,
    /// Reachable direct buffers that own native memory (`ByteBuffer.allocateDirect`): how many,
    /// and their capacity in bytes.
    pub direct: TypeCount,
    /// Reachable buffers of mapped files (`FileChannel.map`).
    pub mapped: TypeCount,
}

impl Footprint {
    pub fn threads_total(&self) -> u64 {
        self.threads.iter().map(|t| t.count).sum()
    }
}

/// The live class loaders of one class.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoaderGroup {
    /// The loaders' class (`java.net.URLClassLoader`), `<bootstrap>` for the JVM's own.
    pub class: String,
    pub loaders: u64,
    /// Classes they define.
    pub classes: u64,
    /// The class name they define most often, and how many of them define it: a class loaded
    /// again by every new loader is the mark of a class loader leak.
    pub most_defined: Option<(String, u64)>,
}

/// A JVM heap read from one HPROF dump.
#[derive(Debug)]
pub struct JvmHeap {
    /// `21.0.13`, from the dump's own `java.lang.VersionProps`, where it could be read.
    pub version: Option<String>,
    pub timestamp_ms: u64,
    notes: Vec<String>,
    types: Vec<TypeCount>,
    /// Containers by path.
    containers: FxHashMap<String, Container>,
    objects: u64,
    bytes: u64,
    footprint: Footprint,
}

/// The census of one dump: what `analyze` prints for a JVM heap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JvmCensus {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub objects: u64,
    pub bytes: u64,
    /// Largest classes first.
    pub classes: Vec<TypeCount>,
    /// Largest containers by retained size.
    pub containers: Vec<crate::heap::ContainerSummary>,
    /// What the dump shows outside the Java heap.
    pub footprint: Footprint,
    pub notes: Vec<String>,
}

impl JvmCensus {
    /// The census as `analyze` prints it: classes, then the largest collections.
    pub fn write_text(&self, top: usize, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let headline = format!(
            "Java heap (HotSpot {}): {} objects, {}",
            self.version.as_deref().unwrap_or("version unknown"),
            self.objects,
            crate::util::human_bytes(self.bytes)
        );
        crate::heap::write_census(
            out,
            top,
            &headline,
            ("class", &self.classes),
            ("collections", &self.containers),
            &self.notes,
        )?;
        let f = &self.footprint;
        writeln!(out)?;
        writeln!(out, "outside the Java heap:")?;
        writeln!(
            out,
            "  classes (metaspace)  {} in {} live class loaders",
            f.classes,
            f.loaders.iter().map(|l| l.loaders).sum::<u64>()
        )?;
        for l in f.loaders.iter().take(top.min(5)) {
            let most = l
                .most_defined
                .as_ref()
                .filter(|m| m.1 > 1)
                .map(|m| format!(", {} of them define {}", m.1, m.0))
                .unwrap_or_default();
            writeln!(
                out,
                "    {:>6} loaders of {:<48} {} classes{most}",
                l.loaders, l.class, l.classes
            )?;
        }
        writeln!(out, "  threads              {}", f.threads_total())?;
        for b in [&f.direct, &f.mapped] {
            writeln!(
                out,
                "  {:<20} {} buffers, {}",
                b.name,
                b.count,
                crate::util::human_bytes(b.bytes)
            )?;
        }
        Ok(())
    }
}

impl JvmHeap {
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    pub fn types(&self) -> &[TypeCount] {
        &self.types
    }

    pub fn total_bytes(&self) -> u64 {
        self.bytes
    }

    pub(crate) fn containers(&self) -> &FxHashMap<String, Container> {
        &self.containers
    }

    pub fn footprint(&self) -> &Footprint {
        &self.footprint
    }

    pub fn census(&self) -> JvmCensus {
        let mut top: Vec<(&String, &Container)> = self.containers.iter().collect();
        top.sort_by(|a, b| b.1.retained.cmp(&a.1.retained).then(a.0.cmp(b.0)));
        JvmCensus {
            version: self.version.clone(),
            objects: self.objects,
            bytes: self.bytes,
            classes: self.types.clone(),
            containers: top
                .into_iter()
                .take(CENSUS_CONTAINERS)
                .map(|(path, c)| crate::heap::ContainerSummary {
                    path: path.clone(),
                    type_name: c.type_name.clone(),
                    items: c.items,
                    retained_bytes: c.retained,
                })
                .collect(),
            footprint: self.footprint.clone(),
            notes: self.notes.clone(),
        }
    }
}

/// How a collection class's logical size is read from its fields.
#[derive(Debug, Clone, Copy)]
enum Items {
    /// An `int` or `long` field (`size`, `elementCount`, `count`); `cells`: ConcurrentHashMap's
    /// counter cells, added to it under contention.
    Field {
        off: usize,
        ty: u8,
        cells: Option<usize>,
    },
    /// A field holding an `AtomicInteger`/`AtomicLong` (LinkedBlockingQueue's `count`).
    Boxed(usize),
    /// A field holding the collection that holds the items (HashSet's `map`, TreeSet's `m`).
    Via(usize),
    /// ArrayDeque: `elements`, `head`, `tail`.
    Ring {
        elements: usize,
        head: usize,
        tail: usize,
    },
    /// A field holding the array of items (CopyOnWriteArrayList's `array`).
    ArrayLen(usize),
}

/// A class with its instance layout flattened over its superclasses.
struct Shape {
    name: String,
    /// (name, basic type, offset in the instance's field bytes), the class's own fields first.
    fields: Vec<(String, u8, usize)>,
    /// Field bytes an instance record holds.
    data_len: usize,
    /// Shallow size in the JVM's memory.
    shallow: u64,
    items: Option<Items>,
    /// A `java.nio.DirectByteBuffer` (or a subclass).
    direct: Option<Direct>,
    /// A `java.lang.ref.Reference`: its `referent` does not keep the referent alive (weak, soft,
    /// phantom; a cleaner's buffer), so it is no edge of the graph.
    reference: bool,
}

/// Where a direct buffer's fields are: `capacity` (int), `cleaner` (set when the buffer owns its
/// memory: not a slice or a duplicate), `fd` (set for a mapped file).
#[derive(Debug, Clone, Copy)]
struct Direct {
    capacity: usize,
    cleaner: usize,
    fd: Option<usize>,
}

impl Shape {
    fn field(&self, name: &str) -> Option<(u8, usize)> {
        self.fields.iter().find(|f| f.0 == name).map(|f| (f.1, f.2))
    }
}

/// Classes whose subclasses hold items.
const COLLECTION_BASES: &[&str] = &[
    "java.util.AbstractMap",
    "java.util.AbstractCollection",
    "java.util.Dictionary",
    "java.util.concurrent.CopyOnWriteArrayList",
];

fn shapes(dump: &Dump<'_>) -> (Vec<Shape>, FxHashMap<u64, u32>) {
    let by_id: FxHashMap<u64, u32> = dump
        .classes
        .iter()
        .enumerate()
        .map(|(k, c)| (c.id, k as u32))
        .collect();
    let ids = dump.id_size;
    let shapes = dump
        .classes
        .iter()
        .map(|c| {
            let mut fields = Vec::new();
            let mut chain = Vec::new();
            let mut off = 0usize;
            let mut mem = 0u64;
            let mut cur = Some(c);
            // A hostile superclass chain may loop: HotSpot's are far shorter.
            for _ in 0..64 {
                let Some(k) = cur else { break };
                chain.push(dump.class_name(k.id));
                for &(name, t) in &k.fields {
                    let n = hprof::type_size(t, ids).unwrap_or(0);
                    fields.push((dump.string(name).unwrap_or_default(), t, off));
                    off += n;
                    mem += if t == T_OBJECT { 4 } else { n as u64 };
                }
                cur = by_id
                    .get(&k.super_id)
                    .and_then(|&s| dump.classes.get(s as usize));
            }
            let name = chain.first().cloned().unwrap_or_default();
            let mut shape = Shape {
                name,
                fields,
                data_len: off,
                shallow: (12 + mem + 7) & !7,
                items: None,
                direct: None,
                reference: chain.iter().any(|n| n == "java.lang.ref.Reference"),
            };
            if chain.iter().any(|n| COLLECTION_BASES.contains(&n.as_str())) {
                shape.items = items_rule(&shape);
            }
            if chain.iter().any(|n| n == "java.nio.DirectByteBuffer") {
                let int = |name| shape.field(name).filter(|f| f.0 == T_INT).map(|f| f.1);
                let obj = |name| shape.field(name).filter(|f| f.0 == T_OBJECT).map(|f| f.1);
                if let (Some(capacity), Some(cleaner)) = (int("capacity"), obj("cleaner")) {
                    shape.direct = Some(Direct {
                        capacity,
                        cleaner,
                        fd: obj("fd"),
                    });
                }
            }
            shape
        })
        .collect();
    (shapes, by_id)
}

fn items_rule(s: &Shape) -> Option<Items> {
    let prim = |name| s.field(name).filter(|f| f.0 == T_INT || f.0 == T_LONG);
    let obj = |name| s.field(name).filter(|f| f.0 == T_OBJECT).map(|f| f.1);
    if let (Some(elements), Some(head), Some(tail)) = (obj("elements"), prim("head"), prim("tail"))
    {
        return Some(Items::Ring {
            elements,
            head: head.1,
            tail: tail.1,
        });
    }
    for name in ["size", "elementCount", "count", "baseCount"] {
        if let Some((ty, off)) = prim(name) {
            return Some(Items::Field {
                off,
                ty,
                cells: obj("counterCells"),
            });
        }
    }
    if let Some(off) = obj("count").or_else(|| obj("size")) {
        return Some(Items::Boxed(off));
    }
    if let Some(off) = obj("map").or_else(|| obj("m")).or_else(|| obj("al")) {
        return Some(Items::Via(off));
    }
    obj("array").map(Items::ArrayLen)
}

/// id → object, by binary search over the ids sorted once (4 bytes per object).
struct Index<'d> {
    ids: &'d [u64],
    order: Vec<u32>,
}

impl<'d> Index<'d> {
    fn new(ids: &'d [u64]) -> Result<(Index<'d>, u64)> {
        budget::reserve(ids.len() * 4, "the HPROF id index", ids.len())?;
        let mut order: Vec<u32> = (0..ids.len() as u32).collect();
        order.sort_unstable_by_key(|&k| ids.get(k as usize).copied().unwrap_or(0));
        let dups = order
            .windows(2)
            .filter(|w| ids.get(w[0] as usize) == ids.get(w[1] as usize))
            .count() as u64;
        Ok((Index { ids, order }, dups))
    }

    fn get(&self, id: u64) -> Option<u32> {
        if id == 0 {
            return None;
        }
        let k = self
            .order
            .partition_point(|&o| self.ids.get(o as usize).copied().unwrap_or(0) < id);
        let o = *self.order.get(k)?;
        (self.ids.get(o as usize) == Some(&id)).then_some(o)
    }
}

/// The dump with its classes, types, index and graph.
struct Heap<'a, 'd> {
    dump: &'d Dump<'a>,
    shapes: Vec<Shape>,
    class_idx: FxHashMap<u64, u32>,
    index: Index<'d>,
    /// Per object: its class's index in `shapes` (instances and object arrays), or NONE.
    class: Vec<u32>,
}

impl Heap<'_, '_> {
    fn shape_of(&self, i: u32) -> Option<&Shape> {
        let c = *self.class.get(i as usize)?;
        self.shapes.get(c as usize)
    }

    fn kind(&self, i: u32) -> Option<ObjKind> {
        self.dump.objects.kind.get(i as usize).copied()
    }

    fn field_value(&self, i: u32, off: usize, ty: u8) -> Option<u64> {
        let n = hprof::type_size(ty, self.dump.id_size)?;
        hprof::read_value(self.dump.instance_fields(i as usize), off, n)
    }

    /// The objects instance `i` keeps alive, with the name of the field holding each (a
    /// reference object's `referent` is not one of them).
    fn instance_refs(&self, i: u32) -> impl Iterator<Item = (&str, u64)> + '_ {
        let data = self.dump.instance_fields(i as usize);
        let ids = self.dump.id_size;
        let shape = self.shape_of(i);
        let reference = shape.is_some_and(|s| s.reference);
        shape
            .map(|s| s.fields.as_slice())
            .unwrap_or(&[])
            .iter()
            .filter(|f| f.1 == T_OBJECT)
            .filter(move |f| !(reference && f.0 == "referent"))
            .filter_map(move |f| Some((f.0.as_str(), hprof::read_value(data, f.2, ids)?)))
            .filter(|&(_, v)| v != 0)
    }

    /// The logical size of container `i` (`None`: not a container).
    fn items(&self, i: u32, depth: u32) -> Option<u64> {
        match self.kind(i)? {
            ObjKind::ObjArray => Some(
                self.dump
                    .array_elements(i as usize)
                    .filter(|&e| e != 0)
                    .count() as u64,
            ),
            ObjKind::Instance => {
                let rule = self.shape_of(i)?.items?;
                let deref = |off: usize| {
                    self.field_value(i, off, T_OBJECT)
                        .and_then(|id| self.index.get(id))
                };
                match rule {
                    Items::Field { off, ty, cells } => {
                        let base = self.field_value(i, off, ty)?;
                        let base = if ty == T_INT {
                            i64::from(base as u32 as i32)
                        } else {
                            base as i64
                        };
                        let extra: i64 = cells.and_then(deref).map_or(0, |a| {
                            self.dump
                                .array_elements(a as usize)
                                .filter_map(|c| self.index.get(c))
                                .filter_map(|c| self.boxed(c))
                                .sum()
                        });
                        Some(base.saturating_add(extra).max(0) as u64)
                    }
                    Items::Boxed(off) => {
                        Some(deref(off).and_then(|b| self.boxed(b))?.max(0) as u64)
                    }
                    Items::Via(off) if depth < 3 => self.items(deref(off)?, depth + 1),
                    Items::Via(_) => None,
                    Items::Ring {
                        elements,
                        head,
                        tail,
                    } => {
                        let len = self.dump.array_length_of(deref(elements)? as usize);
                        let h = self.field_value(i, head, T_INT)? as u32 as u64;
                        let t = self.field_value(i, tail, T_INT)? as u32 as u64;
                        (len > 0 && h < len && t < len).then(|| (t + len - h) % len)
                    }
                    Items::ArrayLen(off) => Some(self.dump.array_length_of(deref(off)? as usize)),
                }
            }
            _ => None,
        }
    }

    /// The `value` of an AtomicInteger, AtomicLong or CounterCell.
    fn boxed(&self, i: u32) -> Option<i64> {
        let (ty, off) = self.shape_of(i)?.field("value")?;
        let v = self.field_value(i, off, ty)?;
        match ty {
            T_INT => Some(i64::from(v as u32 as i32)),
            T_LONG => Some(v as i64),
            _ => None,
        }
    }

    /// The display name of object `i`'s type.
    fn type_name(&self, i: u32) -> String {
        match self.kind(i) {
            Some(ObjKind::Class) => "java.lang.Class".into(),
            Some(ObjKind::PrimArray) => {
                Dump::prim_array_name(self.dump.class_of(i as usize).1).into()
            }
            _ => self
                .shape_of(i)
                .map_or_else(|| "?".into(), |s| s.name.clone()),
        }
    }

    /// How object `p` refers to `child`: `.field`, `[index]`, or a class's static `.FIELD`.
    fn step(&self, p: u32, child: u32) -> String {
        let Some(&cid) = self.dump.objects.id.get(child as usize) else {
            return ".?".into();
        };
        match self.kind(p) {
            Some(ObjKind::Class) => self
                .class_of_object(p)
                .and_then(|c| c.statics.iter().find(|s| s.1 == cid))
                .and_then(|s| self.dump.string(s.0))
                .map_or_else(|| ".?".into(), |n| format!(".{n}")),
            Some(ObjKind::ObjArray) => self
                .dump
                .array_elements(p as usize)
                .position(|e| e == cid)
                .map_or_else(|| "[?]".into(), |k| format!("[{k}]")),
            _ => self
                .instance_refs(p)
                .find(|r| r.1 == cid)
                .map_or_else(|| ".?".into(), |r| format!(".{}", r.0)),
        }
    }

    fn class_of_object(&self, p: u32) -> Option<&hprof::Class> {
        let id = self.dump.objects.id.get(p as usize)?;
        self.dump.classes.get(*self.class_idx.get(id)? as usize)
    }
}

/// Read one HPROF dump.
pub fn load(data: &[u8]) -> Result<JvmHeap> {
    let mut dump = Dump::parse(data)?;
    // The records' sizes serve the object table only: not held beside it.
    let record_sizes = std::mem::take(&mut dump.objects.size);
    let n = dump.objects.len();
    let mut notes = Vec::new();
    let (shapes, class_idx) = shapes(&dump);
    let (index, dups) = Index::new(&dump.objects.id)?;
    if dups > 0 {
        notes.push(format!(
            "{dups} object ids occur more than once in the dump (a damaged file): references to them reach one of them"
        ));
    }
    let class: Vec<u32> = (0..n)
        .map(|i| match dump.objects.kind.get(i) {
            Some(ObjKind::Instance | ObjKind::ObjArray) => {
                let (c, _) = dump.class_of(i);
                class_idx.get(&c).copied().unwrap_or(NONE)
            }
            _ => NONE,
        })
        .collect();
    let heap = Heap {
        dump: &dump,
        shapes,
        class_idx,
        index,
        class,
    };

    // The object table: sizes, and an instance whose record does not match its class's layout
    // counted at its class's size but never ranked.
    let mut objs = Objects::lean();
    // Type ids: one per class name (a class loaded twice counts once), then java.lang.Class,
    // the primitive arrays, and "?" for an object whose class the dump lacks.
    let mut type_ids: FxHashMap<String, u32> = FxHashMap::default();
    let mut type_names: Vec<String> = Vec::new();
    let mut intern = |name: String| {
        *type_ids.entry(name.clone()).or_insert_with(|| {
            type_names.push(name);
            type_names.len() as u32 - 1
        })
    };
    let class_type: Vec<u32> = heap.shapes.iter().map(|s| intern(s.name.clone())).collect();
    let class_class = intern("java.lang.Class".into());
    let prim_types: Vec<u32> = (0u8..12)
        .map(|t| intern(Dump::prim_array_name(t).into()))
        .collect();
    let unknown = intern("?".into());
    let mut mismatched = 0u64;
    for i in 0..n as u32 {
        let ty = match heap.kind(i) {
            Some(ObjKind::Class) => class_class,
            Some(ObjKind::PrimArray) => {
                let t = dump.class_of(i as usize).1;
                prim_types.get(usize::from(t)).copied().unwrap_or(unknown)
            }
            _ => heap
                .class
                .get(i as usize)
                .and_then(|&c| class_type.get(c as usize))
                .copied()
                .unwrap_or(unknown),
        };
        let id = objs.push(dump.objects.id.get(i as usize).copied().unwrap_or(0), ty);
        let size = record_sizes
            .get(i as usize)
            .map_or(0, |&units| u64::from(units) * 8);
        let (size, trusted) = match (heap.kind(i), heap.shape_of(i)) {
            (Some(ObjKind::Instance), Some(s)) => (
                s.shallow,
                s.data_len == dump.instance_fields(i as usize).len(),
            ),
            (Some(ObjKind::Instance), None) => (size, false),
            _ => (size, true),
        };
        mismatched += u64::from(!trusted);
        objs.set_size(id, size, trusted);
    }
    drop(record_sizes);
    if mismatched > 0 {
        notes.push(format!(
            "{mismatched} instances do not match their class's layout (a damaged dump, or a class the dump lacks): counted at their class's size, never ranked"
        ));
    }

    let (mut graph, dangling) = edges(&heap)?;
    if dangling > 0 {
        notes.push(format!(
            "{dangling} references point to objects the dump does not hold"
        ));
    }
    let roots = root_order(&heap);
    // A dump taken without a collection first (leakhunt's: the collection would need memory the
    // JVM near its limit does not have) holds garbage: it is left out, and its references with
    // it, or a dead copy of a table would share what the live one retains.
    let live = graph::reachable(&graph, n, &roots.0);
    let mut dead = (0u64, 0u64);
    for i in 0..n as u32 {
        if !live.get(i) {
            dead.0 += 1;
            dead.1 += objs.size(i);
            objs.set_size(i, 0, true);
        }
    }
    if dead.0 > 0 {
        budget::reserve(graph.edges.len() * 4, "the live references", n)?;
        graph = graph.keep_rows(n, |v| live.get(v));
        notes.push(format!(
            "{} unreachable objects ({}) left out: garbage not yet collected when the dump was taken",
            dead.0,
            crate::util::human_bytes(dead.1)
        ));
    }
    let (footprint, weights) = footprint(&heap, &graph, &live);
    let (retained, all_roots) = graph::retained_sizes_with(&graph, &objs, &roots.0, weights)?;

    // Containers: every collection and object array.
    let mut found: Vec<(u64, u32, u64, u64)> = Vec::new();
    for i in 0..n as u32 {
        if !objs.trusted(i) || !live.get(i) {
            continue;
        }
        if let Some(items) = heap.items(i, 0) {
            found.push((retained.of(i, &objs), i, items, retained.extra_of(i)));
        }
    }
    drop(retained);
    found.sort_unstable_by(|a, b| b.cmp(a));
    let mut to_name: Vec<(u64, u32, u64, u64)> =
        found.iter().take(CENSUS_CONTAINERS).copied().collect();
    to_name.extend(
        found
            .iter()
            .skip(CENSUS_CONTAINERS)
            .filter(|c| c.2 >= NAME_MIN_ITEMS)
            .take(MAX_NAMED)
            .copied(),
    );
    // And the largest holders of direct buffer memory, however few their items.
    let mut holders: Vec<(u64, u32, u64, u64)> = found
        .iter()
        .filter(|c| c.3 > 0 && c.2 < NAME_MIN_ITEMS)
        .copied()
        .collect();
    holders.sort_unstable_by_key(|h| std::cmp::Reverse(h.3));
    to_name.extend(holders.into_iter().take(CENSUS_CONTAINERS));
    drop(found);
    let tree = graph::bfs(&graph, n, &all_roots, roots.1);
    let statics = static_names(&heap);
    let mut containers: FxHashMap<String, Container> = FxHashMap::default();
    for (ret, i, items, native) in to_name {
        let (steps, root) = steps_to(&heap, &graph, &tree, i);
        let (path, referrers, from_class) = thread_local(&heap, &statics, &steps, root)
            .unwrap_or_else(|| name(&heap, &roots.2, &steps, root));
        let c = Container {
            type_name: heap.type_name(i),
            items,
            retained: ret,
            referrers,
            from_class,
            native,
        };
        // Two objects on one path (a path elided at MAX_STEPS): keep the larger.
        match containers.get(&path) {
            Some(old) if old.retained >= ret => {}
            _ => {
                containers.insert(path, c);
            }
        }
    }

    let mut types: Vec<TypeCount> = type_names
        .into_iter()
        .map(|name| TypeCount {
            name,
            count: 0,
            bytes: 0,
        })
        .collect();
    let mut total = 0u64;
    for i in (0..n as u32).filter(|&i| live.get(i)) {
        let size = objs.size(i);
        if let Some(t) = objs.ty(i).and_then(|t| types.get_mut(t as usize)) {
            t.count += 1;
            t.bytes += size;
        }
        total += size;
    }
    types.retain(|t| t.count > 0);
    types.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.name.cmp(&b.name)));
    if dump.skipped > 0 {
        notes.push(format!("{} records could not be read", dump.skipped));
    }
    Ok(JvmHeap {
        version: version(&heap),
        timestamp_ms: dump.timestamp_ms,
        notes,
        types,
        containers,
        objects: n as u64 - dead.0,
        bytes: total,
        footprint,
    })
}

/// The footprint outside the Java heap, and the native memory of each reachable direct buffer
/// that owns some (to be retained by whatever holds it).
fn footprint(
    heap: &Heap<'_, '_>,
    g: &Graph,
    live: &crate::heap::table::Bits,
) -> (Footprint, FxHashMap<u32, u64>) {
    let dump = heap.dump;
    let n = dump.objects.len() as u32;
    let loader_of = |c: u32| dump.classes.get(c as usize).map_or(0, |k| k.loader);
    // A loader lives while something reachable refers to it, to one of its classes, or is an
    // instance of one of its classes (the dump records no edge from an object to its class).
    let loaders: rustc_hash::FxHashSet<u64> = dump
        .classes
        .iter()
        .map(|c| c.loader)
        .filter(|&l| l != 0)
        .collect();
    let mut live_loaders: rustc_hash::FxHashSet<u64> = rustc_hash::FxHashSet::default();
    let mut weights: FxHashMap<u32, u64> = FxHashMap::default();
    let mut direct = TypeCount {
        name: "direct buffers".into(),
        ..TypeCount::default()
    };
    let mut mapped = TypeCount {
        name: "mapped buffers".into(),
        ..TypeCount::default()
    };
    for i in (0..n).filter(|&i| live.get(i)) {
        match heap.kind(i) {
            Some(ObjKind::Instance | ObjKind::ObjArray) => {}
            _ => continue,
        }
        if let Some(&c) = heap.class.get(i as usize) {
            live_loaders.insert(loader_of(c));
        }
        for &e in g.out(i) {
            let t = crate::heap::table::target(e);
            if heap.kind(t) == Some(ObjKind::Class) {
                if let Some(k) = heap.class_of_object(t) {
                    live_loaders.insert(k.loader);
                }
            } else if let Some(&id) = dump.objects.id.get(t as usize) {
                if loaders.contains(&id) {
                    live_loaders.insert(id);
                }
            }
        }
        let Some(d) = heap.shape_of(i).and_then(|s| s.direct) else {
            continue;
        };
        let owns = heap
            .field_value(i, d.cleaner, T_OBJECT)
            .is_some_and(|v| v != 0);
        let cap = heap
            .field_value(i, d.capacity, T_INT)
            .map_or(0, |v| u64::from(v as u32).min(i32::MAX as u64));
        let is_mapped =
            d.fd.and_then(|off| heap.field_value(i, off, T_OBJECT))
                .is_some_and(|v| v != 0);
        if !owns {
            continue;
        }
        let b = if is_mapped { &mut mapped } else { &mut direct };
        b.count += 1;
        b.bytes = b.bytes.saturating_add(cap);
        if !is_mapped && cap > 0 {
            weights.insert(i, cap);
        }
    }
    // Statics of classes refer to loaders too (`ClassLoaders.APP_LOADER`).
    for c in &dump.classes {
        for &(_, v) in &c.statics {
            if loaders.contains(&v) {
                live_loaders.insert(v);
            }
        }
    }
    live_loaders.remove(&0);

    // Classes by loader, for the bootstrap (0) and the live loaders.
    let mut by_loader: FxHashMap<u64, Vec<u64>> = FxHashMap::default();
    for c in &dump.classes {
        if c.loader == 0 || live_loaders.contains(&c.loader) {
            by_loader.entry(c.loader).or_default().push(c.id);
        }
    }
    let mut classes = 0u64;
    let mut groups: FxHashMap<String, (u64, u64, FxHashMap<String, u64>)> = FxHashMap::default();
    for (loader, ids) in &by_loader {
        classes += ids.len() as u64;
        let class = if *loader == 0 {
            "<bootstrap>".to_owned()
        } else {
            heap.index
                .get(*loader)
                .map_or_else(|| "?".to_owned(), |o| heap.type_name(o))
        };
        let g = groups.entry(class).or_default();
        g.0 += 1;
        g.1 += ids.len() as u64;
        // Per-name counts only where a loader is one of many: the bootstrap's thousands of
        // classes are each defined once.
        if *loader != 0 {
            for &id in ids {
                *g.2.entry(dump.class_name(id)).or_default() += 1;
            }
        }
    }
    let mut loaders: Vec<LoaderGroup> = groups
        .into_iter()
        .map(|(class, (loaders, classes, names))| LoaderGroup {
            class,
            loaders,
            classes,
            most_defined: names
                .into_iter()
                .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0))),
        })
        .collect();
    loaders.sort_by(|a, b| {
        b.classes
            .cmp(&a.classes)
            .then_with(|| a.class.cmp(&b.class))
    });

    let mut threads: FxHashMap<String, u64> = FxHashMap::default();
    let mut seen = rustc_hash::FxHashSet::default();
    for &(id, k) in &dump.roots {
        if k == RootKind::Thread && seen.insert(id) {
            if let Some(o) = heap.index.get(id) {
                *threads.entry(heap.type_name(o)).or_default() += 1;
            }
        }
    }
    let mut threads: Vec<TypeCount> = threads
        .into_iter()
        .map(|(name, count)| TypeCount {
            name,
            count,
            bytes: 0,
        })
        .collect();
    threads.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.name.cmp(&b.name)));
    (
        Footprint {
            classes,
            loaders,
            threads,
            direct,
            mapped,
        },
        weights,
    )
}

/// The reference graph: statics of classes, reference fields of instances, elements of object
/// arrays; and how many references point outside the dump.
fn edges(heap: &Heap<'_, '_>) -> Result<(Graph, u64)> {
    let n = heap.dump.objects.len();
    let mut rows = Rows::default();
    let mut dangling = 0u64;
    budget::reserve(n * 4, "the HPROF reference rows", n)?;
    rows.starts.reserve(n + 1);
    let mut push = |rows: &mut Rows, id: u64, k: EdgeKind| -> Result<()> {
        match heap.index.get(id) {
            Some(t) => {
                if rows.edges.len() >= MAX_EDGES {
                    return Err(Error::Malformed {
                        offset: 0,
                        what: format!("more than {MAX_EDGES} references"),
                    });
                }
                if rows.edges.len() == rows.edges.capacity() {
                    let more = rows.edges.capacity().max(1 << 16) * 4;
                    budget::reserve(more, "the HPROF references", n)?;
                }
                rows.edges.push(pack(t, k));
            }
            None => dangling += 1,
        }
        Ok(())
    };
    for i in 0..n as u32 {
        rows.next_row();
        match heap.kind(i) {
            Some(ObjKind::Class) => {
                if let Some(c) = heap.class_of_object(i) {
                    for &(_, v) in &c.statics {
                        push(&mut rows, v, EdgeKind::None)?;
                    }
                }
            }
            Some(ObjKind::Instance) => {
                let refs: Vec<u64> = heap.instance_refs(i).map(|r| r.1).collect();
                for v in refs {
                    push(&mut rows, v, EdgeKind::None)?;
                }
            }
            Some(ObjKind::ObjArray) => {
                for v in heap.dump.array_elements(i as usize).filter(|&v| v != 0) {
                    push(&mut rows, v, EdgeKind::Item)?;
                }
            }
            _ => {}
        }
    }
    Ok((rows.finish(n), dangling))
}

/// The roots for naming and retained sizes: every class (the application's before the JDK's,
/// so that a tie names the application's path), then the other GC roots; how many are classes
/// (the depth-0 roots of the naming tree); and each root's kind.
fn root_order(heap: &Heap<'_, '_>) -> (Vec<u32>, usize, FxHashMap<u32, RootKind>) {
    let jdk = |name: &str| {
        ["java.", "javax.", "jdk.", "sun.", "com.sun."]
            .iter()
            .any(|p| name.starts_with(p))
    };
    let mut classes: Vec<(bool, String, u32)> = heap
        .dump
        .classes
        .iter()
        .filter_map(|c| {
            let i = heap.index.get(c.id)?;
            let name = heap.dump.class_name(c.id);
            Some((jdk(&name), name, i))
        })
        .collect();
    classes.sort();
    let mut kinds: FxHashMap<u32, RootKind> = FxHashMap::default();
    for &(id, k) in &heap.dump.roots {
        if let Some(i) = heap.index.get(id) {
            kinds.entry(i).or_insert(k);
        }
    }
    let mut order: Vec<u32> = classes.iter().map(|c| c.2).collect();
    let mut others: Vec<u32> = kinds
        .keys()
        .copied()
        .filter(|&i| heap.kind(i) != Some(ObjKind::Class))
        .collect();
    others.sort_unstable();
    order.extend(others);
    (order, classes.len(), kinds)
}

/// `Class.FIELD` of every object a class's static field holds.
fn static_names(heap: &Heap<'_, '_>) -> FxHashMap<u64, String> {
    let mut out = FxHashMap::default();
    for c in &heap.dump.classes {
        for &(field, v) in &c.statics {
            out.entry(v).or_insert_with(|| {
                format!(
                    "{}.{}",
                    heap.dump.class_name(c.id),
                    heap.dump.string(field).unwrap_or_else(|| "?".into())
                )
            });
        }
    }
    out
}

/// The steps from the root of the breadth-first tree down to `i`: (how, object), outermost
/// first; and the root.
fn steps_to(heap: &Heap<'_, '_>, g: &Graph, tree: &[u32], i: u32) -> (Vec<(String, u32)>, u32) {
    let mut steps: Vec<(String, u32)> = Vec::new();
    let mut v = i;
    let mut guard = 0usize;
    while let Some(&pos) = tree.get(v as usize) {
        if pos == NONE || guard > 1 << 20 {
            break;
        }
        guard += 1;
        let Some(p) = g.source_of(pos as usize) else {
            break;
        };
        steps.push((heap.step(p, v), v));
        v = p;
    }
    steps.reverse();
    (steps, v)
}

/// A collection held as the value of a static `ThreadLocal` in some thread (`Thread.threadLocals`
/// → its map's table → an entry's `value`): named by the ThreadLocal, as a Java engineer knows it
/// (`com.shop.Request.SCRATCH`), not by the thread's internals; it lives as long as its thread, and a
/// pool's threads live as long as the service, so it counts as reached from that class.
fn thread_local(
    heap: &Heap<'_, '_>,
    statics: &FxHashMap<u64, String>,
    steps: &[(String, u32)],
    root: u32,
) -> Option<(String, Vec<String>, bool)> {
    let t = steps.iter().position(|(h, _)| h == ".threadLocals")?;
    let k = steps
        .iter()
        .rposition(|(how, obj)| how == ".value" && heap.type_name(*obj) != "?")?;
    let entry = steps.get(k.checked_sub(1)?)?.1;
    if !heap.type_name(entry).ends_with("ThreadLocalMap$Entry") {
        return None;
    }
    let (ty, off) = heap.shape_of(entry)?.field("referent")?;
    let tl = heap.field_value(entry, off, ty)?;
    let tl_name = statics.get(&tl)?;
    let thread = match t.checked_sub(1) {
        Some(p) => steps.get(p)?.1,
        None => root,
    };
    let value = steps.get(k)?.1;
    let thread_type = heap.type_name(thread);
    let mut path = format!("{tl_name}<value in a {thread_type}>");
    let (class, field) = tl_name.rsplit_once('.')?;
    let mut referrers = vec![
        format!("class {class}"),
        format!(
            "static {field} ({})",
            heap.index
                .get(tl)
                .map_or_else(|| "java.lang.ThreadLocal".into(), |o| heap.type_name(o))
        ),
        format!(
            "its value in a thread of class {thread_type} ({})",
            heap.type_name(value)
        ),
    ];
    for (how, obj) in steps.iter().skip(k + 1) {
        path.push_str(how);
        referrers.push(format!(
            "{} ({})",
            how.trim_start_matches('.'),
            heap.type_name(*obj)
        ));
    }
    Some((path, referrers, true))
}

/// The path of an object from `root` by its `steps` in the breadth-first tree, its referrers
/// (outermost first), and whether a class is that root.
fn name(
    heap: &Heap<'_, '_>,
    kinds: &FxHashMap<u32, RootKind>,
    steps: &[(String, u32)],
    root: u32,
) -> (String, Vec<String>, bool) {
    let from_class = heap.kind(root) == Some(ObjKind::Class);
    let (mut path, first) = if from_class {
        let name = heap
            .class_of_object(root)
            .map(|c| heap.dump.class_name(c.id))
            .unwrap_or_else(|| "?".into());
        (name.clone(), format!("class {name}"))
    } else {
        let what = match kinds.get(&root) {
            Some(RootKind::Thread) => "a thread",
            Some(RootKind::JniGlobal) => "a JNI global reference",
            Some(RootKind::Stack) => "a thread's stack",
            Some(RootKind::Monitor) => "a held monitor",
            Some(RootKind::Class) => "a system class",
            _ => "an unreferenced object",
        };
        (
            format!("<{} held by {what}>", heap.type_name(root)),
            format!("{} (GC root: {what})", heap.type_name(root)),
        )
    };
    let mut referrers = vec![first];
    let elide = steps.len() > MAX_STEPS;
    for (k, (step, obj)) in steps.iter().enumerate() {
        if elide && k == MAX_STEPS / 2 {
            path.push_str(&format!("…{} steps…", steps.len() - MAX_STEPS));
            referrers.push(format!("… {} more …", steps.len() - MAX_STEPS));
        }
        if elide && k >= MAX_STEPS / 2 && k < steps.len() - MAX_STEPS / 2 {
            continue;
        }
        path.push_str(step);
        let label = if k == 0 && from_class {
            format!(
                "static {} ({})",
                step.trim_start_matches('.'),
                heap.type_name(*obj)
            )
        } else {
            format!(
                "{} ({})",
                step.trim_start_matches('.'),
                heap.type_name(*obj)
            )
        };
        referrers.push(label);
    }
    (path, referrers, from_class)
}

/// `java.lang.VersionProps.java_version`, a JDK constant (never user data): its Latin-1 bytes,
/// accepted only when they look like a version.
fn version(heap: &Heap<'_, '_>) -> Option<String> {
    let c = heap
        .dump
        .classes
        .iter()
        .find(|c| heap.dump.class_name(c.id) == "java.lang.VersionProps")?;
    let s = c
        .statics
        .iter()
        .find(|s| heap.dump.string(s.0).as_deref() == Some("java_version"))?;
    let string = heap.index.get(s.1)?;
    let (_, value) = heap.instance_refs(string).find(|r| r.0 == "value")?;
    let bytes = heap.index.get(value)?;
    let text = heap.dump.prim_array_bytes(bytes as usize)?;
    let ok = !text.is_empty()
        && text.len() <= 32
        && text
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b".+-_".contains(b));
    ok.then(|| String::from_utf8_lossy(text).into_owned())
}

/// What a gzip file starts with.
pub(crate) const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// An HPROF file mapped read-only; a zstd- or gzip-compressed one is decompressed to a private temporary
/// file first, as cores are.
pub struct HprofFile {
    map: memmap2::Mmap,
    _decompressed: Option<tempfile::NamedTempFile>,
}

impl HprofFile {
    /// `Ok(None)`: the file is not an HPROF dump (an ELF core, say).
    pub fn open(path: &std::path::Path) -> Result<Option<HprofFile>, crate::image::Error> {
        use std::io::{Seek, SeekFrom};
        let io = |source| crate::image::Error::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(io)?;
        let mut magic = [0u8; 19];
        let n = crate::image::read_up_to(&mut file, &mut magic).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        let mut decompressed = None;
        if n >= 4 && magic[..4] == crate::image::ZSTD_MAGIC {
            let mut head = [0u8; 19];
            let peek = zstd::stream::read::Decoder::new(&mut file)
                .and_then(|mut d| std::io::Read::read_exact(&mut d, &mut head));
            file.seek(SeekFrom::Start(0)).map_err(io)?;
            if peek.is_err() || !is_hprof(&head) {
                return Ok(None);
            }
            let tmp = crate::image::decompress_to_temp(&mut file, path)?;
            file = tmp.reopen().map_err(io)?;
            decompressed = Some(tmp);
        } else if n >= 2 && magic[..2] == GZIP_MAGIC {
            // HotSpot 15+ writes gzip members of its own when asked to compress.
            let mut head = [0u8; 19];
            let peek = std::io::Read::read_exact(
                &mut flate2::read::MultiGzDecoder::new(&mut file),
                &mut head,
            );
            file.seek(SeekFrom::Start(0)).map_err(io)?;
            if peek.is_err() || !is_hprof(&head) {
                return Ok(None);
            }
            let tmp = crate::image::decompress_to_temp_with(&mut file, path, |f| {
                Ok(Box::new(flate2::read::MultiGzDecoder::new(f)))
            })?;
            file = tmp.reopen().map_err(io)?;
            decompressed = Some(tmp);
        } else if !is_hprof(magic.get(..n).unwrap_or(&[])) {
            return Ok(None);
        }
        // SAFETY: a read-only private mapping. Dumps are written once by the JVM (or copied out
        // by the agent) and not modified afterwards; a concurrent truncation would fault.
        #[allow(unsafe_code)]
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Ok(Some(HprofFile {
            map,
            _decompressed: decompressed,
        }))
    }

    pub fn bytes(&self) -> &[u8] {
        &self.map
    }
}
