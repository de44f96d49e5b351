//! Per-version CPython layouts, as data. Everything version-specific the walker needs is here, and
//! [`Layout::for_version`] is the one place that dispatches on the version.
//!
//! Offsets are for 64-bit little-endian default (GIL) builds, taken from each release's headers and
//! checked at run time against the interpreter itself (`type.__basicsize__`, `_Py_DebugOffsets`).

use super::Error;

/// Type flags (`Include/object.h`); stable across 3.8–3.15 except where noted.
pub mod flags {
    /// 3.13+: instance attribute values live inline after the object.
    pub const INLINE_VALUES: u64 = 1 << 2;
    /// 3.12+: weakref list lives in the pre-header.
    pub const MANAGED_WEAKREF: u64 = 1 << 3;
    /// 3.11+: instance `__dict__` lives in the pre-header.
    pub const MANAGED_DICT: u64 = 1 << 4;
    pub const HEAPTYPE: u64 = 1 << 9;
    pub const HAVE_GC: u64 = 1 << 14;
    pub const LONG_SUBCLASS: u64 = 1 << 24;
    pub const LIST_SUBCLASS: u64 = 1 << 25;
    pub const TUPLE_SUBCLASS: u64 = 1 << 26;
    pub const BYTES_SUBCLASS: u64 = 1 << 27;
    pub const UNICODE_SUBCLASS: u64 = 1 << 28;
    pub const DICT_SUBCLASS: u64 = 1 << 29;
    pub const TYPE_SUBCLASS: u64 = 1 << 31;
}

/// How dict key tables are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DictKeys {
    /// 3.8–3.10: `dk_size` (ssize) at 8, `dk_nentries` at 32, indices at 40, 24-byte entries.
    Sized,
    /// 3.11+: `dk_log2_size` (u8) at 8, `dk_log2_index_bytes` at 9, `dk_kind` at 10, `dk_nentries`
    /// at 24, indices at 32; unicode and split tables use 16-byte entries.
    Log2,
}

/// Where instance attributes of classes without an explicit `tp_dictoffset` live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceDict {
    /// 3.8–3.10: `tp_dictoffset` only.
    DictOffset,
    /// 3.11: pre-header word -3 is the dict, word -4 the values array (shared keys of the class).
    Managed311,
    /// 3.12: pre-header word -3 is either a dict or (tagged with bit 0) a values array.
    Managed312,
    /// 3.13+: values inline after the object (`Py_TPFLAGS_INLINE_VALUES`), dict at word -3.
    Inline313,
}

/// Where the collector keeps its generation lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GcGenerations {
    /// 3.8–3.13: `generations[3]`, then `generation0` pointing at the first, then `permanent_generation`.
    Three,
    /// 3.14: `young`, `old[2]`, `permanent_generation` (incremental collector).
    YoungOld,
}

/// Where a generator's or frame object's interpreter frame (3.11+) keeps its code object, and
/// where the code object keeps the counts that size the frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameLayout {
    /// `offsetof(_PyInterpreterFrame, localsplus)`: the frame ends an object's fixed part.
    pub localsplus: u64,
    /// Offset of the code object reference in the interpreter frame.
    pub code: u64,
    pub co_stacksize: u64,
    pub co_nlocalsplus: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub minor: u32,
    /// `sizeof(PyHeapTypeObject)`, i.e. `type.__basicsize__`: a direct check of the table.
    pub heap_type_size: u64,
    /// `sizeof(PyTypeObject)`, the size of a static type; 0 where not pinned.
    pub type_size: u64,
    pub tp_name: u64,
    pub tp_basicsize: u64,
    pub tp_itemsize: u64,
    pub tp_flags: u64,
    pub tp_base: u64,
    pub tp_dict: u64,
    pub tp_weaklistoffset: u64,
    pub tp_dictoffset: u64,
    pub tp_mro: u64,
    pub ht_name: u64,
    pub ht_qualname: u64,
    pub ht_cached_keys: u64,
    /// `sizeof(PyASCIIObject)`: data of compact ASCII strings starts here.
    pub unicode_ascii_size: u64,
    /// Offset of a tuple's first item: 3.14 caches the tuple's hash before them.
    pub tuple_items: u64,
    /// 3.15+: a bytearray's buffer is the `ob_sval` of a bytes object it owns, whose header
    /// (33 bytes) it pays for too.
    pub bytearray_in_bytes: bool,
    /// `sizeof(PyCompactUnicodeObject)`.
    pub unicode_compact_size: u64,
    /// 3.12+: ints carry `lv_tag` (digits << 3 | sign) instead of `ob_size`.
    pub long_tag: bool,
    pub dict_keys: DictKeys,
    /// Bytes before `values[0]` in a `PyDictValues` (3.13+: capacity/size/embedded/valid).
    pub dict_values_header: u64,
    pub instance_dict: InstanceDict,
    /// Bytes before the GC header for types with managed dict / weakref.
    pub pre_header: u64,
    pub gc: GcGenerations,
    /// Offset of the first generation in the interpreter's GC state: 3.15 moved the two
    /// trashcan fields before it out.
    pub gc_generations: u64,
    /// Frames embedded in generators and frame objects (3.11+); before, they were objects apart.
    pub frame: Option<FrameLayout>,
}

/// A parsed CPython version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub micro: u32,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

