//! The HPROF heap dump format (what HotSpot's `dumpheap`, `jcmd GC.heap_dump` and `jmap -dump`
//! write), read from a memory map in one pass over its records: classes with their fields and
//! statics, every object's id, class, shallow size and file offset, and the GC roots. Object
//! contents are not copied: the edges are read from the map afterwards ([`Dump::instance_refs`]).
//!
//! The file is untrusted: every length is checked against what remains, every count against
//! what its record can hold, and nothing is allocated from a count before the bytes it describes
//! were seen to exist.

use rustc_hash::FxHashMap;

use crate::budget::{self, OverBudget};
use crate::heap::table::MAX_OBJECTS;

/// What HotSpot writes; 1.0.1 is the older, unsegmented format.
const MAGIC: [&[u8]; 2] = [b"JAVA PROFILE 1.0.2\0", b"JAVA PROFILE 1.0.1\0"];

const TAG_STRING: u8 = 0x01;
const TAG_LOAD_CLASS: u8 = 0x02;
const TAG_HEAP_DUMP: u8 = 0x0C;
const TAG_HEAP_DUMP_SEGMENT: u8 = 0x1C;

const ROOT_UNKNOWN: u8 = 0xFF;
const ROOT_JNI_GLOBAL: u8 = 0x01;
const ROOT_JNI_LOCAL: u8 = 0x02;
const ROOT_JAVA_FRAME: u8 = 0x03;
const ROOT_NATIVE_STACK: u8 = 0x04;
const ROOT_STICKY_CLASS: u8 = 0x05;
const ROOT_THREAD_BLOCK: u8 = 0x06;
const ROOT_MONITOR_USED: u8 = 0x07;
const ROOT_THREAD_OBJECT: u8 = 0x08;
const CLASS_DUMP: u8 = 0x20;
const INSTANCE_DUMP: u8 = 0x21;
const OBJ_ARRAY_DUMP: u8 = 0x22;
const PRIM_ARRAY_DUMP: u8 = 0x23;

/// A field's basic type as HPROF encodes it.
pub const T_OBJECT: u8 = 2;
pub const T_INT: u8 = 10;
pub const T_LONG: u8 = 11;

/// Shallow sizes as a 64-bit HotSpot with compressed references lays objects out (the default
/// below a 32 GiB heap): a 12-byte header, 16 for arrays, 4-byte references, 8-byte alignment.
/// HPROF records no layout, so this is the estimate every heap analyser makes.
const HEADER: u64 = 12;
const ARRAY_HEADER: u64 = 16;
const REF: u64 = 4;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not an HPROF heap dump (no `JAVA PROFILE 1.0.x` header)")]
    NotHprof,
    #[error("truncated HPROF file: {0}")]
    Truncated(String),
    #[error("malformed HPROF file at offset {offset}: {what}")]
    Malformed { offset: usize, what: String },
    #[error(transparent)]
    OverBudget(#[from] OverBudget),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether `data` starts like an HPROF file.
pub fn is_hprof(data: &[u8]) -> bool {
    MAGIC.iter().any(|m| data.starts_with(m))
}

/// Bytes of one value of basic type `t`; `None` for a type HPROF does not define.
pub fn type_size(t: u8, id_size: usize) -> Option<usize> {
    Some(match t {
        T_OBJECT => id_size,
        4 | 8 => 1,
        5 | 9 => 2,
        6 | T_INT => 4,
        7 | T_LONG => 8,
        _ => return None,
    })
}

/// The Java name of a primitive array's element type.
fn prim_array_name(t: u8) -> &'static str {
    match t {
        4 => "boolean[]",
        5 => "char[]",
        6 => "float[]",
        7 => "double[]",
        8 => "byte[]",
        9 => "short[]",
        10 => "int[]",
        11 => "long[]",
        _ => "?[]",
    }
}

/// Bounds-checked big-endian reads.
#[derive(Clone, Copy)]
struct Cur<'a> {
    d: &'a [u8],
    pos: usize,
    end: usize,
    id: usize,
}

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.end);
        let Some(end) = end else {
            return Err(Error::Truncated(format!(
                "{what} at offset {} needs {n} bytes, {} remain in its record",
                self.pos,
                self.end.saturating_sub(self.pos)
            )));
        };
        let s = self.d.get(self.pos..end).unwrap_or(&[]);
        self.pos = end;
        Ok(s)
    }

    fn uint(&mut self, n: usize, what: &str) -> Result<u64> {
        Ok(self
            .take(n, what)?
            .iter()
            .fold(0u64, |v, &b| (v << 8) | u64::from(b)))
    }

    fn u1(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?.first().copied().unwrap_or(0))
    }

    fn u2(&mut self, what: &str) -> Result<u16> {
        Ok(self.uint(2, what)? as u16)
    }

    fn u4(&mut self, what: &str) -> Result<u32> {
        Ok(self.uint(4, what)? as u32)
    }

    fn id(&mut self, what: &str) -> Result<u64> {
        self.uint(self.id, what)
    }

    fn skip(&mut self, n: usize, what: &str) -> Result<()> {
        self.take(n, what).map(|_| ())
    }

    fn malformed(&self, what: impl Into<String>) -> Error {
        Error::Malformed {
            offset: self.pos,
            what: what.into(),
        }
    }
}

