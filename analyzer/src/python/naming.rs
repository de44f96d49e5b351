//! Naming objects by their best path from a root: `module.attr`, `module.Class.attr`,
//! `module.obj.attr`, `module.registry['sessions']`, `lru_cache of module.func`.
//!
//! Only names that are code (module, class, attribute names, and dict keys that are short
//! identifiers) appear; other string contents from the process never do.

use rustc_hash::FxHashMap;

use super::layout::Layout;
use super::mem::Mem;
use super::walk::{read_ascii, read_dict, Kind, Walk};
use super::Named;
use crate::heap::graph::NONE;
use crate::heap::table::{kind, target, EdgeKind};

const MAX_DEPTH: usize = 64;

/// What a path step prints: the edge's label, with its key or index recovered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Label {
    None,
    /// Value stored under the key with this object id.
    Key(u32),
    Item(u32),
    Attrs,
    KeyRef,
    Lru,
    Cell,
}

/// `__name__` of a module object.
pub fn module_name(mem: Mem<'_>, l: &Layout, m: u64) -> Option<String> {
    let d = mem.u64(m + 16)?;
    let mut entries = Vec::new();
    read_dict(mem, l, d, &mut entries, 1 << 16)?;
    let v = entries.iter().find_map(|&(k, v)| {
        (read_ascii(mem, l, k, 16).as_deref() == Some("__name__")).then_some(v)
    })?;
    let name = read_ascii(mem, l, v, 200)?;
    name.bytes()
        .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.')
        .then_some(name)
}

/// A dict key or attribute name fit to print: a short identifier that does not look like a token.
pub fn printable_key(s: &str) -> bool {
    let mut chars = s.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    first_ok
        && s.len() <= 32
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.chars().filter(|c| c.is_ascii_digit()).count() <= 4
}

pub struct Namer<'a> {
    mem: Mem<'a>,
    l: &'a Layout,
    walk: &'a Walk,
    /// Per object, the position of the edge the breadth-first tree reached it by.
    tree: &'a [u32],
    modules: FxHashMap<u32, String>,
    memo: FxHashMap<u32, Named>,
}

