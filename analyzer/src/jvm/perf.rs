//! HotSpot's performance counters (`<tmp>/hsperfdata_<user>/<pid>`, what `jstat` reads): heap,
//! metaspace, threads and collections of a running JVM, read from outside with no attach and no
//! pause. The file is the JVM's shared memory, written by an untrusted process: every offset and
//! length is checked, and nothing is allocated from a count the bytes do not back.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// The file's first bytes, whatever the byte order.
const MAGIC: [u8; 4] = [0xca, 0xfe, 0xc0, 0xc0];
const PROLOGUE: usize = 32;
const ENTRY_HEADER: usize = 20;
/// HotSpot's default is 32 KiB (`-XX:PerfDataMemorySize`); a larger file is read this far.
const MAX_FILE: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not a HotSpot performance data file: {0}")]
    Malformed(String),
}

/// One counter's value: a number (`J`) or a string (a `B` vector).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Long(i64),
    Text(String),
}

/// The counters of one file, in file order.
#[derive(Debug, Clone, Default)]
pub struct PerfData {
    counters: Vec<(String, Value)>,
}

impl PerfData {
    /// Read `data`, the bytes of an hsperfdata file.
    pub fn parse(data: &[u8]) -> Result<PerfData, Error> {
        let bad = |what: String| Error::Malformed(what);
        if data.get(..4) != Some(&MAGIC[..]) {
            return Err(bad("no 0xcafec0c0 magic".into()));
        }
        let little = match data.get(4) {
            Some(1) => true,
            Some(0) => false,
            b => return Err(bad(format!("byte order {b:?}"))),
        };
        let i32_at = |off: usize| -> Option<i64> {
            let b: [u8; 4] = data.get(off..off.checked_add(4)?)?.try_into().ok()?;
            Some(i64::from(if little {
                i32::from_le_bytes(b)
            } else {
                i32::from_be_bytes(b)
            }))
        };
        let i64_at = |off: usize| -> Option<i64> {
            let b: [u8; 8] = data.get(off..off.checked_add(8)?)?.try_into().ok()?;
            Some(if little {
                i64::from_le_bytes(b)
            } else {
                i64::from_be_bytes(b)
            })
        };
        if data.len() < PROLOGUE {
            return Err(bad(format!(
                "{} bytes, shorter than its header",
                data.len()
            )));
        }
        let used = i32_at(8).unwrap_or(0).clamp(0, data.len() as i64) as usize;
        let first = i32_at(24).unwrap_or(0);
        let entries = i32_at(28).unwrap_or(0);
        if first < PROLOGUE as i64 || entries < 0 {
            return Err(bad(format!("entries at {first}, {entries} of them")));
        }
        let mut out = PerfData::default();
        let mut off = first as usize;
        // Each entry takes at least its header: the count cannot run past the bytes used.
        for _ in 0..entries.min((used / ENTRY_HEADER) as i64) {
            let (Some(len), Some(name_off), Some(vlen), Some(data_off)) = (
                i32_at(off),
                i32_at(off + 4),
                i32_at(off + 8),
                i32_at(off + 16),
            ) else {
                break;
            };
            if len < ENTRY_HEADER as i64 || off as i64 + len > used as i64 {
                return Err(bad(format!("entry at {off} of length {len}")));
            }
            let end = off + len as usize;
            let inside =
                |rel: i64| (rel >= 0 && off as i64 + rel < end as i64).then(|| off + rel as usize);
            let ty = data.get(off + 12).copied().unwrap_or(0);
            let name = inside(name_off)
                .and_then(|s| data.get(s..end))
                .and_then(|b| b.split(|&c| c == 0).next())
                .map(|b| String::from_utf8_lossy(b).into_owned());
            let value = match (ty, vlen) {
                (b'J', 0) => inside(data_off)
                    .filter(|&s| s + 8 <= end)
                    .and_then(i64_at)
                    .map(Value::Long),
                (b'B', n) if n > 0 => inside(data_off).and_then(|s| {
                    let stop = s.saturating_add(n as usize).min(end);
                    let b = data.get(s..stop)?;
                    let b = b.split(|&c| c == 0).next().unwrap_or(&[]);
                    Some(Value::Text(String::from_utf8_lossy(b).into_owned()))
                }),
                _ => None,
            };
            if let (Some(name), Some(value)) = (name, value) {
                out.counters.push((name, value));
            }
            off = end;
        }
        Ok(out)
    }