/// A class as its CLASS_DUMP describes it.
#[derive(Debug, Clone)]
pub struct Class {
    pub id: u64,
    pub super_id: u64,
    /// The class loader that defined it (0: the bootstrap loader).
    pub loader: u64,
    /// Its static fields that hold references: (name string id, referenced object id).
    pub statics: Vec<(u64, u64)>,
    /// Its own instance fields, in record order: (name string id, basic type).
    pub fields: Vec<(u64, u8)>,
}

/// Which GC root an object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootKind {
    /// A system class (its statics are reached through the class).
    Class,
    Thread,
    JniGlobal,
    /// A local variable or operand of a Java frame, or a native frame's reference.
    Stack,
    Monitor,
    Other,
}

/// What an object record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjKind {
    Class,
    Instance,
    ObjArray,
    PrimArray,
}

/// One HPROF file, read.
pub struct Dump<'a> {
    data: &'a [u8],
    pub id_size: usize,
    /// Milliseconds since the epoch when the dump started.
    pub timestamp_ms: u64,
    /// Where each UTF-8 name lies in the file: id → (offset, length).
    strings: FxHashMap<u64, (usize, u32)>,
    /// Class object id → its name's string id (LOAD_CLASS).
    class_names: FxHashMap<u64, u64>,
    pub classes: Vec<Class>,
    /// Every object record (class dumps included), in file order.
    pub objects: ObjectRecords,
    pub roots: Vec<(u64, RootKind)>,
    /// Records that could not be used, for the notes.
    pub skipped: u64,
}

/// The object records as columns: id, file offset of the record's body, shallow size.
#[derive(Debug, Default)]
pub struct ObjectRecords {
    pub id: Vec<u64>,
    pub offset: Vec<u64>,
    /// Shallow sizes in 8-byte units, saturated (an array's record may claim anything).
    pub size: Vec<u32>,
    pub kind: Vec<ObjKind>,
}

impl ObjectRecords {
    fn push(&mut self, id: u64, offset: usize, size: u64, kind: ObjKind) -> Result<()> {
        if self.id.len() >= MAX_OBJECTS {
            return Err(Error::Malformed {
                offset,
                what: format!("more than {MAX_OBJECTS} objects"),
            });
        }
        if self.id.len() == self.id.capacity() {
            // 21 bytes per object; checked before the vectors double.
            let more = self.id.capacity().max(1 << 16) * 21;
            budget::reserve(more, "the HPROF object table", self.id.len())?;
        }
        self.id.push(id);
        self.offset.push(offset as u64);
        self.size
            .push(size.div_ceil(8).min(u64::from(u32::MAX)) as u32);
        self.kind.push(kind);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.id.is_empty()
    }
}

fn align8(n: u64) -> u64 {
    n.saturating_add(7) & !7
}