impl<'a> Namer<'a> {
    pub fn new(
        mem: Mem<'a>,
        l: &'a Layout,
        walk: &'a Walk,
        tree: &'a [u32],
        modules: &[(String, u32)],
    ) -> Namer<'a> {
        Namer {
            mem,
            l,
            walk,
            tree,
            modules: modules.iter().map(|(n, i)| (*i, n.clone())).collect(),
            memo: FxHashMap::default(),
        }
    }

    fn kind(&self, i: u32) -> Kind {
        self.walk.kind(i)
    }

    fn type_name(&self, i: u32) -> &str {
        self.walk
            .type_of(i)
            .map(|t| t.name.as_str())
            .unwrap_or("object")
    }

    fn key_text(&self, k: u32) -> Option<String> {
        if self.kind(k) != Kind::Str {
            return None;
        }
        let addr = self.walk.objs.addr(k)?;
        read_ascii(self.mem, self.l, addr, 32).filter(|s| printable_key(s))
    }

    /// The tree parent of `i` and the label of the edge it was reached by.
    fn parent(&self, i: u32) -> (u32, Label) {
        let g = &self.walk.graph;
        let Some(pos) = self
            .tree
            .get(i as usize)
            .filter(|&&k| k != NONE)
            .map(|&k| k as usize)
        else {
            return (NONE, Label::None);
        };
        let (Some(&e), Some(p)) = (g.edges.get(pos), g.source_of(pos)) else {
            return (NONE, Label::None);
        };
        let label = match kind(e) {
            EdgeKind::None => Label::None,
            // Lists, tuples and deques have only item edges, in order.
            EdgeKind::Item => Label::Item((pos - g.range(p).0) as u32),
            // The key's edge comes right before its value's.
            EdgeKind::Value => match pos.checked_sub(1).and_then(|k| g.edges.get(k)) {
                Some(&k) => Label::Key(target(k)),
                None => Label::None,
            },
            EdgeKind::KeyRef => Label::KeyRef,
            EdgeKind::Attrs => Label::Attrs,
            EdgeKind::Lru => Label::Lru,
            EdgeKind::Cell => Label::Cell,
        };
        (p, label)
    }

    /// Best path from a root to object `i`.
    pub fn name(&mut self, i: u32) -> Named {
        // Collect the chain up to a root or a memoised ancestor.
        let mut chain = vec![i];
        let mut v = i;
        while chain.len() < MAX_DEPTH && !self.memo.contains_key(&v) {
            let (p, _) = self.parent(v);
            if p == NONE {
                break;
            }
            chain.push(p);
            v = p;
        }
        let top = *chain.last().unwrap_or(&i);
        let mut cur = match self.memo.get(&top) {
            Some(n) => n.clone(),
            None => self.root_name(top),
        };
        for w in chain.windows(2).rev() {
            let (child, parent) = (w[0], w[1]);
            cur = self.step(cur, parent, child);
            self.memo.insert(child, cur.clone());
        }
        self.memo.entry(i).or_insert_with(|| cur.clone());
        cur
    }

    fn root_name(&self, r: u32) -> Named {
        if let Some(m) = self.modules.get(&r).filter(|m| !m.is_empty()) {
            return Named {
                path: m.clone(),
                referrers: vec![format!("module {m}")],
            };
        }
        let t = self.type_name(r).to_string();
        Named {
            path: format!("<{t} held outside Python objects>"),
            referrers: vec![format!(
                "{t} (no path from a module; held by native code or a frame)"
            )],
        }
    }

    fn step(&self, mut n: Named, parent: u32, child: u32) -> Named {
        let (_, label) = self.parent(child);
        let child_kind = self.kind(child);
        match label {
            Label::Attrs | Label::KeyRef => {}
            Label::Key(k) => {
                let key = self.key_text(k);
                let (_, parent_label) = self.parent(parent);
                let attr_like = self.kind(parent) != Kind::Dict || parent_label == Label::Attrs;
                match (attr_like, key) {
                    (true, Some(s)) => {
                        n.path.push('.');
                        n.path.push_str(&s);
                        n.referrers.push(match child_kind {
                            Kind::Type => format!("class {s}"),
                            Kind::Module => format!("module {s}"),
                            _ => format!("attribute {s}"),
                        });
                    }
                    (false, Some(s)) => {
                        n.path.push_str(&format!("['{s}']"));
                        n.referrers.push(format!("key '{s}'"));
                    }
                    (_, None) => {
                        n.path.push_str("[…]");
                        n.referrers.push("value of a key not shown".into());
                    }
                }
            }
            Label::Item(i) => {
                n.path.push_str(&format!("[{i}]"));
                n.referrers
                    .push(format!("item {i} of {}", self.type_name(parent)));
            }
            Label::Lru => {
                n.path = format!("lru_cache of {}", n.path);
                n.referrers.push("lru_cache cache".into());
            }
            Label::Cell => {
                n.path.push_str(".<cell>");
                n.referrers.push("closure cell".into());
            }
            Label::None => {
                let t = self.type_name(child);
                n.path.push_str(&format!(".<{t}>"));
                n.referrers
                    .push(format!("referenced by {}", self.type_name(parent)));
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::printable_key;

    #[test]
    fn only_short_identifiers_are_printed() {
        assert!(printable_key("sessions"));
        assert!(printable_key("_cache2"));
        assert!(!printable_key("sk_live_4eC39HqLyjWDarjtT1zdp7dc"));
        assert!(!printable_key("user@example.com"));
        assert!(!printable_key("2fa"));
        assert!(!printable_key(""));
        assert!(!printable_key(&"a".repeat(40)));
    }
}
