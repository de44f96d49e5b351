//! The language runtimes whose heaps the analyzer reads, as peers behind one seam. Each one
//! finds itself in a snapshot, takes its heap census, and turns the generic findings of a pair
//! into its own; the generic native census (pointers, heap and anonymous memory) runs for every
//! snapshot and is what remains where no runtime is found. A second runtime is a new module
//! that implements [`Runtime`] and one more entry in [`RUNTIMES`].

use std::io::{self, Write};

use serde::Serialize;

use crate::budget::OverBudget;
use crate::findings::{self, Findings};
use crate::image::MemoryImage;
use crate::python::{CPython, PyCensus};

/// What a runtime made of a snapshot.
#[derive(Debug)]
pub enum Detected<T> {
    /// Not this runtime; the note says so where no other runtime is found either.
    Absent(String),
    /// This runtime, but its heap could not be read: the note says why.
    Unreadable(String),
    Found(T),
}

/// The heap census of one snapshot by the runtime found in it, serialised under the runtime's
/// key (`"python": {…}`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum HeapCensus {
    Python(PyCensus),
}

impl HeapCensus {
    /// The runtime as findings name it.
    pub fn runtime(&self) -> findings::Runtime {
        match self {
            HeapCensus::Python(p) => findings::Runtime {
                kind: "cpython".into(),
                version: Some(p.version.clone()),
            },
        }
    }

    /// The census as the table `analyze` prints after the generic one.
    pub fn write_text(&self, top: usize, out: &mut dyn Write) -> io::Result<()> {
        match self {
            HeapCensus::Python(p) => p.write_text(top, out),
        }
    }
}

/// One language runtime.
pub trait Runtime: Sync {
    /// Its heap census of one snapshot.
    fn census(&self, image: &dyn MemoryImage) -> Result<Detected<HeapCensus>, OverBudget>;
    /// Replaces the generic findings of `before` → `after` with its own where both snapshots
    /// hold it (the generic native-memory figures stay). Only running out of the memory budget
    /// is an error.
    fn refine(
        &self,
        findings: &mut Findings,
        before: &dyn MemoryImage,
        after: &dyn MemoryImage,
    ) -> Result<Detected<()>, OverBudget>;
}

/// The runtimes tried, in order; the first found wins.
pub static RUNTIMES: &[&dyn Runtime] = &[&CPython];

/// The heap census of the first runtime found in `image`; where none is, the notes say why.
pub fn census(
    image: &dyn MemoryImage,
    notes: &mut Vec<String>,
) -> Result<Option<HeapCensus>, OverBudget> {
    let mut absent = Vec::new();
    for r in RUNTIMES {
        match r.census(image)? {
            Detected::Found(c) => return Ok(Some(c)),
            Detected::Unreadable(note) => {
                notes.push(note);
                return Ok(None);
            }
            Detected::Absent(note) => absent.push(note),
        }
    }
    notes.extend(absent);
    Ok(None)
}

/// The findings of a pair refined by the first runtime found in it; where none is, the notes
/// say why.
pub fn refine(
    findings: &mut Findings,
    before: &dyn MemoryImage,
    after: &dyn MemoryImage,
) -> Result<(), OverBudget> {
    let mut absent = Vec::new();
    for r in RUNTIMES {
        match r.refine(findings, before, after)? {
            Detected::Found(()) => return Ok(()),
            Detected::Unreadable(note) => {
                findings.notes.push(note);
                return Ok(());
            }
            Detected::Absent(note) => absent.push(note),
        }
    }
    findings.notes.extend(absent);
    Ok(())
}
