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

/// Debian testing's root filesystem with the OpenJDK 21 and 25 runtimes, as
/// `tests/workloads/jvmroot.sh` names it (building it first if it is missing).
pub fn jvmroot() -> PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let script = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo"))
            .join("../tests/workloads/jvmroot.sh");
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
    })
    .clone()
}

/// `java ARGS` of OpenJDK `version` (21, 25) chrooted into `root`, in a mount namespace of its own
/// with a /proc (the launcher needs one); the command's process is the JVM's.
pub fn chrooted_java(root: &Path, version: u32, args: &[&str]) -> Command {
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(r#"mount -t proc proc "$0/proc" && exec chroot "$0" "$@""#)
        .arg(root)
        .arg(format!(
            "/usr/lib/jvm/java-{version}-openjdk-amd64/bin/java"
        ))
        .args(args);
    c
}
