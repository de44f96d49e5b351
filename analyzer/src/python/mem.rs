//! Bounded, failure-tolerant reads on top of [`MemoryImage`]: every read may fail (missing page,
//! corrupt pointer), and every failure is an `Option::None`, never a panic.

use std::borrow::Cow;

use crate::image::MemoryImage;

/// Largest single block the walker reads at once (a dict entry table, a list item array).
pub const MAX_BLOCK: usize = 64 << 20;

#[derive(Clone, Copy)]
pub struct Mem<'a> {
    pub img: &'a dyn MemoryImage,
}

impl<'a> Mem<'a> {
    pub fn new(img: &'a dyn MemoryImage) -> Mem<'a> {
        Mem { img }
    }

    pub fn u64(&self, addr: u64) -> Option<u64> {
        self.img.read_u64(addr).ok()
    }

    /// `len` bytes at `addr`, borrowed from the image when it keeps them in memory.
    pub fn bytes(&self, addr: u64, len: usize) -> Option<Cow<'a, [u8]>> {
        if len > MAX_BLOCK {
            return None;
        }
        if let Some(s) = self.img.slice(addr, len) {
            return Some(Cow::Borrowed(s));
        }
        let mut v = vec![0u8; len];
        self.img.read(addr, &mut v).ok()?;
        Some(Cow::Owned(v))
    }

    /// `n` consecutive 8-byte words.
    pub fn words(&self, addr: u64, n: usize) -> Option<Vec<u64>> {
        let b = self.bytes(addr, n.checked_mul(8)?)?;
        Some(b.chunks_exact(8).map(le64).collect())
    }

    pub fn cstr(&self, addr: u64, max: usize) -> Option<String> {
        self.img.read_cstr(addr, max).ok()
    }

    pub fn readable(&self, addr: u64) -> bool {
        self.img.mapping_at(addr).is_some_and(|m| m.perms.read)
    }
}

/// Little-endian u64 from the first 8 bytes of `b` (0 when shorter).
pub fn le64(b: &[u8]) -> u64 {
    b.get(..8)
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0)
}

/// Word at byte offset `off` of `b`, 0 when out of range.
pub fn word(b: &[u8], off: u64) -> u64 {
    usize::try_from(off)
        .ok()
        .and_then(|o| b.get(o..o.checked_add(8)?))
        .map(le64)
        .unwrap_or(0)
}

pub fn byte(b: &[u8], off: u64) -> u8 {
    usize::try_from(off)
        .ok()
        .and_then(|o| b.get(o).copied())
        .unwrap_or(0)
}

pub fn u32_at(b: &[u8], off: u64) -> u32 {
    usize::try_from(off)
        .ok()
        .and_then(|o| b.get(o..o.checked_add(4)?))
        .and_then(|s| <[u8; 4]>::try_from(s).ok())
        .map(u32::from_le_bytes)
        .unwrap_or(0)
}

/// A plausible user-space object pointer: non-null, 8-aligned, canonical.
pub fn plausible(p: u64) -> bool {
    p != 0 && p % 8 == 0 && p < (1 << 47)
}
