//! Debian testing's root filesystem with CPython 3.14 and 3.15, as `tests/workloads/pyroot.sh`
//! names it (building it first if it is missing): one definition for the test crates that
//! include this file (`#[path]`), the script's for where it lives.

use std::path::PathBuf;
use std::sync::OnceLock;

#[path = "rootfs.rs"]
mod rootfs;

pub fn pyroot() -> PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| rootfs::built_by("pyroot.sh")).clone()
}
