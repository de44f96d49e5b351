//! A root filesystem a script of `tests/workloads` builds (or finds cached) and names on its
//! standard output: what `pyroot.rs` and `jvmroot.rs` share.

use std::path::PathBuf;
use std::process::Command;

/// Runs `tests/workloads/SCRIPT` and returns the directory it printed; panics with its errors.
pub fn built_by(script: &str) -> PathBuf {
    let script = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo"))
        .join("../tests/workloads")
        .join(script);
    let out = Command::new(&script)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}
