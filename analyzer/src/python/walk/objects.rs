//! Parsing one object: its size, items and references, by kind.

use super::{read_dict, Kind, Shape, Walker, MAX_FRAME_SLOTS, MAX_ITEMS, MAX_SCAN_WORDS};
use crate::heap::table::EdgeKind;
use crate::python::layout::{flags, InstanceDict};
use crate::python::mem::{byte, plausible, u32_at, word};

/// What parsing one object finds out about its size, filled in by the parser of its kind.
struct Sizing {
    /// The object's own block from its address.
    inline: u64,
    /// Blocks it owns elsewhere (item arrays, tables).
    extra: u64,
    items: u64,
    trusted: bool,
    /// A GC header precedes it.
    gc: bool,
    /// Heap-type slots are scanned for references.
    scan_slots: bool,
}

impl Sizing {
    /// The fixed size of the type, plus its items when the type has them.
    fn new(s: &Shape, ob_size: i64, embeds_frame: bool) -> Sizing {
        let mut z = Sizing {
            inline: s.basicsize,
            extra: 0,
            items: 0,
            trusted: true,
            gc: s.flags & flags::HAVE_GC != 0,
            scan_slots: s.heap,
        };
        if s.itemsize != 0 && !embeds_frame && !matches!(s.kind, Kind::Int | Kind::Str) {
            if ob_size < 0 {
                z.trusted = false;
            } else {
                z.inline = s
                    .basicsize
                    .saturating_add((ob_size as u64).saturating_mul(s.itemsize));
            }
        }
        z
    }
}