    /// Read the file at `path` (at most 4 MiB of it).
    pub fn read(path: &Path) -> Result<PerfData, Error> {
        use std::io::Read;
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut data = Vec::new();
        std::fs::File::open(path)
            .map_err(io)?
            .take(MAX_FILE)
            .read_to_end(&mut data)
            .map_err(io)?;
        PerfData::parse(&data)
    }

    pub fn long(&self, name: &str) -> Option<i64> {
        self.counters.iter().find_map(|(n, v)| match v {
            Value::Long(x) if n == name => Some(*x),
            _ => None,
        })
    }

    pub fn text(&self, name: &str) -> Option<&str> {
        self.counters.iter().find_map(|(n, v)| match v {
            Value::Text(x) if n == name => Some(x.as_str()),
            _ => None,
        })
    }

    /// The sum of every counter named `prefix` + `N` + `suffix` (a generation's, a collector's),
    /// or with `spaces`, `prefix` + `N.space.M` + `suffix` (a space's); `None` when there is none.
    fn sum(&self, prefix: &str, suffix: &str, spaces: bool) -> Option<i64> {
        let number = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        let mut any = false;
        let total = self
            .counters
            .iter()
            .filter_map(|(n, v)| {
                let mid = n.strip_prefix(prefix)?.strip_suffix(suffix)?;
                let ok = match mid.split_once(".space.") {
                    Some((g, s)) => spaces && number(g) && number(s),
                    None => !spaces && number(mid),
                };
                match v {
                    Value::Long(x) if ok => {
                        any = true;
                        Some((*x).max(0))
                    }
                    _ => None,
                }
            })
            .fold(0i64, |a, x| a.saturating_add(x));
        any.then_some(total)
    }

    /// What leakhunt samples of a JVM.
    pub fn stats(&self) -> JvmStats {
        let freq = self.long("sun.os.hrt.frequency").filter(|&f| f > 0);
        let gc_ticks = self.sum("sun.gc.collector.", ".time", false);
        // G1 gives each generation the whole heap as its maximum: their sum would be twice -Xmx.
        let g1 = self.text("sun.gc.policy.name") == Some("GarbageFirst");
        let heap_max = if g1 {
            self.long("sun.gc.generation.1.maxCapacity")
        } else {
            self.sum("sun.gc.generation.", ".maxCapacity", false)
        };
        JvmStats {
            version: self
                .text("java.property.java.version")
                .or_else(|| self.text("java.property.java.vm.version"))
                .map(str::to_owned),
            collector: self.text("sun.gc.policy.name").map(str::to_owned),
            heap_used: self.sum("sun.gc.generation.", ".used", true).map(to_u64),
            heap_committed: self
                .sum("sun.gc.generation.", ".capacity", false)
                .map(to_u64),
            heap_max: heap_max.map(to_u64),
            metaspace_used: self.long("sun.gc.metaspace.used").map(to_u64),
            metaspace_committed: self.long("sun.gc.metaspace.capacity").map(to_u64),
            class_space_used: self.long("sun.gc.compressedclassspace.used").map(to_u64),
            threads: self.long("java.threads.live").map(to_u64),
            old_used: self.long("sun.gc.generation.1.space.0.used").map(to_u64),
            compiles: self.long("sun.ci.totalCompiles").map(to_u64),
            compiled_bytes: self.long("sun.ci.nmethodSize").map(to_u64),
            old_max: self.long("sun.gc.generation.1.maxCapacity").map(to_u64),
            collections: self
                .sum("sun.gc.collector.", ".invocations", false)
                .map(to_u64),
            gc_seconds: gc_ticks.zip(freq).map(|(t, f)| t as f64 / f as f64),
            vm_args: self.text("java.rt.vmArgs").unwrap_or_default().to_owned(),
            vm_flags: self.text("java.rt.vmFlags").unwrap_or_default().to_owned(),
        }
    }
}

fn to_u64(x: i64) -> u64 {
    x.max(0) as u64
}

