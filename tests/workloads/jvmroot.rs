//! Debian testing's root filesystem with the OpenJDK 21 and 25 runtimes, as
//! `tests/workloads/jvmroot.sh` names it, and a `java` of it run chrooted: for the test crates that
//! include this file (`#[path]`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

#[path = "rootfs.rs"]
mod rootfs;

/// Debian testing's root filesystem with the OpenJDK 21 and 25 runtimes, as
/// `tests/workloads/jvmroot.sh` names it (building it first if it is missing).
pub fn jvmroot() -> PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| rootfs::built_by("jvmroot.sh")).clone()
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
