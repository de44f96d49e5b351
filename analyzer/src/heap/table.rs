//! The walked heap, stored so that its memory stays proportional to what the analysis needs:
//! objects as a struct of arrays with dense ids, edges stored once (target and label in one
//! word), and an address index that costs a few bytes per object instead of a hash-map entry.
//!
//! Once the walk is done, only the objects that reference others (usually fewer than half: str,
//! int and float reference nothing) keep a row of edges and an item count, numbered by their rank
//! in one shared set. A 7.5-million-object heap then costs about 18 bytes per object plus 4 per
//! edge; the hash map this replaces cost more than that on its own.

use std::rc::Rc;

use rustc_hash::FxHashMap;

/// Object ids fit in 29 bits; the top 3 bits of an edge word carry its label.
pub const MAX_OBJECTS: usize = 1 << 29;
const ID_BITS: u32 = 29;
const ID_MASK: u32 = (1 << ID_BITS) - 1;
/// `starts` and edge positions are `u32`: keep a margin below the end.
pub const MAX_EDGES: usize = (u32::MAX as usize) - (1 << 20);

/// How an object refers to another: what naming prints for the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeKind {
    /// Found by a conservative word scan, or a reference with no name.
    None,
    /// An item of a list, tuple or deque; its index is its position among the object's edges.
    Item,
    /// A dict (or shared-key attribute) value; its key is the object's previous edge.
    Value,
    /// A dict → one of its keys.
    KeyRef,
    /// Object → its attribute dict (module, class, instance `__dict__`).
    Attrs,
    /// lru_cache wrapper → its cache dict.
    Lru,
    /// Cell → its content.
    Cell,
}

impl EdgeKind {
    fn bits(self) -> u32 {
        (match self {
            EdgeKind::None => 0,
            EdgeKind::Item => 1,
            EdgeKind::Value => 2,
            EdgeKind::KeyRef => 3,
            EdgeKind::Attrs => 4,
            EdgeKind::Lru => 5,
            EdgeKind::Cell => 6,
        }) << ID_BITS
    }
}

/// One edge word: target id and label.
pub fn pack(target: u32, kind: EdgeKind) -> u32 {
    (target & ID_MASK) | kind.bits()
}

pub fn target(e: u32) -> u32 {
    e & ID_MASK
}

pub fn kind(e: u32) -> EdgeKind {
    match e >> ID_BITS {
        1 => EdgeKind::Item,
        2 => EdgeKind::Value,
        3 => EdgeKind::KeyRef,
        4 => EdgeKind::Attrs,
        5 => EdgeKind::Lru,
        6 => EdgeKind::Cell,
        _ => EdgeKind::None,
    }
}

/// Sizes are kept in 8-byte units (objects are 8-aligned); the top bit marks a size that could
/// not be trusted (its count or buffer lay outside its memory, or its type's invariant failed).
const UNTRUSTED: u32 = 1 << 31;
const MAX_UNITS: u64 = (UNTRUSTED - 1) as u64;

/// Every object found, by dense id (discovery order).
#[derive(Debug, Default)]
pub struct Objects {
    pub addr: Vec<u64>,
    size: Vec<u32>,
    pub ty: Vec<u32>,
    /// Items of a container (list, dict, set, deque, tuple); 0 for others. By id during the
    /// walk; after [`Objects::keep_items_of`], by rank in `ranked`.
    items: Vec<u32>,
    ranked: Option<Rc<RankedSet>>,
    /// After `keep_items_of`: the counts of objects outside `ranked` that have items (a
    /// container whose items could not be read as objects), by id.
    stray_items: FxHashMap<u32, u32>,
    /// Neither addresses nor item counts are kept ([`Objects::lean`]).
    lean: bool,
}

impl Objects {
    /// A table without addresses and item counts, 12 bytes an object fewer: a JVM's objects
    /// move, are named by path, and have their items read from their fields.
    pub fn lean() -> Objects {
        Objects {
            lean: true,
            ..Objects::default()
        }
    }

    pub fn len(&self) -> usize {
        self.ty.len()
    }

