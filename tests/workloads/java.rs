//! `tests/workloads/Shapes.java` compiled once per test binary into the build's scratch directory
//! (nothing left in /tmp): one definition for the test crates that include this file (`#[path]`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The class directory; `None` (the caller's test skipped) where this host has no JDK.
pub fn shapes_classes() -> Option<PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        if Command::new("javac").arg("-version").output().is_err() {
            eprintln!("no javac on this host: JVM tests skipped");
            return None;
        }
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("shapes-classes");
        std::fs::create_dir_all(&dir).expect("class directory");
        let src = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo"))
            .join("../tests/workloads/Shapes.java");
        let ok = Command::new("javac")
            .arg("-d")
            .arg(&dir)
            .arg(&src)
            .status()
            .expect("run javac")
            .success();
        assert!(ok, "javac failed on {}", src.display());
        Some(dir)
    })
    .clone()
}
