//! Small helpers shared by the modules.

use std::path::Path;

/// Free bytes on the filesystem holding `path` (available to unprivileged users).
pub fn free_bytes(path: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    Some((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
}

/// A byte count in binary units, in one of two forms. `{}`: `1.5 MiB`, `3.0 MiB`, `12 B`, up to
/// GiB (reports and messages). `{:#}`: `1.5MiB`, `3MiB`, `12B`, up to TiB, a whole figure without
/// its `.0` (the CRD's printer columns, which must stay narrow). Width and alignment apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bytes(pub u64);

impl std::fmt::Display for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let compact = f.alternate();
        // Each form keeps the units it always had: the reports never said TiB.
        let units: &[&str] = if compact {
            &["B", "KiB", "MiB", "GiB", "TiB"]
        } else {
            &["B", "KiB", "MiB", "GiB"]
        };
        let mut v = self.0 as f64;
        let mut u = 0;
        while v >= 1024.0 && u + 1 < units.len() {
            v /= 1024.0;
            u += 1;
        }
        let name = units.get(u).copied().unwrap_or("B");
        let sep = if compact { "" } else { " " };
        let text = if u == 0 {
            format!("{}{sep}{name}", self.0)
        } else if v >= 100.0 || (compact && (v - v.round()).abs() < 0.05) {
            format!("{v:.0}{sep}{name}")
        } else {
            format!("{v:.1}{sep}{name}")
        };
        f.pad(&text)
    }
}

/// Bytes as a short human-readable figure (`1.5 MiB`; see [`Bytes`]).
pub fn human_bytes(n: u64) -> String {
    Bytes(n).to_string()
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

#[cfg(test)]
mod tests {
    use super::*;

    const CASES: [u64; 9] = [
        0,
        12,
        1023,
        1024,
        1536,
        3 << 20,
        100 << 20,
        3 << 29,
        u64::MAX,
    ];

    #[test]
    fn both_forms() {
        let spaced: Vec<String> = CASES.iter().map(|&n| format!("{}", Bytes(n))).collect();
        let compact: Vec<String> = CASES.iter().map(|&n| format!("{:#}", Bytes(n))).collect();
        assert_eq!(
            spaced,
            [
                "0 B",
                "12 B",
                "1023 B",
                "1.0 KiB",
                "1.5 KiB",
                "3.0 MiB",
                "100 MiB",
                "1.5 GiB",
                "17179869184 GiB"
            ]
        );
        assert_eq!(
            compact,
            [
                "0B",
                "12B",
                "1023B",
                "1KiB",
                "1.5KiB",
                "3MiB",
                "100MiB",
                "1.5GiB",
                "16777216TiB"
            ]
        );
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(format!("[{:>8}]", Bytes(12)), "[    12 B]");
        assert_eq!(format!("[{:<6}]", format!("{:#}", Bytes(12))), "[12B   ]");
    }

    /// The two implementations `Bytes` replaced, kept to hold it to their outputs.
    fn old_spaced(n: u64) -> String {
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

    fn old_compact(bytes: u64) -> String {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut value = bytes as f64;
        let mut unit = 0;
        while value >= 1024.0 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        let name = UNITS.get(unit).copied().unwrap_or("B");
        if unit == 0 || value >= 100.0 || (value - value.round()).abs() < 0.05 {
            format!("{value:.0}{name}")
        } else {
            format!("{value:.1}{name}")
        }
    }

    #[test]
    fn same_as_the_implementations_it_replaced() {
        let mut n = 1u64;
        let mut values = vec![0, u64::MAX, u64::MAX - 1, 1 << 40, (1 << 50) + 1];
        while n < u64::MAX / 3 {
            values.extend([n - 1, n, n + 1, n / 2 * 3, n / 1024 * 1075, n / 1024 * 1076]);
            n = n.saturating_mul(2).max(n + 1);
        }
        values.extend((0..5000).map(|k| k * 977));
        for v in values {
            assert_eq!(Bytes(v).to_string(), old_spaced(v), "{v}");
            assert_eq!(format!("{:#}", Bytes(v)), old_compact(v), "{v}");
        }
    }
}