/// A JVM's pools and activity at one moment, from its performance counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JvmStats {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `G1`'s policy is `GarbageFirst`; Serial's `Copy:MSC`; Parallel's `ParScav:MSC`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collector: Option<String>,
    /// The heap's spaces: used, committed and their maximum (`-Xmx`).
    pub heap_used: Option<u64>,
    pub heap_committed: Option<u64>,
    pub heap_max: Option<u64>,
    pub metaspace_used: Option<u64>,
    pub metaspace_committed: Option<u64>,
    pub class_space_used: Option<u64>,
    pub threads: Option<u64>,
    /// The old generation's use and maximum (G1: the whole heap's maximum, which its old regions
    /// may fill).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_used: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_max: Option<u64>,
    /// Methods the JIT compiled so far, and the bytes of code it installed for them (the code
    /// cache's intake; cumulative, what it evicted not subtracted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compiles: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compiled_bytes: Option<u64>,
    /// Collections so far, all collectors.
    pub collections: Option<u64>,
    pub gc_seconds: Option<f64>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub vm_args: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub vm_flags: String,
}

/// What a JVM needs beyond its heap and metaspace, at the least: code cache, the collector's own
/// structures, the runtime's native allocations (HotSpot's NMT shows 40–100 MiB for a small
/// service), not counting a thread's stack (one MiB each, below).
const JVM_OVERHEAD: u64 = 64 << 20;
const STACK: u64 = 1 << 20;

impl JvmStats {
    /// One line of the pools, for a report: `heap 199 MiB used, 256 MiB committed, 1.0 GiB max;
    /// metaspace 5.1 MiB; 12 threads; 3 collections (0.05 s)`.
    pub fn pools(&self) -> String {
        let b = |v: Option<u64>| v.map_or_else(|| "?".into(), crate::util::human_bytes);
        let mut s = format!(
            "heap {} used, {} committed, {} max; metaspace {}",
            b(self.heap_used),
            b(self.heap_committed),
            b(self.heap_max),
            b(self.metaspace_used)
        );
        if let Some(t) = self.threads {
            s.push_str(&format!("; {t} threads"));
        }
        if let (Some(n), Some(secs)) = (self.collections, self.gc_seconds) {
            s.push_str(&format!("; {n} collections ({secs:.2} s)"));
        }
        s
    }

    /// What grew outside the heap since `a` (an earlier reading of the same JVM): metaspace,
    /// threads, the code the JIT installed. One line for the report; `None` when nothing did.
    pub fn growth_since(&self, a: &JvmStats) -> Option<String> {
        let mut parts = Vec::new();
        let delta = |x: Option<u64>, y: Option<u64>| Some(x? as i64 - y? as i64);
        if let Some(d) = delta(self.metaspace_used, a.metaspace_used).filter(|&d| d != 0) {
            parts.push(format!("metaspace {}", crate::util::human_delta(d)));
        }
        if let Some(d) = delta(self.threads, a.threads).filter(|&d| d != 0) {
            parts.push(format!("threads {d:+}"));
        }
        if let (Some(n), Some(b)) = (
            delta(self.compiles, a.compiles).filter(|&d| d > 0),
            delta(self.compiled_bytes, a.compiled_bytes),
        ) {
            parts.push(format!(
                "{n} methods compiled into the code cache ({} of code)",
                crate::util::human_delta(b)
            ));
        }
        (!parts.is_empty()).then(|| parts.join(", "))
    }

    /// When the heap the JVM may grow to, with its metaspace, threads and own needs, does not fit
    /// `limit`: a sentence saying so. Such a JVM is OOM-killed at its limit whether or not it leaks,
    /// because its collector has no reason to run before its heap is full.
    pub fn misconfigured(&self, limit: u64) -> Option<String> {
        let max = self.heap_max?;
        let needs = max
            .saturating_add(self.metaspace_committed.unwrap_or(0))
            .saturating_add(self.threads.unwrap_or(0).saturating_mul(STACK))
            .saturating_add(JVM_OVERHEAD);
        (needs > limit).then(|| {
            format!(
                "the JVM may grow its heap to {} (-Xmx, or -XX:MaxRAMPercentage of what it saw), and needs about {} with its metaspace, {} thread stacks and its own memory: more than the {} limit. It is OOM-killed at the limit whether or not it leaks, since its collector has no reason to run before the heap is full: a misconfiguration, mended by a smaller -Xmx or MaxRAMPercentage (or a larger limit)",
                crate::util::human_bytes(max),
                crate::util::human_bytes(needs),
                self.threads.unwrap_or(0),
                crate::util::human_bytes(limit)
            )
        })
    }