    pub fn push(&mut self, addr: u64, ty: u32) -> u32 {
        let id = self.ty.len() as u32;
        if !self.lean {
            self.addr.push(addr);
            self.items.push(0);
        }
        self.size.push(0);
        self.ty.push(ty);
        id
    }

    /// Size in bytes (for an untrusted object, the part its type guarantees).
    pub fn size(&self, i: u32) -> u64 {
        self.size
            .get(i as usize)
            .map_or(0, |&s| u64::from(s & !UNTRUSTED) * 8)
    }

    /// Whether the size was validated against the object's type and memory.
    pub fn trusted(&self, i: u32) -> bool {
        self.size
            .get(i as usize)
            .is_some_and(|&s| s & UNTRUSTED == 0)
    }

    /// Size that retained sizes may count: 0 for an untrusted object.
    pub fn retainable(&self, i: u32) -> u64 {
        if self.trusted(i) {
            self.size(i)
        } else {
            0
        }
    }

    pub fn set_size(&mut self, i: u32, bytes: u64, trusted: bool) {
        if let Some(s) = self.size.get_mut(i as usize) {
            let units = bytes.div_ceil(8).min(MAX_UNITS) as u32;
            *s = if trusted { units } else { units | UNTRUSTED };
        }
    }

    pub fn set_items(&mut self, i: u32, items: u64) {
        if let Some(s) = self.items.get_mut(i as usize) {
            *s = items.min(u64::from(u32::MAX)) as u32;
        }
    }

    pub fn items(&self, i: u32) -> u64 {
        let n = match &self.ranked {
            None => self.items.get(i as usize).copied(),
            Some(set) => match set.rank(i) {
                Some(c) => self.items.get(c as usize).copied(),
                None => self.stray_items.get(&i).copied(),
            },
        };
        n.map_or(0, u64::from)
    }

    /// Keep item counts only for the members of `set` (the objects with edges: a container's
    /// items are its edges) and the few others that have one, and give back the rest.
    pub fn keep_items_of(&mut self, set: Rc<RankedSet>) {
        if self.ranked.is_some() {
            return;
        }
        let mut kept = 0usize;
        for v in 0..self.items.len() {
            let n = self.items[v];
            if set.contains(v as u32) {
                // kept <= v: the slot written was read already.
                self.items[kept] = n;
                kept += 1;
            } else if n > 0 {
                self.stray_items.insert(v as u32, n);
            }
        }
        self.items.truncate(kept);
        self.items.shrink_to_fit();
        self.ranked = Some(set);
    }

    pub fn ty(&self, i: u32) -> Option<u32> {
        self.ty.get(i as usize).copied()
    }

    pub fn addr(&self, i: u32) -> Option<u64> {
        self.addr.get(i as usize).copied()
    }

    /// Anonymous bytes held, for the memory budget.
    pub fn heap_bytes(&self) -> usize {
        self.addr.capacity() * 8
            + (self.size.capacity() + self.ty.capacity() + self.items.capacity()) * 4
            + self.stray_items.capacity() * 12
    }
}

/// References as the walk finds them: a row of edges per object, in id order; the edges of
/// object `v` are `edges[starts[v]..starts[v + 1]]`.
#[derive(Debug, Default)]
pub struct Rows {
    pub starts: Vec<u32>,
    pub edges: Vec<u32>,
}

impl Rows {
    /// Start the row of the next object.
    pub fn next_row(&mut self) {
        self.starts.push(self.edges.len() as u32);
    }

    pub fn heap_bytes(&self) -> usize {
        (self.starts.capacity() + self.edges.capacity()) * 4
    }

    /// The graph over `n` objects, keeping rows only for the objects that have edges.
    pub fn finish(mut self, n: usize) -> Graph {
        let end = self.edges.len() as u32;
        self.starts.truncate(n);
        self.starts.resize(n + 1, end);
        let starts = &self.starts;
        let rows = RankedSet::new(n, |v| starts[v as usize + 1] > starts[v as usize]);
        let mut kept = 0usize;
        for v in 0..n {
            if rows.contains(v as u32) {
                // kept <= v: only slots already read are overwritten.
                self.starts[kept] = self.starts[v];
                kept += 1;
            }
        }
        self.starts[kept] = end;
        self.starts.truncate(kept + 1);
        self.starts.shrink_to_fit();
        self.edges.shrink_to_fit();
        Graph {
            rows: Rc::new(rows),
            starts: self.starts,
            edges: self.edges,
        }
    }
}

