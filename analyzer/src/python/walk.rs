//! Walking the object graph: every GC-tracked object from the generation lists, every other object
//! (str, int, float, bytes, untracked tuples and dicts) through the references of the ones found.
//! Precise edges for the types whose layout we know, a conservative word scan for the others.
//!
//! Every size is checked against what the object's type and memory allow: a count read from a
//! field that is not a count (a generator has none since 3.11), or one that would run past the
//! object's mapping, marks the size untrusted instead of inflating the census.

use std::rc::Rc;

use rustc_hash::FxHashMap;

use super::layout::{flags, DictKeys, InstanceDict, Layout};
use super::mem::{byte, le64, plausible, u32_at, word, Mem};
pub use super::table::MAX_OBJECTS;
use super::table::{pack, AddrIndex, EdgeKind, Graph, Objects, MAX_EDGES};
use crate::budget::{self, OverBudget};

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
    graph: Graph,
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
            graph: Graph::default(),
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
            self.graph.starts.push(self.graph.edges.len() as u32);
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
        while self.graph.starts.len() <= self.objs.len() {
            self.graph.starts.push(self.graph.edges.len() as u32);
        }
        // The address index is only needed while objects are being found.
        drop(self.index);
        self.graph.starts.shrink_to_fit();
        self.graph.edges.shrink_to_fit();
        Ok(Walk {
            types: self.types,
            objs: self.objs,
            graph: self.graph,
            damage: self.damage,
        })
    }

    fn walk_gc_list(&mut self, head: u64) {
        // Forward along _gc_next; if the chain breaks, recover the rest backward along _gc_prev.
        let mut cur = self.rd_u64(head).unwrap_or(0);
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
            match self.rd_u64(cur) {
                Some(n) => cur = n,
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

    /// Words in `[from, to)` of the object that point to objects.
    fn conservative(&mut self, o: u64, from: u64, to: u64) {
        if to <= from {
            return;
        }
        let n = ((to - from) / 8).min(MAX_SCAN_WORDS) as usize;
        let Some(ws) = self.rd_words(o + from, n) else {
            return;
        };
        for w in ws.iter() {
            if w != o && plausible(w) && self.mem.readable(w) {
                self.edge(w, EdgeKind::None);
            }
        }
    }

    // ---- types ----

    fn type_info(&mut self, t: u64) -> Option<u32> {
        // Objects found together are mostly of one type (a list's tuples, their strs).
        if let Some((lt, i)) = self.last_type {
            if lt == t {
                return Some(i);
            }
        }
        if let Some(&r) = self.type_index.get(&t) {
            if let Some(i) = r {
                self.last_type = Some((t, i));
            }
            return r;
        }
        // Insert a provisional miss first: protects against metatype cycles in corrupt data.
        self.type_index.insert(t, None);
        let r = self.read_type(t, 0).map(|ti| {
            self.types.push(ti);
            (self.types.len() - 1) as u32
        });
        self.type_index.insert(t, r);
        r
    }

    fn is_type_object(&mut self, t: u64, depth: u32) -> bool {
        if t == self.type_type {
            return true;
        }
        if depth > 4 || !plausible(t) {
            return false;
        }
        let Some(meta) = self.rd_u64(t + 8).filter(|&m| plausible(m)) else {
            return false;
        };
        let meta_flags = self.rd_u64(meta + self.l.tp_flags).unwrap_or(0);
        meta_flags & flags::TYPE_SUBCLASS != 0 && self.is_type_object(meta, depth + 1)
    }

    fn read_type(&mut self, t: u64, _depth: u32) -> Option<TypeInfo> {
        if !plausible(t) || !self.is_type_object(t, 0) {
            return None;
        }
        let l = self.l;
        let b = self.rd(t, (l.tp_mro + 8) as usize)?;
        let name_ptr = word(&b, l.tp_name);
        let basicsize = word(&b, l.tp_basicsize);
        let itemsize = word(&b, l.tp_itemsize);
        let tflags = word(&b, l.tp_flags);
        let dictoffset = word(&b, l.tp_dictoffset) as i64;
        let tp_dict = word(&b, l.tp_dict);
        drop(b);
        if !(16..=(1 << 20)).contains(&basicsize) || itemsize > (1 << 16) {
            return None;
        }
        let cname = self.mem.cstr(name_ptr, 256)?;
        if cname.is_empty() || !cname.bytes().all(|c| (0x20..0x7f).contains(&c)) {
            return None;
        }
        let heap = tflags & flags::HEAPTYPE != 0;
        let (mut name, mut cached_keys) = (cname.clone(), 0);
        if heap {
            cached_keys = self.rd_u64(t + l.ht_cached_keys).unwrap_or(0);
            let qual = self
                .mem
                .u64(t + l.ht_qualname)
                .and_then(|q| self.read_str(q, 200))
                .unwrap_or_else(|| cname.clone());
            let module = self.dict_get_str(tp_dict, "__module__");
            name = match module.as_deref() {
                Some("builtins") | None => qual,
                Some(m) => format!("{m}.{qual}"),
            };
        }
        // Nearest base with a known layout (by `tp_name`: since 3.10 some C types such as
        // `functools._lru_cache_wrapper` and `collections.deque` are heap types), else the nearest
        // static base.
        let (mut base, mut base_name, mut base_size) = (t, String::new(), 16);
        let mut known = None;
        let mut static_found = false;
        for _ in 0..32 {
            let bflags = self.rd_u64(base + l.tp_flags).unwrap_or(0);
            let bname = self
                .mem
                .u64(base + l.tp_name)
                .and_then(|p| self.mem.cstr(p, 256))
                .unwrap_or_default();
            let bsize = self.rd_u64(base + l.tp_basicsize).unwrap_or(16);
            let k = match bname.as_str() {
                "set" | "frozenset" => Some(Kind::Set),
                "collections.deque" => Some(Kind::Deque),
                "bytearray" => Some(Kind::ByteArray),
                "float" => Some(Kind::Float),
                "module" => Some(Kind::Module),
                "cell" => Some(Kind::Cell),
                "function" => Some(Kind::Function),
                "functools._lru_cache_wrapper" => Some(Kind::LruCache),
                "generator" | "coroutine" | "async_generator" => Some(Kind::Generator),
                "frame" => Some(Kind::Frame),
                "re.Match" | "_sre.SRE_Match" => Some(Kind::Match),
                "dict" | "list" | "tuple" | "str" | "int" | "bytes" | "type" => Some(Kind::Other),
                _ => None,
            };
            if k.is_some() || (bflags & flags::HEAPTYPE == 0 && !static_found) {
                base_name = bname;
                base_size = bsize;
                static_found = true;
                if k.is_some() {
                    known = k;
                    break;
                }
            }
            if bflags & flags::HEAPTYPE == 0 {
                break;
            }
            match self.rd_u64(base + l.tp_base) {
                Some(b) if plausible(b) => base = b,
                _ => break,
            }
        }
        let kind = if tflags & flags::TYPE_SUBCLASS != 0 {
            Kind::Type
        } else if tflags & flags::LIST_SUBCLASS != 0 {
            Kind::List
        } else if tflags & flags::TUPLE_SUBCLASS != 0 {
            Kind::Tuple
        } else if tflags & flags::DICT_SUBCLASS != 0 {
            Kind::Dict
        } else if tflags & flags::UNICODE_SUBCLASS != 0 {
            Kind::Str
        } else if tflags & flags::LONG_SUBCLASS != 0 {
            Kind::Int
        } else if tflags & flags::BYTES_SUBCLASS != 0 {
            Kind::Bytes
        } else {
            match known {
                Some(Kind::Other) | None if heap && base_name == "object" => Kind::Instance,
                Some(k) => k,
                None => Kind::Other,
            }
        };
        Some(TypeInfo {
            name,
            shape: Shape {
                kind,
                basicsize,
                itemsize,
                flags: tflags,
                dictoffset,
                heap,
                cached_keys,
                static_base_size: base_size.min(basicsize),
                ordered: base_name.contains("OrderedDict"),
            },
        })
    }

    // ---- strings and dicts (reading only, no interning) ----

    /// Content of a compact ASCII `str` of at most `max` characters.
    pub fn read_str(&self, s: u64, max: u64) -> Option<String> {
        read_ascii(self.mem, &self.l, s, max)
    }

    /// `d[key]` where `d` is a dict with str keys, as a string.
    fn dict_get_str(&mut self, d: u64, key: &str) -> Option<String> {
        if !plausible(d) {
            return None;
        }
        let mut entries = std::mem::take(&mut self.scratch);
        entries.clear();
        let r = read_dict(self.mem, &self.l, d, &mut entries, 1 << 12)
            .and_then(|_| {
                entries
                    .iter()
                    .find_map(|&(k, v)| (self.read_str(k, 64).as_deref() == Some(key)).then_some(v))
            })
            .and_then(|v| self.read_str(v, 200));
        self.scratch = entries;
        r
    }

    fn shared_keys(&mut self, keys: u64) -> Rc<[u64]> {
        if let Some(k) = self.shared_keys.get(&keys) {
            return k.clone();
        }
        let v: Rc<[u64]> = read_key_names(self.mem, &self.l, keys).into();
        self.shared_keys.insert(keys, v.clone());
        v
    }

    // ---- objects ----

    /// Slots (locals + stack) of the interpreter frame whose code object is at `code`, when that
    /// is a code object with sane counts.
    fn frame_slots(&mut self, code: u64) -> Option<u64> {
        let f = self.l.frame?;
        let code = code & !7; // 3.14 tags the reference in its low bits
        let t = self.rd_u64(code.checked_add(8)?)?;
        let ti = self.type_info(t)?;
        if self.types.get(ti as usize)?.name != "code" {
            return None;
        }
        let b = self.rd(code, (f.co_nlocalsplus + 4) as usize)?;
        let slots = u64::from(u32_at(&b, f.co_nlocalsplus)) + u64::from(u32_at(&b, f.co_stacksize));
        (slots <= MAX_FRAME_SLOTS).then_some(slots)
    }

    fn parse(&mut self, i: u32) {
        let (Some(a), Some(ty)) = (self.objs.addr(i), self.objs.ty(i)) else {
            return;
        };
        let Some(s) = self.types.get(ty as usize).map(|t| t.shape) else {
            return;
        };
        let l = self.l;
        let mut items = 0u64;
        let ob_size = self.rd_u64(a + 16).unwrap_or(0) as i64;
        // The object's own block from `a`, and the blocks it owns elsewhere (item arrays, tables).
        let mut inline = s.basicsize;
        let mut extra = 0u64;
        let mut trusted = true;
        let embeds_frame = matches!(s.kind, Kind::Generator | Kind::Frame) && l.frame.is_some();
        if s.itemsize != 0 && !embeds_frame && !matches!(s.kind, Kind::Int | Kind::Str) {
            if ob_size < 0 {
                trusted = false;
            } else {
                inline = s
                    .basicsize
                    .saturating_add((ob_size as u64).saturating_mul(s.itemsize));
            }
        }
        let mut gc = s.flags & flags::HAVE_GC != 0;
        let mut scan_slots = s.heap;
        match s.kind {
            Kind::List => {
                let n = ob_size.clamp(0, MAX_ITEMS as i64) as u64;
                let arr = self.rd_u64(a + 24).unwrap_or(0);
                let alloc = self.rd_u64(a + 32).unwrap_or(0);
                if ob_size < 0 || ob_size as u64 > MAX_ITEMS {
                    self.damage.bad_contents += 1;
                }
                if n > 0 {
                    match self.rd_words(arr, n as usize) {
                        Some(ws) => {
                            for w in ws.iter() {
                                self.pedge(w, EdgeKind::Item);
                            }
                        }
                        None => self.damage.bad_contents += 1,
                    }
                }
                items = n;
                extra = alloc.saturating_mul(8);
                if ob_size < 0 || alloc < n || (alloc > 0 && extra > self.room(arr)) {
                    trusted = false;
                    extra = n * 8;
                }
            }
            Kind::Tuple => {
                let n = ob_size.clamp(0, MAX_ITEMS as i64) as u64;
                if let Some(ws) = self.rd_words(a + 24, n as usize) {
                    for w in ws.iter() {
                        self.pedge(w, EdgeKind::Item);
                    }
                }
                items = n;
            }
            Kind::Dict => {
                let mut entries = std::mem::take(&mut self.scratch);
                entries.clear();
                match read_dict(self.mem, &l, a, &mut entries, MAX_ITEMS) {
                    Some(meta) => {
                        items = meta.used;
                        extra = meta.extra_bytes;
                        if s.ordered {
                            extra += meta.used * 40;
                        }
                        trusted &= meta.fits;
                    }
                    None => self.damage.bad_contents += 1,
                }
                for &(k, v) in &entries {
                    self.entry_edges(k, v, true);
                }
                self.scratch = entries;
                // defaultdict's default_factory, OrderedDict's instance dict, ...
                self.conservative(a, 48, s.static_base_size);
            }
            Kind::Set => {
                let used = self.rd_u64(a + 24).unwrap_or(0);
                let mask = self.rd_u64(a + 32).unwrap_or(0);
                let table = self.rd_u64(a + 40).unwrap_or(0);
                let slots = mask.saturating_add(1);
                if !slots.is_power_of_two() || slots > MAX_ITEMS || used > slots {
                    self.damage.bad_contents += 1;
                    trusted = false;
                } else if let Some(ws) = self.rd_words(table, (slots * 2) as usize) {
                    for (j, key) in ws.iter().enumerate() {
                        if j % 2 == 0 && key != 0 {
                            self.edge(key, EdgeKind::None);
                        }
                    }
                    items = used;
                    if table != a + 64 {
                        extra = slots * 16;
                    }
                } else {
                    self.damage.bad_contents += 1;
                }
            }
            Kind::Deque => {
                let (n, blocks) = self.deque(a, ob_size);
                items = n;
                extra = blocks * 528;
            }
            Kind::Str => {
                let state = self
                    .mem
                    .bytes(a + 32, 4)
                    .map(|b| u32_at(&b, 0))
                    .unwrap_or(0);
                let kind = u64::from((state >> 2) & 7);
                let compact = (state >> 5) & 1 == 1;
                let ascii = (state >> 6) & 1 == 1;
                let len = ob_size.max(0) as u64;
                if ob_size < 0 || !matches!(kind, 1 | 2 | 4) || (ascii && kind != 1) {
                    trusted = false;
                }
                let chars = len.saturating_add(1).saturating_mul(kind.max(1));
                match (compact, ascii) {
                    (true, true) => inline = l.unicode_ascii_size.saturating_add(chars),
                    (true, false) => inline = l.unicode_compact_size.saturating_add(chars),
                    // A legacy string (3.8–3.11, made by the old C API): its data is apart.
                    _ => extra = chars,
                }
                gc = false;
                scan_slots = false;
            }
            Kind::Int => {
                let digits = if l.long_tag {
                    (ob_size as u64) >> 3
                } else {
                    ob_size.unsigned_abs()
                };
                inline = 24u64.saturating_add(digits.max(1).saturating_mul(4));
            }
            Kind::ByteArray => {
                let alloc = self.rd_u64(a + 24).unwrap_or(0);
                let buf = self.rd_u64(a + 32).unwrap_or(0);
                extra = alloc;
                if ob_size < 0 || alloc < ob_size as u64 || (alloc > 0 && alloc > self.room(buf)) {
                    trusted = false;
                    extra = 0;
                }
            }
            Kind::Bytes | Kind::Float => {}
            Kind::Module => {
                let d = self.rd_u64(a + 16).unwrap_or(0);
                self.pedge(d, EdgeKind::Attrs);
                self.conservative(a, 24, s.static_base_size);
            }
            Kind::Cell => {
                let c = self.rd_u64(a + 16).unwrap_or(0);
                if c != 0 {
                    self.pedge(c, EdgeKind::Cell);
                }
            }
            Kind::Type => {
                let own_flags = self.rd_u64(a + l.tp_flags).unwrap_or(0);
                gc = own_flags & flags::HEAPTYPE != 0;
                let end = if gc { s.basicsize } else { l.tp_mro + 8 + 40 };
                if !gc {
                    // A static type is a PyTypeObject, smaller than its metatype's basicsize
                    // (which is PyHeapTypeObject's).
                    inline = if l.type_size > 0 { l.type_size } else { end };
                }
                let tp_dict = self.rd_u64(a + l.tp_dict).unwrap_or(0);
                if tp_dict != 0 {
                    self.edge(tp_dict, EdgeKind::Attrs);
                }
                self.conservative(a, 24, end);
                scan_slots = false;
            }
            Kind::LruCache => self.lru_cache(a, s.static_base_size),
            Kind::Generator | Kind::Frame if embeds_frame => {
                // Since 3.11 the frame lives inside the object (its slots follow `basicsize`) and
                // no field holds a count: the size comes from the frame's code object. A frame
                // object reaches its frame through `f_frame`, which may live on a thread's stack.
                let f = l.frame.unwrap_or_default();
                let frame = if s.kind == Kind::Frame {
                    self.rd_u64(a + 24).unwrap_or(0)
                } else {
                    (a + s.basicsize).saturating_sub(f.localsplus)
                };
                let code = self.rd_u64(frame.saturating_add(f.code)).unwrap_or(0);
                match self.frame_slots(code) {
                    Some(slots) => inline = s.basicsize + slots * 8,
                    None => trusted = false,
                }
                self.conservative(a, 16, inline.min(MAX_SCAN_WORDS * 8));
            }
            Kind::Match => {
                // `ob_size` is twice `groups` (the pattern's groups plus the whole match): anything
                // else is not a live match.
                let groups = self.rd_u64(a + 72).unwrap_or(u64::MAX);
                if groups == 0 || groups >= 1 << 16 || ob_size as u64 != 2 * groups {
                    trusted = false;
                    inline = s.basicsize;
                }
                self.conservative(a, 24, 48);
            }
            Kind::Function | Kind::Other | Kind::Generator | Kind::Frame => {
                let end = inline.min(MAX_SCAN_WORDS * 8);
                if gc || s.kind == Kind::Function {
                    self.conservative(a, 16, end);
                }
            }
            Kind::Instance => {}
        }
        if s.heap {
            extra = extra.saturating_add(self.instance_dict(a, &s, ob_size));
            if scan_slots && s.kind != Kind::Instance {
                self.conservative(a, s.static_base_size, s.basicsize);
            } else if scan_slots {
                self.conservative(a, 16, s.basicsize);
            }
        }
        // What the object's block claims must lie in its memory.
        if inline > self.room(a) {
            trusted = false;
            inline = s.basicsize;
        }
        let mut size = inline.saturating_add(extra);
        if gc {
            size += 16;
        }
        if l.pre_header > 0 {
            let managed = flags::MANAGED_DICT
                | if l.minor >= 12 {
                    flags::MANAGED_WEAKREF
                } else {
                    0
                };
            if s.flags & managed != 0 {
                size += l.pre_header;
            }
        }
        if !trusted {
            self.damage.untrusted_sizes += 1;
        }
        self.objs.set_size(i, size, trusted);
        self.objs.set_items(i, items);
    }

    fn lru_cache(&mut self, a: u64, static_base_size: u64) {
        // The cache is the first dict the wrapper points to (after the embedded list root).
        let n = (static_base_size / 8).min(64) as usize;
        let Some(ws) = self.rd_words(a, n) else {
            return;
        };
        let mut cache_found = false;
        for (k, w) in ws.iter().enumerate().skip(2) {
            if !plausible(w) || w == a || !self.mem.readable(w) {
                continue;
            }
            let is_dict = k >= 7
                && !cache_found
                && self.intern(w).is_some_and(|t| {
                    self.objs
                        .ty(t)
                        .and_then(|ty| self.types.get(ty as usize))
                        .is_some_and(|ti| ti.shape.kind == Kind::Dict)
                });
            if is_dict {
                cache_found = true;
                self.edge(w, EdgeKind::Lru);
            } else {
                self.edge(w, EdgeKind::None);
            }
        }
    }

    /// Items and block count of a `collections.deque`.
    fn deque(&mut self, a: u64, len: i64) -> (u64, u64) {
        let Some(h) = self.rd(a, 56) else {
            return (0, 0);
        };
        let mut block = word(&h, 24);
        let right = word(&h, 32);
        let mut index = word(&h, 40);
        let right_index = word(&h, 48);
        drop(h);
        let len = len.clamp(0, MAX_ITEMS as i64) as u64;
        let mut left = len;
        let mut blocks = 0u64;
        let max_blocks = len / 64 + 2;
        while blocks < max_blocks && plausible(block) {
            blocks += 1;
            let Some(ws) = self.rd_words(block, 66) else {
                self.damage.bad_contents += 1;
                break;
            };
            let last = if block == right {
                right_index.min(63)
            } else {
                63
            };
            let mut k = index.min(64);
            while k <= last && left > 0 {
                if let Some(w) = ws.get(1 + k as usize) {
                    self.pedge(w, EdgeKind::Item);
                }
                left -= 1;
                k += 1;
            }
            if block == right || left == 0 {
                break;
            }
            block = ws.get(65).unwrap_or(0);
            index = 0;
        }
        (len - left, blocks)
    }

    /// Edges to instance attributes; returns bytes of separately allocated values.
    fn instance_dict(&mut self, a: u64, ti: &Shape, ob_size: i64) -> u64 {
        let l = self.l;
        let managed = ti.flags & flags::MANAGED_DICT != 0;
        match l.instance_dict {
            InstanceDict::DictOffset => {
                if ti.dictoffset == 0 {
                    return 0;
                }
                let off = if ti.dictoffset > 0 {
                    ti.dictoffset as u64
                } else {
                    let total = ti
                        .basicsize
                        .saturating_add(ob_size.unsigned_abs().min(MAX_ITEMS) * ti.itemsize);
                    let total = total.div_ceil(8) * 8;
                    match total.checked_sub(ti.dictoffset.unsigned_abs()) {
                        Some(o) => o,
                        None => return 0,
                    }
                };
                let d = self.rd_u64(a + off).unwrap_or(0);
                if d != 0 {
                    self.pedge(d, EdgeKind::Attrs);
                }
                0
            }
            InstanceDict::Managed311 | InstanceDict::Managed312 if managed => {
                let slot = self.rd_u64(a.wrapping_sub(24)).unwrap_or(0);
                let (dict, values) = if l.instance_dict == InstanceDict::Managed311 {
                    (slot, self.rd_u64(a.wrapping_sub(32)).unwrap_or(0))
                } else if slot & 1 == 1 {
                    (0, slot + 1)
                } else {
                    (slot, 0)
                };
                if dict != 0 {
                    self.pedge(dict, EdgeKind::Attrs);
                    0
                } else if values != 0 {
                    let n = self.values_edges(a, ti.cached_keys, values, u64::MAX);
                    n * 8 + 8
                } else {
                    0
                }
            }
            InstanceDict::Inline313 if managed => {
                let dict = self.rd_u64(a.wrapping_sub(24)).unwrap_or(0);
                let inline = ti.flags & flags::INLINE_VALUES != 0;
                let mut extra = 0;
                let values = a + ti.basicsize;
                let hdr = if inline {
                    self.rd(values, 4).map(|b| b.to_vec())
                } else {
                    None
                };
                if let Some(h) = &hdr {
                    let capacity = u64::from(byte(h, 0));
                    extra = 8 + capacity * 9;
                }
                if dict != 0 {
                    self.pedge(dict, EdgeKind::Attrs);
                } else if let Some(h) = hdr {
                    let capacity = u64::from(byte(&h, 0));
                    if byte(&h, 3) != 0 {
                        self.values_edges(a, ti.cached_keys, values + 8, capacity);
                    }
                }
                extra
            }
            _ => 0,
        }
    }

    /// Edges from an instance to the values of its shared-key attributes.
    fn values_edges(&mut self, _a: u64, keys: u64, values: u64, cap: u64) -> u64 {
        if !plausible(keys) {
            return 0;
        }
        let names = self.shared_keys(keys);
        let n = (names.len() as u64).min(cap);
        let Some(vals) = self.rd_words(values, n as usize) else {
            self.damage.bad_contents += 1;
            return 0;
        };
        for (k, v) in vals.iter().enumerate() {
            if v == 0 {
                continue;
            }
            let key = names.get(k).copied().unwrap_or(0);
            self.entry_edges(key, v, key != 0);
        }
        n
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

pub struct DictMeta {
    pub used: u64,
    /// Key table and values array when owned by this dict.
    pub extra_bytes: u64,
    /// The tables it owns lie within their memory.
    pub fits: bool,
}

fn usable(size: u64) -> u64 {
    (size << 1) / 3
}

fn index_bytes(size: u64) -> u64 {
    match size {
        0..=0xff => 1,
        0x100..=0xffff => 2,
        0x1_0000..=0xffff_ffff => 4,
        _ => 8,
    }
}

/// (key, value) pairs of a dict at `d`; `None` when its tables cannot be read.
pub fn read_dict(
    mem: Mem<'_>,
    l: &Layout,
    d: u64,
    out: &mut Vec<(u64, u64)>,
    cap: u64,
) -> Option<DictMeta> {
    let h = mem.bytes(d, 48)?;
    let used = word(&h, 16);
    let keys = word(&h, 32);
    let values = word(&h, 40);
    drop(h);
    if !plausible(keys) {
        return None;
    }
    let static_keys = mem.img.mapping_at(keys).is_some_and(|m| m.is_file_backed());
    let (entries_at, n, esize, key_off, val_off, table_bytes) = match l.dict_keys {
        DictKeys::Sized => {
            let kh = mem.bytes(keys, 40)?;
            let size = word(&kh, 8);
            let nentries = word(&kh, 32);
            if !size.is_power_of_two() || size > (1 << 28) {
                return None;
            }
            let ixb = index_bytes(size);
            (
                keys + 40 + size * ixb,
                nentries.min(size),
                24,
                8,
                16,
                40 + size * ixb + usable(size) * 24,
            )
        }
        DictKeys::Log2 => {
            let kh = mem.bytes(keys, 32)?;
            let log2 = u32::from(byte(&kh, 8));
            let log2ix = u32::from(byte(&kh, 9));
            let kind = byte(&kh, 10);
            let nentries = word(&kh, 24);
            if log2 > 28 || log2ix > 31 || kind > 2 {
                return None;
            }
            let size = 1u64 << log2;
            let es = if kind == 0 { 24 } else { 16 };
            let (ko, vo) = if kind == 0 { (8, 16) } else { (0, 8) };
            (
                keys + 32 + (1u64 << log2ix),
                nentries.min(size),
                es,
                ko,
                vo,
                32 + (1u64 << log2ix) + usable(size) * es,
            )
        }
    };
    let n = n.min(cap);
    let ents = mem.bytes(entries_at, (n * esize) as usize)?;
    let vals = if values != 0 {
        Some(mem.words(values + l.dict_values_header, n as usize)?)
    } else {
        None
    };
    for k in 0..n {
        let key = word(&ents, k * esize + key_off);
        let val = match &vals {
            Some(v) => v.get(k as usize).copied().unwrap_or(0),
            None => word(&ents, k * esize + val_off),
        };
        if key != 0 && val != 0 {
            out.push((key, val));
        }
    }
    let mut extra = 0;
    let room = |at: u64| {
        mem.img
            .mapping_at(at)
            .map_or(0, |m| m.end.saturating_sub(at))
    };
    let mut fits = true;
    if values == 0 {
        if !static_keys {
            extra += table_bytes;
            fits = table_bytes <= room(keys);
        }
    } else {
        let embedded =
            l.dict_values_header > 0 && mem.bytes(values, 4).is_some_and(|b| byte(&b, 2) != 0);
        if !embedded {
            extra += n * 8 + 8;
        }
    }
    Some(DictMeta {
        used: used.min(MAX_ITEMS),
        extra_bytes: extra,
        fits: fits && used <= MAX_ITEMS,
    })
}

/// Keys of a shared (split) key table, in entry order.
fn read_key_names(mem: Mem<'_>, l: &Layout, keys: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let parsed = match l.dict_keys {
        DictKeys::Sized => mem.bytes(keys, 40).and_then(|kh| {
            let size = word(&kh, 8);
            let n = word(&kh, 32).min(size);
            size.is_power_of_two()
                .then(|| (keys + 40 + size * index_bytes(size), n, 24u64, 8u64))
        }),
        DictKeys::Log2 => mem.bytes(keys, 32).and_then(|kh| {
            let log2 = u32::from(byte(&kh, 8));
            let log2ix = u32::from(byte(&kh, 9));
            let kind = byte(&kh, 10);
            (log2 <= 28 && log2ix <= 31).then(|| {
                let es = if kind == 0 { 24 } else { 16 };
                let ko = if kind == 0 { 8 } else { 0 };
                (
                    keys + 32 + (1u64 << log2ix),
                    word(&kh, 24).min(1u64 << log2),
                    es,
                    ko,
                )
            })
        }),
    };
    if let Some((at, n, es, ko)) = parsed {
        let n = n.min(1 << 16);
        if let Some(ents) = mem.bytes(at, (n * es) as usize) {
            for k in 0..n {
                out.push(word(&ents, k * es + ko));
            }
        }
    }
    out
}

/// Content of a compact ASCII `str` at `s` (exact type not checked), at most `max` characters.
pub fn read_ascii(mem: Mem<'_>, l: &Layout, s: u64, max: u64) -> Option<String> {
    if !plausible(s) {
        return None;
    }
    let h = mem.bytes(s, 40)?;
    let len = word(&h, 16);
    let state = u32_at(&h, 32);
    drop(h);
    let compact = (state >> 5) & 1 == 1;
    let ascii = (state >> 6) & 1 == 1;
    if !compact || !ascii || len > max {
        return None;
    }
    let data = mem.bytes(s + l.unicode_ascii_size, len as usize)?;
    if !data.iter().all(|c| (0x20..0x7f).contains(c)) {
        return None;
    }
    Some(String::from_utf8_lossy(&data).into_owned())
}
