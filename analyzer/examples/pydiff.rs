//! `cargo run --release --example pydiff -- BEFORE.core [AFTER.core]`: the CPython census of one
//! snapshot, or the CPython diff of two, as JSON. A development and benchmark aid; the product CLI
//! is `leakhunt-analyzer analyze|diff`.

// A development aid: a panic is as good an error as any.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::Path;
use std::time::Instant;

use leakhunt_analyzer::findings::NativeGrowth;
use leakhunt_analyzer::python;
use leakhunt_analyzer::{CoreFile, MemoryImage};

fn native(img: &dyn MemoryImage) -> (u64, u64) {
    let heap = img
        .mappings()
        .iter()
        .filter(|m| m.is_heap())
        .map(|m| m.len())
        .sum();
    let anon = img
        .mappings()
        .iter()
        .filter(|m| m.is_anonymous() && m.perms.write)
        .map(|m| m.len())
        .sum();
    (heap, anon)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let t0 = Instant::now();
    let a = CoreFile::open(Path::new(&args[0]), None)?;
    let b = args
        .get(1)
        .map(|p| CoreFile::open(Path::new(p), None))
        .transpose()?;
    // Both heaps load in parallel, as `diff` would.
    let (ha, hb) = std::thread::scope(|s| {
        let hb = b.as_ref().map(|b| s.spawn(|| python::load(b)));
        let ha = python::load(&a);
        (ha, hb.map(|h| h.join().expect("load thread")))
    });
    let ha = ha?.ok_or_else(|| anyhow::anyhow!("not a CPython process"))?;
    eprintln!("loaded {} objects in {:?}", ha.object_count(), t0.elapsed());
    match (b, hb) {
        (Some(bi), Some(hb)) => {
            let hb = hb?.ok_or_else(|| anyhow::anyhow!("not a CPython process"))?;
            let (na, nb) = (native(&a), native(&bi));
            let cmp = python::compare(
                &ha,
                &hb,
                &NativeGrowth {
                    heap_before: na.0,
                    heap_after: nb.0,
                    anonymous_before: na.1,
                    anonymous_after: nb.1,
                    tracer_after: 0,
                },
            );
            println!("verdict: {:?}  {}", cmp.verdict, cmp.summary);
            for s in &cmp.suspects {
                println!(
                    "  {:<50} {:<8} {} -> {}  {} -> {}   {}",
                    s.path,
                    s.type_name,
                    s.count_before,
                    s.count_after,
                    s.retained_bytes_before,
                    s.retained_bytes_after,
                    s.referrers.join(" → ")
                );
            }
            for t in cmp.types.iter().take(8) {
                println!(
                    "  type {:<30} {:+} ({:+} B)",
                    t.name,
                    t.count_growth(),
                    t.bytes_growth()
                );
            }
            for n in &cmp.notes {
                println!("  note: {n}");
            }
        }
        _ => println!("{}", serde_json::to_string_pretty(&ha.census())?),
    }
    eprintln!("total {:?}", t0.elapsed());
    Ok(())
}
