//! Small helpers shared by the modules.

use std::path::Path;

/// Free bytes on the filesystem holding `path` (available to unprivileged users).
pub fn free_bytes(path: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    Some(st.blocks_available() as u64 * st.fragment_size() as u64)
}

/// Bytes as a short human-readable figure (KiB, MiB, GiB).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else if v >= 100.0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Signed byte delta, e.g. `+1.5 MiB`, `-12 KiB`.
pub fn human_delta(d: i64) -> String {
    let s = human_bytes(d.unsigned_abs());
    if d < 0 {
        format!("-{s}")
    } else {
        format!("+{s}")
    }
}
