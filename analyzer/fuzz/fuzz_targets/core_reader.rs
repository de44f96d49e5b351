#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    leakhunt_analyzer::fuzzing::core_reader(data);
});
