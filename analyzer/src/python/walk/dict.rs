//! Dicts and strs read straight from memory: for the walk and for naming.

use super::MAX_ITEMS;
use crate::python::layout::{DictKeys, Layout};
use crate::python::mem::{byte, plausible, u32_at, word, Mem};

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
pub(super) fn read_key_names(mem: Mem<'_>, l: &Layout, keys: u64) -> Vec<u64> {
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
