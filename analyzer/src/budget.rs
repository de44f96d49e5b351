//! The analysis's memory budget: a memory cgroup kills for anonymous memory, and the analyzer Job
//! runs under one. The binaries install [`CountingAllocator`], so what the analysis holds is known
//! exactly (the memory-mapped core is not anonymous and is not counted); the walk and the
//! dominator tree check the budget before they grow past it and stop with [`OverBudget`], a clear
//! error, instead of being OOM-killed.

// A global allocator is unsafe by its trait; it only forwards to `System` and counts.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use crate::util::human_bytes;

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// 0: no budget.
static BUDGET: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting the bytes it holds for this process.
pub struct CountingAllocator;

fn grew(n: usize) {
    let now = IN_USE.fetch_add(n, Relaxed).saturating_add(n);
    if now > PEAK.load(Relaxed) {
        PEAK.fetch_max(now, Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to `System`, which upholds `GlobalAlloc`'s contract;
// the counters are only arithmetic on the sizes.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout` (all allocations go through it).
        unsafe { System.dealloc(ptr, layout) };
        IN_USE.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`; `new_size` is the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                IN_USE.fetch_sub(layout.size() - new_size, Relaxed);
            }
        }
        p
    }
}

/// Bytes the process's allocations hold now (0 without [`CountingAllocator`]).
pub fn in_use() -> usize {
    IN_USE.load(Relaxed)
}

/// The most they held at once.
pub fn peak() -> usize {
    PEAK.load(Relaxed)
}

pub fn set_budget(bytes: Option<u64>) {
    BUDGET.store(bytes.map_or(0, |b| b.max(1) as usize), Relaxed);
}

pub fn budget() -> Option<u64> {
    match BUDGET.load(Relaxed) {
        0 => None,
        b => Some(b as u64),
    }
}

/// Going on would take the analysis past its memory budget.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "the analysis needs more memory than its budget of {}: {what} for {objects} objects would bring it to {} (raise --memory-budget; in a cluster, the chart's analyzer.maxMemory)",
    human_bytes(*budget),
    human_bytes(*needed)
)]
pub struct OverBudget {
    pub budget: u64,
    pub needed: u64,
    pub objects: u64,
    pub what: &'static str,
}

/// Fail when `more` bytes on top of what is held now would exceed the budget; `held` is used
/// when the counting allocator is not installed (a library user).
pub fn check(
    more: usize,
    held: usize,
    what: &'static str,
    objects: usize,
) -> Result<(), OverBudget> {
    let Some(b) = budget() else {
        return Ok(());
    };
    let now = match in_use() {
        0 => held,
        n => n,
    };
    let needed = now.saturating_add(more) as u64;
    if needed > b {
        return Err(OverBudget {
            budget: b,
            needed,
            objects: objects as u64,
            what,
        });
    }
    Ok(())
}

/// [`check`] for an allocation about to be made.
pub fn reserve(more: usize, what: &'static str, objects: usize) -> Result<(), OverBudget> {
    check(more, more, what, objects)
}
