//! Walking the object graph: every GC-tracked object from the generation lists, every other object
//! (str, int, float, bytes, untracked tuples and dicts) through the references of the ones found.
//! Precise edges for the types whose layout we know, a conservative word scan for the others.
//!
//! Every size is checked against what the object's type and memory allow: a count read from a
//! field that is not a count (a generator has none since 3.11), or one that would run past the
//! object's mapping, marks the size untrusted instead of inflating the census.

mod dict;
mod objects;
mod types;

use std::rc::Rc;

use rustc_hash::FxHashMap;

use self::dict::read_key_names;
pub use self::dict::{read_ascii, read_dict};
use super::layout::Layout;
use super::mem::{le64, plausible, Mem};
use crate::budget::{self, OverBudget};
pub use crate::heap::table::MAX_OBJECTS;
use crate::heap::table::{pack, AddrIndex, EdgeKind, Graph, Objects, Rows, MAX_EDGES};

/// Cap on items read from one container.
const MAX_ITEMS: u64 = 1 << 26;
/// Cap on words scanned conservatively in one object.
const MAX_SCAN_WORDS: u64 = 2048;
/// Locals plus stack slots of one frame: CPython's own limits are far below.
const MAX_FRAME_SLOTS: u64 = 1 << 16;
/// How often (in objects) the walk checks the memory budget.
const BUDGET_EVERY: usize = 1 << 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Other,
    Type,
    List,
    Tuple,
    Dict,
    Set,
    Deque,
    Str,
    Int,
    Bytes,
    ByteArray,
    Float,
    Module,
    Cell,
    Instance,
    LruCache,
    Function,
    /// generator, coroutine, async_generator: since 3.11 they embed their frame.
    Generator,
    /// A frame object: since 3.11 it embeds its interpreter frame too.
    Frame,
    /// `re.Match`: `ob_size` is twice its `groups` field.
    Match,
    /// `weakref.ref` and the proxies: the referent is not owned, only the callback is.
    WeakRef,
}

impl Kind {
    /// Containers that can accumulate items.
    pub fn is_container(self) -> bool {
        matches!(self, Kind::List | Kind::Dict | Kind::Set | Kind::Deque)
    }
}

#[derive(Debug, Clone)]
pub struct TypeInfo {
    pub name: String,
    pub shape: Shape,
}

/// What parsing an object of a type needs: copied per object, unlike the name.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub kind: Kind,
    pub basicsize: u64,
    pub itemsize: u64,
    pub flags: u64,
    pub dictoffset: i64,
    /// `tp_weaklistoffset`: the object's list of weak references to it, which it does not own.
    pub weaklistoffset: i64,
    pub heap: bool,
    pub cached_keys: u64,
    /// `tp_basicsize` of the nearest static (C) base: heap-type slots live beyond it.
    pub static_base_size: u64,
    /// An `OrderedDict` (or subclass): its linked list costs about 40 bytes an item.
    pub ordered: bool,
}

/// Counters of what could not be read; turned into notes.
#[derive(Debug, Default, Clone)]
pub struct Damage {
    pub gc_bad_objects: u64,
    pub gc_broken_lists: u64,
    pub bad_contents: u64,
    pub dangling: u64,
    /// Objects whose size failed validation: counted, but kept out of retained sizes.
    pub untrusted_sizes: u64,
    pub capped: bool,
}

pub struct Walk {
    pub types: Vec<TypeInfo>,
    pub objs: Objects,
    pub graph: Graph,
    pub damage: Damage,
}

impl Walk {
    pub fn type_of(&self, i: u32) -> Option<&TypeInfo> {
        self.objs.ty(i).and_then(|t| self.types.get(t as usize))
    }

    pub fn kind(&self, i: u32) -> Kind {
        self.type_of(i).map_or(Kind::Other, |t| t.shape.kind)
    }
}

