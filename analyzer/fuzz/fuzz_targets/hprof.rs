#![no_main]
//! Cuts and patches of a real HPROF dump (`LEAKHUNT_FUZZ_HPROF`, made by `make fuzz`): see
//! `leakhunt_analyzer::fuzzing::hprof`.
use std::sync::OnceLock;

use leakhunt_analyzer::fuzzing::{hprof, HprofSeed};
use libfuzzer_sys::fuzz_target;

static SEED: OnceLock<HprofSeed> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let seed = SEED.get_or_init(|| {
        let path =
            std::env::var("LEAKHUNT_FUZZ_HPROF").unwrap_or_else(|_| "seeds/java.hprof".into());
        let dump = std::fs::read(&path).unwrap_or_else(|e| panic!("seed dump {path}: {e}"));
        HprofSeed::new(dump).unwrap_or_else(|| panic!("{path}: not an HPROF dump"))
    });
    hprof(seed, data);
});