impl<'a> Dump<'a> {
    /// Read the records of `data`.
    pub fn parse(data: &'a [u8]) -> Result<Dump<'a>> {
        let magic = MAGIC
            .iter()
            .find(|m| data.starts_with(m))
            .ok_or(Error::NotHprof)?;
        let mut c = Cur {
            d: data,
            pos: magic.len(),
            end: data.len(),
            id: 4,
        };
        let id_size = c.u4("the identifier size")? as usize;
        if id_size != 4 && id_size != 8 {
            return Err(c.malformed(format!("identifier size {id_size} (HotSpot writes 4 or 8)")));
        }
        c.id = id_size;
        let timestamp_ms = c.uint(8, "the timestamp")?;
        let mut dump = Dump {
            data,
            id_size,
            timestamp_ms,
            strings: FxHashMap::default(),
            class_names: FxHashMap::default(),
            classes: Vec::new(),
            objects: ObjectRecords::default(),
            roots: Vec::new(),
            skipped: 0,
        };
        let mut heap_dumps = 0usize;
        while c.pos < data.len() {
            let tag = c.u1("a record tag")?;
            c.skip(4, "a record's time")?;
            let len = c.u4("a record's length")? as usize;
            let body = c.pos;
            let mut r = Cur {
                end: body
                    .checked_add(len)
                    .filter(|&e| e <= data.len())
                    .ok_or_else(|| {
                        Error::Truncated(format!(
                            "the record at offset {} claims {len} bytes, {} remain",
                            body - 9,
                            data.len() - body
                        ))
                    })?,
                ..c
            };
            match tag {
                TAG_STRING => {
                    let id = r.id("a string id")?;
                    let n = r.end - r.pos;
                    dump.strings
                        .insert(id, (r.pos, n.min(u32::MAX as usize) as u32));
                }
                TAG_LOAD_CLASS => {
                    r.skip(4, "a class serial")?;
                    let class = r.id("a class id")?;
                    r.skip(4, "a stack serial")?;
                    let name = r.id("a class name id")?;
                    dump.class_names.insert(class, name);
                }
                TAG_HEAP_DUMP | TAG_HEAP_DUMP_SEGMENT => {
                    heap_dumps += 1;
                    dump.heap_segment(&mut r)?;
                }
                _ => {}
            }
            c.pos = r.end;
        }
        if heap_dumps == 0 {
            return Err(Error::Malformed {
                offset: data.len(),
                what: "the file holds no heap dump (a CPU or allocation profile?)".into(),
            });
        }
        Ok(dump)
    }

    fn heap_segment(&mut self, r: &mut Cur<'a>) -> Result<()> {
        while r.pos < r.end {
            let start = r.pos;
            let sub = r.u1("a heap record tag")?;
            match sub {
                ROOT_UNKNOWN | ROOT_STICKY_CLASS | ROOT_MONITOR_USED => {
                    let id = r.id("a root")?;
                    let kind = match sub {
                        ROOT_STICKY_CLASS => RootKind::Class,
                        ROOT_MONITOR_USED => RootKind::Monitor,
                        _ => RootKind::Other,
                    };
                    self.roots.push((id, kind));
                }
                ROOT_JNI_GLOBAL => {
                    let id = r.id("a JNI global")?;
                    r.skip(self.id_size, "a JNI global's reference id")?;
                    self.roots.push((id, RootKind::JniGlobal));
                }
                ROOT_JNI_LOCAL | ROOT_JAVA_FRAME => {
                    let id = r.id("a frame root")?;
                    r.skip(8, "a frame root's thread and frame")?;
                    self.roots.push((id, RootKind::Stack));
                }
                ROOT_NATIVE_STACK | ROOT_THREAD_BLOCK => {
                    let id = r.id("a thread root")?;
                    r.skip(4, "a thread serial")?;
                    self.roots.push((id, RootKind::Stack));
                }
                ROOT_THREAD_OBJECT => {
                    let id = r.id("a thread object")?;
                    r.skip(8, "a thread's serials")?;
                    self.roots.push((id, RootKind::Thread));
                }
                CLASS_DUMP => self.class_dump(r, start)?,
                INSTANCE_DUMP => {
                    let id = r.id("an instance id")?;
                    r.skip(4 + self.id_size, "an instance's stack serial and class")?;
                    let n = r.u4("an instance's field bytes")? as usize;
                    r.skip(n, "an instance's fields")?;
                    let size = align8(HEADER + n as u64);
                    self.objects.push(id, start, size, ObjKind::Instance)?;
                }
                OBJ_ARRAY_DUMP => {
                    let id = r.id("an array id")?;
                    r.skip(4, "an array's stack serial")?;
                    let n = r.u4("an array's length")? as usize;
                    r.skip(self.id_size, "an array's class")?;
                    r.skip(
                        n.checked_mul(self.id_size)
                            .ok_or_else(|| r.malformed("array length overflows"))?,
                        "an array's elements",
                    )?;
                    let size = align8(ARRAY_HEADER + n as u64 * REF);
                    self.objects.push(id, start, size, ObjKind::ObjArray)?;
                }
                PRIM_ARRAY_DUMP => {
                    let id = r.id("an array id")?;
                    r.skip(4, "an array's stack serial")?;
                    let n = r.u4("an array's length")? as usize;
                    let t = r.u1("an array's element type")?;
                    let es = type_size(t, self.id_size)
                        .filter(|_| t != T_OBJECT)
                        .ok_or_else(|| r.malformed(format!("primitive array of type {t}")))?;
                    r.skip(
                        n.checked_mul(es)
                            .ok_or_else(|| r.malformed("array length overflows"))?,
                        "an array's elements",
                    )?;
                    let size = align8(ARRAY_HEADER + (n * es) as u64);
                    self.objects.push(id, start, size, ObjKind::PrimArray)?;
                }
                t => {
                    // Sub-records carry no length: one we do not know ends the segment.
                    return Err(r.malformed(format!("unknown heap record tag {t:#04x}")));
                }
            }
        }
        Ok(())
    }

    fn class_dump(&mut self, r: &mut Cur<'a>, start: usize) -> Result<()> {
        let id = r.id("a class id")?;
        r.skip(4, "a class's stack serial")?;
        let super_id = r.id("a superclass id")?;
        let loader = r.id("a class's loader")?;
        // Signers, protection domain and two reserved ids.
        r.skip(4 * self.id_size, "a class's signers and domain")?;
        let instance_size = r.u4("a class's instance size")?;
        let cp = r.u2("a constant pool size")?;
        for _ in 0..cp {
            r.skip(2, "a constant pool index")?;
            let t = r.u1("a constant's type")?;
            let n = type_size(t, self.id_size)
                .ok_or_else(|| r.malformed(format!("constant of type {t}")))?;
            r.skip(n, "a constant")?;
        }
        let ns = r.u2("a static field count")?;
        let mut statics = Vec::new();
        let mut static_bytes = 0u64;
        for _ in 0..ns {
            let name = r.id("a static field name")?;
            let t = r.u1("a static field type")?;
            let n = type_size(t, self.id_size)
                .ok_or_else(|| r.malformed(format!("static field of type {t}")))?;
            let v = r.uint(n, "a static field value")?;
            static_bytes += if t == T_OBJECT { REF } else { n as u64 };
            if t == T_OBJECT && v != 0 {
                statics.push((name, v));
            }
        }
        let nf = r.u2("an instance field count")?;
        let mut fields = Vec::with_capacity(usize::from(nf).min((r.end - r.pos) / 2));
        for _ in 0..nf {
            let name = r.id("an instance field name")?;
            let t = r.u1("an instance field type")?;
            type_size(t, self.id_size)
                .ok_or_else(|| r.malformed(format!("instance field of type {t}")))?;
            fields.push((name, t));
        }
        // A class's shallow size: its java.lang.Class mirror, where its statics live (the
        // mirror's own fields take about 96 bytes on HotSpot 17–25).
        let _ = instance_size;
        let size = align8(96 + static_bytes);
        self.objects.push(id, start, size, ObjKind::Class)?;
        self.classes.push(Class {
            id,
            super_id,
            loader,
            statics,
            fields,
        });
        Ok(())
    }

    /// The UTF-8 string of id `sid` (class and field names), lossy; `None` when absent.
    pub fn string(&self, sid: u64) -> Option<String> {
        let &(off, len) = self.strings.get(&sid)?;
        let b = self.data.get(off..off.checked_add(len as usize)?)?;
        Some(String::from_utf8_lossy(b).into_owned())
    }

    /// A class's Java name (`java.util.HashMap`, `java.lang.String[]`).
    pub fn class_name(&self, class_id: u64) -> String {
        let raw = self
            .class_names
            .get(&class_id)
            .and_then(|&s| self.string(s))
            .unwrap_or_else(|| format!("<class {class_id:#x}>"));
        java_name(&raw)
    }

    fn cursor_at(&self, offset: u64) -> Cur<'a> {
        Cur {
            d: self.data,
            pos: offset as usize,
            end: self.data.len(),
            id: self.id_size,
        }
    }

