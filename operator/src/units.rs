//! The quantities leakhunt reads from people and from Kubernetes: sizes (`160Mi`), durations
//! (`1s`), percentages (`50%`), and Kubernetes resource quantities (`128Mi`, `1e9`, `500m`).

use std::time::Duration;

use leakhunt_analyzer::util::number_and_unit;
pub use leakhunt_analyzer::util::{human_bytes, parse_size};

/// A byte size or count as the CRDs store it (`i64`), saturating.
pub fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// `1s`, `500ms`, `2m`, `1h`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (value, unit) = number_and_unit(text, "a duration", "1s")?;
    let secs = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit {other:?} in {text:?} (ms, s, m, h)"
            ))
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("duration out of range: {text:?}"))
}

/// What a number without `%` means: the hunt's flags take a share (`0.85`), the cluster's
/// (set from Helm values such as `baseline: 50`) a percentage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bare {
    Share,
    Percent,
}

/// `50%`, or a bare number read as `bare` says; a share of 0..=1.
pub fn parse_percent(text: &str, bare: Bare) -> Result<f64, String> {
    let t = text.trim();
    let example = match bare {
        Bare::Share => "50%",
        Bare::Percent => "50",
    };
    let value = match (t.strip_suffix('%'), bare) {
        (Some(p), _) => p.trim().parse::<f64>().map(|v| v / 100.0),
        (None, Bare::Share) => t.parse::<f64>(),
        (None, Bare::Percent) => t.parse::<f64>().map(|v| v / 100.0),
    }
    .map_err(|_| format!("not a percentage: {text:?} (try {example})"))?;
    if !(0.0..=1.0).contains(&value) {
        return Err(format!("percentage out of range: {text:?}"));
    }
    Ok(value)
}

/// A Kubernetes resource quantity as bytes, rounded up (`128Mi`, `1G`, `1e9`, `128974848000m`);
/// `None` for what the API server would not accept as a quantity, or a negative one.
pub fn parse_quantity(text: &str) -> Option<u64> {
    let t = text.trim();
    let end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(t.len());
    let (num, suffix) = t.split_at(end);
    let value: f64 = num.parse().ok()?;
    let scale = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e => {
            let exp: i32 = e.strip_prefix(['e', 'E'])?.parse().ok()?;
            10f64.powi(exp)
        }
    };
    let bytes = (value * scale).ceil();
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("160Mi"), Ok(160 << 20));
        assert_eq!(parse_size("1.5Gi"), Ok(3 << 29));
        assert_eq!(parse_size("2M"), Ok(2_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5Qi").is_err());
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn percents_and_durations() {
        assert_eq!(parse_percent("50%", Bare::Share), Ok(0.5));
        assert_eq!(parse_percent("0.85", Bare::Share), Ok(0.85));
        assert_eq!(parse_percent("85", Bare::Percent), Ok(0.85));
        assert_eq!(parse_percent("85%", Bare::Percent), Ok(0.85));
        assert!(parse_percent("150%", Bare::Share).is_err());
        assert!(
            parse_percent("50", Bare::Share).is_err(),
            "50 is not a share"
        );
        assert!(parse_percent("lots", Bare::Percent).is_err());
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("1y").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn kubernetes_quantities() {
        assert_eq!(parse_quantity("128Mi"), Some(128 << 20));
        assert_eq!(parse_quantity("1G"), Some(1_000_000_000));
        assert_eq!(parse_quantity("1e9"), Some(1_000_000_000));
        assert_eq!(parse_quantity("1E3"), Some(1000));
        assert_eq!(parse_quantity("134217728"), Some(134_217_728));
        assert_eq!(parse_quantity("128974848000m"), Some(128_974_848));
        assert_eq!(parse_quantity("1500m"), Some(2), "rounded up");
        assert_eq!(parse_quantity("0.5Gi"), Some(512 << 20));
        assert_eq!(parse_quantity("-1Mi"), None);
        assert_eq!(parse_quantity("lots"), None);
        assert_eq!(parse_quantity("5Qi"), None);
        assert_eq!(parse_quantity(""), None);
    }
}