impl<'a> Walker<'a> {
    /// Slots (locals + stack) of the interpreter frame whose code object is at `code`, when that
    /// is a code object with sane counts.
    pub(super) fn frame_slots(&mut self, code: u64) -> Option<u64> {
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

    /// Sizes object `i` and adds its edges: the fields of its kind, then what every heap type has
    /// (instance attributes, slots), then the checks that make a size trusted.
    pub(super) fn parse(&mut self, i: u32) {
        let (Some(a), Some(ty)) = (self.objs.addr(i), self.objs.ty(i)) else {
            return;
        };
        let Some(s) = self.types.get(ty as usize).map(|t| t.shape) else {
            return;
        };
        let ob_size = self.rd_u64(a + 16).unwrap_or(0) as i64;
        let embeds_frame =
            matches!(s.kind, Kind::Generator | Kind::Frame) && self.l.frame.is_some();
        let mut z = Sizing::new(&s, ob_size, embeds_frame);
        self.parse_kind(a, &s, ob_size, embeds_frame, &mut z);
        self.settle_size(i, a, &s, ob_size, z);
    }

    /// The fields that the object's kind defines: its items, owned blocks and references.
    fn parse_kind(&mut self, a: u64, s: &Shape, ob_size: i64, embeds_frame: bool, z: &mut Sizing) {
        let l = self.l;
        match s.kind {
            Kind::List => self.parse_list(a, ob_size, z),
            Kind::Tuple => {
                let n = ob_size.clamp(0, MAX_ITEMS as i64) as u64;
                if let Some(ws) = self.rd_words(a + l.tuple_items, n as usize) {
                    for w in ws.iter() {
                        self.pedge(w, EdgeKind::Item);
                    }
                }
                z.items = n;
            }
            Kind::Dict => self.parse_dict(a, s, z),
            Kind::Set => self.parse_set(a, z),
            Kind::Deque => {
                let (n, blocks) = self.deque(a, ob_size);
                z.items = n;
                z.extra = blocks * 528;
            }
            Kind::Str => self.parse_str(a, ob_size, z),
            Kind::Int => {
                let digits = if l.long_tag {
                    (ob_size as u64) >> 3
                } else {
                    ob_size.unsigned_abs()
                };
                z.inline = 24u64.saturating_add(digits.max(1).saturating_mul(4));
            }
            Kind::ByteArray => {
                let alloc = self.rd_u64(a + 24).unwrap_or(0);
                let buf = self.rd_u64(a + 32).unwrap_or(0);
                z.extra = alloc;
                if l.bytearray_in_bytes && alloc > 0 {
                    // PyBytesObject's header and its trailing NUL: 3.15's `tp_basicsize` of bytes.
                    z.extra = alloc.saturating_add(33);
                }
                if ob_size < 0 || alloc < ob_size as u64 || (alloc > 0 && alloc > self.room(buf)) {
                    z.trusted = false;
                    z.extra = 0;
                }
            }
            Kind::Bytes | Kind::Float => {}
            Kind::Module => {
                let d = self.rd_u64(a + 16).unwrap_or(0);
                self.pedge(d, EdgeKind::Attrs);
                self.conservative(a, 24, s.static_base_size, s.weaklistoffset);
            }
            Kind::Cell => {
                let c = self.rd_u64(a + 16).unwrap_or(0);
                if c != 0 {
                    self.pedge(c, EdgeKind::Cell);
                }
            }
            Kind::Type => self.parse_type(a, s, z),
            Kind::LruCache => self.lru_cache(a, s.static_base_size),
            Kind::Generator | Kind::Frame if embeds_frame => self.parse_frame(a, s, z),
            Kind::Match => {
                // `ob_size` is twice `groups` (the pattern's groups plus the whole match): anything
                // else is not a live match.
                let groups = self.rd_u64(a + 72).unwrap_or(u64::MAX);
                if groups == 0 || groups >= 1 << 16 || ob_size as u64 != 2 * groups {
                    z.trusted = false;
                    z.inline = s.basicsize;
                }
                self.conservative(a, 24, 48, s.weaklistoffset);
            }
            Kind::Function | Kind::Other | Kind::Generator | Kind::Frame => {
                let end = z.inline.min(MAX_SCAN_WORDS * 8);
                if z.gc || s.kind == Kind::Function {
                    self.conservative(a, 16, end, s.weaklistoffset);
                }
            }
            Kind::WeakRef => {
                // PyObject_HEAD, wr_object (not owned), wr_callback, hash, wr_prev, wr_next (the
                // referent's other weak references): only the callback is an owning reference.
                // A subclass's slots (weakref.KeyedRef's key) are scanned with every heap type's.
                let callback = self.rd_u64(a + 24).unwrap_or(0);
                if callback != 0 {
                    self.pedge(callback, EdgeKind::None);
                }
            }
            Kind::Instance => {}
        }
    }

    /// A list's items and its separately allocated item array.
    fn parse_list(&mut self, a: u64, ob_size: i64, z: &mut Sizing) {
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
        z.items = n;
        z.extra = alloc.saturating_mul(8);
        if ob_size < 0 || alloc < n || (alloc > 0 && z.extra > self.room(arr)) {
            z.trusted = false;
            z.extra = n * 8;
        }
    }

    /// A dict's entries (key, then value labelled by it) and its tables.
    fn parse_dict(&mut self, a: u64, s: &Shape, z: &mut Sizing) {
        let l = self.l;
        let mut entries = std::mem::take(&mut self.scratch);
        entries.clear();
        match read_dict(self.mem, &l, a, &mut entries, MAX_ITEMS) {
            Some(meta) => {
                z.items = meta.used;
                z.extra = meta.extra_bytes;
                if s.ordered {
                    z.extra += meta.used * 40;
                }
                z.trusted &= meta.fits;
            }
            None => self.damage.bad_contents += 1,
        }
        for &(k, v) in &entries {
            self.entry_edges(k, v, true);
        }
        self.scratch = entries;
        // defaultdict's default_factory, OrderedDict's instance dict, ...
        self.conservative(a, 48, s.static_base_size, s.weaklistoffset);
    }

    /// A set's keys and its hash table when not the small inline one.
    fn parse_set(&mut self, a: u64, z: &mut Sizing) {
        let used = self.rd_u64(a + 24).unwrap_or(0);
        let mask = self.rd_u64(a + 32).unwrap_or(0);
        let table = self.rd_u64(a + 40).unwrap_or(0);
        let slots = mask.saturating_add(1);
        if !slots.is_power_of_two() || slots > MAX_ITEMS || used > slots {
            self.damage.bad_contents += 1;
            z.trusted = false;
        } else if let Some(ws) = self.rd_words(table, (slots * 2) as usize) {
            for (j, key) in ws.iter().enumerate() {
                if j % 2 == 0 && key != 0 {
                    self.edge(key, EdgeKind::None);
                }
            }
            z.items = used;
            if table != a + 64 {
                z.extra = slots * 16;
            }
        } else {
            self.damage.bad_contents += 1;
        }
    }

    /// A str's size from its state bits: compact data inline, a legacy string's apart.
    fn parse_str(&mut self, a: u64, ob_size: i64, z: &mut Sizing) {
        let l = self.l;
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
            z.trusted = false;
        }
        let chars = len.saturating_add(1).saturating_mul(kind.max(1));
        match (compact, ascii) {
            (true, true) => z.inline = l.unicode_ascii_size.saturating_add(chars),
            (true, false) => z.inline = l.unicode_compact_size.saturating_add(chars),
            // A legacy string (3.8–3.11, made by the old C API): its data is apart.
            _ => z.extra = chars,
        }
        z.gc = false;
        z.scan_slots = false;
    }