/// References in compressed sparse rows over the objects that have any: the edges of the object
/// of rank `c` in `rows` are `edges[starts[c]..starts[c + 1]]`.
#[derive(Debug)]
pub struct Graph {
    /// The objects with out-edges, numbered densely.
    pub rows: Rc<RankedSet>,
    starts: Vec<u32>,
    pub edges: Vec<u32>,
}

impl Graph {
    /// Edge words of `v` (empty for a leaf or an id out of range).
    pub fn out(&self, v: u32) -> &[u32] {
        let (s, e) = self.range(v);
        self.edges.get(s..e).unwrap_or(&[])
    }

    /// Positions of `v`'s edges in `edges`.
    pub fn range(&self, v: u32) -> (usize, usize) {
        let Some(c) = self.rows.rank(v) else {
            return (0, 0);
        };
        let s = self.starts.get(c as usize).copied().unwrap_or(0) as usize;
        let e = self.starts.get(c as usize + 1).copied().unwrap_or(0) as usize;
        (s, e.max(s))
    }

    /// The same graph without the out-edges of the objects `keep` refuses (they stay, as leaves).
    pub fn keep_rows(&self, n: usize, keep: impl Fn(u32) -> bool) -> Graph {
        let mut rows = Rows::default();
        rows.starts.reserve(n + 1);
        for v in 0..n as u32 {
            rows.next_row();
            if keep(v) {
                rows.edges.extend_from_slice(self.out(v));
            }
        }
        rows.finish(n)
    }

    /// The object whose edge is at position `pos`.
    pub fn source_of(&self, pos: usize) -> Option<u32> {
        if pos >= self.edges.len() {
            return None;
        }
        // Rows are never empty: the last one starting at or before `pos` holds it.
        let c = self
            .starts
            .partition_point(|&s| s as usize <= pos)
            .checked_sub(1)?;
        self.rows.select(c as u32)
    }
}

/// Address → object id for the walk: per 4 KiB page of memory that holds objects, a bitmap of
/// the 8-byte slots where one starts and the ids in address order (the rank of a slot's bit is
/// its place in the list). Pages are found through a table per 2 MiB region. About 4 bytes per
/// object plus 90 per page, against 20–40 per object for a hash map.
#[derive(Default)]
pub struct AddrIndex {
    regions: FxHashMap<u64, u32>,
    /// Per region, the page slot of each of its 512 pages (`NO_PAGE`: none yet).
    tables: Vec<[u32; 512]>,
    pages: Vec<Page>,
    count: usize,
    /// The region looked up last: consecutive lookups are usually near each other.
    last: Option<(u64, u32)>,
}

const NO_PAGE: u32 = u32::MAX;

#[derive(Default)]
struct Page {
    bits: [u64; 8],
    ids: Vec<u32>,
}

impl Page {
    /// (word, bit mask, rank) of the slot of `addr`.
    fn locate(&self, addr: u64) -> (usize, u64, usize) {
        let slot = ((addr & 4095) >> 3) as usize;
        let (w, b) = (slot >> 6, slot & 63);
        let below: u32 = self.bits[..w].iter().map(|x| x.count_ones()).sum();
        let mask = 1u64 << b;
        let rank = below + (self.bits[w] & (mask - 1)).count_ones();
        (w, mask, rank as usize)
    }
}

impl AddrIndex {
    fn region(&mut self, addr: u64) -> Option<u32> {
        let r = addr >> 21;
        if let Some((lr, t)) = self.last {
            if lr == r {
                return Some(t);
            }
        }
        let t = *self.regions.get(&r)?;
        self.last = Some((r, t));
        Some(t)
    }

    fn page(&mut self, addr: u64) -> Option<&Page> {
        let t = self.region(addr)?;
        let p = *self
            .tables
            .get(t as usize)?
            .get(((addr >> 12) & 511) as usize)?;
        self.pages.get(p as usize)
    }

