#![no_main]
//! Patches to a real CPython core (`LEAKHUNT_FUZZ_SEED`, made by `make fuzz`): see
//! `leakhunt_analyzer::fuzzing::python_heap`.
use std::sync::OnceLock;

use leakhunt_analyzer::fuzzing::{python_heap, PythonSeed};
use libfuzzer_sys::fuzz_target;

static SEED: OnceLock<PythonSeed> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let seed = SEED.get_or_init(|| {
        let path =
            std::env::var("LEAKHUNT_FUZZ_SEED").unwrap_or_else(|_| "seeds/python.core".into());
        let core = std::fs::read(&path).unwrap_or_else(|e| panic!("seed core {path}: {e}"));
        PythonSeed::new(core).unwrap_or_else(|| panic!("{path}: not a CPython core"))
    });
    python_heap(seed, data);
});
