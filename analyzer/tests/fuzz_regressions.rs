//! Inputs that once made the core reader misbehave (found by `cargo fuzz run core_reader`), and
//! hand-made hostile cores: each must be handled without a panic.

// Tests and their helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[test]
fn fuzz_regression_inputs_do_not_panic() {
    let dir =
        std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo"))
            .join("tests/fuzz-regressions");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("regression dir") {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        leakhunt_analyzer::fuzzing::core_reader(&data);
        n += 1;
    }
    assert!(n > 0, "no regression inputs in {}", dir.display());
}