    pub fn write_text(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let b = |v: Option<u64>| v.map_or_else(|| "?".into(), crate::util::human_bytes);
        writeln!(
            out,
            "HotSpot {} ({} collector)",
            self.version.as_deref().unwrap_or("version unknown"),
            self.collector.as_deref().unwrap_or("unknown")
        )?;
        writeln!(
            out,
            "heap: {} used, {} committed, {} max",
            b(self.heap_used),
            b(self.heap_committed),
            b(self.heap_max)
        )?;
        writeln!(
            out,
            "metaspace: {} used, {} committed; class space {} used",
            b(self.metaspace_used),
            b(self.metaspace_committed),
            b(self.class_space_used)
        )?;
        writeln!(
            out,
            "threads: {}; collections: {} taking {:.3} s",
            self.threads.map_or_else(|| "?".into(), |t| t.to_string()),
            self.collections
                .map_or_else(|| "?".into(), |t| t.to_string()),
            self.gc_seconds.unwrap_or(0.0)
        )
    }

    /// Whether the JVM was started with `flag` on (`DisableAttachMechanism`), or with the bare
    /// option `opt` (`-Xrs`).
    pub fn has_flag(&self, flag: &str) -> bool {
        let on = format!("-XX:+{flag}");
        self.vm_args
            .split_whitespace()
            .chain(self.vm_flags.split_whitespace())
            .any(|a| a == on || a == flag)
    }
}

/// The performance data file of JVM `pid` (a host PID), found through its root as the JVM sees
/// it: `/proc/PID/root/tmp/hsperfdata_<user>/<its own pid>`. `None` when the JVM keeps none
/// (`-XX:-UsePerfData`, `-XX:+PerfDisableSharedMem`) or it is not a JVM.
pub fn find(pid: i32) -> Option<PathBuf> {
    let ns_pid = crate::procfs::ns_pid(pid).unwrap_or(pid);
    let tmp = PathBuf::from(format!("/proc/{pid}/root/tmp"));
    std::fs::read_dir(&tmp)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("hsperfdata_"))
        .map(|e| e.path().join(ns_pid.to_string()))
        .find(|p| p.is_file())
}

