//! CPython behind the analyzer's runtime seam: when both snapshots hold a CPython interpreter,
//! the Python findings replace the generic ones (the generic native-memory figures stay),
//! otherwise a note says why the generic census is all there is.

use super::{compare, load, Error, PyHeap};
use crate::budget::OverBudget;
use crate::findings::Findings;
use crate::image::MemoryImage;
use crate::runtime::{Detected, HeapCensus, Runtime};

/// Load the heaps of two images in parallel.
fn load_pair(
    before: &dyn MemoryImage,
    after: &dyn MemoryImage,
) -> (super::Result<Option<PyHeap>>, super::Result<Option<PyHeap>>) {
    std::thread::scope(|s| {
        let a = s.spawn(|| load(before));
        let b = load(after);
        // A panic in the walker is a bug; treat it as "could not read" rather than abort the diff.
        let a = a.join().unwrap_or_else(|_| {
            Err(super::Error::NoInterpreter(
                "internal error while walking the first snapshot".into(),
            ))
        });
        (a, b)
    })
}

/// CPython as one of the analyzer's runtimes.
#[derive(Debug, Clone, Copy)]
pub struct CPython;

impl Runtime for CPython {
    fn census(&self, image: &dyn MemoryImage) -> Result<Detected<HeapCensus>, OverBudget> {
        Ok(match load(image) {
            Ok(Some(h)) => Detected::Found(HeapCensus::Python(h.census())),
            Ok(None) => Detected::Absent(
                "no CPython interpreter in this snapshot: generic census only".into(),
            ),
            Err(Error::OverBudget(e)) => return Err(e),
            Err(e) => Detected::Unreadable(format!("{e}; generic census only")),
        })
    }

    fn refine(
        &self,
        findings: &mut Findings,
        before: &dyn MemoryImage,
        after: &dyn MemoryImage,
    ) -> Result<Detected<()>, OverBudget> {
        Ok(match load_pair(before, after) {
            (Err(Error::OverBudget(e)), _) | (_, Err(Error::OverBudget(e))) => return Err(e),
            (Ok(Some(a)), Ok(Some(b))) => {
                let c = compare(&a, &b, &findings.native);
                findings.runtime = c.runtime;
                findings.verdict = c.verdict;
                findings.summary = c.summary;
                findings.suspects = c.suspects;
                findings.types = c.types;
                findings.notes.extend(c.notes);
                Detected::Found(())
            }
            (Ok(None), Ok(None)) => Detected::Absent(
                "no CPython interpreter in these snapshots: generic census only".into(),
            ),
            (Err(e), _) | (_, Err(e)) => Detected::Unreadable(format!("{e}; generic census only")),
            _ => Detected::Unreadable(
                "only one of the snapshots holds a CPython interpreter: generic census only".into(),
            ),
        })
    }
}