    /// The class id of object record `i` (the element type's array class for an object array;
    /// 0 for a class or a primitive array), and for a primitive array its element type.
    pub fn class_of(&self, i: usize) -> (u64, u8) {
        let (Some(&off), Some(&kind)) = (self.objects.offset.get(i), self.objects.kind.get(i))
        else {
            return (0, 0);
        };
        let mut c = self.cursor_at(off);
        let id = self.id_size;
        let r = (|| -> Result<(u64, u8)> {
            c.skip(1 + id + 4, "")?;
            match kind {
                ObjKind::Instance => Ok((c.id("")?, 0)),
                ObjKind::ObjArray => {
                    c.skip(4, "")?;
                    Ok((c.id("")?, 0))
                }
                ObjKind::PrimArray => {
                    c.skip(4, "")?;
                    Ok((0, c.u1("")?))
                }
                ObjKind::Class => Ok((0, 0)),
            }
        })();
        r.unwrap_or((0, 0))
    }

    /// The primitive array type name of element type `t`.
    pub fn prim_array_name(t: u8) -> &'static str {
        prim_array_name(t)
    }

    /// An instance's field bytes (the record was bounds-checked when it was read).
    pub fn instance_fields(&self, i: usize) -> &'a [u8] {
        let Some(&off) = self.objects.offset.get(i) else {
            return &[];
        };
        let mut c = self.cursor_at(off);
        let id = self.id_size;
        (|| -> Result<&'a [u8]> {
            c.skip(1 + id + 4 + id, "")?;
            let n = c.u4("")? as usize;
            c.take(n, "")
        })()
        .unwrap_or(&[])
    }

    /// An object array's elements, as raw ids.
    pub fn array_elements(&self, i: usize) -> impl Iterator<Item = u64> + 'a {
        let off = self.objects.offset.get(i).copied().unwrap_or(u64::MAX);
        let id = self.id_size;
        let mut c = self.cursor_at(off);
        let bytes = (|| -> Result<&'a [u8]> {
            c.skip(1 + id + 4, "")?;
            let n = c.u4("")? as usize;
            c.skip(id, "")?;
            c.take(n.saturating_mul(id), "")
        })()
        .unwrap_or(&[]);
        bytes
            .chunks_exact(id)
            .map(|w| w.iter().fold(0u64, |v, &b| (v << 8) | u64::from(b)))
    }

    /// An array's length.
    pub fn array_length_of(&self, i: usize) -> u64 {
        let off = self.objects.offset.get(i).copied().unwrap_or(u64::MAX);
        let mut c = self.cursor_at(off);
        c.skip(1 + self.id_size + 4, "")
            .and_then(|()| c.u4(""))
            .map_or(0, u64::from)
    }
}