    /// Id of the object at `addr`.
    pub fn get(&mut self, addr: u64) -> Option<u32> {
        if addr & 7 != 0 {
            return None;
        }
        let page = self.page(addr)?;
        let (w, mask, rank) = page.locate(addr);
        (page.bits[w] & mask != 0)
            .then(|| page.ids.get(rank).copied())
            .flatten()
    }

    /// Record `id` at `addr` (8-aligned, not yet present).
    pub fn insert(&mut self, addr: u64, id: u32) {
        if addr & 7 != 0 {
            return;
        }
        let t = match self.region(addr) {
            Some(t) => t,
            None => {
                let t = self.tables.len() as u32;
                self.tables.push([NO_PAGE; 512]);
                self.regions.insert(addr >> 21, t);
                self.last = Some((addr >> 21, t));
                t
            }
        };
        let Some(slot) = self
            .tables
            .get_mut(t as usize)
            .and_then(|tb| tb.get_mut(((addr >> 12) & 511) as usize))
        else {
            return;
        };
        if *slot == NO_PAGE {
            *slot = self.pages.len() as u32;
            self.pages.push(Page::default());
        }
        if let Some(page) = self.pages.get_mut(*slot as usize) {
            let (w, mask, rank) = page.locate(addr);
            if page.bits[w] & mask == 0 {
                page.bits[w] |= mask;
                page.ids.insert(rank.min(page.ids.len()), id);
                self.count += 1;
            }
        }
    }

    pub fn heap_bytes(&self) -> usize {
        self.regions.capacity() * 16
            + self.tables.len() * 2048
            + self.pages.capacity() * std::mem::size_of::<Page>()
            + self.count * 6 // ids, with their vectors' spare capacity
    }
}

/// A set of object ids with constant-time rank: which objects have out-edges, numbered densely.
#[derive(Debug)]
pub struct RankedSet {
    bits: Bits,
    /// Members before each 64-bit word.
    before: Vec<u32>,
    count: u32,
}

impl RankedSet {
    pub fn new(n: usize, member: impl Fn(u32) -> bool) -> RankedSet {
        let words = n.div_ceil(64);
        let mut bits = vec![0u64; words];
        let mut before = Vec::with_capacity(words);
        let mut count = 0u32;
        for (w, word) in bits.iter_mut().enumerate() {
            before.push(count);
            for b in 0..64 {
                let v = w * 64 + b;
                if v < n && member(v as u32) {
                    *word |= 1 << b;
                }
            }
            count += word.count_ones();
        }
        RankedSet {
            bits: Bits(bits),
            before,
            count,
        }
    }

    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn contains(&self, v: u32) -> bool {
        self.bits.get(v)
    }

    /// The member of rank `c` (the inverse of `rank`).
    pub fn select(&self, c: u32) -> Option<u32> {
        if c >= self.count {
            return None;
        }
        let w = self.before.partition_point(|&b| b <= c).checked_sub(1)?;
        let mut word = *self.bits.0.get(w)?;
        for _ in 0..c - self.before.get(w)? {
            word &= word.wrapping_sub(1);
        }
        (word != 0).then(|| (w * 64) as u32 + word.trailing_zeros())
    }

    /// Dense number of member `v` (its rank among the members).
    pub fn rank(&self, v: u32) -> Option<u32> {
        let (w, b) = ((v >> 6) as usize, v & 63);
        let word = *self.bits.0.get(w)?;
        (word >> b & 1 == 1).then(|| {
            self.before.get(w).copied().unwrap_or(0) + (word & ((1u64 << b) - 1)).count_ones()
        })
    }
}

/// A plain bit set over object ids.
#[derive(Debug)]
pub struct Bits(Vec<u64>);