    /// A type object: its dict and references; a static type is only a `PyTypeObject`.
    fn parse_type(&mut self, a: u64, s: &Shape, z: &mut Sizing) {
        let l = self.l;
        let own_flags = self.rd_u64(a + l.tp_flags).unwrap_or(0);
        z.gc = own_flags & flags::HEAPTYPE != 0;
        let end = if z.gc { s.basicsize } else { l.tp_mro + 8 + 40 };
        if !z.gc {
            // A static type is a PyTypeObject, smaller than its metatype's basicsize
            // (which is PyHeapTypeObject's).
            z.inline = if l.type_size > 0 { l.type_size } else { end };
        }
        let tp_dict = self.rd_u64(a + l.tp_dict).unwrap_or(0);
        if tp_dict != 0 {
            self.edge(tp_dict, EdgeKind::Attrs);
        }
        self.conservative(a, 24, end, s.weaklistoffset);
        z.scan_slots = false;
    }

    /// A generator, coroutine or frame object with its embedded interpreter frame (3.11+).
    fn parse_frame(&mut self, a: u64, s: &Shape, z: &mut Sizing) {
        // Since 3.11 the frame lives inside the object (its slots follow `basicsize`) and
        // no field holds a count: the size comes from the frame's code object. A frame
        // object reaches its frame through `f_frame`, which may live on a thread's stack.
        let f = self.l.frame.unwrap_or_default();
        let frame = if s.kind == Kind::Frame {
            self.rd_u64(a + 24).unwrap_or(0)
        } else {
            (a + s.basicsize).saturating_sub(f.localsplus)
        };
        let code = self.rd_u64(frame.saturating_add(f.code)).unwrap_or(0);
        match self.frame_slots(code) {
            Some(slots) => z.inline = s.basicsize + slots * 8,
            None => z.trusted = false,
        }
        self.conservative(a, 16, z.inline.min(MAX_SCAN_WORDS * 8), s.weaklistoffset);
    }

    /// What every heap type adds (instance attributes, slots), the check that the block lies in
    /// its memory, and the headers before it; records the size and items.
    fn settle_size(&mut self, i: u32, a: u64, s: &Shape, ob_size: i64, mut z: Sizing) {
        let l = self.l;
        if s.heap {
            z.extra = z.extra.saturating_add(self.instance_dict(a, s, ob_size));
            if z.scan_slots && s.kind != Kind::Instance {
                self.conservative(a, s.static_base_size, s.basicsize, s.weaklistoffset);
            } else if z.scan_slots {
                self.conservative(a, 16, s.basicsize, s.weaklistoffset);
            }
        }
        // What the object's block claims must lie in its memory.
        if z.inline > self.room(a) {
            z.trusted = false;
            z.inline = s.basicsize;
        }
        let mut size = z.inline.saturating_add(z.extra);
        if z.gc {
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
        if !z.trusted {
            self.damage.untrusted_sizes += 1;
        }
        self.objs.set_size(i, size, z.trusted);
        self.objs.set_items(i, z.items);
    }

    pub(super) fn lru_cache(&mut self, a: u64, static_base_size: u64) {
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
    pub(super) fn deque(&mut self, a: u64, len: i64) -> (u64, u64) {
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
    pub(super) fn instance_dict(&mut self, a: u64, ti: &Shape, ob_size: i64) -> u64 {
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
    pub(super) fn values_edges(&mut self, _a: u64, keys: u64, values: u64, cap: u64) -> u64 {
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
