//! leakhunt-analyzer: read process memory images (ELF cores from any producer, live processes),
//! write self-contained cores, take a census of the heap and diff two snapshots into findings.
//!
//! Pure: no Kubernetes. The operator crate builds on it.

pub mod budget;
pub mod capture;
pub mod image;
pub mod jvm;
pub mod notes;
pub mod procfs;
pub mod python;
pub mod util;

pub use image::{open_snapshot, CoreFile, LiveProcess, Mapping, MemoryImage, ProcessInfo};
pub mod analysis;
pub mod census;
pub mod findings;
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod heap;
pub mod report;
pub mod runtime;
pub mod symbols;
pub mod timeline;