impl Bits {
    pub fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }

    pub fn get(&self, v: u32) -> bool {
        self.0
            .get((v >> 6) as usize)
            .is_some_and(|x| x >> (v & 63) & 1 == 1)
    }

    /// Set `v`; whether it was clear before.
    pub fn set(&mut self, v: u32) -> bool {
        match self.0.get_mut((v >> 6) as usize) {
            Some(x) => {
                let m = 1u64 << (v & 63);
                let was = *x & m == 0;
                *x |= m;
                was
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_carry_target_and_label() {
        for k in [
            EdgeKind::None,
            EdgeKind::Item,
            EdgeKind::Value,
            EdgeKind::KeyRef,
            EdgeKind::Attrs,
            EdgeKind::Lru,
            EdgeKind::Cell,
        ] {
            let e = pack(ID_MASK, k);
            assert_eq!((target(e), kind(e)), (ID_MASK, k));
        }
    }

    #[test]
    fn index_finds_what_was_inserted_in_any_order() {
        let mut ix = AddrIndex::default();
        let addrs: Vec<u64> = (0..5000u64)
            .map(|i| 0x7f00_0000_0000 + (i * 7919 % 5000) * 24 + (i % 3) * 0x10_0000)
            .map(|a| a & !7)
            .collect();
        let mut seen = std::collections::HashMap::new();
        for (i, &a) in addrs.iter().enumerate() {
            if ix.get(a).is_none() {
                ix.insert(a, i as u32);
                seen.insert(a, i as u32);
            }
        }
        for (&a, &i) in &seen {
            assert_eq!(ix.get(a), Some(i));
        }
        assert_eq!(ix.get(0x7f00_0000_0008 + 4096 * 1000), None);
        assert_eq!(ix.get(0x7f00_0000_0001), None);
    }

    #[test]
    fn rank_numbers_members_densely() {
        let s = RankedSet::new(200, |v| v % 3 == 0);
        assert_eq!(s.len(), 67);
        assert_eq!(s.rank(0), Some(0));
        assert_eq!(s.rank(3), Some(1));
        assert_eq!(s.rank(198), Some(66));
        assert_eq!(s.rank(4), None);
        assert!(s.rank(129).is_some() && s.rank(130).is_none());
    }

    #[test]
    fn source_of_an_edge_position() {
        // 0: 2 edges, 1: none, 2: 1 edge, 3: none.
        let g = Rows {
            starts: vec![0, 2, 2, 3],
            edges: vec![1, 2, 3],
        }
        .finish(4);
        assert_eq!(g.source_of(0), Some(0));
        assert_eq!(g.source_of(1), Some(0));
        assert_eq!(g.source_of(2), Some(2));
        assert_eq!(g.source_of(3), None);
        let leaf = |v| !g.rows.contains(v);
        assert!(leaf(1) && !leaf(2) && leaf(3) && leaf(9));
        assert_eq!(
            (g.out(0), g.out(1), g.out(2)),
            (&[1, 2][..], &[][..], &[3][..])
        );
        assert_eq!(g.range(2), (2, 3));
    }

    #[test]
    fn select_inverts_rank() {
        let s = RankedSet::new(1000, |v| v % 7 == 3 || v == 64 || v == 999);
        for v in 0..1000 {
            if let Some(c) = s.rank(v) {
                assert_eq!(s.select(c), Some(v));
            }
        }
        assert_eq!(s.select(s.len() as u32), None);
    }

    #[test]
    fn item_counts_survive_keeping_only_rows() {
        let mut o = Objects::default();
        for v in 0..200u32 {
            let i = o.push(0x1000 + 8 * u64::from(v), 0);
            o.set_items(i, u64::from(v % 5));
        }
        let before: Vec<u64> = (0..200).map(|v| o.items(v)).collect();
        // Members: most with items; 7 and 12 (items 2) are not: they stay as strays.
        let set = RankedSet::new(200, |v| v % 5 != 0 && v != 7 && v != 12);
        o.keep_items_of(Rc::new(set));
        let after: Vec<u64> = (0..200).map(|v| o.items(v)).collect();
        assert_eq!(before, after);
        assert_eq!(o.stray_items.len(), 2);
    }

    #[test]
    fn untrusted_sizes_are_not_retainable() {
        let mut o = Objects::default();
        let a = o.push(0x1000, 0);
        let b = o.push(0x2000, 0);
        o.set_size(a, 100, true);
        o.set_size(b, 40, false);
        assert_eq!((o.size(a), o.retainable(a)), (104, 104));
        assert_eq!((o.size(b), o.retainable(b), o.trusted(b)), (40, 0, false));
    }
}