impl<'a> Dump<'a> {
    /// A primitive array's element bytes.
    pub fn prim_array_bytes(&self, i: usize) -> Option<&'a [u8]> {
        if self.objects.kind.get(i) != Some(&ObjKind::PrimArray) {
            return None;
        }
        let mut c = self.cursor_at(*self.objects.offset.get(i)?);
        c.skip(1 + self.id_size + 4, "").ok()?;
        let n = c.u4("").ok()? as usize;
        let t = c.u1("").ok()?;
        let es = type_size(t, self.id_size)?;
        c.take(n.checked_mul(es)?, "").ok()
    }
}

/// Read a value of basic type `t` at `off` of an instance's field bytes.
pub fn read_value(fields: &[u8], off: usize, n: usize) -> Option<u64> {
    let b = fields.get(off..off.checked_add(n)?)?;
    Some(b.iter().fold(0u64, |v, &x| (v << 8) | u64::from(x)))
}

/// `java/util/HashMap` → `java.util.HashMap`; `[Ljava/lang/String;` → `java.lang.String[]`;
/// `[[I` → `int[][]`.
pub fn java_name(raw: &str) -> String {
    let dims = raw.bytes().take_while(|&b| b == b'[').count();
    let base = &raw[dims..];
    let base = if dims == 0 {
        base.replace('/', ".")
    } else {
        match base.as_bytes().first() {
            Some(b'L') => base
                .trim_start_matches('L')
                .trim_end_matches(';')
                .replace('/', "."),
            Some(b'Z') => "boolean".into(),
            Some(b'C') => "char".into(),
            Some(b'F') => "float".into(),
            Some(b'D') => "double".into(),
            Some(b'B') => "byte".into(),
            Some(b'S') => "short".into(),
            Some(b'I') => "int".into(),
            Some(b'J') => "long".into(),
            _ => base.replace('/', "."),
        }
    };
    let mut name = base;
    for _ in 0..dims {
        name.push_str("[]");
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_names() {
        assert_eq!(java_name("java/util/HashMap"), "java.util.HashMap");
        assert_eq!(java_name("[Ljava/lang/String;"), "java.lang.String[]");
        assert_eq!(java_name("[[I"), "int[][]");
        assert_eq!(java_name("[J"), "long[]");
        assert_eq!(java_name("com.shop.Price$Quote"), "com.shop.Price$Quote");
    }

    #[test]
    fn foreign_and_truncated_files_are_refused() {
        assert!(matches!(Dump::parse(b"\x7fELF...."), Err(Error::NotHprof)));
        let mut h = b"JAVA PROFILE 1.0.2\0".to_vec();
        assert!(matches!(Dump::parse(&h), Err(Error::Truncated(_))));
        h.extend_from_slice(&3u32.to_be_bytes());
        assert!(matches!(Dump::parse(&h), Err(Error::Malformed { .. })));
    }
}