impl Layout {
    /// The one dispatch on the version.
    pub fn for_version(v: Version, free_threaded: bool) -> Result<Layout, Error> {
        if free_threaded {
            return Err(Error::Unsupported(format!(
                "CPython {v} free-threaded build (no GIL): its object header differs and is not supported; use the default build"
            )));
        }
        // Common to every supported version: PyTypeObject up to tp_mro did not move.
        let base = Layout {
            minor: v.minor,
            heap_type_size: 0,
            type_size: 0,
            tp_name: 24,
            tp_basicsize: 32,
            tp_itemsize: 40,
            tp_flags: 168,
            tp_base: 256,
            tp_dict: 264,
            tp_weaklistoffset: 208,
            tp_dictoffset: 288,
            tp_mro: 344,
            ht_name: 0,
            ht_qualname: 0,
            ht_cached_keys: 0,
            unicode_ascii_size: 48,
            unicode_compact_size: 72,
            tuple_items: 24,
            bytearray_in_bytes: false,
            long_tag: false,
            dict_keys: DictKeys::Sized,
            dict_values_header: 0,
            instance_dict: InstanceDict::DictOffset,
            pre_header: 0,
            gc: GcGenerations::Three,
            gc_generations: 24,
            frame: None,
        };
        // sizeof(PyHeapTypeObject), the offset of ht_name, sizeof(PyTypeObject): measured here
        // (type.__basicsize__, sys.getsizeof(int)).
        let heap = |size: u64, name: u64, type_size: u64| Layout {
            heap_type_size: size,
            type_size,
            ht_name: name,
            ht_qualname: name + 16,
            ht_cached_keys: name + 24,
            ..base
        };
        let l = match (v.major, v.minor) {
            (3, 8) => heap(880, 848, 416),
            (3, 9) => heap(880, 840, 408),
            (3, 10) => heap(888, 848, 408),
            (3, 11) => Layout {
                dict_keys: DictKeys::Log2,
                instance_dict: InstanceDict::Managed311,
                pre_header: 16,
                frame: Some(FrameLayout {
                    localsplus: 72,
                    code: 32,
                    co_stacksize: 68,
                    co_nlocalsplus: 76,
                }),
                ..heap(904, 848, 424)
            },
            (3, 12) => Layout {
                dict_keys: DictKeys::Log2,
                instance_dict: InstanceDict::Managed312,
                pre_header: 16,
                frame: Some(FrameLayout {
                    localsplus: 72,
                    code: 0,
                    co_stacksize: 64,
                    co_nlocalsplus: 72,
                }),
                long_tag: true,
                unicode_ascii_size: 40,
                unicode_compact_size: 56,
                ..heap(920, 856, 432)
            },
            (3, 13..=15) => Layout {
                dict_keys: DictKeys::Log2,
                instance_dict: InstanceDict::Inline313,
                dict_values_header: 8,
                pre_header: 16,
                // 3.14 adds `stackpointer` and `visited` before `localsplus` (3.15: the same).
                frame: Some(FrameLayout {
                    localsplus: if v.minor == 13 { 72 } else { 80 },
                    code: 0,
                    co_stacksize: 64,
                    co_nlocalsplus: 72,
                }),
                long_tag: true,
                unicode_ascii_size: 40,
                unicode_compact_size: 56,
                tuple_items: if v.minor == 13 { 24 } else { 32 },
                bytearray_in_bytes: v.minor >= 15,
                gc: if v.minor == 13 {
                    GcGenerations::Three
                } else {
                    GcGenerations::YoungOld
                },
                gc_generations: if v.minor <= 14 { 24 } else { 8 },
                // Measured on Debian's 3.14.8 and 3.15.0: 3.14 adds fields after the heap-type
                // slots, 3.15 one to PyTypeObject itself.
                ..match v.minor {
                    13 => heap(928, 856, 416),
                    14 => heap(936, 856, 416),
                    _ => heap(944, 864, 424),
                }
            },
            _ => {
                return Err(Error::Unsupported(format!(
                    "CPython {v}: leakhunt reads CPython 3.8 to 3.15"
                )))
            }
        };
        Ok(l)
    }

    /// Guess the minor version from `type.__basicsize__` (`sizeof(PyHeapTypeObject)`).
    pub fn minor_from_heap_type_size(size: u64) -> Option<&'static [u32]> {
        match size {
            880 => Some(&[8, 9]),
            888 => Some(&[10]),
            904 => Some(&[11]),
            920 => Some(&[12]),
            928 => Some(&[13]),
            936 => Some(&[14]),
            944 => Some(&[15]),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(minor: u32) -> Version {
        Version {
            major: 3,
            minor,
            micro: 0,
        }
    }

    #[test]
    fn supported_range_and_free_threaded() {
        for minor in 8..=15 {
            assert!(Layout::for_version(v(minor), false).is_ok(), "3.{minor}");
        }
        let e = Layout::for_version(v(7), false).unwrap_err().to_string();
        assert!(e.contains("3.7.0"), "{e}");
        let e = Layout::for_version(v(13), true).unwrap_err().to_string();
        assert!(e.contains("free-threaded"), "{e}");
    }

    #[test]
    fn heap_type_sizes_identify_versions() {
        for minor in [10, 11, 12, 13] {
            let l = Layout::for_version(v(minor), false).unwrap();
            assert_eq!(
                Layout::minor_from_heap_type_size(l.heap_type_size),
                Some(&[minor][..])
            );
        }
    }
}
