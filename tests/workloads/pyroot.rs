//! Debian testing's root filesystem with CPython 3.14 and 3.15, as `tests/workloads/pyroot.sh`
//! names it (building it first if it is missing): one definition for the test crates that
//! include this file (`#[path]`), the script's for where it lives.

use std::path::PathBuf;
use std::sync::OnceLock;

pub fn pyroot() -> PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let script = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo"))
            .join("../tests/workloads/pyroot.sh");
        let out = std::process::Command::new(&script)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
    .clone()
}
