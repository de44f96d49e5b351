//! How `analyze` and `diff` use the CPython walker: the generic census always runs; when both
//! snapshots hold a CPython interpreter, the Python findings replace the generic ones (the generic
//! native-memory figures stay), otherwise a note says why the generic census is all there is.

use super::{compare, load, Error, PyCensus, PyHeap};
use crate::budget::OverBudget;
use crate::findings::Findings;
use crate::image::MemoryImage;

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

/// Overlay the CPython diff of `before` → `after` onto generic `findings`. Only running out of
/// the memory budget is an error: anything else leaves the generic findings, with a note.
pub fn refine_findings(
    findings: &mut Findings,
    before: &dyn MemoryImage,
    after: &dyn MemoryImage,
) -> Result<(), OverBudget> {
    match load_pair(before, after) {
        (Err(Error::OverBudget(e)), _) | (_, Err(Error::OverBudget(e))) => return Err(e),
        (Ok(Some(a)), Ok(Some(b))) => {
            let c = compare(&a, &b, &findings.native);
            findings.runtime = c.runtime;
            findings.verdict = c.verdict;
            findings.summary = c.summary;
            findings.suspects = c.suspects;
            findings.types = c.types;
            findings.notes.extend(c.notes);
        }
        (Ok(None), Ok(None)) => findings
            .notes
            .push("no CPython interpreter in these snapshots: generic census only".into()),
        (Err(e), _) | (_, Err(e)) => findings.notes.push(format!("{e}; generic census only")),
        _ => findings.notes.push(
            "only one of the snapshots holds a CPython interpreter: generic census only".into(),
        ),
    }
    Ok(())
}

/// The CPython census of one image, or a note saying why there is none.
pub fn census_of(image: &dyn MemoryImage) -> Result<Result<PyCensus, String>, OverBudget> {
    Ok(match load(image) {
        Ok(Some(h)) => Ok(h.census()),
        Ok(None) => Err("no CPython interpreter in this snapshot: generic census only".into()),
        Err(Error::OverBudget(e)) => return Err(e),
        Err(e) => Err(format!("{e}; generic census only")),
    })
}
