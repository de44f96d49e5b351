//! Terminal output: findings and censuses as readable tables. JSON goes through serde directly.

use std::io::{self, Write};

use crate::analysis::Analysis;
use crate::findings::{Findings, SuspectKind, Verdict};
use crate::util::{human_bytes, human_delta};

/// Write findings as the table a person reads first.
pub fn write_text(f: &Findings, out: &mut dyn Write) -> io::Result<()> {
    let verdict = match f.verdict {
        Verdict::Leak => "LEAK",
        Verdict::NoLeak => "no leak",
        Verdict::Inconclusive => "inconclusive",
    };
    let runtime = match &f.runtime.version {
        Some(v) => format!("{} {v}", f.runtime.kind),
        None => f.runtime.kind.clone(),
    };
    let growth = match &f.runtime_heap {
        Some(h) => format!("heap {}", human_delta(h.after as i64 - h.before as i64)),
        None => format!(
            "RSS {}",
            human_delta(f.rss.after as i64 - f.rss.before as i64)
        ),
    };
    writeln!(
        out,
        "verdict: {verdict:<7} ({runtime}, {:.0} s between snapshots, {growth})",
        f.interval.seconds
    )?;
    if !f.summary.is_empty() {
        writeln!(out, "{}", f.summary)?;
    }
    if !f.suspects.is_empty() {
        let w = f
            .suspects
            .iter()
            .map(|s| s.path.chars().count())
            .max()
            .unwrap_or(7)
            .clamp(7, 60);
        let tw = f
            .suspects
            .iter()
            .map(|s| s.type_name.chars().count())
            .max()
            .unwrap_or(4)
            .clamp(4, 24);
        writeln!(
            out,
            " #  {:<w$}  {:<tw$}  {:<14}  retained",
            "suspect", "type", "items"
        )?;
        for (i, s) in f.suspects.iter().enumerate() {
            let items = match s.kind {
                SuspectKind::Native if s.count_before == 0 && s.count_after == 0 => "-".to_owned(),
                _ => format!("{} → {}", s.count_before, s.count_after),
            };
            let retained = if s.retained_bytes_before == 0 && s.retained_bytes_after == 0 {
                "-".to_owned()
            } else {
                format!(
                    "{} → {} ({})",
                    human_bytes(s.retained_bytes_before),
                    human_bytes(s.retained_bytes_after),
                    human_delta(s.retained_growth())
                )
            };
            writeln!(
                out,
                "{:>2}  {:<w$}  {:<tw$}  {items:<14}  {retained}",
                i + 1,
                s.path,
                s.type_name
            )?;
            if !s.referrers.is_empty() {
                writeln!(out, "    held by: {}", s.referrers.join(" → "))?;
            }
            for site in &s.allocation_sites {
                writeln!(out, "    {site}")?;
            }
        }
    }
    let grew: Vec<String> = f
        .types
        .iter()
        .filter(|t| t.count_growth() > 0)
        .take(8)
        .map(|t| {
            if t.bytes_after == 0 && t.bytes_before == 0 {
                format!("{} +{}", t.name, t.count_growth())
            } else {
                format!(
                    "{} +{} ({})",
                    t.name,
                    t.count_growth(),
                    human_delta(t.bytes_growth())
                )
            }
        })
        .collect();
    if !grew.is_empty() {
        let what = if f.runtime.kind == "native" {
            "pointer targets that grew"
        } else {
            "types that grew"
        };
        writeln!(out, "{what}: {}", grew.join(", "))?;
    }
    let n = &f.native;
    writeln!(
        out,
        "native memory: heap {} → {}, anonymous {} → {}",
        human_bytes(n.heap_before),
        human_bytes(n.heap_after),
        human_bytes(n.anonymous_before),
        human_bytes(n.anonymous_after)
    )?;
    for note in &f.notes {
        writeln!(out, "note: {note}")?;
    }
    Ok(())
}

/// Write the census of one snapshot.
pub fn write_census(a: &Analysis, top: usize, out: &mut dyn Write) -> io::Result<()> {
    let c = &a.census;
    let p = &c.process;
    writeln!(
        out,
        "process {} ({}), {} thread(s), runtime {}{}",
        p.pid,
        p.exe.as_deref().or(p.comm.as_deref()).unwrap_or("?"),
        p.threads,
        a.runtime.kind,
        a.runtime
            .version
            .as_deref()
            .map(|v| format!(" {v}"))
            .unwrap_or_default()
    )?;
    writeln!(
        out,
        "RSS {}{}; native heap {}, anonymous {}; scanned {} of writable memory, {} pointer words into ELF data",
        human_bytes(c.rss),
        if c.rss_estimated { " (estimated)" } else { "" },
        human_bytes(c.native.heap),
        human_bytes(c.native.anonymous),
        human_bytes(c.scanned_bytes),
        c.pointer_words
    )?;
    if !c.pointers.is_empty() {
        writeln!(out, "{:>10}  {:<50}  object", "count", "points to")?;
        for ptr in c.pointers.iter().take(top) {
            let obj = ptr.object.rsplit('/').next().unwrap_or(&ptr.object);
            let section = ptr
                .section
                .as_deref()
                .map(|s| format!(" {s}"))
                .unwrap_or_default();
            writeln!(out, "{:>10}  {:<50}  {obj}{section}", ptr.count, ptr.name)?;
        }
    }
    if let Some(heap) = &a.heap {
        heap.write_text(top, out)?;
    }
    for note in &c.notes {
        writeln!(out, "note: {note}")?;
    }
    Ok(())
}