/// Whether process `pid` runs a HotSpot JVM: `libjvm.so` is mapped.
pub fn is_jvm(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map(|m| m.lines().any(|l| l.ends_with("/libjvm.so")))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file as HotSpot lays it out, little-endian, with the given counters.
    fn file(counters: &[(&str, Value)]) -> Vec<u8> {
        let mut entries = Vec::new();
        for (name, v) in counters {
            let mut e = vec![0u8; ENTRY_HEADER];
            let name_off = e.len();
            e.extend_from_slice(name.as_bytes());
            e.push(0);
            while e.len() % 8 != 0 {
                e.push(0);
            }
            let data_off = e.len();
            let (ty, vlen) = match v {
                Value::Long(x) => {
                    e.extend_from_slice(&x.to_le_bytes());
                    (b'J', 0)
                }
                Value::Text(s) => {
                    e.extend_from_slice(s.as_bytes());
                    e.push(0);
                    (b'B', s.len() as i32 + 1)
                }
            };
            while e.len() % 8 != 0 {
                e.push(0);
            }
            let len = e.len() as i32;
            e[0..4].copy_from_slice(&len.to_le_bytes());
            e[4..8].copy_from_slice(&(name_off as i32).to_le_bytes());
            e[8..12].copy_from_slice(&vlen.to_le_bytes());
            e[12] = ty;
            e[16..20].copy_from_slice(&(data_off as i32).to_le_bytes());
            entries.extend(e);
        }
        let mut f = MAGIC.to_vec();
        f.extend_from_slice(&[1, 2, 0, 1]);
        f.extend_from_slice(&((PROLOGUE + entries.len()) as i32).to_le_bytes());
        f.extend_from_slice(&0i32.to_le_bytes());
        f.extend_from_slice(&0i64.to_le_bytes());
        f.extend_from_slice(&(PROLOGUE as i32).to_le_bytes());
        f.extend_from_slice(&(counters.len() as i32).to_le_bytes());
        f.extend(entries);
        f
    }

    #[test]
    fn pools_are_summed_over_generations_and_spaces() {
        let f = file(&[
            ("sun.gc.generation.0.capacity", Value::Long(100)),
            ("sun.gc.generation.1.capacity", Value::Long(200)),
            ("sun.gc.generation.0.maxCapacity", Value::Long(1000)),
            ("sun.gc.generation.1.maxCapacity", Value::Long(3000)),
            ("sun.gc.generation.0.space.0.used", Value::Long(10)),
            ("sun.gc.generation.0.space.1.used", Value::Long(5)),
            ("sun.gc.generation.1.space.0.used", Value::Long(70)),
            (
                "sun.gc.generation.0.space.0.maxCapacity",
                Value::Long(999_999),
            ),
            ("sun.gc.collector.0.invocations", Value::Long(3)),
            ("sun.gc.collector.1.invocations", Value::Long(1)),
            ("sun.gc.collector.0.time", Value::Long(2_000_000)),
            ("sun.gc.collector.1.time", Value::Long(1_000_000)),
            ("sun.os.hrt.frequency", Value::Long(1_000_000_000)),
            ("java.threads.live", Value::Long(12)),
            ("java.property.java.version", Value::Text("21.0.13".into())),
            (
                "java.rt.vmArgs",
                Value::Text("-Xmx64m -XX:+DisableAttachMechanism".into()),
            ),
        ]);
        let s = PerfData::parse(&f).unwrap().stats();
        assert_eq!(s.heap_used, Some(85));
        assert_eq!(s.heap_committed, Some(300));
        // Per-space maxima are not the heap's: only generations count.
        assert_eq!(s.heap_max, Some(4000));
        assert_eq!(s.collections, Some(4));
        assert_eq!(s.gc_seconds, Some(0.003));
        assert_eq!(s.threads, Some(12));
        assert_eq!(s.version.as_deref(), Some("21.0.13"));
        assert!(s.has_flag("DisableAttachMechanism"));
        assert!(!s.has_flag("UseSerialGC"));
        assert_eq!((s.old_used, s.old_max), (Some(70), Some(3000)));
    }

    #[test]
    fn growth_outside_the_heap_is_said_in_one_line() {
        let a = JvmStats {
            metaspace_used: Some(10 << 20),
            threads: Some(12),
            compiles: Some(100),
            compiled_bytes: Some(1 << 20),
            ..JvmStats::default()
        };
        let b = JvmStats {
            metaspace_used: Some(42 << 20),
            threads: Some(212),
            compiles: Some(150),
            compiled_bytes: Some(3 << 20),
            ..JvmStats::default()
        };
        assert_eq!(
            b.growth_since(&a).as_deref(),
            Some("metaspace +32.0 MiB, threads +200, 50 methods compiled into the code cache (+2.0 MiB of code)")
        );
        assert_eq!(a.growth_since(&a), None);
        assert_eq!(JvmStats::default().growth_since(&a), None);
    }

    #[test]
    fn g1s_heap_maximum_is_one_generations_not_their_sum() {
        // G1 gives its young and old generations the whole heap each as their maximum.
        let f = file(&[
            ("sun.gc.policy.name", Value::Text("GarbageFirst".into())),
            ("sun.gc.generation.0.maxCapacity", Value::Long(256 << 20)),
            ("sun.gc.generation.1.maxCapacity", Value::Long(256 << 20)),
        ]);
        let s = PerfData::parse(&f).unwrap().stats();
        assert_eq!(s.heap_max, Some(256 << 20));
        assert_eq!(s.old_max, Some(256 << 20));
    }

    #[test]
    fn a_heap_ceiling_past_the_limit_is_a_misconfiguration() {
        let s = JvmStats {
            heap_max: Some(256 << 20),
            metaspace_committed: Some(20 << 20),
            threads: Some(20),
            ..JvmStats::default()
        };
        // 256 + 20 + 20 + 64 = 360 MiB.
        assert!(s.misconfigured(512 << 20).is_none());
        let m = s.misconfigured(300 << 20).unwrap();
        assert!(m.contains("256 MiB") && m.contains("300 MiB"), "{m}");
        assert!(JvmStats::default().misconfigured(1).is_none());
        assert_eq!(
            s.pools(),
            "heap ? used, ? committed, 256 MiB max; metaspace ?; 20 threads"
        );
    }

    #[test]
    fn hostile_files_are_refused_or_read_in_bounds() {
        let good = file(&[("java.threads.live", Value::Long(3))]);
        assert!(PerfData::parse(b"\x7fELF").is_err());
        assert!(PerfData::parse(&good[..20]).is_err());
        for cut in 0..good.len() {
            let _ = PerfData::parse(&good[..cut]);
        }
        // Every 4-byte word of the file set to extreme values.
        for at in (0..good.len() - 4).step_by(4) {
            for v in [i32::MIN, -1, 0, 7, i32::MAX] {
                let mut f = good.clone();
                f[at..at + 4].copy_from_slice(&v.to_le_bytes());
                let _ = PerfData::parse(&f);
            }
        }
    }
}
