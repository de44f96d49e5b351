//! Small helpers shared by the modules.

use std::path::Path;

/// Free bytes on the filesystem holding `path` (available to unprivileged users).
pub fn free_bytes(path: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    Some((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
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

/// Split `160Mi` into `(160.0, "Mi")`; `what` and `example` make the error say what was expected.
pub fn number_and_unit<'a>(
    text: &'a str,
    what: &str,
    example: &str,
) -> Result<(f64, &'a str), String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value = num
        .parse()
        .map_err(|_| format!("not {what}: {text:?} (try {example})"))?;
    Ok((value, unit))
}

/// `160Mi`, `1G`, `512k`, `1048576`: binary suffixes (`Ki`, `Mi`, `Gi`) and decimal ones (`k`, `M`, `G`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let (value, unit) = number_and_unit(text, "a size", "160Mi")?;
    let mult: u64 = match unit.trim().trim_end_matches(['B', 'b']) {
        "" => 1,
        "k" | "K" => 1000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {text:?} (Ki, Mi, Gi, k, M, G)"
            ))
        }
    };
    let bytes = value * mult as f64;
    if !(bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!("size out of range: {text:?}"));
    }
    Ok(bytes as u64)
}