pub struct Walker<'a> {
    mem: Mem<'a>,
    l: Layout,
    type_type: u64,
    types: Vec<TypeInfo>,
    type_index: FxHashMap<u64, Option<u32>>,
    /// The type object looked up last and its index.
    last_type: Option<(u64, u32)>,
    objs: Objects,
    index: AddrIndex,
    graph: Rows,
    shared_keys: FxHashMap<u64, Rc<[u64]>>,
    damage: Damage,
    scratch: Vec<(u64, u64)>,
    /// The mapping last read from, borrowed whole from the image: most reads hit it.
    span: (u64, u64, &'a [u8]),
}

impl<'a> Walker<'a> {
    /// `len` bytes at `addr`, from the cached mapping when possible.
    fn rd(&mut self, addr: u64, len: usize) -> Option<std::borrow::Cow<'a, [u8]>> {
        let (s, e, b) = self.span;
        let end = addr.checked_add(len as u64)?;
        if addr >= s && end <= e {
            let o = (addr - s) as usize;
            return b.get(o..o + len).map(std::borrow::Cow::Borrowed);
        }
        if let Some(m) = self.mem.img.mapping_at(addr) {
            let (ms, me) = (m.start, m.end);
            if let Some(whole) = usize::try_from(me - ms)
                .ok()
                .and_then(|n| self.mem.img.slice(ms, n))
            {
                self.span = (ms, me, whole);
                if end <= me {
                    let o = (addr - ms) as usize;
                    return whole.get(o..o + len).map(std::borrow::Cow::Borrowed);
                }
            }
        }
        self.mem.bytes(addr, len)
    }

    fn rd_u64(&mut self, addr: u64) -> Option<u64> {
        self.rd(addr, 8).map(|b| le64(&b))
    }

    fn rd_words(&mut self, addr: u64, n: usize) -> Option<Words<'a>> {
        self.rd(addr, n.checked_mul(8)?).map(Words)
    }

    /// Bytes from `addr` to the end of its mapping (0 when unmapped).
    fn room(&mut self, addr: u64) -> u64 {
        let (s, e, _) = self.span;
        if addr >= s && addr < e {
            return e - addr;
        }
        // Static data may run on into the next mapping (a segment split by its protections).
        let mut end = addr;
        for _ in 0..4 {
            match self.mem.img.mapping_at(end) {
                Some(m) if m.end > end => end = m.end,
                _ => break,
            }
        }
        end - addr
    }

    pub fn new(mem: Mem<'a>, l: Layout, type_type: u64) -> Walker<'a> {
        Walker {
            mem,
            l,
            type_type,
            types: Vec::new(),
            type_index: FxHashMap::default(),
            last_type: None,
            objs: Objects::default(),
            index: AddrIndex::default(),
            graph: Rows::default(),
            shared_keys: FxHashMap::default(),
            damage: Damage::default(),
            scratch: Vec::new(),
            span: (0, 0, &[]),
        }
    }

    fn table_bytes(&self) -> usize {
        self.objs.heap_bytes() + self.graph.heap_bytes() + self.index.heap_bytes()
    }

    /// Walk every generation list, then everything they reference.
    pub fn run(mut self, gc_heads: &[u64], extra_roots: &[u64]) -> Result<Walk, OverBudget> {
        for &h in gc_heads {
            self.walk_gc_list(h);
        }
        for &r in extra_roots {
            self.intern(r);
        }
        let mut next = 0usize;
        while next < self.objs.len() {
            self.graph.next_row();
            self.parse(next as u32);
            next += 1;
            if self.graph.edges.len() > MAX_EDGES {
                self.damage.capped = true;
                break;
            }
            if next % BUDGET_EVERY == 0 {
                let held = self.table_bytes();
                // Room for the tables' next doubling and the 4 bytes per object of what follows.
                let ahead = self.objs.len() * 8;
                budget::check(ahead, held, "walking the heap", self.objs.len())?;
            }
        }
        // The address index is only needed while objects are being found.
        drop(self.index);
        let graph = self.graph.finish(self.objs.len());
        let mut objs = self.objs;
        objs.keep_items_of(Rc::clone(&graph.rows));
        Ok(Walk {
            types: self.types,
            objs,
            graph,
            damage: self.damage,
        })
    }

    fn walk_gc_list(&mut self, head: u64) {
        // Forward along _gc_next; if the chain breaks, recover the rest backward along _gc_prev.
        let mut cur = self.rd_u64(head).map_or(0, |n| n & !1);
        let mut steps = 0usize;
        let mut broken = false;
        while cur != head {
            if !plausible(cur) || steps >= MAX_OBJECTS {
                broken = true;
                break;
            }
            if self.index.get(cur + 16).is_some() {
                // Already seen: a cycle not through the head (corruption) or another list's object.
                broken = true;
                break;
            }
            if self.intern(cur + 16).is_none() {
                self.damage.gc_bad_objects += 1;
            }
            // NEXT_MASK_UNREACHABLE is set on objects a running collection found unreachable.
            match self.rd_u64(cur) {
                Some(n) => cur = n & !1,
                None => {
                    broken = true;
                    break;
                }
            }
            steps += 1;
        }
        if broken {
            self.damage.gc_broken_lists += 1;
            let mut cur = self.rd_u64(head + 8).map(|p| p & !3).unwrap_or(0);
            let mut steps = 0usize;
            while cur != head && plausible(cur) && steps < MAX_OBJECTS {
                if self.index.get(cur + 16).is_some() {
                    break;
                }
                if self.intern(cur + 16).is_none() {
                    self.damage.gc_bad_objects += 1;
                }
                match self.rd_u64(cur + 8) {
                    Some(p) => cur = p & !3,
                    None => break,
                }
                steps += 1;
            }
        }
    }

    /// Index of the object at `addr`, adding it when it looks like an object.
    fn intern(&mut self, addr: u64) -> Option<u32> {
        if !plausible(addr) {
            return None;
        }
        if let Some(i) = self.index.get(addr) {
            return Some(i);
        }
        if self.objs.len() >= MAX_OBJECTS {
            self.damage.capped = true;
            return None;
        }
        let t = self.rd_u64(addr + 8)?;
        let ty = self.type_info(t)?;
        let i = self.objs.push(addr, ty);
        self.index.insert(addr, i);
        Some(i)
    }

    fn edge(&mut self, target: u64, kind: EdgeKind) -> Option<u32> {
        let t = self.intern(target)?;
        self.graph.edges.push(pack(t, kind));
        Some(t)
    }

    /// Precise edge: a miss is a dangling reference worth counting.
    fn pedge(&mut self, target: u64, kind: EdgeKind) -> Option<u32> {
        if target == 0 {
            return None;
        }
        let r = self.edge(target, kind);
        if r.is_none() {
            self.damage.dangling += 1;
        }
        r
    }

    /// A dict entry: the key's edge, then the value's, labelled by that key when it was found.
    fn entry_edges(&mut self, key: u64, value: u64, key_found: bool) {
        let k = key_found
            .then(|| self.pedge(key, EdgeKind::KeyRef))
            .flatten();
        let kind = if k.is_some() {
            EdgeKind::Value
        } else {
            EdgeKind::None
        };
        self.pedge(value, kind);
    }

    /// Words in `[from, to)` of the object that point to objects, but the word at offset `skip`
    /// (the object's weak-reference list: the weak references to it are not its own).
    fn conservative(&mut self, o: u64, from: u64, to: u64, skip: i64) {
        if to <= from {
            return;
        }
        let n = ((to - from) / 8).min(MAX_SCAN_WORDS) as usize;
        let Some(ws) = self.rd_words(o + from, n) else {
            return;
        };
        for (k, w) in ws.iter().enumerate() {
            if skip > 0 && from + 8 * k as u64 == skip as u64 {
                continue;
            }
            if w != o && plausible(w) && self.mem.readable(w) {
                self.edge(w, EdgeKind::None);
            }
        }
    }
}

/// Words borrowed from the image (no copy for core files).
struct Words<'a>(std::borrow::Cow<'a, [u8]>);

impl Words<'_> {
    fn get(&self, i: usize) -> Option<u64> {
        let o = i.checked_mul(8)?;
        self.0.get(o..o.checked_add(8)?).map(le64)
    }

    fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.0.chunks_exact(8).map(le64)
    }
}
