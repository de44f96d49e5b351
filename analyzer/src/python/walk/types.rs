//! Reading type objects (name, layout, kind), and the strings and dicts they need (read only,
//! nothing interned).

use std::rc::Rc;

use super::{read_ascii, read_dict, read_key_names, Kind, Shape, TypeInfo, Walker};
use crate::python::layout::flags;
use crate::python::mem::{plausible, word};

impl<'a> Walker<'a> {
    /// Index in `types` of the type object at `t`, read the first time it is seen; `None` when
    /// `t` is not a type.
    pub(super) fn type_info(&mut self, t: u64) -> Option<u32> {
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

    /// `t` is a type object: its metatype chain leads to `type`.
    pub(super) fn is_type_object(&mut self, t: u64, depth: u32) -> bool {
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

    /// Name and shape of the type object at `t`, when its fields are sane.
    pub(super) fn read_type(&mut self, t: u64, _depth: u32) -> Option<TypeInfo> {
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
        let weaklistoffset = word(&b, l.tp_weaklistoffset) as i64;
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
        let (known, base_name, base_size) = self.layout_base(t);
        let kind = kind_of(tflags, known, heap, &base_name);
        Some(TypeInfo {
            name,
            shape: Shape {
                kind,
                basicsize,
                itemsize,
                flags: tflags,
                dictoffset,
                weaklistoffset,
                heap,
                cached_keys,
                static_base_size: base_size.min(basicsize),
                ordered: base_name.contains("OrderedDict"),
            },
        })
    }

    /// The nearest base with a known layout (by `tp_name`: since 3.10 some C types such as
    /// `functools._lru_cache_wrapper` and `collections.deque` are heap types), else the nearest
    /// static base: `(its kind, its name, its basicsize)`.
    pub(super) fn layout_base(&mut self, t: u64) -> (Option<Kind>, String, u64) {
        let l = self.l;
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
                // 3.11+ names, then the older ones.
                "weakref.ReferenceType"
                | "weakref.ProxyType"
                | "weakref.CallableProxyType"
                | "weakref"
                | "weakproxy"
                | "weakcallableproxy" => Some(Kind::WeakRef),
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
        (known, base_name, base_size)
    }

    /// Content of a compact ASCII `str` of at most `max` characters.
    pub fn read_str(&self, s: u64, max: u64) -> Option<String> {
        read_ascii(self.mem, &self.l, s, max)
    }

    /// `d[key]` where `d` is a dict with str keys, as a string.
    pub(super) fn dict_get_str(&mut self, d: u64, key: &str) -> Option<String> {
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

    pub(super) fn shared_keys(&mut self, keys: u64) -> Rc<[u64]> {
        if let Some(k) = self.shared_keys.get(&keys) {
            return k.clone();
        }
        let v: Rc<[u64]> = read_key_names(self.mem, &self.l, keys).into();
        self.shared_keys.insert(keys, v.clone());
        v
    }
}

/// The kind of a type: by its subclass flags, else by its layout base; a heap class over
/// `object` is an instance.
fn kind_of(tflags: u64, known: Option<Kind>, heap: bool, base_name: &str) -> Kind {
    if tflags & flags::TYPE_SUBCLASS != 0 {
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
    }
}
